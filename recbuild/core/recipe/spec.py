"""A recipe as plain data, the result of loading one: its sources and artifacts (:class:`NodeSpec`)
and the resolved document with its locations (:class:`Recipe`). Its own module so the loader and the
parse cache both read it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recbuild.core.recipe.yamlsrc import KeyPath, Loc, locate


@dataclass
class NodeSpec:
    """One entry of ``sources`` or ``artifacts``."""

    name: str
    section: str  # "sources" | "artifacts"
    kind: str  # builder kind, or "source" for a plain path source
    params: dict[str, Any]  # the spec without ``kind``, schema defaults applied
    loc: Loc
    model_overrides: dict[str, Any] = field(default_factory=dict)  # a matrix variant's model.PATH values
    # What the step needs of a cluster node (its kind's defaults, then the recipe's `resources:`);
    # kept out of params, so never part of the key.
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def is_file_source(self) -> bool:
        return self.kind == "source"


@dataclass
class Recipe:
    path: Path
    dir: Path
    name: str
    workdir: Path
    model: dict[str, Any]
    nodes: dict[str, NodeSpec]
    default: list[str]
    cache: dict[str, Any] | None
    data: dict[str, Any]  # the resolved recipe (after extends, --set, interpolation)
    locations: dict[KeyPath, Loc] = field(repr=False, default_factory=dict)
    families: dict[str, list[str]] = field(default_factory=dict)  # matrix name -> its variants
    cluster: dict[str, Any] | None = None  # `cluster:` (defaults applied); not part of any key

    def locate(self, path: KeyPath) -> Loc:
        return locate(self.locations, path, str(self.path))

    def model_for(self, name: str) -> dict[str, Any]:
        """The model section an artifact reads: the recipe's, with its matrix variant's values."""
        from recbuild.core.recipe.matrix import model_for

        return model_for(self.model, self.nodes[name].model_overrides)
