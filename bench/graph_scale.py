"""Graphs with many artifacts: a chain of N `command` steps, recbuild vs the same graph in plain doit.

Both run as subprocesses from this one script, alternated, on the same machine state:
  - full build (from nothing), median of --reps;
  - no-op make, median of --reps.
Targets: full build <= 1.5x doit and no-op <= 1.5x doit at 2000 artifacts.

The doit graph is what a doit user writes for the same work: one task per step, `file_dep` on the
previous step's output, a target file, the same shell command, sqlite3 backend.

With --before CHECKOUT (another checkout of recbuild), the same graph's full build and no-op are
also run with that checkout, alternated with this one, and their ratio printed.

Usage: python bench/graph_scale.py [--n 2000] [--reps 3] [--dir SCRATCH] [--before CHECKOUT]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _common import checkout_env, print_table, timed, wait_for_quiet


def write_recipe(folder: Path, n: int) -> None:
    lines = ["version: 1", "sources:", "  seed: {path: seed.txt}", "artifacts:",
             "  s0: {kind: command, deps: [seed], cmd: 'cat ${deps.seed} > ${out}/v.txt'}"]
    lines += [f"  s{i}: {{kind: command, deps: [s{i - 1}], cmd: 'cat ${{deps.s{i - 1}}}/v.txt > ${{out}}/v.txt'}}"
              for i in range(1, n)]
    (folder / "recbuild.yaml").write_text("\n".join(lines) + "\n")


def write_dodo(folder: Path, n: int) -> None:
    (folder / "dodo.py").write_text(f'''
DOIT_CONFIG = {{"backend": "sqlite3", "dep_file": ".doit.sqlite", "verbosity": 0}}

def task_s():
    for i in range({n}):
        dep = "seed.txt" if i == 0 else f"d/s{{i - 1}}/v.txt"
        yield {{"name": str(i), "file_dep": [dep], "targets": [f"d/s{{i}}/v.txt"],
               "actions": [f"mkdir -p d/s{{i}} && cat {{dep}} > d/s{{i}}/v.txt"]}}
''')


def project(root: Path, name: str, n: int) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "seed.txt").write_text("seed\n")
    write_recipe(folder, n)
    write_dodo(folder, n)
    return folder


def clean(folder: Path) -> None:
    for path in (folder / "build", folder / "d", folder / ".doit.sqlite"):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--before", type=Path, default=None, metavar="CHECKOUT",
                    help="another checkout of recbuild to compare with")
    args = ap.parse_args()
    load = wait_for_quiet(60)
    scratch = Path(tempfile.mkdtemp(prefix="recbuild-graph-", dir=args.dir))
    recbuild = [sys.executable, "-m", "recbuild.cli", "make", "-q"]
    doit = [sys.executable, "-m", "doit", "-f", "dodo.py"]
    try:
        folder = project(scratch, "chain", args.n)
        tools = [("recbuild", recbuild, {}), ("doit", doit, {})]
        if args.before is not None:
            tools.append(("before", recbuild, checkout_env(args.before)))
        full = {tool: [] for tool, _, _ in tools}
        noop = {tool: [] for tool, _, _ in tools}
        for _ in range(args.reps):
            for tool, cmd, env in tools:
                clean(folder)
                full[tool].append(timed(cmd, folder, env)[0])
                noop[tool].append(timed(cmd, folder, env)[0])
        rows = []
        for what, runs in (("full build", full), ("no-op", noop)):
            rb, dt = statistics.median(runs["recbuild"]), statistics.median(runs["doit"])
            rows.append([what, f"{rb:.2f}", f"{dt:.2f}", f"**{rb / dt:.2f}**"])
        print(f"chain of {args.n} command artifacts; median of {args.reps} alternated runs; "
              f"load average at start {load:.2f}; python {sys.version.split()[0]}")
        print_table(["measure", "recbuild s", "doit s", "ratio (target <= 1.5)"], rows,
                    f"{args.n}-artifact graph")
        if args.before is not None:
            rows = []
            for what, runs in (("full build", full), ("no-op", noop)):
                this, before = statistics.median(runs["recbuild"]), statistics.median(runs["before"])
                rows.append([what, f"{this:.2f}", f"{before:.2f}", f"**{this / before:.2f}**"])
            print_table(["measure", "this checkout s", f"{args.before} s", "ratio"], rows,
                        f"{args.n}-artifact graph, this checkout against another")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
