"""Commands about recipes: validate one, start one from a template (init, templates), print the
recipe schema."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from recbuild.cli.common import load_graph
from recbuild.errors import RecipeError, UsageError


def cmd_validate(args, term) -> int:
    from recbuild.core.workdir.sources import missing_source

    graph, _ = load_graph(args)
    missing = []
    for node in graph.nodes.values():
        if node.is_file_source:
            why = missing_source(node.params["path"], graph.recipe.dir)
            if why:
                missing.append(f"{node.loc}: {node.section}.{node.name}: {why}")
    if missing and not args.allow_missing_sources:
        raise RecipeError(missing + [f"{graph.recipe.path}: {len(missing)} source(s) missing; "
                                     "--allow-missing-sources reports them as warnings"])
    for line in missing:
        term.warn(line)
    sources = sum(1 for n in graph.nodes.values() if n.section == "sources")
    term.info(f"{graph.recipe.path}: ok ({sources} sources, {len(graph.nodes) - sources} artifacts"
              + (f", {len(missing)} missing" if missing else "") + ")")
    return 0


def cmd_templates(args, term) -> int:
    from recbuild.core.recipe.templates import find_template, template_names

    rows = []
    for name in template_names():
        first = ""
        for line in find_template(name).read_text(encoding="utf-8").splitlines():
            if line.startswith("#") and not line.startswith("# yaml-language-server"):
                first = line.lstrip("# ").strip()
                break
        rows.append([name, first])
    term.table(["template", "description"], rows)
    return 0


def cmd_init(args, term) -> int:
    from recbuild.core.recipe.load import DEFAULT_RECIPE
    from recbuild.core.recipe.templates import find_template, template_names
    from recbuild.core.recipe.schema import did_you_mean

    template = find_template(args.template)
    if template is None:
        names = template_names()
        raise UsageError(f"recbuild init: no template {args.template!r}{did_you_mean(args.template, names)}; "
                         f"templates: {', '.join(names)}")
    target_dir = Path(args.dir)
    target = target_dir / DEFAULT_RECIPE
    if target.exists():
        raise UsageError(f"recbuild init: {target} already exists; choose another DIR or remove it")
    target_dir.mkdir(parents=True, exist_ok=True)
    text = template.read_text(encoding="utf-8")
    text = text.replace("# yaml-language-server: $schema=../schemas/recipe.schema.json\n", "")
    _copy_template_files(template.with_suffix(""), target_dir)
    target.write_text(text, encoding="utf-8")
    where = "" if str(target_dir) in (".", "") else f"cd {target_dir} && "
    term.info(f"wrote {target} (template {args.template}); next: {where}recbuild make")
    return 0


def _copy_template_files(folder: Path, target_dir: Path) -> None:
    """A template's side files (recipes/<name>/, e.g. a pipeline.config) go beside the recipe."""
    if not folder.is_dir():
        return
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    clashes = [str(target_dir / p.relative_to(folder)) for p in files if (target_dir / p.relative_to(folder)).exists()]
    if clashes:
        raise UsageError(f"recbuild init: {', '.join(clashes)} already exist(s); choose another DIR or remove them")
    for path in files:
        destination = target_dir / path.relative_to(folder)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def cmd_schema(args, term) -> int:
    from recbuild.builders import all_builders
    from recbuild.core.recipe.schema import reference_markdown, schema_text

    sys.stdout.write(reference_markdown(all_builders()) if args.markdown else schema_text(all_builders()))
    return 0

