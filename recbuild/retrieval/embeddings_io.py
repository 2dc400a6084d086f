"""Stream an embedding table (parquet) as (ids, float32 matrix) batches, validating as it goes.

Accepted embedding columns (DESIGN.md section 6, tzrec_formats.md section 4.1):
  - ``fixed_size_list<float32>[dim]`` (recbuild's own format; converted without a per-row loop)
  - ``list<double>`` / ``list<float>`` (TorchEasyRec predict output)
  - a string of comma-separated floats, optionally in brackets (EasyRec; parsed, never ``eval``-ed)

Nothing here holds more than one record batch of embeddings: callers that need the whole matrix
(the TDM tree) concatenate themselves. pyarrow is imported inside functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from recbuild.errors import InputError

DEFAULT_BATCH_ROWS = 65536
_PART_NUMBER = re.compile(r"(\d+)")


def parquet_files(location: Any) -> list[str]:
    """The parquet files of an artifact folder, a source path or an ``InputArtifact``.

    ``part-2.parquet`` sorts before ``part-10.parquet`` (numeric order), so row order across parts
    is the order the writer produced them in.
    """
    files: list[str]
    if hasattr(location, "files"):  # InputArtifact
        if location.url and not location.files:
            return [location.url]
        candidates = [Path(f) for f in location.files]
        if not candidates:
            candidates = [Path(location.path)]
        files = []
        for path in candidates:
            files.extend(parquet_files(path))
        return _natural_sorted(files)
    path = Path(location)
    if path.is_dir():
        files = [str(p) for p in path.rglob("*.parquet") if p.is_file()]
    elif path.suffix == ".parquet" and path.is_file():
        files = [str(path)]
    else:
        files = []
    return _natural_sorted(files)


def _natural_sorted(files: Sequence[str]) -> list[str]:
    def key(name: str):
        return [int(tok) if tok.isdigit() else tok for tok in _PART_NUMBER.split(name)]

    return sorted(dict.fromkeys(files), key=key)


def _open(path: str):
    import pyarrow.parquet as pq

    if "://" in path:
        import fsspec

        return pq.ParquetFile(fsspec.open(path, "rb").open())
    return pq.ParquetFile(path)


@dataclass(frozen=True)
class TableInfo:
    files: tuple[str, ...]
    num_rows: int
    schema: Any  # pyarrow.Schema of the first file


def table_info(files: Sequence[str], where: str) -> TableInfo:
    """Row count (from parquet metadata, no data read) and schema; every file must share the columns."""
    if not files:
        raise InputError(f"{where}: no parquet files found; the table is empty or the path is wrong")
    total = 0
    schema = None
    for path in files:
        pf = _open(path)
        total += pf.metadata.num_rows
        file_schema = pf.schema_arrow
        if schema is None:
            schema = file_schema
        elif set(file_schema.names) != set(schema.names):
            raise InputError(f"{where}: {Path(path).name} has columns {file_schema.names}, "
                             f"but {Path(files[0]).name} has {schema.names}; all parts must match")
    return TableInfo(tuple(files), total, schema)


def require_columns(info: TableInfo, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in info.schema.names]
    if missing:
        raise InputError(f"{where}: column(s) {', '.join(map(repr, missing))} missing; "
                         f"columns present: {', '.join(info.schema.names)}")


def iter_batches(info: TableInfo, columns: Sequence[str], batch_rows: int = DEFAULT_BATCH_ROWS):
    """Yield (row_offset, pyarrow.RecordBatch) over every file, in order, with only ``columns``."""
    from recbuild.common.parquet_batches import row_group_batches

    offset = 0
    for path in info.files:
        for batch in row_group_batches(_open(path), batch_rows, columns):
            yield offset, batch
            offset += batch.num_rows


def embedding_matrix(column: Any, where: str, row_offset: int = 0,
                     dim: int | None = None) -> np.ndarray:
    """One batch of an embedding column -> C-contiguous float32 ``[rows, dim]``.

    Raises InputError on nulls, ragged rows, a dimension other than ``dim`` and NaN/inf values,
    naming the first offending row (``row_offset`` + index in the batch).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    rows = len(column)
    if column.null_count:
        bad = int(np.argmin(column.is_valid().to_numpy(zero_copy_only=False)))
        raise InputError(f"{where}: embedding is null at row {row_offset + bad}; every row needs a vector")
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.dictionary_decode()
        t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        # "0.1,0.2" and "[0.1, 0.2]" both parse; tokens are trimmed, then cast (never eval()).
        column = pc.split_pattern(pc.utf8_trim(column, characters="[] "), ",")
        t = column.type
    if pa.types.is_fixed_size_list(t):
        width = t.list_size
        flat = column.flatten()
        lengths = None
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t) \
            or pa.types.is_large_list_view(t):
        if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
            column = column.cast(pa.large_list(t.value_type))
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if rows else (dim or 0)
        flat = column.flatten()
    else:
        raise InputError(f"{where}: embedding column has type {t}; expected fixed_size_list<float32>, "
                         "list<double>/list<float> or a comma-separated string")
    if lengths is not None and rows and not np.all(lengths == width):
        bad = int(np.argmax(lengths != width))
        raise InputError(f"{where}: row {row_offset + bad} has {int(lengths[bad])} values but row "
                         f"{row_offset} has {width}; every embedding must have the same dimension")
    if dim is not None and width != dim:
        raise InputError(f"{where}: embeddings from row {row_offset} have dimension {width}, "
                         f"expected {dim} (dimension mismatch between batches or with the index)")
    if width == 0 and rows:
        raise InputError(f"{where}: embeddings have dimension 0")
    if flat.null_count:
        bad = int(np.argmin(flat.is_valid().to_numpy(zero_copy_only=False))) // max(width, 1)
        raise InputError(f"{where}: embedding at row {row_offset + bad} contains a null value")
    if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
        try:
            flat = pc.cast(pc.utf8_trim(flat, characters=" "), pa.float32())
        except pa.ArrowInvalid as exc:
            raise InputError(f"{where}: an embedding string does not parse as floats ({exc})") from None
    elif flat.type != pa.float32():
        if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
            raise InputError(f"{where}: embedding values have type {flat.type}; expected floats")
        flat = flat.cast(pa.float32(), safe=False)  # double -> float rounds, as tzrec's cast does
    values = flat.to_numpy(zero_copy_only=False).reshape(rows, width)
    if not np.isfinite(values).all():
        bad = int(np.argmin(np.isfinite(values).all(axis=1)))
        raise InputError(f"{where}: embedding at row {row_offset + bad} contains NaN or inf; "
                         "fix the tower or drop such rows")
    return np.ascontiguousarray(values, dtype=np.float32)


