"""YAML loading that remembers where every key and item came from.

``load_yaml`` returns plain Python data plus a map from key paths (tuples of keys and list indexes)
to source locations, so later stages can point errors at ``file:line:col``.
"""

from __future__ import annotations

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


def format_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def problem(loc: Loc, path: KeyPath, message: str) -> str:
    """The one-line error format: ``file:line:col: dotted.path: message``. A value given on the
    command line is located by its own path (``--set a.b: message``), which is not repeated."""
    where = format_path(path)
    if loc.line <= 0 and str(loc).endswith(f" {where}"):
        return f"{loc}: {message}"
    return f"{loc}: {where}: {message}"


def _convert(node: Any, path: KeyPath, file: str, locations: dict[KeyPath, Loc]) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap):
        result = {}
        for key in node:
            if not isinstance(key, str):
                line, col = node.lc.key(key)
                raise RecipeError(problem(Loc(file, line + 1, col + 1), path,
                                          f"keys must be strings, got {key!r}"))
            line, col = node.lc.key(key)
            locations[path + (key,)] = Loc(file, line + 1, col + 1)
            result[key] = _convert(node[key], path + (key,), file, locations)
        return result
    if isinstance(node, CommentedSeq):
        result = []
        for index, item in enumerate(node):
            line, col = node.lc.item(index)
            locations[path + (index,)] = Loc(file, line + 1, col + 1)
            result.append(_convert(item, path + (index,), file, locations))
        return result
    if isinstance(node, str):
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

    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Loc(file, mark.line + 1, mark.column + 1) if mark else Loc(file, 1, 1)
        what = (exc.problem or exc.context or "invalid YAML").strip()
        if "duplicate key" in what or "found duplicate key" in str(exc):
            key = what.split('"')[1] if '"' in what else ""
            what = f"duplicate key {key!r}" if key else "duplicate key"
        raise RecipeError(f"{loc}: invalid YAML: {what}") from None
    except YAMLError as exc:
        raise RecipeError(f"{file}:1:1: invalid YAML: {exc}") from None
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


def parse_scalar(text: str) -> Any:
    """A --set value: parsed as YAML so numbers, booleans and lists keep their type."""
    try:
        value, _ = load_yaml_text(text, "--set")
    except RecipeError:
        return text
    return text if value is None and text.strip() not in ("null", "~") else value
