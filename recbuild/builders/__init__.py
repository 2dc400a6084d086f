"""Registry of artifact kinds: built-in builder modules first, then `recbuild.builders` entry points.

Every module in this package (except ``base``) may define Builder subclasses; each is registered by
its ``kind``. Third-party entry points are loaded only for kinds not built in (a broken plugin cannot
break a built-in), and a duplicate kind is rejected with both class names.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from recbuild.builders.base import Builder
from recbuild.errors import RecbuildError

ENTRY_POINT_GROUP = "recbuild.builders"


def _builder_classes(module) -> list[type[Builder]]:
    found = []
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, Builder) and value is not Builder
                and value.kind and value.__module__ == module.__name__):
            found.append(value)
    return found


def _register(registry: dict[str, type[Builder]], cls: type[Builder]) -> None:
    previous = registry.get(cls.kind)
    if previous is not None and previous is not cls:
        raise RecbuildError(
            f"artifact kind {cls.kind!r} is defined twice: {previous.__module__}.{previous.__name__} "
            f"and {cls.__module__}.{cls.__name__}; uninstall or rename one of them")
    registry[cls.kind] = cls


@lru_cache(maxsize=1)
def builtin_builders() -> dict[str, type[Builder]]:
    registry: dict[str, type[Builder]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for cls in _builder_classes(module):
            _register(registry, cls)
    return registry


class Registry(dict):
    """kind -> Builder class. Built-ins are loaded up front; plugin entry points (a metadata scan
    of every installed distribution, ~20 ms) only when a kind is not built in or the whole list
    is needed (iteration, e.g. for "did you mean" and the schema)."""

    def __init__(self):
        super().__init__(builtin_builders())
        self._plugins_loaded = False

    def _load_plugins(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True
            for kind, cls in _plugin_builders(dict(dict.items(self))).items():
                dict.__setitem__(self, kind, cls)

    def __missing__(self, kind):
        self._load_plugins()
        if dict.__contains__(self, kind):
            return dict.__getitem__(self, kind)
        raise KeyError(kind)

    def __contains__(self, kind) -> bool:
        if not dict.__contains__(self, kind):
            self._load_plugins()
        return dict.__contains__(self, kind)

    def __iter__(self):
        self._load_plugins()
        return super().__iter__()

    def keys(self):
        self._load_plugins()
        return super().keys()

    def items(self):
        self._load_plugins()
        return super().items()

    def values(self):
        self._load_plugins()
        return super().values()

    def __len__(self) -> int:
        self._load_plugins()
        return super().__len__()


@lru_cache(maxsize=1)
def all_builders() -> Registry:
    """Built-ins plus plugins (each plugin entry point names a Builder subclass)."""
    return Registry()


def entry_points(group: str):
    """importlib.metadata's, imported on first use: a scan of every installed distribution that a
    recipe of built-in kinds never needs."""
    from importlib.metadata import entry_points as scan

    return scan(group=group)


def _plugin_builders(builtins: dict[str, type[Builder]]) -> dict[str, type[Builder]]:
    registry = dict(builtins)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in registry:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break recbuild
            raise RecbuildError(
                f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}; fix or uninstall it") from None
        if not (isinstance(cls, type) and issubclass(cls, Builder)):
            raise RecbuildError(f"plugin {ep.name!r} ({ep.value}) is not a recbuild Builder class")
        if cls.kind != ep.name:
            raise RecbuildError(
                f"plugin entry point {ep.name!r} names {ep.value} whose kind is {cls.kind!r}; "
                "the entry-point name must equal the kind")
        _register(registry, cls)
    return {kind: cls for kind, cls in registry.items() if kind not in builtins}


def get_builder(kind: str) -> Builder:
    return all_builders()[kind]()