def id_strings(column: Any):
    """Ids of one batch as a pyarrow string array, as written to ``id_mapping`` (ints in decimal)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if not pa.types.is_large_string(column.type):
        column = column.cast(pa.large_string())
    return column


def ids_as_strings(column: Any) -> list[str]:
    """Ids of one batch as Python strings (ints print as decimal)."""
    return id_strings(column).to_pylist()


def write_lines(fh, strings) -> None:
    """Write every element of a pyarrow string array followed by "\n", straight from the joined
    data buffer (no per-row Python work)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    if not len(strings):
        return
    if strings.type != pa.large_string():
        strings = strings.cast(pa.large_string())
    terminated = pc.binary_join_element_wise(strings, pa.scalar("", pa.large_string()),
                                             pa.scalar("\n", pa.large_string()))
    offsets = np.frombuffer(terminated.buffers()[1], dtype=np.int64)
    start, stop = offsets[terminated.offset], offsets[terminated.offset + len(terminated)]
    fh.write(memoryview(terminated.buffers()[2])[start:stop])


def check_ids(column: Any, where: str, row_offset: int = 0) -> None:
    if column.null_count:
        bad = int(np.argmin(column.is_valid().to_numpy(zero_copy_only=False)))
        raise InputError(f"{where}: id is null at row {row_offset + bad}; every row needs an id")


