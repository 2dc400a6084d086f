"""The tzrec_dssm template and the tzrec kinds with TorchEasyRec's real code (tzrec-sekai 0.9.6 on CPU).

Needs the interpreter of a tzrec environment in TZREC_PYTHON (tools/tzrec_cpu_env/install.sh builds
one). Without it these tests skip, unless RECBUILD_REQUIRE_TZREC=1 (CI), where they fail instead.
Every tzrec process runs with RECBUILD_TZREC_SHIM_LOG set: a use of the pyfg/graphlearn/common_io
stand-ins is logged there, and the module fails if any is (FG_NONE must be enough).

The tests share one built workdir (module scope) and run in file order, cheapest changes first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Result

pytestmark = pytest.mark.tzrec

TZREC_PYTHON = os.environ.get("TZREC_PYTHON")
REQUIRED = os.environ.get("RECBUILD_REQUIRE_TZREC") == "1"
SAMPLES = ["items", "train", "eval"]
ARTIFACTS = ["checkpoints", "export", "item_embeddings", "user_embeddings", "index", "hitrate", "recall",
             "serving", "tree_init", "tree"]
TREE_TEXT = ["serving_tree", "node_table.txt", "edge_table.txt", "predict_edge_table.txt"]


@pytest.fixture(scope="module")
def tzrec_python() -> str:
    if not TZREC_PYTHON:
        message = ("TZREC_PYTHON is not set: these tests run TorchEasyRec's real code; build an "
                   "environment with tools/tzrec_cpu_env/install.sh VENV and set TZREC_PYTHON=VENV/bin/python")
        if REQUIRED:
            pytest.fail(message + " (RECBUILD_REQUIRE_TZREC=1: not skipping)")
        pytest.skip(message)
    return TZREC_PYTHON


class Workdir:
    def __init__(self, path: Path, cache: Path, shim_log: Path, python: str):
        self.path, self.cache, self.shim_log, self.python = path, cache, shim_log, python

    def env(self) -> dict[str, str]:
        return {**os.environ, "TZREC_PYTHON": self.python, "RECBUILD_TZREC_SHIM_LOG": str(self.shim_log),
                "PYTHONUNBUFFERED": "1"}

    def cli(self, *args: str, cwd: Path | None = None, timeout: float = 900, **env: str) -> Result:
        done = subprocess.run([sys.executable, "-m", "recbuild.cli", *args], cwd=cwd or self.path,
                              capture_output=True, text=True, env={**self.env(), **env}, timeout=timeout)
        return Result(done.returncode, done.stdout, done.stderr)

    def shim_calls(self) -> list[str]:
        if not self.shim_log.is_file():
            return []
        return [line for line in self.shim_log.read_text().splitlines() if line.startswith("CALLED")]


@pytest.fixture(scope="module")
def work(tzrec_python, tmp_path_factory) -> Workdir:
    base = tmp_path_factory.mktemp("tzrec")
    work = Workdir(base / "demo", base / "cache", base / "shim_calls.log", tzrec_python)
    init = work.cli("init", "tzrec_dssm", str(work.path), cwd=base)
    assert init.code == 0, init.err
    started = time.perf_counter()
    # not a terminal: the CI heartbeat, every second, shows what each running step is doing
    work.first = work.cli("make", "--cache", str(work.cache), RECBUILD_HEARTBEAT="1")
    work.first_seconds = time.perf_counter() - started
    return work


def _digest(work: Workdir, name: str) -> str:
    return json.loads((work.path / "build" / name / "MANIFEST.json").read_text())["digest"]


def test_template_builds_end_to_end(work):
    first = work.first
    assert first.code == 0, first.out + first.err
    assert sorted(first.built) == sorted(SAMPLES + ARTIFACTS)
    build = work.path / "build"
    for rel in ("checkpoints/pipeline.config", "checkpoints/train_eval_result_v2.txt", "checkpoints/metrics.json",
                "export/user/scripted_model.pt", "export/item/scripted_model.pt", "export/user/fg.json",
                "item_embeddings/part-0.parquet", "user_embeddings/part-0.parquet", "index/faiss_index",
                "index/id_mapping", "index/index_meta.json", "hitrate/metrics.json", "recall/metrics.json",
                "serving/user/faiss_index", "serving/user/scripted_model.pt", "serving/item/scripted_model.pt",
                "serving/serving_config.json", "tree_init/serving_tree", "tree/node_feature/part-0.parquet"):
        assert (build / rel).is_file(), rel
    assert list((build / "checkpoints").glob("model.ckpt-*/model/.metadata"))
    # no random temporary path (nor TensorBoard's host names) in what is published
    for path in build.rglob("*"):
        if path.is_file() and ".recbuild" not in path.relative_to(build).parts:
            assert b".recbuild/tmp" not in path.read_bytes(), path
            assert not path.name.startswith("events.out.tfevents"), path
    config = (build / "checkpoints" / "pipeline.config").read_text()
    assert 'model_dir: "build/checkpoints"' in config and 'train_input_path: "build/train/part-0.parquet"' in config
    manifest = json.loads((build / "checkpoints" / "MANIFEST.json").read_text())
    assert manifest["facts"]["tzrec"].endswith("0.9.6") and "tzrec" not in manifest["params"]
    metrics = work.cli("metrics")
    for name in ("recall@5", "hitrate@50", "recall@50"):
        assert name in metrics.out
    assert work.shim_calls() == []
    print(f"\ntzrec_dssm first build: {work.first_seconds:.0f} s\n{first.out}")


def test_the_heartbeat_shows_tzrecs_steps_loss_and_evaluations(work):
    beats = [line for line in work.first.out.splitlines() if line.startswith("  ... checkpoints (tzrec_train_eval): ")]
    training = [line for line in beats if ": training, epoch " in line]
    assert training, work.first.out
    # e.g. "training, epoch 2/2, 180/250 steps, 2.3 steps/s, ETA 30.1s, loss 4.5392, eval recall@5 0.0645, 1m18s"
    assert any(re.search(r"training, epoch \d/2, \d+/250 steps, .*loss \d+\.\d{4}", line) for line in training), beats
    assert any("eval recall@5 " in line for line in training), beats
    steps = [int(re.search(r"(\d+)/250 steps", line).group(1)) for line in training]
    # read while training ran: a beat before the last step. (Not two different steps: tzrec logs at
    # most once a second, so a fast machine may show one training line between two heartbeats.)
    assert steps == sorted(steps) and steps[0] < 250, beats
    assert any(line.startswith("  ... item_embeddings (tzrec_predict): ") for line in work.first.out.splitlines())


def test_the_template_learns_and_shows_its_baselines(work):
    figures = json.loads((work.path / "build" / "recall" / "metrics.json").read_text())
    random, popular = figures["baseline"]["random"], figures["baseline"]["popularity"]
    assert random["recall@10"] == round(10 / 300, 6) and random["recall@50"] == round(50 / 300, 6)
    assert figures["recall@10"] >= 2 * random["recall@10"], figures
    assert figures["recall@50"] >= 2 * random["recall@50"], figures
    assert 0 < popular["recall@10"] < 1 and popular["items"] == 300
    shown = work.cli("metrics", "recall").out
    for name in ("baseline.random.recall@10", "baseline.popularity.recall@10", "recall@10"):
        assert re.search(rf"recall\s+{re.escape(name)}( \[index search\])?\s+0\.\d{{4}}", shown), shown
    # beside the figures right after the build, too
    assert re.search(r"recall\s+.*baseline\.popularity\.recall@10 0\.\d{4}.*baseline\.random\.recall@10 "
                     r"0\.0333.*recall@10 0\.\d{4}", work.first.out), work.first.out
    print(f"\ntzrec_dssm recall@10 {figures['recall@10']} (random {random['recall@10']}, popularity "
          f"{popular['recall@10']}); recall@50 {figures['recall@50']} (random {random['recall@50']}, "
          f"popularity {popular['recall@50']})")


def test_second_make_is_a_noop(work):
    started = time.perf_counter()
    again = work.cli("make")
    assert again.code == 0 and again.built == [], again.out
    assert time.perf_counter() - started < 10


def test_a_config_edit_that_keeps_its_meaning_rebuilds_nothing(work):
    """pipeline.config enters the key as tzrec reads it: comments, blank lines, spacing and the order
    of fields do not count (tzrec's own protobuf classes parse it)."""
    config = work.path / "pipeline.config"
    original = config.read_text()
    lines = original.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("eval_config"))
    moved = lines[start]  # a one-line block: moved to the end of the file
    edited = "\n".join(lines[:start] + lines[start + 1:] + ["# evaluation: tzrec's defaults", moved]) + "\n"
    edited = edited.replace("  num_epochs: ", "  # passes over the data\n  num_epochs:   ")
    assert edited != original
    config.write_text(edited)
    try:
        status = work.cli("status")
        rows = {line.split()[0]: line for line in status.out.splitlines() if line.strip()}
        assert status.code == 0 and all("up to date" in rows[name] for name in ARTIFACTS), status.out
        assert "files modified pipeline.config" in rows["pipeline.config"]  # its bytes did change
        again = work.cli("make")
        assert again.code == 0 and again.built == [], again.out
        assert "nothing to do" in again.out or "up to date" in again.out, again.out
        memo = json.loads((work.path / "build" / ".recbuild" / "meanings.json").read_text())
        assert any(value.startswith("meaning:tzrec-pipeline-sha256:") for value in memo.values())
    finally:
        config.write_text(original)


