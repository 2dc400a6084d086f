"""The predictor and the item_embeddings/user_embeddings builders, on tiny seeded data.

The towers here are built in the test (torch.export + torch.jit.script + fg.json, as the
exported-module contract in docs/internals.md says), so these tests do not depend on the training
code. The engine is bypassed: builders run through a BuildContext directly.
"""

import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recbuild.ml import feature_io, predictor
from recbuild.builders.base import BuildContext, InputArtifact
from recbuild.builders.embeddings import ItemEmbeddingsBuilder, UserEmbeddingsBuilder
from recbuild.errors import BuildError, InputError
from recbuild.ml.feature_io import FeatureSpec

DIM = 8


class TinyTower(torch.nn.Module):
    """An item/user tower following the contract: dict of raw inputs -> {output_key: [B, D]}."""

    num_names: List[str]  # annotated: TorchScript cannot infer the type of a possibly empty list

    def __init__(self, specs: list[FeatureSpec], output_key: str, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.output_key = output_key
        self.id_names = [s.name for s in specs if s.kind == "id"]
        self.seq_names = [s.name for s in specs if s.kind == "sequence"]
        self.num_names = [s.name for s in specs if s.kind == "numeric"]
        self.buckets = 97
        self.tables = torch.nn.ModuleDict(
            {n: torch.nn.Embedding(self.buckets, 4) for n in self.id_names + self.seq_names})
        width = 4 * (len(self.id_names) + len(self.seq_names)) + len(self.num_names)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, DIM))

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        parts = []
        for name, table in self.tables.items():
            ids = inputs[name]
            if ids.dim() == 1:
                parts.append(table(torch.remainder(ids, self.buckets)))
            else:  # sequence: mean over the non-padding positions
                valid = (ids >= 0).unsqueeze(-1).float()
                emb = table(torch.remainder(ids.clamp(min=0), self.buckets)) * valid
                parts.append(emb.sum(1) / valid.sum(1).clamp(min=1.0))
        for name in self.num_names:
            parts.append(inputs[name].unsqueeze(1))
        out = torch.nn.functional.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)
        return {self.output_key: out}


def example_inputs(specs: list[FeatureSpec], rows: int = 4) -> Dict[str, torch.Tensor]:
    inputs = {}
    for s in specs:
        if s.kind == "id":
            inputs[s.name] = torch.arange(rows, dtype=torch.int64)
        elif s.kind == "numeric":
            inputs[s.name] = torch.rand(rows)
        else:
            inputs[s.name] = torch.full((rows, s.max_len), -1, dtype=torch.int64)
    return inputs


def export_tower(folder: Path, specs: list[FeatureSpec], output_key: str,
                 formats=("torch_export", "torchscript"), seed: int = 0) -> TinyTower:
    folder.mkdir(parents=True, exist_ok=True)
    model = TinyTower(specs, output_key, seed).eval()
    example = example_inputs(specs)
    if "torch_export" in formats:
        batch = torch.export.Dim("batch", min=1)
        shapes = ({name: {0: batch} for name in example},)
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        torch.export.save(program, str(folder / "model.pt2"))
    if "torchscript" in formats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(model).save(str(folder / "scripted_model.pt"))
    feature_io.write_fg(folder, specs)
    return model


ITEM_SPECS = [
    FeatureSpec("item_id", "id", "item", buckets=97, dim=4),
    FeatureSpec("cate_id", "id", "item", value_type="string", buckets=97, dim=4),
    FeatureSpec("price", "numeric", "item"),
]
USER_SPECS = [
    FeatureSpec("user_id", "id", "user", value_type="string", buckets=97, dim=4),
    FeatureSpec("click_seq", "sequence", "user", buckets=97, dim=4, max_len=5),
    FeatureSpec("tag_seq", "sequence", "user", column="tags", value_type="string", max_len=3),
]


def item_table(rows: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "item_id": pa.array(rng.permutation(rows * 3)[:rows].astype(np.int64) + 1000),
        "cate_id": pa.array([f"c{v}" for v in rng.integers(0, 13, rows)]),
        "price": pa.array(rng.random(rows, dtype=np.float32) * 10),
        "title": pa.array([f"item {i}" for i in range(rows)]),
        "brand": pa.array(rng.integers(0, 5, rows).astype(np.int32)),
    })


