"""MANIFEST.json of every artifact and atomic publish.

The manifest's content is deterministic (no times, no hosts, no absolute paths) so an artifact
rebuilt to identical bytes yields an identical manifest ``digest`` and its dependents stay up to
date (early cut-off). ``digest`` covers the files only; ``key`` identifies the recipe of the build.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from recbuild import __version__
from recbuild.errors import ForeignFolder, UnsupportedFile
from recbuild.core.workdir.hashing import (ALGORITHM, StatCache, entries_digest, is_executable, list_tree,
                                          tree_entries, walk_relpaths)
from recbuild.core.recipe.yamlsrc import clip

MANIFEST_NAME = "MANIFEST.json"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


FILE_MODE, EXEC_MODE, FOLDER_MODE = 0o644, 0o755, 0o755


def normalize_modes(folder: Path, files: list[Path], empty_dirs: list[str]) -> None:
    """Give a staged tree the modes a cache restore gives it (0o755 for a file with any exec bit,
    0o644 for the others, 0o755 for folders): a restored tree is then the built tree, on every
    machine whatever its umask, and the manifest's ``exec`` flags say all there is to say."""
    folders = {os.fspath(folder)}
    for path in files:
        os.chmod(path, EXEC_MODE if is_executable(os.stat(path).st_mode) else FILE_MODE)
        folders.add(os.path.dirname(path))
    folders.update(os.path.join(folder, rel) for rel in empty_dirs)
    for path in folders:
        os.chmod(path, FOLDER_MODE)


def make_manifest(folder: Path, *, kind: str, key: str, inputs: dict[str, str], params: dict,
                  cache: StatCache, meta: dict | None = None) -> dict:
    files, empty_dirs = list_tree(folder)
    files = [f for f in files if f != folder / MANIFEST_NAME]
    normalize_modes(folder, files, empty_dirs)
    entries = tree_entries(folder, files, cache)
    manifest = {
        "kind": kind,
        "key": key,
        "hash": ALGORITHM,
        "digest": entries_digest(entries, empty_dirs),
        "files": entries,
        "inputs": dict(sorted(inputs.items())),
        "params": params,
        "recbuild_version": __version__,
    }
    if empty_dirs:  # (absent when none: manifests of plain trees are what they were)
        manifest["dirs"] = empty_dirs
    if meta:
        manifest["meta"] = meta
    return manifest


def manifest_text(manifest: dict) -> str:
    """A manifest as its file (and the cache's entry) holds it: UTF-8 JSON."""
    text = json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: JSON's \udcXX escapes keep its bytes
        text = json.dumps(manifest, sort_keys=True, indent=1) + "\n"
    return text


def write_manifest(folder: Path, manifest: dict) -> Path:
    path = folder / MANIFEST_NAME
    text = manifest_text(manifest)
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


_MAX_MANIFEST_BYTES = 256 << 20


def manifest_problem(manifest: Any) -> str | None:
    """Why ``manifest`` is not a MANIFEST.json recbuild can use, or None when it is.

    This is the manifest's schema, checked wherever one is read back (artifact folders, source
    state, cache entries): a folder or a shared cache can hold anything, so nothing is trusted
    for its shape. File paths must stay inside their folder.
    """
    if not isinstance(manifest, dict):
        return "not a JSON object"
    for field in ("kind", "key", "digest"):
        if not isinstance(manifest.get(field), str):
            return f"{field!r} is missing or not a string"
    for field in ("inputs", "params"):
        if field in manifest and not isinstance(manifest[field], dict):
            return f"{field!r} is not an object"
    for field in ("meta", "model", "toolchain", "facts"):
        if field in manifest and not isinstance(manifest[field], dict):
            return f"{field!r} is not an object"
    dirs = manifest.get("dirs", [])
    if not isinstance(dirs, list) or not all(safe_relpath(rel) for rel in dirs):
        return "'dirs' must list plain relative paths"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in manifest.get("inputs", {}).items()):
        return "'inputs' must map names to digests"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "'files' is missing or not an object"
    for rel, entry in files.items():
        if not safe_relpath(rel):
            return f"file path {rel!r} is not a plain relative path"
        if not (isinstance(entry, dict) and isinstance(entry.get("digest"), str)
                and type(entry.get("size")) is int and entry["size"] >= 0):
            return f"file {rel!r} lacks an integer size or a digest"
        if "exec" in entry and entry["exec"] is not True:
            return f"file {rel!r}: 'exec' must be true when present"
    return None


