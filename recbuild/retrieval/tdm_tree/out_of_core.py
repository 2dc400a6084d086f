"""Learnt mode out of core: leaf codes for a catalogue whose vectors do not fit the memory budget.

The tree is cut at a level L chosen so that every node of level L holds at most ``max_subtree``
items (the most the in-memory builder may hold within the budget):

1. top levels 1..L: each level's balanced k-means is trained on a seeded sample of the items
   (the sample rows of each node, all nodes at once, as ``learnt``), then *every* item is scored
   against its node's child centroids in one streamed pass over the table, and each node is cut
   exactly as the in-memory build cuts it: children of floor/ceil(n/k) items, the items ranked by
   their score (k == 2) or handed out greedily under those targets (k > 2);
2. one more streamed pass spills each item's vector and row into its level-L node's file on disk;
3. every level-L node is loaded alone and built by the in-memory ``learnt_leaf_codes`` with the
   depth left below L, so all leaves end on the big tree's last level.

In memory at once: the sample, one record batch, one level-L node, and per item its id, node,
split score, child and sort order, later its code and row (``PER_ITEM_STATE``). The leaves come out
in code order, subtree after subtree, ready for the writers (``TreeLeaves``): no sort of the whole
catalogue and no tree of every node is ever built.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recbuild.retrieval.tdm_tree.codes import check_code_range, first_code, tree_depth

# Bytes per item of the in-memory builder (learnt mode, parquet in, tree files out), besides two
# copies of its vector: measured 6.5 GB at 4M x 64 (1625 bytes an item, 512 of them the vectors).
IN_MEMORY_OVERHEAD = 1100
# Bytes per item of ``learnt_leaf_codes`` on a subtree, besides one copy of its vector (the work
# copy, codes, permutation, segment ids, scores and the sorts' scratch): measured 1574 at 312k x 64.
SUBTREE_OVERHEAD = 1600
# Per item, kept for the whole catalogue while the top levels are cut: its id (8 bytes), node
# (int32), split score, child (int8), the level's node order (int64) and the partition's scratch;
# then its code and row. About 40 bytes; budgeted at 64 (the figure before the int32/int8 state),
# which keeps the plan, and so the trees, of earlier releases.
PER_ITEM_STATE = 64
MIN_SUBTREE = 256
# Spill files open at once (one per level-L node); a budget smaller than the per-item state would
# otherwise cut the tree into millions of tiny subtrees.
MAX_SUBTREES = 4096


def in_memory_bytes(n_items: int, dim: int) -> int:
    """Peak memory of the in-memory learnt build (estimate from the measurement above)."""
    return n_items * (2 * 4 * dim + IN_MEMORY_OVERHEAD)


@dataclass(frozen=True)
class Plan:
    n_items: int
    dim: int
    k: int
    depth: int
    cut_level: int  # L: levels 1..L are cut by sample-trained centroids
    max_subtree: int  # items of the largest level-L node (built in memory)
    sample_size: int  # rows the top levels are trained on

    @property
    def n_subtrees(self) -> int:
        return self.k ** self.cut_level

    def summary(self) -> dict[str, int]:
        return {"cut_level": self.cut_level, "subtrees": self.n_subtrees, "max_subtree_items": self.max_subtree,
                "sample_items": self.sample_size}


def plan(n_items: int, dim: int, k: int, budget: int) -> Plan:
    """Where to cut the tree so a level-L node's in-memory build fits what the budget leaves after
    the per-item state."""
    depth = tree_depth(n_items, k)
    per_subtree_item = 4 * dim + SUBTREE_OVERHEAD
    # When the items' bookkeeping takes most of the budget, half the budget still goes to the sample
    # and the subtrees (the step then overshoots by the bookkeeping; the builder warns): a tree of
    # thousands of tiny subtrees trained on a few hundred items is not worth the memory it saves.
    room = max(budget - n_items * PER_ITEM_STATE, budget // 2)
    fit = max(MIN_SUBTREE, room // per_subtree_item)
    cut = 1
    while cut < depth - 1 and math.ceil(n_items / k ** cut) > fit and k ** (cut + 1) <= MAX_SUBTREES:
        cut += 1
    # The sample trains the top levels: as large as the budget allows, but at most every item and
    # no more than the subtree size (the sample and a subtree are never in memory together).
    sample = int(min(n_items, max(fit, MIN_SUBTREE)))
    return Plan(n_items, dim, k, depth, cut, math.ceil(n_items / k ** cut), sample)


def out_of_core_leaves(table, the_plan: Plan, *, iters: int, seed: int, threads: int | None,
                       scratch: Path | None = None, batch_rows: int = 1 << 16,
                       progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(leaf codes ascending, the table row of each) for every row of ``table`` (an
    ``EmbeddingTable``), following ``the_plan``. ``progress(1)`` is called once per top level and
    once per level-L node."""
    import torch

    from recbuild.retrieval.threads import threads_for_load

    p = the_plan
    check_code_range(p.k, p.depth)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads_for_load(threads or previous_threads))
    try:
        with torch.inference_mode(), tempfile.TemporaryDirectory(prefix="tdm-spill-", dir=scratch) as tmp:
            node = _top_levels(table, p, iters, seed, batch_rows, progress)
            return _subtrees(table, p, node, iters, seed, batch_rows, Path(tmp), threads, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _embedding_batches(table, batch_rows: int):
    """(row offset, float32 vectors) over the whole table, the embedding column only."""
    from recbuild.retrieval.embeddings_io import embedding_matrix, iter_batches

    dim = None
    for offset, batch in iter_batches(table.info, [table.embedding_column], batch_rows):
        vectors = embedding_matrix(batch.column(0), table.where, offset, dim)
        dim = vectors.shape[1]
        yield offset, vectors


def _top_levels(table, p: Plan, iters: int, seed: int, batch_rows: int, progress) -> np.ndarray:
    """Every row's node index on level L (in code order), cut level by level."""
    import torch

    from recbuild.retrieval.faiss_index import sample_positions

    k = p.k
    positions = sample_positions(p.n_items, p.sample_size, seed)
    sample = table.vectors_at(positions, batch_rows)
    generator = torch.Generator().manual_seed(int(seed))
    # int32: a level has at most MAX_SUBTREES nodes; 4 bytes an item instead of 8, for 20M items.
    node = np.zeros(p.n_items, dtype=np.int32)
    for level in range(p.cut_level):
        n_nodes = k ** level
        centroids = _train_level(sample, node[positions], n_nodes, k, iters, generator)  # [nodes, k, d]
        scores = _score_all(table, node, centroids, batch_rows)  # [n, k'] float32
        node = node * k + _balanced_digits(node, scores, n_nodes, k)
        del scores
        if progress:
            progress(1)
    return node


def _train_level(sample: np.ndarray, sample_node: np.ndarray, n_nodes: int, k: int, iters: int,
                 generator) -> np.ndarray:
    """Child centroids of every node of a level: the in-memory balanced k-means' final centroids on
    the node's sample rows (all nodes at once). A node without sample rows gets zero centroids:
    its items are then split in row order (it can only hold a handful of them)."""
    import torch

    from recbuild.retrieval.tdm_tree.learnt import _balanced_kmeans_level

    order = np.argsort(sample_node, kind="stable")
    counts = np.bincount(sample_node, minlength=n_nodes)
    x = torch.from_numpy(np.ascontiguousarray(sample[order]))
    bounds = np.concatenate([[0], np.cumsum(counts[counts > 0])]).astype(np.int64)
    keep: dict = {}
    _balanced_kmeans_level(x, bounds, k, iters, generator, keep)
    out = np.zeros((n_nodes, k, x.shape[1]), dtype=np.float32)
    out[np.flatnonzero(counts > 0)] = keep["centroids"].numpy()
    return out


def _score_all(table, node: np.ndarray, centroids: np.ndarray, batch_rows: int) -> np.ndarray:
    """One streamed pass: every row's closeness to its node's children (larger = closer).
    k == 2: one column, x.2(c1-c0) + |c0|^2 - |c1|^2 (> 0: nearer child 1), as the in-memory split;
    k > 2: -|x - c_j|^2 per child."""
    k = centroids.shape[1]
    n = len(node)
    if k == 2:
        c0, c1 = centroids[:, 0].astype(np.float64), centroids[:, 1].astype(np.float64)
        w = (2.0 * (c1 - c0)).astype(np.float32)
        b = ((c0 * c0).sum(1) - (c1 * c1).sum(1)).astype(np.float32)
        out = np.empty((n, 1), dtype=np.float32)
        for offset, x in _embedding_batches(table, batch_rows):
            rows = node[offset:offset + len(x)]
            out[offset:offset + len(x), 0] = np.einsum("ij,ij->i", x, w[rows]) + b[rows]
        return out
    norms = (centroids.astype(np.float64) ** 2).sum(2).astype(np.float32)  # [nodes, k]
    out = np.empty((n, k), dtype=np.float32)
    for offset, x in _embedding_batches(table, batch_rows):
        rows = node[offset:offset + len(x)]
        x_norm = np.einsum("ij,ij->i", x, x)
        for j in range(k):
            dots = np.einsum("ij,ij->i", x, centroids[rows, j])
            out[offset:offset + len(x), j] = 2.0 * dots - norms[rows, j] - x_norm
    return out


def _balanced_digits(node: np.ndarray, scores: np.ndarray, n_nodes: int, k: int) -> np.ndarray:
    """Each row's child (the smallest unsigned type that holds k - 1: one byte for k <= 256) under
    exact floor/ceil balance, node by node (ties by row order)."""
    import torch

    from recbuild.retrieval.tdm_tree.learnt import _greedy_balanced_assign

    digit = np.empty(len(node), dtype=np.min_scalar_type(k - 1))
    if n_nodes == 1:  # the root: every row, already in row order (no index of all the rows)
        order, bounds = None, np.array([0, len(node)])
    else:
        order = np.argsort(node, kind="stable")
        bounds = np.searchsorted(node[order], np.arange(n_nodes + 1))
    for j in range(n_nodes):
        rows = slice(None) if order is None else order[bounds[j]:bounds[j + 1]]
        size = int(bounds[j + 1] - bounds[j])
        if not size:
            continue
        if k == 2:
            digit[rows] = _upper_half(scores[rows, 0])
            continue
        got, _ = _greedy_balanced_assign(torch.from_numpy(scores[rows]), torch.zeros(size, dtype=torch.int64),
                                         torch.tensor([size]), torch.tensor([0]), k)
        digit[rows] = got.numpy()
    return digit


def _upper_half(score: np.ndarray) -> np.ndarray:
    """1 for the rows outside the ceil(n/2) lowest scores (ties: the earlier row ranks lower), as a
    stable argsort would rank them, with a partition instead of a sort (no 8-byte index per row)."""
    size = len(score)
    lower = (size + 1) // 2
    if lower == size:
        return np.zeros(size, dtype=np.int8)
    threshold = np.partition(score, lower - 1)[lower - 1]
    in_lower = score < threshold
    ties = np.flatnonzero(score == threshold)
    in_lower[ties[: lower - int(in_lower.sum())]] = True
    return (~in_lower).view(np.int8)


def _subtrees(table, p: Plan, node: np.ndarray, iters: int, seed: int, batch_rows: int, tmp: Path,
              threads, progress) -> np.ndarray:
    """Spill every row to its level-L node's files, then build each node in memory."""
    from recbuild.retrieval.tdm_tree.learnt import learnt_leaf_codes

    k, cut = p.k, p.cut_level
    files = [(tmp / f"{j}.f32", tmp / f"{j}.rows") for j in range(p.n_subtrees)]
    handles = [(open(v, "wb"), open(r, "wb")) for v, r in files]
    try:
        for offset, x in _embedding_batches(table, batch_rows):
            part = node[offset:offset + len(x)]
            order = np.argsort(part, kind="stable")
            bounds = np.searchsorted(part[order], np.arange(p.n_subtrees + 1))
            for j in np.flatnonzero(np.diff(bounds)):
                picked = order[bounds[j]:bounds[j + 1]]
                handles[j][0].write(x[picked].tobytes())
                handles[j][1].write((picked + offset).astype(np.int64).tobytes())
    finally:
        for vf, rf in handles:
            vf.close()
            rf.close()
    del node
    # Subtree j's leaves are a contiguous run of the tree's codes, after subtree j-1's: sorting each
    # subtree's own leaves puts the whole catalogue in code order, with no sort of all the items.
    codes = np.empty(p.n_items, dtype=np.int64)
    rows_out = np.empty(p.n_items, dtype=np.int64)
    filled = 0
    below = p.depth - cut
    scale = k ** below
    base = first_code(cut, k)
    for j, (vector_file, row_file) in enumerate(files):
        rows = np.fromfile(row_file, dtype=np.int64)
        vectors = np.fromfile(vector_file, dtype=np.float32).reshape(len(rows), p.dim)
        os.unlink(vector_file)
        os.unlink(row_file)
        if len(rows):
            # Each subtree its own seed: same result whatever order they are built in.
            local = learnt_leaf_codes(vectors, k, iters=iters, seed=seed + 1 + j, threads=threads,
                                      overwrite=True, depth=below)
            order = np.argsort(local, kind="stable")
            codes[filled:filled + len(rows)] = (base + j) * scale + local[order]
            rows_out[filled:filled + len(rows)] = rows[order]
            filled += len(rows)
        del vectors, rows
        if progress:
            progress(1)
    assert filled == p.n_items
    return codes, rows_out
