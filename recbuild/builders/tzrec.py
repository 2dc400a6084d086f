"""TorchEasyRec's own entry points as build steps: the `tzrec_*` kinds.

  tzrec_train_eval          torchrun -m tzrec.train_eval       -> model_dir (model.ckpt-N/, pipeline.config)
  tzrec_eval                torchrun -m tzrec.eval             -> eval_result.txt, metrics.json
  tzrec_export              torchrun -m tzrec.export           -> export_dir (user/ item/ | model/ embedding/ | flat)
  tzrec_predict             torchrun -m tzrec.predict          -> part-*.parquet
  tzrec_create_faiss_index  python -m tzrec.tools.create_faiss_index -> faiss_index, id_mapping (+ index_meta.json)
  tzrec_hitrate             torchrun -m tzrec.tools.hitrate    -> total/, [details/], metrics.json
  tzrec_init_tree           python -m tzrec.tools.tdm.init_tree     -> TDM tree files
  tzrec_cluster_tree        python -m tzrec.tools.tdm.cluster_tree  -> TDM tree files
  tzrec_retrieval           torchrun -m tzrec.tools.tdm.retrieval   -> part-*.parquet, metrics.json

Every input is declared in the recipe and content-hashed: the pipeline.config file, the data it
reads (injected into the config; a path in the config that the recipe does not declare is an
error), upstream artifacts. The tool writes into the artifact's temporary folder; outputs are
checked before publish; metrics land in metrics.json. How tzrec runs (interpreter, launcher) is the
`tzrec` setting (recbuild/tzrec/runner.py), left out of the key; the tzrec version is in the key.
The flow is recbuild/builders/tzrec_step.py; the user's guide docs/tzrec.md.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from recbuild.builders.base import BuildContext, Builder, InputArtifact
from recbuild.errors import BuildError, InputError
from recbuild.tzrec import runner

_STR = {"type": "string", "minLength": 1}
_NAMES = {"type": "array", "items": _STR, "default": []}
_EDITS = {"type": "object", "default": {},
          "description": "edits of the pipeline.config, tzrec's --edit_config_json syntax, e.g. "
                         "{train_config.num_epochs: 2, \"feature_configs[0].id_feature.embedding_dim\": 32}"}
_INPUTS = {"type": "object", "additionalProperties": _STR, "default": {},
           "description": "other paths the pipeline.config reads: {FIELD: SOURCE_OR_ARTIFACT_OR_PATH}, e.g. "
                          "{\"feature_configs[3].id_feature.vocab_file\": vocab}; FIELD in edit_config syntax"}
_SELECT = {"type": ["string", "null"], "minLength": 1, "default": None,
           "description": "latest | best | a checkpoint folder (model.ckpt-N); default: the pipeline's "
                          "export_config.exporter_type"}
_METRIC = {"type": ["string", "null"], "minLength": 1, "default": None,
           "description": "select: best: metric of train_eval_result_v2.txt (default: "
                          "export_config.best_exporter_metric, else the only metric)"}
_BIGGER = {"type": ["boolean", "null"], "default": None,
           "description": "select: best: bigger is better (default: export_config.metric_larger_is_better)"}
_TREE_PROPS = {
    "item_id_field": {"type": "string", "minLength": 1, "default": "item_id"},
    "attr_fields": {**_NAMES, "description": "categorical item columns (mode over leaves)"},
    "raw_attr_fields": {**_NAMES, "description": "numeric item columns (mean over leaves)"},
    "attr_delimiter": {"type": "string", "minLength": 1, "default": ","},
    "n_cluster": {"type": "integer", "minimum": 2, "default": 2},
    "id_hash": {"type": "boolean", "default": False,
                "description": "string item ids: runs tzrec with USE_HASH_NODE_ID=1"},
}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    props = dict(properties)
    props["tzrec"] = runner.SETTINGS_SCHEMA
    return {"type": "object", "properties": props, "required": required}


def _embedding_type_problem(artifact: InputArtifact, column: str, where: str) -> None:
    """tzrec's create_faiss_index/hitrate read list<...> or comma strings, not fixed_size_list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recbuild.builders.tzrec_step import data_files

    files = [f for f in data_files(artifact) if f.suffix == ".parquet"]
    if not files:
        raise InputError(f"{where} {artifact.name!r} has no parquet files")
    schema = pq.ParquetFile(files[0]).schema_arrow
    if column not in schema.names:
        raise InputError(f"{where} {artifact.name!r} has no column {column!r}; columns: {', '.join(schema.names)}")
    kind = schema.field(column).type
    if pa.types.is_fixed_size_list(kind):
        raise InputError(f"{where} {artifact.name!r}: column {column} is {kind}, which tzrec's tools cannot "
                         "read (they take list<...> or comma-joined strings); build it with "
                         "`embedding_format: list_double` (recbuild's item/user_embeddings)")


