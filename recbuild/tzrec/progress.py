"""What a running tzrec tool is doing, read off its log as it is written.

tzrec logs its progress through ``tzrec.utils.logging_util`` (tzrec-sekai 0.9.6, main.py):

    [2026-12-06 23:44:21,391][INFO] Training Epoch 0: 15it [8.90it/s] lr_g0:0.01000 softmax_cross_entropy:5.07434 total_loss: 5.07434
    [2026-12-06 23:44:20,463][INFO] Saving checkpoint to build/.recbuild/tmp/x/model.ckpt-10...
    [...][INFO] Evaluating Epoch-0 model-10: 3it [12.10it/s]
    [...][INFO] Eval Result Epoch-0 model-10: recall@1:0.004000 recall@5:0.022000 softmax_cross_entropy:5.540809
    [...][INFO] Predicting: 20it [31.02it/s]
    [...][INFO] Train and Evaluate Finished.

(a progress line at most once a second and every ``log_step_count_steps``). :func:`parse` turns one
line into a :class:`LogEvent`; :class:`LogFollower` reads a growing log in a thread and hands each
complete line to a callback. Lines it does not know are ignored: the log is tzrec's, not a contract.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

POLL_SECONDS = 0.25

_PREFIX = re.compile(r"^(?:\[(?:rank|default)\d*\]:\s?)?(?:\[[^\]]*\]\[[A-Z]+\]\s*)?")
_TRAIN = re.compile(r"^Training Epoch (\d+): (\d+)it \[[\d.]+it/s\]\s*(.*)$")
_EVALUATING = re.compile(r"^Evaluating(?: Epoch-(\d+))?(?: model-(\d+))?: (\d+)it\b")
_EVAL_RESULT = re.compile(r"^Eval Result(?: Epoch-(\d+))?(?: model-(\d+))?: (.*)$")
_PREDICT = re.compile(r"^Predicting: (\d+)it\b")
_SAVE = re.compile(r"^Saving checkpoint to .*model\.ckpt-(\d+)")
_FINISHED = re.compile(r"^(?:Train and Evaluate|Evaluate|Predict) Finished\.")
_FIGURE = re.compile(r"([A-Za-z_][\w@.]*):\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)")


@dataclass(frozen=True)
class LogEvent:
    what: str  # "train" | "evaluating" | "eval" | "predict" | "checkpoint" | "finished"
    step: int | None = None  # training step index, from 0 (train; checkpoint, eval: the model's step)
    epoch: int | None = None
    batches: int | None = None  # evaluating, predict: batches so far
    figures: dict[str, float] = field(default_factory=dict)


def _figures(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in _FIGURE.findall(text)}


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def parse(line: str) -> LogEvent | None:
    """The progress a tzrec log line reports, None for any other line."""
    text = _PREFIX.sub("", line.strip(), count=1)
    if m := _TRAIN.match(text):
        figures = _figures(m.group(3))
        return LogEvent("train", step=int(m.group(2)), epoch=int(m.group(1)),
                        figures={k: v for k, v in figures.items() if not k.startswith("lr_")})
    if m := _EVAL_RESULT.match(text):
        return LogEvent("eval", step=_int(m.group(2)), epoch=_int(m.group(1)), figures=_figures(m.group(3)))
    if m := _EVALUATING.match(text):
        return LogEvent("evaluating", step=_int(m.group(2)), epoch=_int(m.group(1)), batches=int(m.group(3)))
    if m := _PREDICT.match(text):
        return LogEvent("predict", batches=int(m.group(1)))
    if m := _SAVE.match(text):
        return LogEvent("checkpoint", step=int(m.group(1)))
    if _FINISHED.match(text):
        return LogEvent("finished")
    return None


class LogFollower:
    """Hands each complete line appended to ``path`` after ``offset`` to ``on_line``, from a thread,
    until :meth:`stop` (which reads what is left first). ``on_line`` errors are ignored: showing
    progress never fails a step."""

    def __init__(self, path: Path, on_line: Callable[[str], None], offset: int = 0):
        self.path, self.on_line, self.offset = path, on_line, offset
        self._stop = threading.Event()
        self._rest = b""
        self._thread = threading.Thread(target=self._loop, name="recbuild-tzrec-log", daemon=True)

    def __enter__(self) -> "LogFollower":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while True:
            stopping = self._stop.wait(POLL_SECONDS)
            self._read()
            if stopping:
                return

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return
        if not data:
            return
        self.offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        for line in lines:
            try:
                self.on_line(line.decode("utf-8", errors="replace"))
            except Exception:  # noqa: BLE001 - a display problem must not fail the build
                pass
