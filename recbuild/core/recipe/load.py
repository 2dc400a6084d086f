"""Recipe loading: YAML with locations -> extends -> --set overrides -> ${...} interpolation ->
schema validation -> a :class:`Recipe` of plain data. No I/O beyond reading recipe files.

This module holds the Recipe, the load from end to end and the validation of each source and
artifact (its kind's schema and defaults, the recipe-wide defaults, its kind's own checks). The
stages before it: merge.py (extends, --set), interpolation.py (${...}),
templates.py (the built-in templates); parse_cache.py reuses an identical earlier load.

Decisions (documented in docs/recipes.md):
- ``extends`` is resolved first (a built-in template name or a path relative to the recipe);
  mappings deep-merge, everything else is replaced; a ``null`` value deletes the inherited key; a
  source or artifact of another kind replaces the inherited one (merge.py).
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
from pathlib import Path

from recbuild.errors import RecipeError
from recbuild.core.recipe.interpolation import interpolate, shell_field_test
from recbuild.core.recipe.merge import apply_overrides, load_with_extends, read_trace
from recbuild.core.recipe.spec import NodeSpec, Recipe  # noqa: F401  (the loader's result types)
from recbuild.core.recipe.schema import NAME_PATTERN, SchemaChecker, did_you_mean, kind_schema, top_level_schema
from recbuild.core.recipe.yamlsrc import KeyPath, Loc, clip, excerpt, locate, problem

DEFAULT_RECIPE = "recbuild.yaml"
_NAME_RE = re.compile(NAME_PATTERN)
RESERVED_NAMES = {"MANIFEST.json"}
# A name is a folder name (<workdir>/<name>/) and, while building, part of longer ones: the staging
# folders <name>-<10 hex>, <name>-pull-<10 hex> and <name>-cache-<10 hex> (the longest), the old copy
# set aside <name>-old-<8 hex>. Most file systems hold 255 bytes in a name.
MAX_NAME_BYTES = 255 - len("-cache-0123456789")
RECIPE_WIDE_DEFAULTS = ("executor", "ray", "tzrec")


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
    file_source_checker = SchemaChecker(__import__("recbuild.core.recipe.schema", fromlist=["x"]).FILE_SOURCE_SCHEMA)
    kind_checkers: dict[str, SchemaChecker] = {}
    for section in ("sources", "artifacts"):
        entries = data.get(section) or {}
        for name, spec in entries.items():
            path = (section, name)
            if (not _NAME_RE.fullmatch(name) or name in RESERVED_NAMES) and name not in (variants or {}):
                fail(path, f"bad name {excerpt(name)}: use letters, digits, '_' and '-', starting with a letter or '_'")
                continue
            if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
                what = "variant name" if name in (variants or {}) else "name"
                fail(path, f"a {what} of {len(name.encode('utf-8', 'surrogateescape'))} bytes: an "
                           f"artifact's name is its folder's name, at most {MAX_NAME_BYTES} bytes "
                           "(a file name holds 255, and recbuild adds a suffix to it while building); "
                           "use a shorter name" + (" or shorter matrix values" if what != "name" else ""))
                continue
            if name in nodes:
                other = nodes[name]
                fail(path, f"{excerpt(name)} is already declared in {other.section} at {other.loc}; rename one")
                continue
            if not isinstance(spec, dict):
                fail(path, "must be a mapping (e.g. {kind: ..., ...} or {path: ...})")
                continue
            if "kind" not in spec:
                if section == "sources" and "path" in spec:
                    problems.extend(file_source_checker.problems(spec, path, where))
                    nodes[name] = NodeSpec(name, section, "source", dict(spec), where(path))
                elif "path" in spec:  # a file recbuild does not build is a source, not an artifact
                    fail(path, f"missing required key 'kind': a {{path: ...}} entry is a source; declare it "
                               f"under sources instead (`{name}: null` under artifacts drops an inherited one)")
                else:
                    hint = " or 'path'" if section == "sources" else ""
                    fail(path, f"missing required key 'kind'{hint}")
                continue
            kind = spec["kind"]
            if not isinstance(kind, str) or kind not in builders:
                kinds = sorted(builders)
                fail(path + ("kind",), f"unknown kind {excerpt(kind)}{did_you_mean(kind, kinds)}; "
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
            params = {k: v for k, v in spec.items() if k not in ("kind", "resources")}
            if not found:
                params = _apply_defaults(builder_cls.schema, params)
                for sub, message in builder_cls().check(params):
                    fail(path + tuple(sub.split(".")), message)
            resources = {**copy.deepcopy(builder_cls.resources), **(spec.get("resources") or {})}
            nodes[name] = NodeSpec(name, section, kind, params, where(path), resources=resources)
    return nodes, problems


def load_recipe(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                builders: dict | None = None) -> Recipe:
    """Load and validate a recipe, reusing the result of an identical earlier load (see
    parse_cache.py): a no-op `make` then skips YAML parsing and schema validation."""
    from recbuild.core.recipe import parse_cache

    cached = parse_cache.lookup(path or DEFAULT_RECIPE, overrides or [])
    if cached is not None:
        return cached
    read_trace["files"].clear()
    read_trace["env"].clear()
    recipe = _load_recipe(path, overrides, builders)
    from recbuild.builders import builtin_builders

    if all(n.kind == "source" or n.kind in builtin_builders() for n in recipe.nodes.values()):
        parse_cache.store(path or DEFAULT_RECIPE, overrides or [], recipe, read_trace)  # plugin code is not fingerprinted
    return recipe


# The system's own trees: no workdir inside them; and folders that hold everyone's folders: no
# workdir there itself (a folder of its own below them is fine: /tmp/x, /var/lib/ci/build).
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
                 "/sys", "/usr", "/System", "/Library", "/private/etc")
_SYSTEM_FOLDERS = ("/home", "/root", "/var", "/opt", "/srv", "/mnt", "/media", "/tmp", "/run", "/snap",
                   "/usr/local", "/Users", "/Applications", "/private", "/private/var", "/private/tmp",
                   "/dev/shm")


def _system_folder(workdir: Path) -> str | None:
    """Why ``workdir`` is the system's (or the home folder), or None."""
    text = workdir.as_posix()
    if workdir == Path.home().resolve():
        return "your home folder"
    if workdir == Path(workdir.anchor) or text in _SYSTEM_FOLDERS:
        return "a system folder"
    if text.startswith(("/usr/local/", "/dev/shm/")):  # a folder of its own on a RAM disk, or /usr/local/src/x
        return None
    tree = next((t for t in _SYSTEM_TREES if text == t or text.startswith(t + "/")), None)
    return None if tree is None else (f"inside {tree}, a system folder" if tree != text else "a system folder")


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
    data, locations = load_with_extends(recipe_path.resolve(), shown, (str(recipe_path.resolve()),))
    apply_overrides(data, locations, overrides or [])
    data = interpolate(data, locations, shown, shell_field_test(data, builders))

    where = lambda p: locate(locations, p, shown)  # noqa: E731
    problems = SchemaChecker(top_level_schema()).problems(data, (), where)
    if "version" not in data:
        problems.append((1, problem(Loc(shown, 1, 1), ("version",), "missing required key 'version' "
                                                                     "(add `version: 1`)")))
    if problems:
        raise RecipeError([m for _, m in sorted(problems)])
    from recbuild.core.recipe import matrix

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
                                               f"unknown artifact {excerpt(target)}{did_you_mean(target, nodes)}")))
    if not nodes and not problems:
        problems.append((1, problem(Loc(shown, 1, 1), ("artifacts",), "the recipe declares no sources or artifacts")))
    if problems:
        raise RecipeError([m for _, m in sorted(problems)])
    cache = data.get("cache")
    if isinstance(cache, str):
        cache = {"url": cache}
    cluster = data.get("cluster")
    if cluster is not None:
        from recbuild.core.recipe.schema import CLUSTER_SCHEMA

        cluster = _apply_defaults(CLUSTER_SCHEMA, cluster)
    recipe_dir = recipe_path.resolve().parent
    workdir = (recipe_dir / data.get("workdir", "build")).resolve()
    system = _system_folder(workdir)
    if system:
        raise RecipeError(problem(where(("workdir",)), ("workdir",),
                                  f"{clip(str(workdir), 200)} cannot be a workdir: it is {system}, where "
                                  "artifacts would be published beside folders that are not recbuild's; "
                                  "use a folder of its own, e.g. build"))
    return Recipe(
        path=recipe_path, dir=recipe_dir, name=data.get("name") or recipe_dir.name,
        workdir=workdir,
        model=data.get("model") or {}, nodes=nodes, default=default, cache=cache,
        data=data, locations=locations, families=expansion.families, cluster=cluster,
    )
