"""`recbuild cache status|push|pull|gc`: the shared cache seen from a recipe.

Keys of artifacts not built locally are computed through the cache: when an upstream is absent
here but cached, its cached manifest supplies the digest its dependents' keys need. So a fresh
CI checkout can see (and pull) the whole graph without building anything.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass

from recbuild.core.cache.store import ArtifactCache, CacheError, CorruptEntry, age_days
from recbuild.errors import RecbuildError
from recbuild.core.workdir.manifest import publish
from recbuild.core.workdir.workspace import Workspace


@dataclass
class Row:
    name: str
    kind: str
    key: str | None
    local: str  # "up to date" | "stale" | "missing"
    cached: str  # "yes" | "no" | "?" (key unknown: an upstream is neither here nor cached)


def resolve_keys(ws: Workspace, cache: ArtifactCache, names: list[str]) -> dict[str, tuple[str | None, dict | None]]:
    """name -> (key, cached manifest or None), upstream first."""
    digests: dict[str, str | None] = {}
    result: dict[str, tuple[str | None, dict | None]] = {}
    for name in ws.graph.closure(names):
        if ws.is_file_source(name):
            try:
                digests[name] = ws.scan(name).digest
            except RecbuildError:
                digests[name] = None
            continue
        key = ws.key(name, digests.get)
        if key is None:
            digests[name] = None
            result[name] = (None, None)
            continue
        cached = cache.lookup(key)
        local = ws.manifest(name)
        if local is not None and local.get("key") == key:
            digests[name] = local["digest"]
        elif cached is not None:
            digests[name] = cached["digest"]
        else:
            digests[name] = None
        result[name] = (key, cached)
    return result


def status(ws: Workspace, cache: ArtifactCache, names: list[str]) -> list[Row]:
    keys = resolve_keys(ws, cache, names)
    plan = ws.plan(names)
    rows = []
    for name, (key, cached) in keys.items():
        rows.append(Row(name, ws.graph.nodes[name].kind, key, plan[name].state,
                        "?" if key is None else ("yes" if cached is not None else "no")))
    return rows


def push(ws: Workspace, cache: ArtifactCache, names: list[str]) -> list[tuple[str, str]]:
    results = []
    for name, status_ in ws.plan(names).items():
        if ws.is_file_source(name):
            continue
        if not status_.current:
            results.append((name, f"not pushed: {status_.state} here (run `recbuild make` first)"))
            continue
        pushed = cache.push(ws.folder(name), ws.manifest(name))
        results.append((name, "pushed" if pushed else "already cached"))
    return results


def pull(ws: Workspace, cache: ArtifactCache, names: list[str]) -> list[tuple[str, str]]:
    results = []
    for name, (key, cached) in resolve_keys(ws, cache, names).items():
        local = ws.manifest(name)
        if key is not None and local is not None and local.get("key") == key:
            results.append((name, "up to date"))
            continue
        if key is None or cached is None:
            results.append((name, "not in cache"))
            continue
        staged = ws.tmp_dir / f"{name}-pull-{uuid.uuid4().hex[:10]}"
        staged.mkdir(parents=True, exist_ok=True)
        try:
            manifest = cache.restore(key, staged, ws.cache)
            publish(staged, ws.folder(name), ws.tmp_dir)
            ws.set_manifest(name, manifest)
            results.append((name, "restored from cache"))
        except CorruptEntry as exc:
            results.append((name, f"rejected: {exc}"))
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return results


def gc(ws: Workspace, cache: ArtifactCache, keep_days: float | None, dry_run: bool) -> tuple[list[str], int]:
    """Delete entries the recipe does not need, unless younger than keep_days. (removed, kept)."""
    needed = {key for key, _ in resolve_keys(ws, cache, list(ws.graph.nodes)).values() if key}
    removed, kept = [], 0
    for entry in cache.entries():
        age = age_days(entry)
        young = keep_days is not None and age is not None and age < keep_days
        if entry.key in needed or young:
            kept += 1
            continue
        if not dry_run:
            try:
                cache.remove(entry.key)
            except (OSError, CacheError):
                continue
        removed.append(entry.key)
    return removed, kept
