"""One interface for every face generator that model inversion optimises through.

Stage 2 of arXiv 2401.13719 searches a pretrained GAN's latent space for a face that the target model judges a
training member. The attack only needs: a prior to draw starting latents from, a differentiable map latent -> image,
a penalty that keeps the latent in-distribution, and a projection after each optimiser step. :class:`Generator`
is that contract; the GAN's own weights are frozen and it always runs in eval mode (BatchNorm layers inside a DCGAN
must use their running statistics, never the attack batch's).

Shapes: a latent batch is ``(N, *latent_shape)``; an image batch is ``(N, 3, H, W)`` in ``[-1, 1]``, RGB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frleak.errors import CheckpointError, ConfigError

PRIORS = ("normal", "uniform")


def normal_prior_loss(z: torch.Tensor) -> torch.Tensor:
    """Negative log-density of N(0, I) up to a constant, per dimension: ``0.5 * ||z||^2 / dim``. (N, ...) -> (N,).

    Dividing by the dimension makes one weight work for any latent size (a typical sample scores about 0.5).
    """
    flat = z.flatten(1)
    return 0.5 * flat.pow(2).sum(1) / flat.shape[1]


def uniform_prior_loss(z: torch.Tensor, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """Squared excess outside the box ``[low, high]^dim``, summed: zero inside the box. (N, ...) -> (N,)."""
    flat = z.flatten(1)
    excess = torch.relu(flat - high) + torch.relu(low - flat)
    return excess.pow(2).sum(1)


def w_prior_loss(w: torch.Tensor, w_avg: torch.Tensor) -> torch.Tensor:
    """StyleGAN W / W+ penalty: squared distance to the mean style vector ``w_avg``, per dimension.

    ``w``: (N, D) or (N, L, D); ``w_avg``: (D,). Returns (N,) = ``||w - w_avg||^2 / (L * D)``.
    """
    diff = (w - w_avg).flatten(1)
    return diff.pow(2).sum(1) / diff.shape[1]


class Generator(nn.Module):
    """A frozen, eval-mode image generator with a latent prior.

    Subclasses set ``latent_shape`` (per-sample shape of the optimisable latent), ``output_size`` (H, W), ``name``
    and ``prior`` (``"normal"``: z ~ N(0, I); ``"uniform"``: z ~ U(-1, 1); subclasses may define their own, e.g.
    StyleGAN's W space), and implement :meth:`_synthesize` on a latent already checked by :meth:`check_latent`.
    They call :meth:`freeze` once their weights are in place.
    """

    latent_shape: tuple[int, ...]
    output_size: tuple[int, int]
    name: str
    prior: str = "normal"
    weights_path: str | None = None

    # ---- the interface -------------------------------------------------------------------------------------
    def sample_latent(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latents from the prior, (n, *latent_shape), on this module's device, without autograd history.

        The same ``generator`` state gives the same latents (sampling happens on the generator's device, so a
        CPU generator gives the same numbers whatever device the network lives on)."""
        if n < 0:
            raise ConfigError(f"sample_latent: n must be >= 0, got {n}")
        dev = generator.device if generator is not None else self.device
        shape = (n, *self.latent_shape)
        if self.prior == "uniform":
            z = torch.rand(shape, generator=generator, device=dev) * 2.0 - 1.0
        elif self.prior == "normal":
            z = torch.randn(shape, generator=generator, device=dev)
        else:
            raise ConfigError(f"{self.name}: prior {self.prior!r} has no sampler; expected one of {PRIORS}")
        return z.to(self.device)

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        """Latents (N, *latent_shape) -> images (N, 3, H, W) in [-1, 1], differentiable w.r.t. the latent."""
        latent = self.check_latent(latent)
        if any(m.training for m in self.modules()):  # a submodule was flipped to train mode: BatchNorm must
            self.eval()  # keep using (and never update) its running statistics
        return self._synthesize(latent)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.synthesize(latent)

    def latent_prior_loss(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, *latent_shape) -> (N,) penalty keeping the latent in-distribution (0 = perfectly typical)."""
        latent = self.check_latent(latent)
        if self.prior == "uniform":
            return uniform_prior_loss(latent)
        if self.prior == "normal":
            return normal_prior_loss(latent)
        raise ConfigError(f"{self.name}: prior {self.prior!r} has no loss; expected one of {PRIORS}")

    @torch.no_grad()
    def project_(self, latent: torch.Tensor) -> torch.Tensor:
        """Project in place after an optimiser step: clamp to the box for the uniform prior, no-op otherwise."""
        if self.prior == "uniform":
            latent.clamp_(-1.0, 1.0)
        return latent

    # ---- helpers -------------------------------------------------------------------------------------------
    def _synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def latent_dim(self) -> int:
        return math.prod(self.latent_shape)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def check_latent(self, latent: Any) -> torch.Tensor:
        """Return ``latent`` if it is a float tensor of shape (N, *latent_shape); else a ConfigError that says
        which shape was expected. Subclasses may accept extra equivalent layouts by overriding this."""
        if not isinstance(latent, torch.Tensor):
            raise ConfigError(f"{self.name}: latent must be a torch.Tensor, got {type(latent).__name__}")
        if latent.ndim != 1 + len(self.latent_shape) or tuple(latent.shape[1:]) != tuple(self.latent_shape):
            raise ConfigError(
                f"{self.name}: latent has shape {tuple(latent.shape)}, expected (N, "
                f"{', '.join(map(str, self.latent_shape))}) (latent_shape={tuple(self.latent_shape)})"
            )
        if not latent.is_floating_point():
            raise ConfigError(f"{self.name}: latent must be a floating-point tensor, got {latent.dtype}")
        return latent

    def freeze(self) -> Generator:
        """Freeze every weight and switch to eval mode for good (see :meth:`train`)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Generator:
        """Always eval: a parent's ``.train()`` must not put the GAN's BatchNorm layers into batch-stat mode
        (their running statistics would drift and the images would depend on the attack batch)."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, latent_shape={tuple(self.latent_shape)}, output_size={self.output_size}, " \
               f"prior={self.prior!r}"


def load_state_dict_strict(module: nn.Module, state: Mapping[str, Any], source: str | Path) -> None:
    """``module.load_state_dict(state, strict=True)`` with one clear CheckpointError naming ``source`` and listing
    the first few missing keys, unexpected keys and shape mismatches, instead of PyTorch's long RuntimeError."""
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{source}: expected a state_dict (a mapping of names to tensors), "
                              f"got {type(state).__name__}")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and (not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(own[k].shape))
    ]
    if missing or unexpected or bad_shape:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", bad_shape)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: " + "; ".join(parts)
            + ". Check that the checkpoint belongs to this generator and configuration."
        )
    module.load_state_dict(state, strict=True)


def unwrap_state_dict(obj: Any, source: str | Path, keys: tuple[str, ...]) -> Mapping[str, Any]:
    """The state_dict inside a loaded checkpoint: ``obj`` itself when it maps names to tensors, else the first of
    ``keys`` that it holds. A CheckpointError names the file and the top-level keys found."""
    if isinstance(obj, Mapping):
        for k in keys:
            if k in obj and isinstance(obj[k], Mapping):
                return obj[k]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        found = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{source}: no generator state_dict found; expected one of the keys "
                              f"{', '.join(map(repr, keys))} or a plain state_dict, found keys: {found}")
    raise CheckpointError(f"{source}: expected a checkpoint dict, got {type(obj).__name__}")
