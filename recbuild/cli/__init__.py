"""Command line: argparse front end. Maps every RecbuildError to its exit code in one place.

Exit codes: 0 success, 1 a build failed, 2 the recipe or the command line is wrong, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path

from recbuild import __version__
from recbuild.errors import Interrupted, RecbuildError, RecipeError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 too; keep our one-line format
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _common(parser: argparse.ArgumentParser, recipe: bool = True) -> None:
    if recipe:
        parser.add_argument("-f", "--file", metavar="RECIPE", help="recipe file (default: recbuild.yaml)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                            help="override a recipe value, e.g. --set vars.seed=7 (repeatable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="print more")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recbuild", description="Make for recommender deployment artifacts.")
    parser.add_argument("--version", action="version", version=f"recbuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    make = sub.add_parser("make", help="build targets (default: the recipe's `default`) and what they need")
    make.add_argument("targets", nargs="*", metavar="TARGET")
    make.add_argument("-n", "--dry-run", action="store_true", help="print what would be built and why")
    make.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="build N artifacts at once")
    make.add_argument("-B", "--always-make", action="store_true", help="rebuild targets even if up to date")
    make.add_argument("-k", "--keep-going", action="store_true", help="go on with independent artifacts after a failure")
    make.add_argument("--cache", metavar="URL", help="shared artifact cache (fsspec URL)")
    make.add_argument("--heartbeat", type=float, default=None, metavar="SECONDS",
                      help="when output is not a terminal, a progress line per running step every SECONDS "
                           "(default 30, or $RECBUILD_HEARTBEAT; 0 turns it off)")
    _common(make)

    status = sub.add_parser("status", help="table of artifacts: up to date / stale / missing, and why")
    status.add_argument("targets", nargs="*", metavar="TARGET")
    _common(status)

    explain = sub.add_parser("explain", help="why TARGET is stale: what changed, what rebuilds upstream")
    explain.add_argument("target", metavar="TARGET")
    _common(explain)

    lister = sub.add_parser("list", help="list sources and artifacts")
    _common(lister)

    graph = sub.add_parser("graph", help="print the artifact graph")
    graph.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    _common(graph)

    clean = sub.add_parser("clean", help="remove built artifacts (all, or the TARGETs)")
    clean.add_argument("targets", nargs="*", metavar="TARGET")
    clean.add_argument("-n", "--dry-run", action="store_true", help="print what would be removed, remove nothing")
    _common(clean)

    validate = sub.add_parser("validate", help="check the recipe (and that its source files exist) and exit")
    validate.add_argument("--allow-missing-sources", action="store_true",
                          help="report a source that does not exist as a warning, not an error")
    _common(validate)

    init = sub.add_parser("init", help="copy a template recipe into DIR so `recbuild make` works at once")
    init.add_argument("template", metavar="TEMPLATE")
    init.add_argument("dir", nargs="?", default=".", metavar="DIR")
    _common(init, recipe=False)

    templates = sub.add_parser("templates", help="list built-in recipe templates")
    _common(templates, recipe=False)

    cache = sub.add_parser("cache", help="shared artifact cache: status, push, pull, gc")
    cache.add_argument("action", choices=["status", "push", "pull", "gc"])
    cache.add_argument("targets", nargs="*", metavar="TARGET")
    cache.add_argument("--cache", metavar="URL", help="cache URL (default: the recipe's `cache:`)")
    cache.add_argument("--keep-days", type=float, default=None, metavar="N",
                       help="gc: also keep entries newer than N days")
    cache.add_argument("-n", "--dry-run", action="store_true", help="gc: list what would be deleted")
    _common(cache)

    metrics = sub.add_parser("metrics", help="table of the metrics artifacts report (recall@k, ...)")
    metrics.add_argument("targets", nargs="*", metavar="TARGET")
    metrics.add_argument("--diff", action="store_true", help="show the change since the previous build")
    metrics.add_argument("--history", action="store_true", help="show how the figures moved over the last builds")
    metrics.add_argument("--explain", action="store_true", help="say what each metric means")
    _common(metrics)

    serve = sub.add_parser("serve-check", help="load a serving bundle alone and answer one query end to end")
    serve.add_argument("target", nargs="?", metavar="BUNDLE",
                       help="a serving_bundle artifact of the recipe, or a bundle folder (default: the "
                            "recipe's first serving_bundle)")
    serve.add_argument("--bundle", metavar="PATH", help="a bundle folder (same as giving its path as BUNDLE)")
    serve.add_argument("--query", metavar="JSON", help='user features, e.g. \'{"user_id": 7, "age_level": 3}\' '
                                                      "(default: 1 for every id feature, 0.0 for numeric ones)")
    serve.add_argument("-k", type=int, default=10, help="how many items to print (default 10)")
    _common(serve)

    report = sub.add_parser("report", help="write one self-contained HTML page of plots: recall@k, training "
                            "curves, metrics history, embedding norms, TDM tree balance, the graph")
    report.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: <workdir>/report.html)")
    _common(report)

    schema = sub.add_parser("schema", help="print the recipe JSON schema")
    schema.add_argument("--markdown", action="store_true", help="print the recipe reference instead")
    _common(schema, recipe=False)
    return parser


# ------------------------------------------------------------------------------------ commands


def _load(args):
    from recbuild.builders import all_builders
    from recbuild.build.graph import build_graph
    from recbuild.build.recipe import load_recipe

    builders = all_builders()
    recipe = load_recipe(args.file, args.overrides, builders)
    return build_graph(recipe, builders), builders


def _load_targets(args):
    """(graph, builders, names): the recipe's graph and the targets named on the command line,
    checked, or every artifact when none is named."""
    graph, builders = _load(args)
    args.targets = _check_targets(graph, args.targets)
    names = args.targets or [n for n in graph.order if not graph.nodes[n].is_file_source]
    return graph, builders, names


def _workspace(graph, builders, term):
    """The recipe's workspace; state it found unreadable (and rebuilt) is reported in one line each."""
    from recbuild.build.workspace import Workspace

    ws = Workspace(graph, builders)
    for warning in ws.cache.warnings:
        term.warn(warning)
    return ws


