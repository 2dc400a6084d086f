"""YAML loading that remembers where every key and item came from.

``load_yaml`` returns plain Python data plus a map from key paths (tuples of keys and list indexes)
to source locations, so later stages can point errors at ``file:line:col``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recbuild.errors import RecipeError

KeyPath = tuple  # of str (mapping keys) and int (list indexes)


@dataclass(frozen=True)
class Loc:
    file: str
    line: int  # 1-based; 0 when unknown
    col: int

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"


EXCERPT = 60  # the most of a recipe value an error quotes: a recipe can be someone else's file


def _escaped(text: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def clip(text: str, limit: int = EXCERPT) -> str:
    """Unquoted text from a recipe (an expression, a path) as an error shows it: escaped and cut."""
    text = _escaped(str(text)[:limit + 1])
    return text if len(text) <= limit else text[:limit - 3] + "..."


def excerpt(value: Any, limit: int = EXCERPT, as_json: bool = False) -> str:
    """A value as an error quotes it: a string in quotes (``'abc'``, or ``"abc"`` as_json), anything
    else as JSON; what the terminal would not show literally escaped; cut to ``limit`` characters
    with ``...``, so an error stays one short line whatever the value holds."""
    if isinstance(value, str) and not as_json:
        text = repr(value[:limit + 1])
    else:
        text = json.dumps(value[:limit + 1] if isinstance(value, str) else value, ensure_ascii=False, default=str)
    text = _escaped(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            part = str(part)
            if not part.isprintable():  # one short line, whatever a key holds
                part = excerpt(part)
            elif len(part) > EXCERPT:
                part = clip(part)
            text += ("." if text else "") + part
    return text or "(top level)"


def problem(loc: Loc, path: KeyPath, message: str) -> str:
    """The one-line error format: ``file:line:col: dotted.path: message``. A value given on the
    command line is located by its own path (``--set a.b: message``), which is not repeated."""
    where = format_path(path)
    message = _escaped(message)  # one line on the terminal, whatever a value in it held
    if len(message) > 1000:  # a net under the excerpts: no message carries a whole value
        message = message[:997] + "..."
    if loc.line <= 0 and str(loc).endswith(f" {where}"):
        return f"{loc}: {message}"
    return f"{loc}: {where}: {message}"


def locate(locations: dict[KeyPath, Loc], path: KeyPath, file: str) -> Loc:
    """The location of ``path`` or of its nearest ancestor that has one."""
    path = tuple(path)
    while path:
        if path in locations:
            return locations[path]
        path = path[:-1]
    return locations.get((), Loc(file, 1, 1))


MAX_VALUES = 100_000  # a recipe is small; YAML aliases can expand a few bytes beyond any memory
MAX_DEPTH = 64
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}


class _Budget:
    def __init__(self):
        self.values = 0


def _tag_of(node: Any) -> str | None:
    tag = getattr(node, "tag", None)
    value = getattr(tag, "value", tag) if tag is not None else None
    return value if isinstance(value, str) else None


def _convert(node: Any, path: KeyPath, file: str, locations: dict[KeyPath, Loc],
             budget: _Budget | None = None, parents: tuple = (), here: Loc | None = None) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    budget = budget or _Budget()
    here = here or Loc(file, 1, 1)
    budget.values += 1
    if budget.values > MAX_VALUES:
        raise RecipeError(problem(here, path, f"the recipe expands to more than {MAX_VALUES:,} values "
                                              "(YAML aliases repeated inside each other?); recipes are small"))
    if len(path) > MAX_DEPTH:
        raise RecipeError(problem(here, path, f"nested deeper than {MAX_DEPTH} levels"))
    tag = _tag_of(node)
    if tag is not None and tag not in _PLAIN_TAGS:
        shown = tag.replace("tag:yaml.org,2002:", "!!")
        raise RecipeError(problem(here, path, f"YAML tag {shown} is not supported: a recipe is plain data "
                                              "(mappings, lists, strings, numbers, booleans, null)"))
    if isinstance(node, (CommentedMap, CommentedSeq)):
        if any(node is p for p in parents):
            raise RecipeError(problem(here, path, "a YAML alias refers to the value that contains it"))
        parents = parents + (node,)
    if isinstance(node, CommentedMap):
        result = {}
        for key in node:
            if not isinstance(key, str):
                line, col = node.lc.key(key)
                raise RecipeError(problem(Loc(file, line + 1, col + 1), path,
                                          f"keys must be strings, got {excerpt(key)}"))
            try:
                line, col = node.lc.key(key)
                loc = Loc(file, line + 1, col + 1)
            except KeyError:  # a key merged in with `<<: *anchor` is located at the mapping
                loc = here
            locations[path + (key,)] = loc
            result[key] = _convert(node[key], path + (key,), file, locations, budget, parents, loc)
        return result
    if isinstance(node, CommentedSeq):
        result = []
        for index, item in enumerate(node):
            line, col = node.lc.item(index)
            loc = Loc(file, line + 1, col + 1)
            locations[path + (index,)] = loc
            result.append(_convert(item, path + (index,), file, locations, budget, parents, loc))
        return result
    if isinstance(node, str):
        if "\0" in node:
            raise RecipeError(problem(here, path, "a NUL character cannot be part of a recipe value"))
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    # dates and other YAML types: keep their text so errors can show them
    return str(node)


def load_yaml_text(text: str, file: str) -> tuple[Any, dict[KeyPath, Loc]]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise RecipeError(f"{file}:{line}:1: invalid YAML: a NUL character")
    from recbuild.core.recipe.yaml_errors import explain

    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        with warnings.catch_warnings():  # e.g. a reused anchor: ruamel's multi-line warning, not ours
            warnings.simplefilter("ignore")
            data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Loc(file, mark.line + 1, mark.column + 1) if mark else Loc(file, 1, 1)
        what = clip((exc.problem or exc.context or "invalid YAML").strip(), 2 * EXCERPT)
        if "duplicate key" in what or "found duplicate key" in str(exc):
            key = what.split('"')[1] if '"' in what else ""
            what = f"duplicate key {excerpt(key)}" if key else "duplicate key"
        else:
            plain = explain(exc, text)
            if plain is not None:
                loc, what = Loc(file, plain[0], plain[1]), plain[2]
        raise RecipeError(f"{loc}: invalid YAML: {what}") from None
    except YAMLError as exc:
        raise RecipeError(f"{file}:1:1: invalid YAML: {clip(' '.join(str(exc).split()), 2 * EXCERPT)}") from None
    except RecursionError:
        raise RecipeError(f"{file}:1:1: invalid YAML: nested too deeply to read") from None
    locations: dict[KeyPath, Loc] = {(): Loc(file, 1, 1)}
    return _convert(data, (), file, locations), locations


def load_yaml(path: Path, shown_as: str | None = None) -> tuple[Any, dict[KeyPath, Loc]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{shown_as or path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{shown_as or path}: cannot read recipe: {exc}") from None
    return load_yaml_text(text, shown_as or str(path))


def parse_scalar(text: str, label: str = "--set") -> Any:
    """A --set value: parsed as YAML so numbers, booleans and lists keep their type; text that is
    not YAML is the plain string. A YAML value recbuild refuses (a tag, a self-referring alias)
    is an error naming ``label``."""
    try:
        value, _ = load_yaml_text(text, label)
    except RecipeError as exc:
        if ": invalid YAML: " in exc.message:
            return text
        raise RecipeError(f"{label}: {exc.message.split(': ', 2)[-1]}") from None
    return text if value is None and text.strip() not in ("null", "~") else value
