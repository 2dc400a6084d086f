"""The state of a recipe's workdir: where things live, artifact keys, and why something is stale.

Pure decisions over files: no doit, no printing. The engine, `status`, `explain` and `make -n` all
ask this module, so they agree by construction.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from recbuild.builders.base import InputArtifact
from recbuild.errors import BuildError, RecipeError
from recbuild.core.recipe.graph import Graph
from recbuild.core.recipe.yamlsrc import problem
from recbuild.core.workdir.hashing import StatCache
from recbuild.core.workdir.manifest import (MANIFEST_NAME, canonical_json, foreign_workdir, made_by_recbuild,
                                           read_manifest, verify_files)
from recbuild.core.workdir.meaning import MeaningDigests
from recbuild.core.workdir.sources import SourceScan, scan_source
from recbuild.core.workdir.toolchain import facts as toolchain_facts

MODEL_ROLE = "recipe.model"


# ------------------------------------------------------------------------------------ reasons


@dataclass(frozen=True)
class Reason:
    def __str__(self) -> str:  # pragma: no cover - overridden
        return self.__class__.__name__


@dataclass(frozen=True)
class NotBuilt(Reason):
    def __str__(self) -> str:
        return "not built yet"


@dataclass(frozen=True)
class ParamChanged(Reason):
    param: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"param {self.param}: {_short(self.old)} -> {_short(self.new)}"


@dataclass(frozen=True)
class InputChanged(Reason):
    role: str
    upstream: str

    def __str__(self) -> str:
        who = self.role if self.role == self.upstream else f"{self.role} ({self.upstream})"
        return f"input {who} changed"


@dataclass(frozen=True)
class InputsRewired(Reason):
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def __str__(self) -> str:
        parts = [f"+{r}" for r in self.added] + [f"-{r}" for r in self.removed]
        return "inputs changed: " + ", ".join(parts)


@dataclass(frozen=True)
class ModelChanged(Reason):
    keys: tuple[str, ...]

    def __str__(self) -> str:
        return "model config changed" + (f" ({', '.join(self.keys)})" if self.keys else "")


@dataclass(frozen=True)
class CodeChanged(Reason):
    what: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.what}: {self.old} -> {self.new}"


@dataclass(frozen=True)
class ToolchainChanged(Reason):
    what: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.what} {self.old if self.old is not None else '(not recorded)'} -> {self.new}"


@dataclass(frozen=True)
class OutputsModified(Reason):
    problems: tuple[str, ...]

    def __str__(self) -> str:
        shown = ", ".join(self.problems[:3]) + (" ..." if len(self.problems) > 3 else "")
        return f"artifact files were changed outside recbuild: {shown}"


@dataclass(frozen=True)
class FilesInStore(Reason):
    def __str__(self) -> str:
        return "its files are in the shared cache only (cluster.leave_in_store); make restores them"


@dataclass(frozen=True)
class ForeignFolderInTheWay(Reason):
    folder: str

    def __str__(self) -> str:
        return f"{self.folder} exists but recbuild did not make it; move it away (recbuild will not replace it)"


@dataclass(frozen=True)
class InputUnavailable(Reason):
    upstreams: tuple[str, ...]

    def __str__(self) -> str:
        return f"input {', '.join(self.upstreams)} is missing or unreadable"


@dataclass(frozen=True)
class UpstreamStale(Reason):
    upstream: str

    def __str__(self) -> str:
        return f"upstream {self.upstream} will rebuild"


@dataclass(frozen=True)
class SourceChanged(Reason):
    added: tuple[str, ...]
    removed: tuple[str, ...]
    modified: tuple[str, ...]

    def __str__(self) -> str:
        parts = []
        for label, items in (("modified", self.modified), ("added", self.added), ("removed", self.removed)):
            if items:
                parts.append(f"{label} {', '.join(items[:3])}" + (" ..." if len(items) > 3 else ""))
        return "files " + "; ".join(parts) if parts else "files changed"


@dataclass(frozen=True)
class SourceError(Reason):
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class Status:
    name: str
    state: str  # "up to date" | "stale" | "missing" | "blocked" | "error"
    reasons: list[Reason] = field(default_factory=list)

    @property
    def current(self) -> bool:
        return self.state == "up to date"

    @property
    def only_upstream(self) -> bool:
        """Stale only because an upstream will rebuild (early cut-off may spare it)."""
        return self.state == "stale" and all(isinstance(r, UpstreamStale) for r in self.reasons)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 50 else text[:47] + "..."


def _param_changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted param, old, new) for every changed leaf: `params.n: 3 -> 4`, not the whole mapping."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                changes.append((path, old.get(key, "<unset>"), new.get(key, "<unset>")))
            else:
                changes.extend(_param_changes(old[key], new[key], path))
        return changes
    return [] if old == new else [(prefix, old, new)]


def _shown_file(path: Path, rel: str) -> str:
    """A source file for a message: the source's own path when it is one file."""
    return str(path) if path.is_file() or not rel else str(path / rel)


