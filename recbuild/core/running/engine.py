"""Runs a recipe's graph on doit, in-process: plans what is not current, runs each source and
artifact step (staged build, MANIFEST.json, publish), restores from and pushes to the shared cache,
and records metrics and the run's headlines. The doit machinery itself (loader, checker, reporter,
state database) is in doit_adapter.py.

It never prints: progress and results go to the ``events`` object the CLI passes in (see
events.py and ui/terminal.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

from recbuild.builders.base import BuildContext, Builder
from recbuild.core.cache.store import ArtifactCache, CacheError, CorruptEntry
from recbuild.core.running.doit_adapter import doit_config, reset_unreadable_state_db, run_doit
from recbuild.core.running.options import MakeOptions
from recbuild.core.running.events import ADOPTED, BUILT, HASHED, RESTORED, UP_TO_DATE, Events
from recbuild.errors import InputChangedDuringBuild, Interrupted, RecbuildError
from recbuild.core.recipe.graph import Graph
from recbuild.core.workdir.lock import WorkdirLock
from recbuild.core.workdir.metrics import METRICS_FILE
from recbuild.core.workdir.metrics import record as record_metrics
from recbuild.core.workdir.manifest import artifact_folders, check_replaceable, make_manifest, publish, write_manifest
from recbuild.core.workdir.workspace import Workspace


class Executor(Protocol):
    """Builds stale steps somewhere else than this process (core/running/cluster.py: on Ray).
    The engine plans, keys and restores as always; ``build`` returns what ``run_artifact`` does
    (None, or the failure from ``engine._fail``) with the artifact published and recorded."""

    files_in_store: set[str]  # artifacts whose files may stay in the shared cache (leave_in_store)

    def start(self, engine: "Engine", names: list[str]) -> None: ...
    def build(self, engine: "Engine", name: str, key: str, material: dict) -> Any: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


class Engine:
    def __init__(self, graph: Graph, builders: dict, events: Events, cache: ArtifactCache | None = None,
                 executor: Executor | None = None):
        self.graph = graph
        self.builders = builders
        self.events = events
        self.cache = cache
        self.executor = executor  # None: stale steps build in this process
        self._corrupt_keys: set[str] = set()
        self.ws = Workspace(graph, builders)
        if executor is not None:
            self.ws.files_in_store_ok = set(executor.files_in_store)
        self.outcomes: dict[str, tuple[str, str]] = {}
        self.started: dict[str, float] = {}
        self.failures: dict[str, str] = {}
        self._planned: dict = {}  # name -> Status, from make's plan

    # ---------------------------------------------------------------------------- actions
    def source_uptodate(self, name: str) -> bool:
        try:
            return self.ws.source_status(name).current
        except RecbuildError:
            return False

    def artifact_uptodate(self, name: str) -> bool:
        try:
            return self.ws.artifact_status(name).current
        except RecbuildError:
            return False

    def run_source(self, name: str):
        try:
            self.ws.forget_scan(name)
            scan = self.ws.scan(name)
            old = self.ws.manifest(name)
            if old is not None and old.get("digest") == scan.digest:
                self.outcomes[name] = (UP_TO_DATE, "")
                return None
            folder = self.ws.folder(name)
            folder.mkdir(parents=True, exist_ok=True)
            node = self.graph.nodes[name]
            manifest = {"kind": "source", "key": scan.digest, "hash": "xxh3_128", "digest": scan.digest,
                        "files": scan.entries, "inputs": {}, "params": {"path": node.params["path"]}}
            write_manifest(folder, manifest)
        except RecbuildError as exc:
            return self._fail(name, exc.message)
        except OSError as exc:
            return self._fail(name, _os_error_text(exc))
        except Exception as exc:  # a bug: one line with its cause, never doit's bare "PythonAction Error"
            return self._fail(name, f"{type(exc).__name__}: {exc}".strip())
        self.ws.set_manifest(name, manifest)
        self.outcomes[name] = (HASHED, f"{len(scan.entries)} files")
        return None

    def run_artifact(self, name: str, force: bool):
        node = self.graph.nodes[name]
        ws = self.ws
        ws.forget_manifest(name)
        material = ws.key_material(name)
        if material is None:
            return self._fail(name, "an input is missing; build its upstream first")
        planned = self._planned.get(name)
        # Ask again only when the answer can have changed since the plan: an upstream rebuilt to
        # identical bytes (early cut-off), or no plan at all (plain doit).
        if not force and (planned is None or planned.only_upstream) and ws.artifact_status(name).current:
            self.outcomes[name] = (ADOPTED, "")
            return None
        key = ws.key(name)
        try:  # before any work: a folder in the way that recbuild did not make is never replaced
            check_replaceable(ws.folder(name))
        except RecbuildError as exc:
            return self._fail(name, exc.message)
        if self.cache is not None and not force and self._restore(name, key):
            return None
        if self.executor is not None:
            return self.executor.build(self, name, key, material)
        staged = ws.tmp_dir / f"{name}-{os.urandom(5).hex()}"
        os.mkdir(staged)  # (tmp/ exists: made at the start of make)
        log = self._logger(name)
        try:
            builder = self.builders[node.kind]()
            ctx = BuildContext(
                name=name, kind=node.kind, params=dict(node.params), out=staged,
                inputs=ws.inputs_for(name), recipe_dir=self.graph.recipe.dir, workdir=ws.workdir,
                model=self.graph.recipe.model_for(name), log=log, log_path=self._log_path(name),
                _progress_factory=lambda total, unit: self.events.progress(name, total, unit),
                _on_warning=lambda message: self.events.warn(f"{name}: {message}"))
            with torch_turn(builder, log):
                # the base class's run, not an override: a plugin written before run() existed may
                # have a method of that name with another meaning
                Builder.run(builder, ctx)
            manifest = make_manifest(staged, kind=node.kind, key=key, inputs=material["inputs"],
                                     params=material["params"], cache=ws.cache, meta=ctx.meta or None)
            manifest.update(ws.manifest_extras(name))
            write_manifest(staged, manifest)
            self._check_inputs_unchanged(name, material)  # as late as can be: right before publish
            publish(staged, ws.folder(name), ws.tmp_dir)
        except RecbuildError as exc:
            return self._fail(name, exc.message, log)
        except OSError as exc:  # disk full, unwritable workdir, input vanished mid-build
            log.exception("%s", "the step failed")
            return self._fail(name, _os_error_text(exc), log)
        except Exception as exc:  # a bug or an unexpected library error: keep the traceback in the log
            log.exception("%s", "the step failed")
            detail = f"{type(exc).__name__}: {exc}".strip()
            return self._fail(name, f"{detail} (traceback in {self._log_path(name)})", log)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
            _close_logger(log)
        ws.set_manifest(name, manifest)
        self._remember_published(name, manifest)
        self._record_metrics(name, key)
        self.outcomes[name] = (BUILT, "")
        if self.cache is not None and self.cache.push_enabled:
            try:
                self.cache.push(ws.folder(name), manifest, replace=key in self._corrupt_keys)
            except Exception as exc:  # an unreachable cache must not fail a good build
                self.events.warn(f"{name}: could not upload to cache {self.cache.url}: {exc}")
        return None

    def _check_inputs_unchanged(self, name: str, material: dict) -> None:
        """Every input the key was computed from still has that content (stat first, content where
        the stat changed), or InputChangedDuringBuild: a file saved while the step ran may or may not
        be in the output, which must then be neither published nor pushed under the old key."""
        ws = self.ws
        for edge in self.graph.edges[name]:
            expected = material["inputs"].get(edge.role)
            changed = ws.input_change(edge.upstream, expected)
            if changed:
                raise InputChangedDuringBuild(
                    f"input {changed} changed while the step ran, so the output may hold either "
                    f"version; nothing was published or pushed (the previous {name} is kept): run "
                    "make again")

    def _not_current(self, names: list[str], always: bool) -> list[str]:
        """The nodes doit has to look at. Those already current (their own key, their inputs and
        their files all check out, see Workspace.plan) are reported up to date here and never
        handed to doit: a no-op make does not even import it, and a graph of thousands of
        artifacts pays doit's per-task cost only for what changed."""
        if always:
            return names
        plan = self.ws.plan(names)
        self._planned = plan
        todo = []
        for name in names:
            if plan[name].current:
                node = self.graph.nodes[name]
                self.outcomes[name] = (UP_TO_DATE, "")
                if not node.is_file_source:
                    self.events.step_finished(name, node.kind, UP_TO_DATE, 0.0, "")
            else:
                todo.append(name)
        return todo

    def _remember_published(self, name: str, manifest: dict) -> None:
        """The published files' digests under their final paths (they were hashed in tmp/)."""
        folder = os.fspath(self.ws.folder(name))
        for rel, entry in manifest.get("files", {}).items():
            path = os.path.join(folder, rel)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_size == entry["size"]:
                self.ws.cache.remember(path, st, entry["digest"])
        for listed in artifact_folders(folder, manifest.get("files", {}), manifest.get("dirs", [])):
            self.ws.cache.remember_listing(listed, settled=True)

    def _headlines(self, names: list[str]) -> dict[str, dict[str, float]]:
        """The figures worth a glance of what this run built or restored (each kind's ``headline``)."""
        from recbuild.core.workdir.metrics import family_of, ordered, read

        found = {}
        for name in names:
            if self.outcomes.get(name, ("",))[0] not in (BUILT, RESTORED):
                continue
            wanted = self.builders[self.graph.nodes[name].kind].headline
            path = self.ws.folder(name) / METRICS_FILE
            if not wanted or not path.is_file():
                continue
            try:
                numbers = read(path)
            except (OSError, ValueError, RecursionError):
                continue
            picked = {m: numbers[m] for m in ordered(numbers) if family_of(m) in wanted}
            if picked:
                found[name] = picked
        return found

    def _record_metrics(self, name: str, key: str) -> None:
        """A published artifact that measured something adds its figures to the history."""
        path = self.ws.folder(name) / METRICS_FILE
        if path.is_file():
            record_metrics(self.ws.workdir, self.graph.recipe.dir, name, key, path)

    def _restore(self, name: str, key: str) -> bool:
        """Restore ``name`` from the shared cache if an intact entry exists; True on success."""
        ws = self.ws
        staged = ws.tmp_dir / f"{name}-cache-{os.urandom(5).hex()}"
        try:
            if self.cache.lookup(key) is None:
                return False
            staged.mkdir(parents=True)
            manifest = self.cache.restore(key, staged, ws.cache)
            publish(staged, ws.folder(name), ws.tmp_dir)
        except CorruptEntry as exc:
            self._corrupt_keys.add(key)
            self.events.warn(f"{name}: {exc}; rebuilding instead")
            return False
        except (CacheError, OSError) as exc:
            self.events.warn(f"{name}: cache unavailable ({exc}); building instead")
            return False
        except RecbuildError as exc:  # e.g. an entry holding what no artifact may hold
            self._corrupt_keys.add(key)
            self.events.warn(f"{name}: cache entry {key} is unusable ({exc}); rebuilding instead")
            return False
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        ws.set_manifest(name, manifest)
        self._remember_published(name, manifest)
        self._record_metrics(name, key)
        self.outcomes[name] = (RESTORED, "")
        return True

    def _fail(self, name: str, message: str, log: logging.Logger | None = None):
        node = self.graph.nodes[name]
        # one error, one line: builders' multi-line texts are folded
        message = " ".join(part.strip() for part in message.splitlines() if part.strip())
        located = f"{node.loc}: {node.section}.{name}: {message}"  # the location first, as in recipe errors
        self.failures[name] = located
        if log is not None:
            log.error("%s", located)
        from doit.exceptions import TaskFailed

        return TaskFailed(located)

    # ---------------------------------------------------------------------------- logs
    def _log_path(self, name: str) -> Path:
        safe = name.replace("/", "_")
        return self.ws.log_dir / f"{safe}.log"

    def _logger(self, name: str) -> logging.Logger:
        # Not logging.getLogger: registered loggers are never freed and each setLevel walks them
        # all, which a graph of thousands of steps pays quadratically.
        logger = logging.Logger(f"recbuild.build.{name}", logging.INFO)
        logger.propagate = False
        handler = logging.FileHandler(self._log_path(name), mode="w", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        return logger

    # ---------------------------------------------------------------------------- doit
    def task_dicts(self, names: list[str], force: bool, decided: bool = False) -> list[dict[str, Any]]:
        """One doit task per node (also what dodo.py hands to plain doit). ``decided``: the names
        are known not to be current (make's plan), so doit need not ask again; each action still
        checks first and adopts what an upstream's identical rebuild left current (early cut-off)."""
        specs = []
        given = set(names)
        for name in names:
            node = self.graph.nodes[name]
            deps = [e.upstream for e in self.graph.edges[name]]
            spec: dict[str, Any] = {
                "name": name,
                "doc": node.kind,
                "targets": [str(self.ws.manifest_path(name))],
                "file_dep": [str(self.ws.manifest_path(d)) for d in deps],
                "task_dep": [d for d in deps if d in given],  # a current upstream is no task here
                "verbosity": 0,
                "meta": {"kind": node.kind, "file_source": node.is_file_source},
            }
            if node.is_file_source:
                spec["actions"] = [(self.run_source, [name])]
                spec["uptodate"] = [False] if decided else [(self.source_uptodate, [name], {})]
            else:
                spec["actions"] = [(self.run_artifact, [name, force])]
                spec["uptodate"] = [False] if decided else [(self.artifact_uptodate, [name], {})]
            specs.append(spec)
        return specs

    @property
    def state_db(self) -> Path:
        return self.ws.state_dir / "doit.sqlite"

    def doit_config(self, options: "MakeOptions") -> dict[str, Any]:
        """doit's settings for this engine's runs (dodo.py hands them to plain doit)."""
        return doit_config(self, options)

    def make(self, options: MakeOptions) -> int:
        """Build the targets; returns 0 or 1. Raises Interrupted on SIGINT/SIGTERM."""
        targets = options.targets or self.graph.default_targets()
        names = self.graph.closure(targets)
        self.ws.state_dir.mkdir(parents=True, exist_ok=True)
        with WorkdirLock(self.ws.state_dir, wait=options.wait):
            shutil.rmtree(self.ws.tmp_dir, ignore_errors=True)  # leftovers of killed builds
            self.ws.tmp_dir.mkdir(parents=True, exist_ok=True)
            self.ws.log_dir.mkdir(parents=True, exist_ok=True)
            for warning in [*self.ws.cache.warnings, *reset_unreadable_state_db(self.state_db)]:
                self.events.warn(warning)
            # steps on a cluster only wait here: -j bounds the steps in flight, not this machine's threads
            limit = max_jobs() if self.executor is None else options.jobs
            jobs = min(options.jobs, len(names), limit)
            if options.jobs > limit:
                self.events.warn(f"-j {options.jobs} is far above this machine's {os.cpu_count()} CPUs; "
                                 f"running at most {max_jobs()} steps at once")
            options = dataclasses.replace(options, jobs=max(jobs, 1))
            self.events.run_started([n for n in names])
            started = time.perf_counter()
            try:
                todo = self._not_current(names, options.always)
                if todo and self.executor is not None:  # an unreachable cluster fails here, before any work
                    self.executor.start(self, todo)
                code = run_doit(self, todo, options) if todo else 0
            except KeyboardInterrupt:
                if self.executor is not None:
                    self.executor.cancel()
                raise Interrupted("interrupted; completed artifacts are kept, the running step "
                                  "was abandoned (its previous artifact is intact)") from None
            finally:
                if self.executor is not None:
                    self.executor.close()
                self.ws.cache.close()
            stats = {"seconds": time.perf_counter() - started, "headlines": self._headlines(names),
                     "files_hashed": self.ws.cache.stats.files_hashed,
                     "bytes_hashed": self.ws.cache.stats.bytes_hashed,
                     "failed": len(self.failures)}
            self.events.run_finished(stats)
        if code == 0 and not self.failures:
            return 0
        return 1



def max_jobs() -> int:
    """More parallel steps than this only adds threads (each torch step already uses every core)."""
    return 8 * (os.cpu_count() or 1)



# make -j N runs steps on threads of one process. torch's RNG (seeded model init), thread pool and
# export tracer are process-wide, so two torch steps at once would break determinism (interleaved
# seeds) or fail outright (torch.export is not thread-safe). They take turns; everything else
# (commands, sample data, faiss, cache transfers, hashing) still runs in parallel.
_TORCH_TURN = threading.Lock()


@contextmanager
def torch_turn(builder, log: logging.Logger) -> Iterator[None]:
    if not builder.uses_torch:
        yield
        return
    if not _TORCH_TURN.acquire(blocking=False):
        log.info("waiting for the torch step that is running (torch steps take turns under -j)")
        _TORCH_TURN.acquire()
    try:
        yield
    finally:
        _TORCH_TURN.release()




def _os_error_text(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    return (f"{exc.strerror or exc}{where} (check free space and permissions; "
            "the previous artifact is kept)")


def _close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
