"""`matrix`: variants side by side, dependents following per variant, keys and errors per variant."""

from __future__ import annotations

import json

from recbuild.builders import all_builders
from recbuild.core.recipe.graph import build_graph
from recbuild.core.recipe.load import load_recipe
from recbuild.core.workdir.workspace import Workspace

RECIPE = """
version: 1
sources:
  raw: {path: raw.txt}
artifacts:
  index:
    kind: command
    deps: [raw]
    matrix: {params: [{n: 2}, {n: 4}, {n: 8}]}
    cmd: "head -c ${params.n} ${deps.raw} > ${out}/v; echo '{\\"recall@200\\": ${params.n}, \\"recall@50\\": 0.5, \\"recall@10\\": 0.25, \\"count\\": ${params.n}}' > ${out}/metrics.json"
  recall:
    kind: command
    deps: [index]
    cmd: "cat ${deps.index}/v > ${out}/seen"
  summary:
    kind: command
    deps: [raw]
    cmd: "wc -c < ${deps.raw} > ${out}/n"
default: [recall, summary]
"""


def test_a_matrix_expands_and_dependents_follow(project):
    project.write("raw.txt", "abcdefghij\n")
    project.recipe(RECIPE)
    listed = project.run("list")
    names = [line.split()[0] for line in listed.out.splitlines()[1:]]
    assert names == ["raw", "index@2", "index@4", "index@8", "recall@2", "recall@4", "recall@8", "summary"]
    result = project.run("make")
    assert result.code == 0, result.err
    assert sorted(result.built) == ["index@2", "index@4", "index@8", "recall@2", "recall@4", "recall@8",
                                    "summary"]
    assert project.read("build/recall@4/seen") == "abcd"
    assert project.read("build/recall@8/seen") == "abcdefgh"


def test_the_family_name_is_a_target_and_keys_are_per_variant(project):
    project.write("raw.txt", "abcdefghij\n")
    project.recipe(RECIPE)
    first = project.run("make", "index")
    assert sorted(first.built) == ["index@2", "index@4", "index@8"]
    keys = {n: json.loads(project.read(f"build/{n}/MANIFEST.json"))["key"] for n in first.built}
    assert len(set(keys.values())) == 3
    # one value of the matrix changes: only that variant (and what reads it) rebuilds
    project.recipe(RECIPE.replace("{n: 8}", "{n: 9}"))
    again = project.run("make")
    assert sorted(again.built) == ["index@9", "recall@2", "recall@4", "recall@9", "summary"]
    # early cut-off per variant: a no-op on the next run
    assert project.run("make").built == []
    explained = project.run("explain", "index")  # a matrix name: each variant, in turn
    assert explained.code == 0, explained.err
    assert [line.split()[0] for line in explained.out.splitlines() if line] == ["index@2", "index@4", "index@9"]


def test_two_matrices_combine_where_they_agree(project):
    project.write("raw.txt", "x\n")
    project.recipe("""
        version: 1
        artifacts:
          towers: {kind: command, matrix: {params: [{size: s}, {size: l}]}, cmd: "echo ${params.size} > ${out}/t"}
          index: {kind: command, deps: [towers], matrix: {params: [{nlist: 4}, {nlist: 16}]},
                  cmd: "cat ${deps.towers}/t > ${out}/i; echo ${params.nlist} >> ${out}/i"}
          recall: {kind: command, deps: [towers, index], cmd: "cat ${deps.towers}/t ${deps.index}/i > ${out}/r"}
    """)
    result = project.run("make")
    assert result.code == 0, result.err
    recalls = sorted(n for n in result.built if n.startswith("recall@"))
    assert recalls == ["recall@l-16", "recall@l-4", "recall@s-16", "recall@s-4"]
    assert project.read("build/recall@l-4/r") == "l\nl\n4\n"


