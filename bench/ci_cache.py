"""Cold vs warm-cache CI run of a template: what a fresh CI machine pays with and without the
shared artifact cache.

  cold:  fresh checkout, empty cache  -> builds everything and uploads it
  warm:  another fresh checkout (no workdir, no state), same inputs -> restores everything
  one-param: a fresh checkout with one param changed -> builds what changed, restores the rest

Usage: python bench/ci_cache.py [--template dssm] [--set PATH=VALUE ...] [--cache URL]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _common import timed


def checkout(root: Path, name: str, template: str) -> Path:
    folder = root / name
    timed([sys.executable, "-m", "recbuild.cli", "init", template, str(folder)], root)
    return folder


def count(out: str, word: str) -> int:
    return sum(1 for line in out.splitlines() if line.startswith(f"  {word}"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--template", default="dssm")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--change", default="artifacts.index.nlist=64",
                    help="the one-param change of the third run")
    ap.add_argument("--cache", default=None, help="cache URL (default: a temporary local folder)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="recbuild-ci-"))
    cache = args.cache or str(root / "cache")
    sets = [x for o in args.overrides for x in ("--set", o)]
    make = [sys.executable, "-m", "recbuild.cli", "make", "--cache", cache, *sets]
    try:
        cold_dir = checkout(root, "cold", args.template)
        cold, out_cold = timed(make, cold_dir)
        warm_dir = checkout(root, "warm", args.template)
        warm, out_warm = timed(make, warm_dir)
        one_dir = checkout(root, "one", args.template)
        one, out_one = timed(make + ["--set", args.change], one_dir)
        print(f"template {args.template}, overrides {args.overrides or 'none'}, cache {cache}")
        print()
        print("| run | wall s | built | restored |")
        print("|---|---|---|---|")
        print(f"| cold (empty cache) | {cold:.1f} | {count(out_cold, 'built')} | {count(out_cold, 'restored')} |")
        print(f"| warm (fresh checkout) | {warm:.1f} | {count(out_warm, 'built')} | {count(out_warm, 'restored')} |")
        print(f"| one param changed ({args.change}) | {one:.1f} | {count(out_one, 'built')} | "
              f"{count(out_one, 'restored')} |")
        print()
        print(f"warm / cold = {warm / cold:.3f}  ({cold / warm:.0f}x faster)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
