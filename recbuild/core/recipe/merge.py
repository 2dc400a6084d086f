"""The layers of a recipe, merged with their locations: the recipe file and the templates or files
it ``extends`` (mappings deep-merge, a ``null`` deletes an inherited key, a source or artifact of
another kind replaces the inherited one), then the ``--set`` overrides. Records the files it read
in ``read_trace``, the recipe cache's validity conditions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from recbuild.errors import RecipeError
from recbuild.core.recipe.templates import find_template, template_names
from recbuild.core.recipe.schema import did_you_mean
from recbuild.core.recipe.yamlsrc import KeyPath, Loc, clip, excerpt, format_path, load_yaml, parse_scalar, problem

SET_FILE = "--set"

# What a load read (files and environment variables): the recipe cache's validity conditions.
read_trace: dict[str, dict] = {"files": {}, "env": {}}


def _drop_subtree(locations: dict[KeyPath, Loc], path: KeyPath) -> None:
    for key in [k for k in locations if k[:len(path)] == path and len(k) > len(path)]:
        del locations[key]


_ENTRY_SECTIONS = ("sources", "artifacts")
_FILE_SOURCE = object()  # the "kind" of a plain {path: ...} source


def _entry_kind(entry: dict) -> Any:
    """What a source or artifact entry declares itself to be: its ``kind``, a file source when it
    has only a ``path``, or None (it names no kind: it adjusts the inherited entry's params)."""
    if entry.get("kind") is not None:
        return entry["kind"]
    return _FILE_SOURCE if "path" in entry else None


def _replaces(base: Any, over: Any, path: KeyPath) -> bool:
    """An entry of another kind replaces the inherited one: `items: {path: data/items}` over a
    template's `sample_data` source means "my file instead", not "add a path to the generator"."""
    if len(path) != 2 or path[0] not in _ENTRY_SECTIONS:
        return False
    if not isinstance(base, dict) or not isinstance(over, dict):
        return False
    kind = _entry_kind(over)
    return kind is not None and kind != _entry_kind(base)


def deep_merge(base: Any, base_locs: dict, over: Any, over_locs: dict, path: KeyPath = ()) -> Any:
    if isinstance(base, dict) and isinstance(over, dict) and not _replaces(base, over, path):
        merged = dict(base)
        for key, value in over.items():
            child = path + (key,)
            if value is None and key in merged:
                del merged[key]
                _drop_subtree(base_locs, child)
                base_locs.pop(child, None)
                continue
            if key in merged:
                merged[key] = deep_merge(merged[key], base_locs, value, over_locs, child)
            else:
                merged[key] = value
                _copy_locs(over_locs, base_locs, child)
            if child in over_locs:
                base_locs[child] = over_locs[child]
        return merged
    _drop_subtree(base_locs, path)
    _copy_locs(over_locs, base_locs, path)
    return over


def _copy_locs(src: dict, dst: dict, path: KeyPath) -> None:
    for key, loc in src.items():
        if key[:len(path)] == path:
            dst[key] = loc



MAX_EXTENDED_BYTES = 1 << 20  # a recipe is a few KB; anything far larger is not one
_VERSION_LINE = re.compile(rb"^version\s*:\s*[\"']?1[\"']?\s*(#.*)?$", re.M)


def _load_extended(path: Path, shown: str, at: Loc) -> tuple[Any, dict]:
    """A file named by ``extends:``, loaded only if it is a recipe. ``extends:`` can name any file
    (``../../etc/shadow``), and the errors about a file quote its keys and values: a file that is
    not a recipe gets one line naming it, and nothing of its content. A recipe is a mapping whose
    keys are recipe keys, or one with ``version: 1`` (then a misspelt key is reported as usual);
    a file that is not YAML at all is a recipe only if it has a ``version: 1`` line (then its YAML
    error is reported, with its line)."""
    def refuse(why: str) -> RecipeError:
        return RecipeError(problem(at, ("extends",), f"{clip(shown, 200)} is not a recipe ({why}); "
                                                     "extends names a template or a recipe file"))

    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_EXTENDED_BYTES + 1)
    except OSError as exc:
        raise RecipeError(problem(at, ("extends",), f"{clip(shown, 200)}: cannot read it: "
                                                    f"{exc.strerror or type(exc).__name__}")) from None
    if len(raw) > MAX_EXTENDED_BYTES:
        raise refuse(f"larger than {MAX_EXTENDED_BYTES >> 20} MB")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("not UTF-8 text") from None
    looks_like_one = _VERSION_LINE.search(raw) is not None
    try:
        data, locations = load_yaml(path, shown)
    except RecipeError:
        if looks_like_one:
            raise
        raise refuse("not YAML") from None
    if not isinstance(data, dict):
        raise refuse("not a mapping of recipe keys")
    if data.get("version") != 1:
        from recbuild.core.recipe.schema import top_level_schema

        if set(data) - set(top_level_schema()["properties"]):
            raise refuse("its keys are not recipe keys such as version, sources, artifacts")
    return data, locations


