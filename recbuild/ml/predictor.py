"""Batched inference of an exported tower over a parquet table, streamed, into ``part-*.parquet``.

The pipeline per record batch is: parquet -> Arrow batch -> numpy/torch inputs (``feature_io``) ->
``module(inputs)[output_key]`` -> Arrow embedding column -> buffered row groups -> parquet parts.
Memory is bounded by the batch size and one output row group (plus the input's row group being
decoded), never by the table size.

Before any forward pass the input is validated cheaply: parquet footers (schema, row counts) of every
file and one pre-pass over the **id column only**, which finds null and duplicate ids. That pre-pass
holds the id column in memory (8 bytes a row for int64 ids; the strings for string ids) - a small
fraction of the table, and the price of detecting duplicates exactly before work starts. With
``on_duplicate: first|last`` the pre-pass yields the sorted global row numbers to drop, and the main
pass filters them out batch by batch, so the kept row of each id stays at its input position.

Output rows keep the input order: files in sorted path order, rows in file order.
"""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recbuild.ml import feature_io
from recbuild.errors import BuildError, InputError
from recbuild.ml.feature_io import FeatureSpec

EXPORT_FILE = "model.pt2"
SCRIPTED_FILE = "scripted_model.pt"
EMBEDDING_FORMATS = ("fixed_size_list", "list_double", "string")
ON_DUPLICATE = ("error", "first", "last")
DEFAULT_BATCH_SIZE = 4096
DEFAULT_ROWS_PER_FILE = 1_000_000
# Output row-group size: at most 64k rows, or fewer once 64 MB are pending. Independent of the
# batch size (groups of 64k rows x 64 floats = 16 MB: few, big groups for readers), with the byte
# cap bounding memory when reserved columns are wide.
ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 64 << 20
# The writer options every recbuild parquet file uses (docs/internals.md): dictionary encoding of
# float embeddings only costs time (perf_baselines.md section 5).
WRITER_OPTIONS = dict(use_dictionary=False, compression="snappy", write_statistics=True)
_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


# -- the tower -------------------------------------------------------------------------------------
@dataclass
class LoadedTower:
    module: Callable[[Dict[str, Any]], Dict[str, Any]]
    specs: list[FeatureSpec]
    source: str  # which file was loaded (model.pt2 or scripted_model.pt)


def _exported_input_names(program) -> list[str] | None:
    """The dict keys an ExportedProgram's forward(inputs) expects, or None if not a single dict."""
    def children(spec):  # TreeSpec.children() is the newer spelling of .children_specs
        return spec.children() if callable(getattr(spec, "children", None)) else spec.children_specs

    try:
        args_spec = children(program.call_spec.in_spec)[0]
        (dict_spec,) = children(args_spec)
        if dict_spec.type is dict:
            return list(dict_spec.context)
    except Exception:  # an unexpected signature: the call itself will report the mismatch
        return None
    return None


def load_tower(folder: str | Path) -> LoadedTower:
    """Load an exported tower's ``model.pt2`` (torch.export), checked so that neither loading nor
    calling it can run code (see model_files). ``scripted_model.pt`` is never loaded: TorchScript
    runs its own code while loading, and the folder may come from anywhere (a source, a cache
    entry, a bundle copied from another machine)."""
    from recbuild.ml.model_files import load_exported_program

    folder = Path(folder)
    specs = feature_io.load_fg(folder)
    if not (folder / EXPORT_FILE).is_file():
        only = f" (it has {SCRIPTED_FILE}, which recbuild does not load: TorchScript can run code " \
               "while loading)" if (folder / SCRIPTED_FILE).is_file() else ""
        raise BuildError(f"{folder} holds no {EXPORT_FILE}{only}; build the towers artifact with "
                         "formats including torch_export (the default)")
    program = load_exported_program(folder / EXPORT_FILE)
    expected = _exported_input_names(program)
    if expected is not None and set(expected) != {s.name for s in specs}:
        raise BuildError(
            f"{folder}: fg.json lists features {sorted(s.name for s in specs)} but {EXPORT_FILE} "
            f"takes {sorted(expected)}; the folder is inconsistent - rebuild the towers artifact")
    return LoadedTower(program.module(), specs, EXPORT_FILE)


