"""The builder interface: one plain class per artifact kind, its params schema beside it.

A builder never imports the engine, the CLI or doit. It receives a :class:`BuildContext`, writes
its files into ``ctx.out`` (an empty temporary folder) and returns; the engine writes the manifest
and publishes the folder atomically. Builders raise :class:`recbuild.errors.BuildError` (or
``InputError``) with a message that says what is wrong and how to fix it.

Heavy libraries (torch, faiss, pyarrow) are imported inside ``build`` so that loading the recipe
and a no-op ``make`` stay fast.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class InputArtifact:
    """What a builder sees of one of its inputs (a source or an upstream artifact)."""

    name: str
    kind: str  # "source" for file sources, else the builder kind that made it
    path: Path  # artifact folder, or the source path (file, directory or glob root)
    files: tuple[Path, ...]  # concrete files (absolute), sorted; empty for remote URLs
    manifest: dict[str, Any]
    url: str | None = None  # set for fsspec sources (e.g. "memory://x/y.parquet")

    def file(self, relpath: str) -> Path:
        return self.path / relpath

    @property
    def location(self) -> str:
        """A path or URL a reader can open (parquet readers accept either)."""
        return self.url or str(self.path)


# A kind that measures something writes its figures here, in its output folder (see recbuild.core.workdir.metrics)
METRICS_FILE = "metrics.json"


class Progress:
    """What a long step is doing, for the UI to show: a phase (``epoch 2/5``, ``training IVF``,
    ``writing``), done/total in a unit, and facts worth watching (``loss``, ``auc``).

    Builders only write to it; the UI reads it (a live line on a terminal, a heartbeat line in CI
    logs). Writes are plain attribute updates, safe to make from a worker thread.
    """

    def __init__(self, total: float | None = None, unit: str = "rows"):
        self.phase_name = ""
        self.total = total
        self.unit = unit
        self.done = 0.0
        self.facts: dict[str, Any] = {}
        self.phase_started = time.monotonic()

    def phase(self, name: str, total: float | None = None, unit: str | None = None) -> "Progress":
        """Start a new phase: the count starts again from zero."""
        self.phase_name = name
        self.total = total
        if unit is not None:
            self.unit = unit
        self.done = 0.0
        self.phase_started = time.monotonic()
        return self

    def label(self, name: str) -> None:
        """Rename the phase and keep its count (one count across the epochs of a training run)."""
        self.phase_name = name

    def advance(self, amount: float = 1) -> None:
        self.done += amount

    def note(self, **facts: Any) -> None:
        """Facts shown beside the count (the latest value of each)."""
        self.facts.update(facts)

    def close(self) -> None:
        pass


@dataclass
class BuildContext:
    name: str
    kind: str
    params: dict[str, Any]  # validated, interpolated, schema defaults applied
    out: Path  # empty folder to write into; published as <workdir>/<name>/
    inputs: dict[str, InputArtifact | list[InputArtifact]]  # reference field -> input(s)
    recipe_dir: Path
    workdir: Path
    model: dict[str, Any] = field(default_factory=dict)  # the recipe's `model:` section
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("recbuild.build"))
    log_path: Path | None = None  # the step's log file: tools may append their own output to it
    threads: int = 2
    # Deterministic facts the builder wants in MANIFEST.json under "meta" (no times, no hosts).
    meta: dict[str, Any] = field(default_factory=dict)
    _progress_factory: Any = None
    _on_warning: Any = None  # the engine's: shows a warning to the user (builders never print)

    def input(self, field_name: str) -> InputArtifact:
        value = self.inputs[field_name]
        if isinstance(value, list):
            raise TypeError(f"{field_name} holds several inputs; use inputs_of()")
        return value

    def inputs_of(self, field_name: str) -> list[InputArtifact]:
        value = self.inputs.get(field_name, [])
        return list(value) if isinstance(value, list) else [value]

    def warn(self, message: str) -> None:
        """A warning for the user (one line, prefixed with the artifact's name) and the step's log:
        something built, but not as well as it could (e.g. too few rows per IVF list)."""
        self.log.warning("%s", message)
        if self._on_warning is not None:
            self._on_warning(message)

    def progress(self, total: float | None = None, unit: str = "rows", phase: str = "") -> Progress:
        """The step's progress, at a new phase (see Progress)."""
        if self._progress_factory is None:
            return Progress(total, unit).phase(phase, total, unit)
        return self._progress_factory(total, unit).phase(phase, total, unit)


def with_schema_defaults(schema: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with the ``default`` of every top-level schema property it lacks.

    The schema is the one place a param's default is written: the recipe loader and
    :meth:`Builder.run` both fill params from it, so builders never repeat a default.
    """
    result = dict(params)
    for key, prop in schema.get("properties", {}).items():
        if key not in result and isinstance(prop, dict) and "default" in prop:
            result[key] = copy.deepcopy(prop["default"])
    return result


class Builder:
    """Base class of every artifact kind.

    ``build(ctx)`` receives ``ctx.params`` with the schema defaults applied (the recipe loader
    fills them, and the engine calls :meth:`run`, which fills them again for params that did not
    come from a recipe): read ``p["key"]`` for a key whose schema declares a ``default`` and keep
    the default in the schema only; ``p.get("key")`` is for keys without one (absent = None).
    tests/test_schema_defaults.py fails on ``.get("key", literal)`` for a defaulted key.

    Class attributes:
      kind              the name used in recipes (``kind: faiss_index``)
      version           bump when the output for the same inputs changes; part of the artifact key
      schema            JSON schema (draft 2020-12) of the params, i.e. the spec minus ``kind``;
                        an object schema with ``properties``; ``additionalProperties`` is forced false
      reference_fields  params whose value names another node (a string, or a list of strings)
      path_fields       reference fields that may also hold a file path (made an implicit source)
      uses_model        the recipe's ``model:`` section is an input (part of the key)
      key_exclude       params that do not change the content (e.g. an executor); left out of the key
      uses_torch        build() touches torch's process-wide state (RNG, thread pool, the export
                        tracer); under ``make -j N`` such steps take turns (see engine.torch_turn)
      shell_fields      params run by a shell: every ${vars.*}/${env.*} value interpolated into them
                        is shell-quoted (``${raw:...}`` pastes it as is)
      metric_docs       what each figure in its metrics.json means, one line per name
                        (``recall@k`` stands for every k), for `recbuild metrics --explain`
      metric_labels     a short qualifier for a figure whose name other kinds use with another
                        meaning (``recall@k``: training eval / index search / tzrec in-batch), shown
                        beside the name in `recbuild metrics` and the report
      headline          the metric families worth a glance after a build (``recall@k``, ``auc``)
      description       one line for `recbuild templates`/docs
      resources         what a step of this kind asks of a cluster node by default
                        ({cpus, gpus, memory, custom}); a recipe's `resources:` overrides each key.
                        Never part of the key (see core/running/cluster.py)
      meaning_fields    reference fields whose input enters the key by what it means, not by its
                        bytes: :meth:`meaning_digest` gives that digest (e.g. a config file parsed
                        and re-serialised canonically, so a comment-only edit rebuilds nothing)

      toolchain         what decides its bytes besides params and inputs: distribution names
                        (``"torch"``, ``"pyarrow"``; ``"faiss"`` = whichever faiss build is installed),
                        ``"python"`` (the interpreter's major.minor) and ``"machine"`` (the processor
                        architecture). Their versions are part of the key and recorded in the manifest.

    ``key_facts(params)`` returns facts about the outside world the output depends on that no param
    or input holds (e.g. the version of an external tool); they are part of the artifact key.
    """

    kind: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    reference_fields: ClassVar[tuple[str, ...]] = ()
    path_fields: ClassVar[tuple[str, ...]] = ()
    uses_model: ClassVar[bool] = False
    key_exclude: ClassVar[tuple[str, ...]] = ()
    uses_torch: ClassVar[bool] = False
    shell_fields: ClassVar[tuple[str, ...]] = ()
    toolchain: ClassVar[tuple[str, ...]] = ()
    metric_docs: ClassVar[dict[str, str]] = {}
    metric_labels: ClassVar[dict[str, str]] = {}
    headline: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    resources: ClassVar[dict[str, Any]] = {"cpus": 1}
    meaning_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def metric_title(cls, metric: str) -> str:
        """A figure's name as readers see it: ``recall@10 [index search]`` when the kind qualifies its
        family (the bytes of metrics.json keep the plain name)."""
        match = re.match(r"^(.*)@\d+$", metric)
        label = cls.metric_labels.get(f"{match.group(1)}@k" if match else metric)
        return f"{metric} [{label}]" if label else metric

    def references(self, params: dict[str, Any]) -> dict[str, list[str]]:
        """Reference field -> names of the nodes it points at (in order)."""
        refs: dict[str, list[str]] = {}
        for name in self.reference_fields:
            value = params.get(name)
            if value is None:
                continue
            refs[name] = [value] if isinstance(value, str) else list(value)
        return refs

    @classmethod
    def key_facts(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Facts (JSON values) that go into the artifact key beside params and inputs; {} = none.
        Called whenever a key is computed (status, make, no-op make): must be cheap or cached."""
        return {}

    @classmethod
    def meaning_digest(cls, field: str, params: dict[str, Any], files: tuple[Path, ...]) -> str | None:
        """The digest of what the input in ``field`` (one of ``meaning_fields``; ``files`` are its
        files) means, used in the key instead of its content digest; None = use the content digest
        (e.g. the input cannot be parsed: the build then reports why). Files with equal content
        get equal answers: the workdir remembers each answer by the input's content digest, so a
        no-op make does not call this."""
        return None

    def check(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        """Checks the schema cannot express. Returns (dotted param path, message) pairs.
        ``params`` are validated and have the schema defaults applied, as in ``build``."""
        return []

    def run(self, ctx: BuildContext) -> None:
        """Build with the schema defaults applied to ``ctx.params`` (what the engine calls)."""
        ctx.params = with_schema_defaults(self.schema, ctx.params)
        self.build(ctx)

    def build(self, ctx: BuildContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError
