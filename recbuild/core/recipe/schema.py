"""The recipe JSON schema, assembled from the top-level shape and each builder's params schema.

``recipe_schema()`` is what `schemas/recipe.schema.json` holds (a test keeps the committed file up to
date: regenerate with ``recbuild schema > schemas/recipe.schema.json``). Validation uses the same
pieces but dispatches per artifact on ``kind`` itself, which gives one precise error per problem
instead of jsonschema's "not valid under any of the given schemas".
"""

from __future__ import annotations

import copy
import difflib
import json
from typing import Any, Iterable

from recbuild.core.recipe.yamlsrc import EXCERPT, KeyPath, Loc, excerpt, problem

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"

FILE_SOURCE_SCHEMA = {
    "type": "object",
    "description": "Input files recbuild does not build: a file, directory, glob or fsspec URL "
                   "(relative to the recipe's folder). Content-hashed.",
    "properties": {
        "path": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
    },
    "required": ["path"],
    "additionalProperties": False,
}

CACHE_SCHEMA = {
    "description": "Shared artifact cache: an fsspec URL, or {url, push}.",
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "object", "properties": {"url": {"type": "string", "minLength": 1},
                                          "push": {"type": "boolean"}},
         "required": ["url"], "additionalProperties": False},
    ],
}


CLUSTER_SCHEMA = {
    "type": "object",
    "description": "Run the stale steps as Ray tasks on a cluster (docs/cluster.md). Needs `cache:`, through "
                   "which inputs and outputs move. `recbuild make --cluster ADDRESS` (or `local`) overrides it. "
                   "Never part of a key: where a step runs does not change its bytes.",
    "properties": {
        "kind": {"const": "ray"},
        "address": {"type": "string", "minLength": 1, "default": "auto",
                    "description": "What ray.init takes: host:port of the head, ray://host:port, or auto."},
        "max_retries": {"type": "integer", "minimum": 0, "default": 3,
                        "description": "Times a step is run again when its node dies under it."},
        "leave_in_store": {"type": "array", "items": {"type": "string", "minLength": 1}, "default": [],
                           "description": "Artifacts (or matrix families) whose files stay in the store "
                                          "when built on the cluster and not named as targets: the "
                                          "workdir keeps only their MANIFEST.json (build without the "
                                          "bytes). A make that needs their files restores them."},
    },
    "required": ["kind"],
    "additionalProperties": False,
}

SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?\s*([KMGTP]i?B?|B)?$"

RESOURCES_SCHEMA = {
    "type": "object",
    "description": "What the step needs of a cluster node (used with `cluster:`; defaults per kind). "
                   "Never part of the key.",
    "properties": {
        "cpus": {"type": "number", "minimum": 0},
        "gpus": {"type": "number", "minimum": 0},
        "memory": {"oneOf": [{"type": "integer", "minimum": 0},
                             {"type": "string", "pattern": SIZE_PATTERN}],
                   "description": "Bytes, or a size such as 512MiB, 8GB, 2GiB."},
        "custom": {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
                   "description": "Custom Ray resources: {NAME: AMOUNT}."},
    },
    "additionalProperties": False,
}


def _model_schema() -> dict:
    try:
        from recbuild.ml.models.schema import MODEL_SCHEMA
    except ImportError:
        return {"type": "object", "description": "Model family and features (see recipes/)."}
    return copy.deepcopy(MODEL_SCHEMA)


def _tzrec_settings_schema() -> dict:
    from recbuild.tzrec.runner import SETTINGS_SCHEMA

    schema = copy.deepcopy(SETTINGS_SCHEMA)
    schema["description"] = ("Default `tzrec` settings (interpreter, launchers, env) of the tzrec_* "
                             "kinds; an artifact's own setting wins. See docs/tzrec.md.")
    return schema


def top_level_schema() -> dict:
    return {
        "type": "object",
        "properties": {
            "version": {"const": 1, "description": "Recipe format version."},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "workdir": {"type": "string", "minLength": 1, "default": "build",
                        "description": "Folder for artifacts and .recbuild/ state, relative to the recipe."},
            "extends": {"type": "string", "minLength": 1,
                        "description": "A built-in template name or a path to a recipe; deep-merged, this file wins."},
            "vars": {"type": "object", "description": "Values for ${vars.NAME} interpolation."},
            "model": _model_schema(),
            "sources": {"type": "object", "additionalProperties": {"type": "object"}},
            "artifacts": {"type": "object", "additionalProperties": {"type": "object"}},
            "default": {"type": "array", "items": {"type": "string"}},
            "cache": CACHE_SCHEMA,
            "cluster": CLUSTER_SCHEMA,
            "executor": {"enum": ["local", "ray"],
                         "description": "Default `executor` of the kinds that have one (item_embeddings, "
                                        "user_embeddings); an artifact's own setting wins."},
            "ray": {"type": "object",
                    "description": "Default `ray` settings of those kinds; an artifact's own setting wins."},
            "tzrec": _tzrec_settings_schema(),
        },
        "additionalProperties": False,
    }


def kind_schema(builder_cls) -> dict:
    params = copy.deepcopy(builder_cls.schema)
    properties = {"kind": {"const": builder_cls.kind}}
    properties.update(params.get("properties", {}))
    properties["matrix"] = {
        "type": "object", "minProperties": 1,
        "additionalProperties": {"type": "array", "minItems": 1},
        "description": "Variants side by side: {PARAM: [values...]} (or model.PATH for kinds that read "
                       "the model section) expands this artifact into NAME@VALUE variants; artifacts "
                       "that read it follow per variant."}
    properties["resources"] = copy.deepcopy(RESOURCES_SCHEMA)
    result = {"type": "object", "properties": properties,
              "required": ["kind", *params.get("required", [])], "additionalProperties": False}
    if builder_cls.description:
        result["description"] = builder_cls.description
    for keyword in ("allOf", "anyOf", "oneOf", "if", "then", "else", "dependentRequired"):
        if keyword in params:
            result[keyword] = params[keyword]
    return result


def recipe_schema(builders: dict[str, type]) -> dict:
    """The complete schema (draft 2020-12) for editors and docs."""
    kinds = sorted(builders)
    defs = {kind: kind_schema(builders[kind]) for kind in kinds}
    for kind in kinds:  # one definition in the file, not one copy per kind
        defs[kind]["properties"]["resources"] = {"$ref": "#/$defs/resources"}
    defs["resources"] = copy.deepcopy(RESOURCES_SCHEMA)
    defs["file_source"] = FILE_SOURCE_SCHEMA
    kinded = {
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"enum": kinds}},
        "allOf": [{"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                   "then": {"$ref": f"#/$defs/{kind}"}} for kind in kinds],
    }
    defs["artifact"] = kinded
    schema = top_level_schema()
    schema["properties"]["sources"] = {
        "type": "object", "propertyNames": {"pattern": NAME_PATTERN},
        "additionalProperties": {"oneOf": [{"$ref": "#/$defs/file_source"}, {"$ref": "#/$defs/artifact"}]},
    }
    schema["properties"]["artifacts"] = {
        "type": "object", "propertyNames": {"pattern": NAME_PATTERN},
        "additionalProperties": {"$ref": "#/$defs/artifact"},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://recbuild.dev/schemas/recipe.schema.json",
        "title": "recbuild recipe",
        **schema,
        "$defs": defs,
    }


def schema_text(builders: dict[str, type]) -> str:
    return json.dumps(recipe_schema(builders), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------------
# validation -> one-line problems


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word)[:200], [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {excerpt(close[0])}?)" if close else ""


_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "a boolean (true/false)", "array": "a list", "object": "a mapping",
               "null": "null"}


def _non_null_type(schema: dict):
    """The schema's type without "null": a nullable param is described by what it takes when set
    (null only means "use the default"), e.g. ["integer", "null"] -> "integer"."""
    types = schema.get("type")
    if isinstance(types, list):
        kept = [t for t in types if t != "null"] or types
        return kept[0] if len(kept) == 1 else kept
    return types


def _is_null_schema(schema) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _describe_type(schema: dict) -> str:
    types = _non_null_type(schema)
    if isinstance(types, list):
        return " or ".join(_TYPE_NAMES.get(t, t) for t in types)
    if types == "integer" and schema.get("minimum") == 1:
        return "a positive integer"
    if types == "integer" and schema.get("minimum") == 0:
        return "a non-negative integer"
    return _TYPE_NAMES.get(types, str(types))


def _shown(value: Any) -> str:
    return excerpt(value, as_json=True)


def _message(error) -> str:
    """jsonschema's own message, with the value it quotes (its repr) cut to an excerpt."""
    message = error.message
    whole = repr(error.instance)
    if len(whole) > EXCERPT:
        message = message.replace(whole, _shown(error.instance))
    message = " ".join(message.split())
    return message if len(message) <= 4 * EXCERPT else message[:4 * EXCERPT - 3] + "..."


class SchemaChecker:
    """Validates instances against a schema and reports problems with locations."""

    def __init__(self, schema: dict):
        from jsonschema import Draft202012Validator

        self._validator = Draft202012Validator(schema)

    def problems(self, instance: Any, base: KeyPath, locate) -> list[tuple[int, str]]:
        """(line, message) pairs; ``locate(path)`` gives a Loc for a key path."""
        found = []
        for error in self._validator.iter_errors(instance):
            found.extend(_explain(error, base, locate))
        return found


def _explain(error, base: KeyPath, locate) -> list[tuple[int, str]]:
    path = base + tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    validator = error.validator
    results: list[tuple[KeyPath, str]] = []
    if validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(schema.get("properties", {}))
        for key in sorted(set(error.instance) - set(allowed)):
            results.append((path + (key,), f"unknown key {excerpt(key)}{did_you_mean(key, allowed)}"))
    elif validator == "required":
        missing = [k for k in error.validator_value if k not in (error.instance or {})]
        for key in missing:
            results.append((path, f"missing required key {key!r}"))
    elif validator == "type":
        results.append((path, f"must be {_describe_type(schema)}, got {_shown(error.instance)}"))
    elif validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        if _non_null_type(schema) == "integer" and schema.get("minimum") == 1:
            results.append((path, f"must be a positive integer, got {_shown(error.instance)}"))
        else:
            sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[validator]
            results.append((path, f"must be {sign} {error.validator_value}, got {_shown(error.instance)}"))
    elif validator == "enum":
        options = ", ".join(str(v) for v in error.validator_value)
        results.append((path, f"must be one of {options}; got {_shown(error.instance)}"
                              f"{did_you_mean(error.instance, error.validator_value)}"))
    elif validator == "const":
        results.append((path, f"must be {_shown(error.validator_value)}, got {_shown(error.instance)}"))
    elif validator in ("minItems", "maxItems", "minLength", "uniqueItems", "pattern"):
        results.append((path, _message(error)))
    elif validator in ("oneOf", "anyOf") and error.context:
        # Report the branch that got furthest (deepest path), which is what the user meant. A null
        # branch only says "unset = default": its "must be null" would hide the real message.
        branches = error.validator_value
        candidates = [e for e in error.context
                      if not _is_null_schema(branches[e.relative_schema_path[0]])] or list(error.context)
        best = max(candidates, key=lambda e: (len(e.absolute_path), -len(e.message)))
        return _explain(best, base, locate)
    else:
        results.append((path, _message(error)))
    out = []
    for where, message in results:
        loc: Loc = locate(where)
        out.append((loc.line, problem(loc, where, message)))
    return out


# ---------------------------------------------------------------------------------------------
# the recipe reference (docs/reference.md), generated from the same schemas


def _type_text(prop: dict) -> str:
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    kind = prop.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array" and isinstance(prop.get("items"), dict):
        inner = _type_text(prop["items"])
        return f"list of {inner}" if inner else "list"
    if kind:
        return kind
    for key in ("oneOf", "anyOf"):
        if key in prop:
            return " or ".join(_type_text(p) for p in prop[key])
    return ""


def reference_markdown(builders: dict) -> str:
    lines = ["# Recipe reference", "",
             "Generated from the builders' schemas by `recbuild schema --markdown` "
             "(a test keeps it current). Rules and decisions: [recipes.md](recipes.md).", "",
             "## Top level", "", "| key | type | default | description |", "|---|---|---|---|"]
    for key, prop in top_level_schema()["properties"].items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        lines.append(f"| `{key}` | {_type_text(prop)} | {default} | {prop.get('description', '')} |")
    lines += ["", "A source is either `{path: PATH}` (file, folder, glob or fsspec URL) or an entry with a "
              "`kind` (e.g. `sample_data`). Every artifact has `kind` plus the params below.", ""]
    for kind in sorted(builders):
        cls = builders[kind]
        lines += [f"## `{kind}`", ""]
        if cls.description:
            lines += [cls.description, ""]
        refs = ", ".join(f"`{r}`" for r in cls.reference_fields) or "none"
        lines += [f"References (names of other sources/artifacts): {refs}.", ""]
        props = cls.schema.get("properties", {})
        if not props:
            lines += ["No params.", ""]
            continue
        required = set(cls.schema.get("required", []))
        lines += ["| param | type | default | description |", "|---|---|---|---|"]
        for name, prop in props.items():
            default = "*required*" if name in required else (
                f"`{json.dumps(prop['default'])}`" if "default" in prop else "")
            description = str(prop.get("description", "")).replace("\n", " ").replace("|", "\\|")
            lines.append(f"| `{name}` | {_type_text(prop)} | {default} | {description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
