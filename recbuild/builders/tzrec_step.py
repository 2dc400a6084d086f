"""One tzrec entry point run as a build step: paths in, config prepared, tool run, outputs cleaned.

The flow every tzrec kind follows (recbuild/builders/tzrec_training.py, tzrec_tools.py):
  1. ``StepRun(ctx)`` resolves the interpreter and checks it has tzrec (one clear error otherwise).
  2. Paths handed to tzrec are relative to the recipe's folder (tzrec runs there) when they lie
     inside it, absolute otherwise: published files then name ``build/train``, not a machine's
     absolute path or a random temporary folder.
  3. ``prepare_config`` writes the pipeline.config the step runs with: the given config, the
     recipe's ``edit_config`` (tzrec's --edit_config_json semantics), then the paths recbuild
     declares. It is parsed and edited by tzrec's own code (helper.py). Every path-valued field left
     set must be one recbuild put there: a config that names a path the recipe did not declare is
     an error, not a hidden input.
  4. ``run`` launches the module; its output goes to ``<workdir>/.recbuild/logs/<name>.tzrec.log``
     (kept after success and failure; the error shows its last lines).
  5. ``finish`` replaces the temporary folder's path in what tzrec wrote (pipeline.config,
     checkpoint metadata) by the artifact's final path, moves TensorBoard event files (which hold
     times and host names) next to the log, and writes ``tzrec_step.json`` (what ran, deterministic).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

from recbuild.builders.base import BuildContext, InputArtifact, Progress
from recbuild.errors import BuildError, InputError
from recbuild.tzrec import runner

STEP_FILE = "tzrec_step.json"
SCRUB_MAX_BYTES = 16 << 20  # text files up to this size are checked for temporary paths
MAX_PATH_LIST = 100_000  # characters of a comma-joined file list (one argv entry is capped at 128 KiB)
TENSORBOARD_PREFIX = "events.out.tfevents."


def log_dir(ctx: BuildContext) -> Path:
    """The folder of the step's build log (the engine's file handler), else <workdir>/.recbuild/logs."""
    for handler in ctx.log.handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename).parent
    return ctx.workdir / ".recbuild" / "logs"


def relative_to_recipe(path: Path | str, recipe_dir: Path) -> str:
    path = Path(path)
    try:
        return path.resolve().relative_to(recipe_dir.resolve()).as_posix() or "."
    except ValueError:
        return str(path.resolve())


def data_files(artifact: InputArtifact) -> list[Path]:
    files = [f for f in artifact.files if f.name != "MANIFEST.json" and f.name != STEP_FILE]
    if not files and artifact.path.is_file():
        files = [artifact.path]
    return sorted(files)


def table_path(artifact: InputArtifact, recipe_dir: Path, suffix: str | None = None) -> str:
    """A tzrec input path naming exactly the files recbuild hashed for ``artifact``.

    One file -> the file; files that are exactly ``DIR/*<ext>`` -> that glob; otherwise a comma-joined
    list (tzrec splits input paths on commas and globs each part). ``suffix`` keeps only such files.
    """
    if artifact.url and not artifact.files:
        return artifact.url
    files = data_files(artifact)
    if suffix:
        files = [f for f in files if f.name.endswith(suffix)]
    if not files:
        raise InputError(f"{artifact.name!r} holds no {suffix or 'data'} files")
    if len(files) == 1:
        return relative_to_recipe(files[0], recipe_dir)
    folders = {f.parent for f in files}
    extensions = {"".join(f.suffixes[-1:]) for f in files}
    if len(folders) == 1 and len(extensions) == 1:
        folder, ext = folders.pop(), extensions.pop()
        matched = {p for p in folder.glob(f"*{ext}") if not p.name.startswith(".")}
        if matched == set(files):
            return f"{relative_to_recipe(folder, recipe_dir)}/*{ext}"
    joined = ",".join(relative_to_recipe(f, recipe_dir) for f in files)
    if len(joined) > MAX_PATH_LIST:
        raise InputError(f"{artifact.name!r} has {len(files)} files in several folders; tzrec takes "
                         "them as one comma-joined argument, which is too long: keep them in one folder")
    return joined


def folder_path(artifact: InputArtifact, recipe_dir: Path) -> str:
    path = artifact.path if artifact.path.is_dir() or not artifact.files else artifact.files[0].parent
    return relative_to_recipe(path, recipe_dir)


def is_folder_field(field: str) -> bool:
    name = field.rsplit(".", 1)[-1]
    return name.endswith("_dir") or name == "fine_tune_checkpoint"


class LogProgress:
    """Shows what tzrec logs (recbuild.tzrec.progress) on the step's progress line: the training
    step (of ``steps``) and epoch, the loss, and the last evaluation's figures (``eval recall@5``:
    tzrec's own evaluation, told apart from recbuild's recall_eval); batches while predicting."""

    def __init__(self, progress: Progress, steps: int | None = None, epochs: int | None = None):
        self.progress, self.steps, self.epochs = progress, steps, epochs
        self.training = ""  # the label to go back to after an evaluation

    def line(self, text: str) -> None:
        from recbuild.tzrec.progress import parse

        event = parse(text)
        if event is None:
            return
        p = self.progress
        if event.what == "train":
            if p.unit != "steps":
                p.phase("training", self.steps, "steps")
            epoch = f"epoch {event.epoch + 1}" + (f"/{self.epochs}" if self.epochs else "")
            self.training = f"training, {epoch}"
            p.label(self.training)
            p.done = float(event.step + 1)  # tzrec logs the index of the step it just ran
            loss = event.figures.get("total_loss")
            if loss is not None:
                p.note(loss=loss)
        elif event.what == "checkpoint":
            p.label(f"saving model.ckpt-{event.step}")
        elif event.what == "evaluating":
            p.label(f"evaluating model.ckpt-{event.step}" if event.step is not None else "evaluating")
        elif event.what == "eval":
            p.label(self.training or "evaluated")
            p.note(**{f"eval {name}": value for name, value in event.figures.items()})
        elif event.what == "finished":
            p.label("finishing")  # the tool's last words; it exits (and recbuild checks its files)
            if p.unit == "steps" and p.total:
                p.done = float(p.total)  # (tzrec logs a step at most once a second: the last may be unsaid)
        elif event.what == "predict":
            if p.unit != "batches":
                p.phase("predicting", None, "batches")
            p.done = float(event.batches)


class StepRun:
    """The environment, paths and log of one tzrec step (see the module docstring)."""

    def __init__(self, ctx: BuildContext, step: str):
        self.ctx = ctx
        self.step = step
        self.tz = runner.environment(ctx.params.get("tzrec"))
        self.info = runner.require_tzrec(self.tz.python)
        self.cwd = ctx.recipe_dir
        self.final = ctx.workdir / ctx.name
        self.scratch = ctx.out.parent / f"{ctx.out.name}.tzrec"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.logs = log_dir(ctx)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log_path = self.logs / f"{ctx.name}.tzrec.log"
        self.log_path.write_bytes(b"")
        self.declared: set[str] = set()  # path values recbuild handed to tzrec
        self.moves: list[tuple[Path, Path]] = []  # (where tzrec wrote, where it now is)
        self.commands: list[dict[str, Any]] = []
        ctx.log.info("tzrec %s %s (%s); tzrec output: %s", self.info.get("dist"), self.info.get("version"),
                     self.tz.python, self.log_path)

    # -- paths
    def rel(self, path: Path | str) -> str:
        return relative_to_recipe(path, self.cwd)

    def out(self, sub: str = "") -> str:
        return self.rel(self.ctx.out / sub) if sub else self.rel(self.ctx.out)

    def table(self, artifact: InputArtifact, suffix: str | None = ".parquet") -> str:
        value = table_path(artifact, self.cwd, suffix)
        self.declared.add(value)
        return value

    def folder(self, artifact: InputArtifact) -> str:
        value = folder_path(artifact, self.cwd)
        self.declared.add(value)
        return value

    def declare(self, value: str) -> str:
        self.declared.add(value)
        return value

    # -- pipeline.config
    def prepare_config(self, source: Path, edits: dict[str, Any], path_edits: dict[str, str],
                       where: str, name: str = "pipeline.config") -> tuple[Path, dict]:
        """Write the config the step runs with; returns (its path, facts about it)."""
        merged = dict(edits or {})
        merged.update(path_edits)
        for value in path_edits.values():
            if value:
                self.declared.add(value)
        target = self.scratch / name
        answer = runner.call_helper(self.tz.python, "config",
                                    {"in": str(source), "edits": merged, "out": str(target)},
                                    self.tz.process_env())
        if answer.get("error"):
            raise BuildError(f"{where}: tzrec cannot use it: {answer['error']}")
        undeclared = [(field, value) for field, value in answer.get("paths", [])
                      if value not in self.declared]
        if undeclared:
            shown = "; ".join(f"{field} = {value!r}" for field, value in undeclared)
            raise InputError(
                f"{where} names path(s) the recipe does not declare: {shown}. recbuild must hash every "
                "file a step reads: declare each as `inputs: {FIELD: SOURCE_OR_ARTIFACT}` on this "
                "artifact (a source `{path: ...}` or an artifact name), or clear it with "
                "`edit_config: {FIELD: \"\"}`")
        return target, answer.get("facts", {})

    # -- running
    def run(self, module: str, args: Sequence[str], *, distributed: bool, seed: int | None = None,
            steps: int | None = None, epochs: int | None = None) -> None:
        """Run the tool; its log's steps, losses and eval figures go to the step's progress line
        (``steps``/``epochs``: the training's expected totals, when known)."""
        args = [str(a) for a in args]
        progress = self.ctx.progress(None, "", f"running {module}")  # the line says which tzrec tool runs
        shown = LogProgress(progress, steps, epochs)
        argv = runner.run_module(self.tz, module, args, distributed=distributed, cwd=self.cwd,
                                 log_path=self.log_path, what=f"tzrec {self.step}", seed=seed,
                                 boot_dir=self.scratch / "boot", on_line=shown.line)
        self.ctx.log.info("ran: %s", " ".join(argv))
        command = {"module": module, "args": [self._final_text(a) for a in args],
                   "launcher": "distributed" if distributed else "tool"}
        if seed is not None:
            command["seed"] = seed
        self.commands.append(command)

    def _replacements(self) -> list[tuple[str, str]]:
        final_rel = self.rel(self.final)
        pairs = []
        for written, now in self.moves:
            target = final_rel if now == self.ctx.out else self.rel(now)
            pairs += [(str(written.resolve()), target), (str(written), target), (self.rel(written), target)]
        pairs += [(str(self.ctx.out.resolve()), final_rel), (str(self.ctx.out), final_rel),
                 (self.out(), final_rel)]
        scratch_rel = self.rel(self.scratch)
        pairs += [(str(self.scratch.resolve()), "<recbuild>"), (scratch_rel, "<recbuild>")]
        seen, ordered = set(), []
        # longest first, so a moved subfolder (and the scratch folder, <out>.tzrec) wins over <out>
        for old, new in sorted(pairs, key=lambda p: -len(p[0])):
            if old not in seen:
                seen.add(old)
                ordered.append((old, new))
        return ordered

    def _final_text(self, text: str) -> str:
        for old, new in self._replacements():
            text = text.replace(old, new)
        return text

    def relocate(self, written: Path) -> None:
        """Move what tzrec wrote into ``written`` (a folder it insisted on creating itself) up into
        the artifact, remembering the move so paths naming ``written`` are rewritten too."""
        for child in sorted(written.iterdir()):
            shutil.move(str(child), self.ctx.out / child.name)
        written.rmdir()
        self.moves.append((written, self.ctx.out))

    # -- after the run
    def finish(self, facts: dict[str, Any] | None = None) -> None:
        out = self.ctx.out
        self._move_tensorboard()
        if any(out.rglob(".metadata")):
            answer = runner.call_helper(self.tz.python, "scrub_dcp", {"dir": str(out)}, self.tz.process_env())
            if answer.get("error"):
                raise BuildError(f"could not rewrite the checkpoint metadata: {answer['error']}")
        marker = out.name.encode()  # the random temporary folder name, e.g. "train-3f9a1c0b2e"
        left = []
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            if path.stat().st_size > SCRUB_MAX_BYTES:
                continue
            data = path.read_bytes()
            if marker not in data:
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                left.append(path.relative_to(out).as_posix())
                continue
            path.write_text(self._final_text(text), encoding="utf-8")
            if marker in path.read_bytes():
                left.append(path.relative_to(out).as_posix())
        if left:
            self.ctx.log.warning("the temporary build path remains in %s", ", ".join(left))
            self.ctx.meta["temporary_path_in"] = left
        doc = {"step": self.step, "tzrec": f"{self.info.get('dist')} {self.info.get('version')}",
               "commands": self.commands}
        if facts:
            doc.update(facts)
        (out / STEP_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def _move_tensorboard(self) -> None:
        events = [p for p in self.ctx.out.rglob(f"{TENSORBOARD_PREFIX}*") if p.is_file()]
        if not events:
            return
        target = self.logs / f"{self.ctx.name}.tensorboard"
        shutil.rmtree(target, ignore_errors=True)
        for path in events:
            destination = target / path.relative_to(self.ctx.out)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), destination)
        for folder in sorted((p for p in self.ctx.out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()
        self.ctx.log.info("TensorBoard events (times, host names) moved out of the artifact to %s", target)

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def csv(values: Iterable[str]) -> str:
    return ",".join(values)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        os.remove(path)
