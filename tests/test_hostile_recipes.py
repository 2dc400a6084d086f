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
