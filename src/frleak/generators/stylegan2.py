"""StyleGAN2 generator (Karras et al., CVPR 2020, "Analyzing and Improving the Image Quality of StyleGAN") in plain
PyTorch ops, with the state_dict layout of rosinality/stylegan2-pytorch's ``model.Generator``.

That layout is what most public PyTorch StyleGAN2 face checkpoints use (rosinality's ``convert_weight.py`` turns
NVIDIA's official TF pickles, e.g. FFHQ config-f 256/1024, into ``{'g_ema': state_dict, 'latent_avg': (512,)}``;
its ``train.py`` saves ``{'g', 'd', 'g_ema', 'g_optim', 'd_optim', 'args', 'ada_aug_p'}``). No custom CUDA ops:
modulated convolution, the biased leaky ReLU and the FIR up-sampling (``upfirdn2d``) are written with ``conv2d``,
``conv_transpose2d`` and ``pad``, so the same code runs on CPU and GPU and is differentiable to any order.

Architecture (size S = 2^L, style_dim D, ``n_latent`` = 2L - 2 style inputs):

* mapping: z (N, D) -> PixelNorm -> n_mlp x [EqualLinear(D, D, lr_mul=lr_mlp) + leaky ReLU(0.2) * sqrt(2)] -> w;
* synthesis: a learned constant (1, C4, 4, 4); StyledConv 3x3 at 4x4 and ToRGB; then for each resolution 8..S an
  up-sampling StyledConv (transposed 3x3, stride 2, then a [1,3,3,1] blur), a StyledConv 3x3 and a ToRGB whose
  output is added to the 2x up-sampled (FIR [1,3,3,1]) running RGB skip image;
* StyledConv = modulated conv (per-sample input scaling by an affine map of w, weight demodulation) + per-pixel
  noise * learned strength + bias + leaky ReLU(0.2) * sqrt(2). ToRGB = modulated 1x1 conv without demodulation
  + bias.

Equalised learning rate: stored weights are N(0, 1) (divided by lr_mul in the mapping) and scaled at run time by
lr_mul / sqrt(fan_in), exactly as in the checkpoints, so converted weights load unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frleak.errors import CheckpointError, ConfigError
from frleak.generators.base import Generator, load_state_dict_strict, unwrap_state_dict, w_prior_loss
from frleak.io import safe_torch_load
from frleak.registry import GENERATORS

LATENT_SPACES = ("z", "w", "w+")
NOISE_MODES = ("const", "zero", "random")
STATE_KEYS = ("g_ema", "g", "state_dict")
# rosinality's channel table: resolutions up to 32 have 512 channels, above that the width halves per octave and is
# multiplied by channel_multiplier (2 = NVIDIA's config-f, 1 = config-e).
_BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16, 2048: 8}


def stylegan2_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """Channels per resolution 4..size as rosinality's ``Generator.channels``."""
    return {r: c * (channel_multiplier if r >= 64 else 1) for r, c in _BASE_CHANNELS.items() if r <= size}


# ---- pure ops ----------------------------------------------------------------------------------------------------
def make_fir_kernel(taps: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """Separable 2-D FIR kernel: outer product of ``taps`` normalised to sum 1, times ``gain``. (K, K)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum() * gain


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int, int, int] = (0, 0, 0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, filter with the FIR ``kernel`` (true convolution), downsample by striding.

    x: (N, C, H, W); kernel: (kh, kw); pad = (x0, x1, y0, y1), negative values crop. The result has height
    ``(H * up + y0 + y1 - kh) // down + 1`` (same for the width), as NVIDIA's ``upfirdn_2d``.
    """
    n, c, h, w = x.shape
    if up > 1:
        stuffed = x.new_zeros(n, c, h * up, w * up)
        stuffed[:, :, ::up, ::up] = x  # each sample followed by up - 1 zeros in both directions
        x = stuffed
    x = F.pad(x, list(pad))
    kh, kw = kernel.shape
    weight = kernel.flip([0, 1]).to(x.dtype).reshape(1, 1, kh, kw)  # flip: convolution, not correlation
    hh, ww = x.shape[-2:]
    x = F.conv2d(x.reshape(n * c, 1, hh, ww), weight).reshape(n, c, hh - kh + 1, ww - kw + 1)
    return x[:, :, ::down, ::down] if down > 1 else x


def biased_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, slope: float = 0.2,
                      gain: float = math.sqrt(2.0)) -> torch.Tensor:
    """StyleGAN's "fused" bias + leaky ReLU: ``leaky_relu(x + bias, slope) * gain``, bias per channel (dim 1)."""
    if bias is not None:
        x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, slope) * gain


