"""The public run, ``predict_embeddings``: load and validate, then parquet -> Arrow batch ->
numpy/torch inputs (``feature_io``) -> ``module(inputs)[output_key]`` (checked: shape, NaN/inf) ->
Arrow embedding column -> buffered row groups -> parquet parts, overlapped on threads or in turn.

Memory is bounded by the batch size and one output row group (plus the input's row group being
decoded), never by the table size. Output rows keep the input order: files in sorted path order,
rows in file order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import pyarrow as pa

from recbuild.errors import BuildError, InputError
from recbuild.ml import feature_io
from recbuild.ml.feature_io import FeatureSpec
from recbuild.ml.predictor.clock import StageClock
from recbuild.ml.predictor.output import DEFAULT_ROWS_PER_FILE, EmbeddingSink, embedding_type
from recbuild.ml.predictor.overlap import run_overlapped
from recbuild.ml.predictor.source import filtered_batches, resolve_parquet_input
from recbuild.ml.predictor.tower import LoadedTower, load_tower
from recbuild.ml.predictor.plan import InputPlan
from recbuild.ml.predictor.validation import plan_input

DEFAULT_BATCH_SIZE = 4096


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
    # Overlapped: `budget` forward threads of one torch thread each (see overlap.run_overlapped).
    torch.set_num_threads(1 if overlap_io else budget)
    bar = progress(expected_rows, "rows") if callable(progress) else progress
    clock.lap("setup")
    try:
        with torch.inference_mode():
            if overlap_io:
                run_overlapped(source, plan, batch_size, prepare, compute, sink, bar, thread_clock,
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
