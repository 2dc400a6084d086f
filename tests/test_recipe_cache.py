"""The recipe cache is used only while every file and env var the load read is unchanged."""

from __future__ import annotations

from recbuild import recipe_cache
from recbuild.recipe import load_recipe


def test_cache_hit_and_invalidation(project, monkeypatch, tmp_path):
    monkeypatch.setenv("RECBUILD_CACHE_DIR", str(tmp_path / "rc"))
    monkeypatch.setenv("RB_X", "one")
    project.write("base.yaml", "version: 1\nvars: {w: base}\n")
    path = project.recipe("""
        extends: base.yaml
        artifacts:
          a: {kind: command, cmd: "echo ${vars.w} ${env.RB_X} > ${out}/f"}
    """)
    calls = []
    real_lookup = recipe_cache.lookup
    monkeypatch.setattr(recipe_cache, "lookup", lambda *a: calls.append(real_lookup(*a)) or calls[-1])

    def cmd() -> str:
        return load_recipe(path).nodes["a"].params["cmd"]

    assert cmd() == "echo base one > ${out}/f"
    assert calls[-1] is None
    assert cmd() == "echo base one > ${out}/f"
    assert calls[-1] is not None  # served from the cache
    monkeypatch.setenv("RB_X", "two")
    assert cmd() == "echo base two > ${out}/f"
    project.write("base.yaml", "version: 1\nvars: {w: changed}\n")
    assert cmd() == "echo changed two > ${out}/f"
    assert load_recipe(path, ["vars.w=set"]).nodes["a"].params["cmd"] == "echo set two > ${out}/f"
    monkeypatch.setenv("RECBUILD_RECIPE_CACHE", "0")
    assert cmd() == "echo changed two > ${out}/f"
    assert calls[-1] is None
