"""tdm_tree: tzrec's formats (worked example, tzrec's own test cases), one leaf level for every
n_cluster, exact balance, parse-back, hash mode, determinism, clear errors."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbuild.builders.base import BuildContext, InputArtifact, with_schema_defaults
from recbuild.builders.tdm_tree import TdmTreeBuilder
from recbuild.errors import BuildError, InputError
from recbuild.retrieval import tdm_tree as tt
from recbuild.retrieval import tree_io


def write_table(folder: Path, columns: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / "part-0.parquet")
    return folder


def run(tmp: Path, params: dict, field: str, folder: Path) -> Path:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="tree-"))
    files = tuple(sorted(folder.glob("*.parquet")))
    ctx = BuildContext(name="tree", kind="tdm_tree", params={field: "src", **params}, out=out,
                       inputs={field: InputArtifact("src", "source", folder, files, {})},
                       recipe_dir=tmp, workdir=tmp)
    TdmTreeBuilder().run(ctx)
    return out


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


def test_worked_example_reproduced_exactly(tmp_path):
    """tzrec_formats.md section 2.5: init tree, items 0..3 in one category, k=2, no attrs."""
    items = write_table(tmp_path / "items", {"item_id": [0, 1, 2, 3], "cate_id": [7, 7, 7, 7]})
    out = run(tmp_path, {"n_cluster": 2}, "items", items)
    assert (out / "serving_tree").read_text() == "3 2\n0 4\n1 5\n2 6\n3 3\n4 2\n5 1\n6 0\n"
    assert lines(out / "node_table.txt") == [
        "id:int64\tweight:float\tfeature:string",
        "-1\t1.0\t-1,4", "4\t1.0\t0,4", "5\t1.0\t1,5", "6\t1.0\t1,6",
        "3\t1.0\t2,3", "2\t1.0\t2,2", "1\t1.0\t2,1", "0\t1.0\t2,0", ""]
    assert lines(out / "edge_table.txt") == [
        "src_id:int64\tdst_id:int64\tweight:float",
        "3\t5\t1.0", "2\t5\t1.0", "1\t6\t1.0", "0\t6\t1.0", ""]
    assert lines(out / "predict_edge_table.txt") == [
        "src_id:int64\tdst_id:int64\tweight:float",
        "-1\t4\t1.0", "4\t5\t1.0", "4\t6\t1.0", "5\t3\t1.0", "5\t2\t1.0", "6\t1\t1.0", "6\t0\t1.0", ""]
    features = pq.read_table(out / "node_feature" / "part-0.parquet")
    assert features.column_names == ["item_id"]
    assert features.column("item_id").to_pylist() == [4, 5, 6, 3, 2, 1, 0]


def tzrec_items(folder: Path, hash_ids: bool = False) -> Path:
    ids = [str(i) for i in range(10)] if hash_ids else list(range(10))
    return write_table(folder, {"item_id": ids, "cate_id": list(range(10)),
                                "str_a": [f"我们{i}" for i in range(10)],
                                "raw_a": [0.1 * i for i in range(10)]})


def test_tzrec_init_tree_case(tmp_path):
    """TorchEasyRec's tree_generator_test: ids 10..24 then leaves 9..0, levels 1,2,4,8,10 nodes."""
    out = run(tmp_path, {"attr_columns": ["cate_id", "str_a"], "raw_attr_columns": ["raw_a"]},
              "items", tzrec_items(tmp_path / "items"))
    tree = tree_io.read_serving_tree(out / "serving_tree")
    assert tree.ids.tolist() == list(range(10, 25)) + list(range(9, -1, -1))
    assert np.bincount(tree.levels).tolist() == [1, 2, 4, 8, 10]
    features = pq.read_table(out / "node_feature" / "part-0.parquet")
    assert features.column_names == ["item_id", "cate_id", "str_a", "raw_a"]
    leaves = features.slice(15).to_pylist()
    assert [(r["item_id"], r["cate_id"], r["str_a"]) for r in leaves] == \
        [(i, i, f"我们{i}") for i in range(9, -1, -1)]
    assert [r["raw_a"] for r in leaves] == [0.1 * i for i in range(9, -1, -1)]
    table = lines(out / "node_table.txt")
    # root: id 9 + 0 + 1; attrs are modes (all tied: smallest number / first met string); raw: mean
    root_fields = table[1].split("\t")[2].split(",")
    assert root_fields[:4] == ["-1", "10", "0", "我们0"] and abs(float(root_fields[4]) - 0.45) < 1e-12
    assert table[-2] == "0\t1.0\t4,0,0,我们0,0.0"
    assert f"9\t1.0\t4,9,9,我们9,{0.1 * 9}" in table


