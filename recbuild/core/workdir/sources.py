"""Scanning file sources: local files, directories, globs and fsspec URLs -> file listing + digest."""

from __future__ import annotations

import glob as globlib
import os
from dataclasses import dataclass
from pathlib import Path

from recbuild.errors import BuildError, UnsupportedFile
from recbuild.core.recipe.paths import is_glob, is_url
from recbuild.core.workdir.hashing import StatCache, entries_digest, expand_local, tree_entries
from recbuild.core.workdir.manifest import made_by_recbuild


@dataclass(frozen=True)
class SourceScan:
    path: Path  # file, directory, or glob root (local); the URL's path for remote sources
    files: tuple[Path, ...]
    entries: dict  # relpath -> {size, digest}
    digest: str
    url: str | None = None


def scan_source(spec: str, recipe_dir: Path, cache: StatCache, name: str,
                workdir: Path | None = None) -> SourceScan:
    if is_url(spec):
        return _scan_url(spec, name)
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    path = Path(spec) if Path(spec).is_absolute() else recipe_dir / spec
    try:
        root, files = expand_local(path, _outside(workdir))
    except UnsupportedFile as exc:
        raise BuildError(f"source {name!r}: {exc}") from None
    except OSError as exc:
        raise BuildError(f"source {name!r}: cannot read {exc.filename or path}: {exc.strerror}") from None
    if workdir is not None and is_glob(spec):  # (a folder holding the workdir is refused at load)
        prefix = str(workdir) + os.sep
        inside = next((f for f in files if str(f).startswith(prefix)), None)
        if inside is not None:
            raise BuildError(f"source {name!r}: {spec} matches {inside}, inside the workdir {workdir}: "
                             "artifacts cannot be inputs of the same recipe; narrow the pattern")
    if not files:
        what = "no files match" if is_glob(str(spec)) else ("is an empty folder" if path.is_dir() else "does not exist")
        raise BuildError(f"source {name!r}: {spec} {what} (paths are relative to {recipe_dir})"
                         if what != "is an empty folder" else f"source {name!r}: {spec} is an empty folder")
    try:
        entries = tree_entries(root, files, cache)
    except UnsupportedFile as exc:
        raise BuildError(f"source {name!r}: {exc}; a source reads regular files only") from None
    except OSError as exc:
        raise BuildError(f"source {name!r}: cannot read {exc.filename}: {exc.strerror}") from None
    shown = path if not is_glob(str(spec)) else root
    return SourceScan(shown, tuple(files), entries, entries_digest(entries))


def _outside(workdir: Path | None):
    """A source folder's link to the workdir (`data/out -> ../build`), into an artifact or
    recbuild's state, or to a folder holding the workdir makes the artifacts inputs of themselves,
    as a source folder holding the workdir does (refused at load): refused too. (With
    `workdir: .` the user's own folders are inside the workdir too: only recbuild's are refused.)"""
    if workdir is None:
        return None
    inside = str(workdir) + os.sep

    def guard(real: str) -> str | None:
        holds = real == str(workdir) or inside.startswith(real.rstrip(os.sep) + os.sep)
        if not holds and real.startswith(inside):
            top = workdir / real[len(inside):].split(os.sep, 1)[0]
            if top.name == ".recbuild" or made_by_recbuild(top):
                return (f"which is inside {top}, made by recbuild: the artifacts would be inputs of "
                        "themselves; point the link elsewhere, or depend on that artifact by name")
        if holds:
            return (f"which is (or holds) the workdir {workdir}: the artifacts would be inputs of "
                    "themselves; point the link elsewhere, or set workdir outside the source")
        return None
    return guard


def missing_source(spec: str, recipe_dir: Path) -> str | None:
    """Why a local source has nothing to read (cheap: no hashing), or None. URLs are not checked
    here: that needs the network and credentials, which `make` has and `validate` may not."""
    if is_url(spec):
        return None
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    path = Path(spec) if Path(spec).is_absolute() else recipe_dir / spec
    if is_glob(spec):
        return None if any(globlib.iglob(str(path), recursive=True)) else f"{spec}: no files match"
    if not os.path.lexists(path):
        return f"{spec} does not exist (paths are relative to {recipe_dir})"
    if path.is_dir() and not any(path.iterdir()):
        return f"{spec} is an empty folder"
    return None


def _scan_url(url: str, name: str) -> SourceScan:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        if is_glob(root):
            paths = sorted(fs.glob(root))
            base = root.split("*")[0].rsplit("/", 1)[0]
        elif fs.isdir(root):
            paths = sorted(fs.find(root))
            base = root.rstrip("/")
        else:
            paths = [root] if fs.exists(root) else []
            base = root.rsplit("/", 1)[0]
        entries = {}
        for p in paths:
            info = fs.info(p)
            if info.get("type") == "directory":
                continue
            rel = p[len(base):].lstrip("/") if p.startswith(base) else p
            entries[rel] = {"size": int(info.get("size") or 0), "digest": _remote_checksum(fs, p, info)}
    except BuildError:
        raise
    except Exception as exc:  # fsspec backends raise many types
        raise BuildError(f"source {name!r}: cannot list {url}: {exc}") from None
    if not entries:
        raise BuildError(f"source {name!r}: {url} matches no files")
    return SourceScan(Path(root), (), entries, entries_digest(entries), url=url)


def _remote_checksum(fs, path: str, info: dict) -> str:
    """The store's own checksum (ETag, md5, crc) where it has one, else fsspec's info token."""
    for key in ("ETag", "etag", "md5Hash", "md5", "checksum", "crc32c"):
        if info.get(key):
            return f"{key}:{str(info[key]).strip(chr(34))}"
    return f"fsspec:{fs.checksum(path)}"