def _rows(artifact: InputArtifact) -> int | None:
    import pyarrow.parquet as pq

    from recbuild.builders.tzrec_step import data_files

    files = [f for f in data_files(artifact) if f.suffix == ".parquet"]
    if not files or len(files) != len(data_files(artifact)):
        return None
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _data_suffix(artifact: InputArtifact) -> str | None:
    from recbuild.builders.tzrec_step import data_files

    names = [f.name for f in data_files(artifact)]
    for suffix in (".parquet", ".csv"):
        if any(n.endswith(suffix) for n in names):
            return suffix
    return None


class _TzrecStep(Builder):
    """Shared by every tzrec kind (kind is empty: not registered)."""

    version = "1"
    key_exclude = ("tzrec",)
    step: ClassVar[str] = ""
    # reference fields that name a table tzrec reads, and the edit_config `inputs` map
    mapping_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def key_facts(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"tzrec": runner.version_fact(params.get("tzrec"))}

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
            self.run(ctx, run, ctx.params)
        finally:
            run.cleanup()

    def precheck(self, ctx: BuildContext, p: dict[str, Any]) -> None:
        """Checks of the inputs before tzrec is looked for (raise InputError)."""

    def run(self, ctx: BuildContext, run, p: dict[str, Any]) -> None:  # pragma: no cover - interface
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
                run.table(artifact, _data_suffix(artifact) if artifact.kind != "source" or
                          len(artifact.files) > 1 else None)
        return edits


# ---------------------------------------------------------------------------------------------
# Training, evaluation, export


_EVAL_DOCS = {
    "auc": "AUC as tzrec's evaluation reports it (the metrics of pipeline.config's model_config)",
    "recall@k": "tzrec's recall@k metric as its evaluation reports it (in-batch for match models)",
    "grouped_auc": "tzrec's AUC averaged per group (grouping_key of the metric)",
    "gauc": "tzrec's grouped AUC",
    "global_step": "the step of the evaluated checkpoint",
}


class TzrecTrainEval(_TzrecStep):
    kind = "tzrec_train_eval"
    step = "train_eval"
    headline = ("auc", "recall@k")
    metric_docs = _EVAL_DOCS
    description = "TorchEasyRec train_eval: a pipeline.config trained on declared data (model_dir)"
    reference_fields = ("pipeline_config", "data", "eval_data")
    path_fields = ("pipeline_config", "data", "eval_data", "inputs")
    mapping_fields = ("inputs",)
    schema = _schema({
        "pipeline_config": {**_STR, "description": "the pipeline.config file (a path or a source)"},
        "data": {**_STR, "description": "training data (train_input_path): a source, artifact or path"},
        "eval_data": {**_STR, "description": "evaluation data (eval_input_path); without it tzrec does not evaluate"},
        "inputs": _INPUTS,
        "edit_config": _EDITS,
    }, ["pipeline_config", "data"])

    def run(self, ctx, run, p):
        from recbuild.tzrec import outputs
        from recbuild.builders.tzrec_step import write_metrics

        config = ctx.input("pipeline_config")
        if len(config.files) != 1:
            raise InputError(f"pipeline_config {config.name!r} must be one file, not {len(config.files)}")
        paths = {"train_input_path": run.table(ctx.input("data"), _data_suffix(ctx.input("data"))),
                 "model_dir": run.declare(run.out())}
        if p.get("eval_data"):
            paths["eval_input_path"] = run.table(ctx.input("eval_data"), _data_suffix(ctx.input("eval_data")))
        paths.update(self.declared_inputs(ctx, run, p))
        prepared, facts = run.prepare_config(config.files[0], p.get("edit_config") or {}, paths,
                                             f"pipeline_config {config.name!r}")
        run.run("tzrec.train_eval", ["--pipeline_config_path", run.rel(prepared)], distributed=True)
        info = outputs.checkpoints(ctx.out, expect_eval=bool(p.get("eval_data")))
        if p.get("eval_data"):
            write_metrics(ctx.out, outputs.eval_metrics(ctx.out / "train_eval_result_v2.txt"))
        run.finish({"model": facts.get("model")})
        ctx.meta.update(info)
        ctx.meta["model"] = facts.get("model")


