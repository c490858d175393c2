"""A tiny BatchNorm backbone for tests and quick demos: seconds to train on a CPU, same verbs as the real ones."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frleak.data.images import InputSpec
from frleak.models.base import Backbone, check_input_size, make_norm1d, make_norm2d
from frleak.registry import BACKBONES


class TinyNet(Backbone):
    """conv-norm-PReLU x 4 (stride 2 from the second), flatten, linear, BatchNorm1d: (N, 3, H, W) -> (N, D)."""

    def __init__(self, *, input_size: Any = 32, channels: int = 16, embedding_dim: int = 32, norm: str = "bn") -> None:
        super().__init__()
        h, w = check_input_size(input_size, multiple=8)
        self.input_spec = InputSpec(size=(h, w), mean=127.5, std=127.5)
        self.embedding_dim = embedding_dim
        chans = [channels, channels, 2 * channels, 4 * channels]
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(chans):
            layers += [nn.Conv2d(cin, cout, 3, 1 if i == 0 else 2, 1, bias=False), make_norm2d(norm, cout, 4),
                       nn.PReLU(cout)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(cin * (h // 8) * (w // 8), embedding_dim)
        self.features = make_norm1d(norm, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(torch.flatten(self.body(x), 1)))


@BACKBONES.register("tiny")
def tiny(**kwargs: Any) -> TinyNet:
    """Tiny 4-layer BatchNorm net for tests (input_size, channels, embedding_dim, norm)"""
    return TinyNet(**kwargs)
