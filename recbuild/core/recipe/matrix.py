"""Variants side by side: an artifact's ``matrix`` expands it into named variants, and every artifact
that reads it follows per variant (DVC's ``matrix``/``foreach``, made transitive).

    index: {kind: faiss_index, embeddings: item_embeddings, matrix: {nlist: [256, 1024, 4096]}}
    recall: {kind: recall_eval, towers: towers, index: index, queries: eval}

gives ``index@256``, ``index@1024``, ``index@4096`` and ``recall@256`` ... each reading its own index.
A variant is an ordinary artifact (own folder, key, cache entry, early cut-off). Its name is
``NAME@LABEL``: the matrix values, joined by ``-`` when the matrix has several keys (``x@256-ip``).
An artifact reading two matrix artifacts expands over the combinations that agree on shared
origins (a recall over ``index@256`` and ``towers@small`` is ``recall@small-256``, in declaration
order of the matrices). The family name (``index``) still works as a target and in ``default``: it
stands for all its variants.

Matrix keys are the kind's params (a matrix value wins over the artifact's own, e.g. one inherited
from a template), or ``model.PATH`` for kinds that read the recipe's ``model:``
section (train, export...): ``matrix: {model.tower_dim: [16, 64]}`` trains two model sizes, and every
artifact downstream of a variant uses that variant's model section.

Pure data in, data out: runs on the interpolated recipe before validation, so a bad value in a
matrix is reported by the kind's schema at the matrix entry's own line.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from recbuild.errors import RecipeError
from recbuild.core.recipe.schema import did_you_mean
from recbuild.core.recipe.yamlsrc import KeyPath, Loc, excerpt, problem

MATRIX_KEY = "matrix"
MODEL_PREFIX = "model."
SECTIONS = ("sources", "artifacts")
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


@dataclass
class Variant:
    """One expanded artifact: which family it belongs to, its coordinates and model overrides."""

    family: str
    coords: dict[str, str] = field(default_factory=dict)  # matrix origin -> label
    model: dict[str, Any] = field(default_factory=dict)  # dotted model path -> value


@dataclass
class Expansion:
    variants: dict[str, Variant] = field(default_factory=dict)  # variant name -> Variant
    families: dict[str, list[str]] = field(default_factory=dict)  # family name -> variant names

    def names_for(self, name: str) -> list[str]:
        return self.families.get(name, [name])


def label(value: Any) -> str:
    """A matrix value as (part of) a variant name: 256 -> "256", {n: 2, m: x} -> "2-x"."""
    if isinstance(value, dict):
        return "-".join(label(value[k]) for k in value) or "_"
    if isinstance(value, list):
        return "-".join(label(v) for v in value) or "_"
    text = ("true" if value else "false") if isinstance(value, bool) else \
        (value if isinstance(value, str) else json.dumps(value))
    return _LABEL_UNSAFE.sub("_", text)[:40] or "_"


def _references(builder_cls, spec: dict) -> dict[str, list[str]]:
    refs = {}
    for name in getattr(builder_cls, "reference_fields", ()):
        value = spec.get(name)
        if isinstance(value, str):
            refs[name] = [value]
        elif isinstance(value, list):
            refs[name] = [v for v in value if isinstance(v, str)]
    return refs


def expand(data: dict, locations: dict[KeyPath, Loc], file: str, builders: dict) -> tuple[dict, Expansion]:
    """The recipe with every matrix expanded (a new dict; ``locations`` gains the variants' paths)."""
    expansion = Expansion()
    specs: dict[str, tuple[str, dict]] = {}  # name -> (section, spec), declaration order
    for section in SECTIONS:
        entries = data.get(section)
        if isinstance(entries, dict):
            for name, spec in entries.items():
                specs[name] = (section, spec)
    if not any(isinstance(spec, dict) and MATRIX_KEY in spec for _, spec in specs.values()):
        return data, expansion

    problems: list[tuple[int, str]] = []
    new_sections: dict[str, dict] = {section: {} for section in SECTIONS}
    for name in _dependency_order(specs, builders):
        section, spec = specs[name]
        if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str) or spec["kind"] not in builders:
            new_sections[section][name] = spec  # validation reports it
            continue
        builder_cls = builders[spec["kind"]]
        own = _own_variants(name, section, spec, builder_cls, locations, file, problems)
        read = {target for targets in _references(builder_cls, spec).values() for target in targets
                if target in expansion.families}
        if own is None and not read:
            new_sections[section][name] = spec
            continue
        combos = _combinations(name, section, own, sorted(read, key=list(specs).index), expansion,
                               list(specs), locations, file, problems)
        for combo_label, variant, params, matrix_paths in combos:
            variant_name = f"{name}@{combo_label}"
            if variant_name in specs or variant_name in expansion.variants:
                where = locations.get((section, name), Loc(file, 1, 1))
                problems.append((where.line, problem(where, (section, name), f"variant {excerpt(variant_name)} "
                                                     "collides with another name; rename one")))
                continue
            new_spec = {k: v for k, v in spec.items() if k != MATRIX_KEY}
            new_spec.update(params)
            for ref_field, targets in _references(builder_cls, spec).items():
                new_spec[ref_field] = _rewire(spec[ref_field], variant.coords, expansion)
            new_sections[section][variant_name] = new_spec
            _copy_locations(locations, (section, name), (section, variant_name), matrix_paths)
            expansion.variants[variant_name] = variant
            expansion.families.setdefault(name, []).append(variant_name)
    if problems:
        raise RecipeError([m for _, m in sorted(problems)])
    result = dict(data)
    for section in SECTIONS:
        if isinstance(data.get(section), dict):
            result[section] = new_sections[section]
    if isinstance(data.get("default"), list):
        result["default"] = [v for target in data["default"]
                             for v in (expansion.names_for(target) if isinstance(target, str) else [target])]
    return result, expansion


