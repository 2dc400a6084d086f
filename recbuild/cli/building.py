"""Commands about building: make (and make -n), status, explain, list, graph, clean."""

from __future__ import annotations

import os
import shutil

from recbuild.cli.common import check_targets, load_graph, load_targets, open_workspace
from recbuild.errors import UsageError


def cmd_make(args, term) -> int:
    graph, builders = load_graph(args)
    args.targets = check_targets(graph, args.targets)
    if args.jobs < 1:
        raise UsageError("recbuild make: -j must be at least 1")
    if args.question:
        return _would_build(graph, builders, args.targets or graph.default_targets(), term)
    if args.dry_run:
        return _dry_run(graph, builders, args.targets, term)
    from recbuild.core.cache.store import open_cache
    from recbuild.core.running.engine import Engine, MakeOptions

    cache = open_cache(graph.recipe, args.cache)
    engine = Engine(graph, builders, term.build_events(args.heartbeat), cache=cache,
                    executor=_executor(graph, args.cluster, cache, args.targets))
    if args.wait is not None and args.wait < 0:
        raise UsageError("recbuild make: --wait must be 0 or more seconds")
    options = MakeOptions(targets=args.targets, jobs=args.jobs, always=args.always_make,
                          keep_going=args.keep_going, wait=args.wait)
    return engine.make(options)


def _executor(graph, override: str | None, cache, targets: list[str]):
    """Where stale steps run: None (this process) or a Ray cluster (the recipe's `cluster:`, or
    ``--cluster ADDRESS``; ``--cluster local`` keeps them here)."""
    recipe = graph.recipe
    settings = recipe.cluster
    if override is not None:
        if override.strip() == "local":
            return None
        settings = {"max_retries": 3, "leave_in_store": [], **(settings or {}), "kind": "ray",
                    "address": override.strip()}
    if not settings:
        return None
    if cache is None:
        where = (f"{recipe.locate(('cluster',))}: cluster" if recipe.cluster
                 else "recbuild make --cluster")
        raise UsageError(f"{where}: a cluster build needs a shared cache, through which inputs and "
                         "outputs move between this machine and the nodes; add `cache: URL` to the "
                         "recipe (a store every node reaches) or pass --cache URL")
    left = set()
    for index, name in enumerate(settings.get("leave_in_store") or []):
        if name not in recipe.nodes and name not in recipe.families:
            raise UsageError(f"{recipe.locate(('cluster', 'leave_in_store', index))}: cluster.leave_in_store: "
                             f"unknown artifact {name!r}")
        left.update(recipe.families.get(name, [name]))
    wanted = set()
    for name in targets or graph.default_targets():  # what was asked for is always downloaded
        wanted.update(recipe.families.get(name, [name]))
    from recbuild.core.running.cluster import RayExecutor

    return RayExecutor(settings["address"], cache, max_retries=settings.get("max_retries", 3),
                       files_in_store=left - wanted)


def _dry_run(graph, builders, targets, term) -> int:

    ws = open_workspace(graph, builders, term)
    plan = ws.plan(targets or graph.default_targets())
    stale = [s for s in plan.values() if not s.current and not graph.nodes[s.name].is_file_source]
    broken = [s for s in plan.values() if graph.nodes[s.name].is_file_source and s.state == "error"]
    for status in broken:
        term.error(f"{graph.nodes[status.name].loc}: {'; '.join(map(str, status.reasons))}")
    for status in plan.values():
        if graph.nodes[status.name].is_file_source:
            continue
        kind = graph.nodes[status.name].kind
        if status.current:
            term.debug(f"  up to date  {status.name}")
        elif status.only_upstream:
            # its own key is unchanged: it builds only if an upstream's rebuild changes its output
            ups = ", ".join(r.upstream for r in status.reasons)
            term.out(f"  may build   {status.name} ({kind}): only if {ups} changes its output when rebuilt")
        else:
            why = "; ".join(str(r) for r in status.reasons)
            term.out(f"  will build  {status.name} ({kind}): {why}")
    if not stale:
        term.info("nothing to build: everything is up to date")
    ws.cache.close()
    return 1 if broken else 0


def _would_build(graph, builders, targets, term) -> int:
    """make --question: 1 when any artifact the targets need is not up to date, else 0; prints nothing
    (errors aside), as GNU make -q."""
    ws = open_workspace(graph, builders, term)
    try:
        plan = ws.plan(targets)
    finally:
        ws.cache.close()
    return 1 if _stale(graph, plan) else 0


def _stale(graph, plan) -> list[str]:
    """The artifacts of a plan that a make would build (sources are hashed, not built)."""
    return [s.name for s in plan.values() if not s.current and not graph.nodes[s.name].is_file_source]


def cmd_status(args, term) -> int:
    graph, builders = load_graph(args)
    args.targets = check_targets(graph, args.targets)
    ws = open_workspace(graph, builders, term)
    plan = ws.plan(args.targets or list(graph.nodes))
    rows = []
    for name, status in plan.items():
        node = graph.nodes[name]
        if node.is_file_source and status.current:
            continue
        kind = "source" if node.is_file_source else node.kind
        state = status.state
        if node.is_file_source and state == "missing":
            state = "new"
        rows.append([name, kind, state, "; ".join(str(r) for r in status.reasons) or "-"])
    term.table(["artifact", "kind", "state", "reason"], rows)
    for name in plan:  # -v: provenance, what built each artifact
        manifest = None if graph.nodes[name].is_file_source else ws.manifest(name)
        if manifest:
            term.debug(f"{name}: built by {provenance(manifest)}")
    ws.cache.close()
    if args.check:
        stale = _stale(graph, plan)
        if stale:
            term.info(f"{len(stale)} artifact{'s' if len(stale) != 1 else ''} would build: {', '.join(stale)}")
            return 1
        term.info("everything is up to date")
    return 0


