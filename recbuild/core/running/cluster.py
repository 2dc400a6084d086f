"""Stale steps as Ray tasks on a cluster (the recipe's ``cluster:``, or ``make --cluster ADDRESS``).

The client (``recbuild make``) plans, computes keys and looks up the shared cache exactly as for a
local build: only a step the cache cannot restore reaches :meth:`RayExecutor.build`. There it
becomes one Ray task named ``recbuild:<artifact>`` with the step's ``resources``. The task runs
:func:`build_on_node` on a node: it fetches each input from the shared store by its key (local
sources are uploaded there once, content-addressed; URL sources are read where they are), runs
the same builder code as a local build (``Builder.run`` with a ``BuildContext``) in a temporary
folder, writes the manifest and pushes the verified entry. The client then restores the entry into
the workdir like any cache hit and records it. Nothing on a node reads a path of the client.
With ``cluster.leave_in_store`` an intermediate artifact is not restored: the workdir records its
manifest alone (build without the bytes; see Workspace.files_in_store_ok).

Ray core only: tasks, ``max_retries`` for a node that dies, ``ray.cancel`` on Ctrl-C, one small
actor through which running steps report their progress. No scheduler or transport of our own:
the store is the recipe's cache, the scheduling is Ray's.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from recbuild.common.sizes import size_bytes
from recbuild.core.cache.store import ArtifactCache, CacheError
from recbuild.core.running.events import BUILT
from recbuild.errors import RecbuildError, RecipeError

POLL_SECONDS = 0.5  # how often a waiting step looks at its task and its progress
FEASIBLE_CHECK_SECONDS = 5.0  # how often it asks whether a node that can run it is still alive
GRACE_SECONDS = 5.0  # Ctrl-C: how long a cancelled step has to stop its commands before its worker is killed
LOG_LIMIT = 4 << 20  # the tail of a remote step's log that comes back to the client


class ClusterError(RecbuildError):
    """The cluster cannot be used: unreachable, or no node has what a step needs (exit 1)."""


def task_name(name: str) -> str:
    """``recbuild:<artifact>``; a matrix variant is already named ``<artifact>@<variant>``."""
    return f"recbuild:{name}"


def ray_request(resources: dict[str, Any]) -> dict[str, float]:
    """A step's ``resources`` as Ray resource names and amounts (CPU, GPU, memory, custom)."""
    request: dict[str, float] = {}
    if resources.get("cpus") is not None:
        request["CPU"] = float(resources["cpus"])
    if resources.get("gpus"):
        request["GPU"] = float(resources["gpus"])
    if resources.get("memory") is not None:
        request["memory"] = float(size_bytes(resources["memory"]))
    for key, amount in (resources.get("custom") or {}).items():
        request[key] = float(amount)
    return request


def _shown(request: dict[str, float]) -> str:
    parts = []
    for key, amount in request.items():
        if key.startswith("node:") or key == "object_store_memory":  # Ray's own bookkeeping
            continue
        if key == "memory":
            parts.append(f"memory {amount / 2**30:.3g}GiB")
        else:
            parts.append(f"{key} {amount:g}")
    return ", ".join(parts) or "nothing"


def _fits(request: dict[str, float], offered: dict[str, float]) -> bool:
    return all(offered.get(key, 0.0) >= amount for key, amount in request.items() if amount > 0)


def _task_options(request: dict[str, float]) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": request.get("CPU", 1.0), "num_gpus": request.get("GPU", 0.0)}
    if "memory" in request:
        options["memory"] = request["memory"]
    custom = {k: v for k, v in request.items() if k not in ("CPU", "GPU", "memory")}
    if custom:
        options["resources"] = custom
    return options


# ------------------------------------------------------------------------------------ the client


