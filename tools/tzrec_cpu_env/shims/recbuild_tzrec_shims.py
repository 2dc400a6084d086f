"""Import stand-ins for TorchEasyRec's Alibaba-only dependencies: pyfg, graphlearn, common_io.

No public package registry has them, yet tzrec imports them at module level. With ``fg_mode:
FG_NONE`` and no graph sampler, the code paths a DSSM pipeline runs never use them: these stand-ins
let tzrec import, and make any real use loud.

- Importing ``pyfg``, ``graphlearn`` (any submodule) or ``common_io`` gives a stand-in module; reading
  an attribute gives a stand-in object (tzrec reads constants at import time).
- Any *use* of a stand-in - a call, ``isinstance``/``issubclass``, subclassing, iteration - appends a
  ``CALLED <name>`` line and the Python stack to ``$RECBUILD_TZREC_SHIM_LOG`` (if set) and raises
  :class:`ShimCalledError`. A test that sets the variable and finds a CALLED line fails: FG_NONE was
  not enough for that step.
- The finder is appended to ``sys.meta_path`` last: if the real package is installed, it wins.

Installed by tools/tzrec_cpu_env/install.sh through a ``.pth`` file that runs :func:`install`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import traceback

ROOTS = ("pyfg", "graphlearn", "common_io")
LOG_ENV = "RECBUILD_TZREC_SHIM_LOG"


class ShimCalledError(RuntimeError):
    """A stand-in of pyfg/graphlearn/common_io was used: this step needs the real package."""


def _log(event: str, name: str, with_stack: bool = False) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{event} {name} pid={os.getpid()}\n")
            if with_stack:
                fh.write("".join(traceback.format_stack()[:-3]))
    except OSError:
        pass


def _used(name: str):
    _log("CALLED", name, with_stack=True)
    raise ShimCalledError(f"{name} was used, but only recbuild's stand-in for "
                          f"{name.split('.')[0]} is installed; this tzrec step needs the real package "
                          "(FG_NONE and no graph sampler avoid pyfg and graphlearn)")


class _StandIn:
    """An attribute of a stand-in module: any attribute of it is another stand-in; any use fails."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return _StandIn(f"{self._name}.{attr}")

    def __setattr__(self, attr: str, value) -> None:
        _log("SET", f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        _used(self._name)

    def __instancecheck__(self, instance):
        _used(f"isinstance(..., {self._name})")

    def __subclasscheck__(self, cls):
        _used(f"issubclass(..., {self._name})")

    def __mro_entries__(self, bases):
        _used(f"a subclass of {self._name}")

    def __iter__(self):
        _used(f"iter({self._name})")

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<recbuild stand-in {self._name}>"


class _StandInLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # default module object

    def exec_module(self, module) -> None:
        name = module.__name__

        def __getattr__(attr: str):
            if attr.startswith("__") and attr.endswith("__"):
                raise AttributeError(attr)
            return _StandIn(f"{name}.{attr}")

        module.__getattr__ = __getattr__
        module.__path__ = []  # a package: every submodule imports as a stand-in too
        module.__recbuild_stand_in__ = True
        _log("IMPORT", name)


class _StandInFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".", 1)[0] not in ROOTS:
            return None
        return importlib.machinery.ModuleSpec(fullname, _StandInLoader(), is_package=True)


def install() -> None:
    """Append the finder to sys.meta_path (once): real packages on sys.path are found first."""
    if not any(isinstance(f, _StandInFinder) for f in sys.meta_path):
        sys.meta_path.append(_StandInFinder())
