"""faiss_index builder: exact search equals numpy, approximate types reach a recall, id_mapping
round-trips, bytes repeat, and bad inputs fail with a clear InputError."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbuild.builders.base import BuildContext, InputArtifact
from recbuild.builders.faiss_index import FaissIndexBuilder
from recbuild.errors import BuildError, InputError
from recbuild.retrieval import faiss_index as fi

DIM = 16


def clustered(n: int, dim: int = DIM, seed: int = 0, centres: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cent = rng.standard_normal((centres, dim)).astype(np.float32)
    x = cent[rng.integers(0, centres, n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embeddings(folder: Path, ids, vectors: np.ndarray, fmt: str = "fixed",
                     parts: int = 1, id_column: str = "item_id", column: str = "item_tower_emb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n, dim = vectors.shape
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for p in range(parts):
        lo, hi = bounds[p], bounds[p + 1]
        v = vectors[lo:hi]
        if fmt == "fixed":
            emb = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), pa.float32()), dim)
        elif fmt == "list_double":
            emb = pa.array(v.astype(np.float64).tolist(), pa.list_(pa.float64()))
        else:
            emb = pa.array([",".join(repr(float(x)) for x in row) for row in v], pa.string())
        table = pa.table({id_column: pa.array(list(ids[lo:hi])), column: emb})
        pq.write_table(table, folder / f"part-{p}.parquet", row_group_size=97)
    return folder


def make_ctx(tmp: Path, params: dict, embeddings: Path, name: str = "index",
             threads: int | None = None) -> BuildContext:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{name}-"))  # like the engine's tmp folder
    files = tuple(sorted(embeddings.glob("*.parquet")))
    inputs = {"embeddings": InputArtifact("item_embeddings", "item_embeddings", embeddings, files, {})}
    return BuildContext(name=name, kind="faiss_index", params={"embeddings": "item_embeddings", **params},
                        out=out, inputs=inputs, recipe_dir=tmp, workdir=tmp, threads=threads)


def build(tmp: Path, params: dict, embeddings: Path, name: str = "index", threads: int | None = None) -> Path:
    ctx = make_ctx(tmp, params, embeddings, name, threads)
    FaissIndexBuilder().run(ctx)
    return ctx.out


def exact_top(x: np.ndarray, q: np.ndarray, k: int, metric: str = "ip") -> np.ndarray:
    if metric == "ip":
        scores = q @ x.T
    else:
        scores = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_numpy_exact_search(tmp_path, metric):
    x = clustered(500)
    ids = np.arange(1000, 1500)
    emb = write_embeddings(tmp_path / "emb", ids, x, parts=3)
    out = build(tmp_path, {"index_type": "Flat", "metric": metric, "batch_size": 64}, emb)
    index, mapping = fi.load_index(out)
    q = clustered(20, seed=7)
    _, got = fi.search(index, q, 10)
    want = exact_top(x, q, 10, metric)
    assert np.array_equal(got, want)
    assert list(mapping[got[0]]) == [str(i) for i in ids[want[0]]]


def test_id_mapping_round_trip_and_meta(tmp_path):
    x = clustered(300)
    ids = [f"item-{i:04d}" for i in range(300)]
    emb = write_embeddings(tmp_path / "emb", ids, x, parts=2, fmt="list_double")
    out = build(tmp_path, {"index_type": "Flat"}, emb)
    lines = (out / "id_mapping").read_text(encoding="utf-8").split("\n")
    assert lines[:-1] == ids and lines[-1] == ""
    meta = json.loads((out / "index_meta.json").read_text())
    assert meta["type"] == "Flat" and meta["metric"] == "ip" and meta["dim"] == DIM and meta["count"] == 300
    assert list(meta) == sorted(meta)
    index, mapping = fi.load_index(out)
    # faiss id i holds row i: its stored vector equals the table row, and id_mapping names it.
    assert np.array_equal(index.reconstruct(123), x[123]) and mapping[123] == ids[123]


@pytest.mark.parametrize("fmt", ["fixed", "list_double", "string"])
def test_all_embedding_formats_give_the_same_index(tmp_path, fmt):
    x = clustered(200)
    emb = write_embeddings(tmp_path / "emb", np.arange(200), x, fmt=fmt)
    out = build(tmp_path, {"index_type": "Flat"}, emb)
    index, _ = fi.load_index(out)
    np.testing.assert_allclose(fi.vectors_of(index), x, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("index_type,params,min_recall", [
    ("IVFFlat", {"nlist": 16, "nprobe": 4}, 0.80),
    ("HNSWFlat", {"M": 16, "ef_construction": 64, "ef_search": 64}, 0.90),
    ("IVFPQ", {"nlist": 8, "m": 8, "nbits": 6, "nprobe": 4}, 0.40),
])
def test_approximate_types_reach_recall(tmp_path, index_type, params, min_recall):
    x = clustered(3000)
    emb = write_embeddings(tmp_path / "emb", np.arange(3000), x, parts=2)
    out = build(tmp_path, {"index_type": index_type, **params}, emb)
    index, _ = fi.load_index(out)
    assert fi.index_kind(index) == index_type
    q = clustered(100, seed=3)
    _, got = fi.search(index, q, 10)  # nprobe / efSearch stored in the index are used
    want = exact_top(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
    assert recall >= min_recall, recall
    # A wider search must not be worse (and reaches exact for IVFFlat when every list is probed).
    if index_type == "IVFFlat":
        _, all_lists = fi.search(index, q, 10, nprobe=16)
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(all_lists, want)]) == 1.0


@pytest.mark.parametrize("index_type", ["Flat", "IVFFlat", "HNSWFlat", "IVFPQ"])
def test_bytes_repeat_with_any_thread_count(tmp_path, index_type, monkeypatch):
    # the load-based limiter must not quietly turn the 2-thread build into a 1-thread one
    monkeypatch.setattr(fi, "threads_for_load", lambda requested: requested)
    x = clustered(1200)
    emb = write_embeddings(tmp_path / "emb", np.arange(1200), x, parts=2)
    params = {"index_type": index_type, "nbits": 4, "batch_size": 500}
    if index_type in ("IVFFlat", "IVFPQ"):
        params["nlist"] = 8
    if index_type == "IVFPQ":
        params["m"] = 4
    a = build(tmp_path, params, emb, "a", threads=1)
    b = build(tmp_path, params, emb, "b", threads=2)
    for name in ("faiss_index", "id_mapping", "index_meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_training_sample_is_seeded_and_bounded(tmp_path):
    x = clustered(2000)
    emb = write_embeddings(tmp_path / "emb", np.arange(2000), x)
    a = build(tmp_path, {"index_type": "IVFFlat", "nlist": 8, "train_size": 400, "seed": 1}, emb, "a")
    b = build(tmp_path, {"index_type": "IVFFlat", "nlist": 8, "train_size": 400, "seed": 2}, emb, "b")
    assert json.loads((a / "index_meta.json").read_text())["train_size"] == 400
    assert (a / "faiss_index").read_bytes() != (b / "faiss_index").read_bytes()
    pos = fi.sample_positions(2000, 400, 1)
    assert len(np.unique(pos)) == 400 and np.all(np.diff(pos) > 0)
    assert np.array_equal(pos, fi.sample_positions(2000, 400, 1))


def _expect_input_error(tmp_path, params, emb, *words):
    with pytest.raises(InputError) as info:
        build(tmp_path, params, emb)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_nan_and_inf_rejected(tmp_path):
    x = clustered(50)
    x[17, 3] = np.nan
    _expect_input_error(tmp_path, {"index_type": "Flat"},
                        write_embeddings(tmp_path / "emb", np.arange(50), x), "row 17", "NaN")


def test_dimension_mismatch_rejected(tmp_path):
    rows = [[0.1] * DIM] * 5 + [[0.1] * (DIM + 1)]
    folder = tmp_path / "emb"
    folder.mkdir()
    pq.write_table(pa.table({"item_id": list(range(6)), "item_tower_emb": rows}), folder / "part-0.parquet")
    _expect_input_error(tmp_path, {"index_type": "Flat"}, folder, "row 5", "dimension")


def test_empty_table_and_large_nlist_and_duplicates(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    pq.write_table(pa.table({"item_id": pa.array([], pa.int64()),
                             "item_tower_emb": pa.array([], pa.list_(pa.float32()))}),
                   folder / "part-0.parquet")
    _expect_input_error(tmp_path, {"index_type": "Flat"}, folder, "no rows")
    emb = write_embeddings(tmp_path / "emb", np.arange(40), clustered(40))
    _expect_input_error(tmp_path, {"index_type": "IVFFlat", "nlist": 64}, emb, "nlist=64", "40 rows")
    dup = write_embeddings(tmp_path / "dup", [1, 2, 3, 2], clustered(4))
    _expect_input_error(tmp_path, {"index_type": "Flat"}, dup, "duplicate", "'2'")
    out = build(tmp_path, {"index_type": "Flat", "allow_duplicate_ids": True}, dup, "ok")
    assert (out / "id_mapping").read_text() == "1\n2\n3\n2\n"
    broken = write_embeddings(tmp_path / "nl", ["a", "b\nc"], clustered(2))
    _expect_input_error(tmp_path, {"index_type": "Flat"}, broken, "line break")


def test_missing_column_and_bad_params(tmp_path):
    emb = write_embeddings(tmp_path / "emb", np.arange(10), clustered(10), column="emb")
    _expect_input_error(tmp_path, {"index_type": "Flat"}, emb, "item_tower_emb", "missing")
    assert FaissIndexBuilder().check({"embeddings": "e", "index_type": "Flat", "nlist": 4}) == [
        ("nlist", "applies to IVFFlat/IVFPQ only, not Flat")]
    emb2 = write_embeddings(tmp_path / "emb2", np.arange(100), clustered(100, dim=10))
    _expect_input_error(tmp_path, {"index_type": "IVFPQ", "nlist": 2, "m": 4, "nbits": 4}, emb2, "m=4",
                       "divide")
    with pytest.raises(BuildError):
        fi.IndexSpec(index_type="IVF")


def test_module_import_stays_light():
    import subprocess
    import sys

    code = ("import sys, recbuild.builders.faiss_index, recbuild.builders.tdm_tree, "
            "recbuild.builders.recall_eval, recbuild.builders.serving_bundle; "
            "print(sorted(m for m in ('faiss', 'torch', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_hnsw_graph_is_thread_count_independent(tmp_path, monkeypatch):
    # faiss adds HNSW points in parallel only in batches of > 100 (2% of the table), hence 8000 rows
    monkeypatch.setattr(fi, "threads_for_load", lambda requested: requested)
    x = clustered(8000)
    emb = write_embeddings(tmp_path / "emb", np.arange(8000), x)
    params = {"index_type": "HNSWFlat", "M": 8, "ef_construction": 40, "batch_size": 8000}
    one = build(tmp_path, params, emb, "one", threads=1)
    two = build(tmp_path, params, emb, "two", threads=2)
    assert (one / "faiss_index").read_bytes() == (two / "faiss_index").read_bytes()
