"""Command line: the `recbuild` command's entry points and the table of its commands. Maps every
RecbuildError to its exit code in one place (``main``).

Exit codes: 0 success, 1 a build failed (or, for status --check and make --question, something would
build), 2 the recipe or the command line is wrong, 75 another recbuild holds the workdir lock, 130
interrupted.

Modules: parser (the argparse parser), common (loading the graph, checking targets, the workspace),
building (make, status, explain, list, graph, clean), recipes (validate, init, templates, schema),
cache (cache status/push/pull/gc), results (metrics, serve-check, report).
"""

from __future__ import annotations

import os
import signal
import sys

from recbuild.cli.building import cmd_clean, cmd_explain, cmd_graph, cmd_list, cmd_make, cmd_status
from recbuild.cli.cache import cmd_cache
from recbuild.cli.parser import build_parser, parse
from recbuild.cli.recipes import cmd_init, cmd_schema, cmd_templates, cmd_validate
from recbuild.cli.results import cmd_metrics, cmd_report, cmd_serve_check
from recbuild.errors import Interrupted, RecbuildError, RecipeError, UsageError


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
    cwd = None
    try:
        args = parse(argv)
        if not args.command:
            build_parser().print_help()
            return 2
        term = Terminal(verbosity=0 if args.quiet else (2 if args.verbose else 1))
        if args.directory:
            cwd = os.getcwd()
            _change_directory(args.directory)
        # CI cancellation sends SIGTERM: treat it like Ctrl-C so completed work is recorded.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        return COMMANDS[args.command](args, term)
    except KeyboardInterrupt:
        term.stop_live()
        term.error("interrupted; completed artifacts are kept")
        return Interrupted.exit_code
    except RecipeError as exc:
        term.stop_live()
        for line in exc.problems:
            term.error(line)
        return exc.exit_code
    except RecbuildError as exc:
        term.stop_live()  # the live progress lines go first: the message starts on a line of its own
        term.error(exc.message)
        return exc.exit_code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        term.stop_live()
        where = f": {exc.filename}" if exc.filename else ""
        term.error(f"{exc.strerror or exc}{where}")
        return 1
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        term.stop_live()
        if os.environ.get("RECBUILD_DEBUG"):
            raise
        term.error(f"internal error: {type(exc).__name__}: {exc} (rerun with RECBUILD_DEBUG=1 for the "
                   "traceback, and please report it)")
        return 1
    finally:
        if cwd is not None:
            os.chdir(cwd)  # -C changes directory for this command only (main() is also called in-process)


def _change_directory(directory: str) -> None:
    try:
        os.chdir(directory)
    except OSError as exc:
        raise UsageError(f"recbuild: -C {directory}: {exc.strerror or exc}") from None


def entry() -> None:
    code = main()
    if code == Interrupted.exit_code:
        # CPython remembers a KeyboardInterrupt that left exec()'d source (a dataclass or namedtuple
        # being created by a lazy import when SIGTERM arrived) even though main() handled it, and
        # under `python -m` then kills itself with SIGINT at exit instead of returning 130.
        # Evaluating any source clears that flag.
        exec("None")
    sys.exit(code)