def _check_targets(graph, targets: list[str]) -> list[str]:
    """The targets, checked; a matrix artifact's name stands for all its variants."""
    from recbuild.build.schema import did_you_mean

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


def cmd_make(args, term) -> int:
    graph, builders = _load(args)
    args.targets = _check_targets(graph, args.targets)
    if args.jobs < 1:
        raise UsageError("recbuild make: -j must be at least 1")
    if args.dry_run:
        return _dry_run(graph, builders, args.targets, term)
    from recbuild.build.cache import open_cache
    from recbuild.build.engine import Engine, MakeOptions

    engine = Engine(graph, builders, term.build_events(args.heartbeat), cache=open_cache(graph.recipe, args.cache))
    options = MakeOptions(targets=args.targets, jobs=args.jobs, always=args.always_make,
                          keep_going=args.keep_going)
    return engine.make(options)


def _dry_run(graph, builders, targets, term) -> int:

    ws = _workspace(graph, builders, term)
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


def cmd_status(args, term) -> int:
    graph, builders = _load(args)
    args.targets = _check_targets(graph, args.targets)
    ws = _workspace(graph, builders, term)
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
    ws.cache.close()
    term.table(["artifact", "kind", "state", "reason"], rows)
    return 0


def cmd_explain(args, term) -> int:
    graph, builders = _load(args)
    variants = _check_targets(graph, [args.target])
    if variants != [args.target]:
        raise UsageError(f"{args.target} is a matrix of {len(variants)} variants; explain one of them: "
                         f"{', '.join(variants)}")
    ws = _workspace(graph, builders, term)
    plan = ws.plan([args.target])
    status = plan[args.target]
    node = graph.nodes[args.target]
    if status.current:
        term.out(f"{args.target} is up to date (key {ws.manifest(args.target)['key'][:12]})")
    else:
        term.out(f"{args.target} ({node.kind}, {node.loc}) is {status.state}:")
        for reason in status.reasons:
            term.out(f"  - {reason}")
        upstream = [s for n, s in plan.items() if n != args.target and not s.current]
        if upstream:
            term.out("upstream that will rebuild first:")
            for up in upstream:
                label = "source" if graph.nodes[up.name].is_file_source else graph.nodes[up.name].kind
                term.out(f"  - {up.name} ({label}): " + "; ".join(str(r) for r in up.reasons))
    ws.cache.close()
    return 0


