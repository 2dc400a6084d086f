"""Built-in model families and the factory that turns a recipe's ``model:`` section into a module.

Contract of every model (built-in or ``entry``):
  * ``forward(inputs: Dict[str, Tensor]) -> Dict[str, Tensor]``, inputs keyed by feature name
    (see ``recbuild.ml.models.features``), exportable with torch.export and TorchScript;
  * two-tower models output ``user_tower_emb`` / ``item_tower_emb`` and hold the towers as
    attributes (``user_tower`` / ``item_tower``, or the names in ``model.towers``), each a module
    with the same dict signature returning its own embedding;
  * ranking models output ``logits`` and ``probs`` (``[B]``); so does tdm, given the user features
    and a tree node's item features (node id in ``item_id``);
  * optional, entry models only: ``compute_loss(outputs, inputs, labels) -> Tensor`` replaces the
    built-in loss (in-batch softmax for two towers, binary cross-entropy on ``logits``).

Models know nothing of recipes, doit or files. This package module stays free of torch (the
recipe loader imports ``recbuild.ml.models.schema`` to validate ``model:``); the family modules and
``features`` import torch.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recbuild.ml.models.schema import MODEL_SCHEMA, resolve

FAMILIES = {
    "dssm": "recbuild.ml.models.dssm:build",
    "deepfm": "recbuild.ml.models.deepfm:build",
    "tdm": "recbuild.ml.models.tdm:build",
}
RETRIEVAL_FAMILIES = ("dssm",)
RANKING_FAMILIES = ("deepfm",)
TREE_FAMILIES = ("tdm",)  # trained with layer-wise samples over a tdm_tree artifact

__all__ = ["FAMILIES", "MODEL_SCHEMA", "ModelConfigError", "build_model", "resolve", "task_of",
           "tower_attributes"]


class ModelConfigError(ValueError):
    """The model section cannot be turned into a module (bad entry, bad feature, ...)."""


@contextmanager
def _on_sys_path(folder: Path | None):
    if folder is None or str(folder) in sys.path:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def _load_factory(target: str, search_path: Path | None):
    module_name, _, attr = target.partition(":")
    with _on_sys_path(search_path):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelConfigError(f"model.entry {target!r}: cannot import {module_name!r} ({exc}); "
                                   "make the package importable from the recipe folder") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelConfigError(f"model.entry {target!r}: {module_name} has no callable {attr!r}")
    return factory


def build_model(config: dict[str, Any], search_path: Path | None = None):
    """The nn.Module described by a model section (defaults applied), in train mode."""
    from torch import nn

    from recbuild.ml.models.features import parse_features

    resolved = resolve(config)
    try:
        parse_features(resolved)  # validate features before any family sees them
        if resolved.get("family"):
            family = resolved["family"]
            if family not in FAMILIES:
                raise ModelConfigError(f"model.family {family!r} is unknown; built-in: {sorted(FAMILIES)}")
            factory = _load_factory(FAMILIES[family], None)
        elif resolved.get("entry"):
            factory = _load_factory(resolved["entry"], search_path)
        else:
            raise ModelConfigError("model: set `family` (dssm, deepfm, tdm) or `entry` ('pkg.module:build')")
        model = factory(resolved)
    except ModelConfigError:
        raise
    except ValueError as exc:
        raise ModelConfigError(str(exc)) from None
    if not isinstance(model, nn.Module):
        raise ModelConfigError(f"model.entry {resolved.get('entry')!r} returned "
                               f"{type(model).__name__}, not a torch.nn.Module")
    return model


def tower_attributes(config: dict[str, Any]) -> tuple[str, str]:
    towers = config.get("towers") or {}
    return towers.get("user", "user_tower"), towers.get("item", "item_tower")


def task_of(config: dict[str, Any], model=None) -> str:
    """'retrieval' (two towers), 'ranking' (logits) or 'tdm'. Entry models are probed with a tiny batch."""
    family = config.get("family")
    if family in RETRIEVAL_FAMILIES:
        return "retrieval"
    if family in TREE_FAMILIES:
        return "tdm"
    if family in RANKING_FAMILIES:
        return "ranking"
    if model is None:
        raise ModelConfigError("task_of: an entry model must be given to probe its outputs")
    import torch

    from recbuild.ml.models.features import example_inputs, parse_features

    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = model(example_inputs(parse_features(resolve(config)), batch_size=2))
    model.train(was_training)
    if "user_tower_emb" in outputs and "item_tower_emb" in outputs:
        return "retrieval"
    if "logits" in outputs:
        return "ranking"
    raise ModelConfigError(f"model.entry {config.get('entry')!r}: outputs {sorted(outputs)} have neither "
                           "user_tower_emb + item_tower_emb (retrieval) nor logits (ranking)")
