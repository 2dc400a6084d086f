"""What every `tzrec_*` kind shares: the base class (settings, checks, the step's lifecycle), the
schema pieces and the small readers of input tables.

The kinds are in recbuild/builders/tzrec_training.py (train_eval, eval, export, predict) and
recbuild/builders/tzrec_tools.py (faiss index, hitrate, TDM trees, retrieval); the flow of one step
is recbuild/builders/tzrec_step.py. ``TzrecKind`` has an empty kind, so the registry skips it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from recbuild.builders.base import BuildContext, Builder, InputArtifact
from recbuild.errors import BuildError
from recbuild.tzrec import runner

NONEMPTY_STRING = {"type": "string", "minLength": 1}
NAME_LIST = {"type": "array", "items": NONEMPTY_STRING, "default": []}


def tzrec_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A kind's params schema: its own properties plus the `tzrec` setting (how tzrec runs)."""
    props = dict(properties)
    props["tzrec"] = runner.SETTINGS_SCHEMA
    return {"type": "object", "properties": props, "required": required}


def parquet_rows(artifact: InputArtifact) -> int | None:
    """Rows of a table made only of parquet files (from their footers), else None."""
    import pyarrow.parquet as pq

    from recbuild.builders.tzrec_step import data_files

    files = [f for f in data_files(artifact) if f.suffix == ".parquet"]
    if not files or len(files) != len(data_files(artifact)):
        return None
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def data_suffix(artifact: InputArtifact) -> str | None:
    """The suffix of the table's data files (.parquet before .csv), None when it has neither."""
    from recbuild.builders.tzrec_step import data_files

    names = [f.name for f in data_files(artifact)]
    for suffix in (".parquet", ".csv"):
        if any(n.endswith(suffix) for n in names):
            return suffix
    return None


class TzrecKind(Builder):
    """Shared by every tzrec kind (kind is empty: not registered)."""

    version = "1"
    key_exclude = ("tzrec",)
    step: ClassVar[str] = ""
    # reference fields that name a table tzrec reads, and the edit_config `inputs` map
    mapping_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def key_facts(cls, params: dict[str, Any]) -> dict[str, Any]:
        return runner.toolchain_facts(params.get("tzrec"))

    def references(self, params: dict[str, Any]) -> dict[str, list[str]]:
        refs = super().references({k: v for k, v in params.items() if k not in self.mapping_fields})
        for name in self.mapping_fields:
            value = params.get(name)
            if value:
                refs[name] = list(dict.fromkeys(value.values()))
        return refs

    def check(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        return runner.check_settings(params.get("tzrec")) + self.check_step(params)

    def check_step(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        return []

    def build(self, ctx: BuildContext) -> None:
        from recbuild.builders.tzrec_step import StepRun

        for path, message in self.check(ctx.params):
            raise BuildError(f"{path}: {message}")
        self.precheck(ctx, ctx.params)  # input problems first: no interpreter needed to report them
        run = StepRun(ctx, self.step)
        try:
            self.run_step(ctx, run, ctx.params)
        finally:
            run.cleanup()

    def precheck(self, ctx: BuildContext, p: dict[str, Any]) -> None:
        """Checks of the inputs before tzrec is looked for (raise InputError)."""

    # not `run`: Builder.run(ctx) is the engine's entry point (it applies the schema defaults)
    def run_step(self, ctx: BuildContext, run, p: dict[str, Any]) -> None:  # pragma: no cover - interface
        """Runs the tzrec tool through ``run`` (a StepRun) and checks what it wrote."""
        raise NotImplementedError

    @staticmethod
    def declared_inputs(ctx: BuildContext, run, p: dict[str, Any]) -> dict[str, str]:
        """The `inputs` map as config edits: field -> the tzrec path of the named node."""
        from recbuild.builders.tzrec_step import is_folder_field

        by_name = {a.name: a for a in ctx.inputs_of("inputs")}
        edits = {}
        for field, node in (p.get("inputs") or {}).items():
            artifact = by_name[node]
            edits[field] = run.folder(artifact) if is_folder_field(field) else \
                run.table(artifact, data_suffix(artifact) if artifact.kind != "source" or
                          len(artifact.files) > 1 else None)
        return edits
