"""The layers of docs/internals.md, checked on every module: imports only go down (or stay inside
their own package), and no builder repeats a default its schema declares."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recbuild"

# Top to bottom. A module may import its own package and anything ranked lower; never a package
# ranked the same (the front's parts do not lean on each other) or higher.
LAYERS: list[tuple[str, ...]] = [
    ("recbuild.cli",),
    ("recbuild.ui", "recbuild.report"),
    ("recbuild.core.running",),  # the build system, one sub-package a job
    ("recbuild.core.cache",),
    ("recbuild.core.workdir",),
    ("recbuild.core.recipe",),
    ("recbuild.core",),
    ("recbuild.builders",),
    ("recbuild.tzrec",),
    ("recbuild.ml",),
    ("recbuild.retrieval",),
    ("recbuild.common",),
    ("recbuild.errors",),
    ("recbuild",),  # the package root: __version__, and installs the old-path finder
    ("recbuild._moved",),
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def package_of(module: str) -> str:
    """The layer package a dotted module name belongs to (the longest listed prefix)."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        candidate = ".".join(parts[:length])
        if candidate in RANK:
            return candidate
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add its package")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _submodule_or(module: str, name: str) -> str:
    candidate = PACKAGE.parent.joinpath(*f"{module}.{name}".split("."))
    return f"{module}.{name}" if candidate.with_suffix(".py").exists() or candidate.is_dir() else module


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every recbuild import in a file, function-level imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = module_name(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("recbuild")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = this.split(".")[:len(this.split(".")) - node.level + (path.name == "__init__.py")]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("recbuild"):
                # `from recbuild.ml import predictor` imports recbuild.ml.predictor
                found += [(node.lineno, _submodule_or(module, alias.name)) for alias in node.names]
    return found


def layer_violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        this = module_name(path)
        own = package_of(this)
        for line, target in imported_modules(path):
            other = package_of(target)
            if other == own:
                continue
            if RANK[other] <= RANK[own]:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports {target} "
                                f"({other} is {'beside' if RANK[other] == RANK[own] else 'above'} it)")
    return problems


def test_imports_only_go_down():
    assert layer_violations() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # the rule is not vacuous: a module of ml importing the build system is reported
    fake = PACKAGE / "ml" / "_layer_probe.py"
    fake.write_text("def f():\n    from recbuild.core.running import engine\n", encoding="utf-8")
    try:
        assert layer_violations() == ["recbuild/ml/_layer_probe.py:2: recbuild.ml imports "
                                      "recbuild.core.running.engine (recbuild.core.running is above it)"]
    finally:
        fake.unlink()


def test_every_module_is_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        package_of(module_name(path))


def test_docs_draw_the_same_layers():
    text = (PACKAGE.parent / "docs" / "internals.md").read_text(encoding="utf-8")
    layers_section = text.split("\n## ", 2)[1] if text.count("\n## ") else text
    for packages in LAYERS:
        for package in packages:
            if package in ("recbuild", "recbuild._moved", "recbuild.errors"):
                continue
            folder = package.replace(".", "/") + "/"
            assert folder in layers_section, f"docs/internals.md's first section does not name {folder}"


@pytest.mark.parametrize("old, new", [("recbuild.training", "recbuild.ml.training"),
                                      ("recbuild.models.dssm", "recbuild.ml.models.dssm"),
                                      ("recbuild.engine", "recbuild.core.running.engine"),
                                      ("recbuild.build.engine", "recbuild.core.running.engine"),
                                      ("recbuild.build.recipe", "recbuild.core.recipe.load"),
                                      ("recbuild.build.cache_ops", "recbuild.core.cache.ops"),
                                      ("recbuild.retrieval.bundle", "recbuild.ml.serving_bundle")])
def test_old_import_paths_warn_and_forward(old, new):
    import importlib
    import sys
    import warnings

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        legacy = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    current = importlib.import_module(new)
    public = [name for name in vars(current) if not name.startswith("_")]
    assert public and all(getattr(legacy, name) is getattr(current, name) for name in public)


def test_only_the_engine_and_its_doit_adapter_import_doit():
    users = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "doit" or name.startswith("doit.") for name in names):
                users.add(path.relative_to(PACKAGE.parent).as_posix())
    assert users == {"recbuild/core/running/engine.py", "recbuild/core/running/doit_adapter.py"}


OUTPUT_FOLDER_NAMES = {"build", "dist", "out", "target"}


def test_no_package_folder_has_an_output_folder_name():
    # .gitignore templates, packagers, linters and code maps skip these names as generated output
    named = [path.relative_to(PACKAGE.parent).as_posix() for path in PACKAGE.rglob("*")
             if path.is_dir() and path.name in OUTPUT_FOLDER_NAMES and any(path.rglob("*.py"))]
    assert named == []


def import_cycles() -> list[list[str]]:
    """Groups of modules that import each other, directly or round a loop (every import counts:
    module level, TYPE_CHECKING and function level)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}

    def known(target: str) -> str:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target

    edges = {name: {known(t) for _, t in imported_modules(path)} - {"", name} for name, path in modules.items()}
    # Tarjan's strongly connected components, iteratively
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return cycles


def test_no_module_imports_itself_round_a_loop():
    assert import_cycles() == []


def test_the_cycle_check_sees_a_loop():
    probes = [PACKAGE / "ml" / "_cycle_a.py", PACKAGE / "ml" / "_cycle_b.py"]
    probes[0].write_text("from recbuild.ml import _cycle_b\n", encoding="utf-8")
    probes[1].write_text("def f():\n    from recbuild.ml._cycle_a import x\n", encoding="utf-8")
    try:
        assert import_cycles() == [["recbuild.ml._cycle_a", "recbuild.ml._cycle_b"]]
    finally:
        for probe in probes:
            probe.unlink()
