"""The shared artifact cache: local folder and a real S3 API (moto) on loopback."""

from __future__ import annotations

import shutil
import socket
import tarfile
from pathlib import Path

import pytest

RECIPE = """
version: 1
cache: {cache}
vars: {{n: 3}}
sources:
  raw: {{path: data/raw.txt}}
artifacts:
  upper:
    kind: command
    deps: [raw]
    cmd: echo upper >> runs.txt; tr a-z A-Z < ${{deps.raw}} > ${{out}}/upper.txt
  head:
    kind: command
    deps: [upper]
    params: {{n: "${{vars.n}}"}}
    cmd: echo head >> runs.txt; head -c ${{params.n}} ${{deps.upper}}/upper.txt > ${{out}}/head.txt
  final:
    kind: command
    deps: [head]
    cmd: echo final >> runs.txt; mkdir -p ${{out}}/sub; cat ${{deps.head}}/head.txt > ${{out}}/sub/final.txt
"""


def _fresh_clone(project, tmp_path, name: str):
    """A new checkout of the same repository: same recipe and inputs, no workdir, no state."""
    clone = tmp_path / name
    clone.mkdir()
    shutil.copy(project.path / "recbuild.yaml", clone / "recbuild.yaml")
    shutil.copytree(project.path / "data", clone / "data")
    project.path = clone
    return project


def _runs(project) -> list[str]:
    path = project.path / "runs.txt"
    return path.read_text().split() if path.exists() else []


@pytest.fixture
def cached_project(project, tmp_path):
    cache_dir = tmp_path / "shared-cache"
    project.path = tmp_path / "ci-1"
    project.path.mkdir()
    project.write("data/raw.txt", "hello\n")
    project.recipe(RECIPE.format(cache=str(cache_dir)))
    first = project.run("make")
    assert first.code == 0, first.err
    assert sorted(first.built) == ["final", "head", "upper"]
    return project, cache_dir


def test_fresh_ci_run_restores_everything_without_building(cached_project, tmp_path):
    project, cache_dir = cached_project
    assert len(list(cache_dir.glob("v1/*/*.json"))) == 3
    _fresh_clone(project, tmp_path, "ci-2")
    result = project.run("make")
    assert result.code == 0, result.err
    assert result.built == []
    assert sorted(result.restored) == ["final", "head", "upper"]
    assert _runs(project) == []  # no command ran
    assert project.read("build/final/sub/final.txt") == "HEL"


def test_one_param_change_builds_one_artifact_and_restores_the_rest(cached_project, tmp_path):
    project, _ = cached_project
    _fresh_clone(project, tmp_path, "ci-2")
    project.recipe(project.read("recbuild.yaml").replace("vars: {n: 3}", "vars: {n: 4}"))
    result = project.run("make")
    assert result.code == 0, result.err
    # head's output changes, so final's key is new too: both build, upper is restored
    assert result.built == ["head", "final"]
    assert result.restored == ["upper"]
    assert _runs(project) == ["head", "final"]


def test_identical_rebuild_lets_dependents_restore(cached_project, tmp_path):
    project, _ = cached_project
    _fresh_clone(project, tmp_path, "ci-2")
    # a param change that does not change head's output: final's key is unchanged -> restored
    project.recipe(project.read("recbuild.yaml").replace(
        "params: {n: \"${vars.n}\"}", "params: {n: \"${vars.n}\", note: x}"))
    result = project.run("make")
    assert result.built == ["head"]  # exactly one artifact builds
    assert sorted(result.restored) == ["final", "upper"]
    assert _runs(project) == ["head"]


def _entry(cache_dir: Path, project, name: str) -> Path:
    import json

    key = json.loads((project.path / "build" / name / "MANIFEST.json").read_text())["key"]
    return cache_dir / "v1" / key[:2] / key


def test_tampered_entry_is_rejected_and_rebuilt(cached_project, tmp_path):
    project, cache_dir = cached_project
    entry = _entry(cache_dir, project, "upper")
    data = bytearray(entry.with_suffix(".tar").read_bytes())
    index = data.index(b"HELLO")
    data[index] = ord("J")
    entry.with_suffix(".tar").write_bytes(bytes(data))
    _fresh_clone(project, tmp_path, "ci-2")
    result = project.run("make")
    assert result.code == 0
    assert result.built == ["upper"]
    assert "does not match its manifest" in result.err and "rebuilding instead" in result.err
    assert project.read("build/upper/upper.txt") == "HELLO\n"
    # the bad entry was replaced by the good rebuild
    assert b"JELLO" not in entry.with_suffix(".tar").read_bytes()


def test_truncated_entry_is_rejected(cached_project, tmp_path):
    project, cache_dir = cached_project
    tar_path = _entry(cache_dir, project, "final").with_suffix(".tar")
    tar_path.write_bytes(tar_path.read_bytes()[:700])
    _fresh_clone(project, tmp_path, "ci-2")
    result = project.run("make")
    assert result.code == 0
    assert "final" in result.built
    assert "rebuilding instead" in result.err


def test_archive_escaping_the_folder_is_refused(cached_project, tmp_path):
    import io

    project, cache_dir = cached_project
    tar_path = _entry(cache_dir, project, "upper").with_suffix(".tar")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        payload = b"HELLO\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    tar_path.write_bytes(buffer.getvalue())
    _fresh_clone(project, tmp_path, "ci-2")
    result = project.run("make")
    assert "refusing to extract" in result.err
    assert not (tmp_path / "escaped.txt").exists() and not (project.path / "escaped.txt").exists()
    assert "upper" in result.built


