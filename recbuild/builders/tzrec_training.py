"""The tzrec kinds that train, evaluate, export and run a model: tzrec_train_eval, tzrec_eval,
tzrec_export and tzrec_predict.

  tzrec_train_eval   torchrun -m tzrec.train_eval  -> model_dir (model.ckpt-N/, pipeline.config)
  tzrec_eval         torchrun -m tzrec.eval        -> eval_result.txt, metrics.json
  tzrec_export       torchrun -m tzrec.export      -> export_dir (user/ item/ | model/ embedding/ | flat)
  tzrec_predict      torchrun -m tzrec.predict     -> part-*.parquet

Every input is declared in the recipe and content-hashed: the pipeline.config file, the data it
reads (injected into the config; a path in the config that the recipe does not declare is an
error), upstream artifacts. The tool writes into the artifact's temporary folder; outputs are
checked before publish; metrics land in metrics.json. How tzrec runs (interpreter, launcher) is the
`tzrec` setting (recbuild/tzrec/runner.py), left out of the key; the tzrec version is in the key.
The base class is recbuild/builders/tzrec_common.py, the flow recbuild/builders/tzrec_step.py,
the other kinds recbuild/builders/tzrec_tools.py; the user's guide docs/tzrec.md.
"""

from __future__ import annotations

import json

from recbuild.builders.tzrec_common import (NAME_LIST, NONEMPTY_STRING, TzrecKind, data_suffix, parquet_rows,
                                            tzrec_schema)
from recbuild.errors import InputError

_EDITS = {"type": "object", "default": {},
          "description": "edits of the pipeline.config, tzrec's --edit_config_json syntax, e.g. "
                         "{train_config.num_epochs: 2, \"feature_configs[0].id_feature.embedding_dim\": 32}"}
_INPUTS = {"type": "object", "additionalProperties": NONEMPTY_STRING, "default": {},
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


_EVAL_DOCS = {
    "auc": "AUC as tzrec's evaluation reports it (the metrics of pipeline.config's model_config)",
    "recall@k": "tzrec's recall@k as its evaluation reports it; for match models (DSSM) in-batch: each "
                "query's positive among the items of its own eval batch only, not the whole catalogue, so not "
                "comparable with recall_eval's or the train kind's",
    "grouped_auc": "tzrec's AUC averaged per group (grouping_key of the metric)",
    "gauc": "tzrec's grouped AUC",
    "global_step": "the step of the evaluated checkpoint",
}


class TzrecTrainEval(TzrecKind):
    kind = "tzrec_train_eval"
    version = "2"  # seeded (param seed) and the checkpoints' random save_id cleared: reproducible
    step = "train_eval"
    headline = ("auc", "recall@k")
    metric_docs = _EVAL_DOCS
    metric_labels = {"recall@k": "tzrec in-batch"}
    description = "TorchEasyRec train_eval: a pipeline.config trained on declared data (model_dir)"
    reference_fields = ("pipeline_config", "data", "eval_data")
    path_fields = ("pipeline_config", "data", "eval_data", "inputs")
    mapping_fields = ("inputs",)
    meaning_fields = ("pipeline_config",)
    schema = tzrec_schema({
        "pipeline_config": {**NONEMPTY_STRING, "description": "the pipeline.config file (a path or a source)"},
        "data": {**NONEMPTY_STRING, "description": "training data (train_input_path): a source, artifact or path"},
        "eval_data": {**NONEMPTY_STRING,
                      "description": "evaluation data (eval_input_path); without it tzrec does not evaluate"},
        "inputs": _INPUTS,
        "edit_config": _EDITS,
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**63 - 1, "default": 0,
                 "description": "seeds torch, numpy and random in tzrec's processes and turns on "
                                "torch's deterministic algorithms on CPU, so training rewrites the same "
                                "bytes (tzrec has no seed setting); null: tzrec's own unseeded run"},
    }, ["pipeline_config", "data"])

    @classmethod
    def meaning_digest(cls, field, params, files):
        """The pipeline.config as tzrec reads it (its own protobuf classes), serialised
        deterministically: comments, whitespace and field order change nothing."""
        from recbuild.errors import BuildError
        from recbuild.tzrec import runner

        if len(files) != 1:
            return None
        try:
            tz = runner.environment(params.get("tzrec"))
            answer = runner.call_helper(tz.python, "canonical", {"in": str(files[0])}, tz.process_env())
        except BuildError:  # no interpreter: the key's tzrec fact says so, and make fails with why
            return None
        return f"tzrec-pipeline-sha256:{answer['sha256']}" if answer.get("sha256") else None

    def run_step(self, ctx, run, p):
        from recbuild.tzrec import outputs
        from recbuild.builders.tzrec_step import write_metrics

        config = ctx.input("pipeline_config")
        if len(config.files) != 1:
            raise InputError(f"pipeline_config {config.name!r} must be one file, not {len(config.files)}")
        paths = {"train_input_path": run.table(ctx.input("data"), data_suffix(ctx.input("data"))),
                 "model_dir": run.declare(run.out())}
        if p.get("eval_data"):
            paths["eval_input_path"] = run.table(ctx.input("eval_data"), data_suffix(ctx.input("eval_data")))
        paths.update(self.declared_inputs(ctx, run, p))
        prepared, facts = run.prepare_config(config.files[0], p.get("edit_config") or {}, paths,
                                             f"pipeline_config {config.name!r}")
        steps, epochs = _expected_steps(run, facts, ctx.input("data"))
        run.run("tzrec.train_eval", ["--pipeline_config_path", run.rel(prepared)], distributed=True,
                seed=p["seed"], steps=steps, epochs=epochs)
        info = outputs.checkpoints(ctx.out, expect_eval=bool(p.get("eval_data")))
        if p.get("eval_data"):
            write_metrics(ctx.out, outputs.eval_metrics(ctx.out / "train_eval_result_v2.txt"))
        run.finish({"model": facts.get("model")})
        ctx.meta.update(info)
        ctx.meta["model"] = facts.get("model")


