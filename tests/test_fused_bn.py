"""The fused one-pass BN + statistics path (frleak.fused_bn) against the reference hook path. The kernel runs on CUDA
with Triton only: those tests skip elsewhere (the CPU CI checks the fallback; they run on a GPU machine, see
docs/scale.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from frleak import fused_bn
from frleak.features import bn_features, bn_layers
from frleak.models import create_backbone

KINDS = ("paper", "normalized", "variance", "channels")
gpu = pytest.mark.skipif(not (torch.cuda.is_available() and fused_bn.triton_available()),
                         reason="the fused kernel needs CUDA and Triton")


def _trained_like(name: str, device: str) -> torch.nn.Module:
    """A backbone with non-default BN statistics and affine parameters, as after training: random affine, running
    statistics estimated on random batches (cumulative average), so that every term of the kernel (scale, shift,
    running-mean shift) matters and activations keep a realistic scale."""
    torch.manual_seed(0)
    model = create_backbone(name).to(device)
    layers = [bn for _, bn in bn_layers(model)]
    with torch.no_grad():
        for bn in layers:
            bn.momentum = None
            if bn.weight is not None:
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.2)
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, *model.input_spec.size, device=device) * 0.5 + 0.1)
    for bn in layers:
        bn.momentum = 0.1
    return model.eval()


def test_fused_request_falls_back_to_hooks_where_it_does_not_apply() -> None:
    model = _trained_like("tiny", "cpu")
    x = torch.randn(3, 3, *model.input_spec.size)
    with torch.no_grad():
        ref, emb_ref = bn_features(model, x, KINDS, fused=False)
        got, emb = bn_features(model, x, KINDS, fused=True)  # CPU: the kernel does not apply -> hook path
    assert not fused_bn.applies(dict(bn_layers(model)), x)
    for k in KINDS:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
    torch.testing.assert_close(emb, emb_ref, rtol=0, atol=0)
    assert all("forward" not in vars(m) for m in model.modules())


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """Exact float32 convolutions: TF32 rounds conv inputs to 10 mantissa bits, which turns the last-bit differences
    between two BN implementations into ~1e-3 differences a few layers later."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@gpu
@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet18"])
def test_fused_matches_hook_path_float32(name: str, no_tf32: None) -> None:
    model = _trained_like(name, "cuda")
    named = dict(bn_layers(model))
    buffers = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in named.items()}  # type: ignore[union-attr]
    x = torch.randn(8, 3, *model.input_spec.size, device="cuda")
    with torch.no_grad():
        assert fused_bn.applies(named, x)
        ref, emb_ref = bn_features(model, x, KINDS, fused=False)
        got, emb = bn_features(model, x, KINDS, fused=None)
        plain = model(x)
    for k in KINDS:  # float32 sums in another order: relative to each kind's scale
        torch.testing.assert_close(got[k], ref[k], rtol=1e-3, atol=1e-5 * float(ref[k].abs().max()))
    torch.testing.assert_close(emb, emb_ref, rtol=1e-3, atol=1e-4)  # last-bit BN differences through the network
    torch.testing.assert_close(emb, plain, rtol=1e-3, atol=1e-4)
    # nothing of the model changed: no instance forward left, buffers bit-identical, no hooks, eval mode kept
    assert all("forward" not in vars(m) for m in model.modules())
    for n, m in named.items():
        assert torch.equal(m.running_mean, buffers[n][0]) and torch.equal(m.running_var, buffers[n][1])
        assert not m._forward_pre_hooks
    assert not model.training


@gpu
def test_fused_under_bf16_autocast_is_close_to_float32() -> None:
    model = _trained_like("iresnet18", "cuda")
    x = torch.randn(8, 3, *model.input_spec.size, device="cuda")
    with torch.no_grad():
        ref, _ = bn_features(model, x, ("paper", "normalized"), fused=False)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got, emb = bn_features(model, x, ("paper", "normalized"))
    assert torch.isfinite(emb.float()).all()
    for k in ("paper", "normalized"):
        rel = ((got[k] - ref[k]).abs() / ref[k].abs().clamp_min(1e-6)).median()
        assert rel < 0.05, (k, float(rel))


@gpu
def test_grad_mode_takes_the_differentiable_hook_path() -> None:
    model = _trained_like("tiny", "cuda")
    x = torch.randn(2, 3, *model.input_spec.size, device="cuda", requires_grad=True)
    feats, _ = bn_features(model, x, ("paper",))
    feats["paper"].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
