"""Fused BatchNorm + statistics on CUDA: the eval-mode BN and the per-sample channel statistics of its input in ONE
pass over the input (Triton), so that extraction costs about what a plain forward pass costs.

Why: with forward-pre-hooks every BN input (N, C, H, W) is read twice, once by the BN kernel and once more by the
hook's reduction. On a GPU those element-wise passes are bandwidth-bound, and the second read cost 17-40 % on an H100
(MobileFaceNet / IResNet-50 at 112x112, batch 256; ``torch.compile`` does not fuse the reduction into the BN kernel
either: 1.25-1.40x its own compiled forward). Here one kernel reads each input element once, writes the BN output
(the same value BN computes: ``x * a + b`` with ``a = w / sqrt(s^2 + eps)``, ``b = bias - u * a``) and accumulates, per
(sample, channel) row, the sum and the sum of squares of ``x - u`` (shifted by the running mean ``u``: the
difference the paper's distance needs comes out directly and the variance has no catastrophic cancellation).

Used by :func:`frleak.features.bn_features` when the model is on a CUDA device, gradients are off, Triton is
importable and the input of a layer is a contiguous 4-d tensor; every other case (CPU, stage 2's differentiable
extraction, BatchNorm1d, channels-last inputs, training mode) takes the hook path. The module's ``forward`` is
replaced by an instance attribute for the duration of one forward pass and deleted afterwards (nothing else of the
module is touched: buffers, hooks and mode stay as they were).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

Stats = tuple[torch.Tensor, torch.Tensor | None]


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when Triton can be imported (CUDA builds of PyTorch ship it; the CPU wheel does not)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _kernel() -> Any:  # noqa: ANN401 - a Triton JIT function
    import triton
    import triton.language as tl

    @triton.jit
    def bn_stats_kernel(x_ptr, y_ptr, a_ptr, b_ptr, u_ptr, s1_ptr, s2_ptr, rows_total, channels, hw,  # noqa: ANN001
                        ROWS: tl.constexpr, BLOCK: tl.constexpr):
        # one program: ROWS consecutive (sample, channel) rows of the contiguous (N*C, H*W) view, looped over H*W
        pid = tl.program_id(0)
        rows = pid * ROWS + tl.arange(0, ROWS)
        row_ok = rows < rows_total
        ch = rows % channels
        a = tl.load(a_ptr + ch, mask=row_ok, other=0.0)
        b = tl.load(b_ptr + ch, mask=row_ok, other=0.0)
        u = tl.load(u_ptr + ch, mask=row_ok, other=0.0)
        acc1 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        acc2 = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        base = rows.to(tl.int64)[:, None] * hw
        for start in range(0, hw, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            ok = row_ok[:, None] & (cols[None, :] < hw)
            offs = base + cols[None, :]
            x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            tl.store(y_ptr + offs, (x * a[:, None] + b[:, None]).to(y_ptr.dtype.element_ty), mask=ok)
            d = tl.where(ok, x - u[:, None], 0.0)
            acc1 += d
            acc2 += d * d
        tl.store(s1_ptr + rows, tl.sum(acc1, axis=1), mask=row_ok)
        tl.store(s2_ptr + rows, tl.sum(acc2, axis=1), mask=row_ok)

    return bn_stats_kernel


def _tile(hw: int) -> tuple[int, int]:
    """(ROWS, BLOCK): BLOCK covers up to 1024 spatial positions of a row, ROWS fills a tile of ~2048 elements (small
    late-stage maps such as 7x7 get many rows per program instead of one nearly empty program per row)."""
    block = min(1024, max(16, 1 << (hw - 1).bit_length()))
    return max(1, 2048 // block), block


class LayerParams:
    """Per-layer kernel constants of all BN layers at once: scale a = w / sqrt(s^2 + eps), shift b = bias - u * a and
    the running mean u, each (C_i,) float32, computed with a handful of batched kernels (not several per layer: on a
    GPU the launches of tiny per-layer ops cost more than the arithmetic)."""

    def __init__(self, named: Mapping[str, nn.Module], device: torch.device) -> None:
        mods: list[Any] = list(named.values())  # BN modules (their buffers are typed Tensor | Module)
        widths = [int(m.running_mean.numel()) for m in mods]
        rm = torch.cat([m.running_mean.reshape(-1) for m in mods]).to(device, torch.float32)
        rv = torch.cat([m.running_var.reshape(-1) for m in mods]).to(device, torch.float32)
        # no host-to-device copy here or below: from pageable memory it synchronises the stream, which stalls the
        # queue of kernel launches that keeps a GPU busy (it cost more than the whole extraction)
        eps_values = {float(m.eps) for m in mods}
        eps: float | torch.Tensor = (eps_values.pop() if len(eps_values) == 1 else
                                     torch.cat([torch.full((w,), float(m.eps), device=device)
                                                for m, w in zip(mods, widths)]))
        weight = torch.cat([m.weight.detach().reshape(-1) if m.weight is not None else torch.ones(w, device=device)
                            for m, w in zip(mods, widths)]).to(device, torch.float32)
        bias = torch.cat([m.bias.detach().reshape(-1) if m.bias is not None else torch.zeros(w, device=device)
                          for m, w in zip(mods, widths)]).to(device, torch.float32)
        a = torch.rsqrt(rv + eps) * weight
        b = bias - rm * a
        self.scale = dict(zip(named, torch.split(a, widths)))
        self.shift = dict(zip(named, torch.split(b, widths)))
        self.running_mean = dict(zip(named, torch.split(rm, widths)))


def fused_bn_forward(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, running_mean: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm of a contiguous CUDA tensor x (N, C, H, W) with per-channel float32 ``scale``/``shift``
    -> (BN output like x, sum (N*C,) and sum of squares (N*C,) of x - running_mean over H*W, float32): one read of x.
    """
    import triton

    n, c = x.shape[:2]
    hw = x.numel() // (n * c)
    y = torch.empty_like(x)  # BN's output dtype: under autocast a bf16/fp16 input stays in its dtype
    s1 = torch.empty(n * c, device=x.device, dtype=torch.float32)
    s2 = torch.empty(n * c, device=x.device, dtype=torch.float32)
    rows_per, block = _tile(hw)
    _kernel()[(triton.cdiv(n * c, rows_per),)](x, y, scale, shift, running_mean, s1, s2, n * c, c, hw,
                                               ROWS=rows_per, BLOCK=block)
    return y, s1, s2


