"""Malformed recipes: each gives one documented line `file:line:col: path: message`, exit 2."""

from __future__ import annotations

import pytest

GOOD_HEAD = """version: 1
sources:
  raw: {path: data/raw.txt}
"""

CASES = [
    # (id, recipe text, expected error line)
    ("yaml-syntax", "version: 1\nartifacts:\n  a: {kind: command, cmd: x\n",
     "recbuild.yaml:3:6: invalid YAML: the '{' here is not closed"),
    ("yaml-duplicate-key", "version: 1\nartifacts:\n  a: {kind: command, cmd: x}\n  a: {kind: command, cmd: y}\n",
     "recbuild.yaml:4:3: invalid YAML: duplicate key 'a'"),
    ("not-a-mapping", "- just\n- a list\n",
     "recbuild.yaml:1:1: (top level): a recipe must be a mapping"),
    ("missing-version", "artifacts:\n  a: {kind: command, cmd: x}\n",
     "recbuild.yaml:1:1: version: missing required key 'version'"),
    ("wrong-version", "version: 2\nartifacts:\n  a: {kind: command, cmd: x}\n",
     "recbuild.yaml:1:1: version: must be 1, got 2"),
    ("unknown-top-key", "version: 1\nartifact:\n  a: {kind: command, cmd: x}\n",
     "recbuild.yaml:2:1: artifact: unknown key 'artifact' (did you mean 'artifacts'?)"),
    ("unknown-kind", GOOD_HEAD + "artifacts:\n  a: {kind: comand, cmd: x}\n",
     "recbuild.yaml:5:7: artifacts.a.kind: unknown kind 'comand' (did you mean 'command'?)"),
    ("missing-kind", GOOD_HEAD + "artifacts:\n  a: {cmd: x}\n",
     "recbuild.yaml:5:3: artifacts.a: missing required key 'kind'"),
    ("unknown-param", GOOD_HEAD + "artifacts:\n  a:\n    kind: command\n    cmd: x\n    dpes: [raw]\n",
     "recbuild.yaml:8:5: artifacts.a.dpes: unknown key 'dpes' (did you mean 'deps'?)"),
    ("missing-required-param", GOOD_HEAD + "artifacts:\n  a:\n    kind: command\n    deps: [raw]\n",
     "recbuild.yaml:5:3: artifacts.a: missing required key 'cmd'"),
    ("wrong-type", GOOD_HEAD + "artifacts:\n  a:\n    kind: command\n    cmd: x\n    deps: raw\n",
     "recbuild.yaml:8:5: artifacts.a.deps: must be a list, got \"raw\""),
    ("wrong-item-type", GOOD_HEAD + "artifacts:\n  a:\n    kind: command\n    cmd: x\n    deps:\n      - raw\n      - {x: 1}\n",
     "recbuild.yaml:10:9: artifacts.a.deps[1]: must be a string, got {\"x\": 1}"),
    ("dangling-reference", GOOD_HEAD + "artifacts:\n  a: {kind: command, cmd: x, deps: [rwa]}\n",
     "recbuild.yaml:5:37: artifacts.a.deps[0]: unknown artifact or source 'rwa' (did you mean 'raw'?)"),
    ("cycle", GOOD_HEAD + "artifacts:\n  a: {kind: command, cmd: x, deps: [b]}\n  b: {kind: command, cmd: x, deps: [c]}\n"
     "  c: {kind: command, cmd: x, deps: [a]}\n",
     "dependency cycle: "),
    ("self-reference", GOOD_HEAD + "artifacts:\n  a: {kind: command, cmd: x, deps: [a]}\n",
     "recbuild.yaml:5:37: artifacts.a.deps[0]: 'a' cannot depend on itself"),
    ("unknown-var", "version: 1\nvars: {seed: 1}\nartifacts:\n  a: {kind: command, cmd: \"echo ${vars.sed}\"}\n",
     "recbuild.yaml:4:22: artifacts.a.cmd: unknown variable ${vars.sed}: vars has no 'sed' (did you mean 'seed'?)"),
    ("unset-env", "version: 1\nartifacts:\n  a: {kind: command, cmd: \"echo ${env.RECBUILD_SURELY_UNSET}\"}\n",
     "recbuild.yaml:3:22: artifacts.a.cmd: environment variable RECBUILD_SURELY_UNSET is not set"),
    ("unknown-interpolation", "version: 1\nartifacts:\n  a: {kind: command, cmd: \"echo ${var.x}\"}\n",
     "recbuild.yaml:3:22: artifacts.a.cmd: unknown reference ${var.x}"),
    ("bad-placeholder", GOOD_HEAD + "artifacts:\n  a: {kind: command, cmd: \"cat ${deps.rw}\", deps: [raw]}\n",
     "recbuild.yaml:5:22: artifacts.a.cmd: ${deps.rw} names 'rw', which is not in deps"),
    ("bad-name", GOOD_HEAD + "artifacts:\n  \"bad name\": {kind: command, cmd: x}\n",
     "recbuild.yaml:5:3: artifacts.bad name: bad name 'bad name'"),
    ("duplicate-name", GOOD_HEAD + "artifacts:\n  raw: {kind: command, cmd: x}\n",
     "recbuild.yaml:5:3: artifacts.raw: 'raw' is already declared in sources at recbuild.yaml:3:3"),
    ("unknown-default", GOOD_HEAD + "artifacts:\n  a: {kind: command, cmd: x}\ndefault: [b]\n",
     "recbuild.yaml:6:11: default[0]: unknown artifact 'b'"),
    ("source-without-path", "version: 1\nsources:\n  raw: {file: x}\n",
     "recbuild.yaml:3:3: sources.raw: missing required key 'kind' or 'path'"),
    ("unknown-template", "version: 1\nextends: dsm\n",
     "recbuild.yaml:2:1: extends: no built-in template or file 'dsm'"),
    ("env-type", "version: 1\nartifacts:\n  a: {kind: command, cmd: x, env: {A: 1}}\n",
     "recbuild.yaml:3:36: artifacts.a.env.A: must be a string, got 1"),
    ("empty", "version: 1\n",
     "recbuild.yaml:1:1: artifacts: the recipe declares no sources or artifacts"),
]