def load_with_extends(path: Path, shown: str, chain: tuple[str, ...],
                      extended_at: Loc | None = None) -> tuple[dict, dict]:
    read_trace["files"][str(path)] = None
    if extended_at is not None:
        data, locations = _load_extended(path, shown, extended_at)
    else:
        data, locations = load_yaml(path, shown)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(problem(Loc(shown, 1, 1), (), "a recipe must be a mapping of keys "
                                                        "(version, sources, artifacts, ...)"))
    parent_ref = data.get("extends")
    if parent_ref is None:
        return data, locations
    loc = locations.get(("extends",), Loc(shown, 1, 1))
    if not isinstance(parent_ref, str) or not parent_ref:
        raise RecipeError(problem(loc, ("extends",), "must be a template name or a path"))
    candidate = (path.parent / parent_ref)
    template_ref = False
    if candidate.is_file():
        parent_path, parent_shown = candidate.resolve(), os.path.relpath(candidate)
    else:
        template_ref = True
        template = find_template(parent_ref)
        if template is None:
            names = template_names()
            raise RecipeError(problem(loc, ("extends",),
                                      f"no built-in template or file {excerpt(parent_ref)}"
                                      f"{did_you_mean(parent_ref, names)}; templates: {', '.join(names)}"))
        parent_path, parent_shown = template, f"<template {parent_ref}>"
    key = str(parent_path)
    if key in chain:
        raise RecipeError(problem(loc, ("extends",), "extends cycle: " + " -> ".join([*chain, key])))
    base, base_locs = load_with_extends(parent_path, parent_shown, chain + (key,),
                                        None if template_ref else loc)
    base.pop("extends", None)
    _drop_subtree(base_locs, ("extends",))
    child = dict(data)
    child.pop("extends")
    merged = deep_merge(base, base_locs, child, locations)
    merged["extends"] = parent_ref
    base_locs[("extends",)] = loc
    return merged, base_locs


def apply_overrides(data: dict, locations: dict, overrides: list[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"{SET_FILE} {item}: expected PATH=VALUE, e.g. --set vars.seed=7")
        dotted, _, raw = item.partition("=")
        parts: list[Any] = [p for p in dotted.strip().split(".")]
        if not dotted.strip() or any(not p for p in parts):
            raise RecipeError(f"{SET_FILE} {item}: bad path {excerpt(dotted)}")
        target: Any = data
        path: KeyPath = ()
        for part in parts[:-1]:
            key: Any = int(part) if isinstance(target, list) and part.isdigit() else part
            path += (key,)
            if isinstance(target, dict):
                target = target.setdefault(key, {})
            elif isinstance(target, list) and isinstance(key, int) and key < len(target):
                target = target[key]
            else:
                raise RecipeError(f"{SET_FILE} {item}: {format_path(path)} is not a mapping")
        last: Any = parts[-1]
        if isinstance(target, list) and last.isdigit() and int(last) < len(target):
            last = int(last)
        elif not isinstance(target, dict):
            raise RecipeError(f"{SET_FILE} {item}: {format_path(path)} is not a mapping")
        target[last] = parse_scalar(raw, f"{SET_FILE} {dotted}")
        full = path + (last,)
        _drop_subtree(locations, full)
        locations[full] = Loc(f"{SET_FILE} {dotted}", 0, 0)
