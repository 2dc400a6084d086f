"""JSON schema (draft 2020-12) of the recipe's ``model:`` section, and its defaults.

Plugged into the recipe schema by the recipe loader; unknown keys are rejected at every level.
"""

from __future__ import annotations

import copy
from typing import Any

FEATURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "group"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                 "description": "input key of the exported module"},
        "type": {"enum": ["id", "numeric", "sequence"], "default": "id"},
        "group": {"enum": ["user", "item"], "description": "which tower / side reads it"},
        "column": {"type": "string", "minLength": 1, "description": "table column (default: name)"},
        "buckets": {"type": "integer", "minimum": 1,
                    "description": "hash buckets (id, sequence): row = mix64(id) % buckets"},
        "dim": {"type": "integer", "minimum": 1, "description": "embedding dim (default: model.emb_dim)"},
        "max_len": {"type": "integer", "minimum": 1, "description": "sequence length (sequence)"},
        "delimiter": {"type": "string", "minLength": 1, "default": ";",
                      "description": "sequence stored as a delimited string column: its separator"},
        "value_type": {"enum": ["int64", "string"], "default": "int64",
                       "description": "column type of id/sequence features; strings are hashed "
                                      "to int64 by the reader"},
    },
    "allOf": [
        {"if": {"properties": {"type": {"const": "sequence"}}, "required": ["type"]},
         "then": {"required": ["buckets", "max_len"]}},
        {"if": {"anyOf": [{"not": {"required": ["type"]}},
                          {"properties": {"type": {"const": "id"}}, "required": ["type"]}]},
         "then": {"required": ["buckets"], "not": {"anyOf": [{"required": ["max_len"]},
                                                             {"required": ["delimiter"]}]}}},
        {"if": {"properties": {"type": {"const": "numeric"}}, "required": ["type"]},
         "then": {"not": {"anyOf": [{"required": ["buckets"]}, {"required": ["max_len"]},
                                    {"required": ["value_type"]},
                                    {"required": ["delimiter"]}]}}},
    ],
}

MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["features"],
    "properties": {
        "family": {"enum": ["dssm", "deepfm", "tdm"], "description": "built-in model family"},
        "entry": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
                  "description": "user model factory 'pkg.module:build'; build(config) -> nn.Module"},
        "features": {"type": "array", "minItems": 1, "items": FEATURE_SCHEMA},
        "emb_dim": {"type": "integer", "minimum": 1, "default": 16},
        "hidden": {"type": "array", "items": {"type": "integer", "minimum": 1}, "default": [128, 64],
                   "description": "MLP hidden sizes (each dssm tower; deepfm's deep part; tdm's scorer)"},
        "tower_dim": {"type": "integer", "minimum": 1, "default": 32,
                      "description": "dssm: size of user_tower_emb / item_tower_emb"},
        "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 0.05,
                        "description": "dssm: softmax temperature on cosine logits (training only)"},
        "towers": {"type": "object", "additionalProperties": False,
                   "properties": {"user": {"type": "string"}, "item": {"type": "string"}},
                   "description": "entry models: attribute names of the two towers "
                                  "(default user_tower / item_tower)"},
        "options": {"type": "object", "description": "free-form options passed to an entry model"},
    },
    "oneOf": [{"required": ["family"], "not": {"required": ["entry"]}},
              {"required": ["entry"], "not": {"required": ["family"]}}],
}

_TOP_DEFAULTS = {key: value["default"] for key, value in MODEL_SCHEMA["properties"].items()
                 if "default" in value}


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of the model section with every default filled in (what pipeline.yaml records)."""
    resolved = copy.deepcopy(dict(config))
    for key, value in _TOP_DEFAULTS.items():
        resolved.setdefault(key, copy.deepcopy(value))
    features = []
    for raw in resolved.get("features", []):
        feature = dict(raw)
        feature.setdefault("type", "id")
        feature.setdefault("column", feature["name"])
        feature.setdefault("dim", resolved["emb_dim"])
        if feature["type"] != "numeric":
            feature.setdefault("value_type", "int64")
        features.append(feature)
    resolved["features"] = features
    return resolved


def semantic_problems(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(dotted path, message) for what the schema says only vaguely (its oneOf) or cannot say."""
    problems = []
    if not isinstance(config, dict):
        return problems
    if "family" in config and "entry" in config:
        problems.append(("model", "set either `family` or `entry`, not both"))
    elif "family" not in config and "entry" not in config:
        problems.append(("model", "set `family` (dssm, deepfm, tdm) or `entry` ('pkg.module:build')"))
    seen: dict[str, int] = {}
    for index, feature in enumerate(config.get("features") or []):
        name = feature.get("name") if isinstance(feature, dict) else None
        if name in seen:
            problems.append((f"model.features[{index}].name",
                             f"feature {name!r} is already declared at model.features[{seen[name]}]"))
        elif name is not None:
            seen[name] = index
    features = [f for f in config.get("features") or [] if isinstance(f, dict)]
    if config.get("family") in ("dssm", "tdm"):
        for group in ("user", "item"):
            if features and not any(f.get("group") == group for f in features):
                problems.append(("model.features", f"{config['family']} needs at least one {group} feature"))
    return problems


def validate(config: dict[str, Any]) -> list[str]:
    """Problems as 'path: message' strings (empty when valid): clear semantic ones, then the schema's."""
    import jsonschema

    problems = [f"{path}: {message}" for path, message in semantic_problems(config)]
    validator = jsonschema.Draft202012Validator(MODEL_SCHEMA)
    for error in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        if error.validator == "oneOf" and not error.absolute_path and problems:
            continue  # family/entry: already said clearly above
        path = ".".join(str(p) for p in ["model", *error.absolute_path])
        problems.append(f"{path}: {error.message}")
    return problems
