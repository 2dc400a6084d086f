"""`recbuild report`'s data side on tiny hand-made workdirs: the tolerant readers (evaluation files,
embedding norms sampled across row groups, TDM tree balance streamed from serving_tree) and the
collector (sections per artifact or matrix family, notes for bad input, "not built yet")."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbuild.builders import all_builders
from recbuild.core.recipe.graph import build_graph
from recbuild.core.recipe.load import load_recipe
from recbuild.report import collect, readers
from recbuild.retrieval.tdm_tree import assemble_tree, init_leaf_codes, segment_sizes_of_level, tree_depth
from recbuild.retrieval.tree_io import write_serving_tree

GENERATED_AT = "2026-01-02 03:04:05 +0000"  # the report's clock is an input: tests never read the time


# -- evaluation files ----------------------------------------------------------------------------
def test_eval_results_skip_and_count_bad_lines(tmp_path):
    path = tmp_path / readers.EVAL_FILE
    path.write_text("\n".join([
        json.dumps({"global_step": 10, "recall@10": 0.1, "note": "text is not a metric"}),
        "not json at all",
        json.dumps({"recall@10": 0.2}),  # no global_step
        json.dumps({"global_step": "x", "recall@10": 0.3}),
        json.dumps([1, 2]),
        json.dumps({"global_step": 20, "recall@10": 0.4, "auc": 0.7}),
        json.dumps({"global_step": 10, "recall@10": 0.15}),  # a later line for a step wins
        "",
    ]), encoding="utf-8")
    results = readers.read_eval_results(path)
    assert results.by_step == {10: {"recall@10": 0.15}, 20: {"recall@10": 0.4, "auc": 0.7}}
    assert results.skipped_lines == 4


# -- embedding norms -----------------------------------------------------------------------------
def _vectors(rows: int, dim: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def _write_embeddings(path, vectors, fmt="fixed_size_list", row_group_size=None, column="item_tower_emb"):
    dim = vectors.shape[1]
    if fmt == "fixed_size_list":
        values = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    elif fmt == "list_double":
        values = pa.array(vectors.astype(np.float64).tolist(), type=pa.list_(pa.float64()))
    else:
        values = pa.array([",".join(str(float(v)) for v in row) for row in vectors])
    table = pa.table({"item_id": pa.array(np.arange(len(vectors))), column: values})
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.mark.parametrize("fmt", ["fixed_size_list", "list_double", "string"])
def test_norms_of_every_embedding_format(tmp_path, fmt):
    vectors = _vectors(50)
    _write_embeddings(tmp_path / "part-0.parquet", vectors, fmt)
    sample = readers.sample_norms([str(tmp_path / "part-0.parquet")], "item_tower_emb")
    assert sample.total_rows == 50 and sample.dim == 4
    np.testing.assert_allclose(sample.norms, np.linalg.norm(vectors.astype(np.float64), axis=1), rtol=1e-5)


def test_norms_of_a_big_table_are_a_sample_spread_over_its_row_groups(tmp_path):
    files = []
    for part in range(3):
        path = tmp_path / f"part-{part}.parquet"
        # part p holds vectors of norm p + 1, so a sample from every part shows three values
        rows = _vectors(4000, seed=part)
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True) * (part + 1)
        _write_embeddings(path, rows, row_group_size=100)
        files.append(str(path))
    sample = readers.sample_norms(files, "item_tower_emb", budget=1000)
    assert sample.total_rows == 12000
    assert 900 <= len(sample.norms) <= 1000
    assert sample.row_groups_read < 120  # not every row group's data
    assert set(np.round(sample.norms).astype(int)) == {1, 2, 3}


def test_bad_embeddings_are_a_reason_not_a_crash(tmp_path):
    vectors = _vectors(10)
    vectors[3, 1] = np.nan
    _write_embeddings(tmp_path / "part-0.parquet", vectors)
    with pytest.raises(readers.ReportInputError, match="row 3 contains NaN"):
        readers.sample_norms([str(tmp_path / "part-0.parquet")], "item_tower_emb")
    (tmp_path / "part-1.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(readers.ReportInputError, match="cannot be read"):
        readers.sample_norms([str(tmp_path / "part-1.parquet")], "item_tower_emb")


def test_embedding_columns_are_found_by_name_and_type():
    schema = pa.schema([("item_id", pa.int64()), ("cate_emb", pa.list_(pa.float32())),
                        ("user_tower_emb", pa.string()), ("price_emb", pa.float64()),
                        ("item_tower_emb", pa.list_(pa.float32(), 8))])
    assert readers.embedding_columns(schema) == ["item_tower_emb", "user_tower_emb", "cate_emb"]


def test_equal_norms_give_one_bar_around_the_value():
    edges, counts = readers.histogram(np.array([1.0, 1.0 + 3e-7, 1.0 - 2e-7]))
    assert edges[0] == pytest.approx(0.99) and edges[-1] == pytest.approx(1.01)
    assert sorted(counts)[-1] == 3 and sum(counts) == 3


# -- TDM trees -----------------------------------------------------------------------------------
def _tree(n_items: int, k: int):
    depth = tree_depth(n_items, k)
    codes = init_leaf_codes(n_items, k, depth)
    return assemble_tree(codes, np.arange(n_items, dtype=np.int64), k, depth, hash_ids=False), codes, depth


@pytest.mark.parametrize("n_items,k", [(10, 2), (100, 3), (1, 2), (730, 9)])
def test_tree_levels_match_the_tree(tmp_path, n_items, k):
    tree, leaf_codes, depth = _tree(n_items, k)
    write_serving_tree(tree, tmp_path / "serving_tree")
    # blocks of a few lines: every level's runs continue across blocks
    stats = readers.tree_levels(tmp_path / "serving_tree", block_bytes=64)
    assert stats.k == k and stats.leaves == n_items
    assert stats.nodes == np.bincount(tree.levels, minlength=depth + 1).tolist()
    for level in range(depth + 1):
        sizes = segment_sizes_of_level(leaf_codes, k, depth, level)
        assert (stats.leaves_min[level], stats.leaves_max[level]) == (sizes.min(), sizes.max())
        assert stats.leaves_mean[level] == pytest.approx(sizes.mean())


def test_tree_levels_of_hash_ids_with_spaces(tmp_path):
    (tmp_path / "serving_tree").write_text("3 2\n0 nonleaf#0\n1 nonleaf#1\n2 nonleaf#2\n3 item a\n4 item b\n"
                                           "5 item c\n", encoding="utf-8")
    stats = readers.tree_levels(tmp_path / "serving_tree")
    assert stats.nodes == [1, 2, 3]
    assert stats.leaves_min == [3, 1, 1] and stats.leaves_max == [3, 2, 1]


@pytest.mark.parametrize("text,reason", [
    ("", "not a serving_tree"),
    ("three 2\n0 1\n", "not a serving_tree"),
    ("2 2\n", "no nodes"),
    ("2 2\n0 5\n2 3\n1 4\n", "do not ascend"),
    ("2 2\n0 5\nx 3\n", "not a serving_tree"),
    ("2 2\n0 5\n1 3\n9 4\n", "below level 1"),
])
def test_a_broken_serving_tree_is_a_reason(tmp_path, text, reason):
    (tmp_path / "serving_tree").write_text(text, encoding="utf-8")
    with pytest.raises(readers.ReportInputError, match=reason):
        readers.tree_levels(tmp_path / "serving_tree")


# -- the collector -------------------------------------------------------------------------------
RECIPE = """
version: 1
name: crafted
artifacts:
  index:
    kind: command
    matrix: {params: [{n: 4}, {n: 16}]}
    cmd: "true"
  recall: {kind: command, deps: [index], cmd: "true"}
  checkpoints: {kind: command, cmd: "true"}
  item_embeddings: {kind: command, cmd: "true"}
  tree: {kind: command, cmd: "true"}
  broken: {kind: command, cmd: "true"}
  never_built: {kind: command, cmd: "true"}
