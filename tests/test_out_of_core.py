"""Catalogue-scale paths, forced with a tiny memory_budget on a few thousand items, through the CLI:
the out-of-core tdm_tree is valid, balanced and about as tight as the in-memory one; a budgeted
faiss_index answers like one built in memory from the same sample, and a Flat index over the
budget is refused up front; recall_eval's streamed exact baseline equals brute force and its
query sample is recorded; serve-check's mapped index answers like a read one."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbuild.errors import InputError
from recbuild.retrieval import faiss_index as fi
from recbuild.retrieval import recall
from recbuild.retrieval import tdm_tree as tt
from recbuild.retrieval import tree_io
from recbuild.retrieval.memory import parse_budget

DIM = 16
N = 3000


def clustered(n: int, seed: int = 0, centres: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cent = rng.standard_normal((centres, DIM)).astype(np.float32)
    x = cent[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_items(folder: Path, x: np.ndarray, parts: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(x), parts + 1).astype(int)
    for p in range(parts):
        lo, hi = bounds[p], bounds[p + 1]
        pq.write_table(pa.table({
            "item_id": pa.array(np.arange(lo, hi, dtype=np.int64) + 100),
            "item_tower_emb": pa.FixedSizeListArray.from_arrays(pa.array(x[lo:hi].reshape(-1)), DIM)}),
            folder / f"part-{p}.parquet", row_group_size=500)


def write_queries(folder: Path, x: np.ndarray, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(3)
    target = rng.choice(len(x), n, replace=False)
    q = x[target] + 0.1 * rng.standard_normal((n, DIM)).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": pa.array(np.arange(n)), "item_id": pa.array(target + 100),
                             "user_tower_emb": pa.FixedSizeListArray.from_arrays(pa.array(q.reshape(-1)), DIM)}),
                   folder / "part-0.parquet")
    return q


@pytest.fixture
def catalogue(project):
    x = clustered(N)
    write_items(project.path / "data" / "items", x)
    return project, x


def items_recipe(artifacts: str) -> str:
    """A recipe over the items table (data/items) with these artifact lines."""
    return """
    version: 1
    workdir: build
    sources:
      items: {path: data/items}
    artifacts:
