"""Recipe features: extends, vars, env, --set, defaults; the committed schema is current."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from recbuild.builders import all_builders
from recbuild.core.recipe.load import load_recipe
from recbuild.core.recipe.schema import schema_text

REPO = Path(__file__).resolve().parent.parent


def test_committed_schema_is_up_to_date():
    committed = (REPO / "schemas" / "recipe.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(all_builders()), \
        "schemas/recipe.schema.json is stale: run `recbuild schema > schemas/recipe.schema.json`"


def test_committed_reference_is_up_to_date():
    from recbuild.core.recipe.schema import reference_markdown

    committed = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == reference_markdown(all_builders()), \
        "docs/reference.md is stale: run `recbuild schema --markdown > docs/reference.md`"


def test_schema_has_one_def_per_kind():
    schema = json.loads(schema_text(all_builders()))
    for kind in all_builders():
        assert schema["$defs"][kind]["properties"]["kind"] == {"const": kind}


def test_extends_deep_merges_and_child_wins(project):
    project.write("base.yaml", """
        version: 1
        vars: {n: 1, word: base}
        artifacts:
          a: {kind: command, cmd: "echo ${vars.word} > ${out}/a", params: {x: 1, y: 2}}
          b: {kind: command, cmd: "echo b > ${out}/b"}
    """)
    path = project.recipe("""
        extends: base.yaml
        vars: {word: child}
        artifacts:
          a: {params: {y: 3}}
          b: null
    """)
    recipe = load_recipe(path)
    assert set(recipe.nodes) == {"a"}
    assert recipe.nodes["a"].params["params"] == {"x": 1, "y": 3}
    assert recipe.nodes["a"].params["cmd"] == "echo child > ${out}/a"


def test_errors_in_inherited_keys_point_at_the_file_that_set_them(project):
    project.write("base.yaml", "version: 1\nartifacts:\n  a: {kind: command, cmd: x, bogus: 1}\n")
    project.recipe("extends: base.yaml\n")
    result = project.run("validate")
    assert result.code == 2
    assert "base.yaml:3:30: artifacts.a.bogus: unknown key 'bogus'" in result.err


def test_whole_reference_keeps_type_and_set_overrides(project, monkeypatch):
    monkeypatch.setenv("RB_WORD", "hi")
    path = project.recipe("""
        version: 1
        vars: {n: 3, nested: {k: [1, 2]}, word: "${env.RB_WORD}"}
        artifacts:
          a:
            kind: command
            cmd: "echo ${vars.word}-${env.RB_MISSING:-dflt} $${HOME}"
            params: {n: "${vars.n}", lst: "${vars.nested.k}"}
    """)
    recipe = load_recipe(path, ["vars.n=5"])
    params = recipe.nodes["a"].params
    assert params["params"] == {"n": 5, "lst": [1, 2]}
    assert params["cmd"] == "echo hi-dflt ${HOME}"
    assert params["deps"] == []  # schema default applied


def test_shell_variables_reach_the_shell(project):
    project.recipe("""
        version: 1
        artifacts:
          a: {kind: command, cmd: "X=shell; echo $${X} > ${out}/x"}
    """)
    assert project.run("make").code == 0
    assert project.read("build/x/x".replace("x/x", "a/x")) == "shell\n"


def test_workdir_is_relative_to_the_recipe(project):
    project.write("sub/recbuild.yaml", "version: 1\nworkdir: out\nartifacts:\n  a: {kind: command, cmd: 'echo 1 > ${out}/f'}\n")
    result = project.run("make", "-f", "sub/recbuild.yaml")
    assert result.code == 0
    assert (project.path / "sub/out/a/f").exists()


def test_graph_and_list(project):
    project.write("data/raw.txt", "x")
    project.recipe("""
        version: 1
        sources:
          raw: {path: data/raw.txt}
        artifacts:
          a: {kind: command, deps: [raw], cmd: "cp ${deps.raw} ${out}/"}
    """)
    mermaid = project.run("graph")
    assert mermaid.out.startswith("graph LR")
    assert "n0 --> n1" in mermaid.out
    dot = project.run("graph", "--format", "dot")
    assert "digraph recbuild" in dot.out and "n0 -> n1;" in dot.out
    listing = project.run("list")
    assert "raw" in listing.out and "recbuild.yaml:5:3" in listing.out


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="needs Ray (the ray extra: pip install -e '.[ray]')")
def test_recipe_wide_executor_default(project):
    project.recipe("""
        version: 1
        executor: ray
        ray: {address: local}
        sources:
          items: {path: items.parquet}
          towers: {path: towers}
        artifacts:
          a: {kind: item_embeddings, towers: towers, items: items}
          b: {kind: item_embeddings, towers: towers, items: items, executor: local}
          c: {kind: command, cmd: "true"}
    """)
    (project.path / "towers").mkdir()
    (project.path / "items.parquet").write_text("x")
    recipe = load_recipe(project.path / "recbuild.yaml")
    assert recipe.nodes["a"].params["executor"] == "ray"
    assert recipe.nodes["a"].params["ray"] == {"address": "local"}
    assert recipe.nodes["b"].params["executor"] == "local"
    assert "executor" not in recipe.nodes["c"].params


def test_recipe_wide_default_errors_point_at_it(project):
    project.recipe("""
        version: 1
        ray: {adress: local}
        sources:
          items: {path: items.parquet}
          towers: {path: towers}
        artifacts:
          a: {kind: item_embeddings, towers: towers, items: items}
    """)
    result = project.run("validate")
    assert result.code == 2
    assert "recbuild.yaml:2:7: artifacts.a.ray.adress: unknown key 'adress' (did you mean 'address'?)" in result.err


def test_readme_graph_is_the_dssm_templates(project):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    drawn = readme.split("```mermaid\n")[1].split("```")[0].strip()
    result = project.run("graph", "-f", str(REPO / "recipes" / "dssm.yaml"))
    assert result.code == 0
    assert result.out.strip() == drawn, "README's graph is stale: paste `recbuild graph -f recipes/dssm.yaml`"