# -- locating the parquet input --------------------------------------------------------------------
@dataclass
class ParquetInput:
    """Concrete parquet files (sorted) and the filesystem that opens them (None = local)."""

    paths: list[str]
    filesystem: Any = None

    def open(self, path: str) -> pq.ParquetFile:
        try:
            if self.filesystem is None:
                return pq.ParquetFile(path)
            return pq.ParquetFile(self.filesystem.open_input_file(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{path}: cannot read it as parquet ({exc})") from None


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _keep_data_files(paths: Sequence[str]) -> list[str]:
    """Drop bookkeeping files (MANIFEST.json, _SUCCESS, .hidden); prefer *.parquet when present."""
    candidates = [p for p in paths
                  if not Path(p).name.startswith((".", "_")) and Path(p).name != "MANIFEST.json"]
    parquet = [p for p in candidates if p.lower().endswith(_PARQUET_SUFFIXES)]
    return sorted(parquet or candidates)


def resolve_parquet_input(locations: str | Path | Sequence[str | Path]) -> ParquetInput:
    """Files from paths, directories, globs or fsspec URLs (``memory://``, ``s3://`` ...)."""
    if isinstance(locations, (str, Path)):
        locations = [locations]
    locations = [str(x) for x in locations]
    if not locations:
        raise InputError("no parquet input given")
    if any(_is_url(x) for x in locations):
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        fs, _ = fsspec.core.url_to_fs(locations[0])
        paths: list[str] = []
        for location in locations:
            _, path = fsspec.core.url_to_fs(location)
            if any(ch in path for ch in "*?["):
                paths.extend(fs.glob(path))
            elif fs.isdir(path):
                paths.extend(p for p in fs.find(path))
            elif fs.exists(path):
                paths.append(path)
            else:
                raise InputError(f"{location} does not exist")
        files = _keep_data_files(paths)
        if not files:
            raise InputError(f"no parquet files under {', '.join(locations)}")
        return ParquetInput(files, PyFileSystem(FSSpecHandler(fs)))
    import glob as globmod

    paths = []
    for location in locations:
        location = location.removeprefix("file://")
        p = Path(location)
        if any(ch in location for ch in "*?["):
            paths.extend(x for x in globmod.glob(location, recursive=True) if Path(x).is_file())
        elif p.is_dir():
            paths.extend(str(x) for x in p.rglob("*") if x.is_file())
        elif p.is_file():
            paths.append(str(p))
        else:
            raise InputError(f"{location} does not exist")
    files = _keep_data_files(paths)
    if not files:
        raise InputError(f"no parquet files in {', '.join(locations)}")
    return ParquetInput(files)


# -- validation before work ------------------------------------------------------------------------
@dataclass
class InputPlan:
    """What the pre-pass learnt: per-file row counts, output schema, rows to drop."""

    files: list[str]
    file_rows: list[int]
    read_columns: list[str]  # id + reserved + feature columns, in that order, each once
    passthrough_schema: pa.Schema  # id + reserved columns as found in the input
    drop_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # sorted, global

    @property
    def total_rows(self) -> int:
        return sum(self.file_rows)

    def locate(self, global_row: int) -> str:
        """'row R of FILE' for a global row number (messages only)."""
        starts = np.cumsum([0] + self.file_rows)
        i = int(np.searchsorted(starts, global_row, side="right")) - 1
        return f"row {global_row - int(starts[i])} of {Path(self.files[i]).name}"


def _check_schema(schema: pa.Schema, path: str, id_column: str, reserved: Sequence[str],
                  specs: Sequence[FeatureSpec]) -> None:
    feature_io.validate_columns(schema, specs, where=f"{path}")
    problems = []
    if id_column not in schema.names:
        problems.append(f"id column {id_column!r} is missing (set id_column to one of: "
                        f"{', '.join(schema.names)})")
    else:
        t = schema.field(id_column).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (pa.types.is_integer(t) or feature_io.is_stringlike(t)):
            problems.append(f"id column {id_column!r} has type {t}; ids must be integers or strings")
    missing = [c for c in reserved if c not in schema.names]
    if missing:
        problems.append(f"reserved column(s) {', '.join(map(repr, missing))} missing "
                        f"(columns present: {', '.join(schema.names)})")
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems))


