"""tdm_tree learnt mode: level-by-level balanced k-means (ours) vs recursive sklearn k-means (tzrec).

Usage: python bench/tree.py [--n 1000000] [--d 64] [--k 2] [--sk-sizes 4096,16384] [--reps 2]
                            [--iters 10] [--skip-builder] [--dir /tmp]
Needs scikit-learn for the baselines (`pip install scikit-learn`; not a recbuild dependency).

Data: the reference generator (1000 gaussian centres, sigma 1.5, normalised; reference/bench/_common.py).

Baselines, measured on --sk-sizes items and extrapolated to --n by the n*log(n) rule (one sklearn call
per internal node makes the full size take minutes), exactly like the reference bench does:
  (a1) TorchEasyRec's cluster_tree: KMeans(n_clusters=k, random_state=0) with sklearn's defaults
       (k-means++, n_init=auto, max_iter=300, tol=1e-4), then tzrec's balancing (every cluster keeps
       its floor(n/k) closest members, the rest refill short clusters, leftovers to cluster 0)
  (a2) the reference bench's variant (a): KMeans started from 2 random items, 10 iterations, tol 0
Ours: recbuild.retrieval.tdm_tree.learnt_leaf_codes at the full --n (and at the sk sizes for quality),
and the whole builder (parquet in, five tree files out) in a subprocess for its peak RSS.

Balance: largest leaf-count difference between siblings (1 = as balanced as possible; tzrec's k=2 is
the same). Quality: within-node SSE at depths 4 and 10 (lower is better) next to a random balanced tree.
Target (DESIGN.md section 7): ours >= 10x faster than (a1) at equal balance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _common import (clustered_embeddings, peak_rss_mb, print_table, wait_for_quiet,
                     write_embeddings_parquet)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEED = 12345


# -- baselines -------------------------------------------------------------------------------------
def tzrec_balanced_kmeans(x: np.ndarray, k: int, kmeans) -> np.ndarray:
    """tzrec's TreeCluster._cluster: labels with sizes floor(n/k) (+ n mod k extra in cluster 0)."""
    km = kmeans(x)
    distances = km.transform(x)
    labels = km.labels_.copy()
    n = len(x)
    ave = n // k
    pool = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members) > ave:
            order = members[np.argsort(distances[members, c], kind="stable")]
            pool.extend(order[ave:].tolist())
            labels[order[ave:]] = -1
    pool = np.array(pool, dtype=np.int64)
    for c in range(k):
        short = ave - int((labels == c).sum())
        if short > 0 and len(pool):
            order = pool[np.argsort(distances[pool, c], kind="stable")]
            labels[order[:short]] = c
            pool = order[short:]
    labels[labels < 0] = 0  # leftovers (< k) go to cluster 0
    return labels


def recursive_tree(x: np.ndarray, k: int, kmeans) -> tuple[np.ndarray, int]:
    """Recursion over nodes (tzrec's cluster_tree, one process); returns (leaf codes, k-means calls)."""
    codes = np.zeros(len(x), dtype=np.int64)
    stack = [(0, np.arange(len(x)))]
    calls = 0
    while stack:
        parent, index = stack.pop()
        if len(index) <= k:
            codes[index] = k * parent + 1 + np.arange(len(index))
            continue
        labels = tzrec_balanced_kmeans(x[index], k, kmeans)
        calls += 1
        for c in range(k):
            sub = index[labels == c]
            code = k * parent + 1 + c
            if len(sub) == 1:
                codes[sub] = code
            elif len(sub):
                stack.append((code, sub))
    return codes, calls


def pull_down(codes: np.ndarray, k: int, depth: int) -> np.ndarray:
    """Move every leaf to level `depth` through first children (tzrec's TreeBuilder, fixed)."""
    from recbuild.retrieval.tdm_tree import first_code

    codes = codes.copy()
    lowest = first_code(depth, k)
    while True:
        short = codes < lowest
        if not short.any():
            return codes
        codes[short] = codes[short] * k + 1


def sklearn_tzrec(k):
    from sklearn.cluster import KMeans

    return lambda x: KMeans(n_clusters=k, random_state=0).fit(x)


def sklearn_reference(k, iters, rng):
    from sklearn.cluster import KMeans

    def fit(x):
        init = x[rng.choice(len(x), size=k, replace=False)]
        return KMeans(n_clusters=k, init=init, n_init=1, max_iter=iters, tol=0.0).fit(x)

    return fit


