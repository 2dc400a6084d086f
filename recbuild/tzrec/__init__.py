"""TorchEasyRec (tzrec) entry points as build steps.

  runner       which interpreter and launcher run tzrec; the one function that starts a process
  helper       runs in the tzrec interpreter: tzrec's own config parser and version (no tzrec import)
  checkpoints  latest / best checkpoint of a tzrec model_dir, with recbuild's selection rules
  outputs      checks of what a step wrote, and the metrics it reports

The kinds themselves are in recbuild/builders/tzrec_training.py and tzrec_tools.py, and one step's
flow (declared paths, the prepared pipeline.config, the log, clean outputs) in
recbuild/builders/tzrec_step.py; docs/tzrec.md is the user's guide.
"""
