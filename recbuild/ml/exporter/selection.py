"""Which checkpoint to export: finding ``model.ckpt-<step>`` folders, reading the evaluation lines of
``train_eval_result_v2.txt``, and the select rules (also used by the tzrec kinds' selection).

Checkpoint folder layout (the shape of TorchEasyRec's model_dir, written by ``kind: train`` or by a
user's own trainer; tzrec's own distributed checkpoints are read by the tzrec_* kinds, not here):
``model.ckpt-<step>/model.pt`` (a state_dict saved with ``torch.save``), optionally
``train_eval_result_v2.txt`` (one JSON object per line with ``global_step``) and
``train_meta.json`` (``final_step``).

Selection rules (documented in docs/internals.md):
  latest    the checkpoint with the highest step.
  final     the step recorded as ``final_step`` in train_meta.json (the end of training).
  best      the step whose eval line has the best ``metric``; ties go to the EARLIEST step among
            equals; NaN values never win; if a step has several lines the last line counts
            (a resumed run re-evaluated it). Default metric: the only one in the file, else the
            family's (``recall@50`` for retrieval, ``auc`` for ranking).
  <path>    a checkpoint folder or weights file inside the checkpoints input
            (``model.ckpt-400`` or ``model.ckpt-400/model.pt``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from recbuild.errors import BuildError, InputError

EVAL_FILE = "train_eval_result_v2.txt"
META_FILE = "train_meta.json"
WEIGHTS_FILE = "model.pt"
CHECKPOINT_RE = re.compile(r"^model\.ckpt-(\d+)$")
SELECT_MODES = ("latest", "best", "final")


def list_checkpoints(folder: Path) -> dict[int, Path]:
    """step -> weights file of every ``model.ckpt-<step>/model.pt`` in folder."""
    found = {}
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: checkpoints folder not found")
    for entry in folder.iterdir():
        match = CHECKPOINT_RE.match(entry.name)
        if match and entry.is_dir() and (entry / WEIGHTS_FILE).is_file():
            found[int(match.group(1))] = entry / WEIGHTS_FILE
    return found


def read_eval_results(folder: Path) -> dict[int, dict[str, float]]:
    """step -> metrics from train_eval_result_v2.txt (later lines for the same step win)."""
    path = Path(folder) / EVAL_FILE
    if not path.is_file():
        return {}
    results: dict[int, dict[str, float]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record.pop("global_step"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"{path}:{number}: not a JSON object with an integer global_step: "
                             f"{line[:120]!r}") from None
        metrics = {}
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[name] = float(value)
        results[step] = metrics
    return results


@dataclass(frozen=True)
class Selection:
    step: int
    weights: Path
    name: str  # path relative to the checkpoints folder, e.g. "model.ckpt-400"
    select: str
    metric: str | None = None
    value: float | None = None
    history: tuple[tuple[int, Path], ...] = ()  # older exports to keep, oldest first

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"checkpoint": self.name, "step": self.step, "select": self.select}
        if self.metric is not None:
            info["metric"] = self.metric
            info["value"] = self.value
        return info


def resolve_metric(results: dict[int, dict[str, float]], metric: str | None,
                   default_metrics: Iterable[str], where: Path) -> str:
    names = sorted({name for metrics in results.values() for name in metrics})
    if metric is not None:
        if metric not in names:
            raise BuildError(f"metric {metric!r} is not in {where / EVAL_FILE}; metrics there: "
                             f"{', '.join(names) or '(none)'}; set `metric:` to one of them")
        return metric
    if len(names) == 1:
        return names[0]
    for candidate in default_metrics:
        if candidate in names:
            return candidate
    raise BuildError(f"select: best needs `metric:`; {where / EVAL_FILE} holds "
                     f"{', '.join(names) or 'no metrics'} and none is a default "
                     f"({', '.join(default_metrics)})")


def _better(a: float, b: float, bigger_is_better: bool) -> bool:
    return a > b if bigger_is_better else a < b


def _best_events(results: dict[int, dict[str, float]], metric: str, bigger: bool) -> list[int]:
    """Steps at which the running best improved (strictly), in step order: the last is the best.

    This is the sequence of exports EasyRec's BestExporter makes during training; strict
    improvement means ties keep the earliest step.
    """
    events: list[int] = []
    best = None
    for step in sorted(results):
        value = results[step].get(metric)
        if value is None or math.isnan(value):
            continue
        if best is None or _better(value, best, bigger):
            best = value
            events.append(step)
    return events


def best_steps(folder: Path, checkpoints, metric: str | None, bigger_is_better: bool,
               default_metrics: Iterable[str], layout: str) -> tuple[list[int], str, float]:
    """select: best over ``train_eval_result_v2.txt`` in ``folder`` (the rules of the module
    docstring; shared with the tzrec kinds, whose checkpoints are folders of another layout).

    ``checkpoints``: the steps that exist (a dict or set); ``layout``: how a step's checkpoint is
    named in errors, e.g. ``"model.ckpt-{step}"``. Returns (the steps at which the running best
    improved, in step order, the last being the choice; the metric; its value at the choice).
    """
    results = read_eval_results(folder)
    if not results:
        raise BuildError(f"select: best needs {folder / EVAL_FILE} with at least one line; "
                         "use select: latest, or evaluate during training")
    metric = resolve_metric(results, metric, default_metrics, folder)
    events = _best_events(results, metric, bigger_is_better)
    if not events:
        raise BuildError(f"select: best: every value of {metric!r} in {folder / EVAL_FILE} is NaN")
    if events[-1] not in checkpoints:
        raise BuildError(f"select: best picked step {events[-1]} ({metric} = "
                         f"{results[events[-1]][metric]}) but {layout.format(step=events[-1])} "
                         f"is missing in {folder}")
    value = results[events[-1]][metric]
    return [s for s in events if s in checkpoints], metric, value


def _explicit(folder: Path, select: str, checkpoints: dict[int, Path]) -> tuple[int, Path, str]:
    """(step, weights file, name relative to folder) of an explicit checkpoint path."""
    base = Path(folder).resolve()
    target = (base / select).resolve()
    if base != target and base not in target.parents:
        raise BuildError(f"select: {select!r} points outside the checkpoints input {folder}; "
                         "name a checkpoint inside it (e.g. model.ckpt-400)")
    if target.is_dir():
        target = target / WEIGHTS_FILE
    if not target.is_file():
        listed = ", ".join(f"model.ckpt-{s}" for s in sorted(checkpoints)) or "(none)"
        raise BuildError(f"select: {select!r}: {target.relative_to(base)} not found in {folder}; "
                         f"checkpoints: {listed}")
    match = CHECKPOINT_RE.match(target.parent.name)
    name = target.relative_to(base).as_posix()
    if name.endswith("/" + WEIGHTS_FILE):
        name = name[: -len(WEIGHTS_FILE) - 1]
    return (int(match.group(1)) if match else 0), target, name


def select_checkpoint(folder: Path, select: str = "latest", metric: str | None = None,
                      bigger_is_better: bool = True, keep: int = 1,
                      default_metrics: Iterable[str] = ("auc", "recall@50")) -> Selection:
    """Pick the checkpoint to export (see the module docstring for the rules)."""
    folder = Path(folder)
    checkpoints = list_checkpoints(folder)
    if select not in SELECT_MODES:
        step, weights, name = _explicit(folder, select, checkpoints)
        return Selection(step, weights, name, select)
    if not checkpoints:
        raise InputError(f"{folder}: no checkpoints (expected model.ckpt-<step>/{WEIGHTS_FILE})")
    value = None
    if select == "latest":
        events = sorted(checkpoints)
    elif select == "final":
        meta_path = folder / META_FILE
        try:
            final_step = int(json.loads(meta_path.read_text(encoding="utf-8"))["final_step"])
        except (OSError, ValueError, KeyError, TypeError):
            raise BuildError(f"select: final needs {META_FILE} with final_step in {folder} (written "
                             "by kind: train); use select: latest for other checkpoint folders") from None
        events = [s for s in sorted(checkpoints) if s <= final_step]
        if final_step not in checkpoints:
            raise BuildError(f"select: final: {META_FILE} names step {final_step} but "
                             f"model.ckpt-{final_step}/{WEIGHTS_FILE} is missing in {folder}")
    else:
        events, metric, value = best_steps(folder, checkpoints, metric, bigger_is_better, default_metrics,
                                           f"model.ckpt-{{step}}/{WEIGHTS_FILE}")
    step = events[-1]
    history = tuple((s, checkpoints[s]) for s in events[:-1][-(keep - 1):]) if keep > 1 else ()
    return Selection(step, checkpoints[step], f"model.ckpt-{step}", select,
                     metric if select == "best" else None, value, history)