def test_tzrec_hash_mode_ids(tmp_path):
    out = run(tmp_path, {"id_hash": True}, "items", tzrec_items(tmp_path / "items", hash_ids=True))
    tree = tree_io.read_serving_tree(out / "serving_tree")
    assert tree.ids.tolist() == [f"nonleaf#{c:02d}" for c in range(15)] + [str(i) for i in range(9, -1, -1)]
    assert lines(out / "node_table.txt")[0] == "id:string\tweight:float\tfeature:string"
    assert pq.read_table(out / "node_feature" / "part-0.parquet").schema.field("item_id").type == pa.string()


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 9, 16, 27, 64, 81, 100])
@pytest.mark.parametrize("mode", ["init", "learnt"])
def test_every_item_one_leaf_all_leaves_one_level(k, n, mode):
    rng = np.random.default_rng(n * 10 + k)
    depth = tt.tree_depth(n, k)
    assert k ** depth >= n and (depth == 1 or k ** (depth - 1) < n)
    if mode == "init":
        codes = tt.init_leaf_codes(n, k, depth)
    else:
        codes = tt.learnt_leaf_codes(rng.standard_normal((n, 6)).astype(np.float32), k, iters=3, seed=1)
    tree = tt.assemble_tree(codes, np.arange(n) * 3, k, depth, hash_ids=False)
    leaves = tree.leaf_mask
    assert sorted(tree.ids[leaves].tolist()) == list(range(0, 3 * n, 3))  # each item exactly once
    assert set(tree.levels[leaves].tolist()) == {depth}
    assert set(tree.levels[~leaves].tolist()) == set(range(depth))  # internal nodes only above
    # exact balance: siblings differ by at most one leaf, at every node
    assert tt.balance_report(codes, k, depth)["max_sibling_spread"] <= 1


def test_depth_uses_integer_arithmetic():
    # math.log(125, 5) = 3.0000000000000004 gives tzrec an extra level; 1000 items at k=10 = 3.
    assert tt.tree_depth(125, 5) == 3 and tt.tree_depth(126, 5) == 4
    assert tt.tree_depth(1000, 10) == 3 and tt.tree_depth(1 << 20, 2) == 20
    with pytest.raises(BuildError, match="at least 2"):
        tt.tree_depth(10, 1)


def test_tzrec_learnt_case_structure(tmp_path):
    """tzrec's tree_cluster_test: 10 items with item_emb=[i]*4, k=2: ids 10..24 above the leaves,
    balanced splits floor/ceil at every node, leaf set = items. Neighbours end up as siblings."""
    vectors = [[float(i)] * 4 for i in range(10)]
    emb = write_table(tmp_path / "emb", {"item_id": list(range(10)),
                                         "item_emb": pa.array(vectors, pa.list_(pa.float32()))})
    out = run(tmp_path, {"embedding_column": "item_emb"}, "embeddings", emb)
    tree = tree_io.read_serving_tree(out / "serving_tree")
    assert tree.ids[:15].tolist() == list(range(10, 25))
    assert sorted(tree.ids[15:].tolist()) == list(range(10))
    assert np.bincount(tree.levels).tolist() == [1, 2, 4, 8, 10]
    # level-1 nodes hold 5 and 5 items, split by value: {0..4} and {5..9}
    leaf_codes = tree.codes[tree.leaf_mask]
    leaf_ids = tree.ids[tree.leaf_mask]
    first_level = tt.ancestor_codes(leaf_codes, 2, tree.depth)[:, -2]
    halves = {frozenset(leaf_ids[first_level == c].tolist()) for c in (1, 2)}
    assert halves == {frozenset(range(5)), frozenset(range(5, 10))}


