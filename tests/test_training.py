"""Training: metrics, the in-batch loss, the train kind (files, determinism, quality vs popularity)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recbuild.ml import sampledata
from recbuild.builders.base import BuildContext, InputArtifact
from recbuild.builders.train import TrainBuilder
from recbuild.errors import InputError
from recbuild.ml.training import auc, in_batch_softmax_loss, iter_tables, recall_at_k

WORLD = {"n_items": 1000, "n_users": 500, "n_categories": 20}
USER = ["user_id", "cms_group_id", "final_gender_code", "age_level"]
ITEM = ["item_id", "cate_id", "brand"]


def model_section(family="dssm"):
    features = [{"name": n, "group": "user", "buckets": 2000 if n == "user_id" else 100} for n in USER]
    features += [{"name": n, "group": "item", "buckets": 4000 if n == "item_id" else 1000} for n in ITEM]
    features.append({"name": "price", "type": "numeric", "group": "item"})
    return {"family": family, "features": features, "emb_dim": 16, "hidden": [32], "tower_dim": 16}


def write_split(folder: Path, split: str, rows: int, seed: int = 7) -> InputArtifact:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    sampledata.write_parquet(sampledata.generate("interactions", seed=seed, rows=rows, split=split, **WORLD), path)
    return InputArtifact(name=folder.name, kind="sample_data", path=folder, files=(path,), manifest={})


def train(tmp_path: Path, name: str, params: dict, family="dssm", train_rows=3000, eval_rows=1500):
    data = tmp_path / "data"
    inputs = {"data": write_split(data / "train", "train", train_rows),
              "eval_data": write_split(data / "eval", "eval", eval_rows)}
    out = tmp_path / name
    out.mkdir()
    ctx = BuildContext(name=name, kind="train", params={"data": "train", "eval_data": "eval", **params},
                       out=out, inputs=inputs, recipe_dir=tmp_path, workdir=tmp_path,
                       model=model_section(family), threads=1)
    TrainBuilder().run(ctx)
    return out, ctx


def eval_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_eval_result_v2.txt").read_text().splitlines()]


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300), 1)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auc(labels, scores) == pytest.approx(pairwise)
    assert np.isnan(auc(np.ones(4), np.arange(4.0)))


def test_recall_is_micro_averaged_over_unique_truth():
    top = np.array([[0, 1], [2, 3]])
    # query 0 truth {1, 4}: 1 hit; query 1 truth {3}: 1 hit -> 2 / 3
    assert recall_at_k(top, np.array([0, 0, 1]), np.array([1, 4, 3])) == pytest.approx(2 / 3)


def test_in_batch_loss_masks_same_item_rows():
    torch.manual_seed(0)
    user = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    item = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    item[2] = item[0]  # row 2 holds the same item as row 0
    keys = np.array([10, 11, 10, 12])
    masked = in_batch_softmax_loss(user, item, 0.1, keys)
    logits = user @ item.T / 0.1
    logits[0, 2] = logits[2, 0] = float("-inf")
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    torch.testing.assert_close(masked, expected)
    assert not torch.allclose(masked, in_batch_softmax_loss(user, item, 0.1))


def test_iter_tables_cuts_exact_batches_across_files(tmp_path):
    files = []
    for i, rows in enumerate((250, 130)):
        path = tmp_path / f"part-{i}.parquet"
        sampledata.write_parquet({"x": np.arange(rows) + 1000 * i}, path, row_group_size=64)
        files.append(path)
    sizes = [t.num_rows for t in iter_tables(files, ["x"], 100)]
    assert sizes == [100, 100, 100, 80]
    values = np.concatenate([t.column("x").to_numpy() for t in iter_tables(files, ["x"], 100)])
    np.testing.assert_array_equal(values, np.concatenate([np.arange(250), np.arange(130) + 1000]))
    with pytest.raises(InputError, match="missing column"):
        list(iter_tables(files, ["nope"], 10))


def test_train_writes_checkpoints_and_eval_file_deterministically(tmp_path):
    params = {"epochs": 2, "batch_size": 128, "eval_every": 5, "k": [50, 10]}
    out, ctx = train(tmp_path, "run1", params)
    lines = eval_lines(out)
    steps = [line["global_step"] for line in lines]
    final = ctx.meta["final_step"]
    assert steps == sorted(set(steps)) and steps[-1] == final and 5 in steps
    for step in steps:
        assert (out / f"model.ckpt-{step}" / "model.pt").is_file()
    first = (out / "train_eval_result_v2.txt").read_text().splitlines()[0]
    assert list(json.loads(first))[0] == "global_step"
    keys = list(json.loads(first))[1:]
    assert keys == sorted(keys) == ["popularity_recall@10", "popularity_recall@50", "recall@10", "recall@50"]
    state = torch.load(out / f"model.ckpt-{final}" / "model.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())
    assert json.loads((out / "train_meta.json").read_text())["final_step"] == final

    again, _ = train(tmp_path, "run2", params)
    for path in sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()):
        assert (again / path).read_bytes() == (out / path).read_bytes(), path


def test_dssm_beats_popularity_on_sample_data(tmp_path):
    out, ctx = train(tmp_path, "quality", {"epochs": 3, "batch_size": 256, "lr": 0.01, "k": [50]},
                     train_rows=40000, eval_rows=8000)
    last = eval_lines(out)[-1]
    print(f"\ndssm recall@50 = {last['recall@50']:.4f}, popularity recall@50 = "
          f"{last['popularity_recall@50']:.4f}")
    assert last["recall@50"] >= last["popularity_recall@50"] + 0.08
    assert last["recall@50"] >= 1.2 * last["popularity_recall@50"]


def test_deepfm_learns_clicks_from_exposures(tmp_path):
    out, _ = train(tmp_path, "rank", {"epochs": 1, "batch_size": 256, "lr": 0.01}, family="deepfm",
                   train_rows=12000, eval_rows=3000)
    lines = eval_lines(out)
    assert list(lines[-1]) == ["global_step", "auc"]
    assert lines[-1]["auc"] > 0.7


def test_training_without_positive_rows_is_a_clear_error(tmp_path):
    folder = tmp_path / "neg"
    folder.mkdir()
    table = sampledata.generate("interactions", seed=1, rows=300, **WORLD)
    table["label"] = np.zeros_like(table["label"])
    sampledata.write_parquet(table, folder / "part-0.parquet")
    art = InputArtifact(name="neg", kind="source", path=folder, files=(folder / "part-0.parquet",), manifest={})
    out = tmp_path / "out"
    out.mkdir()
    ctx = BuildContext(name="t", kind="train", params={"data": "neg"}, out=out, inputs={"data": art},
                       recipe_dir=tmp_path, workdir=tmp_path, model=model_section())
    with pytest.raises(InputError, match="label == 1"):
        TrainBuilder().run(ctx)


def test_export_picks_the_best_trained_checkpoint(tmp_path):
    """train -> export contract: the eval file and checkpoint names written by train are what export reads."""
    from recbuild.builders.export import ExportBuilder

    ckpts, _ = train(tmp_path, "checkpoints", {"epochs": 2, "batch_size": 128, "eval_every": 4, "k": [50]})
    lines = eval_lines(ckpts)
    best = max(lines, key=lambda line: (line["recall@50"], -line["global_step"]))
    out = tmp_path / "model"
    out.mkdir()
    files = tuple(sorted(p for p in ckpts.rglob("*") if p.is_file()))
    ctx = BuildContext(name="model", kind="export", params={"checkpoints": "checkpoints", "select": "best"},
                       out=out, inputs={"checkpoints": InputArtifact("checkpoints", "train", ckpts, files, {})},
                       recipe_dir=tmp_path, workdir=tmp_path, model=model_section(), threads=1)
    ExportBuilder().run(ctx)
    assert (ctx.meta["metric"], ctx.meta["step"]) == ("recall@50", best["global_step"])
    assert (out / "model.pt").read_bytes() != b""
    assert (out / "EXPORT_DONE").read_text() == "ExportDone\n"


# ---------------------------------------------------------------------------------------------
# tdm


def tdm_tree(tmp_path: Path) -> InputArtifact:
    """A tdm_tree artifact (built by the tdm_tree kind, init mode) over the sample items."""
    from recbuild.builders.tdm_tree import TdmTreeBuilder

    items = tmp_path / "items"
    items.mkdir()
    sampledata.write_parquet(sampledata.generate("items", seed=7, **WORLD), items / "part-0.parquet")
    out = tmp_path / "tree"
    out.mkdir()
    ctx = BuildContext(name="tree", kind="tdm_tree", params={"items": "items", "attr_columns": ["cate_id"]},
                       out=out, recipe_dir=tmp_path, workdir=tmp_path,
                       inputs={"items": InputArtifact("items", "source", items, (items / "part-0.parquet",), {})})
    TdmTreeBuilder().run(ctx)
    return InputArtifact("tree", "tdm_tree", out, tuple(sorted(p for p in out.rglob("*") if p.is_file())), {})


TDM_MODEL = {"family": "tdm", "emb_dim": 16, "hidden": [32], "features": [
    {"name": "user_id", "group": "user", "buckets": 2000},
    {"name": "cms_group_id", "group": "user", "buckets": 100},
    {"name": "item_id", "group": "item", "buckets": 4000},
    {"name": "cate_id", "group": "item", "buckets": 1000}]}


def test_tree_sampler_positives_are_ancestors_negatives_share_the_level(tmp_path):
    from recbuild.ml.models.features import group_features, parse_features
    from recbuild.retrieval.tree_io import read_serving_tree
    from recbuild.ml.training import TreeSampler, _Reader

    tree_art = tdm_tree(tmp_path)
    tree = read_serving_tree(tree_art.path / "serving_tree")
    sampler = TreeSampler(tree_art.path, _Reader(group_features(parse_features(TDM_MODEL), "item")), negatives=3)
    leaf_ids = tree.ids[tree.leaf_mask][[0, 5, 17]]
    item_ids = np.array([leaf_ids[0], 999_999_999, leaf_ids[1], leaf_ids[2]])  # one id is not in the tree
    rows, nodes, labels = sampler.expand(item_ids, np.random.default_rng(0))
    assert set(rows) == {0, 2, 3}
    levels = tree.levels
    assert sorted(np.bincount(levels[nodes[labels == 1]])[1:]) == [3] * tree.depth  # one positive per level
    for row in (0, 2, 3):
        mine = rows == row
        positives = nodes[mine & (labels == 1)]
        code = tree.codes[positives[levels[positives] == tree.depth][0]]
        assert tree.ids[positives[levels[positives] == tree.depth][0]] == item_ids[row]
        ancestors = set()
        while code > 0:
            ancestors.add(int(code))
            code = (code - 1) // tree.k
        assert {int(c) for c in tree.codes[positives]} == ancestors
        negatives = nodes[mine & (labels == 0)]
        for level in range(1, tree.depth + 1):
            on_level = negatives[levels[negatives] == level]
            assert len(on_level) == min(3, int((levels == level).sum()) - 1)
            assert not set(on_level) & set(positives)


def test_tdm_trains_over_the_tree_and_exports(tmp_path):
    from recbuild.builders.export import ExportBuilder

    data = tmp_path / "data"
    inputs = {"data": write_split(data / "train", "train", 6000), "eval_data": write_split(data / "eval", "eval", 1500),
              "tree": tdm_tree(tmp_path)}
    out = tmp_path / "ckpts"
    out.mkdir()
    ctx = BuildContext(name="ckpts", kind="train", out=out, inputs=inputs, recipe_dir=tmp_path, workdir=tmp_path,
                       params={"data": "train", "eval_data": "eval", "tree": "tree", "epochs": 2, "batch_size": 256,
                               "lr": 0.01, "negatives_per_level": 4}, model=TDM_MODEL, threads=1)
    TrainBuilder().run(ctx)
    lines = eval_lines(out)
    assert list(lines[-1]) == ["global_step", "auc"] and lines[-1]["auc"] > 0.65
    export = tmp_path / "model"
    export.mkdir()
    files = tuple(sorted(p for p in out.rglob("*") if p.is_file()))
    ectx = BuildContext(name="model", kind="export", params={"checkpoints": "ckpts", "select": "best"}, out=export,
                        inputs={"checkpoints": InputArtifact("ckpts", "train", out, files, {})},
                        recipe_dir=tmp_path, workdir=tmp_path, model=TDM_MODEL)
    ExportBuilder().run(ectx)
    assert ectx.meta["metric"] == "auc" and max(ectx.meta["max_abs_diff"].values()) <= 1e-5
    # what beam search calls: user features + node features -> probs in [0, 1]
    program = torch.export.load(str(export / "model.pt2")).module()
    probs = program({"user_id": torch.tensor([1, 2]), "cms_group_id": torch.tensor([3, 3]),
                     "item_id": torch.tensor([5, 6]), "cate_id": torch.tensor([7, 8])})["probs"]
    assert probs.shape == (2,) and bool(((probs >= 0) & (probs <= 1)).all())


def test_tdm_without_a_tree_is_a_clear_error(tmp_path):
    from recbuild.errors import BuildError

    data = tmp_path / "data"
    out = tmp_path / "o"
    out.mkdir()
    ctx = BuildContext(name="o", kind="train", params={"data": "train"}, out=out, recipe_dir=tmp_path,
                       workdir=tmp_path, inputs={"data": write_split(data / "train", "train", 300)}, model=TDM_MODEL)
    with pytest.raises(BuildError, match="set `tree:`"):
        TrainBuilder().run(ctx)


# ---------------------------------------------------------------------------------------------
# speed work (issue 17): every shortcut gives the bytes of the straightforward computation


@pytest.mark.parametrize("block_rows", [7, 10_000])
def test_truth_ranks_place_pairs_as_torch_topk_does_ties_and_nan_included(monkeypatch, block_rows):
    from recbuild.ml.training import evaluation, truth_ranks

    monkeypatch.setattr(evaluation, "RANK_BLOCK_ELEMENTS", 300 * block_rows)
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(np.round(rng.random((40, 300)), 2).astype(np.float32))  # many ties
    scores[5, 7] = float("nan")
    scores[6] = 0.5  # one row all equal
    depth = 50
    top = torch.topk(scores, depth, dim=1).indices.numpy()
    rows = np.repeat(np.arange(40), 30)
    items = np.concatenate([rng.choice(300, 30, replace=False) for _ in range(40)])
    items[:depth] = top[0]  # row 0: every retrieved item, in order
    expected = np.array([list(top[r]).index(i) if i in top[r] else depth for r, i in zip(rows, items)])
    np.testing.assert_array_equal(truth_ranks(scores, rows, items, depth), expected)
    distinct = torch.from_numpy(rng.permutation(40 * 300).reshape(40, 300).astype(np.float32))
    top = torch.topk(distinct, depth, dim=1).indices.numpy()
    expected = np.array([list(top[r]).index(i) if i in top[r] else depth for r, i in zip(rows, items)])
    np.testing.assert_array_equal(truth_ranks(distinct, rows, items, depth, may_hold_nan=False), expected)


def test_recall_from_ranks_equals_recall_of_the_top_k_matrix():
    from recbuild.ml.training import recall_from_ranks

    rng = np.random.default_rng(1)
    top = np.stack([rng.permutation(60)[:20] for _ in range(30)])
    pairs = np.unique(np.stack([rng.integers(0, 30, 200), rng.integers(0, 60, 200)], axis=1), axis=0)
    ranks = np.array([list(top[q]).index(i) if i in top[q] else 20 for q, i in pairs])
    for k in (1, 5, 20):
        assert recall_from_ranks(ranks, k) == recall_at_k(top[:, :k], pairs[:, 0], pairs[:, 1])


def test_unique_rows_is_numpy_unique_over_rows():
    from recbuild.ml.training import _unique_rows

    rng = np.random.default_rng(2)
    for shape in ((0, 2), (1, 1), (500, 1), (800, 4)):
        matrix = rng.integers(-3, 3, shape).astype(np.int64) << 61  # sign and high bits matter
        expected = np.unique(matrix, axis=0, return_index=True, return_inverse=True)
        for got, want in zip(_unique_rows(matrix), expected):
            np.testing.assert_array_equal(got, want.reshape(got.shape))


def test_catalog_lookup_falls_back_when_row_hashes_collide(monkeypatch):
    from recbuild.ml.training import ItemCatalog, _row_view, catalog

    rng = np.random.default_rng(4)
    keys = np.unique(rng.integers(0, 50, (300, 3)), axis=0)
    queries = keys[rng.integers(0, len(keys), 1000)]
    expected = np.searchsorted(_row_view(keys), _row_view(queries))
    fresh = ItemCatalog(keys=keys, inputs={}, train_counts=np.zeros(len(keys), dtype=np.int64))
    np.testing.assert_array_equal(fresh.index_of(queries), expected)
    monkeypatch.setattr(catalog, "_row_hashes", lambda m: np.zeros(len(m), dtype=np.uint64))
    colliding = ItemCatalog(keys=keys, inputs={}, train_counts=np.zeros(len(keys), dtype=np.int64))
    np.testing.assert_array_equal(colliding.index_of(queries), expected)


def test_own_optimizer_state_steps_exactly_like_torch_optim():
    """_make_optimizer runs torch's functional Adam / SparseAdam without torch.optim.Optimizer."""
    from recbuild.ml.models import build_model
    from recbuild.ml.models.features import example_inputs, parse_features
    from recbuild.ml.training import _make_optimizer, _torch_settings
    from recbuild.ml.training.optim import _Optimizers

    config = model_section()
    config["features"][0]["buckets"] = 30000  # one table large enough for SparseAdam

    class TorchOptim(_Optimizers):  # the same split into tables, torch's own Adam classes
        def __init__(self, model):
            ours = _make_optimizer(model, 0.01).optimizers
            assert [type(o).__name__ for o in ours] == ["_SparseAdam", "_DenseAdam"]
            super().__init__([(torch.optim.SparseAdam if type(o).__name__ == "_SparseAdam"
                               else torch.optim.Adam)(o.params, lr=0.01) for o in ours])

    def weights_after_steps(make_optimizer):
        with _torch_settings(1, 5):
            model = build_model(config)
            optimizer = make_optimizer(model)
            for step in range(4):
                out = model(example_inputs(parse_features(config), batch_size=32, seed=step))
                loss = in_batch_softmax_loss(out["user_tower_emb"], out["item_tower_emb"], 0.05)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            return model.state_dict()

    ours = weights_after_steps(lambda model: _make_optimizer(model, 0.01))
    reference = weights_after_steps(TorchOptim)
    assert all(torch.equal(ours[name], reference[name]) for name in reference)


