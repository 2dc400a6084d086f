"""Built-in recipe templates: where they live (recbuild/_recipes/, package data, and the source
tree's recipes/), their names, and finding one by name (for `extends:` and `recbuild init`)."""

from __future__ import annotations

from pathlib import Path


def template_dirs() -> list[Path]:
    package = Path(__file__).resolve().parents[2]  # recbuild/ (templates are package data)
    return [package / "_recipes", package.parent / "recipes"]


def template_names() -> list[str]:
    names = set()
    for folder in template_dirs():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def find_template(name: str) -> Path | None:
    for folder in template_dirs():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None
