"""Models: hashing, feature layer, dssm/deepfm contracts, export formats, schema, entry models."""

from __future__ import annotations

import textwrap

import jsonschema
import numpy as np
import pytest
import torch

from recbuild.ml.exporter import verify_formats, write_formats
from recbuild.ml.models import ModelConfigError, build_model, resolve, task_of
from recbuild.ml.models.features import (EmbeddingLayer, bucketize, bucketize_numpy, example_inputs, mix64,
                                      parse_features)
from recbuild.ml.models.schema import MODEL_SCHEMA, validate

FEATURES = [
    {"name": "user_id", "group": "user", "buckets": 1000},
    {"name": "age_level", "group": "user", "buckets": 10},
    {"name": "clicks", "type": "sequence", "group": "user", "buckets": 500, "max_len": 6},
    {"name": "item_id", "group": "item", "buckets": 1000},
    {"name": "price", "type": "numeric", "group": "item"},
]


def model_of(family, **extra):
    torch.manual_seed(0)
    config = resolve({"family": family, "features": FEATURES, "hidden": [16], **extra})
    return build_model(config).eval(), parse_features(config)


def test_bucketize_matches_numpy_and_stays_in_range():
    ids = torch.tensor([0, 1, 2, -1, -(2**63), 2**63 - 1, 123456789012345], dtype=torch.int64)
    for buckets in (1, 7, 1000, 2**31 + 11):
        got = bucketize(ids, buckets)
        np.testing.assert_array_equal(got.numpy(), bucketize_numpy(ids.numpy(), buckets))
        assert int(got.min()) >= 0 and int(got.max()) < buckets
    # splitmix64 reference: its first output for state 0 is mix(0x9E3779B97F4A7C15) = 0xE220A8397B1DCDAF
    golden = torch.tensor([0x9E3779B97F4A7C15 - 2**64])
    assert int(mix64(golden)[0]) == 0xE220A8397B1DCDAF - 2**64
    assert int(mix64(torch.tensor([1]))[0]) == 0x5692161D100B05E5
    # neighbouring ids spread over buckets
    spread = bucketize(torch.arange(10000), 100)
    assert len(torch.unique(spread)) == 100


def test_sequence_mean_pools_real_positions_only():
    specs = parse_features({"features": [FEATURES[2]], "emb_dim": 4})
    layer = EmbeddingLayer(specs)
    seq = torch.tensor([[5, 9, -1, -1, -1, -1], [-1] * 6, [5, -1, -1, -1, -1, -1]])
    pooled = layer({"clicks": seq})["clicks"]
    table = layer.lookups["clicks"].embedding.weight
    rows = bucketize(torch.tensor([5, 9]), 500)
    torch.testing.assert_close(pooled[0], table[rows].mean(0))
    torch.testing.assert_close(pooled[1], torch.zeros(4))
    torch.testing.assert_close(pooled[2], table[rows[0]])


def test_dssm_contract():
    model, specs = model_of("dssm", tower_dim=8)
    out = model(example_inputs(specs, 5))
    assert out["user_tower_emb"].shape == (5, 8) and out["item_tower_emb"].shape == (5, 8)
    torch.testing.assert_close(out["user_tower_emb"].norm(dim=1), torch.ones(5))
    torch.testing.assert_close(out["item_tower_emb"].norm(dim=1), torch.ones(5))
    # each tower reads only its group
    user_only = {k: v for k, v in example_inputs(specs, 5).items() if k in ("user_id", "age_level", "clicks")}
    torch.testing.assert_close(model.user_tower(user_only)["user_tower_emb"], out["user_tower_emb"])
    assert task_of(resolve({"family": "dssm", "features": FEATURES})) == "retrieval"


def test_deepfm_contract():
    model, specs = model_of("deepfm")
    out = model(example_inputs(specs, 5))
    assert out["logits"].shape == (5,) and out["probs"].shape == (5,)
    torch.testing.assert_close(out["probs"], torch.sigmoid(out["logits"]))
    with pytest.raises(ModelConfigError, match="emb_dim"):
        build_model({"family": "deepfm", "features": [dict(FEATURES[0], dim=3), FEATURES[3]]})


