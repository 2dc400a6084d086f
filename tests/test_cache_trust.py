"""A cache that never serves a wrong artifact: inputs checked again after the step, the toolchain in
the key, restored trees equal to built ones (modes, empty folders), and a gc that deletes only what
an explicit policy proves unused."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# ------------------------------------------------------------------- inputs checked after the step

EDITED_MID_STEP = """
version: 1
cache: {cache}
sources:
  text: {{path: data/in.txt}}
artifacts:
  copy:
    kind: command
    deps: [text]
    # an editor (or a git checkout, a data sync) saves the input after recbuild hashed it and
    # before the step reads it
    cmd: if [ -e save-mid-step ]; then rm save-mid-step; echo saved-mid-step > data/in.txt; fi;
         cat ${{deps.text}} > ${{out}}/copy.txt
"""


def _cache_contents(cache: Path) -> list[bytes]:
    found = []
    for archive in sorted(cache.glob("v1/*/*.tar")):
        with tarfile.open(archive) as tar:
            found += [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]
    return found


def test_a_source_saved_while_its_step_runs_is_neither_published_nor_pushed(project, tmp_path):
    cache = tmp_path / "cache"
    project.recipe(EDITED_MID_STEP.format(cache=cache))
    project.write("data/in.txt", "one\n")
    assert project.run("make").built == ["copy"]
    project.write("data/in.txt", "two\n")
    (project.path / "save-mid-step").touch()
    failed = project.run("make")
    assert failed.code == 1
    assert "changed while the step ran" in failed.err and "data/in.txt" in failed.err
    assert "run make again" in failed.err and "Traceback" not in failed.err
    assert project.read("build/copy/copy.txt") == "one\n"  # the previous artifact stays
    assert b"saved-mid-step\n" not in _cache_contents(cache)  # nothing pushed under two's key
    assert len(list(cache.glob("v1/*/*.json"))) == 1

    project.write("data/in.txt", "two\n")  # the file put back: it was never built from two
    again = project.run("make")
    assert again.built == ["copy"] and project.read("build/copy/copy.txt") == "two\n"
    fresh = tmp_path / "fresh"  # another checkout with the same content restores the right bytes
    fresh.mkdir()
    shutil.copy(project.path / "recbuild.yaml", fresh)
    (fresh / "data").mkdir()
    (fresh / "data/in.txt").write_text("two\n")
    project.path = fresh
    restored = project.run("make")
    assert restored.restored == ["copy"] and project.read("build/copy/copy.txt") == "two\n"


def test_an_upstream_artifact_changed_while_its_dependent_runs_fails_the_dependent(project):
    project.recipe("""
        version: 1
        artifacts:
          base: {kind: command, cmd: "echo base > ${out}/base.txt"}
          top:
            kind: command
            deps: [base]
            cmd: echo tampered > ${deps.base}/base.txt; cat ${deps.base}/base.txt > ${out}/top.txt
    """)
    result = project.run("make")
    assert result.code == 1 and "changed while the step ran" in result.err
    assert "modified file base.txt" in result.err
    assert not (project.path / "build/top").exists()


# ------------------------------------------------------------------- the toolchain in the key

INDEX_RECIPE = """
version: 1
cache: {cache}
sources:
  vectors: {{path: data/vectors.parquet}}
artifacts:
  index: {{kind: faiss_index, embeddings: vectors, id_column: item_id, index_type: Flat}}
  listing: {{kind: command, deps: [index], cmd: "ls ${{deps.index}} > ${{out}}/files.txt"}}
"""


def _vectors(path: Path, rows: int = 64, dim: int = 8) -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((rows, dim)).astype(np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"item_id": pa.array(np.arange(rows, dtype=np.int64)), "item_tower_emb": emb}), path)


def _fake_distribution(folder: Path, name: str, version: str) -> Path:
    """An installed-looking distribution ahead of the real one on sys.path: the version recbuild
    reads changes, the code that runs does not (no second faiss or torch needed)."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def _cli(project, *args: str, pythonpath: Path | None = None):
    env = {**os.environ}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "recbuild.cli", *args], cwd=project.path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_another_faiss_version_makes_the_index_stale_and_skips_its_cache_entry(project, tmp_path):
    from recbuild.core.workdir.toolchain import fact

    installed = fact("faiss")
    cache = tmp_path / "cache"
    _vectors(project.path / "data/vectors.parquet")
    project.recipe(INDEX_RECIPE.format(cache=cache))
    assert sorted(project.run("make").built) == ["index", "listing"]
    manifest = (project.path / "build/index/MANIFEST.json").read_text()
    assert f'"faiss": "{installed}"' in manifest  # provenance: what built it
    verbose = project.run("status", "-v")
    assert "index: built by recbuild" in verbose.out and f"faiss {installed}" in verbose.out
    assert project.run("report", "-o", "report.html").code == 0
    page = project.read("report.html")
    assert 'id="provenance"' in page and f"faiss {installed}" in page

    newer = _fake_distribution(tmp_path / "site", "faiss-cpu", "99.0.0")
    status = _cli(project, "status", pythonpath=newer)
    index_row = next(line for line in status.stdout.splitlines() if line.startswith("index"))
    assert "stale" in index_row and "faiss-cpu 99.0.0" in index_row
    explain = _cli(project, "explain", "index", pythonpath=newer)
    assert f"faiss {installed} -> faiss-cpu 99.0.0" in explain.stdout
    rebuilt = _cli(project, "make", pythonpath=newer)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "built" in rebuilt.stdout and "restored" not in rebuilt.stdout  # not the old version's entry
    # early cut-off: the index came out byte-identical, so what reads it stays
    assert "up to date listing" in " ".join(rebuilt.stdout.split())
    assert len(list(cache.glob("v1/*/*.json"))) == 3  # one index entry per faiss version
    back = project.run("status").out  # back on the installed faiss: its entry is still the right one
    assert f"faiss faiss-cpu 99.0.0 -> {installed}" in back
    assert project.run("make").restored == ["index"]


