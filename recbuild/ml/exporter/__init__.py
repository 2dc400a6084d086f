"""From a checkpoint to export files (used by the ``export`` and ``towers`` kinds).

  selection       which checkpoint: model.ckpt-<step> folders, train_eval_result_v2.txt, the rules
                  of select: latest | best | final | <path> (best_steps is shared with tzrec)
  loading         its state_dict into the model of a model config, checked against it
  formats         model.pt2 / TorchScript / AOTInductor, written deterministically, verified
                  against the eager model
  sparse_dense    the sparse/dense split: parquet embedding tables + an exported dense module
  reachability    which inputs reach the outputs (the tower split check)
  pipeline_yaml   pipeline.yaml, the model section an export was made with

The names below are re-exported for tests and plugins; recbuild's own modules import the module
that defines them.
"""

from recbuild.ml.exporter.formats import (DEFAULT_FORMATS, FORMAT_FILES, MAX_BATCH, export_program,
                                          load_format, save_aoti, save_torch_export, save_torchscript,
                                          verify_formats, write_formats)
from recbuild.ml.exporter.loading import instantiate, load_state_dict
from recbuild.ml.exporter.pipeline_yaml import read_pipeline_yaml, write_pipeline_yaml
from recbuild.ml.exporter.reachability import inputs_reaching_outputs
from recbuild.ml.exporter.selection import (CHECKPOINT_RE, EVAL_FILE, META_FILE, SELECT_MODES,
                                            WEIGHTS_FILE, Selection, best_steps, list_checkpoints,
                                            read_eval_results, resolve_metric, select_checkpoint)
from recbuild.ml.exporter.sparse_dense import EXPORT_BATCH, VERIFY_BATCH, write_sparse_dense

__all__ = [
    "CHECKPOINT_RE", "DEFAULT_FORMATS", "EVAL_FILE", "EXPORT_BATCH", "FORMAT_FILES", "MAX_BATCH",
    "META_FILE", "SELECT_MODES", "VERIFY_BATCH", "WEIGHTS_FILE",
    "Selection", "best_steps", "export_program", "inputs_reaching_outputs", "instantiate",
    "list_checkpoints", "load_format", "load_state_dict", "read_eval_results", "read_pipeline_yaml",
    "resolve_metric", "save_aoti", "save_torch_export", "save_torchscript", "select_checkpoint",
    "verify_formats", "write_formats", "write_pipeline_yaml", "write_sparse_dense",
]