class RayExecutor:
    """The engine's executor for ``cluster: {kind: ray}`` (see engine.Executor)."""

    def __init__(self, address: str, cache: ArtifactCache, max_retries: int = 3,
                 files_in_store: set[str] | None = None):
        self.address = address
        self.files_in_store = set(files_in_store or ())  # built there, their files are not downloaded
        self.cache = cache
        self.max_retries = max_retries
        self._running: dict[str, Any] = {}  # artifact -> ObjectRef of its task
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._uploaded: set[str] = set()  # store keys known to be in the store this run
        self._board = None
        self._remote = None
        self._connected = False

    # -- before any work
    def start(self, engine, names: list[str]) -> None:
        """Connect, and check that every step to build can run on some node of the cluster."""
        self._connect()
        offered = self._alive_offers()
        problems = []
        for name in names:
            node = engine.graph.nodes[name]
            if node.is_file_source:
                continue
            request = ray_request(node.resources)
            if not any(_fits(request, offer) for offer in offered.values()):
                problems.append(f"{node.loc}: {node.section}.{name}.resources: no node of the Ray cluster "
                                f"at {self.address} has {_shown(request)} (nodes offer: "
                                f"{'; '.join(_shown(o) for o in offered.values()) or 'none'}); "
                                "change the step's `resources:` or start a node that has them")
        if problems:
            raise RecipeError(problems)
        import ray

        self._remote = ray.remote(build_on_node)
        self._board = ray.remote(num_cpus=0)(ProgressBoard).remote()

    def _connect(self) -> None:
        import ray

        address = self.address
        hostport = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address)
        if hostport:  # a refused or silent port fails in seconds here, not after Ray's long retries
            try:
                socket.create_connection((hostport.group(1), int(hostport.group(2))), timeout=5).close()
            except OSError as exc:
                raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                                   "(start it with `ray start --head`, check the address, or build "
                                   "here with --cluster local); nothing was built") from None
        if ray.is_initialized():
            self._connected = False
            return
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR,
                     configure_logging=False)
        except Exception as exc:  # ConnectionError, a version or auth mismatch, no cluster at "auto"
            text = " ".join(str(exc).split())[:300]
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {text} (check the "
                               "address, the token, and that the nodes run the same Ray; or build here "
                               "with --cluster local); nothing was built") from None
        self._connected = True

    def _alive_offers(self) -> dict[str, dict[str, float]]:
        import ray

        return {n["NodeID"]: dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")}

    # -- one step
    def build(self, engine, name: str, key: str, material: dict):
        import ray

        node = engine.graph.nodes[name]
        log_path = engine._log_path(name)
        try:
            inputs = self._inputs(engine, name)
        except (CacheError, OSError, RecbuildError) as exc:
            return engine._fail(name, f"cannot put its inputs into the cache {self.cache.url}: {exc}")
        request = ray_request(node.resources)
        spec = {
            "name": name, "kind": node.kind, "params": dict(node.params), "key": key,
            "material": material, "extras": engine.ws.manifest_extras(name),
            "model": engine.graph.recipe.model_for(name), "inputs": inputs,
            "cache_url": self.cache.url, "replace": key in engine._corrupt_keys,
        }
        options = _task_options(request)
        ref = self._remote.options(name=task_name(name), max_retries=self.max_retries,
                                   retry_exceptions=False, **options).remote(spec, self._board)
        with self._lock:
            self._running[name] = ref
        progress = engine.events.progress(name, None, "")
        seen_phase, checked = None, time.monotonic()
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_SECONDS)
                if ready or self._cancelled.is_set():
                    break
                seen_phase = self._mirror(name, progress, seen_phase)
                if time.monotonic() - checked > FEASIBLE_CHECK_SECONDS:
                    checked = time.monotonic()
                    if not any(_fits(request, o) for o in self._alive_offers().values()):
                        ray.cancel(ref, force=True)
                        return engine._fail(name, f"no live node of the Ray cluster has {_shown(request)} "
                                                  "any more (its node died?); nothing was published")
            if self._cancelled.is_set():
                return engine._fail(name, "interrupted; the task was cancelled")
            try:
                result = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                return engine._fail(name, "its Ray task was cancelled; nothing was published")
            except ray.exceptions.RayError as exc:  # the node died more than max_retries times, ...
                text = " ".join(str(exc).split())[:300]
                return engine._fail(name, f"its Ray task {task_name(name)} failed on the cluster "
                                          f"({type(exc).__name__}: {text}); nothing was published")
        except KeyboardInterrupt:  # Ctrl-C while this thread waits (make -j 1): no task outlives us
            self._cancel_refs([ref])
            raise
        finally:
            with self._lock:
                self._running.pop(name, None)
        _write_log(log_path, result)
        progress.note(node=result["node"][:12])
        if not result["ok"]:
            message = result["message"]
            if result.get("traceback"):
                message += f" (traceback in {log_path})"
            log = _append_logger(log_path)
            try:
                return engine._fail(name, message, log)
            finally:
                for handler in list(log.handlers):
                    handler.close()
        if name in self.files_in_store:
            return self._record_in_store(engine, name, key, result["node"])
        if not engine._restore(name, key):
            return engine._fail(name, f"built on Ray node {result['node']}, but its cache entry {key} "
                                      f"could not be restored from {self.cache.url}")
        engine.outcomes[name] = (BUILT, f"on node {result['node'][:12]}")
        return None

    def _record_in_store(self, engine, name: str, key: str, node_id: str):
        """Build without the bytes: the workdir gets the entry's MANIFEST.json alone, marked
        ``in_store``; dependents on the cluster fetch the files from the store, and a make that
        needs them here restores them (Workspace: FilesInStore)."""
        from recbuild.core.workdir.manifest import publish, write_manifest

        ws = engine.ws
        try:
            manifest = self.cache.lookup(key)
            if manifest is None:
                raise CacheError(f"no entry {key}")
            manifest = {**manifest, "in_store": True}
            staged = ws.tmp_dir / f"{name}-store-{os.urandom(5).hex()}"
            staged.mkdir()
            try:
                write_manifest(staged, manifest)
                publish(staged, ws.folder(name), ws.tmp_dir)
            finally:
                shutil.rmtree(staged, ignore_errors=True)
        except (CacheError, OSError, RecbuildError) as exc:
            return engine._fail(name, f"built on Ray node {node_id}, but its manifest could not be "
                                      f"recorded from {self.cache.url}: {exc}")
        ws.set_manifest(name, manifest)
        engine.outcomes[name] = (BUILT, f"on node {node_id[:12]}, files left in the store")
        return None

    def _mirror(self, name: str, progress, seen_phase):
        """Copy what the running step reported into the Progress the UI shows."""
        import ray

        try:
            snap = ray.get(self._board.get.remote(name), timeout=2)
        except Exception:  # the board's node died, or it is slow: progress is only a view
            return seen_phase
        if not snap:
            return seen_phase
        if snap.get("phase") != seen_phase:
            progress.phase(snap.get("phase", ""), snap.get("total"), snap.get("unit"))
            seen_phase = snap.get("phase")
        progress.total = snap.get("total")
        progress.done = snap.get("done", 0.0)
        progress.facts.update(snap.get("facts", {}))
        if snap.get("node"):
            progress.facts["node"] = snap["node"][:12]
        return seen_phase

    def _inputs(self, engine, name: str) -> list[dict]:
        """What the task needs to fetch each input from the store (uploading what is not there)."""
        ws = engine.ws
        found = []
        for edge in engine.graph.edges[name]:
            upstream = edge.upstream
            entry: dict[str, Any] = {"field": edge.field, "index": edge.index, "name": upstream}
            if ws.is_file_source(upstream):
                scan = ws.scan(upstream)
                manifest = ws.manifest(upstream) or {"kind": "source", "key": scan.digest, "digest": scan.digest,
                                                     "files": scan.entries, "inputs": {}, "params": {}}
                entry.update(kind="source", manifest=manifest)
                if scan.url:  # read where it is
                    entry.update(url=scan.url, path=str(scan.path))
                else:
                    single = scan.path.name if scan.path.is_file() else None
                    root = scan.path.parent if single else scan.path
                    if self._upload(root, {**manifest, "key": scan.digest}):
                        changed = ws.input_change(upstream, scan.digest)
                        if changed:  # saved while it was read: the entry may hold either version
                            self.cache.remove(scan.digest)
                            raise RecbuildError(f"input {changed} changed while it was uploaded; run make again")
                    entry.update(key=scan.digest, single=single)
            else:
                manifest = ws.manifest(upstream)
                if manifest is None:
                    raise RecbuildError(f"input {upstream!r} has not been built")
                self._upload(ws.folder(upstream), manifest)
                entry.update(kind=manifest.get("kind"), key=manifest["key"], manifest=manifest)
            found.append(entry)
        return found

    def _upload(self, folder: Path, manifest: dict) -> bool:
        """Put an input into the store unless it is there; True when this call uploaded it."""
        key = manifest["key"]
        if key in self._uploaded:
            return False
        pushed = self.cache.lookup(key) is None and self.cache.push(folder, manifest)
        self._uploaded.add(key)
        return pushed

    # -- the end
    def cancel(self) -> None:
        """Ctrl-C: every running task is killed on its node (force: its worker process and what
        it started), so nothing keeps running on the cluster."""
        self._cancelled.set()
        with self._lock:
            refs = list(self._running.values())
        self._cancel_refs(refs)

    def _cancel_refs(self, refs: list) -> None:
        """First as Ctrl-C in the task (the step stops its commands: process_tree kills their
        sessions), then, for a task still running after GRACE_SECONDS, by killing its worker."""
        import ray

        for force in (False, True):
            for ref in refs:
                try:
                    ray.cancel(ref, force=force, recursive=True)
                except Exception:
                    pass
            deadline = time.monotonic() + (GRACE_SECONDS if not force else 10)
            pending = list(refs)
            while pending and time.monotonic() < deadline:  # until Ray confirms: no task outlives us
                try:
                    _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
                except Exception:
                    break
            refs = pending
            if not refs:
                return

    def close(self) -> None:
        import ray

        if self._connected and ray.is_initialized():
            ray.shutdown()
        self._connected = False