def test_training_imports_neither_the_compiler_stack_nor_pandas(tmp_path):
    """The deterministic switch and the optimizers must not import torch._dynamo / inductor
    (about 1 s each before the first step), nor the data path pandas (pyarrow's bridge, 0.2-0.3 s);
    determinism stays on as error, not warning."""
    import subprocess
    import sys

    train_art = write_split(tmp_path / "train", "train", 600)
    eval_art = write_split(tmp_path / "eval", "eval", 300)
    code = f"""
import sys, torch
from pathlib import Path
from recbuild.ml.training import Trainer, TrainSettings, _torch_settings
with _torch_settings(1, 0):
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
assert not torch.are_deterministic_algorithms_enabled()
out = Path({str(tmp_path / "out")!r}); out.mkdir()
Trainer({model_section()!r}, TrainSettings(batch_size=128, threads=1), out).run(
    [Path({str(train_art.files[0])!r})], [Path({str(eval_art.files[0])!r})])
loaded = [m for m in ("torch._dynamo", "torch._inductor", "pandas") if m in sys.modules]
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _train_directly(tmp_path: Path, name: str, config: dict, cache_bytes: int, eval_data=True,
                    tree=None, **settings) -> dict[str, bytes]:
    from recbuild.ml.training import Trainer, TrainSettings

    data = tmp_path / "data"
    if not data.exists():
        write_split(data / "train", "train", 3000)
        write_split(data / "eval", "eval", 1200)
    out = tmp_path / name
    out.mkdir()
    trainer = Trainer(config, TrainSettings(batch_cache_bytes=cache_bytes, threads=1, **settings), out,
                      tree_dir=tree)
    trainer.run([data / "train" / "part-0.parquet"], [data / "eval" / "part-0.parquet"] if eval_data else [])
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("family", ["dssm", "deepfm", "tdm"])
def test_cached_batches_train_to_the_bytes_of_streamed_ones(tmp_path, family):
    """Converted batches kept across epochs (and evaluations) give the files of re-reading the
    data every time: budget 0 streams, a budget of about two batches gives up half-way."""
    tree = tdm_tree(tmp_path).path if family == "tdm" else None
    config = TDM_MODEL if family == "tdm" else model_section(family)
    settings = {"epochs": 2, "batch_size": 256, "eval_every": 3, "k": [10, 50], "eval_batch_size": 500}
    runs = {budget: _train_directly(tmp_path, f"run-{budget}", config, budget, tree=tree, **settings)
            for budget in (0, 40_000, 256 << 20)}
    assert len(runs[0]) > 4 and any(name.endswith("train_eval_result_v2.txt") for name in runs[0])
    assert runs[0] == runs[40_000] == runs[256 << 20]


def test_replayable_batches_keep_what_fits_and_stream_the_rest():
    from recbuild.ml.training import _Batch, _ReplayableBatches

    reads = []

    def read():
        reads.append(1)
        return iter(range(4))

    def convert(i):
        return _Batch(inputs={"x": torch.full((10,), i, dtype=torch.int64)})  # 80 bytes each

    fits = _ReplayableBatches(read, convert, budget=320)
    assert [int(b.inputs["x"][0]) for b in fits] == [0, 1, 2, 3] and fits.kept is not None
    assert [int(b.inputs["x"][0]) for b in fits] == [0, 1, 2, 3] and len(reads) == 1
    too_big = _ReplayableBatches(read, convert, budget=200)
    for _ in range(2):
        assert [int(b.inputs["x"][0]) for b in too_big] == [0, 1, 2, 3]
    assert too_big.kept is None and len(reads) == 3


class _RecordedProgress:
    """Progress as the UI sees it: each label, the total when each epoch starts, notes, the count."""

    def __init__(self):
        self.labels, self.totals, self.facts, self.done, self.total = [], [], {}, 0, None

    def phase(self, name, total=None, unit=None):
        self.total, self.unit = total, unit
        return self

    def label(self, name):
        if name.startswith("epoch") and not name.endswith("eval") and name not in self.labels:
            self.totals.append(self.total)  # as each epoch starts
        self.labels.append(name)

    def advance(self, amount=1):
        self.done += amount

    def note(self, **facts):
        self.facts.update(facts)

    def close(self):
        pass


@pytest.mark.parametrize("family, eval_every", [("deepfm", 0), ("dssm", 7)])
def test_training_reports_epochs_totals_loss_and_eval(tmp_path, family, eval_every):
    from recbuild.ml.training import Trainer, TrainSettings

    data = tmp_path / "data"
    write_split(data / "train", "train", 3000)
    write_split(data / "eval", "eval", 1200)
    recorded = _RecordedProgress()
    out = tmp_path / "out"
    out.mkdir()
    settings = TrainSettings(epochs=2, batch_size=256, eval_every=eval_every, k=[10, 50, 200], threads=1)
    meta = Trainer(model_section(family), settings, out, progress_factory=lambda total, unit: recorded).run(
        [data / "train" / "part-0.parquet"], [data / "eval" / "part-0.parquet"])
    batches = meta["final_step"]  # every batch is a step for these families
    assert recorded.unit == "batches"
    assert recorded.totals == [batches, batches], "the total is known before the first batch"
    assert recorded.done == batches
    assert recorded.labels[0] == "epoch 1/2" and any(n.endswith(": eval") for n in recorded.labels)
    assert recorded.labels[-1] == "epoch 2/2"
    shown = "eval auc" if family == "deepfm" else "eval recall@50"
    assert set(recorded.facts) == {"loss", shown}
    figures = json.loads((out / "metrics.json").read_text())
    last = eval_lines(out)[-1]
    assert figures == {"train_loss": recorded.facts["loss"], "steps": batches,
                       **{k: v for k, v in last.items() if k != "global_step"}}
    assert recorded.facts[shown] == pytest.approx(last[shown.split()[1]], abs=1e-6)  # the file rounds


def test_tdm_total_is_known_before_the_first_batch(tmp_path):
    from recbuild.ml.training import Trainer, TrainSettings

    tree = tdm_tree(tmp_path)
    recorded = _RecordedProgress()
    data = tmp_path / "data"
    write_split(data / "train", "train", 3000)
    out = tmp_path / "out"
    out.mkdir()
    Trainer(TDM_MODEL, TrainSettings(epochs=2, batch_size=256, threads=1), out,
            progress_factory=lambda total, unit: recorded, tree_dir=tree.path).run(
        [data / "train" / "part-0.parquet"], [])
    assert recorded.totals == [recorded.done, recorded.done]  # clicked rows counted from the label column
    assert set(json.loads((out / "metrics.json").read_text())) == {"train_loss", "steps"}