class _FromCheckpoints(_TzrecStep):
    """Steps that read a tzrec_train_eval artifact's pipeline.config and one of its checkpoints."""

    def prepared(self, ctx, run, p, paths: dict[str, str]):
        from recbuild.tzrec import checkpoints as ck

        folder = ctx.input("checkpoints")
        source = folder.path / "pipeline.config"
        if not source.is_file() or not ck.list_checkpoints(folder.path):
            raise InputError(f"checkpoints {folder.name!r} is not a tzrec model_dir (pipeline.config and "
                             "model.ckpt-<step>/model/); build it with kind: tzrec_train_eval")
        # tzrec reads no file through model_dir/train_input_path here unless `paths` says so
        paths = {"model_dir": run.declare(run.rel(folder.path)), "train_input_path": "",
                 "eval_input_path": "", **self.declared_inputs(ctx, run, p), **paths}
        prepared, facts = run.prepare_config(source, p.get("edit_config") or {}, paths,
                                             f"{folder.name}/pipeline.config")
        choice = ck.choose(folder.path, p.get("select"), p.get("metric"), p.get("bigger_is_better"), facts)
        run.declare(run.rel(choice.path))
        return prepared, facts, choice


class TzrecEval(_FromCheckpoints):
    kind = "tzrec_eval"
    step = "eval"
    headline = ("auc", "recall@k")
    metric_docs = _EVAL_DOCS
    description = "TorchEasyRec eval of a checkpoint on declared data (eval_result.txt, metrics.json)"
    reference_fields = ("checkpoints", "eval_data")
    path_fields = ("eval_data", "inputs")
    mapping_fields = ("inputs",)
    schema = _schema({
        "checkpoints": {**_STR, "description": "a tzrec_train_eval artifact"},
        "eval_data": {**_STR, "description": "evaluation data: a source, artifact or path"},
        "select": {**_SELECT, "description": "latest (default) | best | a checkpoint folder (model.ckpt-N)"},
        "metric": _METRIC,
        "bigger_is_better": _BIGGER,
        "inputs": _INPUTS,
        "edit_config": _EDITS,
    }, ["checkpoints", "eval_data"])

    def run(self, ctx, run, p):
        from recbuild.tzrec import outputs
        from recbuild.builders.tzrec_step import write_metrics

        eval_path = run.table(ctx.input("eval_data"), _data_suffix(ctx.input("eval_data")))
        prepared, facts, choice = self.prepared(
            ctx, run, {**p, "select": p.get("select") or "latest"},
            {"model_dir": run.declare(run.out()), "eval_input_path": eval_path})
        run.run("tzrec.eval", ["--pipeline_config_path", run.rel(prepared), "--checkpoint_path",
                               run.rel(choice.path), "--eval_result_filename", "eval_result.txt"],
                distributed=True)
        metrics = outputs.eval_metrics(ctx.out / "eval_result.txt")
        metrics["global_step"] = choice.step
        write_metrics(ctx.out, metrics)
        run.finish({"checkpoint": choice.describe()})
        ctx.meta.update(choice.describe())


