"""Loading model files that came from outside this build, without running their code.

An exported folder can reach recbuild from anywhere: a source, a shared-cache entry, a serving
bundle copied from another machine. ``torch.export.load`` alone is not safe for such files: it
unpickles payloads marked ``use_pickle`` (and sample inputs that fail a weights-only load) with
``weights_only=False``, and a graph may name any callable reachable as ``torch.<path>`` (``torch.os.system``
resolves) or file-touching ops (``aten.from_file`` maps a file into a tensor that later ops write).
TorchScript (``scripted_model.pt``) runs its own code while loading (``__setstate__``) and can call
the same ops, so recbuild never loads it from outside; it loads ``model.pt2`` only, like this:

1. the archive is read as a zip first: a pickled weight or constant, a custom object or a legacy
   weights file is refused before torch sees the file;
2. ``torch.export.load`` runs with every ``torch.load`` forced to ``weights_only=True``;
3. before a module is made from the graph (or called), every node is checked: ``call_function``
   targets must be ``aten`` operators other than the file-touching ones, or a few pure Python
   operators (shape arithmetic); anything else is refused.
"""

from __future__ import annotations

import contextlib
import json
import operator
import threading
import zipfile
from pathlib import Path

from recbuild.errors import InputError

# payload file names of plain tensors, by folder (anything else is a pickled object of some kind)
_PLAIN_PAYLOADS = {"weights": "weight_", "constants": "tensor_"}
_FILE_OPS = {"from_file", "save"}  # aten ops that read or write files named by the graph
_PURE_OPERATORS = {operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv,
                   operator.truediv, operator.mod, operator.neg, operator.pow, operator.eq, operator.ne,
                   operator.lt, operator.le, operator.gt, operator.ge}
_LOAD_LOCK = threading.Lock()  # the weights-only switch below is process-wide


class UnsafeModelFile(InputError):
    """A model file could run code when loaded or called."""


def check_archive(path: Path) -> None:
    """Refuse a ``.pt2`` archive that holds pickled payloads, before torch opens it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for name in names:
                parts = name.split("/")
                if len(parts) >= 3 and parts[-2] in ("weights", "constants") and name.endswith(".pt"):
                    _refuse(path, f"it holds a legacy pickled payload ({name})")
                if not name.endswith("_config.json") or parts[-2] not in ("weights", "constants"):
                    continue
                config = json.loads(archive.read(name)).get("config", {})
                if not isinstance(config, dict):
                    _refuse(path, f"{name} is not a payload table")
                for fqn, meta in config.items():
                    if not isinstance(meta, dict):
                        _refuse(path, f"{name}: {fqn} is not a payload entry")
                    if meta.get("use_pickle"):
                        _refuse(path, f"{fqn} is stored as a pickle")
                    if not str(meta.get("path_name", "")).startswith(_PLAIN_PAYLOADS[parts[-2]]):
                        _refuse(path, f"{fqn} is a pickled Python object ({meta.get('path_name')})")
    except (zipfile.BadZipFile, OSError, ValueError, AttributeError) as exc:
        raise InputError(f"{path}: not a readable torch.export archive ({exc}); re-export it") from None


def check_graph(program, path: Path) -> None:
    """Refuse a graph that calls anything but aten operators and pure shape arithmetic."""
    import torch

    for module in [program.graph_module, *program.graph_module.modules()]:
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            target = node.target
            if node.op != "call_function":
                _refuse(path, f"its graph has a {node.op} node ({target})")
            if isinstance(target, torch._ops.OpOverload):
                if target.namespace == "aten" and target._schema.name.split("::")[-1] not in _FILE_OPS:
                    continue
                _refuse(path, f"its graph calls {target}, which recbuild does not run from a model file")
            if target in _PURE_OPERATORS:
                continue
            _refuse(path, f"its graph calls {getattr(target, '__qualname__', target)!r}, which is not an "
                          "aten operator")


@contextlib.contextmanager
def _weights_only_loads():
    """Every ``torch.load`` inside: ``weights_only=True``, whatever the caller asked for."""
    import torch

    original = torch.load

    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    with _LOAD_LOCK:
        torch.load = weights_only_load
        try:
            yield
        finally:
            torch.load = original


def load_exported_program(path: str | Path):
    """An ``ExportedProgram`` from a ``model.pt2`` that cannot run code while loaded or called."""
    import torch

    path = Path(path)
    check_archive(path)
    try:
        with _weights_only_loads():
            program = torch.export.load(str(path))
    except UnsafeModelFile:
        raise
    except Exception as exc:  # a damaged or unsafe archive: torch raises many types
        detail = " ".join(str(exc).split())[:300]
        raise InputError(f"{path}: cannot load it with plain tensors only ({type(exc).__name__}: {detail}); "
                         "re-export it") from None
    check_graph(program, path)
    return program


def _refuse(path: Path, why: str):
    raise UnsafeModelFile(f"{path}: refused, {why}: loading it could run code. recbuild loads model "
                          "files holding plain tensors and aten operators only; re-export the model "
                          "with torch.export (recbuild's export/towers kinds write such files)")
