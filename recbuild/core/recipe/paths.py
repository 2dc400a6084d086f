"""What a source's ``path`` spells: a glob, a URL or a plain local path (read by the recipe checks
and by the hashing of sources alike)."""

from __future__ import annotations


def is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")
