"""recbuild's exports in TorchEasyRec's predict contract, without tzrec: the module that takes both
call styles, pipeline.config / model_acc.json text, the export-time refusals and what export and
towers write (tests/test_tzrec_pipeline.py runs the real tzrec.predict over them)."""

from __future__ import annotations

import json

import pytest
import torch

from recbuild.ml import tzrec_contract
from recbuild.errors import BuildError, InputError
from recbuild.ml.exporter import save_torchscript
from recbuild.ml.models import build_model, resolve
from recbuild.ml.models.features import example_inputs, parse_features

from test_exporter import make_checkpoints, run_export, run_towers

FLAT = [  # what FG_NONE expresses: int64 ids and numerics, each read from the column named like it
    {"name": "user_id", "group": "user", "buckets": 500},
    {"name": "age_level", "group": "user", "buckets": 10},
    {"name": "item_id", "group": "item", "buckets": 500},
    {"name": "price", "type": "numeric", "group": "item"},
]
DSSM = {"family": "dssm", "features": FLAT, "emb_dim": 8, "hidden": [16], "tower_dim": 8}
DEEPFM = {"family": "deepfm", "features": FLAT, "emb_dim": 8, "hidden": [16]}


def model_of(config):
    torch.manual_seed(0)
    resolved = resolve(config)
    return build_model(resolved).eval(), parse_features(resolved)


def scripted(tmp_path, module, specs):
    save_torchscript(tzrec_contract.callable_for(module, specs).eval(), tmp_path / "scripted_model.pt")
    return torch.jit.load(str(tmp_path / "scripted_model.pt"))


# -- the module taking both call styles --------------------------------------------------------------
@pytest.mark.parametrize("config", [DSSM, DEEPFM], ids=["dssm", "deepfm"])
def test_both_call_styles_give_the_eager_outputs(tmp_path, config):
    model, specs = model_of(config)
    loaded = scripted(tmp_path, model, specs)
    batch = example_inputs(specs, 9, seed=3)
    data = tzrec_contract.tzrec_inputs(batch, specs)
    assert sorted(data) == ["age_level.lengths", "age_level.values", "item_id.lengths", "item_id.values",
                            "price.values", "user_id.lengths", "user_id.values"]
    assert data["price.values"].shape == (9, 1) and data["item_id.lengths"].dtype == torch.int64
    with torch.no_grad():
        expected = model(dict(batch))
        ours = loaded(dict(batch))
        theirs = loaded(data, torch.device("cpu"))  # as tzrec.predict calls it: model(data, device)
        also = loaded(data)
    assert sorted(ours) == sorted(theirs) == sorted(expected)
    for key in expected:
        assert torch.equal(ours[key], theirs[key]) and torch.equal(theirs[key], also[key]), key
        torch.testing.assert_close(theirs[key], expected[key], rtol=0, atol=1e-6)


def test_a_row_without_exactly_one_id_is_an_error_naming_the_feature(tmp_path):
    model, specs = model_of(DEEPFM)
    loaded = scripted(tmp_path, model, specs)
    data = tzrec_contract.tzrec_inputs(example_inputs(specs, 3), specs)
    # tzrec's FG_NONE reader drops a null id from values and gives the row length 0
    data["item_id.values"] = data["item_id.values"][:2]
    data["item_id.lengths"] = torch.tensor([1, 0, 1])
    with pytest.raises(torch.jit.Error, match="id feature 'item_id' needs exactly one id per row"):
        loaded(data, torch.device("cpu"))
    data = tzrec_contract.tzrec_inputs(example_inputs(specs, 3), specs)
    data["price.values"] = data["price.values"].reshape(-1)
    with pytest.raises(torch.jit.Error, match="raw feature 'price' must arrive as float32 \\[B, 1\\]"):
        loaded(data, torch.device("cpu"))


# -- pipeline.config and model_acc.json ---------------------------------------------------------------
def test_pipeline_config_text():
    specs = parse_features(resolve(DEEPFM))
    text = tzrec_contract.pipeline_config_text([specs[0], specs[3]])
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == [
        "data_config {", "  batch_size: 1024", "  dataset_type: ParquetDataset", "  fg_mode: FG_NONE",
        "  num_workers: 1", "}",
        "feature_configs {", "  id_feature {", '    feature_name: "user_id"', '    expression: "user:user_id"',
        "    embedding_dim: 8", "    value_dim: 1", '    fg_value_type: "int64"', "  }", "}",
        "feature_configs {", "  raw_feature {", '    feature_name: "price"', '    expression: "item:price"',
        "  }", "}"]
    assert "hash_bucket_size" not in body and "model_config" not in text
    assert text == tzrec_contract.pipeline_config_text([specs[0], specs[3]])  # deterministic text
    assert tzrec_contract._quote('a"b\\c') == '"a\\"b\\\\c"'
    assert json.loads(tzrec_contract.MODEL_ACC_TEXT) == {"SPARSE_INT64": "1"}


