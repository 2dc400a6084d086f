"""Offline retrieval metrics: recall@k / hitrate@k against ground truth, index-vs-exact recall, and a
TDM beam search over a tree with any scoring function.

Definitions (TorchEasyRec's hitrate, tzrec_formats.md section 4.2, with ids compared as strings):
  - a *request* is a group of rows sharing the request column (e.g. user_id); its ground truth is
    the set of unique gt ids over its rows (rows with a non-positive label excluded); requests
    without ground truth are skipped;
  - ``hitrate@k`` = sum over requests of |top-k ∩ gt| / sum of |gt|   (micro average, tzrec)
  - ``recall@k``  = mean over requests of |top-k ∩ gt| / |gt|         (macro average)
  - ``index_recall@k`` = mean over requests of |index top-k ∩ exact top-k| / |exact top-k|, where
    exact = IndexFlat with the same metric over the same item vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from recbuild.errors import InputError

ROUND = 6  # digits kept in metrics.json (the values are deterministic; this keeps them readable)


# -- ground truth ------------------------------------------------------------------------------
def gt_lists(column, delimiter: str = ",") -> list[list[str]]:
    """A gt column of one batch -> per row, its gt ids as strings.

    Accepts a scalar id column (int or string: one id per row), a list column, or a string of
    ids joined by ``delimiter``. Nulls give an empty list.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    t = column.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return [[str(v) for v in row if v is not None] if row is not None else []
                for row in column.to_pylist()]
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        parts = pc.split_pattern(column, delimiter).to_pylist()
        return [[s.strip() for s in row if s.strip()] if row is not None else [] for row in parts]
    values = column.cast(pa.string()).to_pylist()
    return [[v] if v is not None else [] for v in values]


@dataclass
class Requests:
    """Ground truth per request, and the request's first row (its query vector, its features)."""

    keys: list[str] = field(default_factory=list)
    gt: list[set[str]] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    first_rows: list[int] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def add(self, keys: Sequence[str] | None, gts: Sequence[Sequence[str]], vectors: np.ndarray | None,
            positive: np.ndarray | None = None, row_offset: int = 0) -> None:
        """Add one batch. ``keys`` None: every row is its own request."""
        for row in range(len(gts)):
            key = keys[row] if keys is not None else f"#{row_offset + row}"
            slot = self._index.get(key)
            if slot is None:
                slot = len(self.keys)
                self._index[key] = slot
                self.keys.append(key)
                self.gt.append(set())
                self.first_rows.append(row_offset + row)
                if vectors is not None:
                    self.vectors.append(vectors[row])
            if positive is None or positive[row]:
                self.gt[slot].update(gts[row])

    def finished(self) -> tuple[np.ndarray | None, list[set[str]], int, np.ndarray]:
        """(query matrix or None, gt sets, requests skipped, first row of each kept request), for
        the requests that have ground truth."""
        keep = [i for i, g in enumerate(self.gt) if g]
        if not keep:
            raise InputError("no request has ground truth: check gt_column / label_column")
        matrix = None
        if self.vectors:
            matrix = np.ascontiguousarray(np.stack([self.vectors[i] for i in keep]), dtype=np.float32)
        rows = np.array([self.first_rows[i] for i in keep], dtype=np.int64)
        return matrix, [self.gt[i] for i in keep], len(self.gt) - len(keep), rows


# -- metrics -----------------------------------------------------------------------------------
ABSENT = np.iinfo(np.int64).max  # the place of an id a list does not hold
PLACE_BLOCK_ELEMENTS = 1 << 23  # comparisons at once when placing ids in lists


