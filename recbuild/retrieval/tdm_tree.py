"""TDM trees: leaf codes for every item, all leaves on one level, for any branching factor k >= 2.

Node coding is TorchEasyRec's (tzrec_formats.md section 2.2): root code 0, the children of code c
are ``k*c+1 .. k*c+k``, the parent of c is ``(c-1)//k``. Codes on level L run from
``(k**L-1)//(k-1)``. Every item becomes a leaf on level D, the smallest integer with ``k**D >= N``
(integer arithmetic: tzrec's ``math.log`` gives an extra level for ``log(125, 5)`` and its
``k**L-1`` "first code" is right for k == 2 only, which leaves items on mixed levels for k > 2).

Two ways to give items their codes; both cut every node into k contiguous children level by
level, so a node of n items has children of floor(n/k) or ceil(n/k) items, and ``ceil(n/k) <=
k**(D-L-1)`` keeps every item within reach of level D. A node left with one item passes it to its
first child (``code*k+1``, as tzrec pulls leaves down):

- ``init_leaf_codes``: items sorted by (category, id) split into contiguous slices; slice i of
  ``[s, e)`` is ``[s + i*n//k, s + (i+1)*n//k)`` and gets child ``k-1-i`` (tzrec's TreeGenerator,
  so the first sorted item ends up with the highest code).
- ``learnt_leaf_codes``: balanced k-means, all nodes of a level at once (torch, vectorised), as
  variant (d) of the reference bench. Exact balance: child sizes floor/ceil of n/k.

Internal node ids are ``max(0, max item id) + code + 1`` (tzrec's int mode) or, with string ids,
``nonleaf#<code, zero-padded to the width of the largest leaf code>`` (tzrec's hash mode).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from recbuild.errors import BuildError, InputError
from recbuild.retrieval.threads import threads_for_load

INT64_MAX = np.iinfo(np.int64).max


def tree_depth(n_items: int, k: int) -> int:
    """Smallest D >= 1 with k**D >= n_items (integer arithmetic; a lone item still gets a root)."""
    if k < 2:
        raise BuildError(f"n_cluster must be at least 2, got {k}; a tree needs branching")
    depth, capacity = 1, k
    while capacity < n_items:
        depth += 1
        capacity *= k
    return depth


def first_code(level: int, k: int) -> int:
    """Code of the leftmost node on ``level`` (root level 0)."""
    return (k ** level - 1) // (k - 1)


def level_of(codes: np.ndarray, k: int, depth: int) -> np.ndarray:
    starts = np.array([first_code(level, k) for level in range(depth + 2)], dtype=np.int64)
    return (np.searchsorted(starts, codes, side="right") - 1).astype(np.int64)


def _check_code_range(k: int, depth: int) -> None:
    if first_code(depth + 1, k) > INT64_MAX:
        raise InputError(f"a tree with n_cluster={k} and {depth} levels has codes beyond int64")


# -- init mode ---------------------------------------------------------------------------------
def init_leaf_codes(n_items: int, k: int, depth: int | None = None) -> np.ndarray:
    """Leaf codes of items 0..n-1 *in sorted order* under tzrec's contiguous split."""
    depth = tree_depth(n_items, k) if depth is None else depth
    _check_code_range(k, depth)
    position = np.arange(n_items, dtype=np.int64)
    start = np.zeros(n_items, dtype=np.int64)
    size = np.full(n_items, n_items, dtype=np.int64)
    code = np.zeros(n_items, dtype=np.int64)
    for _ in range(depth):
        offset = position - start
        # slice i holds offsets [i*size//k, (i+1)*size//k): the largest i with i*size//k <= offset
        slice_no = ((offset + 1) * k - 1) // size
        low = (slice_no * size) // k
        high = ((slice_no + 1) * size) // k
        start += low
        size = high - low
        code = code * k + 1 + (k - 1 - slice_no)
    assert np.all(size == 1), "an item was not isolated: depth too small"
    return code