def test_retraining_rewrites_the_same_bytes(work):
    """tzrec_train_eval is seeded (param seed) with torch's deterministic algorithms on CPU: trained
    again, it rewrites the same checkpoints, so what reads them stays (early cut-off)."""
    before = {name: _digest(work, name) for name in ("checkpoints", "export")}
    again = work.cli("make", "-B", "checkpoints")
    assert again.code == 0 and "checkpoints" in again.built, again.out + again.err
    assert _digest(work, "checkpoints") == before["checkpoints"]
    after = work.cli("make")
    assert after.code == 0 and after.built == [], after.out
    assert _digest(work, "export") == before["export"]


def test_builtin_kinds_read_tzrec_outputs_and_tzrec_reads_recbuilds(work):
    """recbuild's tdm_tree (byte-identical to tzrec's init_tree), faiss_index, learnt tree over tzrec's
    predict output; tzrec_eval; tzrec's create_faiss_index and hitrate over recbuild's embeddings."""
    (work.path / "more.yaml").write_text("""
version: 1
extends: recbuild.yaml
model:
  family: dssm
  emb_dim: 8
  hidden: [16]
  tower_dim: 8
  features:
    - {name: user_id, group: user, buckets: 2000}
    - {name: age_level, group: user, buckets: 10}
    - {name: item_id, group: item, buckets: 2000}
    - {name: cate_id, group: item, buckets: 100}
artifacts:
  rb_tree: {kind: tdm_tree, mode: init, items: items, cate_id_column: cate_id, attr_columns: [cate_id],
            raw_attr_columns: [price]}
  rb_index: {kind: faiss_index, embeddings: item_embeddings, index_type: IVFFlat, nlist: 8}
  rb_tree_learnt: {kind: tdm_tree, embeddings: item_embeddings, attr_columns: [cate_id]}
  evaluation: {kind: tzrec_eval, checkpoints: checkpoints, eval_data: eval, select: best, metric: recall@5}
  rb_checkpoints: {kind: train, data: train, eval_data: eval, epochs: 1, batch_size: 256, k: [10]}
  rb_model: {kind: export, checkpoints: rb_checkpoints}
  rb_towers: {kind: towers, model: rb_model}
  rb_items: {kind: item_embeddings, towers: rb_towers, items: items, embedding_format: list_double}
  rb_users: {kind: user_embeddings, towers: rb_towers, users: eval, reserved_columns: [item_id],
             on_duplicate: first, embedding_format: list_double}
  tz_index_over_rb: {kind: tzrec_create_faiss_index, embeddings: rb_items, ivf_nlist: 8}
  tz_hitrate_over_rb: {kind: tzrec_hitrate, user_embeddings: rb_users, item_embeddings: rb_items,
                       request_id_field: user_id, gt_items_field: item_id, ivf_nlist: 8, ivf_nprobe: 8,
                       top_k: 20}
""")
    result = work.cli("make", "-f", "more.yaml")
    assert result.code == 0, result.out + result.err
    build = work.path / "build"
    for name in TREE_TEXT:
        assert (build / "rb_tree" / name).read_bytes() == (build / "tree_init" / name).read_bytes(), name
    import pyarrow.parquet as pq

    assert pq.read_table(build / "rb_tree" / "node_feature" / "part-0.parquet").equals(
        pq.read_table(build / "tree_init" / "node_feature" / "part-0.parquet"))
    assert json.loads((build / "rb_index" / "index_meta.json").read_text())["count"] == 300
    assert "recall@5" in json.loads((build / "evaluation" / "metrics.json").read_text())
    assert json.loads((build / "tz_index_over_rb" / "index_meta.json").read_text())["count"] == 300
    assert 0 <= json.loads((build / "tz_hitrate_over_rb" / "metrics.json").read_text())["hitrate@20"] <= 1
    assert work.shim_calls() == []