# ---- layers (attribute names = rosinality's state_dict names) ----------------------------------------------------
class PixelNorm(nn.Module):
    """Normalise each latent to unit RMS over the channel dim (dim 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: ``x @ (weight * lr_mul / sqrt(in)).T + bias * lr_mul``.

    weight (out, in), bias (out,); ``activate`` adds the biased leaky ReLU (the mapping network's layers)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return biased_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    """FIR filter with fixed padding (buffer ``kernel``, stored in checkpoints)."""

    kernel: torch.Tensor

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], gain: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel(taps, gain))
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=(self.pad[0], self.pad[1], self.pad[0], self.pad[1]))


class Upsample(nn.Module):
    """2x FIR up-sampling of the RGB skip image (buffer ``kernel`` = normalised FIR * 4 to keep the DC gain)."""

    kernel: torch.Tensor

    def __init__(self, taps: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.register_buffer("kernel", make_fir_kernel(taps, factor**2))
        self.factor = factor
        p = len(taps) - factor  # total padding so that the output is exactly factor * input
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad
        return upfirdn2d(x, self.kernel, up=self.factor, pad=(p0, p1, p0, p1))


class ModulatedConv2d(nn.Module):
    """Modulated convolution: weight (1, out, in, k, k); style (N, D) -> per-input-channel scales s (N, in) by
    ``modulation`` (bias initialised to 1); demodulation divides each output channel by ``||w * s||``.

    Computed as conv(x * s, w) * d (mathematically the per-sample-weight conv of the paper, Eq. 1-3, without
    grouped convolutions): the modulation acts on input channels, so it can scale the activations instead.
    With ``upsample``: transposed 3x3 conv with stride 2 then a [1,3,3,1] blur (gain 4), output 2H x 2W.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            factor = 2
            # transposed conv gives 2H + k - 2 pixels; the blur of length len(blur_kernel) must trim it to 2H
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), gain=factor**2)
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        s = self.modulation(style)  # (N, in)
        weight = self.weight[0] * self.scale  # (out, in, k, k)
        x = x * s.reshape(n, -1, 1, 1)
        if self.upsample:
            x = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # ||w_o * s||^2 = sum_i s_i^2 * sum_{kh,kw} w_{o,i}^2 -> (N, out) without building per-sample weights
            d = torch.rsqrt(s.pow(2) @ weight.pow(2).sum((2, 3)).t() + 1e-8)
            x = x * d.reshape(n, -1, 1, 1)
        return x


class NoiseInjection(nn.Module):
    """Adds ``weight * noise`` (weight (1,), a learned per-layer strength)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return x if noise is None else x + self.weight * noise


class BiasLeakyReLU(nn.Module):
    """Per-channel bias (``bias`` (C,)) + leaky ReLU(0.2) * sqrt(2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return biased_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = BiasLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, n: int) -> torch.Tensor:
        return self.input.expand(n, -1, -1, -1)


