"""All user-facing output. Rich (live spinners, progress bars, tables) on a terminal; plain lines
otherwise (CI logs). Honours -q/-v and NO_COLOR. Nothing else in recbuild prints.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from recbuild.builders.base import Progress

_OUTCOME_STYLE = {"built": "green", "up to date": "dim", "up to date (verified)": "dim",
                  "restored from cache": "cyan", "hashed": "dim"}


def _fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def fmt_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


class Terminal:
    def __init__(self, verbosity: int = 1, force_plain: bool | None = None):
        self.verbosity = verbosity  # 0 quiet, 1 normal, 2 verbose
        # Keep the real streams: doit swaps sys.stdout/stderr while an action runs (to capture it),
        # and lines printed from another thread at that moment would vanish into that capture.
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        plain = force_plain if force_plain is not None else not self.stdout.isatty()
        self.rich = not plain
        self._console = None
        self._err_console = None
        if self.rich:
            from rich.console import Console

            self._console = Console(file=self.stdout, no_color=bool(os.environ.get("NO_COLOR")))
            self._err_console = Console(file=self.stderr, no_color=bool(os.environ.get("NO_COLOR")))

    # -- plain messages
    def out(self, text: str = "") -> None:
        if self._console is not None:
            self._console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stdout, flush=True)

    def info(self, text: str) -> None:
        if self.verbosity >= 1:
            self.out(text)

    def debug(self, text: str) -> None:
        if self.verbosity >= 2:
            self.out(text)

    def error(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            if self._err_console is not None:
                self._err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
            else:
                print(f"error: {line}", file=self.stderr, flush=True)

    def warn(self, text: str) -> None:
        if self._err_console is not None:
            self._err_console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)
        else:
            print(f"warning: {text}", file=self.stderr, flush=True)

    def table(self, headers: list[str], rows: list[list[Any]], title: str | None = None) -> None:
        if self._console is not None:
            from rich.table import Table

            table = Table(title=title, show_edge=False, header_style="bold")
            for header in headers:
                table.add_column(header)
            for row in rows:
                table.add_row(*[str(c) for c in row])
            self._console.print(table)
            return
        if title:
            print(title, file=self.stdout)
        widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
                  for i, h in enumerate(headers)]
        print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip(), file=self.stdout)
        for row in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip(), file=self.stdout, flush=True)

    def build_events(self) -> "BuildEvents":
        return BuildEvents(self)


class _RichProgress(Progress):
    def __init__(self, events: "BuildEvents", name: str, total: float | None, unit: str):
        super().__init__(total, unit)
        self._events = events
        self._task = events._live_tasks.get(name)
        if self._task is not None and events._progress is not None:
            events._progress.update(self._task, total=total, completed=0, unit=unit)

    def advance(self, amount: float = 1) -> None:
        super().advance(amount)
        if self._task is not None and self._events._progress is not None:
            self._events._progress.update(self._task, completed=self.done)


class BuildEvents:
    """Implements engine.Events for a terminal."""

    def __init__(self, term: Terminal):
        self.term = term
        self.counts: dict[str, int] = {}
        self.rows: list[list[Any]] = []
        self._progress = None
        self._live_tasks: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._kinds: dict[str, str] = {}

    def run_started(self, names: list[str]) -> None:
        if self.term.rich and self.term.verbosity >= 1:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       SpinnerColumn, TextColumn, TimeElapsedColumn)

            from rich.progress import ProgressColumn
            from rich.text import Text

            class RateColumn(ProgressColumn):
                def render(self, task):
                    unit = task.fields.get("unit") or ""
                    if not unit or not task.speed:
                        return Text("")
                    return Text(f"{task.speed:,.0f} {unit}/s", style="cyan")

            self._progress = RichProgress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                MofNCompleteColumn(), TextColumn("{task.fields[unit]}"), RateColumn(),
                TimeElapsedColumn(), console=self.term._console, transient=True)
            self._progress.start()

    def _line(self, status: str, name: str, kind: str, seconds: float | None, detail: str = "") -> None:
        if self.term.verbosity < 1:
            return
        time_text = _fmt_seconds(seconds) if seconds else ""
        if self.term.rich:
            style = _OUTCOME_STYLE.get(status, "")
            text = f"  [{style}]{status:<22}[/] {name:<24} [dim]{kind:<16}[/] {time_text:>7}"
            if detail:
                text += f"  [dim]{detail}[/]"
            self.term._console.print(text, highlight=False)
        else:
            text = f"  {status:<22} {name:<24} {kind:<16} {time_text:>7}"
            if detail:
                text += f"  {detail}"
            print(text.rstrip(), file=self.term.stdout, flush=True)

    def step_started(self, name: str, kind: str) -> None:
        self._kinds[name] = kind
        if self._progress is not None:
            with self._lock:
                self._live_tasks[name] = self._progress.add_task(f"{name} ({kind})", total=None, unit="")
        else:
            self.term.debug(f"  building {name} ({kind}) ...")

    def _stop_live(self, name: str) -> None:
        if self._progress is not None:
            with self._lock:
                task = self._live_tasks.pop(name, None)
                if task is not None:
                    self._progress.remove_task(task)

    def step_finished(self, name: str, kind: str, outcome: str, seconds: float, detail: str = "") -> None:
        self._stop_live(name)
        if outcome == "hashed":
            self.term.debug(f"  hashed source {name}: {detail}")
            return
        if kind == "source":
            return
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.rows.append([name, kind, outcome, _fmt_seconds(seconds) if seconds else "-"])
        self._line(outcome, name, kind, seconds if outcome != "up to date" else None, detail)

    def step_failed(self, name: str, kind: str, message: str, seconds: float) -> None:
        self._stop_live(name)
        self.counts["failed"] = self.counts.get("failed", 0) + 1
        self.rows.append([name, kind, "FAILED", _fmt_seconds(seconds)])
        self._line("FAILED", name, kind, seconds)
        self.term.error(message)  # the engine's messages start with the recipe location and the name

    def step_skipped(self, name: str, kind: str, reason: str) -> None:
        self._stop_live(name)
        self.counts["skipped"] = self.counts.get("skipped", 0) + 1
        self._line("skipped", name, kind, None, reason)

    def warn(self, message: str) -> None:
        self.term.warn(message)

    def progress(self, name: str, total: float | None, unit: str) -> Progress:
        if self._progress is None:
            return Progress(total, unit)
        return _RichProgress(self, name, total, unit)

    def run_finished(self, stats: dict) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.term.verbosity < 1:
            return
        sizes = stats.get("sizes", {})
        if self.term.rich and self.rows:
            self.term.table(["artifact", "kind", "result", "time", "size"],
                            [row + [fmt_bytes(sizes[row[0]]) if row[0] in sizes else "-"] for row in self.rows])
        parts = [f"{count} {outcome}" for outcome, count in sorted(self.counts.items())]
        summary = ", ".join(parts) if parts else "nothing to do"
        self.term.out(f"{summary} in {_fmt_seconds(stats['seconds'])}")
        self.term.debug(f"hashed {stats['files_hashed']} files ({fmt_bytes(stats['bytes_hashed'])})")


def now() -> float:
    return time.perf_counter()
