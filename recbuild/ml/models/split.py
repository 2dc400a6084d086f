"""Sparse/dense split of a built-in model (RecIS style): embedding tables + a dense module.

Serving looks ids up in the tables itself (row = ``mix64(id) % buckets``; a sequence feature is the
mean of its non-padding rows) and feeds the dense module with:
  * ``<table name>``: ``float32 [B, dim]`` looked-up (pooled) vectors, one per table;
  * ``<numeric feature name>``: ``float32 [B]`` raw values (their scaling lives in the dense module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import Tensor, nn

from recbuild.ml.models.deepfm import LINEAR_SUFFIX, DeepFM
from recbuild.ml.models.dssm import DSSM
from recbuild.ml.models.features import EmbeddingLayer, FeatureSpec, NumericLookup


class SplitNotSupported(ValueError):
    pass


@dataclass(frozen=True)
class SparseTable:
    name: str  # file stem under sparse/ and the dense module's input key
    spec: FeatureSpec  # which feature feeds it (column, buckets, id or sequence)
    weight: Tensor  # [buckets, dim]


@dataclass(frozen=True)
class DenseInput:
    name: str
    kind: str  # "vector" (a table lookup, [B, dim]) | "numeric" ([B])
    dim: int
    feature: str


class FieldsFromLookups(nn.Module):
    """Dense-side half of an EmbeddingLayer: pass looked-up vectors through, scale numeric values."""

    def __init__(self, layer: EmbeddingLayer, suffix: str = ""):
        super().__init__()
        self.suffix = suffix
        self.vector_names: List[str] = []
        numeric = {}
        for name, lookup in layer.lookups.items():
            if isinstance(lookup, NumericLookup):
                numeric[name] = lookup
            else:
                self.vector_names.append(name)
        self.numeric = nn.ModuleDict(numeric)

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        fields: Dict[str, Tensor] = {}
        for name in self.vector_names:
            fields[name + self.suffix] = inputs[name + self.suffix]
        for name, lookup in self.numeric.items():
            fields[name + self.suffix] = lookup(inputs)
        return fields


class DSSMDense(nn.Module):
    def __init__(self, model: DSSM):
        super().__init__()
        self.user_fields = FieldsFromLookups(model.user_tower.embedding)
        self.user_dense = model.user_tower.dense
        self.item_fields = FieldsFromLookups(model.item_tower.embedding)
        self.item_dense = model.item_tower.dense

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        out = self.user_dense(self.user_fields(inputs))
        out.update(self.item_dense(self.item_fields(inputs)))
        out["similarity"] = (out["user_tower_emb"] * out["item_tower_emb"]).sum(dim=1)
        return out


class DeepFMDenseFromLookups(nn.Module):
    def __init__(self, model: DeepFM):
        super().__init__()
        self.second = FieldsFromLookups(model.embedding.second_order)
        self.first = FieldsFromLookups(model.embedding.first_order, LINEAR_SUFFIX)
        self.dense = model.dense

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        fields = self.second(inputs)
        fields.update(self.first(inputs))
        return self.dense(fields)


def _tables(layer: EmbeddingLayer, specs: Dict[str, FeatureSpec], suffix: str = "") -> list[SparseTable]:
    tables = []
    for name, lookup in layer.lookups.items():
        if not isinstance(lookup, NumericLookup):
            tables.append(SparseTable(name + suffix, specs[name], lookup.embedding.weight.detach()))
    return tables


def sparse_dense_parts(model: nn.Module, specs: List[FeatureSpec]):
    """(tables, dense module, dense inputs) of a built-in model; SplitNotSupported otherwise."""
    by_name = {s.name: s for s in specs}
    if isinstance(model, DSSM):
        tables = _tables(model.user_tower.embedding, by_name) + _tables(model.item_tower.embedding, by_name)
        dense = DSSMDense(model)
    elif isinstance(model, DeepFM):
        tables = _tables(model.embedding.second_order, by_name) + \
            _tables(model.embedding.first_order, by_name, LINEAR_SUFFIX)
        dense = DeepFMDenseFromLookups(model)
    else:
        raise SplitNotSupported(f"split: sparse_dense supports the built-in families (dssm, deepfm), "
                                f"not {type(model).__name__}")
    inputs = [DenseInput(t.name, "vector", int(t.weight.shape[1]), t.spec.name) for t in tables]
    numeric = [s for s in specs if s.type == "numeric"]
    # a numeric value feeds both the second- and first-order terms of DeepFM: one input, one key
    inputs += [DenseInput(s.name, "numeric", 1, s.name) for s in numeric]
    return tables, dense.eval(), inputs


def lookup_fields(tables: List[SparseTable], raw_inputs: Dict[str, Tensor], numeric_names: List[str]):
    """What a serving process computes from raw inputs with the tables (used to verify the split)."""
    from recbuild.ml.models.features import bucketize

    fields: Dict[str, Tensor] = {}
    for table in tables:
        ids = raw_inputs[table.spec.name]
        buckets = table.weight.shape[0]
        if table.spec.type == "sequence":
            mask = (ids >= 0).to(torch.float32).unsqueeze(-1)
            vectors = table.weight[bucketize(torch.clamp(ids, min=0), buckets)] * mask
            fields[table.name] = vectors.sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1.0)
        else:
            fields[table.name] = table.weight[bucketize(ids, buckets)]
    for name in numeric_names:
        fields[name] = raw_inputs[name]
    return fields
