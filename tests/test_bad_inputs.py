"""The bad-input matrix: each broken input, through the CLI, gives one clear error naming the
artifact and what to fix (exit 1 for inputs, 2 for recipes), and publishes nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbuild.cli import main

BASE = """
version: 1
vars: {n_items: 300, n_users: 200}
model:
  family: dssm
  emb_dim: 8
  hidden: [16]
  tower_dim: 8
  features:
    - {name: user_id, group: user, buckets: 500}
    - {name: age_level, group: user, buckets: 10}
    - {name: item_id, group: item, buckets: 1000}
    - {name: cate_id, group: item, buckets: 100}
    - {name: price, group: item, type: numeric}
sources:
  items: {kind: sample_data, table: items, n_items: "${vars.n_items}", n_users: "${vars.n_users}"}
  train: {kind: sample_data, table: interactions, rows: 2000, n_items: "${vars.n_items}", n_users: "${vars.n_users}"}
  eval: {kind: sample_data, table: interactions, split: eval, rows: 500, n_items: "${vars.n_items}", n_users: "${vars.n_users}"}
artifacts:
  checkpoints: {kind: train, data: train, eval_data: eval, epochs: 1, batch_size: 256, threads: 1}
  model: {kind: export, checkpoints: checkpoints, select: best, metric: recall@50}
  towers: {kind: towers, model: model}
