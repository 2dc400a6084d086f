"""The memory budget of a retrieval step: the ``memory_budget`` recipe param, parsed, and the
machine's default share.

Syntax: a number and a unit, ``"512MB"``, ``"2GB"``, ``"1.5GiB"`` (KB/MB/GB/TB are powers of 1000,
KiB/MiB/GiB/TiB powers of 1024, B bytes), or a share of the machine's memory, ``"25%"``. null (the
default) is ``DEFAULT_SHARE`` of the machine's physical memory: room for ``recbuild make -j`` to run
a few steps side by side next to other processes.
"""

from __future__ import annotations

import os
import re

from recbuild.common.sizes import format_bytes
from recbuild.errors import InputError

DEFAULT_SHARE = 0.125
_UNITS = {"b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
BUDGET_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*([KMGT]i?B|B|%)\s*$"
_BUDGET = re.compile(BUDGET_PATTERN, re.IGNORECASE)

# The schema entry every kind with a budget shares (docs/reference.md is generated from it); each
# kind puts what the budget bounds in front of the description (``budget_schema``).
BUDGET_SCHEMA = {
    "oneOf": [{"type": "string", "pattern": BUDGET_PATTERN}, {"type": "null"}], "default": None,
    "description": "e.g. \"2GB\", \"1.5GiB\" or \"25%\" of the machine; null: 1/8 of the machine's "
                   "memory (docs/recipes.md, Memory)",
}


def machine_memory() -> int:
    """Physical memory in bytes (cgroup limit not considered: the share is of the box)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 8 << 30


def parse_budget(text: str | None, where: str = "memory_budget") -> int:
    """Bytes of a ``memory_budget`` value (None: the default share of the machine)."""
    if text is None:
        return int(machine_memory() * DEFAULT_SHARE)
    match = _BUDGET.match(str(text))
    if not match:
        raise InputError(f"{where}: {text!r} is not a memory size; write e.g. \"2GB\", \"512MiB\" or \"25%\"")
    number = float(re.match(r"\s*([0-9.]+)", text).group(1))
    unit = match.group(2).lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise InputError(f"{where}: {text!r} must be a share between 0% and 100%")
        return int(machine_memory() * number / 100)
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise InputError(f"{where}: {text!r} must be more than zero bytes")
    return size


def budget_schema(what: str) -> dict:
    """BUDGET_SCHEMA with ``what`` the budget bounds in that kind."""
    return {**BUDGET_SCHEMA, "description": f"{what}; {BUDGET_SCHEMA['description']}"}


def budget_fact(value: str | None) -> dict[str, str]:
    """The artifact-key fact of a budget that depends on the machine (null, or a share): which path
    a step takes, and so its bytes, can follow it, so a machine with other memory has another key
    (a fixed size, "4GB", gives every machine the same key and the same bytes)."""
    if value is not None and not str(value).strip().endswith("%"):
        return {}
    share = "1/8" if value is None else str(value).strip()
    return {"memory_budget": f"{format_bytes(parse_budget(value))} ({share} of this machine's memory)"}
