"""Evaluation during training: the metrics, the line each evaluation appends to
train_eval_result_v2.txt, and how each task evaluates a model.

  retrieval  exact-search recall@K of eval positives against every item of the catalog, beside a
             popularity baseline (the same K most clicked items for every query)
  tdm        AUC over layer-wise samples of the eval clicks, drawn once
  ranking    AUC on the eval rows
"""

from __future__ import annotations

import json

import numpy as np

from recbuild.errors import InputError
from recbuild.ml.training.data import _batched, _concat, _ReplayableBatches, _to_tensors, iter_tables, positives_only


def format_eval_line(step: int, metrics: dict[str, float]) -> str:
    record = {"global_step": int(step)}
    for name in sorted(metrics):
        record[name] = round(float(metrics[name]), 6)
    return json.dumps(record)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula, ties get their average rank. NaN without both classes."""
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank within runs of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    run_rank = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(run_rank, ends - starts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def recall_at_k(top_items: np.ndarray, truth_query: np.ndarray, truth_item: np.ndarray) -> float:
    """Micro-averaged recall: hits over unique (query, item) ground-truth pairs.

    top_items: [Q, K] candidate indexes per query; truth_*: unique pairs (query index, item index).
    Each pair is looked up in its own query's row: no set operation over all queries' candidates.
    """
    if len(truth_query) == 0:
        return float("nan")
    hits = (top_items[truth_query] == np.asarray(truth_item)[:, None]).any(axis=1)
    return float(np.count_nonzero(hits) / len(truth_query))


def recall_from_ranks(ranks: np.ndarray, k: int) -> float:
    """recall_at_k from each truth pair's position in its query's ranking (rank < k is a hit)."""
    if len(ranks) == 0:
        return float("nan")
    return float(np.count_nonzero(ranks < k) / len(ranks))


# Scores compared at once when ranking truth pairs (the gathered rows of one block).
RANK_BLOCK_ELEMENTS = 1 << 19


def truth_ranks(scores, rows: np.ndarray, items: np.ndarray, depth: int,
                may_hold_nan: bool = True) -> np.ndarray:
    """Where ``torch.topk(scores, depth)`` puts item ``items[p]`` in row ``rows[p]``; ``depth`` when
    it leaves it out. ``scores``: a float tensor [R, N]; ``may_hold_nan=False`` when the caller
    knows it cannot (skips a pass over the scores).

    A pair whose score no other item of its row shares comes right after the higher scores: a
    count of higher scores instead of a selection per row, and the same answer whatever order topk
    gives to ties elsewhere. With ``depth`` or more higher scores the pair is out whatever the ties.
    Otherwise a pair that shares its score (or a row holding NaN, which topk puts first) is placed
    by torch.topk itself on its row: topk selects in every row on its own, so that is the order the
    whole matrix would have given.
    """
    import torch

    matrix = scores.numpy()
    rows = np.asarray(rows, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    values = matrix[rows, items]
    ranks = np.empty(len(rows), dtype=np.int64)
    shared = np.zeros(len(rows), dtype=bool)
    block = max(1, RANK_BLOCK_ELEMENTS // max(matrix.shape[1], 1))
    for lo in range(0, len(rows), block):
        gathered = np.take(matrix, rows[lo:lo + block], axis=0)
        value = values[lo:lo + block, None]
        above = _trues_per_row(gathered > value)
        ranks[lo:lo + block] = above
        near = np.flatnonzero(above < depth)  # only these can be in; ties decide only for them
        if len(near):
            equal = _trues_per_row(gathered[near] == value[near])
            shared[lo + near] = equal != 1  # NaN equals nothing: 0
    if may_hold_nan:
        shared |= np.isnan(matrix).any(axis=1)[rows]
    ranks = np.minimum(ranks, depth)
    for pair in np.flatnonzero(shared):
        top = torch.topk(scores[rows[pair]:rows[pair] + 1], depth, dim=1).indices[0].numpy()
        where = np.flatnonzero(top == items[pair])
        ranks[pair] = where[0] if len(where) else depth
    return ranks


def _trues_per_row(mask: np.ndarray) -> np.ndarray:
    """True entries per row of a 2-d bool array, summed as bytes into the narrowest counter that
    cannot overflow (np.count_nonzero(axis=1) is about four times slower)."""
    counter = np.uint16 if mask.shape[1] < 1 << 16 else np.int64
    return mask.view(np.uint8).sum(axis=1, dtype=counter)


def products_are_finite(left, right) -> bool:
    """True when every entry of ``left @ right.T`` is surely finite (so no score is NaN): both
    finite, and too small for a sum of products to overflow float32."""
    import torch

    if left.numel() == 0 or right.numel() == 0:
        return True
    if not (bool(torch.isfinite(left).all()) and bool(torch.isfinite(right).all())):
        return False
    return float(left.abs().max()) * float(right.abs().max()) * left.shape[1] < 1e37


def _tower_outputs(model, inputs, output_name: str):
    import torch

    with torch.no_grad():
        return model(inputs)[output_name]


class RetrievalEvaluation:
    """Recall@K of the eval set's truth pairs by exact search over the catalog's items."""

    def __init__(self, config: dict, settings, catalog, eval_set):
        self.config, self.settings, self.catalog, self.eval_set = config, settings, catalog, eval_set
        ks = sorted(set(settings.k))
        self.headline = f"recall@{ks[len(ks) // 2]}"
        self.popularity: dict[str, float] | None = None  # constant across evaluations
        self.score_buffer = None  # [eval_batch_size, items] scores, reused

    def metrics(self, model) -> dict[str, float]:
        import torch

        from recbuild.ml.models import tower_attributes

        s, catalog, eval_set = self.settings, self.catalog, self.eval_set
        user_attr, item_attr = tower_attributes(self.config)
        user_tower = getattr(model, user_attr, model)
        item_tower = getattr(model, item_attr, model)
        item_emb = torch.cat([_tower_outputs(item_tower, _to_tensors(chunk), "item_tower_emb")
                              for chunk in _batched(catalog.inputs, s.eval_batch_size)])
        n_items = item_emb.shape[0]
        ks = sorted(set(s.k))
        # Exact search: each truth pair's place in torch.topk(scores, depth) of its query's row.
        depth = min(ks[-1], n_items)
        ranks = np.empty(len(eval_set.truth_query), dtype=np.int64)
        start = 0
        for chunk in _batched(eval_set.user_inputs, s.eval_batch_size):
            user_emb = _tower_outputs(user_tower, _to_tensors(chunk), "user_tower_emb")
            stop = start + len(user_emb)
            lo, hi = np.searchsorted(eval_set.truth_query, [start, stop])
            scores = self._scores(user_emb, item_emb)
            ranks[lo:hi] = truth_ranks(scores, eval_set.truth_query[lo:hi] - start,
                                       eval_set.truth_item[lo:hi], depth,
                                       may_hold_nan=not products_are_finite(user_emb, item_emb))
            start = stop
        metrics = {f"recall@{k}": recall_from_ranks(ranks, k) for k in ks}
        if self.popularity is None:
            # The same K items for every query: the most clicked in training (ties: catalog order).
            ranked = np.argsort(-catalog.train_counts, kind="stable")
            position = np.empty(n_items, dtype=np.int64)
            position[ranked] = np.arange(n_items)
            self.popularity = {f"popularity_recall@{k}": recall_from_ranks(position[eval_set.truth_item], k)
                               for k in ks}
        metrics.update(self.popularity)
        return metrics

    def _scores(self, user_emb, item_emb):
        """user_emb @ item_emb.T into a buffer kept across evaluations: the same product, without
        faulting in a fresh [eval_batch_size, items] matrix (hundreds of MB) every time."""
        import torch

        shape = (self.settings.eval_batch_size, item_emb.shape[0])
        if self.score_buffer is None or tuple(self.score_buffer.shape) != shape:
            self.score_buffer = torch.empty(shape, dtype=item_emb.dtype)
        with torch.no_grad():
            return torch.mm(user_emb, item_emb.T, out=self.score_buffer[:len(user_emb)])


class TdmEvaluation:
    """AUC over layer-wise samples of the eval clicks, drawn once so every evaluation sees the same
    set (and a tree without any eval click is an error before training starts)."""

    headline = "auc"

    def __init__(self, settings, sampler, reader, user_reader, label: str | None, eval_files):
        self.settings = settings
        rng = np.random.default_rng([settings.seed, 0xE7A1])
        row_filter = positives_only(label) if label else None
        columns = sorted(set(reader.columns + ([label] if label else [])))
        chunks, labels = [], []
        for table in iter_tables(eval_files, columns, settings.eval_batch_size, row_filter):
            arrays = reader.numpy(table)
            user = {n: arrays[n] for n in user_reader.names}
            samples, sample_labels = sampler.samples(user, arrays[sampler.id_feature], rng)
            chunks.append(samples)
            labels.append(sample_labels)
        if not chunks or not sum(len(x) for x in labels):
            raise InputError("eval_data has no clicked item that is a leaf of the tree: tdm auc "
                             "cannot be computed")
        self.inputs, self.labels = _concat(chunks), np.concatenate(labels)

    def metrics(self, model) -> dict[str, float]:
        import torch

        scores = []
        for chunk in _batched(self.inputs, self.settings.eval_batch_size):
            with torch.no_grad():
                scores.append(model(_to_tensors(chunk))["logits"].numpy())
        return {"auc": auc(self.labels, np.concatenate(scores))}


class RankingEvaluation:
    """AUC on the eval rows, converted on the first evaluation and replayed on the next while they
    fit the batch cache."""

    headline = "auc"

    def __init__(self, settings, reader, label: str | None, eval_files, convert):
        self.settings, self.reader, self.label = settings, reader, label
        self.eval_files, self.convert = eval_files, convert
        self.eval_batches: _ReplayableBatches | None = None

    def metrics(self, model) -> dict[str, float]:
        import torch

        if self.eval_batches is None:
            s = self.settings
            columns = sorted(set(self.reader.columns + [self.label]))
            self.eval_batches = _ReplayableBatches(
                lambda: iter_tables(self.eval_files, columns, s.eval_batch_size), self.convert,
                s.batch_cache_bytes)
        scores, labels = [], []
        for batch in self.eval_batches:
            with torch.no_grad():
                scores.append(model(batch.inputs)["logits"].numpy())
            labels.append(batch.labels)
        return {"auc": auc(np.concatenate(labels), np.concatenate(scores))}