"""


def _run(folder: Path, *args: str) -> tuple[int, str, str]:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        import io
        import sys

        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            code = main(list(args))
        finally:
            sys.stdout, sys.stderr = saved
        return code, out.getvalue(), err.getvalue()
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-inputs-base")
    (folder / "recbuild.yaml").write_text(BASE)
    code, out, err = _run(folder, "make")
    assert code == 0, err
    return folder


def _items(n=20, **overrides) -> pa.Table:
    columns = {"item_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
               "cate_id": pa.array(np.arange(n, dtype=np.int64) % 5),
               "price": pa.array(np.linspace(1, 2, n))}
    columns.update(overrides)
    return pa.table(columns)


def _embeddings(n=20, dim=8, nan=False, ids=None) -> pa.Table:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    if nan:
        vectors[3, 2] = np.nan
    ids = np.arange(1, n + 1, dtype=np.int64) if ids is None else ids
    return pa.table({"item_id": pa.array(ids),
                     "item_tower_emb": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)})


def _bad_checkpoint(folder: Path) -> None:
    import torch

    (folder / "other/model.ckpt-5").mkdir(parents=True)
    torch.save({"not.a.layer": torch.zeros(3)}, folder / "other/model.ckpt-5/model.pt")


def _corrupt_checkpoint(folder: Path) -> None:
    (folder / "other/model.ckpt-5").mkdir(parents=True)
    (folder / "other/model.ckpt-5/model.pt").write_bytes(b"\x80\x04 not a checkpoint")


# (id, extra recipe text, files to write {relpath: table | callable}, target, exit code, message parts)
CASES = [
    ("items-missing-id-column", "  emb: {kind: item_embeddings, towers: towers, items: bad}\n  bad0: {kind: command, cmd: 'true'}\n",
     {"data/bad.parquet": _items().drop(["item_id"])}, "emb", 1, ["item_id"]),
    ("items-duplicate-ids", "  emb: {kind: item_embeddings, towers: towers, items: bad}\n",
     {"data/bad.parquet": _items(item_id=pa.array(np.array([1, 2, 3, 3] + list(range(5, 21)), dtype=np.int64)))},
     "emb", 1, ["duplicate", "on_duplicate"]),
    ("items-null-ids", "  emb: {kind: item_embeddings, towers: towers, items: bad}\n",
     {"data/bad.parquet": _items(item_id=pa.array([None] + list(range(2, 21)), type=pa.int64()))},
     "emb", 1, ["null"]),
    ("items-empty-table", "  emb: {kind: item_embeddings, towers: towers, items: bad}\n",
     {"data/bad.parquet": _items().slice(0, 0)}, "emb", 1, ["no rows"]),
    ("items-wrong-dtype", "  emb: {kind: item_embeddings, towers: towers, items: bad}\n",
     {"data/bad.parquet": _items(price=pa.array(["cheap"] * 20))}, "emb", 1, ["price"]),
    ("items-missing-feature", "  emb: {kind: item_embeddings, towers: towers, items: bad}\n",
     {"data/bad.parquet": _items().drop(["cate_id"])}, "emb", 1, ["cate_id"]),
    ("users-missing-feature", "  uemb: {kind: user_embeddings, towers: towers, users: bad}\n",
     {"data/bad.parquet": pa.table({"user_id": pa.array([1, 2], type=pa.int64())})}, "uemb", 1, ["age_level"]),
    ("nan-embeddings", "  idx: {kind: faiss_index, embeddings: bad, index_type: Flat}\n",
     {"data/bad.parquet": _embeddings(nan=True)}, "idx", 1, ["NaN"]),
    ("embedding-column-missing", "  idx: {kind: faiss_index, embeddings: bad, index_type: Flat, embedding_column: vec}\n",
     {"data/bad.parquet": _embeddings()}, "idx", 1, ["vec"]),
    ("index-duplicate-ids", "  idx: {kind: faiss_index, embeddings: bad, index_type: Flat}\n",
     {"data/bad.parquet": _embeddings(ids=np.array([1] * 20, dtype=np.int64))}, "idx", 1, ["duplicate"]),
    ("nlist-larger-than-count", "  idx: {kind: faiss_index, embeddings: bad, index_type: IVFFlat, nlist: 64}\n",
     {"data/bad.parquet": _embeddings()}, "idx", 1, ["nlist"]),
    ("pq-m-not-dividing-dim", "  idx: {kind: faiss_index, embeddings: bad, index_type: IVFPQ, nlist: 1, m: 3}\n",
     {"data/bad.parquet": _embeddings()}, "idx", 1, ["m"]),
    ("empty-embeddings", "  idx: {kind: faiss_index, embeddings: bad, index_type: Flat}\n",
     {"data/bad.parquet": _embeddings().slice(0, 0)}, "idx", 1, ["no rows"]),
    ("dim-mismatch-towers-vs-index",
     "  idx: {kind: faiss_index, embeddings: bad, index_type: Flat}\n"
     "  rec: {kind: recall_eval, towers: towers, queries: eval, index: idx, k: [5]}\n",
     {"data/bad.parquet": _embeddings(dim=4)}, "rec", 1, ["dim"]),
    ("k-larger-than-item-count",
     "  idx: {kind: faiss_index, embeddings: bad, index_type: Flat}\n"
     "  rec: {kind: recall_eval, towers: towers, queries: eval, index: idx, k: [50]}\n",
     {"data/bad.parquet": _embeddings(n=20)}, "rec", 1, ["k=50", "20 items"]),
    ("checkpoint-from-another-model", "  model2: {kind: export, checkpoints: other}\n",
     {"other": _bad_checkpoint}, "model2", 1, ["model.ckpt-5"]),
    ("corrupted-checkpoint", "  model2: {kind: export, checkpoints: other}\n",
     {"other": _corrupt_checkpoint}, "model2", 1, ["model.ckpt-5"]),
    ("best-metric-absent", "  model2: {kind: export, checkpoints: checkpoints, select: best, metric: auc}\n",
     {}, "model2", 1, ["auc", "recall@50"]),
    ("explicit-checkpoint-missing", "  model2: {kind: export, checkpoints: checkpoints, select: model.ckpt-999}\n",
     {}, "model2", 1, ["model.ckpt-999"]),
    ("towers-of-a-ranking-model", "  model2: {kind: export, checkpoints: checkpoints}\n",
     {}, None, None, None),  # placeholder replaced below (needs a deepfm model); kept out of the count
    ("tree-n-cluster-1", "  tree: {kind: tdm_tree, mode: init, items: items, n_cluster: 1}\n",
     {}, "tree", 2, ["n_cluster", ">= 2"]),
    ("learnt-tree-missing-embedding-column",
     "  tree: {kind: tdm_tree, mode: learnt, embeddings: bad, embedding_column: vec}\n",
     {"data/bad.parquet": _embeddings()}, "tree", 1, ["vec"]),
    ("learnt-tree-nan", "  tree: {kind: tdm_tree, mode: learnt, embeddings: bad}\n",
     {"data/bad.parquet": _embeddings(nan=True)}, "tree", 1, ["NaN"]),
    ("tdm-train-without-tree", "  tdm_ckpt: {kind: train, data: train}\n",
     {}, None, None, None),
    ("train-without-label", "  ck2: {kind: train, data: bad, epochs: 1}\n",
     {"data/bad.parquet": pa.table({"user_id": pa.array([1, 2], type=pa.int64())})}, "ck2", 1, ["missing column", "item_id"]),
    ("sample-rows-beyond-universe", "  few: {kind: sample_data, table: items, rows: 100, n_items: 60}\n",
     {}, "few", 2, ["rows", "n_items"]),
    ("bundle-without-parts", "  bundle: {kind: serving_bundle}\n", {}, "bundle", 2, ["bundle"]),
    ("recall-both-query-sources",
     "  rec: {kind: recall_eval, index: towers, towers: towers, queries: eval, user_embeddings: eval}\n",
     {}, "rec", 2, ["either"]),
    ("embedding-format-unknown", "  emb: {kind: item_embeddings, towers: towers, items: items, embedding_format: csv}\n",
     {}, "emb", 2, ["embedding_format"]),
    ("item-embeddings-on-non-towers", "  emb: {kind: item_embeddings, towers: checkpoints, items: items}\n",
     {}, "emb", 1, ["item/"]),
    ("source-glob-matches-nothing", "  emb: {kind: item_embeddings, towers: towers, items: nothing}\n",
     {}, "emb", 1, ["sources.nothing: ", "no files match"]),
    ("command-fails", "  broken: {kind: command, cmd: 'echo boom >&2; exit 7'}\n", {}, "broken", 1,
     ["status 7", "boom"]),
]
CASES = [c for c in CASES if c[3] is not None]
SOURCES = """
  bad: {path: data/bad.parquet}
  other: {path: other}
  nothing: {path: "data/none-*.parquet"}
