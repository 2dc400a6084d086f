"""DeepFM ranking model: first-order terms + FM pairwise interactions + a deep MLP, over all features.

Outputs ``logits`` and ``probs`` (``float32 [B]``). Every field vector has the model's ``emb_dim``
(the FM term needs one common dimension), so per-feature ``dim`` must equal ``emb_dim``.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from recbuild.ml.models.features import parse_features, EmbeddingLayer, FeatureSpec, init_embeddings
from recbuild.ml.models.layers import MLP

LINEAR_SUFFIX = "__linear"  # field key of a feature's first-order (scalar) term


class DeepFMDense(nn.Module):
    """Field vectors (second-order) and scalars (first-order) -> logits/probs."""

    def __init__(self, names: List[str], emb_dim: int, hidden: List[int]):
        super().__init__()
        self.names = names
        self.first_order_names = [n + LINEAR_SUFFIX for n in names]
        self.bias = nn.Parameter(torch.zeros(1))
        self.deep = MLP(len(names) * emb_dim, list(hidden) + [1])

    def forward(self, fields: Dict[str, Tensor]) -> Dict[str, Tensor]:
        vectors: List[Tensor] = []
        for name in self.names:
            vectors.append(fields[name])
        stacked = torch.stack(vectors, dim=1)  # [B, F, D]
        scalars: List[Tensor] = []
        for name in self.first_order_names:
            scalars.append(fields[name])
        first = torch.cat(scalars, dim=1).sum(dim=1)
        square_of_sum = stacked.sum(dim=1) ** 2
        sum_of_square = (stacked ** 2).sum(dim=1)
        second = 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
        deep = self.deep(stacked.flatten(1)).squeeze(1)
        logits = first + second + deep + self.bias
        return {"logits": logits, "probs": torch.sigmoid(logits)}


class FieldEmbedding(nn.Module):
    """inputs -> {name: [B, D]} plus {name + "__linear": [B, 1]} for the first-order terms."""

    def __init__(self, specs: List[FeatureSpec], emb_dim: int):
        super().__init__()
        self.second_order = EmbeddingLayer(specs, emb_dim)
        self.first_order = EmbeddingLayer(specs, 1)
        self.suffix = LINEAR_SUFFIX  # an attribute: TorchScript cannot read module globals

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        fields = self.second_order(inputs)
        for name, value in self.first_order(inputs).items():
            fields[name + self.suffix] = value
        return fields


class DeepFM(nn.Module):
    def __init__(self, specs: List[FeatureSpec], emb_dim: int, hidden: List[int]):
        super().__init__()
        mismatched = [s.name for s in specs if s.dim != emb_dim]
        if mismatched:
            raise ValueError(f"deepfm needs every feature dim equal to emb_dim ({emb_dim}); "
                             f"drop `dim` from: {', '.join(mismatched)}")
        self.embedding = FieldEmbedding(specs, emb_dim)
        self.dense = DeepFMDense([s.name for s in specs], emb_dim, hidden)
        init_embeddings(self, std=0.01)

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return self.dense(self.embedding(inputs))


def build(config: Dict[str, Any]) -> DeepFM:
    specs = parse_features(config)
    return DeepFM(specs, int(config["emb_dim"]), list(config["hidden"]))