# -- what FG_NONE cannot express ----------------------------------------------------------------------
def test_unsupported_features_name_the_feature_and_the_fix():
    features = FLAT + [
        {"name": "clicks", "type": "sequence", "group": "user", "buckets": 50, "max_len": 3},
        {"name": "shop", "group": "item", "buckets": 50, "value_type": "string"},
        {"name": "brand_hash", "group": "item", "buckets": 50, "column": "brand"},
        {"name": "cate_a", "group": "item", "buckets": 50, "column": "cate"},
        {"name": "cate_b", "group": "item", "buckets": 50, "column": "cate"},
    ]
    specs = parse_features(resolve({"family": "deepfm", "features": features}))
    problems = tzrec_contract.unsupported(specs)
    assert len(problems) == 4
    joined = "\n".join(problems)
    assert "features 'cate_a', 'cate_b' all read column 'cate'" in joined
    assert "feature 'clicks' is a sequence" in joined and "drop it from model.features" in joined
    assert "feature 'shop' has value_type: string" in joined and "value_type: int64" in joined
    assert "feature 'brand_hash' reads column 'brand'" in joined and "name the feature 'brand'" in joined
    assert all("tzrec_files: off" in p for p in problems)
    assert tzrec_contract.unsupported(parse_features(resolve(DEEPFM))) == []
    with pytest.raises(BuildError, match="tzrec_files: required, but .* cannot feed the model: .*'clicks'"):
        tzrec_contract.plan("required", specs, ["torchscript"], "the model")
    assert "'clicks'" in tzrec_contract.plan("auto", specs, ["torchscript"], "the model")
    assert tzrec_contract.plan("off", [], [], "x") == "tzrec_files: off"
    assert "add torchscript to formats" in tzrec_contract.plan("auto", parse_features(resolve(DEEPFM)),
                                                               ["torch_export"], "the model")


# -- export and towers --------------------------------------------------------------------------------
def test_export_writes_tzrec_files_verified_both_ways_and_deterministic(tmp_path):
    folder = make_checkpoints(tmp_path / "c", [1, 2], config=DEEPFM)
    out, ctx = run_export(tmp_path, folder, "model", model=DEEPFM, exports_to_keep=2)
    facts = ctx.meta["tzrec"]
    assert facts["written"] and facts["files"] == ["scripted_model.pt", "pipeline.config", "model_acc.json",
                                                   "fg.json"]
    assert set(facts["max_abs_diff"]) == {"recbuild_call", "tzrec_call", "between_calls"}
    assert facts["max_abs_diff"]["between_calls"] == 0.0
    for folder_name in (out, out / "history" / "1"):
        for name in ("pipeline.config", "model_acc.json", "fg.json", "scripted_model.pt", "model.pt2"):
            assert (folder_name / name).is_file(), (folder_name, name)
    config = (out / "pipeline.config").read_text()
    assert config.count("feature_configs {") == 4 and "fg_mode: FG_NONE" in config
    assert (out / "model_acc.json").read_text() == '{\n    "SPARSE_INT64": "1"\n}'
    # the published file, called as tzrec.predict calls it, reproduces the checkpoint's eager model
    model, specs = model_of(DEEPFM)
    model.load_state_dict(torch.load(str(folder / "model.ckpt-2" / "model.pt"), weights_only=True))
    batch = example_inputs(specs, 5, seed=8)
    with torch.no_grad():
        got = torch.jit.load(str(out / "scripted_model.pt"))(tzrec_contract.tzrec_inputs(batch, specs),
                                                             torch.device("cpu"))
        torch.testing.assert_close(got["probs"], model(batch)["probs"], rtol=0, atol=1e-6)
    again, _ = run_export(tmp_path, folder, "again", model=DEEPFM, exports_to_keep=2)
    for path in sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()):
        assert (out / path).read_bytes() == (again / path).read_bytes(), path


