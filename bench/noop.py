"""No-op cost of `recbuild make` vs a bare doit no-op over the same 20 tasks and 1 GiB of inputs.

Reports (median of --reps whole-subprocess runs, page cache warm):
  - no-op make, and the ratio to bare doit (target: <= 2x);
  - after `touch` of every input: the 1st run (hashes once) and the 2nd run (target: as fast as
    the no-op, i.e. ratio ~1.0 to the no-op), and doit's figures for the same (it re-hashes forever);
  - whether a same-size edit with its mtime restored is caught (doit misses it).

With --before CHECKOUT (another checkout of recbuild, e.g. `git worktree add /tmp/before HEAD~3`), also
the no-op of this checkout against that one, alternated on the same machine state, over the same
inputs plus 10 `sample_data` sources: kinds whose keys hold toolchain facts (library versions).

Usage: python bench/noop.py [--dir SCRATCH] [--reps 5] [--small] [--before CHECKOUT]
       (--small: 20 MiB instead of 1 GiB)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import checkout_env, timed

N_TASKS = 20


def make_inputs(folder: Path, small: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(100 << 20) if i < 10 else (1 << 20) for i in range(N_TASKS)]
    if small:
        sizes = [s // 50 for s in sizes]
    paths = []
    chunk = os.urandom(1 << 20)
    for i, size in enumerate(sizes):
        path = folder / f"in_{i}.bin"
        with open(path, "wb") as handle:
            left = size
            while left > 0:
                handle.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
            handle.write(i.to_bytes(4, "little"))
        paths.append(path)
    return paths


def write_recipe(folder: Path) -> None:
    lines = ["version: 1", "sources:"]
    lines += [f"  in_{i}: {{path: data/in_{i}.bin}}" for i in range(N_TASKS)]
    lines.append("artifacts:")
    lines += [f"  out_{i}: {{kind: command, deps: [in_{i}], cmd: 'head -c 16 ${{deps.in_{i}}} > ${{out}}/ok.txt'}}"
              for i in range(N_TASKS)]
    (folder / "recbuild.yaml").write_text("\n".join(lines) + "\n")


def write_dodo(folder: Path) -> None:
    (folder / "dodo.py").write_text(f'''
DOIT_CONFIG = {{"check_file_uptodate": "md5", "backend": "sqlite3", "dep_file": ".doit.sqlite",
               "verbosity": 0}}

def task_out():
    for i in range({N_TASKS}):
        yield {{"name": str(i), "file_dep": [f"data/in_{{i}}.bin"], "targets": [f"dout_{{i}}/ok.txt"],
               "actions": [f"mkdir -p dout_{{i}} && head -c 16 data/in_{{i}}.bin > dout_{{i}}/ok.txt"]}}
''')


TOOLCHAIN_SOURCES = 10


def before_after(scratch: Path, inputs: list[Path], before: Path, reps: int) -> list[tuple[str, float, float]]:
    """No-op make of this checkout and of ``before``, each in a workdir of its own over the same
    input files (hard links), alternated run by run; (measure, this s, before s) rows."""
    recbuild = [sys.executable, "-m", "recbuild.cli", "make"]
    folders = {}
    for label, env in (("this", {}), ("before", checkout_env(before))):
        folder = scratch / f"compare-{label}"
        (folder / "data").mkdir(parents=True)
        for path in inputs:
            os.link(path, folder / "data" / path.name)
        write_recipe(folder)
        with open(folder / "recbuild.yaml", "a") as handle:  # kinds whose keys carry toolchain facts
            handle.write("".join(f"  items_{i}: {{kind: sample_data, table: items, n_items: 50, seed: {i}}}\n"
                                 for i in range(TOOLCHAIN_SOURCES)))
        timed(recbuild, folder, env)
        timed(recbuild, folder, env)  # settle the racy window of freshly written outputs
        folders[label] = (folder, env)
    time.sleep(0.1)
    runs: dict[str, list[float]] = {"this": [], "before": []}
    for _ in range(reps):
        for label, (folder, env) in folders.items():
            runs[label].append(timed(recbuild, folder, env)[0])
    return [("no-op", statistics.median(runs["this"]), statistics.median(runs["before"]))]


def median_of(cmd, cwd, reps) -> float:
    return statistics.median(timed(cmd, cwd)[0] for _ in range(reps))


def touch_all(paths):
    for p in paths:
        os.utime(p)
    time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--before", type=Path, default=None, metavar="CHECKOUT",
                    help="another checkout of recbuild to compare the no-op with")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="recbuild-noop-", dir=args.dir))
    recbuild = [sys.executable, "-m", "recbuild.cli", "make"]
    doit = [sys.executable, "-m", "doit"]
    try:
        inputs = make_inputs(scratch / "data", args.small)
        total = sum(p.stat().st_size for p in inputs)
        write_recipe(scratch)
        write_dodo(scratch)
        build_rb, _ = timed(recbuild, scratch)
        build_doit, _ = timed(doit, scratch)
        timed(recbuild, scratch)  # settle the racy window of freshly written outputs
        time.sleep(0.1)
        noop_rb = median_of(recbuild, scratch, args.reps)
        noop_doit = median_of(doit, scratch, args.reps)

        touch_all(inputs)
        rb_touch1, out = timed(recbuild + ["-v"], scratch)
        assert "built" not in out.replace("up to date", ""), out
        rb_touch2 = median_of(recbuild, scratch, args.reps)
        doit_touch = [timed(doit, scratch)[0] for _ in range(args.reps)]

        # same-size edit, mtime restored (what `cp -p`, `rsync -t`, cache restores do)
        target = inputs[3]
        st = os.stat(target)
        with open(target, "r+b") as handle:
            handle.seek(10)
            handle.write(b"Z")
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        _, out_rb = timed(recbuild, scratch)
        _, out_doit = timed(doit + ["--verbosity", "2"], scratch)
        rb_caught = "built" in out_rb and "out_3" in out_rb
        doit_caught = "out:3" in out_doit and ". out:3" in out_doit

        print(f"inputs: {N_TASKS} files, {total / 2**30:.2f} GiB; {N_TASKS} command artifacts; "
              f"median of {args.reps}; python {sys.version.split()[0]}")
        print()
        print("| measure | recbuild s | bare doit s | ratio |")
        print("|---|---|---|---|")
        print(f"| first build | {build_rb:.3f} | {build_doit:.3f} | {build_rb / build_doit:.2f} |")
        print(f"| no-op | {noop_rb:.3f} | {noop_doit:.3f} | **{noop_rb / noop_doit:.2f}** |")
        print(f"| 1st run after touch of every input | {rb_touch1:.3f} | {doit_touch[0]:.3f} | "
              f"{rb_touch1 / doit_touch[0]:.2f} |")
        print(f"| 2nd+ runs after touch (median) | {rb_touch2:.3f} | "
              f"{statistics.median(doit_touch[1:] or doit_touch):.3f} | "
              f"{rb_touch2 / statistics.median(doit_touch[1:] or doit_touch):.2f} |")
        print()
        print(f"post-touch no-op / first no-op (recbuild): **{rb_touch2 / noop_rb:.2f}** (target ~1.0)")
        print(f"same-size edit with restored mtime: recbuild {'caught' if rb_caught else 'MISSED'}, "
              f"doit {'caught' if doit_caught else 'missed'}")
        if args.before is not None:
            rows = before_after(scratch, inputs, args.before, args.reps)
            print()
            print(f"this checkout against {args.before} ({N_TASKS} command artifacts + {TOOLCHAIN_SOURCES} "
                  f"sample_data sources, median of {args.reps} alternated runs):")
            print()
            print("| measure | this s | before s | ratio |")
            print("|---|---|---|---|")
            for what, this, before in rows:
                print(f"| {what} | {this:.3f} | {before:.3f} | **{this / before:.2f}** |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
