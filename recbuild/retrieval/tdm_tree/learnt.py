"""Learnt mode: leaf codes by balanced k-means, level by level, all nodes of a level at once (torch,
vectorised), as variant (d) of the reference bench (bench/tree.py).

Exact balance: a node of n items gets children of floor(n/k) or ceil(n/k) items, so every item
stays within reach of the leaf level. k == 2 has its own one-pass split (``_two_means_level``);
k > 2 assigns greedily under the size targets (``_greedy_balanced_assign``).
"""

from __future__ import annotations

import warnings

import numpy as np

from recbuild.retrieval.tdm_tree.codes import check_code_range, tree_depth
from recbuild.retrieval.threads import threads_for_load


def learnt_leaf_codes(vectors: np.ndarray, k: int, *, iters: int = 10, seed: int = 0,
                      threads: int | None = None, progress=None, overwrite: bool = False,
                      depth: int | None = None) -> np.ndarray:
    """Leaf codes of the rows of ``vectors`` by level-by-level balanced k-means (torch).

    ``overwrite=True`` lets the build reuse ``vectors`` (float32, C-contiguous) as a work buffer
    instead of copying it (saves one copy of the matrix; the contents are scrambled afterwards).
    ``depth``: levels below the root (default the smallest that holds every row; a subtree of a
    larger tree may need more, its leaves then sit on the big tree's last level).
    """
    import torch

    n, _ = vectors.shape
    depth = tree_depth(n, k) if depth is None else depth
    check_code_range(k, depth)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads_for_load(threads or previous_threads))
    try:
        with torch.inference_mode():
            return _learnt_codes(vectors, k, depth, iters, seed, progress, overwrite)
    finally:
        torch.set_num_threads(previous_threads)


def _learnt_codes(vectors: np.ndarray, k: int, depth: int, iters: int, seed: int, progress,
                  overwrite: bool) -> np.ndarray:
    import torch

    n = vectors.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    owned = (overwrite and vectors.dtype == np.float32 and vectors.flags.c_contiguous
             and vectors.flags.writeable)
    x = torch.from_numpy(vectors if owned else np.array(vectors, dtype=np.float32, order="C"))
    spare = torch.empty_like(x)
    perm = torch.arange(n)  # x[i] is item perm[i]; nodes are contiguous runs of x
    codes = torch.zeros(n, dtype=torch.int64)  # code of the node item perm[i] sits in
    bounds = np.array([0, n], dtype=np.int64)  # node boundaries in x
    for _ in range(depth):
        sizes = np.diff(bounds)
        seg = torch.repeat_interleave(torch.arange(len(sizes)), torch.from_numpy(sizes))
        if (sizes > k).any():
            # Every node of the level at once. Nodes of at most k items go through the same
            # balanced assignment (floor/ceil targets give each child at most one item): running
            # them along costs a little time but needs no gathered copy of their rows.
            digit, sort_key, order = _balanced_kmeans_level(x, bounds, k, iters, generator)
        else:  # only nodes of at most k items left: item j goes to child j
            digit = torch.arange(n) - torch.from_numpy(bounds[:-1])[seg]
            sort_key = torch.zeros(n, dtype=torch.float32)
            order = torch.arange(n)  # rows are already in (node, child) order
        codes = codes * k + 1 + digit
        # Reorder so every child is a contiguous run, children in code order.
        if order is None:
            order = _lexsort_torch(sort_key, seg * k + digit)
        del sort_key
        perm = perm[order]
        codes = codes[order]
        torch.index_select(x, 0, order, out=spare)  # reuse one buffer: no 256 MB allocation per level
        x, spare = spare, x
        child_sizes = torch.bincount(seg * k + digit, minlength=len(sizes) * k).numpy()
        bounds = np.concatenate([[0], np.cumsum(child_sizes[child_sizes > 0])]).astype(np.int64)
        if progress:
            progress(1)
    assert len(bounds) == n + 1, "an item was not isolated: depth too small"
    out = np.empty(n, dtype=np.int64)
    out[perm.numpy()] = codes.numpy()
    return out


def _lexsort_torch(minor, major):
    """Stable order by (major, minor)."""
    import torch

    first = torch.sort(minor, stable=True).indices
    second = torch.sort(major[first], stable=True).indices
    return first[second]


