"""How good a tree is: how evenly the items spread (``balance``, tdm_tree's metrics.json; sibling
spreads) and how tight its nodes are around their mean (``sse_at_level``)."""

from __future__ import annotations

import numpy as np

from recbuild.retrieval.tdm_tree.codes import ancestors_on
from recbuild.retrieval.tdm_tree.leaves import TreeLeaves
from recbuild.retrieval.tdm_tree.tree import TdmTree


def balance(tree: TreeLeaves | TdmTree) -> dict[str, float | int]:
    """How evenly the items spread over the tree (tdm_tree's metrics.json).

    ``branch_leaves_min/max``: items under the root's smallest and largest child; ``branch_balance``
    their ratio (1.0 = even); ``leaf_slot_fill``: items over the k^depth leaf slots of the last level;
    ``parent_children_mean``: children per node on the level above the leaves (k = all slots used).
    Counted level by level from the leaves, in chunks (no per-node array of the whole tree).
    """
    leaves = TreeLeaves.of_tree(tree)
    n = leaves.n_items
    per_level, branches = [], []  # nodes of each level, and the leaves under each root child: one walk
    for level in range(leaves.num_levels):
        nodes_here = 0
        for _, counts, _ in leaves.level_runs(level):
            nodes_here += len(counts)
            if level == 1:
                branches.append(counts)
        per_level.append(nodes_here)
    under_branch = np.concatenate(branches)
    parents, nodes = per_level[leaves.depth - 1], sum(per_level)
    smallest, largest = int(under_branch.min()), int(under_branch.max())
    return {
        "items": int(n),
        "levels": int(leaves.num_levels),
        "nodes": int(nodes),
        "n_cluster": int(leaves.k),
        "branch_leaves_min": smallest,
        "branch_leaves_max": largest,
        "branch_balance": round(smallest / largest, 6) if largest else 1.0,
        "leaf_slot_fill": round(n / float(leaves.k ** leaves.depth), 6),
        "parent_children_mean": round(n / parents, 6) if parents else 0.0,
    }


def segment_sizes_of_level(leaf_codes: np.ndarray, k: int, depth: int, level: int) -> np.ndarray:
    """Number of leaves under each node of ``level`` (for balance checks)."""
    _, counts = np.unique(ancestors_on(leaf_codes, k, depth, level), return_counts=True)
    return counts


def balance_report(leaf_codes: np.ndarray, k: int, depth: int) -> dict[str, int]:
    """Largest difference in leaf count between siblings, over every internal node."""
    worst = 0
    for level in range(1, depth + 1):
        nodes, counts = np.unique(ancestors_on(leaf_codes, k, depth, level), return_counts=True)
        parents = (nodes - 1) // k
        # children a parent lacks count as size 0 (matrix of parent x child slot)
        unique_parents = np.unique(parents)
        full = np.zeros((len(unique_parents), k), dtype=np.int64)
        full[np.searchsorted(unique_parents, parents), (nodes - 1) % k] = counts
        worst = max(worst, int((full.max(1) - full.min(1)).max()))
    return {"max_sibling_spread": worst}


def sse_at_level(vectors: np.ndarray, leaf_codes: np.ndarray, k: int, depth: int, level: int) -> float:
    """Within-node sum of squared distances to the node mean at ``level`` (tree quality)."""
    _, group = np.unique(ancestors_on(leaf_codes, k, depth, level), return_inverse=True)
    x = vectors.astype(np.float64)
    sums = np.zeros((group.max() + 1, x.shape[1]))
    _add_rows(sums, group, x)
    counts = np.bincount(group)
    sq = np.bincount(group, weights=(x * x).sum(1))
    return float((sq - (sums * sums).sum(1) / counts).sum())


def _add_rows(sums, group, x):
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(sums.shape[0]))
    sums[:] = np.add.reduceat(x[order], starts, axis=0)