def _digest(value: Any) -> str:
    return xxhash.xxh3_128_hexdigest(canonical_json(value).encode())


# ------------------------------------------------------------------------------------ workspace


class Workspace:
    def __init__(self, graph: Graph, builders: dict, cache: StatCache | None = None):
        self.graph = graph
        self.recipe = graph.recipe
        self.builders = builders
        self.workdir = self.recipe.workdir
        self.state_dir = self.workdir / ".recbuild"
        foreign = foreign_workdir(self.workdir, self.recipe.dir, graph.nodes)
        if foreign is not None:  # before anything is written into it
            loc = self.recipe.locate(("workdir",))
            raise RecipeError(problem(loc, ("workdir",), foreign))
        self.cache = cache or StatCache(self.state_dir / "hashes.sqlite")
        self._scans: dict[str, SourceScan] = {}
        # artifacts whose files may stay in the shared cache, their MANIFEST.json alone here
        # (a make on a cluster with `leave_in_store`); any other run restores their files
        self.files_in_store_ok: set[str] = set()
        self._manifests: dict[str, dict | None] = {}
        self.meanings = MeaningDigests(self.state_dir)

    # -- places
    def is_file_source(self, name: str) -> bool:
        return self.graph.nodes[name].is_file_source

    def folder(self, name: str) -> Path:
        if self.is_file_source(name):
            safe = xxhash.xxh3_64_hexdigest(name.encode())
            return self.state_dir / "sources" / safe
        return self.workdir / name

    def manifest_path(self, name: str) -> Path:
        return self.folder(name) / MANIFEST_NAME

    @property
    def tmp_dir(self) -> Path:
        return self.state_dir / "tmp"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    # -- sources
    def scan(self, name: str) -> SourceScan:
        scan = self._scans.get(name)
        if scan is None:
            node = self.graph.nodes[name]
            scan = scan_source(node.params["path"], self.recipe.dir, self.cache, name, self.workdir)
            self._scans[name] = scan
        return scan

    def forget_scan(self, name: str) -> None:
        self._scans.pop(name, None)

    # -- manifests
    def manifest(self, name: str) -> dict | None:
        if name not in self._manifests:
            self._manifests[name] = read_manifest(self.folder(name))
        return self._manifests[name]

    def set_manifest(self, name: str, manifest: dict | None) -> None:
        self._manifests[name] = manifest

    def forget_manifest(self, name: str) -> None:
        """Read the manifest from disk again next time (something else may have replaced it)."""
        self._manifests.pop(name, None)

    def loaded_manifest(self, name: str) -> dict | None:
        """The manifest if this run has read it already; never touches the disk."""
        return self._manifests.get(name)

    def current_digest(self, name: str) -> str | None:
        """What a dependent sees of ``name`` now: the digest of its files."""
        if self.is_file_source(name):
            try:
                return self.scan(name).digest
            except BuildError:  # missing or unreadable: the source's own status says why
                return None
        manifest = self.manifest(name)
        return manifest.get("digest") if manifest else None

    def input_change(self, name: str, expected: str | None) -> str | None:
        """How input ``name`` differs now from the digest ``expected`` (what a key was computed
        from): None when it does not, else what changed, naming the file. Stat first, content only
        where the stat changed (the stat cache), for sources and artifacts alike."""
        if self.is_file_source(name):
            before = self._scans.get(name)
            self.forget_scan(name)
            try:
                scan = self.scan(name)
            except BuildError as exc:
                return f"source {name!r} ({exc.message})"
            if scan.digest == expected or scan.digest in self.meanings.contents_of(expected):
                return None
            old = before.entries if before is not None and before.digest == expected else {}
            for rel in sorted(set(old) | set(scan.entries)):
                if old.get(rel) != scan.entries.get(rel):
                    return f"{name!r} (file {_shown_file(scan.path, rel)})"
            return f"{name!r} ({scan.path})"
        self.forget_manifest(name)
        manifest = self.manifest(name)
        folder = self.folder(name)
        if manifest is None or (manifest.get("digest") != expected
                                and manifest.get("digest") not in self.meanings.contents_of(expected)):
            return f"artifact {name!r} ({folder} was replaced)"
        problems = verify_files(folder, manifest, self.cache)
        return f"artifact {name!r} ({problems[0]} in {folder})" if problems else None

    # -- keys
    def key_params(self, name: str) -> dict:
        node = self.graph.nodes[name]
        builder_cls = self.builders[node.kind]
        return {k: v for k, v in node.params.items() if k not in builder_cls.key_exclude}

    def key_material(self, name: str, digest_of=None) -> dict | None:
        """Everything the artifact's content depends on; None while an input is missing.
        ``digest_of(upstream)`` gives an input's digest (default: what is on disk now; the shared
        cache passes its own, so keys of artifacts not present here can be computed)."""
        node = self.graph.nodes[name]
        builder_cls = self.builders[node.kind]
        digest_of = digest_of or self.current_digest
        inputs = {}
        for edge in self.graph.edges[name]:
            digest = digest_of(edge.upstream)
            if digest is None:
                return None
            if edge.field in builder_cls.meaning_fields and digest == self.current_digest(edge.upstream):
                digest = self.meanings.digest(builder_cls, edge.field, node.params, digest,
                                              self.input_artifact(edge.upstream).files)
            inputs[edge.role] = digest
        if builder_cls.uses_model:
            inputs[MODEL_ROLE] = _digest(self.recipe.model_for(name))
        material = {"kind": node.kind, "builder_version": str(builder_cls.version),
                    "params": self.key_params(name), "inputs": inputs}
        if builder_cls.toolchain:
            material["toolchain"] = toolchain_facts(builder_cls.toolchain)
        facts = builder_cls.key_facts(node.params)
        if facts:  # (absent, not empty, so keys of builders without facts are unchanged)
            material["facts"] = facts
        return material

    def key(self, name: str, digest_of=None) -> str | None:
        material = self.key_material(name, digest_of)
        return None if material is None else _digest(material)

    # -- inputs for builders
    def input_artifact(self, name: str) -> InputArtifact:
        if self.is_file_source(name):
            scan = self.scan(name)
            manifest = self.manifest(name) or {"kind": "source", "digest": scan.digest, "files": scan.entries}
            return InputArtifact(name, "source", scan.path, scan.files, manifest, scan.url)
        manifest = self.manifest(name)
        if manifest is None:
            raise BuildError(f"input {name!r} has not been built")
        folder = self.folder(name)
        files = tuple(folder / rel for rel in sorted(manifest.get("files", {})))
        return InputArtifact(name, manifest.get("kind", self.graph.nodes[name].kind), folder, files, manifest)

    def inputs_for(self, name: str) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        for edge in self.graph.edges[name]:
            artifact = self.input_artifact(edge.upstream)
            if edge.index is None:
                inputs[edge.field] = artifact
            else:
                inputs.setdefault(edge.field, []).append(artifact)
        return inputs

    # -- staleness
    def source_status(self, name: str) -> Status:
        try:
            scan = self.scan(name)
        except BuildError as exc:
            return Status(name, "error", [SourceError(str(exc))])
        manifest = self.manifest(name)
        if manifest is None:
            return Status(name, "missing", [NotBuilt()])
        if manifest.get("digest") == scan.digest:
            return Status(name, "up to date")
        old, new = manifest.get("files", {}), scan.entries
        return Status(name, "stale", [SourceChanged(
            tuple(sorted(set(new) - set(old))), tuple(sorted(set(old) - set(new))),
            tuple(sorted(k for k in set(old) & set(new) if old[k] != new[k])))])

    def artifact_status(self, name: str, upstream_status: dict[str, Status] | None = None) -> Status:
        manifest = self.manifest(name)
        if manifest is None:
            folder = self.folder(name)
            if os.path.lexists(folder) and not made_by_recbuild(folder):
                return Status(name, "blocked", [ForeignFolderInTheWay(str(folder))])
            return Status(name, "missing", [NotBuilt()])
        upstream_status = upstream_status or {}
        stale_ups = [e.upstream for e in self.graph.edges[name]
                     if e.upstream in upstream_status and not upstream_status[e.upstream].current]
        reasons: list[Reason] = [UpstreamStale(u) for u in stale_ups
                                 if not self.is_file_source(u)]
        material = self.key_material(name)
        if material is not None:
            reasons.extend(self._diff(name, manifest, material))
        else:
            reasons.append(InputUnavailable(tuple(e.upstream for e in self.graph.edges[name]
                                                  if self.current_digest(e.upstream) is None)))
        if not reasons and manifest.get("in_store"):
            if name not in self.files_in_store_ok:
                reasons.append(FilesInStore())
        elif not reasons:
            problems = verify_files(self.folder(name), manifest, self.cache)
            if problems:
                reasons.append(OutputsModified(tuple(problems)))
        return Status(name, "stale" if reasons else "up to date", reasons)

    def _diff(self, name: str, manifest: dict, material: dict) -> list[Reason]:
        if manifest.get("key") == _digest(material):
            return []
        reasons: list[Reason] = []
        if manifest.get("kind") != material["kind"]:
            reasons.append(CodeChanged("kind", manifest.get("kind"), material["kind"]))
        if str(manifest.get("builder_version")) != material["builder_version"]:
            reasons.append(CodeChanged(f"{material['kind']} builder version",
                                       manifest.get("builder_version"), material["builder_version"]))
        old_tools, new_tools = manifest.get("toolchain", {}), material.get("toolchain", {})
        for tool in sorted(set(old_tools) | set(new_tools)):
            if old_tools.get(tool) != new_tools.get(tool):
                reasons.append(ToolchainChanged(tool, old_tools.get(tool), new_tools.get(tool, "not used")))
        old_facts, new_facts = manifest.get("facts", {}), material.get("facts", {})
        for key in sorted(set(old_facts) | set(new_facts)):
            if old_facts.get(key) != new_facts.get(key):
                reasons.append(CodeChanged(key, old_facts.get(key), new_facts.get(key)))
        for key, old, new in _param_changes(manifest.get("params", {}), material["params"]):
            reasons.append(ParamChanged(key, old, new))
        old_inputs, new_inputs = manifest.get("inputs", {}), material["inputs"]
        by_role = {e.role: e.upstream for e in self.graph.edges[name]}
        added = tuple(sorted(set(new_inputs) - set(old_inputs)))
        removed = tuple(sorted(set(old_inputs) - set(new_inputs)))
        if added or removed:
            reasons.append(InputsRewired(added, removed))
        for role in sorted(set(old_inputs) & set(new_inputs)):
            if old_inputs[role] != new_inputs[role]:
                if role == MODEL_ROLE:
                    old_model = manifest.get("model", {})
                    model = self.recipe.model_for(name)
                    keys = tuple(sorted(k for k in set(old_model) | set(model)
                                        if old_model.get(k) != model.get(k)))
                    reasons.append(ModelChanged(keys))
                else:
                    reasons.append(InputChanged(role, by_role.get(role, role)))
        if not reasons:
            reasons.append(CodeChanged("artifact key", manifest.get("key"), _digest(material)))
        return reasons

    def plan(self, targets: list[str]) -> dict[str, Status]:
        """Status of every node the targets need, upstream first, staleness propagated."""
        statuses: dict[str, Status] = {}
        for name in self.graph.closure(targets):
            if self.is_file_source(name):
                statuses[name] = self.source_status(name)
            else:
                statuses[name] = self.artifact_status(name, statuses)
        return statuses

    # -- manifests of new builds
    def manifest_extras(self, name: str) -> dict:
        node = self.graph.nodes[name]
        builder_cls = self.builders[node.kind]
        extras: dict[str, Any] = {"builder_version": str(builder_cls.version)}
        if builder_cls.uses_model:
            extras["model"] = copy.deepcopy(self.recipe.model_for(name))
        if builder_cls.toolchain:  # provenance: the versions that built it (`status -v`, the report)
            extras["toolchain"] = toolchain_facts(builder_cls.toolchain)
        facts = builder_cls.key_facts(node.params)
        if facts:
            extras["facts"] = facts
        return extras