def user_table(rows: int, seed: int = 11) -> pa.Table:
    rng = np.random.default_rng(seed)
    seqs = [list(map(int, rng.integers(0, 500, rng.integers(0, 8)))) for _ in range(rows)]
    tags = [";".join(f"t{v}" for v in rng.integers(0, 20, rng.integers(0, 5))) for _ in range(rows)]
    return pa.table({
        "user_id": pa.array([f"u{i}" for i in range(rows)]),  # string ids in the id column
        "uid_int": pa.array(np.arange(rows, dtype=np.int64)),
        "click_seq": pa.array(seqs, type=pa.list_(pa.int64())),
        "tags": pa.array(tags),
    })


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("towers")
    export_tower(root / "item", ITEM_SPECS, "item_tower_emb", seed=1)
    export_tower(root / "user", USER_SPECS, "user_tower_emb", seed=2)
    return root


def write_parquet(table: pa.Table, path: Path, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def source(name: str, path: Path, url: str | None = None) -> InputArtifact:
    files = tuple(sorted(p for p in path.rglob("*") if p.is_file())) if path.is_dir() else \
        ((path,) if path.exists() else ())
    return InputArtifact(name=name, kind="source", path=path, files=files, manifest={}, url=url)


def run_builder(builder_cls, towers: Path, data: InputArtifact, out: Path, **params):
    builder = builder_cls()
    defaults = {k: v["default"] for k, v in builder.schema["properties"].items() if "default" in v}
    field = builder.reference_fields[1]
    full = {**defaults, "towers": "towers", field: data.name, **params}
    out.mkdir(parents=True, exist_ok=True)
    ctx = BuildContext(
        name=builder.kind, kind=builder.kind, params=full, out=out,
        inputs={"towers": InputArtifact("towers", "towers", towers, (), {}), field: data},
        recipe_dir=out.parent, workdir=out.parent)
    builder.run(ctx)
    return ctx


def read_output(out: Path) -> pa.Table:
    parts = sorted(out.glob("part-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))
    return pa.concat_tables([pq.read_table(p) for p in parts])


def reference_embeddings(tower_dir: Path, table: pa.Table, specs) -> np.ndarray:
    """The tower's outputs computed independently: TorchScript module, whole table in one batch."""
    module = torch.jit.load(str(tower_dir / "scripted_model.pt"))
    key = "item_tower_emb" if "item" in tower_dir.name else "user_tower_emb"
    with torch.inference_mode():
        return module(feature_io.batch_to_inputs(table, specs))[key].numpy()


# -- correctness -----------------------------------------------------------------------------------
def test_item_embeddings_equal_tower_outputs_and_keep_order(towers, tmp_path):
    table = item_table(300)
    data = source("items", write_parquet(table, tmp_path / "items.parquet", row_group_size=70))
    ctx = run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="item_id",
                      reserved_columns=["title", "brand"], batch_size=32)
    got = read_output(tmp_path / "out")
    assert got.column_names == ["item_id", "title", "brand", "item_tower_emb"]
    assert got.schema.field("item_tower_emb").type == pa.list_(pa.float32(), DIM)
    assert got.schema.field("brand").type == pa.int32()  # reserved columns keep their types
    assert got.column("item_id").equals(table.column("item_id"))  # input order
    assert got.column("title").equals(table.column("title"))
    emb = np.stack(got.column("item_tower_emb").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(emb, reference_embeddings(towers / "item", table, ITEM_SPECS),
                               rtol=1e-5, atol=1e-6)
    assert ctx.meta["rows"] == 300 and ctx.meta["dim"] == DIM
    assert ctx.meta["output_column"] == "item_tower_emb" and ctx.meta["id_column"] == "item_id"


def test_user_embeddings_string_ids_and_sequences(towers, tmp_path):
    table = user_table(120)
    data = source("users", write_parquet(table, tmp_path / "users" / "u.parquet"))
    run_builder(UserEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="user_id",
                batch_size=16)
    got = read_output(tmp_path / "out")
    assert got.column_names == ["user_id", "user_tower_emb"]
    assert got.column("user_id").equals(table.column("user_id"))
    emb = np.stack(got.column("user_tower_emb").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(emb, reference_embeddings(towers / "user", table, USER_SPECS),
                               rtol=1e-5, atol=1e-6)


def test_scripted_only_tower_is_refused(tmp_path):
    """TorchScript runs its own code while loading: recbuild loads model.pt2 only."""
    scripted = tmp_path / "towers"
    export_tower(scripted / "item", ITEM_SPECS, "item_tower_emb", formats=("torchscript",), seed=1)
    data = source("items", write_parquet(item_table(50), tmp_path / "items.parquet"))
    with pytest.raises(BuildError, match=r"holds no model.pt2 \(it has scripted_model.pt, which recbuild "
                                         r"does not load"):
        run_builder(ItemEmbeddingsBuilder, scripted, data, tmp_path / "b", id_column="item_id")


def test_embedding_formats(towers, tmp_path):
    table = item_table(40)
    data = source("items", write_parquet(table, tmp_path / "items.parquet"))
    results = {}
    for fmt in ("fixed_size_list", "list_double", "string"):
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / fmt, id_column="item_id",
                    embedding_format=fmt, batch_size=16)
        results[fmt] = read_output(tmp_path / fmt).column("item_tower_emb")
    assert results["list_double"].type == pa.list_(pa.float64())  # TorchEasyRec's type
    assert results["string"].type == pa.string()  # EasyRec's
    base = np.stack(results["fixed_size_list"].to_numpy(zero_copy_only=False))
    doubles = np.stack(results["list_double"].to_numpy(zero_copy_only=False))
    assert doubles.dtype == np.float64
    np.testing.assert_array_equal(doubles, base.astype(np.float64))  # exact: float32 -> double
    parsed = np.array([[np.float32(x) for x in s.split(",")] for s in results["string"].to_pylist()])
    np.testing.assert_array_equal(parsed, base)  # the text round-trips to the same float32


def test_output_is_byte_identical_across_runs(towers, tmp_path):
    data = source("items", write_parquet(item_table(200), tmp_path / "items.parquet"))
    for name in ("a", "b"):
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / name, id_column="item_id",
                    reserved_columns=["cate_id"], batch_size=64, rows_per_file=150)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["part-0.parquet", "part-1.parquet"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_rollover_and_row_groups(towers, tmp_path):
    data = source("items", write_parquet(item_table(1000), tmp_path / "items.parquet"))
    result = predictor.predict_embeddings(
        towers / "item", str(data.path), tmp_path / "out", output_key="item_tower_emb",
        id_column="item_id", batch_size=100, rows_per_file=450)
    assert result.files == ("part-0.parquet", "part-1.parquet", "part-2.parquet")
    rows = [pq.ParquetFile(tmp_path / "out" / f).metadata.num_rows for f in result.files]
    assert rows == [450, 450, 100]


def test_memory_url_input(towers, tmp_path):
    import fsspec

    table = item_table(60)
    fs = fsspec.filesystem("memory")
    root = f"/recbuild-test-{uuid.uuid4().hex}"
    for i, part in enumerate((table.slice(0, 25), table.slice(25))):
        with fs.open(f"{root}/part-{i}.parquet", "wb") as fh:
            pq.write_table(part, fh)
    try:
        data = InputArtifact("items", "source", Path(root), (), {}, url=f"memory://{root}")
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="item_id",
                    batch_size=16)
        got = read_output(tmp_path / "out")
        assert got.column("item_id").equals(table.column("item_id"))
        glob = predictor.resolve_parquet_input(f"memory://{root}/*.parquet")
        assert len(glob.paths) == 2
        # a footer is read once however often the file is opened (each read is a request remotely):
        # once read, the file opens without the bytes that end it
        assert glob.open(glob.paths[1]).metadata.num_rows == 35
        whole = fs.cat_file(glob.paths[1])
        fs.pipe_file(glob.paths[1], whole[:-8])
        assert glob.open(glob.paths[1]).metadata.num_rows == 35
        with pytest.raises(InputError, match="cannot read it as parquet"):
            predictor.resolve_parquet_input(f"memory://{root}/*.parquet").open(glob.paths[1])
    finally:
        fs.rm(root, recursive=True)


def test_directory_and_glob_inputs_read_in_sorted_order(towers, tmp_path):
    table = item_table(90)
    for i, lo in enumerate(range(0, 90, 30)):
        write_parquet(table.slice(lo, 30), tmp_path / "items" / f"part-{i}.parquet")
    (tmp_path / "items" / "_SUCCESS").write_text("")
    for location in (tmp_path / "items", tmp_path / "items" / "*.parquet"):
        result = predictor.predict_embeddings(
            towers / "item", str(location), tmp_path / "out" / uuid.uuid4().hex,
            output_key="item_tower_emb", id_column="item_id", batch_size=20)
        assert result.rows == 90


# -- duplicates ------------------------------------------------------------------------------------
def _with_duplicates() -> pa.Table:
    table = item_table(10)
    ids = table.column("item_id").to_numpy().copy()
    ids[7] = ids[2]  # row 7 repeats row 2
    return table.set_column(0, "item_id", pa.array(ids))


def test_duplicate_ids_are_an_error_naming_rows(towers, tmp_path):
    data = source("items", write_parquet(_with_duplicates(), tmp_path / "items.parquet"))
    with pytest.raises(InputError, match=r"row 2 of items.parquet and row 7 .*on_duplicate"):
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="item_id")
    assert not list((tmp_path / "out").iterdir())  # no forward pass, nothing written


@pytest.mark.parametrize("policy,dropped_row", [("first", 7), ("last", 2)])
def test_on_duplicate_keeps_first_or_last(towers, tmp_path, policy, dropped_row):
    table = _with_duplicates()
    data = source("items", write_parquet(table, tmp_path / "items.parquet"))
    ctx = run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="item_id",
                      reserved_columns=["title"], on_duplicate=policy, batch_size=3)
    got = read_output(tmp_path / "out")
    expected_titles = [t for i, t in enumerate(table.column("title").to_pylist()) if i != dropped_row]
    assert got.column("title").to_pylist() == expected_titles
    assert ctx.meta["dropped_duplicates"] == 1 and ctx.meta["rows"] == 9
    kept = table.filter(pa.array([i != dropped_row for i in range(10)]))
    emb = np.stack(got.column("item_tower_emb").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(emb, reference_embeddings(towers / "item", kept, ITEM_SPECS),
                               rtol=1e-5, atol=1e-6)


def test_duplicate_string_ids_across_files(towers, tmp_path):
    table = user_table(20)
    write_parquet(table.slice(0, 10), tmp_path / "u" / "a.parquet")
    write_parquet(table.slice(5, 10), tmp_path / "u" / "b.parquet")  # u5..u9 again
    with pytest.raises(InputError, match=r"'u5' appears at row 5 of a.parquet and row 0 of b.parquet"):
        run_builder(UserEmbeddingsBuilder, towers, source("users", tmp_path / "u"), tmp_path / "out",
                    id_column="user_id")


# -- bad input -------------------------------------------------------------------------------------
def test_missing_feature_column(towers, tmp_path):
    data = source("items", write_parquet(item_table(10).drop_columns(["price"]), tmp_path / "i.parquet"))
    with pytest.raises(InputError, match=r"column 'price' \(feature 'price', numeric\) is missing"):
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="item_id")


