"""What retrieval training and evaluation know of items and queries: the catalog of every distinct
item seen (inputs, training clicks, a fast row lookup) and the eval set of unique queries and their
true items."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recbuild.errors import InputError
from recbuild.ml.training.data import _column_values, _concat, _Reader, _take, iter_tables, positives_only


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
