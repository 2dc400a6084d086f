"""Writing a model (eval mode) in the export formats, deterministically, and verifying each file
against the eager model.

Formats: ``torch_export`` -> ``model.pt2`` (torch.export, dynamic batch dim), ``torchscript`` ->
``scripted_model.pt``, ``aoti`` -> ``aoti_model.pt2`` (AOTInductor package, CPU). Files are written
deterministically: torch.export stack traces (absolute source paths) are dropped, and TorchScript is
compiled with fresh type state, sorted constants and without debug records, so the same weights give
the same bytes in any process.
"""

from __future__ import annotations

import io
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from recbuild.errors import BuildError

FORMAT_FILES = {"torch_export": "model.pt2", "torchscript": "scripted_model.pt", "aoti": "aoti_model.pt2"}
DEFAULT_FORMATS = ("torch_export", "torchscript")
MAX_BATCH = 1 << 20


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


def max_output_diff(got: dict, want: dict, what: str, want_named: str = "expected",
                    want_shape_named: str = "expected") -> float:
    """The largest |got - want| over every output; a BuildError naming ``what`` when the two do not
    have the same output names or shapes (``want_named`` / ``want_shape_named`` say what ``want`` is
    in those messages)."""
    if sorted(got) != sorted(want):
        raise BuildError(f"{what} outputs {sorted(got)}, {want_named} {sorted(want)}")
    diff = 0.0
    for name, value in want.items():
        if tuple(got[name].shape) != tuple(value.shape):
            raise BuildError(f"{what}: output {name} has shape {tuple(got[name].shape)}, "
                             f"{want_shape_named} {tuple(value.shape)}")
        if value.numel():
            diff = max(diff, float((got[name].double() - value.double()).abs().max()))
    return diff


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
            diff = max_output_diff(got, expected, FORMAT_FILES[fmt], "the eager model", "eager")
            if not diff <= tolerance:
                raise BuildError(f"{FORMAT_FILES[fmt]} differs from the eager model by {diff:.3g} "
                                 f"(tolerance {tolerance:g})")
            diffs[fmt] = diff
    return diffs
