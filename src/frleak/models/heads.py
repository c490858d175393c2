"""Margin heads, used only during training and never saved with the backbone (the paper's threat model: deployed
FR models drop the classification layer).

Each head maps (embeddings (N, D), labels (N,)) to logits (N, num_classes) for cross-entropy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from frleak.registry import HEADS


class _NormedLinear(nn.Module):
    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, 0, 0.01)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x), F.normalize(self.weight)).clamp(-1.0, 1.0)


@HEADS.register("arcface")
class ArcFace(_NormedLinear):
    """ArcFace additive angular margin: s * cos(theta + m) on the true class (Deng et al. 2019)"""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(embedding_dim, num_classes)
        self.s, self.m = s, m
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        # past theta = pi - m, cos(theta + m) stops being monotonic; use the CosFace-like fallback there
        self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(x)
        target = cos.gather(1, labels[:, None])
        sin = torch.sqrt((1.0 - target * target).clamp_min(1e-7))
        phi = target * self.cos_m - sin * self.sin_m
        phi = torch.where(target > self.th, phi, target - self.mm)
        return self.s * cos.scatter(1, labels[:, None], phi)


@HEADS.register("cosface")
class CosFace(_NormedLinear):
    """CosFace large margin cosine: s * (cos(theta) - m) on the true class (Wang et al. 2018)"""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(embedding_dim, num_classes)
        self.s, self.m = s, m

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(x)
        target = cos.gather(1, labels[:, None]) - self.m
        return self.s * cos.scatter(1, labels[:, None], target)


@HEADS.register("softmax")
class Softmax(nn.Module):
    """Plain linear classifier + softmax cross-entropy"""

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
