"""`recbuild cache status|push|pull|gc`: the shared cache seen from a recipe.

Keys of artifacts not built locally are computed through the cache: when an upstream is absent
here but cached, its cached manifest supplies the digest its dependents' keys need. So a fresh
CI checkout can see (and pull) the whole graph without building anything.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from recbuild.common.sizes import format_bytes
from recbuild.core.cache.store import ArtifactCache, CacheError, CorruptEntry
from recbuild.errors import RecbuildError, UnprovenNeeds
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
        staged = ws.tmp_dir / f"{name}-pull-{os.urandom(5).hex()}"
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


def needed_keys(ws: Workspace, cache: ArtifactCache) -> set[str]:
    """The keys every artifact of the recipe has now (those gc must keep for it). Raises
    UnprovenNeeds when one cannot be computed: a recipe that cannot say what it needs never
    drives a deletion."""
    names = list(ws.graph.nodes)
    for name in names:
        if ws.is_file_source(name):
            try:
                ws.scan(name)
            except RecbuildError as exc:
                raise UnprovenNeeds(f"{ws.recipe.path}: source {name!r} cannot be read ({exc.message}); "
                                    "gc deletes nothing while a recipe's needs are unknown: check the "
                                    "source out (or create it), or leave this recipe out") from None
    keys = resolve_keys(ws, cache, names)
    for name in ws.graph.closure(names):
        if name in keys and keys[name][0] is None:
            raise UnprovenNeeds(f"{ws.recipe.path}: the key of artifact {name!r} cannot be computed (an "
                                "input is neither built here nor in the cache); gc deletes nothing while "
                                f"a recipe's needs are unknown: build it first (recbuild make {name})")
    return {key for key, _ in keys.values() if key}


@dataclass
class Doomed:
    key: str
    kind: str
    size: int
    last_used: float | None
    why: str


@dataclass
class GcPlan:
    delete: list[Doomed]
    kept: int
    partial_uploads: list  # store.PartialUpload: dead uploads, always removed


def plan_gc(cache: ArtifactCache, *, needed: set[str] | None, keep_days: float | None,
            max_size: int | None, needed_by: str = "") -> GcPlan:
    """What a gc under these policies deletes. An entry goes only if every given policy lets it
    go: not ``needed`` (by the named recipes), not used within ``keep_days``; with ``max_size``
    the least recently used of those go first, only until the cache fits."""
    import time

    entries = cache.entries()
    now = time.time()
    candidates = []
    for entry in entries:
        if needed is not None and entry.key in needed:
            continue
        age = None if entry.last_used is None else (now - entry.last_used) / 86400
        if keep_days is not None and (age is None or age < keep_days):
            continue
        reasons = []
        if needed is not None:
            reasons.append(f"needed by none of {needed_by}")
        if keep_days is not None:
            reasons.append(f"unused for {age:.1f} days")
        candidates.append((entry, reasons))
    candidates.sort(key=lambda pair: (pair[0].last_used or 0.0, pair[0].key))  # least recently used first
    if max_size is not None:
        total = sum(entry.size for entry in entries)
        chosen = []
        for entry, reasons in candidates:
            if total <= max_size:
                break
            total -= entry.size
            chosen.append((entry, reasons + [f"least recently used while the cache is over {format_bytes(max_size)}"]))
        candidates = chosen
    delete = [Doomed(entry.key, str(entry.manifest.get("kind", "?")), entry.size, entry.last_used,
                     "; ".join(reasons)) for entry, reasons in candidates]
    return GcPlan(delete, len(entries) - len(delete), cache.partial_uploads())


def run_gc(cache: ArtifactCache, plan: GcPlan) -> tuple[list[Doomed], list[str]]:
    """Carry out a plan; (entries removed, partial uploads removed). Entries another gc removed
    first are skipped."""
    removed, partials = [], []
    for doomed in plan.delete:
        try:
            cache.remove(doomed.key)
        except (OSError, CacheError):
            continue
        removed.append(doomed)
    for upload in plan.partial_uploads:
        try:
            cache.remove_partial(upload)
        except (OSError, CacheError):
            continue
        partials.append(upload.path)
    return removed, partials