"""


def _graph(tmp_path, text=RECIPE):
    (tmp_path / "recbuild.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    builders = all_builders()
    return build_graph(load_recipe(tmp_path / "recbuild.yaml", [], builders), builders), builders


def _artifact(workdir, name, files: dict):
    folder = workdir / name
    folder.mkdir(parents=True)
    (folder / "MANIFEST.json").write_text("{}", encoding="utf-8")  # the collector reads built folders only
    for relpath, content in files.items():
        path = folder / relpath
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def _recall(n: int) -> str:
    return json.dumps({"recall@10": 0.1 * n / 16, "recall@200": 0.5 * n / 16, "recall@50": 0.3 * n / 16,
                       "exact": {"recall@10": 0.2, "recall@50": 0.6, "recall@200": 0.9}, "requests": 7})


def test_collect_groups_variants_and_notes_bad_input(tmp_path):
    graph, builders = _graph(tmp_path)
    work = graph.recipe.workdir
    for n in (4, 16):
        _artifact(work, f"recall@{n}", {"metrics.json": _recall(n)})
    _artifact(work, "index@4", {})  # index@16 is not built
    _artifact(work, "checkpoints", {readers.EVAL_FILE: '{"global_step": 5, "auc": 0.6}\ngarbage\n'
                                                        '{"global_step": 10, "auc": 0.7, "loss": 0.3}\n'})
    _write_embeddings(_artifact(work, "item_embeddings", {}) / "part-0.parquet", _vectors(20))
    tree, _, _ = _tree(9, 2)
    write_serving_tree(tree, _artifact(work, "tree", {}) / "serving_tree")
    _artifact(work, "broken", {"metrics.json": "{not json"})
    # never_built has a folder but no manifest: not read
    (work / "never_built").mkdir()
    (work / "never_built" / "metrics.json").write_text('{"recall@10": 1}', encoding="utf-8")
    history = [
        {"artifact": "recall@4", "key": "a", "time": "2026-01-01T10:00:00+0000", "commit": "abc",
         "metrics": {"recall@10": 0.01, "requests": 7}},
        "garbage line",
        {"artifact": "recall@4", "key": "b", "time": "2026-01-01T11:00:00+0000", "commit": None,
         "metrics": {"recall@10": 0.025, "recall@50": "not a number"}},
        {"artifact": "recall@16", "key": "c", "time": "yesterday", "metrics": {"recall@10": 0.1}},
        {"artifact": "renamed_long_ago", "key": "d", "time": "2026-01-01T09:00:00+0000", "metrics": {"x": 1}},
    ]
    (work / "metrics-history.jsonl").write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in history) + "\n", encoding="utf-8")

    report = collect.collect(graph, builders, generated_at=GENERATED_AT)

    assert (report.recipe_name, report.generated_at) == ("crafted", GENERATED_AT)
    [recall] = report.recall.items
    assert recall.title == "recall"
    assert [c.label for c in recall.variants] == ["recall@4", "recall@16"]
    assert recall.variants[1].x == [10, 50, 200] and recall.variants[1].y == pytest.approx([0.1, 0.3, 0.5])
    assert [(c.label, c.y) for c in recall.baselines] == [("exact search", [0.2, 0.6, 0.9])]

    [training] = report.training.items
    assert training.artifact == "checkpoints" and training.evaluations == 2
    assert {c.label: (c.x, c.y) for c in training.curves} == {"auc": ([5, 10], [0.6, 0.7]), "loss": ([10], [0.3])}
    assert report.training.notes == ["checkpoints: 1 line(s) of train_eval_result_v2.txt are not JSON objects "
                                     "with an integer global_step; skipped"]

    [history_plot] = report.history.items
    assert history_plot.title == "recall"
    # a command has no headline figures: the first three of each variant; a value that is not a
    # number is left out (recall@50), and recall@16's only record has no readable time
    assert [s.label for s in history_plot.series] == ["recall@4 · recall@10", "recall@4 · requests"]
    series = history_plot.series[0]
    assert (series.variant, series.metric, series.values) == ("recall@4", "recall@10", [0.01, 0.025])
    assert series.times == ["2026-01-01 10:00:00", "2026-01-01 11:00:00"] and series.commits == ["abc", None]
    assert any("1 line(s) of metrics-history.jsonl are not build records" in n for n in report.history.notes)
    assert any("1 record(s) of metrics-history.jsonl have no readable time" in n for n in report.history.notes)
    assert any("renamed_long_ago" in n for n in report.history.notes)

    [norms] = report.embeddings.items
    assert (norms.artifact, norms.column, norms.dim, norms.total_rows, norms.sampled_rows) == \
        ("item_embeddings", "item_tower_emb", 4, 20, 20)
    assert sum(norms.counts) == 20 and len(norms.edges) == len(norms.counts) + 1

    [balance] = report.trees.items
    assert (balance.artifact, balance.k, balance.leaves) == ("tree", 2, 9)
    assert balance.capacity == [1, 2, 4, 8, 16] and balance.nodes[-1] == 9

    [table] = report.metrics.items
    assert table.plain == []  # every metrics artifact is a variant
    [(family, variants, rows)] = table.families
    assert family == "recall" and variants == ["recall@4", "recall@16"]
    assert dict(rows)["requests"] == [7, 7]
    assert report.metrics.notes == ["broken: metrics.json is unreadable (Expecting property name enclosed in "
                                    "double quotes: line 1 column 2 (char 1)); skipped"]

    nodes = {n.name: n for n in report.graph.nodes}
    assert nodes["index@4"].built and not nodes["index@16"].built and not nodes["never_built"].built
    assert nodes["recall@16"].family == "recall"
    assert ("index@16", "recall@16") in report.graph.edges
    assert collect.notes(report)[0].startswith("checkpoints: 1 line(s)")


NLIST_MATRIX = """
version: 1
extends: dssm
artifacts:
  index: {matrix: {nlist: [4, 8]}}
