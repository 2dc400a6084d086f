"""MANIFEST.json of every artifact and atomic publish.

The manifest's content is deterministic (no times, no hosts, no absolute paths) so an artifact
rebuilt to identical bytes yields an identical manifest ``digest`` and its dependents stay up to
date (early cut-off). ``digest`` covers the files only; ``key`` identifies the recipe of the build.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from recbuild import __version__
from recbuild.hashing import ALGORITHM, StatCache, entries_digest, list_files, tree_entries

MANIFEST_NAME = "MANIFEST.json"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def make_manifest(folder: Path, *, kind: str, key: str, inputs: dict[str, str], params: dict,
                  cache: StatCache, meta: dict | None = None) -> dict:
    files = [f for f in list_files(folder) if f.name != MANIFEST_NAME or f.parent != folder]
    entries = tree_entries(folder, files, cache)
    manifest = {
        "kind": kind,
        "key": key,
        "hash": ALGORITHM,
        "digest": entries_digest(entries),
        "files": entries,
        "inputs": dict(sorted(inputs.items())),
        "params": params,
        "recbuild_version": __version__,
    }
    if meta:
        manifest["meta"] = meta
    return manifest


def write_manifest(folder: Path, manifest: dict) -> Path:
    path = folder / MANIFEST_NAME
    text = json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def read_manifest(folder: Path) -> dict | None:
    """The manifest of an artifact folder, or None when absent or unreadable (=> rebuild)."""
    try:
        with open(folder / MANIFEST_NAME, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "digest" in manifest else None


def verify_files(folder: Path, manifest: dict, cache: StatCache) -> list[str]:
    """Problems found comparing the folder with its manifest (empty list = intact)."""
    problems = []
    expected = manifest.get("files", {})
    present = {f.relative_to(folder).as_posix() for f in list_files(folder)} - {MANIFEST_NAME}
    for rel in sorted(present - set(expected)):
        problems.append(f"unexpected file {rel}")
    for rel, entry in sorted(expected.items()):
        path = folder / rel
        try:
            st = os.stat(path)
        except OSError:
            problems.append(f"missing file {rel}")
            continue
        if st.st_size != entry["size"] or cache.file_digest(path, st) != entry["digest"]:
            problems.append(f"modified file {rel}")
    return problems


_RENAME_EXCHANGE = 2
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where unsupported."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.renameat2  # noqa: B018 - probe the symbol
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    at_fdcwd = -100
    result = _libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def publish(staged: Path, target: Path, trash_dir: Path) -> None:
    """Replace ``target`` with the fully written ``staged`` folder.

    With renameat2(RENAME_EXCHANGE) the swap is atomic: a reader sees the old or the new folder,
    never neither. Elsewhere the old folder is moved aside first; a crash between the two renames
    leaves no folder at ``target`` (rebuilt next time), never a half-written one.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    trash_dir.mkdir(parents=True, exist_ok=True)
    _fsync_dir(staged)
    if target.exists():
        if _exchange(staged, target):
            shutil.rmtree(staged, ignore_errors=True)
        else:
            aside = trash_dir / f"{target.name}-old-{uuid.uuid4().hex[:8]}"
            os.rename(target, aside)
            os.rename(staged, target)
            shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staged, target)
    _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