def _expected_steps(run, facts: dict, data) -> tuple[int | None, int | None]:
    """(training steps, epochs) the progress line counts towards: num_steps, else the table's rows
    per batch times num_epochs with one process (other launchers split the rows: no total)."""
    import math

    from recbuild.tzrec import runner

    epochs = facts.get("num_epochs") or None
    if facts.get("num_steps"):
        return int(facts["num_steps"]), None
    rows, batch = parquet_rows(data), facts.get("batch_size")
    if not (rows and batch and epochs) or run.tz.launcher != runner.DEFAULT_LAUNCHER:
        return None, epochs
    return math.ceil(rows / batch) * epochs, epochs


class _FromCheckpoints(TzrecKind):
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
    metric_labels = {"recall@k": "tzrec in-batch"}
    description = "TorchEasyRec eval of a checkpoint on declared data (eval_result.txt, metrics.json)"
    reference_fields = ("checkpoints", "eval_data")
    path_fields = ("eval_data", "inputs")
    mapping_fields = ("inputs",)
    schema = tzrec_schema({
        "checkpoints": {**NONEMPTY_STRING, "description": "a tzrec_train_eval artifact"},
        "eval_data": {**NONEMPTY_STRING, "description": "evaluation data: a source, artifact or path"},
        "select": {**_SELECT, "description": "latest (default) | best | a checkpoint folder (model.ckpt-N)"},
        "metric": _METRIC,
        "bigger_is_better": _BIGGER,
        "inputs": _INPUTS,
        "edit_config": _EDITS,
    }, ["checkpoints", "eval_data"])

    def run_step(self, ctx, run, p):
        from recbuild.tzrec import outputs
        from recbuild.builders.tzrec_step import write_metrics

        eval_path = run.table(ctx.input("eval_data"), data_suffix(ctx.input("eval_data")))
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
    schema = tzrec_schema({
        "checkpoints": {**NONEMPTY_STRING, "description": "a tzrec_train_eval artifact"},
        "data": {**NONEMPTY_STRING, "description": "a table tzrec traces the model on (its train_input_path; "
                                        "usually the training data)"},
        "select": _SELECT,
        "metric": _METRIC,
        "bigger_is_better": _BIGGER,
        "assets": {**NAME_LIST, "description": "files copied into every exported folder (--asset_files): "
                                            "sources, artifacts (all their files) or paths, e.g. a "
                                            "tree's serving_tree"},
        "inputs": _INPUTS,
        "edit_config": _EDITS,
    }, ["checkpoints", "data"])

    def run_step(self, ctx, run, p):
        from recbuild.tzrec import outputs
        from recbuild.builders.tzrec_step import data_files

        data = run.table(ctx.input("data"), data_suffix(ctx.input("data")))
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



class TzrecPredict(TzrecKind):
    kind = "tzrec_predict"
    step = "predict"
    description = "TorchEasyRec predict with an exported model over a table (part-*.parquet)"
    reference_fields = ("model", "data")
    path_fields = ("data",)
    schema = tzrec_schema({
        "model": {**NONEMPTY_STRING, "description": "a tzrec_export artifact, or recbuild's export / towers "
                                         "(their TorchEasyRec files, tzrec_files)"},
        "tower": {"type": ["string", "null"], "default": None,
                  "description": "exported folder inside it: user | item (match models), model | "
                                 "embedding (TDM); default: the top when it holds scripted_model.pt"},
        "data": {**NONEMPTY_STRING, "description": "input table (predict_input_path): a source, artifact or path"},
        "reserved_columns": {**NAME_LIST, "description": "input columns copied to the output (after the outputs)"},
        "output_columns": {"type": ["array", "null"], "items": NONEMPTY_STRING, "default": None,
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

    def run_step(self, ctx, run, p):
        from recbuild.tzrec import outputs

        folder = self._folder(ctx, p)
        data = ctx.input("data")
        args = ["--scripted_model_path", run.rel(folder), "--predict_input_path",
                run.table(data, data_suffix(data)), "--predict_output_path", run.out(),
                "--predict_threads", p["predict_threads"]]
        if p.get("reserved_columns"):
            args += ["--reserved_columns", ",".join(p["reserved_columns"])]
        if p.get("output_columns"):
            args += ["--output_columns", ",".join(p["output_columns"])]
        if p.get("batch_size"):
            args += ["--batch_size", p["batch_size"]]
        if p.get("edit_config"):
            args += ["--edit_config_json", json.dumps(p["edit_config"], sort_keys=True)]
        run.run("tzrec.predict", args, distributed=True)
        info = outputs.parquet_table(ctx.out, [*(p.get("output_columns") or []), *p["reserved_columns"]],
                                     parquet_rows(data), "predict")
        run.finish()
        ctx.meta.update(info)

