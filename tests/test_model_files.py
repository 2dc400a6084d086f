"""Model files from outside a build cannot run code: crafted model.pt2 archives are refused before
anything in them runs, through the loader and through the CLI (item_embeddings, serve-check)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from recbuild.ml import feature_io  # noqa: E402
from recbuild.errors import InputError  # noqa: E402
from recbuild.ml.exporter import save_torch_export  # noqa: E402
from recbuild.ml.feature_io import FeatureSpec  # noqa: E402
from recbuild.ml.model_files import UnsafeModelFile, load_exported_program  # noqa: E402

SPECS = [FeatureSpec("item_id", "id", "item", buckets=50, dim=4)]


class Tower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)))

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"item_tower_emb": torch.nn.functional.normalize(self.table[inputs["item_id"] % 50], dim=1)}


class Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tower_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_torch_export(Tower().eval(), {"item_id": torch.arange(4)}, folder / "model.pt2")
    feature_io.write_fg(folder, SPECS)
    return folder


def rewrite(archive: Path, change) -> None:
    """Rewrite the zip entries of a .pt2 through ``change(name, data) -> data | None``."""
    with zipfile.ZipFile(archive) as source:
        entries = [(info, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as target:
        for info, data in entries:
            data = change(info.filename, data)
            if data is not None:
                target.writestr(info, data)


def pickled_weight(archive: Path, marker: Path) -> None:
    """Mark the first weight use_pickle and put a code-running pickle in its place."""
    config_name = next(n for n in zipfile.ZipFile(archive).namelist() if n.endswith("weights_config.json"))
    config = json.loads(zipfile.ZipFile(archive).read(config_name))
    fqn, meta = next(iter(config["config"].items()))
    meta["use_pickle"] = True
    weight_name = config_name.rsplit("/", 1)[0] + "/" + meta["path_name"]

    def change(name, data):
        if name == config_name:
            return json.dumps(config).encode()
        if name == weight_name:
            return pickle.dumps(Payload(marker), protocol=2)
        return data

    rewrite(archive, change)


def pickled_sample_inputs(archive: Path, marker: Path) -> None:
    """Sample inputs that fail a weights-only load: torch falls back to a full unpickle."""
    rewrite(archive, lambda name, data: pickle.dumps(Payload(marker), protocol=2)
            if "/sample_inputs/" in name else data)


def graph_calls(archive: Path, target: str) -> None:
    """Point the graph's first aten call at another callable (the deserializer resolves torch.<path>)."""
    model_json = next(n for n in zipfile.ZipFile(archive).namelist() if n.endswith("models/model.json"))

    def change(name, data):
        if name != model_json:
            return data
        text = data.decode()
        first = text.index('"target": "torch.ops.aten.')
        end = text.index('"', first + len('"target": "'))
        return (text[:first] + f'"target": "{target}' + text[end:]).encode()

    rewrite(archive, change)


CRAFTS = {"pickled-weight": pickled_weight, "pickled-sample-inputs": pickled_sample_inputs}


@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_plain_torch_export_load_would_run_the_payload(tmp_path, craft):
    """The threat is real: torch.export.load itself runs the crafted payload (in a subprocess)."""
    folder = tower_folder(tmp_path / "item")
    marker = tmp_path / "ran"
    CRAFTS[craft](folder / "model.pt2", marker)
    subprocess.run([sys.executable, "-c", f"import torch; torch.export.load({str(folder / 'model.pt2')!r})"],
                   capture_output=True, timeout=120)
    assert marker.exists(), "torch.export.load no longer unpickles this; the test needs a new craft"


@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_crafted_archive_is_refused_without_running(tmp_path, craft):
    folder = tower_folder(tmp_path / "item")
    marker = tmp_path / "ran"
    CRAFTS[craft](folder / "model.pt2", marker)
    with pytest.raises(InputError, match="model.pt2"):
        load_exported_program(folder / "model.pt2")
    assert not marker.exists()


@pytest.mark.parametrize("target", ["torch.os.system", "torch.ops.aten.from_file.default", "builtins.eval"])
def test_graph_calling_anything_but_aten_is_refused(tmp_path, target):
    folder = tower_folder(tmp_path / "item")
    graph_calls(folder / "model.pt2", target)
    with pytest.raises(InputError, match="model.pt2"):
        load_exported_program(folder / "model.pt2")


def test_legacy_pickled_weights_file_is_refused(tmp_path):
    folder = tower_folder(tmp_path / "item")
    archive = folder / "model.pt2"
    root = zipfile.ZipFile(archive).namelist()[0].split("/")[0]
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr(f"{root}/data/weights/model.pt", pickle.dumps(Payload(tmp_path / "ran")))
    with pytest.raises(UnsafeModelFile, match="legacy pickled payload"):
        load_exported_program(archive)


def test_a_clean_export_loads_and_runs(tmp_path):
    folder = tower_folder(tmp_path / "item")
    program = load_exported_program(folder / "model.pt2")
    out = program.module()({"item_id": torch.arange(3)})
    assert out["item_tower_emb"].shape == (3, 4)


def test_item_embeddings_over_a_crafted_tower_fails_cleanly(project):
    """Through the CLI: a towers folder given as a source, one line naming the file, nothing runs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    towers = project.path / "towers"
    tower_folder(towers / "item")
    marker = project.path / "ran"
    pickled_weight(towers / "item" / "model.pt2", marker)
    pq.write_table(pa.table({"item_id": pa.array(range(20), pa.int64())}), project.path / "items.parquet")
    project.recipe("""
        version: 1
        sources:
          towers: {path: towers}
          items: {path: items.parquet}
        artifacts:
          emb: {kind: item_embeddings, towers: towers, items: items, id_column: item_id}
    """)
    result = project.run("make")
    assert result.code == 1
    assert "model.pt2: refused, item_tower_emb" not in result.err
    assert "model.pt2: refused" in result.err and "Traceback" not in result.err
    assert not marker.exists()
    assert not (project.path / "build" / "emb").exists()


def test_serve_check_refuses_a_crafted_bundle(project, tmp_path):
    bundle = project.path / "bundle"
    tower_folder(bundle / "user")
    (bundle / "serving_config.json").write_text(json.dumps({"faiss_neigh_num": 5}))
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatIP(4)
    index.add(torch.randn(3, 4).numpy())
    faiss.write_index(index, str(bundle / "user" / "faiss_index"))
    (bundle / "user" / "id_mapping").write_text("1\n2\n3\n")
    marker = tmp_path / "ran"
    pickled_sample_inputs(bundle / "user" / "model.pt2", marker)
    result = project.run("serve-check", str(bundle), "--query", '{"item_id": 1}')
    assert result.code == 1
    assert "model.pt2" in result.err and "Traceback" not in result.err
    assert not marker.exists()
    shutil.rmtree(bundle)
