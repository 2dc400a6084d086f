"""Writing the embedding table: the embedding column in its format, output batches (id + reserved
columns + embedding) and ``part-*.parquet`` files cut into row groups of bounded size."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recbuild.errors import BuildError
from recbuild.ml import feature_io

if TYPE_CHECKING:
    from recbuild.ml.predictor.clock import StageClock
    from recbuild.ml.predictor.plan import InputPlan

EMBEDDING_FORMATS = ("fixed_size_list", "list_double", "string")
DEFAULT_ROWS_PER_FILE = 1_000_000
# Output row-group size: at most 64k rows, or fewer once 64 MB are pending. Independent of the
# batch size (groups of 64k rows x 64 floats = 16 MB: few, big groups for readers), with the byte
# cap bounding memory when reserved columns are wide.
ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 64 << 20
# The writer options every recbuild parquet file uses (docs/internals.md): dictionary encoding of
# float embeddings only costs time (perf_baselines.md section 5).
WRITER_OPTIONS = dict(use_dictionary=False, compression="snappy", write_statistics=True)


def embedding_type(embedding_format: str, dim: int) -> pa.DataType:
    if embedding_format == "fixed_size_list":
        return pa.list_(pa.float32(), dim)
    if embedding_format == "list_double":
        return pa.list_(pa.float64())  # TorchEasyRec: tensor.tolist() -> python floats -> double
    if embedding_format == "string":
        return pa.string()  # EasyRec: comma-joined
    raise BuildError(f"embedding_format must be one of {', '.join(EMBEDDING_FORMATS)}, "
                     f"got {embedding_format!r}")


def embedding_column(matrix: np.ndarray, embedding_format: str) -> pa.Array:
    """A float32 ``[B, D]`` matrix as one Arrow column, without a per-row Python loop."""
    rows, dim = matrix.shape
    flat = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)
    if embedding_format == "fixed_size_list":
        return pa.FixedSizeListArray.from_arrays(feature_io.arrow_view(flat), dim)  # zero-copy
    offsets = feature_io.arrow_view(np.arange(0, (rows + 1) * dim, dim, dtype=np.int32))
    if embedding_format == "list_double":
        return pa.ListArray.from_arrays(offsets, feature_io.arrow_view(flat.astype(np.float64)))
    if embedding_format == "string":
        # Arrow formats each float32 with the shortest text that parses back to the same float32.
        tokens = pc.cast(feature_io.arrow_view(flat), pa.string())
        return pc.binary_join(pa.ListArray.from_arrays(offsets, tokens), ",")
    raise BuildError(f"embedding_format must be one of {', '.join(EMBEDDING_FORMATS)}, "
                     f"got {embedding_format!r}")


class PartWriter:
    """Writes ``part-0.parquet``, ``part-1.parquet``, ... in row groups of bounded size.

    Batches of any size come in. A row group is cut when ``row_group_rows`` rows are pending, or
    earlier when the pending batches hold ``row_group_bytes`` (wide reserved columns would otherwise
    make a 64k-row group hundreds of MB); a new part starts every ``rows_per_file`` rows. Cuts
    depend only on the batches' sizes (fixed by params and input), so the layout is deterministic,
    and memory stays bounded by one row group.
    """

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_file: int,
                 row_group_rows: int = ROW_GROUP_ROWS, row_group_bytes: int = ROW_GROUP_BYTES):
        if rows_per_file < 1:
            raise BuildError(f"rows_per_file must be positive, got {rows_per_file}")
        self.folder = Path(folder)
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.row_group_rows = max(1, min(row_group_rows, rows_per_file))
        self.row_group_bytes = row_group_bytes
        self.files: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self._pending_bytes += batch.nbytes
        while self._pending_rows >= self._group_target():
            self._flush(self._group_target())
        if self._pending_bytes >= self.row_group_bytes:
            self._flush(self._pending_rows)

    def close(self) -> list[Path]:
        while self._pending_rows:
            self._flush(min(self._pending_rows, self._group_target()))
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.files

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _group_target(self) -> int:
        # A row group never straddles two files.
        return min(self.row_group_rows, self.rows_per_file - self._rows_in_file)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        group, rest = table.slice(0, rows), table.slice(rows)
        if self._writer is None:
            path = self.folder / f"part-{len(self.files)}.parquet"
            self._writer = pq.ParquetWriter(str(path), self.schema, **WRITER_OPTIONS)
            self.files.append(path)
        self._writer.write_table(group, row_group_size=rows)
        self._rows_in_file += rows
        self.rows += rows
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows
        self._pending_bytes = sum(b.nbytes for b in self._pending)
        if self._rows_in_file >= self.rows_per_file:
            self._writer.close()
            self._writer = None
            self._rows_in_file = 0


class EmbeddingSink:
    """Formats (batch, embedding matrix) pairs into output batches and hands them to PartWriter."""

    def __init__(self, out_dir: Path, plan: InputPlan, output_key: str, embedding_format: str,
                 rows_per_file: int):
        self.out_dir, self.plan = out_dir, plan
        self.output_key, self.embedding_format = output_key, embedding_format
        self.rows_per_file = rows_per_file
        self.writer: PartWriter | None = None
        self.dim: int | None = None
        self.files: list[Path] = []

    def write(self, batch: pa.RecordBatch, matrix: np.ndarray, clock: StageClock) -> None:
        if self.writer is None:
            self.dim = matrix.shape[1]
            schema = self.plan.passthrough_schema.append(
                pa.field(self.output_key, embedding_type(self.embedding_format, self.dim)))
            self.writer = PartWriter(self.out_dir, schema, self.rows_per_file)
        columns = [batch.column(c) for c in self.plan.passthrough_schema.names]
        columns.append(embedding_column(matrix, self.embedding_format))
        out_batch = pa.RecordBatch.from_arrays(columns, schema=self.writer.schema)
        clock.lap("format")
        self.writer.write(out_batch)
        clock.lap("write")

    def close(self) -> None:
        if self.writer is not None:
            self.files = self.writer.close()
            self.writer = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
