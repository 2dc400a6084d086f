"""Recipe loading: YAML with locations -> extends -> --set overrides -> ${...} interpolation ->
schema validation -> a :class:`Recipe` of plain data. No I/O beyond reading recipe files.

Decisions (documented in docs/recipes.md):
- ``extends`` is resolved first (a built-in template name or a path relative to the recipe);
  mappings deep-merge, everything else is replaced; a ``null`` value deletes the inherited key.
- Relative paths in the final recipe (``workdir``, source paths, ``cmd`` folders) are relative to
  the folder of the recipe file named on the command line, also for keys inherited from a template.
- ``--set a.b=value`` parses value as YAML and applies before interpolation.
- ``${vars.x}`` and ``${env.X}`` (``${env.X:-default}``) interpolate; a string that is exactly one
  reference takes the referenced value's type. ``$${`` is a literal ``${``. ``${out}`` and
  ``${deps.NAME}``, ``${params.KEY}`` are left for the ``command`` kind.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recbuild.errors import RecipeError
from recbuild.build.schema import NAME_PATTERN, SchemaChecker, did_you_mean, kind_schema, top_level_schema
from recbuild.build.yamlsrc import KeyPath, Loc, format_path, load_yaml, parse_scalar, problem

DEFAULT_RECIPE = "recbuild.yaml"
SET_FILE = "--set"
_REF = re.compile(r"\$\{([^}]*)\}")
_NAME_RE = re.compile(NAME_PATTERN)
RESERVED_NAMES = {"MANIFEST.json"}
RECIPE_WIDE_DEFAULTS = ("executor", "ray", "tzrec")


@dataclass
class NodeSpec:
    """One entry of ``sources`` or ``artifacts``."""

    name: str
    section: str  # "sources" | "artifacts"
    kind: str  # builder kind, or "source" for a plain path source
    params: dict[str, Any]  # the spec without ``kind``, schema defaults applied
    loc: Loc
    model_overrides: dict[str, Any] = field(default_factory=dict)  # a matrix variant's model.PATH values

    @property
    def is_file_source(self) -> bool:
        return self.kind == "source"


@dataclass
class Recipe:
    path: Path
    dir: Path
    name: str
    workdir: Path
    model: dict[str, Any]
    nodes: dict[str, NodeSpec]
    default: list[str]
    cache: dict[str, Any] | None
    data: dict[str, Any]  # the resolved recipe (after extends, --set, interpolation)
    locations: dict[KeyPath, Loc] = field(repr=False, default_factory=dict)
    families: dict[str, list[str]] = field(default_factory=dict)  # matrix name -> its variants

    def locate(self, path: KeyPath) -> Loc:
        return locate(self.locations, path, str(self.path))

    def model_for(self, name: str) -> dict[str, Any]:
        """The model section an artifact reads: the recipe's, with its matrix variant's values."""
        from recbuild.build.matrix import model_for

        return model_for(self.model, self.nodes[name].model_overrides)


def locate(locations: dict[KeyPath, Loc], path: KeyPath, file: str) -> Loc:
    """The location of ``path`` or of its nearest ancestor that has one."""
    path = tuple(path)
    while path:
        if path in locations:
            return locations[path]
        path = path[:-1]
    return locations.get((), Loc(file, 1, 1))


# ------------------------------------------------------------------------------------ templates


def template_dirs() -> list[Path]:
    package = Path(__file__).resolve().parents[1]  # recbuild/ (templates are package data)
    return [package / "_recipes", package.parent / "recipes"]


def template_names() -> list[str]:
    names = set()
    for folder in template_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def find_template(name: str) -> Path | None:
    for folder in template_dirs():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------------------------ merging


def _drop_subtree(locations: dict[KeyPath, Loc], path: KeyPath) -> None:
    for key in [k for k in locations if k[:len(path)] == path and len(k) > len(path)]:
        del locations[key]


def deep_merge(base: Any, base_locs: dict, over: Any, over_locs: dict, path: KeyPath = ()) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
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


# What a load read (files and environment variables): the recipe cache's validity conditions.
_trace: dict[str, dict] = {"files": {}, "env": {}}


def _load_with_extends(path: Path, shown: str, chain: tuple[str, ...]) -> tuple[dict, dict]:
    _trace["files"][str(path)] = None
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
    if candidate.is_file():
        parent_path, parent_shown = candidate.resolve(), os.path.relpath(candidate)
    else:
        template = find_template(parent_ref)
        if template is None:
            names = template_names()
            raise RecipeError(problem(loc, ("extends",),
                                      f"no built-in template or file {parent_ref!r}"
                                      f"{did_you_mean(parent_ref, names)}; templates: {', '.join(names)}"))
        parent_path, parent_shown = template, f"<template {parent_ref}>"
    key = str(parent_path)
    if key in chain:
        raise RecipeError(problem(loc, ("extends",), "extends cycle: " + " -> ".join([*chain, key])))
    base, base_locs = _load_with_extends(parent_path, parent_shown, chain + (key,))
    base.pop("extends", None)
    _drop_subtree(base_locs, ("extends",))
    child = dict(data)
    child.pop("extends")
    merged = deep_merge(base, base_locs, child, locations)
    merged["extends"] = parent_ref
    base_locs[("extends",)] = loc
    return merged, base_locs


# ------------------------------------------------------------------------------------ overrides


def apply_overrides(data: dict, locations: dict, overrides: list[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"{SET_FILE} {item}: expected PATH=VALUE, e.g. --set vars.seed=7")
        dotted, _, raw = item.partition("=")
        parts: list[Any] = [p for p in dotted.strip().split(".")]
        if not dotted.strip() or any(not p for p in parts):
            raise RecipeError(f"{SET_FILE} {item}: bad path {dotted!r}")
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


# ------------------------------------------------------------------------------------ interpolation


class _Interpolator:
    def __init__(self, variables: dict, locations: dict, file: str, is_shell=lambda path: False):
        self.vars = variables
        self.locations = locations
        self.file = file
        self.is_shell = is_shell  # path -> whether the string there is run by a shell (quote values)
        self.problems: list[tuple[int, str]] = []

    def _fail(self, path: KeyPath, message: str) -> None:
        loc = locate(self.locations, path, self.file)
        self.problems.append((loc.line, problem(loc, path, message)))

    def _lookup(self, expr: str, path: KeyPath) -> tuple[bool, Any]:
        if expr.startswith("vars."):
            value: Any = self.vars
            walked = "vars"
            for part in expr[5:].split("."):
                if isinstance(value, dict) and part in value:
                    value = value[part]
                    walked += "." + part
                else:
                    options = list(value) if isinstance(value, dict) else []
                    self._fail(path, f"unknown variable ${{{expr}}}: {walked} has no {part!r}"
                                     f"{did_you_mean(part, options)}")
                    return False, None
            return True, value
        if expr.startswith("env."):
            name, sep, default = expr[4:].partition(":-")
            _trace["env"][name] = os.environ.get(name)
            if name in os.environ:
                return True, os.environ[name]
            if sep:
                return True, default
            self._fail(path, f"environment variable {name} is not set; set it or write "
                             f"${{env.{name}:-default}}")
            return False, None
        if expr == "out" or expr.startswith(("deps.", "params.")):
            return False, None  # left for the command kind
        self._fail(path, f"unknown reference ${{{expr}}}; use ${{vars.NAME}} or ${{env.NAME}} "
                         "(write $${ for a literal ${)")
        return False, None

    def string(self, text: str, path: KeyPath) -> Any:
        if "${" not in text:
            return text
        shell = self.is_shell(path)
        whole = _REF.fullmatch(text)
        if whole and not text.startswith("$${") and not shell:
            ok, value = self._lookup(_unraw(whole.group(1).strip()), path)
            if ok:
                return self.walk(copy.deepcopy(value), path) if isinstance(value, (dict, list)) else value
            return text

        def replace(match: re.Match) -> str:
            start = match.start()
            if start > 0 and text[start - 1] == "$":
                return match.group(0)
            expr = match.group(1).strip()
            ok, value = self._lookup(_unraw(expr), path)
            if not ok:
                return match.group(0)
            if isinstance(value, (dict, list)):
                self._fail(path, f"${{{match.group(1)}}} is a {type(value).__name__}; "
                                 "it can only stand alone, not inside a string")
                return match.group(0)
            text_value = str(value).lower() if isinstance(value, bool) else str(value)
            # In a shell command every value is one quoted word: a branch name or a --set value
            # must never run as shell code. ${raw:...} is the explicit way to paste shell syntax.
            return shlex.quote(text_value) if shell and not expr.startswith(RAW_PREFIX) else text_value

        return _REF.sub(replace, text).replace("$${", "${")

    def walk(self, value: Any, path: KeyPath) -> Any:
        if isinstance(value, dict):
            return {k: self.walk(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v, path + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str):
            return self.string(value, path)
        return value


RAW_PREFIX = "raw:"


def _unraw(expr: str) -> str:
    return expr[len(RAW_PREFIX):].strip() if expr.startswith(RAW_PREFIX) else expr


def _vars_cycle(raw_vars: dict) -> list[str]:
    """A chain of vars that refers back to its start (["a", "b", "a"]), or [] when there is none."""
    def refs(value) -> set[str]:
        if isinstance(value, dict):
            return set().union(*(refs(v) for v in value.values()))
        if isinstance(value, list):
            return set().union(*(refs(v) for v in value))
        if isinstance(value, str):
            return {_unraw(m.strip())[5:].split(".")[0] for m in _REF.findall(value)
                    if _unraw(m.strip()).startswith("vars.")}
        return set()

    edges = {name: sorted(refs(value) & set(raw_vars)) for name, value in raw_vars.items()}
    done: set[str] = set()
    for start in edges:
        trail: list[str] = []
        stack = [(start, iter(edges[start]))]
        on_trail = {start}
        trail.append(start)
        while stack:
            name, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_trail.discard(trail.pop())
                done.add(name)
            elif child in on_trail:
                return trail[trail.index(child):] + [child]
            elif child not in done:
                stack.append((child, iter(edges[child])))
                on_trail.add(child)
                trail.append(child)
    return []


def shell_field_test(data: dict, builders: dict):
    """path -> whether the string at that path is a shell command (a kind's ``shell_fields``)."""
    def is_shell(path: KeyPath) -> bool:
        if len(path) != 3 or path[0] not in ("sources", "artifacts"):
            return False
        section = data.get(path[0])
        spec = section.get(path[1]) if isinstance(section, dict) else None
        kind = spec.get("kind") if isinstance(spec, dict) else None
        builder = builders.get(kind) if isinstance(kind, str) and kind in builders else None
        return builder is not None and path[2] in getattr(builder, "shell_fields", ())
    return is_shell


def interpolate(data: dict, locations: dict, file: str, is_shell=lambda path: False) -> dict:
    raw_vars = data.get("vars") or {}
    if not isinstance(raw_vars, dict):
        raise RecipeError(problem(locate(locations, ("vars",), file), ("vars",), "must be a mapping"))
    cycle = _vars_cycle(raw_vars)
    if cycle:
        path = ("vars", cycle[0])
        raise RecipeError(problem(locate(locations, path, file), path, "reference cycle: "
                                  + " -> ".join(f"${{vars.{n}}}" for n in cycle)))
    # vars may use env and other vars; without cycles a fixed point is reached within len(vars) rounds.
    resolved = raw_vars
    for _ in range(len(raw_vars) + 1):
        interp = _Interpolator(resolved, locations, file)
        nxt = interp.walk(raw_vars, ("vars",))
        if nxt == resolved:
            break
        resolved = nxt
    interp = _Interpolator(resolved, locations, file, is_shell)
    result = {k: (resolved if k == "vars" else interp.walk(v, (k,))) for k, v in data.items()}
    interp.walk(resolved, ("vars",))  # report unresolved references inside vars
    if interp.problems:
        raise RecipeError([m for _, m in sorted(interp.problems)])
    return result


# ------------------------------------------------------------------------------------ validation


def _apply_defaults(schema: dict, params: dict) -> dict:
    # One definition, beside the Builder interface (Builder.run applies the same defaults)
    from recbuild.builders.base import with_schema_defaults
    return with_schema_defaults(schema, params)


def build_nodes(data: dict, locations: dict, file: str, builders: dict,
                variants: dict | None = None) -> tuple[dict, list]:
    problems: list[tuple[int, str]] = []

    def where(path: KeyPath) -> Loc:
        return locate(locations, path, file)

    def fail(path: KeyPath, message: str) -> None:
        loc = where(path)
        problems.append((loc.line, problem(loc, path, message)))

    # Recipe-wide defaults for the kinds that have such a param (e.g. `executor: ray` once for all
    # embedding steps); an artifact's own value wins.
    recipe_defaults = {key: data[key] for key in RECIPE_WIDE_DEFAULTS if key in data}
    nodes: dict[str, NodeSpec] = {}
    file_source_checker = SchemaChecker(__import__("recbuild.build.schema", fromlist=["x"]).FILE_SOURCE_SCHEMA)
    kind_checkers: dict[str, SchemaChecker] = {}
    for section in ("sources", "artifacts"):
        entries = data.get(section) or {}
        for name, spec in entries.items():
            path = (section, name)
            if (not _NAME_RE.fullmatch(name) or name in RESERVED_NAMES) and name not in (variants or {}):
                fail(path, f"bad name {name!r}: use letters, digits, '_' and '-', starting with a letter or '_'")
                continue
            if name in nodes:
                other = nodes[name]
                fail(path, f"{name!r} is already declared in {other.section} at {other.loc}; rename one")
                continue
            if not isinstance(spec, dict):
                fail(path, "must be a mapping (e.g. {kind: ..., ...} or {path: ...})")
                continue
            if "kind" not in spec:
                if section == "sources" and "path" in spec:
                    problems.extend(file_source_checker.problems(spec, path, where))
                    nodes[name] = NodeSpec(name, section, "source", dict(spec), where(path))
                else:
                    hint = " or 'path'" if section == "sources" else ""
                    fail(path, f"missing required key 'kind'{hint}")
                continue
            kind = spec["kind"]
            if not isinstance(kind, str) or kind not in builders:
                kinds = sorted(builders)
                fail(path + ("kind",), f"unknown kind {kind!r}{did_you_mean(kind, kinds)}; "
                                       f"kinds: {', '.join(kinds)}")
                continue
            builder_cls = builders[kind]
            for key, value in recipe_defaults.items():
                if key not in spec and key in builder_cls.schema.get("properties", {}):
                    spec = {**spec, key: copy.deepcopy(value)}
                    for inherited in [k for k in locations if k[:1] == (key,)]:
                        locations[path + inherited] = locations[inherited]  # errors point at the default
            checker = kind_checkers.get(kind)
            if checker is None:
                checker = kind_checkers[kind] = SchemaChecker(kind_schema(builder_cls))
            found = checker.problems(spec, path, where)
            problems.extend(found)
            params = {k: v for k, v in spec.items() if k != "kind"}
            if not found:
                params = _apply_defaults(builder_cls.schema, params)
                for sub, message in builder_cls().check(params):
                    fail(path + tuple(sub.split(".")), message)
            nodes[name] = NodeSpec(name, section, kind, params, where(path))
    return nodes, problems


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                builders: dict | None = None) -> Recipe:
    """Load and validate a recipe, reusing the result of an identical earlier load (see
    recipe_cache.py): a no-op `make` then skips YAML parsing and schema validation."""
    from recbuild.build import recipe_cache

    cached = recipe_cache.lookup(path or DEFAULT_RECIPE, overrides or [])
    if cached is not None:
        return cached
    _trace["files"].clear()
    _trace["env"].clear()
    recipe = _load_recipe(path, overrides, builders)
    from recbuild.builders import builtin_builders

    if all(n.kind == "source" or n.kind in builtin_builders() for n in recipe.nodes.values()):
        recipe_cache.store(path or DEFAULT_RECIPE, overrides or [], recipe, _trace)  # plugin code is not fingerprinted
    return recipe


