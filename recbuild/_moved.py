"""Old import paths of modules that moved, kept for one release each:
- recbuild 0.1 -> 0.2: the flat modules went into build/, ml/, common/ and ui/;
- 0.2 -> 0.3: build/ became core/, one sub-package per job (recipe/, workdir/, cache/, running/).

Plugins written against ``recbuild.training``, ``recbuild.build.engine`` and the like keep working:
importing an old path warns (DeprecationWarning) and gives a module that forwards every attribute to
the new one, so classes and functions are the same objects (``isinstance`` and ``issubclass`` hold).
Patching through the old path does not reach the new module.
"""

from __future__ import annotations

import sys

REMOVED_IN = "0.3"

# recbuild/build/<old>.py -> recbuild/core/<job>/<new>.py
CORE: dict[str, str] = {
    "yamlsrc": "recipe.yamlsrc", "schema": "recipe.schema", "recipe_templates": "recipe.templates",
    "recipe_merge": "recipe.merge", "recipe_interpolation": "recipe.interpolation",
    "matrix": "recipe.matrix", "recipe": "recipe.load", "recipe_cache": "recipe.parse_cache",
    "graph": "recipe.graph",
    "hashing": "workdir.hashing", "sources": "workdir.sources", "manifest": "workdir.manifest",
    "lock": "workdir.lock", "workspace": "workdir.workspace", "metrics": "workdir.metrics",
    "cache": "cache.store", "cache_ops": "cache.ops",
    "engine": "running.engine", "doit_adapter": "running.doit_adapter", "events": "running.events",
}
_FLAT_BUILD = ("engine", "workspace", "graph", "matrix", "recipe", "yamlsrc", "schema", "recipe_cache",
               "hashing", "manifest", "lock", "sources", "cache", "cache_ops", "metrics")
_ML = ("training", "exporter", "predictor", "feature_io", "sampledata", "ray_executor", "model_files",
       "tzrec_contract", "models")
MOVED: dict[str, str] = {
    "recbuild.build": "recbuild.core",
    **{f"recbuild.build.{old}": f"recbuild.core.{new}" for old, new in CORE.items()},
    **{f"recbuild.{name}": f"recbuild.core.{CORE[name]}" for name in _FLAT_BUILD},
    **{f"recbuild.{name}": f"recbuild.ml.{name}" for name in _ML},
    "recbuild.process_tree": "recbuild.common.process_tree",
    "recbuild.retrieval.bundle": "recbuild.ml.serving_bundle",
    "recbuild.tzrec.step": "recbuild.builders.tzrec_step",
}


def new_name(old: str) -> str | None:
    """Where a moved module lives now (submodules of a moved package included); None if it did not move."""
    if old in MOVED:
        return MOVED[old]
    parent, _, leaf = old.rpartition(".")
    moved_parent = new_name(parent) if parent.startswith("recbuild.") else None
    return f"{moved_parent}.{leaf}" if moved_parent else None


class _MovedModules:
    """A meta path finder and loader (the protocol, not importlib.abc: that import alone pulls in
    importlib.resources, tempfile and more, ~20 ms on every command)."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("recbuild.") or new_name(fullname) is None:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        return None  # a plain module, filled in by exec_module

    def exec_module(self, module) -> None:
        import importlib
        import warnings

        target_name = new_name(module.__name__)
        warnings.warn(f"{module.__name__} moved to {target_name}; the old import path stops working "
                      f"in recbuild {REMOVED_IN}", DeprecationWarning, stacklevel=2)
        target = importlib.import_module(target_name)
        module.__dict__.update({key: value for key, value in vars(target).items()
                                if key not in ("__name__", "__spec__", "__loader__", "__package__",
                                               "__path__", "__file__", "__cached__")})
        module.__getattr__ = lambda name: getattr(target, name)
        module.__path__ = []  # a package: its old submodules come through this finder too


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())