class GroundTruth:
    """The requests' ground-truth id sets, dictionary-encoded (id string -> code) so hits are
    counted with array operations, not per-request set intersections."""

    def __init__(self, gt: Sequence[set[str]]):
        self.vocabulary: dict[str, int] = {}
        requests, codes = [], []
        for request, ids in enumerate(gt):
            for item in ids:
                requests.append(request)
                codes.append(self.vocabulary.setdefault(item, len(self.vocabulary)))
        self.request = np.array(requests, dtype=np.int64)  # one entry per (request, gt id) pair
        self.code = np.array(codes, dtype=np.int64)
        self.sizes = np.array([len(g) for g in gt], dtype=np.float64)
        self.total = int(sum(len(g) for g in gt))

    def codes(self, ids) -> np.ndarray:
        """The code of each id string; -1 for None and for ids in no request's ground truth."""
        return np.fromiter((self.vocabulary.get(v, -1) for v in ids), dtype=np.int64, count=len(ids))

    def codes_of_strings(self, retrieved: np.ndarray) -> np.ndarray:
        return self.codes(retrieved.ravel().tolist()).reshape(retrieved.shape)

    def metrics(self, retrieved_codes: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
        """hit_metrics over retrieved lists given as codes ([requests, width], -1 = nothing)."""
        place = first_places(retrieved_codes[self.request], self.code)
        out: dict[str, float] = {}
        for k in ks:
            hits = np.bincount(self.request[place < k], minlength=len(self.sizes)).astype(np.float64)
            out[f"recall@{k}"] = round(float(np.mean(hits / self.sizes)), ROUND)
            out[f"hitrate@{k}"] = round(float(hits.sum() / self.total), ROUND)
        return out


def first_places(lists: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each row i: the first position of ``values[i]`` in ``lists[i]`` (ABSENT if none).
    ``values`` may be [rows] or [rows, m] (then one place per value)."""
    values = values.reshape(len(values), -1)
    place = np.full(values.shape, ABSENT, dtype=np.int64)
    block = max(1, PLACE_BLOCK_ELEMENTS // max(lists.shape[1] * values.shape[1], 1))
    for lo in range(0, len(values), block):
        match = lists[lo:lo + block, None, :] == values[lo:lo + block, :, None]
        found = match.any(axis=2)
        place[lo:lo + block][found] = match.argmax(axis=2)[found]
    return place.reshape(-1) if values.shape[1] == 1 else place


def hit_metrics(retrieved: np.ndarray, gt: Sequence[set[str]], ks: Sequence[int]) -> dict[str, float]:
    """recall@k (macro) and hitrate@k (micro) for each k. ``retrieved``: [requests, >=max k] of id
    strings (None where the index returned fewer)."""
    truth = GroundTruth(gt)
    return truth.metrics(truth.codes_of_strings(retrieved), ks)


def overlap_at_k(approx: np.ndarray, exact: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """index_recall@k: share of the exact top-k (faiss ids, -1 = none) the index also returned."""
    if _repeats_an_id(exact):  # faiss lists hold an id once; sets decide otherwise
        return _overlap_at_k_by_sets(approx, exact, ks)
    place = first_places(approx, exact)
    out = {}
    for k in ks:
        truth = exact[:, :k] >= 0
        sizes = truth.sum(axis=1)
        hits = (truth & (place[:, :k] < k)).sum(axis=1)
        kept = sizes > 0
        out[f"index_recall@{k}"] = round(float(np.mean(hits[kept] / sizes[kept])), ROUND) \
            if kept.any() else 0.0
    return out


def _repeats_an_id(ids: np.ndarray) -> bool:
    ordered = np.sort(ids, axis=1)
    return bool(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any())


def _overlap_at_k_by_sets(approx: np.ndarray, exact: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    out = {}
    for k in ks:
        scores = []
        for a, e in zip(approx[:, :k], exact[:, :k]):
            truth = set(e[e >= 0].tolist())
            if truth:
                scores.append(len(truth.intersection(a[a >= 0].tolist())) / len(truth))
        out[f"index_recall@{k}"] = round(float(np.mean(scores)), ROUND) if scores else 0.0
    return out


def short_results(faiss_ids: np.ndarray, ks: Sequence[int]) -> dict[str, dict[str, int]]:
    """For each k that some query's search did not fill (faiss pads with -1 when the probed lists
    hold fewer than k items): how many queries fell short and the fewest results one got."""
    found = (faiss_ids >= 0).sum(axis=1) if faiss_ids.size else np.zeros(len(faiss_ids), dtype=np.int64)
    out = {}
    for k in ks:
        short = found < k
        if short.any():
            out[str(k)] = {"queries": int(short.sum()), "fewest": int(found.min())}
    return out


def exact_top_k(chunks, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Faiss ids of the exact top ``k`` of every query over all ``chunks`` ((vectors, faiss ids) in
    any order): each chunk is searched by a flat index and merged into one running top-k heap, so
    memory is one chunk plus [queries, k], whatever the number of items. -1 where fewer exist."""
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=(metric == "ip"))
    for vectors, ids in chunks:
        flat = faiss.IndexFlatIP(queries.shape[1]) if metric == "ip" else faiss.IndexFlatL2(queries.shape[1])
        flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
        scores, found = flat.search(queries, min(k, len(vectors)))
        found = np.where(found >= 0, np.asarray(ids, dtype=np.int64)[np.maximum(found, 0)], -1)
        heap.add_result(np.ascontiguousarray(scores), np.ascontiguousarray(found))
        del flat
    heap.finalize()
    return heap.I


def sample_requests(n_requests: int, max_queries: int | None, seed: int) -> np.ndarray | None:
    """Sorted, seeded positions of the requests to evaluate (None: all of them)."""
    if not max_queries or n_requests <= max_queries:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_requests, size=max_queries, replace=False)).astype(np.int64)


def map_ids(faiss_ids: np.ndarray, id_mapping) -> np.ndarray:
    """faiss ids -> item id strings (None for -1); ``id_mapping`` an IdMapping or an array of str."""
    if not isinstance(id_mapping, np.ndarray):  # an IdMapping
        return id_mapping.take(faiss_ids)
    out = np.empty(faiss_ids.shape, dtype=object)
    valid = faiss_ids >= 0
    out[valid] = id_mapping[faiss_ids[valid]]
    return out