def test_learnt_tree_beats_random_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 16)).astype(np.float32)
    x = centres[rng.integers(0, 8, 2000)] + 0.3 * rng.standard_normal((2000, 16)).astype(np.float32)
    a = tt.learnt_leaf_codes(x, 2, iters=5, seed=3)
    scratch = x.copy()
    b = tt.learnt_leaf_codes(scratch, 2, iters=5, seed=3, overwrite=True)
    assert np.array_equal(a, b) and not np.array_equal(scratch, x)  # same tree; buffer reused
    import torch

    from recbuild.retrieval.tdm_tree.learnt import _learnt_codes

    previous = torch.get_num_threads()
    for threads in (1, 2):  # the thread count changes the speed only (per-row reductions)
        torch.set_num_threads(threads)
        with torch.inference_mode():
            codes = _learnt_codes(x, 2, tt.tree_depth(2000, 2), 5, 3, None, False)
        assert np.array_equal(codes, a)
    torch.set_num_threads(previous)
    depth = tt.tree_depth(2000, 2)
    learnt = tt.sse_at_level(x, a, 2, depth, 3)
    shuffled = tt.sse_at_level(x, rng.permutation(a), 2, depth, 3)
    assert learnt < 0.5 * shuffled  # 8 well-separated clusters found by level 3


