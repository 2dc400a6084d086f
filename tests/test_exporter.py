"""Checkpoint selection, loading errors, the export kind (formats, determinism) and the towers kind."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from recbuild.builders.base import BuildContext, InputArtifact
from recbuild.builders.export import ExportBuilder
from recbuild.builders.towers import TowersBuilder
from recbuild.errors import BuildError
from recbuild.ml.exporter import (EVAL_FILE, inputs_reaching_outputs, instantiate, load_state_dict,
                               read_pipeline_yaml, select_checkpoint)
from recbuild.ml.feature_io import load_fg
from recbuild.ml.models import build_model, resolve
from recbuild.ml.models.features import example_inputs, parse_features
from recbuild.ml.training import save_state_dict

FEATURES = [
    {"name": "user_id", "group": "user", "buckets": 500},
    {"name": "age_level", "group": "user", "buckets": 10},
    {"name": "clicks", "type": "sequence", "group": "user", "buckets": 300, "max_len": 4},
    {"name": "item_id", "group": "item", "buckets": 500},
    {"name": "price", "type": "numeric", "group": "item"},
]
DSSM = {"family": "dssm", "features": FEATURES, "emb_dim": 8, "hidden": [16], "tower_dim": 8}


# ---------------------------------------------------------------------------------------------
# helpers


def make_checkpoints(folder: Path, steps, metrics=None, config=DSSM, final_step=None, search_path=None) -> Path:
    """model.ckpt-<step>/model.pt with distinct weights per step, plus an eval file."""
    folder.mkdir(parents=True, exist_ok=True)
    for step in steps:
        torch.manual_seed(step)
        save_state_dict(build_model(config, search_path).state_dict(), folder / f"model.ckpt-{step}" / "model.pt")
    if metrics is not None:
        lines = [json.dumps({"global_step": step, **values}) for step, values in metrics]
        (folder / EVAL_FILE).write_text("\n".join(lines) + "\n")
    if final_step is not None:
        (folder / "train_meta.json").write_text(json.dumps({"final_step": final_step}))
    return folder


def artifact(path: Path, name: str, kind: str = "train") -> InputArtifact:
    return InputArtifact(name=name, kind=kind, path=path, files=tuple(sorted(p for p in path.rglob("*") if p.is_file())),
                         manifest={})


def run_export(tmp_path: Path, ckpts: Path, out_name: str, model=DSSM, recipe_dir=None, extra_inputs=None,
               **params):
    out = tmp_path / out_name
    out.mkdir()
    inputs = {"checkpoints": artifact(ckpts, "checkpoints"), **(extra_inputs or {})}
    ctx = BuildContext(name=out_name, kind="export", params={"checkpoints": "checkpoints", **params}, out=out,
                       inputs=inputs, recipe_dir=recipe_dir or tmp_path, workdir=tmp_path, model=model)
    ExportBuilder().run(ctx)
    return out, ctx


def run_towers(tmp_path: Path, export: Path, out_name: str, recipe_dir=None):
    out = tmp_path / out_name
    out.mkdir()
    ctx = BuildContext(name=out_name, kind="towers", params={"model": "model"}, out=out,
                       inputs={"model": artifact(export, "model", "export")}, recipe_dir=recipe_dir or tmp_path,
                       workdir=tmp_path)
    TowersBuilder().run(ctx)
    return out, ctx


# ---------------------------------------------------------------------------------------------
# selection

FIXTURE = [(0, {"grouped_auc": 0.565}), (10, {"grouped_auc": 0.570}), (20, {"grouped_auc": 0.567})]


def test_best_bigger_and_smaller_is_better(tmp_path):
    folder = make_checkpoints(tmp_path / "c", [0, 10, 20], FIXTURE)
    best = select_checkpoint(folder, "best", "grouped_auc")
    assert (best.step, best.name, best.value) == (10, "model.ckpt-10", 0.570)
    assert best.weights == folder / "model.ckpt-10" / "model.pt"
    assert select_checkpoint(folder, "best", "grouped_auc", bigger_is_better=False).step == 0


def test_best_ties_go_to_the_earliest_step_and_nan_never_wins(tmp_path):
    metrics = [(5, {"auc": 0.7}), (10, {"auc": float("nan")}), (15, {"auc": 0.8}), (20, {"auc": 0.8}),
               (25, {"auc": 0.6})]
    folder = make_checkpoints(tmp_path / "c", [5, 10, 15, 20, 25], metrics)
    assert select_checkpoint(folder, "best", "auc").step == 15
    assert select_checkpoint(folder, "best", "auc", bigger_is_better=False).step == 25
    # tie on the smallest value too
    (folder / EVAL_FILE).write_text("\n".join(json.dumps({"global_step": s, "loss": v})
                                              for s, v in [(5, 0.3), (10, 0.2), (15, 0.2)]) + "\n")
    assert select_checkpoint(folder, "best", "loss", bigger_is_better=False).step == 10


def test_a_later_line_for_the_same_step_wins(tmp_path):
    folder = make_checkpoints(tmp_path / "c", [1, 2], [(1, {"auc": 0.9}), (2, {"auc": 0.5}), (1, {"auc": 0.1})])
    assert select_checkpoint(folder, "best", "auc").step == 2


def test_missing_metric_names_the_metrics_that_exist(tmp_path):
    folder = make_checkpoints(tmp_path / "c", [0, 10, 20], FIXTURE)
    with pytest.raises(BuildError, match=r"'auc' is not in .*metrics there: grouped_auc"):
        select_checkpoint(folder, "best", "auc")


def test_default_metric_is_the_only_one_or_the_family_default(tmp_path):
    folder = make_checkpoints(tmp_path / "c", [0, 10, 20], FIXTURE)
    chosen = select_checkpoint(folder, "best")  # tzrec crashes here (TypeError on dict_values)
    assert (chosen.metric, chosen.step) == ("grouped_auc", 10)
    two = [(0, {"recall@50": 0.2, "recall@10": 0.5}), (10, {"recall@50": 0.3, "recall@10": 0.1})]
    folder2 = make_checkpoints(tmp_path / "d", [0, 10], two)
    assert select_checkpoint(folder2, "best", default_metrics=("recall@50",)).step == 10
    with pytest.raises(BuildError, match=r"needs `metric:`.*recall@10, recall@50.*\(auc\)"):
        select_checkpoint(folder2, "best", default_metrics=("auc",))


def test_latest_final_explicit_and_history(tmp_path):
    metrics = [(s, {"auc": v}) for s, v in [(10, 0.5), (20, 0.7), (30, 0.6), (40, 0.9), (50, 0.8)]]
    folder = make_checkpoints(tmp_path / "c", [10, 20, 30, 40, 50], metrics, final_step=40)
    assert select_checkpoint(folder, "latest").step == 50
    assert select_checkpoint(folder, "final").step == 40
    explicit = select_checkpoint(folder, "model.ckpt-20")
    assert (explicit.step, explicit.name) == (20, "model.ckpt-20")
    assert select_checkpoint(folder, "model.ckpt-30/model.pt").name == "model.ckpt-30"
    with pytest.raises(BuildError, match="outside the checkpoints input"):
        select_checkpoint(folder, "../elsewhere/model.ckpt-1")
    with pytest.raises(BuildError, match="model.ckpt-99.*not found.*model.ckpt-10"):
        select_checkpoint(folder, "model.ckpt-99")
    # history: the running-best improvements (10, 20, 40) / the most recent checkpoints
    assert [s for s, _ in select_checkpoint(folder, "best", "auc", keep=3).history] == [10, 20]
    assert [s for s, _ in select_checkpoint(folder, "best", "auc", keep=2).history] == [20]
    assert [s for s, _ in select_checkpoint(folder, "latest", keep=3).history] == [30, 40]
    assert select_checkpoint(folder, "latest").history == ()
    (folder / "train_meta.json").unlink()
    with pytest.raises(BuildError, match="select: final needs train_meta.json"):
        select_checkpoint(folder, "final")


def test_best_without_eval_file_or_checkpoint_is_a_clear_error(tmp_path):
    folder = make_checkpoints(tmp_path / "c", [1])
    with pytest.raises(BuildError, match="select: best needs .*train_eval_result_v2.txt"):
        select_checkpoint(folder, "best", "auc")
    folder2 = make_checkpoints(tmp_path / "d", [1], [(1, {"auc": 0.1}), (2, {"auc": 0.9})])
    with pytest.raises(BuildError, match="picked step 2.*model.ckpt-2/model.pt is missing"):
        select_checkpoint(folder2, "best", "auc")


# ---------------------------------------------------------------------------------------------
# loading errors


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    folder = make_checkpoints(tmp_path / "c", [1, 2])
    (folder / "model.ckpt-2" / "model.pt").write_bytes(b"this is not a zip file" * 10)
    with pytest.raises(BuildError, match=r"checkpoint checkpoints/model.ckpt-2 cannot be loaded.*corrupted"):
        run_export(tmp_path, folder, "out")
    # truncated archive
    good = (folder / "model.ckpt-1" / "model.pt").read_bytes()
    (folder / "model.ckpt-2" / "model.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(BuildError, match="model.ckpt-2 cannot be loaded"):
        load_state_dict(folder / "model.ckpt-2" / "model.pt", "checkpoints/model.ckpt-2")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(1), "obj": Path("/")}, path)  # needs arbitrary unpickling
    with pytest.raises(BuildError, match="cannot be loaded"):
        load_state_dict(path, "evil")


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path):
    other = dict(DSSM, tower_dim=4)  # same keys, different shapes
    folder = make_checkpoints(tmp_path / "c", [7], config=other)
    with pytest.raises(BuildError, match=r"checkpoints/model.ckpt-7 does not match.*shape mismatch.*\(4, 16\) vs model \(8, 16\)"):
        run_export(tmp_path, folder, "out")
    state = load_state_dict(folder / "model.ckpt-7" / "model.pt")
    state.pop("item_tower.dense.mlp.net.0.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(BuildError, match=r"missing keys: item_tower.dense.mlp.net.0.bias.*unexpected keys: extra.weight"):
        instantiate(resolve(DSSM), state, "ck")


# ---------------------------------------------------------------------------------------------
# export kind


def test_export_files_reproduce_eager_and_are_deterministic(tmp_path):
    metrics = [(1, {"recall@50": 0.2, "recall@10": 0.1}), (2, {"recall@50": 0.4, "recall@10": 0.05}),
               (3, {"recall@50": 0.3, "recall@10": 0.2})]
    folder = make_checkpoints(tmp_path / "c", [1, 2, 3], metrics)
    asset_dir = tmp_path / "assets_src"
    asset_dir.mkdir()
    (asset_dir / "serving_tree").write_text("3 2\n0 4\n")
    assets = {"assets": [artifact(asset_dir, "tree", "tdm_tree")]}
    out, ctx = run_export(tmp_path, folder, "model", select="best", assets=[{"from": "tree", "file": "serving_tree"}],
                          extra_inputs=assets, exports_to_keep=2)
    assert ctx.meta["step"] == 2 and ctx.meta["metric"] == "recall@50"  # dssm default metric
    assert ctx.meta["history"] == [1]
    assert set(ctx.meta["max_abs_diff"]) == {"torch_export", "torchscript"}
    print("\nexport max_abs_diff:", ctx.meta["max_abs_diff"])
    for name in ("model.pt2", "scripted_model.pt", "model.pt", "pipeline.yaml", "fg.json", "serving_tree",
                 "EXPORT_DONE", "history/1/model.pt2", "history/1/scripted_model.pt"):
        assert (out / name).is_file(), name
    assert not (out / "history" / "1" / "EXPORT_DONE").exists()
    assert read_pipeline_yaml(out)["checkpoint"]["checkpoint"] == "model.ckpt-2"
    assert [s.name for s in load_fg(out)] == [f["name"] for f in FEATURES]

    # independent check: the files, loaded back, reproduce the checkpoint's eager model
    eager = instantiate(resolve(DSSM), load_state_dict(folder / "model.ckpt-2" / "model.pt"), "ck")
    batch = example_inputs(parse_features(resolve(DSSM)), 11, seed=42)
    expected = eager(batch)
    for loaded in (torch.export.load(str(out / "model.pt2")).module(), torch.jit.load(str(out / "scripted_model.pt"))):
        got = loaded(dict(batch))
        for key in ("user_tower_emb", "item_tower_emb", "similarity"):
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)
    old = torch.export.load(str(out / "history" / "1" / "model.pt2")).module()(dict(batch))
    assert not torch.allclose(old["user_tower_emb"], expected["user_tower_emb"])

    again, _ = run_export(tmp_path, folder, "model_again", select="best", assets=[{"from": "tree", "file": "serving_tree"}],
                          extra_inputs=assets, exports_to_keep=2)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for path in files:
        assert (out / path).read_bytes() == (again / path).read_bytes(), path


def test_export_rejects_metric_without_best_and_asset_collisions(tmp_path):
    folder = make_checkpoints(tmp_path / "c", [1])
    with pytest.raises(BuildError, match="metric: is used only with select: best"):
        run_export(tmp_path, folder, "a", select="latest", metric="auc")
    src = tmp_path / "src"
    src.mkdir()
    (src / "fg.json").write_text("{}")
    with pytest.raises(BuildError, match="collides"):
        run_export(tmp_path, folder, "b", assets=["src"], extra_inputs={"assets": [artifact(src, "src", "source")]})


@pytest.mark.parametrize("family", ["dssm", "deepfm"])
def test_sparse_dense_split_tables_plus_dense_reproduce_the_model(tmp_path, family):
    import numpy as np
    import pyarrow.parquet as pq

    from recbuild.ml.models.features import bucketize_numpy

    config = dict(DSSM, family=family)
    folder = make_checkpoints(tmp_path / "c", [4], config=config)
    out, ctx = run_export(tmp_path, folder, "model", model=config, split="sparse_dense", formats=["torch_export"])
    assert set(ctx.meta["max_abs_diff"]) == {"torch_export", "sparse_dense/torch_export"}
    tables = json.loads((out / "sparse" / "tables.json").read_text())["tables"]
    names = [t["table"] for t in tables]
    expected = ["user_id", "age_level", "clicks", "item_id"]
    assert names == (expected if family == "dssm" else expected + [n + "__linear" for n in expected])
    # the serving recipe by hand: row lookup in the parquet table, then the dense module
    state = load_state_dict(folder / "model.ckpt-4" / "model.pt")
    model = instantiate(resolve(config), state, "ck")
    raw = example_inputs(parse_features(resolve(config)), 5, seed=9)
    fields = {}
    for table in tables:
        data = pq.read_table(out / "sparse" / f"{table['table']}.parquet")
        assert data.column_names == ["id", "vector"] and str(data.schema.field("vector").type).startswith("fixed_size_list")
        weight = np.stack(data.column("vector").to_numpy(zero_copy_only=False))
        ids = raw[table["feature"]].numpy()
        if table["pooling"] == "mean":
            rows = weight[bucketize_numpy(np.maximum(ids, 0), table["buckets"])] * (ids >= 0)[..., None]
            fields[table["table"]] = torch.from_numpy(rows.sum(1) / np.maximum((ids >= 0).sum(1), 1)[:, None]).float()
        else:
            fields[table["table"]] = torch.from_numpy(weight[bucketize_numpy(ids, table["buckets"])])
    fields["price"] = raw["price"]
    dense = torch.export.load(str(out / "dense" / "model.pt2")).module()
    got, want = dense(fields), model(raw)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_aoti_package_reproduces_eager(tmp_path):
    """AOTInductor compiles C++ (about a minute on 2 cores): slow-marked."""
    folder = make_checkpoints(tmp_path / "c", [1])
    out, ctx = run_export(tmp_path, folder, "model", formats=["aoti"])
    assert (out / "aoti_model.pt2").is_file()
    assert ctx.meta["max_abs_diff"]["aoti"] <= 1e-5
    runner = torch._inductor.aoti_load_package(str(out / "aoti_model.pt2"))
    model = instantiate(resolve(DSSM), load_state_dict(folder / "model.ckpt-1" / "model.pt"), "ck")
    batch = example_inputs(parse_features(resolve(DSSM)), 3, seed=5)
    got = runner(dict(batch))
    torch.testing.assert_close(got["item_tower_emb"], model(batch)["item_tower_emb"], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# towers kind


def test_towers_split_with_own_features_only(tmp_path):
    folder = make_checkpoints(tmp_path / "c", [3])
    export, _ = run_export(tmp_path, folder, "model")
    out, ctx = run_towers(tmp_path, export, "towers")
    user_names = ["user_id", "age_level", "clicks"]
    assert [s.name for s in load_fg(out / "user")] == user_names
    assert [s.name for s in load_fg(out / "item")] == ["item_id", "price"]
    assert read_pipeline_yaml(out / "user")["tower"] == "user"
    full = build_model(DSSM)
    full.load_state_dict(load_state_dict(export / "model.pt"))
    full.eval()
    batch = example_inputs(parse_features(resolve(DSSM)), 6, seed=3)
    expected = full(batch)
    user_batch = {k: batch[k] for k in user_names}
    item_batch = {k: batch[k] for k in ("item_id", "price")}
    for group, sub in (("user", user_batch), ("item", item_batch)):
        program = torch.export.load(str(out / group / "model.pt2"))
        # the exported user tower takes no item input at all (and the reverse)
        placeholders = [spec.arg.name for spec in program.graph_signature.input_specs
                        if spec.kind.name == "USER_INPUT"]
        assert len(placeholders) == len(sub)
        for loaded in (program.module(), torch.jit.load(str(out / group / "scripted_model.pt"))):
            got = loaded(dict(sub))
            assert list(got) == [f"{group}_tower_emb"]
            torch.testing.assert_close(got[f"{group}_tower_emb"], expected[f"{group}_tower_emb"], rtol=0, atol=1e-5)
    assert set(ctx.meta["max_abs_diff"]) == {"user", "item"}


LEAKY_MODEL = '''
from typing import Dict
import torch
from torch import Tensor, nn
from recbuild.ml.models.dssm import build as build_dssm
from recbuild.ml.models.features import bucketize


class LeakyUserTower(nn.Module):
    """A user tower that also looks at the item id (like EasyRec issue 460's shared sequence)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.item_table = nn.Embedding(500, 8)

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        emb = self.inner(inputs)["user_tower_emb"] + self.item_table(bucketize(inputs["item_id"], 500))
        return {"user_tower_emb": emb}


class ReadsButIgnores(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        unused = inputs["item_id"] * 2
        return self.inner(inputs)


def build(config):
    model = build_dssm(config)
    model.user_tower = LeakyUserTower(model.user_tower)
    return model


def build_ignoring(config):
    model = build_dssm(config)
    model.user_tower = ReadsButIgnores(model.user_tower)
    return model
'''


def test_user_tower_reading_an_item_feature_fails(tmp_path):
    (tmp_path / "leaky_models.py").write_text(textwrap.dedent(LEAKY_MODEL))
    leaky = {"entry": "leaky_models:build", "features": FEATURES, "emb_dim": 8, "hidden": [16], "tower_dim": 8}
    folder = make_checkpoints(tmp_path / "c", [1], config=leaky, search_path=tmp_path)
    export, _ = run_export(tmp_path, folder, "model", model=leaky)  # the full model is fine
    with pytest.raises(BuildError, match=r"user tower \(user_tower\) reads item feature\(s\) item_id.*460"):
        run_towers(tmp_path, export, "towers")
    # structural, not by config or by access: a read that cannot reach the output is not counted
    ignoring = resolve({**leaky, "entry": "leaky_models:build_ignoring"})
    model = build_model(ignoring, search_path=tmp_path).eval()
    specs = parse_features(ignoring)
    assert inputs_reaching_outputs(model.user_tower, example_inputs(specs, 3)) == {"user_id", "age_level", "clicks"}
    model = build_model(leaky, search_path=tmp_path).eval()
    assert "item_id" in inputs_reaching_outputs(model.user_tower, example_inputs(specs, 3))
