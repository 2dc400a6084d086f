"""Hostile and broken input through the CLI: recbuild never loses a user's data, runs code, hangs
or prints a traceback. Each case is one row of the bad-input matrix: one clear error line naming
the place (exit 2 for the recipe, 1 for a build), or a warning and a correct build."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

CHAIN = """
version: 1
workdir: {workdir}
sources:
  raw: {{path: data/raw.txt}}
artifacts:
  {name}: {{kind: command, deps: [raw], cmd: "cp ${{deps.raw}} ${{out}}/copy"}}
"""


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("years of work\n")
    (path / "notes").mkdir(exist_ok=True)
    (path / "notes" / "a.txt").write_text("a\n")
    return _snapshot(path)


def _snapshot(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 1. folders recbuild did not make


@pytest.mark.parametrize("workdir", [".", ".."])
def test_make_never_replaces_a_folder_it_did_not_make(project, workdir):
    project.write("data/raw.txt", "x\n")
    project.recipe(CHAIN.format(workdir=workdir, name="papers"))
    folder = (project.path / workdir / "papers").resolve()
    before = _user_folder(folder)
    line = project.run("make").one_clear_error(1)
    assert str(folder) in line and "did not make" in line
    assert _snapshot(folder) == before


def test_clean_never_deletes_a_folder_it_did_not_make(project):
    project.write("data/raw.txt", "x\n")
    project.recipe(CHAIN.format(workdir=".", name="papers") + "  mine: {kind: command, cmd: \"echo > ${out}/f\"}\n")
    assert project.run("make", "mine").code == 0
    before = _user_folder(project.path / "papers")
    for args in (("clean", "papers"), ("clean",)):
        line = project.run(*args).one_clear_error(1)
        assert "papers" in line and "nothing was removed" in line
        assert _snapshot(project.path / "papers") == before
        assert (project.path / "mine" / "MANIFEST.json").is_file()  # all or nothing
    assert project.run("clean", "mine").code == 0
    assert not (project.path / "mine").exists()


def test_a_symlink_in_the_artifacts_place_is_not_followed_or_replaced(project, tmp_path):
    project.write("data/raw.txt", "x\n")
    project.recipe(CHAIN.format(workdir="build", name="papers"))
    elsewhere = tmp_path / "elsewhere"
    before = _user_folder(elsewhere)
    (project.path / "build").mkdir()
    (project.path / "build" / "papers").symlink_to(elsewhere)
    line = project.run("make").one_clear_error(1)
    assert "symlink" in line
    assert _snapshot(elsewhere) == before and (project.path / "build" / "papers").is_symlink()


def test_status_names_the_folder_in_the_way(project):
    project.write("data/raw.txt", "x\n")
    project.recipe(CHAIN.format(workdir=".", name="papers"))
    _user_folder(project.path / "papers")
    result = project.run("status")
    assert result.code == 0
    row = next(line for line in result.out.splitlines() if line.startswith("papers"))
    assert "blocked" in row and "did not make it" in row


@pytest.mark.parametrize("workdir,why", [("/", "cannot be a workdir"), ("~", "cannot be a workdir")])
def test_hopeless_workdirs_are_refused(project, workdir, why):
    project.recipe(f"version: 1\nworkdir: {workdir if workdir != '~' else os.path.expanduser('~')}\n"
                   "artifacts:\n  a: {kind: command, cmd: echo}\n")
    line = project.run("make").one_clear_error(2)
    assert "recbuild.yaml:2:1: workdir:" in line and why in line


@pytest.mark.parametrize("path", [".", "..", "build"])
def test_a_source_holding_the_workdir_is_refused(project, path):
    project.recipe(f"version: 1\nsources:\n  everything: {{path: {path}}}\n"
                   "artifacts:\n  a: {kind: command, deps: [everything], cmd: echo}\n")
    line = project.run("validate").one_clear_error(2)
    assert "recbuild.yaml:3:3: sources.everything:" in line and "contains the workdir" in line


def test_a_glob_reaching_into_the_workdir_is_refused(project):
    project.write("data/a.txt", "a\n")
    project.recipe("version: 1\nsources:\n  texts: {path: \"**/*.txt\"}\n"
                   "artifacts:\n  a: {kind: command, deps: [texts], cmd: \"echo hi > ${out}/b.txt\"}\n")
    assert project.run("make").code == 0  # the first build: nothing in the workdir yet
    line = project.run("make").one_clear_error(1)
    assert "inside the workdir" in line


# ------------------------------------------------------------------ 6. input that would hang


def _fifo_source(project, where: str) -> None:
    (project.path / "data").mkdir(exist_ok=True)
    os.mkfifo(project.path / "data" / "pipe")
    project.recipe(f"version: 1\nsources:\n  raw: {{path: {where}}}\n"
                   "artifacts:\n  a: {kind: command, deps: [raw], cmd: \"echo > ${out}/f\"}\n")


@pytest.mark.parametrize("where", ["data/pipe", "data"])
@pytest.mark.parametrize("command", [("make",), ("make", "-n"), ("status",)])
def test_a_fifo_source_gives_an_error_not_a_hang(project, where, command):
    _fifo_source(project, where)
    result = project.subprocess_run(*command, timeout=60)  # a hang fails the test
    text = result.err + result.out
    assert "a FIFO" in text and "Traceback" not in text
    if command[0] == "make":
        assert result.code == 1


def test_a_character_device_source_gives_an_error(project):
    project.recipe("version: 1\nsources:\n  raw: {path: /dev/zero}\n"
                   "artifacts:\n  a: {kind: command, deps: [raw], cmd: \"echo > ${out}/f\"}\n")
    line = project.subprocess_run("make", timeout=60).one_clear_error(1)
    assert "character device" in line


def test_a_yaml_alias_bomb_is_bounded(project):
    lines = ["version: 1", "vars:", "  a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"  {cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")
    project.recipe("\n".join(lines) + "\nartifacts:\n  a: {kind: command, cmd: echo}\n")
    line = project.subprocess_run("validate", timeout=60).one_clear_error(2)
    assert "expands to more than" in line


@pytest.mark.parametrize("text", ["vars:\n  x: " + "[" * 5000 + "]" * 5000,
                                  "vars:\n  x: " + "{a: " * 200 + "1" + "}" * 200])
def test_very_deep_nesting_is_an_error(project, text):
    project.recipe("version: 1\n" + text + "\nartifacts:\n  a: {kind: command, cmd: echo}\n")
    line = project.run("validate").one_clear_error(2)
    assert "recbuild.yaml:" in line and ("nested" in line or "deeper" in line)


def test_jobs_far_above_the_machine_are_bounded(project):
    project.recipe("version: 1\nartifacts:\n  a: {kind: command, cmd: \"echo > ${out}/f\"}\n"
                   "  b: {kind: command, cmd: \"echo > ${out}/f\"}\n")
    result = project.run("make", "-j", "100000")
    assert result.code == 0, result.err
    assert "running at most" in result.err and sorted(result.built) == ["a", "b"]


# ------------------------------------------------------------------ 7. values interpolated into shell


def test_env_and_vars_are_quoted_in_commands(project, monkeypatch):
    monkeypatch.setenv("BRANCH", "main; touch pwned-env")
    project.recipe("""
        version: 1
        vars: {label: "${env.BRANCH}", words: "a b  c"}
        artifacts:
          a: {kind: command, cmd: "echo ${env.BRANCH} ${vars.label} > ${out}/f; printf '%s|' ${vars.words} >> ${out}/f"}
    """)
    result = project.run("make", "--set", "vars.words=x; touch pwned-set")
    assert result.code == 0, result.err
    assert not list(project.path.glob("pwned*"))
    assert project.read("build/a/f") == "main; touch pwned-env main; touch pwned-env\nx; touch pwned-set|"


def test_raw_form_pastes_shell_syntax(project, monkeypatch):
    monkeypatch.setenv("EXTRA", "-n hello")
    project.recipe("""
        version: 1
        artifacts:
          a: {kind: command, cmd: "echo ${raw:env.EXTRA} > ${out}/f"}
    """)
    assert project.run("make").code == 0
    assert project.read("build/a/f") == "hello"


def test_a_whole_command_from_a_var_needs_raw(project):
    project.recipe("""
        version: 1
        vars: {cmd: "echo hi > $RECBUILD_OUT/f"}
        artifacts:
          quoted: {kind: command, cmd: "${vars.cmd}"}
          raw: {kind: command, cmd: "${raw:vars.cmd}"}
    """)
    result = project.run("make", "-k")
    assert result.failed == ["quoted"] and result.built == ["raw"]
    assert project.read("build/raw/f") == "hi\n"


# ------------------------------------------------------------------ 8. symlinks in artifacts


@pytest.mark.parametrize("cmd,what", [
    ("rm -rf ${out} && mkdir -p ../elsewhere && ln -s \"$PWD/../elsewhere\" ${out}", "not a folder"),
    ("ln -s /etc/hostname ${out}/hostname", "symlink"),
    ("mkdir -p ../outside && ln -s \"$PWD/../outside\" ${out}/dir", "symlink"),
    ("mkfifo ${out}/pipe", "a FIFO"),
])
def test_artifacts_hold_regular_files_only(project, cmd, what):
    project.recipe(f"version: 1\nartifacts:\n  a: {{kind: command, cmd: '{cmd}'}}\n")
    line = project.run("make").one_clear_error(1)
    assert what in line
    assert not (project.path / "build" / "a").exists()
    assert not list(project.path.parent.glob("*/MANIFEST.json"))  # nothing written outside the workdir


def test_a_symlinked_source_is_read_through(project, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.txt").write_text("one\n")
    (project.path / "data").mkdir()
    (project.path / "data" / "linked").symlink_to(real)
    (project.path / "data" / "file.txt").symlink_to(real / "a.txt")
    project.recipe("version: 1\nsources:\n  raw: {path: data}\n"
                   "artifacts:\n  a: {kind: command, deps: [raw], cmd: \"cat ${deps.raw}/linked/a.txt ${deps.raw}/file.txt > ${out}/f\"}\n")
    assert project.run("make").code == 0
    (real / "a.txt").write_text("two\n")
    again = project.run("make")
    assert again.built == ["a"] and project.read("build/a/f") == "two\ntwo\n"


def test_a_symlink_loop_in_a_source_is_an_error(project):
    (project.path / "data").mkdir()
    (project.path / "data" / "a.txt").write_text("x")
    (project.path / "data" / "loop").symlink_to(project.path / "data")
    project.recipe("version: 1\nsources:\n  raw: {path: data}\n"
                   "artifacts:\n  a: {kind: command, deps: [raw], cmd: \"echo > ${out}/f\"}\n")
    line = project.run("make").one_clear_error(1)
    assert "symlink loop" in line


# ------------------------------------------------------------------ 4. broken state is a cache


SIMPLE = "version: 1\nsources:\n  raw: {path: raw.txt}\nartifacts:\n  a: {kind: command, deps: [raw], cmd: \"cp ${deps.raw} ${out}/f\"}\n"


def _built(project) -> Path:
    project.write("raw.txt", "x\n")
    project.recipe(SIMPLE)
    assert project.run("make").code == 0
    return project.path / "build" / ".recbuild"


def _doit_db_wrong_schema(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE doit (x INTEGER)")


def _doit_db_bad_row(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE doit SET task_data = '[1, 2]'")


def _stat_cache_wrong_schema(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE stat_cache (path TEXT)")


def _stat_cache_bad_types(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE stat_cache SET digest = 5, ino = 'x'")


STATE_DAMAGE = {
    "doit-garbage": ("doit.sqlite", lambda p: p.write_bytes(b"garbage" * 100)),
    "doit-truncated": ("doit.sqlite", lambda p: p.write_bytes(p.read_bytes()[:300])),
    "doit-wrong-schema": ("doit.sqlite", _doit_db_wrong_schema),
    "doit-bad-row": ("doit.sqlite", _doit_db_bad_row),
    "stat-cache-garbage": ("hashes.sqlite", lambda p: p.write_bytes(b"\x00garbage" * 100)),
    "stat-cache-truncated": ("hashes.sqlite", lambda p: p.write_bytes(p.read_bytes()[:200])),
    "stat-cache-wrong-schema": ("hashes.sqlite", _stat_cache_wrong_schema),
    "stat-cache-bad-types": ("hashes.sqlite", _stat_cache_bad_types),
}


@pytest.mark.parametrize("damage", sorted(STATE_DAMAGE))
@pytest.mark.parametrize("command", ["make", "status", "clean"])
def test_unreadable_state_is_one_warning_and_rebuilt(project, damage, command):
    state = _built(project)
    filename, spoil = STATE_DAMAGE[damage]
    for extra in state.glob(filename + "-*"):
        extra.unlink()
    spoil(state / filename)
    result = project.run(command)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err and "internal error" not in result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    if command == "make" or filename == "hashes.sqlite":
        assert len(warnings) == 1 and "unreadable" in warnings[0], result.err
    if command == "make":
        assert result.built == []  # the intact artifact is adopted, not rebuilt
        assert project.run("make").err == ""  # and the state is good again


@pytest.mark.parametrize("manifest", [
    '{"kind": "command", "key": 1, "digest": "x", "files": {}, "recbuild_version": "0.1.0"}',
    '{"kind": "command", "key": "k", "digest": "x", "files": [], "recbuild_version": "0.1.0"}',
    '{"kind": "command", "key": "k", "digest": "x", "files": {"f": {"size": "1", "digest": "d"}}, "recbuild_version": "0.1.0"}',
    '{"kind": "command", "key": "k", "digest": "x", "files": {"../../etc/passwd": {"size": 1, "digest": "d"}}, "recbuild_version": "0.1.0"}',
    '{"kind": "command", "key": "k", "digest": "x", "files": {}, "params": [], "recbuild_version": "0.1.0"}',
    '{"kind": "command", "key": "k", "recbuild_version": "0.1.0"}',
])
def test_a_malformed_manifest_means_stale(project, manifest):
    _built(project)
    (project.path / "build" / "a" / "MANIFEST.json").write_text(manifest)
    status = project.run("status")
    assert status.code == 0 and "internal error" not in status.err
    result = project.run("make")
    assert result.code == 0 and result.built == ["a"], result.err


def test_a_garbage_manifest_is_not_proof_of_ownership(project):
    _built(project)
    (project.path / "build" / "a" / "MANIFEST.json").write_text("not json")
    line = project.run("make").one_clear_error(1)
    assert "did not make" in line
    assert (project.path / "build" / "a" / "f").is_file()


# ------------------------------------------------------------------ 9. the rest of the matrix


RECIPE_CASES = {
    "merge-key": ("version: 1\nvars:\n  base: &b {kind: command, cmd: \"echo > ${out}/f\"}\nartifacts:\n"
                  "  a:\n    <<: *b\n    deps: [nothing]\n", "recbuild.yaml:7:12: artifacts.a.deps[0]: unknown artifact or source 'nothing'"),
    "python-tag": ("version: 1\nartifacts:\n  a: !!python/object/apply:os.system [\"touch pwned\"]\n",
                   "recbuild.yaml:3:3: artifacts.a: YAML tag !!python/object/apply:os.system is not supported"),
    "python-name-tag": ("version: 1\nvars: {x: !!python/name:os.system ''}\nartifacts:\n  a: {kind: command, cmd: echo}\n",
                        "YAML tag !!python/name:os.system is not supported"),
    "nul-in-workdir": ("version: 1\nworkdir: \"bu\\0ild\"\nartifacts:\n  a: {kind: command, cmd: echo}\n",
                       "recbuild.yaml:2:1: workdir: a NUL character"),
    "vars-cycle": ("version: 1\nvars: {a: \"${vars.b}\", b: \"x${vars.a}\"}\nartifacts:\n  a: {kind: command, cmd: \"echo ${vars.a}\"}\n",
                   "recbuild.yaml:2:8: vars.a: reference cycle: ${vars.a} -> ${vars.b} -> ${vars.a}"),
    "name-ending-in-newline": ("version: 1\nartifacts:\n  \"a\\n\": {kind: command, cmd: echo}\n",
                               "recbuild.yaml:3:3: artifacts.'a\\n': bad name"),
}


@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_recipe_matrix(project, case):
    text, expected = RECIPE_CASES[case]
    project.recipe(text)
    line = project.run("validate").one_clear_error(2)
    assert expected in line, line
    assert not list(project.path.glob("pwned*"))


def test_nul_in_the_recipe_text(project):
    (project.path / "recbuild.yaml").write_bytes(b"version: 1\nartifacts:\x00\n")
    line = project.run("validate").one_clear_error(2)
    assert "recbuild.yaml:2:1: invalid YAML: a NUL character" in line


@pytest.mark.parametrize("value,expected", [("&a [1, *a]", "a YAML alias refers to the value that contains it"),
                                            ("!!python/name:os.system", "YAML tag")])
def test_set_values_that_are_yaml_tricks(project, value, expected):
    project.recipe("version: 1\nartifacts:\n  a: {kind: command, cmd: echo}\n")
    line = project.run("validate", "--set", f"vars.x={value}").one_clear_error(2)
    assert line.startswith("error: --set vars.x: ") and expected in line


def _bundle(path: Path) -> Path:
    (path / "user").mkdir(parents=True)
    (path / "serving_config.json").write_text('{"faiss_neigh_num": 5}')
    return path


@pytest.mark.parametrize("spoil,expected", [
    (lambda b: (b / "serving_config.json").write_text("{not json"), "serving_config.json is not valid JSON"),
    (lambda b: (b / "serving_config.json").write_text("[1, 2]"), "is not a JSON object"),
    (lambda b: (b / "serving_config.json").write_text('{"faiss_neigh_num": "many"}'), "must be a positive integer"),
    (lambda b: (b / "user" / "faiss_index").write_bytes(b"IxF2" + b"\x00" * 10), "not a readable faiss index"),
])
def test_serve_check_on_a_damaged_bundle(project, spoil, expected):
    pytest.importorskip("faiss")
    bundle = _bundle(project.path / "bundle")
    (bundle / "user" / "faiss_index").write_bytes(b"")
    (bundle / "user" / "id_mapping").write_text("1\n")
    spoil(bundle)
    line = project.run("serve-check", "--bundle", str(bundle), "--query", "{}").one_clear_error(1)
    assert expected in line, line
