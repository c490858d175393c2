"""Stronger data augmentation than horizontal flips: random resized crops (scale + translation) and colour jitter.

Augmentation is a classic regulariser against membership inference (the model sees fewer exact copies of each
member); for BN statistics it also moves the training-batch activations away from those of the clean member
images the attacker queries with. Implemented in torch (no torchvision): one batched affine resampling
(``affine_grid`` + ``grid_sample``) and per-image colour factors, all drawn from a ``torch.Generator``.

Face crops are aligned to a 5-point template, so the geometry is kept gentle (area 80-100 %, aspect 0.9-1.1):
large crops would break the alignment every FR model relies on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from frleak.data.images import InputSpec, to_pixels
from frleak.defenses.base import Defense, DefenseCallback
from frleak.registry import DEFENSES
from frleak.train import TrainConfig, TrainContext

_GREY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as PIL's convert("L")


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def random_resized_crop_params(n: int, g: torch.Generator, scale: tuple[float, float] = (0.8, 1.0),
                               ratio: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Affine matrices (n, 2, 3) for ``affine_grid``: a crop of area fraction in ``scale`` and aspect (w/h) in
    ``ratio`` (log-uniform), at a uniform position inside the image, resized back to the full frame."""
    area = _uniform(n, scale[0], scale[1], g)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), g)
    r = torch.exp(log_r)
    fw = torch.sqrt(area * r).clamp(max=1.0)  # half-width of the crop in [-1, 1] coordinates
    fh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1) * (1 - fw)
    cy = (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1) * (1 - fh)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = fw, cx
    theta[:, 1, 1], theta[:, 1, 2] = fh, cy
    return theta


def colour_jitter(x: torch.Tensor, g: torch.Generator, brightness: float = 0.2, contrast: float = 0.2,
                  saturation: float = 0.2) -> torch.Tensor:
    """Per-image brightness, contrast, saturation factors in [1 - a, 1 + a], in that order, on pixels in [0, 255]
    (float (N, 3, H, W)); the result is clipped to [0, 255]. Factors of 1 leave ``x`` unchanged."""
    n = len(x)
    b = _uniform(n, 1 - brightness, 1 + brightness, g).to(x)[:, None, None, None]
    c = _uniform(n, 1 - contrast, 1 + contrast, g).to(x)[:, None, None, None]
    s = _uniform(n, 1 - saturation, 1 + saturation, g).to(x)[:, None, None, None]
    w = torch.tensor(_GREY, dtype=x.dtype, device=x.device)[None, :, None, None]
    x = (x * b).clamp(0, 255)
    mean = (x * w).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 255)
    grey = (x * w).sum(1, keepdim=True)
    return ((x - grey) * s + grey).clamp(0, 255)


def augment_batch(x: torch.Tensor, g: torch.Generator, *, scale: tuple[float, float] = (0.8, 1.0),
                  ratio: tuple[float, float] = (0.9, 1.1), brightness: float = 0.2, contrast: float = 0.2,
                  saturation: float = 0.2) -> torch.Tensor:
    """Random resized crop, then colour jitter, per image. x: (N, 3, H, W) pixels, uint8 or float in [0, 255];
    returns the same dtype (uint8 rounded). Same generator state -> same output."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a batch (N, 3, H, W), got {tuple(x.shape)}")
    out_dtype = x.dtype
    xf = x.float()
    theta = random_resized_crop_params(len(x), g, scale, ratio).to(xf)
    grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
    xf = F.grid_sample(xf, grid, mode="bilinear", padding_mode="border", align_corners=False)
    xf = colour_jitter(xf, g, brightness, contrast, saturation)
    if out_dtype == torch.uint8:
        return xf.round().clamp(0, 255).to(torch.uint8)
    return xf.to(out_dtype)


class AugmentedBackbone(nn.Module):
    """Training-time wrapper: ``forward(x)`` augments the normalised batch x (N, 3, H, W) when in train mode, then
    runs the backbone. The backbone is ``.module`` so the training loop's checkpoints unwrap it.

    The generator of step t is seeded with (seed, t), and t lives in the loop's ``extra_state`` (checkpointed
    every epoch), so an interrupted and resumed run draws the same augmentations as an uninterrupted one.
    """

    def __init__(self, module: nn.Module, defense: Augmentation, state: dict[str, Any], seed: int) -> None:
        super().__init__()
        self.module = module
        self.defense = defense
        self.state = state
        self.seed = seed

    @property
    def input_spec(self) -> InputSpec:
        spec: InputSpec = self.module.input_spec  # type: ignore[assignment]
        return spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            step = int(self.state.get("augmentation_step", 0))
            self.state["augmentation_step"] = step + 1
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            spec = self.input_spec
            pixels = to_pixels(x.detach().float(), spec)  # random draws on the CPU, pixels stay put
            pixels = self.defense.apply(pixels, g)
            x = ((pixels - spec.mean) / spec.std).to(x)
        return self.module(x)


class _AugmentCallback(DefenseCallback):
    defense: Augmentation

    def setup(self, ctx: TrainContext) -> None:
        seed = self.defense.seed if self.defense.seed is not None else ctx.config.seed
        ctx.extra_state.setdefault("augmentation_step", 0)
        ctx.model = AugmentedBackbone(ctx.model, self.defense, ctx.extra_state, seed)


@DEFENSES.register("augmentation")
@dataclasses.dataclass
class Augmentation(Defense):
    """Random resized crop (area 0.8-1, aspect 0.9-1.1, i.e. scale + a few pixels' shift) and colour jitter (0.2)

    Applied to every training image after the loop's horizontal flip, seeded per training step.
    scale: crop area fraction range; ratio: crop aspect range; brightness, contrast, saturation: jitter
    amplitudes a (factors in [1 - a, 1 + a]); seed: None = the training seed.
    """

    name: ClassVar[str] = "augmentation"
    stage: ClassVar[str] = "training"
    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        self.ratio = (float(self.ratio[0]), float(self.ratio[1]))
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise self._fail("scale", f"must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise self._fail("ratio", f"must satisfy 0 < low <= high, got {self.ratio}")
        for k in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, k) < 1.0:
                raise self._fail(k, f"must be in [0, 1), got {getattr(self, k)}")

    def params(self) -> dict[str, Any]:
        p = super().params()
        p["scale"], p["ratio"] = list(self.scale), list(self.ratio)  # JSON-friendly
        return p

    def apply(self, pixels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Augment a batch of pixels (N, 3, H, W) in [0, 255] with this defense's parameters."""
        return augment_batch(pixels, g, scale=self.scale, ratio=self.ratio, brightness=self.brightness,
                             contrast=self.contrast, saturation=self.saturation)

    def configure(self, backbone_options: Mapping[str, Any], train_config: TrainConfig
                  ) -> tuple[dict[str, Any], TrainConfig]:
        return dict(backbone_options), train_config

    def callbacks(self) -> list[Any]:
        return [_AugmentCallback(self)]
