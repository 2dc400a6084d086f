"""Seeded CPU training of a recipe's model on parquet, with periodic evaluation and checkpoints.

Layout written into the output folder (TorchEasyRec's model_dir shape):
  model.ckpt-<step>/model.pt      state_dict (torch.save, pickle protocol 2, CPU tensors)
  train_eval_result_v2.txt        one JSON object per evaluation: global_step first, then metrics
                                  sorted by name
  train_meta.json                 task, final_step, steps per epoch, row counts (no times)
  metrics.json                    the last evaluation's figures, train_loss (mean over the last
                                  epoch) and steps: what `recbuild metrics` shows

Tasks (from the model, see ``recbuild.ml.models.task_of``):
  retrieval  trained on label-1 rows (all rows without a label column) with an in-batch sampled
             softmax over cosine / temperature; same-item collisions in a batch are masked and the
             logits get a logQ correction from the training item frequencies (so popular items are
             not over-penalised as negatives). Evaluated by exact-search recall@K of eval positives
             against every item seen in train or eval data, beside a popularity baseline.
  tdm        trained on layer-wise samples over a tdm_tree artifact; evaluated by AUC over the
             layer-wise samples of the eval clicks.
  ranking    binary cross-entropy on the label; evaluated by AUC on the eval rows.

Data is streamed with ``pyarrow.parquet.ParquetFile.iter_batches`` and re-cut into exact
``batch_size`` batches in file order (shuffle the data upstream if it is sorted).

Modules:
  settings      TrainSettings; the process-wide torch settings a run holds (seed, determinism, threads)
  data          parquet files into exact batches, converted model inputs, the replay cache
  catalog       retrieval's item catalog (with its row lookup) and eval set of unique queries
  tree_sampler  TDM's layer-wise positive and negative samples over a tree
  losses        the in-batch sampled softmax of retrieval
  optim         dense and sparse Adam around torch's functional updates
  evaluation    the metrics, the eval line, and each task's evaluation of a model
  checkpoints   the output file names and the checkpoint writer
  loop          the Trainer: the training loop, its loss, progress, checkpoints and meta files

This package re-exports what code outside it uses; names with a leading underscore are internal
to the package (tests and bench/train.py reach some of them).
"""

from __future__ import annotations

from recbuild.ml.training.catalog import (ItemCatalog, RetrievalEvalSet, _row_view, _unique_rows,
                                          build_item_catalog, build_retrieval_eval_set)
from recbuild.ml.training.checkpoints import (CHECKPOINT_PREFIX, EVAL_FILE, META_FILE, METRICS_FILE,
                                              PICKLE_PROTOCOL, WEIGHTS_FILE, checkpoint_dir, save_state_dict)
from recbuild.ml.training.data import (READ_ROWS, _Batch, _Reader, _ReplayableBatches, iter_tables,
                                       parquet_files, positives_only)
from recbuild.ml.training.evaluation import (RANK_BLOCK_ELEMENTS, auc, format_eval_line, products_are_finite,
                                             recall_at_k, recall_from_ranks, truth_ranks)
from recbuild.ml.training.loop import Trainer
from recbuild.ml.training.losses import in_batch_softmax_loss
from recbuild.ml.training.optim import SPARSE_TABLE_ROWS, _make_optimizer
from recbuild.ml.training.settings import TrainSettings, _torch_settings
from recbuild.ml.training.tree_sampler import TreeSampler

__all__ = [
    "CHECKPOINT_PREFIX", "EVAL_FILE", "META_FILE", "METRICS_FILE", "PICKLE_PROTOCOL", "RANK_BLOCK_ELEMENTS",
    "READ_ROWS", "SPARSE_TABLE_ROWS", "WEIGHTS_FILE", "ItemCatalog", "RetrievalEvalSet", "Trainer",
    "TrainSettings", "TreeSampler", "_Batch", "_Reader", "_ReplayableBatches", "_make_optimizer", "_row_view",
    "_torch_settings", "_unique_rows", "auc", "build_item_catalog", "build_retrieval_eval_set",
    "checkpoint_dir", "format_eval_line", "in_batch_softmax_loss", "iter_tables", "parquet_files",
    "positives_only", "products_are_finite", "recall_at_k", "recall_from_ranks", "save_state_dict",
    "truth_ranks",
]