def test_towers_write_tzrec_files_per_tower(tmp_path):
    folder = make_checkpoints(tmp_path / "c", [1], config=DSSM)
    export, _ = run_export(tmp_path, folder, "model", model=DSSM)
    out, ctx = run_towers(tmp_path, export, "towers")
    assert ctx.meta["tzrec"]["user"]["written"] and ctx.meta["tzrec"]["item"]["written"]
    assert 'feature_name: "price"' in (out / "item" / "pipeline.config").read_text()
    assert '"user_id"' in (out / "user" / "pipeline.config").read_text()
    assert "item" not in (out / "user" / "pipeline.config").read_text().split("data_config", 1)[1]
    model, specs = model_of(DSSM)
    model.load_state_dict(torch.load(str(export / "model.pt"), weights_only=True))
    batch = example_inputs([s for s in specs if s.group == "item"], 6, seed=2)
    item_specs = [s for s in specs if s.group == "item"]
    with torch.no_grad():
        got = torch.jit.load(str(out / "item" / "scripted_model.pt"))(
            tzrec_contract.tzrec_inputs(batch, item_specs), torch.device("cpu"))
        torch.testing.assert_close(got["item_tower_emb"], model.item_tower(batch)["item_tower_emb"],
                                   rtol=0, atol=1e-6)


def test_auto_skips_what_fg_none_cannot_feed_and_required_fails(tmp_path):
    """tests/test_exporter.py's model has a sequence feature on the user side."""
    from test_exporter import DSSM as WITH_SEQUENCE

    folder = make_checkpoints(tmp_path / "c", [1])
    export, ctx = run_export(tmp_path, folder, "model")
    assert ctx.meta["tzrec"]["written"] is False and "feature 'clicks' is a sequence" in ctx.meta["tzrec"]["reason"]
    assert not (export / "pipeline.config").exists() and not (export / "model_acc.json").exists()
    towers, ctx = run_towers(tmp_path, export, "towers")
    assert ctx.meta["tzrec"]["user"]["written"] is False and ctx.meta["tzrec"]["item"]["written"] is True
    assert (towers / "item" / "pipeline.config").is_file() and not (towers / "user" / "pipeline.config").exists()
    with pytest.raises(BuildError, match="tzrec_files: required, but .* cannot feed the model: feature 'clicks'"):
        run_export(tmp_path, folder, "strict", tzrec_files="required")
    off, ctx = run_export(tmp_path, make_checkpoints(tmp_path / "d", [1], config=DEEPFM), "off", model=DEEPFM,
                          tzrec_files="off")
    assert ctx.meta["tzrec"] == {"written": False, "reason": "tzrec_files: off"}
    assert not (off / "pipeline.config").exists()
    # off: scripted_model.pt is recbuild's own module, as before
    plain = torch.jit.load(str(off / "scripted_model.pt"))
    assert not hasattr(plain, "from_tzrec")
    assert WITH_SEQUENCE["features"][2]["type"] == "sequence"


def test_required_without_torchscript_is_a_recipe_error(project):
    project.recipe("""
        version: 1
        extends: deepfm
        artifacts:
          model: {kind: export, checkpoints: checkpoints, formats: [torch_export], tzrec_files: required}
    """)
    result = project.run("validate")
    assert result.code == 2, result.out + result.err
    assert "artifacts.model.tzrec_files: required needs torchscript in formats" in result.err
    assert "Traceback" not in result.err


def test_tzrec_predict_over_an_export_without_tzrec_files_says_why(tmp_path):
    """Checked before tzrec is looked for (precheck): the reason comes from the export's manifest."""
    from recbuild.builders.base import BuildContext, InputArtifact
    from recbuild.builders.tzrec_training import TzrecPredict

    folder = make_checkpoints(tmp_path / "c", [1])
    export, export_ctx = run_export(tmp_path, folder, "model")  # a sequence feature: no tzrec files
    towers, towers_ctx = run_towers(tmp_path, export, "towers")

    def precheck(path, kind, meta, tower=None):
        model = InputArtifact("model", kind, path, (), {"meta": meta})
        data = InputArtifact("items", "source", tmp_path, (), {})
        ctx = BuildContext(name="tz", kind="tzrec_predict", params={}, out=tmp_path / "tz", workdir=tmp_path,
                           inputs={"model": model, "data": data}, recipe_dir=tmp_path)
        return TzrecPredict().precheck(ctx, {"model": "model", "data": "items", "tower": tower})

    with pytest.raises(InputError, match=r"model 'model' has no pipeline.config or model_acc.json, which "
                                        r"tzrec.predict loads: recbuild's export wrote no TorchEasyRec "
                                        r"files \(feature 'clicks' is a sequence"):
        precheck(export, "export", export_ctx.meta)
    with pytest.raises(InputError, match=r"has no user/pipeline.config .*towers wrote no TorchEasyRec files "
                                        r"\(feature 'clicks' is a sequence"):
        precheck(towers, "towers", towers_ctx.meta, "user")
    precheck(towers, "towers", towers_ctx.meta, "item")  # the item tower has them