def test_undeclared_path_in_the_config_is_an_error(work):
    (work.path / "bad.yaml").write_text("""
version: 1
extends: recbuild.yaml
artifacts:
  bad: {kind: tzrec_train_eval, pipeline_config: pipeline.config, data: train,
        edit_config: {train_config.fine_tune_checkpoint: elsewhere/model}}
""")
    result = work.cli("make", "-f", "bad.yaml", "bad")
    assert result.code == 1
    assert "bad.yaml:5:3" in result.err and "train_config.fine_tune_checkpoint = 'elsewhere/model'" in result.err
    assert "inputs:" in result.err and "Traceback" not in result.err


def test_a_failing_tool_shows_its_log(work):
    (work.path / "fail.yaml").write_text("""
version: 1
extends: recbuild.yaml
artifacts:
  broken: {kind: tzrec_predict, model: export, tower: item, data: items, output_columns: [no_such_output]}
""")
    result = work.cli("make", "-f", "fail.yaml", "broken")
    assert result.code == 1
    assert "tzrec predict (tzrec.predict) exited with status" in result.err
    assert "last lines:" in result.err and "KeyError: 'no_such_output'" in result.err
    assert len(result.err.strip().splitlines()) == 1 and "internal error" not in result.err
    log = work.path / "build" / ".recbuild" / "logs" / "broken.tzrec.log"
    assert str(log) in result.err and "no_such_output" in log.read_text()
    assert not (work.path / "build" / "broken").exists()


