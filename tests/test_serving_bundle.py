"""serving_bundle layout and serving_config.json; serve_check answers from the bundle alone, equal
to an exact search with the same tower."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbuild.builders.base import BuildContext, InputArtifact
from recbuild.builders.faiss_index import FaissIndexBuilder
from recbuild.builders.serving_bundle import ServingBundleBuilder
from recbuild.builders.tdm_tree import TdmTreeBuilder
from recbuild.errors import BuildError, InputError
from recbuild.ml.serving_bundle import serve_check

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DIM = 8
N_ITEMS = 300


class UserTower(torch.nn.Module):
    """Exported-module contract: forward(Dict[str, Tensor]) -> {"user_tower_emb": float32 [B, D]}."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(16, DIM, generator=generator))
        self.age = torch.nn.Parameter(torch.randn(DIM, generator=generator))

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.table[inputs["user_id"] % 16] + inputs["age"][:, None] * self.age[None, :]
        return {"user_tower_emb": torch.nn.functional.normalize(x, dim=1)}


class ItemTower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(N_ITEMS, DIM, generator=torch.Generator().manual_seed(1)))

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"item_tower_emb": torch.nn.functional.normalize(self.table[inputs["item_id"] % 300], dim=1)}


def save_module(module, folder: Path, specs) -> None:
    """Both formats, as the towers kind writes them (serving loads model.pt2 only)."""
    from recbuild.ml import feature_io
    from recbuild.ml.exporter import save_torch_export

    folder.mkdir(parents=True, exist_ok=True)
    example = {s.name: (torch.arange(4, dtype=torch.int64) if s.kind == "id" else torch.rand(4))
               for s in specs}
    save_torch_export(module, example, folder / "model.pt2")
    torch.jit.save(torch.jit.script(module), str(folder / "scripted_model.pt"))
    feature_io.write_fg(folder, specs)


@pytest.fixture()
def world(tmp_path):
    from recbuild.ml.feature_io import FeatureSpec

    towers = tmp_path / "towers"
    save_module(UserTower(), towers / "user", [FeatureSpec("user_id", "id", "user", buckets=16, dim=DIM),
                                               FeatureSpec("age", "numeric", "user")])
    save_module(ItemTower(), towers / "item", [FeatureSpec("item_id", "id", "item", buckets=N_ITEMS, dim=DIM)])
    (towers / "MANIFEST.json").write_text("{}")
    model = tmp_path / "model"
    save_module(UserTower(), model, [FeatureSpec("user_id", "id", "user", buckets=16, dim=DIM),
                                     FeatureSpec("age", "numeric", "user")])
    (model / "MANIFEST.json").write_text("{}")
    ids = np.arange(N_ITEMS) + 1000
    with torch.no_grad():
        vectors = ItemTower()({"item_id": torch.from_numpy(ids)})["item_tower_emb"].numpy()
    items = tmp_path / "items"
    items.mkdir()
    pq.write_table(pa.table({"item_id": ids, "cate_id": ids % 7,
                             "item_tower_emb": pa.array(vectors.tolist(), pa.list_(pa.float32()))}),
                   items / "part-0.parquet")
    return tmp_path, towers, model, items, ids, vectors


def run(builder, tmp: Path, params: dict, inputs: dict[str, Path]) -> Path:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="out-"))
    artifacts = {f: InputArtifact(f, "artifact", p, tuple(sorted(p.glob("*.parquet"))), {}) for f, p in inputs.items()}
    ctx = BuildContext(name="x", kind=builder.kind, params={**{f: f for f in inputs}, **params}, out=out,
                       inputs=artifacts, recipe_dir=tmp, workdir=tmp)
    builder.run(ctx)
    return out


def user_vector(row) -> np.ndarray:
    with torch.no_grad():
        out = UserTower()({"user_id": torch.tensor([row["user_id"]]), "age": torch.tensor([row["age"]], dtype=torch.float32)})
    return out["user_tower_emb"].numpy()[0]


def test_bundle_layout_and_serve_check(world):
    tmp, towers, model, items, ids, vectors = world
    index = run(FaissIndexBuilder(), tmp, {"index_type": "Flat"}, {"embeddings": items})
    tree = run(TdmTreeBuilder(), tmp, {}, {"items": items})
    bundle = run(ServingBundleBuilder(), tmp, {"neigh_num": 20},
                 {"model": model, "towers": towers, "index": index, "tree": tree})
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert files == ["item/fg.json", "item/model.pt2", "item/scripted_model.pt", "model/fg.json",
                     "model/model.pt2", "model/scripted_model.pt", "model/serving_tree",
                     "serving_config.json", "tree/node_feature/part-0.parquet", "tree/serving_tree",
                     "user/faiss_index", "user/fg.json", "user/id_mapping", "user/index_meta.json",
                     "user/model.pt2", "user/scripted_model.pt"]
    config = json.loads((bundle / "serving_config.json").read_text())
    assert config == {"faiss_nprobe": None, "faiss_neigh_num": 20, "tdm_retrieval_num": 200,
                      "outputs": ["probs", "user_tower_emb"]}
    # The bundle alone answers: move it away from every input, then query.
    moved = tmp / "deployed"
    shutil.copytree(bundle, moved)
    for folder in (towers, model, items, index, tree, bundle):
        shutil.rmtree(folder)
    row = {"user_id": 5, "age": 0.3, "unused_column": "x"}
    got = serve_check(moved, row)
    want = np.argsort(-(vectors @ user_vector(row)), kind="stable")[:20]
    assert got == [str(i) for i in ids[want]]
    assert len(serve_check(moved, row, k=3)) == 3
    with pytest.raises(InputError, match="'age'"):
        serve_check(moved, {"user_id": 5})


def test_ivf_bundle_carries_nprobe(world):
    tmp, towers, _, items, ids, vectors = world
    index = run(FaissIndexBuilder(), tmp, {"index_type": "IVFFlat", "nlist": 4, "nprobe": 2}, {"embeddings": items})
    bundle = run(ServingBundleBuilder(), tmp, {}, {"towers": towers, "index": index})
    config = json.loads((bundle / "serving_config.json").read_text())
    assert config["faiss_nprobe"] == 2 and config["tdm_retrieval_num"] is None
    override = run(ServingBundleBuilder(), tmp, {"nprobe": 4}, {"towers": towers, "index": index})
    assert json.loads((override / "serving_config.json").read_text())["faiss_nprobe"] == 4
    row = {"user_id": 2, "age": -1.0}
    # probing all 4 lists is exact
    want = np.argsort(-(vectors @ user_vector(row)), kind="stable")[:10]
    assert serve_check(override, row, k=10) == [str(i) for i in ids[want]]
    # same inputs -> same bytes
    again = run(ServingBundleBuilder(), tmp, {"nprobe": 4}, {"towers": towers, "index": index})
    for path in sorted(override.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (again / path.relative_to(override)).read_bytes()


def test_needs_a_part_and_a_complete_input(world, tmp_path):
    assert ServingBundleBuilder().check({})[0][0] == "model"
    with pytest.raises(BuildError):
        run(ServingBundleBuilder(), tmp_path, {}, {})
    empty = tmp_path / "empty_index"
    empty.mkdir()
    with pytest.raises(InputError, match="faiss_index is missing"):
        run(ServingBundleBuilder(), tmp_path, {}, {"index": empty})
