"""Recipes written to break things, or carelessly, through the CLI: one short error line that
quotes nothing of a file it should not, no walk through a pseudo-filesystem, no workdir in a
system folder, no crash on a file name that is not UTF-8, no step that fails without a cause."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SECRET = "s3cr3t-hash-do-not-print"


def _one_clear_error(result, code: int) -> str:
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err
    return errors[0]


# ------------------------------------------------------------------ extends: a file that is not a recipe

NOT_RECIPES = {
    "shadow": "".join(f"user{i}: $6${SECRET}{i}:19000:0:99999:7:::\n" for i in range(20)),
    "passwd": "".join(f"user{i}:x:{i}:{i}:{SECRET}:/home/u:/bin/sh\n" for i in range(20)),
    "compose.yaml": f"version: '3'\nservices: {{db: {{image: {SECRET}}}}}\n",
    "list.yaml": f"- {SECRET}\n- b\n",
    "broken.txt": f"a: b: {SECRET}\n",
    "binary.dat": None,
}


@pytest.mark.parametrize("name", sorted(NOT_RECIPES))
def test_extends_a_file_that_is_not_a_recipe_shows_none_of_it(project, name):
    target = project.path / "elsewhere" / name
    target.parent.mkdir()
    content = NOT_RECIPES[name]
    if content is None:
        target.write_bytes(b"\xff\xfe" + SECRET.encode() + bytes(range(256)))
    else:
        target.write_text(content)
    project.recipe("version: 1\nextends: elsewhere/" + name + "\n"
                   "artifacts:\n  a: {kind: command, cmd: echo}\n")
    line = _one_clear_error(project.run("validate"), 2)
    assert line.startswith(f"error: recbuild.yaml:2:1: extends: elsewhere/{name} is not a recipe ("), line
    assert SECRET not in line and "user1" not in line


def test_extends_a_recipe_still_reports_its_own_mistakes(project):
    project.write("base.yaml", "version: 1\nartifact: {}\n")
    project.recipe("version: 1\nextends: base.yaml\nartifacts:\n  a: {kind: command, cmd: echo}\n")
    line = _one_clear_error(project.run("validate"), 2)
    assert line == "error: base.yaml:2:1: artifact: unknown key 'artifact' (did you mean 'artifacts'?)"


def test_a_fragment_without_version_can_be_extended(project):
    project.write("common.yaml", "vars: {greeting: hello}\n")
    project.recipe("version: 1\nextends: common.yaml\n"
                   "artifacts:\n  a: {kind: command, cmd: \"echo ${vars.greeting} > ${out}/f\"}\n")
    assert project.run("make").code == 0
    assert (project.path / "build" / "a" / "f").read_text() == "hello\n"


@pytest.mark.parametrize("recipe,needle", [
    # a long value, a long key, a control character: each error quotes a short, escaped excerpt
    ("version: 1\nartifacts:\n  a: {kind: command, cmd: echo, env: {X: [" + SECRET * 40 + "]}}\n", SECRET * 3),
    ("version: 1\nartifacts:\n  a: {kind: command, cmd: echo, " + SECRET * 40 + ": 1}\n", SECRET * 3),
    ("version: 1\nartifacts:\n  a: {kind: \"" + SECRET * 40 + "\"}\n", SECRET * 3),
    ("version: 1\nartifacts:\n  a: {kind: command, cmd: echo, deps: [\"" + SECRET * 40 + "\"]}\n", SECRET * 3),
    ("version: 1\nartifacts:\n  a: {kind: command, cmd: \"${vars." + SECRET * 40 + "}\"}\n", SECRET * 3),
    ("version: 1\nartifacts:\n  a: {kind: \"\\e[2J\\u202e" + SECRET + "\"}\n", "\x1b"),
])
def test_errors_quote_short_escaped_excerpts(project, recipe, needle):
    project.recipe(recipe)
    line = _one_clear_error(project.run("validate"), 2)
    assert needle not in line and "\u202e" not in line, line
    assert len(line) < 600, line


# ------------------------------------------------------------------ source folders: links to the workdir, the kernel's trees

LINKED = """
version: 1
sources:
  raw: {path: data}
