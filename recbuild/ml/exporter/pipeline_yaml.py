"""``pipeline.yaml`` of an export artifact: the model section it was exported with (plus extras)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recbuild.errors import InputError


def write_pipeline_yaml(folder: Path, model_config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    doc = {"model": _plain(model_config)}
    if extra:
        doc.update(_plain(extra))
    with open(Path(folder) / "pipeline.yaml", "w", encoding="utf-8") as fh:
        yaml.dump(doc, fh)


def read_pipeline_yaml(folder: Path) -> dict[str, Any]:
    from ruamel.yaml import YAML

    path = Path(folder) / "pipeline.yaml"
    if not path.is_file():
        raise InputError(f"{path} not found: the input is not an export artifact "
                         "(it needs pipeline.yaml and model.pt)")
    with open(path, encoding="utf-8") as fh:
        doc = YAML(typ="safe", pure=True).load(fh)
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise InputError(f"{path}: expected a mapping with a `model` section")
    return doc


def _plain(value):
    """Plain dicts/lists/scalars (ruamel CommentedMaps and tuples become dict/list)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