class TzrecExport(_FromCheckpoints):
    kind = "tzrec_export"
    step = "export"
    description = "TorchEasyRec export of a selected checkpoint (user/ item/, model/ embedding/, or flat)"
    reference_fields = ("checkpoints", "data", "assets")
    path_fields = ("data", "assets", "inputs")
    mapping_fields = ("inputs",)
    schema = _schema({
        "checkpoints": {**_STR, "description": "a tzrec_train_eval artifact"},
        "data": {**_STR, "description": "a table tzrec traces the model on (its train_input_path; "
                                        "usually the training data)"},
        "select": _SELECT,
        "metric": _METRIC,
        "bigger_is_better": _BIGGER,
        "assets": {**_NAMES, "description": "files copied into every exported folder (--asset_files): "
                                            "sources, artifacts (all their files) or paths, e.g. a "
                                            "tree's serving_tree"},
        "inputs": _INPUTS,
        "edit_config": _EDITS,
    }, ["checkpoints", "data"])

    def run(self, ctx, run, p):
        from recbuild.tzrec import outputs
        from recbuild.builders.tzrec_step import data_files

        data = run.table(ctx.input("data"), _data_suffix(ctx.input("data")))
        prepared, facts, choice = self.prepared(ctx, run, p, {"train_input_path": data})
        assets = []
        for artifact in ctx.inputs_of("assets"):
            assets += [run.rel(f) for f in data_files(artifact)]
        names = [a.rsplit("/", 1)[-1] for a in assets]
        if len(set(names)) != len(names):
            raise InputError(f"assets: two files share a name ({', '.join(sorted(names))}); tzrec copies "
                             "them by basename")
        written = run.scratch / "export"
        args = ["--pipeline_config_path", run.rel(prepared), "--export_dir", run.rel(written),
                "--checkpoint_path", run.rel(choice.path)]
        if assets:
            args += ["--asset_files", ",".join(assets)]
        run.run("tzrec.export", args, distributed=True)
        run.relocate(written)
        info = outputs.export(ctx.out)
        run.finish({"checkpoint": choice.describe(), "model": facts.get("model")})
        ctx.meta.update(choice.describe())
        ctx.meta.update(info)


# ---------------------------------------------------------------------------------------------
# Predict and the embedding tools


