"""`kind: export` — select a checkpoint and write the deployable model folder.

Folder (root = the selected checkpoint):
  model.pt2, scripted_model.pt, [aoti_model.pt2]   the formats asked for (verified against eager)
  model.pt            the selected state_dict (what `kind: towers` loads)
  pipeline.yaml       resolved model config + which checkpoint was selected and how
  fg.json             every feature the model reads (TorchEasyRec's shape, no bucketizer)
  pipeline.config, model_acc.json   with tzrec_files (default auto, when the features allow):
                      what `tzrec.predict --scripted_model_path` loads; scripted_model.pt then
                      also takes tzrec's call style (recbuild/ml/tzrec_contract.py)
  <assets>            files copied in by basename
  sparse/, dense/     with split: sparse_dense (embedding tables as parquet + dense module)
  history/<step>/     with exports_to_keep: N > 1, the N-1 previous exports (see below)
  EXPORT_DONE         (done_file) written last

exports_to_keep: an artifact folder is immutable and rebuilt from scratch, so "keep the previous
exports" cannot mean "whatever a previous build left". It means what EasyRec's exporter would have on
disk at the end of training: with select: best, the checkpoints at which the running best improved
(in step order); with latest/final, the most recent checkpoints. The last N of that sequence are
exported: the newest at the root, the others under history/<step>/ (same files, no done file).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from recbuild.builders.base import BuildContext, Builder
from recbuild.errors import BuildError

EXPORT_OWN_FILES = {"model.pt2", "scripted_model.pt", "aoti_model.pt2", "model.pt", "pipeline.yaml",
                    "fg.json", "pipeline.config", "model_acc.json", "history", "sparse", "dense",
                    "MANIFEST.json"}


def _asset_source(entry) -> str:
    """The node an `assets` entry names: 'NODE' (or a file path) or {from: NODE, file: relpath}."""
    return entry if isinstance(entry, str) else entry["from"]


def default_metrics(model_config: dict) -> tuple[str, ...]:
    from recbuild.ml.models import RANKING_FAMILIES, RETRIEVAL_FAMILIES

    family = model_config.get("family")
    if family in RETRIEVAL_FAMILIES:
        return ("recall@50",)
    if family in RANKING_FAMILIES or family == "tdm":
        return ("auc",)
    return ("auc", "recall@50")


TZREC_FILES_SCHEMA = {
    "enum": ["auto", "required", "off"], "default": "auto",
    "description": "TorchEasyRec's predict files beside recbuild's (scripted_model.pt taking both "
                   "call styles, pipeline.config, model_acc.json): auto = when every feature fits "
                   "tzrec's FG_NONE input (else skipped, with the reason in the manifest), required = "
                   "fail when one does not, off = never (docs/tzrec.md)"}


def check_tzrec_files(params: dict) -> list[tuple[str, str]]:
    """Recipe-time problems of `tzrec_files` (export and towers)."""
    formats = params["formats"]
    if params.get("tzrec_files") == "required" and "torchscript" not in formats:
        return [("tzrec_files", "required needs torchscript in formats (TorchEasyRec's predict loads "
                                "scripted_model.pt)")]
    return []


def write_module(folder: Path, module, specs, formats, tolerance: float, tzrec_files: str,
                 where: str) -> tuple[dict, dict]:
    """One exported module: recbuild's formats + fg.json, and TorchEasyRec's predict files when
    ``tzrec_files`` allows (then scripted_model.pt is the module taking both call styles).

    Returns (max_abs_diff per format, facts on TorchEasyRec's files for the manifest).
    """
    from recbuild.ml import tzrec_contract
    from recbuild.ml.exporter.formats import verify_formats, write_formats
    from recbuild.ml.feature_io import write_fg
    from recbuild.ml.models.features import example_inputs, io_specs

    skipped = tzrec_contract.plan(tzrec_files, specs, formats, where)
    recbuild_only = [f for f in formats if skipped is not None or f != "torchscript"]
    write_formats(module, example_inputs(specs, 4, seed=0), folder, recbuild_only)
    if skipped is None:
        tzrec_contract.write_files(module, specs, folder)
    verify_inputs = example_inputs(specs, 7, seed=1)
    diffs = verify_formats(module, verify_inputs, folder, formats, tolerance)
    write_fg(folder, io_specs(specs))
    if skipped is not None:
        return diffs, {"written": False, "reason": skipped}
    both_ways = tzrec_contract.verify(module, specs, folder, verify_inputs, tolerance)
    return diffs, {"written": True, "files": list(tzrec_contract.FILES), "max_abs_diff": both_ways}


def write_export_folder(folder: Path, model, config: dict, specs, formats, tolerance: float,
                        state_dict: dict, pipeline_extra: dict, split: str = "none",
                        tzrec_files: str = "auto") -> tuple[dict, dict]:
    """Write one export (formats + model.pt + pipeline.yaml + fg.json [+ TorchEasyRec's files]);
    returns (max_abs_diff per format, facts on TorchEasyRec's files)."""
    from recbuild.ml.exporter.pipeline_yaml import write_pipeline_yaml
    from recbuild.ml.training.checkpoints import save_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    diffs, tzrec = write_module(folder, model, specs, formats, tolerance, tzrec_files, "the model")
    save_state_dict(state_dict, folder / "model.pt")
    write_pipeline_yaml(folder, config, pipeline_extra)
    if split == "sparse_dense":
        from recbuild.ml.exporter.sparse_dense import write_sparse_dense

        diffs.update(write_sparse_dense(model, specs, folder, formats, tolerance))
    return diffs, tzrec


def log_tzrec_facts(ctx: BuildContext, what: str, facts: dict) -> None:
    if facts["written"]:
        ctx.log.info("%s: TorchEasyRec's predict files written; scripted_model.pt called both ways: "
                     "max_abs_diff %s", what, facts["max_abs_diff"])
    elif facts["reason"] != "tzrec_files: off":
        ctx.log.warning("%s: TorchEasyRec's predict files not written (tzrec_files: auto): %s", what,
                        facts["reason"])


class ExportBuilder(Builder):
    kind = "export"
    uses_torch = True
    version = "3"  # 2: fg.json in tzrec's shape without buckets, TorchEasyRec's predict files; 3: the
    # exported files name the models' new module paths (recbuild.ml.models): other bytes, same values
    toolchain = ("torch", "python", "machine")
    uses_model = True
    reference_fields = ("checkpoints", "assets")
    path_fields = ("assets",)  # an asset may be a plain file path (an implicit source)
    description = "select a checkpoint; write model.pt2 / scripted_model.pt, pipeline.yaml, fg.json"
    schema = {
        "type": "object",
        "properties": {
            "checkpoints": {"type": "string",
                            "description": "train artifact or a folder with model.ckpt-<step>/model.pt"},
            "select": {"type": "string", "minLength": 1, "default": "latest",
                       "description": "latest | best | final | a checkpoint path inside checkpoints"},
            "metric": {"type": "string", "minLength": 1,
                       "description": "select: best: metric of train_eval_result_v2.txt"},
            "bigger_is_better": {"type": "boolean", "default": True},
            "formats": {"type": "array", "minItems": 1, "uniqueItems": True,
                        "items": {"enum": ["torch_export", "torchscript", "aoti"]},
                        "default": ["torch_export", "torchscript"]},
            "assets": {"type": "array", "default": [],
                       "items": {"oneOf": [
                           {"type": "string", "minLength": 1},
                           {"type": "object", "additionalProperties": False, "required": ["from", "file"],
                            "properties": {"from": {"type": "string", "minLength": 1},
                                           "file": {"type": "string", "minLength": 1}}}]},
                       "description": "files copied into the export by basename: a source, a file "
                                      "path, an artifact (all its files) or {from: ARTIFACT, file: relpath}"},
            "exports_to_keep": {"type": "integer", "minimum": 1, "default": 1},
            "done_file": {"type": "string", "pattern": "^[^/\\\\]+$", "default": "EXPORT_DONE"},
            "tolerance": {"type": "number", "exclusiveMinimum": 0, "default": 1e-4,
                          "description": "max |exported - eager| on the verification batch"},
            "split": {"enum": ["none", "sparse_dense"], "default": "none"},
            "tzrec_files": TZREC_FILES_SCHEMA,
        },
        "required": ["checkpoints"],
    }

    def references(self, params):
        refs = {}
        if params.get("checkpoints") is not None:
            refs["checkpoints"] = [params["checkpoints"]]
        if params.get("assets"):
            refs["assets"] = [_asset_source(entry) for entry in params["assets"]]
        return refs

    def check(self, params):
        problems = []
        select = params["select"]
        if params.get("metric") is not None and select != "best":
            problems.append(("metric", "is used only with select: best"))
        done = params["done_file"]
        if done in EXPORT_OWN_FILES:
            problems.append(("done_file", f"{done!r} is a file the export writes itself"))
        return problems + check_tzrec_files(params)

    def build(self, ctx: BuildContext) -> None:
        from recbuild.ml.exporter.loading import instantiate, load_state_dict
        from recbuild.ml.exporter.selection import select_checkpoint
        from recbuild.ml.models import resolve
        from recbuild.ml.models.features import parse_features

        p = ctx.params
        for path, message in self.check(p):
            raise BuildError(f"{path}: {message}")
        assets = self._plan_assets(ctx, p["assets"])
        config = resolve(ctx.model)
        specs = parse_features(config)
        checkpoints = ctx.input("checkpoints")
        selection = select_checkpoint(
            checkpoints.path, p["select"], p.get("metric"), p["bigger_is_better"],
            p["exports_to_keep"], default_metrics(config))
        formats = list(p["formats"])
        tolerance = float(p["tolerance"])
        split = p["split"]

        exports = [(None, selection.step, selection.weights, selection.name)]
        exports += [(step, step, weights, f"model.ckpt-{step}") for step, weights in selection.history]
        tzrec_files = p["tzrec_files"]
        diffs_by_step, tzrec_by_step = {}, {}
        progress = ctx.progress(len(exports), "checkpoints", "exporting " + ", ".join(formats))
        for history_step, step, weights, name in exports:
            label = f"{checkpoints.name}/{name}"
            progress.note(checkpoint=name)
            state = load_state_dict(weights, label)
            model = instantiate(config, state, label, ctx.recipe_dir)
            folder = ctx.out if history_step is None else ctx.out / "history" / str(history_step)
            info = selection.describe() if history_step is None else \
                {"checkpoint": name, "step": step, "select": selection.select}
            extra = {"checkpoint": info, "formats": formats, "split": split}
            diffs_by_step[step], tzrec_by_step[step] = write_export_folder(
                folder, model, config, specs, formats, tolerance, state, extra, split, tzrec_files)
            ctx.log.info("exported %s: max_abs_diff %s", label, diffs_by_step[step])
            log_tzrec_facts(ctx, label, tzrec_by_step[step])
            progress.advance(1)

        for source, name in assets:
            shutil.copyfile(source, ctx.out / name)
        ctx.meta.update(selection.describe())
        ctx.meta["max_abs_diff"] = diffs_by_step[selection.step]
        ctx.meta["tzrec"] = tzrec_by_step[selection.step]
        if selection.history:
            ctx.meta["history"] = [step for step, _ in selection.history]
        # Written last: a reader that sees the done file sees a complete export.
        (ctx.out / p["done_file"]).write_text("ExportDone\n", encoding="utf-8")

    @staticmethod
    def _plan_assets(ctx: BuildContext, entries: list[str]) -> list[tuple[Path, str]]:
        """(source file, target name) of every asset, checked before any export work."""
        inputs = {artifact.name: artifact for artifact in ctx.inputs_of("assets")}
        planned: list[tuple[Path, str]] = []
        for entry in entries:
            node = _asset_source(entry)
            artifact = inputs.get(node)
            if artifact is None:
                raise BuildError(f"assets: {entry!r}: input {node!r} was not provided")
            if isinstance(entry, dict):
                base = artifact.path.resolve()
                source = (base / entry["file"]).resolve()
                if base not in source.parents:
                    raise BuildError(f"assets: {entry!r}: {entry['file']!r} is outside {node!r}")
                sources = [source]
            else:
                sources = [f for f in artifact.files if f.name != "MANIFEST.json"]
                if not sources and artifact.path.is_file():
                    sources = [artifact.path]
            for source in sources:
                if not source.is_file():
                    raise BuildError(f"assets: {entry!r}: {source} is not a file")
                taken = {name for _, name in planned} | EXPORT_OWN_FILES | {ctx.params["done_file"]}
                if source.name in taken:
                    raise BuildError(f"assets: {entry!r}: {source.name!r} collides with a file of the "
                                     "export or another asset; rename the asset")
                planned.append((source, source.name))
        return planned
