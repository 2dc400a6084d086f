"""Every built-in template builds end to end through the CLI (sizes reduced with --set), rebuilds
nothing the second time, and gives byte-identical manifests on a second clean build."""

from __future__ import annotations

import shutil

import pytest

from recbuild.recipe import template_names

SMALL = ["--set", "vars.n_items=300", "--set", "vars.n_users=200", "--set", "vars.train_rows=3000",
         "--set", "vars.eval_rows=800"]
EXPECTED = {
    "dssm": ["items", "train", "eval", "checkpoints", "model", "towers", "item_embeddings", "index",
             "recall", "serving"],
    "deepfm": ["train", "eval", "checkpoints", "model", "serving"],
    "tdm": ["items", "train", "eval", "tree_init", "checkpoints_init", "model_init", "embedding_init",
            "item_embeddings", "tree", "checkpoints", "model", "recall", "serving"],
}
EXTRA = {"dssm": ["--set", "artifacts.index.nlist=8"]}


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
