"""`python -m recbuild.cli`: the same as the `recbuild` command."""

from recbuild.cli import entry

entry()