"""


def test_collect_on_a_workdir_with_nothing_built_names_what_to_build(tmp_path):
    graph, builders = _graph(tmp_path, NLIST_MATRIX)
    report = collect.collect(graph, builders, generated_at=GENERATED_AT)
    for section in (report.recall, report.training, report.history, report.embeddings, report.metrics):
        assert section.items == [] and section.notes == []
    assert report.recall.pending == ["recall"]  # the family, not each variant
    assert report.training.pending == ["checkpoints"]
    assert report.embeddings.pending == ["item_embeddings"]
    assert report.trees.pending == []  # the recipe has no tree: nothing is missing
    assert collect.pending(report) == ["recall", "checkpoints", "item_embeddings"]
    assert [n.built for n in report.graph.nodes if n.kind == "sample_data"] == [False, False, False]


def test_history_of_a_family_keeps_its_first_headline_family(tmp_path):
    graph, builders = _graph(tmp_path, NLIST_MATRIX)
    records = [{"artifact": f"recall@{n}", "key": str(n), "time": "2026-01-01T10:00:00+0000",
                "metrics": {"recall@10": 0.1, "recall@50": 0.2, "index_recall@10": 1.0, "requests": 3}}
               for n in (4, 8)]
    graph.recipe.workdir.mkdir()
    (graph.recipe.workdir / "metrics-history.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    [plot] = collect.collect(graph, builders, generated_at=GENERATED_AT).history.items
    assert [s.label for s in plot.series] == ["recall@4 · recall@10", "recall@4 · recall@50",
                                              "recall@8 · recall@10", "recall@8 · recall@50"]


def test_git_commit_of_the_recipe_folder(tmp_path):
    import subprocess

    assert collect.git_commit(tmp_path) is None  # not in a repository
    (tmp_path / "recbuild.yaml").write_text("version: 1\n", encoding="utf-8")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "recbuild.yaml"], ["commit", "-qm", "recipe"]):
        subprocess.run(git + args, check=True, capture_output=True)
    head = subprocess.run(git + ["rev-parse", "--short=12", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    assert collect.git_commit(tmp_path) == head
    (tmp_path / "recbuild.yaml").write_text("version: 1\nname: edited\n", encoding="utf-8")
    assert collect.git_commit(tmp_path) == f"{head} + uncommitted changes"
