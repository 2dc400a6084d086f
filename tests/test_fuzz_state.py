"""Fuzzing what recbuild reads back that a user or another machine can corrupt: MANIFEST.json files,
the state under .recbuild/, and shared-cache entries (manifest and archive).

Property, for every input: `make` either builds correctly (after discarding what is broken) or
stops with one clear error line; never a traceback or "internal error", never a write outside the
project, never code run from the input. Example counts are fixed (see EXAMPLES) so the closing
note can report them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recbuild.cli import main

EXAMPLES = int(os.environ.get("RECBUILD_FUZZ_EXAMPLES", "40"))
RECIPE = """
version: 1
cache: {cache}
sources:
  raw: {{path: raw.txt}}
artifacts:
  a: {{kind: command, deps: [raw], cmd: "tr a-z A-Z < ${{deps.raw}} > ${{out}}/upper.txt; mkdir ${{out}}/sub; echo s > ${{out}}/sub/s"}}
  b: {{kind: command, deps: [a], cmd: "cat ${{deps.a}}/upper.txt ${{deps.a}}/sub/s > ${{out}}/b.txt"}}
"""
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)


def _make(folder: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["make", *args])
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A built project (with a cache) that each example copies."""
    root = tmp_path_factory.mktemp("fuzz-base")
    (root / "raw.txt").write_text("hello\n")
    (root / "recbuild.yaml").write_text(RECIPE.format(cache=root / "cache"))
    code, _, err = _make(root)
    assert code == 0, err
    return root


@contextlib.contextmanager
def _copy(built: Path):
    """A copy of the built project in a fresh folder, and a check that nothing is written beside it."""
    parent = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        folder = parent / "project"
        shutil.copytree(built, folder, symlinks=True)
        (folder / "recbuild.yaml").write_text(RECIPE.format(cache=folder / "cache"))
        yield folder
        assert sorted(p.name for p in parent.iterdir()) == ["project"], "a write outside the project"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _assert_good_or_one_error(code: int, err: str, folder: Path) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 0:
        assert (folder / "build" / "b" / "b.txt").read_text() == "HELLO\ns\n"
        assert (folder / "build" / "a" / "upper.txt").read_text() == "HELLO\n"
    else:
        assert code == 1, (code, err)
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err


# ------------------------------------------------------------------ MANIFEST.json


def _mutated_manifest(real: dict, draw) -> object:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(json_values)
    manifest = json.loads(json.dumps(real))
    field = draw(st.sampled_from(sorted(manifest) + ["files.upper.txt", "files.new"]))
    if choice == 1:
        manifest.pop(field, None)
    elif field.startswith("files."):
        name = draw(st.sampled_from(["upper.txt", "../escape.txt", "/abs", "sub/../../x", "", "sub/s"]))
        manifest["files"][name] = draw(json_values)
    else:
        manifest[field] = draw(json_values)
    return manifest


@FUZZ
@given(data=st.data(), which=st.sampled_from(["a", "b"]))
def test_fuzzed_manifests(built, data, which):
    with _copy(built) as folder:
        path = folder / "build" / which / "MANIFEST.json"
        real = json.loads(path.read_text())
        manifest = _mutated_manifest(real, data.draw)
        path.write_text(json.dumps(manifest) if data.draw(st.booleans()) else json.dumps(manifest)[:40])
        code, _, err = _make(folder)
        _assert_good_or_one_error(code, err, folder)
        if code == 1:
            assert "did not make" in err  # the only refusal: a manifest that proves nothing


# ------------------------------------------------------------------ state under .recbuild/


def _spoil_sqlite(path: Path, data) -> None:
    how = data.draw(st.sampled_from(["bytes", "truncate", "rows", "schema"]))
    if how == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=2000)))
    elif how == "truncate":
        content = path.read_bytes()
        path.write_bytes(content[:data.draw(st.integers(0, max(len(content) - 1, 0)))])
    elif how == "schema":  # another program's table under the same name
        table = "doit" if "doit" in path.name else "stat_cache"
        path.unlink()
        with sqlite3.connect(path) as db:
            db.execute(f"CREATE TABLE {table} (x, y, z)")
            db.execute(f"INSERT INTO {table} VALUES (?, ?, ?)", (1, "two", b"3"))
    else:
        with sqlite3.connect(path) as db:
            table = "doit" if "doit" in path.name else "stat_cache"
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            column = data.draw(st.sampled_from(columns))
            value = data.draw(st.one_of(st.integers(), st.text(max_size=30), st.binary(max_size=30),
                                        json_values.map(json.dumps)))
            db.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = (SELECT min(rowid) FROM {table})",
                       (value,))


