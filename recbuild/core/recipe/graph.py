"""Recipe -> dependency graph: reference resolution, implicit file sources, cycle detection, order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recbuild.errors import RecipeError
from recbuild.core.recipe.load import NodeSpec, Recipe
from recbuild.core.recipe.paths import is_glob, is_url
from recbuild.core.recipe.schema import did_you_mean
from recbuild.core.recipe.yamlsrc import excerpt, problem


@dataclass(frozen=True)
class Edge:
    role: str  # key of the input in the artifact key and manifest ("towers", "deps.items")
    field: str  # the param that holds the reference
    index: int | None  # position in a list-valued field
    upstream: str  # node name


@dataclass
class Graph:
    recipe: Recipe
    nodes: dict[str, NodeSpec]
    edges: dict[str, list[Edge]]
    order: list[str]  # topological; recipe order among independent nodes
    dependents: dict[str, list[str]] = field(default_factory=dict)

    def upstream(self, name: str) -> list[str]:
        return [e.upstream for e in self.edges[name]]

    def closure(self, targets: list[str]) -> list[str]:
        """Targets and everything they need, in build order."""
        needed: set[str] = set()
        stack = list(targets)
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack.extend(self.upstream(name))
        return [n for n in self.order if n in needed]

    def downstream(self, name: str) -> list[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            for child in self.dependents.get(stack.pop(), []):
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return [n for n in self.order if n in seen]

    def default_targets(self) -> list[str]:
        return list(self.recipe.default) or [n for n in self.order if not self.nodes[n].is_file_source]


def implicit_source_name(path: str) -> str:
    return path


def build_graph(recipe: Recipe, builders: dict) -> Graph:
    nodes = dict(recipe.nodes)
    edges: dict[str, list[Edge]] = {}
    problems: list[tuple[int, str]] = []
    ref_locs: dict[tuple[str, str], tuple] = {}

    for name, node in recipe.nodes.items():
        edges[name] = []
        if node.is_file_source:
            continue
        builder = builders[node.kind]()
        for field_name, targets in builder.references(node.params).items():
            single = isinstance(node.params.get(field_name), str)
            for index, target in enumerate(targets):
                path = (node.section, name, field_name) + (() if single else (index,))
                if target == name:
                    loc = recipe.locate(path)
                    problems.append((loc.line, problem(loc, path, f"{excerpt(name)} cannot depend on itself")))
                    continue
                if target not in nodes:
                    if field_name in builder.path_fields and _looks_like_path(target, recipe):
                        nodes[target] = NodeSpec(target, "sources", "source", {"path": target},
                                                 recipe.locate(path))
                        edges.setdefault(target, [])
                    else:
                        loc = recipe.locate(path)
                        hint = did_you_mean(target, [n for n in recipe.nodes if n != name])
                        extra = "" if hint or field_name not in builder.path_fields else \
                            " (no such artifact or source, and no such file)"
                        problems.append((loc.line, problem(loc, path,
                                                           f"unknown artifact or source {excerpt(target)}{hint}{extra}")))
                        continue
                role = field_name if single else f"{field_name}.{target}"
                edges[name].append(Edge(role, field_name, None if single else index, target))
                ref_locs[(name, target)] = path
    if problems:
        raise RecipeError([m for _, m in sorted(problems)])

    problems.extend(_sources_holding_the_workdir(nodes, recipe))
    if problems:
        raise RecipeError([m for _, m in sorted(problems)])
    order = _topological(nodes, edges, recipe, ref_locs)
    dependents: dict[str, list[str]] = {n: [] for n in nodes}
    for name in order:
        for edge in edges.get(name, []):
            dependents[edge.upstream].append(name)
    return Graph(recipe, nodes, {n: edges.get(n, []) for n in nodes}, order, dependents)


def _sources_holding_the_workdir(nodes: dict, recipe: Recipe) -> list[tuple[int, str]]:
    """A source folder that contains the workdir would read the artifacts (and recbuild's state) as
    its own input: every build would change it and rebuild everything, forever."""
    problems = []
    for name, node in nodes.items():
        spec = node.params.get("path") if node.is_file_source else None
        if not isinstance(spec, str) or is_url(spec) or is_glob(spec):
            continue
        path = Path(spec[len("file://"):] if spec.startswith("file://") else spec)
        folder = (path if path.is_absolute() else recipe.dir / path).resolve()
        if folder == recipe.workdir or folder in recipe.workdir.parents:
            where = node.loc
            problems.append((where.line, f"{where}: {node.section}.{name}: {spec} contains the workdir "
                                         f"{recipe.workdir}, so the artifacts would be inputs of "
                                         "themselves; point the source at a folder beside the workdir, "
                                         "or set workdir outside it"))
    return problems


def _looks_like_path(target: str, recipe: Recipe) -> bool:
    if "://" in target:
        return True
    try:
        exists = (recipe.dir / target).exists()
    except OSError:  # e.g. a name longer than a file name can be
        exists = False
    return exists or "/" in target or "." in target


def _topological(nodes, edges, recipe: Recipe, ref_locs) -> list[str]:
    state: dict[str, int] = {}  # 1 = on stack, 2 = done
    order: list[str] = []
    for root in nodes:
        if state.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        trail: list[str] = [root]
        state[root] = 1
        while stack:
            name, i = stack[-1]
            ups = [e.upstream for e in edges.get(name, [])]
            if i < len(ups):
                stack[-1] = (name, i + 1)
                up = ups[i]
                if state.get(up) == 1:
                    cycle = trail[trail.index(up):] + [up]
                    # report at the reference that closes the cycle, in dependency direction
                    path = ref_locs[(name, up)]
                    loc = recipe.locate(path)
                    text = " -> ".join(reversed(cycle))
                    raise RecipeError(problem(loc, path, f"dependency cycle: {text}"))
                if not state.get(up):
                    state[up] = 1
                    stack.append((up, 0))
                    trail.append(up)
            else:
                stack.pop()
                trail.pop()
                state[name] = 2
                order.append(name)
    return order
