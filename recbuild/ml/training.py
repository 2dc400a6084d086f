"""Seeded CPU training of a recipe's model on parquet, with periodic evaluation and checkpoints.

Layout written into the output folder (TorchEasyRec's model_dir shape):
  model.ckpt-<step>/model.pt      state_dict (torch.save, pickle protocol 2, CPU tensors)
  train_eval_result_v2.txt        one JSON object per evaluation: global_step first, then metrics
                                  sorted by name
  train_meta.json                 task, final_step, steps per epoch, row counts (no times)
  metrics.json                    the last evaluation's figures, train_loss (mean over the last
                                  epoch) and steps: what `recbuild metrics` shows

Tasks (from the model, see ``recbuild.ml.models.task_of``):
  retrieval  trained on label-1 rows (all rows without a label column) with an in-batch sampled
             softmax over cosine / temperature; same-item collisions in a batch are masked and the
             logits get a logQ correction from the training item frequencies (so popular items are
             not over-penalised as negatives). Evaluated by exact-search recall@K of eval positives
             against every item seen in train or eval data, beside a popularity baseline.
  ranking    binary cross-entropy on the label; evaluated by AUC on the eval rows.

Data is streamed with ``pyarrow.parquet.ParquetFile.iter_batches`` and re-cut into exact
``batch_size`` batches in file order (shuffle the data upstream if it is sorted).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from recbuild.errors import BuildError, InputError

EVAL_FILE = "train_eval_result_v2.txt"
META_FILE = "train_meta.json"
METRICS_FILE = "metrics.json"  # the last evaluation, the last epoch's mean loss, steps
CHECKPOINT_PREFIX = "model.ckpt-"
WEIGHTS_FILE = "model.pt"
# Fixed so checkpoint bytes do not depend on torch's default; 2 is what the weights_only
# unpickler of torch.load fully supports.
PICKLE_PROTOCOL = 2


@dataclass
class TrainSettings:
    epochs: int = 1
    batch_size: int = 512
    lr: float = 0.003
    eval_every: int = 0  # steps; 0 = at the end of every epoch
    seed: int = 42
    k: list[int] = field(default_factory=lambda: [10, 50, 200])
    label_column: str = "label"
    eval_batch_size: int = 4096
    logq_correction: bool = True
    negatives_per_level: int = 6  # tdm
    threads: int = 2
    # Converted batches kept for the next epochs (and eval batches for the next evaluations), bytes
    # per table; a table that does not fit is read and converted again on every pass, one batch at
    # a time. Not a recipe param: the bytes written do not depend on it.
    batch_cache_bytes: int = 256 << 20


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / f"{CHECKPOINT_PREFIX}{step}"


def save_state_dict(state_dict: dict, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    torch.save(cpu, str(path), pickle_protocol=PICKLE_PROTOCOL)


def format_eval_line(step: int, metrics: dict[str, float]) -> str:
    record = {"global_step": int(step)}
    for name in sorted(metrics):
        record[name] = round(float(metrics[name]), 6)
    return json.dumps(record)


# ---------------------------------------------------------------------------------------------
# Reading


def parquet_files(location: Path, files: Iterable[Path] = ()) -> list[Path]:
    """The parquet files of an input: its listed files, else the *.parquet under its folder."""
    listed = sorted(Path(f) for f in files if str(f).endswith(".parquet"))
    if listed:
        return listed
    location = Path(location)
    if location.is_file():
        return [location]
    found = sorted(location.rglob("*.parquet"))
    if not found:
        raise InputError(f"{location}: no parquet files found")
    return found


READ_ROWS = 65536  # rows per parquet read; the batches cut from them do not depend on it


def iter_tables(files: list[Path], columns: list[str], batch_size: int,
                row_filter: Callable | None = None) -> Iterator:
    """Yield pyarrow Tables of exactly ``batch_size`` rows (the last may be shorter), in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pending: list = []
    pending_rows = 0
    for path in files:
        parquet = pq.ParquetFile(str(path))
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}; present: "
                             f"{', '.join(parquet.schema_arrow.names)}")
        # Large reads, cut into batches: most batches are then zero-copy slices of one read.
        for batch in parquet.iter_batches(batch_size=max(batch_size, READ_ROWS), columns=columns):
            if row_filter is not None:
                batch = row_filter(batch)
            if batch.num_rows == 0:
                continue
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= batch_size:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, batch_size)
                rest = table.slice(batch_size)
                pending = rest.to_batches() if rest.num_rows else []
                pending_rows = rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending)


def positives_only(label_column: str) -> Callable:
    from recbuild.ml.feature_io import arrow_view

    def keep(batch):
        # numpy, not pyarrow.compute against a Python 1: that imports pandas (0.2-0.3 s)
        return batch.take(arrow_view(np.flatnonzero(_column_values(batch, label_column) == 1)))

    return keep