def _write_log(path: Path, result: dict) -> None:
    path.write_text(result.get("log", ""), encoding="utf-8")


def _append_logger(path: Path) -> logging.Logger:
    logger = logging.Logger("recbuild.cluster", logging.INFO)
    logger.propagate = False
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger


# ------------------------------------------------------------------------------------ progress


class ProgressBoard:
    """A Ray actor (num_cpus=0): running steps post their progress, the client reads it."""

    def __init__(self):
        self.snaps: dict[str, dict] = {}

    def put(self, name: str, snap: dict) -> None:
        self.snaps[name] = {**self.snaps.get(name, {}), **snap}

    def get(self, name: str) -> dict | None:
        return self.snaps.get(name)


def _remote_progress_class():
    from recbuild.builders.base import Progress

    class RemoteProgress(Progress):
        """A Progress that posts itself to the board at most once a second (and at each phase)."""

        def __init__(self, board, name: str, total, unit):
            super().__init__(total, unit)
            self._board, self._name, self._sent = board, name, 0.0

        def _post(self, force: bool = False) -> None:
            now = time.monotonic()
            if self._board is None or (not force and now - self._sent < 1.0):
                return
            self._sent = now
            facts = {k: v for k, v in self.facts.items() if isinstance(v, (int, float, str, bool))}
            try:
                self._board.put.remote(self._name, {"phase": self.phase_name, "total": self.total,
                                                    "unit": self.unit, "done": self.done, "facts": facts})
            except Exception:  # progress is only a view: never fail a build for it
                pass

        def phase(self, name, total=None, unit=None):
            super().phase(name, total, unit)
            self._post(force=True)
            return self

        def advance(self, amount=1):
            super().advance(amount)
            self._post()

        def note(self, **facts):
            super().note(**facts)
            self._post()

        def label(self, name):
            super().label(name)
            self._post()

    return RemoteProgress


