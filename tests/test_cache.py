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
    gc = project.run("cache", "gc")
    assert "removed 2 entries, kept 3" in gc.out  # the n=3 head and final are no longer needed
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
