"""The recipe cache is used only while every file and env var the load read is unchanged."""

from __future__ import annotations

from recbuild.core.recipe import parse_cache
from recbuild.core.recipe.load import load_recipe


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
    real_lookup = parse_cache.lookup
    monkeypatch.setattr(parse_cache, "lookup", lambda *a: calls.append(real_lookup(*a)) or calls[-1])

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


def test_entries_are_json_and_round_trip(project, monkeypatch, tmp_path):
    monkeypatch.setenv("RECBUILD_CACHE_DIR", str(tmp_path / "rc"))
    path = project.recipe("""
        version: 1
        vars: {k: [10, 50], nan: .nan}
        sources:
          raw: {path: data.txt}
        artifacts:
          a: {kind: command, cmd: "cat ${deps.raw} > ${out}/f", deps: [raw], params: {k: "${vars.k}"}}
    """)
    fresh = load_recipe(path)
    entries = list((tmp_path / "rc" / "recipes").iterdir())
    assert [e.suffix for e in entries] == [".json"]
    cached = load_recipe(path)
    assert cached is not fresh
    for field in ("path", "dir", "name", "workdir", "model", "default", "cache", "locations"):
        assert getattr(cached, field) == getattr(fresh, field), field
    assert cached.nodes == fresh.nodes


def test_a_tampered_entry_is_ignored_and_runs_nothing(project, monkeypatch, tmp_path):
    """The cache folder is the user's: a pickle or a wrong-shaped entry there is never trusted."""
    import os
    import pickle

    monkeypatch.setenv("RECBUILD_CACHE_DIR", str(tmp_path / "rc"))
    path = project.recipe("version: 1\nartifacts:\n  a: {kind: command, cmd: echo}\n")
    load_recipe(path)
    (entry,) = (tmp_path / "rc" / "recipes").iterdir()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for garbage in (pickle.dumps(Payload()), b"{", b'{"format": 2, "code": 1}', b"[]", b"\x00" * 64):
        entry.write_bytes(garbage)
        assert load_recipe(path).nodes["a"].params["cmd"] == "echo"
    assert not marker.exists()


def test_a_repointed_workdir_symlink_is_seen(project, monkeypatch, tmp_path):
    monkeypatch.setenv("RECBUILD_CACHE_DIR", str(tmp_path / "rc"))
    (project.path / "one").mkdir()
    (project.path / "two").mkdir()
    (project.path / "out").symlink_to("one")
    path = project.recipe("version: 1\nworkdir: out\nartifacts:\n  a: {kind: command, cmd: echo}\n")
    assert load_recipe(path).workdir == project.path / "one"
    (project.path / "out").unlink()
    (project.path / "out").symlink_to("two")
    assert load_recipe(path).workdir == project.path / "two"
