"""make -j 2 over torch steps: they take turns (process-wide torch state), so two train -> export
chains side by side build, and byte for byte as with -j 1."""

from __future__ import annotations

import shutil

RECIPE = """
version: 1
extends: dssm
vars: {n_items: 300, n_users: 200, train_rows: 3000, eval_rows: 800}
artifacts:
  checkpoints: {epochs: 1, eval_every: 1000}
  other_checkpoints: {kind: train, data: train, eval_data: eval, epochs: 1, batch_size: 256, lr: 0.02,
                      eval_every: 1000, seed: 7, k: [10]}
  other_model: {kind: export, checkpoints: other_checkpoints, select: final}
default: [model, other_model]
"""
NAMES = ["checkpoints", "other_checkpoints", "model", "other_model"]


def test_two_torch_chains_in_parallel_match_a_serial_build(project):
    project.recipe(RECIPE)
    serial = project.run("make", "-j", "1")
    assert serial.code == 0, serial.out + serial.err
    expected = {n: project.read(f"build/{n}/MANIFEST.json") for n in NAMES}
    shutil.rmtree(project.path / "build")
    parallel = project.run("make", "-j", "2")
    assert parallel.code == 0, parallel.out + parallel.err
    assert {n: project.read(f"build/{n}/MANIFEST.json") for n in NAMES} == expected