class StyleGAN2Network(nn.Module):
    """The bare network; ``state_dict()`` keys and shapes equal rosinality's ``Generator(size, style_dim, n_mlp,
    channel_multiplier)``: ``style.{1..n_mlp}``, ``input.input``, ``conv1``, ``to_rgb1``, ``convs.{0..2(L-2)-1}``,
    ``to_rgbs.{0..L-3}``, ``noises.noise_{0..2L-4}`` (L = log2(size)).

    ``channels`` overrides the per-resolution width table (e.g. narrow test networks); default
    :func:`stylegan2_channels`. Parameters are drawn from the global torch RNG like rosinality's (seed it, or use
    the ``stylegan2`` factory's ``init_seed``).
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), lr_mlp: float = 0.01,
                 channels: Mapping[int, int] | None = None) -> None:
        super().__init__()
        log_size = int(round(math.log2(size))) if size > 0 else 0
        if size < 4 or 2**log_size != size:
            raise ConfigError(f"stylegan2: size must be a power of two >= 4, got {size}")
        table = dict(channels) if channels is not None else stylegan2_channels(size, channel_multiplier)
        missing = [2**i for i in range(2, log_size + 1) if 2**i not in table]
        if missing:
            raise ConfigError(f"stylegan2: channels has no width for resolutions {missing}")
        self.size, self.style_dim, self.n_mlp, self.lr_mlp = size, style_dim, n_mlp, lr_mlp
        self.log_size = log_size
        self.channels = {2**i: int(table[2**i]) for i in range(2, log_size + 1)}
        self.num_layers = (log_size - 2) * 2 + 1  # styled convs = noise inputs
        self.n_latent = log_size * 2 - 2  # styled convs + ToRGBs that take a style of their own

        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True)
                                                  for _ in range(n_mlp)])
        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = 2 ** ((i + 5) // 2)  # noise 0 at 4x4, then two per resolution
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_ch = c4
        for i in range(3, log_size + 1):
            out_ch = self.channels[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) -> w (N, D)."""
        return self.style(z)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """ws (N, n_latent, D) -> raw RGB (N, 3, size, size) (not clamped).

        noise_mode: ``"const"`` the stored ``noises.noise_i`` buffers (rosinality ``randomize_noise=False``),
        ``"zero"`` no noise, ``"random"`` fresh N(0, 1) noise per call (the same latent then varies)."""
        n = ws.shape[0]
        noises = [self._noise(i, n, noise_mode, ws) for i in range(self.num_layers)]
        x = self.conv1(self.input(n), ws[:, 0], noises[0])
        skip = self.to_rgb1(x, ws[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * j](x, ws[:, 1 + 2 * j], noises[1 + 2 * j])
            x = self.convs[2 * j + 1](x, ws[:, 2 + 2 * j], noises[2 + 2 * j])
            skip = to_rgb(x, ws[:, 3 + 2 * j], skip)
        return skip

    def _noise(self, i: int, n: int, mode: str, like: torch.Tensor) -> torch.Tensor | None:
        buf: torch.Tensor = getattr(self.noises, f"noise_{i}")
        if mode == "const":
            return buf
        if mode == "zero":
            return None
        if mode == "random":
            return torch.randn(n, 1, *buf.shape[-2:], device=like.device, dtype=like.dtype)
        raise ConfigError(f"stylegan2: noise_mode must be one of {NOISE_MODES}, got {mode!r}")


def infer_config(state: Mapping[str, Any]) -> dict[str, Any]:
    """Read size, style_dim, n_mlp and the channel table off a rosinality-format state_dict's key shapes."""
    try:
        style_dim = int(state["conv1.conv.modulation.weight"].shape[1])
        n_mlp = sum(1 for k in state if re.fullmatch(r"style\.\d+\.weight", k))
        n_rgb = sum(1 for k in state if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
        channels = {4: int(state["input.input"].shape[1])}
        for j in range(n_rgb):
            channels[2 ** (j + 3)] = int(state[f"to_rgbs.{j}.conv.weight"].shape[2])
    except (KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"not a rosinality-format StyleGAN2 generator state_dict (missing {exc})") from None
    return {"size": 2 ** (n_rgb + 2), "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}


class StyleGAN2(Generator):
    """StyleGAN2 behind the :class:`Generator` interface.

    latent_space: ``"z"`` (N, D) ~ N(0, I), mapped and truncated inside :meth:`synthesize`; ``"w"`` (N, D) one
    style for every layer; ``"w+"`` (N, n_latent, D) one style per layer (the usual space for inversion). For W and
    W+, :meth:`sample_latent` maps z ~ N(0, I) and applies the truncation ``w_avg + psi * (w - w_avg)``; the
    prior loss is the squared distance to ``w_avg`` per dimension. ``w_avg`` comes from the checkpoint's
    ``latent_avg`` or, lazily, from the mean of ``w_avg_samples`` mapped z (seed ``w_avg_seed``).
    Images are clamped to [-1, 1] with a straight-through gradient (identity), so gradients never vanish.
    """

    w_avg: torch.Tensor
    net: StyleGAN2Network

    def __init__(self, net: StyleGAN2Network, *, latent_space: str = "w+", truncation_psi: float = 1.0,
                 noise_mode: str = "const", w_avg: torch.Tensor | None = None, w_avg_samples: int = 10_000,
                 w_avg_seed: int = 0) -> None:
        super().__init__()
        if latent_space not in LATENT_SPACES:
            raise ConfigError(f"stylegan2: latent_space must be one of {LATENT_SPACES}, got {latent_space!r}")
        if noise_mode not in NOISE_MODES:
            raise ConfigError(f"stylegan2: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if not 0.0 <= float(truncation_psi) <= 1.0:
            raise ConfigError(f"stylegan2: truncation_psi must be in [0, 1], got {truncation_psi}")
        if w_avg_samples < 1:
            raise ConfigError(f"stylegan2: w_avg_samples must be >= 1, got {w_avg_samples}")
        self.net = net
        d = net.style_dim
        self.name, self.latent_space, self.noise_mode = "stylegan2", latent_space, noise_mode
        self.truncation_psi, self.w_avg_samples, self.w_avg_seed = float(truncation_psi), w_avg_samples, w_avg_seed
        self.output_size = (net.size, net.size)
        self.latent_shape = (net.n_latent, d) if latent_space == "w+" else (d,)
        self.prior = "normal" if latent_space == "z" else "w"
        # Not persistent: the network's state_dict stays exactly rosinality's; w_avg travels with .to(device).
        self.register_buffer("w_avg", torch.zeros(d), persistent=False)
        self.w_avg_source = "unset"
        if w_avg is not None:
            self.set_w_avg(w_avg, "checkpoint latent_avg")

    # ---- W statistics --------------------------------------------------------------------------------------
    def set_w_avg(self, w_avg: torch.Tensor, source: str) -> None:
        w_avg = torch.as_tensor(w_avg, dtype=torch.float32)
        if w_avg.shape[-1] != self.net.style_dim:
            raise CheckpointError(f"{source}: latent_avg has shape {tuple(w_avg.shape)}, expected last dim "
                                  f"{self.net.style_dim} (style_dim)")
        self.w_avg.copy_(w_avg.reshape(-1, self.net.style_dim).mean(0))  # (D,), (1, D) and (L, D) all accepted
        self.w_avg_source = source

    @torch.no_grad()
    def get_w_avg(self) -> torch.Tensor:
        """Mean style vector (D,); estimated on first use when the checkpoint had none (seeded, deterministic)."""
        if self.w_avg_source == "unset":
            g = torch.Generator().manual_seed(self.w_avg_seed)
            total = torch.zeros(self.net.style_dim, dtype=torch.float64, device=self.device)
            for start in range(0, self.w_avg_samples, 1000):
                m = min(1000, self.w_avg_samples - start)
                z = torch.randn(m, self.net.style_dim, generator=g).to(self.device)
                total += self.net.mapping(z).double().sum(0)
            self.w_avg.copy_((total / self.w_avg_samples).float())
            self.w_avg_source = f"estimated from {self.w_avg_samples} z samples (seed {self.w_avg_seed})"
        return self.w_avg

    def truncate(self, w: torch.Tensor) -> torch.Tensor:
        """Truncation trick: ``w_avg + psi * (w - w_avg)`` (identity for psi = 1)."""
        if self.truncation_psi == 1.0:
            return w
        w_avg = self.get_w_avg()
        return w_avg + self.truncation_psi * (w - w_avg)

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) -> truncated w (N, D)."""
        return self.truncate(self.net.mapping(z))

    # ---- interface -----------------------------------------------------------------------------------------
    def sample_latent(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self._sample_z(n, generator)
        if self.latent_space == "z":
            return z
        with torch.no_grad():
            w = self.mapping(z)
        return w.unsqueeze(1).repeat(1, self.net.n_latent, 1) if self.latent_space == "w+" else w

    def _sample_z(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        if n < 0:
            raise ConfigError(f"sample_latent: n must be >= 0, got {n}")
        dev = generator.device if generator is not None else self.device
        return torch.randn(n, self.net.style_dim, generator=generator, device=dev).to(self.device)

    def _synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        if self.latent_space == "z":
            latent = self.mapping(latent)
        if latent.ndim == 2:  # z or w: the same style for every layer
            latent = latent.unsqueeze(1).expand(-1, self.net.n_latent, -1)
        img = self.net.synthesis(latent, self.noise_mode)
        return img + (img.clamp(-1.0, 1.0) - img).detach()  # values in [-1, 1], gradient of the identity

    def latent_prior_loss(self, latent: torch.Tensor) -> torch.Tensor:
        if self.latent_space == "z":
            return super().latent_prior_loss(latent)
        return w_prior_loss(self.check_latent(latent), self.get_w_avg())

    def project_(self, latent: torch.Tensor) -> torch.Tensor:
        return latent  # neither N(0, I) nor W has a hard boundary

    def extra_repr(self) -> str:
        return super().extra_repr() + f", latent_space={self.latent_space!r}, psi={self.truncation_psi}, " \
               f"noise_mode={self.noise_mode!r}"


@GENERATORS.register("stylegan2")
def stylegan2(weights: str | Path | None = None, *, trust: bool = False, size: int | None = None,
              style_dim: int | None = None, n_mlp: int | None = None, channel_multiplier: int | None = None,
              channels: Mapping[int, int] | None = None, lr_mlp: float = 0.01, latent_space: str = "w+",
              truncation_psi: float = 1.0, noise_mode: str = "const", w_avg_samples: int = 10_000,
              w_avg_seed: int = 0, random_init: bool = False, init_seed: int = 0) -> StyleGAN2:
    """StyleGAN2 (rosinality-format checkpoint: {'g_ema', 'latent_avg'}); Z / W / W+ latents, truncation"""
    given = {"size": size, "style_dim": style_dim, "n_mlp": n_mlp}
    if weights is None:
        if not random_init:
            raise ConfigError("stylegan2 needs weights=PATH to a rosinality-format checkpoint ({'g_ema': ..., "
                              "'latent_avg': ...}); pass random_init=True (with size=...) for an untrained network")
        if size is None:
            raise ConfigError("stylegan2: random_init=True needs size=...")
        with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG stream alone
            torch.manual_seed(init_seed)
            net = StyleGAN2Network(size, style_dim or 512, 8 if n_mlp is None else n_mlp,
                                   2 if channel_multiplier is None else channel_multiplier, lr_mlp=lr_mlp,
                                   channels=channels)
        model = StyleGAN2(net, latent_space=latent_space, truncation_psi=truncation_psi, noise_mode=noise_mode,
                          w_avg_samples=w_avg_samples, w_avg_seed=w_avg_seed)
        return model.freeze()  # type: ignore[return-value]
    if random_init:
        raise ConfigError("stylegan2: pass either weights=... or random_init=True, not both")

    obj = safe_torch_load(weights, trust=trust)
    state = unwrap_state_dict(obj, weights, STATE_KEYS)
    try:
        found = infer_config(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{weights}: {exc}") from None
    for key, value in given.items():
        if value is not None and value != found[key]:
            raise ConfigError(f"stylegan2: {key}={value} was given but {weights} holds a {key}={found[key]} "
                              "generator; leave it out to use the checkpoint's")
    expected = dict(channels) if channels is not None else (
        stylegan2_channels(found["size"], channel_multiplier) if channel_multiplier is not None else None)
    if expected is not None and {r: expected.get(r) for r in found["channels"]} != found["channels"]:
        raise ConfigError(f"stylegan2: the channel widths asked for ({expected}) differ from {weights}'s "
                          f"({found['channels']}); leave channel_multiplier/channels out to use the checkpoint's")
    with torch.device("meta"):  # no point drawing random weights that the checkpoint replaces
        net = StyleGAN2Network(found["size"], found["style_dim"], found["n_mlp"], lr_mlp=lr_mlp,
                               channels=found["channels"])
    net = net.to_empty(device="cpu")
    load_state_dict_strict(net, state, weights)
    w_avg = obj.get("latent_avg") if isinstance(obj, Mapping) and state is not obj else None
    if w_avg is not None and not isinstance(w_avg, torch.Tensor):
        raise CheckpointError(f"{weights}: 'latent_avg' is a {type(w_avg).__name__}, expected a tensor")
    model = StyleGAN2(net, latent_space=latent_space, truncation_psi=truncation_psi, noise_mode=noise_mode,
                      w_avg=w_avg, w_avg_samples=w_avg_samples, w_avg_seed=w_avg_seed)
    model.weights_path = str(weights)
    return model.freeze()  # type: ignore[return-value]
