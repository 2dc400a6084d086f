"""The training loop: one run builds the model, streams batches through the task's loss, and
checkpoints and evaluates on schedule; at the end it writes train_meta.json and metrics.json.

Tasks (from the model, see ``recbuild.ml.models.task_of``):
  retrieval  trained on label-1 rows (all rows without a label column) with an in-batch sampled
             softmax (``losses``) with a logQ correction from the catalog's training clicks
  tdm        trained on layer-wise samples over a tdm_tree artifact (``tree_sampler``)
  ranking    binary cross-entropy on the label
Models may bring their own loss (``compute_loss``). Evaluations are in ``evaluation``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from recbuild.errors import BuildError, InputError
from recbuild.ml.training.catalog import (ItemCatalog, RetrievalEvalSet, _key_matrix, build_item_catalog,
                                          build_retrieval_eval_set)
from recbuild.ml.training.checkpoints import EVAL_FILE, META_FILE, METRICS_FILE, WEIGHTS_FILE, checkpoint_dir, save_state_dict
from recbuild.ml.training.data import (READ_ROWS, _Batch, _column_values, _has_column, _Reader, _ReplayableBatches,
                                       _to_tensors, iter_tables, positives_only)
from recbuild.ml.training.evaluation import RankingEvaluation, RetrievalEvaluation, TdmEvaluation, format_eval_line
from recbuild.ml.training.losses import in_batch_softmax_loss
from recbuild.ml.training.optim import _make_optimizer
from recbuild.ml.training.settings import TrainSettings, _torch_settings
from recbuild.ml.training.tree_sampler import TreeSampler


class _SilentProgress:
    """The progress interface when nobody watches (the bench, library use)."""

    def phase(self, *args, **kwargs) -> "_SilentProgress":
        return self

    def label(self, name: str) -> None:
        pass

    def advance(self, amount: float = 1) -> None:
        pass

    def note(self, **facts) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """One training run: build the model, stream batches, checkpoint and evaluate on schedule."""

    def __init__(self, model_config: dict[str, Any], settings: TrainSettings, out: Path,
                 log: logging.Logger | None = None, search_path: Path | None = None,
                 progress_factory: Callable | None = None, tree_dir: Path | None = None):
        from recbuild.ml.models import resolve

        self.config = resolve(model_config)
        self.settings = settings
        self.out = Path(out)
        self.log = log or logging.getLogger("recbuild.train")
        self.search_path = search_path
        self.progress_factory = progress_factory
        self.catalog: ItemCatalog | None = None
        self.eval_set: RetrievalEvalSet | None = None
        self.evaluation: RetrievalEvaluation | TdmEvaluation | RankingEvaluation | None = None
        self.eval_lines: list[str] = []
        self.tree_dir = tree_dir
        self.sampler: TreeSampler | None = None
        self.log_q: np.ndarray | None = None  # retrieval: log sampling probability per catalog item
        self.progress: Any = _SilentProgress()
        self.epoch_label = ""
        self.last_epoch_loss = float("nan")

    # -- public ----------------------------------------------------------------------------------
    def run(self, train_files: list[Path], eval_files: list[Path] | None) -> dict[str, Any]:
        """Train; returns the facts written to train_meta.json (plus the last eval line)."""
        if self.progress_factory:
            self.progress = self.progress_factory(None, "batches")
        self.progress.phase("starting torch, building the model")
        with _torch_settings(self.settings.threads, self.settings.seed):
            return self._run(train_files, eval_files or [])

    # -- internals -------------------------------------------------------------------------------
    def _run(self, train_files, eval_files) -> dict[str, Any]:
        from recbuild.ml.models import ModelConfigError, build_model, task_of
        from recbuild.ml.models.features import group_features, parse_features

        try:
            model = build_model(self.config, self.search_path)
            task = task_of(self.config, model)
        except ModelConfigError as exc:
            raise BuildError(str(exc)) from None
        s = self.settings
        self.task = task
        self.progress.phase("reading the data (items, eval set)")
        self.label = s.label_column if _has_column(train_files[0], s.label_column) else None
        if task == "ranking" and self.label is None:
            raise InputError(f"{train_files[0]}: a ranking model needs the label column "
                             f"{s.label_column!r}; set label_column")
        specs = parse_features(self.config)
        self.reader = _Reader(specs)
        user_reader = _Reader(group_features(specs, "user"))
        self.item_reader = _Reader(group_features(specs, "item"))
        if task == "retrieval":
            # Both are the same whatever the read size: read in large slices (fewer, larger sorts).
            read_rows = max(s.eval_batch_size, READ_ROWS)
            self.catalog = build_item_catalog(train_files, eval_files, self.item_reader, self.label,
                                              read_rows)
            if eval_files:
                self.eval_set = build_retrieval_eval_set(eval_files, user_reader, self.item_reader,
                                                         self.catalog, self.label, read_rows)
            if s.logq_correction:
                counts = self.catalog.train_counts
                self.log_q = np.log(np.maximum(counts, 1) / max(int(counts.sum()), 1)).astype(np.float32)
        if task == "tdm":
            if self.tree_dir is None:
                raise BuildError("model family tdm trains over a tree: set `tree:` to a tdm_tree artifact")
            self.sampler = TreeSampler(self.tree_dir, self.item_reader, s.negatives_per_level)
            self.user_reader = user_reader
            self.rng = np.random.default_rng([s.seed, 0x7D4])
        if eval_files:
            self.evaluation = self._evaluation(eval_files)

        optimizer = _make_optimizer(model, s.lr)
        row_filter = positives_only(self.label) if task in ("retrieval", "tdm") and self.label else None
        columns = sorted(set(self.reader.columns + ([self.label] if self.label else [])))
        batches = _ReplayableBatches(lambda: iter_tables(train_files, columns, s.batch_size, row_filter),
                                     self._convert, s.batch_cache_bytes)
        rows = self._rows_per_epoch(train_files, row_filter)
        total = -(-rows // s.batch_size) * s.epochs
        progress = self.progress
        progress.phase("", total, "batches")
        step, steps_per_epoch, saved = 0, 0, []
        for epoch in range(s.epochs):
            model.train()
            self.epoch_label = f"epoch {epoch + 1}/{s.epochs}"
            progress.label(self.epoch_label)
            epoch_steps, epoch_loss = 0, 0.0
            for batch in batches:
                progress.advance(1)
                loss = self._loss(model, batch)
                if loss is None:
                    continue
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise BuildError(f"training diverged at step {step + 1} (loss {loss_value}); "
                                     "lower lr")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                epoch_steps += 1
                epoch_loss += loss_value
                progress.note(loss=epoch_loss / epoch_steps)
                if s.eval_every and step % s.eval_every == 0:
                    self._checkpoint(model, step)
                    saved.append(step)
            if epoch_steps == 0:
                if task == "tdm":
                    raise InputError("no clicked item of the training data is a leaf of the tree; "
                                     "build the tree from the same item universe")
                raise InputError("the training data yielded no rows"
                                 + (" with label == 1" if row_filter else ""))
            steps_per_epoch = steps_per_epoch or epoch_steps
            self.last_epoch_loss = epoch_loss / epoch_steps
            if not s.eval_every and step not in saved:
                self._checkpoint(model, step)
                saved.append(step)
        if step not in saved:  # the final state is always a checkpoint
            self._checkpoint(model, step)
            saved.append(step)
        progress.close()

        meta: dict[str, Any] = {"task": task, "final_step": step, "steps_per_epoch": steps_per_epoch,
                                "epochs": s.epochs, "checkpoints": saved}
        if self.catalog is not None:
            meta["items_seen"] = int(len(self.catalog.keys))
        if self.eval_set is not None:
            meta["eval_queries"] = int(len(next(iter(self.eval_set.user_inputs.values()))))
            meta["eval_truth_pairs"] = int(len(self.eval_set.truth_query))
        (self.out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        figures: dict[str, Any] = {"train_loss": self.last_epoch_loss, "steps": step}
        if self.eval_lines:
            meta["last_eval"] = json.loads(self.eval_lines[-1])
            figures.update({k: v for k, v in meta["last_eval"].items() if k != "global_step"})
        (self.out / METRICS_FILE).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        return meta

    def _evaluation(self, eval_files):
        """The task's evaluation; tdm draws its fixed eval samples here, before the first step."""
        if self.task == "retrieval":
            return RetrievalEvaluation(self.config, self.settings, self.catalog, self.eval_set)
        if self.task == "tdm":
            return TdmEvaluation(self.settings, self.sampler, self.reader, self.user_reader, self.label,
                                 eval_files)
        return RankingEvaluation(self.settings, self.reader, self.label, eval_files, self._convert)

    def _rows_per_epoch(self, train_files, row_filter) -> int:
        """Rows one epoch trains on, known before the first batch: parquet metadata, the catalog's
        click counts (the positives filter keeps exactly those rows), or the label column."""
        import pyarrow.parquet as pq

        if row_filter is None:
            return sum(pq.ParquetFile(str(path)).metadata.num_rows for path in train_files)
        if self.catalog is not None:
            return int(self.catalog.train_counts.sum())
        # tdm with labels: one column read (a small share of the epoch's reads)
        return sum(int(np.count_nonzero(_column_values(pq.read_table(str(path), columns=[self.label]),
                                                       self.label) == 1))
                   for path in train_files)

    def _convert(self, table) -> _Batch:
        """A parquet batch as model inputs, labels and (retrieval) catalog indexes: the work done
        once per batch, not once per epoch, when the table fits the cache."""
        import torch

        batch = _Batch(inputs=_to_tensors(self.reader.numpy(table)))
        if self.label:
            batch.labels = np.array(_column_values(table, self.label), copy=True)
        if self.task == "retrieval":
            names = self.item_reader.names
            batch.items = self.catalog.index_of(_key_matrix({n: batch.inputs[n].numpy() for n in names},
                                                            names))
            if self.log_q is not None:
                batch.log_q = torch.from_numpy(self.log_q[batch.items])
        return batch

    def _loss(self, model, batch: _Batch):
        import torch

        # Models read their inputs and never write them: a cached batch replays as it was read.
        inputs = batch.inputs
        outputs = model(inputs) if self.task != "tdm" else {}
        labels = None
        if batch.labels is not None:
            labels = torch.from_numpy(batch.labels.astype(np.float32))
        if hasattr(model, "compute_loss"):  # entry models may bring their own loss
            return model.compute_loss(outputs, inputs, labels)
        if self.task == "ranking":
            return torch.nn.functional.binary_cross_entropy_with_logits(outputs["logits"], labels)
        if self.task == "tdm":
            user = {n: inputs[n].numpy() for n in self.user_reader.names}
            samples, tdm_labels = self.sampler.samples(user, inputs[self.sampler.id_feature].numpy(),
                                                       self.rng)
            if len(tdm_labels) == 0:
                return None  # no clicked item of this batch is in the tree
            logits = model(_to_tensors(samples))["logits"]
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(tdm_labels))
        return in_batch_softmax_loss(outputs["user_tower_emb"], outputs["item_tower_emb"],
                                     float(self.config.get("temperature", 0.05)), batch.items,
                                     batch.log_q)

    def _checkpoint(self, model, step: int) -> None:
        save_state_dict(model.state_dict(), checkpoint_dir(self.out, step) / WEIGHTS_FILE)
        if self.evaluation is None:
            return
        model.eval()
        self.progress.label(f"{self.epoch_label}: eval")
        metrics = self.evaluation.metrics(model)
        self.progress.label(self.epoch_label)
        self.progress.note(**{f"eval {self.evaluation.headline}": metrics[self.evaluation.headline]})
        model.train()
        line = format_eval_line(step, metrics)
        self.eval_lines.append(line)
        with open(self.out / EVAL_FILE, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        self.log.info("step %d: %s", step, line)

