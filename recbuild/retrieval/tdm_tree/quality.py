"""How good a tree is: how evenly the items spread (``balance``, tdm_tree's metrics.json; sibling
spreads) and how tight its nodes are around their mean (``sse_at_level``)."""

from __future__ import annotations

import numpy as np

from recbuild.retrieval.tdm_tree.tree import TdmTree


def balance(tree: TdmTree) -> dict[str, float | int]:
    """How evenly the items spread over the tree (tdm_tree's metrics.json).

    ``branch_leaves_min/max``: items under the root's smallest and largest child; ``branch_balance``
    their ratio (1.0 = even); ``leaf_slot_fill``: items over the k^depth leaf slots of the last level;
    ``parent_children_mean``: children per node on the level above the leaves (k = all slots used).
    """
    leaves = tree.codes[tree.leaf_mask]
    branch_counts: np.ndarray = np.zeros(0, dtype=np.int64)
    parents_of_leaves = np.zeros(0, dtype=np.int64)
    if tree.depth >= 1 and len(leaves):
        top = leaves.copy()
        for _ in range(tree.depth - 1):
            top = (top - 1) // tree.k
        branch_counts = np.unique(top, return_counts=True)[1]
        parents_of_leaves = np.unique((leaves - 1) // tree.k, return_counts=True)[1]
    smallest = int(branch_counts.min()) if len(branch_counts) else int(len(leaves))
    largest = int(branch_counts.max()) if len(branch_counts) else int(len(leaves))
    return {
        "items": int(len(leaves)),
        "levels": int(tree.num_levels),
        "nodes": int(len(tree.codes)),
        "n_cluster": int(tree.k),
        "branch_leaves_min": smallest,
        "branch_leaves_max": largest,
        "branch_balance": round(smallest / largest, 6) if largest else 1.0,
        "leaf_slot_fill": round(len(leaves) / float(tree.k ** tree.depth), 6),
        "parent_children_mean": round(float(parents_of_leaves.mean()), 6) if len(parents_of_leaves) else 0.0,
    }


def segment_sizes_of_level(leaf_codes: np.ndarray, k: int, depth: int, level: int) -> np.ndarray:
    """Number of leaves under each node of ``level`` (for balance checks)."""
    anc = np.asarray(leaf_codes, dtype=np.int64)
    for _ in range(depth - level):
        anc = (anc - 1) // k
    _, counts = np.unique(anc, return_counts=True)
    return counts


def balance_report(leaf_codes: np.ndarray, k: int, depth: int) -> dict[str, int]:
    """Largest difference in leaf count between siblings, over every internal node."""
    worst = 0
    for level in range(1, depth + 1):
        anc = np.asarray(leaf_codes, dtype=np.int64)
        for _ in range(depth - level):
            anc = (anc - 1) // k
        nodes, counts = np.unique(anc, return_counts=True)
        parents = (nodes - 1) // k
        # children a parent lacks count as size 0 (matrix of parent x child slot)
        unique_parents = np.unique(parents)
        full = np.zeros((len(unique_parents), k), dtype=np.int64)
        full[np.searchsorted(unique_parents, parents), (nodes - 1) % k] = counts
        worst = max(worst, int((full.max(1) - full.min(1)).max()))
    return {"max_sibling_spread": worst}


def sse_at_level(vectors: np.ndarray, leaf_codes: np.ndarray, k: int, depth: int, level: int) -> float:
    """Within-node sum of squared distances to the node mean at ``level`` (tree quality)."""
    anc = np.asarray(leaf_codes, dtype=np.int64)
    for _ in range(depth - level):
        anc = (anc - 1) // k
    _, group = np.unique(anc, return_inverse=True)
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
