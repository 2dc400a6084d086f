"""Reading training data: parquet files cut into exact batches in file order, converted into model
inputs, and kept for replay in later epochs while they fit a byte budget.

Data is streamed with ``pyarrow.parquet.ParquetFile.iter_batches`` and re-cut into exact
``batch_size`` batches in file order (shuffle the data upstream if it is sorted). The data path
stays clear of pyarrow's pandas bridge (importing pandas costs 0.2-0.3 s before the first step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from recbuild.errors import InputError


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

    from recbuild.common.parquet_batches import file_batches

    pending: list = []
    pending_rows = 0
    for path in files:
        parquet = pq.ParquetFile(str(path))
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}; present: "
                             f"{', '.join(parquet.schema_arrow.names)}")
        # Large reads, cut into batches: most batches are then zero-copy slices of one read.
        for batch in file_batches(parquet, max(batch_size, READ_ROWS), columns):
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


def _has_column(path: Path, column: str) -> bool:
    import pyarrow.parquet as pq

    return column in pq.ParquetFile(str(path)).schema_arrow.names


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
