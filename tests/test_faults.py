"""Fault injection: SIGKILL / SIGTERM at seeded random points of a multi-artifact build.

After every interruption: nothing published is incomplete, the next plain `make` finishes, and the
final manifests equal those of an uninterrupted build. CI runs a reduced count; the full 20 trials
run with `-m slow` (or RECBUILD_FAULT_TRIALS=20).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recbuild.core.workdir.hashing import StatCache
from recbuild.core.workdir.manifest import read_manifest, verify_files

RECIPE = """
version: 1
sources:
  raw: {path: data/raw.txt}
artifacts:
  a:
    kind: command
    deps: [raw]
    cmd: "for i in 1 2 3 4; do cat ${deps.raw} > ${out}/part-$i; sleep 0.05; done"
  b:
    kind: command
    deps: [a]
    cmd: "for i in 1 2 3; do cat ${deps.a}/part-$i ${deps.a}/part-4 > ${out}/b-$i; sleep 0.05; done"
  c:
    kind: command
    deps: [a]
    cmd: "mkdir ${out}/nested; for i in 1 2 3; do echo c$i > ${out}/nested/c-$i; sleep 0.05; done"
  d:
    kind: command
    deps: [b, c]
    cmd: "cat ${deps.b}/b-1 ${deps.c}/nested/c-3 > ${out}/d; sleep 0.1; echo done >> ${out}/d"
  e:
    kind: command
    deps: [d]
    cmd: "sleep 0.1; sort ${deps.d}/d > ${out}/e"
"""
NAMES = ["a", "b", "c", "d", "e"]


def _setup(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "data/raw.txt").write_text("row\n" * 100)
    (folder / "recbuild.yaml").write_text(RECIPE)


def _make(folder: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recbuild.cli", "make", *extra], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _manifests(folder: Path) -> dict[str, str]:
    return {n: (folder / "build" / n / "MANIFEST.json").read_text() for n in NAMES}


def _assert_nothing_incomplete(folder: Path) -> None:
    build = folder / "build"
    if not build.exists():
        return
    cache = StatCache(None)
    for entry in build.iterdir():
        if entry.name == ".recbuild":
            continue
        manifest = read_manifest(entry)
        assert manifest is not None, f"{entry.name} was published without a manifest"
        assert verify_files(entry, manifest, cache) == [], f"{entry.name} is incomplete"


def _trials() -> int:
    return int(os.environ.get("RECBUILD_FAULT_TRIALS", "5"))


def _run_trials(tmp_path: Path, trials: int) -> int:
    reference = tmp_path / "reference"
    _setup(reference)
    proc = _make(reference)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    expected = _manifests(reference)
    rng = random.Random(20261123)
    survived = 0
    for trial in range(trials):
        folder = tmp_path / f"trial-{trial}"
        _setup(folder)
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        jobs = rng.choice(["1", "2"])
        # first interruption during a clean build, a second one during the resumed build
        for delay in (rng.uniform(0.3, 1.6), rng.uniform(0.2, 0.8)):
            proc = _make(folder, "-j", jobs)
            time.sleep(delay)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
            assert "Traceback" not in err, err
            if proc.returncode != 0:
                assert proc.returncode in (130, -signal.SIGKILL, -signal.SIGTERM), (proc.returncode, err)
            _assert_nothing_incomplete(folder)
        proc = _make(folder)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"trial {trial} ({sig.name}): {err}"
        _assert_nothing_incomplete(folder)
        assert _manifests(folder) == expected, f"trial {trial}: manifests differ from a clean build"
        survived += 1
        shutil.rmtree(folder)
    return survived


def test_interrupted_builds_recover(tmp_path):
    assert _run_trials(tmp_path, _trials()) == _trials()


@pytest.mark.slow
def test_interrupted_builds_recover_full(tmp_path):
    assert _run_trials(tmp_path, 20) == 20


PROBE = '''
import recbuild.cli as cli

def interrupted_inside_exec(argv=None):
    try:
        exec("raise KeyboardInterrupt")  # as when SIGTERM lands while a lazy import builds a dataclass
    except KeyboardInterrupt:
        return 130
    return 0

cli.main = interrupted_inside_exec
cli.entry()
'''


def test_interrupt_exit_code_survives_python_m(tmp_path):
    # CI once saw `python -m recbuild.cli make` die by SIGINT (-2) after printing the interrupt line
    (tmp_path / "interrupt_probe.py").write_text(PROBE)
    proc = subprocess.run([sys.executable, "-m", "interrupt_probe"], cwd=tmp_path, capture_output=True)
    assert proc.returncode == 130, proc.stderr


ORPHAN_RECIPE = """
version: 1
artifacts:
  writer:
    kind: command
    cmd: "{spawn} sleep 60"
"""
# Each way a shell leaves a writer behind: a background job, a subshell's background job, and a
# daemon that leaves the session (setsid) and the shell's process group.
SPAWNS = {
    "background-job": "(while true; do date +%s%N >> ../beacon-$$; sleep 0.02; done) &",
    "subshell-job": "( ( while true; do date +%s%N >> ../beacon-$$; sleep 0.02; done ) & ) ;",
    "setsid-daemon": "setsid sh -c 'while true; do date +%s%N >> ../beacon-x; sleep 0.02; done' &",
}


def _beacons(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in folder.parent.glob("beacon-*")}


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return found


@pytest.mark.parametrize("children_first", [False, True], ids=["recbuild", "its-children-first"])
@pytest.mark.parametrize("how", sorted(SPAWNS))
def test_no_writer_survives_sigkill(tmp_path, how, children_first):
    """Every descendant of a step dies with recbuild, even when recbuild is SIGKILLed; and when
    its own children are SIGKILLed first, as a Ray worker's are when it exits or is force-cancelled
    (a step on a cluster): the reaper is not among them."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "recbuild.yaml").write_text(ORPHAN_RECIPE.format(spawn=SPAWNS[how]))
    proc = _make(folder)
    deadline = time.monotonic() + 30
    while not _beacons(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _beacons(folder), "the step never started writing"
    if children_first:
        for child in _children(proc.pid):
            os.kill(child, signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(0.5)  # the supervisor notices at once; give the kernel a moment to deliver
    settled = _beacons(folder)
    time.sleep(0.5)
    assert _beacons(folder) == settled, f"{how}: a writer is still running after recbuild died"


def test_background_job_dies_when_its_command_ends(project):
    """A step is done when its command exits (Make's rule): a job it left running is stopped, so
    nothing writes into the artifact after it is published."""
    project.recipe("""
        version: 1
        artifacts:
          a:
            kind: command
            cmd: "(sleep 0.3; echo late > ${out}/late; echo late > ../late-marker) & echo early > ${out}/early"
    """)
    result = project.run("make")
    assert result.code == 0, result.err
    time.sleep(0.8)
    assert not (project.path.parent / "late-marker").exists()
    assert sorted(p.name for p in (project.path / "build" / "a").iterdir()) == ["MANIFEST.json", "early"]
