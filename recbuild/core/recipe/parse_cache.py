"""Reuse of validated recipes across runs, so a no-op `make` skips YAML parsing and JSON-schema
validation (~70 ms of imports and work; the no-op budget is 2x a bare doit no-op).

An entry is used only if everything the load depended on is unchanged: the bytes of every recipe
file read (the extends chain included), the value of every environment variable interpolated, the
`--set` overrides, and recbuild's own code (size and mtime of every module, which covers builder
schemas). Entries live in $RECBUILD_CACHE_DIR or ~/.cache/recbuild/recipes/ and are safe to delete;
RECBUILD_RECIPE_CACHE=0 turns the mechanism off.

Entries are JSON, never pickle: the cache folder is the user's, and anything that can write there
must not be able to run code in the next recbuild. An entry that does not parse into exactly the
shape written here is ignored. Paths the recipe resolved (its folder, the workdir) are resolved again
on use: a symlink re-pointed since the entry was written makes the entry stale.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import xxhash

from recbuild import __version__

_FORMAT = 3


def _enabled() -> bool:
    return os.environ.get("RECBUILD_RECIPE_CACHE", "1") != "0"


def _cache_dir() -> Path:
    base = os.environ.get("RECBUILD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "recbuild")
    return Path(base) / "recipes"


def _code_fingerprint() -> str:
    hasher = xxhash.xxh3_64()
    root = Path(__file__).resolve().parents[2]  # all of recbuild/: any code change invalidates
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".py", ".json", ".yaml")):
                st = os.stat(os.path.join(dirpath, name))
                hasher.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return hasher.hexdigest()


def _entry_path(path, overrides: list[str]) -> Path:
    ident = "\0".join([__version__, sys.version, os.path.abspath(str(path)), *overrides])
    return _cache_dir() / f"{xxhash.xxh3_128_hexdigest(ident.encode())}.json"


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return xxhash.xxh3_128_hexdigest(handle.read())
    except OSError:
        return None


def _encode(recipe) -> dict:
    return {
        "path": str(recipe.path), "dir": str(recipe.dir), "name": recipe.name, "workdir": str(recipe.workdir),
        "model": recipe.model, "default": recipe.default, "cache": recipe.cache,
        "data": {"workdir": recipe.data.get("workdir", "build")},  # the rest is not read after a load
        "nodes": [[n.name, n.section, n.kind, n.params, _loc(n.loc), n.model_overrides, n.resources]
                  for n in recipe.nodes.values()],
        "cluster": recipe.cluster,
        "locations": [[list(key), _loc(loc)] for key, loc in recipe.locations.items()],
        "families": recipe.families,
    }


def _loc(loc) -> list:
    return [loc.file, loc.line, loc.col]


def _decode(raw: dict):
    """The Recipe an entry describes; raises (KeyError, TypeError, ValueError) on any other shape."""
    from recbuild.core.recipe.spec import NodeSpec, Recipe
    from recbuild.core.recipe.yamlsrc import Loc

    def loc(value) -> Loc:
        file, line, col = value
        if not (isinstance(file, str) and isinstance(line, int) and isinstance(col, int)):
            raise TypeError("location")
        return Loc(file, line, col)

    def key(parts) -> tuple:
        if not all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in parts):
            raise TypeError("key path")
        return tuple(parts)

    nodes = {}
    for name, section, kind, params, where, overrides, resources in raw["nodes"]:
        if not (isinstance(name, str) and isinstance(section, str) and isinstance(kind, str)
                and isinstance(params, dict) and isinstance(overrides, dict) and isinstance(resources, dict)):
            raise TypeError("node")
        nodes[name] = NodeSpec(name, section, kind, params, loc(where), overrides, resources)
    if not (raw["cluster"] is None or isinstance(raw["cluster"], dict)):
        raise TypeError("cluster")
    families = raw["families"]
    if not (isinstance(families, dict) and all(isinstance(v, list) and all(n in nodes for n in v)
                                               for v in families.values())):
        raise TypeError("families")
    for field in ("model", "data"):
        if not isinstance(raw[field], dict):
            raise TypeError(field)
    if not isinstance(raw["default"], list) or not (raw["cache"] is None or isinstance(raw["cache"], dict)):
        raise TypeError("default/cache")
    if not isinstance(raw["locations"], list):
        raise TypeError("locations")
    return Recipe(path=Path(raw["path"]), dir=Path(raw["dir"]), name=str(raw["name"]),
                  workdir=Path(raw["workdir"]), model=raw["model"], nodes=nodes, default=raw["default"],
                  cache=raw["cache"], data=raw["data"], families=families, cluster=raw["cluster"],
                  locations=_LazyLocations(lambda: {key(parts): loc(where) for parts, where in raw["locations"]}))


class _LazyLocations(Mapping):
    """The recipe's key -> location map, decoded on first use: only errors need it, and a no-op
    make of a large recipe would otherwise build thousands of Loc objects for nothing."""

    def __init__(self, decode):
        self._decode = decode
        self._data: dict = {}

    def _filled(self) -> dict:
        if self._decode is not None:
            decode, self._decode = self._decode, None
            try:
                self._data = decode()
            except (TypeError, ValueError):
                pass  # a damaged entry: errors are then located at the recipe file itself
        return self._data

    def __getitem__(self, key):
        return self._filled()[key]

    def __iter__(self):
        return iter(self._filled())

    def __len__(self) -> int:
        return len(self._filled())


def _still_resolves(recipe, path) -> bool:
    """The recipe's folder and workdir resolve where they did when the entry was written."""
    recipe_path = Path(path)
    if recipe_path.is_dir():
        recipe_path = recipe_path / "recbuild.yaml"
    recipe_dir = recipe_path.resolve().parent
    workdir = recipe.data.get("workdir", "build")
    return (recipe_dir == recipe.dir and isinstance(workdir, str)
            and (recipe_dir / workdir).resolve() == recipe.workdir)


def lookup(path, overrides: list[str]):
    if not _enabled():
        return None
    try:
        with open(_entry_path(path, overrides), encoding="utf-8") as handle:
            entry = json.load(handle)
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
        recipe = _decode(entry["recipe"])
        if not _still_resolves(recipe, path):
            return None
    except Exception:  # absent, truncated, tampered or from another version: just load normally
        return None
    return recipe


def store(path, overrides: list[str], recipe, trace: dict) -> None:
    if not _enabled():
        return
    entry = {"format": _FORMAT, "code": _code_fingerprint(), "recipe": _encode(recipe),
             "files": {f: _file_digest(f) for f in trace["files"]}, "env": dict(trace["env"])}
    target = _entry_path(path, overrides)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(entry, handle, ensure_ascii=False)
        os.replace(tmp, target)
    except (OSError, ValueError):
        pass  # a read-only home (or a value JSON cannot hold) only costs speed
