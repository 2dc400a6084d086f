"""What faiss cannot (or should not) train is said by recbuild, before training, through the CLI: one
error line naming the artifact and the param to change, or one warning line for faiss's advice of
39 training rows per centroid, and none of faiss's own C++ assertions or stderr warnings. A search
that returns fewer than k results is recorded in recall_eval's metrics.json and warned about."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

DIM = 16


def _embeddings(project, folder: str, n: int, with_users: bool = False) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = project.path / folder
    path.mkdir()
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM)
    pq.write_table(pa.table({"item_id": pa.array(np.arange(n)), "item_tower_emb": emb}), path / "part-0.parquet")
    if with_users:  # 40 users, each with one positive item and the item's own vector as query
        users = project.path / "users"
        users.mkdir()
        items = rng.choice(n, 40, replace=False)
        q = pa.FixedSizeListArray.from_arrays(pa.array(vectors[items].reshape(-1)), DIM)
        pq.write_table(pa.table({"user_id": pa.array(np.arange(40)), "item_id": pa.array(items),
                                 "user_tower_emb": q}), users / "part-0.parquet")


def _recipe(project, index: str) -> None:
    project.recipe(f"""
        version: 1
        sources:
          emb: {{path: emb}}
        artifacts:
          index: {{kind: faiss_index, embeddings: emb, {index}}}
    """)


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("index, words", [
    ("index_type: IVFPQ", ["IVFPQ with nbits=8 trains 2**8 = 256 centroids per sub-quantizer but has only "
                           "the table's 50 rows", "lower nbits to at most 5"]),
    ("index_type: IVFFlat, nlist: 64", ["nlist=64 is larger than the table (50 rows)", "set nlist <= 50"]),
    ("index_type: IVFFlat, nlist: 8, train_size: 4", ["train_size=4 is smaller than nlist=8",
                                                      "raise train_size to at least 8"]),
])
def test_what_faiss_cannot_train_is_one_error_naming_the_param(project, index, words):
    _embeddings(project, "emb", 50)
    _recipe(project, index)
    result = project.subprocess_run("make")  # a subprocess: faiss's C++ writes to the real stderr
    assert result.code == 1, result.err
    errors = _errors(result.err)
    assert len(errors) == 1 and errors[0].startswith("error: recbuild.yaml:5:3: artifacts.index: "), result.err
    for word in words:
        assert word in errors[0], errors[0]
    assert "faiss::" not in result.err and "Number of training points" not in result.err
    assert "Traceback" not in result.err and not (project.path / "build" / "index").exists()


def test_the_39_rows_per_list_advice_is_one_warning_and_faiss_prints_nothing(project):
    """The README's matrix example, scaled down: nlist [8, 64] on 600 rows (64 x 39 > 600)."""
    _embeddings(project, "emb", 600)
    _recipe(project, "index_type: IVFFlat, matrix: {nlist: [8, 64]}")
    result = project.subprocess_run("make")
    assert result.code == 0, result.err
    assert "WARNING clustering" not in result.err + result.out  # faiss's own lines, straight to stderr
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: index@64: nlist=64 leaves 9.4 training rows per list (the table's 600 "
                        "rows); faiss advises at least 39, so its lists are poorly placed: set nlist <= 15 "
                        "(or leave it unset), or use more rows"], result.err
    assert "nlist=64 leaves 9.4" in project.read("build/.recbuild/logs/index@64.log")


def test_ivfpq_codebook_advice(project):
    _embeddings(project, "emb", 400)
    _recipe(project, "index_type: IVFPQ, nlist: 4, m: 4, nbits: 6")  # 64 centroids x 39 > 400 rows
    result = project.subprocess_run("make")
    assert result.code == 0, result.err
    assert "WARNING clustering" not in result.err
    assert [line for line in result.err.splitlines() if line.startswith("warning:")] == [
        "warning: index: nbits=6 trains 64 codebook centroids from the table's 400 rows (6.2 per centroid); "
        "faiss advises at least 39, so its codes are coarse: lower nbits to 3, or use more rows"]


def test_recall_eval_records_and_warns_when_a_search_returns_fewer_than_k(project):
    _embeddings(project, "emb", 300, with_users=True)
    project.recipe("""
        version: 1
        sources:
          emb: {path: emb}
          users: {path: users}
        artifacts:
          index: {kind: faiss_index, embeddings: emb, index_type: IVFFlat, nlist: 8}
          recall: {kind: recall_eval, index: index, user_embeddings: users, k: [5, 200], nprobe: 1}
    """)
    result = project.run("make")
    assert result.code == 0, result.err
    doc = json.loads(project.read("build/recall/metrics.json"))
    short = doc["search"]["fewer_than_k"]
    assert list(short) == ["200"] and short["200"]["queries"] == 40 and 0 < short["200"]["fewest"] < 200
    assert doc["recall@5"] > 0
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: recall: recall@200")]
    assert len(warnings) == 1 and "40 of 40 queries got fewer than 200 results" in warnings[0]
    assert "raise nprobe" in warnings[0]
    # probing every list fills every k: nothing recorded, nothing said
    project.recipe(project.read("recbuild.yaml").replace("nprobe: 1", "nprobe: 8"))
    again = project.run("make")
    assert again.code == 0 and "fewer than" not in again.err
    assert "fewer_than_k" not in json.loads(project.read("build/recall/metrics.json"))["search"]
