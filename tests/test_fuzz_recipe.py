"""Property-based fuzzing of the recipe loader: any input is a valid recipe or one clean
RecipeError (every line `file:line:col: path: message` or `file: message`), never a traceback."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings, strategies as st

from recbuild.builders import all_builders
from recbuild.errors import RecipeError
from recbuild.core.recipe.graph import build_graph
from recbuild.core.recipe.load import load_recipe

KEYS = ["version", "name", "workdir", "extends", "vars", "model", "sources", "artifacts", "default",
        "cache", "kind", "cmd", "deps", "params", "path", "env", "a", "b", "raw", "nlist", "${vars.x}"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                    st.sampled_from(["command", "sample_data", "x", "", "${vars.a}", "${env.HOME}",
                                     "${out}", "$${x}", "${vars.", "data/raw.txt", "a", "b", "1"]),
                    st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=25)


def _check(tmp_path, text: str) -> None:
    path = tmp_path / "recbuild.yaml"
    path.write_text(text, encoding="utf-8")
    builders = all_builders()
    try:
        build_graph(load_recipe(str(path), builders=builders), builders)
    except RecipeError as exc:
        assert exc.problems
        for line in exc.problems:
            assert "\n" not in line
            assert line.startswith(str(path)) or line.startswith("<template") or line.startswith("--set"), line


FUZZ = settings(max_examples=int(os.environ.get("RECBUILD_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(st.text(alphabet="ab:-[]{}\n #&*!|>'\"%@`,?${}.0123456789", max_size=120))
def test_random_text(tmp_path, text):
    _check(tmp_path, text)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_random_structures(tmp_path, data):
    _check(tmp_path, json.dumps(data))


@FUZZ
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "raw"]),
                       st.fixed_dictionaries({"kind": st.sampled_from(["command", "comand", 3])},
                                             optional={"cmd": VALUES, "deps": VALUES, "params": VALUES,
                                                       "env": VALUES, "bogus": VALUES}),
                       max_size=4))
def test_random_artifacts(tmp_path, artifacts):
    _check(tmp_path, json.dumps({"version": 1, "sources": {"src": {"path": "x.txt"}},
                                 "artifacts": artifacts}))
