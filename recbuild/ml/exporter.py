"""Checkpoint selection and export formats (used by the ``export`` and ``towers`` kinds).

Checkpoint folder layout (the shape of TorchEasyRec's model_dir, written by ``kind: train`` or by a
user's own trainer; tzrec's own distributed checkpoints are read by the tzrec_* kinds, not here):
``model.ckpt-<step>/model.pt`` (a state_dict saved with ``torch.save``), optionally
``train_eval_result_v2.txt`` (one JSON object per line with ``global_step``) and
``train_meta.json`` (``final_step``).

Selection rules (documented in docs/internals.md):
  latest    the checkpoint with the highest step.
  final     the step recorded as ``final_step`` in train_meta.json (the end of training).
  best      the step whose eval line has the best ``metric``; ties go to the EARLIEST step among
            equals; NaN values never win; if a step has several lines the last line counts
            (a resumed run re-evaluated it). Default metric: the only one in the file, else the
            family's (``recall@50`` for retrieval, ``auc`` for ranking).
  <path>    a checkpoint folder or weights file inside the checkpoints input
            (``model.ckpt-400`` or ``model.ckpt-400/model.pt``).

Formats: ``torch_export`` -> ``model.pt2`` (torch.export, dynamic batch dim), ``torchscript`` ->
``scripted_model.pt``, ``aoti`` -> ``aoti_model.pt2`` (AOTInductor package, CPU). Files are written
deterministically: torch.export stack traces (absolute source paths) are dropped, and TorchScript is
compiled with fresh type state, sorted constants and without debug records, so the same weights give
the same bytes in any process.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from recbuild.errors import BuildError, InputError

EVAL_FILE = "train_eval_result_v2.txt"
META_FILE = "train_meta.json"
WEIGHTS_FILE = "model.pt"
CHECKPOINT_RE = re.compile(r"^model\.ckpt-(\d+)$")
FORMAT_FILES = {"torch_export": "model.pt2", "torchscript": "scripted_model.pt", "aoti": "aoti_model.pt2"}
DEFAULT_FORMATS = ("torch_export", "torchscript")
SELECT_MODES = ("latest", "best", "final")
EXPORT_BATCH = 4  # batch size of the tracing example; the batch dim is exported as dynamic
VERIFY_BATCH = 7  # a different size, so verification also exercises the dynamic batch dim
MAX_BATCH = 1 << 20


# ---------------------------------------------------------------------------------------------
# Finding and selecting checkpoints


def list_checkpoints(folder: Path) -> dict[int, Path]:
    """step -> weights file of every ``model.ckpt-<step>/model.pt`` in folder."""
    found = {}
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: checkpoints folder not found")
    for entry in folder.iterdir():
        match = CHECKPOINT_RE.match(entry.name)
        if match and entry.is_dir() and (entry / WEIGHTS_FILE).is_file():
            found[int(match.group(1))] = entry / WEIGHTS_FILE
    return found


def read_eval_results(folder: Path) -> dict[int, dict[str, float]]:
    """step -> metrics from train_eval_result_v2.txt (later lines for the same step win)."""
    path = Path(folder) / EVAL_FILE
    if not path.is_file():
        return {}
    results: dict[int, dict[str, float]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record.pop("global_step"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"{path}:{number}: not a JSON object with an integer global_step: "
                             f"{line[:120]!r}") from None
        metrics = {}
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[name] = float(value)
        results[step] = metrics
    return results


@dataclass(frozen=True)
class Selection:
    step: int
    weights: Path
    name: str  # path relative to the checkpoints folder, e.g. "model.ckpt-400"
    select: str
    metric: str | None = None
    value: float | None = None
    history: tuple[tuple[int, Path], ...] = ()  # older exports to keep, oldest first

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"checkpoint": self.name, "step": self.step, "select": self.select}
        if self.metric is not None:
            info["metric"] = self.metric
            info["value"] = self.value
        return info


def resolve_metric(results: dict[int, dict[str, float]], metric: str | None,
                   default_metrics: Iterable[str], where: Path) -> str:
    names = sorted({name for metrics in results.values() for name in metrics})
    if metric is not None:
        if metric not in names:
            raise BuildError(f"metric {metric!r} is not in {where / EVAL_FILE}; metrics there: "
                             f"{', '.join(names) or '(none)'}; set `metric:` to one of them")
        return metric
    if len(names) == 1:
        return names[0]
    for candidate in default_metrics:
        if candidate in names:
            return candidate
    raise BuildError(f"select: best needs `metric:`; {where / EVAL_FILE} holds "
                     f"{', '.join(names) or 'no metrics'} and none is a default "
                     f"({', '.join(default_metrics)})")


def _better(a: float, b: float, bigger_is_better: bool) -> bool:
    return a > b if bigger_is_better else a < b


def _best_events(results: dict[int, dict[str, float]], metric: str, bigger: bool) -> list[int]:
    """Steps at which the running best improved (strictly), in step order: the last is the best.

    This is the sequence of exports EasyRec's BestExporter makes during training; strict
    improvement means ties keep the earliest step.
    """
    events: list[int] = []
    best = None
    for step in sorted(results):
        value = results[step].get(metric)
        if value is None or math.isnan(value):
            continue
        if best is None or _better(value, best, bigger):
            best = value
            events.append(step)
    return events


def best_steps(folder: Path, checkpoints, metric: str | None, bigger_is_better: bool,
               default_metrics: Iterable[str], layout: str) -> tuple[list[int], str, float]:
    """select: best over ``train_eval_result_v2.txt`` in ``folder`` (the rules of the module
    docstring; shared with the tzrec kinds, whose checkpoints are folders of another layout).

    ``checkpoints``: the steps that exist (a dict or set); ``layout``: how a step's checkpoint is
    named in errors, e.g. ``"model.ckpt-{step}"``. Returns (the steps at which the running best
    improved, in step order, the last being the choice; the metric; its value at the choice).
    """
    results = read_eval_results(folder)
    if not results:
        raise BuildError(f"select: best needs {folder / EVAL_FILE} with at least one line; "
                         "use select: latest, or evaluate during training")
    metric = resolve_metric(results, metric, default_metrics, folder)
    events = _best_events(results, metric, bigger_is_better)
    if not events:
        raise BuildError(f"select: best: every value of {metric!r} in {folder / EVAL_FILE} is NaN")
    if events[-1] not in checkpoints:
        raise BuildError(f"select: best picked step {events[-1]} ({metric} = "
                         f"{results[events[-1]][metric]}) but {layout.format(step=events[-1])} "
                         f"is missing in {folder}")
    value = results[events[-1]][metric]
    return [s for s in events if s in checkpoints], metric, value


def _explicit(folder: Path, select: str, checkpoints: dict[int, Path]) -> tuple[int, Path, str]:
    """(step, weights file, name relative to folder) of an explicit checkpoint path."""
    base = Path(folder).resolve()
    target = (base / select).resolve()
    if base != target and base not in target.parents:
        raise BuildError(f"select: {select!r} points outside the checkpoints input {folder}; "
                         "name a checkpoint inside it (e.g. model.ckpt-400)")
    if target.is_dir():
        target = target / WEIGHTS_FILE
    if not target.is_file():
        listed = ", ".join(f"model.ckpt-{s}" for s in sorted(checkpoints)) or "(none)"
        raise BuildError(f"select: {select!r}: {target.relative_to(base)} not found in {folder}; "
                         f"checkpoints: {listed}")
    match = CHECKPOINT_RE.match(target.parent.name)
    name = target.relative_to(base).as_posix()
    if name.endswith("/" + WEIGHTS_FILE):
        name = name[: -len(WEIGHTS_FILE) - 1]
    return (int(match.group(1)) if match else 0), target, name


def select_checkpoint(folder: Path, select: str = "latest", metric: str | None = None,
                      bigger_is_better: bool = True, keep: int = 1,
                      default_metrics: Iterable[str] = ("auc", "recall@50")) -> Selection:
    """Pick the checkpoint to export (see the module docstring for the rules)."""
    folder = Path(folder)
    checkpoints = list_checkpoints(folder)
    if select not in SELECT_MODES:
        step, weights, name = _explicit(folder, select, checkpoints)
        return Selection(step, weights, name, select)
    if not checkpoints:
        raise InputError(f"{folder}: no checkpoints (expected model.ckpt-<step>/{WEIGHTS_FILE})")
    value = None
    if select == "latest":
        events = sorted(checkpoints)
    elif select == "final":
        meta_path = folder / META_FILE
        try:
            final_step = int(json.loads(meta_path.read_text(encoding="utf-8"))["final_step"])
        except (OSError, ValueError, KeyError, TypeError):
            raise BuildError(f"select: final needs {META_FILE} with final_step in {folder} (written "
                             "by kind: train); use select: latest for other checkpoint folders") from None
        events = [s for s in sorted(checkpoints) if s <= final_step]
        if final_step not in checkpoints:
            raise BuildError(f"select: final: {META_FILE} names step {final_step} but "
                             f"model.ckpt-{final_step}/{WEIGHTS_FILE} is missing in {folder}")
    else:
        events, metric, value = best_steps(folder, checkpoints, metric, bigger_is_better, default_metrics,
                                           f"model.ckpt-{{step}}/{WEIGHTS_FILE}")
    step = events[-1]
    history = tuple((s, checkpoints[s]) for s in events[:-1][-(keep - 1):]) if keep > 1 else ()
    return Selection(step, checkpoints[step], f"model.ckpt-{step}", select,
                     metric if select == "best" else None, value, history)


# ---------------------------------------------------------------------------------------------
# Loading


def load_state_dict(path: Path, label: str | None = None) -> dict:
    import torch

    label = label or str(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a usable checkpoint"
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = "; ".join(dict.fromkeys(lines[:1] + [ln for ln in lines if "WeightsUnpickler" in ln]))
        raise BuildError(f"checkpoint {label} cannot be loaded ({type(exc).__name__}: "
                         f"{detail or 'corrupted'}); it is corrupted or not a state_dict saved "
                         "with torch.save") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # {"model": state_dict, "optimizer": ...} bundles
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise BuildError(f"checkpoint {label} is not a state_dict (name -> tensor mapping)")
    return state


def instantiate(model_config: dict[str, Any], state_dict: dict, label: str, search_path: Path | None = None):
    """The model of model_config with the checkpoint's weights, in eval mode."""
    from recbuild.ml.models import ModelConfigError, build_model

    try:
        model = build_model(model_config, search_path)
    except ModelConfigError as exc:
        raise BuildError(str(exc)) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(f"{k} {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in set(expected) & set(state_dict)
                        if tuple(state_dict[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        for title, names in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatch", mismatched)):
            if names:
                parts.append(f"{title}: {', '.join(names[:6])}" + (" ..." if len(names) > 6 else ""))
        raise BuildError(f"checkpoint {label} does not match the model config ({'; '.join(parts)}); "
                         "was it trained with a different model section?")
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# Writing formats


def _dynamic_shapes(inputs: dict) -> dict:
    import torch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return {"inputs": {name: {0: batch} for name in inputs}}


def export_program(module, inputs: dict):
    import torch

    with torch.no_grad():
        return torch.export.export(module, (inputs,), dynamic_shapes=_dynamic_shapes(inputs), strict=False)


def _strip_stack_traces(program) -> None:
    # Stack traces hold absolute source paths: dropping them keeps model.pt2 machine-independent.
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            node.meta.pop("stack_trace", None)


def save_torch_export(module, inputs: dict, path: Path):
    import torch

    program = export_program(module, inputs)
    _strip_stack_traces(program)
    torch.export.save(program, str(path))
    return program


class _SortedSet(set):
    """A set iterating in sorted order (TorchScript iterates ``__constants__`` as a set)."""

    def __iter__(self):
        return iter(sorted(set.__iter__(self), key=str))


@contextmanager
def _fresh_torchscript_types():
    """Compile with a new compilation unit and type store, and sorted constant sets.

    Otherwise class names get ``___torch_mangle_<n>`` suffixes that depend on what the process
    scripted before, and constant order depends on PYTHONHASHSEED: same weights, different bytes.
    """
    import torch
    import torch.jit._recursive as recursive
    import torch.jit._state as state

    old_cu, old_store = state._python_cu, recursive.concrete_type_store
    state._python_cu = torch._C.CompilationUnit()
    recursive.concrete_type_store = recursive.ConcreteTypeStore()
    recursive.set = _SortedSet
    try:
        yield
    finally:
        state._python_cu, recursive.concrete_type_store = old_cu, old_store
        del recursive.set


_VOLATILE_RECORDS = ("version", ".data/version", ".data/serialization_id")


def save_torchscript(module, path: Path):
    """torch.jit.script, saved without ``*.debug_pkl`` records (they hold absolute source paths)."""
    import torch

    try:
        with _fresh_torchscript_types():
            scripted = torch.jit.script(module)
            buffer = io.BytesIO()
            torch.jit.save(scripted, buffer)
    except Exception as exc:
        raise BuildError(f"torch.jit.script failed: {type(exc).__name__}: {str(exc).strip()[:800]}; "
                         "make the model TorchScript-compatible or drop torchscript from formats") from None
    archive = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    prefix = archive.namelist()[0].split("/", 1)[0] + "/"
    writer = torch._C.PyTorchFileWriter(str(path))
    for info in archive.infolist():
        name = info.filename[len(prefix):]
        if name.endswith(".debug_pkl") or name in _VOLATILE_RECORDS:
            continue  # the writer adds version records itself
        data = archive.read(info.filename)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    del writer
    return scripted


def save_aoti(program, path: Path) -> None:
    import torch

    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as exc:
        raise BuildError(f"AOTInductor compilation failed: {type(exc).__name__}: "
                         f"{str(exc).strip()[:800]}; drop aoti from formats") from None


def write_formats(module, inputs: dict, folder: Path, formats: Iterable[str]) -> None:
    """Write each requested format of ``module`` (eval mode) into folder."""
    formats = list(formats)
    program = None
    if "torch_export" in formats or "aoti" in formats:
        try:
            program = (save_torch_export(module, inputs, folder / FORMAT_FILES["torch_export"])
                       if "torch_export" in formats else export_program(module, inputs))
        except BuildError:
            raise
        except Exception as exc:
            raise BuildError(f"torch.export failed: {type(exc).__name__}: {str(exc).strip()[:800]}; "
                             "the model must take Dict[str, Tensor] with a free batch dim") from None
    if "torchscript" in formats:
        save_torchscript(module, folder / FORMAT_FILES["torchscript"])
    if "aoti" in formats:
        save_aoti(program, folder / FORMAT_FILES["aoti"])


def load_format(folder: Path, fmt: str):
    """A callable ``f(inputs) -> Dict[str, Tensor]`` for an exported file."""
    import torch

    path = Path(folder) / FORMAT_FILES[fmt]
    if fmt == "torch_export":
        return torch.export.load(str(path)).module()
    if fmt == "torchscript":
        return torch.jit.load(str(path), map_location="cpu")
    runner = torch._inductor.aoti_load_package(str(path))
    return lambda inputs: runner(inputs)


def verify_formats(module, inputs: dict, folder: Path, formats: Iterable[str],
                   tolerance: float) -> dict[str, float]:
    """Load each exported file back, run it beside the eager module; max |diff| per format."""
    import torch

    with torch.no_grad():
        expected = module(inputs)
        diffs: dict[str, float] = {}
        for fmt in formats:
            try:
                got = load_format(folder, fmt)(dict(inputs))
            except Exception as exc:
                raise BuildError(f"{FORMAT_FILES[fmt]} was written but does not run: "
                                 f"{type(exc).__name__}: {str(exc).strip()[:600]}") from None
            if sorted(got) != sorted(expected):
                raise BuildError(f"{FORMAT_FILES[fmt]} outputs {sorted(got)}, the eager model "
                                 f"{sorted(expected)}")
            diff = 0.0
            for name, value in expected.items():
                if tuple(got[name].shape) != tuple(value.shape):
                    raise BuildError(f"{FORMAT_FILES[fmt]}: output {name} has shape "
                                     f"{tuple(got[name].shape)}, eager {tuple(value.shape)}")
                if value.numel():
                    diff = max(diff, float((got[name].double() - value.double()).abs().max()))
            if not diff <= tolerance:
                raise BuildError(f"{FORMAT_FILES[fmt]} differs from the eager model by {diff:.3g} "
                                 f"(tolerance {tolerance:g})")
            diffs[fmt] = diff
    return diffs


# ---------------------------------------------------------------------------------------------
# Sparse/dense split (RecIS style)


def _write_table(table, path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    weight = table.weight.detach().float().contiguous().numpy()
    buckets, dim = weight.shape
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(weight.reshape(-1), type=pa.float32()), dim)
    data = pa.table({"id": pa.array(np.arange(buckets, dtype=np.int64)), "vector": vectors})
    with pq.ParquetWriter(str(path), data.schema, use_dictionary=False, compression="snappy",
                          write_statistics=True) as writer:
        writer.write_table(data, row_group_size=65536)


def _read_tables(folder: Path, tables):
    """The tables as written (parquet), so verification covers the files, not the weights in memory."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from recbuild.ml.models.split import SparseTable

    loaded = []
    for table in tables:
        data = pq.read_table(str(folder / f"{table.name}.parquet"))
        flat = data.column("vector").combine_chunks().flatten().to_numpy()
        weight = torch.from_numpy(np.array(flat, dtype=np.float32).reshape(data.num_rows, -1))
        loaded.append(SparseTable(table.name, table.spec, weight))
    return loaded


def write_sparse_dense(model, specs, folder: Path, formats: Iterable[str], tolerance: float) -> dict[str, float]:
    """sparse/<table>.parquet (id = row, vector) + sparse/tables.json + dense/ (exported dense module).

    Verified end to end: raw inputs -> lookups in the parquet tables -> loaded dense module, against
    the eager full model. Returns max_abs_diff per format under "sparse_dense/<format>".
    """
    import torch

    from recbuild.ml.models.features import example_inputs
    from recbuild.ml.models.split import SplitNotSupported, lookup_fields, sparse_dense_parts

    try:
        tables, dense, dense_inputs = sparse_dense_parts(model, specs)
    except SplitNotSupported as exc:
        raise BuildError(str(exc)) from None
    sparse_dir, dense_dir = Path(folder) / "sparse", Path(folder) / "dense"
    sparse_dir.mkdir()
    dense_dir.mkdir()
    for table in tables:
        _write_table(table, sparse_dir / f"{table.name}.parquet")
    described = [{"table": t.name, "feature": t.spec.name, "column": t.spec.column, "group": t.spec.group,
                  "type": t.spec.type, "value_type": t.spec.value_type, "buckets": int(t.weight.shape[0]),
                  "dim": int(t.weight.shape[1]), "pooling": "mean" if t.spec.type == "sequence" else "none",
                  "row": "(splitmix64_finaliser(id) & (2**63 - 1)) % buckets; id -1 is padding"} for t in tables]
    (sparse_dir / "tables.json").write_text(json.dumps({"tables": described}, indent=2) + "\n")
    (dense_dir / "inputs.json").write_text(json.dumps(
        {"inputs": [{"name": i.name, "kind": i.kind, "dim": i.dim, "feature": i.feature} for i in dense_inputs]},
        indent=2) + "\n")
    numeric = [i.name for i in dense_inputs if i.kind == "numeric"]
    formats = list(formats)
    write_formats(dense, lookup_fields(tables, example_inputs(specs, EXPORT_BATCH, seed=0), numeric),
                  dense_dir, formats)
    raw = example_inputs(specs, VERIFY_BATCH, seed=1)
    fields = lookup_fields(_read_tables(sparse_dir, tables), raw, numeric)
    with torch.no_grad():
        expected = model(raw)
    diffs = {}
    for fmt in formats:
        with torch.no_grad():
            got = load_format(dense_dir, fmt)(dict(fields))
        diff = max(float((got[k].double() - expected[k].double()).abs().max()) for k in expected)
        if not diff <= tolerance:
            raise BuildError(f"sparse_dense: tables + dense/{FORMAT_FILES[fmt]} differ from the eager "
                             f"model by {diff:.3g} (tolerance {tolerance:g})")
        diffs[f"sparse_dense/{fmt}"] = diff
    return diffs


# ---------------------------------------------------------------------------------------------
# Which inputs reach the outputs (tower split check, EasyRec issue 460)


def inputs_reaching_outputs(module, inputs: dict) -> set[str]:
    """Input names whose values flow into at least one output of ``module``.

    Structural: the module is traced with torch.export and the graph is walked backwards from the
    outputs; an input that is read but cannot influence an output does not count.
    """
    import torch.utils._pytree as pytree

    program = export_program(module, inputs)
    paths = [path for path, _ in pytree.tree_flatten_with_path(((inputs,), {}))[0]]
    user_inputs = [spec for spec in program.graph_signature.input_specs
                   if spec.kind.name == "USER_INPUT"]
    placeholder_to_name = {}
    for path, spec in zip(paths, user_inputs):
        key = path[-1]
        placeholder_to_name[spec.arg.name] = getattr(key, "key", str(key))
    graph = program.graph_module.graph
    output = next(n for n in graph.nodes if n.op == "output")
    reached, stack = set(), [output]
    while stack:
        node = stack.pop()
        if node in reached:
            continue
        reached.add(node)
        stack.extend(node.all_input_nodes)
    return {placeholder_to_name[n.name] for n in reached
            if n.op == "placeholder" and n.name in placeholder_to_name}


# ---------------------------------------------------------------------------------------------
# pipeline.yaml


def write_pipeline_yaml(folder: Path, model_config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    doc = {"model": _plain(model_config)}
    if extra:
        doc.update(_plain(extra))
    with open(Path(folder) / "pipeline.yaml", "w", encoding="utf-8") as fh:
        yaml.dump(doc, fh)


def read_pipeline_yaml(folder: Path) -> dict[str, Any]:
    from ruamel.yaml import YAML

    path = Path(folder) / "pipeline.yaml"
    if not path.is_file():
        raise InputError(f"{path} not found: the input is not an export artifact "
                         "(it needs pipeline.yaml and model.pt)")
    with open(path, encoding="utf-8") as fh:
        doc = YAML(typ="safe", pure=True).load(fh)
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise InputError(f"{path}: expected a mapping with a `model` section")
    return doc


def _plain(value):
    """Plain dicts/lists/scalars (ruamel CommentedMaps and tuples become dict/list)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