@dataclass
class EmbeddingBatch:
    row_offset: int
    ids: Any  # pyarrow.Array of the id column
    vectors: np.ndarray  # float32 [rows, dim]
    batch: Any  # the whole pyarrow.RecordBatch (for extra columns)


class EmbeddingTable:
    """An embedding table on disk, read in record batches (bounded memory)."""

    def __init__(self, location: Any, id_column: str, embedding_column: str, where: str,
                 extra_columns: Sequence[str] = ()):
        self.where = where
        self.id_column = id_column
        self.embedding_column = embedding_column
        self.extra_columns = [c for c in extra_columns if c not in (id_column, embedding_column)]
        self.info = table_info(parquet_files(location), where)
        require_columns(self.info, [id_column, embedding_column, *self.extra_columns], where)
        if self.info.num_rows == 0:
            raise InputError(f"{where}: the table has no rows")

    @property
    def num_rows(self) -> int:
        return self.info.num_rows

    @property
    def id_type(self):
        return self.info.schema.field(self.id_column).type

    def batches(self, batch_rows: int = DEFAULT_BATCH_ROWS,
                dim: int | None = None) -> Iterator[EmbeddingBatch]:
        columns = [self.id_column, self.embedding_column, *self.extra_columns]
        for offset, batch in iter_batches(self.info, columns, batch_rows):
            ids = batch.column(self.id_column)
            check_ids(ids, self.where, offset)
            vectors = embedding_matrix(batch.column(self.embedding_column), self.where, offset, dim)
            dim = vectors.shape[1]
            yield EmbeddingBatch(offset, ids, vectors, batch)

    def vectors_at(self, positions: np.ndarray, batch_rows: int = DEFAULT_BATCH_ROWS) -> np.ndarray:
        """Vectors of the sorted row ``positions``, in one pass over the embedding column only;
        only the chosen rows are converted (a training sample costs a read, not a conversion)."""
        import pyarrow as pa

        out = None
        filled = 0
        for offset, batch in iter_batches(self.info, [self.embedding_column], batch_rows):
            a, b = np.searchsorted(positions, [offset, offset + batch.num_rows])
            if b == a:
                continue
            column = batch.column(0).take(pa.array(positions[a:b] - offset))
            try:
                vectors = embedding_matrix(column, self.where, offset)
            except InputError:  # report the exact row: convert the whole batch
                embedding_matrix(batch.column(0), self.where, offset)
                raise
            if out is None:
                out = np.empty((len(positions), vectors.shape[1]), dtype=np.float32)
            elif vectors.shape[1] != out.shape[1]:
                embedding_matrix(batch.column(0), self.where, offset, out.shape[1])  # names the row
            out[filled:filled + len(vectors)] = vectors
            filled += len(vectors)
        assert out is not None and filled == len(positions)
        return out

    def read_all(self, batch_rows: int = DEFAULT_BATCH_ROWS):
        """(ids as one pyarrow array, float32 matrix, extra columns as a pyarrow Table).

        For consumers that need every vector at once (k-means over all items): the matrix is
        filled into one preallocated buffer, so peak memory is the matrix plus one batch.
        """
        import pyarrow as pa

        matrix = None
        ids, extras = [], []
        for part in self.batches(batch_rows):
            if matrix is None:
                matrix = np.empty((self.num_rows, part.vectors.shape[1]), dtype=np.float32)
            matrix[part.row_offset:part.row_offset + len(part.vectors)] = part.vectors
            ids.append(part.ids)
            if self.extra_columns:
                extras.append(part.batch.select(self.extra_columns))
        id_array = pa.chunked_array(ids).combine_chunks()
        extra_table = pa.Table.from_batches(extras) if extras else None
        return id_array, matrix, extra_table
