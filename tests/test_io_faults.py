"""Disk full, vanished inputs and unwritable places: clear errors, previous artifacts intact."""

from __future__ import annotations

import errno

import recbuild.core.running.engine as engine_module

RECIPE = """
version: 1
sources:
  raw: {path: data/raw.txt}
artifacts:
  copy: {kind: command, deps: [raw], cmd: "cat ${deps.raw} > ${out}/copy.txt"}
"""


def test_disk_full_while_publishing_keeps_the_old_artifact(project, monkeypatch):
    project.write("data/raw.txt", "v1\n")
    project.recipe(RECIPE)
    assert project.run("make").code == 0
    project.write("data/raw.txt", "v2\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "build/.recbuild/tmp/x/MANIFEST.json")

    monkeypatch.setattr(engine_module, "write_manifest", full)
    result = project.run("make")
    assert result.code == 1
    assert "No space left on device" in result.err and "previous artifact is kept" in result.err
    assert "Traceback" not in result.err
    assert project.read("build/copy/copy.txt") == "v1\n"
    assert not list((project.path / "build/.recbuild/tmp").iterdir())
    monkeypatch.undo()
    assert project.run("make").code == 0
    assert project.read("build/copy/copy.txt") == "v2\n"


def test_input_vanishing_mid_build(project):
    project.write("data/raw.txt", "v1\n")
    project.recipe("""
        version: 1
        sources:
          raw: {path: data/raw.txt}
        artifacts:
          copy: {kind: command, deps: [raw], cmd: "rm ${deps.raw}; cat ${deps.raw} > ${out}/copy.txt"}
    """)
    result = project.run("make")
    assert result.code == 1
    assert "command exited with status 1" in result.err and "No such file" in result.err
    assert not (project.path / "build/copy").exists()


def test_missing_source_file(project):
    project.recipe(RECIPE)
    result = project.run("make")
    assert result.code == 1
    assert "source 'raw': data/raw.txt does not exist" in result.err
    assert "Traceback" not in result.err


def test_workdir_that_is_a_file(project):
    project.write("data/raw.txt", "v1\n")
    project.recipe("workdir: out\n" + RECIPE.lstrip())
    (project.path / "out").write_text("not a folder")
    result = project.run("make")
    assert result.code == 1
    assert "Traceback" not in result.err
    assert "out" in result.err