def cmd_list(args, term) -> int:
    graph, _ = _load(args)
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
    graph, _ = _load(args)
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
    from recbuild.build.lock import WorkdirLock
    from recbuild.build.manifest import made_by_recbuild

    graph, builders, names = _load_targets(args)
    ws = _workspace(graph, builders, term)
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


def cmd_validate(args, term) -> int:
    from recbuild.build.sources import missing_source

    graph, _ = _load(args)
    missing = []
    for node in graph.nodes.values():
        if node.is_file_source:
            why = missing_source(node.params["path"], graph.recipe.dir)
            if why:
                missing.append(f"{node.loc}: {node.section}.{node.name}: {why}")
    if missing and not args.allow_missing_sources:
        raise RecipeError(missing + [f"{graph.recipe.path}: {len(missing)} source(s) missing; "
                                     "--allow-missing-sources reports them as warnings"])
    for line in missing:
        term.warn(line)
    sources = sum(1 for n in graph.nodes.values() if n.section == "sources")
    term.info(f"{graph.recipe.path}: ok ({sources} sources, {len(graph.nodes) - sources} artifacts"
              + (f", {len(missing)} missing" if missing else "") + ")")
    return 0


def cmd_templates(args, term) -> int:
    from recbuild.build.recipe import find_template, template_names

    rows = []
    for name in template_names():
        first = ""
        for line in find_template(name).read_text(encoding="utf-8").splitlines():
            if line.startswith("#") and not line.startswith("# yaml-language-server"):
                first = line.lstrip("# ").strip()
                break
        rows.append([name, first])
    term.table(["template", "description"], rows)
    return 0


def cmd_init(args, term) -> int:
    from recbuild.build.recipe import DEFAULT_RECIPE, find_template, template_names
    from recbuild.build.schema import did_you_mean

    template = find_template(args.template)
    if template is None:
        names = template_names()
        raise UsageError(f"recbuild init: no template {args.template!r}{did_you_mean(args.template, names)}; "
                         f"templates: {', '.join(names)}")
    target_dir = Path(args.dir)
    target = target_dir / DEFAULT_RECIPE
    if target.exists():
        raise UsageError(f"recbuild init: {target} already exists; choose another DIR or remove it")
    target_dir.mkdir(parents=True, exist_ok=True)
    text = template.read_text(encoding="utf-8")
    text = text.replace("# yaml-language-server: $schema=../schemas/recipe.schema.json\n", "")
    _copy_template_files(template.with_suffix(""), target_dir)
    target.write_text(text, encoding="utf-8")
    where = "" if str(target_dir) in (".", "") else f"cd {target_dir} && "
    term.info(f"wrote {target} (template {args.template}); next: {where}recbuild make")
    return 0


def _copy_template_files(folder: Path, target_dir: Path) -> None:
    """A template's side files (recipes/<name>/, e.g. a pipeline.config) go beside the recipe."""
    if not folder.is_dir():
        return
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    clashes = [str(target_dir / p.relative_to(folder)) for p in files if (target_dir / p.relative_to(folder)).exists()]
    if clashes:
        raise UsageError(f"recbuild init: {', '.join(clashes)} already exist(s); choose another DIR or remove them")
    for path in files:
        destination = target_dir / path.relative_to(folder)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def cmd_schema(args, term) -> int:
    from recbuild.builders import all_builders
    from recbuild.build.schema import reference_markdown, schema_text

    sys.stdout.write(reference_markdown(all_builders()) if args.markdown else schema_text(all_builders()))
    return 0


def cmd_cache(args, term) -> int:
    from recbuild.build import cache_ops
    from recbuild.build.cache import open_cache
    from recbuild.build.lock import WorkdirLock

    graph, builders, names = _load_targets(args)
    cache = open_cache(graph.recipe, args.cache)
    if cache is None:
        raise UsageError("recbuild cache: no cache configured; add `cache: URL` to the recipe or pass --cache URL")
    ws = _workspace(graph, builders, term)
    try:
        if args.action == "status":
            rows = cache_ops.status(ws, cache, names)
            term.table(["artifact", "kind", "here", "in cache", "key"],
                       [[r.name, r.kind, r.local, r.cached, (r.key or "-")[:16]] for r in rows])
            return 0
        ws.state_dir.mkdir(parents=True, exist_ok=True)
        with WorkdirLock(ws.state_dir):
            if args.action == "gc":
                removed, kept = cache_ops.gc(ws, cache, args.keep_days, args.dry_run)
                verb = "would remove" if args.dry_run else "removed"
                for key in removed:
                    term.debug(f"  {verb} {key}")
                term.info(f"{verb} {len(removed)} entries, kept {kept} ({cache.url})")
                return 0
            ws.tmp_dir.mkdir(parents=True, exist_ok=True)
            results = (cache_ops.push if args.action == "push" else cache_ops.pull)(ws, cache, names)
            for name, outcome in results:
                term.info(f"  {outcome:<22} {name}")
            return 1 if any(o.startswith("rejected") for _, o in results) else 0
    finally:
        ws.cache.close()


