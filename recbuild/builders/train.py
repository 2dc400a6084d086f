"""`kind: train` — trains the recipe's model on parquet; writes checkpoints, eval results and
metrics.json (the last evaluation, the last epoch's loss)."""

from __future__ import annotations

from recbuild.builders.base import BuildContext, Builder, InputArtifact
from recbuild.errors import InputError


def parquet_inputs(artifact: InputArtifact) -> list:
    """Local parquet files of a source or artifact input (sorted)."""
    from recbuild.ml.training.data import parquet_files

    if artifact.url and not artifact.files:
        raise InputError(f"{artifact.name}: remote input {artifact.url} is not supported for "
                         "training; copy it locally or make it a local source")
    return parquet_files(artifact.path, artifact.files)


class TrainBuilder(Builder):
    kind = "train"
    uses_torch = True
    version = "2"  # 2: metrics.json
    toolchain = ("torch", "numpy", "python", "machine")
    uses_model = True
    reference_fields = ("data", "eval_data", "tree")
    headline = ("auc", "recall@k", "train_loss")
    metric_labels = {"recall@k": "training eval", "popularity_recall@k": "training eval"}
    metric_docs = {
        "auc": "ROC AUC of the last evaluation (ranking: eval rows; tdm: the tree's layer-wise samples)",
        "recall@k": "training evaluation's recall@k: the model's exact (brute-force) search over every item "
                    "seen in the data, eval positives found in each query's top k over all positives "
                    "(micro average); no index involved, unlike recall_eval's",
        "popularity_recall@k": "training evaluation's recall@k of ranking items by training clicks for everyone: "
                               "the floor a model must beat",
        "train_loss": "mean training loss over the last epoch",
        "steps": "optimizer steps taken",
    }
    description = "train the recipe's model (seeded, CPU); checkpoints + train_eval_result_v2.txt"
    schema = {
        "type": "object",
        "properties": {
            "data": {"type": "string", "description": "training parquet (source or artifact)"},
            "eval_data": {"type": "string", "description": "evaluation parquet; omit to skip eval"},
            "epochs": {"type": "integer", "minimum": 1, "default": 1},
            "batch_size": {"type": "integer", "minimum": 2, "default": 512},
            "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.003},
            "eval_every": {"type": "integer", "minimum": 0, "default": 0,
                           "description": "steps between checkpoints + evals; 0 = end of each epoch"},
            "seed": {"type": "integer", "minimum": 0, "default": 42},
            "k": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                  "default": [10, 50, 200], "description": "retrieval: recall@k cut-offs"},
            "label_column": {"type": "string", "default": "label"},
            "eval_batch_size": {"type": "integer", "minimum": 1, "default": 4096},
            "logq_correction": {"type": "boolean", "default": True,
                                "description": "retrieval: subtract log item frequency from in-batch logits"},
            "tree": {"type": "string", "description": "tdm: the tdm_tree artifact to sample nodes from"},
            "negatives_per_level": {"type": "integer", "minimum": 1, "default": 6,
                                    "description": "tdm: negative nodes per positive on every level"},
            "threads": {"type": "integer", "minimum": 1,
                        "description": "torch threads (default: the engine's per-job threads); small "
                                       "models train faster on 1 thread when the machine is busy"},
        },
        "required": ["data"],
    }

    def build(self, ctx: BuildContext) -> None:
        from recbuild.ml.training.loop import Trainer
        from recbuild.ml.training.settings import TrainSettings

        p = ctx.params
        settings = TrainSettings(
            epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], eval_every=p["eval_every"],
            seed=p["seed"], k=list(p["k"]), label_column=p["label_column"],
            eval_batch_size=p["eval_batch_size"], logq_correction=p["logq_correction"],
            negatives_per_level=p["negatives_per_level"], threads=p.get("threads", ctx.threads))
        train_files = parquet_inputs(ctx.input("data"))
        eval_files = parquet_inputs(ctx.input("eval_data")) if ctx.inputs.get("eval_data") else []
        tree = ctx.input("tree").path if ctx.inputs.get("tree") else None
        trainer = Trainer(ctx.model, settings, ctx.out, log=ctx.log, search_path=ctx.recipe_dir,
                          progress_factory=ctx.progress, tree_dir=tree)
        meta = trainer.run(train_files, eval_files)
        ctx.meta.update(meta)
