"""The tzrec kinds' pieces that need no TorchEasyRec: checkpoint choice, input paths, settings errors,
the stand-ins, recbuild's kinds over tzrec's layouts, arrow-exact tree means, `init` side files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recbuild.builders.base import InputArtifact
from recbuild.errors import BuildError, InputError

REPO = Path(__file__).resolve().parents[1]
SHIMS = REPO / "tools" / "tzrec_cpu_env" / "shims"


# -- checkpoint selection (recbuild's rules over tzrec's model.ckpt-N/model/ layout) -------------------
def _model_dir(tmp_path, steps, lines, config_facts=None):
    for step in steps:
        (tmp_path / f"model.ckpt-{step}" / "model").mkdir(parents=True)
    (tmp_path / "train_eval_result_v2.txt").write_text("".join(json.dumps(l) + "\n" for l in lines))
    return tmp_path


def test_choose_latest_best_and_direction(tmp_path):
    from recbuild.tzrec.checkpoints import choose

    folder = _model_dir(tmp_path, [0, 10, 20], [
        {"global_step": 0, "auc": 0.565, "loss": 0.9}, {"global_step": 10, "auc": 0.570, "loss": 0.8},
        {"global_step": 20, "auc": 0.570, "loss": float("nan")}])
    assert choose(folder, None, None, None).step == 20  # default: latest, as tzrec
    assert choose(folder, "best", "auc", None).step == 10  # a tie goes to the earliest step
    assert choose(folder, "best", "loss", False).step == 10  # NaN never wins; smaller is better
    facts = {"exporter_type": "best", "best_exporter_metric": "loss", "metric_larger_is_better": False}
    chosen = choose(folder, None, None, None, facts)  # the pipeline's export_config decides
    assert (chosen.step, chosen.metric) == (10, "loss")
    assert choose(folder, "model.ckpt-0", None, None).step == 0
    with pytest.raises(BuildError, match="needs `metric:`"):
        choose(folder, "best", None, None)
    with pytest.raises(BuildError, match="not in"):
        choose(folder, "best", "recall@5", None)
    with pytest.raises(BuildError, match="outside"):
        choose(folder, "../x", None, None)


# -- the input paths tzrec is given ---------------------------------------------------------------------
def _artifact(name, folder, files):
    paths = []
    for rel in files:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        paths.append(path)
    return InputArtifact(name, "sample_data", folder, tuple(sorted(paths)), {})


def test_table_path_names_exactly_the_hashed_files(tmp_path):
    from recbuild.builders.tzrec_step import table_path

    one = _artifact("one", tmp_path / "build" / "one", ["part-0.parquet", "MANIFEST.json"])
    assert table_path(one, tmp_path, ".parquet") == "build/one/part-0.parquet"
    many = _artifact("many", tmp_path / "build" / "many", ["part-0.parquet", "part-1.parquet", "MANIFEST.json"])
    assert table_path(many, tmp_path, ".parquet") == "build/many/*.parquet"
    mixed = _artifact("mixed", tmp_path / "d", ["a/part-0.parquet", "b/part-1.parquet"])
    assert table_path(mixed, tmp_path, ".parquet") == "d/a/part-0.parquet,d/b/part-1.parquet"
    outside = _artifact("outside", tmp_path.parent / f"{tmp_path.name}-x", ["t.parquet"])
    assert table_path(outside, tmp_path, ".parquet").startswith("/")
    with pytest.raises(InputError, match="no .parquet"):
        table_path(_artifact("csv", tmp_path / "c", ["a.csv"]), tmp_path, ".parquet")


# -- settings and environment errors, through the CLI --------------------------------------------------
RECIPE = """
version: 1
tzrec: {python: %s}
sources:
  cfg: {path: pipeline.config}
  train: {kind: sample_data, table: interactions, rows: 100, n_items: 50, n_users: 20, n_categories: 5}
artifacts:
  checkpoints: {kind: tzrec_train_eval, pipeline_config: cfg, data: train}
