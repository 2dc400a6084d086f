"""The machine-learning side: models, training, export, prediction, and the data they read.

  models/          the built-in model families (dssm, deepfm, tdm) and their feature specs
  training         the seeded CPU trainer (checkpoints, evaluation)
  exporter         checkpoints -> model.pt2 / TorchScript / towers
  predictor        towers over parquet -> embedding tables; ray_executor runs it on Ray
  feature_io       parquet columns <-> model inputs; sampledata: the deterministic sample tables
  model_files      the only way recbuild loads a model file from outside (no code runs)
  tzrec_contract   the files TorchEasyRec's predict loads beside recbuild's exports
  serving_bundle   loading a serving bundle and answering a query (serve-check)

May import: recbuild.retrieval, recbuild.common, recbuild.errors. Knows nothing of recipes or builds.
"""
