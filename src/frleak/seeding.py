"""Seeds everywhere: the same config and seed give the same numbers."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator seeded the same, for samplers and data order."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - third-party code may still draw from the legacy global RNG
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def rng(seed: int) -> np.random.Generator:
    """A NumPy generator for one purpose; derive per-purpose seeds instead of sharing one stream."""
    return np.random.default_rng(seed)
