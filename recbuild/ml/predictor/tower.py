"""Loading an exported tower for batch inference: ``model.pt2`` plus its ``fg.json`` features, checked
to agree, loaded so that neither loading nor calling it can run code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict

from recbuild.errors import BuildError
from recbuild.ml import feature_io
from recbuild.ml.feature_io import FeatureSpec

EXPORT_FILE = "model.pt2"
SCRIPTED_FILE = "scripted_model.pt"


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
