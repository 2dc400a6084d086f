"""Every recipe the README and docs/ show validates as written, through `recbuild validate`.

A block with `version:` is a whole recipe; any other is a fragment of a recipe that extends the
`dssm` template (the docs' running example), so it is checked with `version: 1` and `extends: dssm`
added when it has neither. A `...` among an entry's params stands for the params the template
gives (`checkpoints: {kind: train, ..., resources: {gpus: 1}}`): it is dropped, and the entry merges
into the template's. Sources named by path need not exist (`--allow-missing-sources`). The only
YAML that is not a recipe is a GitHub Actions workflow (docs/ci.md), recognised by its `jobs`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```ya?ml[^\n]*\n(.*?)^```", re.S | re.M)
_ELIDED = re.compile(r",\s*\.\.\.(?=\s*[,}])")  # `{kind: train, ..., lr: 1}`: the template's params


def _yaml_blocks() -> list:
    blocks = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text[:match.start()].count("\n") + 2  # the block's first line
            blocks.append(pytest.param(match.group(1), id=f"{doc.name}:{line}"))
    return blocks


BLOCKS = _yaml_blocks()


def _top_keys(block: str) -> dict:
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load(block)
    assert isinstance(data, dict), "a YAML block in the docs that is not a mapping"
    return data


def test_the_docs_show_recipes():
    assert len(BLOCKS) >= 8  # the scan found the blocks (a changed fence would silently find none)


@pytest.mark.parametrize("block", BLOCKS)
def test_every_yaml_block_in_the_docs_validates(project, block):
    keys = _top_keys(block)
    if "jobs" in keys:  # a CI workflow
        assert "steps" in block and "recbuild make" in block
        return
    text = _ELIDED.sub("", block)
    if "version" not in keys:
        text = ("" if "extends" in keys else "extends: dssm\n") + "version: 1\n" + text
    project.recipe(text)
    result = project.run("validate", "--allow-missing-sources")
    assert result.code == 0, f"\n{text}\n{result.err}"
    assert "error" not in result.err


def test_a_source_of_another_kind_replaces_the_inherited_one(project):
    """The README's rule: `items: {path: ...}` over the template's sample_data source is a file
    source (no unknown key 'path'), a `command` replaces the template's `train`; the same kind
    merges, so `rows` alone keeps the template's other params."""
    project.write("data/items/a.parquet", "not read by validate\n")
    project.recipe("""
        version: 1
        extends: dssm
        sources:
          items: {path: data/items/*.parquet}
          train: {kind: sample_data, rows: 1000}
          eval: {rows: 500}
        artifacts:
          checkpoints: {kind: command, cmd: "echo > ${out}/f"}
        """)
    result = project.run("validate")
    assert result.code == 0, result.err
    listed = project.run("list").out
    rows = {line.split()[0]: line.split()[1] for line in listed.splitlines()[1:] if line.strip()}
    assert rows["items"] == "source" and rows["train"] == "sample_data" and rows["checkpoints"] == "command"
    from recbuild.core.recipe.load import load_recipe

    recipe = load_recipe(project.path / "recbuild.yaml")
    assert recipe.nodes["items"].params == {"path": "data/items/*.parquet"}
    assert recipe.nodes["train"].params["rows"] == 1000 and recipe.nodes["train"].params["split"] == "train"
    assert recipe.nodes["eval"].params["rows"] == 500 and recipe.nodes["eval"].params["split"] == "eval"
    assert set(recipe.nodes["checkpoints"].params) >= {"cmd"}
    assert "epochs" not in recipe.nodes["checkpoints"].params  # nothing of the train kind merged in


def test_an_error_in_a_replacing_entry_points_at_it(project):
    project.recipe("""
        version: 1
        extends: dssm
        sources:
          items: {path: data/items, table: items}
        """)
    result = project.run("validate", "--allow-missing-sources")
    assert result.code == 2
    assert "error: recbuild.yaml:4:29: sources.items.table: unknown key 'table'" in result.err, result.err


def test_a_path_entry_among_artifacts_says_where_it_belongs(project):
    project.recipe("""
        version: 1
        extends: dssm
        artifacts:
          checkpoints: {path: my_model_dir}
        """)
    result = project.run("validate")
    assert result.code == 2
    assert ("recbuild.yaml:4:3: artifacts.checkpoints: missing required key 'kind': a {path: ...} "
            "entry is a source; declare it under sources instead") in result.err
