"""The argparse parser of the `recbuild` command: its subcommands, options and help texts. A bad
command line raises UsageError (exit 2) with one line, like every other recbuild error.

The options every command shares (-f, -C, --set, -q, -v) are accepted before the subcommand too, as
make and git accept theirs (`recbuild -C demo -f x.yaml status`); ``parse`` merges both places.
"""

from __future__ import annotations

import argparse

from recbuild import __version__
from recbuild.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 too; keep our one-line format
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


TARGET_HELP = "an artifact or source of the recipe; a matrix artifact's name stands for all its variants"
GLOBAL_OPTIONS = ("file", "directory", "overrides", "quiet", "verbose")


def _common(parser: argparse.ArgumentParser, recipe: bool = True, dest_prefix: str = "") -> None:
    if recipe:
        parser.add_argument("-f", "--file", dest=f"{dest_prefix}file", metavar="RECIPE",
                            help="recipe file (default: recbuild.yaml)")
        parser.add_argument("--set", dest=f"{dest_prefix}overrides", action="append", default=[],
                            metavar="PATH=VALUE",
                            help="override a recipe value, e.g. --set vars.seed=7 (repeatable)")
    parser.add_argument("-C", "--directory", dest=f"{dest_prefix}directory", metavar="DIR",
                        help="change to DIR before doing anything, as make -C does (the recipe and "
                             "relative paths are then read from there)")
    parser.add_argument("-q", "--quiet", dest=f"{dest_prefix}quiet", action="store_true", help="print errors only")
    parser.add_argument("-v", "--verbose", dest=f"{dest_prefix}verbose", action="store_true", help="print more")


