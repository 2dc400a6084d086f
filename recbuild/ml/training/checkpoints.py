"""Where a training run writes: the file names of its output folder and the checkpoint writer.

A checkpoint is ``model.ckpt-<step>/model.pt``: the state_dict as CPU tensors, saved with a fixed
pickle protocol so its bytes do not depend on torch's default.
"""

from __future__ import annotations

from pathlib import Path

EVAL_FILE = "train_eval_result_v2.txt"
META_FILE = "train_meta.json"
METRICS_FILE = "metrics.json"  # the last evaluation, the last epoch's mean loss, steps
CHECKPOINT_PREFIX = "model.ckpt-"
WEIGHTS_FILE = "model.pt"
# Fixed so checkpoint bytes do not depend on torch's default; 2 is what the weights_only
# unpickler of torch.load fully supports.
PICKLE_PROTOCOL = 2


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / f"{CHECKPOINT_PREFIX}{step}"


def save_state_dict(state_dict: dict, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {name: tensor.detach().to("cpu").contiguous() for name, tensor in state_dict.items()}
    torch.save(cpu, str(path), pickle_protocol=PICKLE_PROTOCOL)
