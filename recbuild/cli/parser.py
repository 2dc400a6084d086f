"""The argparse parser of the `recbuild` command: its subcommands, options and help texts. A bad
command line raises UsageError (exit 2) with one line, like every other recbuild error."""

from __future__ import annotations

import argparse

from recbuild import __version__
from recbuild.errors import UsageError


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
                       help="gc policy: delete entries not used (built, pushed or restored) for N days")
    cache.add_argument("--max-size", default=None, metavar="SIZE",
                       help="gc policy: delete the least recently used entries until the cache fits "
                            "SIZE (e.g. 50GB)")
    cache.add_argument("--keep-needed-by", nargs="+", default=None, metavar="RECIPE",
                       help="gc policy: delete what none of these recipes needs (their keys now)")
    cache.add_argument("-n", "--dry-run", action="store_true",
                       help="gc: list what would be deleted, and why (the default without a policy)")
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