class TzrecPredict(_TzrecStep):
    kind = "tzrec_predict"
    step = "predict"
    description = "TorchEasyRec predict with an exported model over a table (part-*.parquet)"
    reference_fields = ("model", "data")
    path_fields = ("data",)
    schema = _schema({
        "model": {**_STR, "description": "a tzrec_export artifact, or recbuild's export / towers "
                                         "(their TorchEasyRec files, tzrec_files)"},
        "tower": {"type": ["string", "null"], "default": None,
                  "description": "exported folder inside it: user | item (match models), model | "
                                 "embedding (TDM); default: the top when it holds scripted_model.pt"},
        "data": {**_STR, "description": "input table (predict_input_path): a source, artifact or path"},
        "reserved_columns": {**_NAMES, "description": "input columns copied to the output (after the outputs)"},
        "output_columns": {"type": ["array", "null"], "items": _STR, "default": None,
                           "description": "model outputs to write (default: all)"},
        "batch_size": {"type": ["integer", "null"], "minimum": 1, "default": None},
        "predict_threads": {"type": "integer", "minimum": 1, "default": 1,
                            "description": "tzrec's forward threads; 1 keeps the input's row order"},
        "edit_config": _EDITS,
    }, ["model", "data"])

    def precheck(self, ctx, p):
        self._folder(ctx, p)

    @staticmethod
    def _folder(ctx, p):
        """The exported folder to run: it must hold what tzrec.predict loads."""
        from recbuild.ml.serving_bundle import export_layout

        model = ctx.input("model")
        tower = p.get("tower")
        folder = model.path / tower if tower else model.path
        where = (tower + "/") if tower else ""
        if not (folder / "scripted_model.pt").is_file():
            layout = export_layout(model.path)
            hint = {"towers": "set tower: user or tower: item", "tdm": "set tower: model or tower: embedding"}
            raise InputError(f"model {model.name!r} has no {where}scripted_model.pt"
                             f"{'; ' + hint[layout] if layout in hint else '; build it with kind: tzrec_export'}")
        missing = [name for name in ("pipeline.config", "model_acc.json") if not (folder / name).is_file()]
        if missing:
            # recbuild's export/towers say in their manifest why they wrote no TorchEasyRec files
            facts = (model.manifest.get("meta") or {}).get("tzrec") or {}
            facts = facts.get(tower, {}) if tower and "written" not in facts else facts
            why = f" ({facts['reason']})" if isinstance(facts, dict) and facts.get("reason") else ""
            raise InputError(f"model {model.name!r} has no {where}{' or '.join(missing)}, which tzrec.predict "
                             f"loads: recbuild's {model.kind} wrote no TorchEasyRec files{why}"
                             if model.kind in ("export", "towers") else
                             f"model {model.name!r} has no {where}{' or '.join(missing)}, which tzrec.predict "
                             "loads; build it with kind: tzrec_export, or recbuild's export/towers")
        return folder

    def run(self, ctx, run, p):
        from recbuild.tzrec import outputs

        folder = self._folder(ctx, p)
        data = ctx.input("data")
        args = ["--scripted_model_path", run.rel(folder), "--predict_input_path",
                run.table(data, _data_suffix(data)), "--predict_output_path", run.out(),
                "--predict_threads", p.get("predict_threads", 1)]
        if p.get("reserved_columns"):
            args += ["--reserved_columns", ",".join(p["reserved_columns"])]
        if p.get("output_columns"):
            args += ["--output_columns", ",".join(p["output_columns"])]
        if p.get("batch_size"):
            args += ["--batch_size", p["batch_size"]]
        if p.get("edit_config"):
            args += ["--edit_config_json", json.dumps(p["edit_config"], sort_keys=True)]
        run.run("tzrec.predict", args, distributed=True)
        info = outputs.parquet_table(ctx.out, [*(p.get("output_columns") or []), *p.get("reserved_columns", [])],
                                     _rows(data), "predict")
        run.finish()
        ctx.meta.update(info)


class TzrecCreateFaissIndex(_TzrecStep):
    kind = "tzrec_create_faiss_index"
    step = "create_faiss_index"
    description = "TorchEasyRec create_faiss_index over an embedding table (faiss_index, id_mapping)"
    reference_fields = ("embeddings",)
    path_fields = ("embeddings",)
    schema = _schema({
        "embeddings": {**_STR, "description": "item embedding table (tzrec predict output, or recbuild's "
                                              "item_embeddings with embedding_format: list_double)"},
        "id_field": {**_STR, "default": "item_id"},
        "embedding_field": {**_STR, "default": "item_tower_emb"},
        "index_type": {"enum": ["IVFFlatIP", "HNSWFlatIP", "IVFFlatL2", "HNSWFlatL2"], "default": "IVFFlatIP"},
        "ivf_nlist": {"type": "integer", "minimum": 1, "default": 1000},
        "hnsw_M": {"type": "integer", "minimum": 2, "default": 32},
        "hnsw_efConstruction": {"type": "integer", "minimum": 1, "default": 200},
        "batch_size": {"type": "integer", "minimum": 1, "default": 1024},
    }, ["embeddings"])

    def precheck(self, ctx, p):
        table = ctx.input("embeddings")
        _embedding_type_problem(table, p.get("embedding_field", "item_tower_emb"), "embeddings")
        rows = _rows(table)
        if p.get("index_type", "IVFFlatIP").startswith("IVF") and rows is not None \
                and p.get("ivf_nlist", 1000) > rows:
            raise InputError(f"ivf_nlist={p.get('ivf_nlist', 1000)} is larger than the {rows} embeddings in "
                             f"{table.name!r}; faiss needs at least one vector per list (about sqrt(rows) "
                             "is usual)")

    def run(self, ctx, run, p):
        from recbuild.tzrec import outputs

        table = ctx.input("embeddings")
        index_type = p.get("index_type", "IVFFlatIP")
        args = ["--embedding_input_path", run.table(table), "--index_output_dir", run.out(),
                "--id_field", p.get("id_field", "item_id"), "--embedding_field",
                p.get("embedding_field", "item_tower_emb"), "--index_type", index_type,
                "--ivf_nlist", p.get("ivf_nlist", 1000), "--hnsw_M", p.get("hnsw_M", 32),
                "--hnsw_efConstruction", p.get("hnsw_efConstruction", 200),
                "--batch_size", p.get("batch_size", 1024)]
        run.run("tzrec.tools.create_faiss_index", args, distributed=False)
        meta = outputs.faiss_index(ctx.out)
        run.finish()
        ctx.meta.update({k: meta[k] for k in ("type", "metric", "dim", "count")})