@pytest.mark.parametrize("k", [2, 3])
def test_files_parse_back_into_the_same_tree(tmp_path, k):
    n = 50
    rng = np.random.default_rng(k)
    emb = write_table(tmp_path / "emb", {
        "item_id": (np.arange(n) * 7 + 100).tolist(),
        "item_tower_emb": pa.array(rng.standard_normal((n, 8)).astype(np.float32).tolist(),
                                   pa.list_(pa.float32())),
        "brand": [["a", "b", None, ""][i % 4] for i in range(n)],
        "price": pa.array([i if i % 5 else None for i in range(n)], pa.int64()),
    })
    params = {"n_cluster": k, "attr_columns": ["brand"], "raw_attr_columns": ["price"],
              "attr_delimiter": "|", "kmeans_iters": 4}
    out = run(tmp_path, params, "embeddings", emb)
    tree = tree_io.read_serving_tree(out / "serving_tree")
    tt.check_tree_invariants(tree, n)
    features = pq.read_table(out / "node_feature" / "part-0.parquet")
    assert features.column("item_id").to_pylist() == tree.ids.tolist()
    expected = tree_io.GraphTables.of_tree(tree, features, ["brand"], ["price"], "|")
    parsed = tree_io.read_graph_tables(out)
    assert parsed == expected
    # the same build twice gives the same bytes
    again = run(tmp_path, params, "embeddings", emb)
    for name in ("serving_tree", "node_table.txt", "edge_table.txt", "predict_edge_table.txt",
                 "node_feature/part-0.parquet"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_internal_attrs_are_mode_and_mean():
    # k=2, 4 items: leaves 0,1 under one node, 2,3 under the other (init order).
    tree = tt.assemble_tree(tt.init_leaf_codes(4, 2), np.arange(4), 2, 2, False)
    leaf_table = pa.table({"c": ["x", "y", "y", ""], "n": pa.array([1, 2, 3, 3], pa.int64()),
                           "r": pa.array([1, 2, None, 4], pa.int32())})
    features = tree_io.node_features(tree, tt.init_leaf_codes(4, 2), leaf_table, "item_id",
                                     ["c", "n"], ["r"])
    rows = {r["item_id"]: r for r in features.to_pylist()}
    root, left, right = rows[4], rows[5], rows[6]  # codes 0, 1 (items 2,3), 2 (items 0,1)
    assert (root["c"], root["n"], root["r"]) == ("y", 3, 2)  # mean(1,2,4) = 2.33 -> 2
    assert (left["c"], left["n"], left["r"]) == ("y", 3, 4)  # "" is no value; mean of non-null
    assert (right["c"], right["n"], right["r"]) == ("x", 1, 2)  # tie: first met / smallest; 1.5 -> 2


def test_errors(tmp_path):
    items = write_table(tmp_path / "items", {"item_id": [1, 2, 2], "cate_id": [1, 1, 1]})
    with pytest.raises(InputError, match="duplicate item ids"):
        run(tmp_path, {}, "items", items)
    strings = write_table(tmp_path / "s", {"item_id": ["a", "b"], "cate_id": [1, 1]})
    with pytest.raises(InputError, match="id_hash: true"):
        run(tmp_path, {}, "items", strings)
    with pytest.raises(InputError, match="cate_id"):
        run(tmp_path, {"cate_id_column": "cate_id"}, "items",
            write_table(tmp_path / "nc", {"item_id": [1, 2]}))
    assert TdmTreeBuilder().check({"items": "a", "embeddings": "b"})[0][0] == "mode"
    assert TdmTreeBuilder().check(with_schema_defaults(TdmTreeBuilder.schema, {"mode": "learnt", "items": "a"})) == [
        ("embeddings", "mode learnt needs `embeddings`"), ("items", "is not used by mode learnt; remove it")]
    assert TdmTreeBuilder.schema["properties"]["n_cluster"]["minimum"] == 2
    with pytest.raises(BuildError, match="n_cluster must be at least 2"):
        run(tmp_path, {"n_cluster": 1}, "items", write_table(tmp_path / "ok", {"item_id": [1], "cate_id": [1]}))


def test_edge_table_chunks_write_the_same_bytes(tmp_path):
    tree = tt.assemble_tree(tt.init_leaf_codes(37, 3), np.arange(37), 3, tt.tree_depth(37, 3), False)
    tree_io.write_edge_table(tree, tmp_path / "a.txt")
    tree_io.write_edge_table(tree, tmp_path / "b.txt", leaves_per_chunk=4)
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    assert len(lines(tmp_path / "a.txt")) == 1 + 37 * (tree.depth - 1) + 1


def test_balance_metrics_written_with_the_tree(tmp_path):
    """metrics.json: how evenly the items spread (the figures `recbuild metrics` shows for a tree)."""
    import json

    full = run(tmp_path, {"n_cluster": 2}, "items",
               write_table(tmp_path / "four", {"item_id": [0, 1, 2, 3], "cate_id": [7, 7, 7, 7]}))
    assert json.loads((full / "metrics.json").read_text()) == {
        "items": 4, "levels": 3, "nodes": 7, "n_cluster": 2, "branch_leaves_min": 2,
        "branch_leaves_max": 2, "branch_balance": 1.0, "leaf_slot_fill": 1.0, "parent_children_mean": 2.0}
    ten = json.loads((run(tmp_path, {}, "items", tzrec_items(tmp_path / "ten")) / "metrics.json").read_text())
    assert ten["items"] == 10 and ten["levels"] == 5 and ten["leaf_slot_fill"] == 10 / 16
    assert ten["branch_leaves_min"] + ten["branch_leaves_max"] == 10
    assert ten["branch_balance"] == round(ten["branch_leaves_min"] / ten["branch_leaves_max"], 6)
    assert 1.0 <= ten["parent_children_mean"] <= 2.0


def test_balance_of_a_lopsided_tree():
    # k=3, depth 2: the root's first child holds 3 leaves, the second 1, the third none
    tree = tt.assemble_tree(np.array([4, 5, 6, 7]), np.arange(4), 3, 2, False)
    figures = tt.balance(tree)
    assert (figures["branch_leaves_min"], figures["branch_leaves_max"]) == (1, 3)
    assert figures["branch_balance"] == round(1 / 3, 6)
    assert figures["leaf_slot_fill"] == round(4 / 9, 6)
    assert figures["parent_children_mean"] == 2.0


@pytest.mark.parametrize("k,hash_ids,attrs", [(2, False, False), (3, True, False), (5, False, True), (2, True, True)])
def test_tree_files_walked_in_chunks_are_the_tree(tmp_path, monkeypatch, k, hash_ids, attrs):
    """The writers walk the tree from its leaves a chunk at a time; whatever the chunk size (nodes
    whose leaves straddle chunks included) the files hold every node of the whole tree once."""
    import recbuild.retrieval.tdm_tree.leaves as leaves_module

    n = 211
    rng = np.random.default_rng(k)
    depth = tt.tree_depth(n, k)
    codes = tt.learnt_leaf_codes(rng.standard_normal((n, 4)).astype(np.float32), k, iters=2)
    ids = [f"i{v}" for v in range(n)] if hash_ids else np.arange(n) * 3 + 1
    table = pa.table({"c": [f"c{v % 3}" for v in range(n)], "r": pa.array(np.arange(n) % 7, pa.int64())})
    names = (["c"], ["r"]) if attrs else ([], [])
    written = {}
    for chunk in (1 << 20, 3, 1):
        monkeypatch.setattr(leaves_module, "LEAVES_PER_CHUNK", chunk)
        leaves = tt.TreeLeaves.from_leaf_codes(codes, ids, k, depth, hash_ids)
        out = tmp_path / str(chunk)
        out.mkdir()
        tree_io.write_tree(leaves, codes, table, "item_id", *names, out)
        written[chunk] = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert tt.balance(leaves) == tt.balance(tree_io.read_serving_tree(out / "serving_tree"))
    assert written[3] == written[1] == written[1 << 20]
    whole = tt.assemble_tree(codes, ids, k, depth, hash_ids)
    parsed = tree_io.read_serving_tree(tmp_path / "1" / "serving_tree")
    assert parsed.same_as(whole) and tt.balance(whole)["nodes"] == len(whole.codes)
    features = pq.read_table(tmp_path / "1" / "node_feature" / "part-0.parquet")
    assert features.column("item_id").to_pylist() == (whole.id_strings() if hash_ids else whole.ids.tolist())
    assert tree_io.read_graph_tables(tmp_path / "1") == tree_io.GraphTables.of_tree(
        whole, features if attrs else None, *names)


def test_balanced_split_by_partition_is_the_stable_sort_split():
    """Out of core, a node of the cut levels is split in two by a partition: the same rows as
    ranking by a stable argsort (ties to the earlier row), for odd and even sizes."""
    from recbuild.retrieval.tdm_tree.out_of_core import _upper_half

    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 10, 101, 1000):
        score = rng.integers(0, 4, size).astype(np.float32)  # many ties
        ranked = np.argsort(score, kind="stable")
        expected = np.ones(size, dtype=np.int8)
        expected[ranked[: (size + 1) // 2]] = 0
        assert np.array_equal(_upper_half(score), expected), size


def test_attribute_column_without_any_value():
    """An attribute column that is empty or null on every item (it used to raise an IndexError):
    internal nodes get what a node without values always gets, "" for strings, null for numbers."""
    tree = tt.assemble_tree(tt.init_leaf_codes(3, 2), np.arange(3), 2, 2, False)
    leaf_table = pa.table({"c": pa.array(["", None, ""], pa.string()), "n": pa.array([None] * 3, pa.int64()),
                           "r": pa.array([None] * 3, pa.float64())})
    features = tree_io.node_features(tree, tt.init_leaf_codes(3, 2), leaf_table, "item_id", ["c", "n"], ["r"])
    internal = features.slice(0, 3).to_pylist()
    assert [(row["c"], row["n"], row["r"]) for row in internal] == [("", None, None)] * 3


@pytest.mark.parametrize("k,depth", [(2, 1), (2, 7), (3, 4), (300, 2)])
def test_ancestors_on_a_level_are_the_parents_parents(k, depth):
    rng = np.random.default_rng(k * 100 + depth)
    leaves = np.sort(rng.integers(tt.first_code(depth, k), tt.first_code(depth + 1, k), 500))
    walked = leaves.copy()
    for level in range(depth, -1, -1):
        assert np.array_equal(tt.ancestors_on(leaves, k, depth, level), walked)
        walked = (walked - 1) // k
