"""``item_embeddings`` and ``user_embeddings``: run a tower of a ``towers`` artifact over a parquet table.

Output folder: ``part-0.parquet``, ``part-1.parquet``, ... with the id column, the other reserved
columns (input types kept), then ``item_tower_emb`` / ``user_tower_emb`` as
``fixed_size_list<float32>[dim]`` (or ``list<double>`` / comma-joined ``string``). Row order is the
input order (files sorted by path). The work is done by :mod:`recbuild.ml.predictor`; this module only
maps params and inputs onto it. torch/pyarrow are imported inside ``build`` (the registry imports
every builder module when a recipe is loaded).

``executor: ray`` runs the same work on a Ray cluster (:mod:`recbuild.ml.ray_executor`, the optional
``recbuild[ray]`` extra) and writes byte-identical files, so ``executor`` and ``ray`` are left out of
the artifact key. Whether Ray is installed is checked at validation with ``importlib.util.find_spec``
(ray is never imported here).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

from recbuild.builders.base import Builder, BuildContext, InputArtifact
from recbuild.errors import BuildError

_FORMATS = ["fixed_size_list", "list_double", "string"]
_ON_DUPLICATE = ["error", "first", "last"]
_EXECUTORS = ["local", "ray"]
RAY_MISSING = 'executor: ray needs Ray, which is not installed: pip install "recbuild[ray]"'
_RAY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "settings of executor: ray (ignored by executor: local)",
    "properties": {
        "address": {"type": "string", "default": "auto",
                    "pattern": r"^(auto|local|ray://\S+|[^\s/]+:[0-9]+)$",
                    "description": "auto: the running cluster (RAY_ADDRESS or `ray start` on this "
                                   "machine); ray://head:10001: a remote cluster; host:port: a "
                                   "cluster's GCS; local: start a private Ray on this machine"},
        "concurrency": {"type": "integer", "minimum": 1,
                        "description": "tower actors (default: the cluster's CPUs / num_cpus_per_worker)"},
        "num_cpus_per_worker": {"type": "integer", "minimum": 1, "default": 1,
                                "description": "CPUs (and torch threads) of each tower actor"},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 1 << 24, "default": 65536,
                       "description": "rows per Ray task, rounded up to a multiple of batch_size; "
                                      "the forward batches stay batch_size rows"},
    },
    "additionalProperties": False,
}


def _schema(data_field: str, default_id: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "towers": {"type": "string", "description": "a `towers` artifact (holds item/ and user/)"},
            data_field: {"type": "string",
                         "description": "a source or artifact whose files are parquet tables"},
            "id_column": {"type": "string", "minLength": 1, "default": default_id,
                          "description": "unique id of each row; always the first output column"},
            "reserved_columns": {"type": "array", "items": {"type": "string", "minLength": 1},
                                 "uniqueItems": True, "default": [],
                                 "description": "input columns copied to the output, after the id"},
            "batch_size": {"type": "integer", "minimum": 1, "maximum": 1 << 20, "default": 4096},
            "embedding_format": {"enum": _FORMATS, "default": "fixed_size_list",
                                 "description": "list_double: TorchEasyRec; string: EasyRec (comma-joined)"},
            "on_duplicate": {"enum": _ON_DUPLICATE, "default": "error",
                             "description": "duplicate ids: fail, or keep the first/last row of each id"},
            "rows_per_file": {"type": "integer", "minimum": 1, "default": 1_000_000,
                              "description": "a new part-N.parquet starts every this many rows"},
            "threads": {"type": "integer", "minimum": 1,
                        "description": "CPU threads for the forward passes (default: the engine's "
                                       "thread budget); parquet reading and writing run beside them"},
            "executor": {"enum": _EXECUTORS, "default": "local",
                         "description": "local: this process; ray: an actor pool on a Ray cluster "
                                        "(pip install \"recbuild[ray]\"), same output bytes"},
            "ray": _RAY_SCHEMA,
        },
        "required": ["towers", data_field],
        "additionalProperties": False,
    }


class _EmbeddingsBuilder(Builder):
    side: ClassVar[str] = ""  # "item" | "user": the towers subfolder and the output column prefix
    data_field: ClassVar[str] = ""
    version = "1"
    toolchain = ("torch", "numpy", "pyarrow", "machine")
    # The thread count and the executor change speed, not content (CPU inference of the same
    # batches; the ray executor keeps the local batch boundaries and writer).
    key_exclude = ("threads", "executor", "ray")
    uses_torch = True

    def check(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        if params.get("executor") == "ray" and importlib.util.find_spec("ray") is None:
            return [("executor", RAY_MISSING)]
        return []

    def build(self, ctx: BuildContext) -> None:
        from recbuild.ml import predictor

        params = ctx.params
        towers = ctx.input("towers")
        tower_dir = Path(towers.path) / self.side
        if not tower_dir.is_dir():
            raise BuildError(f"{towers.name} has no {self.side}/ folder; `{self.data_field}` needs the "
                             f"{self.side} tower of a `towers` artifact")
        common = dict(
            output_key=f"{self.side}_tower_emb",
            id_column=params["id_column"],
            reserved_columns=params["reserved_columns"],
            batch_size=params["batch_size"],
            embedding_format=params["embedding_format"],
            on_duplicate=params["on_duplicate"],
            rows_per_file=params["rows_per_file"],
            progress=ctx.progress,
            log=ctx.log,
        )
        locations = _parquet_locations(ctx.input(self.data_field))
        if params["executor"] == "ray":
            if importlib.util.find_spec("ray") is None:  # uninstalled since the recipe was validated
                raise BuildError(RAY_MISSING)
            from recbuild.ml import ray_executor

            result = ray_executor.predict_embeddings_ray(
                tower_dir, locations, ctx.out, ray_options=params.get("ray") or {},
                local_cpus=params.get("threads") or ctx.threads, **common)
        else:
            result = predictor.predict_embeddings(
                tower_dir, locations, ctx.out, threads=params.get("threads") or ctx.threads, **common)
        ctx.meta.update({
            "rows": result.rows,
            "dim": result.dim,
            "output_column": result.output_column,
            "id_column": params["id_column"],
            "embedding_format": params["embedding_format"],
            "files": list(result.files),
            "dropped_duplicates": result.dropped_duplicates,
            "model_file": result.model_file,
        })


def _parquet_locations(data: InputArtifact) -> list[str]:
    """Concrete files when the engine listed them, else the source's path or URL (glob, dir)."""
    if data.files:
        return [str(f) for f in data.files]
    return [data.location]


class ItemEmbeddingsBuilder(_EmbeddingsBuilder):
    kind = "item_embeddings"
    side = "item"
    data_field = "items"
    reference_fields = ("towers", "items")
    schema = _schema("items", "item_id")
    description = "item tower over a parquet item table -> part-*.parquet with item_tower_emb"


class UserEmbeddingsBuilder(_EmbeddingsBuilder):
    kind = "user_embeddings"
    side = "user"
    data_field = "users"
    reference_fields = ("towers", "users")
    schema = _schema("users", "user_id")
    description = "user tower over a parquet user table -> part-*.parquet with user_tower_emb"
