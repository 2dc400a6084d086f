"""TDM scoring model: P(user is interested in tree node), for layer-wise beam search over a TDM tree.

Inputs: the user features plus the node's item features (the node id as the ``item_id`` id feature;
other item features come from the tree's node_feature table at serving). Outputs ``logits`` and
``probs`` (``float32 [B]``). The network: user and node field vectors, their projected element-wise
product (the "interest" term), all into an MLP.

Trained on layer-wise samples (``recbuild.ml.training.tree_sampler``): for a clicked item, every
ancestor of its leaf is a positive on its level and random other nodes of that level are negatives.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from recbuild.ml.models.features import (EmbeddingLayer, FeatureSpec, concat_fields, group_features,
                                      init_embeddings, parse_features)
from recbuild.ml.models.layers import MLP


class TDM(nn.Module):
    def __init__(self, specs: List[FeatureSpec], emb_dim: int, hidden: List[int]):
        super().__init__()
        user, item = group_features(specs, "user"), group_features(specs, "item")
        if not user or not item:
            raise ValueError("tdm needs user features and item (node) features, e.g. item_id")
        self.user_embedding = EmbeddingLayer(user)
        self.item_embedding = EmbeddingLayer(item)
        self.user_names = [s.name for s in user]
        self.item_names = [s.name for s in item]
        user_dim, item_dim = self.user_embedding.output_dim, self.item_embedding.output_dim
        self.user_projection = nn.Linear(user_dim, emb_dim)
        self.item_projection = nn.Linear(item_dim, emb_dim)
        self.mlp = MLP(user_dim + item_dim + emb_dim, list(hidden) + [1])
        init_embeddings(self)

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        user = concat_fields(self.user_embedding(inputs), self.user_names)
        node = concat_fields(self.item_embedding(inputs), self.item_names)
        interest = self.user_projection(user) * self.item_projection(node)
        logits = self.mlp(torch.cat([user, node, interest], dim=1)).squeeze(1)
        return {"logits": logits, "probs": torch.sigmoid(logits)}


    def node_embedding(self) -> "NodeEmbedding":
        """The item/node embedding alone (TorchEasyRec's export/embedding): it predicts the item
        vectors a learnt tree is clustered from. Shares this model's parameters."""
        return NodeEmbedding(self.item_embedding, self.item_names)


class NodeEmbedding(nn.Module):
    """Item features -> the concatenated node field embeddings, as ``item_tower_emb``."""

    def __init__(self, item_embedding: nn.Module, item_names: List[str]):
        super().__init__()
        self.item_embedding = item_embedding
        self.item_names = list(item_names)

    def forward(self, inputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {"item_tower_emb": concat_fields(self.item_embedding(inputs), self.item_names)}


def build(config: Dict[str, Any]) -> TDM:
    return TDM(parse_features(config), int(config["emb_dim"]), list(config["hidden"]))