# ---------------------------------------------------------------------------------------------
# Metrics


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


# ---------------------------------------------------------------------------------------------
# Evaluation sets


def _key_matrix(arrays: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """Rows of all inputs as one int64 matrix (floats by bit pattern) so they can be deduped."""
    parts = []
    for name in names:
        value = arrays[name]
        if value.dtype == np.float32:
            value = value.view(np.int32).astype(np.int64)
        parts.append(value.reshape(len(value), -1).astype(np.int64, copy=False))
    return np.concatenate(parts, axis=1)


@dataclass
class ItemCatalog:
    """Every distinct item seen (first occurrence wins), its inputs and training click counts."""

    keys: np.ndarray  # [N, W] int64 rows, sorted (np.unique order)
    inputs: dict[str, np.ndarray]
    train_counts: np.ndarray  # [N] label-1 training rows per item
    _hashes: "_RowHashIndex | None" = field(default=None, init=False, repr=False)

    def index_of(self, key_rows: np.ndarray) -> np.ndarray:
        """Catalog index of each key row (rows that are in the catalog)."""
        if self._hashes is None:
            self._hashes = _RowHashIndex(self.keys)
        found = self._hashes.find(key_rows)
        missing = found < 0  # rare: a hash shared by two catalog rows
        if missing.any():
            found[missing] = np.searchsorted(_row_view(self.keys), _row_view(key_rows[missing]))
        return found


def _row_hashes(matrix: np.ndarray) -> np.ndarray:
    """One uint64 per int64 row (FNV-1a over the columns): equal rows, equal hashes."""
    hashes = np.full(len(matrix), 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in np.ascontiguousarray(matrix).view(np.uint64).T:
            hashes = (hashes ^ column) * np.uint64(0x100000001B3)
    return hashes


class _RowHashIndex:
    """Exact lookup of int64 rows among unique rows by a sorted 64-bit hash of each row: one
    integer search per row instead of a search through structured row views."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows
        hashes = _row_hashes(rows)
        self.order = np.argsort(hashes, kind="stable")
        self.sorted_hashes = hashes[self.order]

    def find(self, queries: np.ndarray) -> np.ndarray:
        """Index of each query row, -1 where the row is absent or its hash is shared (not found
        by the hash alone)."""
        if len(self.rows) == 0:
            return np.full(len(queries), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.sorted_hashes, _row_hashes(queries)), len(self.rows) - 1)
        candidate = self.order[at]
        equal = (self.rows[candidate] == queries).all(axis=1)
        return np.where(equal, candidate, -1).astype(np.int64)


def _row_view(matrix: np.ndarray) -> np.ndarray:
    """Rows of an int64 matrix as comparable scalars (lexicographic order of np.unique(axis=0))."""
    matrix = np.ascontiguousarray(matrix)
    return matrix.view([(f"c{i}", np.int64) for i in range(matrix.shape[1])]).ravel()


def _unique_rows(matrix: np.ndarray):
    """np.unique(matrix, axis=0, return_index=True, return_inverse=True) for an int64 matrix, by a
    stable lexsort of the columns (the same order and first occurrences; np.unique sorts structured
    row views, several times slower)."""
    order = np.lexsort(matrix.T[::-1]) if matrix.shape[1] else np.arange(len(matrix))
    ordered = matrix[order]
    starts = np.ones(len(matrix), dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    inverse = np.empty(len(matrix), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return ordered[starts], order[starts], inverse


class _Reader:
    """Converts parquet tables into numpy inputs for a list of model features (feature_io)."""

    def __init__(self, specs):
        from recbuild.ml.models.features import io_specs

        self.specs = specs
        self.io_specs = io_specs(specs)
        self.names = [s.name for s in specs]
        self.columns = sorted({s.column for s in specs})

    def numpy(self, table, row_offset: int = 0) -> dict[str, np.ndarray]:
        from recbuild.ml.feature_io import batch_to_numpy

        return batch_to_numpy(table, self.io_specs, row_offset)


def _column_values(table, name: str) -> np.ndarray:
    """A column as numpy, as ``to_numpy()`` gives it, without pyarrow's pandas bridge (importing
    pandas costs 0.2-0.3 s before the first step)."""
    from recbuild.ml.feature_io import numpy_view

    return numpy_view(table.column(name))


def _take(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {name: value[index] for name, value in arrays.items()}


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def build_item_catalog(train_files, eval_files, item_reader: _Reader, label_column: str | None,
                       batch_size: int) -> ItemCatalog:
    """One streaming pass over train and eval data collecting distinct items and click counts.
    The catalog does not depend on ``batch_size`` (an item's inputs are its key)."""
    chunks, keys, counted = [], [], []
    for files, count in ((train_files, True), (eval_files, False)):
        columns = item_reader.columns + ([label_column] if label_column else [])
        for table in iter_tables(files, sorted(set(columns)), batch_size):
            arrays = item_reader.numpy(table)
            key = _key_matrix(arrays, item_reader.names)
            unique, first, inverse = _unique_rows(key)
            chunks.append(_take(arrays, first))
            keys.append(unique)
            if count:
                clicked = (_column_values(table, label_column) == 1) if label_column else \
                    np.ones(table.num_rows, dtype=bool)
                counted.append((unique, np.bincount(inverse.ravel()[clicked], minlength=len(unique))))
    all_keys = np.concatenate(keys)
    unique, first, _ = _unique_rows(all_keys)
    inputs = _take(_concat(chunks), first)
    catalog = ItemCatalog(keys=unique, inputs=inputs, train_counts=np.zeros(len(unique), dtype=np.int64))
    for chunk_keys, chunk_counts in counted:
        np.add.at(catalog.train_counts, catalog.index_of(chunk_keys), chunk_counts)
    return catalog


@dataclass
class RetrievalEvalSet:
    user_inputs: dict[str, np.ndarray]  # [Q] unique queries
    truth_query: np.ndarray  # unique (query, item) pairs, sorted by query
    truth_item: np.ndarray


def build_retrieval_eval_set(eval_files, user_reader: _Reader, item_reader: _Reader,
                             catalog: ItemCatalog, label_column: str | None,
                             batch_size: int) -> RetrievalEvalSet:
    """Eval positives grouped into unique queries (identical user inputs) and unique truths."""
    row_filter = positives_only(label_column) if label_column else None
    columns = sorted(set(user_reader.columns + item_reader.columns + ([label_column] if label_column else [])))
    user_chunks, item_index = [], []
    for table in iter_tables(eval_files, columns, batch_size, row_filter):
        user_chunks.append(user_reader.numpy(table))
        item_arrays = item_reader.numpy(table)
        item_index.append(catalog.index_of(_key_matrix(item_arrays, item_reader.names)))
    if not user_chunks:
        raise InputError("eval_data holds no positive rows (label == 1): recall cannot be computed")
    users = _concat(user_chunks)
    _, first, inverse = _unique_rows(_key_matrix(users, user_reader.names))
    pairs = _unique_rows(np.stack([inverse.ravel(), np.concatenate(item_index)], axis=1))[0]
    return RetrievalEvalSet(user_inputs=_take(users, first), truth_query=pairs[:, 0],
                            truth_item=pairs[:, 1])


# ---------------------------------------------------------------------------------------------
# TDM: layer-wise samples over a tree


class TreeSampler:
    """Turns clicked items into TDM training samples over a tdm_tree artifact.

    For a clicked item (a leaf), its ancestor on every level 1..depth is a positive and
    ``negatives`` other nodes of the same level, drawn uniformly, are negatives (tzrec's
    layer_num_sample, one count for every level, capped at the level's size - 1). Node inputs
    (the node id as the item id feature, other item features) come from the tree's node_feature
    table, so training sees exactly what beam search will feed the model.
    """

    def __init__(self, tree_dir: Path, item_reader: "_Reader", negatives: int):
        import pyarrow.parquet as pq

        from recbuild.retrieval.tree_io import NODE_FEATURE, SERVING_TREE, read_serving_tree

        tree_dir = Path(tree_dir)
        tree = read_serving_tree(tree_dir / SERVING_TREE)
        nodes = pq.ParquetFile(str(tree_dir / NODE_FEATURE)).read()  # read_table imports pandas
        if nodes.num_rows != len(tree.codes):
            raise InputError(f"{tree_dir}: node_feature has {nodes.num_rows} rows but serving_tree "
                             f"{len(tree.codes)} nodes; rebuild the tree")
        self.id_feature = _id_feature(item_reader.specs)
        self.node_inputs = item_reader.numpy(nodes.select(item_reader.columns))
        self.negatives = negatives
        self.depth = tree.depth
        levels = tree.levels
        self.level_start = np.searchsorted(levels, np.arange(tree.depth + 1))
        self.level_count = np.bincount(levels, minlength=tree.depth + 1)
        leaves = np.flatnonzero(tree.leaf_mask)
        leaf_keys = self.node_inputs[self.id_feature][leaves]
        order = np.argsort(leaf_keys, kind="stable")
        self.leaf_keys, self.leaves = leaf_keys[order], leaves[order]
        # ancestors[:, l - 1] = node index of the leaf's ancestor on level l (l = depth: the leaf)
        parent = tree.parent_index()
        self.ancestors = np.empty((len(self.leaves), tree.depth), dtype=np.int64)
        current = self.leaves
        for level in range(tree.depth, 0, -1):
            self.ancestors[:, level - 1] = current
            current = parent[current]

    def leaf_rows(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(batch rows whose item is a leaf, their position in self.leaves)."""
        pos = np.minimum(np.searchsorted(self.leaf_keys, item_ids), len(self.leaf_keys) - 1)
        found = self.leaf_keys[pos] == item_ids
        return np.flatnonzero(found), pos[found]

    def expand(self, item_ids: np.ndarray, rng: np.random.Generator):
        """(batch row, node index, label) of every sample for a batch of clicked item ids."""
        rows, leaf_pos = self.leaf_rows(item_ids)
        out_rows, out_nodes, out_labels = [], [], []
        for level in range(1, self.depth + 1):
            positive = self.ancestors[leaf_pos, level - 1]
            out_rows.append(rows)
            out_nodes.append(positive)
            out_labels.append(np.ones(len(rows), dtype=np.float32))
            start, count = int(self.level_start[level]), int(self.level_count[level])
            m = min(self.negatives, count - 1)
            if m <= 0:
                continue
            # uniform over the level's other nodes: draw from count - 1 slots, skip the positive
            draw = rng.integers(0, count - 1, size=(len(rows), m))
            rank = (positive - start)[:, None]
            out_rows.append(np.repeat(rows, m))
            out_nodes.append((start + draw + (draw >= rank)).ravel())
            out_labels.append(np.zeros(len(rows) * m, dtype=np.float32))
        return np.concatenate(out_rows), np.concatenate(out_nodes), np.concatenate(out_labels)

    def samples(self, user_arrays: dict[str, np.ndarray], item_ids: np.ndarray, rng) -> tuple[dict, np.ndarray]:
        rows, nodes, labels = self.expand(item_ids, rng)
        inputs = {name: value[rows] for name, value in user_arrays.items()}
        inputs.update({name: value[nodes] for name, value in self.node_inputs.items()})
        return inputs, labels


def _id_feature(item_specs) -> str:
    """The item feature holding the node id: `item_id` if declared, else the only item id feature."""
    ids = [s.name for s in item_specs if s.type == "id"]
    if "item_id" in ids:
        return "item_id"
    if len(ids) == 1:
        return ids[0]
    raise BuildError(f"tdm: cannot tell which item feature is the node id among {ids or 'none'}; "
                     "name it item_id")


# ---------------------------------------------------------------------------------------------
# Training


@contextmanager
def _torch_settings(threads: int, seed: int):
    """Seeded, deterministic, fixed thread count; restores the process-wide settings afterwards.

    Deterministic mode goes through ``torch.set_deterministic_debug_mode("error")``: it sets the
    flag every eager op checks exactly as ``torch.use_deterministic_algorithms(True)`` does (error,
    not warn), without the latter's import of the inductor config (dynamo, sympy, ~800 modules,
    about 1 s before the first step) for a setting only ``torch.compile`` reads. When inductor is
    already loaded, its flag is set too, so nothing is less strict than before.
    """
    import torch

    previous_threads = torch.get_num_threads()
    previous_mode = torch.get_deterministic_debug_mode()
    inductor = sys.modules.get("torch._inductor.config")
    previous_inductor = inductor.deterministic if inductor is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(max(1, threads))
        torch.set_deterministic_debug_mode("error")
        if inductor is not None:
            inductor.deterministic = True
        try:
            yield
        finally:
            torch.set_num_threads(previous_threads)
            torch.set_deterministic_debug_mode(previous_mode)
            if inductor is not None:
                inductor.deterministic = previous_inductor


def _to_tensors(arrays: dict[str, np.ndarray]):
    from recbuild.ml.feature_io import numpy_to_tensors

    return numpy_to_tensors(arrays)


def _batched(arrays: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    total = len(next(iter(arrays.values())))
    for start in range(0, total, size):
        yield {name: value[start:start + size] for name, value in arrays.items()}


@dataclass
class _Batch:
    """One training or eval batch, converted: model inputs and what the loss or metric needs."""

    inputs: dict  # feature name -> tensor (owns its memory: Arrow views are copied)
    labels: np.ndarray | None = None  # the label column as read, when the data has one
    items: np.ndarray | None = None  # retrieval: catalog index of each row's item
    log_q: Any = None  # retrieval: per-row log sampling probability (tensor)

    @property
    def nbytes(self) -> int:
        tensors = [*self.inputs.values(), *([self.log_q] if self.log_q is not None else [])]
        arrays = [a for a in (self.labels, self.items) if a is not None]
        return sum(t.numel() * t.element_size() for t in tensors) + sum(a.nbytes for a in arrays)


class _ReplayableBatches:
    """The batches of one table, converted on the first pass and replayed on the next while they
    fit ``budget`` bytes. A table that does not fit streams on every pass (read, convert, one
    batch at a time); the cache is given up as soon as it would exceed the budget."""

    def __init__(self, read: Callable[[], Iterable], convert: Callable[[Any], _Batch], budget: int):
        self.read, self.convert, self.budget = read, convert, budget
        self.kept: list[_Batch] | None = None
        self.fits = budget > 0

    def __iter__(self) -> Iterator[_Batch]:
        return iter(self.kept) if self.kept is not None else self._stream()

    def _stream(self) -> Iterator[_Batch]:
        kept, size = [], 0
        for table in self.read():
            batch = self.convert(table)
            if self.fits:
                size += batch.nbytes
                self.fits = size <= self.budget
                if self.fits:
                    kept.append(batch)
                else:
                    kept = []  # let go of it at once: this table streams on every pass
            yield batch
        if self.fits:
            self.kept = kept


def _tower_outputs(model, inputs, output_name: str):
    import torch

    with torch.no_grad():
        return model(inputs)[output_name]


class _SilentProgress:
    """The progress interface when nobody watches (the bench, library use)."""

    total = None

    def phase(self, *args, **kwargs) -> "_SilentProgress":
        return self

    def label(self, name: str) -> None:
        pass

    def advance(self, amount: float = 1) -> None:
        pass

    def note(self, **facts) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """One training run: build the model, stream batches, checkpoint and evaluate on schedule."""

    def __init__(self, model_config: dict[str, Any], settings: TrainSettings, out: Path,
                 log: logging.Logger | None = None, search_path: Path | None = None,
                 progress_factory: Callable | None = None, tree_dir: Path | None = None):
        from recbuild.ml.models import resolve

        self.config = resolve(model_config)
        self.settings = settings
        self.out = Path(out)
        self.log = log or logging.getLogger("recbuild.train")
        self.search_path = search_path
        self.progress_factory = progress_factory
        self.eval_files: list[Path] = []
        self.catalog: ItemCatalog | None = None
        self.eval_set: RetrievalEvalSet | None = None
        self.popularity: dict[str, float] | None = None  # constant across evaluations
        self.eval_lines: list[str] = []
        self.tree_dir = tree_dir
        self.sampler: TreeSampler | None = None
        self.tdm_eval: tuple[dict, np.ndarray] | None = None  # fixed eval samples, same every eval
        self.log_q: np.ndarray | None = None  # retrieval: log sampling probability per catalog item
        self.eval_batches: _ReplayableBatches | None = None  # ranking: converted eval data
        self.score_buffer = None  # retrieval eval: [eval_batch_size, items] scores, reused
        self.progress: Any = _SilentProgress()
        self.epoch_label = ""
        self.last_epoch_loss = float("nan")

    # -- public ----------------------------------------------------------------------------------
    def run(self, train_files: list[Path], eval_files: list[Path] | None) -> dict[str, Any]:
        """Train; returns the facts written to train_meta.json (plus the last eval line)."""
        with _torch_settings(self.settings.threads, self.settings.seed):
            return self._run(train_files, eval_files or [])

    # -- internals -------------------------------------------------------------------------------
    def _run(self, train_files, eval_files) -> dict[str, Any]:
        from recbuild.ml.models import ModelConfigError, build_model, task_of
        from recbuild.ml.models.features import group_features, parse_features

        try:
            model = build_model(self.config, self.search_path)
            task = task_of(self.config, model)
        except ModelConfigError as exc:
            raise BuildError(str(exc)) from None
        s = self.settings
        self.task, self.eval_files = task, eval_files
        self.label = s.label_column if _has_column(train_files[0], s.label_column) else None
        if task == "ranking" and self.label is None:
            raise InputError(f"{train_files[0]}: a ranking model needs the label column "
                             f"{s.label_column!r}; set label_column")
        specs = parse_features(self.config)
        self.reader = _Reader(specs)
        user_reader = _Reader(group_features(specs, "user"))
        self.item_reader = _Reader(group_features(specs, "item"))
        if task == "retrieval":
            # Both are the same whatever the read size: read in large slices (fewer, larger sorts).
            read_rows = max(s.eval_batch_size, READ_ROWS)
            self.catalog = build_item_catalog(train_files, eval_files, self.item_reader, self.label,
                                              read_rows)
            if eval_files:
                self.eval_set = build_retrieval_eval_set(eval_files, user_reader, self.item_reader,
                                                         self.catalog, self.label, read_rows)
            if s.logq_correction:
                counts = self.catalog.train_counts
                self.log_q = np.log(np.maximum(counts, 1) / max(int(counts.sum()), 1)).astype(np.float32)
        if task == "tdm":
            if self.tree_dir is None:
                raise BuildError("model family tdm trains over a tree: set `tree:` to a tdm_tree artifact")
            self.sampler = TreeSampler(self.tree_dir, self.item_reader, s.negatives_per_level)
            self.user_reader = user_reader
            self.rng = np.random.default_rng([s.seed, 0x7D4])
            if eval_files:
                self.tdm_eval = self._tdm_eval_samples(eval_files)

        optimizer = _make_optimizer(model, s.lr)
        row_filter = positives_only(self.label) if task in ("retrieval", "tdm") and self.label else None
        columns = sorted(set(self.reader.columns + ([self.label] if self.label else [])))
        batches = _ReplayableBatches(lambda: iter_tables(train_files, columns, s.batch_size, row_filter),
                                     self._convert, s.batch_cache_bytes)
        rows = self._rows_per_epoch(train_files, row_filter)
        total = -(-rows // s.batch_size) * s.epochs
        progress = self.progress = (self.progress_factory(None, "batches") if self.progress_factory
                                    else _SilentProgress())
        progress.phase("", total, "batches")
        step, steps_per_epoch, saved = 0, 0, []
        for epoch in range(s.epochs):
            model.train()
            self.epoch_label = f"epoch {epoch + 1}/{s.epochs}"
            progress.label(self.epoch_label)
            epoch_steps, epoch_batches, epoch_loss = 0, 0, 0.0
            for batch in batches:
                epoch_batches += 1
                progress.advance(1)
                loss = self._loss(model, batch)
                if loss is None:
                    continue
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise BuildError(f"training diverged at step {step + 1} (loss {loss_value}); "
                                     "lower lr")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                epoch_steps += 1
                epoch_loss += loss_value
                progress.note(loss=epoch_loss / epoch_steps)
                if s.eval_every and step % s.eval_every == 0:
                    self._checkpoint(model, step)
                    saved.append(step)
            if epoch_steps == 0:
                if task == "tdm":
                    raise InputError("no clicked item of the training data is a leaf of the tree; "
                                     "build the tree from the same item universe")
                raise InputError("the training data yielded no rows"
                                 + (" with label == 1" if row_filter else ""))
            if progress.total != epoch_batches * s.epochs:  # a tdm batch may hold no tree item
                progress.total = epoch_batches * s.epochs
            steps_per_epoch = steps_per_epoch or epoch_steps
            self.last_epoch_loss = epoch_loss / epoch_steps
            if not s.eval_every and step not in saved:
                self._checkpoint(model, step)
                saved.append(step)
        if step not in saved:  # the final state is always a checkpoint
            self._checkpoint(model, step)
            saved.append(step)
        progress.close()

        meta: dict[str, Any] = {"task": task, "final_step": step, "steps_per_epoch": steps_per_epoch,
                                "epochs": s.epochs, "checkpoints": saved}
        if self.catalog is not None:
            meta["items_seen"] = int(len(self.catalog.keys))
        if self.eval_set is not None:
            meta["eval_queries"] = int(len(next(iter(self.eval_set.user_inputs.values()))))
            meta["eval_truth_pairs"] = int(len(self.eval_set.truth_query))
        (self.out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        figures: dict[str, Any] = {"train_loss": self.last_epoch_loss, "steps": step}
        if self.eval_lines:
            meta["last_eval"] = json.loads(self.eval_lines[-1])
            figures.update({k: v for k, v in meta["last_eval"].items() if k != "global_step"})
        (self.out / METRICS_FILE).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        return meta

    def _rows_per_epoch(self, train_files, row_filter) -> int:
        """Rows one epoch trains on, known before the first batch: parquet metadata, the catalog's
        click counts (the positives filter keeps exactly those rows), or the label column."""
        import pyarrow.parquet as pq

        if row_filter is None:
            return sum(pq.ParquetFile(str(path)).metadata.num_rows for path in train_files)
        if self.catalog is not None:
            return int(self.catalog.train_counts.sum())
        # tdm with labels: one column read (a small share of the epoch's reads)
        return sum(int(np.count_nonzero(_column_values(pq.read_table(str(path), columns=[self.label]),
                                                       self.label) == 1))
                   for path in train_files)

    def _convert(self, table) -> _Batch:
        """A parquet batch as model inputs, labels and (retrieval) catalog indexes: the work done
        once per batch, not once per epoch, when the table fits the cache."""
        import torch

        batch = _Batch(inputs=_to_tensors(self.reader.numpy(table)))
        if self.label:
            batch.labels = np.array(_column_values(table, self.label), copy=True)
        if self.task == "retrieval":
            names = self.item_reader.names
            batch.items = self.catalog.index_of(_key_matrix({n: batch.inputs[n].numpy() for n in names},
                                                            names))
            if self.log_q is not None:
                batch.log_q = torch.from_numpy(self.log_q[batch.items])
        return batch

    def _loss(self, model, batch: _Batch):
        import torch

        # Models read their inputs and never write them: a cached batch replays as it was read.
        inputs = batch.inputs
        outputs = model(inputs) if self.task != "tdm" else {}
        labels = None
        if batch.labels is not None:
            labels = torch.from_numpy(batch.labels.astype(np.float32))
        if hasattr(model, "compute_loss"):  # entry models may bring their own loss
            return model.compute_loss(outputs, inputs, labels)
        if self.task == "ranking":
            return torch.nn.functional.binary_cross_entropy_with_logits(outputs["logits"], labels)
        if self.task == "tdm":
            user = {n: inputs[n].numpy() for n in self.user_reader.names}
            samples, tdm_labels = self.sampler.samples(user, inputs[self.sampler.id_feature].numpy(),
                                                       self.rng)
            if len(tdm_labels) == 0:
                return None  # no clicked item of this batch is in the tree
            logits = model(_to_tensors(samples))["logits"]
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(tdm_labels))
        return in_batch_softmax_loss(outputs["user_tower_emb"], outputs["item_tower_emb"],
                                     float(self.config.get("temperature", 0.05)), batch.items,
                                     batch.log_q)

    def _checkpoint(self, model, step: int) -> None:
        save_state_dict(model.state_dict(), checkpoint_dir(self.out, step) / WEIGHTS_FILE)
        if not self.eval_files:
            return
        model.eval()
        self.progress.label(f"{self.epoch_label}: eval")
        if self.task == "retrieval":
            metrics = self._retrieval_metrics(model)
            shown = f"recall@{sorted(set(self.settings.k))[len(set(self.settings.k)) // 2]}"
        elif self.task == "tdm":
            metrics, shown = {"auc": self._tdm_auc(model)}, "auc"
        else:
            metrics, shown = {"auc": self._auc(model)}, "auc"
        self.progress.label(self.epoch_label)
        self.progress.note(**{f"eval {shown}": metrics[shown]})
        model.train()
        line = format_eval_line(step, metrics)
        self.eval_lines.append(line)
        with open(self.out / EVAL_FILE, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        self.log.info("step %d: %s", step, line)

    def _retrieval_metrics(self, model) -> dict[str, float]:
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

    def _tdm_eval_samples(self, eval_files):
        """Layer-wise samples of the eval clicks, drawn once so every evaluation sees the same set."""
        rng = np.random.default_rng([self.settings.seed, 0xE7A1])
        row_filter = positives_only(self.label) if self.label else None
        columns = sorted(set(self.reader.columns + ([self.label] if self.label else [])))
        chunks, labels = [], []
        for table in iter_tables(eval_files, columns, self.settings.eval_batch_size, row_filter):
            arrays = self.reader.numpy(table)
            user = {n: arrays[n] for n in self.user_reader.names}
            samples, sample_labels = self.sampler.samples(user, arrays[self.sampler.id_feature], rng)
            chunks.append(samples)
            labels.append(sample_labels)
        if not chunks or not sum(len(x) for x in labels):
            raise InputError("eval_data has no clicked item that is a leaf of the tree: tdm auc "
                             "cannot be computed")
        return _concat(chunks), np.concatenate(labels)

    def _tdm_auc(self, model) -> float:
        import torch

        inputs, labels = self.tdm_eval
        scores = []
        for chunk in _batched(inputs, self.settings.eval_batch_size):
            with torch.no_grad():
                scores.append(model(_to_tensors(chunk))["logits"].numpy())
        return auc(labels, np.concatenate(scores))

    def _auc(self, model) -> float:
        import torch

        if self.eval_batches is None:
            s = self.settings
            columns = sorted(set(self.reader.columns + [self.label]))
            self.eval_batches = _ReplayableBatches(
                lambda: iter_tables(self.eval_files, columns, s.eval_batch_size), self._convert,
                s.batch_cache_bytes)
        scores, labels = [], []
        for batch in self.eval_batches:
            with torch.no_grad():
                scores.append(model(batch.inputs)["logits"].numpy())
            labels.append(batch.labels)
        return auc(np.concatenate(labels), np.concatenate(scores))


def _has_column(path: Path, column: str) -> bool:
    import pyarrow.parquet as pq

    return column in pq.ParquetFile(str(path)).schema_arrow.names


SPARSE_TABLE_ROWS = 20000  # tables at least this large get sparse gradients + SparseAdam


class _Optimizers:
    """Lazy (sparse) Adam for large embedding tables, Adam for the rest.

    A dense Adam step touches every row of every table each step (most of the step time with
    100k-bucket tables); sparse gradients update only the rows the batch looked up. Small tables
    stay dense: coalescing a sparse gradient with many repeated rows (TDM's few internal nodes)
    costs more than updating the whole table.
    """

    def __init__(self, optimizers):
        self.optimizers = optimizers

    def zero_grad(self):
        for opt in self.optimizers:
            opt.zero_grad()

    def step(self):
        for opt in self.optimizers:
            opt.step()


class _AdamState:
    """The update of torch.optim.Adam / SparseAdam with their default settings, computed by torch's
    own functional ``adam`` / ``sparse_adam``, with the moments and step counts kept here.

    Why not torch.optim: constructing an Optimizer, and the first zero_grad() and step(), import
    torch._dynamo (~1 s before the first step, the compiler stack training never uses); the
    functional updates do not. Same arithmetic, same bytes: tests/test_training.py steps both side
    by side and compares the weights bit for bit.
    """

    BETAS = (0.9, 0.999)
    EPS = 1e-8

    def __init__(self, params, lr: float):
        self.params = list(params)
        self.lr = lr
        self.state: dict[int, dict] = {}

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def _with_grad(self) -> list:
        return [p for p in self.params if p.grad is not None]

    def _moments(self, param, first_step: Callable[[], Any]) -> dict:
        import torch

        if id(param) not in self.state:
            self.state[id(param)] = {
                "step": first_step(),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}
        return self.state[id(param)]


class _DenseAdam(_AdamState):
    def step(self) -> None:
        import torch
        from torch.optim.adam import adam

        # torch.optim.Adam keeps its step count in a 0-d CPU tensor of this dtype
        step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        with torch.no_grad():
            params = self._with_grad()
            states = [self._moments(p, lambda: torch.tensor(0.0, dtype=step_dtype)) for p in params]
            adam(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                 [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                 amsgrad=False, has_complex=False, beta1=self.BETAS[0], beta2=self.BETAS[1],
                 lr=self.lr, weight_decay=0, eps=self.EPS, maximize=False, foreach=None,
                 capturable=False, differentiable=False, fused=None, grad_scale=None,
                 found_inf=None, decoupled_weight_decay=False)


class _SparseAdam(_AdamState):
    def step(self) -> None:
        import torch
        from torch.optim._functional import sparse_adam

        with torch.no_grad():
            params = self._with_grad()
            states = [self._moments(p, lambda: 0) for p in params]
            for state in states:
                state["step"] += 1
            sparse_adam(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                        [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
                        eps=self.EPS, beta1=self.BETAS[0], beta2=self.BETAS[1], lr=self.lr,
                        maximize=False)


def _make_optimizer(model, lr: float) -> _Optimizers:
    import torch

    sparse_params, sparse_ids = [], set()
    for module in model.modules():
        if not isinstance(module, torch.nn.Embedding) or module.num_embeddings < SPARSE_TABLE_ROWS:
            continue
        module.sparse = True  # training only: the flag is not part of the state_dict
        if id(module.weight) not in sparse_ids:
            sparse_ids.add(id(module.weight))
            sparse_params.append(module.weight)
    dense_params = [p for p in model.parameters() if id(p) not in sparse_ids]
    optimizers = []
    if sparse_params:
        optimizers.append(_SparseAdam(sparse_params, lr))
    if dense_params:
        optimizers.append(_DenseAdam(dense_params, lr))
    return _Optimizers(optimizers)


def in_batch_softmax_loss(user_emb, item_emb, temperature: float, item_keys=None, log_q=None):
    """Softmax over the batch's items for each user; the diagonal is the positive.

    item_keys: per-row item identity; other rows holding the same item are not negatives (masked).
    log_q: per-row log sampling probability of the item (logQ correction, Yi et al. 2019).
    """
    import torch

    logits = user_emb @ item_emb.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    if item_keys is not None:
        keys = _item_codes(item_keys)
        same = keys.unsqueeze(0) == keys.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    targets = torch.arange(logits.shape[0])
    return torch.nn.functional.cross_entropy(logits, targets)


def _item_codes(item_keys):
    """int64 codes equal where the items are: integer keys (e.g. catalog indexes) as they are,
    other keys (e.g. structured rows) through np.unique."""
    import torch

    keys = np.asarray(item_keys)
    if keys.ndim != 1 or not np.issubdtype(keys.dtype, np.integer):
        keys = np.unique(keys, return_inverse=True)[1].ravel()
    return torch.from_numpy(keys.astype(np.int64, copy=False))
