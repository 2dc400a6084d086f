"""The files of a TDM tree artifact, as TorchEasyRec writes and reads them: their names, and their
formats below (tzrec_formats.md section 2.5, tzrec's ``tree_search_util.py``); level order =
ascending code.

  serving_tree            "<levels> <k>" then "<code> <id>" per node
  node_table.txt          "id:int64\\tweight:float\\tfeature:string" header (id:string in hash mode),
                          a "-1" row pointing at the root, then per node
                          "<id>\\t1.0\\t<level>,<id>[,<attrs joined by delimiter>][,<raw attrs>]"
  edge_table.txt          leaf -> each ancestor from the parent up to (not including) the root
  predict_edge_table.txt  "-1 -> root", then parent -> child for every non-root node
  node_feature/part-0.parquet  [item_id, *attrs, *raw attrs], one row per node, internal nodes
                               holding the mode (attrs) / mean (raw attrs) of their leaves
"""

SERVING_TREE = "serving_tree"
NODE_TABLE = "node_table.txt"
EDGE_TABLE = "edge_table.txt"
PREDICT_EDGE_TABLE = "predict_edge_table.txt"
NODE_FEATURE = "node_feature/part-0.parquet"
