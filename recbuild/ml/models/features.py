"""The feature layer: feature specs from the recipe and the modules that embed them.

Serving sends raw ids; the module maps them to embedding rows itself with a 64-bit mix followed by
a modulo, so the hash lives in the exported graph and no vocabulary file is needed. Sequences are
int64 ``[B, L]`` padded with ``-1`` and mean-pooled over the non-padding positions.

Every lookup turns one feature into a ``[B, dim]`` vector (a numeric value is scaled by a learned
vector, so all features look alike to the layers above). The modules are TorchScript- and
torch.export-friendly: ``forward(inputs: Dict[str, Tensor])`` and no Python-side state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np
import torch
from torch import Tensor, nn

FEATURE_TYPES = ("id", "numeric", "sequence")
GROUPS = ("user", "item")

_LOW_63_BITS = 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    type: str  # id | numeric | sequence
    group: str  # user | item
    column: str
    buckets: int = 0  # id / sequence
    dim: int = 16
    max_len: int = 0  # sequence
    value_type: str = "int64"  # int64 | string (string ids are hashed by the caller) | float
    delimiter: str = ";"  # sequence stored as a delimited string column

    @property
    def has_embedding(self) -> bool:
        return self.type in ("id", "sequence")


def parse_features(model_config: dict[str, Any]) -> list[FeatureSpec]:
    """FeatureSpecs of the recipe's ``model.features`` list, defaults applied (order kept)."""
    emb_dim = int(model_config.get("emb_dim", 16))
    specs = []
    seen = set()
    for raw in model_config.get("features", []):
        name = raw["name"]
        if name in seen:
            raise ValueError(f"model.features: feature {name!r} is declared twice")
        seen.add(name)
        ftype = raw.get("type", "id")
        if ftype not in FEATURE_TYPES:
            raise ValueError(f"model.features.{name}.type must be one of {FEATURE_TYPES}, got {ftype!r}")
        group = raw.get("group")
        if group not in GROUPS:
            raise ValueError(f"model.features.{name}.group must be one of {GROUPS}, got {group!r}")
        if ftype != "numeric" and int(raw.get("buckets", 0)) < 1:
            raise ValueError(f"model.features.{name}: an {ftype} feature needs buckets >= 1")
        if ftype == "sequence" and int(raw.get("max_len", 0)) < 1:
            raise ValueError(f"model.features.{name}: a sequence feature needs max_len >= 1")
        specs.append(FeatureSpec(
            name=name, type=ftype, group=group, column=raw.get("column", name),
            buckets=int(raw.get("buckets", 0)), dim=int(raw.get("dim", emb_dim)),
            max_len=int(raw.get("max_len", 0)),
            value_type="float" if ftype == "numeric" else raw.get("value_type", "int64"),
            delimiter=raw.get("delimiter", ";")))
    return specs


def io_specs(specs: List[FeatureSpec]) -> list:
    """The same features as ``recbuild.ml.feature_io.FeatureSpec``s (reader side, fg.json)."""
    from recbuild.ml.feature_io import FeatureSpec as IoSpec

    return [IoSpec(name=s.name, kind=s.type, group=s.group, column=s.column, value_type=s.value_type,
                   buckets=s.buckets if s.has_embedding else None,
                   dim=s.dim if s.has_embedding else None,
                   max_len=s.max_len if s.type == "sequence" else None, delimiter=s.delimiter)
            for s in specs]


def group_features(specs: list[FeatureSpec], group: str) -> list[FeatureSpec]:
    return [s for s in specs if s.group == group]


# ---------------------------------------------------------------------------------------------
# Hashing