def test_mistyped_feature_column(towers, tmp_path):
    table = item_table(10)
    table = table.set_column(1, "cate_id", pa.array(np.arange(10)))  # int where strings were trained
    data = source("items", write_parquet(table, tmp_path / "i.parquet"))
    with pytest.raises(InputError, match=r"'cate_id'.*type int64.*trained on string ids"):
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="item_id")


def test_missing_id_and_reserved_columns(towers, tmp_path):
    data = source("items", write_parquet(item_table(10), tmp_path / "i.parquet"))
    with pytest.raises(InputError, match=r"id column 'sku' is missing"):
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "a", id_column="sku")
    with pytest.raises(InputError, match=r"reserved column\(s\) 'colour' missing"):
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "b", id_column="item_id",
                    reserved_columns=["colour"])


def test_null_id(towers, tmp_path):
    table = item_table(10)
    ids = table.column("item_id").to_pylist()
    ids[4] = None
    # the id column is also a feature here, so turn off statistics to reach the id pre-pass check
    path = tmp_path / "i.parquet"
    pq.write_table(table.set_column(0, "item_id", pa.array(ids, pa.int64())), path, write_statistics=False)
    with pytest.raises(InputError, match=r"id column 'item_id' has a null at row 4"):
        run_builder(ItemEmbeddingsBuilder, towers, source("items", path), tmp_path / "out",
                    id_column="item_id")