def init_order(ids, categories) -> np.ndarray:
    """Row order for init mode: by category (as a string, like tzrec; null is ""), then by id."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cate = categories
    if isinstance(cate, pa.ChunkedArray):
        cate = cate.combine_chunks()
    if pa.types.is_dictionary(cate.type):
        cate = cate.dictionary_decode()
    cate = pc.fill_null(cate.cast(pa.string()), "")
    table = pa.table({"cate": cate, "id": ids})
    return pc.sort_indices(table, sort_keys=[("cate", "ascending"), ("id", "ascending")]).to_numpy()


# -- learnt mode -------------------------------------------------------------------------------
def learnt_leaf_codes(vectors: np.ndarray, k: int, *, iters: int = 10, seed: int = 0,
                      threads: int | None = None, progress=None, overwrite: bool = False) -> np.ndarray:
    """Leaf codes of the rows of ``vectors`` by level-by-level balanced k-means (torch).

    ``overwrite=True`` lets the build reuse ``vectors`` (float32, C-contiguous) as a work buffer
    instead of copying it (saves one copy of the matrix; the contents are scrambled afterwards).
    """
    import torch

    n, _ = vectors.shape
    depth = tree_depth(n, k)
    _check_code_range(k, depth)
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


def _balanced_kmeans_level(x, bounds: np.ndarray, k: int, iters: int, generator):
    """Cluster every segment of x into k children of floor/ceil(n/k) items (all segments at once).

    Returns (digit per row, sort key per row) where the sort key orders rows inside a child.
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
        return _two_means_level(x, seg, sizes, starts, crow, centroids, total, iters)
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


def _two_means_level(x, seg, sizes, starts, crow, centroids, total, iters):
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