def test_the_torch_kinds_and_every_kind_declare_what_decides_their_bytes():
    from recbuild.builders import builtin_builders

    builders = builtin_builders()
    for kind in ("train", "export", "towers", "item_embeddings", "user_embeddings"):
        assert "torch" in builders[kind].toolchain, kind
    assert "faiss" in builders["faiss_index"].toolchain
    assert "pyarrow" in builders["sample_data"].toolchain
    for kind, builder in builders.items():
        if kind != "command" and not kind.startswith("tzrec_"):
            assert builder.toolchain, f"{kind} declares no toolchain"


def test_a_command_adds_its_own_toolchain_commands_and_environment(project, monkeypatch):
    project.recipe("""
        version: 1
        artifacts:
          out:
            kind: command
            cmd: "echo built > ${out}/x"
            toolchain: ["cat tool-version.txt"]
            key_env: [RECBUILD_TEST_FLAGS]
    """)
    project.write("tool-version.txt", "tool 1.0\n")
    monkeypatch.setenv("RECBUILD_TEST_FLAGS", "-O2")
    assert project.run("make").built == ["out"]
    assert "1 up to date" in _cli(project, "make").stdout
    project.write("tool-version.txt", "tool 2.0\n")
    explain = _cli(project, "explain", "out")
    assert "toolchain `cat tool-version.txt`: tool 1.0" in explain.stdout and "tool 2.0" in explain.stdout
    project.write("tool-version.txt", "tool 1.0\n")
    env = {**os.environ, "RECBUILD_TEST_FLAGS": "-O3"}
    changed = subprocess.run([sys.executable, "-m", "recbuild.cli", "explain", "out"], cwd=project.path,
                             env=env, capture_output=True, text=True, timeout=120)
    assert "env RECBUILD_TEST_FLAGS" in changed.stdout and "-O2" not in changed.stdout  # digests only


# ------------------------------------------------------------------- faithful trees

TREE_RECIPE = """
version: 1
cache: {cache}
artifacts:
  tool:
    kind: command
    cmd: mkdir -p ${{out}}/bin ${{out}}/empty/nested ${{out}}/logs;
         printf '#!/bin/sh\\necho ran\\n' > ${{out}}/bin/run.sh; chmod 755 ${{out}}/bin/run.sh;
         echo data > ${{out}}/data.txt
  use:
    kind: command
    deps: [tool]
    cmd: ${{deps.tool}}/bin/run.sh > ${{out}}/ran.txt
"""