class TzrecHitrate(_TzrecStep):
    kind = "tzrec_hitrate"
    step = "hitrate"
    headline = ("hitrate@k",)
    metric_docs = {"hitrate@k": "tzrec.tools.hitrate: ground-truth items found in the top k of the index "
                                "search over all ground-truth items"}
    description = "TorchEasyRec hitrate of user vectors against an IVF index of item vectors (metrics.json)"
    reference_fields = ("user_embeddings", "item_embeddings")
    path_fields = ("user_embeddings", "item_embeddings")
    schema = _schema({
        "user_embeddings": {**_STR, "description": "table with request id, ground truth items and user vectors"},
        "item_embeddings": {**_STR, "description": "table with item ids and item vectors"},
        "request_id_field": {**_STR, "default": "request_id"},
        "gt_items_field": {**_STR, "default": "gt_items",
                           "description": "ground truth: a list, or ids joined by commas (an id column works)"},
        "user_embedding_field": {**_STR, "default": "user_tower_emb"},
        "item_id_field": {**_STR, "default": "item_id"},
        "item_embedding_field": {**_STR, "default": "item_tower_emb"},
        "index_type": {"enum": ["IVFFlatIP", "IVFFlatL2"], "default": "IVFFlatIP"},
        "ivf_nlist": {"type": "integer", "minimum": 1, "default": 1000},
        "ivf_nprobe": {"type": "integer", "minimum": 1, "default": 800},
        "top_k": {"type": "integer", "minimum": 1, "default": 200},
        "num_interests": {"type": "integer", "minimum": 1, "default": 1},
        "batch_size": {"type": "integer", "minimum": 1, "default": 1024},
        "details": {"type": "boolean", "default": False,
                    "description": "also write details/ (per request: top-k ids, distances, hits)"},
    }, ["user_embeddings", "item_embeddings"])

    def precheck(self, ctx, p):
        users, items = ctx.input("user_embeddings"), ctx.input("item_embeddings")
        _embedding_type_problem(users, p.get("user_embedding_field", "user_tower_emb"), "user_embeddings")
        _embedding_type_problem(items, p.get("item_embedding_field", "item_tower_emb"), "item_embeddings")
        rows = _rows(items)
        if rows is not None and p.get("ivf_nlist", 1000) > rows:
            raise InputError(f"ivf_nlist={p.get('ivf_nlist', 1000)} is larger than the {rows} items in "
                             f"{items.name!r}; lower it (about sqrt(rows) is usual)")

    def run(self, ctx, run, p):
        from recbuild.tzrec import outputs
        from recbuild.builders.tzrec_step import write_metrics

        users, items = ctx.input("user_embeddings"), ctx.input("item_embeddings")
        args = ["--user_gt_input", run.table(users), "--item_embedding_input", run.table(items),
                "--total_hitrate_output", run.out("total"),
                "--request_id_field", p.get("request_id_field", "request_id"),
                "--gt_items_field", p.get("gt_items_field", "gt_items"),
                "--user_embedding_field", p.get("user_embedding_field", "user_tower_emb"),
                "--item_id_field", p.get("item_id_field", "item_id"),
                "--item_embedding_field", p.get("item_embedding_field", "item_tower_emb"),
                "--index_type", p.get("index_type", "IVFFlatIP"), "--ivf_nlist", p.get("ivf_nlist", 1000),
                "--ivf_nprobe", p.get("ivf_nprobe", 800), "--top_k", p.get("top_k", 200),
                "--num_interests", p.get("num_interests", 1), "--batch_size", p.get("batch_size", 1024)]
        if p.get("details"):
            args += ["--hitrate_details_output", run.out("details")]
        run.run("tzrec.tools.hitrate", args, distributed=True)
        value = outputs.hitrate(ctx.out / "total")
        write_metrics(ctx.out, {f"hitrate@{p.get('top_k', 200)}": value})
        run.finish()
        ctx.meta[f"hitrate@{p.get('top_k', 200)}"] = value