def _segment_sum(weights, crow, n_segments: int, x):
    """Per-segment weighted sums of the rows of x (segments are contiguous runs: a CSR product)."""
    import torch

    n = x.shape[0]
    with warnings.catch_warnings():  # "sparse CSR is beta" / invariant-check notices, once per call
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(crow, torch.arange(n), weights, size=(n_segments, n),
                                         check_invariants=False)
        return matrix @ x


def _balanced_kmeans_level(x, bounds: np.ndarray, k: int, iters: int, generator, keep: dict | None = None):
    """Cluster every segment of x into k children of floor/ceil(n/k) items (all segments at once).

    Returns (digit per row, sort key per row) where the sort key orders rows inside a child.
    ``keep`` (a dict) receives the final centroids, [segments, k, d], under "centroids".
    """
    import torch

    n, d = x.shape
    sizes_np = np.diff(bounds)
    n_seg = len(sizes_np)
    sizes = torch.from_numpy(sizes_np)
    starts = torch.from_numpy(bounds[:-1])
    crow = torch.from_numpy(bounds)
    seg = torch.repeat_interleave(torch.arange(n_seg), sizes)

    # Init: k distinct items per segment, evenly spaced from a random start (rows of a segment are
    # ordered by the previous level's split score, so the picks span the segment).
    start = (torch.rand(n_seg, generator=generator, dtype=torch.float64) * sizes).long()
    stride = sizes // k
    picks = (start[:, None] + torch.arange(k)[None, :] * stride[:, None]) % sizes[:, None]
    centroids = x[(starts[:, None] + picks).reshape(-1)].reshape(n_seg, k, d)

    total = _segment_sum(torch.ones(n), crow, n_seg, x)
    if k == 2:
        return _two_means_level(x, seg, sizes, starts, crow, centroids, total, iters, keep)
    previous = None
    for it in range(iters + 1):
        score = _relative_scores(x, seg, centroids)  # [n, k]; larger = closer
        if it == iters:
            break
        assign = score.argmax(1)
        if previous is not None and torch.equal(assign, previous):
            break  # Lloyd reached a fixed point: more iterations would change nothing
        previous = assign
        counts = torch.bincount(seg * k + assign, minlength=n_seg * k).reshape(n_seg, k)
        sums = torch.empty(n_seg, k, d)
        rest = total.clone()
        for j in range(1, k):
            sums[:, j] = _segment_sum((assign == j).to(torch.float32), crow, n_seg, x)
            rest -= sums[:, j]
        sums[:, 0] = rest
        # An empty cluster keeps its centroid.
        centroids = torch.where((counts > 0)[:, :, None], sums / counts.clamp(min=1)[:, :, None], centroids)
    if keep is not None:
        keep["centroids"] = centroids
    # True negative squared distances (up to no constant): ranking items by closeness to one
    # centroid must not depend on the items' own norms.
    score -= _squared_norms(x)[:, None]
    digit, key = _greedy_balanced_assign(score, seg, sizes, starts, k)
    return digit, key, None


def _row_dots(x, weights, seg, chunk: int = 1 << 16):
    """out[i] = x[i] . weights[seg[i]], in chunks of rows: a [chunk, d] scratch buffer instead of a
    gathered copy of the whole matrix (which cost a quarter of the peak memory at 1M x 64)."""
    import torch

    n, d = x.shape
    out = torch.empty(n)
    scratch = torch.empty(min(chunk, n), d)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        rows = scratch[: hi - lo]
        torch.index_select(weights, 0, seg[lo:hi], out=rows)
        rows.mul_(x[lo:hi])
        torch.sum(rows, 1, out=out[lo:hi])
    return out


def _squared_norms(x, chunk: int = 1 << 16):
    import torch

    out = torch.empty(x.shape[0])
    for lo in range(0, x.shape[0], chunk):
        rows = x[lo:lo + chunk]
        torch.sum(rows * rows, 1, out=out[lo:lo + len(rows)])
    return out


