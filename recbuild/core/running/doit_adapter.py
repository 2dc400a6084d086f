"""The doit side of the engine: the task loader over a validated recipe, the file checker
(content digests; early cut-off through MANIFEST.json digests), the reporter that turns doit's
hooks into the engine's Events, doit's configuration, and the repair of an unreadable state
database. With dodo.py the only code that imports doit, and only on a real build (a no-op make
never imports it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from recbuild.core.running.events import BUILT, UP_TO_DATE, Events
from recbuild.core.running.options import MakeOptions
from recbuild.core.workdir.manifest import MANIFEST_NAME

if TYPE_CHECKING:
    from recbuild.core.recipe.graph import Graph
    from recbuild.core.workdir.workspace import Workspace


class Engine(Protocol):
    """What the adapter needs of the engine that drives it (recbuild.core.running.engine.Engine): the
    protocol keeps the import one-way, engine -> adapter."""

    ws: Workspace
    graph: Graph
    events: Events
    started: dict[str, float]
    outcomes: dict[str, tuple[str, str]]
    failures: dict[str, str]

    @property
    def state_db(self) -> Path: ...

    def task_dicts(self, names: list[str], force: bool, decided: bool = False) -> list[dict]: ...


def run_doit(engine: Engine, todo: list[str], options: MakeOptions) -> int:
    """Run doit in-process on the ``todo`` nodes; returns doit's exit code."""
    from doit.doit_cmd import DoitMain

    loader = _doit_classes()[0](engine, todo, options)
    return DoitMain(loader, config_filenames=()).run(["run", *todo])


def doit_config(engine: Engine, options: MakeOptions) -> dict[str, Any]:
    """doit's settings for a run of ``engine``: our state database, checker and reporter."""
    checker = _doit_classes()[1]
    checker.workspace = engine.ws
    return {
        "dep_file": str(engine.state_db),
        "backend": "sqlite3",
        "check_file_uptodate": checker,
        "reporter": _Reporter(engine),
        "verbosity": 0,
        "num_process": options.jobs if options.jobs > 1 else 0,
        "par_type": "thread",
        "continue": options.keep_going,
        "always": options.always,
        "failure_verbosity": 0,
    }


@functools.lru_cache(maxsize=1)
def _doit_classes():
    """doit's base classes, imported on the first real build (a no-op make never imports doit)."""
    from doit.cmd_base import TaskLoader2
    from doit.dependency import FileChangedChecker

    class RecipeLoader(TaskLoader2):
        """doit TaskLoader2 over an already validated recipe (never reads doit config files)."""

        def __init__(self, engine: Engine, names: list[str], options: MakeOptions):
            super().__init__()
            self.engine = engine
            self.names = names
            self.options = options

        def setup(self, opt_values):
            pass

        def load_doit_config(self):
            return doit_config(self.engine, self.options)

        def load_tasks(self, cmd, pos_args):
            from doit.task import dict_to_task

            return [dict_to_task(spec)
                    for spec in self.engine.task_dicts(self.names, self.options.always, decided=True)]

    class _Checker(_CheckerMixin, FileChangedChecker):  # (the name is in doit's db: keep it)
        pass

    return RecipeLoader, _Checker


def reset_unreadable_state_db(path: Path) -> list[str]:
    """doit's database is a cache of what ran: when it is unreadable (garbage, truncated, another
    schema, rows that are not JSON objects) doit would print its traceback. Remove it instead; the
    manifests on disk let the next make adopt every artifact that is still intact. Returns the
    warning to show, if any."""
    import json
    import sqlite3

    if not path.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            columns = [row[1] for row in db.execute("PRAGMA table_info(doit)")]
            if columns and columns != ["task_id", "task_data"]:
                raise ValueError(f"table doit has columns {columns}")
            for task_id, data in (db.execute("SELECT task_id, task_data FROM doit") if columns else ()):
                if not isinstance(task_id, str) or not isinstance(json.loads(data), dict):
                    raise ValueError(f"a row for {task_id!r} is not a task record")
    except (sqlite3.Error, ValueError, TypeError, RecursionError) as exc:
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
        return [f"the state database {path} was unreadable ({str(exc)[:120]}); starting a new one "
                "(intact artifacts are adopted, not rebuilt)"]
    return []


class _CheckerMixin:
    """doit file checker: content digests through the stat cache; a MANIFEST.json's digest is the
    digest of the artifact's files (its ``digest`` field), so a rebuilt-identical upstream is
    unchanged for its dependents (early cut-off) even though its key or params moved."""

    workspace: Workspace | None = None

    def _digest(self, path: str) -> str:
        if os.path.basename(path) == MANIFEST_NAME:
            from recbuild.core.workdir.manifest import read_manifest

            manifest = read_manifest(Path(path).parent)
            return manifest["digest"] if manifest else ""
        return self.workspace.cache.file_digest(path)

    def check_modified(self, file_path, file_stat, state):
        return self._digest(file_path) != state

    def get_state(self, dep, current_state):
        digest = self._digest(dep)
        return None if digest == current_state else digest


class _Reporter:
    """Adapter from doit's reporter hooks to the engine's Events."""

    desc = "recbuild"

    def __init__(self, engine: Engine):
        self.engine = engine

    def _kind(self, task) -> str:
        return (getattr(task, "meta", None) or {}).get("kind", "")

    def _quiet_source(self, task) -> bool:
        return bool((getattr(task, "meta", None) or {}).get("file_source"))

    def initialize(self, tasks, selected_tasks):
        pass

    def get_status(self, task):
        pass

    def execute_task(self, task):
        self.engine.started[task.name] = time.perf_counter()
        if not self._quiet_source(task):
            self.engine.events.step_started(task.name, self._kind(task))

    def add_success(self, task):
        seconds = time.perf_counter() - self.engine.started.get(task.name, time.perf_counter())
        outcome, detail = self.engine.outcomes.get(task.name, (BUILT, ""))
        self.engine.events.step_finished(task.name, self._kind(task), outcome, seconds, detail)

    def add_failure(self, task, fail):
        seconds = time.perf_counter() - self.engine.started.get(task.name, time.perf_counter())
        from doit.exceptions import UnmetDependency

        if isinstance(fail, UnmetDependency):
            self.engine.failures.setdefault(task.name, "skipped")
            self.engine.events.step_skipped(task.name, self._kind(task),
                                            f"upstream failed: {fail.message.strip()}")
            return
        message = self.engine.failures.get(task.name)
        if message is None:  # a failure doit saw before our action ran: located the same way
            node = self.engine.graph.nodes.get(task.name)
            text = (fail.message or fail.get_msg()).strip().splitlines()[-1]
            message = f"{node.loc}: {node.section}.{task.name}: {text}" if node else text
            self.engine.failures[task.name] = message
        self.engine.events.step_failed(task.name, self._kind(task), message, seconds)

    def skip_uptodate(self, task):
        self.engine.events.step_finished(task.name, self._kind(task), UP_TO_DATE, 0.0, "")

    def skip_ignore(self, task):
        pass

    def cleanup_error(self, exception):
        pass

    def runtime_error(self, msg):
        self.engine.failures.setdefault("(doit)", msg)
        self.engine.events.step_failed("(doit)", "", msg.strip(), 0.0)

    def teardown_task(self, task):
        pass

    def complete_run(self):
        pass