def test_null_feature_from_footer_statistics(towers, tmp_path):
    table = item_table(10)
    prices = table.column("price").to_pylist()
    prices[3] = None
    data = source("items", write_parquet(table.set_column(2, "price", pa.array(prices, pa.float32())),
                                         tmp_path / "i.parquet"))
    with pytest.raises(InputError, match=r"'price'.*1 null value"):
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="item_id")


def test_nan_output_names_the_row_and_the_cause(towers, tmp_path):
    table = item_table(50)
    prices = table.column("price").to_numpy().copy()
    prices[33] = np.inf
    data = source("items", write_parquet(table.set_column(2, "price", pa.array(prices)),
                                         tmp_path / "i.parquet"))
    with pytest.raises(InputError, match=r"NaN/inf .* row 33 of i.parquet.*'price'"):
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="item_id",
                    batch_size=16)


def test_empty_input(towers, tmp_path):
    data = source("items", write_parquet(item_table(5).slice(0, 0), tmp_path / "i.parquet"))
    with pytest.raises(InputError, match="no rows"):
        run_builder(ItemEmbeddingsBuilder, towers, data, tmp_path / "out", id_column="item_id")


def test_not_parquet(towers, tmp_path):
    (tmp_path / "items.parquet").write_text("id,price\n1,2\n")
    with pytest.raises(InputError, match="cannot read it as parquet"):
        run_builder(ItemEmbeddingsBuilder, towers, source("items", tmp_path / "items.parquet"),
                    tmp_path / "out", id_column="item_id")


