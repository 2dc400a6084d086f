"""Busy time per pipeline stage (``stats`` of ``predict_embeddings``; bench/predict.py reads it)."""

from __future__ import annotations

import time


class StageClock:
    """Accumulates wall time per pipeline stage into a dict (``stats``); a no-op without one."""

    def __init__(self, stats: dict[str, float] | None):
        self.stats = stats
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.stats is None:
            return
        now = time.perf_counter()
        self.stats[stage] = self.stats.get(stage, 0.0) + (now - self._last)
        self._last = now
