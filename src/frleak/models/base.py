"""What every backbone answers: an embedding for a batch of faces, its input spec, and how to rebuild it.

The backbone is the released artefact and the attack surface (arXiv 2401.13719): it emits embeddings only.
Margin heads live in :mod:`frleak.models.heads` and are never part of it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from frleak.data.images import InputSpec
from frleak.errors import ConfigError
from frleak.registry import BACKBONES

NORMS = ("bn", "gn", "ln", "none")


def make_norm2d(kind: str, channels: int, groups: int = 32) -> nn.Module:
    """BatchNorm (the paper's attack surface) or a normalisation without running statistics (a defense)."""
    if kind == "bn":
        return nn.BatchNorm2d(channels, eps=1e-5)
    if kind == "gn":
        return nn.GroupNorm(_groups(channels, groups), channels)
    if kind == "ln":
        return nn.GroupNorm(1, channels)  # LayerNorm over (C, H, W)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; expected one of {', '.join(NORMS)}")


def make_norm1d(kind: str, features: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm1d(features, eps=1e-5)
    if kind in ("gn", "ln"):
        return nn.LayerNorm(features)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; expected one of {', '.join(NORMS)}")


def _groups(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class Backbone(nn.Module):
    """Base class: subclasses set ``input_spec``, ``embedding_dim`` and ``arch`` (name + kwargs to rebuild)."""

    input_spec: InputSpec
    embedding_dim: int
    arch: dict[str, Any]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised faces -> (N, D) embeddings."""
        return self(x)


def create_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a registered backbone; ``arch`` records how, so a checkpoint can rebuild it."""
    model = BACKBONES.create(name, **kwargs)
    model.arch = {"name": name, "kwargs": dict(kwargs)}
    return model


def check_input_size(size: Any, multiple: int = 16) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(v) for v in size)
    if h % multiple or w % multiple or h <= 0 or w <= 0:
        raise ConfigError(f"input_size {size} must be positive multiples of {multiple}")
    return h, w
