"""Batched inference of an exported tower over a parquet table, streamed, into ``part-*.parquet``.

The pipeline per record batch is: parquet -> Arrow batch -> numpy/torch inputs (``feature_io``) ->
``module(inputs)[output_key]`` -> Arrow embedding column -> buffered row groups -> parquet parts.
Before any forward pass the input is validated cheaply (footers, and one pass over the id column
for null and duplicate ids). Output rows keep the input order: files in sorted path order, rows in
file order.

  tower        load_tower: model.pt2 + fg.json, loaded without running code
  source       locating the parquet files; their batches in order, dropped rows left out
  validation   plan_input: footers, column types, nulls, the id-column pass, duplicates
  output       embedding formats, EmbeddingSink, PartWriter (row groups, part files)
  pipeline     predict_embeddings, the public run; checks of the forward outputs
  overlap      the reader, forward and in-order writer threads of the overlapped run
  clock        StageClock: busy time per stage

The names below are the package's public surface (builders, ray_executor, serving_bundle, bench).
"""

from recbuild.ml.predictor.clock import StageClock
from recbuild.ml.predictor.output import (DEFAULT_ROWS_PER_FILE, EMBEDDING_FORMATS, ROW_GROUP_BYTES,
                                          ROW_GROUP_ROWS, WRITER_OPTIONS, EmbeddingSink, PartWriter,
                                          embedding_column, embedding_type)
from recbuild.ml.predictor.pipeline import (DEFAULT_BATCH_SIZE, PredictResult, check_output,
                                            predict_embeddings, raise_non_finite)
from recbuild.ml.predictor.source import ParquetInput, filtered_batches, resolve_parquet_input
from recbuild.ml.predictor.tower import EXPORT_FILE, SCRIPTED_FILE, LoadedTower, load_tower
from recbuild.ml.predictor.plan import InputPlan
from recbuild.ml.predictor.validation import ON_DUPLICATE, plan_input

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_ROWS_PER_FILE", "EMBEDDING_FORMATS", "EXPORT_FILE", "ON_DUPLICATE",
    "ROW_GROUP_BYTES", "ROW_GROUP_ROWS", "SCRIPTED_FILE", "WRITER_OPTIONS",
    "EmbeddingSink", "InputPlan", "LoadedTower", "ParquetInput", "PartWriter", "PredictResult",
    "StageClock", "check_output", "embedding_column", "embedding_type", "filtered_batches",
    "load_tower", "plan_input", "predict_embeddings", "raise_non_finite", "resolve_parquet_input",
]