def tree_of(folder: Path) -> dict[str, tuple]:
    """Every entry under an artifact folder: (type, exec bit, bytes) per relative path."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel == "MANIFEST.json":
            continue
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            found[rel] = ("folder", stat.S_IMODE(mode))
        else:
            found[rel] = ("file", stat.S_IMODE(mode), path.read_bytes())
    return found


def test_modes_and_empty_folders_round_trip_through_the_cache(project, tmp_path):
    cache = tmp_path / "cache"
    project.recipe(TREE_RECIPE.format(cache=cache))
    assert project.run("make").built == ["tool", "use"]
    built = {name: tree_of(project.path / "build" / name) for name in ("tool", "use")}
    assert built["tool"]["bin/run.sh"][1] == 0o755 and built["tool"]["empty/nested"][0] == "folder"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(project.path / "recbuild.yaml", fresh)
    project.path = fresh
    assert project.run("cache", "pull").code == 0
    assert {name: tree_of(fresh / "build" / name) for name in ("tool", "use")} == built
    shutil.rmtree(fresh / "build" / "use")  # the executable runs after a restore
    assert project.run("make", "-B", "use").code == 0
    assert project.read("build/use/ran.txt") == "ran\n"


@pytest.mark.parametrize("change, seen", [
    (lambda a: (a / "empty" / "nested" / "new.txt").write_text("x"), "unexpected file empty/nested/new.txt"),
    (lambda a: (a / "logs" / "late").mkdir(), "unexpected folder logs/late"),
    (lambda a: os.rmdir(a / "empty" / "nested"), "missing folder empty/nested"),
    (lambda a: os.chmod(a / "bin" / "run.sh", 0o644), "mode of bin/run.sh changed"),
    (lambda a: os.chmod(a / "data.txt", 0o755), "mode of data.txt changed"),
])
def test_any_change_to_a_file_or_folder_of_an_artifact_makes_it_stale(project, tmp_path, change, seen):
    project.recipe(TREE_RECIPE.format(cache=tmp_path / "cache"))
    assert project.run("make").code == 0
    assert "stale" not in project.run("status").out
    time.sleep(0.03)  # past the stat cache's racy window, as a later edit would be
    change(project.path / "build" / "tool")
    status = project.run("status")
    row = next(line for line in status.out.splitlines() if line.startswith("tool"))
    assert "stale" in row and seen in row


SMALL_DSSM = ["--set", "vars.n_items=300", "--set", "vars.n_users=200", "--set", "vars.train_rows=2000",
              "--set", "vars.eval_rows=400", "--set", "artifacts.index.nlist=8",
              "--set", "artifacts.checkpoints.epochs=1"]


def test_every_built_in_kind_restores_the_tree_it_built(project, tmp_path):
    """sample_data, train, export, towers, item/user embeddings, faiss_index, tdm_tree, recall_eval,
    serving_bundle and command, built once and restored into a fresh workdir: equal trees."""
    cache = tmp_path / "cache"
    assert project.run("init", "dssm", "demo").code == 0
    demo = project.path / "demo"
    recipe = (demo / "recbuild.yaml").read_text()
    recipe += f"""
cache: {cache}
"""
    recipe = recipe.replace("artifacts:\n", """artifacts:
  users: {kind: user_embeddings, towers: towers, users: eval, on_duplicate: first}
  tree: {kind: tdm_tree, mode: learnt, embeddings: item_embeddings, n_cluster: 2}
  tool: {kind: command, cmd: "mkdir -p ${out}/empty; printf 'x' > ${out}/run.sh; chmod +x ${out}/run.sh"}
""", 1)
    (demo / "recbuild.yaml").write_text(recipe)
    project.path = demo
    built = project.run("make", *SMALL_DSSM, "users", "tree", "tool", "serving", "recall")
    assert built.code == 0, built.err
    kinds = set()
    trees = {}
    for folder in sorted((demo / "build").iterdir()):
        if (folder / "MANIFEST.json").is_file():
            trees[folder.name] = tree_of(folder)
            kinds.add(json.loads((folder / "MANIFEST.json").read_text())["kind"])
    assert {"train", "export", "towers", "item_embeddings", "user_embeddings", "faiss_index", "tdm_tree",
            "recall_eval", "serving_bundle", "command"} <= kinds
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(demo / "recbuild.yaml", fresh)
    project.path = fresh
    pulled = project.run("cache", "pull", *SMALL_DSSM)
    assert pulled.code == 0, pulled.err
    restored = {name: tree_of(fresh / "build" / name) for name in trees}
    assert restored == trees
    # and the sources: sample_data is a source kind, so its tables are rebuilt, byte for byte
    assert project.run("make", *SMALL_DSSM, "items").code == 0


# ------------------------------------------------------------------- gc

GC_RECIPE = """
version: 1
cache: {cache}
sources:
  raw: {{path: data/raw.txt}}
artifacts:
  out: {{kind: command, deps: [raw], cmd: "cp ${{deps.raw}} ${{out}}/copy.txt"}}