# ---------------------------------------------------------------------------------------------
# TDM tree tools and retrieval


class _TreeTool(_TzrecStep):
    def tree_args(self, run, p) -> list[Any]:
        args = ["--item_id_field", p.get("item_id_field", "item_id"), "--node_edge_output_file", run.out(),
                "--tree_output_dir", run.out(), "--n_cluster", p.get("n_cluster", 2),
                "--attr_delimiter", p.get("attr_delimiter", ",")]
        if p.get("attr_fields"):
            args += ["--attr_fields", ",".join(p["attr_fields"])]
        if p.get("raw_attr_fields"):
            args += ["--raw_attr_fields", ",".join(p["raw_attr_fields"])]
        if p.get("id_hash"):
            run.tz.env["USE_HASH_NODE_ID"] = "1"
        return args

    def finish_tree(self, ctx, run):
        from recbuild.tzrec import outputs

        info = outputs.tree(ctx.out)
        run.finish()
        ctx.meta.update(info)


class TzrecInitTree(_TreeTool):
    kind = "tzrec_init_tree"
    step = "init_tree"
    description = "TorchEasyRec's TDM init_tree: items by (category, id) (serving_tree, node/edge tables)"
    reference_fields = ("items",)
    path_fields = ("items",)
    schema = _schema({
        "items": {**_STR, "description": "item table: a source, artifact or path"},
        "cate_id_field": {**_STR, "default": "cate_id"},
        **_TREE_PROPS,
    }, ["items"])

    def run(self, ctx, run, p):
        args = ["--item_input_path", run.table(ctx.input("items")),
                "--cate_id_field", p.get("cate_id_field", "cate_id"), *self.tree_args(run, p)]
        run.run("tzrec.tools.tdm.init_tree", args, distributed=False)
        self.finish_tree(ctx, run)


class TzrecClusterTree(_TreeTool):
    kind = "tzrec_cluster_tree"
    step = "cluster_tree"
    description = "TorchEasyRec's TDM cluster_tree: recursive k-means over item embeddings"
    reference_fields = ("embeddings",)
    path_fields = ("embeddings",)
    schema = _schema({
        "embeddings": {**_STR, "description": "item embeddings (tzrec predict of export/embedding, or any "
                                              "table with ids and vectors)"},
        "embedding_field": {**_STR, "default": "item_emb"},
        "parallel": {"type": "integer", "minimum": 1, "default": 1,
                     "description": "k-means processes; tzrec's own default 16 can hang on small inputs"},
        **_TREE_PROPS,
    }, ["embeddings"])

    def run(self, ctx, run, p):
        args = ["--item_input_path", run.table(ctx.input("embeddings")),
                "--embedding_field", p.get("embedding_field", "item_emb"),
                "--parallel", p.get("parallel", 1), *self.tree_args(run, p)]
        run.run("tzrec.tools.tdm.cluster_tree", args, distributed=False)
        self.finish_tree(ctx, run)