def test_schema_mismatch_between_files(towers, tmp_path):
    table = item_table(20)
    write_parquet(table.slice(0, 10), tmp_path / "d" / "a.parquet")
    other = table.slice(10).set_column(2, "price", pa.array(np.arange(10, dtype=np.int64)))
    write_parquet(other, tmp_path / "d" / "b.parquet")
    with pytest.raises(InputError, match=r"b.parquet: column types differ.*price"):
        run_builder(ItemEmbeddingsBuilder, towers, source("items", tmp_path / "d"), tmp_path / "out",
                    id_column="item_id")


def test_towers_folder_without_module(tmp_path):
    (tmp_path / "towers" / "item").mkdir(parents=True)
    feature_io.write_fg(tmp_path / "towers" / "item", ITEM_SPECS)
    data = source("items", write_parquet(item_table(5), tmp_path / "i.parquet"))
    with pytest.raises(BuildError, match="holds no model.pt2; build the towers"):
        run_builder(ItemEmbeddingsBuilder, tmp_path / "towers", data, tmp_path / "out",
                    id_column="item_id")


def test_wrong_tower_output_key(towers, tmp_path):
    data = source("items", write_parquet(item_table(5), tmp_path / "i.parquet"))
    with pytest.raises(BuildError, match=r"no 'user_tower_emb'.*right tower"):
        predictor.predict_embeddings(towers / "item", str(data.path), tmp_path / "out",
                                     output_key="user_tower_emb", id_column="item_id")


def test_in_turn_and_overlapped_runs_write_identical_bytes(towers, tmp_path):
    data = source("items", write_parquet(item_table(500), tmp_path / "items.parquet"))
    for overlap in (True, False):
        predictor.predict_embeddings(towers / "item", str(data.path), tmp_path / str(overlap),
                                     output_key="item_tower_emb", id_column="item_id",
                                     reserved_columns=["title"], batch_size=64, threads=2,
                                     overlap_io=overlap)
    assert (tmp_path / "True" / "part-0.parquet").read_bytes() == \
        (tmp_path / "False" / "part-0.parquet").read_bytes()


