"""How many threads a CPU-heavy step (faiss k-means and add, tree k-means) should use right now.

torch's and faiss's OpenMP pools synchronise at every parallel region. When other processes keep
the cores busy, each region waits a scheduler slice for a descheduled thread, and more threads
are slower than one. Measured on this 2-core class of machine at load average 4-5:
  - tree k-means, 100k x 64: 45 s with 2 threads, 7 s with 1;
  - faiss IVF512 train + add, 300k x 64: 3.8-7.7 s with 2 threads, 1.8 s with 1.
The outputs do not depend on the thread count (per-row reductions, stable sorts, faiss IVF add
fills each list in id order), so the choice changes the speed only, never the bytes.

The signal is the number of runnable threads right now (/proc/loadavg), sampled a few times, not
the 1-minute load average: that one still counts our own previous step for a minute.
"""

from __future__ import annotations

import os
import statistics
import time


def _runnable_elsewhere(samples: int = 5, pause: float = 0.01) -> float | None:
    """Median number of runnable threads other than this one, or None off Linux."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as fh:
                running = int(fh.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(running - 1, 0))  # the reading thread itself is runnable
        if i + 1 < samples:
            time.sleep(pause)
    return statistics.median(counts)


def threads_for_load(requested: int | None) -> int:
    """``requested`` threads, lowered to the cores other runnable threads leave free (at least 1)."""
    requested = int(requested or os.cpu_count() or 1)
    busy = _runnable_elsewhere()
    if busy is None:
        return requested
    free = (os.cpu_count() or 1) - busy
    return max(1, min(requested, int(free)))