@pytest.mark.parametrize("family", ["dssm", "deepfm"])
def test_exported_formats_reproduce_eager_with_any_batch(tmp_path, family):
    model, specs = model_of(family)
    write_formats(model, example_inputs(specs, 4), tmp_path, ["torch_export", "torchscript"])
    for batch in (1, 7, 33):
        diffs = verify_formats(model, example_inputs(specs, batch, seed=batch), tmp_path,
                               ["torch_export", "torchscript"], tolerance=1e-5)
        assert set(diffs) == {"torch_export", "torchscript"}
        assert max(diffs.values()) <= 1e-5
    # trace-time batch size is not baked in: the program's batch dim is symbolic
    program = torch.export.load(str(tmp_path / "model.pt2"))
    shapes = [n.meta["val"].shape for n in program.graph.nodes if n.op == "placeholder" and n.name.startswith("inputs")]
    assert shapes and all(not isinstance(s[0], int) for s in shapes)


def test_model_schema_accepts_good_and_rejects_bad_configs():
    validator = jsonschema.Draft202012Validator(MODEL_SCHEMA)
    good = {"family": "dssm", "features": FEATURES, "emb_dim": 8, "hidden": [32], "temperature": 0.1}
    assert validate(good) == []
    validator.validate({"entry": "mypkg.models:build", "features": FEATURES, "options": {"x": 1}})
    bad = [
        {**good, "tempreature": 0.1},  # unknown key
        {**good, "entry": "a.b:c"},  # family and entry
        {"features": FEATURES},  # neither
        {"family": "dssm", "features": [{"name": "item_id", "group": "item"}]},  # id without buckets
        {"family": "dssm", "features": [{"name": "s", "type": "sequence", "group": "user", "buckets": 3}]},
        {"family": "dssm", "features": [{"name": "p", "type": "numeric", "group": "item", "buckets": 3}]},
        {"family": "dssm", "features": [{"name": "x", "group": "both", "buckets": 3}]},
        {"family": "nope", "features": FEATURES},
    ]
    for config in bad:
        assert validate(config), config
    assert validate({**good, "tempreature": 0.1})[0].startswith("model:")
    assert validate({**good, "entry": "a.b:c"})[0] == "model: set either `family` or `entry`, not both"
    twice = {"family": "dssm", "features": FEATURES + [FEATURES[0]]}
    assert "model.features[5].name: feature 'user_id' is already declared at model.features[0]" in validate(twice)
    no_items = {"family": "dssm", "features": FEATURES[:3]}
    assert validate(no_items) == ["model.features: dssm needs at least one item feature"]


def test_resolve_fills_defaults():
    resolved = resolve({"family": "dssm", "features": [{"name": "item_id", "group": "item", "buckets": 9}]})
    assert resolved["emb_dim"] == 16 and resolved["hidden"] == [128, 64] and resolved["temperature"] == 0.05
    assert resolved["features"][0] == {"name": "item_id", "group": "item", "buckets": 9, "type": "id",
                                       "column": "item_id", "dim": 16, "value_type": "int64"}


def test_entry_model_from_the_recipe_folder(tmp_path):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        from recbuild.ml.models.dssm import build as build_dssm

        def build(config):
            return build_dssm(dict(config, temperature=0.2))

        def not_a_module(config):
            return 42
    """))
    config = {"entry": "my_models:build", "features": FEATURES}
    model = build_model(config, search_path=tmp_path)
    assert model.temperature == 0.2
    assert task_of(resolve(config), model) == "retrieval"
    with pytest.raises(ModelConfigError, match="not a torch.nn.Module"):
        build_model({"entry": "my_models:not_a_module", "features": FEATURES}, search_path=tmp_path)
    with pytest.raises(ModelConfigError, match="cannot import"):
        build_model({"entry": "no_such_pkg.mod:build", "features": FEATURES}, search_path=tmp_path)
    with pytest.raises(ModelConfigError, match="no callable"):
        build_model({"entry": "my_models:missing", "features": FEATURES}, search_path=tmp_path)