def _load_recipe(path, overrides, builders) -> Recipe:
    from recbuild.builders import all_builders

    recipe_path = Path(path or DEFAULT_RECIPE)
    shown = str(path or DEFAULT_RECIPE)
    if recipe_path.is_dir():
        recipe_path = recipe_path / DEFAULT_RECIPE
        shown = str(recipe_path)
    if not recipe_path.is_file():
        hint = "" if path else " (use -f PATH, or `recbuild init dssm` to start from a template)"
        raise RecipeError(f"{shown}: recipe file not found{hint}")
    builders = builders if builders is not None else all_builders()
    data, locations = _load_with_extends(recipe_path.resolve(), shown, (str(recipe_path.resolve()),))
    apply_overrides(data, locations, overrides or [])
    data = interpolate(data, locations, shown, shell_field_test(data, builders))

    where = lambda p: locate(locations, p, shown)  # noqa: E731
    problems = SchemaChecker(top_level_schema()).problems(data, (), where)
    if "version" not in data:
        problems.append((1, problem(Loc(shown, 1, 1), ("version",), "missing required key 'version' "
                                                                     "(add `version: 1`)")))
    if problems:
        raise RecipeError([m for _, m in sorted(problems)])
    from recbuild.build import matrix

    data, expansion = matrix.expand(data, locations, shown, builders)
    nodes, problems = build_nodes(data, locations, shown, builders, expansion.variants)
    for name, variant in expansion.variants.items():
        if name in nodes:
            nodes[name].model_overrides = variant.model
    default = list(data.get("default") or [])
    for index, target in enumerate(default):
        if target not in nodes:
            loc = where(("default", index))
            problems.append((loc.line, problem(loc, ("default", index),
                                               f"unknown artifact {target!r}{did_you_mean(target, nodes)}")))
    if not nodes and not problems:
        problems.append((1, problem(Loc(shown, 1, 1), ("artifacts",), "the recipe declares no sources or artifacts")))
    if problems:
        raise RecipeError([m for _, m in sorted(problems)])
    cache = data.get("cache")
    if isinstance(cache, str):
        cache = {"url": cache}
    recipe_dir = recipe_path.resolve().parent
    workdir = (recipe_dir / data.get("workdir", "build")).resolve()
    if workdir == Path(workdir.anchor) or workdir == Path.home().resolve():
        raise RecipeError(problem(where(("workdir",)), ("workdir",),
                                  f"{workdir} cannot be a workdir: artifacts would be published beside "
                                  "the system's (or your home's) folders; use a folder of its own, e.g. build"))
    return Recipe(
        path=recipe_path, dir=recipe_dir, name=data.get("name") or recipe_dir.name,
        workdir=workdir,
        model=data.get("model") or {}, nodes=nodes, default=default, cache=cache,
        data=data, locations=locations, families=expansion.families,
    )
