"""Sizes written by people: ``512MiB``, ``8GB``, ``2GiB``, ``1000`` (bytes). One parser for every
size recbuild reads (a cluster step's memory, `cache gc --max-size`), and one way to show one."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?)(i?)B?\s*$", re.IGNORECASE)


def size_bytes(value: int | float | str) -> int:
    """512MiB, 8GB, 2GiB, 1000 -> bytes (GB is 1000^3, GiB 1024^3); ValueError for anything else."""
    if isinstance(value, (int, float)):
        return int(value)
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r} (e.g. 50GB, 500MB, 2TiB)")
    number, prefix, binary = match.groups()
    power = "KMGTP".find(prefix.upper()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def format_bytes(size: float) -> str:
    """``2.1 GB`` (powers of 1000, as the parsers' KB/MB/GB)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(size) >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"
