"""Helpers shared by the benchmarks (run them as `python bench/NAME.py`)."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

import numpy as np

SEED = 12345


def wait_for_quiet(max_wait: float, threshold: float = 1.0) -> float:
    """Wait up to ``max_wait`` s for the 1-minute load average to drop below ``threshold`` (other
    jobs on a 2-core machine skew every figure); returns the load average it measured at."""
    deadline = time.time() + max_wait
    while max_wait > 0 and os.getloadavg()[0] >= threshold and time.time() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


class OtherLoad:
    """CPU cores used by *other* processes while the block runs (/proc/stat minus this process and
    its waited-for children): on a shared 2-core machine a run with a busy neighbour is not a
    measurement of the code."""

    def __enter__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_seconds(), own_cpu()
        return self

    def __exit__(self, *exc):
        wall = max(time.perf_counter() - self.t0, 1e-9)
        self.cores = max(0.0, (_busy_seconds() - self.busy0) - (own_cpu() - self.own0)) / wall


def _busy_seconds() -> float:
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec,
    so a worker would report the (large) parent's size."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clustered_embeddings(n, d, nq=0, seed=SEED, ncent=1000, sigma=1.5):
    """The reference generator (reference/bench/_common.py)."""
    rng = np.random.default_rng(seed)
    cent = rng.standard_normal((ncent, d), dtype=np.float32)
    lab = rng.integers(0, ncent, n + nq)
    x = cent[lab]
    x += sigma * rng.standard_normal((n + nq, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x[:n]), np.ascontiguousarray(x[n:])


def print_table(headers, rows, title):
    print(f"\n### {title}\n")
    cols = [[str(h)] + [str(r[i]) for r in rows] for i, h in enumerate(headers)]
    widths = [max(len(c) for c in col) for col in cols]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |")



def checkout_env(checkout: Path | None) -> dict[str, str]:
    """Extra environment that runs ``python -m recbuild.cli`` from another checkout of recbuild (a
    git worktree of the commit before a change), for before/after figures in one run."""
    return {} if checkout is None else {"PYTHONPATH": str(Path(checkout).resolve())}


def timed(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``cmd`` in ``cwd``; (wall seconds, stdout). Exits the bench if it fails."""
    # Measured as users run it: with bytecode caches (a PYTHONDONTWRITEBYTECODE left in a dev shell
    # would make every run recompile every module it imports).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra_env or {})
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout


def write_embeddings_parquet(folder: Path, x: np.ndarray) -> None:
    """``folder/part-0.parquet``: item_id 0..n-1 and ``x`` as fixed_size_list<float32> item_tower_emb,
    with recbuild's writer options."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    table = pa.table({"item_id": pa.array(np.arange(len(x), dtype=np.int64)), "item_tower_emb": emb})
    with pq.ParquetWriter(str(folder / "part-0.parquet"), table.schema, use_dictionary=False,
                          compression="snappy", write_statistics=True) as writer:
        writer.write_table(table, row_group_size=65536)
