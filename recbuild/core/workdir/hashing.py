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

import functools
import glob as globlib
import mmap
import os
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import xxhash

from recbuild.core.recipe.paths import is_glob
from recbuild.errors import UnsupportedFile

ALGORITHM = "xxh3_128"
RACY_WINDOW_NS = 20_000_000  # > one tick of the kernel's coarse file clock (<= 10 ms)
_CHUNK = 1 << 20
_MMAP_MIN = 1 << 20
_MMAP_WINDOW = 1 << 28  # a multiple of mmap.ALLOCATIONGRANULARITY


def digest_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def _read_digest(path: str, size: int) -> str:
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        if size >= _MMAP_MIN:
            # mmap avoids the read copy: ~2x faster on large files (perf_baselines.md §1). In windows:
            # a file mapped whole stays in the process's RSS as it is read (a 10 GB tree table made a
            # 3 GB step peak at 12 GB).
            for offset in range(0, size, _MMAP_WINDOW):
                length = min(_MMAP_WINDOW, size - offset)
                with mmap.mmap(handle.fileno(), length, access=mmap.ACCESS_READ, offset=offset) as view:
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


def _db_key(path: str) -> str:
    """A path as the stat cache's TEXT column holds it. A file name that is not UTF-8 (Python
    keeps its bytes as surrogates) is stored as the hex of its bytes behind "x:", which no
    absolute path starts with, so every name has its own key."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "x:" + os.fsencode(path).hex()


def _path_of(key: str) -> str:
    return os.fsdecode(bytes.fromhex(key[2:])) if key.startswith("x:") else key


class StatCache:
    """path -> digest, valid while (inode, size, mtime_ns, ctime_ns) match. Thread-safe."""

    def __init__(self, db_path: Path | None):
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, int, int, int, str]] = {}
        self._db: sqlite3.Connection | None = None
        self.stats = HashStats()
        self.warnings: list[str] = []  # for the UI: state that was unreadable and rebuilt
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._open(db_path)
            except sqlite3.Error as exc:
                # The stat cache only saves re-reading files: when it is damaged, start a new one.
                self.close()
                self._entries.clear()
                for suffix in ("", "-wal", "-shm", "-journal"):
                    try:
                        os.unlink(f"{db_path}{suffix}")
                    except FileNotFoundError:
                        pass
                try:
                    self._open(db_path)
                    self.warnings.append(f"the stat cache {db_path} was unreadable ({exc}); started a new "
                                         "one (files are hashed again once)")
                except (sqlite3.Error, OSError) as again:
                    self.close()
                    self.warnings.append(f"the stat cache {db_path} is unusable ({again}); going on "
                                         "without it (files are hashed on every run)")

    def _open(self, db_path: Path) -> None:
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS stat_cache (path TEXT PRIMARY KEY, ino INTEGER,"
                         " size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, digest TEXT)")
        ignored = 0
        for row in self._db.execute("SELECT path, ino, size, mtime_ns, ctime_ns, digest FROM stat_cache"):
            # rows of the wrong types (a hand-edited or foreign table) are ignored, never trusted
            if (isinstance(row[0], str) and all(type(v) is int for v in row[1:5])
                    and isinstance(row[5], str)):
                try:
                    self._entries[_path_of(row[0])] = tuple(row[1:])  # type: ignore[assignment]
                except ValueError:
                    ignored += 1
            else:
                ignored += 1
        if ignored:
            self._db.execute("DELETE FROM stat_cache WHERE typeof(path) != 'text' OR typeof(digest) != 'text'"
                             " OR typeof(ino) != 'integer' OR typeof(size) != 'integer'"
                             " OR typeof(mtime_ns) != 'integer' OR typeof(ctime_ns) != 'integer'")
            self.warnings.append(f"the stat cache {db_path} had {ignored} unreadable rows; dropped them "
                                 "(those files are hashed again once)")

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
        if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block forever
            raise UnsupportedFile(f"{path} is {_kind_of(path, True)}, not a regular file")
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
                                         (_db_key(path), *signature, digest))
                    except sqlite3.OperationalError:
                        pass  # a busy cache only costs a re-hash next time
        return digest


    def remember(self, path: str, st: os.stat_result, digest: str) -> None:
        """Record a digest recbuild computed itself of a file nobody else writes (a step's output,
        hashed after the step ended and then published by rename): no racy window applies, so
        the first no-op after a build reads no file again."""
        entry = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)
        with self._lock:
            self._entries[path] = entry
            if self._db is not None:
                try:
                    self._db.execute("INSERT OR REPLACE INTO stat_cache VALUES (?,?,?,?,?,?)", (_db_key(path), *entry))
                except sqlite3.OperationalError:
                    pass

    # Folders: an entry that says "this folder's listing was checked and held exactly what its
    # manifest lists". A folder's mtime/ctime change whenever an entry is added, removed or renamed
    # in it, so while its signature holds, nothing new can be inside, and the listing (a scandir
    # per folder on every no-op) is skipped. Stored beside the file entries, marked by DIR_MARK.
    DIR_MARK = "<listing checked>"

    def listing_unchanged(self, folder: str) -> bool:
        cached = self._entries.get(folder + os.sep)
        if cached is None:
            return False
        try:
            st = os.lstat(folder)
        except OSError:
            return False
        return cached == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, self.DIR_MARK)

    def remember_listing(self, folder: str, settled: bool = False) -> None:
        """``settled``: recbuild itself just wrote the folder and nothing else writes into it (a
        published artifact under the workdir lock), so no racy window applies."""
        try:
            st = os.lstat(folder)
        except OSError:
            return
        if not settled and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) <= RACY_WINDOW_NS:
            return  # changed within a clock tick: a later change could keep the same times
        entry = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, self.DIR_MARK)
        with self._lock:
            self._entries[folder + os.sep] = entry
            if self._db is not None:
                try:
                    self._db.execute("INSERT OR REPLACE INTO stat_cache VALUES (?,?,?,?,?,?)",
                                     (_db_key(folder + os.sep), *entry))
                except sqlite3.OperationalError:
                    pass


def _kind_of(path: str, follow_links: bool) -> str:
    """What a non-regular entry is, for messages."""
    try:
        mode = os.stat(path).st_mode if follow_links else os.lstat(path).st_mode
    except OSError:
        return "a broken symlink" if os.path.islink(path) else "unreadable"
    if stat.S_ISLNK(mode):
        return f"a symlink (to {os.readlink(path)})"
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


_PSEUDO_FS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
              "securityfs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "binfmt_misc", "efivarfs",
              "autofs", "nsfs", "rpc_pipefs", "selinuxfs"}


@functools.lru_cache(maxsize=1)
def _pseudo_mounts() -> tuple[str, ...]:
    """Where the kernel's own trees are: /proc, /sys, /dev (but /dev/shm, a RAM disk people keep
    data on) and every mount of a pseudo-filesystem type. Walking one reads no data and can take
    minutes (/proc/<pid>/root is the whole filesystem again, once per process)."""
    mounts = {"/proc", "/sys", "/dev"}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split(" - ", 1)
                if len(fields) == 2 and fields[1].split(" ", 1)[0] in _PSEUDO_FS:
                    mounts.add(fields[0].split(" ")[4].replace("\\040", " "))
    except OSError:
        pass
    return tuple(sorted(mounts - {"/"}))


def _pseudo_root(real: str) -> str | None:
    if real == "/dev/shm" or real.startswith("/dev/shm/"):
        return None
    return next((m for m in _pseudo_mounts() if real == m or real.startswith(m + "/")), None)


def _refused(real: str, guard) -> str | None:
    """Why a source walk must not enter (or read through a link to) ``real``, or None."""
    mount = _pseudo_root(real)
    if mount is not None:
        return f"which is in {mount}, a pseudo-filesystem of the kernel: a source reads data files only"
    return guard(real) if guard is not None else None


def walk_relpaths(root: str | os.PathLike, *, follow_links: bool, empty_dirs: list[str] | None = None,
                  guard=None) -> tuple[list[str], list[tuple[str, str]]]:
    """(regular files, other entries with what they are) under a directory, as sorted relative
    POSIX paths, hidden recbuild state excluded. With ``follow_links`` symlinked files and folders
    are read through (a loop is reported, not followed), but never into a pseudo-filesystem or
    where ``guard(realpath)`` gives a reason not to; without, a symlink is an "other" entry.
    ``empty_dirs``, when given, receives the folders that hold nothing at all (sorted).
    Strings, not Paths: a no-op make walks every artifact folder, and pathlib costs 10x here."""
    files: list[str] = []
    others: list[tuple[str, str]] = []
    seen: set[str] = set()
    stack = [(os.fspath(root), "")]
    while stack:  # a loop, not recursion: folder depth is not bounded by Python's stack
        directory, prefix = stack.pop()
        if follow_links:
            real = os.path.realpath(directory)
            if real in seen:
                others.append((prefix.rstrip("/") or ".", "a symlink loop"))
                continue
            seen.add(real)
            why = _refused(real, guard)
            if why is not None:
                others.append((prefix.rstrip("/") or ".", f"a folder, {why}"))
                continue
        with os.scandir(directory) as entries:
            held = 0
            for entry in entries:
                held += 1
                rel = prefix + entry.name
                try:
                    if not follow_links and entry.is_symlink():
                        others.append((rel, _kind_of(entry.path, False)))
                    elif entry.is_symlink() and (why := _refused(os.path.realpath(entry.path), guard)):
                        others.append((rel, f"a symlink to {os.readlink(entry.path)}, {why}"))
                    elif entry.is_dir(follow_symlinks=follow_links):
                        if entry.name != ".recbuild":
                            stack.append((entry.path, rel + "/"))
                    elif entry.is_file(follow_symlinks=follow_links):
                        files.append(rel)
                    else:
                        others.append((rel, _kind_of(entry.path, follow_links)))
                except OSError:
                    others.append((rel, "unreadable"))
        if not held and prefix and empty_dirs is not None:
            empty_dirs.append(prefix.rstrip("/"))
    files.sort()
    if empty_dirs is not None:
        empty_dirs.sort()
    return files, others


def walk_files(root: Path, *, follow_links: bool, guard=None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """walk_relpaths with absolute Paths."""
    root = Path(root)
    files, others = walk_relpaths(root, follow_links=follow_links, guard=guard)
    return [root / rel for rel in files], [(root / rel, what) for rel, what in others]


def list_files(root: Path) -> list[Path]:
    """The regular files of an artifact folder (symlinks not followed), sorted by relative path.

    Artifacts hold regular files and folders only: a symlink would publish a file from outside
    the workdir (and push it to the shared cache), a FIFO or device would hang whoever reads it.
    """
    return list_tree(root)[0]


def list_tree(root: Path) -> tuple[list[Path], list[str]]:
    """(the regular files, the relative paths of the empty folders) of an artifact folder: what its
    manifest records, so a restored tree is the built tree (see list_files for what is refused)."""
    if os.path.islink(root) or not os.path.isdir(root):
        raise UnsupportedFile(f"{root} is {_kind_of(str(root), False)}, not a folder: a step must write "
                              "its files into its output folder, not replace the folder")
    empty: list[str] = []
    rels, others = walk_relpaths(root, follow_links=False, empty_dirs=empty)
    if others:
        rel, what = others[0]
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise UnsupportedFile(f"{rel} is {what}{more}: artifacts hold regular files "
                              "and folders only; copy the file in instead (e.g. cp -L)")
    return [Path(root) / rel for rel in rels], empty


def expand_local(path: Path, guard=None) -> tuple[Path, list[Path]]:
    """(root, files) for a local file, directory or glob. root anchors relative names; ``guard``
    as in walk_relpaths, for the folders read."""
    text = str(path)
    if is_glob(text):
        matches = sorted(Path(p) for p in globlib.glob(text, recursive=True))
        files: list[Path] = []
        for match in matches:
            files.extend(_source_files(match, guard) if match.is_dir() else _source_file(match, guard))
        root = Path(text.split("*")[0].split("?")[0].split("[")[0])
        root = root if text.split("*")[0].endswith(os.sep) or root.is_dir() else root.parent
        return root, sorted(set(files))
    if path.is_dir():
        return path, _source_files(path, guard)
    return path.parent, _source_file(path, guard) if path.exists() else []


def _source_file(path: Path, guard=None) -> list[Path]:
    """A source that is one file, refused where a folder would be (/proc/kmsg blocks its reader).
    (A device or FIFO is refused by what it is, when it is hashed.)"""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        regular = False
    link = os.path.islink(path)  # (a real file in the workdir matched by a glob has its own error)
    why = _refused(os.path.realpath(path), guard if link else None) if regular else None
    if why is not None:
        what = f"a symlink to {os.readlink(path)}, " if link else "a file, "
        raise UnsupportedFile(f"{path} is {what}{why}")
    return [path]


def _source_files(folder: Path, guard=None) -> list[Path]:
    """Files of a source folder: symlinks are read through (inputs are only read); anything that
    is not a regular file in the end is refused (a FIFO would hang every make)."""
    files, others = walk_files(folder, follow_links=True, guard=guard)
    if others:
        path, what = others[0]
        tail = "" if ", which is" in what else "; a source reads regular files only"
        raise UnsupportedFile(f"{path} is {what}{tail}")
    return files


def is_executable(mode: int) -> bool:
    return bool(mode & 0o111)


def tree_entries(root: Path, files: list[Path], cache: StatCache) -> dict[str, dict]:
    """relpath -> {size, digest} for files under root, and ``exec: true`` for an executable file
    (the one mode bit recbuild keeps: a restored or cached file gets 0o755 or 0o644)."""
    entries = {}
    for file in files:
        st = os.stat(file)
        entry = {"size": st.st_size, "digest": cache.file_digest(file, st)}
        if is_executable(st.st_mode):
            entry["exec"] = True
        entries[file.relative_to(root).as_posix()] = entry
    return entries


def entries_digest(entries: dict[str, dict], empty_dirs: list[str] | tuple[str, ...] = ()) -> str:
    """Digest of a tree: sorted relative paths, sizes, file digests, the exec bit and the empty
    folders. (A plain file and no empty folder add nothing new, so digests of trees without either
    are what they were before modes and folders were recorded.)"""
    hasher = xxhash.xxh3_128()
    for rel in sorted(entries):
        entry = entries[rel]
        # a name that is not UTF-8 is hashed by its bytes (surrogateescape gives them back)
        hasher.update(f"{rel}\0{entry['size']}\0{entry['digest']}\n".encode("utf-8", "surrogateescape"))
        if entry.get("exec"):
            hasher.update(f"{rel}\0exec\n".encode("utf-8", "surrogateescape"))
    for rel in sorted(empty_dirs):
        hasher.update(f"{rel}/\0empty folder\n".encode("utf-8", "surrogateescape"))
    return hasher.hexdigest()
