"""Incremental behaviour of `recbuild make`, driven through the CLI."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

CHAIN = """
version: 1
vars: {n: 3}
sources:
  raw: {path: data/raw.txt}
artifacts:
  upper:
    kind: command
    deps: [raw]
    cmd: tr a-z A-Z < ${deps.raw} > ${out}/upper.txt
  head:
    kind: command
    deps: [upper]
    params: {n: "${vars.n}"}
    cmd: head -c ${params.n} ${deps.upper}/upper.txt > ${out}/head.txt
  final:
    kind: command
    deps: [head]
    cmd: cat ${deps.head}/head.txt ${deps.head}/head.txt > ${out}/final.txt
  side:
    kind: command
    deps: [raw]
    cmd: wc -c < ${deps.raw} > ${out}/size.txt
"""


def wait_for(path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


@pytest.fixture
def chain(project):
    project.write("data/raw.txt", "hello world\n")
    project.recipe(CHAIN)
    first = project.run("make")
    assert first.code == 0, first.err
    assert sorted(first.built) == ["final", "head", "side", "upper"]
    return project


def test_second_make_rebuilds_nothing(chain):
    again = chain.run("make")
    assert again.code == 0
    assert again.built == []
    assert "4 up to date" in again.out
    assert chain.read("build/final/final.txt") == "HELHEL"


def test_touch_rebuilds_nothing_and_the_run_after_hashes_nothing(chain):
    time.sleep(0.25)
    chain.run("make")  # settle: files written within the racy window are hashed once more
    time.sleep(0.25)
    os.utime(chain.path / "data/raw.txt")
    time.sleep(0.1)  # a user's next command comes later than the racy window (20 ms)
    after_touch = chain.run("make", "-v")
    assert after_touch.built == []
    assert "hashed 1 files" in after_touch.out  # the touched input, once
    again = chain.run("make", "-v")
    assert again.built == []
    assert "hashed 0 files (0 B)" in again.out


def test_edit_with_restored_mtime_is_detected(chain):
    raw = chain.path / "data/raw.txt"
    before = os.stat(raw)
    raw.write_text("jello world\n")  # same size
    os.utime(raw, ns=(before.st_atime_ns, before.st_mtime_ns))  # like touch -d / cp -p
    result = chain.run("make")
    assert sorted(result.built) == ["final", "head", "side", "upper"]
    assert chain.read("build/final/final.txt") == "JELJEL"


def test_param_change_rebuilds_artifact_and_dependents_only(chain):
    result = chain.run("make", "--set", "vars.n=4")
    assert result.code == 0
    assert sorted(result.built) == ["final", "head"]
    assert chain.read("build/final/final.txt") == "HELLHELL"


def test_identical_rebuild_does_not_rebuild_dependents(chain):
    # upper's command changes, its output bytes do not: head and final stay up to date
    chain.recipe(CHAIN.replace("tr a-z A-Z < ${deps.raw}", "cat ${deps.raw} | tr a-z A-Z"))
    result = chain.run("make")
    assert result.built == ["upper"]
    explain = chain.run("explain", "head")
    assert "up to date" in explain.out


def test_command_text_change_rebuilds(chain):
    chain.recipe(CHAIN.replace("wc -c <", "wc -c  <"))
    assert chain.run("make").built == ["side"]


def test_tampered_output_is_rebuilt(chain):
    (chain.path / "build/upper/upper.txt").write_text("TAMPERED\n")
    status = chain.run("status")
    assert "changed outside recbuild" in status.out
    result = chain.run("make")
    assert "upper" in result.built
    assert chain.read("build/upper/upper.txt") == "HELLO WORLD\n"


def test_always_make_rebuilds_targets(chain):
    result = chain.run("make", "-B", "side")
    assert result.built == ["side"]


def test_targets_limit_the_build(project):
    project.write("data/raw.txt", "abc\n")
    project.recipe(CHAIN)
    result = project.run("make", "head")
    assert sorted(result.built) == ["head", "upper"]
    assert not (project.path / "build/final").exists()


def test_dry_run_touches_nothing(project):
    project.write("data/raw.txt", "abc\n")
    project.recipe(CHAIN)
    result = project.run("make", "-n")
    assert result.code == 0
    assert "will build  upper (command): not built yet" in result.out
    assert not (project.path / "build/upper").exists()


def test_dry_run_tells_will_from_may(chain):
    """`will build`: its own key changed. `may build`: only if an upstream's rebuild changes its
    output (early cut-off may spare it)."""
    chain.recipe(CHAIN.replace("vars: {n: 3}", "vars: {n: 4}"))
    result = chain.run("make", "-n")
    assert "will build  head (command): param params.n: 3 -> 4" in result.out
    assert "may build   final (command): only if head changes its output when rebuilt" in result.out
    assert "upper" not in result.out and "side" not in result.out


def test_failure_keeps_previous_artifact_and_reports_location(chain):
    chain.recipe(CHAIN.replace("wc -c < ${deps.raw} > ${out}/size.txt", "echo partial > ${out}/size.txt; exit 3"))
    result = chain.run("make")
    assert result.code == 1
    assert result.failed == ["side"]
    assert "error: recbuild.yaml:19:3: artifacts.side: command exited with status 3" in result.err
    assert "Traceback" not in result.err + result.out
    assert chain.read("build/side/size.txt").strip() == "12"
    assert not list((chain.path / "build/.recbuild/tmp").iterdir())


def test_keep_going_builds_independent_artifacts(project):
    project.write("data/raw.txt", "abc\n")
    project.recipe(CHAIN.replace("tr a-z A-Z < ${deps.raw} > ${out}/upper.txt", "exit 1"))
    result = project.run("make", "-k")
    assert result.code == 1
    assert "side" in result.built
    assert "skipped" in result.out
    assert not (project.path / "build/final").exists()


def test_parallel_jobs(project):
    project.write("data/raw.txt", "abc\n")
    project.recipe("""
        version: 1
        artifacts:
          a: {kind: command, cmd: "sleep 0.5; echo a > ${out}/a"}
          b: {kind: command, cmd: "sleep 0.5; echo b > ${out}/b"}
          c: {kind: command, cmd: "sleep 0.5; echo c > ${out}/c"}
          d: {kind: command, deps: [a, b, c], cmd: "cat ${deps.a}/a ${deps.b}/b ${deps.c}/c > ${out}/d"}
    """)
    started = time.perf_counter()
    result = project.run("make", "-j", "3")
    elapsed = time.perf_counter() - started
    assert result.code == 0, result.err
    assert sorted(result.built) == ["a", "b", "c", "d"]
    assert project.read("build/d/d") == "a\nb\nc\n"
    assert elapsed < 1.4  # three 0.5 s commands ran side by side


def test_directory_and_glob_sources(project):
    project.write("data/parts/a.csv", "1\n")
    project.write("data/parts/b.csv", "2\n")
    project.recipe("""
        version: 1
        sources:
          folder: {path: data/parts}
          csvs: {path: "data/parts/*.csv"}
        artifacts:
          from_dir: {kind: command, deps: [folder], cmd: "cat ${deps.folder}/*.csv > ${out}/all"}
          from_glob: {kind: command, deps: [csvs], cmd: "ls ${deps.csvs} > ${out}/names"}
    """)
    assert sorted(project.run("make").built) == ["from_dir", "from_glob"]
    assert project.run("make").built == []
    project.write("data/parts/c.csv", "3\n")
    assert sorted(project.run("make").built) == ["from_dir", "from_glob"]
    assert project.read("build/from_dir/all") == "1\n2\n3\n"
    (project.path / "data/parts/c.txt").write_text("x")  # matched by the folder, not the glob
    assert project.run("make").built == ["from_dir"]


def test_path_dependency_without_a_source_entry(project):
    project.write("data/x.txt", "x\n")
    project.recipe("""
        version: 1
        artifacts:
          copy: {kind: command, deps: [data/x.txt], cmd: "cp ${deps.data/x.txt} ${out}/x"}
    """)
    assert project.run("make").built == ["copy"]
    project.write("data/x.txt", "y\n")
    assert project.run("make").built == ["copy"]


def test_memory_url_source(project):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/recbuild-test/items.txt", b"item-1\n")
    project.recipe("""
        version: 1
        sources:
          remote: {path: "memory://recbuild-test/items.txt"}
        artifacts:
          seen: {kind: command, deps: [remote], cmd: "echo ${deps.remote} > ${out}/url"}
    """)
    assert project.run("make").built == ["seen"]
    assert project.run("make").built == []
    fs.pipe("/recbuild-test/items.txt", b"item-2\n")
    assert project.run("make").built == ["seen"]
    assert project.read("build/seen/url").strip() == "memory://recbuild-test/items.txt"


def test_clean_removes_artifacts(chain):
    result = chain.run("clean", "side")
    assert result.code == 0
    assert not (chain.path / "build/side").exists()
    assert chain.run("make").built == ["side"]
    chain.run("clean")
    assert not (chain.path / "build/upper").exists()


def test_manifests_are_deterministic(project, tmp_path):
    project.write("data/raw.txt", "abc\n")
    project.recipe(CHAIN)
    project.run("make")
    first = {n: project.read(f"build/{n}/MANIFEST.json") for n in ("upper", "head", "final", "side")}
    shutil.rmtree(project.path / "build")
    project.run("make")
    second = {n: project.read(f"build/{n}/MANIFEST.json") for n in ("upper", "head", "final", "side")}
    assert first == second


def test_sigkill_mid_command_keeps_old_artifact(project):
    project.write("data/raw.txt", "v1\n")
    recipe = """
        version: 1
        sources:
          raw: {path: data/raw.txt}
        artifacts:
          slow:
            kind: command
            deps: [raw]
            cmd: "cp ${deps.raw} ${out}/a; touch started; sleep 30; cp ${deps.raw} ${out}/b"
    """
    project.recipe(recipe.replace("sleep 30; ", ""))
    assert project.run("make").built == ["slow"]
    project.recipe(recipe)
    project.write("data/raw.txt", "v2\n")
    proc = project.spawn("make")
    wait_for(project.path / "started")
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert project.read("build/slow/a") == "v1\n" and project.read("build/slow/b") == "v1\n"
    project.recipe(recipe.replace("sleep 30; ", ""))
    result = project.subprocess_run("make")
    assert result.code == 0, result.err
    assert project.read("build/slow/b") == "v2\n"


def test_sigterm_exits_130_and_keeps_completed_steps(project):
    project.recipe("""
        version: 1
        artifacts:
          quick: {kind: command, cmd: "echo q > ${out}/q"}
          slow: {kind: command, deps: [quick], cmd: "touch started; sleep 30; echo s > ${out}/s"}
    """)
    proc = project.spawn("make")
    wait_for(project.path / "started")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (project.path / "build/slow").exists()
    result = project.subprocess_run("make", "quick")
    assert "up to date" in result.out and result.code == 0


def test_concurrent_makes_do_not_corrupt_state(project):
    project.recipe("""
        version: 1
        artifacts:
          a: {kind: command, cmd: "touch started; for i in $(seq 1200); do [ -e release ] && break; sleep 0.05; done; echo a > ${out}/a"}
          b: {kind: command, deps: [a], cmd: "cat ${deps.a}/a > ${out}/b"}
    """)
    first = project.spawn("make")
    wait_for(project.path / "started")
    second = project.spawn("make")  # while the first holds the lock, however slow the machine is
    out2, err2 = second.communicate(timeout=60)
    (project.path / "release").touch()
    out1, err1 = first.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert second.returncode == 75  # its own code: not a failed build, the same command can be rerun
    assert "another recbuild is building in this workdir (pid" in err2
    assert str(first.pid) in err2
    result = project.subprocess_run("make")
    assert result.code == 0 and "2 up to date" in result.out


def test_plain_doit_runs_the_same_tasks_and_state(project):
    """README: `doit -f dodo.py recipe=...` builds with plain doit; recbuild then sees it as current."""
    import subprocess
    import sys
    from pathlib import Path

    dodo = Path(__file__).resolve().parents[1] / "dodo.py"
    project.write("data/raw.txt", "hello world\n")
    recipe = project.recipe(CHAIN)
    doit = [sys.executable, "-m", "doit", "-f", str(dodo), f"recipe={recipe}"]
    listed = subprocess.run([sys.executable, "-m", "doit", "list", "-f", str(dodo), f"recipe={recipe}"],
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()) == ["final", "head", "raw", "side",
                                                                              "upper"]
    ran = subprocess.run(doit, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert project.read("build/final/final.txt") == "HEL" * 2
    again = project.run("make")
    assert again.code == 0 and again.built == [], again.out
    project.write("data/raw.txt", "bye\n")
    rerun = subprocess.run(doit, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert project.read("build/final/final.txt") == "BYE" * 2


def test_a_file_added_inside_an_artifact_is_seen_after_no_ops(project):
    """The no-op skips listing folders whose times did not move; adding a file moves them."""
    import time

    project.recipe("""
        version: 1
        artifacts:
          a: {kind: command, cmd: "mkdir -p ${out}/x/y && echo 1 > ${out}/x/y/f && echo 2 > ${out}/top"}
    """)
    assert project.run("make").built == ["a"]
    time.sleep(0.05)  # past the racy window, so the listings are remembered
    for _ in range(2):
        assert project.run("make").built == []
    for where in ("x/y/new", "x/new", "new"):
        (project.path / "build" / "a" / where).write_text("stray\n")
        status = project.run("status")
        assert f"unexpected file {where}" in status.out, status.out
        assert project.run("make").built == ["a"]
        time.sleep(0.05)
        assert project.run("make").built == []
