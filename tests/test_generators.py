"""Generators for model inversion: the shared DCGANs, StyleGAN2 in rosinality's format, ``module:factory``.

Oracles: hand-computed prior losses; batch independence (BatchNorm on running statistics); bit-identical buffers
after synthesis; a save/load round trip; W vs W+ vs Z equivalences; and, for the StyleGAN2 checkpoint format, a
(name, shape) list derived here, independently of frleak's code, from rosinality/stylegan2-pytorch's model.py.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from frleak.errors import CheckpointError, ConfigError
from frleak.generators import Generator, load_generator
from frleak.generators.stylegan2 import StyleGAN2, StyleGAN2Network
from frleak.registry import GENERATORS

torch.set_num_threads(1)

SMALL_CHANNELS = {4: 32, 8: 32, 16: 16, 32: 16}


def sg2(weights: Path | None = None, **kwargs: Any) -> StyleGAN2:
    """load_generator('stylegan2', ...) typed as StyleGAN2 (for its W-space helpers)."""
    gen = load_generator("stylegan2", weights, **kwargs)
    assert isinstance(gen, StyleGAN2)
    return gen


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---- the shared DCGANs -----------------------------------------------------------------------------------------
DCGANS = [("dcgan32_celeba", 32, "uniform"), ("dcgan64_digiface", 64, "normal")]


@pytest.mark.shared
@pytest.mark.parametrize("name,size,prior", DCGANS)
def test_shared_dcgan_images_seeds_gradients_and_frozen_state(shared: Path, name: str, size: int, prior: str) -> None:
    gen = load_generator(name)
    assert isinstance(gen, Generator) and gen.latent_shape == (100,) and gen.output_size == (size, size)
    assert gen.prior == prior and gen.weights_path is not None and Path(gen.weights_path).is_file()

    z = gen.sample_latent(4, generator=seeded(1))
    assert z.shape == (4, 100) and not z.requires_grad
    if prior == "uniform":
        assert z.min() >= -1 and z.max() <= 1
    assert torch.equal(z, gen.sample_latent(4, generator=seeded(1)))

    before = snapshot(gen)
    gen.train()  # a parent's .train() must not reach the GAN's BatchNorm layers
    z.requires_grad_(True)
    img = gen.synthesize(z)
    assert img.shape == (4, 3, size, size) and torch.isfinite(img).all()
    assert img.min() >= -1 and img.max() <= 1
    assert (img[0] - img[1]).abs().max() > 0.1  # different latents, different faces
    img.square().mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in gen.parameters())

    after = gen.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats (and all weights) untouched
    # BatchNorm uses running statistics: one face does not depend on the rest of the batch.
    with torch.no_grad():
        assert torch.allclose(gen.synthesize(z[:1].detach()), gen.synthesize(z.detach())[:1], atol=1e-6)
        again = load_generator(name).synthesize(z.detach())
    assert torch.equal(again, img.detach())  # same weights + same latent -> identical images


@pytest.mark.shared
def test_dcgan_latent_layouts_and_wrong_size(shared: Path) -> None:
    gen = load_generator("dcgan32_celeba")
    z = gen.sample_latent(2, generator=seeded(0))
    with torch.no_grad():
        assert torch.equal(gen.synthesize(z), gen.synthesize(z.view(2, 100, 1, 1)))  # original (N, nz, 1, 1) too
    with pytest.raises(ConfigError, match=r"\(2, 128\).*100"):
        gen.synthesize(torch.zeros(2, 128))
    with pytest.raises(ConfigError, match="latent"):
        gen.latent_prior_loss(torch.zeros(3, 99))


def test_prior_losses_and_projection() -> None:
    uni = load_generator("dcgan32_celeba", random_init=True, conv_dim=4)
    z = torch.zeros(2, 100)
    z[1, 0], z[1, 1] = 1.5, -3.0  # excess 0.5 and 2.0 outside [-1, 1]
    assert torch.allclose(uni.latent_prior_loss(z), torch.tensor([0.0, 0.25 + 4.0]))
    uni.project_(z)
    assert z.min() == -1 and z.max() == 1 and z[1, 0] == 1 and z[1, 1] == -1

    nrm = load_generator("dcgan64_digiface", random_init=True, ngf=4)
    z = torch.stack([torch.ones(100), torch.full((100,), 2.0)])
    assert torch.allclose(nrm.latent_prior_loss(z), torch.tensor([0.5, 2.0]))  # 0.5 * ||z||^2 / dim
    keep = z.clone()
    assert torch.equal(nrm.project_(z), keep)


def test_dcgan_random_init_is_seeded() -> None:
    a = load_generator("dcgan64_digiface", random_init=True, ngf=8, init_seed=3)
    b = load_generator("dcgan64_digiface", random_init=True, ngf=8, init_seed=3)
    c = load_generator("dcgan64_digiface", random_init=True, ngf=8, init_seed=4)
    z = a.sample_latent(2, generator=seeded(0))
    with torch.no_grad():
        assert torch.equal(a.synthesize(z), b.synthesize(z))
        assert not torch.equal(a.synthesize(z), c.synthesize(z))


# ---- checkpoint errors -----------------------------------------------------------------------------------------
def test_bad_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint \x00\x01\x02" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_generator("dcgan32_celeba", garbage)
    with pytest.raises(CheckpointError, match="not found"):
        load_generator("dcgan32_celeba", tmp_path / "absent.pt")

    wrong = tmp_path / "dcgan64.pt"  # a valid state_dict of the other DCGAN
    torch.save(load_generator("dcgan64_digiface", random_init=True, ngf=4).state_dict(), wrong)
    with pytest.raises(CheckpointError, match=r"dcgan64\.pt.*missing keys: generator_deconv.*unexpected keys: main"):
        load_generator("dcgan32_celeba", wrong)

    narrow = tmp_path / "narrow.pt"  # right names, wrong widths
    torch.save(load_generator("dcgan32_celeba", random_init=True, conv_dim=8).state_dict(), narrow)
    with pytest.raises(CheckpointError, match=r"shape mismatches: generator_deconv\.0\.0\.weight"):
        load_generator("dcgan32_celeba", narrow)


def test_pickled_objects_need_trust(tmp_path: Path) -> None:
    src = load_generator("dcgan64_digiface", random_init=True, ngf=4, init_seed=1)
    path = tmp_path / "with_args.tar"
    torch.save({"netG_state_dict": src.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="trust"):
        load_generator("dcgan64_digiface", path, ngf=4)
    loaded = load_generator("dcgan64_digiface", path, trust=True, ngf=4)
    z = src.sample_latent(2, generator=seeded(0))
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(z), src.synthesize(z))


def test_loader_errors() -> None:
    with pytest.raises(ConfigError, match="dcgan32_celeba"):
        load_generator("dcgan32_celb")  # typo -> suggestion
    with pytest.raises(ConfigError, match="options are"):
        load_generator("dcgan32_celeba", random_init=True, no_such_option=1)
    with pytest.raises(ConfigError, match="weights"):
        load_generator("stylegan2")
    assert {"dcgan32_celeba", "dcgan64_digiface", "stylegan2"} <= set(GENERATORS.names())


# ---- StyleGAN2 --------------------------------------------------------------------------------------------------
def rosinality_generator_spec(size: int, style_dim: int = 512, n_mlp: int = 8,
                              channel_multiplier: int = 2) -> dict[str, tuple[int, ...]]:
    """(name -> shape) of rosinality/stylegan2-pytorch ``model.Generator(size, style_dim, n_mlp,
    channel_multiplier).state_dict()``, written out from reading that file (commit bef283a), not from frleak:

    style = Sequential(PixelNorm, n_mlp x EqualLinear(D, D)) -> style.{1..n}.weight (D, D), .bias (D,);
    input = ConstantInput(C4) -> input.input (1, C4, 4, 4); conv1 = StyledConv(C4, C4, 3); to_rgb1 = ToRGB(C4,
    upsample=False); per resolution 2^i, i = 3..log2(size): StyledConv(in, out, 3, upsample=True),
    StyledConv(out, out, 3), ToRGB(out) (with an Upsample); noises.noise_j (1, 1, 2^((j+5)//2), same),
    j < 2 log2(size) - 3. StyledConv: conv (ModulatedConv2d: weight (1, out, in, k, k), modulation EqualLinear(D, in),
    Blur kernel (4, 4) when upsampling), noise.weight (1,), activate.bias (out,). ToRGB: conv (modulated 1x1 to 3),
    bias (1, 3, 1, 1), upsample.kernel (4, 4).
    """
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
          256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    d = style_dim
    spec: dict[str, tuple[int, ...]] = {}
    for i in range(1, n_mlp + 1):
        spec[f"style.{i}.weight"], spec[f"style.{i}.bias"] = (d, d), (d,)

    def modconv(prefix: str, cin: int, cout: int, k: int, blur: bool) -> None:
        spec[f"{prefix}.weight"] = (1, cout, cin, k, k)
        if blur:
            spec[f"{prefix}.blur.kernel"] = (4, 4)
        spec[f"{prefix}.modulation.weight"], spec[f"{prefix}.modulation.bias"] = (cin, d), (cin,)

    def styled(prefix: str, cin: int, cout: int, up: bool) -> None:
        modconv(f"{prefix}.conv", cin, cout, 3, up)
        spec[f"{prefix}.noise.weight"], spec[f"{prefix}.activate.bias"] = (1,), (cout,)

    def to_rgb(prefix: str, cin: int, up: bool) -> None:
        if up:
            spec[f"{prefix}.upsample.kernel"] = (4, 4)
        modconv(f"{prefix}.conv", cin, 3, 1, False)
        spec[f"{prefix}.bias"] = (1, 3, 1, 1)

    spec["input.input"] = (1, ch[4], 4, 4)
    styled("conv1", ch[4], ch[4], False)
    to_rgb("to_rgb1", ch[4], False)
    log_size = int(math.log2(size))
    cin = ch[4]
    for n, i in enumerate(range(3, log_size + 1)):
        styled(f"convs.{2 * n}", cin, ch[2**i], True)
        styled(f"convs.{2 * n + 1}", ch[2**i], ch[2**i], False)
        to_rgb(f"to_rgbs.{n}", ch[2**i], True)
        cin = ch[2**i]
    for j in range((log_size - 2) * 2 + 1):
        res = 2 ** ((j + 5) // 2)
        spec[f"noises.noise_{j}"] = (1, 1, res, res)
    return spec


@pytest.mark.parametrize("size", [256, 1024])
def test_stylegan2_state_dict_matches_rosinality_format(size: int) -> None:
    net = StyleGAN2Network(size, style_dim=512, n_mlp=8, channel_multiplier=2)  # built, never run
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = rosinality_generator_spec(size)
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
    assert net.n_latent == 2 * int(math.log2(size)) - 2


def small_stylegan2(tmp_path: Path, *, latent_avg: bool = True) -> tuple[StyleGAN2, Path]:
    """A random small StyleGAN2 with non-zero noise strengths and biases, saved as {'g_ema', 'latent_avg'}."""
    src = sg2(random_init=True, init_seed=5, size=32, style_dim=64, n_mlp=2, channels=SMALL_CHANNELS)
    state = src.state_dict()
    gen = seeded(9)
    for k in state:  # random init leaves these at 0; make every path of the network matter
        if k.endswith("noise.weight") or k.endswith("activate.bias") or k.endswith("rgb1.bias") or (
                k.startswith("to_rgbs.") and k.endswith(".bias") and "modulation" not in k):
            state[k] = 0.3 * torch.randn(state[k].shape, generator=gen)
    state = {k[len("net."):]: v for k, v in state.items()}
    src.net.load_state_dict(state)
    ckpt: dict[str, object] = {"g_ema": state}
    if latent_avg:
        ckpt["latent_avg"] = torch.randn(64, generator=gen)
    path = tmp_path / "sg2_small.pt"
    torch.save(ckpt, path)
    return src, path


def test_stylegan2_round_trip_is_bit_identical(tmp_path: Path) -> None:
    src, path = small_stylegan2(tmp_path)
    loaded = sg2(path)  # config read off the checkpoint
    assert loaded.output_size == (32, 32) and loaded.latent_shape == (8, 64)  # W+: 2 * log2(32) - 2 layers
    assert torch.equal(loaded.get_w_avg(), torch.load(path)["latent_avg"])
    w = loaded.sample_latent(3, generator=seeded(2))
    w = w + 0.5 * torch.randn(w.shape, generator=seeded(3))  # distinct styles per layer
    with torch.no_grad():
        a, b = src.synthesize(w), loaded.synthesize(w)
    assert torch.equal(a, b) and a.shape == (3, 3, 32, 32)
    assert a.min() >= -1 and a.max() <= 1
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(w), b)  # fixed noise: same latent, same image


def test_stylegan2_latent_spaces_agree(tmp_path: Path) -> None:
    _, path = small_stylegan2(tmp_path)
    gz = sg2(path, latent_space="z", truncation_psi=0.7)
    gw = sg2(path, latent_space="w", truncation_psi=0.7)
    gp = sg2(path, latent_space="w+", truncation_psi=0.7)
    z = gz.sample_latent(2, generator=seeded(4))
    w = gw.sample_latent(2, generator=seeded(4))  # same z, mapped and truncated
    wp = gp.sample_latent(2, generator=seeded(4))
    assert z.shape == (2, 64) and w.shape == (2, 64) and wp.shape == (2, 8, 64)
    w_avg = gw.get_w_avg()
    assert torch.allclose(w, w_avg + 0.7 * (gw.net.mapping(z) - w_avg), atol=1e-6)
    assert torch.equal(wp, w.unsqueeze(1).expand(-1, 8, -1))
    with torch.no_grad():
        iz, iw, ip = gz.synthesize(z), gw.synthesize(w), gp.synthesize(wp)
    assert torch.allclose(iz, iw, atol=1e-5) and torch.allclose(iw, ip, atol=1e-5)

    # psi = 0 collapses every sample onto w_avg; the W prior loss is the distance to it
    g0 = sg2(path, latent_space="w", truncation_psi=0.0)
    w0 = g0.sample_latent(3, generator=seeded(5))
    assert torch.allclose(w0, w_avg.expand(3, -1)) and torch.allclose(g0.latent_prior_loss(w0), torch.zeros(3))
    shifted = w_avg + 2.0
    assert torch.allclose(g0.latent_prior_loss(shifted[None]), torch.tensor([4.0]))
    with pytest.raises(ConfigError, match=r"\(2, 8, 64\)"):
        gw.synthesize(wp)  # W+ latent given to a W generator


def test_stylegan2_noise_modes(tmp_path: Path) -> None:
    _, path = small_stylegan2(tmp_path)
    w = sg2(path).sample_latent(2, generator=seeded(1))
    with torch.no_grad():
        const = sg2(path).synthesize(w)
        zero = sg2(path, noise_mode="zero").synthesize(w)
        rnd = sg2(path, noise_mode="random")
        r1, r2 = rnd.synthesize(w), rnd.synthesize(w)
    assert not torch.equal(const, zero)  # noise strengths are non-zero in this checkpoint
    assert not torch.equal(r1, r2)
    with pytest.raises(ConfigError, match="noise_mode"):
        sg2(path, noise_mode="fixed")


def test_stylegan2_w_avg_estimated_when_absent(tmp_path: Path) -> None:
    _, path = small_stylegan2(tmp_path, latent_avg=False)
    a = sg2(path, latent_space="w", w_avg_samples=2000, w_avg_seed=7)
    b = sg2(path, latent_space="w", w_avg_samples=2000, w_avg_seed=7)
    assert torch.equal(a.get_w_avg(), b.get_w_avg()) and "estimated" in a.w_avg_source
    with torch.no_grad():
        oracle = a.net.mapping(torch.randn(2000, 64, generator=seeded(7))).mean(0)
    assert torch.allclose(a.get_w_avg(), oracle, atol=1e-5)


def test_stylegan2_gradients_reach_w_plus_and_weights_stay(tmp_path: Path) -> None:
    _, path = small_stylegan2(tmp_path)
    gen = sg2(path)
    before = snapshot(gen)
    w = gen.sample_latent(2, generator=seeded(0)).requires_grad_(True)
    loss = gen.synthesize(w).square().mean() + 0.1 * gen.latent_prior_loss(w).sum()
    loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and (w.grad.abs().sum((0, 2)) > 0).all()
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in before.items())
    assert all(not p.requires_grad for p in gen.parameters())


def test_stylegan2_checkpoint_errors(tmp_path: Path) -> None:
    _, path = small_stylegan2(tmp_path)
    ckpt = torch.load(path)
    with pytest.raises(ConfigError, match="size=64.*size=32"):
        sg2(path, size=64)
    broken = dict(ckpt["g_ema"])
    del broken["convs.3.noise.weight"]
    torch.save({"g_ema": broken}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken\.pt.*missing keys: convs\.3\.noise\.weight"):
        load_generator("stylegan2", tmp_path / "broken.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt.*g_ema"):
        load_generator("stylegan2", tmp_path / "other.pt")


# ---- module:factory ---------------------------------------------------------------------------------------------
def tiny_factory(nz: int = 8, size: int = 8, sigmoid: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(nz, 3 * size * size), nn.Sigmoid() if sigmoid else nn.Tanh(),
                         nn.Unflatten(1, (3, size, size)))


def flat_factory() -> nn.Module:
    return nn.Linear(8, 10)  # not an image generator


def test_module_factory_generator(tmp_path: Path) -> None:
    spec = f"{__name__}:tiny_factory"
    gen = load_generator(spec, latent_shape=(8,), nz=8, size=8)
    assert gen.output_size == (8, 8) and gen.latent_shape == (8,) and gen.name == spec
    z = gen.sample_latent(3, generator=seeded(0)).requires_grad_(True)
    img = gen.synthesize(z)
    assert img.shape == (3, 3, 8, 8) and img.min() >= -1 and img.max() <= 1
    img.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0 and all(not p.requires_grad for p in gen.parameters())

    sig = load_generator(spec, latent_shape=(8,), output_range=(0.0, 1.0), sigmoid=True)
    with torch.no_grad():
        raw = tiny_factory(sigmoid=True)(z.detach())
        assert torch.allclose(sig.synthesize(z.detach()), raw * 2 - 1)

    src = tiny_factory(nz=8, size=8)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "tiny.pt")
    loaded = load_generator(spec, tmp_path / "tiny.pt", latent_shape=(8,))
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(z.detach()), src(z.detach()))


def test_module_factory_errors() -> None:
    with pytest.raises(ConfigError, match="no_such_pkg_xyz"):
        load_generator("no_such_pkg_xyz.gen:make", latent_shape=(8,))
    with pytest.raises(ConfigError, match="no attribute 'missing_factory'"):
        load_generator(f"{__name__}:missing_factory", latent_shape=(8,))
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\).*\(2, 10\)"):
        load_generator(f"{__name__}:flat_factory", latent_shape=(8,))
    with pytest.raises(ConfigError, match="latent_shape"):
        load_generator(f"{__name__}:tiny_factory", latent_shape=(5,))  # the module wants 8
    with pytest.raises(ConfigError, match="latent_shape"):
        load_generator(f"{__name__}:tiny_factory")
    gen = load_generator(f"{__name__}:tiny_factory", latent_shape=(8,))
    with pytest.raises(ConfigError, match=r"expected \(N, 8\)"):
        gen.synthesize(torch.zeros(2, 128))


# ---- StyleGAN2's plain-PyTorch ops against independent formulations --------------------------------------------
@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2, 2, 1)), (2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)),
                                         (2, 1, (-1, 0, 0, -1))])
def test_upfirdn2d_matches_scipy(up: int, down: int, pad: tuple[int, int, int, int]) -> None:
    import numpy as np
    from scipy.signal import convolve2d

    from frleak.generators.stylegan2 import upfirdn2d

    x = torch.randn(2, 3, 5, 6, generator=seeded(0), dtype=torch.float64)
    k = torch.randn(4, 3, generator=seeded(1), dtype=torch.float64)  # asymmetric: catches a missing flip
    got = upfirdn2d(x, k, up=up, down=down, pad=pad).numpy()
    x0, x1, y0, y1 = pad
    for n in range(2):
        for c in range(3):
            a = np.zeros((5 * up, 6 * up))
            a[::up, ::up] = x[n, c].numpy()
            a = np.pad(a, ((max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
            a = a[max(-y0, 0):a.shape[0] - max(-y1, 0), max(-x0, 0):a.shape[1] - max(-x1, 0)]
            want = convolve2d(a, k.numpy(), mode="valid")[::down, ::down]
            np.testing.assert_allclose(got[n, c], want, atol=1e-10)


@pytest.mark.parametrize("upsample", [False, True])
def test_modulated_conv_matches_per_sample_weights(upsample: bool) -> None:
    """Karras et al. 2020, Eq. 1-3: w'_ijk = s_i w_ijk, w''_ijk = w'_ijk / sqrt(sum_ik w'^2 + eps), one conv per
    sample; frleak scales activations instead, which must give the same result."""
    import torch.nn.functional as F

    from frleak.generators.stylegan2 import ModulatedConv2d

    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, style_dim=7, upsample=upsample).double()
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    style = torch.randn(3, 7, dtype=torch.float64)
    got = conv(x, style)
    s = F.linear(style, conv.modulation.weight / math.sqrt(7), conv.modulation.bias)
    outs = []
    for n in range(3):
        w = conv.weight[0] / math.sqrt(6 * 9) * s[n].view(1, 6, 1, 1)
        w = w / torch.sqrt(w.pow(2).sum((1, 2, 3), keepdim=True) + 1e-8)
        if upsample:
            outs.append(conv.blur(F.conv_transpose2d(x[n:n + 1], w.transpose(0, 1), stride=2)))
        else:
            outs.append(F.conv2d(x[n:n + 1], w, padding=1))
    want = torch.cat(outs)
    assert got.shape == want.shape == (3, 5, 8 if upsample else 4, 8 if upsample else 4)
    assert torch.allclose(got, want, atol=1e-10)


def test_skip_upsample_keeps_constant_images_constant() -> None:
    from frleak.generators.stylegan2 import Upsample

    up = Upsample((1, 3, 3, 1))
    out = up(torch.full((1, 3, 6, 6), 0.5))
    assert out.shape == (1, 3, 12, 12)
    assert torch.allclose(out[:, :, 2:-2, 2:-2], torch.full_like(out[:, :, 2:-2, 2:-2], 0.5))  # DC gain 1
