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
                removed, kept = ops.gc(ws, cache, args.keep_days, args.dry_run)
                verb = "would remove" if args.dry_run else "removed"
                for key in removed:
                    term.debug(f"  {verb} {key}")
                term.info(f"{verb} {len(removed)} entries, kept {kept} ({cache.url})")
                return 0
            ws.tmp_dir.mkdir(parents=True, exist_ok=True)
            results = (ops.push if args.action == "push" else ops.pull)(ws, cache, names)
            for name, outcome in results:
                term.info(f"  {outcome:<22} {name}")
            return 1 if any(o.startswith("rejected") for _, o in results) else 0
    finally:
        ws.cache.close()