""" + textwrap.indent(textwrap.dedent(artifacts).strip("\n"), "      ") + "\n"


def tree_recipe(k: int, budget: str) -> str:
    return items_recipe(f'tree: {{kind: tdm_tree, embeddings: items, n_cluster: {k}, memory_budget: "{budget}"}}')


@pytest.mark.parametrize("k", [2, 3])
def test_out_of_core_tree_is_valid_balanced_and_close_to_in_memory(catalogue, k):
    project, x = catalogue
    project.recipe(tree_recipe(k, "1MB"))  # the in-memory build would need about 4 MB
    result = project.run("make", "tree")
    assert result.code == 0, result.out + result.err
    out = project.path / "build" / "tree"
    metrics = json.loads((out / "metrics.json").read_text())
    ooc = metrics["out_of_core"]
    assert ooc["subtrees"] >= k and ooc["max_subtree_items"] < N and ooc["sample_items"] < N
    tree = tree_io.read_serving_tree(out / tree_io.SERVING_TREE)
    tt.check_tree_invariants(tree, N)  # every item one leaf, all leaves on the last level
    depth = tt.tree_depth(N, k)
    assert tree.depth == depth
    leaves = tree.leaf_mask
    codes = np.empty(N, dtype=np.int64)
    codes[tree.ids[leaves] - 100] = tree.codes[leaves]
    # the in-memory rule: siblings differ by at most one item, on every level
    assert tt.balance_report(codes, k, depth)["max_sibling_spread"] <= 1
    in_memory = tt.learnt_leaf_codes(x.copy(), k, iters=10, seed=42)
    random = tt.init_leaf_codes(N, k, depth)[np.random.default_rng(0).permutation(N)]
    for level in (2, 4):
        ours, ref, rnd = (tt.sse_at_level(x, c, k, depth, level) for c in (codes, in_memory, random))
        assert ours <= 1.05 * ref, (level, ours, ref)
        assert ours < rnd
    # the other files agree with serving_tree
    tables = tree_io.read_graph_tables(out)
    assert tables.ids == tree.id_strings()


def test_out_of_core_tree_with_a_wide_branching(catalogue):
    """n_cluster 300: a child's number no longer fits a byte, and every item is still one leaf on
    the last level, with siblings within one item of each other."""
    project, _ = catalogue
    project.recipe(tree_recipe(300, "1MB"))
    result = project.run("make", "tree")
    assert result.code == 0, result.out + result.err
    out = project.path / "build" / "tree"
    assert json.loads((out / "metrics.json").read_text())["out_of_core"]["subtrees"] == 300
    tree = tree_io.read_serving_tree(out / tree_io.SERVING_TREE)
    tt.check_tree_invariants(tree, N)
    codes = tree.codes[tree.leaf_mask]
    assert tt.balance_report(codes, 300, tree.depth)["max_sibling_spread"] <= 1


def test_tree_below_the_budget_takes_todays_path(catalogue):
    project, x = catalogue
    project.recipe(tree_recipe(2, "1GB"))
    assert project.run("make", "tree").code == 0
    metrics = json.loads((project.path / "build" / "tree" / "metrics.json").read_text())
    assert "out_of_core" not in metrics
    tree = tree_io.read_serving_tree(project.path / "build" / "tree" / tree_io.SERVING_TREE)
    leaves = tree.leaf_mask
    codes = np.empty(N, dtype=np.int64)
    codes[tree.ids[leaves] - 100] = tree.codes[leaves]
    assert np.array_equal(codes, tt.learnt_leaf_codes(x.copy(), 2, iters=10, seed=42))


def test_out_of_core_tree_is_deterministic(catalogue):
    project, _ = catalogue
    project.recipe(tree_recipe(2, "1MB"))
    assert project.run("make", "tree").code == 0
    first = (project.path / "build" / "tree" / "edge_table.txt").read_bytes()
    assert project.run("clean").code == 0
    assert project.run("make", "tree").code == 0
    assert (project.path / "build" / "tree" / "edge_table.txt").read_bytes() == first


def test_budgeted_index_answers_like_one_built_in_memory(catalogue):
    project, x = catalogue
    # IVFPQ with nlist 16: faiss's sample would be 256 x 256 (PQ) rows; 120 KB holds fewer
    project.recipe(items_recipe("""
    index: {kind: faiss_index, embeddings: items, index_type: IVFPQ, nlist: 16, m: 4, nbits: 8,
            memory_budget: "120KB", batch_size: 500}
    """))
    result = project.run("make", "index")
    assert result.code == 0, result.out + result.err
    out = project.path / "build" / "index"
    meta = json.loads((out / "index_meta.json").read_text())
    spec = fi.IndexSpec(index_type="IVFPQ", nlist=16, m=4, nbits=8, nprobe=16, seed=42)
    assert meta["train_size"] == fi.fit_budget(spec, N, DIM, 120_000) < spec.resolved_train_size(N)
    # in memory: the same sample, the whole table added at once
    direct = fi.new_index(spec, DIM)
    direct.nprobe = 16
    direct.train(x[fi.sample_positions(N, meta["train_size"], 42)])
    direct.add(x)
    index, ids = fi.load_index(out)
    q = clustered(50, seed=9)
    got_scores, got = fi.search(index, q, 10)
    want_scores, want = direct.search(q, 10)
    assert np.array_equal(got, want) and np.array_equal(got_scores, want_scores)
    assert ids[int(got[0, 0])] == str(int(want[0, 0]) + 100)


def test_flat_index_over_the_budget_is_refused_up_front(catalogue):
    project, _ = catalogue
    project.recipe(items_recipe('index: {kind: faiss_index, embeddings: items, index_type: Flat, memory_budget: "100KB"}'))
    result = project.run("make", "index")
    assert result.code == 1
    text = result.out + result.err
    assert "Flat index of 3,000 x 16 vectors takes about 192.0 KB in memory, over memory_budget (100.0 KB)" in text
    assert "Traceback" not in text
    assert not (project.path / "build" / "index").exists()


def test_bad_budget_is_a_recipe_error(catalogue):
    project, _ = catalogue
    project.recipe(tree_recipe(2, "lots"))
    result = project.run("make", "tree")
    assert result.code == 2
    assert "recbuild.yaml:" in result.out + result.err and "memory_budget" in result.out + result.err


def test_recall_exact_baseline_streams_and_equals_brute_force(catalogue):
    project, x = catalogue
    q = write_queries(project.path / "data" / "queries", x)
    project.recipe("""
    version: 1
    workdir: build
    sources:
      items: {path: data/items}
      queries: {path: data/queries}
    artifacts:
      index: {kind: faiss_index, embeddings: items, index_type: IVFFlat, nlist: 16, nprobe: 2}
      recall: {kind: recall_eval, index: index, user_embeddings: queries, item_embeddings: items,
               request_column: null, label_column: null, k: [1, 10], max_queries: 120, seed: 7,
               memory_budget: "1KB"}
      recall_index: {kind: recall_eval, index: index, user_embeddings: queries, request_column: null,
                     label_column: null, k: [1, 10], max_queries: 120, seed: 7, memory_budget: "1KB"}
    """)
    result = project.run("make", "recall", "recall_index")
    assert result.code == 0, result.out + result.err
    doc = json.loads((project.path / "build" / "recall" / "metrics.json").read_text())
    assert doc["queries_sampled"] == {"max_queries": 120, "seed": 7, "of": 300}
    assert doc["requests"] == 120
    picked = recall.sample_requests(300, 120, 7)
    exact = np.argsort(-(q[picked] @ x.T), axis=1, kind="stable")[:, :10]
    gt = pq.read_table(project.path / "data" / "queries").column("item_id").to_numpy()[picked] - 100
    for k in (1, 10):
        want = float(np.mean([g in row[:k] for g, row in zip(gt, exact)]))
        assert doc["exact"][f"recall@{k}"] == round(want, recall.ROUND)
    # the baseline from the index's own vectors (IVFFlat lists, in chunks) gives the same figures
    from_index = json.loads((project.path / "build" / "recall_index" / "metrics.json").read_text())
    assert from_index["exact"] == doc["exact"] and from_index["exact_baseline"] == "index_vectors"


def test_exact_top_k_in_chunks_equals_one_flat_search():
    x = clustered(5000, seed=4)
    q = clustered(40, seed=5)
    for metric in ("ip", "l2"):
        flat = fi.new_index(fi.IndexSpec(index_type="Flat", metric=metric), DIM)
        flat.add(x)
        _, want = flat.search(q, 25)
        order = np.random.default_rng(1).permutation(len(x))  # chunks in any order
        chunks = ((x[order[lo:lo + 700]], order[lo:lo + 700]) for lo in range(0, len(x), 700))
        assert np.array_equal(recall.exact_top_k(chunks, q, 25, metric), want)


@pytest.mark.parametrize("index_type", ["Flat", "IVFFlat", "IVFPQ", "HNSWFlat"])
def test_mapped_index_answers_like_a_read_one(tmp_path, index_type):
    x = clustered(2000, seed=6)
    spec = fi.IndexSpec(index_type=index_type, nlist=8, m=4, nbits=6)
    index = fi.new_index(spec, DIM)
    if spec.is_ivf:
        index.train(x)
    index.add(x)
    import faiss

    faiss.write_index(index, str(tmp_path / fi.INDEX_FILE))
    (tmp_path / fi.ID_MAPPING_FILE).write_text("".join(f"id{i}\n" for i in range(2000)))
    mapped, ids = fi.load_index(tmp_path, mmap=True)
    read, _ = fi.load_index(tmp_path)
    q = clustered(30, seed=8)
    assert np.array_equal(fi.search(mapped, q, 5)[1], fi.search(read, q, 5)[1])
    assert len(ids) == 2000 and ids[1999] == "id1999" and list(ids.take(np.array([3, -1]))) == ["id3", None]


def test_id_mapping_without_final_newline_and_bad_utf8(tmp_path):
    path = tmp_path / "id_mapping"
    path.write_bytes(b"a\n\nccc")
    assert fi.read_id_mapping(path).tolist() == ["a", "", "ccc"]
    assert fi.read_id_mapping(path, chunk_bytes=2).tolist() == ["a", "", "ccc"]
    path.write_bytes(b"a\n\xff\n")
    with pytest.raises(InputError, match="not UTF-8"):
        fi.read_id_mapping(path)


def test_id_mapping_is_read_in_chunks(tmp_path):
    """Lookups, the in-order comparison and the count agree with the file whatever the chunk size
    (lines straddling chunks included), and a restart from an earlier line works."""
    path = tmp_path / "id_mapping"
    lines = [f"item-{i * 7}" for i in range(500)]
    path.write_text("".join(f"{line}\n" for line in lines))
    for chunk_bytes in (3, 64, 1 << 20):
        ids = fi.read_id_mapping(path, chunk_bytes=chunk_bytes)
        assert len(ids) == 500 and ids.tolist() == lines
        picked = np.array([[499, 0, -1], [250, 250, 13]])
        assert ids.take(picked).tolist() == [[lines[499], lines[0], None], [lines[250], lines[250], lines[13]]]
        for offset, n in ((0, 100), (100, 150), (250, 250), (40, 20)):
            assert ids.equals_slice(offset, pa.array(lines[offset:offset + n]))
        assert not ids.equals_slice(10, pa.array(lines[11:20]))
        assert not ids.equals_slice(495, pa.array(lines[495:] + ["extra"]))
        assert ids.members({"item-0", "item-3493", "item-7", "item-3500", "item-", ""}) == {"item-0", "item-3493", "item-7"}
        assert ids.members(set()) == set()


def test_budget_syntax():
    assert parse_budget("2GB") == 2 * 10 ** 9
    assert parse_budget("1.5GiB") == 3 << 29
    assert parse_budget("512 MiB") == 512 << 20
    assert 0 < parse_budget("10%") < parse_budget(None) * 1.01
    for bad in ("2 gigs", "0MB", "150%", "-1GB"):
        with pytest.raises(InputError):
            parse_budget(bad)


def test_budget_below_the_items_bookkeeping_warns_and_still_builds(catalogue):
    project, _ = catalogue
    project.recipe(tree_recipe(2, "300KB"))  # 3000 items x 64 bytes of bookkeeping: over half of it
    result = project.run("make", "tree")
    assert result.code == 0, result.out + result.err
    assert "of bookkeeping (64 bytes each), half or more of memory_budget 300.0 KB" in result.out + result.err
    tree = tree_io.read_serving_tree(project.path / "build" / "tree" / tree_io.SERVING_TREE)
    tt.check_tree_invariants(tree, N)
