"""`kind: towers` — split a two-tower export into `user/` and `item/` exported modules.

For a `tdm` export it writes `item/` only: the node embedding (TorchEasyRec's `export/embedding`),
output `item_tower_emb`, which `item_embeddings` runs over the item table to feed a learnt tree.

Each folder: model.pt2 / scripted_model.pt (the formats asked for), fg.json with only its own
features, pipeline.yaml (model config + tower + the export's checkpoint), and with tzrec_files
(default auto, when the tower's features allow) pipeline.config + model_acc.json, scripted_model.pt
then taking tzrec.predict's call style too (recbuild/ml/tzrec_contract.py). The model config and the
weights come from the export artifact (pipeline.yaml + model.pt).

Before exporting, each tower is traced with *every* feature of the model as input and the graph is
walked back from its output: a user tower whose output depends on an item feature (or the reverse)
fails the build (EasyRec issue 460: a "split" user tower that still needs product_id leaks the label).
"""

from __future__ import annotations

from recbuild.builders.base import BuildContext, Builder
from recbuild.builders.export import TZREC_FILES_SCHEMA, check_tzrec_files, log_tzrec_facts, write_module
from recbuild.errors import BuildError

TOWERS = (("user", "user_tower_emb"), ("item", "item_tower_emb"))


def check_tower_inputs(tower, tower_name: str, specs, group: str) -> None:
    """Raise if the tower's output depends on a feature of the other group."""
    from recbuild.ml.exporter.reachability import inputs_reaching_outputs
    from recbuild.ml.models.features import example_inputs

    try:
        reached = inputs_reaching_outputs(tower, example_inputs(specs, 4, seed=0))
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"{tower_name}: tracing with torch.export failed ({type(exc).__name__}: "
                         f"{str(exc).strip()[:600]}); the tower cannot be checked or exported") from None
    foreign = sorted(s.name for s in specs if s.group != group and s.name in reached)
    if foreign:
        other = "item" if group == "user" else "user"
        raise BuildError(
            f"the {group} tower ({tower_name}) reads {other} feature(s) {', '.join(foreign)}: its "
            f"exported module would need them at serving time and its embeddings would leak "
            f"{other}-side information (EasyRec issue 460). Move the feature(s) to group: {group} "
            f"or stop the {group} tower from using them.")


class TowersBuilder(Builder):
    kind = "towers"
    uses_torch = True
    version = "3"  # 2: fg.json in tzrec's shape without buckets, TorchEasyRec's predict files; 3: the
    # exported files name the models' new module paths (recbuild.ml.models): other bytes, same values
    toolchain = ("torch", "python", "machine")
    reference_fields = ("model",)
    description = "split a two-tower export into user/ and item/ exported modules"
    schema = {
        "type": "object",
        "properties": {
            "model": {"type": "string", "description": "an export artifact of a two-tower model"},
            "formats": {"type": "array", "minItems": 1, "uniqueItems": True,
                        "items": {"enum": ["torch_export", "torchscript", "aoti"]},
                        "default": ["torch_export", "torchscript"]},
            "tolerance": {"type": "number", "exclusiveMinimum": 0, "default": 1e-4},
            "tzrec_files": TZREC_FILES_SCHEMA,
        },
        "required": ["model"],
    }

    def check(self, params):
        return check_tzrec_files(params)

    def build(self, ctx: BuildContext) -> None:
        for path, message in self.check(ctx.params):
            raise BuildError(f"{path}: {message}")
        from recbuild.ml.exporter.loading import instantiate, load_state_dict
        from recbuild.ml.exporter.pipeline_yaml import read_pipeline_yaml, write_pipeline_yaml
        from recbuild.ml.models.features import example_inputs, group_features, parse_features

        export = ctx.input("model")
        pipeline = read_pipeline_yaml(export.path)
        config = pipeline["model"]
        specs = parse_features(config)
        weights = export.path / "model.pt"
        if not weights.is_file():
            raise BuildError(f"{export.name}: model.pt not found in the export folder; rebuild it "
                             "with kind: export")
        label = f"{export.name}/model.pt"
        model = instantiate(config, load_state_dict(weights, label), label, ctx.recipe_dir)
        formats = list(ctx.params["formats"])
        tolerance = float(ctx.params["tolerance"])
        tzrec_files = ctx.params["tzrec_files"]
        diffs, tzrec = {}, {}
        towers = list(self._towers(model, config, export.name))
        progress = ctx.progress(len(towers), "towers", "exporting " + ", ".join(formats))
        for group, output, tower_name, tower in towers:
            progress.note(tower=group)
            tower.eval()
            check_tower_inputs(tower, tower_name, specs, group)
            own = group_features(specs, group)
            probe = example_inputs(own, 2, seed=0)
            outputs = tower(probe)
            if output not in outputs:
                raise BuildError(f"the {group} tower outputs {sorted(outputs)}; it must output {output!r}")
            folder = ctx.out / group
            folder.mkdir()
            diffs[group], tzrec[group] = write_module(folder, tower, own, formats, tolerance, tzrec_files,
                                                      f"the {group} tower")
            log_tzrec_facts(ctx, f"{group}/", tzrec[group])
            progress.advance(1)
            write_pipeline_yaml(folder, config, {"tower": group, "output": output,
                                                 "checkpoint": pipeline.get("checkpoint", {}),
                                                 "formats": formats})
        ctx.meta["max_abs_diff"] = diffs
        ctx.meta["tzrec"] = tzrec
        ctx.meta["features"] = {group: [s.name for s in group_features(specs, group)] for group in diffs}

    @staticmethod
    def _towers(model, config, export_name: str):
        """(group, output key, attribute name, module) of each tower to write."""
        from recbuild.ml.models import tower_attributes

        if config.get("family") == "tdm":
            return [("item", "item_tower_emb", "node_embedding", model.node_embedding())]
        attributes = dict(zip(("user", "item"), tower_attributes(config)))
        towers = []
        for group, output in TOWERS:
            tower = getattr(model, attributes[group], None)
            if tower is None:
                raise BuildError(f"{export_name}: the model has no attribute {attributes[group]!r}; "
                                 "towers needs a two-tower model (set model.towers for entry models)")
            towers.append((group, output, attributes[group], tower))
        return towers
