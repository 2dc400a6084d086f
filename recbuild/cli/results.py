"""Commands that show what builds produced: metrics (with --diff, --history, --explain),
serve-check (one query through a serving bundle) and report (the HTML page of plots)."""

from __future__ import annotations

from pathlib import Path

from recbuild.cli.common import load_graph, load_targets, open_workspace
from recbuild.errors import UsageError


def cmd_metrics(args, term) -> int:
    from recbuild.core.workdir import metrics

    graph, builders, names = load_targets(args)
    ws = open_workspace(graph, builders, term)
    ws.cache.close()
    if args.history:
        return _metrics_history(graph, ws, names, term)
    current: dict[str, dict[str, float]] = {}
    for name in names:
        path = ws.folder(name) / metrics.METRICS_FILE
        if path.is_file():
            try:
                current[name] = metrics.read(path)
            except (ValueError, RecursionError) as exc:
                term.warn(f"{path} is unreadable ({str(exc)[:80]}); skipped")
    if not current:
        term.info("no metrics yet: build an artifact that reports them (recall_eval, train, tdm_tree ...) first")
        return 0
    previous = {name: _previous_metrics(ws, name) for name in current} if args.diff else {}
    variant_of = {v: family for family, variants in graph.recipe.families.items() for v in variants}
    plain = [n for n in current if n not in variant_of]
    rows = []
    for name in plain:
        for metric in metrics.ordered(current[name]):
            value = current[name][metric]
            row = [name, builders[graph.nodes[name].kind].metric_title(metric), metrics.format_value(value)]
            if args.diff:
                old = previous[name].get(metric)
                row += [metrics.format_value(old), metrics.format_change(old, value)]
            rows.append(row)
    if rows:
        term.table(["artifact", "metric", "value"] + (["previous", "change"] if args.diff else []), rows)
    for family, variants in graph.recipe.families.items():
        shown = [v for v in variants if v in current]
        if not shown:
            continue
        table = []
        titled = builders[graph.nodes[shown[0]].kind]
        for metric in metrics.ordered(m for v in shown for m in current[v]):
            row = [titled.metric_title(metric)]
            for variant in shown:
                value = current[variant].get(metric)
                cell = metrics.format_value(value)
                if args.diff and value is not None:
                    cell += f" ({metrics.format_change(previous[variant].get(metric), value)})"
                row.append(cell)
            table.append(row)
        term.table(["metric", *shown], table, title=f"{family}: {len(variants)} variants")
    if args.explain:
        _explain_metrics(graph, builders, current, term)
    return 0


def _previous_metrics(ws, name: str) -> dict[str, float]:
    """The figures of the build before the current one (from the history)."""
    from recbuild.core.workdir import metrics

    current_key = (ws.manifest(name) or {}).get("key")
    older = [r for r in metrics.history(ws.workdir, name) if r.get("key") != current_key]
    return older[-1]["metrics"] if older else {}


def _explain_metrics(graph, builders, current: dict[str, dict[str, float]], term) -> None:
    """What each figure means, per kind of artifact: the same name (recall@k) means different things
    for a training evaluation, recall_eval's index search and tzrec's in-batch evaluation."""
    from recbuild.core.workdir import metrics

    by_kind: dict[str, list[str]] = {}
    for name in current:
        by_kind.setdefault(graph.nodes[name].kind, []).append(name)
    for kind, names in by_kind.items():
        builder = builders[kind]
        families = metrics.ordered(dict.fromkeys(_documented(metrics.family_of(m), builder.metric_docs)
                                                 for n in names for m in current[n]))
        lines = [(builder.metric_title(family), builder.metric_docs[family])
                 for family in families if family in builder.metric_docs]
        if not lines:
            continue
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        term.out("")
        term.out(f"{kind} ({shown}):")
        width = max(len(title) for title, _ in lines)
        for title, doc in lines:
            term.out(f"  {title:<{width}}  {doc}")


def _documented(family: str, docs: dict[str, str]) -> str:
    """The name a figure is documented under: itself, or the nearest dotted parent that is
    (search.fewer_than_k.50.queries -> search.fewer_than_k)."""
    parts = family.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in docs:
            return ".".join(parts[:end])
    return family


def _metrics_history(graph, ws, names: list[str], term, last: int = 6) -> int:
    from recbuild.core.workdir import metrics

    shown = 0
    for name in names:
        records = metrics.history(ws.workdir, name)[-last:]
        if not records:
            continue
        shown += 1
        headers = ["metric"] + [f"{r.get('time', '?')[:16].replace('T', ' ')} "
                                f"{(r.get('commit') or '')[:7]}".strip() for r in records]
        table = []
        for metric in metrics.ordered(m for r in records for m in r["metrics"]):
            table.append([metric] + [metrics.format_value(r["metrics"].get(metric)) for r in records])
        term.table(headers, table, title=f"{name}: last {len(records)} builds")
    if not shown:
        term.info("no history yet: each build that reports metrics adds to "
                  f"{ws.workdir / metrics.HISTORY_FILE}")
    return 0


def cmd_serve_check(args, term) -> int:
    import json

    from recbuild.errors import BuildError
    from recbuild.ml.serving_bundle import serve_check

    if args.bundle:
        bundle = Path(args.bundle)
    elif args.target and (Path(args.target) / "serving_config.json").is_file():
        bundle = Path(args.target)  # a bundle folder given as BUNDLE: no recipe needed
    else:
        graph, builders = load_graph(args)
        bundles = [n for n in graph.order if graph.nodes[n].kind == "serving_bundle"]
        name = args.target or (bundles[0] if bundles else None)
        if name is None or name not in bundles:
            raise UsageError(f"recbuild serve-check: {name or 'the recipe'} has no serving_bundle artifact "
                             f"named {name!r}; bundles: {', '.join(bundles) or 'none'}")
        bundle = graph.recipe.workdir / name
        if not (bundle / "MANIFEST.json").is_file():
            raise BuildError(f"{name} is not built yet; run `recbuild make {name}` first")
    if args.query:
        try:
            query = json.loads(args.query)
        except ValueError as exc:
            raise UsageError(f"recbuild serve-check: --query is not JSON: {exc}") from None
    else:
        fg = json.loads((bundle / "user" / "fg.json").read_text(encoding="utf-8")) \
            if (bundle / "user" / "fg.json").is_file() else {"features": []}
        query = {}
        for feature in fg.get("features", []):
            column = feature.get("expression", "user:" + feature["feature_name"]).split(":", 1)[-1]
            kind = feature.get("feature_type")
            query[column] = 0.0 if kind == "raw_feature" else ([1] if kind == "sequence_id_feature" else 1)
    items = serve_check(bundle, query, args.k)
    term.info(f"{bundle}: query {json.dumps(query, sort_keys=True)}")
    term.out(" ".join(items))
    return 0


def cmd_report(args, term) -> int:
    import time

    from recbuild.report import DEFAULT_NAME, collect, page

    graph, builders = load_graph(args)
    data = collect.collect(graph, builders, generated_at=time.strftime("%Y-%m-%d %H:%M:%S %z"))
    path = Path(args.output) if args.output else graph.recipe.workdir / DEFAULT_NAME
    plots = page.write(data, path)
    for note in collect.notes(data):
        term.warn(note)
    pending = collect.pending(data)
    term.info(f"wrote {path} ({plots} plot{'s' if plots != 1 else ''})"
              + (f"; not built yet: {', '.join(pending)}" if pending else ""))
    return 0