def _two_means_level(x, seg, sizes, starts, crow, centroids, total, iters, keep=None):
    """k == 2 needs one pass per iteration: the sign of s = x.2(c1-c0) + |c0|^2 - |c1|^2 says which
    centroid is nearer, and sorting by s gives the best balanced split (first ceil(n/2) -> child 0)."""
    import torch

    n = x.shape[0]
    n_seg = len(sizes)
    c0, c1 = centroids[:, 0], centroids[:, 1]
    size_f = sizes.to(torch.float32)
    previous = None
    for it in range(iters + 1):
        w = 2.0 * (c1 - c0)
        b = (c0 * c0).sum(1) - (c1 * c1).sum(1)
        score = _row_dots(x, w, seg) + b.index_select(0, seg)
        if it == iters:
            break
        nearer_c1 = score > 0
        if previous is not None and torch.equal(nearer_c1, previous):
            break  # Lloyd reached a fixed point: more iterations would change nothing
        previous = nearer_c1
        ones = nearer_c1.to(torch.float32)
        sum1 = _segment_sum(ones, crow, n_seg, x)
        n1 = torch.bincount(seg[score > 0], minlength=n_seg).to(torch.float32)
        n0 = size_f - n1
        c1 = torch.where((n1 > 0)[:, None], sum1 / n1.clamp(min=1)[:, None], c1)
        c0 = torch.where((n0 > 0)[:, None], (total - sum1) / n0.clamp(min=1)[:, None], c0)
    if keep is not None:
        keep["centroids"] = torch.stack([c0, c1], 1)
    order = _lexsort_torch(score, seg)
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[seg[order]]
    digit = (rank >= (sizes[seg] + 1) // 2).long()
    return digit, score, order  # order is already by (segment, digit, score)


def _relative_scores(x, seg, centroids):
    """score[i, j] = 2 x.c_j - |c_j|^2 (argmax = nearest centroid), one centroid index at a time."""
    import torch

    n = x.shape[0]
    k = centroids.shape[1]
    score = torch.empty(n, k)
    norms = (centroids * centroids).sum(2)  # [S, k]
    for j in range(k):
        dots = _row_dots(x, centroids[:, j, :].contiguous(), seg)
        score[:, j] = 2.0 * dots - norms[:, j].index_select(0, seg)
    return score


def _greedy_balanced_assign(score, seg, sizes, starts, k: int):
    """Exact floor/ceil balance for k > 2, per segment, vectorised over segments:
    every cluster keeps its closest members up to its target size; the rest are handed out cluster
    by cluster (in index order) to the closest clusters with room (TorchEasyRec's rule, with
    floor/ceil targets so children fit the level below)."""
    import torch

    n = score.shape[0]
    n_seg = len(sizes)
    targets = (sizes // k)[:, None] + (torch.arange(k)[None, :] < (sizes % k)[:, None]).long()  # [S, k]
    assign = score.argmax(1)
    own = score.gather(1, assign[:, None]).squeeze(1)
    # Members of (segment, cluster) ordered by closeness; rank inside the group.
    group = seg * k + assign
    order = _lexsort_torch(-own, group)
    group_sorted = group[order]
    group_start = torch.zeros(n_seg * k, dtype=torch.int64)
    counts = torch.bincount(group, minlength=n_seg * k)
    group_start[1:] = torch.cumsum(counts, 0)[:-1]
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - group_start[group_sorted]
    keep = rank < targets.reshape(-1)[group]
    digit = torch.where(keep, assign, torch.full_like(assign, -1))
    filled = torch.bincount(group[keep], minlength=n_seg * k).reshape(n_seg, k)
    deficit = targets - filled
    for j in range(k):
        pool = torch.nonzero(digit < 0).squeeze(1)
        if len(pool) == 0:
            break
        pool_seg = seg[pool]
        pool_order = _lexsort_torch(-score[pool, j], pool_seg)
        sorted_seg = pool_seg[pool_order]
        seg_start = torch.zeros(n_seg, dtype=torch.int64)
        seg_start[1:] = torch.cumsum(torch.bincount(pool_seg, minlength=n_seg), 0)[:-1]
        pool_rank = torch.arange(len(pool)) - seg_start[sorted_seg]
        take = pool_rank < deficit[sorted_seg, j]
        digit[pool[pool_order[take]]] = j
    assert bool((digit >= 0).all())
    own = score.gather(1, digit[:, None]).squeeze(1)
    return digit, -own
