"""The cache command: status, push, pull and gc of the shared artifact cache."""

from __future__ import annotations

from recbuild.cli.common import load_targets, open_workspace
from recbuild.errors import UsageError


def cmd_cache(args, term) -> int:
    from recbuild.core.cache import ops
    from recbuild.core.cache.store import open_cache
    from recbuild.core.workdir.lock import WorkdirLock

    graph, builders, names = load_targets(args)
    cache = open_cache(graph.recipe, args.cache)
    if cache is None:
        raise UsageError("recbuild cache: no cache configured; add `cache: URL` to the recipe or pass --cache URL")
    ws = open_workspace(graph, builders, term)
    try:
        if args.action == "status":
            rows = ops.status(ws, cache, names)
            term.table(["artifact", "kind", "here", "in cache", "key"],
                       [[r.name, r.kind, r.local, r.cached, (r.key or "-")[:16]] for r in rows])
            return 0
        ws.state_dir.mkdir(parents=True, exist_ok=True)
        with WorkdirLock(ws.state_dir):
            if args.action == "gc":
                return _gc(args, ws, cache, term)
            ws.tmp_dir.mkdir(parents=True, exist_ok=True)
            results = (ops.push if args.action == "push" else ops.pull)(ws, cache, names)
            for name, outcome in results:
                term.info(f"  {outcome:<22} {name}")
            return 1 if any(o.startswith("rejected") for _, o in results) else 0
    finally:
        ws.cache.close()


def _gc(args, ws, cache, term) -> int:
    """gc deletes only under an explicit policy; without one it shows what keeping only this
    recipe's needs would delete (docs/ci.md: a cache shared by many branches)."""
    import time

    from recbuild.common.sizes import format_bytes, size_bytes
    from recbuild.core.cache import ops

    max_size = None
    if args.max_size is not None:
        try:
            max_size = size_bytes(args.max_size)
        except ValueError as exc:
            raise UsageError(f"recbuild cache gc --max-size: {exc}") from None
    policy = args.keep_days is not None or max_size is not None or args.keep_needed_by is not None
    dry_run = args.dry_run or not policy
    needed, needed_by = None, ""
    if args.keep_needed_by is not None or not policy:
        recipes = args.keep_needed_by or [str(ws.recipe.path)]
        needed = set()
        for path in recipes:
            needed |= ops.needed_keys(_workspace_of(path, args, ws, term), cache)
        needed_by = ", ".join(recipes)
    plan = ops.plan_gc(cache, needed=needed, keep_days=args.keep_days, max_size=max_size, needed_by=needed_by)
    if not policy:
        term.info("no gc policy given (--keep-days N, --max-size SIZE, --keep-needed-by RECIPE...): "
                  f"nothing is deleted. Under --keep-needed-by {needed_by}, gc would delete:")
    now = time.time()
    verb = "would delete" if dry_run else "deleted"
    removed, partials = (plan.delete, [u.path for u in plan.partial_uploads]) if dry_run else ops.run_gc(cache, plan)
    for doomed in removed:
        used = "never" if doomed.last_used is None else f"{(now - doomed.last_used) / 86400:.1f} days ago"
        term.info(f"  {verb} {doomed.key[:16]} {doomed.kind:<16} {format_bytes(doomed.size):>9}  "
                  f"last used {used}: {doomed.why}")
    for path in partials:
        term.info(f"  {verb} partial upload {path} (older than an hour)")
    term.info(f"{verb} {len(removed)} entries ({format_bytes(sum(d.size for d in removed))}) and "
              f"{len(partials)} partial uploads, kept {plan.kept} ({cache.url})")
    return 0


def _workspace_of(path: str, args, current, term):
    """The workspace of another recipe named by --keep-needed-by (the current one as it is)."""
    from pathlib import Path

    from recbuild.builders import all_builders
    from recbuild.core.recipe.graph import build_graph
    from recbuild.core.recipe.load import load_recipe

    if Path(path).resolve() == Path(current.recipe.path).resolve():
        return current
    builders = all_builders()
    graph = build_graph(load_recipe(path, [], builders), builders)
    return open_workspace(graph, builders, term)
