"""Three figures are called recall@k: the training evaluation's, recall_eval's index search and tzrec's
in-batch evaluation. `recbuild metrics` names them apart and `--explain` explains them per artifact
kind, while metrics.json keeps the plain names (pinned outputs do not move)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recbuild.builders import all_builders

DIM = 8


def _tables(project) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((60, DIM)).astype(np.float32)
    for folder, columns in (("emb", {"item_id": np.arange(60)}),
                            ("users", {"user_id": np.arange(10), "item_id": np.arange(10)})):
        (project.path / folder).mkdir()
        rows = len(next(iter(columns.values())))
        column = "item_tower_emb" if folder == "emb" else "user_tower_emb"
        table = {**{k: pa.array(v) for k, v in columns.items()},
                 column: pa.FixedSizeListArray.from_arrays(pa.array(vectors[:rows].reshape(-1)), DIM)}
        pq.write_table(pa.table(table), project.path / folder / "part-0.parquet")


def test_metrics_name_recall_by_kind_and_explain_per_kind(project):
    _tables(project)
    project.recipe("""
        version: 1
        sources:
          emb: {path: emb}
          users: {path: users}
        artifacts:
          index: {kind: faiss_index, embeddings: emb, index_type: Flat}
          recall: {kind: recall_eval, index: index, user_embeddings: users, k: [1, 5]}
          other: {kind: command, cmd: "echo '{\\"recall@5\\": 0.5}' > ${out}/metrics.json"}
    """)
    assert project.run("make").code == 0
    table = project.run("metrics")
    rows = {tuple(line.split()[:2]) for line in table.out.splitlines()}
    assert ("recall", "recall@5") in rows and "[index" in table.out  # recall_eval's: "recall@5 [index search]"
    assert any(line.split()[:3] == ["recall", "recall@5", "[index"] for line in table.out.splitlines())
    assert any(line.split() == ["other", "recall@5", "0.5000"] for line in table.out.splitlines())  # a command's: plain
    assert "recall@5" in json.loads(project.read("build/recall/metrics.json"))  # the bytes keep the plain name

    explained = project.run("metrics", "--explain")
    assert explained.code == 0, explained.err
    text = explained.out
    assert "\nrecall_eval (recall):\n" in text
    line = next(l for l in text.splitlines() if l.strip().startswith("recall@k [index search]"))
    assert "through the built index" in line
    assert "command (other)" not in text  # nothing documented for a command's figures: no heading


def test_every_kind_that_reports_recall_at_k_says_which_recall_it_is():
    builders = all_builders()
    labels = {kind: b.metric_labels.get("recall@k") for kind, b in builders.items() if "recall@k" in b.metric_docs}
    assert labels == {"train": "training eval", "recall_eval": "index search", "tzrec_train_eval": "tzrec in-batch",
                      "tzrec_eval": "tzrec in-batch"}
    assert len({builders[k].metric_docs["recall@k"] for k in labels}) == 3  # three meanings, three texts
    assert builders["recall_eval"].metric_title("recall@50") == "recall@50 [index search]"
    assert builders["train"].metric_title("popularity_recall@10") == "popularity_recall@10 [training eval]"
    assert builders["recall_eval"].metric_title("exact.recall@50") == "exact.recall@50"
