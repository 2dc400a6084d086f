"""A selected checkpoint's weights into the model of a model config: the state_dict loaded without
running code (``weights_only``), checked key by key and shape by shape against the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recbuild.errors import BuildError


def load_state_dict(path: Path, label: str | None = None) -> dict:
    import torch

    label = label or str(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a usable checkpoint"
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = "; ".join(dict.fromkeys(lines[:1] + [ln for ln in lines if "WeightsUnpickler" in ln]))
        raise BuildError(f"checkpoint {label} cannot be loaded ({type(exc).__name__}: "
                         f"{detail or 'corrupted'}); it is corrupted or not a state_dict saved "
                         "with torch.save") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # {"model": state_dict, "optimizer": ...} bundles
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise BuildError(f"checkpoint {label} is not a state_dict (name -> tensor mapping)")
    return state


def instantiate(model_config: dict[str, Any], state_dict: dict, label: str, search_path: Path | None = None):
    """The model of model_config with the checkpoint's weights, in eval mode."""
    from recbuild.ml.models import ModelConfigError, build_model

    try:
        model = build_model(model_config, search_path)
    except ModelConfigError as exc:
        raise BuildError(str(exc)) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(f"{k} {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in set(expected) & set(state_dict)
                        if tuple(state_dict[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        for title, names in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatch", mismatched)):
            if names:
                parts.append(f"{title}: {', '.join(names[:6])}" + (" ..." if len(names) > 6 else ""))
        raise BuildError(f"checkpoint {label} does not match the model config ({'; '.join(parts)}); "
                         "was it trained with a different model section?")
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return model
