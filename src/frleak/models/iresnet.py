"""IResNet (insightface arcface_torch), embeddings only.

Parameter names follow insightface ``recognition/arcface_torch/backbones/iresnet.py`` exactly (``conv1``, ``bn1``,
``prelu``, ``layer1..4.{i}.{bn1,conv1,bn2,prelu,conv2,bn3,downsample.{0,1}}``, ``bn2``, ``fc``, ``features``), so
their ``backbone.pth`` files load with ``strict=True``. BatchNorm layers: IResNet-18: 31, -34: 55, -50: 79, -100: 154
(counting the final BatchNorm1d ``features``).

Extensions for small CPU models and defenses, which keep the names: ``width`` scales every stage's channels
(0.5 = half width), ``input_size`` any multiple of 16 (the flatten size follows), ``norm`` swaps BatchNorm for
GroupNorm / LayerNorm (no running statistics).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frleak.data.images import InputSpec
from frleak.models.base import Backbone, check_input_size, make_norm1d, make_norm2d
from frleak.registry import BACKBONES

LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the (downsampled) identity."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: str = "bn") -> None:
        super().__init__()
        self.bn1 = make_norm2d(norm, inplanes)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = make_norm2d(norm, planes)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = make_norm2d(norm, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = self.downsample(x) if self.downsample is not None else x
        return out + identity


class IResNet(Backbone):
    """IResNet backbone: (N, 3, H, W) in [-1, 1] -> (N, num_features)."""

    def __init__(self, depth: int = 50, *, width: float = 1.0, input_size: Any = 112, num_features: int = 512,
                 dropout: float = 0.0, norm: str = "bn") -> None:
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"IResNet depth must be one of {sorted(LAYERS)}, got {depth}")
        h, w = check_input_size(input_size)
        self.input_spec = InputSpec(size=(h, w), mean=127.5, std=127.5)
        self.embedding_dim = num_features
        widths = [max(4, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = make_norm2d(norm, self.inplanes)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(widths[0], LAYERS[depth][0], norm)
        self.layer2 = self._make_layer(widths[1], LAYERS[depth][1], norm)
        self.layer3 = self._make_layer(widths[2], LAYERS[depth][2], norm)
        self.layer4 = self._make_layer(widths[3], LAYERS[depth][3], norm)
        self.bn2 = make_norm2d(norm, widths[3])
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(widths[3] * (h // 16) * (w // 16), num_features)
        self.features = make_norm1d(norm, num_features)
        if isinstance(self.features, nn.BatchNorm1d):
            nn.init.constant_(self.features.weight, 1.0)
            self.features.weight.requires_grad = False  # as arcface_torch: a fixed-scale embedding BN
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, norm: str) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False), make_norm2d(norm, planes)
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample, norm)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes, 1, None, norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = self.dropout(torch.flatten(x, 1))
        return self.features(self.fc(x))


def _factory(depth: int):  # noqa: ANN202 - registry factory
    def build(**kwargs: Any) -> IResNet:
        return IResNet(depth, **kwargs)

    build.__name__ = f"iresnet{depth}"
    build.__doc__ = f"IResNet-{depth} (insightface arcface_torch names; width, input_size, norm options)"
    return build


for _d in (18, 34, 50, 100, 200):
    BACKBONES.register(f"iresnet{_d}")(_factory(_d))
