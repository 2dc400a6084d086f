"""faiss_index: our builder path vs calling faiss directly with the same parameters.

Usage: python bench/index.py [--n 1000000] [--d 64] [--hnsw-n 100000] [--types Flat,IVFFlat,IVFPQ,HNSWFlat]
                             [--reps 3] [--dir /tmp]

Data: the reference generator (1000 gaussian centres, sigma 1.5, L2-normalised; reference/bench/
_common.py), written once as parquet (item_id + fixed_size_list<float32> item_tower_emb, recbuild's
writer options). 1000 extra queries; ground truth = exact IndexFlatIP.

Each build runs in its own subprocess (so peak RSS is that build's), alternating direct / ours, and
the median of --reps is reported:
  direct  pq.read_table -> numpy -> faiss index(same params).train(all rows) / add(all) -> write_index
          (what tzrec's create_faiss_index does, minus its list<double> conversion)
  ours    FaissIndexBuilder.build: streamed batches, seeded training sample, id_mapping,
          index_meta.json, duplicate-id check
Recall@10 / @200 vs exact is measured on the index each path wrote (nprobe 32 / efSearch 64, the
builder's defaults). Target (DESIGN.md section 7): ours within 1.1x of direct.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import (clustered_embeddings, peak_rss_mb, print_table, wait_for_quiet,
                     write_embeddings_parquet)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEED = 12345
NQ = 1000
PARAMS = {  # the same parameters on both paths
    "Flat": {},
    "IVFFlat": {"nlist": 1024, "nprobe": 32},
    "IVFPQ": {"nlist": 1024, "m": 16, "nbits": 8, "nprobe": 32},
    "HNSWFlat": {"M": 32, "ef_construction": 200, "ef_search": 64},
}


# -- workers (one build per process) -------------------------------------------------------------
def build_direct(data: Path, out: Path, index_type: str) -> None:
    import faiss
    import pyarrow.parquet as pq

    table = pq.read_table(str(data / "part-0.parquet"))
    d = table.schema.field("item_tower_emb").type.list_size
    x = table.column("item_tower_emb").combine_chunks().flatten().to_numpy().reshape(-1, d)
    x = np.ascontiguousarray(x)
    ids = table.column("item_id").to_numpy()
    p = PARAMS[index_type]
    faiss.cvar.distance_compute_blas_threshold = 20 * d
    metric = faiss.METRIC_INNER_PRODUCT
    if index_type == "Flat":
        index = faiss.IndexFlatIP(d)
    elif index_type == "HNSWFlat":
        index = faiss.IndexHNSWFlat(d, p["M"], metric)
        index.hnsw.efConstruction = p["ef_construction"]
        index.hnsw.efSearch = p["ef_search"]
    else:
        quantizer = faiss.IndexFlatIP(d)
        if index_type == "IVFFlat":
            index = faiss.IndexIVFFlat(quantizer, d, p["nlist"], metric)
        else:
            index = faiss.IndexIVFPQ(quantizer, d, p["nlist"], p["m"], p["nbits"], metric)
        index.train(x)
        index.nprobe = p["nprobe"]
    index.add(x)
    out.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out / "faiss_index"))
    (out / "id_mapping").write_text("".join(f"{i}\n" for i in ids))


def build_ours(data: Path, out: Path, index_type: str) -> None:
    from recbuild.builders.base import BuildContext, InputArtifact
    from recbuild.builders.faiss_index import FaissIndexBuilder

    out.mkdir(parents=True, exist_ok=True)
    files = tuple(sorted(data.glob("*.parquet")))
    params = {"embeddings": "emb", "index_type": index_type, "metric": "ip", **PARAMS[index_type]}
    ctx = BuildContext(name="index", kind="faiss_index", params=params, out=out,
                       inputs={"embeddings": InputArtifact("emb", "source", data, files, {})},
                       recipe_dir=out, workdir=out, threads=os.cpu_count() or 2)
    FaissIndexBuilder().run(ctx)


def worker(args) -> None:
    started = time.perf_counter()
    if args.worker == "direct":
        build_direct(Path(args.data), Path(args.out), args.type)
    else:
        build_ours(Path(args.data), Path(args.out), args.type)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds,
                      "peak_mb": peak_rss_mb()}))


def run_worker(kind: str, data: Path, out: Path, index_type: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--data", str(data), "--out", str(out), "--type", index_type]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{kind} {index_type} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def recall_of(out: Path, xq: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    import faiss

    index = faiss.read_index(str(out / "faiss_index"))
    faiss.cvar.distance_compute_blas_threshold = 20 * index.d
    _, found = index.search(xq, 200)
    r10 = np.mean([len(np.intersect1d(a[:10], b[:10])) / 10 for a, b in zip(found, gt)])
    r200 = np.mean([len(np.intersect1d(a, b)) / 200 for a, b in zip(found, gt)])
    return float(r10), float(r200)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--hnsw-n", type=int, default=100_000)
    ap.add_argument("--types", default="Flat,IVFFlat,IVFPQ,HNSWFlat")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="before each timed run, wait up to this many seconds for load average < 1")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--data"), ap.add_argument("--out"), ap.add_argument("--type")
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import faiss

    print(f"python {sys.version.split()[0]} | faiss {faiss.__version__} | cpus {os.cpu_count()} | "
          f"load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        scratch = Path(scratch)
        xb, xq = clustered_embeddings(args.n, args.d, NQ)
        sizes = {t: (min(args.hnsw_n, args.n) if t == "HNSWFlat" else args.n) for t in args.types.split(",")}
        datasets = {}
        for n in sorted(set(sizes.values())):
            write_embeddings_parquet(scratch / f"data-{n}", xb[:n])
            flat = faiss.IndexFlatIP(args.d)
            faiss.cvar.distance_compute_blas_threshold = 20 * args.d
            flat.add(xb[:n])
            datasets[n] = (scratch / f"data-{n}", flat.search(xq, 200)[1])
            del flat
        for index_type, n in sizes.items():
            data, gt = datasets[n]
            variants = ["direct", "ours"]
            results = {v: [] for v in variants}
            for rep in range(args.reps):
                for v in variants:  # alternate, so load changes hit both paths alike
                    out = scratch / f"{index_type}-{v}-{rep}"
                    load = wait_for_quiet(args.wait_quiet)
                    results[v].append({**run_worker(v, data, out, index_type), "load": load})
            direct_s = statistics.median(r["seconds"] for r in results["direct"])
            for v in variants:
                seconds = statistics.median(r["seconds"] for r in results[v])
                peak = max(r["peak_mb"] for r in results[v])
                r10, r200 = recall_of(scratch / f"{index_type}-{v}-0", xq, gt)
                load = max(r["load"] for r in results[v])
                rows.append((index_type, f"{n:,}", v, f"{seconds:.2f}", f"{seconds / direct_s:.2f}",
                             f"{peak:.0f}", f"{r10:.3f}", f"{r200:.3f}", f"{load:.1f}"))
                print("  ", rows[-1], flush=True)
    print_table(["index", "n", "path", "build s (median)", "ratio vs direct", "peak RSS MB", "R@10", "R@200",
                 "max load avg before runs"],
                rows, f"faiss_index build, {args.d}-d, reps={args.reps}, params {PARAMS}")


if __name__ == "__main__":
    main()
