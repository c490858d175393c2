"""GAN-free inversion: optimise the pixels themselves (DeepInversion, Yin et al. CVPR 2020), for comparison.

Without a generator nothing keeps the optimised image on the face manifold; DeepInversion replaces the GAN by image
priors: the BatchNorm-statistics prior (the target's own running statistics say what natural inputs look like),
total variation and an l2 penalty (see :mod:`frleak.inversion.objective`). :class:`PixelGenerator` wraps an image
as a "generator" whose latent is the image itself, so that the same search / optimisation / selection code runs it
(:func:`frleak.inversion.invert` with ``method="gan_free"``). The latent prior is zero: the image priors are the
objective's ``tv`` / ``l2`` / ``bn`` terms.
"""

from __future__ import annotations

import torch

from frleak.errors import ConfigError
from frleak.generators.base import Generator


class PixelGenerator(Generator):
    """Identity "generator": latent = image (N, 3, H, W) in [-1, 1]; starts from grey + Gaussian noise.

    ``init_std``: standard deviation of the starting noise around mid-grey (0), in [-1, 1] units."""

    def __init__(self, size: tuple[int, int] = (64, 64), init_std: float = 0.5) -> None:
        super().__init__()
        h, w = (int(v) for v in size)
        if h < 8 or w < 8:
            raise ConfigError(f"GAN-free image size must be at least 8x8, got {size}")
        self.latent_shape, self.output_size = (3, h, w), (h, w)
        self.name, self.prior, self.init_std = "pixels", "pixels", float(init_std)
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)
        self.freeze()

    def sample_latent(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if n < 0:
            raise ConfigError(f"sample_latent: n must be >= 0, got {n}")
        dev = generator.device if generator is not None else self.device
        z = torch.randn((n, *self.latent_shape), generator=generator, device=dev) * self.init_std
        return z.clamp(-1.0, 1.0).to(self.device)

    def _synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def latent_prior_loss(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.check_latent(latent).shape[0], device=latent.device)

    @torch.no_grad()
    def project_(self, latent: torch.Tensor) -> torch.Tensor:
        """Pixels stay in [-1, 1] (DeepInversion clips after every step)."""
        return latent.clamp_(-1.0, 1.0)
