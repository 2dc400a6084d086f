"""A whole catalogue's retrieval steps at scale: faiss_index (IVFPQ), tdm_tree (learnt), recall_eval and
serving_bundle, each step's time and peak RSS.

Usage: python bench/catalog_scale.py [--items 1000000] [--dim 64] [--memory-budget 1GB] [--nlist 1024]
                                     [--queries 20000] [--max-queries 2000] [--dir bench/_scratch]
                                     [--compare-in-memory | --no-compare-in-memory]

Data (generated once per size into --dir, deterministic, in chunks so the generator never holds the
table): N x dim item vectors, 1000 gaussian centres with sigma 1.5, L2-normalised (the reference
generator, bench/_common.py, drawn chunk by chunk), as parquet; --queries eval rows, each an item's
vector plus noise (sigma 0.05 a dimension) with that item as its ground truth.

Each target is made by its own `recbuild make TARGET` process, in dependency order; its wall time and
peak RSS (wait4's ru_maxrss: the process and its children, never the bench, which stays small while
they run) are the step's. The sum of the makes is the whole make's time. After the makes, the bench
reads the tree back and computes its within-node SSE at a few levels against a random balanced tree
of the same shape (lower is better); with --compare-in-memory (default up to 2M items) it also builds
the tree with the in-memory path (memory_budget 100%) and compares the SSE.

The last line is exactly `catalog_scale: items=N peak_rss_gb=X seconds=Y` (X: the largest step peak,
Y: the whole make).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 12345
CENTRES = 1000
SIGMA = 1.5
QUERY_NOISE = 0.05
ROWS_PER_PART = 1 << 21
CHUNK = 1 << 18
STEPS = ("index", "tree", "recall", "bundle")


# -- data ------------------------------------------------------------------------------------------
def item_chunk(lo: int, hi: int, dim: int, centres: np.ndarray) -> np.ndarray:
    """Rows lo..hi of the table: the same rows whatever the chunking (seeded by the chunk's start)."""
    assert lo % CHUNK == 0
    rng = np.random.default_rng([SEED, lo // CHUNK])
    x = centres[rng.integers(0, CENTRES, hi - lo)]
    x += SIGMA * rng.standard_normal((hi - lo, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def generate(folder: Path, n: int, dim: int, n_queries: int) -> None:
    """items/part-*.parquet (item_id, item_tower_emb) and queries/part-0.parquet (user_id, item_id = the
    ground truth, user_tower_emb); skipped when a finished copy is there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = folder / "DONE"
    if done.is_file():
        return
    (folder / "items").mkdir(parents=True, exist_ok=True)
    (folder / "queries").mkdir(parents=True, exist_ok=True)
    centres = np.random.default_rng(SEED).standard_normal((CENTRES, dim), dtype=np.float32)
    targets = np.sort(np.random.default_rng(SEED + 1).choice(n, size=n_queries, replace=False))
    noise = np.random.default_rng(SEED + 2).standard_normal((n_queries, dim), dtype=np.float32)
    queries = np.empty((n_queries, dim), dtype=np.float32)
    writer = None
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        if lo % ROWS_PER_PART == 0:
            if writer:
                writer.close()
            writer = None
        x = item_chunk(lo, hi, dim, centres)
        a, b = np.searchsorted(targets, [lo, hi])
        queries[a:b] = x[targets[a:b] - lo] + QUERY_NOISE * noise[a:b]
        table = pa.table({"item_id": pa.array(np.arange(lo, hi, dtype=np.int64)),
                          "item_tower_emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)})
        if writer is None:
            writer = pq.ParquetWriter(str(folder / "items" / f"part-{lo // ROWS_PER_PART}.parquet"),
                                      table.schema, use_dictionary=False, compression="snappy")
        writer.write_table(table, row_group_size=65536)
    writer.close()
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    pq.write_table(pa.table({
        "user_id": pa.array(np.arange(n_queries, dtype=np.int64)),
        "item_id": pa.array(targets.astype(np.int64)),
        "user_tower_emb": pa.FixedSizeListArray.from_arrays(pa.array(queries.reshape(-1)), dim)}),
        str(folder / "queries" / "part-0.parquet"))
    done.write_text("ok\n")


def recipe(budget: str, nlist: int, max_queries: int, compare: bool) -> str:
    text = f"""version: 1
name: catalog_scale
workdir: build
sources:
  items: {{path: data/items}}
  queries: {{path: data/queries}}
artifacts:
  index: {{kind: faiss_index, embeddings: items, index_type: IVFPQ, metric: ip, nlist: {nlist},
          memory_budget: "{budget}"}}
  tree: {{kind: tdm_tree, embeddings: items, n_cluster: 2, memory_budget: "{budget}"}}
  recall: {{kind: recall_eval, index: index, user_embeddings: queries, item_embeddings: items, k: [10, 100],
           request_column: null, label_column: null, max_queries: {max_queries}, memory_budget: "{budget}"}}
  bundle: {{kind: serving_bundle, index: index, tree: tree}}
"""
    if compare:
        text += "  tree_in_memory: {kind: tdm_tree, embeddings: items, n_cluster: 2, memory_budget: \"100%\"}\n"
    return text + "default: [bundle, recall]\n"


# -- measuring -------------------------------------------------------------------------------------
def make(project: Path, target: str) -> tuple[float, float, float]:
    """(seconds, peak RSS in GB, CPU seconds) of `recbuild make TARGET`, a process of its own. CPU
    seconds (user + system, the process and its children) hardly move with other jobs on the
    machine; wall seconds do."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log = open(project / f"make-{target}.log", "wb")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "recbuild.cli", "make", target], cwd=project, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if proc.returncode != 0:
        raise SystemExit(f"recbuild make {target} failed (exit {proc.returncode}):\n"
                         + (project / f"make-{target}.log").read_text(errors="replace")[-3000:])
    return seconds, usage.ru_maxrss / 1024 ** 2, usage.ru_utime + usage.ru_stime


def leaf_codes_of(tree_dir: Path, n: int) -> tuple[np.ndarray, int, int]:
    """(code of item i, k, depth) from serving_tree (item ids are the row numbers)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with open(tree_dir / "serving_tree") as fh:
        levels, k = (int(v) for v in fh.readline().split())
    table = pcsv.read_csv(tree_dir / "serving_tree", read_options=pcsv.ReadOptions(
        skip_rows=1, column_names=["code", "id"]), parse_options=pcsv.ParseOptions(delimiter=" "),
        convert_options=pcsv.ConvertOptions(column_types={"code": pa.int64(), "id": pa.int64()}))
    codes = table.column("code").to_numpy()
    ids = table.column("id").to_numpy()
    depth = levels - 1
    first_leaf = (k ** depth - 1) // (k - 1)
    leaves = codes >= first_leaf
    out = np.empty(n, dtype=np.int64)
    out[ids[leaves]] = codes[leaves]
    return out, k, depth


def sse(data: Path, n: int, dim: int, trees: dict[str, np.ndarray], k: int, depth: int,
        levels: list[int]) -> dict[str, dict[int, float]]:
    """Within-node SSE at ``levels`` for each tree's leaf codes, in one streamed pass over the items."""
    from recbuild.retrieval.embeddings_io import EmbeddingTable
    from recbuild.retrieval.tdm_tree.codes import ancestors_on, first_code

    table = EmbeddingTable(data / "items", "item_id", "item_tower_emb", "items")
    groups = {}
    for name, codes in trees.items():
        for level in levels:
            node = ancestors_on(codes, k, depth, level) - first_code(level, k)
            groups[name, level] = (node, np.zeros((k ** level, dim)), np.zeros(k ** level), np.zeros(k ** level))
    for part in table.batches(1 << 18):
        lo, x = part.row_offset, part.vectors.astype(np.float64)
        sq = (x * x).sum(1)
        for node, sums, counts, squares in groups.values():
            g = node[lo:lo + len(x)]
            np.add.at(counts, g, 1)
            np.add.at(squares, g, sq)
            for j in range(dim):  # per column: bincount is far faster than add.at on rows
                sums[:, j] += np.bincount(g, weights=x[:, j], minlength=len(counts))
    out: dict[str, dict[int, float]] = {name: {} for name in trees}
    for (name, level), (_, sums, counts, squares) in groups.items():
        out[name][level] = float((squares - (sums * sums).sum(1) / np.maximum(counts, 1)).sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--memory-budget", default="1GB", help="memory_budget of every step")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists (one setting for every size)")
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--max-queries", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=ROOT / "bench" / "_scratch")
    parser.add_argument("--compare-in-memory", action=argparse.BooleanOptionalAction, default=None,
                        help="also build the tree in memory and compare SSE (default: up to 2M items)")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n, dim = args.items, args.dim
    project = (args.dir / f"catalog_{n}x{dim}").resolve()
    data = project / "data"
    if args.generate_only:  # (run as a child: the generator's memory never counts in a step's peak)
        generate(data, n, dim, args.queries)
        return
    compare = args.compare_in_memory if args.compare_in_memory is not None else n <= 2_000_000
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--generate-only", "--items", str(n), "--dim", str(dim),
                    "--queries", str(args.queries), "--dir", str(args.dir)], check=True)
    print(f"data: {n:,} x {dim} items, {args.queries:,} queries in {data} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    (project / "recbuild.yaml").write_text(recipe(args.memory_budget, args.nlist, args.max_queries, compare))
    build = project / "build"
    if build.exists():  # measure the make from nothing, every time
        subprocess.run([sys.executable, "-m", "recbuild.cli", "clean"], cwd=project, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    rows, total, total_cpu, peak = [], 0.0, 0.0, 0.0
    for step in STEPS:
        seconds, rss, cpu = make(project, step)
        total += seconds
        total_cpu += cpu
        peak = max(peak, rss)
        rows.append((step, seconds, rss, cpu))
        print(f"  {step:<8} {seconds:8.1f} s  peak RSS {rss:5.2f} GB  CPU {cpu:8.1f} s", flush=True)
    in_memory = None
    if compare:
        in_memory = make(project, "tree_in_memory")
        print(f"  tree_in_memory {in_memory[0]:8.1f} s  peak RSS {in_memory[1]:5.2f} GB  CPU {in_memory[2]:8.1f} s "
              "(not in the make)", flush=True)

    recall = json.loads((build / "recall" / "metrics.json").read_text())
    tree_metrics = json.loads((build / "tree" / "metrics.json").read_text())
    codes, k, depth = leaf_codes_of(build / "tree", n)
    rng = np.random.default_rng(SEED + 3)
    first_leaf = (k ** depth - 1) // (k - 1)
    # a random balanced tree of the same shape: the in-memory rule's leaf codes on shuffled items
    from recbuild.retrieval.tdm_tree import init_leaf_codes

    trees = {"built": codes, "random": init_leaf_codes(n, k, depth)[rng.permutation(n)]}
    if in_memory:
        trees["in_memory"] = leaf_codes_of(build / "tree_in_memory", n)[0]
    levels = [lv for lv in (4, 10, 16) if lv < depth]
    quality = sse(data, n, dim, trees, k, depth, levels)
    assert (codes >= first_leaf).all()

    print(f"\n### catalog_scale: {n:,} x {dim} items, memory_budget {args.memory_budget}, IVFPQ nlist "
          f"{args.nlist}, 2 cores\n")
    print(f"(load average {os.getloadavg()[0]:.1f}: wall seconds stretch when other jobs share the cores)\n")
    print("| step | seconds | CPU seconds | peak RSS GB |")
    print("|---|---|---|---|")
    for step, seconds, rss, cpu in rows:
        print(f"| {step} | {seconds:.1f} | {cpu:.1f} | {rss:.2f} |")
    print(f"| whole make | {total:.1f} | {total_cpu:.1f} | {peak:.2f} |")
    if in_memory:
        print(f"| (tree, in-memory path) | {in_memory[0]:.1f} | {in_memory[2]:.1f} | {in_memory[1]:.2f} |")
    print(f"\ntree: {tree_metrics.get('out_of_core') or 'built in memory'}")
    for level in levels:
        built, random = quality["built"][level], quality["random"][level]
        line = f"SSE level {level}: tree {built:,.0f}, random balanced {random:,.0f} ({built / random:.3f}x)"
        if in_memory:
            ref = quality["in_memory"][level]
            line += f", in-memory tree {ref:,.0f} (out of core {built / ref - 1:+.2%})"
        print(line)
    print("recall: " + ", ".join(f"{key}={recall[key]}" for key in sorted(recall)
                                  if key.startswith(("recall@", "index_recall@")))
          + f"; exact: {recall.get('exact')}; queries: {recall.get('queries_sampled')}")
    print(f"catalog_scale: items={n} peak_rss_gb={peak:.2f} seconds={total:.1f}")


if __name__ == "__main__":
    main()