# -- ours in a subprocess: the whole builder, for its peak RSS ------------------------------------
def builder_worker(data: Path, out: Path, k: int, iters: int) -> None:
    from recbuild.builders.base import BuildContext, InputArtifact
    from recbuild.builders.tdm_tree import TdmTreeBuilder

    out.mkdir(parents=True, exist_ok=True)
    files = tuple(sorted(data.glob("*.parquet")))
    ctx = BuildContext(name="tree", kind="tdm_tree",
                       params={"embeddings": "emb", "n_cluster": k, "kmeans_iters": iters}, out=out,
                       inputs={"embeddings": InputArtifact("emb", "source", data, files, {})},
                       recipe_dir=out, workdir=out, threads=os.cpu_count() or 2)
    started = time.perf_counter()
    TdmTreeBuilder().run(ctx)
    print(json.dumps({"seconds": time.perf_counter() - started,
                      "peak_mb": peak_rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--sk-sizes", default="4096,16384")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--skip-builder", action="store_true")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="before each timed run, wait up to this many seconds for load average < 1")
    ap.add_argument("--worker", default=None)
    args = ap.parse_args()
    if args.worker:
        data, out = args.worker.split(",")
        return builder_worker(Path(data), Path(out), args.k, args.iters)

    import torch

    from recbuild.retrieval import tdm_tree as tt

    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    print(f"python {sys.version.split()[0]} | torch {torch.__version__} | cpus {os.cpu_count()} | "
          f"load average {os.getloadavg()[0]:.1f} at start | k={args.k} iters={args.iters}")
    X, _ = clustered_embeddings(args.n, args.d)
    N, k = args.n, args.k
    sk_sizes = [int(s) for s in args.sk_sizes.split(",") if s]

    def extrapolate(seconds, n):
        return seconds * (N * math.log2(N)) / (n * math.log2(n))

    def spread(codes, depth):
        return tt.balance_report(codes, k, depth)["max_sibling_spread"]

    def quality(x, codes, depth):
        return [f"{tt.sse_at_level(x, codes, k, depth, lv):,.0f}" if lv < depth else "-" for lv in (4, 10)]

    speed, qual = [], []
    ours_full, base_est, loads = [], {}, []
    rng = np.random.default_rng(SEED)
    for rep in range(args.reps):  # alternate baseline and ours so load changes hit both
        for n in sk_sizes:
            x = X[:n]
            baselines = (("(a1) tzrec: recursive sklearn KMeans, defaults", sklearn_tzrec(k)),
                         (f"(a2) recursive sklearn KMeans, {args.iters} iters",
                          sklearn_reference(k, args.iters, rng)))
            for label, fit in baselines:
                loads.append(wait_for_quiet(args.wait_quiet))
                started = time.perf_counter()
                codes, calls = recursive_tree(x, k, fit)
                seconds = time.perf_counter() - started
                base_est.setdefault((label, n), []).append(seconds)
                if rep == 0:
                    depth = tt.tree_depth(n, k)
                    leaf = pull_down(codes, k, depth)
                    qual.append((label, n, spread(leaf, depth), *quality(x, leaf, depth)))
                    print("  ", label, n, f"{seconds:.2f}s", calls, "calls", flush=True)
        loads.append(wait_for_quiet(args.wait_quiet))
        started = time.perf_counter()
        codes = tt.learnt_leaf_codes(X, k, iters=args.iters, seed=SEED, threads=2)
        ours_full.append(time.perf_counter() - started)
        print(f"   ours {N}: {ours_full[-1]:.2f}s", flush=True)
    depth = tt.tree_depth(N, k)
    ours_s = statistics.median(ours_full)
    for (label, n), times in base_est.items():
        t = statistics.median(times)
        est = extrapolate(t, n)
        speed.append((label, f"{n:,}", f"{t:.2f}", f"{est:,.0f} (n log n)", f"{est / ours_s:.1f}x"))
    speed.append(("ours: level-by-level balanced k-means (torch, 2 threads)", f"{N:,}", f"{ours_s:.2f}",
                  "(measured)", "1.0x"))
    for n in sk_sizes:
        small = tt.learnt_leaf_codes(X[:n], k, iters=args.iters, seed=SEED, threads=2)
        d_small = tt.tree_depth(n, k)
        qual.append(("ours", n, spread(small, d_small), *quality(X[:n], small, d_small)))
        qual.append(("random balanced tree", n, "-", *quality(X[:n], np.random.default_rng(1).permutation(
            tt.init_leaf_codes(n, k, d_small)), d_small)))
    qual.append(("ours", N, spread(codes, depth), *quality(X, codes, depth)))
    qual.append(("random balanced tree", N, "-", *quality(X, np.random.default_rng(1).permutation(
        tt.init_leaf_codes(N, k, depth)), depth)))

    builder_row = None
    if not args.skip_builder:
        with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
            data = Path(scratch) / "data"
            write_embeddings_parquet(data, X)
            wait_for_quiet(args.wait_quiet)
            cmd = [sys.executable, __file__, "--worker", f"{data},{Path(scratch) / 'out'}", "--k", str(k),
                   "--iters", str(args.iters)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr)
            builder_row = json.loads(done.stdout.strip().splitlines()[-1])
            sizes = {p.name: p.stat().st_size for p in (Path(scratch) / "out").rglob("*") if p.is_file()}
            print("   builder output bytes:", sizes)

    print_table(["variant", "items", "time s (median)", f"est. for {N:,} s", "ours faster by"], speed,
                f"TDM tree, k={k}, {args.d}-d, {args.iters} iterations, median of {args.reps}; "
                f"load average before timed runs {min(loads):.1f}..{max(loads):.1f}")
    print_table(["variant", "items", "max sibling spread", "SSE depth 4", "SSE depth 10"], qual,
                "Balance and quality (SSE: lower is better)")
    if builder_row:
        print(f"\nWhole tdm_tree builder at {N:,} items (parquet in, 5 files out): "
              f"{builder_row['seconds']:.1f} s, peak RSS {builder_row['peak_mb']:.0f} MB "
              f"(embedding matrix alone: {X.nbytes / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