def _command(sub, name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose `--help` starts with what it does (the summary, or a longer description)."""
    return sub.add_parser(name, help=summary, description=description or summary[0].upper() + summary[1:] + ".")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the shared options given before the subcommand merged into its own
    (given in both places: -f must agree, --set adds up, -q/-v hold if either says so)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in GLOBAL_OPTIONS:
        before = getattr(args, f"global_{name}", None)
        delattr(args, f"global_{name}")
        after = getattr(args, name, None)
        if name == "overrides":
            merged = [*(before or []), *(after or [])]
        elif name in ("quiet", "verbose"):
            merged = bool(before or after)
        elif before is not None and after is not None and before != after:
            flag = "-f" if name == "file" else "-C"
            raise UsageError(f"recbuild: {flag} given twice, as {before} and {after}; give it once")
        else:
            merged = after if after is not None else before
        if name == "file" and not hasattr(args, "file") and args.command and merged is not None:
            raise UsageError(f"recbuild {args.command}: reads no recipe, so -f does not apply to it")
        if name == "overrides" and not hasattr(args, "overrides") and args.command and merged:
            raise UsageError(f"recbuild {args.command}: reads no recipe, so --set does not apply to it")
        setattr(args, name, merged)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recbuild", description="Make for recommender deployment artifacts.",
                     epilog="Exit codes: 0 success (status --check, make --question: up to date), 1 a build "
                            "failed (status --check, make --question: something would build), 2 the recipe "
                            "or the command line is wrong, 75 another recbuild holds the workdir's lock "
                            "(try again later, or use make --wait), 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"recbuild {__version__}")
    _common(parser, dest_prefix="global_")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    make = _command(sub, "make", "build targets (default: the recipe's `default`) and what they need")
    make.add_argument("targets", nargs="*", metavar="TARGET", help=TARGET_HELP)
    make.add_argument("-n", "--dry-run", action="store_true", help="print what would be built and why")
    make.add_argument("--question", action="store_true",
                      help="build nothing, print nothing; exit 0 when the targets are up to date, 1 when "
                           "anything would build (GNU make's -q; recbuild's -q is --quiet)")
    make.add_argument("--wait", type=float, nargs="?", const=float("inf"), default=None, metavar="SECONDS",
                      help="when another recbuild is building in this workdir, wait for it (at most SECONDS) "
                           "instead of exiting with code 75")
    make.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="build N artifacts at once")
    make.add_argument("-B", "--always-make", action="store_true", help="rebuild targets even if up to date")
    make.add_argument("-k", "--keep-going", action="store_true", help="go on with independent artifacts after a failure")
    make.add_argument("--cache", metavar="URL", help="shared artifact cache (fsspec URL)")
    make.add_argument("--cluster", metavar="ADDRESS|local",
                      help="run the stale steps as Ray tasks on the cluster at ADDRESS (what ray.init "
                           "takes), or `local` in this process; overrides the recipe's `cluster:`")
    make.add_argument("--heartbeat", type=float, default=None, metavar="SECONDS",
                      help="when output is not a terminal, a progress line per running step every SECONDS "
                           "(default 30, or $RECBUILD_HEARTBEAT; 0 turns it off)")
    _common(make)

    status = _command(sub, "status", "table of artifacts: up to date / stale / missing, and why")
    status.add_argument("targets", nargs="*", metavar="TARGET", help=TARGET_HELP + " (default: all)")
    status.add_argument("--check", action="store_true",
                        help="for CI: exit 1 when anything would build, 0 when everything is up to date")
    _common(status)

    explain = _command(sub, "explain", "why each TARGET is stale: what changed, what rebuilds upstream")
    explain.add_argument("targets", nargs="+", metavar="TARGET", help=TARGET_HELP)
    _common(explain)

    lister = _command(sub, "list", "list sources and artifacts: kind, what each needs, where it is declared")
    _common(lister)

    graph = _command(sub, "graph", "print the artifact graph")
    graph.add_argument("--format", choices=["mermaid", "dot"], default="mermaid",
                       help="mermaid (default; GitHub and GitLab draw it in Markdown) or dot (Graphviz)")
    _common(graph)

    clean = _command(sub, "clean", "remove built artifacts (all, or the TARGETs)",
                     "Remove built artifacts (all, or the TARGETs). Only folders recbuild made are removed.")
    clean.add_argument("targets", nargs="*", metavar="TARGET", help=TARGET_HELP + " (default: all)")
    clean.add_argument("-n", "--dry-run", action="store_true", help="print what would be removed, remove nothing")
    _common(clean)

    validate = _command(sub, "validate", "check the recipe (and that its source files exist) and exit")
    validate.add_argument("--allow-missing-sources", action="store_true",
                          help="report a source that does not exist as a warning, not an error")
    _common(validate)

    init = _command(sub, "init", "copy a template recipe into DIR so `recbuild make` works at once")
    init.add_argument("template", metavar="TEMPLATE", help="a built-in template (see `recbuild templates`)")
    init.add_argument("dir", nargs="?", default=".", metavar="DIR",
                      help="the folder to start the project in (made if missing; default: the current folder)")
    _common(init, recipe=False)

    templates = _command(sub, "templates", "list built-in recipe templates")
    _common(templates, recipe=False)

    cache = _command(sub, "cache", "shared artifact cache: status, push, pull, gc")
    cache.add_argument("action", choices=["status", "push", "pull", "gc"],
                       help="status: what the cache holds for this recipe; push/pull: upload/download "
                            "artifacts; gc: delete entries no artifact of the recipe uses")
    cache.add_argument("targets", nargs="*", metavar="TARGET", help=TARGET_HELP + " (default: all)")
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

    metrics = _command(sub, "metrics", "table of the metrics artifacts report (recall@k, ...)")
    metrics.add_argument("targets", nargs="*", metavar="TARGET", help=TARGET_HELP + " (default: all)")
    metrics.add_argument("--diff", action="store_true", help="show the change since the previous build")
    metrics.add_argument("--history", action="store_true", help="show how the figures moved over the last builds")
    metrics.add_argument("--explain", action="store_true",
                         help="say what each metric means, for the kind of artifact that reports it")
    _common(metrics)

    serve = _command(sub, "serve-check", "load a serving bundle alone and answer one query end to end")
    serve.add_argument("target", nargs="?", metavar="BUNDLE",
                       help="a serving_bundle artifact of the recipe, or a bundle folder (default: the "
                            "recipe's first serving_bundle)")
    serve.add_argument("--bundle", metavar="PATH", help="a bundle folder (same as giving its path as BUNDLE)")
    serve.add_argument("--query", metavar="JSON", help='user features, e.g. \'{"user_id": 7, "age_level": 3}\' '
                                                      "(default: 1 for every id feature, 0.0 for numeric ones)")
    serve.add_argument("-k", type=int, default=10, help="how many items to print (default 10)")
    _common(serve)

    report = _command(sub, "report", "write one self-contained HTML page of plots: recall@k, training "
                      "curves, metrics history, embedding norms, TDM tree balance, the graph")
    report.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: <workdir>/report.html)")
    _common(report)

    schema = _command(sub, "schema", "print the recipe JSON schema")
    schema.add_argument("--markdown", action="store_true", help="print the recipe reference instead")
    _common(schema, recipe=False)
    return parser