@pytest.mark.parametrize("case_id,text,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_recipe_gives_one_located_error(project, case_id, text, expected):
    project.write("data/raw.txt", "x\n")
    project.recipe(text)
    result = project.run("validate")
    assert result.code == 2, result.out + result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.err


def test_every_problem_is_reported_sorted_by_line(project):
    project.recipe("version: 1\nartifacts:\n  a: {kind: command}\n  b: {kind: command, cmd: x, bogus: 1}\n")
    result = project.run("make")
    assert result.code == 2
    lines = result.err.splitlines()
    assert lines == ["error: recbuild.yaml:3:3: artifacts.a: missing required key 'cmd'",
                     "error: recbuild.yaml:4:30: artifacts.b.bogus: unknown key 'bogus'"]


def test_set_override_errors_name_the_flag(project):
    project.recipe("version: 1\nartifacts:\n  a: {kind: command, cmd: x}\n")
    result = project.run("validate", "--set", "artifacts.a.deps=3")
    assert result.code == 2
    assert result.err.strip() == "error: --set artifacts.a.deps: must be a list, got 3"


def test_missing_recipe_file(project):
    result = project.run("make")
    assert result.code == 2
    assert "recbuild.yaml: recipe file not found" in result.err


def test_unknown_target(project):
    project.recipe("version: 1\nartifacts:\n  a: {kind: command, cmd: x}\n")
    result = project.run("make", "b")
    assert result.code == 2
    assert "unknown target 'b'" in result.err


def test_bad_cli_usage_exits_2(project):
    result = project.run("make", "--bogus")
    assert result.code == 2
    assert "unrecognized arguments: --bogus" in result.err


# ------------------------------------------------------------------------------ nullable params


def _nullable_params():
    """(kind, param, property schema) for every param of every kind that accepts null."""
    from recbuild.builders import all_builders

    found = []
    for kind, cls in sorted(all_builders().items()):
        for name, prop in cls.schema.get("properties", {}).items():
            types = prop.get("type")
            branches = prop.get("oneOf", []) + prop.get("anyOf", [])
            if (isinstance(types, list) and "null" in types) or any(b.get("type") == "null" for b in branches):
                found.append((kind, name, prop))
    return found


def _set_branch(prop: dict) -> dict:
    """What the param takes when it is set."""
    types = prop.get("type")
    if isinstance(types, list):
        return {**prop, "type": next(t for t in types if t != "null")}
    return next(b for b in prop.get("oneOf", []) + prop.get("anyOf", []) if b.get("type") != "null")


_WRONG = {"integer": ["abc", "64k", 12.5, True], "string": [3, True], "array": [3, "x"],
          "number": ["abc", True], "boolean": ["yes", 1], "object": [3, "x"]}
_SAID = {"integer": "an integer", "string": "a string", "array": "a list", "number": "a number",
         "boolean": "a boolean", "object": "a mapping"}


def _wrong_values(branch: dict) -> list:
    wrong = list(_WRONG[branch["type"]])
    if "minimum" in branch:
        wrong += [branch["minimum"] - 1, branch["minimum"] - 4]
    return wrong


def _expected_text(branch: dict) -> str:
    if branch["type"] == "integer" and branch.get("minimum") == 1:
        return "must be a positive integer, got "
    if branch["type"] == "integer" and branch.get("minimum") == 0:
        return "must be a non-negative integer, got "
    return f"must be {_SAID[branch['type']]}"


def test_every_kind_has_its_nullable_params_covered():
    assert len(_nullable_params()) >= 10  # recall_eval, serving_bundle, faiss_index at least


@pytest.mark.parametrize("kind,param,prop", _nullable_params(), ids=lambda v: v if isinstance(v, str) else "")
def test_nullable_param_errors_say_what_it_takes(kind, param, prop):
    """A nullable param's error gives the message of its non-null branch, never "must be null"."""
    from recbuild.builders import all_builders
    from recbuild.core.recipe.schema import SchemaChecker, kind_schema
    from recbuild.core.recipe.yamlsrc import Loc

    branch = _set_branch(prop)
    checker = SchemaChecker(kind_schema(all_builders()[kind]))
    for wrong in _wrong_values(branch):
        instance = {"kind": kind, param: wrong}
        problems = [m for _, m in checker.problems(instance, ("artifacts", "a"), lambda p: Loc("r.yaml", 1, 1))
                    if f"artifacts.a.{param}:" in m]
        assert problems, (kind, param, wrong)
        for message in problems:
            assert "must be null" not in message and "or null" not in message, message
            assert _expected_text(branch) in message or (
                "minimum" in branch and f"must be >= {branch['minimum']}" in message), message


@pytest.mark.parametrize("value", ["abc", '"64k"', "12.5", "0", "-3", "true"])
def test_nlist_through_set_says_positive_integer(project, value):
    project.write("emb.parquet", "x\n")
    project.recipe("version: 1\nsources:\n  emb: {path: emb.parquet}\n"
                   "artifacts:\n  index: {kind: faiss_index, embeddings: emb}\n")
    result = project.run("validate", "--set", f"artifacts.index.nlist={value}")
    assert result.code == 2
    assert result.err.strip().startswith("error: --set artifacts.index.nlist: must be a positive integer, got ")
