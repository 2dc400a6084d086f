"""``${...}`` interpolation of a merged recipe: ``${vars.x}`` and ``${env.X}`` (``${env.X:-default}``),
a string that is exactly one reference taking the value's type, ``$${`` for a literal ``${``,
values shell-quoted in a kind's ``shell_fields`` unless written ``${raw:...}``. ``${out}``,
``${deps.NAME}`` and ``${params.KEY}`` are left for the ``command`` kind. Records the environment
variables it read in merge.read_trace.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
from typing import Any

from recbuild.errors import RecipeError
from recbuild.core.recipe.merge import read_trace
from recbuild.core.recipe.schema import did_you_mean
from recbuild.core.recipe.yamlsrc import KeyPath, clip, excerpt, locate, problem

_REF = re.compile(r"\$\{([^}]*)\}")
RAW_PREFIX = "raw:"


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
                    self._fail(path, f"unknown variable ${{{clip(expr)}}}: {walked} has no {excerpt(part)}"
                                     f"{did_you_mean(part, options)}")
                    return False, None
            return True, value
        if expr.startswith("env."):
            name, sep, default = expr[4:].partition(":-")
            read_trace["env"][name] = os.environ.get(name)
            if name in os.environ:
                return True, os.environ[name]
            if sep:
                return True, default
            self._fail(path, f"environment variable {clip(name)} is not set; set it or write "
                             f"${{env.{clip(name)}:-default}}")
            return False, None
        if expr == "out" or expr.startswith(("deps.", "params.")):
            return False, None  # left for the command kind
        self._fail(path, f"unknown reference ${{{clip(expr)}}}; use ${{vars.NAME}} or ${{env.NAME}} "
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
                self._fail(path, f"${{{clip(match.group(1))}}} is a {type(value).__name__}; "
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
