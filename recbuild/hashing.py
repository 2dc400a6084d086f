"""Content digests with a machine-local stat cache.

A file's digest is xxh3-128 of its bytes. The cache maps a path to its digest while the file's
(inode, size, mtime_ns, ctime_ns) stay the same, so an unchanged file is never read again, a
`touch`ed identical file is read once, and an edit that restores the old mtime (`touch -d`,
`cp -p`) is still caught: the kernel sets ctime on every write and it cannot be set back.

Files changed within RACY_WINDOW_NS of being hashed are not cached (git's "racy clean" problem:
file timestamps come from a coarse clock, so a second same-size edit in the same tick would
look unchanged).
"""

from __future__ import annotations

import glob as globlib
import mmap
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import xxhash

ALGORITHM = "xxh3_128"
RACY_WINDOW_NS = 20_000_000  # > one tick of the kernel's coarse file clock (<= 10 ms)
_CHUNK = 1 << 20
_MMAP_MIN = 1 << 20


def digest_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def _read_digest(path: str, size: int) -> str:
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        if size >= _MMAP_MIN:
            # mmap avoids the read copy: ~2x faster on large files (perf_baselines.md §1).
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                hasher.update(view)
        else:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
    return hasher.hexdigest()


@dataclass
class HashStats:
    files_hashed: int = 0
    bytes_hashed: int = 0
    cache_hits: int = 0


class StatCache:
    """path -> digest, valid while (inode, size, mtime_ns, ctime_ns) match. Thread-safe."""

    def __init__(self, db_path: Path | None):
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, int, int, int, str]] = {}
        self._db: sqlite3.Connection | None = None
        self.stats = HashStats()
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(db_path), check_same_thread=False, timeout=30,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS stat_cache (path TEXT PRIMARY KEY, ino INTEGER,"
                             " size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, digest TEXT)")
            for row in self._db.execute("SELECT path, ino, size, mtime_ns, ctime_ns, digest FROM stat_cache"):
                self._entries[row[0]] = tuple(row[1:])  # type: ignore[assignment]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def file_digest(self, path: str | os.PathLike, st: os.stat_result | None = None) -> str:
        path = os.path.abspath(path)
        if st is None:
            st = os.stat(path)
        signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._entries.get(path)
        if cached is not None and cached[:4] == signature:
            self.stats.cache_hits += 1
            return cached[4]
        started = time.time_ns()
        digest = _read_digest(path, st.st_size)
        with self._lock:
            self.stats.files_hashed += 1
            self.stats.bytes_hashed += st.st_size
            if started - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_WINDOW_NS:
                self._entries[path] = (*signature, digest)
                if self._db is not None:
                    try:
                        self._db.execute("INSERT OR REPLACE INTO stat_cache VALUES (?,?,?,?,?,?)",
                                         (path, *signature, digest))
                    except sqlite3.OperationalError:
                        pass  # a busy cache only costs a re-hash next time
        return digest


def list_files(root: Path) -> list[Path]:
    """Files under a directory, sorted by relative path, hidden recbuild state excluded."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".recbuild")
        for name in filenames:
            found.append(Path(dirpath, name))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def expand_local(path: Path) -> tuple[Path, list[Path]]:
    """(root, files) for a local file, directory or glob. root anchors relative names."""
    text = str(path)
    if is_glob(text):
        matches = sorted(Path(p) for p in globlib.glob(text, recursive=True))
        files: list[Path] = []
        for match in matches:
            files.extend(list_files(match) if match.is_dir() else [match])
        root = Path(text.split("*")[0].split("?")[0].split("[")[0])
        root = root if text.split("*")[0].endswith(os.sep) or root.is_dir() else root.parent
        return root, sorted(set(files))
    if path.is_dir():
        return path, list_files(path)
    return path.parent, [path] if path.exists() else []


def tree_entries(root: Path, files: list[Path], cache: StatCache) -> dict[str, dict]:
    """relpath -> {size, digest} for files under root."""
    entries = {}
    for file in files:
        st = os.stat(file)
        entries[file.relative_to(root).as_posix()] = {"size": st.st_size,
                                                      "digest": cache.file_digest(file, st)}
    return entries


def entries_digest(entries: dict[str, dict]) -> str:
    """Digest of a file listing: sorted relative paths, sizes and file digests."""
    hasher = xxhash.xxh3_128()
    for rel in sorted(entries):
        entry = entries[rel]
        hasher.update(f"{rel}\0{entry['size']}\0{entry['digest']}\n".encode())
    return hasher.hexdigest()