def safe_relpath(rel: Any) -> bool:
    """A POSIX path inside its folder: relative, no '..', '.', empty parts, NUL or backslash."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def read_manifest(folder: Path) -> dict | None:
    """The manifest of an artifact folder, or None when absent, unreadable or of the wrong shape
    (=> the artifact is stale and rebuilt)."""
    manifest = _load_json(os.path.join(folder, MANIFEST_NAME))
    return manifest if manifest is not None and manifest_problem(manifest) is None else None


def _load_json(path: str) -> Any:
    """A JSON file's value, or None when it is absent, unreadable, too large or not JSON."""
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size > _MAX_MANIFEST_BYTES:
                return None
            return json.loads(handle.read())  # (read(n) would allocate n bytes up front)
    except (OSError, ValueError, RecursionError):
        return None


def artifact_folders(folder, files, empty_dirs=()) -> set[str]:
    """The folder, every folder on the way to every file in it, and its empty folders (absolute
    paths): the folders whose listings say whether anything was added or removed."""
    base = os.path.abspath(folder)
    folders = {base}
    for rel in files:
        parts = rel.split("/")[:-1]
        folders.update(os.path.join(base, *parts[:i]) for i in range(1, len(parts) + 1))
    for rel in empty_dirs:
        parts = rel.split("/")
        folders.update(os.path.join(base, *parts[:i]) for i in range(1, len(parts) + 1))
    return folders


def verify_files(folder: Path, manifest: dict, cache: StatCache) -> list[str]:
    """Problems found comparing the folder with its manifest (empty list = intact)."""
    problems = []
    expected = manifest.get("files", {})
    expected_dirs = manifest.get("dirs", [])
    base = os.path.abspath(folder)
    folders = artifact_folders(base, expected, expected_dirs)
    listed = all(cache.listing_unchanged(f) for f in folders)
    if not listed:  # something was added, removed or renamed since the last check: look
        empty_dirs: list[str] = []
        files, others = walk_relpaths(base, follow_links=False, empty_dirs=empty_dirs)
        present = set(files) - {MANIFEST_NAME}
        for rel in sorted(present - set(expected)):
            problems.append(f"unexpected file {rel}")
        for rel, what in others:
            problems.append(f"unexpected {rel} ({what})")
        for rel in sorted(set(empty_dirs) - set(expected_dirs)):
            problems.append(f"unexpected folder {rel}")
        for rel in sorted(set(expected_dirs) - set(empty_dirs)):
            if not os.path.isdir(os.path.join(base, rel)):
                problems.append(f"missing folder {rel}")
    for rel, entry in sorted(expected.items()):
        path = os.path.join(base, rel)
        try:
            st = os.lstat(path)
        except OSError:
            problems.append(f"missing file {rel}")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{rel} is no longer a regular file")
            continue
        if st.st_size != entry["size"] or cache.file_digest(path, st) != entry["digest"]:
            problems.append(f"modified file {rel}")
        elif is_executable(st.st_mode) != bool(entry.get("exec")):
            problems.append(f"mode of {rel} changed ({'now' if is_executable(st.st_mode) else 'no longer'} executable)")
    if not problems and not listed:
        for f in folders:
            cache.remember_listing(f)
    return problems