@pytest.mark.parametrize("overlap", [True, False])
def test_error_found_mid_run_is_raised(towers, tmp_path, overlap):
    """A null numeric value the footer cannot reveal (no statistics) is found by the reader."""
    table = item_table(300)
    prices = table.column("price").to_pylist()
    prices[250] = None
    path = tmp_path / "i.parquet"
    pq.write_table(table.set_column(2, "price", pa.array(prices, pa.float32())), path,
                   write_statistics=False)
    with pytest.raises(InputError, match=r"at row 224 of i.parquet \(batch start\).*'price'.*null at row 26"):
        predictor.predict_embeddings(towers / "item", str(path), tmp_path / "out",
                                     output_key="item_tower_emb", id_column="item_id",
                                     batch_size=32, overlap_io=overlap)
    assert not [t for t in __import__("threading").enumerate() if t.name.startswith("recbuild-predict")]


# -- bounded memory --------------------------------------------------------------------------------
def test_streams_large_input_with_bounded_memory(towers, tmp_path):
    """400k rows (100 batches) with a 1 KiB reserved column: ~410 MB if the table were read whole.

    Runs in a child process so that the RSS measurement is the run's own. The reader must stream
    row groups and the writer cut row groups by bytes, so the growth stays far below the table.
    """
    rows, step = 400_000, 20_000
    path = tmp_path / "big.parquet"
    rng = np.random.default_rng(3)
    blob = pa.array(["x" * 1024] * step)
    cates = pa.array(rng.integers(0, 50, step).astype(str))
    with pq.ParquetWriter(path, pa.schema([("item_id", pa.int64()), ("cate_id", pa.string()),
                                           ("price", pa.float32()), ("blob", pa.string())])) as w:
        for lo in range(0, rows, step):
            w.write_table(pa.table({"item_id": pa.array(np.arange(lo, lo + step, dtype=np.int64)),
                                    "cate_id": cates,
                                    "price": pa.array(rng.random(step, dtype=np.float32)),
                                    "blob": blob}))
    script = textwrap.dedent(f"""
        import resource
        from recbuild.ml import predictor
        tower = predictor.load_tower({str(towers / 'item')!r})  # imports done before the baseline
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = predictor.predict_embeddings({str(towers / 'item')!r}, {str(path)!r},
            {str(tmp_path / 'out')!r}, output_key="item_tower_emb", id_column="item_id",
            reserved_columns=["blob"], batch_size=4096, rows_per_file=150_000, tower=tower)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(result.rows, len(result.files), (after - before) // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    out_rows, files, growth_mb = map(int, done.stdout.split())
    assert out_rows == rows and files == 3
    # ~20 MB per input row group, <= 64 MB per pending output group, a few batches in the pipes.
    assert growth_mb < 200, f"RSS grew by {growth_mb} MB for a 410 MB table"
    metadata = pq.ParquetFile(tmp_path / "out" / "part-0.parquet").metadata
    assert metadata.num_rows == 150_000 and metadata.num_row_groups >= 3  # cut by the byte cap
    assert read_output(tmp_path / "out").column("item_id").equals(
        pa.chunked_array([pa.array(np.arange(rows, dtype=np.int64))]))


@pytest.mark.parametrize("rows,group,batch", [(1000, 300, 128), (1000, 128, 128), (10, 3, 4), (7, 100, 3),
                                              (1000, 300, 5000), (0, 5, 4)])
def test_file_batches_are_the_whole_file_readers_batches(tmp_path, rows, group, batch):
    """Read a row group at a time (pyarrow's whole-file reader keeps memory as it goes), the batches
    are still the whole-file reader's: the same sizes across row groups and the same rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recbuild.common.parquet_batches import file_batches

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": np.arange(rows), "s": [str(i) for i in range(rows)]}), path, row_group_size=group)
    pf = pq.ParquetFile(path)
    expected = list(pf.iter_batches(batch_size=batch, columns=["a", "s"]))
    got = list(file_batches(pf, batch, ["a", "s"]))
    assert [b.num_rows for b in got] == [b.num_rows for b in expected]
    assert all(a.equals(b) for a, b in zip(got, expected))