def test_fresh_workdir_restores_everything_from_the_cache(work, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("recbuild.yaml", "pipeline.config"):
        shutil.copyfile(work.path / name, fresh / name)
    result = work.cli("make", "--cache", str(work.cache), cwd=fresh)
    assert result.code == 0, result.out + result.err
    assert result.built == []
    assert sorted(result.restored) == sorted(SAMPLES + ARTIFACTS)


def test_index_param_rebuilds_only_the_index_and_its_readers(work):
    result = work.cli("make", "--set", "artifacts.index.ivf_nlist=8")
    assert result.code == 0, result.err
    assert sorted(result.built) == ["index", "recall", "serving"]
    assert json.loads((work.path / "build" / "index" / "index_meta.json").read_text())["params"]["nlist"] == 8


def test_training_param_edit_rebuilds_train_and_everything_downstream(work):
    config = work.path / "pipeline.config"
    config.write_text(config.read_text().replace("adam_optimizer { lr: 0.01 }", "adam_optimizer { lr: 0.02 }"))
    explain = work.cli("explain", "checkpoints")
    assert "input pipeline_config (pipeline.config) changed" in explain.out
    before = {name: _digest(work, name) for name in ("tree_init", "items")}
    result = work.cli("make")
    assert result.code == 0, result.out + result.err
    assert sorted(result.built) == sorted(set(ARTIFACTS) - {"tree_init"})
    assert {name: _digest(work, name) for name in before} == before
    assert work.shim_calls() == []


def test_the_stand_in_detector_catches_a_call(work, tmp_path):
    """If a step ever needed pyfg/graphlearn, the stand-ins would raise and log it (and the checks
    above on the shim log would fail): prove the detector works in this very environment."""
    log = tmp_path / "calls.log"
    done = subprocess.run([work.python, "-c", "import pyfg; pyfg.FgHandler({})"], capture_output=True,
                          text=True, env={**os.environ, "RECBUILD_TZREC_SHIM_LOG": str(log)})
    assert done.returncode != 0 and "ShimCalledError" in done.stderr
    assert any(line.startswith("CALLED pyfg.FgHandler") for line in log.read_text().splitlines())
