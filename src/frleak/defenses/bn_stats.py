"""Release-time defenses on the BatchNorm running statistics, the attack surface of arXiv 2401.13719.

The attack compares an image's per-layer channel means with the running means u_i (and variances s_i^2) that the
released model carries; these are exponential averages over the *private* training batches. Two post-processings
change only those buffers (every weight stays bit-identical, so the change in utility is only through them):

* ``bn_reestimate``: recompute every running mean and variance on public images (cumulative average over public
  batches, as in the "precise BN" recipe of Wu & Johnson 2021, arXiv 2105.07576): the released statistics then
  describe public data, not the training batches.
* ``bn_noise``: perturb them with seeded Gaussian noise whose scale is relative to each channel's running std.
  A heuristic, not differential privacy (the statistics' sensitivity is unbounded without clipping activations).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch

from frleak.data.images import hflip, normalize
from frleak.defenses.base import Defense, check_public_images
from frleak.errors import ConfigError, FrleakError
from frleak.features import bn_layers
from frleak.models.base import Backbone
from frleak.registry import DEFENSES
from frleak.train import TrainConfig


# ---- pure operations on a model's BN buffers ---------------------------------------------------------------------
@torch.no_grad()
def reestimate_bn_statistics(model: Backbone, images_uint8: torch.Tensor, *, batch_size: int = 64,
                             passes: int = 1, flip: bool = True, seed: int = 0) -> Backbone:
    """Replace every BN layer's running mean/var by a cumulative average over batches of ``images_uint8``.

    images_uint8: (N, 3, H, W) public images at the model's input size. For each of ``passes`` passes the images
    are shuffled (seeded) and cut into batches of ``batch_size`` (the last one kept if >= 2 images); with ``flip``
    half of them are mirrored, like the training batches the statistics replace. BN layers run in train mode with
    ``momentum=None`` (cumulative moving average: every batch weighs the same, whatever its position) and every
    other module in eval mode (no dropout). Weights are untouched; each module's mode and each BN layer's momentum
    are restored. Returns ``model``.
    """
    layers = [m for _, m in bn_layers(model)]
    spec = model.input_spec
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm needs a batch), got {batch_size}")
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    device = next(model.parameters()).device
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        g = torch.Generator().manual_seed(seed)
        n = len(images_uint8)
        for _ in range(passes):
            perm = torch.randperm(n, generator=g)
            flips = torch.rand(n, generator=g) < 0.5
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                if len(idx) < 2:
                    continue
                x = normalize(images_uint8[idx], spec)
                if flip:
                    f = flips[idx]
                    x[f] = hflip(x[f])
                model(x.to(device))
    finally:
        for bn, mom in zip(layers, momenta):
            bn.momentum = mom
        for module, mode in modes.items():
            module.training = mode
    return model


@torch.no_grad()
def noise_bn_statistics(model: Backbone, sigma: float, seed: int = 0) -> Backbone:
    """Add seeded noise to every BN layer's running statistics, in place; returns ``model``.

    Per channel, with s = sqrt(running_var + eps) and z, z' ~ N(0, 1) independent:
        running_mean <- running_mean + sigma * s * z
        running_std  <- running_std * exp(sigma * z')     (log-normal: a positive variance stays positive, and
                                                           its relative perturbation is ~ sigma, like the mean's)
    One generator seeded with ``seed`` is drawn from layer by layer in module order: same seed, same release.
    """
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    g = torch.Generator().manual_seed(seed)
    for _, m in bn_layers(model):
        assert m.running_mean is not None and m.running_var is not None
        c = m.running_mean.shape[0]
        z_mean = torch.randn(c, generator=g, dtype=torch.float64)
        z_std = torch.randn(c, generator=g, dtype=torch.float64)
        var = m.running_var.double()
        std = torch.sqrt(var + m.eps)
        m.running_mean.copy_(m.running_mean.double() + sigma * std * z_mean)
        m.running_var.copy_(var * torch.exp(2.0 * sigma * z_std))
    return model


# ---- the registered defenses ------------------------------------------------------------------------------------
def _require_bn(model: Backbone, who: str) -> None:
    try:
        bn_layers(model)
    except FrleakError:
        raise ConfigError(f"defense {who!r} post-processes BatchNorm running statistics, but "
                          f"{type(model).__name__} has none (a GroupNorm/LayerNorm model needs no such defense)"
                          ) from None


@DEFENSES.register("bn_reestimate")
@dataclasses.dataclass
class BNReestimate(Defense):
    """Re-estimate every BN running statistic on public images after training (weights untouched)

    batch_size: public batch size; None = the training batch size (seen by ``configure``), else 64. The running
    variance is an average of per-batch variances, so the batch size should match training's.
    passes: shuffled passes over the public images (1 suffices: the average converges like 1/sqrt(batches)).
    flip: mirror half the images, as training did. seed: shuffling and flips.
    """

    name: ClassVar[str] = "bn_reestimate"
    stage: ClassVar[str] = "release"
    batch_size: int | None = None
    passes: int = 1
    flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size is not None and self.batch_size < 2:
            raise self._fail("batch_size", f"must be >= 2, got {self.batch_size}")
        if self.passes < 1:
            raise self._fail("passes", f"must be >= 1, got {self.passes}")
        self._train_batch_size: int | None = None

    def configure(self, backbone_options: Any, train_config: TrainConfig) -> tuple[dict[str, Any], TrainConfig]:
        self._train_batch_size = train_config.batch_size
        return dict(backbone_options), train_config

    def finalize(self, model: Backbone, public_images: torch.Tensor | None = None) -> Backbone:
        _require_bn(model, self.name)
        images = check_public_images(public_images, model, self.name)
        bs = self.batch_size or self._train_batch_size or 64
        bs = min(bs, len(images))
        if bs < 2:
            raise self._fail("public images", "must number at least 2")
        reestimate_bn_statistics(model, images, batch_size=bs, passes=self.passes, flip=self.flip, seed=self.seed)
        n = len(images)
        self.result_ = {"public_images": n, "batch_size": bs,
                        "batches": self.passes * (n // bs + int(n % bs >= 2))}
        return model


@DEFENSES.register("bn_noise")
@dataclasses.dataclass
class BNNoise(Defense):
    """Gaussian noise on every BN running mean and (log-)std, scaled by the channel's running std (heuristic)

    sigma: relative noise scale (0.1 = a tenth of a channel's std on its mean, ~10 % on its std); the default is a
    perturbation a BN network tolerates at small utility cost; sweep it (0.03 .. 1) to trace the trade-off.
    seed: the noise draw (secret in a real release; the adaptive attacker knows sigma but not the seed).
    """

    name: ClassVar[str] = "bn_noise"
    stage: ClassVar[str] = "release"
    sigma: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise self._fail("sigma", f"must be a finite number >= 0, got {self.sigma}")

    def finalize(self, model: Backbone, public_images: torch.Tensor | None = None) -> Backbone:
        _require_bn(model, self.name)
        noise_bn_statistics(model, self.sigma, self.seed)
        return model
