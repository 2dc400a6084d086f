"""Registry of artifact kinds: built-in builder modules first, then `recbuild.builders` entry points.

Every module in this package (except ``base``) may define Builder subclasses; each is registered by
its ``kind``. Third-party entry points are loaded only for kinds not built in (a broken plugin cannot
break a built-in), and a duplicate kind is rejected with both class names.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from importlib.metadata import entry_points

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


@lru_cache(maxsize=1)
def all_builders() -> dict[str, type[Builder]]:
    """Built-ins plus plugins (each plugin entry point names a Builder subclass)."""
    registry = dict(builtin_builders())
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
    return registry


def get_builder(kind: str) -> Builder:
    return all_builders()[kind]()
