"""Steps on a Ray cluster against steps in the `recbuild make` process.

Usage: python bench/cluster.py [--steps 50] [--sizes 8,16,32,64] [--rows 150000] [--dir DIR] [--keep]

1. Dispatch cost: recipes of 1 and of N independent `command` steps that each write one line;
   `make -j 1` locally, then on a one-node cluster (`--cluster`), each into a fresh workdir and a
   fresh store. (N steps - 1 step) / (N - 1) is a step's own time, without the fixed start-up and
   connect; the cluster's minus the local one is what a step pays for going through Ray and the
   store: submission, the push, the restore. Target: at most 0.5 s a step.
2. A matrix of 4 model sizes (`model.emb_dim`) of the dssm template's train step, `-j 4`, on one node,
   then on two (a second node joins), each with a fresh store: the ratio is what the second node buys.

The cluster is the tests' private one (tests/ray_netns.py): its own network namespace on loopback,
token auth, 1 CPU a node, stopped by process id. Needs root (unshare) and `recbuild[ray]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ray_netns import NetnsCluster, missing_tools  # noqa: E402


def command_recipe(folder: Path, steps: int, store: Path | None) -> None:
    folder.mkdir(parents=True)
    lines = ["version: 1", "artifacts:"]
    lines += [f"  s{i}: {{kind: command, cmd: 'echo {i} > ${{out}}/line'}}" for i in range(steps)]
    if store is not None:
        lines.insert(1, f"cache: {store}")
    (folder / "recbuild.yaml").write_text("\n".join(lines) + "\n")


def timed(run) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = run()
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"make failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--sizes", default="8,16,32,64", help="model.emb_dim of the matrix variants")
    ap.add_argument("--rows", type=int, default=150000, help="train rows of the matrix steps")
    ap.add_argument("--dir")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    why = missing_tools()
    if why:
        sys.exit(f"bench/cluster.py: {why}")
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="recbuild-bench-cluster-"))
    cluster = NetnsCluster(scratch)
    recbuild = [sys.executable, "-m", "recbuild.cli"]
    print(f"recbuild bench/cluster: {os.cpu_count()} cores; nodes of 1 CPU each, on loopback\n")
    try:
        cluster.start_holder()
        cluster.start_node(head=True)

        # 1. dispatch cost: N steps against 1 step, so the fixed cost (start-up, connect) drops out
        def make(steps: int, cluster_run: bool, jobs: int = 1) -> float:
            folder = scratch / f"cmd-{steps}-{'cluster' if cluster_run else 'local'}-j{jobs}"
            command_recipe(folder, steps, scratch / f"{folder.name}-store" if cluster_run else None)
            extra = ["--cluster", cluster.address] if cluster_run else []
            return timed(lambda: cluster.run([*recbuild, "make", "-q", "-j", str(jobs), *extra], cwd=folder))[0]

        local_1, local_n = make(1, False), make(args.steps, False)
        remote_1, remote_n = make(1, True), make(args.steps, True)
        local_step = (local_n - local_1) / (args.steps - 1)
        remote_step = (remote_n - remote_1) / (args.steps - 1)
        print(f"command steps, -j 1: local {local_1:.1f} s for 1 step, {local_n:.1f} s for {args.steps} "
              f"({local_step:.3f} s a step); cluster {remote_1:.1f} s for 1 (start-up and connect), "
              f"{remote_n:.1f} s for {args.steps} ({remote_step:.3f} s a step)")
        print(f"dispatch cost: {remote_step - local_step:.3f} s a step beyond local (target <= 0.5 s)")
        remote_j4 = make(args.steps, True, jobs=4)
        print(f"{args.steps} command steps on the cluster, -j 4: {remote_j4:.1f} s "
              f"({(remote_j4 - remote_1) / (args.steps - 1):.3f} s a step beyond the fixed cost)\n")

        # 2. a matrix of model sizes on 1 node, then on 2
        sizes = [int(s) for s in args.sizes.split(",")]
        results = {}
        for nodes in (1, 2):
            if nodes == 2:
                cluster.start_node(head=False)
            folder = scratch / f"matrix-{nodes}"
            done = subprocess.run([*recbuild, "init", "dssm", str(folder)], capture_output=True, text=True,
                                  env=cluster.env())
            if done.returncode:
                sys.exit(done.stderr)
            text = (folder / "recbuild.yaml").read_text()
            (folder / "recbuild.yaml").write_text(text.replace(
                "checkpoints: {kind: train,", f"checkpoints: {{kind: train, matrix: {{model.emb_dim: {sizes}}},"))
            small = ["--set", "vars.n_items=2000", "--set", f"vars.train_rows={args.rows}",
                     "--set", "vars.eval_rows=2000", "--set", "artifacts.checkpoints.epochs=1",
                     "--set", "artifacts.checkpoints.eval_every=1000",
                     # one thread a step, as each node has one CPU (the default, 2, would make one
                     # node use both cores of a 2-core machine already)
                     "--set", "artifacts.checkpoints.threads=1"]
            seconds, _ = timed(lambda: cluster.run(
                [*recbuild, "make", "-q", "-j", "4", "checkpoints", *small,
                 "--cache", str(scratch / f"matrix-store-{nodes}"), "--cluster", cluster.address],
                cwd=folder, timeout=3600))
            results[nodes] = seconds
            print(f"train matrix emb_dim {sizes} ({args.rows} rows, -j 4) on {nodes} node(s): {seconds:.1f} s")
        print(f"two nodes / one node: {results[2] / results[1]:.2f}x the time "
              f"({results[1] / results[2]:.2f}x faster)")
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