def mix64(x: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 tensors (wrap-around multiply, logical shifts)."""
    x = x ^ ((x >> 30) & 0x3FFFFFFFF)
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
    x = x ^ ((x >> 27) & 0x1FFFFFFFFF)
    x = x * -7723592293110705685  # 0x94D049BB133111EB as int64
    x = x ^ ((x >> 31) & 0x1FFFFFFFF)
    return x


def bucketize(ids: Tensor, buckets: int) -> Tensor:
    """Raw int64 ids -> embedding rows in [0, buckets)."""
    return (mix64(ids) & 0x7FFFFFFFFFFFFFFF) % buckets


def bucketize_numpy(ids: np.ndarray, buckets: int) -> np.ndarray:
    """The same mapping in numpy (uint64 arithmetic); used to export sparse tables and in tests."""
    x = ids.astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return ((x & np.uint64(_LOW_63_BITS)) % np.uint64(buckets)).astype(np.int64)


def _signed_log(x: Tensor) -> Tensor:
    # Prices and counts span decades; a signed log keeps the scale learnable without statistics.
    return torch.sign(x) * torch.log1p(torch.abs(x))


# ---------------------------------------------------------------------------------------------
# Lookups: one feature -> [B, dim]


class IdLookup(nn.Module):
    def __init__(self, spec: FeatureSpec, dim: int):
        super().__init__()
        self.name = spec.name
        self.buckets = spec.buckets
        self.embedding = nn.Embedding(spec.buckets, dim)

    def forward(self, inputs: Dict[str, Tensor]) -> Tensor:
        return self.embedding(bucketize(inputs[self.name], self.buckets))


class SequenceLookup(IdLookup):
    def forward(self, inputs: Dict[str, Tensor]) -> Tensor:
        ids = inputs[self.name]
        mask = (ids >= 0).to(torch.float32).unsqueeze(-1)
        vectors = self.embedding(bucketize(torch.clamp(ids, min=0), self.buckets)) * mask
        # Mean over real positions; an all-padding row pools to zeros (count clamped to 1).
        return vectors.sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1.0)


class NumericLookup(nn.Module):
    def __init__(self, spec: FeatureSpec, dim: int):
        super().__init__()
        self.name = spec.name
        self.weight = nn.Parameter(torch.empty(dim).normal_(0.0, 0.1))

    def forward(self, inputs: Dict[str, Tensor]) -> Tensor:
        value = _signed_log(inputs[self.name].to(torch.float32))
        return value.unsqueeze(-1) * self.weight


def make_lookup(spec: FeatureSpec, dim: int | None = None) -> nn.Module:
    dim = spec.dim if dim is None else dim
    cls = {"id": IdLookup, "sequence": SequenceLookup, "numeric": NumericLookup}[spec.type]
    return cls(spec, dim)


class EmbeddingLayer(nn.Module):
    """Embeds a list of features: inputs -> {feature name: [B, dim]}.

    ``dim`` overrides every feature's own dim (DeepFM's first-order terms use dim 1).
    """

    def __init__(self, specs: List[FeatureSpec], dim: int | None = None):
        super().__init__()
        self.lookups = nn.ModuleDict({s.name: make_lookup(s, dim) for s in specs})
        self.names: List[str] = [s.name for s in specs]
        self.output_dim = sum(dim if dim is not None else s.dim for s in specs)

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = {}
        for name, lookup in self.lookups.items():
            out[name] = lookup(inputs)
        return out


def concat_fields(fields: Dict[str, Tensor], names: List[str]) -> Tensor:
    """Concatenate field vectors in a fixed order (dict order is not trusted across formats)."""
    parts: List[Tensor] = []
    for name in names:
        parts.append(fields[name])
    return torch.cat(parts, dim=1)


def init_embeddings(module: nn.Module, std: float = 0.05) -> None:
    """Small normal init for every embedding table (nn.Embedding's N(0,1) is too large for sums)."""
    for sub in module.modules():
        if isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, 0.0, std)


def example_inputs(specs: List[FeatureSpec], batch_size: int = 4, seed: int = 0) -> Dict[str, Tensor]:
    """A deterministic synthetic batch of raw inputs (for tracing, export and verification)."""
    gen = torch.Generator().manual_seed(seed)
    inputs: Dict[str, Tensor] = {}
    for spec in specs:
        if spec.type == "id":
            inputs[spec.name] = torch.randint(0, 1 << 40, (batch_size,), generator=gen, dtype=torch.int64)
        elif spec.type == "numeric":
            inputs[spec.name] = torch.rand(batch_size, generator=gen) * 100.0
        else:
            ids = torch.randint(0, 1 << 40, (batch_size, spec.max_len), generator=gen, dtype=torch.int64)
            lengths = torch.randint(0, spec.max_len + 1, (batch_size, 1), generator=gen)
            positions = torch.arange(spec.max_len).unsqueeze(0)
            inputs[spec.name] = torch.where(positions < lengths, ids, torch.full_like(ids, -1))
    return inputs