# ------------------------------------------------------------------------------------ on a node


def build_on_node(spec: dict, board=None) -> dict:
    """The Ray task: build one step on this node from the store, push the verified entry.

    Returns {"ok", "node", "log", and on failure "message" (+ "traceback")}: a build error comes
    back as data, so Ray retries only what a dead node interrupted.
    """
    import ray

    from recbuild.builders import all_builders
    from recbuild.builders.base import BuildContext, Builder, InputArtifact
    from recbuild.core.workdir.hashing import StatCache
    from recbuild.core.workdir.manifest import make_manifest, write_manifest

    node_id = ray.get_runtime_context().get_node_id()
    name = spec["name"]
    scratch = Path(tempfile.mkdtemp(prefix="recbuild-step-"))
    log_path = scratch / "step.log"
    log = logging.Logger(f"recbuild.node.{name}", logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    result: dict[str, Any] = {"ok": False, "node": node_id}
    stat_cache = None
    try:
        log.info("%s on Ray node %s (host %s, pid %d)", task_name(name), node_id, socket.gethostname(),
                 os.getpid())
        if board is not None:
            board.put.remote(name, {"node": node_id})
        builders = all_builders()
        builder_cls = builders.get(spec["kind"])
        wanted = spec["material"]["builder_version"]
        if builder_cls is None or str(builder_cls.version) != wanted:
            have = "no such kind" if builder_cls is None else f"version {builder_cls.version}"
            raise RecbuildError(f"Ray node {node_id} has {spec['kind']} {have}, the client has version "
                                f"{wanted}: install the same recbuild (and plugins) on every node")
        mismatch = _toolchain_mismatch(builder_cls, spec["params"], spec["material"])
        if mismatch:
            raise RecbuildError(f"Ray node {node_id} differs from the client in what decides the step's "
                                f"bytes ({mismatch}): its output would not match its key; give every "
                                "node the client's versions (or build it with --cluster local)")
        cache = ArtifactCache(spec["cache_url"], push=True)
        stat_cache = StatCache(scratch / "hashes.sqlite")
        inputs: dict[str, Any] = {}
        for entry in spec["inputs"]:
            artifact = _fetch_input(entry, cache, scratch, stat_cache, InputArtifact, log)
            if entry["index"] is None:
                inputs[entry["field"]] = artifact
            else:
                inputs.setdefault(entry["field"], []).append(artifact)
        out = scratch / "out"
        recipe_dir = scratch / "recipe"  # a command's folder: the recipe's folder is the client's
        out.mkdir()
        recipe_dir.mkdir()
        remote_progress = _remote_progress_class()
        ctx = BuildContext(
            name=name, kind=spec["kind"], params=dict(spec["params"]), out=out, inputs=inputs,
            recipe_dir=recipe_dir, workdir=scratch, model=spec["model"], log=log, log_path=log_path,
            _progress_factory=lambda total, unit: remote_progress(board, name, total, unit))
        Builder.run(builder_cls(), ctx)
        material = spec["material"]
        manifest = make_manifest(out, kind=spec["kind"], key=spec["key"], inputs=material["inputs"],
                                 params=material["params"], cache=stat_cache, meta=ctx.meta or None)
        manifest.update(spec["extras"])
        write_manifest(out, manifest)
        cache.push(out, manifest, replace=spec["replace"])
        log.info("pushed %s (digest %s) to %s", spec["key"], manifest["digest"], cache.url)
        result["ok"] = True
    except RecbuildError as exc:
        result["message"] = exc.message
    except OSError as exc:
        log.error("%s", traceback.format_exc())
        where = f": {exc.filename}" if exc.filename else ""
        result["message"] = f"{exc.strerror or exc}{where} (on Ray node {node_id})"
    except Exception as exc:  # a bug or an unexpected library error: the traceback is in the log
        log.error("%s", traceback.format_exc())
        result["message"] = f"{type(exc).__name__}: {exc}".strip()
        result["traceback"] = True
    finally:
        if stat_cache is not None:
            stat_cache.close()
        for h in list(log.handlers):
            h.close()
            log.removeHandler(h)
        try:
            with open(log_path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(log_path) - LOG_LIMIT))
                result["log"] = handle.read().decode("utf-8", errors="replace")
        except OSError:
            result["log"] = ""
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _toolchain_mismatch(builder_cls, params: dict, material: dict) -> str:
    """What this node's toolchain and key facts (part of the key the client computed) differ in."""
    from recbuild.core.workdir import toolchain

    here = {"toolchain": toolchain.facts(builder_cls.toolchain) if getattr(builder_cls, "toolchain", ()) else {},
            "facts": builder_cls.key_facts(params) or {}}
    differences = []
    for part in ("toolchain", "facts"):
        theirs = material.get(part, {})
        for name in sorted(set(here[part]) | set(theirs)):
            if here[part].get(name) != theirs.get(name):
                differences.append(f"{name}: node {here[part].get(name)}, client {theirs.get(name)}")
    return "; ".join(differences)


def _fetch_input(entry: dict, cache: ArtifactCache, scratch: Path, stat_cache, input_cls, log):
    """One input on this node: restored (and verified) from the store, or a URL as it is."""
    manifest = entry["manifest"]
    if entry.get("url"):
        return input_cls(entry["name"], "source", Path(entry["path"]), (), manifest, entry["url"])
    folder = scratch / "inputs" / entry["key"]
    if not folder.is_dir():
        folder.mkdir(parents=True)
        log.info("fetching input %s (%s) from the cache", entry["name"], entry["key"])
        cache.restore(entry["key"], folder, stat_cache)
        if entry["kind"] == "source":  # a source's folder holds only the user's files
            (folder / "MANIFEST.json").unlink(missing_ok=True)
    files = tuple(folder / rel for rel in sorted(manifest.get("files", {})))
    if entry["kind"] == "source":
        path = folder / entry["single"] if entry.get("single") else folder
        return input_cls(entry["name"], "source", path, files, manifest)
    return input_cls(entry["name"], entry["kind"], folder, files, manifest)
