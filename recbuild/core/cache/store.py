"""Content-addressed artifact cache on fsspec (local folder, s3://, gs://, oss://, memory://).

Layout under the cache URL, one immutable entry per artifact key:

    v1/<key[:2]>/<key>.tar    the artifact's files and empty folders (deterministic tar: sorted, zero
                              times and owners, 0o755 for executables and folders, 0o644 otherwise)
    v1/<key[:2]>/<key>.json   its MANIFEST.json, written last: an entry exists once this file does
    v1/<key[:2]>/<key>.used   empty; rewritten on every push and restore: its modification time is
                              the entry's last use, which `cache gc --keep-days/--max-size` go by
    v1/tmp/<name>.tmp-<uuid>  uploads under way

Writers upload under a unique temporary name and then move into place, so concurrent CI jobs
never see a half-written entry; two jobs writing the same key write the same bytes. An upload that
died half-way is removed by the next push and by gc once it is an hour old. Readers verify every
file against the manifest digests before use and refuse archive members that would land outside
the target folder (absolute paths, ``..``, links, devices).
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from recbuild.errors import RecbuildError
from recbuild.core.workdir.hashing import StatCache, entries_digest
from recbuild.core.workdir.manifest import EXEC_MODE, FILE_MODE, FOLDER_MODE, manifest_problem, manifest_text, write_manifest

LAYOUT = "v1"


class CacheError(RecbuildError):
    """The cache is unreachable or an entry is unusable."""


class CorruptEntry(CacheError):
    """An entry failed verification (tampered or truncated)."""


PARTIAL_UPLOAD_AGE = 3600.0  # seconds: an upload this old is dead (a live one takes seconds to minutes)


@dataclass(frozen=True)
class CacheEntry:
    key: str
    manifest: dict
    modified: float | None  # seconds since the epoch, when the store reports it
    size: int = 0  # bytes of its archive and manifest
    last_used: float | None = None  # the latest of its creation, pushes and restores


@dataclass(frozen=True)
class PartialUpload:
    path: str
    modified: float | None


class ArtifactCache:
    def __init__(self, url: str, push: bool = True, base_dir: Path | None = None):
        import fsspec

        if "://" not in url and base_dir is not None and not os.path.isabs(url):
            url = str((base_dir / url).resolve())
        self.url = url.rstrip("/")
        self.push_enabled = push
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except Exception as exc:  # unknown protocol, missing driver (s3fs, gcsfs, ossfs)
            raise CacheError(f"cache {url}: {exc}") from None
        self.root = self.root.rstrip("/")

    # -- paths
    def _base(self, key: str) -> str:
        return f"{self.root}/{LAYOUT}/{key[:2]}/{key}"

    @property
    def _tmp_dir(self) -> str:
        return f"{self.root}/{LAYOUT}/tmp"

    def _put_atomically(self, data: bytes, final: str) -> None:
        tmp = f"{self._tmp_dir}/{final.rsplit('/', 1)[-1]}.tmp-{os.urandom(16).hex()}"
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        self.fs.makedirs(self._tmp_dir, exist_ok=True)
        self.fs.pipe_file(tmp, data)
        try:
            self.fs.mv(tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

    def record_use(self, key: str) -> None:
        """Mark entry ``key`` as used now (push and restore): gc's notion of recently used."""
        try:
            self.fs.pipe_file(self._base(key) + ".used", b"")
        except Exception:  # a read-only store or a passing fault costs only gc's precision
            pass

    # -- queries
    def lookup(self, key: str) -> dict | None:
        """The cached manifest for key, or None (absent, or unreadable => treated as absent)."""
        try:
            raw = self.fs.cat_file(self._base(key) + ".json")
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise CacheError(f"cache {self.url}: cannot read entry {key}: {exc}") from None
        try:
            manifest = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        if manifest_problem(manifest) is not None or manifest.get("key") != key:
            return None  # a wrong-shaped entry is not an entry: rebuilt here, and replaced on push
        return manifest

    def _listing(self) -> dict[str, dict]:
        """path -> info of everything under the layout folder, in one listing call."""
        try:
            return self.fs.find(f"{self.root}/{LAYOUT}", detail=True)
        except FileNotFoundError:
            return {}

    def entries(self) -> list[CacheEntry]:
        listing = self._listing()
        found = []
        for path in sorted(listing):
            if not path.endswith(".json") or "/tmp/" in path[len(self.root):]:
                continue
            base = path[: -len(".json")]
            key = base.rsplit("/", 1)[-1]
            try:
                manifest = json.loads(self.fs.cat_file(path))
            except (FileNotFoundError, ValueError, RecursionError):
                continue
            modified = _modified(listing[path])
            used = _modified(listing.get(base + ".used", {}))
            size = sum(int(listing.get(base + suffix, {}).get("size") or 0) for suffix in (".json", ".tar"))
            last_used = max((t for t in (modified, used) if t is not None), default=None)
            found.append(CacheEntry(key, manifest, modified, size, last_used))
        return found

    def partial_uploads(self, older_than: float = PARTIAL_UPLOAD_AGE, listing: dict | None = None) -> list[PartialUpload]:
        """Uploads that died half-way: temporary files older than ``older_than`` seconds (those of
        this layout's tmp/ folder, and the ``<key>.tar.tmp-*`` files older versions left beside
        their entries)."""
        listing = self._listing() if listing is None else listing
        now = time.time()
        dead = []
        for path, info in sorted(listing.items()):
            if ".tmp-" not in path.rsplit("/", 1)[-1]:
                continue
            modified = _modified(info)
            if modified is not None and now - modified >= older_than:
                dead.append(PartialUpload(path, modified))
        return dead

    def remove_partial(self, upload: PartialUpload) -> None:
        if self.fs.exists(upload.path):
            self.fs.rm(upload.path)

    def _clean_dead_uploads(self) -> None:
        """What the previous pushes left half-way (only tmp/: one short listing per push)."""
        try:
            listing = self.fs.find(self._tmp_dir, detail=True)
            for upload in self.partial_uploads(listing=listing):
                self.remove_partial(upload)
        except Exception:  # cleaning up is a courtesy: never fail a push for it
            pass

    # -- writing
    def push(self, folder: Path, manifest: dict, replace: bool = False) -> bool:
        """Upload an artifact; False when the entry already exists (entries are immutable,
        except that ``replace`` overwrites one that failed verification)."""
        key = manifest["key"]
        if self.lookup(key) is not None:
            if not replace:
                self.record_use(key)
                return False
            self.remove(key)
        self._clean_dead_uploads()
        archive = _deterministic_tar(folder, manifest)
        self._put_atomically(archive, self._base(key) + ".tar")
        text = manifest_text(manifest)
        self._put_atomically(text.encode("utf-8"), self._base(key) + ".json")
        self.record_use(key)
        return True

    # -- reading
    def restore(self, key: str, staged: Path, cache: StatCache) -> dict:
        """Download and verify entry ``key`` into the empty folder ``staged``; returns its manifest.

        Raises CorruptEntry when anything does not match, leaving ``staged`` to be discarded.
        """
        manifest = self.lookup(key)
        if manifest is None:
            raise CacheError(f"no cache entry {key}")
        expected_files = manifest.get("files", {})
        limit = archive_size_limit(expected_files)
        try:
            size = self.fs.size(self._base(key) + ".tar")
            if size is not None and size > limit:
                raise CorruptEntry(f"cache entry {key}: its archive is {size} bytes, more than its "
                                   f"manifest's files can fill ({limit}); refusing to read it")
            data = self.fs.cat_file(self._base(key) + ".tar")
        except FileNotFoundError:
            raise CorruptEntry(f"cache entry {key} has a manifest but no archive") from None
        if len(data) > limit:
            raise CorruptEntry(f"cache entry {key}: its archive is larger than its manifest allows")
        expected_dirs = manifest.get("dirs", [])
        _safe_extract(data, staged, expected_files, expected_dirs)
        expected = manifest.get("files", {})
        from recbuild.core.workdir.hashing import list_tree, tree_entries

        files, empty_dirs = list_tree(staged)
        got = tree_entries(staged, files, cache)
        if got != expected or empty_dirs != sorted(expected_dirs):
            missing = sorted(set(expected) - set(got)) + sorted(set(expected_dirs) - set(empty_dirs))
            extra = sorted(set(got) - set(expected)) + sorted(set(empty_dirs) - set(expected_dirs))
            changed = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
            raise CorruptEntry(f"cache entry {key} does not match its manifest "
                               f"(missing {missing[:3]}, unexpected {extra[:3]}, modified {changed[:3]})")
        if entries_digest(got, empty_dirs) != manifest.get("digest"):
            raise CorruptEntry(f"cache entry {key}: manifest digest does not match its file list")
        write_manifest(staged, manifest)
        self.record_use(key)
        return manifest

    def remove(self, key: str) -> None:
        for suffix in (".json", ".tar", ".used"):  # manifest first: the entry disappears atomically for readers
            path = self._base(key) + suffix
            if self.fs.exists(path):
                self.fs.rm(path)


