"""Checkpoint selection over a TorchEasyRec model_dir, with recbuild's rules
(recbuild.ml.exporter.selection).

tzrec writes ``model.ckpt-<step>/{model,optimizer}`` (torch distributed checkpoints, plus ``plan``)
and ``train_eval_result_v2.txt`` (one JSON object per evaluation with ``global_step``).

  latest   the highest step
  best     recbuild.ml.exporter.selection.best_steps: ties go to the earliest step, NaN never
           wins, a missing metric names the metrics that exist. Metric and direction default to
           the pipeline's ``export_config`` (``best_exporter_metric``, ``metric_larger_is_better``),
           then to the only metric in the file (tzrec itself crashes when no metric is named).
  <path>   a checkpoint folder inside the checkpoints artifact (e.g. ``model.ckpt-40``)

Default ``select``: the pipeline's ``export_config.exporter_type`` (latest unless it says best),
as ``tzrec.export`` would choose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from recbuild.errors import BuildError, InputError

CHECKPOINT_RE = re.compile(r"^model\.ckpt-(\d+)$")


def list_checkpoints(folder: Path) -> dict[int, Path]:
    found = {}
    for entry in Path(folder).iterdir():
        match = CHECKPOINT_RE.match(entry.name)
        if match and entry.is_dir() and (entry / "model").is_dir():
            found[int(match.group(1))] = entry
    return found


@dataclass(frozen=True)
class Choice:
    step: int
    path: Path
    select: str
    metric: str | None = None
    value: float | None = None

    def describe(self) -> dict:
        info = {"checkpoint": self.path.name, "step": self.step, "select": self.select}
        if self.metric is not None:
            info.update({"metric": self.metric, "value": self.value})
        return info


def choose(folder: Path, select: str | None, metric: str | None, bigger_is_better: bool | None,
           export_facts: dict | None = None) -> Choice:
    from recbuild.ml.exporter.selection import EVAL_FILE, best_steps, read_eval_results

    facts = export_facts or {}
    folder = Path(folder)
    checkpoints = list_checkpoints(folder)
    select = select or ("best" if facts.get("exporter_type") == "best" else "latest")
    if select not in ("latest", "best"):
        base = folder.resolve()
        target = (base / select).resolve()
        if target != base and base not in target.parents:
            raise BuildError(f"select: {select!r} points outside the checkpoints artifact; name a "
                             "checkpoint inside it (e.g. model.ckpt-40)")
        if not (target / "model").is_dir():
            listed = ", ".join(p.name for _, p in sorted(checkpoints.items())) or "(none)"
            raise BuildError(f"select: {select!r} is not a tzrec checkpoint (a folder with model/) in "
                             f"{folder.name}; checkpoints: {listed}")
        match = CHECKPOINT_RE.match(target.name)
        return Choice(int(match.group(1)) if match else 0, target, select)
    if not checkpoints:
        raise InputError(f"{folder.name}: no tzrec checkpoints (model.ckpt-<step>/model/)")
    if select == "latest":
        step = max(checkpoints)
        return Choice(step, checkpoints[step], "latest")
    metric = metric or facts.get("best_exporter_metric")
    if bigger_is_better is None:
        bigger_is_better = bool(facts.get("metric_larger_is_better", True))
    if metric is None and len({m for r in read_eval_results(folder).values() for m in r}) > 1:
        names = sorted({m for r in read_eval_results(folder).values() for m in r})
        raise BuildError(f"select: best needs `metric:` (or export_config.best_exporter_metric in the "
                         f"pipeline.config); {folder.name}/{EVAL_FILE} holds {', '.join(names)}")
    events, metric, value = best_steps(folder, checkpoints, metric, bigger_is_better, (),
                                       "model.ckpt-{step}/model")
    return Choice(events[-1], checkpoints[events[-1]], "best", metric, value)