artifacts:
  a: {kind: command, deps: [raw], cmd: "ls ${deps.raw} > ${out}/f"}
"""


@pytest.mark.parametrize("target", ["../build", "../build/a", ".."])
def test_a_source_folder_linking_into_the_workdir_is_refused(project, target):
    project.write("data/x.txt", "x\n")
    (project.path / "data" / "out").symlink_to(target)
    project.recipe(LINKED)
    for command in (("make",), ("make",)):  # also once the workdir and its artifact exist
        line = _one_clear_error(project.run(*command), 1)
        assert "data/out is a symlink to " + target in line and "the workdir" in line, line
    assert not (project.path / "build" / "a").exists()
    assert "error" in project.run("status").out.split("raw", 1)[1].splitlines()[0]


def test_a_link_outside_the_workdir_is_still_read_through(project, tmp_path):
    elsewhere = tmp_path.parent / (tmp_path.name + "-elsewhere")
    elsewhere.mkdir()
    (elsewhere / "y.txt").write_text("y\n")
    project.write("data/x.txt", "x\n")
    (project.path / "data" / "more").symlink_to(elsewhere)
    project.recipe(LINKED)
    assert project.run("make").code == 0
    assert project.run("make").built == []  # and it stays up to date


@pytest.mark.parametrize("where", ["link", "source"])
@pytest.mark.parametrize("tree", ["/proc", "/proc/self", "/sys", "/dev"])
def test_the_kernels_trees_are_refused_without_walking_them(project, where, tree):
    project.write("data/x.txt", "x\n")
    if where == "link":
        (project.path / "data" / "k").symlink_to(tree)
        project.recipe(LINKED)
    else:
        project.recipe(LINKED.replace("{path: data}", "{path: " + tree + "}"))
    result = project.subprocess_run("make", timeout=20)  # walking /proc takes minutes: a timeout fails
    line = _one_clear_error(result, 1)
    assert "a pseudo-filesystem of the kernel" in line, line


def test_a_ram_disk_folder_is_data(project):
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm here")
    folder = shm / f"recbuild-test-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    try:
        (folder / "x.txt").write_text("x\n")
        project.recipe(LINKED.replace("{path: data}", "{path: " + str(folder) + "}"))
        assert project.run("make").code == 0
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


# ------------------------------------------------------------------ workdirs that are not recbuild's

ONE = "version: 1\nworkdir: {workdir}\nartifacts:\n  a: {{kind: command, cmd: \"echo > ${{out}}/f\"}}\n"


@pytest.mark.parametrize("workdir,why", [
    ("/etc", "it is a system folder"), ("/etc/recbuild", "it is inside /etc, a system folder"),
    ("/usr/lib", "it is inside /usr, a system folder"), ("/var", "it is a system folder"),
    ("/tmp", "it is a system folder"), ("/", "it is a system folder"),
])
def test_system_folders_are_refused_as_workdir(project, workdir, why):
    project.recipe(ONE.format(workdir=workdir))
    for command in ("validate", "make", "status"):
        line = _one_clear_error(project.run(command), 2)
        assert line.startswith(f"error: recbuild.yaml:2:1: workdir: {workdir} cannot be a workdir: {why}"), line


def test_a_folder_of_someone_elses_files_is_refused_as_workdir(project):
    mine = project.path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    project.recipe(ONE.format(workdir="thesis"))
    for command in ("make", "status", "clean"):
        line = _one_clear_error(project.run(command), 2)
        assert line.startswith("error: recbuild.yaml:2:1: workdir: ") and "thesis.tex" in line, line
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]  # nothing written into it


@pytest.mark.parametrize("workdir", [".", "build", "new/deeper"])
def test_recbuilds_own_workdirs_still_work(project, workdir):
    project.write("notes.txt", "the recipe's folder holds the user's files\n")
    project.recipe(ONE.format(workdir=workdir))
    assert project.run("make").code == 0
    state = project.path / workdir / ".recbuild"
    assert state.is_dir()
    import shutil

    shutil.rmtree(state)  # state is a cache: losing it keeps the workdir recbuild's (its artifact proves it)
    assert project.run("make").code == 0