def _stat_null_count(metadata: pq.FileMetaData, column: str) -> int | None:
    """Nulls in a top-level primitive column according to the footer, None when unknown."""
    schema = metadata.schema
    # A top-level primitive column is the leaf whose path is just its name; nested columns have
    # no such leaf and are skipped (their nulls are found while reading).
    index = next((i for i in range(len(schema)) if schema.column(i).path == column), None)
    if index is None:
        return None
    total = 0
    for rg in range(metadata.num_row_groups):
        stats = metadata.row_group(rg).column(index).statistics
        if stats is None or not stats.has_null_count:
            return None
        total += stats.null_count
    return total


def _duplicate_rows(ids: pa.ChunkedArray, on_duplicate: str, plan: InputPlan,
                    id_column: str) -> np.ndarray:
    """Sorted global rows to drop (empty without duplicates); raises for ``on_duplicate: error``."""
    n = len(ids)
    flat = ids.combine_chunks()
    if pa.types.is_dictionary(flat.type):
        flat = flat.dictionary_decode()
    # Decide "no duplicates" (the common case) with one cheap pass: a hash pass for strings, a
    # sort for integers (numpy's vectorised sort beats a hash count of 1M int64 about 2x here).
    if feature_io.is_stringlike(flat.type):
        encoded = pc.dictionary_encode(flat)
        if len(encoded.dictionary) == n:
            return np.empty(0, dtype=np.int64)
        codes = feature_io.numpy_view(encoded.indices)
    else:
        codes = feature_io.numpy_view(flat)
        ordered = np.sort(codes)
        if not (ordered[1:] == ordered[:-1]).any():
            return np.empty(0, dtype=np.int64)
        del ordered
    order = np.argsort(codes, kind="stable")  # stable: equal ids stay in row order
    sorted_codes = codes[order]
    repeat = sorted_codes[1:] == sorted_codes[:-1]  # position i+1 repeats position i
    if on_duplicate == "error":
        later = order[1:][repeat]
        row = int(later.min())
        value = flat[row].as_py()
        first = int(order[np.searchsorted(sorted_codes, codes[row], side="left")])
        raise InputError(
            f"duplicate ids in column {id_column!r}: {value!r} appears at {plan.locate(first)} and "
            f"{plan.locate(row)} ({int(repeat.sum())} duplicate row(s) in all); deduplicate the "
            f"input, or set on_duplicate: first (keep the first row of each id) or last")
    drop = order[1:][repeat] if on_duplicate == "first" else order[:-1][repeat]
    return np.sort(drop).astype(np.int64)