@FUZZ
@given(data=st.data(), target=st.sampled_from(["doit.sqlite", "hashes.sqlite", "lock", "previous",
                                               "tmp", "logs"]))
def test_fuzzed_state(built, data, target):
    with _copy(built) as folder:
        state = folder / "build" / ".recbuild"
        for extra in list(state.glob("*.sqlite-*")):
            extra.unlink()
        path = state / target
        if target.endswith(".sqlite"):
            _spoil_sqlite(path, data)
        elif target == "previous":
            path.mkdir(exist_ok=True)
            (path / "a").mkdir(exist_ok=True)
            (path / "a" / "metrics.json").write_bytes(data.draw(st.binary(max_size=200)))
        elif target in ("tmp", "logs"):
            if path.exists():
                shutil.rmtree(path)
            if data.draw(st.booleans()):
                path.write_bytes(data.draw(st.binary(max_size=50)))
            else:
                path.mkdir()
                (path / data.draw(st.sampled_from(["a.log", "a-123", "x"]))).write_bytes(b"junk")
        else:
            path.write_bytes(data.draw(st.binary(max_size=200)))
        code, _, err = _make(folder)
        _assert_good_or_one_error(code, err, folder)
        assert _make(folder)[0] == code  # and the next run agrees


# ------------------------------------------------------------------ shared-cache entries


def _entry(folder: Path, name: str) -> Path:
    key = json.loads((folder / "build" / name / "MANIFEST.json").read_text())["key"]
    return folder / "cache" / "v1" / key[:2] / key


def _spoil_archive(tar_path: Path, data) -> None:
    how = data.draw(st.sampled_from(["flip", "truncate", "bytes", "members"]))
    content = bytearray(tar_path.read_bytes())
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            content[data.draw(st.integers(0, len(content) - 1))] ^= data.draw(st.integers(1, 255))
        tar_path.write_bytes(bytes(content))
    elif how == "truncate":
        tar_path.write_bytes(bytes(content[:data.draw(st.integers(0, len(content) - 1))]))
    elif how == "bytes":
        tar_path.write_bytes(data.draw(st.binary(max_size=3000)))
    else:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for _ in range(data.draw(st.integers(0, 4))):
                info = tarfile.TarInfo(data.draw(st.sampled_from(
                    ["upper.txt", "sub/s", "../up.txt", "/abs.txt", "sub", "MANIFEST.json", "x/../../y"])))
                info.type = data.draw(st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                                       tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE]))
                info.linkname = data.draw(st.sampled_from(["/etc/hostname", "../x", "upper.txt"]))
                payload = data.draw(st.binary(max_size=20))
                info.size = len(payload) if info.type == tarfile.REGTYPE else 0
                tar.addfile(info, io.BytesIO(payload) if info.type == tarfile.REGTYPE else None)
        tar_path.write_bytes(buffer.getvalue())


@FUZZ
@given(data=st.data(), which=st.sampled_from(["a", "b"]), part=st.sampled_from(["manifest", "archive", "both"]))
def test_fuzzed_cache_entries(built, data, which, part):
    with _copy(built) as folder:
        entry = _entry(folder, which)
        if part in ("manifest", "both"):
            real = json.loads(entry.with_suffix(".json").read_text())
            entry.with_suffix(".json").write_text(json.dumps(_mutated_manifest(real, data.draw)))
        if part in ("archive", "both"):
            _spoil_archive(entry.with_suffix(".tar"), data)
        shutil.rmtree(folder / "build")  # a fresh CI checkout: everything comes from the cache or a build
        code, _, err = _make(folder)
        assert code == 0, err  # a bad entry is never an error: it is rebuilt
        _assert_good_or_one_error(code, err, folder)


