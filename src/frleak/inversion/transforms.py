"""Small random geometric transforms for the final selection of reconstructions (Plug & Play Attacks).

Struppek et al. 2022 ("Plug & Play Attacks: Towards Robust and Flexible Model Inversion Attacks", ICML) rank the
optimised candidates by their score averaged over random transforms: a face that only scores well at one exact
pixel alignment is an adversarial artefact of the target, one that keeps its score under small shifts is a
robust reconstruction. Our transforms are deliberately milder than PPA's (our faces are 32-64 px and aligned):
zoom in by up to ``max_zoom``, shift by up to ``max_shift`` of the width, rotate by up to ``max_rotate`` degrees,
mirror with probability 1/2. Parameters come from a seeded ``torch.Generator`` (same seed, same transforms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TransformParams:
    """T affine transforms: zoom (T,) >= 1, shift (T, 2) in [-1, 1] grid units, angle (T,) radians, flip (T,)."""

    zoom: torch.Tensor
    shift: torch.Tensor
    angle: torch.Tensor
    flip: torch.Tensor

    def __len__(self) -> int:
        return int(self.zoom.shape[0])


def sample_transforms(n: int, generator: torch.Generator, *, max_zoom: float = 0.1, max_shift: float = 0.05,
                      max_rotate: float = 5.0) -> TransformParams:
    """``n`` random transforms (the first is always the identity, so the unperturbed face always counts)."""
    u = torch.rand((n, 5), generator=generator, dtype=torch.float64)
    zoom = 1.0 + max_zoom * u[:, 0]
    shift = (u[:, 1:3] * 2 - 1) * (2 * max_shift)  # grid coordinates span 2 units per image width
    angle = (u[:, 3] * 2 - 1) * math.radians(max_rotate)
    flip = u[:, 4] < 0.5
    if n:
        zoom[0], shift[0], angle[0], flip[0] = 1.0, 0.0, 0.0, False
    return TransformParams(zoom, shift, angle, flip)


def apply_transform(images: torch.Tensor, params: TransformParams, i: int) -> torch.Tensor:
    """The ``i``-th transform applied to every image (N, C, H, W); bilinear, border padding; differentiable."""
    zoom, angle = float(params.zoom[i]), float(params.angle[i])
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    tx, ty = float(params.shift[i, 0]), float(params.shift[i, 1])
    theta = torch.tensor([[c, -s, tx], [s, c, ty]], dtype=images.dtype, device=images.device)
    theta = theta.unsqueeze(0).expand(images.shape[0], 2, 3)
    if zoom == 1.0 and angle == 0.0 and tx == 0.0 and ty == 0.0:
        out = images
    else:
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.flip(out, dims=(-1,)) if bool(params.flip[i]) else out
