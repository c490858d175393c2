"""MobileFaceNet (Chen et al. 2018), embeddings only, with the module names of Xiaoccer/MobileFaceNet_Pytorch so
that ``shared/weights/mobilefacenet_casia_arcface.ckpt`` loads with ``strict=True``.

50 BatchNorm layers: conv1, dw_conv1, 15 bottlenecks x 3, conv2, linear7, linear1. Input: 112x96 RGB (columns 8:104
of the 112x112 aligned crop), ``(x - 127.5) / 128``. ``input_size`` and ``width`` allow small CPU variants.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frleak.data.images import InputSpec
from frleak.models.base import Backbone, check_input_size, make_norm2d
from frleak.registry import BACKBONES

# (expansion t, channels c, repeats n, stride s) of the original paper / repository
BOTTLENECK_SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, BN, PReLU, 3x3 depthwise, BN, PReLU, 1x1 project, BN (+ identity)."""

    def __init__(self, inp: int, oup: int, stride: int, expansion: int, norm: str = "bn") -> None:
        super().__init__()
        self.connect = stride == 1 and inp == oup
        hid = inp * expansion
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hid, 1, 1, 0, bias=False), make_norm2d(norm, hid), nn.PReLU(hid),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), make_norm2d(norm, hid), nn.PReLU(hid),
            nn.Conv2d(hid, oup, 1, 1, 0, bias=False), make_norm2d(norm, oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.connect else self.conv(x)


class ConvBlock(nn.Module):
    def __init__(self, inp: int, oup: int, k: Any, s: int, p: int, dw: bool = False, linear: bool = False,
                 norm: str = "bn") -> None:
        super().__init__()
        self.linear = linear
        self.conv = nn.Conv2d(inp, oup, k, s, p, groups=inp if dw else 1, bias=False)
        self.bn = make_norm2d(norm, oup)
        if not linear:
            self.prelu = nn.PReLU(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.linear else self.prelu(x)


class MobileFaceNet(Backbone):
    """MobileFaceNet: (N, 3, H, W) -> (N, embedding_dim)."""

    def __init__(self, *, input_size: Any = (112, 96), embedding_dim: int = 128, width: float = 1.0,
                 norm: str = "bn") -> None:
        super().__init__()
        h, w = check_input_size(input_size)
        crop = (0, 8, 112, 96) if (h, w) == (112, 96) else None
        self.input_spec = InputSpec(size=(h, w), crop=crop, mean=127.5, std=128.0)
        self.embedding_dim = embedding_dim

        def c(n: int) -> int:
            return max(8, int(round(n * width)))

        self.conv1 = ConvBlock(3, c(64), 3, 2, 1, norm=norm)
        self.dw_conv1 = ConvBlock(c(64), c(64), 3, 1, 1, dw=True, norm=norm)
        layers = []
        inplanes = c(64)
        for t, ch, n, s in BOTTLENECK_SETTING:
            for i in range(n):
                layers.append(Bottleneck(inplanes, c(ch), s if i == 0 else 1, t, norm))
                inplanes = c(ch)
        self.blocks = nn.Sequential(*layers)
        self.conv2 = ConvBlock(inplanes, c(512), 1, 1, 0, norm=norm)
        self.linear7 = ConvBlock(c(512), c(512), (h // 16, w // 16), 1, 0, dw=True, linear=True, norm=norm)
        self.linear1 = ConvBlock(c(512), embedding_dim, 1, 1, 0, linear=True, norm=norm)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, (2.0 / fan) ** 0.5)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_conv1(self.conv1(x))
        x = self.linear1(self.linear7(self.conv2(self.blocks(x))))
        return torch.flatten(x, 1)


@BACKBONES.register("mobilefacenet")
def mobilefacenet(**kwargs: Any) -> MobileFaceNet:
    """MobileFaceNet (loads shared/weights/mobilefacenet_casia_arcface.ckpt; input_size, width, norm options)"""
    return MobileFaceNet(**kwargs)
