"""What every command starts with: the recipe's graph, the targets named on the command line
(checked, a matrix name standing for its variants) and the workspace."""

from __future__ import annotations

from recbuild.errors import UsageError


def load_graph(args):
    """(graph, builders): the graph of the recipe named by -f, with the --set overrides."""
    from recbuild.builders import all_builders
    from recbuild.core.recipe.graph import build_graph
    from recbuild.core.recipe.load import load_recipe

    builders = all_builders()
    recipe = load_recipe(args.file, args.overrides, builders)
    return build_graph(recipe, builders), builders


def load_targets(args):
    """(graph, builders, names): the recipe's graph and the targets named on the command line,
    checked, or every artifact when none is named."""
    graph, builders = load_graph(args)
    args.targets = check_targets(graph, args.targets)
    names = args.targets or [n for n in graph.order if not graph.nodes[n].is_file_source]
    return graph, builders, names


def open_workspace(graph, builders, term):
    """The recipe's workspace; state it found unreadable (and rebuilt) is reported in one line each."""
    from recbuild.core.workdir.workspace import Workspace

    ws = Workspace(graph, builders)
    for warning in ws.cache.warnings:
        term.warn(warning)
    return ws


def check_targets(graph, targets: list[str]) -> list[str]:
    """The targets, checked; a matrix artifact's name stands for all its variants."""
    from recbuild.core.recipe.schema import did_you_mean

    families = graph.recipe.families
    resolved: list[str] = []
    for target in targets:
        if target in families:
            resolved.extend(v for v in families[target] if v not in resolved)
        elif target in graph.nodes:
            resolved.append(target)
        else:
            known = [*graph.nodes, *families]
            raise UsageError(f"{graph.recipe.path}: unknown target {target!r}{did_you_mean(target, known)}; "
                             "see `recbuild list`")
    return resolved