"""


def _two_recipes_on_one_cache(project, tmp_path) -> tuple[Path, Path, Path]:
    cache = tmp_path / "cache"
    folders = []
    for branch, text in (("a", "branch a\n"), ("b", "branch b\n")):
        folder = tmp_path / branch
        folder.mkdir()
        (folder / "data").mkdir()
        (folder / "data/raw.txt").write_text(text)
        (folder / "recbuild.yaml").write_text(GC_RECIPE.format(cache=cache))
        project.path = folder
        assert project.run("make").built == ["out"]
        folders.append(folder)
    return cache, folders[0], folders[1]


def test_gc_without_a_policy_deletes_nothing_from_other_branches(project, tmp_path):
    cache, a, b = _two_recipes_on_one_cache(project, tmp_path)
    assert len(list(cache.glob("v1/*/*.json"))) == 2
    project.path = a
    dry = project.run("cache", "gc")
    assert dry.code == 0 and "nothing is deleted" in dry.out
    assert "would delete 1 entries" in dry.out and "needed by none of" in dry.out
    assert len(list(cache.glob("v1/*/*.json"))) == 2  # branch b's entry, built seconds ago, is there
    kept = project.run("cache", "gc", "--keep-needed-by", "recbuild.yaml", str(b / "recbuild.yaml"))
    assert "deleted 0 entries" in kept.out and len(list(cache.glob("v1/*/*.json"))) == 2
    young = project.run("cache", "gc", "--keep-days", "1")
    assert "deleted 0 entries" in young.out and len(list(cache.glob("v1/*/*.json"))) == 2
    only_a = project.run("cache", "gc", "--keep-needed-by", "recbuild.yaml")
    assert "deleted 1 entries" in only_a.out and len(list(cache.glob("v1/*/*.json"))) == 1


def test_gc_refuses_to_act_for_a_recipe_with_a_missing_source(project, tmp_path):
    cache, a, b = _two_recipes_on_one_cache(project, tmp_path)
    (a / "data/raw.txt").unlink()  # not checked out yet
    project.path = a
    for args in (("cache", "gc"), ("cache", "gc", "--keep-needed-by", "recbuild.yaml")):
        refused = project.run(*args)
        assert refused.code == 1 and "source 'raw'" in refused.err and "deletes nothing" in refused.err
        assert "Traceback" not in refused.err
    assert len(list(cache.glob("v1/*/*.json"))) == 2


def test_gc_by_last_use_and_by_size(project, tmp_path):
    cache, a, b = _two_recipes_on_one_cache(project, tmp_path)
    entries = sorted(cache.glob("v1/*/*.json"))
    old = time.time() - 10 * 86400
    stale_key = entries[0].name[:-len(".json")]
    for path in entries[0].parent.glob(stale_key + ".*"):
        os.utime(path, (old, old))
    project.path = a
    by_age = project.run("cache", "gc", "--keep-days", "5", "-n")
    assert "would delete 1 entries" in by_age.out and stale_key[:16] in by_age.out
    assert "unused for 10.0 days" in by_age.out
    # a restore counts as use: the entry is young again
    other = b if stale_key in (b / "build/out/MANIFEST.json").read_text() else a
    shutil.rmtree(other / "build")
    project.path = other
    assert project.run("make").restored == ["out"]
    assert "would delete 0 entries" in project.run("cache", "gc", "--keep-days", "5", "-n").out
    sized = project.run("cache", "gc", "--max-size", "1")
    assert "deleted 2 entries" in sized.out and not list(cache.glob("v1/*/*.json"))
    assert project.run("cache", "gc", "--max-size", "lots").code == 2


def test_dead_partial_uploads_are_removed_by_gc_and_the_next_push(project, tmp_path):
    cache, a, b = _two_recipes_on_one_cache(project, tmp_path)
    shard = next(cache.glob("v1/*/*.json")).parent
    left = shard / "0123.tar.tmp-deadbeef"  # what an upload killed half-way left (older layout)
    left.write_bytes(b"half")
    live = cache / "v1/tmp/4567.tar.tmp-cafe"  # an upload under way now
    live.write_bytes(b"going")
    dead = cache / "v1/tmp/89ab.tar.tmp-f00d"
    dead.write_bytes(b"dead")
    hour_ago = time.time() - 3700
    for path in (left, dead):
        os.utime(path, (hour_ago, hour_ago))
    project.path = a
    (a / "data/raw.txt").write_text("a new version\n")
    assert project.run("make").built == ["out"]  # its push cleans tmp/
    assert not dead.exists() and live.exists() and left.exists()
    dry = project.run("cache", "gc")
    assert "would delete partial upload" in dry.out and left.exists()
    project.run("cache", "gc", "--keep-needed-by", "recbuild.yaml", str(b / "recbuild.yaml"))
    assert not left.exists() and live.exists()


def test_a_budget_that_follows_the_machine_is_in_the_key_and_a_pinned_one_is_not():
    from recbuild.builders import builtin_builders

    tree, index = builtin_builders()["tdm_tree"], builtin_builders()["faiss_index"]
    assert "of this machine's memory" in tree.key_facts({"embeddings": "e", "memory_budget": None})["memory_budget"]
    assert "25% of this machine" in index.key_facts({"index_type": "IVFPQ", "memory_budget": "25%"})["memory_budget"]
    assert tree.key_facts({"embeddings": "e", "memory_budget": "4GB"}) == {}
    assert tree.key_facts({"mode": "init", "items": "i", "memory_budget": None}) == {}  # init ignores it
    assert index.key_facts({"index_type": "Flat", "memory_budget": None}) == {}  # refuses, never shrinks
