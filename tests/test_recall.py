"""recall_eval on a hand-computed example, index-vs-exact recall, the user-tower path, and the TDM
beam search with synthetic scorers."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbuild.builders.base import BuildContext, InputArtifact
from recbuild.builders.faiss_index import FaissIndexBuilder
from recbuild.builders.recall_eval import RecallEvalBuilder
from recbuild.errors import BuildError
from recbuild.retrieval import recall
from recbuild.retrieval import tdm_tree as tt


def artifact(name: str, folder: Path) -> InputArtifact:
    return InputArtifact(name, "artifact", folder, tuple(sorted(folder.glob("*.parquet"))), {})


def run_builder(builder, tmp: Path, params: dict, inputs: dict[str, Path]) -> Path:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="out-"))
    ctx = BuildContext(name="x", kind=builder.kind, params={**{f: n for f, n in zip(inputs, inputs)}, **params},
                       out=out, inputs={f: artifact(f, path) for f, path in inputs.items()},
                       recipe_dir=tmp, workdir=tmp)
    builder.run(ctx)
    return out


def write(folder: Path, columns: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / "part-0.parquet")
    return folder


def emb(rows) -> pa.Array:
    return pa.array(np.asarray(rows, np.float32).tolist(), pa.list_(pa.float32()))


ITEMS = {1: [1.0, 0.0], 2: [0.0, 1.0], 3: [0.6, 0.8], 4: [-1.0, 0.0]}


@pytest.fixture()
def hand_example(tmp_path):
    items = write(tmp_path / "items", {"item_id": list(ITEMS), "item_tower_emb": emb(list(ITEMS.values()))})
    index = run_builder(FaissIndexBuilder(), tmp_path, {"index_type": "Flat"}, {"embeddings": items})
    # u1 = [1, 0.1]: ranking 1 (1.0), 3 (0.68), 2 (0.1), 4 (-1.0); gt {3, 4} (3 twice, a label-0 row)
    # u2 = [-0.1, 1]: ranking 2 (1.0), 3 (0.74), 4 (0.1), 1 (-0.1); gt {2}
    # u3: only a label-0 row -> no ground truth -> skipped
    users = write(tmp_path / "users", {
        "user_id": ["u1", "u1", "u1", "u1", "u2", "u3"],
        "item_id": [3, 4, 3, 1, 2, 1],
        "label": [1, 1, 1, 0, 1, 0],
        "user_tower_emb": emb([[1, .1]] * 4 + [[-.1, 1], [0, 1]]),
    })
    return tmp_path, index, items, users


def test_hand_computed_metrics(hand_example):
    tmp, index, items, users = hand_example
    out = run_builder(RecallEvalBuilder(), tmp, {"k": [1, 2, 4]}, {"index": index, "user_embeddings": users})
    m = json.loads((out / "metrics.json").read_text())
    # k=1: u1 [1] hits 0/2, u2 [2] hits 1/1 -> hitrate 1/3, recall (0 + 1)/2
    # k=2: u1 [1,3] 1/2, u2 [2,3] 1/1 -> hitrate 2/3, recall (0.5 + 1)/2
    assert m["hitrate@1"] == round(1 / 3, 6) and m["recall@1"] == 0.5
    assert m["hitrate@2"] == round(2 / 3, 6) and m["recall@2"] == 0.75
    assert m["hitrate@4"] == 1.0 and m["recall@4"] == 1.0
    assert m["requests"] == 2 and m["requests_without_gt"] == 1 and m["gt_items"] == 3
    assert m["exact_baseline"] == "index_vectors" and m["exact"]["hitrate@2"] == m["hitrate@2"]
    assert m["index_recall@2"] == 1.0  # a Flat index is exact
    assert m["search"] == {"index_type": "Flat", "metric": "ip", "top_k": 4, "distances_per_query": 4.0}
    again = run_builder(RecallEvalBuilder(), tmp, {"k": [1, 2, 4]}, {"index": index, "user_embeddings": users})
    assert (out / "metrics.json").read_bytes() == (again / "metrics.json").read_bytes()


def test_list_gt_and_each_row_a_request(hand_example):
    tmp, index, items, _ = hand_example
    users = write(tmp / "users2", {"gt": ["3,4", "2"], "user_tower_emb": emb([[1, .1], [-.1, 1]])})
    out = run_builder(RecallEvalBuilder(), tmp, {"k": [2], "gt_column": "gt", "request_column": None},
                      {"index": index, "user_embeddings": users, "item_embeddings": items})
    m = json.loads((out / "metrics.json").read_text())
    assert m["hitrate@2"] == round(2 / 3, 6) and m["exact_baseline"] == "item_embeddings"


def test_index_recall_against_exact(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    items = write(tmp_path / "items", {"item_id": np.arange(2000), "item_tower_emb": emb(x)})
    index = run_builder(FaissIndexBuilder(), tmp_path, {"index_type": "IVFFlat", "nlist": 32, "nprobe": 1},
                        {"embeddings": items})
    q = rng.standard_normal((50, 8)).astype(np.float32)
    gt = np.argsort(-(q @ x.T), axis=1)[:, :3]  # gt = true top-3 -> exact search scores 1.0
    users = write(tmp_path / "users", {"uid": np.arange(50), "gt": pa.array(gt.tolist()), "user_tower_emb": emb(q)})
    params = {"k": [10], "gt_column": "gt", "request_column": "uid"}
    out = run_builder(RecallEvalBuilder(), tmp_path, params, {"index": index, "user_embeddings": users})
    m = json.loads((out / "metrics.json").read_text())
    assert m["exact"]["recall@10"] == 1.0
    assert 0 < m["index_recall@10"] < 1 and m["search"]["nprobe"] == 1
    assert m["search"]["distances_per_query"] < 2000 / 4  # one list of 32 is scanned, not all
    wide = run_builder(RecallEvalBuilder(), tmp_path, {**params, "nprobe": 32}, {"index": index, "user_embeddings": users})
    assert json.loads((wide / "metrics.json").read_text())["index_recall@10"] == 1.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_user_tower_path(hand_example):
    torch = pytest.importorskip("torch")
    from recbuild.ml import feature_io
    from recbuild.ml.exporter import save_torch_export

    tmp, index, _, users = hand_example

    class UserTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.tensor([[1.0, 0.1], [-0.1, 1.0], [0.0, 1.0]]))

        def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"user_tower_emb": self.table[inputs["uid"] % 3]}

    towers = tmp / "towers"
    (towers / "user").mkdir(parents=True)
    save_torch_export(UserTower(), {"uid": torch.arange(4)}, towers / "user" / "model.pt2")
    feature_io.write_fg(towers / "user", [feature_io.FeatureSpec("uid", "id", "user", buckets=3, dim=2)])
    queries = write(tmp / "queries", {"user_id": ["u1", "u1", "u1", "u1", "u2", "u3"], "uid": [0, 0, 0, 0, 1, 2],
                                      "item_id": [3, 4, 3, 1, 2, 1], "label": [1, 1, 1, 0, 1, 0]})
    out = run_builder(RecallEvalBuilder(), tmp, {"k": [1, 2, 4]},
                      {"index": index, "towers": towers, "queries": queries})
    m = json.loads((out / "metrics.json").read_text())
    assert m["hitrate@2"] == round(2 / 3, 6) and m["recall@1"] == 0.5


def test_param_checks():
    b = RecallEvalBuilder()
    assert b.check({"index": "i"})[0][0] == "user_embeddings"
    assert b.check({"index": "i", "towers": "t"}) == [("queries", "recall_eval needs user_embeddings, or towers + queries")]
    assert b.check({"index": "i", "user_embeddings": "u", "towers": "t"})[0][0] == "user_embeddings"
    with pytest.raises(BuildError):
        b.run(BuildContext("x", "recall_eval", {"index": "i"}, Path("."), {}, Path("."), Path(".")))


def test_gt_parsing():
    assert recall.gt_lists(pa.array(["1, 2", None, ""]), ",") == [["1", "2"], [], []]
    assert recall.gt_lists(pa.array([[1, 2], None])) == [["1", "2"], []]
    assert recall.gt_lists(pa.array([7, None])) == [["7"], []]


# -- TDM beam search -------------------------------------------------------------------------------
def _tree(n: int, k: int):
    depth = tt.tree_depth(n, k)
    return tt.assemble_tree(tt.init_leaf_codes(n, k, depth), np.arange(n), k, depth, False)


@pytest.mark.parametrize("k,n", [(2, 100), (3, 50), (4, 64)])
def test_beam_search_is_exact_with_a_max_heap_scorer(k, n):
    """If a node scores the max of its leaves, beam search returns the true top leaves."""
    tree = _tree(n, k)
    rng = np.random.default_rng(k)
    leaf_scores = rng.random((5, n))  # per query, per item id
    node_score = np.full((5, len(tree.codes)), -np.inf)
    leaves = np.flatnonzero(tree.leaf_mask)
    node_score[:, leaves] = leaf_scores[:, tree.ids[leaves]]
    parent = tree.parent_index()
    for node in range(len(tree.codes) - 1, 0, -1):  # children have larger codes than parents
        node_score[:, parent[node]] = np.maximum(node_score[:, parent[node]], node_score[:, node])

    def score(query_index, node_index):
        return node_score[query_index, node_index]

    got = recall.tdm_beam_search(tree, score, 5, retrieval_num=4, beam_width=4)
    for q in range(5):
        assert got[q].tolist() == np.argsort(-leaf_scores[q])[:4].tolist()


def test_beam_search_follows_the_scorer_and_prunes():
    tree = _tree(1000, 2)
    target = np.array([3, 500, 999])
    ancestors_of = {}
    parent = tree.parent_index()
    pos = {int(i): p for p, i in enumerate(tree.ids)}
    for q, t in enumerate(target):
        node, chain = pos[int(t)], set()
        while node >= 0:
            chain.add(int(tree.ids[node]))
            node = parent[node]
        ancestors_of[q] = chain
    calls = []

    def score(query_index, node_index):
        calls.append(len(node_index))
        return np.array([1.0 if int(i) in ancestors_of[int(q)] else 0.0
                         for q, i in zip(query_index, tree.ids[node_index])])

    got = recall.tdm_beam_search(tree, score, 3, retrieval_num=1, beam_width=2)
    assert [g.tolist() for g in got] == [[3], [500], [999]]
    assert max(calls) <= 3 * 2 * 2  # never more than beam x k candidates per query
    assert recall.tdm_recall(got, [{"3"}, {"1"}, {"999"}]) == round(2 / 3, 6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tdm_mode_with_an_exported_model(tmp_path):
    """A TDM model scoring nodes by how close their (mean) position is to the user's target finds
    the target items by beam search; a wrong ground truth is a miss."""
    torch = pytest.importorskip("torch")
    from recbuild.ml import feature_io
    from recbuild.ml.exporter import save_torch_export
    from recbuild.builders.tdm_tree import TdmTreeBuilder

    class TdmModel(torch.nn.Module):
        def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            gap = inputs["pos"] - (inputs["uid"].to(torch.float32) * 10.0 + 3.0)
            return {"probs": torch.exp(-gap * gap / 100.0)}

    model = tmp_path / "model"
    model.mkdir()
    save_torch_export(TdmModel(), {"uid": torch.arange(4), "item_id": torch.arange(4), "pos": torch.rand(4)},
                      model / "model.pt2")
    feature_io.write_fg(model, [feature_io.FeatureSpec("uid", "id", "user", buckets=10, dim=4),
                                feature_io.FeatureSpec("item_id", "id", "item", buckets=1000, dim=4),
                                feature_io.FeatureSpec("pos", "numeric", "item")])
    items = write(tmp_path / "items", {"item_id": np.arange(100), "cate_id": np.zeros(100, np.int64),
                                       "pos": np.arange(100, dtype=np.float64)})
    tree = run_builder(TdmTreeBuilder(), tmp_path, {"raw_attr_columns": ["pos"]}, {"items": items})
    queries = write(tmp_path / "queries", {"user_id": ["a", "b", "c", "d"], "uid": [0, 5, 9, 2],
                                           "item_id": [3, 53, 93, 80], "label": [1, 1, 1, 1]})
    params = {"tdm_retrieval_num": 3, "beam_width": 4}
    out = run_builder(RecallEvalBuilder(), tmp_path, params, {"tree": tree, "model": model, "queries": queries})
    m = json.loads((out / "metrics.json").read_text())
    assert m["hitrate@3"] == 0.75 and m["requests"] == 4
    assert m["search"]["levels"] == 8 and m["search"]["scored_per_query"] <= 4 * 2 * 7
    assert RecallEvalBuilder().check({"tree": "t", "model": "m"}) == [("queries", "TDM mode (tree + model + queries) needs it")]


# -- vectorised metrics (issue 17): the figures of the per-request set arithmetic they replace ----
def _hit_metrics_by_sets(retrieved, gt, ks):
    out = {}
    total_gt = sum(len(g) for g in gt)
    for k in ks:
        hits = np.array([len(g.intersection(v for v in row[:k] if v is not None))
                         for row, g in zip(retrieved, gt)], dtype=np.float64)
        sizes = np.array([len(g) for g in gt], dtype=np.float64)
        out[f"recall@{k}"] = round(float(np.mean(hits / sizes)), recall.ROUND)
        out[f"hitrate@{k}"] = round(float(hits.sum() / total_gt), recall.ROUND)
    return out


def test_coded_hit_metrics_equal_set_intersections():
    rng = np.random.default_rng(5)
    retrieved = rng.integers(0, 60, (300, 30)).astype(str).astype(object)  # repeats within a row
    retrieved[rng.random(retrieved.shape) < 0.1] = None
    gt = [{str(v) for v in rng.integers(0, 80, rng.integers(1, 6))} for _ in range(300)]
    ks = [1, 5, 30, 50]  # 50: wider than the lists
    assert recall.hit_metrics(retrieved, gt, ks) == _hit_metrics_by_sets(retrieved, gt, ks)
    truth = recall.GroundTruth(gt)
    id_mapping = np.array([str(i) for i in range(60)], dtype=object)
    faiss_ids = rng.integers(-1, 60, (300, 30))
    codes = np.where(faiss_ids >= 0, truth.codes(id_mapping)[np.maximum(faiss_ids, 0)], -1)
    assert truth.metrics(codes, ks) == _hit_metrics_by_sets(recall.map_ids(faiss_ids, id_mapping), gt, ks)


def test_overlap_at_k_equals_set_overlap():
    rng = np.random.default_rng(6)
    exact = np.stack([rng.permutation(100)[:40] for _ in range(200)])
    approx = np.where(rng.random(exact.shape) < 0.3, rng.integers(0, 100, exact.shape), exact)
    exact[:5, 30:] = -1
    exact[7] = -1  # a request with nothing exact
    ks = [1, 10, 40]
    expected = recall._overlap_at_k_by_sets(approx, exact, ks)
    assert recall.overlap_at_k(approx, exact, ks) == expected
    exact[9, 3] = exact[9, 4]  # a repeated id takes the set path
    assert recall.overlap_at_k(approx, exact, ks) == recall._overlap_at_k_by_sets(approx, exact, ks)


def test_leaf_codes_are_the_string_ids_beam_search_found():
    gt = [{"3", "12"}, {"7"}, {"40"}]
    truth = recall.GroundTruth(gt)
    found = [np.array([12, 5, 3]), np.array([], dtype=np.int64), np.array([40, 7, 8, 9])]
    codes = recall.leaf_codes(found, truth, 3)
    strings = np.full((3, 3), None, dtype=object)
    for row, ids in enumerate(found):
        strings[row, :len(ids[:3])] = [str(v) for v in ids[:3].tolist()]
    np.testing.assert_array_equal(codes, truth.codes_of_strings(strings))
    assert truth.metrics(codes, [1, 3]) == _hit_metrics_by_sets(strings, gt, [1, 3])


def test_best_per_query_is_the_two_key_sort_cut_per_query():
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 12, 40)
    queries = np.repeat(np.arange(40), counts)
    scores = np.round(rng.random(len(queries)), 1)  # many ties
    scores[::9] = np.nan
    scores[::13] = -np.inf
    for keep in (1, 3, 20):
        order = np.lexsort((-scores, queries))
        start = np.searchsorted(queries[order], np.arange(40))
        rank = np.arange(len(order)) - start[queries[order]]
        np.testing.assert_array_equal(recall.best_per_query(queries, scores, 40, keep), order[rank < keep])


def test_random_and_popularity_baselines(hand_example):
    tmp, index, _, users = hand_example
    # clicks: item 3 three times, 2 twice, 1 once; item 4's five rows are label 0 (not clicks);
    # item 9, the most clicked, is not in the index
    clicks = write(tmp / "clicks", {"item_id": [3, 3, 3, 2, 2, 1, 4, 4, 4, 4, 4, 9, 9, 9, 9],
                                    "label": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1]})
    out = run_builder(RecallEvalBuilder(), tmp, {"k": [1, 2, 4]},
                      {"index": index, "user_embeddings": users, "baseline_data": clicks})
    m = json.loads((out / "metrics.json").read_text())
    # random: k of the 4 items -> k / 4
    assert m["baseline"]["random"] == {"recall@1": 0.25, "hitrate@1": 0.25, "recall@2": 0.5, "hitrate@2": 0.5,
                                       "recall@4": 1.0, "hitrate@4": 1.0}
    # popularity lists [3], [3, 2], [3, 2, 1] for everyone: u1 (gt 3, 4) and u2 (gt 2)
    popular = m["baseline"]["popularity"]
    assert (popular["recall@1"], popular["hitrate@1"]) == (0.25, round(1 / 3, 6))
    assert (popular["recall@2"], popular["hitrate@2"]) == (0.75, round(2 / 3, 6))
    assert (popular["recall@4"], popular["hitrate@4"]) == (0.75, round(2 / 3, 6))
    assert popular["items"] == 3
    assert m["recall@2"] == 0.75  # the model's own figures are unchanged by the baselines
    plain = run_builder(RecallEvalBuilder(), tmp, {"k": [1, 2, 4]}, {"index": index, "user_embeddings": users})
    assert "baseline" not in json.loads((plain / "metrics.json").read_text())
    assert ("baseline_data", "is for the two-tower mode, not TDM (tree + model)") in RecallEvalBuilder().check(
        {"tree": "t", "model": "m", "queries": "q", "baseline_data": "b"})
