"""Generator output -> backbone input, differentiably (stage 2 of arXiv 2401.13719 optimises through it).

A generator emits RGB faces in [-1, 1] at its own resolution (32x32, 64x64, ...). A backbone expects what
:func:`frleak.data.images.to_network_array` + :func:`frleak.data.images.normalize` make from an aligned photo: the
face resized to the aligned frame (112x112, the ArcFace template), cropped (MobileFaceNet's 112x96 keeps columns
8:104), resized to the input size, then ``(x - mean) / std`` in [0, 255] pixel units. :func:`to_backbone_input`
performs the same steps in that order with ``torch.nn.functional.interpolate`` (bilinear, antialias), so that
gradients reach the generator. PIL's bilinear filter widens its support when downscaling and torch's
``antialias=True`` does the same, so the two paths agree to about one grey level (PIL also rounds to uint8;
see tests/test_inversion.py). We assume generated faces are framed like the aligned training faces (the shared
GANs were trained on aligned/centred crops); a generator with another framing needs its own mapping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frleak.data.images import InputSpec
from frleak.errors import ConfigError


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to ``size`` (H, W), antialiased when shrinking (as PIL); identity if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 255] float (no rounding: rounding has no gradient)."""
    return (images + 1.0) * 127.5


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1], the generators' convention."""
    return x.float() / 127.5 - 1.0


def unit_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float (N, 3, H, W) -> uint8, rounded and clamped (for saving and for PIL)."""
    return to_pixels(images.detach()).round().clamp(0, 255).to(torch.uint8)


def to_backbone_input(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Images (N, 3, h, w) in [-1, 1], framed like an aligned face -> normalised network input (N, 3, *spec.size).

    Steps (as ``frleak.data.images``): [0, 255] pixels; resize to ``spec.aligned_size`` if needed; crop
    ``spec.crop`` (top, left, height, width); resize to ``spec.size``; ``(x - spec.mean) / spec.std``.
    Differentiable w.r.t. ``images``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"images must be (N, 3, H, W) RGB, got shape {tuple(images.shape)}")
    x = resize(to_pixels(images.float()), spec.aligned_size)
    if spec.crop is not None:
        top, left, h, w = spec.crop
        if top < 0 or left < 0 or top + h > x.shape[-2] or left + w > x.shape[-1]:
            raise ConfigError(f"input spec crop {spec.crop} does not fit the aligned frame {spec.aligned_size}")
        x = x[..., top:top + h, left:left + w]
    x = resize(x, spec.size)
    return (x - spec.mean) / spec.std