"""


@pytest.mark.parametrize("case_id,extra,files,target,code,parts", CASES, ids=[c[0] for c in CASES])
def test_bad_input(base, tmp_path, case_id, extra, files, target, code, parts):
    folder = tmp_path / "p"
    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("tmp", "logs"))
    (folder / "data").mkdir(exist_ok=True)
    (folder / "other").mkdir(exist_ok=True)
    for relpath, content in files.items():
        if callable(content):
            shutil.rmtree(folder / relpath, ignore_errors=True)
            content(folder)
        else:
            pq.write_table(content, folder / relpath)
    if not (folder / "other").exists() or not any((folder / "other").iterdir()):
        (folder / "other" / "placeholder").write_text("x")
    recipe = BASE.replace("sources:\n", "sources:" + SOURCES) + extra
    if "bad" not in recipe.split("artifacts:")[1]:
        recipe = recipe.replace("  bad: {path: data/bad.parquet}\n", "")
    (folder / "recbuild.yaml").write_text(recipe)
    got, out, err = _run(folder, "make", target)
    assert got == code, f"exit {got}: {out}\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], lines[0]
    if code == 1:  # the location first, then the artifact or source
        failing = parts[0][:-2] if parts[0].startswith("sources.") else f"artifacts.{target}"
        assert re.match(rf"error: recbuild\.yaml:\d+:\d+: {re.escape(failing)}: ", lines[0]), lines[0]
        assert not (folder / "build" / target).exists()
    # nothing that was built before is lost
    assert json.loads((folder / "build/towers/MANIFEST.json").read_text())["kind"] == "towers"


def test_matrix_size():
    assert len(CASES) >= 30