# -- the tree ----------------------------------------------------------------------------------
@dataclass
class TdmTree:
    """Every node of a TDM tree in level order (= ascending code)."""

    k: int
    depth: int  # leaves are on level `depth`; the tree has depth + 1 levels
    codes: np.ndarray  # int64, ascending
    ids: np.ndarray  # int64 (int mode) or object array of str (hash mode), aligned with codes
    hash_ids: bool = False

    @property
    def num_levels(self) -> int:
        return self.depth + 1

    @property
    def levels(self) -> np.ndarray:
        return level_of(self.codes, self.k, self.depth)

    @property
    def leaf_mask(self) -> np.ndarray:
        return self.codes >= first_code(self.depth, self.k)

    @property
    def root_id(self):
        return self.ids[0]

    def id_strings(self) -> list[str]:
        return [str(v) for v in self.ids.tolist()]

    def index_of_codes(self, codes: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.codes, codes)
        found = self.codes[np.minimum(pos, len(self.codes) - 1)]
        if np.any(pos >= len(self.codes)) or np.any(found != codes):
            raise KeyError("code not in tree")
        return pos

    def parent_index(self) -> np.ndarray:
        """Index (into codes) of each node's parent; -1 for the root."""
        parent = np.full(len(self.codes), -1, dtype=np.int64)
        parent[1:] = self.index_of_codes((self.codes[1:] - 1) // self.k)
        return parent

    def children_index(self, node_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(owner position in node_index, child index) for every existing child, in code order."""
        child_codes = self.codes[node_index][:, None] * self.k + 1 + np.arange(self.k)[None, :]
        pos = np.searchsorted(self.codes, child_codes)
        pos_clipped = np.minimum(pos, len(self.codes) - 1)
        exists = self.codes[pos_clipped] == child_codes
        owner = np.nonzero(exists)[0]
        return owner, pos_clipped[exists]

    def same_as(self, other: "TdmTree") -> bool:
        return (self.k == other.k and self.depth == other.depth
                and np.array_equal(self.codes, other.codes) and self.id_strings() == other.id_strings())


def assemble_tree(leaf_codes: np.ndarray, leaf_ids, k: int, depth: int, hash_ids: bool) -> TdmTree:
    """All nodes (leaves plus every ancestor) with their ids. ``leaf_ids``: int64 array or list[str]."""
    leaf_codes = np.asarray(leaf_codes, dtype=np.int64)
    if len(np.unique(leaf_codes)) != len(leaf_codes):
        raise BuildError("internal error: two items share a leaf code")
    lowest = first_code(depth, k)
    if len(leaf_codes) and (leaf_codes.min() < lowest or leaf_codes.max() >= first_code(depth + 1, k)):
        raise BuildError("internal error: a leaf is not on the last level")
    internal = []
    current = np.unique(leaf_codes)
    for _ in range(depth):
        current = np.unique((current - 1) // k)
        internal.append(current)
    internal_codes = np.unique(np.concatenate(internal)) if internal else np.zeros(0, np.int64)
    order = np.argsort(leaf_codes, kind="stable")
    codes = np.concatenate([internal_codes, leaf_codes[order]])
    max_code = int(leaf_codes.max())
    if hash_ids:
        width = len(str(max_code))
        internal_ids = [f"nonleaf#{int(c):0{width}d}" for c in internal_codes]
        leaves = [leaf_ids[i] for i in order]
        ids = np.array(internal_ids + list(leaves), dtype=object)
    else:
        leaf_ids = np.asarray(leaf_ids, dtype=np.int64)
        base = max(0, int(leaf_ids.max()))
        if base + max_code + 1 > INT64_MAX:
            raise InputError("item ids are too large: internal node ids (max item id + code + 1) would "
                             "overflow int64; use id_hash: true")
        ids = np.concatenate([base + internal_codes + 1, leaf_ids[order]]).astype(np.int64)
    return TdmTree(k=k, depth=depth, codes=codes, ids=ids, hash_ids=hash_ids)


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


def ancestor_codes(leaf_codes: np.ndarray, k: int, depth: int) -> np.ndarray:
    """[n_leaves, depth] codes: column 0 the parent, the last column the root (code 0)."""
    out = np.empty((len(leaf_codes), depth), dtype=np.int64)
    current = np.asarray(leaf_codes, dtype=np.int64)
    for level in range(depth):
        current = (current - 1) // k
        out[:, level] = current
    return out


def check_tree_invariants(tree: TdmTree, n_items: int) -> None:
    """Every item is exactly one leaf, all leaves on the last level (raises AssertionError)."""
    leaves = tree.leaf_mask
    assert int(leaves.sum()) == n_items
    assert np.all(tree.levels[leaves] == tree.depth)
    assert tree.codes[0] == 0 and np.all(np.diff(tree.codes) > 0)
    parent = tree.parent_index()
    assert np.all(parent[1:] >= 0)


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


def ids_for_hash_mode(ids) -> list[str]:
    """Item ids as strings (hash mode keeps string ids; ints print as decimal)."""
    import pyarrow as pa

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    return ids.cast(pa.string()).to_pylist()


def validate_item_ids(ids, where: str, hash_ids: bool):
    """Item ids -> int64 numpy (int mode) or list[str] (hash mode); rejects nulls and duplicates."""
    import pyarrow as pa

    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if ids.null_count:
        bad = int(np.argmin(ids.is_valid().to_numpy(zero_copy_only=False)))
        raise InputError(f"{where}: item id is null at row {bad}")
    if hash_ids:
        values: Sequence = ids_for_hash_mode(ids)
        keys = np.array(values, dtype=object)
        uniq, counts = np.unique(keys, return_counts=True)
    else:
        if pa.types.is_dictionary(ids.type):
            ids = ids.dictionary_decode()
        if not pa.types.is_integer(ids.type):
            raise InputError(f"{where}: item ids have type {ids.type}; integer ids are needed for "
                             "tzrec's int mode (internal ids = max item id + code + 1), or set "
                             "id_hash: true for string ids")
        values = ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
        if len(values) and values.min() < 0:
            raise InputError(f"{where}: negative item ids (e.g. {int(values.min())}) could collide with "
                             "internal node ids or the -1 root marker; use id_hash: true")
        uniq, counts = np.unique(values, return_counts=True)
    if np.any(counts > 1):
        dups = [str(v) for v in uniq[counts > 1][:3]]
        raise InputError(f"{where}: duplicate item ids ({', '.join(dups)}); every item must be one leaf")
    return values
