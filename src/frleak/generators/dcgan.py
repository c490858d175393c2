"""DCGAN face generators (Radford et al. 2016) with the module names of the two shared checkpoints.

* ``dcgan32_celeba``: 32x32 CelebA faces, ``shared/weights/dcgan32_celeba_generator.pt`` (fletchersarip93/
  face-generator, Apache-2.0), keys ``generator_deconv.{0..4}.{0,1}``, z ~ U(-1, 1)^100.
* ``dcgan64_digiface``: 64x64 DigiFace-1M faces, ``shared/weights/dcgan64_digiface_generator.tar`` (the PyTorch
  DCGAN tutorial's generator, keys ``main.{0..13}``, under ``'netG_state_dict'``), z ~ N(0, I)^100.

Both take the latent as a flat (N, 100) vector (also accepted: the original (N, 100, 1, 1) layout) and end in tanh,
so images are in [-1, 1]. Their BatchNorm layers always use the running statistics (see ``Generator.train``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from frleak.errors import ConfigError
from frleak.generators.base import Generator, load_state_dict_strict, unwrap_state_dict
from frleak.io import safe_torch_load
from frleak.paths import shared_path
from frleak.registry import GENERATORS

STATE_KEYS = ("netG_state_dict", "state_dict", "generator", "G", "g_ema")


class _DCGANBase(Generator):
    """Shared DCGAN plumbing: flat latent <-> (N, nz, 1, 1), weight init, checkpoint loading."""

    nz: int

    def check_latent(self, latent: Any) -> torch.Tensor:
        # The original code feeds z as (N, nz, 1, 1); accept it and flatten so priors see (N, nz).
        if isinstance(latent, torch.Tensor) and latent.ndim == 4 and tuple(latent.shape[1:]) == (self.nz, 1, 1):
            latent = latent.flatten(1)
        return super().check_latent(latent)

    def _synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent.view(latent.shape[0], self.nz, 1, 1))

    @property
    def net(self) -> nn.Module:
        raise NotImplementedError

    def init_weights(self, seed: int) -> None:
        """DCGAN initialisation (conv ~ N(0, 0.02), BN gamma ~ N(1, 0.02), beta = 0), seeded: untrained
        networks for tests and smoke runs."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
                    if m.bias is not None:
                        m.bias.zero_()
                elif isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_(1.0 + torch.randn(m.weight.shape, generator=g) * 0.02)
                    m.bias.zero_()

    def load_weights(self, path: str | Path, *, trust: bool = False) -> None:
        obj = safe_torch_load(path, trust=trust)
        load_state_dict_strict(self, unwrap_state_dict(obj, path, STATE_KEYS), path)
        self.weights_path = str(path)


class DCGAN32(_DCGANBase):
    """The 32x32 CelebA DCGAN of fletchersarip93/face-generator (``generator_deconv.{0..4}``).

    (N, nz) -> (N, 3, 32, 32): ConvT(nz->8c, k4 s1 p0)+BN [no activation]; Conv(8c->4c, k3 s1 p1)+BN+LReLU(0.2);
    ConvT(4c->2c)+BN+LReLU; ConvT(2c->c)+BN+LReLU; ConvT(c->3, bias)+tanh (ConvT: k4 s2 p1), c = ``conv_dim``.
    """

    def __init__(self, nz: int = 100, conv_dim: int = 32) -> None:
        super().__init__()
        self.nz, self.latent_shape, self.output_size = nz, (nz,), (32, 32)
        self.name, self.prior = "dcgan32_celeba", "uniform"
        c = conv_dim
        lrelu = nn.LeakyReLU(0.2)
        self.generator_deconv = nn.Sequential(
            nn.Sequential(nn.ConvTranspose2d(nz, 8 * c, 4, 1, 0, bias=False), nn.BatchNorm2d(8 * c)),
            nn.Sequential(nn.Conv2d(8 * c, 4 * c, 3, 1, 1, bias=False), nn.BatchNorm2d(4 * c), lrelu),
            nn.Sequential(nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), lrelu),
            nn.Sequential(nn.ConvTranspose2d(2 * c, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), lrelu),
            nn.Sequential(nn.ConvTranspose2d(c, 3, 4, 2, 1, bias=True), nn.Tanh()),
        )

    @property
    def net(self) -> nn.Module:
        return self.generator_deconv


class DCGAN64(_DCGANBase):
    """The PyTorch DCGAN tutorial generator (``main.{0..13}``): (N, nz) -> (N, 3, 64, 64).

    ConvT(nz->8g, k4 s1 p0), then three ConvT(k4 s2 p1) halving the width, each + BN + ReLU, then ConvT(g->3)+tanh;
    all convolutions without bias, g = ``ngf``.
    """

    def __init__(self, nz: int = 100, ngf: int = 64) -> None:
        super().__init__()
        self.nz, self.latent_shape, self.output_size = nz, (nz,), (64, 64)
        self.name, self.prior = "dcgan64_digiface", "normal"
        layers: list[nn.Module] = []
        widths = [nz, 8 * ngf, 4 * ngf, 2 * ngf, ngf]
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    @property
    def net(self) -> nn.Module:
        return self.main


def _build(model: _DCGANBase, weights: str | Path | None, default: str, trust: bool, random_init: bool,
           init_seed: int) -> _DCGANBase:
    if random_init:
        if weights is not None:
            raise ConfigError(f"{model.name}: pass either weights=... or random_init=True, not both")
        model.init_weights(init_seed)
        model.weights_path = None
    else:
        model.load_weights(weights if weights is not None else shared_path("weights", default), trust=trust)
    return model.freeze()  # type: ignore[return-value]


@GENERATORS.register("dcgan32_celeba")
def dcgan32_celeba(weights: str | Path | None = None, *, trust: bool = False, nz: int = 100, conv_dim: int = 32,
                   random_init: bool = False, init_seed: int = 0) -> DCGAN32:
    """DCGAN 32x32 CelebA faces, z ~ U(-1,1)^100 (default weights: shared/weights/dcgan32_celeba_generator.pt)"""
    return _build(DCGAN32(nz, conv_dim), weights, "dcgan32_celeba_generator.pt", trust, random_init,
                  init_seed)  # type: ignore[return-value]


@GENERATORS.register("dcgan64_digiface")
def dcgan64_digiface(weights: str | Path | None = None, *, trust: bool = False, nz: int = 100, ngf: int = 64,
                     random_init: bool = False, init_seed: int = 0) -> DCGAN64:
    """DCGAN 64x64 DigiFace-1M faces, z ~ N(0,1)^100 (default weights: shared/weights/dcgan64_digiface_generator.tar)"""
    return _build(DCGAN64(nz, ngf), weights, "dcgan64_digiface_generator.tar", trust, random_init,
                  init_seed)  # type: ignore[return-value]
