"""DSSM: two towers (user, item), each an MLP over its group's features, L2-normalised outputs.

Trained with an in-batch sampled softmax (see ``recbuild.ml.training.losses``); the temperature
scales the cosine logits at training time only, so an inner-product index over exported embeddings
is exactly cosine similarity (as in TorchEasyRec).
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch.nn.functional as F
from torch import Tensor, nn

from recbuild.ml.models.features import parse_features, EmbeddingLayer, FeatureSpec, concat_fields, group_features, init_embeddings
from recbuild.ml.models.layers import MLP


class TowerDense(nn.Module):
    """Field vectors -> normalised tower embedding (the dense half of a tower)."""

    def __init__(self, names: List[str], input_dim: int, hidden: List[int], out_dim: int, output_name: str):
        super().__init__()
        self.names = names
        self.output_name = output_name
        self.mlp = MLP(input_dim, list(hidden) + [out_dim])

    def forward(self, fields: Dict[str, Tensor]) -> Dict[str, Tensor]:
        x = self.mlp(concat_fields(fields, self.names))
        return {self.output_name: F.normalize(x, p=2.0, dim=1)}


class Tower(nn.Module):
    def __init__(self, specs: List[FeatureSpec], hidden: List[int], out_dim: int, output_name: str):
        super().__init__()
        if not specs:
            raise ValueError(f"{output_name}: the tower has no features; give it at least one")
        self.embedding = EmbeddingLayer(specs)
        self.dense = TowerDense([s.name for s in specs], self.embedding.output_dim, hidden, out_dim,
                                output_name)

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return self.dense(self.embedding(inputs))


class DSSM(nn.Module):
    tower_names = ("user_tower", "item_tower")

    def __init__(self, specs: List[FeatureSpec], hidden: List[int], tower_dim: int, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.user_tower = Tower(group_features(specs, "user"), hidden, tower_dim, "user_tower_emb")
        self.item_tower = Tower(group_features(specs, "item"), hidden, tower_dim, "item_tower_emb")
        init_embeddings(self)

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        out = self.user_tower(inputs)
        out.update(self.item_tower(inputs))
        # Row-wise cosine: lets the full model score (user, item) pairs like a ranker would.
        out["similarity"] = (out["user_tower_emb"] * out["item_tower_emb"]).sum(dim=1)
        return out


def build(config: Dict[str, Any]) -> DSSM:
    specs = parse_features(config)
    return DSSM(specs, list(config["hidden"]), int(config["tower_dim"]), float(config["temperature"]))
