"""``executor: ray`` for ``item_embeddings`` / ``user_embeddings``: the tower runs in a Ray actor pool.

Same output as :func:`recbuild.ml.predictor.predict_embeddings`, byte for byte, because everything that
decides the bytes is shared with it:

* validation before work: :func:`predictor.load_tower` (on the driver, for its errors),
  :func:`predictor.resolve_parquet_input` and :func:`predictor.plan_input` (footers, types, nulls,
  the id pre-pass with duplicate handling);
* the forward batches: the local path cuts every input file into batches of ``batch_size`` rows
  counted from the start of that file (``ParquetFile.iter_batches``; a batch spans row groups but
  never files), then drops duplicate rows. Float results can depend on the batch a row is in, so
  the Ray tasks are **windows of whole local batches**: rows ``[k*W, (k+1)*W)`` of one file with
  ``W`` a multiple of ``batch_size`` (``ray.batch_size`` rounded up). An actor reads its window's row
  groups, slices it into the very same batches, applies the same drops, and runs the tower
  (:func:`predictor.check_output`, :func:`predictor.raise_non_finite`: same errors);
* the writing: the driver streams the id and reserved columns with :func:`predictor.filtered_batches`
  (the local batches themselves), pairs each with its embedding matrix coming back from Ray in input
  order (``preserve_order``), and hands them to the local path's :class:`predictor.EmbeddingSink`
  (format + :class:`predictor.PartWriter`), so part files, row groups and schema are the same.

Why not ``ray.data.read_parquet`` + ``map_batches(batch_size=...)``: Ray's blocks follow row groups
and byte sizes and ``map_batches`` restarts its batching at every bundle of blocks, so the forward
batches would not be the local ones and the floats could differ in the last bits. The windows are a
Ray Dataset (``from_items``, one block each) mapped by an actor pool (``map_batches`` with a callable
class that loads the tower once per actor); the actors read parquet with pyarrow through the same
filesystem object as the local path (fsspec URLs: s3://, gs://, ... must be reachable from every node;
local paths must be on a filesystem every node sees).

The driver reads only the id and reserved columns and writes the output: the feature decoding and the
forward passes, the expensive part, are spread over the cluster. Ray errors are turned into one
``BuildError`` (or the ``InputError`` the actor raised, unchanged); nothing is published then.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from recbuild.ml import feature_io, predictor
from recbuild.errors import BuildError, InputError, RecbuildError

DEFAULT_TASK_ROWS = 65_536
# One row per forward batch; ``error`` ("InputError: message") replaces the rows of a window that
# failed with a recbuild error: Ray Data's wrappers do not keep the original exception.
_RESULT_SCHEMA = pa.schema([("row0", pa.int64()), ("rows", pa.int64()), ("dim", pa.int64()),
                            ("emb", pa.large_binary()), ("error", pa.string())])
_ERRORS = {"InputError": InputError, "BuildError": BuildError}


@dataclasses.dataclass(frozen=True)
class Window:
    """Rows ``[start, stop)`` of ``plan.files[file]``: whole local batches (start % batch_size == 0)."""

    file: int
    start: int
    stop: int
    file_offset: int  # global row number of the file's first row
    drops: tuple[int, ...]  # global rows in the window dropped as duplicates


def plan_windows(plan: predictor.InputPlan, batch_size: int, task_rows: int) -> list[Window]:
    width = max(1, -(-task_rows // batch_size)) * batch_size  # a multiple of batch_size
    drop = plan.drop_rows
    windows, offset = [], 0
    for i, rows in enumerate(plan.file_rows):
        for start in range(0, rows, width):
            stop = min(rows, start + width)
            lo, hi = np.searchsorted(drop, [offset + start, offset + stop])
            windows.append(Window(i, start, stop, offset, tuple(int(x) for x in drop[lo:hi])))
        offset += rows
    return windows


class TowerActor:
    """One Ray actor: loads the tower once, then embeds windows (one per call)."""

    def __init__(self, tower_dir: str, source: predictor.ParquetInput, plan: predictor.InputPlan,
                 batch_size: int, output_key: str, id_column: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.tower = predictor.load_tower(tower_dir)
        self.tower_dir = Path(tower_dir)
        self.source, self.plan, self.batch_size = source, plan, batch_size
        self.output_key, self.id_column = output_key, id_column

    def embed_window(self, w: Window) -> list[tuple[int, int, int, bytes]]:
        import torch

        path = self.plan.files[w.file]
        pf = self.source.open(path)
        meta = pf.metadata
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        groups = [g for g in range(meta.num_row_groups) if starts[g] < w.stop and starts[g + 1] > w.start]
        table = pf.read_row_groups(groups, columns=self.plan.read_columns, use_threads=False)
        table = table.slice(w.start - int(starts[groups[0]]), w.stop - w.start)
        drops = np.asarray(w.drops, dtype=np.int64)
        out = []
        for lo in range(0, w.stop - w.start, self.batch_size):
            part = table.slice(lo, self.batch_size).combine_chunks()
            batch = part.to_batches()[0] if part.num_rows else None
            first = w.file_offset + w.start + lo
            rows = np.arange(first, first + part.num_rows, dtype=np.int64)
            if len(drops):  # as predictor.filtered_batches
                keep = ~np.isin(rows, drops)
                if not keep.all():
                    batch, rows = batch.filter(pa.array(keep)), rows[keep]
            if batch is None or not batch.num_rows:
                continue
            try:
                arrays = feature_io.batch_to_numpy(batch, self.tower.specs)
            except InputError as exc:
                raise InputError(f"at {self.plan.locate(int(rows[0]))} (batch start): {exc}") from None
            with torch.inference_mode():
                result = self.tower.module(feature_io.numpy_to_tensors(arrays))
            matrix = predictor.check_output(result, self.output_key, batch.num_rows, None, self.tower_dir)
            if not np.isfinite(matrix).all():
                predictor.raise_non_finite(matrix, batch, arrays, self.tower.specs, self.plan,
                                           self.id_column, rows, self.output_key)
            matrix = np.ascontiguousarray(matrix, dtype=np.float32)
            out.append((int(rows[0]), matrix.shape[0], matrix.shape[1], matrix.tobytes()))
        return out

    def __call__(self, items: pa.Table) -> pa.Table:
        results = []
        for row in items.to_pylist():
            try:
                results.extend((*r, None) for r in self.embed_window(Window(**row)))
            except RecbuildError as exc:  # handed to the driver as data, raised there as is
                name = type(exc).__name__ if type(exc).__name__ in _ERRORS else "BuildError"
                results = [(-1, 0, 0, b"", f"{name}: {exc.message}")]
                break
        columns = list(zip(*results)) if results else [[]] * len(_RESULT_SCHEMA)
        return pa.table([pa.array(c, type=f.type) for c, f in zip(columns, _RESULT_SCHEMA)],
                         schema=_RESULT_SCHEMA)


def _as_build_error(exc: BaseException) -> RecbuildError:
    own = _find_any(exc, RecbuildError, own_only=True)
    if own is not None:
        return own
    import ray.exceptions as rex

    died = _find_any(exc, (rex.ActorDiedError, rex.RayActorError, rex.WorkerCrashedError,
                           rex.ActorUnavailableError, rex.NodeDiedError, rex.ObjectLostError))
    if died is not None:
        first = str(died).strip().splitlines()[0] if str(died).strip() else type(died).__name__
        return BuildError(f"a Ray worker died while embedding ({type(died).__name__}: {first}); "
                          "check the workers' memory (ray.num_cpus_per_worker, ray.batch_size) and "
                          "`ray status`, then run make again")
    text = str(exc).strip().splitlines()
    return BuildError(f"the Ray run failed: {type(exc).__name__}: {text[-1] if text else ''}")


def _find_any(exc: BaseException, types, own_only: bool = False) -> BaseException | None:
    """The first exception of ``types`` in the chain of ``exc`` (Ray wraps the actor's error in a
    ``RayTaskError(InputError)`` subclass whose ``cause`` is the original; ``own_only`` skips such
    wrappers)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, types) and (not own_only or type(e).__module__.startswith("recbuild")):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _connect(address: str, local_cpus: int) -> bool:
    """ray.init for ``address``; True when this call started (or connected) Ray and must shut it."""
    import ray

    if ray.is_initialized():
        return False  # the caller's Ray (a test session, a notebook): use it, leave it running
    common = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        if address == "local":
            ray.init(address="local", num_cpus=max(1, local_cpus), **common)
        elif address.startswith("ray://"):
            ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
        else:
            ray.init(address=address, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = (" (no running cluster found: start one with `ray start --head`, set RAY_ADDRESS, or "
                "use ray.address: local)" if address == "auto" else "")
        raise BuildError(f"cannot connect to Ray at {address!r}{hint}: {exc}") from None
    return True


def predict_embeddings_ray(tower_dir: str | Path, inputs: str | Path | Sequence[str | Path],
                           out_dir: str | Path, *, ray_options: dict[str, Any], output_key: str,
                           id_column: str, reserved_columns: Sequence[str] = (),
                           batch_size: int = predictor.DEFAULT_BATCH_SIZE,
                           embedding_format: str = "fixed_size_list", on_duplicate: str = "error",
                           rows_per_file: int = predictor.DEFAULT_ROWS_PER_FILE, local_cpus: int = 2,
                           progress=None, log: logging.Logger | None = None,
                           actor_cls: type = None) -> predictor.PredictResult:
    """:func:`predictor.predict_embeddings` on Ray (see the module docstring); same result, same files.

    ``ray_options``: ``address`` (auto | local | ray://host:port | host:port), ``concurrency`` (actors),
    ``num_cpus_per_worker``, ``batch_size`` (rows per Ray task; the forward batches stay
    ``batch_size``). ``local_cpus`` is the CPU count of a Ray started here (``address: local``).
    ``actor_cls`` replaces :class:`TowerActor` (tests inject failures with it).
    """
    import ray

    log = log or logging.getLogger("recbuild.ml.ray_executor")
    tower_dir, out_dir = Path(tower_dir), Path(out_dir)
    if batch_size < 1:
        raise BuildError(f"batch_size must be positive, got {batch_size}")
    predictor.embedding_type(embedding_format, 1)
    tower = predictor.load_tower(tower_dir)  # the local path's errors, before Ray starts
    source = predictor.resolve_parquet_input(inputs)
    plan = predictor.plan_input(source, tower.specs, id_column, reserved_columns, on_duplicate, batch_size)
    del tower
    expected_rows = plan.total_rows - len(plan.drop_rows)
    windows = plan_windows(plan, batch_size, int(ray_options.get("batch_size", DEFAULT_TASK_ROWS)))
    cpus_per_worker = int(ray_options.get("num_cpus_per_worker", 1))
    address = str(ray_options.get("address", "auto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    # The driver's side: the local batches of id + reserved columns, in input order.
    light = dataclasses.replace(plan, read_columns=list(plan.passthrough_schema.names))
    sink = predictor.EmbeddingSink(out_dir, plan, output_key, embedding_format, rows_per_file)
    clock = predictor.StageClock(None)
    bar = progress(expected_rows, "rows") if callable(progress) else progress
    started = _connect(address, local_cpus)
    try:
        from ray.data import DataContext

        context = DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        concurrency = int(ray_options.get("concurrency") or max(1, cpus // cpus_per_worker))
        log.info("embedding %d rows from %d file(s) on Ray (%s): %d window(s), %d actor(s) x %d CPU, "
                 "batch %d", expected_rows, len(plan.files), address, len(windows), concurrency,
                 cpus_per_worker, batch_size)
        actor_plan = dataclasses.replace(plan, drop_rows=np.empty(0, dtype=np.int64))  # drops travel per window
        ds = ray.data.from_items([dataclasses.asdict(w) for w in windows],
                                 override_num_blocks=len(windows))
        with warnings.catch_warnings():  # max_restarts/max_task_retries have no named parameter yet
            warnings.simplefilter("ignore", DeprecationWarning)
            # No restarts or retries: a worker that dies (out of memory, a crashing tower) would
            # most likely die again; fail fast with one clear error instead.
            ds = ds.map_batches(
                actor_cls or TowerActor, batch_size=1, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=cpus_per_worker,
                max_restarts=0, max_task_retries=0,
                fn_constructor_kwargs=dict(tower_dir=str(tower_dir), source=source, plan=actor_plan,
                                           batch_size=batch_size, output_key=output_key,
                                           id_column=id_column, threads=cpus_per_worker))
        local = predictor.filtered_batches(source, light, batch_size)
        dim = None
        try:
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                for row0, rows, width, emb, error in zip(*(block.column(c).to_pylist()
                                                            for c in _RESULT_SCHEMA.names)):
                    if error is not None:
                        name, message = error.split(": ", 1)
                        raise _ERRORS[name](message)
                    batch, global_rows = next(local, (None, None))
                    if batch is None or int(global_rows[0]) != row0 or batch.num_rows != rows:
                        raise BuildError(f"internal error: Ray returned the batch at global row {row0} "
                                         f"({rows} rows) out of order; nothing was published")
                    if dim is not None and width != dim:
                        raise BuildError(f"{tower_dir}: {output_key} changed width from {dim} to "
                                         f"{width} between batches")
                    dim = width
                    matrix = np.frombuffer(emb, dtype=np.float32).reshape(rows, width)
                    sink.write(batch, matrix, clock)
                    if bar is not None:
                        bar.advance(rows)
            if next(local, None) is not None:
                raise BuildError("internal error: Ray returned fewer batches than the input holds")
            sink.close()
        except Exception as exc:
            if type(exc).__module__.startswith("recbuild"):
                raise  # ours, raised here on the driver
            raise _as_build_error(exc) from None  # Ray's wrappers: one recbuild error naming the cause
    finally:
        sink.abort()
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
    if sink.dim is None:
        raise InputError("every input row was dropped; nothing to embed")
    return predictor.PredictResult(rows=expected_rows, dim=sink.dim, output_column=output_key,
                                   files=tuple(p.name for p in sink.files),
                                   dropped_duplicates=len(plan.drop_rows),
                                   model_file=predictor.EXPORT_FILE)
