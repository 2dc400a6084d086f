"""Metrics artifacts report: reading them, ordering their names, and their history across builds.

An artifact that measures something writes ``metrics.json`` into its folder (deterministic: no
times, so a rebuild to identical bytes stays identical). Each build that publishes one also appends
a record to ``<workdir>/metrics-history.jsonl``: the artifact, its key, the time, the git commit of
the recipe's repository (when it is in one) and the flattened numbers. That file lives beside the
artifacts, outside ``.recbuild/`` (which is a disposable cache), and survives ``recbuild clean``.

Pure logic: no printing (the CLI and the report present these).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

from recbuild.builders.base import METRICS_FILE  # noqa: F401  (the file name is the builders' contract)

HISTORY_FILE = "metrics-history.jsonl"
_K = re.compile(r"^(.*?)@(\d+)$")


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Nested numbers as ``a.b@10 -> 0.5`` (booleans and text are not metrics)."""
    flat: dict[str, float] = {}
    if isinstance(value, dict):
        for key in sorted(value):
            flat.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        flat[prefix] = value
    return flat


def read(path: Path) -> dict[str, float]:
    """The flattened numbers of a metrics.json; raises ValueError when it is not JSON."""
    return flatten(json.loads(Path(path).read_text(encoding="utf-8")))


def sort_key(name: str) -> tuple:
    """recall@10 < recall@50 < recall@200 (k as a number), families kept together."""
    match = _K.match(name)
    if match:
        return (match.group(1), 0, int(match.group(2)), name)
    return (name, 1, 0, name)


def ordered(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=sort_key)


def family_of(name: str) -> str:
    """The generic name a metric is explained under: 'exact.recall@50' -> 'exact.recall@k'."""
    match = _K.match(name)
    return f"{match.group(1)}@k" if match else name


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def format_value(value: float | int | None) -> str:
    if value is None:
        return "-"
    if is_integer(value):
        return f"{value:,}"
    return f"{value:.4f}"


def format_change(old: float | int | None, new: float | int | None) -> str:
    if old is None or new is None:
        return "-"
    delta = new - old
    if is_integer(old) and is_integer(new):
        return f"{delta:+,}"
    return f"{delta:+.4f}"


# ------------------------------------------------------------------------------------ history


def _git_commit(folder: Path) -> str | None:
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def record(workdir: Path, recipe_dir: Path, artifact: str, key: str, metrics_path: Path) -> None:
    """Append this build's metrics to the history (not when the last record is this key already:
    restoring or adopting the same build twice is not a new result)."""
    try:
        numbers = read(metrics_path)
    except (OSError, ValueError, RecursionError):
        return
    last = None
    for entry in history(workdir, artifact):
        last = entry
    if last is not None and last.get("key") == key:
        return
    entry = {"artifact": artifact, "key": key, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "commit": _git_commit(recipe_dir), "metrics": numbers}
    path = Path(workdir) / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def history(workdir: Path, artifact: str | None = None) -> list[dict]:
    """Records, oldest first; lines that are not well-formed records are skipped."""
    path = Path(workdir) / HISTORY_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in lines:
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if (isinstance(entry, dict) and isinstance(entry.get("artifact"), str)
                and isinstance(entry.get("metrics"), dict) and (artifact is None or entry["artifact"] == artifact)):
            records.append(entry)
    return records
