"""item_embeddings with `executor: local` vs `executor: ray` on a two-node Ray cluster on this machine.

Usage: python bench/predict_ray.py [--rows 1000000] [--batch 4096] [--task-rows 65536]
                                   [--port 6390] [--dir DIR] [--keep]

What it does (fixed seeds; the table and the tower are bench/predict.py's):
1. writes the 1M-row item table and exports the tower (bench/predict.py: write_items, build_tower);
2. `executor: local`: recbuild.ml.predictor.predict_embeddings, threads 2 (the whole machine);
3. starts a two-node Ray cluster on loopback: `ray start --head --port=PORT --num-cpus=1` and
   `ray start --address=127.0.0.1:PORT --num-cpus=1` (a second raylet: a second "node");
4. `executor: ray` (recbuild.ml.ray_executor.predict_embeddings_ray, address 127.0.0.1:PORT) with 1 actor
   (one node's worth) and with 2 actors (both nodes), 1 CPU each; checks the part files are
   byte-identical to the local run's;
5. `ray stop --force`.

Prints items/s of each (wall time of the whole call: validation pre-pass, Ray scheduling, actor
start-up with the tower load, reading, forward, writing), the ratio ray / local, and the per-node
scaling (2 actors / 1 actor). Both "nodes" share this machine's 2 cores with the driver, so this
measures the overhead of the Ray path and that the work spreads, not a real second machine.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from predict import build_tower, write_items  # noqa: E402  (the same table and tower)


def ray_cli(*args: str) -> None:
    done = subprocess.run(["ray", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"`ray {' '.join(args)}` failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


class FirstRows:
    """A progress sink recording when the first rows were written: the steady rate excludes the
    fixed start-up (validation pre-pass, Ray scheduling, actors importing torch and loading the
    tower), which a 100M-row run pays once."""

    def __call__(self, total, unit):
        self.first, self.first_rows = None, 0
        return self

    def advance(self, n):
        if self.first is None:
            self.first, self.first_rows = time.perf_counter(), n

    def close(self):
        self.end = time.perf_counter()

    def steady(self, rows: int) -> float:
        return (rows - self.first_rows) / (self.end - self.first)


def parts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*.parquet"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--task-rows", type=int, default=65_536, help="ray.batch_size: rows per Ray task")
    ap.add_argument("--port", type=int, default=6390)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    # Ray >= 2.5x turns on token authentication for clusters started with `ray start`: give the
    # head, the second node and this driver one fresh token (kept in this process's environment).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    from recbuild.ml import predictor, ray_executor

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="recbuild-bench-ray-"))
    scratch.mkdir(parents=True, exist_ok=True)
    table, tower = scratch / "items.parquet", scratch / "tower"
    common = dict(output_key="item_tower_emb", id_column="item_id", batch_size=args.batch)
    results: list[tuple[str, float, float]] = []  # label, items/s (whole call), items/s (steady)
    cluster = False
    try:
        write_items(table, args.rows)
        build_tower(tower)
        print(f"setup: {args.rows:,} rows, {table.stat().st_size / 1e6:.1f} MB parquet; batch "
              f"{args.batch}, ray.batch_size {args.task_rows}; {os.cpu_count()} cores\n")

        clock = FirstRows()
        start = time.perf_counter()
        predictor.predict_embeddings(tower, str(table), scratch / "local", threads=2, progress=clock,
                                     **common)
        results.append(("executor: local (threads 2)", args.rows / (time.perf_counter() - start),
                        clock.steady(args.rows)))

        ray_cli("start", "--head", f"--port={args.port}", "--num-cpus=1", "--include-dashboard=false",
                "--disable-usage-stats")
        cluster = True
        ray_cli("start", f"--address=127.0.0.1:{args.port}", "--num-cpus=1", "--disable-usage-stats")
        import ray

        ray.init(address=f"127.0.0.1:{args.port}", log_to_driver=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        print(f"ray cluster: {len(nodes)} node(s), {ray.cluster_resources().get('CPU', 0):.0f} CPU(s)")
        for actors in (1, 2):
            out = scratch / f"ray-{actors}"
            clock = FirstRows()
            start = time.perf_counter()
            ray_executor.predict_embeddings_ray(
                tower, str(table), out, ray_options={"address": f"127.0.0.1:{args.port}",
                                                     "concurrency": actors,
                                                     "batch_size": args.task_rows},
                progress=clock, **common)
            rate = args.rows / (time.perf_counter() - start)
            same = parts(out) == parts(scratch / "local")
            results.append((f"executor: ray, {actors} actor(s) x 1 CPU on {len(nodes)} nodes"
                            f"{'' if same else ' (OUTPUT DIFFERS FROM LOCAL!)'}", rate,
                            clock.steady(args.rows)))
            shutil.rmtree(out, ignore_errors=True)
        ray.shutdown()
    finally:
        if cluster:
            subprocess.run(["ray", "stop", "--force"], capture_output=True)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    local, local_steady = results[0][1], results[0][2]
    print("\n| run | items/s (whole call) | ratio to local | items/s (steady, after the first "
          "batch) | ratio to local |")
    print("|---|---|---|---|---|")
    for label, rate, steady in results:
        print(f"| {label} | {rate / 1e3:.0f}k | {rate / local:.2f} | {steady / 1e3:.0f}k | "
              f"{steady / local_steady:.2f} |")
    if len(results) == 3:
        print(f"\nper-node scaling (2 actors / 1 actor): {results[2][1] / results[1][1]:.2f}x whole "
              f"call, {results[2][2] / results[1][2]:.2f}x steady "
              "(both nodes and the driver share this machine's 2 cores; on separate machines expect "
              "close to linear in nodes until the driver, which reads the ids and writes the "
              "output, becomes the limit)")


if __name__ == "__main__":
    main()
