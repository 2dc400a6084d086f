"""Run a recbuild recipe with plain doit:
`doit -f dodo.py recipe=recipes/dssm.yaml [workdir=PATH] [TASK...]`.

Lists and runs the same tasks `recbuild make` runs (same names, checker, state database and
manifests). `recbuild make` adds the workdir lock, the rich display and SIGTERM handling.
"""

import sys

from doit import get_var

from recbuild.builders import all_builders
from recbuild.errors import RecbuildError
from recbuild.core.running.engine import Engine, MakeOptions, reset_unreadable_state_db
from recbuild.core.recipe.graph import build_graph
from recbuild.core.recipe.load import load_recipe
from recbuild.ui.terminal import Terminal

_builders = all_builders()
# `workdir=PATH` overrides the recipe's workdir (as `--set workdir=PATH`), so a template in the
# source tree can be built without writing into it.
_overrides = [f"workdir={get_var('workdir')}"] if get_var("workdir") else []
try:  # relative paths are relative to this file's folder (doit runs from there)
    _graph = build_graph(load_recipe(get_var("recipe", "recbuild.yaml"), _overrides), _builders)
except RecbuildError as exc:
    sys.exit(f"error: {exc}")
_engine = Engine(_graph, _builders, Terminal().build_events())
for _folder in (_engine.ws.state_dir, _engine.ws.tmp_dir, _engine.ws.log_dir):
    _folder.mkdir(parents=True, exist_ok=True)
for _warning in [*_engine.ws.cache.warnings, *reset_unreadable_state_db(_engine.state_db)]:
    print(f"warning: {_warning}", file=sys.stderr)

DOIT_CONFIG = _engine.doit_config(MakeOptions())
DOIT_CONFIG["default_tasks"] = _graph.default_targets()
del DOIT_CONFIG["reporter"]  # doit's own console reporter, as a doit user expects


def task_recbuild():
    for spec in _engine.task_dicts(_graph.order, force=False):
        spec["basename"] = spec.pop("name")
        yield spec
