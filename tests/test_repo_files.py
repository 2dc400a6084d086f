"""Checks over every tracked text file of the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFLICT_MARKER = re.compile(r"^(<{7}|={7}|>{7})( |$)", re.M)


def tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = []
    for name in listed.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and b"\0" not in path.read_bytes()[:8192]:
            files.append(path)
    return files


def conflict_markers(text: str) -> list[int]:
    return [text.count("\n", 0, match.start()) + 1 for match in CONFLICT_MARKER.finditer(text)]


def test_no_tracked_file_holds_merge_conflict_markers():
    found = [f"{path.relative_to(ROOT)}:{line}" for path in tracked_text_files()
             for line in conflict_markers(path.read_text(encoding="utf-8", errors="replace"))]
    assert found == []


def test_the_marker_check_sees_a_conflict():
    text = "a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> branch\n"
    assert conflict_markers(text) == [2, 4, 6]
    assert conflict_markers("a heading\n=========\n") == []  # a setext underline is no marker
