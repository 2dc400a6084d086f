"""TDM trees: leaf codes for every item, all leaves on one level, for any branching factor k >= 2.

Node coding is TorchEasyRec's (tzrec_formats.md section 2.2): root code 0, the children of code c
are ``k*c+1 .. k*c+k``, the parent of c is ``(c-1)//k``. Codes on level L run from
``(k**L-1)//(k-1)``. Every item becomes a leaf on level D, the smallest integer with ``k**D >= N``
(integer arithmetic: tzrec's ``math.log`` gives an extra level for ``log(125, 5)`` and its
``k**L-1`` "first code" is right for k == 2 only, which leaves items on mixed levels for k > 2).

Two ways to give items their codes; both cut every node into k contiguous children level by
level, so a node of n items has children of floor(n/k) or ceil(n/k) items, and ``ceil(n/k) <=
k**(D-L-1)`` keeps every item within reach of level D. A node left with one item passes it to its
first child (``code*k+1``, as tzrec pulls leaves down).

Modules (each one job; the names below are re-exported here):
  codes      the node coding: tree_depth, first_code, level_of, ancestor_codes, ancestors_on
  init_mode  init_leaf_codes (tzrec's contiguous split of items sorted by init_order)
  learnt     learnt_leaf_codes (level-by-level balanced k-means, torch)
  leaves     TreeLeaves (the leaves in code order: every level walked in chunks, for the writers),
             assemble_tree (every node, as a TdmTree)
  tree       TdmTree (every node's code and id), check_tree_invariants
  quality    balance (tdm_tree's metrics.json), balance_report, segment_sizes_of_level, sse_at_level
  item_ids   validate_item_ids, ids_for_hash_mode (int mode / hash mode ids)

The files a tree is written to are recbuild/retrieval/tree_io/.
"""

from recbuild.retrieval.tdm_tree.codes import (INT64_MAX, ancestor_codes, ancestors_on, first_code, level_of,
                                              tree_depth)
from recbuild.retrieval.tdm_tree.init_mode import init_leaf_codes, init_order
from recbuild.retrieval.tdm_tree.item_ids import ids_for_hash_mode, validate_item_ids
from recbuild.retrieval.tdm_tree.leaves import TreeLeaves, assemble_tree
from recbuild.retrieval.tdm_tree.learnt import learnt_leaf_codes
from recbuild.retrieval.tdm_tree.quality import balance, balance_report, segment_sizes_of_level, sse_at_level
from recbuild.retrieval.tdm_tree.tree import TdmTree, check_tree_invariants

__all__ = ["INT64_MAX", "TdmTree", "TreeLeaves", "ancestor_codes", "ancestors_on", "assemble_tree", "balance",
           "balance_report", "check_tree_invariants", "first_code", "ids_for_hash_mode", "init_leaf_codes",
           "init_order", "learnt_leaf_codes", "level_of", "segment_sizes_of_level", "sse_at_level", "tree_depth",
           "validate_item_ids"]
