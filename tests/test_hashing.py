"""Unit tests for the stat-cached content hashing."""

from __future__ import annotations

import os
import time

from recbuild.core.workdir.hashing import StatCache, entries_digest, expand_local, tree_entries


def _age(path, seconds=1.0):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_unchanged_file_is_read_once(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 1000)
    time.sleep(0.05)
    cache = StatCache(tmp_path / "db.sqlite")
    first = cache.file_digest(f)
    assert cache.stats.files_hashed == 1
    assert cache.file_digest(f) == first
    assert cache.stats.files_hashed == 1
    cache.close()
    reopened = StatCache(tmp_path / "db.sqlite")
    assert reopened.file_digest(f) == first
    assert reopened.stats.files_hashed == 0  # persisted across processes


def test_touch_rehashes_once(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    time.sleep(0.05)
    cache = StatCache(None)
    digest = cache.file_digest(f)
    os.utime(f)
    time.sleep(0.05)
    assert cache.file_digest(f) == digest
    assert cache.file_digest(f) == digest
    assert cache.stats.files_hashed == 2


def test_same_size_edit_with_restored_mtime_is_caught(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    time.sleep(0.05)
    cache = StatCache(None)
    before = os.stat(f)
    digest = cache.file_digest(f)
    f.write_bytes(b"abd")
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cache.file_digest(f) != digest


def test_racy_files_are_not_cached(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    cache = StatCache(None)
    cache.file_digest(f)  # written just now: inside the racy window
    cache.file_digest(f)
    assert cache.stats.files_hashed == 2


def test_large_file_uses_mmap_and_matches_small_path(tmp_path):
    import xxhash

    data = os.urandom(3 << 20)
    f = tmp_path / "big.bin"
    f.write_bytes(data)
    assert StatCache(None).file_digest(f) == xxhash.xxh3_128_hexdigest(data)


def test_directory_digest_covers_names_and_contents(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("1")
    (tmp_path / "d" / "b").write_text("2")
    cache = StatCache(None)
    root, files = expand_local(tmp_path / "d")
    one = entries_digest(tree_entries(root, files, cache))
    (tmp_path / "d" / "b").rename(tmp_path / "d" / "c")
    root, files = expand_local(tmp_path / "d")
    assert entries_digest(tree_entries(root, files, cache)) != one


def test_glob_expansion_is_sorted(tmp_path):
    for name in ("b.csv", "a.csv", "c.txt"):
        (tmp_path / name).write_text(name)
    root, files = expand_local(tmp_path / "*.csv")
    assert root == tmp_path
    assert [f.name for f in files] == ["a.csv", "b.csv"]
