"""Every built-in template builds end to end through the CLI (sizes reduced with --set), rebuilds
nothing the second time, gives byte-identical manifests on a second clean build, and writes the
training and recall outputs pinned in pinned_outputs.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

from recbuild.core.recipe.templates import template_names

SMALL = ["--set", "vars.n_items=300", "--set", "vars.n_users=200", "--set", "vars.train_rows=3000",
         "--set", "vars.eval_rows=800"]
EXPECTED = {
    "dssm": ["items", "train", "eval", "checkpoints", "model", "towers", "item_embeddings", "index",
             "recall", "serving"],
    "deepfm": ["train", "eval", "checkpoints", "model", "serving"],
    "tdm": ["items", "train", "eval", "tree_init", "checkpoints_init", "model_init", "embedding_init",
            "item_embeddings", "tree", "checkpoints", "model", "recall", "serving"],
}
# Periodic evaluation on every template, so the pinned eval files hold several evaluations.
EXTRA = {"dssm": ["--set", "artifacts.index.nlist=8", "--set", "artifacts.checkpoints.eval_every=2"],
         "deepfm": ["--set", "artifacts.checkpoints.eval_every=1"],
         "tdm": ["--set", "artifacts.checkpoints_init.eval_every=1",
                 "--set", "artifacts.checkpoints.eval_every=2"]}
# Every file of these artifacts is pinned: speed work on training / evaluation / recall must leave
# checkpoints, eval files and metrics byte for byte as they were (determinism is part of the key).
# Re-record (only for an intended change of outputs) with RECBUILD_RECORD_PINNED=1.
PINNED_ARTIFACTS = {"dssm": ["checkpoints", "recall"], "deepfm": ["checkpoints"],
                    "tdm": ["checkpoints_init", "checkpoints", "recall"]}
PINNED_FILE = Path(__file__).with_name("pinned_outputs.json")


def output_digests(build: Path, names: list[str]) -> dict[str, str]:
    """sha256 of every file of the named artifacts but their manifests (the build side's format)."""
    digests = {}
    for name in names:
        for path in sorted((build / name).rglob("*")):
            if path.is_file() and path.name != "MANIFEST.json":
                digests[path.relative_to(build).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def check_pinned_outputs(template: str, build: Path) -> None:
    import torch

    digests = output_digests(build, PINNED_ARTIFACTS[template])
    pinned = json.loads(PINNED_FILE.read_text()) if PINNED_FILE.is_file() else {"templates": {}}
    if os.environ.get("RECBUILD_RECORD_PINNED"):
        pinned["torch"] = torch.__version__
        pinned["templates"][template] = digests
        PINNED_FILE.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
        return
    if pinned.get("torch") != torch.__version__:  # float kernels (and so the bytes) differ across versions
        warnings.warn(f"outputs were pinned with torch {pinned.get('torch')}, this is "
                      f"{torch.__version__}: not compared")
        return
    expected = pinned["templates"][template]
    changed = sorted(path for path in expected.keys() | digests.keys()
                     if expected.get(path) != digests.get(path))
    assert not changed, f"{template}: outputs differ from the pinned ones: {changed}"


# Templates that run TorchEasyRec need its environment: tests/test_tzrec_pipeline.py builds them.
TZREC_TEMPLATES = ["tzrec_dssm"]


def test_every_template_is_covered():
    assert sorted(template_names()) == sorted([*EXPECTED, *TZREC_TEMPLATES])


@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_template_builds_end_to_end(project, template):
    assert project.run("init", template, "demo").code == 0
    project.path = project.path / "demo"
    assert project.run("validate").code == 0
    args = SMALL + EXTRA.get(template, [])
    first = project.run("make", *args)
    assert first.code == 0, first.err
    assert sorted(first.built) == sorted(EXPECTED[template])
    manifests = {n: project.read(f"build/{n}/MANIFEST.json") for n in EXPECTED[template]}
    again = project.run("make", *args)
    assert again.code == 0 and again.built == []
    if template != "deepfm":
        metrics = project.run("metrics", *args)
        assert "recall@200" in metrics.out
    if template == "dssm":
        answer = project.run("serve-check", *args)
        assert answer.code == 0, answer.err
        assert len(answer.out.strip().splitlines()[-1].split()) == 10
        # README: BUNDLE may also be a bundle folder, loaded without the recipe
        by_folder = project.run("serve-check", str(project.path / "build" / "serving"))
        assert by_folder.code == 0, by_folder.err
        assert by_folder.out.strip().splitlines()[-1] == answer.out.strip().splitlines()[-1]
        # a serving-time param rebuilds the bundle only
        nprobe = project.run("make", *args, "--set", "artifacts.serving.nprobe=4")
        assert nprobe.built == ["serving"]
        # an index param rebuilds index, recall and bundle, not the embeddings
        nlist = project.run("make", *args, "--set", "artifacts.serving.nprobe=4", "--set", "artifacts.index.nlist=4")
        assert sorted(nlist.built) == ["index", "recall", "serving"]
        project.run("make", *args)
    # determinism: a second clean build gives byte-identical manifests
    shutil.rmtree(project.path / "build")
    assert project.run("make", *args).code == 0
    for name, text in manifests.items():
        assert project.read(f"build/{name}/MANIFEST.json") == text, f"{template}: {name} is not deterministic"
    check_pinned_outputs(template, project.path / "build")
