"""A param's default is written once, in its builder's schema.

The recipe loader and Builder.run fill the schema defaults before a builder runs, so a builder reads
``p["key"]`` for a defaulted key; ``p.get("key", 32)`` would be a second copy of the default that can
drift from the schema (the one users see in docs and `recbuild schema`).
"""

from __future__ import annotations

import ast
import copy
import inspect
from pathlib import Path

from recbuild.builders import builtin_builders
from recbuild.builders.base import Builder, BuildContext, with_schema_defaults

ROOT = Path(__file__).resolve().parents[1]
BUILDERS = ROOT / "recbuild" / "builders"



def defaulted_keys(schema: dict) -> set[str]:
    return {key for key, prop in schema.get("properties", {}).items()
            if isinstance(prop, dict) and "default" in prop}


def repeated_defaults(source: str, keys: set[str], where: str) -> list[str]:
    """``where:line`` of every ``X.get("key", default)`` in ``source`` whose key is in ``keys``
    (anywhere in the module: methods and module-level helpers alike)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys):
            found.append(f"{where}:{node.lineno}: .get({node.args[0].value!r}, ...) repeats the schema "
                         f"default; read p[{node.args[0].value!r}]")
    return found


def schema_keys_by_file() -> dict[Path, set[str]]:
    """Builder module -> the keys a kind defined in it (or deriving from a class in it) defaults."""
    keys: dict[Path, set[str]] = {}
    for cls in builtin_builders().values():
        for klass in cls.__mro__:  # a shared base class's helpers read its subclasses' params
            if klass is Builder or not (isinstance(klass, type) and issubclass(klass, Builder)):
                continue
            source = Path(inspect.getsourcefile(klass)).resolve()
            if BUILDERS in source.parents:
                keys.setdefault(source, set()).update(defaulted_keys(cls.schema))
    return keys


def test_builders_do_not_repeat_schema_defaults():
    keys = schema_keys_by_file()
    modules = sorted(BUILDERS.rglob("*.py"))
    assert BUILDERS / "faiss_index.py" in keys and BUILDERS / "tzrec_common.py" in keys  # classes mapped to files
    problems = []
    for module in modules:
        where = module.relative_to(ROOT).as_posix()
        if module not in keys:
            continue
        problems += repeated_defaults(module.read_text(encoding="utf-8"), keys[module], where)
    assert problems == []


def test_the_check_is_not_vacuous():
    source = ('SCHEMA = {"properties": {"nprobe": {"type": "integer", "default": 32}}}\n'
              "\n"
              "def search(p):\n"
              '    return p.get("nprobe", 32), p.get("other", 1), p.get("nprobe")\n')
    keys = defaulted_keys({"properties": {"nprobe": {"type": "integer", "default": 32}}})
    assert repeated_defaults(source, keys, "fake.py") == [
        "fake.py:4: .get('nprobe', ...) repeats the schema default; read p['nprobe']"]


class _Probe(Builder):
    kind = "probe"
    schema = {"type": "object", "properties": {
        "size": {"type": "integer", "default": 8},
        "tags": {"type": "array", "default": []},
        "name": {"type": "string"},
    }}

    def build(self, ctx: BuildContext) -> None:
        ctx.meta["seen"] = copy.deepcopy(ctx.params)
        ctx.params["tags"].append("x")  # a default is a fresh copy: the schema's stays []


def test_run_applies_schema_defaults(tmp_path):
    ctx = BuildContext(name="p", kind="probe", params={"size": 3}, out=tmp_path, inputs={},
                       recipe_dir=tmp_path, workdir=tmp_path)
    _Probe().run(ctx)
    assert ctx.meta["seen"] == {"size": 3, "tags": []}  # given values win; no default, no key
    assert _Probe.schema["properties"]["tags"]["default"] == []
    assert with_schema_defaults(_Probe.schema, {"name": "n"}) == {"name": "n", "size": 8, "tags": []}
