"""The small things a user sees: clean -n, validate checking sources, status with a missing source,
every error line starting with its location."""

from __future__ import annotations

RECIPE = """
version: 1
sources:
  raw: {path: data/raw.txt}
  more: {path: "data/more-*.txt"}
artifacts:
  a: {kind: command, deps: [raw], cmd: "cp ${deps.raw} ${out}/a"}
  b: {kind: command, deps: [a, more], cmd: "cat ${deps.a}/a > ${out}/b"}
"""


def test_clean_dry_run_removes_nothing(project):
    project.write("data/raw.txt", "x\n")
    project.write("data/more-1.txt", "y\n")
    project.recipe(RECIPE)
    assert project.run("make").code == 0
    result = project.run("clean", "-n")
    assert result.code == 0
    assert "would remove a" in result.out and "would remove b" in result.out
    assert (project.path / "build" / "a" / "a").is_file() and (project.path / "build" / "b" / "b").is_file()
    assert project.run("clean", "a").code == 0 and not (project.path / "build" / "a").exists()


def test_validate_checks_that_sources_exist(project):
    project.recipe(RECIPE)
    result = project.run("validate")
    assert result.code == 2
    lines = result.err.splitlines()
    assert lines[0].startswith("error: recbuild.yaml:3:3: sources.raw: data/raw.txt does not exist")
    assert lines[1].startswith("error: recbuild.yaml:4:3: sources.more: data/more-*.txt: no files match")
    relaxed = project.run("validate", "--allow-missing-sources")
    assert relaxed.code == 0 and relaxed.err.count("warning: recbuild.yaml:") == 2
    assert "2 missing" in relaxed.out
    project.write("data/raw.txt", "x\n")
    project.write("data/more-1.txt", "y\n")
    assert project.run("validate").code == 0


def test_status_prints_its_table_when_a_source_is_missing(project):
    project.write("data/raw.txt", "x\n")
    project.write("data/more-1.txt", "y\n")
    project.recipe(RECIPE)
    assert project.run("make").code == 0
    (project.path / "data" / "raw.txt").unlink()
    result = project.run("status")
    assert result.code == 0, result.err
    rows = {line.split()[0]: line for line in result.out.splitlines()[1:]}
    assert "error" in rows["raw"] and "does not exist" in rows["raw"]
    assert "stale" in rows["a"] and "input raw is missing or unreadable" in rows["a"]


def test_build_errors_start_with_the_location(project):
    project.write("data/raw.txt", "x\n")
    project.write("data/more-1.txt", "y\n")
    project.recipe(RECIPE.replace('cp ${deps.raw} ${out}/a"', 'exit 3"'))
    result = project.run("make", "-k")
    assert result.code == 1
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert errors and all(line.startswith("error: recbuild.yaml:") for line in errors), errors
