"""``executor: ray`` (recbuild/ml/ray_executor.py): same bytes as the local executor, same key, clear errors.

One local Ray (2 CPUs) is shared by the module: starting Ray costs seconds. The executor reuses a
Ray that is already initialised in the process, so the CLI test below runs on it too.
"""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recbuild.builders.embeddings import RAY_MISSING, ItemEmbeddingsBuilder, UserEmbeddingsBuilder
from recbuild.errors import BuildError, InputError

ray = pytest.importorskip("ray", reason="needs Ray (the ray extra: pip install -e '.[ray]')")

from test_predictor import (ITEM_SPECS, export_tower, item_table, read_output,  # noqa: E402
                            run_builder, source, user_table, write_parquet)
from test_predictor import towers  # noqa: E402,F401  (module-scoped fixture)


@pytest.fixture(scope="module")
def ray_session():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    yield
    if started:
        ray.shutdown()


def _parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}


def _items_multi_file(folder: Path) -> pa.Table:
    """700 rows in 3 files of uneven size, row groups of 64 (not a multiple of the batch), and
    one duplicate id across files (dropped with on_duplicate: first)."""
    table = item_table(700)
    ids = table.column("item_id").to_numpy().copy()
    ids[530] = ids[17]
    table = table.set_column(0, "item_id", pa.array(ids))
    for name, lo, n in (("a", 0, 250), ("b", 250, 200), ("c", 450, 250)):
        write_parquet(table.slice(lo, n), folder / f"{name}.parquet", row_group_size=64)
    return table


@pytest.mark.parametrize("task_rows", [100, 1 << 16])
def test_ray_writes_the_local_bytes(ray_session, towers, tmp_path, task_rows):
    _items_multi_file(tmp_path / "items")
    params = dict(id_column="item_id", reserved_columns=["title", "brand"], batch_size=48,
                  rows_per_file=300, on_duplicate="first")
    data = source("items", tmp_path / "items")
    local = run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "local", **params)
    on_ray = run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "ray", executor="ray",
                         ray={"address": "local", "concurrency": 2, "batch_size": task_rows}, **params)
    assert local.meta == on_ray.meta and local.meta["rows"] == 699 and len(local.meta["files"]) == 3
    assert _parts(tmp_path / "local") == _parts(tmp_path / "ray")  # file bytes, hence values and order
    got, want = read_output(tmp_path / "ray"), read_output(tmp_path / "local")
    assert got.equals(want)


def test_ray_user_embeddings_string_ids_and_sequences(ray_session, towers, tmp_path):
    table = user_table(130)
    write_parquet(table.slice(0, 70), tmp_path / "u" / "a.parquet")
    write_parquet(table.slice(70), tmp_path / "u" / "b.parquet")
    data = source("users", tmp_path / "u")
    params = dict(id_column="user_id", reserved_columns=["uid_int"], batch_size=32,
                  embedding_format="string")
    run_builder(UserEmbeddingsBuilder, towers, data, tmp_path / "local", **params)
    run_builder(UserEmbeddingsBuilder, towers, data, tmp_path / "ray", executor="ray",
                ray={"address": "local", "batch_size": 64}, **params)
    assert _parts(tmp_path / "local") == _parts(tmp_path / "ray")


def test_error_inside_an_actor_is_the_local_error(ray_session, towers, tmp_path):
    table = item_table(200)
    prices = table.column("price").to_numpy().copy()
    prices[133] = np.inf
    data = source("items", write_parquet(table.set_column(2, "price", pa.array(prices)),
                                         tmp_path / "i.parquet"))
    with pytest.raises(InputError, match=r"NaN/inf .* row 133 of i.parquet.*'price'") as info:
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="item_id",
                    batch_size=16, executor="ray", ray={"address": "local", "batch_size": 32})
    assert type(info.value) is InputError  # the actor's own error, not Ray's wrapper
    assert "Traceback" not in str(info.value)


def test_a_dying_worker_is_one_build_error(ray_session, towers, tmp_path):
    data = source("items", write_parquet(item_table(100), tmp_path / "i.parquet"))
    (tmp_path / "crash").mkdir()
    for f in (towers / "item").iterdir():
        (tmp_path / "crash" / "item").mkdir(exist_ok=True)
        (tmp_path / "crash" / "item" / f.name).write_bytes(f.read_bytes())
    # A tower folder whose model crashes the worker process: the actor loads fg.json, then dies.
    (tmp_path / "crash" / "item" / "model.pt2").write_bytes(b"not a torch.export archive")
    with pytest.raises(BuildError, match="model.pt2: not a readable torch.export archive"):  # on the driver
        run_builder(ItemEmbeddingsBuilder, tmp_path / "crash", data, tmp_path / "out",
                    id_column="item_id", executor="ray", ray={"address": "local"})

    from recbuild.ml import ray_executor

    class Dying(ray_executor.TowerActor):  # local class: pickled by value into the actor process
        def embed_window(self, w):
            if w.start > 0:  # the second window kills the worker process
                import os
                os._exit(3)
            return super().embed_window(w)

    with pytest.raises(BuildError, match="Ray worker died") as info:
        ray_executor.predict_embeddings_ray(
            towers / "item", str(data.path), tmp_path / "out2", ray_options={"batch_size": 32},
            output_key="item_tower_emb", id_column="item_id", batch_size=16, actor_cls=Dying)
    assert "Traceback" not in str(info.value)


# -- through the CLI -------------------------------------------------------------------------------
RECIPE = """
version: 1
name: ray_switch
workdir: build
sources:
  towers: {path: towers}
  items: {path: items}
artifacts:
  item_embeddings:
    kind: item_embeddings
    towers: towers
    items: items
    id_column: item_id
    reserved_columns: [title]
    batch_size: 40
    EXTRA
"""


def _digest(project) -> tuple[str, str]:
    import json

    manifest = json.loads(project.read("build/item_embeddings/MANIFEST.json"))
    return manifest["digest"], manifest["key"]


def test_switching_executor_keeps_key_and_content(ray_session, project):
    export_tower(project.path / "towers" / "item", ITEM_SPECS, "item_tower_emb", seed=1)
    table = item_table(300)
    write_parquet(table.slice(0, 170), project.path / "items" / "a.parquet")
    write_parquet(table.slice(170), project.path / "items" / "b.parquet")
    project.recipe(RECIPE.replace("EXTRA", "executor: local"))
    first = project.run("make")
    assert first.code == 0, first.out + first.err
    local = _digest(project)
    project.recipe(RECIPE.replace("EXTRA", "executor: ray\n    ray: {address: local, concurrency: 2}"))
    again = project.run("make")
    assert again.code == 0 and again.built == []  # not stale: the executor is not in the key
    forced = project.run("make", "-B")
    assert forced.code == 0 and forced.built == ["item_embeddings"], forced.out + forced.err
    assert _digest(project) == local


def test_missing_ray_fails_validation(project, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "ray" else real(name, *a, **k))
    project.write("items/a.parquet", "")
    project.recipe(RECIPE.replace("EXTRA", "executor: ray") + f"# {uuid.uuid4().hex}\n")
    result = project.run("validate")
    assert result.code == 2
    assert RAY_MISSING in result.err + result.out
    assert 'pip install "recbuild[ray]"' in result.err + result.out
    assert "artifacts.item_embeddings.executor" in result.err + result.out


def test_bad_ray_settings_are_recipe_errors(project):
    project.recipe(RECIPE.replace("EXTRA", "executor: ray\n    ray: {adress: local}"))
    result = project.run("validate")
    assert result.code == 2 and "adress" in result.err + result.out