def counted_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
    """index.search(queries, k) -> (faiss ids, wall seconds, mean distance computations per query:
    a deterministic stand-in for latency in metrics.json), from one search."""
    import time

    import faiss

    from recbuild.retrieval.faiss_index import index_kind

    kind = index_kind(index)
    stats = None if kind == "Flat" else \
        faiss.cvar.hnsw_stats if kind == "HNSWFlat" else faiss.cvar.indexIVF_stats
    if stats is not None:
        stats.reset()
    started = time.perf_counter()
    _, ids = index.search(queries, k)
    elapsed = time.perf_counter() - started
    cost = float(index.ntotal) if stats is None else round(float(stats.ndis) / max(len(queries), 1), 2)
    return ids, elapsed, cost


def search_cost(index, queries: np.ndarray, k: int) -> float:
    """Mean distance computations per query: a deterministic stand-in for latency in metrics.json."""
    return counted_search(index, queries, k)[2]


# -- TDM beam search ---------------------------------------------------------------------------
def tdm_beam_search(tree, score: Callable[[np.ndarray, np.ndarray], np.ndarray], n_queries: int,
                    retrieval_num: int, beam_width: int | None = None) -> list[np.ndarray]:
    """Layer-wise beam search over a TDM tree (tzrec's retrieval, vectorised over queries).

    ``score(query_index, node_index)`` returns one score per (query, node) pair (larger = better);
    ``node_index`` indexes ``tree.codes`` / ``tree.ids`` (the TDM model reads ``tree.ids[node_index]``
    as ``item_id``) and the rows of node_feature (same level order). On every level the
    children of the beam are candidates; when a query has more than ``beam_width`` (default
    2 * retrieval_num, as tzrec) they are scored and the best kept; on the leaf level every
    candidate is scored and the best ``retrieval_num`` leaves are returned, best first.
    Returns, per query, the leaf ids.
    """
    beam_width = beam_width or 2 * retrieval_num
    # beam: (query, node index) pairs, starting at the root (node index 0)
    queries = np.arange(n_queries, dtype=np.int64)
    nodes = np.zeros(n_queries, dtype=np.int64)
    for level in range(1, tree.depth + 1):
        owner, children = tree.children_index(nodes)
        queries, nodes = queries[owner], children
        last = level == tree.depth
        counts = np.bincount(queries, minlength=n_queries)
        keep = retrieval_num if last else beam_width
        if not last and counts.max(initial=0) <= keep:
            continue  # nothing to prune on this level: no scoring needed
        scores = np.asarray(score(queries, nodes), dtype=np.float64)
        if scores.shape != queries.shape:
            raise ValueError(f"score() returned shape {scores.shape}, expected {queries.shape}")
        chosen = best_per_query(queries, scores, n_queries, keep)
        queries, nodes = queries[chosen], nodes[chosen]
    bounds = np.searchsorted(queries, np.arange(n_queries + 1))
    return [tree.ids[nodes[bounds[q]:bounds[q + 1]]] for q in range(n_queries)]


def best_per_query(queries: np.ndarray, scores: np.ndarray, n_queries: int, keep: int) -> np.ndarray:
    """Positions of each query's ``keep`` best candidates, best first, ties in candidate order
    (NaN last): what a stable ``np.lexsort((-scores, queries))`` cut at ``keep`` per query gives,
    for ``queries`` sorted, as the beam keeps them. Each query's candidates are sorted in their own
    row of a padded matrix: several times faster than sorting all candidates by two keys."""
    counts = np.bincount(queries, minlength=n_queries)
    starts = np.cumsum(counts) - counts
    padded = np.full((n_queries, counts.max(initial=0)), np.nan)  # padding sorts after all, NaN too
    padded[queries, np.arange(len(queries)) - starts[queries]] = -scores
    within = np.argsort(padded, axis=1, kind="stable")[:, :keep]
    return (starts[:, None] + within)[within < counts[:, None]]


def leaf_codes(found: Sequence[np.ndarray], truth: GroundTruth, width: int) -> np.ndarray:
    """tdm_beam_search's leaf ids per request as ground-truth codes, [requests, width] (-1 = none):
    each distinct id is turned into a string once (ids are compared as strings)."""
    codes = np.full((len(found), width), -1, dtype=np.int64)
    lengths = np.array([min(len(ids), width) for ids in found], dtype=np.int64)
    if not lengths.sum():
        return codes
    flat = np.concatenate([ids[:width] for ids in found])
    distinct, inverse = np.unique(flat, return_inverse=True)
    rows = np.repeat(np.arange(len(found)), lengths)
    columns = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    codes[rows, columns] = truth.codes([str(v) for v in distinct.tolist()])[inverse.ravel()]
    return codes


def tdm_recall(retrieved: Sequence[np.ndarray], gt: Sequence[set[str]]) -> float:
    """tzrec's TDM retrieval recall: share of rows whose gt item is among the retrieved ids."""
    hits = sum(1 for ids, g in zip(retrieved, gt) if g.intersection(str(v) for v in ids))
    return round(hits / max(len(gt), 1), ROUND)