@pytest.mark.parametrize("manifest", [
    "[]", '{"key": 5}', "not json",
    '{"kind": "command", "key": "KEY", "digest": "d", "files": {"upper.txt": {"size": -1, "digest": "x"}}}',
    '{"kind": "command", "key": "KEY", "digest": "d", "files": {"../x": {"size": 1, "digest": "x"}}}',
])
def test_a_wrong_shaped_entry_manifest_is_no_entry(cached_project, tmp_path, manifest):
    project, cache_dir = cached_project
    entry = _entry(cache_dir, project, "upper")
    entry.with_suffix(".json").write_text(manifest.replace("KEY", entry.name))
    _fresh_clone(project, tmp_path, "ci-2")
    result = project.run("make")
    assert result.code == 0, result.err
    assert "upper" in result.built and "Traceback" not in result.err
    assert project.read("build/upper/upper.txt") == "HELLO\n"
    assert '"files"' in entry.with_suffix(".json").read_text()  # replaced by the good rebuild


def _retar(tar_path: Path, members) -> None:
    import io

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    tar_path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_a_sparse_archive_is_refused_before_it_expands(cached_project, tmp_path, fmt):
    """A few KB that would expand to 2 GiB on disk: checked against the manifest first."""
    import subprocess

    project, cache_dir = cached_project
    tar_path = _entry(cache_dir, project, "upper").with_suffix(".tar")
    work = tmp_path / "sparse"
    work.mkdir()
    with open(work / "upper.txt", "wb") as handle:
        handle.truncate(2 << 30)
    made = subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", str(tar_path), "upper.txt"],
                          cwd=work, capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"GNU tar cannot write sparse archives here: {made.stderr[:200]!r}")
    assert tar_path.stat().st_size < 50_000
    _fresh_clone(project, tmp_path, "ci-2")
    result = project.run("make")
    assert result.code == 0 and "upper" in result.built
    assert "refusing" in result.err
    assert project.read("build/upper/upper.txt") == "HELLO\n"


@pytest.mark.parametrize("what", ["wrong-size", "unlisted", "duplicate", "directory", "symlink"])
def test_archive_members_must_match_the_manifest(cached_project, tmp_path, what):
    project, cache_dir = cached_project
    tar_path = _entry(cache_dir, project, "upper").with_suffix(".tar")

    def file(name, payload):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        return info, payload

    members = {"wrong-size": [file("upper.txt", b"HELLO!!\n")],
               "unlisted": [file("upper.txt", b"HELLO\n"), file("extra.txt", b"x")],
               "duplicate": [file("upper.txt", b"HELLO\n"), file("upper.txt", b"JELLO\n")]}
    if what == "directory":
        info = tarfile.TarInfo("upper.txt")
        info.type = tarfile.DIRTYPE
        members[what] = [(info, None)]
    if what == "symlink":
        info = tarfile.TarInfo("upper.txt")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/hostname"
        members[what] = [(info, None)]
    _retar(tar_path, members[what])
    _fresh_clone(project, tmp_path, "ci-2")
    result = project.run("make")
    assert result.code == 0 and "upper" in result.built, result.err
    assert "refusing" in result.err and "Traceback" not in result.err
    assert project.read("build/upper/upper.txt") == "HELLO\n"


def test_an_archive_larger_than_its_manifest_allows_is_not_read(cached_project, tmp_path):
    project, cache_dir = cached_project
    tar_path = _entry(cache_dir, project, "upper").with_suffix(".tar")
    tar_path.write_bytes(tar_path.read_bytes() + b"\0" * (1 << 20))
    _fresh_clone(project, tmp_path, "ci-2")
    result = project.run("make")
    assert "more than its manifest's files can fill" in result.err and "upper" in result.built


def test_cache_commands(cached_project, tmp_path):
    project, cache_dir = cached_project
    _fresh_clone(project, tmp_path, "ci-2")
    status = project.run("cache", "status")
    assert status.code == 0
    assert status.out.count(" yes ") == 3 and "missing" in status.out
    pulled = project.run("cache", "pull")
    assert pulled.out.count("restored from cache") == 3
    assert project.run("make").built == []
    project.recipe(project.read("recbuild.yaml").replace("vars: {n: 3}", "vars: {n: 5}"))
    project.recipe(project.read("recbuild.yaml").replace("cache: ", "cache: {push: false, url: ") .replace(
        "shared-cache\n", "shared-cache}\n"))
    assert project.run("make").built == ["head", "final"]
    assert len(list(cache_dir.glob("v1/*/*.json"))) == 3  # push: false
    pushed = project.run("cache", "push")
    assert pushed.out.count("pushed") == 2
    dry = project.run("cache", "gc")  # no policy: a dry run
    assert "nothing is deleted" in dry.out and "would delete 2 entries" in dry.out
    assert len(list(cache_dir.glob("v1/*/*.json"))) == 5
    gc = project.run("cache", "gc", "--keep-needed-by", "recbuild.yaml")
    assert "deleted 2 entries" in gc.out and "kept 3" in gc.out  # the n=3 head and final are no longer needed
    assert len(list(cache_dir.glob("v1/*/*.json"))) == 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_url(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint,
                       "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="recbuild-ci")
    try:
        yield "s3://recbuild-ci/cache"
    finally:
        server.stop()


def test_s3_cache_round_trip(project, tmp_path, s3_url):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    project.path = tmp_path / "ci-1"
    project.path.mkdir()
    project.write("data/raw.txt", "hello\n")
    project.recipe(RECIPE.format(cache=s3_url))
    first = project.run("make")
    assert sorted(first.built) == ["final", "head", "upper"], first.err
    _fresh_clone(project, tmp_path, "ci-2")
    second = project.run("make")
    assert second.code == 0, second.err
    assert sorted(second.restored) == ["final", "head", "upper"]
    assert _runs(project) == []
