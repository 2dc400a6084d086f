"""Small dense building blocks shared by the model families."""

from __future__ import annotations

from typing import List

from torch import Tensor, nn


class MLP(nn.Module):
    """Linear layers with ReLU between them; the last layer is linear (no activation)."""

    def __init__(self, input_dim: int, sizes: List[int]):
        super().__init__()
        layers: List[nn.Module] = []
        previous = input_dim
        for i, size in enumerate(sizes):
            layers.append(nn.Linear(previous, size))
            if i < len(sizes) - 1:
                layers.append(nn.ReLU())
            previous = size
        self.net = nn.Sequential(*layers)
        self.output_dim = previous

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
