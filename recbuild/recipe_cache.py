"""Reuse of validated recipes across runs, so a no-op `make` skips YAML parsing and JSON-schema
validation (~70 ms of imports and work; the no-op budget is 2x a bare doit no-op).

An entry is used only if everything the load depended on is unchanged: the bytes of every recipe
file read (the extends chain included), the value of every environment variable interpolated, the
`--set` overrides, and recbuild's own code (size and mtime of every module, which covers builder
schemas). Entries live in $RECBUILD_CACHE_DIR or ~/.cache/recbuild/recipes/ and are safe to delete;
RECBUILD_RECIPE_CACHE=0 turns the mechanism off.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import xxhash

from recbuild import __version__

_FORMAT = 1


def _enabled() -> bool:
    return os.environ.get("RECBUILD_RECIPE_CACHE", "1") != "0"


def _cache_dir() -> Path:
    base = os.environ.get("RECBUILD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "recbuild")
    return Path(base) / "recipes"


def _code_fingerprint() -> str:
    hasher = xxhash.xxh3_64()
    root = Path(__file__).resolve().parent
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".py", ".json", ".yaml")):
                st = os.stat(os.path.join(dirpath, name))
                hasher.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return hasher.hexdigest()


def _entry_path(path, overrides: list[str]) -> Path:
    ident = "\0".join([__version__, sys.version, os.path.abspath(str(path)), *overrides])
    return _cache_dir() / f"{xxhash.xxh3_128_hexdigest(ident.encode())}.pickle"


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return xxhash.xxh3_128_hexdigest(handle.read())
    except OSError:
        return None


def lookup(path, overrides: list[str]):
    if not _enabled():
        return None
    try:
        with open(_entry_path(path, overrides), "rb") as handle:
            entry = pickle.load(handle)
    except Exception:  # absent, truncated or from another version: just load normally
        return None
    if not isinstance(entry, dict) or entry.get("format") != _FORMAT:
        return None
    if entry["code"] != _code_fingerprint():
        return None
    for file, digest in entry["files"].items():
        if _file_digest(file) != digest:
            return None
    for name, value in entry["env"].items():
        if os.environ.get(name) != value:
            return None
    return entry["recipe"]


def store(path, overrides: list[str], recipe, trace: dict) -> None:
    if not _enabled():
        return
    entry = {"format": _FORMAT, "code": _code_fingerprint(), "recipe": recipe,
             "files": {f: _file_digest(f) for f in trace["files"]}, "env": dict(trace["env"])}
    target = _entry_path(path, overrides)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            pickle.dump(entry, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
    except OSError:
        pass  # a read-only home only costs speed