def applies(model_named: Mapping[str, nn.Module], x: torch.Tensor) -> bool:
    """Whether a forward pass of x can take the fused path at all: CUDA input, no autograd, Triton present, and no
    BN module whose ``forward`` someone else already replaced (that module would lose its patch)."""
    return (x.is_cuda and not torch.is_grad_enabled() and triton_available()
            and not any("forward" in vars(m) for m in model_named.values()))


def usable(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether the fused kernel applies to this call (else the caller falls back to the reference path)."""
    return (x.is_cuda and x.ndim == 4 and x.is_contiguous() and not module.training and not torch.is_grad_enabled()
            and x.dtype in (torch.float32, torch.float16, torch.bfloat16))


class StatsStore(dict[str, Stats]):
    """{layer name: (mean (N, C), variance (N, C) or None)}; ``concatenated`` = (names, means (N, sum c_i),
    variances or None) when the fused path produced all layers at once, so that the distances need not concatenate
    the per-layer views again."""

    concatenated: tuple[list[str], torch.Tensor, torch.Tensor | None] | None = None


_INV_SIZES: dict[tuple[tuple[int, ...], tuple[int, ...], str], torch.Tensor] = {}


def _inverse_sizes(widths: tuple[int, ...], sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(sum c_i,) vector of 1 / (h_i * w_i) on ``device``, cached: made (and copied to the device) once per model
    and input size, not once per batch."""
    key = (widths, sizes, str(device))
    if key not in _INV_SIZES:
        _INV_SIZES[key] = torch.cat([torch.full((c,), 1.0 / hw) for c, hw in zip(widths, sizes)]).to(device)
    return _INV_SIZES[key]


@contextmanager
def fused_capture(named: Mapping[str, nn.Module], with_var: bool, device: torch.device,
                  fallback: Any) -> Iterator[StatsStore]:  # noqa: ANN401 - fallback: (Tensor, bool) -> Stats
    """Replace each named BN module's ``forward`` by the fused one for the block. On exit ``store[name]`` holds the
    statistics of its input, (mean (N, C), variance (N, C) or None) in float32, finalised for all fused layers with a
    few batched kernels; ``fallback(x, with_var)`` computes them for calls the kernel does not apply to."""
    params = LayerParams(named, device)
    store = StatsStore()
    raw: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
    patched: list[nn.Module] = []

    def make(name: str, module: Any) -> Any:  # noqa: ANN401
        original = type(module).forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if usable(x, module):
                y, s1, s2 = fused_bn_forward(x, params.scale[name], params.shift[name], params.running_mean[name])
                n, c, h, w = x.shape
                raw[name] = (s1.view(n, c), s2.view(n, c), h * w)
                return y
            store[name] = fallback(x, with_var)
            return original(module, x)

        return forward

    try:
        for name, module in named.items():
            module.forward = make(name, module)
            patched.append(module)
        yield store
    finally:
        for module in patched:
            del module.forward
    if raw:  # (only on a normal exit) all fused layers at once: mean = u + S1 / hw, var = S2 / hw - (S1 / hw)^2
        names = list(raw)
        inv_hw = _inverse_sizes(tuple(raw[n][0].shape[1] for n in names), tuple(raw[n][2] for n in names), device)
        shifted = torch.cat([raw[n][0] for n in names], dim=1) * inv_hw
        mean = shifted + torch.cat([params.running_mean[n] for n in names])
        var = ((torch.cat([raw[n][1] for n in names], dim=1) * inv_hw - shifted.square()).clamp_min(0)
               if with_var else None)
        widths = [raw[n][0].shape[1] for n in names]
        means = torch.split(mean, widths, dim=1)
        variances = torch.split(var, widths, dim=1) if var is not None else [None] * len(names)
        for n, m, v in zip(names, means, variances):
            store[n] = (m, v)
        if names == list(named):  # every layer fused, in module order: hand over the concatenation as well
            store.concatenated = (names, mean, var)
