"""sample_data: deterministic bytes, one world across tables, learnable structure, speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recbuild.ml import sampledata
from recbuild.builders.base import BuildContext, with_schema_defaults
from recbuild.builders.sample_data import SampleDataBuilder
from recbuild.errors import BuildError

WORLD = {"n_items": 800, "n_users": 300, "n_categories": 12}


def build(tmp_path: Path, name: str, **params) -> Path:
    out = tmp_path / name
    out.mkdir()
    ctx = BuildContext(name=name, kind="sample_data", params=params, out=out, inputs={},
                       recipe_dir=tmp_path, workdir=tmp_path)
    SampleDataBuilder().run(ctx)
    assert sorted(p.name for p in out.iterdir()) == ["part-0.parquet"]
    assert ctx.meta["rows"] == pq.read_metadata(out / "part-0.parquet").num_rows
    return out / "part-0.parquet"


def test_same_params_give_identical_bytes_and_seed_changes_them(tmp_path):
    params = dict(table="interactions", split="train", rows=3000, seed=5, **WORLD)
    first = build(tmp_path, "a", **params).read_bytes()
    second = build(tmp_path, "b", **params).read_bytes()
    other_seed = build(tmp_path, "c", **{**params, "seed": 6}).read_bytes()
    assert first == second
    assert first != other_seed


def test_columns_and_types(tmp_path):
    items = pq.read_table(build(tmp_path, "items", table="items", seed=1, **WORLD))
    users = pq.read_table(build(tmp_path, "users", table="users", seed=1, **WORLD))
    inter = pq.read_table(build(tmp_path, "inter", table="interactions", rows=500, seed=1, **WORLD))
    assert items.column_names == list(sampledata.ITEM_COLUMNS)
    assert users.column_names == list(sampledata.USER_COLUMNS)
    assert inter.column_names == list(sampledata.INTERACTION_COLUMNS)
    assert str(items.schema.field("price").type) == "double"
    for table in (items, users, inter):
        for field in table.schema:
            assert str(field.type) in ("int64", "double"), field
    assert items.num_rows == WORLD["n_items"] and users.num_rows == WORLD["n_users"]
    assert len(set(items.column("item_id").to_pylist())) == WORLD["n_items"]
    # not written with dictionary encoding (recbuild's fixed writer options)
    meta = pq.read_metadata(tmp_path / "items" / "part-0.parquet")
    encodings = meta.row_group(0).column(0).encodings
    assert not any("DICTIONARY" in e for e in encodings)


def test_tables_share_one_world_and_splits_differ():
    items = sampledata.generate("items", seed=3, **WORLD)
    users = sampledata.generate("users", seed=3, **WORLD)
    train = sampledata.generate("interactions", seed=3, rows=4000, split="train", **WORLD)
    evals = sampledata.generate("interactions", seed=3, rows=4000, split="eval", **WORLD)
    row_of_item = {item: i for i, item in enumerate(items["item_id"])}
    rows = np.array([row_of_item[i] for i in train["item_id"]])  # KeyError if an id is unknown
    for column in sampledata.ITEM_COLUMNS:
        np.testing.assert_array_equal(train[column], items[column][rows])
    row_of_user = {user: i for i, user in enumerate(users["user_id"])}
    urows = np.array([row_of_user[u] for u in evals["user_id"]])
    for column in sampledata.USER_COLUMNS:
        np.testing.assert_array_equal(evals[column], users[column][urows])
    assert not np.array_equal(train["item_id"], evals["item_id"])
    assert 0.4 < train["label"].mean() < 0.6


def test_structure_is_learnable():
    """Clicks concentrate on few categories per user; exposures do not; items of a category share brands."""
    data = sampledata.generate("interactions", seed=11, rows=40000, **WORLD)

    def top4_share(mask):
        shares = []
        for user in np.unique(data["user_id"][mask])[:200]:
            cats = data["cate_id"][mask & (data["user_id"] == user)]
            if len(cats) >= 20:
                counts = np.sort(np.unique(cats, return_counts=True)[1])[::-1]
                shares.append(counts[:4].sum() / counts.sum())
        return float(np.mean(shares))

    clicks, exposures = data["label"] == 1, data["label"] == 0
    assert top4_share(clicks) > 0.8
    assert top4_share(clicks) > top4_share(exposures) + 0.2
    items = sampledata.generate("items", seed=11, **WORLD)
    for cate in np.unique(items["cate_id"])[:5]:
        brands = items["brand"][items["cate_id"] == cate]
        assert brands.max() - brands.min() < sampledata.BRANDS_PER_CATEGORY
    # Zipf-skewed popularity: the top 5% of items take a large share of clicks.
    counts = np.sort(np.unique(data["item_id"][clicks], return_counts=True)[1])[::-1]
    assert counts[: len(counts) // 20].sum() / counts.sum() > 0.2


def test_200k_rows_well_under_a_second():
    sampledata.make_world(99)  # world is cached per params; time the table itself as well
    start = time.perf_counter()
    table = sampledata.generate("interactions", seed=99, rows=200_000)
    assert time.perf_counter() - start < 1.0
    assert len(table["label"]) == 200_000


def test_bad_params_are_clear_errors(tmp_path):
    with pytest.raises(BuildError, match="rows"):
        build(tmp_path, "too_many", table="items", rows=900, seed=1, **WORLD)
    with pytest.raises(BuildError, match="split"):
        build(tmp_path, "split_on_items", table="items", split="eval", seed=1, **WORLD)
    params = with_schema_defaults(SampleDataBuilder.schema, {"table": "items", "n_items": 5, "n_categories": 9})
    problems = SampleDataBuilder().check(params)
    assert ("n_categories", "must not exceed n_items") in problems