def cmd_metrics(args, term) -> int:
    from recbuild.build import metrics

    graph, builders, names = _load_targets(args)
    ws = _workspace(graph, builders, term)
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
            row = [name, metric, metrics.format_value(value)]
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
        for metric in metrics.ordered(m for v in shown for m in current[v]):
            row = [metric]
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
    from recbuild.build import metrics

    current_key = (ws.manifest(name) or {}).get("key")
    older = [r for r in metrics.history(ws.workdir, name) if r.get("key") != current_key]
    return older[-1]["metrics"] if older else {}


def _explain_metrics(graph, builders, current: dict[str, dict[str, float]], term) -> None:
    from recbuild.build import metrics

    docs: dict[str, str] = {}
    for name, numbers in current.items():
        known = builders[graph.nodes[name].kind].metric_docs
        for metric in numbers:
            family = metrics.family_of(metric)
            if family in known:
                docs.setdefault(family, known[family])
    if docs:
        term.out("")
        for family in metrics.ordered(docs):
            term.out(f"  {family:<22} {docs[family]}")


def _metrics_history(graph, ws, names: list[str], term, last: int = 6) -> int:
    from recbuild.build import metrics

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
        graph, builders = _load(args)
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

    graph, builders = _load(args)
    data = collect.collect(graph, builders, generated_at=time.strftime("%Y-%m-%d %H:%M:%S %z"))
    path = Path(args.output) if args.output else graph.recipe.workdir / DEFAULT_NAME
    plots = page.write(data, path)
    for note in collect.notes(data):
        term.warn(note)
    pending = collect.pending(data)
    term.info(f"wrote {path} ({plots} plot{'s' if plots != 1 else ''})"
              + (f"; not built yet: {', '.join(pending)}" if pending else ""))
    return 0


COMMANDS = {"make": cmd_make, "status": cmd_status, "explain": cmd_explain, "list": cmd_list,
            "graph": cmd_graph, "clean": cmd_clean, "validate": cmd_validate, "init": cmd_init,
            "templates": cmd_templates, "schema": cmd_schema, "cache": cmd_cache,
            "metrics": cmd_metrics, "serve-check": cmd_serve_check,
            "report": cmd_report}


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from recbuild.ui.terminal import Terminal

    term = Terminal()
    try:
        args = build_parser().parse_args(argv)
        if not args.command:
            build_parser().print_help()
            return 2
        term = Terminal(verbosity=0 if args.quiet else (2 if args.verbose else 1))
        # CI cancellation sends SIGTERM: treat it like Ctrl-C so completed work is recorded.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        return COMMANDS[args.command](args, term)
    except KeyboardInterrupt:
        term.error("interrupted; completed artifacts are kept")
        return Interrupted.exit_code
    except RecipeError as exc:
        for line in exc.problems:
            term.error(line)
        return exc.exit_code
    except RecbuildError as exc:
        term.error(exc.message)
        return exc.exit_code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        term.error(f"{exc.strerror or exc}{where}")
        return 1
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("RECBUILD_DEBUG"):
            raise
        term.error(f"internal error: {type(exc).__name__}: {exc} (rerun with RECBUILD_DEBUG=1 for the "
                   "traceback, and please report it)")
        return 1


def entry() -> None:
    code = main()
    if code == Interrupted.exit_code:
        # CPython remembers a KeyboardInterrupt that left exec()'d source (a dataclass or namedtuple
        # being created by a lazy import when SIGTERM arrived) even though main() handled it, and
        # under `python -m` then kills itself with SIGINT at exit instead of returning 130.
        # Evaluating any source clears that flag.
        exec("None")
    sys.exit(code)

