"""All user-facing output. Rich (live spinners, progress bars, tables) on a terminal; plain lines
otherwise (CI logs). Honours -q/-v and NO_COLOR. Nothing else in recbuild prints.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

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


def _literal(text: str) -> str:
    """Text from a recipe or a file name, shown as it is: `[red]` or `[/]` in a value is not rich
    markup (a stray closing tag would fail the print itself)."""
    from rich.markup import escape

    return escape(text)


def _visible(text: str) -> str:
    """An error or warning line with control and invisible characters escaped (an ESC sequence in
    a recipe value or a file name must not move the cursor, retitle or recolour the terminal; a
    bidi override must not reorder the line). A file name's undecodable bytes are kept."""
    import unicodedata

    if text.isprintable():
        return text
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in text)


def _keep_name_bytes(stream) -> None:
    """A file name that is not UTF-8 reaches Python as surrogates; a strict stream (a UTF-8
    locale's terminal) would fail on it mid-table. Write its original bytes instead, as ls and
    find do (or an escape, on a stream that is not UTF-8)."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is None or getattr(stream, "errors", None) in ("surrogateescape", "backslashreplace"):
        return
    try:
        reconfigure(errors="surrogateescape" if encoding == "utf8" else "backslashreplace")
    except (ValueError, OSError, AttributeError):
        pass


class Terminal:
    def __init__(self, verbosity: int = 1, force_plain: bool | None = None):
        self.verbosity = verbosity  # 0 quiet, 1 normal, 2 verbose
        # Keep the real streams: doit swaps sys.stdout/stderr while an action runs (to capture it),
        # and lines printed from another thread at that moment would vanish into that capture.
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        for stream in (self.stdout, self.stderr):
            _keep_name_bytes(stream)
        plain = force_plain if force_plain is not None else not self.stdout.isatty()
        self.rich = not plain
        self._console = None
        self._err_console = None
        self._live = None  # the live progress display while one runs (BuildEvents sets it)
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
        with self._above_live():
            for line in text.splitlines() or [""]:
                line = _visible(line)
                if self._err_console is not None:
                    self._err_console.print(f"[bold red]error:[/] {_literal(line)}", highlight=False, soft_wrap=True)
                else:
                    print(f"error: {line}", file=self.stderr, flush=True)

    def warn(self, text: str) -> None:
        text = "\n".join(_visible(line) for line in text.split("\n"))
        with self._above_live():
            if self._err_console is not None:
                self._err_console.print(f"[yellow]warning:[/] {_literal(text)}", highlight=False, soft_wrap=True)
            else:
                print(f"warning: {text}", file=self.stderr, flush=True)

    def stop_live(self) -> None:
        """End the live progress display for good, erasing its lines (Ctrl-C, an error that ends the
        command): what is printed next starts on a clean line instead of after the progress text."""
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    @contextmanager
    def _above_live(self) -> Iterator[None]:
        # stderr is not the live display's console: a message written while the live lines are on
        # screen would be glued onto them. Take them down (they are transient), print, put them back.
        live = self._live
        if live is None or not live.is_started:
            yield
            return
        live.stop()
        try:
            yield
        finally:
            if self._live is live:
                live.start()

    def table(self, headers: list[str], rows: list[list[Any]], title: str | None = None) -> None:
        if self._console is not None:
            from rich.table import Table

            table = Table(title=title, show_edge=False, header_style="bold")
            for header in headers:
                table.add_column(header)
            for row in rows:
                table.add_row(*[_literal(str(c)) for c in row])
            self._console.print(table)
            return
        if title:
            print(title, file=self.stdout)
        widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
                  for i, h in enumerate(headers)]
        print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip(), file=self.stdout)
        for row in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip(), file=self.stdout, flush=True)

    def build_events(self, heartbeat: float | None = None) -> "BuildEvents":
        return BuildEvents(self, heartbeat)


def fmt_count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() or value >= 100 else f"{value:,.1f}"


def fmt_rate(per_second: float, unit: str) -> str:
    shown = f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.1f}"
    return f"{shown} {unit}/s"


def fmt_fact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def describe(progress: Progress, elapsed: float) -> str:
    """One line of facts about a running step: phase, done/total, rate, ETA, notes, elapsed."""
    parts = []
    if progress.phase_name:
        parts.append(progress.phase_name)
    now = time.monotonic()
    if progress.done or progress.total:
        unit = progress.unit or ""
        count = fmt_count(progress.done) + (f"/{fmt_count(progress.total)}" if progress.total else "")
        parts.append(f"{count} {unit}".strip())
        spent = now - progress.phase_started
        finished = bool(progress.total) and progress.done >= progress.total
        if progress.done and spent > 0.5 and not finished:  # (past the total, a rate only decays)
            rate = progress.done / spent
            parts.append(fmt_rate(rate, unit))
            if progress.total and progress.total > progress.done:
                parts.append(f"ETA {_fmt_seconds((progress.total - progress.done) / rate)}")
    parts.extend(f"{key} {fmt_fact(value)}" for key, value in progress.facts.items())
    parts.append(_fmt_seconds(elapsed))
    return ", ".join(parts)


class _Running:
    """What the UI knows of a running step."""

    def __init__(self, name: str, kind: str):
        self.name = name
        self.kind = kind
        self.started = time.monotonic()
        self.progress = Progress(None, "")

    def line(self) -> str:
        return f"{self.name} ({self.kind}): {describe(self.progress, time.monotonic() - self.started)}"


class _LiveLines:
    """Rich renderable: one live line per running step, re-read at every refresh."""

    def __init__(self, events: "BuildEvents"):
        self.events = events

    def __rich__(self):
        from rich.text import Text

        with self.events._lock:
            running = list(self.events.running.values())
        text = Text()
        for i, step in enumerate(running):
            if i:
                text.append("\n")
            text.append("  ⋯ ", style="cyan")
            text.append(f"{step.name} ", style="bold")
            text.append(f"({step.kind}) ", style="dim")
            text.append(describe(step.progress, time.monotonic() - step.started))
        return text


class BuildEvents:
    """Implements build.events.Events. On a terminal, one live line per running step; otherwise (CI logs)
    a heartbeat line per running step every ``heartbeat`` seconds, with the same facts."""

    def __init__(self, term: Terminal, heartbeat: float | None = None):
        self.term = term
        self.counts: dict[str, int] = {}
        self.running: dict[str, _Running] = {}
        self.heartbeat = heartbeat if heartbeat is not None else float(os.environ.get("RECBUILD_HEARTBEAT", "30"))
        self._lock = threading.Lock()
        self._live = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def run_started(self, names: list[str]) -> None:
        if self.term.verbosity < 1:
            return
        if self.term.rich:
            from rich.live import Live

            self._live = Live(_LiveLines(self), console=self.term._console, refresh_per_second=4,
                              transient=True)
            self._live.start()
            self.term._live = self._live
        elif self.heartbeat > 0:
            self._beat = threading.Thread(target=self._heartbeat, name="recbuild-heartbeat", daemon=True)
            self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                lines = [step.line() for step in self.running.values()]
            for line in lines:
                print(f"  ... {line}", file=self.term.stdout, flush=True)

    def _line(self, status: str, name: str, kind: str, seconds: float | None, detail: str = "") -> None:
        if self.term.verbosity < 1:
            return
        time_text = _fmt_seconds(seconds) if seconds else ""
        if self.term.rich:
            style = _OUTCOME_STYLE.get(status, "")
            text = f"  [{style}]{status:<22}[/] {_literal(f'{name:<24}')} [dim]{kind:<16}[/] {time_text:>7}"
            if detail:
                text += f"  [dim]{_literal(detail)}[/]"
            self.term._console.print(text, highlight=False)
        else:
            text = f"  {status:<22} {name:<24} {kind:<16} {time_text:>7}"
            if detail:
                text += f"  {detail}"
            print(text.rstrip(), file=self.term.stdout, flush=True)

    def step_started(self, name: str, kind: str) -> None:
        with self._lock:
            self.running[name] = _Running(name, kind)
        if not self.term.rich:
            self.term.debug(f"  building {name} ({kind}) ...")

    def _stop_running(self, name: str) -> None:
        with self._lock:
            self.running.pop(name, None)

    def step_finished(self, name: str, kind: str, outcome: str, seconds: float, detail: str = "") -> None:
        self._stop_running(name)
        if outcome == "hashed":
            self.term.debug(f"  hashed source {name}: {detail}")
            return
        if kind == "source":
            return
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self._line(outcome, name, kind, seconds if outcome != "up to date" else None, detail)

    def step_failed(self, name: str, kind: str, message: str, seconds: float) -> None:
        self._stop_running(name)
        self.counts["failed"] = self.counts.get("failed", 0) + 1
        self._line("FAILED", name, kind, seconds)
        self.term.error(message)  # the engine's messages start with the recipe location and the name

    def step_skipped(self, name: str, kind: str, reason: str) -> None:
        self._stop_running(name)
        self.counts["skipped"] = self.counts.get("skipped", 0) + 1
        self._line("skipped", name, kind, None, reason)

    def warn(self, message: str) -> None:
        self.term.warn(message)

    def progress(self, name: str, total: float | None, unit: str) -> Progress:
        """The running step's progress state (the UI reads it; the builder writes it)."""
        with self._lock:
            step = self.running.get(name)
        return step.progress if step is not None else Progress(total, unit)

    def run_finished(self, stats: dict) -> None:
        self._stop.set()
        if self._live is not None:
            self._live.stop()
            self._live = None
            self.term._live = None
        if self.term.verbosity < 1:
            return
        headlines = stats.get("headlines", {})
        if headlines:
            rows = [[name, "  ".join(f"{metric} {fmt_fact(value)}" for metric, value in figures.items())]
                    for name, figures in headlines.items()]
            self.term.table(["artifact", "results"], rows)
        parts = [f"{count} {outcome}" for outcome, count in sorted(self.counts.items())]
        summary = ", ".join(parts) if parts else "nothing to do"
        self.term.out(f"{summary} in {_fmt_seconds(stats['seconds'])}")
        self.term.debug(f"hashed {stats['files_hashed']} files ({fmt_bytes(stats['bytes_hashed'])})")


def now() -> float:
    return time.perf_counter()