def _modified(info: dict) -> float | None:
    for name in ("mtime", "LastModified", "last_modified", "created", "updated"):
        value = info.get(name)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _deterministic_tar(folder: Path, manifest: dict) -> bytes:
    import tarfile

    def member(name: str, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mtime = 0
        info.mode = mode
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    buffer = io.BytesIO()
    files = manifest.get("files", {})
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(files):
            path = folder / rel
            info = member(rel, EXEC_MODE if files[rel].get("exec") else FILE_MODE)
            info.size = path.stat().st_size
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
        for rel in sorted(manifest.get("dirs", [])):
            info = member(rel, FOLDER_MODE)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    return buffer.getvalue()


def archive_size_limit(files: dict) -> int:
    """The most bytes a deterministic tar of these files can take (headers, PAX records for long
    names, padding and the end blocks included); anything larger is not what push wrote."""
    content = sum(-(-entry["size"] // 512) * 512 for entry in files.values())
    return content + len(files) * 4096 + 2 * _TAR_RECORD


def _safe_extract(data: bytes, target: Path, expected: dict, expected_dirs: list[str] = ()) -> None:
    """Extract the archive's files and empty folders into ``target``, refusing before a byte is
    written any member that is not a plain (non-sparse) file named in the manifest with the
    manifest's size, or an empty folder the manifest names, and writing no more than the manifest's
    total. Modes come from the manifest (0o755 where it says ``exec``, else 0o644), never from the
    archive, so an entry cannot smuggle in set-uid or world-writable files."""
    import tarfile

    plain_file_types = (tarfile.REGTYPE, tarfile.AREGTYPE)
    target = target.resolve()
    dirs = set(expected_dirs)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            seen: set[str] = set()
            for member in members:
                name = member.name.rstrip("/") if member.isdir() else member.name
                dest = (target / name).resolve()
                is_listed_dir = member.isdir() and name in dirs
                if (os.path.isabs(name) or ".." in Path(name).parts
                        or (member.type not in plain_file_types and not is_listed_dir)
                        or member.issparse() or not str(dest).startswith(str(target) + os.sep)):
                    raise CorruptEntry(f"cache archive member {name!r} is not a plain file inside the "
                                       "artifact folder; refusing to extract it")
                if name in seen or (not is_listed_dir and (name not in expected
                                                           or member.size != expected[name]["size"])):
                    raise CorruptEntry(f"cache archive member {name!r} is not in the entry's manifest "
                                       "with that size; refusing to extract it")
                seen.add(name)
            folders = set()
            for member in members:
                parts = member.name.rstrip("/").split("/")
                folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
                if member.isdir():
                    folder = target / member.name.rstrip("/")
                    folder.mkdir(parents=True, exist_ok=True)
                    os.chmod(folder, FOLDER_MODE)
                    continue
                dest = target / member.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                remaining = member.size
                with open(dest, "wb") as handle:
                    while remaining > 0 and (chunk := source.read(min(1 << 20, remaining))):
                        handle.write(chunk)
                        remaining -= len(chunk)
                os.chmod(dest, EXEC_MODE if expected[member.name].get("exec") else FILE_MODE)
            for folder in folders:  # (made with the umask's mode on the way to a file)
                os.chmod(target / folder, FOLDER_MODE)
    except tarfile.TarError as exc:
        raise CorruptEntry(f"cache archive is damaged: {exc}") from None


_TAR_RECORD = 10240  # tarfile.RECORDSIZE: the archive is padded to a multiple of it


def open_cache(recipe, url_override: str | None) -> ArtifactCache | None:
    settings = recipe.cache or {}
    url = url_override or settings.get("url") or os.environ.get("RECBUILD_CACHE")
    if not url:
        return None
    push = settings.get("push", True) if isinstance(settings, dict) else True
    return ArtifactCache(url, push=push, base_dir=recipe.dir)


def age_days(entry: CacheEntry) -> float | None:
    return None if entry.modified is None else (time.time() - entry.modified) / 86400

