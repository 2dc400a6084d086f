"""TorchEasyRec's TDM tree files: writers and a parser that reads them back.

Modules (each one job; the names below are re-exported here):
  formats        the file names (SERVING_TREE, NODE_TABLE, ...) and what each file holds
  node_features  node_features: the node_feature table (mode / mean of the leaves' attributes)
  arrow_mean     arrow_group_means: pyarrow's mean per group, to the last bit
  writers        write_tree and one writer per file, byte for byte as tzrec writes them
  readers        read_serving_tree, read_graph_tables / GraphTables (parse and cross-check)

The tree itself (codes, ids) is recbuild/retrieval/tdm_tree/.
"""

from recbuild.retrieval.tree_io.arrow_mean import ARROW_SUM_BLOCK, arrow_group_means
from recbuild.retrieval.tree_io.formats import (EDGE_TABLE, NODE_FEATURE, NODE_TABLE, PREDICT_EDGE_TABLE,
                                                SERVING_TREE)
from recbuild.retrieval.tree_io.node_features import node_features
from recbuild.retrieval.tree_io.readers import GraphTables, read_graph_tables, read_serving_tree
from recbuild.retrieval.tree_io.writers import (write_edge_table, write_node_feature, write_node_ids, write_node_table,
                                                write_predict_edge_table, write_serving_tree, write_tree)

__all__ = ["ARROW_SUM_BLOCK", "EDGE_TABLE", "GraphTables", "NODE_FEATURE", "NODE_TABLE", "PREDICT_EDGE_TABLE",
           "SERVING_TREE", "arrow_group_means", "node_features", "read_graph_tables", "read_serving_tree",
           "write_edge_table", "write_node_feature", "write_node_ids", "write_node_table",
           "write_predict_edge_table", "write_serving_tree", "write_tree"]