def test_matrix_errors_point_at_the_matrix_entry(project):
    project.write("emb/x", "x")
    project.recipe("""
        version: 1
        sources:
          emb: {path: emb}
        artifacts:
          index:
            kind: faiss_index
            embeddings: emb
            matrix:
              nlist: [8]
              nlsit: [1]
          other:
            kind: command
            cmd: echo
            matrix: {params: []}
    """)
    result = project.run("validate")
    assert result.code == 2
    lines = result.err.splitlines()
    assert "error: recbuild.yaml:10:7: artifacts.index.matrix.nlsit: 'nlsit' is not a param of faiss_index " \
           "(did you mean 'nlist'?)" in lines, result.err
    assert "error: recbuild.yaml:14:14: artifacts.other.matrix.params: must be a non-empty list of values" \
           in lines, result.err


def test_a_bad_matrix_value_is_located_at_its_entry(project):
    project.write("emb/x", "x")
    project.recipe("""
        version: 1
        sources:
          emb: {path: emb}
        artifacts:
          index:
            kind: faiss_index
            embeddings: emb
            matrix:
              nlist: [8, abc]
    """)
    result = project.run("validate")
    assert result.code == 2
    assert result.err.strip() == ('error: recbuild.yaml:9:18: artifacts.index@abc.nlist: must be a positive '
                                  'integer, got "abc"')


def test_model_sizes_as_a_matrix(tmp_path):
    """model.PATH keys: each train variant and everything downstream reads its own model section."""
    (tmp_path / "recbuild.yaml").write_text("""
version: 1
extends: dssm
artifacts:
  checkpoints: {matrix: {model.tower_dim: [8, 16]}}
""")
    recipe = load_recipe(tmp_path / "recbuild.yaml")
    assert recipe.families["checkpoints"] == ["checkpoints@8", "checkpoints@16"]
    assert recipe.families["model"] == ["model@8", "model@16"]
    assert recipe.model_for("model@16")["tower_dim"] == 16
    assert recipe.model_for("towers@8")["tower_dim"] == 8
    assert recipe.nodes["model@16"].params["checkpoints"] == "checkpoints@16"
    graph = build_graph(recipe, all_builders())
    ws = Workspace(graph, all_builders())
    digests = {"train": "t", "eval": "e", "items": "i"}
    keys = {n: ws.key(n, digests.get) for n in ("checkpoints@8", "checkpoints@16")}
    assert None not in keys.values() and keys["checkpoints@8"] != keys["checkpoints@16"]


def test_metrics_columns_history_and_order(project):
    project.write("raw.txt", "abcdefghij\n")
    project.recipe(RECIPE)
    assert project.run("make").code == 0
    table = project.run("metrics")
    assert "index: 3 variants" in table.out
    header = next(line for line in table.out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "index@2", "index@4", "index@8"]
    order = [line.split()[0] for line in table.out.splitlines() if line.startswith("recall@")]
    assert order == ["recall@10", "recall@50", "recall@200"]  # k as a number
    count = next(line for line in table.out.splitlines() if line.startswith("count"))
    assert count.split() == ["count", "2", "4", "8"]  # integers as integers
    explained = project.run("metrics", "--explain")
    assert explained.code == 0
    # a second build where every count becomes 3: --diff shows integer changes, --history both builds
    project.recipe(RECIPE.replace('\\"count\\": ${params.n}', '\\"count\\": 3'))
    assert sorted(project.run("make").built)[:3] == ["index@2", "index@4", "index@8"]
    diff = project.run("metrics", "--diff")
    count = next(line for line in diff.out.splitlines() if line.startswith("count"))
    assert count.split() == ["count", "3", "(+1)", "3", "(-1)", "3", "(-5)"]
    history = project.run("metrics", "--history", "index@8")
    assert "index@8: last 2 builds" in history.out
    row = next(line for line in history.out.splitlines() if line.startswith("count"))
    assert row.split()[1:] == ["8", "3"]