def _dependency_order(specs: dict[str, tuple[str, dict]], builders: dict) -> list[str]:
    """Upstream first (declaration order among independent ones; a cycle keeps declaration order,
    the graph reports it later)."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name):
            return
        state[name] = 1
        _, spec = specs[name]
        if isinstance(spec, dict) and spec.get("kind") in builders:
            for targets in _references(builders[spec["kind"]], spec).values():
                for target in targets:
                    if target in specs and not state.get(target):
                        visit(target)
        state[name] = 2
        order.append(name)

    for name in specs:
        visit(name)
    return order


def _own_variants(name, section, spec, builder_cls, locations, file, problems):
    """[(label, Variant coords/model, params, matrix paths)] from the artifact's own matrix, or None."""
    if MATRIX_KEY not in spec:
        return None
    matrix = spec[MATRIX_KEY]
    path = (section, name, MATRIX_KEY)

    def fail(where: KeyPath, message: str) -> None:
        loc = locations.get(where) or locations.get(path) or Loc(file, 1, 1)
        problems.append((loc.line, problem(loc, where, message)))

    if not isinstance(matrix, dict) or not matrix:
        fail(path, "must be a mapping of param -> list of values, e.g. {nlist: [256, 1024]}")
        return []
    params = list(builder_cls.schema.get("properties", {}))
    keys = []
    for key, values in matrix.items():
        if key.startswith(MODEL_PREFIX):
            if not getattr(builder_cls, "uses_model", False):
                fail(path + (key,), f"{builder_cls.kind} does not read the model section; model.* keys "
                                    "go on the artifact that trains or exports the model")
                continue
        elif key not in params:
            fail(path + (key,), f"{excerpt(key)} is not a param of {builder_cls.kind}{did_you_mean(key, params)}")
            continue
        if not isinstance(values, list) or not values:
            fail(path + (key,), "must be a non-empty list of values")
            continue
        keys.append(key)
    if len(keys) != len(matrix):
        return []
    variants = []
    for combo in itertools.product(*(range(len(matrix[k])) for k in keys)):
        values = {k: matrix[k][i] for k, i in zip(keys, combo)}
        text = "-".join(label(v) for v in values.values())
        params_ = {k: v for k, v in values.items() if not k.startswith(MODEL_PREFIX)}
        model = {k[len(MODEL_PREFIX):]: v for k, v in values.items() if k.startswith(MODEL_PREFIX)}
        paths = {k: path + (k, i) for k, i in zip(keys, combo)}
        variants.append((text, Variant(name, {name: text}, model), params_, paths))
    labels = [v[0] for v in variants]
    if len(set(labels)) != len(labels):
        fail(path, "two combinations give the same variant name; use values that differ as text")
        return []
    return variants


def _combinations(name, section, own, read_families, expansion, declared, locations, file, problems):
    """Variants of ``name``: its own matrix crossed with the variants of the families it reads,
    keeping only combinations that agree on shared origins."""
    combos = [("", Variant(name), {}, {})] if own is None else own
    for family in read_families:
        joined = []
        for text, variant, params, paths in combos:
            for upstream in expansion.families[family]:
                up = expansion.variants[upstream]
                if any(variant.coords.get(origin, label_) != label_ for origin, label_ in up.coords.items()):
                    continue
                model = dict(variant.model)
                for key, value in up.model.items():
                    if key in model and model[key] != value:
                        where = locations.get((section, name), Loc(file, 1, 1))
                        problems.append((where.line, problem(where, (section, name),
                                                             f"reads variants with different model.{key}")))
                    model[key] = value
                joined.append((text, Variant(name, {**variant.coords, **up.coords}, model), params, paths))
        combos = joined
    result = []
    for _, variant, params, paths in combos:  # labels in the matrices' declaration order
        origins = sorted(variant.coords, key=declared.index)
        result.append(("-".join(variant.coords[o] for o in origins), variant, params, paths))
    return result


def _rewire(value: Any, coords: dict[str, str], expansion: Expansion) -> Any:
    """A reference field with every family name replaced by the variant matching ``coords``."""
    def pick(target: str) -> str:
        for variant_name in expansion.families.get(target, []):
            variant = expansion.variants[variant_name]
            if all(coords.get(origin) == label_ for origin, label_ in variant.coords.items()):
                return variant_name
        return target

    if isinstance(value, str):
        return pick(value)
    if isinstance(value, list):
        return [pick(v) if isinstance(v, str) else v for v in value]
    return value


def _copy_locations(locations: dict, source: KeyPath, target: KeyPath, matrix_paths: dict) -> None:
    for key, loc in list(locations.items()):
        if key[:len(source)] == source and (len(key) == len(source) or key[len(source)] != MATRIX_KEY):
            locations[target + key[len(source):]] = loc
    for param, path in matrix_paths.items():  # a variant's matrix value is located at its entry
        if path in locations and not param.startswith(MODEL_PREFIX):
            locations[target + (param,)] = locations[path]


def model_for(model: dict, overrides: dict[str, Any]) -> dict:
    """The recipe's model section with a variant's ``model.PATH`` values set."""
    if not overrides:
        return model
    result = copy.deepcopy(model)
    for dotted, value in overrides.items():
        target = result
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = copy.deepcopy(value)
    return result