def plan_input(source: ParquetInput, specs: Sequence[FeatureSpec], id_column: str,
               reserved_columns: Sequence[str], on_duplicate: str, batch_size: int) -> InputPlan:
    """Validate every file's footer and the id column; nothing else is read."""
    if on_duplicate not in ON_DUPLICATE:
        raise BuildError(f"on_duplicate must be one of {', '.join(ON_DUPLICATE)}, got {on_duplicate!r}")
    reserved = [c for c in dict.fromkeys(reserved_columns) if c != id_column]
    passthrough = [id_column] + reserved
    read_columns = list(dict.fromkeys(passthrough + [s.column for s in specs]))
    file_rows: list[int] = []
    reference: pa.Schema | None = None
    id_chunks: list[pa.Array] = []
    plan = InputPlan(source.paths, file_rows, read_columns, pa.schema([]))
    for path in source.paths:
        pf = source.open(path)
        schema = pf.schema_arrow
        _check_schema(schema, path, id_column, reserved, specs)
        used = pa.schema([schema.field(c) for c in read_columns])
        if reference is None:
            reference = used
        elif not used.equals(reference):
            diffs = [f"{f.name}: {f.type} here, {reference.field(f.name).type} in "
                     f"{Path(source.paths[0]).name}" for f in used if f.type != reference.field(f.name).type]
            raise InputError(f"{path}: column types differ between input files ({'; '.join(diffs)}); "
                             "write every file with the same schema")
        metadata = pf.metadata
        for spec in specs:
            if spec.kind == "sequence":
                continue  # a null sequence is an empty one
            nulls = _stat_null_count(metadata, spec.column)
            if nulls:
                raise InputError(f"{path}: column {spec.column!r} (feature {spec.name!r}) has {nulls} "
                                 "null value(s); fill them (0 for numeric, an id for id features) "
                                 "or drop those rows")
        file_rows.append(metadata.num_rows)
        # The id pre-pass: stream the id column only, batch by batch.
        row_in_file = 0
        for batch in pf.iter_batches(batch_size=max(batch_size, 65_536), columns=[id_column]):
            column = batch.column(0)
            if column.null_count:
                first_null = int(np.argmin(column.is_valid().to_numpy(zero_copy_only=False)))
                raise InputError(
                    f"{path}: id column {id_column!r} has a null at row {row_in_file + first_null}; "
                    "every row needs an id: fill or drop such rows")
            id_chunks.append(column)
            row_in_file += len(column)
    plan.passthrough_schema = pa.schema([reference.field(c) for c in passthrough])
    if plan.total_rows == 0:
        raise InputError(f"the input has no rows ({len(source.paths)} file(s)); nothing to embed")
    ids = pa.chunked_array(id_chunks, type=reference.field(id_column).type)
    plan.drop_rows = _duplicate_rows(ids, on_duplicate, plan, id_column)
    return plan


# -- output ----------------------------------------------------------------------------------------
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


# -- the run ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictResult:
    rows: int  # rows written
    dim: int
    output_column: str
    files: tuple[str, ...]  # part file names, in order
    dropped_duplicates: int
    model_file: str


def check_output(out: Any, output_key: str, rows: int, dim: int | None, tower_dir: Path) -> "np.ndarray":
    import torch

    if not isinstance(out, dict) or output_key not in out:
        keys = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise BuildError(f"{tower_dir}: the module's output has no {output_key!r} (got {keys}); "
                         f"is this the right tower?")
    emb = out[output_key]
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != rows:
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise BuildError(f"{tower_dir}: {output_key} must be a [batch, dim] tensor, got {shape} "
                         f"for a batch of {rows}")
    if dim is not None and emb.shape[1] != dim:
        raise BuildError(f"{tower_dir}: {output_key} changed width from {dim} to {emb.shape[1]} "
                         "between batches")
    if emb.dtype != torch.float32:
        emb = emb.float()
    return emb.numpy()


def raise_non_finite(matrix: np.ndarray, batch: pa.RecordBatch, inputs: Dict[str, Any],
                     specs: Sequence[FeatureSpec], plan: InputPlan, id_column: str,
                     global_rows: np.ndarray, output_key: str) -> None:
    bad = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
    numeric = [s.column for s in specs if s.kind == "numeric"
               and not math.isfinite(float(inputs[s.name][bad]))]
    hint = (f"its numeric input(s) {', '.join(map(repr, numeric))} are NaN/inf: clean them"
            if numeric else "its inputs are finite, so the model weights are likely broken: "
            "check the training run")
    raise InputError(f"{output_key} is NaN/inf for id {batch.column(id_column)[bad].as_py()!r} at "
                     f"{plan.locate(int(global_rows[bad]))}; {hint}")


