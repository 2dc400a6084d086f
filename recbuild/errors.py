"""User-facing errors. Each class carries its exit code; the CLI maps them in one place."""

from __future__ import annotations


class RecbuildError(Exception):
    """Root of every error recbuild reports to a user without a traceback."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RecipeError(RecbuildError):
    """The recipe or the command line is wrong (exit 2).

    ``problems`` holds one formatted line per problem (``file:line:col: path: message``).
    """

    exit_code = 2

    def __init__(self, problems: list[str] | str):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(RecipeError):
    """Bad command-line usage (exit 2)."""


class BuildError(RecbuildError):
    """A builder could not produce its artifact (exit 1).

    Builders raise it with a message that says what is wrong and how to fix it; the engine adds the
    artifact name and the recipe location.
    """

    exit_code = 1


class InputError(BuildError):
    """An input of a builder failed validation (missing column, NaN, duplicate ids, ...)."""


class UnsupportedFile(BuildError):
    """A path is not a regular file where recbuild reads or publishes one (symlink in an artifact,
    FIFO, device, socket)."""


class InputChangedDuringBuild(BuildError):
    """An input the key was computed from changed while the step ran: the output may hold either
    content, so nothing is published or pushed (run make again)."""


class UnprovenNeeds(RecbuildError):
    """`cache gc` was told to keep what a recipe needs, but that recipe's keys cannot all be
    computed (a source is missing, an input is neither built nor cached): nothing is deleted."""


class ForeignFolder(BuildError):
    """A folder recbuild would replace or delete was not made by recbuild."""


class LockHeld(RecbuildError):
    """Another recbuild process holds the workdir lock. Not a failed build: nothing was tried, and the
    same command can simply be run again, hence its own code (sysexits' EX_TEMPFAIL)."""

    exit_code = 75


class Interrupted(RecbuildError):
    """SIGINT or SIGTERM arrived; completed steps are kept."""

    exit_code = 130
