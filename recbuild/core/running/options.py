"""What one `recbuild make` was asked to do: shared by the engine and its doit adapter."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MakeOptions:
    targets: list[str] = field(default_factory=list)
    jobs: int = 1
    always: bool = False
    keep_going: bool = False
    wait: float | None = None  # seconds to wait for another recbuild's workdir lock (None: fail at once)