def provenance(manifest: dict) -> str:
    """'recbuild 0.1.0; torch 2.13.0+cpu, numpy 2.4.6, python 3.11, machine x86_64': the
    versions a manifest records as having built its artifact."""
    tools = [f"{name} {value}" for name, value in sorted((manifest.get("toolchain") or {}).items())]
    facts = [f"{name} {value}" for name, value in sorted((manifest.get("facts") or {}).items())]
    listed = ", ".join(tools + facts)
    return f"recbuild {manifest.get('recbuild_version', '?')}" + (f"; {listed}" if listed else "")


def cmd_explain(args, term) -> int:
    graph, builders = load_graph(args)
    names = check_targets(graph, args.targets)  # a matrix name stands for each of its variants
    ws = open_workspace(graph, builders, term)
    try:
        for i, name in enumerate(names):
            if i:
                term.out()
            _explain(graph, ws, name, term)
    finally:
        ws.cache.close()
    return 0


def _explain(graph, ws, name: str, term) -> None:
    plan = ws.plan([name])
    status = plan[name]
    node = graph.nodes[name]
    if status.current:
        key = ws.manifest(name)["key"][:12] if not node.is_file_source else None
        term.out(f"{name} is up to date" + (f" (key {key})" if key else ""))
        return
    term.out(f"{name} ({node.kind}, {node.loc}) is {status.state}:")
    for reason in status.reasons:
        term.out(f"  - {reason}")
    upstream = [s for n, s in plan.items() if n != name and not s.current]
    if upstream:
        term.out("upstream that will rebuild first:")
        for up in upstream:
            label = "source" if graph.nodes[up.name].is_file_source else graph.nodes[up.name].kind
            term.out(f"  - {up.name} ({label}): " + "; ".join(str(r) for r in up.reasons))


def cmd_list(args, term) -> int:
    graph, _ = load_graph(args)
    defaults = set(graph.default_targets())
    rows = []
    for name in graph.order:
        node = graph.nodes[name]
        kind = "source" if node.is_file_source else node.kind
        needs = ", ".join(graph.upstream(name)) or "-"
        rows.append([name, kind, needs, "*" if name in defaults else "", str(node.loc)])
    term.table(["name", "kind", "needs", "default", "declared at"], rows)
    return 0


def cmd_graph(args, term) -> int:
    graph, _ = load_graph(args)
    term.out(render_graph(graph, args.format))
    return 0


def render_graph(graph, fmt: str) -> str:
    ids = {name: f"n{i}" for i, name in enumerate(graph.order)}
    lines = []
    if fmt == "mermaid":
        lines.append("graph LR")
        for name in graph.order:
            node = graph.nodes[name]
            label = f"{name}<br/><i>{'source' if node.is_file_source else node.kind}</i>"
            shape = ("[(", ")]") if node.is_file_source or node.section == "sources" else ("[", "]")
            lines.append(f'  {ids[name]}{shape[0]}"{label}"{shape[1]}')
        for name in graph.order:
            for edge in graph.edges[name]:
                lines.append(f"  {ids[edge.upstream]} --> {ids[name]}")
    else:
        lines.append("digraph recbuild {")
        lines.append("  rankdir=LR;")
        for name in graph.order:
            node = graph.nodes[name]
            kind = "source" if node.is_file_source else node.kind
            shape = "cylinder" if node.section == "sources" else "box"
            lines.append(f'  {ids[name]} [label="{name}\\n({kind})", shape={shape}];')
        for name in graph.order:
            for edge in graph.edges[name]:
                lines.append(f"  {ids[edge.upstream]} -> {ids[name]};")
        lines.append("}")
    return "\n".join(lines)


def cmd_clean(args, term) -> int:
    from recbuild.errors import ForeignFolder
    from recbuild.core.workdir.lock import WorkdirLock
    from recbuild.core.workdir.manifest import made_by_recbuild

    graph, builders, names = load_targets(args)
    ws = open_workspace(graph, builders, term)
    ws.cache.close()
    removed = 0
    present = [n for n in names if os.path.lexists(ws.folder(n))]
    foreign = [str(ws.folder(n)) for n in present if not made_by_recbuild(ws.folder(n))]
    if foreign:  # decided before anything is removed: all or nothing
        raise ForeignFolder(f"recbuild did not make {', '.join(foreign)} (no recbuild MANIFEST.json), so "
                            "it will not delete it; nothing was removed. Remove it yourself if you mean to")
    if args.dry_run:
        for name in present:
            term.out(f"  would remove {name} ({ws.folder(name)})")
        term.info(f"would remove {len(present)} artifact{'s' if len(present) != 1 else ''}")
        return 0
    with WorkdirLock(ws.state_dir):
        for name in present:
            shutil.rmtree(ws.folder(name))
            removed += 1
            term.info(f"  removed {name}")
        if not args.targets:
            for leftover in ("tmp", "sources", "logs", "doit.sqlite"):
                path = ws.state_dir / leftover
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    path.unlink()
    term.info(f"removed {removed} artifact{'s' if removed != 1 else ''}")
    return 0
