"""Content-addressed artifact cache on fsspec (local folder, s3://, gs://, oss://, memory://).

Layout under the cache URL, one immutable entry per artifact key:

    v1/<key[:2]>/<key>.tar    the artifact's files (deterministic tar: sorted, zero times and owners)
    v1/<key[:2]>/<key>.json   its MANIFEST.json, written last: an entry exists once this file does

Writers upload under a unique temporary name and then move into place, so concurrent CI jobs
never see a half-written entry; two jobs writing the same key write the same bytes. Readers verify
every file against the manifest digests before use and refuse archive members that would land
outside the target folder (absolute paths, ``..``, links, devices).
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from recbuild.errors import RecbuildError
from recbuild.core.workdir.hashing import StatCache, entries_digest
from recbuild.core.workdir.manifest import manifest_problem, write_manifest

LAYOUT = "v1"


class CacheError(RecbuildError):
    """The cache is unreachable or an entry is unusable."""


class CorruptEntry(CacheError):
    """An entry failed verification (tampered or truncated)."""


@dataclass(frozen=True)
class CacheEntry:
    key: str
    manifest: dict
    modified: float | None  # seconds since the epoch, when the store reports it


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

    def _put_atomically(self, data: bytes, final: str) -> None:
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(tmp, data)
        try:
            self.fs.mv(tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

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

    def entries(self) -> list[CacheEntry]:
        try:
            paths = self.fs.glob(f"{self.root}/{LAYOUT}/*/*.json")
        except FileNotFoundError:
            return []
        found = []
        for path in sorted(paths):
            key = path.rsplit("/", 1)[-1][: -len(".json")]
            try:
                manifest = json.loads(self.fs.cat_file(path))
                info = self.fs.info(path)
            except (FileNotFoundError, ValueError, RecursionError):
                continue
            found.append(CacheEntry(key, manifest, _modified(info)))
        return found

    # -- writing
    def push(self, folder: Path, manifest: dict, replace: bool = False) -> bool:
        """Upload an artifact; False when the entry already exists (entries are immutable,
        except that ``replace`` overwrites one that failed verification)."""
        key = manifest["key"]
        if self.lookup(key) is not None:
            if not replace:
                return False
            self.remove(key)
        archive = _deterministic_tar(folder, manifest)
        self._put_atomically(archive, self._base(key) + ".tar")
        text = json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
        self._put_atomically(text.encode("utf-8"), self._base(key) + ".json")
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
        _safe_extract(data, staged, expected_files)
        expected = manifest.get("files", {})
        from recbuild.core.workdir.hashing import list_files, tree_entries

        files = [f for f in list_files(staged)]
        got = tree_entries(staged, files, cache)
        if got != expected:
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            changed = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
            raise CorruptEntry(f"cache entry {key} does not match its manifest "
                               f"(missing {missing[:3]}, unexpected {extra[:3]}, modified {changed[:3]})")
        if entries_digest(got) != manifest.get("digest"):
            raise CorruptEntry(f"cache entry {key}: manifest digest does not match its file list")
        write_manifest(staged, manifest)
        return manifest

    def remove(self, key: str) -> None:
        for suffix in (".json", ".tar"):  # manifest first: the entry disappears atomically for readers
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

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(manifest.get("files", {})):
            path = folder / rel
            info = tarfile.TarInfo(rel)
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def archive_size_limit(files: dict) -> int:
    """The most bytes a deterministic tar of these files can take (headers, PAX records for long
    names, padding and the end blocks included); anything larger is not what push wrote."""
    content = sum(-(-entry["size"] // 512) * 512 for entry in files.values())
    return content + len(files) * 4096 + 2 * _TAR_RECORD


def _safe_extract(data: bytes, target: Path, expected: dict) -> None:
    """Extract the archive's files into ``target``, refusing before a byte is written any member
    that is not a plain (non-sparse) file named in the manifest with the manifest's size, and
    writing no more than the manifest's total."""
    import tarfile

    plain_file_types = (tarfile.REGTYPE, tarfile.AREGTYPE)
    target = target.resolve()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            seen: set[str] = set()
            for member in members:
                name = member.name
                dest = (target / name).resolve()
                if (os.path.isabs(name) or ".." in Path(name).parts or member.type not in plain_file_types
                        or member.issparse() or not str(dest).startswith(str(target) + os.sep)):
                    raise CorruptEntry(f"cache archive member {name!r} is not a plain file inside the "
                                       "artifact folder; refusing to extract it")
                if name not in expected or name in seen or member.size != expected[name]["size"]:
                    raise CorruptEntry(f"cache archive member {name!r} is not in the entry's manifest "
                                       "with that size; refusing to extract it")
                seen.add(name)
            for member in members:
                dest = target / member.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                remaining = member.size
                with open(dest, "wb") as handle:
                    while remaining > 0 and (chunk := source.read(min(1 << 20, remaining))):
                        handle.write(chunk)
                        remaining -= len(chunk)
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