class TzrecRetrieval(_TzrecStep):
    kind = "tzrec_retrieval"
    step = "retrieval"
    headline = ("recall",)
    metric_docs = {"recall": "recall of tzrec's TDM beam search, as tzrec.tools.tdm.retrieval logs it"}
    description = "TorchEasyRec's TDM retrieval (beam search) with an exported TDM model over a tree"
    reference_fields = ("model", "tree", "data")
    path_fields = ("data",)
    schema = _schema({
        "model": {**_STR, "description": "a tzrec_export artifact of a TDM model (its model/ folder)"},
        "tower": {**_STR, "default": "model", "description": "the exported folder to run"},
        "tree": {**_STR, "description": "the tree: tzrec_init_tree, tzrec_cluster_tree or recbuild's tdm_tree"},
        "data": {**_STR, "description": "queries (user features + the gt item): a source, artifact or path"},
        "recall_num": {"type": "integer", "minimum": 1, "default": 200},
        "n_cluster": {"type": "integer", "minimum": 2, "default": 2},
        "reserved_columns": _NAMES,
        "batch_size": {"type": ["integer", "null"], "minimum": 1, "default": None},
        "num_worker_per_level": {"type": "integer", "minimum": 1, "default": 1},
        "id_hash": {"type": "boolean", "default": False},
    }, ["model", "tree", "data"])

    def run(self, ctx, run, p):
        from recbuild.retrieval import tree_io
        from recbuild.tzrec import outputs
        from recbuild.builders.tzrec_step import write_metrics

        model, tree = ctx.input("model"), ctx.input("tree")
        folder = model.path / p.get("tower", "model")
        if not (folder / "scripted_model.pt").is_file():
            raise InputError(f"model {model.name!r} has no {p.get('tower', 'model')}/scripted_model.pt; "
                             "give a tzrec_export artifact of a TDM model")
        for name in (tree_io.NODE_TABLE, tree_io.EDGE_TABLE, tree_io.PREDICT_EDGE_TABLE):
            if not (tree.path / name).is_file():
                raise InputError(f"tree {tree.name!r} has no {name}")
        # retrieval reads the tree tables named in the exported pipeline.config: a copy of the model
        # folder with the config pointing at this recipe's tree
        import shutil

        local = run.scratch / "model"
        shutil.copytree(folder, local)
        edits = {"train_input_path": "", "eval_input_path": "", "model_dir": "",
                 "data_config.tdm_sampler.item_input_path": run.declare(run.rel(tree.path / tree_io.NODE_TABLE)),
                 "data_config.tdm_sampler.edge_input_path": run.declare(run.rel(tree.path / tree_io.EDGE_TABLE)),
                 "data_config.tdm_sampler.predict_edge_input_path":
                     run.declare(run.rel(tree.path / tree_io.PREDICT_EDGE_TABLE))}
        for value in self._asset_dirs(local):
            run.declare(value)
        run.prepare_config(local / "pipeline.config", {}, edits, f"{model.name}/pipeline.config",
                           name="model/pipeline.config")
        if p.get("id_hash"):
            run.tz.env["USE_HASH_NODE_ID"] = "1"
        data = ctx.input("data")
        args = ["--scripted_model_path", run.rel(local), "--predict_input_path", run.table(data, _data_suffix(data)),
                "--predict_output_path", run.out(), "--recall_num", p.get("recall_num", 200),
                "--n_cluster", p.get("n_cluster", 2), "--num_worker_per_level", p.get("num_worker_per_level", 1)]
        if p.get("reserved_columns"):
            args += ["--reserved_columns", ",".join(p["reserved_columns"])]
        if p.get("batch_size"):
            args += ["--batch_size", p["batch_size"]]
        run.run("tzrec.tools.tdm.retrieval", args, distributed=True)
        info = outputs.parquet_table(ctx.out, ["recall_ids"], None, "retrieval")
        recall = _logged_recall(run.log_path)
        if recall is not None:
            write_metrics(ctx.out, {"recall": recall})
        run.finish()
        ctx.meta.update(info)

    @staticmethod
    def _asset_dirs(folder) -> list[str]:
        text = (folder / "pipeline.config").read_text(encoding="utf-8")
        return re.findall(r'asset_dir:\s*"([^"]*)"', text)


def _logged_recall(log_path) -> float | None:
    found = None
    try:
        for line in open(log_path, encoding="utf-8", errors="replace"):
            match = re.search(r"Retrieval Finished\. Recall:\s*([0-9.eE+-]+)", line)
            if match:
                found = float(match.group(1))
    except OSError:
        return None
    return found
