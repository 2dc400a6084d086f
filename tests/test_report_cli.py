"""`recbuild report` through the CLI on a small command-kind recipe whose artifacts copy crafted
files (metrics.json, an evaluation file, an embedding table, a serving_tree), and on a recipe with
nothing built yet. The page is checked as text here; tests/test_report_browser.py renders it."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from plotly.offline import get_plotlyjs

from recbuild.retrieval.tdm_tree import assemble_tree, init_leaf_codes, tree_depth
from recbuild.retrieval.tree_io import write_serving_tree

RECIPE = """
version: 1
name: crafted
sources:
  fixtures: {path: fixtures}
artifacts:
  index:
    kind: command
    deps: [fixtures]
    matrix: {params: [{n: 4}, {n: 16}]}
    cmd: "cp ${deps.fixtures}/recall-${params.n}.json ${out}/metrics.json"
  checkpoints: {kind: command, deps: [fixtures], cmd: "cp ${deps.fixtures}/eval.txt ${out}/train_eval_result_v2.txt"}
  item_embeddings: {kind: command, deps: [fixtures], cmd: "cp ${deps.fixtures}/emb.parquet ${out}/part-0.parquet"}
  tree: {kind: command, deps: [fixtures], cmd: "cp ${deps.fixtures}/serving_tree ${out}/serving_tree"}
  broken: {kind: command, cmd: "echo '{oops' > ${out}/metrics.json"}
  model: {kind: command, deps: [tree], cmd: "cp ${deps.tree}/serving_tree ${out}/"}  # an export's asset
"""


def _fixtures(project) -> None:
    for n in (4, 16):
        project.write(f"fixtures/recall-{n}.json", json.dumps(
            {"recall@10": n / 100, "recall@50": n / 50, "recall@200": n / 20,
             "exact": {"recall@10": 0.3, "recall@50": 0.6, "recall@200": 0.9}}))
    project.write("fixtures/eval.txt", "".join(json.dumps({"global_step": s, "auc": 0.5 + s / 1000}) + "\n"
                                               for s in (100, 200, 300)) + "garbage\n")
    vectors = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    pq.write_table(pa.table({"item_id": np.arange(64),
                             "item_tower_emb": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 8)}),
                   project.path / "fixtures" / "emb.parquet")
    depth = tree_depth(20, 3)
    tree = assemble_tree(init_leaf_codes(20, 3, depth), np.arange(20, dtype=np.int64), 3, depth, hash_ids=False)
    write_serving_tree(tree, project.path / "fixtures" / "serving_tree")


def _plot_ids(page: str) -> list[str]:
    return re.findall(r'<div id="(plot-\d+)" class="plotly-graph-div"', page)


def test_report_of_crafted_artifacts(project):
    _fixtures(project)
    project.recipe(RECIPE)
    built = project.run("make")
    assert built.code == 0, built.err
    with open(project.path / "build" / "metrics-history.jsonl", "a", encoding="utf-8") as handle:
        handle.write("{half a record\n")

    result = project.run("report")

    assert result.code == 0, result.err
    path = project.path / "build" / "report.html"
    assert result.out.strip() == f"wrote {path} (6 plots)"
    assert "warning: broken: metrics.json is unreadable" in result.err
    assert "warning: 1 line(s) of metrics-history.jsonl are not build records; skipped" in result.err
    assert "warning: checkpoints: 1 line(s) of train_eval_result_v2.txt" in result.err
    assert "Traceback" not in result.err
    page = path.read_text(encoding="utf-8")
    # recall (the index family), training, history, embedding norms, tree balance, graph
    assert _plot_ids(page) == [f"plot-{i}" for i in range(1, 7)]
    assert '<meta name="recbuild-plots" content="6">' in page
    # self-contained: plotly.js inlined once, nothing loaded from elsewhere
    assert page.count(get_plotlyjs()[:500]) == 1
    assert "<script src" not in page and "<link" not in page
    assert "recall@k: index" in page and "TDM tree balance: tree" in page
    # the same tree bytes in another artifact: named on the tree's plot, not drawn twice
    assert "TDM tree balance: model" not in page and "the same serving_tree is in model" in page
    assert "broken: metrics.json is unreadable" in page  # the note is on the page too
    assert "Not built yet" not in page
    # the page is no artifact: the next make has nothing to do
    again = project.run("make")
    assert again.code == 0 and again.built == []


def test_report_output_path_and_errors(project):
    _fixtures(project)
    project.recipe(RECIPE)
    written = project.run("report", "-o", "out/page.html")
    assert written.code == 0, written.err
    # nothing is built: only the graph; a command may write anything, so none is "not built yet"
    assert written.out.strip() == "wrote out/page.html (1 plot)"
    page = project.read("out/page.html")
    assert page.count('class="empty">Nothing to show') == 7 and 'class="pending"' not in page
    assert not (project.path / "build" / "report.html").exists()
    into_folder = project.run("report", "-o", "out")
    assert into_folder.code == 1
    assert into_folder.err.strip() == "error: is a folder; the report is one file, e.g. -o report.html: out"

    project.recipe(RECIPE.replace("kind: command, deps: [fixtures], cmd: \"cp ${deps.fixtures}/eval.txt",
                                  "kind: comand, deps: [fixtures], cmd: \"cp ${deps.fixtures}/eval.txt"))
    bad = project.run("report")
    assert bad.code == 2
    assert bad.err.startswith("error: recbuild.yaml:") and "Traceback" not in bad.err
    assert project.run("report", "--no-such-flag").code == 2


def test_report_before_anything_is_built_says_what_to_build(project):
    project.recipe("""
    version: 1
    extends: dssm
    artifacts:
      index: {matrix: {nlist: [4, 8]}}
    """)
    result = project.run("report")
    assert result.code == 0, result.err
    assert result.out.strip().endswith("(1 plot); not built yet: recall, checkpoints, item_embeddings")
    page = project.read("build/report.html")
    assert page.count('class="pending"') == 5  # recall, training, history, embeddings, metrics table
    assert "<code>recbuild make recall</code>" in page
    assert "Nothing to show: no built artifact holds a serving_tree" in page