_RENAME_EXCHANGE = 2
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where unsupported."""
    global _libc
    if _libc is None:
        try:
            import ctypes
            import ctypes.util

            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.renameat2  # noqa: B018 - probe the symbol
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    at_fdcwd = -100
    result = _libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def made_by_recbuild(folder: Path) -> bool:
    """Whether recbuild can prove it made ``folder``: a real folder (not a symlink) holding a
    MANIFEST.json that recbuild wrote (a JSON object naming its kind and recbuild's version).
    Only such folders are ever replaced or deleted; a damaged manifest inside still proves it."""
    if os.path.islink(folder) or not os.path.isdir(folder):
        return False
    manifest = _load_json(os.path.join(folder, MANIFEST_NAME))
    return (isinstance(manifest, dict) and isinstance(manifest.get("recbuild_version"), str)
            and isinstance(manifest.get("kind"), str))


def check_replaceable(target: Path) -> None:
    """Raise ForeignFolder unless ``target`` is absent or a folder recbuild made."""
    if os.path.lexists(target) and not made_by_recbuild(target):
        what = "a symlink" if os.path.islink(target) else ("a file" if not os.path.isdir(target) else "a folder")
        raise ForeignFolder(f"{target} is {what} that recbuild did not make (no recbuild MANIFEST.json "
                            "in it), so recbuild will not replace or delete it; move it away, or give "
                            "the artifact another name or the recipe another workdir")


RECBUILD_FILES = {".recbuild", "metrics-history.jsonl", "report.html"}  # what recbuild writes beside artifacts


def foreign_workdir(workdir: Path, recipe_dir: Path, artifact_names=()) -> str | None:
    """Why recbuild must not take ``workdir`` as its own, or None. A workdir is recbuild's to
    fill when it is missing, holds nothing but recbuild's files and entries named like the
    recipe's artifacts (each of those is checked on its own: check_replaceable), holds
    recbuild's state (``.recbuild/``) or an artifact recbuild made (the state may have been
    deleted), or is the recipe's own folder or one above it (``workdir: .``: the artifacts live
    beside the recipe). Anything else holds someone's files: `workdir: ~/Documents` must not be
    filled with artifact folders and state."""
    if workdir == recipe_dir or workdir in recipe_dir.parents:
        return None
    if os.path.isdir(workdir / ".recbuild") and not os.path.islink(workdir / ".recbuild"):
        return None  # (the common case: no listing)
    try:
        with os.scandir(workdir) as entries:
            names = [entry.name for entry in entries]
    except OSError:  # missing (made by the first make), or not a folder (an error when it is made)
        return None
    names = [name for name in names if name not in RECBUILD_FILES and name not in artifact_names]
    if not names:
        return None
    if any(made_by_recbuild(workdir / name) for name in names[:1000]):
        return None
    shown = ", ".join(clip(name, 40) for name in sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    count = f"{len(names)} {'entry' if len(names) == 1 else 'entries'}"
    return (f"{workdir} holds files recbuild did not make ({count}: {shown}) and no recbuild state; "
            "use a new or empty folder as the workdir, e.g. build")


def publish(staged: Path, target: Path, trash_dir: Path) -> None:
    """Replace ``target`` with the fully written ``staged`` folder.

    With renameat2(RENAME_EXCHANGE) the swap is atomic: a reader sees the old or the new folder,
    never neither. Elsewhere the old folder is moved aside first; a crash between the two renames
    leaves no folder at ``target`` (rebuilt next time), never a half-written one. Only a folder
    recbuild made is ever replaced (ForeignFolder otherwise, nothing touched).
    """
    if os.path.islink(staged) or not os.path.isdir(staged):
        raise UnsupportedFile(f"{staged} is not a folder; nothing was published")
    check_replaceable(target)
    if not target.parent.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        if _exchange(staged, target):
            shutil.rmtree(staged, ignore_errors=True)
        else:
            trash_dir.mkdir(parents=True, exist_ok=True)
            aside = trash_dir / f"{target.name}-old-{os.urandom(4).hex()}"
            os.rename(target, aside)
            os.rename(staged, target)
            shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(staged, target)