def filtered_batches(source: ParquetInput, plan: InputPlan, batch_size: int
                     ) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Input batches in order with dropped duplicate rows removed, plus their global row numbers."""
    offset = 0
    drop = plan.drop_rows
    for path in plan.files:
        pf = source.open(path)
        # use_threads=False: decoding stays on the reader thread, off the cores torch computes on.
        for batch in pf.iter_batches(batch_size=batch_size, columns=plan.read_columns,
                                     use_threads=False):
            rows = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
            offset += batch.num_rows
            if len(drop):
                lo, hi = np.searchsorted(drop, [rows[0], rows[-1] + 1]) if len(rows) else (0, 0)
                if hi > lo:
                    keep = np.ones(len(rows), dtype=bool)
                    keep[drop[lo:hi] - rows[0]] = False
                    batch, rows = batch.filter(pa.array(keep)), rows[keep]
            if batch.num_rows:
                yield batch, rows


class StageClock:
    """Accumulates wall time per pipeline stage into a dict (``stats``); a no-op without one."""

    def __init__(self, stats: dict[str, float] | None):
        self.stats = stats
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.stats is None:
            return
        now = time.perf_counter()
        self.stats[stage] = self.stats.get(stage, 0.0) + (now - self._last)
        self._last = now


class _Stopped(Exception):
    """Raised inside a pipeline thread when another thread failed and the run is abandoned."""


_DONE = object()  # end-of-stream marker between pipeline stages


class _Pipe:
    """A bounded FIFO between two pipeline threads that gives up once the run is stopping.

    Bounded (a couple of batches) so that memory stays proportional to the batch size whatever the
    relative speed of reading, computing and writing.
    """

    def __init__(self, stop: threading.Event, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = stop

    def put(self, item: Any) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self) -> Any:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                continue


class _Worker(threading.Thread):
    """Runs one pipeline stage; the first failure of any stage stops the whole run."""

    def __init__(self, name: str, body: Callable[[], None], stop: threading.Event,
                 failures: list[BaseException]):
        super().__init__(name=f"recbuild-predict-{name}", daemon=True)
        self._body, self._stop_event, self._failures = body, stop, failures

    def run(self) -> None:
        try:
            self._body()
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the main thread, which re-raises it
            self._failures.append(exc)
            self._stop_event.set()


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


def predict_embeddings(tower_dir: str | Path, inputs: str | Path | Sequence[str | Path], out_dir: str | Path,
                       *, output_key: str, id_column: str, reserved_columns: Sequence[str] = (),
                       batch_size: int = DEFAULT_BATCH_SIZE, embedding_format: str = "fixed_size_list",
                       on_duplicate: str = "error", rows_per_file: int = DEFAULT_ROWS_PER_FILE,
                       threads: int = 2, overlap_io: bool = True, progress=None,
                       log: logging.Logger | None = None, tower: LoadedTower | None = None,
                       stats: dict[str, float] | None = None) -> PredictResult:
    """Embed every row of ``inputs`` with the tower in ``tower_dir`` into ``out_dir/part-*.parquet``.

    Output columns: ``id_column``, the other ``reserved_columns`` (input types kept), then
    ``output_key`` in ``embedding_format``. Raises InputError/BuildError before any forward pass for
    bad input (missing/mistyped columns, null or duplicate ids, empty input), and during the run
    for NaN/inf outputs; the caller publishes nothing on error.

    ``threads`` is the CPU budget of the step. With ``overlap_io`` (the default) a reader thread
    (parquet -> tensors) and a writer thread (embeddings -> parquet) run beside ``threads`` forward
    threads, each running whole batches with one torch thread; the writer restores input order.
    Without it everything runs in turn on this thread and torch gets ``threads`` OpenMP threads.
    Why: OpenMP threads spin at barriers, so a pass split across all cores stalls whenever anything
    else (our own I/O, another process) takes a core - measured 5-10x slower on a busy 2-core box -
    while independent single-threaded passes just share the cores. On an idle 2-core machine the
    overlapped run was also the faster one (bench/predict.py).

    ``progress`` is a factory ``(total, unit) -> Progress`` (``BuildContext.progress``); ``stats``,
    if given, receives busy seconds per stage, summed over threads (load, validate, read, convert,
    forward, check, format, write; wait_* is time a thread was blocked on its neighbour).
    """
    clock = StageClock(stats)
    import torch  # counted in "load": the first import in a process is a fixed startup cost

    log = log or logging.getLogger("recbuild.ml.predictor")
    tower_dir, out_dir = Path(tower_dir), Path(out_dir)
    if batch_size < 1:
        raise BuildError(f"batch_size must be positive, got {batch_size}")
    embedding_type(embedding_format, 1)  # validates the format name before any work
    tower = tower or load_tower(tower_dir)
    clock.lap("load")
    source = resolve_parquet_input(inputs)
    plan = plan_input(source, tower.specs, id_column, reserved_columns, on_duplicate, batch_size)
    expected_rows = plan.total_rows - len(plan.drop_rows)
    log.info("embedding %d rows from %d file(s) with %s (%s), batch %d", expected_rows,
             len(plan.files), tower_dir.name, tower.source, batch_size)
    if len(plan.drop_rows):
        log.info("on_duplicate=%s: dropping %d duplicate row(s)", on_duplicate, len(plan.drop_rows))
    clock.lap("validate")
    out_dir.mkdir(parents=True, exist_ok=True)

    def prepare(batch: pa.RecordBatch, global_rows: np.ndarray, clk: StageClock):
        try:
            arrays = feature_io.batch_to_numpy(batch, tower.specs)
        except InputError as exc:
            raise InputError(f"at {plan.locate(int(global_rows[0]))} (batch start): {exc}") from None
        item = (batch, global_rows, arrays, feature_io.numpy_to_tensors(arrays))
        clk.lap("convert")
        return item

    dims: list[int] = []

    def compute(item, clk: StageClock) -> tuple[pa.RecordBatch, np.ndarray]:
        batch, global_rows, arrays, tensors = item
        out = tower.module(tensors)
        clk.lap("forward")
        matrix = check_output(out, output_key, batch.num_rows, dims[0] if dims else None, tower_dir)
        if not dims:
            dims.append(matrix.shape[1])
        if not np.isfinite(matrix).all():
            raise_non_finite(matrix, batch, arrays, tower.specs, plan, id_column, global_rows,
                             output_key)
        clk.lap("check")
        return batch, matrix

    sink = EmbeddingSink(out_dir, plan, output_key, embedding_format, rows_per_file)
    thread_stats: list[dict[str, float]] = []

    def thread_clock() -> StageClock:  # one per thread: clocks are not shared between threads
        own: dict[str, float] | None = None if stats is None else {}
        if own is not None:
            thread_stats.append(own)
        return StageClock(own)

    previous_threads = torch.get_num_threads()
    budget = max(1, int(threads))
    # Overlapped: `budget` forward threads of one torch thread each (see _run_overlapped).
    torch.set_num_threads(1 if overlap_io else budget)
    bar = progress(expected_rows, "rows") if callable(progress) else progress
    clock.lap("setup")
    try:
        with torch.inference_mode():
            if overlap_io:
                _run_overlapped(source, plan, batch_size, prepare, compute, sink, bar, thread_clock,
                                compute_workers=budget)
            else:
                clk = thread_clock()
                for batch, global_rows in filtered_batches(source, plan, batch_size):
                    clk.lap("read")
                    batch, matrix = compute(prepare(batch, global_rows, clk), clk)
                    sink.write(batch, matrix, clk)
                    if bar is not None:
                        bar.advance(batch.num_rows)
                sink.close()
                clk.lap("write")
        clock.lap("pipeline")
    finally:
        sink.abort()  # no-op after close(); on error closes the open part (the folder is discarded)
        torch.set_num_threads(previous_threads)
        if bar is not None:
            bar.close()
        if stats is not None:
            for own in thread_stats:
                for key, value in own.items():
                    stats[key] = stats.get(key, 0.0) + value
    if sink.dim is None:
        raise InputError("every input row was dropped; nothing to embed")
    return PredictResult(rows=expected_rows, dim=sink.dim, output_column=output_key,
                         files=tuple(p.name for p in sink.files),
                         dropped_duplicates=len(plan.drop_rows), model_file=tower.source)


def _run_overlapped(source: ParquetInput, plan: InputPlan, batch_size: int, prepare, compute,
                    sink: EmbeddingSink, bar, thread_clock, compute_workers: int) -> None:
    """reader thread -> ``compute_workers`` forward threads -> writer thread, via bounded pipes.

    Each forward thread runs whole batches with one torch thread: the cores are shared by
    independent forward passes instead of one pass split across OpenMP threads, so nothing waits
    at an OpenMP barrier for a thread the OS has descheduled (to our own reader/writer, or to
    another process). Batches carry a sequence number and the writer puts them back in input
    order; at most ``compute_workers`` + the pipe depths are in flight, so memory stays bounded.
    The calling thread is one of the forward threads (and the one that reports progress).
    """
    import torch

    stop = threading.Event()
    failures: list[BaseException] = []
    to_compute = _Pipe(stop, depth=compute_workers + 1)
    # The writer stalls while it encodes a row group (16 batches of 4096 rows): a pipe that holds a
    # row group's worth of batches keeps the forward threads running meanwhile (measured 9% faster
    # than a depth of 3). Memory stays bounded: at most that many batches wait.
    to_write = _Pipe(stop, depth=compute_workers + min(32, max(2, ROW_GROUP_ROWS // batch_size)))
    progress_lock = threading.Lock()

    def read_body() -> None:
        clk = thread_clock()
        for seq, (batch, global_rows) in enumerate(filtered_batches(source, plan, batch_size)):
            clk.lap("read")
            item = prepare(batch, global_rows, clk)
            to_compute.put((seq, item))
            clk.lap("wait_reader")
        for _ in range(compute_workers):  # one end marker per forward thread
            to_compute.put(_DONE)

    def compute_body() -> None:
        clk = thread_clock()
        with torch.inference_mode():  # thread-local: every forward thread enters it itself
            while True:
                item = to_compute.get()
                clk.lap("wait_input")
                if item is _DONE:
                    break
                seq, prepared = item
                batch, matrix = compute(prepared, clk)
                to_write.put((seq, batch, matrix))
                if bar is not None:
                    with progress_lock:
                        bar.advance(batch.num_rows)
                clk.lap("wait_output")
        to_write.put(_DONE)

    def write_body() -> None:
        clk = thread_clock()
        waiting: dict[int, tuple[pa.RecordBatch, np.ndarray]] = {}  # finished out of order
        next_seq, running = 0, compute_workers
        while running:
            item = to_write.get()
            clk.lap("wait_writer")
            if item is _DONE:
                running -= 1
                continue
            seq, batch, matrix = item
            waiting[seq] = (batch, matrix)
            while next_seq in waiting:
                sink.write(*waiting.pop(next_seq), clk)
                next_seq += 1
        if waiting:  # cannot happen unless a batch was lost: never write a table with a hole
            raise BuildError(f"internal error: batches {sorted(waiting)} were never written in order")
        sink.close()
        clk.lap("write")

    threads = [_Worker("read", read_body, stop, failures), _Worker("write", write_body, stop, failures)]
    threads += [_Worker(f"forward-{i}", compute_body, stop, failures) for i in range(1, compute_workers)]
    for thread in threads:
        thread.start()
    try:
        compute_body()
        threads[1].join()  # the writer closes the last part file
    except _Stopped:
        pass  # a worker failed; its exception is raised below
    except BaseException:
        stop.set()
        raise
    finally:
        if failures or sys.exc_info()[0] is not None:
            stop.set()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