"""


def test_relative_interpreter_is_a_recipe_error(project):
    project.write("pipeline.config", "model_dir: 'x'\n")
    project.recipe(RECIPE % "venv/bin/python")
    result = project.run("validate")
    assert result.code == 2
    assert "tzrec.python" in result.err and "relative path" in result.err and "Traceback" not in result.err


def test_missing_interpreter_is_one_clear_build_error(project):
    project.write("pipeline.config", "model_dir: 'x'\n")
    project.recipe(RECIPE % "/nonexistent/bin/python")
    result = project.run("make")
    assert result.code == 1
    assert "tzrec interpreter '/nonexistent/bin/python' (tzrec.python) was not found" in result.err
    assert "recbuild.yaml:7:3" in result.err and "Traceback" not in result.err
    status = project.run("status")
    assert status.code == 0  # the key says the version is unavailable; status still works


def test_interpreter_without_tzrec(project):
    project.write("pipeline.config", "model_dir: 'x'\n")
    project.recipe(RECIPE % sys.executable)
    result = project.run("make")
    assert result.code == 1
    assert "has no tzrec" in result.err and "TZREC_PYTHON" in result.err


def test_fixed_size_list_embeddings_are_refused_before_tzrec_runs(project):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (project.path / "emb").mkdir()
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(20, dtype=np.float32)), 4)
    pq.write_table(pa.table({"item_id": pa.array(range(5)), "item_tower_emb": vectors}),
                   project.path / "emb" / "part-0.parquet")
    project.recipe("""
        version: 1
        tzrec: {python: /nonexistent/python}
        sources: {emb: {path: emb}}
        artifacts:
          index: {kind: tzrec_create_faiss_index, embeddings: emb, ivf_nlist: 2}
        """)
    result = project.run("make")
    assert result.code == 1
    assert "embedding_format: list_double" in result.err and "fixed_size_list" in result.err


# -- the stand-ins of pyfg / graphlearn / common_io ----------------------------------------------------
def test_stand_ins_import_but_log_and_raise_on_use(tmp_path):
    log = tmp_path / "shim.log"
    code = ("import recbuild_tzrec_shims as s; s.install()\n"
            "import pyfg, graphlearn as gl\n"
            "from graphlearn.python.nn.pytorch.data import utils\n"
            "x = pyfg.FgHandler  # reading an attribute is fine\n"
            "try:\n    gl.Graph()\nexcept s.ShimCalledError as e:\n    print('raised', e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SHIMS), "RECBUILD_TZREC_SHIM_LOG": str(log),
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "raised graphlearn.Graph was used" in done.stdout
    lines = log.read_text().splitlines()
    assert any(line.startswith("CALLED graphlearn.Graph") for line in lines)
    assert not any(line.startswith("CALLED pyfg") for line in lines)


def test_stand_ins_let_a_real_package_win(tmp_path):
    (tmp_path / "pyfg").mkdir()
    (tmp_path / "pyfg" / "__init__.py").write_text("REAL = True\n")
    code = "import recbuild_tzrec_shims as s; s.install(); import pyfg; print(pyfg.REAL is True)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": f"{SHIMS}:{tmp_path}", "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "True", done.stderr


# -- recbuild's kinds over tzrec's layouts --------------------------------------------------------------
def _tzrec_export(folder: Path, sides=("user", "item")):
    import zipfile

    for side in sides:
        (folder / side).mkdir(parents=True)
        with zipfile.ZipFile(folder / side / "scripted_model.pt", "w") as archive:
            archive.writestr("x/data.pkl", b"")
        for name, text in (("pipeline.config", "model_dir: 'm'\n"), ("fg.json", '{"features": []}'),
                           ("model_acc.json", '{"SPARSE_INT64": "1"}')):
            (folder / side / name).write_text(text)


def _tzrec_index(folder: Path, n=40, d=8):
    import faiss

    folder.mkdir(parents=True)
    vectors = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, 4, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    faiss.write_index(index, str(folder / "faiss_index"))
    (folder / "id_mapping").write_text("".join(f"{i + 100}\n" for i in range(n)))


def test_serving_bundle_over_tzrec_export_and_index(project):
    _tzrec_export(project.path / "export")
    _tzrec_index(project.path / "index")
    project.recipe("""
        version: 1
        sources: {export: {path: export}, index: {path: index}}
        artifacts:
          serving: {kind: serving_bundle, model: export, index: index, nprobe: 2}
        """)
    result = project.run("make")
    assert result.code == 0, result.err
    bundle = project.path / "build" / "serving"
    for rel in ("user/scripted_model.pt", "user/faiss_index", "user/id_mapping", "user/index_meta.json",
                "item/scripted_model.pt", "item/fg.json"):
        assert (bundle / rel).is_file(), rel
    assert not (bundle / "model").exists()
    meta = json.loads((bundle / "user" / "index_meta.json").read_text())
    assert (meta["type"], meta["metric"], meta["dim"], meta["count"]) == ("IVFFlat", "ip", 8, 40)
    config = json.loads((bundle / "serving_config.json").read_text())
    assert config["outputs"] == ["user_tower_emb"] and config["faiss_nprobe"] == 2


def test_serving_bundle_keeps_tzrec_tdm_layout(project):
    _tzrec_export(project.path / "export", sides=("model", "embedding"))
    project.recipe("""
        version: 1
        sources: {export: {path: export}}
        artifacts:
          serving: {kind: serving_bundle, model: export}
        """)
    assert project.run("make").code == 0
    bundle = project.path / "build" / "serving"
    assert (bundle / "model" / "scripted_model.pt").is_file()
    assert (bundle / "embedding" / "scripted_model.pt").is_file()


# -- tree means as pyarrow computes them (tzrec's init_tree) -------------------------------------------
def test_group_means_match_pyarrow_to_the_last_bit():
    import pyarrow as pa
    import pyarrow.compute as pc

    from recbuild.retrieval.tree_io import arrow_group_means

    rng = np.random.default_rng(1)
    for trial in range(60):
        n_groups = int(rng.integers(1, 5))
        pairs = np.unique(np.stack([rng.integers(0, n_groups, 300), rng.integers(0, 400, 300)], 1), axis=0)
        groups, rows = pairs[:, 0], pairs[:, 1]
        values = np.round(rng.normal(50, 30, 400), 2) * (1e6 if trial % 5 == 0 else 1)
        valid = rng.random(400) > (0.3 if trial % 2 else 0.0)
        means, counts = arrow_group_means(values, valid, rows, groups, n_groups)
        for group in range(n_groups):
            chosen = np.sort(rows[groups == group])
            expected = pc.mean(pa.array([values[r] if valid[r] else None for r in chosen])).as_py()
            assert counts[group] == 0 if expected is None else means[group] == expected


def test_init_tree_root_mean_is_arrows(tmp_path):
    """The case of the issue: the root's mean of a raw attribute over 300 items."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from recbuild.retrieval.tree_io import arrow_group_means

    values = np.round(np.random.default_rng(7).uniform(1, 100, 300), 2)
    means, _ = arrow_group_means(values, np.ones(300, bool), np.arange(300), np.zeros(300, np.int64), 1)
    assert means[0] == pc.mean(pa.array(values)).as_py()
    assert str(means[0]) == str(pc.mean(pa.array(values)).as_py())


# -- templates ---------------------------------------------------------------------------------------
def test_init_copies_the_templates_pipeline_config(project):
    result = project.run("init", "tzrec_dssm", "demo")
    assert result.code == 0, result.err
    assert (project.path / "demo" / "pipeline.config").read_text() == \
        (REPO / "recipes" / "tzrec_dssm" / "pipeline.config").read_text()
    project.path = project.path / "demo"
    assert project.run("validate").code == 0
    again = project.run("init", "tzrec_dssm", ".")
    assert again.code == 2 and "already exists" in again.err
