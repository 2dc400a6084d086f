"""How a run is set up: the recipe's training settings and the process-wide torch settings
(seed, determinism, threads) held while it trains."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class TrainSettings:
    epochs: int = 1
    batch_size: int = 512
    lr: float = 0.003
    eval_every: int = 0  # steps; 0 = at the end of every epoch
    seed: int = 42
    k: list[int] = field(default_factory=lambda: [10, 50, 200])
    label_column: str = "label"
    eval_batch_size: int = 4096
    logq_correction: bool = True
    negatives_per_level: int = 6  # tdm
    threads: int = 2
    # Converted batches kept for the next epochs (and eval batches for the next evaluations), bytes
    # per table; a table that does not fit is read and converted again on every pass, one batch at
    # a time. Not a recipe param: the bytes written do not depend on it.
    batch_cache_bytes: int = 256 << 20


@contextmanager
def _torch_settings(threads: int, seed: int):
    """Seeded, deterministic, fixed thread count; restores the process-wide settings afterwards.

    Deterministic mode goes through ``torch.set_deterministic_debug_mode("error")``: it sets the
    flag every eager op checks exactly as ``torch.use_deterministic_algorithms(True)`` does (error,
    not warn), without the latter's import of the inductor config (dynamo, sympy, ~800 modules,
    about 1 s before the first step) for a setting only ``torch.compile`` reads. When inductor is
    already loaded, its flag is set too, so nothing is less strict than before.
    """
    import torch

    previous_threads = torch.get_num_threads()
    previous_mode = torch.get_deterministic_debug_mode()
    inductor = sys.modules.get("torch._inductor.config")
    previous_inductor = inductor.deterministic if inductor is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(max(1, threads))
        torch.set_deterministic_debug_mode("error")
        if inductor is not None:
            inductor.deterministic = True
        try:
            yield
        finally:
            torch.set_num_threads(previous_threads)
            torch.set_deterministic_debug_mode(previous_mode)
            if inductor is not None:
                inductor.deterministic = previous_inductor
