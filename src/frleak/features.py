"""BatchNorm-statistics features: the membership signal of arXiv 2401.13719, stage 1.

For an image x let v_i (c_i x h_i x w_i) be the input of the i-th BatchNorm layer, mean(v_i) its per-channel spatial
mean (c_i,) and u_i, s_i^2 the layer's running mean and variance. The paper's feature is

    d_i = ||mean(v_i) - u_i||^2 / c_i                                          ("paper", b_i = c_i)

and frleak adds, as options:

    n_i = ||(mean(v_i) - u_i) / sqrt(s_i^2 + eps)||^2 / c_i                     ("normalized": scale-free per channel)
    q_i = ||log(var(v_i) + eps) - log(s_i^2 + eps)||^2 / c_i                    ("variance": DeepInversion-like,
                                                                                 per-sample spatial variance vs
                                                                                 the running variance, in log space)
    z_i = (mean(v_i) - u_i) / sqrt(s_i^2 + eps)  (c_i,) per channel            ("channels")

BatchNorm1d inputs (N, C) have no spatial extent: mean(v_i) = v_i, and the variance term is 0 for them.

Extraction runs one forward pass per batch with forward-pre-hooks on every BatchNorm layer (module order); on CUDA
without autograd the fused one-pass kernel of :mod:`frleak.fused_bn` computes BN and statistics together. It never
changes the model: the mode of every module is restored, BN buffers are untouched (eval mode reads, never updates
them) and the hooks are removed, also when an exception interrupts it. With ``torch.enable_grad()`` the features are
differentiable with respect to the input (stage 2 optimises through them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from frleak import fused_bn
from frleak.data.images import InputSpec, hflip, normalize
from frleak.errors import ConfigError, FrleakError

KINDS = ("paper", "normalized", "variance", "channels")
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


# ---- pure functions --------------------------------------------------------------------------------------------
def spatial_stats(v: torch.Tensor, with_var: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample, per-channel mean (N, C) (and biased variance) of a BN input (N, C, *spatial) or (N, C), in float32
    whatever the input dtype: reductions accumulate in float32 and never make a float copy of a bf16/fp16 input."""
    if v.ndim == 2:
        v = v.float()
        return v, (torch.zeros_like(v) if with_var else None)
    flat = v.flatten(2)
    if not with_var:
        return flat.mean(dim=2, dtype=torch.float32), None
    if flat.dtype == torch.float32 and flat.device.type != "cpu":
        var, mean = torch.var_mean(flat, dim=2, correction=0)  # one fused pass on GPUs
        return mean, var
    # CPU (var_mean over the innermost dim is 20-60x slower than a plain reduction there, torch 2.13) and low-precision
    # input: two vectorised float32 reductions, var = E[x^2] - E[x]^2 ...
    n = flat.shape[2]
    mean = flat.mean(dim=2, dtype=torch.float32)
    var = torch.linalg.vector_norm(flat, dim=2, dtype=torch.float32).square() / n - mean.square()
    if flat.device.type != "cpu":  # bf16/fp16 input: its own rounding (~4e-3) dwarfs the cancellation; no host sync
        return mean, var.clamp_min(0)
    # ... whose float32 cancellation error is ~1e-7 * (1 + mean^2 / var) relative: the rows where that could pass
    # ~1e-5 (mean^2 > 64 var, zero or negative var included) are recomputed centred, as var_mean would.
    risky = mean.square() > 64 * var
    if bool(risky.any()):
        rows = flat[risky].float()
        var = var.clone()
        var[risky] = (rows - rows.mean(dim=1, keepdim=True)).square().mean(dim=1)
    return mean, var


def paper_distance(mean: torch.Tensor, running_mean: torch.Tensor) -> torch.Tensor:
    """d = ||mean - u||^2 / c, per sample: (N, C), (C,) -> (N,)."""
    return (mean - running_mean).pow(2).mean(dim=1)


def normalized_distance(mean: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                        eps: float = 1e-5) -> torch.Tensor:
    """n = ||(mean - u) / sqrt(s^2 + eps)||^2 / c: (N, C) -> (N,)."""
    return ((mean - running_mean) * torch.rsqrt(running_var + eps)).pow(2).mean(dim=1)


def variance_distance(var: torch.Tensor, running_var: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """q = ||log(var + eps) - log(s^2 + eps)||^2 / c: (N, C) -> (N,)."""
    return (torch.log(var + eps) - torch.log(running_var + eps)).pow(2).mean(dim=1)


def channel_deviation(mean: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                      eps: float = 1e-5) -> torch.Tensor:
    """z = (mean - u) / sqrt(s^2 + eps): (N, C) -> (N, C)."""
    return (mean - running_mean) * torch.rsqrt(running_var + eps)


# ---- hooks -----------------------------------------------------------------------------------------------------
def bn_layers(model: nn.Module) -> list[tuple[str, _NormBase]]:
    """BatchNorm layers with running statistics, in module order. Raises FrleakError when there are none."""
    layers: list[tuple[str, _NormBase]] = [(n, m) for n, m in model.named_modules() if isinstance(m, _BN)
              and m.track_running_stats and m.running_mean is not None]
    if not layers:
        raise FrleakError(
            f"{type(model).__name__} has no BatchNorm layer with running statistics: the BN-statistics attack "
            "surface is absent (GroupNorm/LayerNorm models, or BN without track_running_stats). Use an "
            "embedding-only attack (e.g. 'embedding_nn') instead."
        )
    return layers


def has_bn_statistics(model: nn.Module) -> bool:
    """True when the model has BatchNorm layers with running statistics (the paper's attack surface)."""
    try:
        bn_layers(model)
    except FrleakError:
        return False
    return True


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode and restore each module's own mode afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextmanager
def capture_bn_inputs(model: nn.Module, layers: Sequence[str] | None = None, with_var: bool = False
                      ) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor | None]]]:
    """Forward-pre-hooks storing each BN layer's per-sample channel mean (and variance) during a forward pass.
    The dict is filled in module order by every forward pass inside the block; hooks are removed on exit."""
    all_layers = bn_layers(model)
    wanted = dict(all_layers) if layers is None else _select(all_layers, layers)
    store: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    handles = []

    def make_hook(name: str):  # noqa: ANN202
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            store[name] = spatial_stats(inputs[0], with_var)  # float32 statistics (AMP-safe)

        return hook

    try:
        for name, module in wanted.items():
            handles.append(module.register_forward_pre_hook(make_hook(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def _select(all_layers: Sequence[tuple[str, _NormBase]], layers: Sequence[str]) -> dict[str, _NormBase]:
    by_name = dict(all_layers)
    missing = [n for n in layers if n not in by_name]
    if missing:
        raise ConfigError(f"unknown BatchNorm layer(s) {', '.join(missing)}; the model has: "
                          f"{', '.join(list(by_name)[:8])}, ...")
    return {n: by_name[n] for n in layers}


def bn_features(model: nn.Module, x: torch.Tensor, kinds: Sequence[str] = ("paper",),
                layers: Sequence[str] | None = None, eps: float = 1e-5, fused: bool | None = None
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward pass of normalised input x (N, 3, H, W) -> ({kind: (N, L) or (N, sum c_i)}, embeddings (N, D)).

    Differentiable when called under grad mode. The model runs in eval mode; its modes are restored.
    ``fused``: the one-pass BN + statistics kernel of :mod:`frleak.fused_bn` (CUDA, no grad, Triton); ``None`` uses
    it wherever it applies, ``False`` forces the hook path (the reference; both agree to float32 rounding).
    """
    for k in kinds:
        if k not in KINDS:
            raise ConfigError(f"unknown BN feature kind {k!r}; expected one of {', '.join(KINDS)}")
    with_var = "variance" in kinds
    named = dict(bn_layers(model)) if layers is None else _select(bn_layers(model), layers)
    capture = (fused_bn.fused_capture(named, with_var, x.device, spatial_stats) if takes_fused_path(named, x, fused)
               else capture_bn_inputs(model, list(named), with_var))
    with eval_mode(model), capture as store:
        emb = model(x)
    missing = [name for name in named if name not in store]
    if missing:
        raise FrleakError(f"BatchNorm layer {missing[0]} was not called in the forward pass")
    # Distances are computed per group of layers with the same channel count (a handful of groups instead of one
    # small op per layer and kind: what keeps extraction within a few percent of a plain forward on GPUs). Each
    # row is reduced over its own c_i channels exactly as the per-layer pure functions above do.
    with torch.autocast(x.device.type, enabled=False):
        return _distances(named, store, kinds, eps), emb


def takes_fused_path(named: Mapping[str, nn.Module], x: torch.Tensor, fused: bool | None = None) -> bool:
    """Whether :func:`bn_features` runs x through the fused kernel: wherever it applies (``fused=None``) unless
    ``fused=False`` forces the hook path."""
    return fused is not False and fused_bn.applies(named, x)


def _distances(named: Mapping[str, nn.Module], store: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]],
               kinds: Sequence[str], eps: float) -> dict[str, torch.Tensor]:
    """All layers at once: the per-layer means are concatenated into (N, sum c_i) and every distance is a segment
    mean over each layer's channels, computed as one matrix product with a (sum c_i, L) averaging matrix. A few
    kernels per batch instead of several per layer: on a GPU the launches, not the arithmetic, cost the time."""
    names = list(named)
    means = [store[n][0] for n in names]
    whole = getattr(store, "concatenated", None)  # the fused path's (names, means, variances), already concatenated
    if whole is not None and whole[0] != names:
        whole = None
    mean = whole[1] if whole is not None else torch.cat(means, dim=1)  # (N, sum c_i)
    device = mean.device
    rm = torch.cat([_buffer(named[n], "running_mean") for n in names]).to(device, torch.float32)
    rv = torch.cat([_buffer(named[n], "running_var") for n in names]).to(device, torch.float32)
    seg = _segment_matrix(tuple(m.shape[1] for m in means), device)  # (sum c_i, L), column i = 1/c_i on layer i
    diff = mean - rm
    out: dict[str, torch.Tensor] = {}
    z = diff * torch.rsqrt(rv + eps) if ("normalized" in kinds or "channels" in kinds) else None
    for k in kinds:
        if k == "paper":
            out[k] = diff.square() @ seg
        elif k == "normalized":
            assert z is not None
            out[k] = z.square() @ seg
        elif k == "variance":
            var = (whole[2] if whole is not None and whole[2] is not None
                   else torch.cat([store[n][1] for n in names], dim=1))  # type: ignore[misc]
            q = (torch.log(var + eps) - torch.log(rv + eps)).square() @ seg
            # a BatchNorm1d input (N, C) has no spatial extent (variance 0 by construction): its term is 0
            has_spatial = (var.abs().sum(dim=0) @ seg) > 0
            out[k] = q * has_spatial
        else:
            assert z is not None
            out[k] = z
    return out


def _buffer(module: nn.Module, name: str) -> torch.Tensor:
    """A BN running-statistics buffer, flattened (C,)."""
    buf = getattr(module, name)
    assert isinstance(buf, torch.Tensor)
    return buf.reshape(-1)


_SEGMENTS: dict[tuple[tuple[int, ...], str], torch.Tensor] = {}


def _segment_matrix(widths: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(sum c_i, L) matrix whose product with per-channel values (N, sum c_i) gives per-layer means (cached)."""
    key = (widths, str(device))
    if key not in _SEGMENTS:
        layer = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))
        m = torch.zeros(sum(widths), len(widths))
        m[torch.arange(sum(widths)), layer] = 1.0 / torch.tensor(widths, dtype=torch.float32)[layer]
        _SEGMENTS[key] = m.to(device)
    return _SEGMENTS[key]


# ---- batched extraction ----------------------------------------------------------------------------------------
@dataclass
class FeatureSet:
    """Features of N images under one model: {kind: (N, L)} plus embeddings (N, D) and the layer names."""

    features: dict[str, np.ndarray]
    embeddings: np.ndarray
    layer_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.embeddings)

    def subset(self, idx: np.ndarray | Sequence[int]) -> FeatureSet:
        idx = np.asarray(idx)
        return FeatureSet({k: v[idx] for k, v in self.features.items()}, self.embeddings[idx], self.layer_names,
                          dict(self.meta))

    def save(self, path: str | Path) -> None:
        import io
        import json

        from frleak.io import atomic_write_bytes

        buf = io.BytesIO()
        arrays = {"embeddings": self.embeddings, "layer_names": np.array(self.layer_names),
                  "meta": np.array(json.dumps(self.meta)), **{f"feat_{k}": v for k, v in self.features.items()}}
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        import json

        with np.load(path, allow_pickle=False) as z:
            feats = {k[5:]: z[k] for k in z.files if k.startswith("feat_")}
            return cls(feats, z["embeddings"], [str(s) for s in z["layer_names"]], json.loads(str(z["meta"])))

    @staticmethod
    def concat(sets: Sequence[FeatureSet]) -> FeatureSet:
        kinds = sets[0].features.keys()
        return FeatureSet({k: np.concatenate([s.features[k] for s in sets]) for k in kinds},
                          np.concatenate([s.embeddings for s in sets]), sets[0].layer_names, dict(sets[0].meta))


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, *, kinds: Sequence[str] = ("paper", "normalized",
                     "variance"), batch_size: int = 128, device: str | torch.device = "cpu", flip: bool = False,
                     layers: Sequence[str] | None = None, progress: bool = False) -> FeatureSet:
    """BN features of uint8 images (N, 3, H, W) at the model's input size, batch by batch.

    ``flip=True`` averages the features of each image and its mirror (the model was trained with flips, so both
    views carry the membership signal). The model (mode, buffers, hooks) is exactly as before afterwards.
    """
    spec: InputSpec = getattr(model, "input_spec")  # noqa: B009 - every frleak backbone has one
    names = [n for n, _ in bn_layers(model)] if layers is None else list(layers)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    embs: list[np.ndarray] = []
    starts = range(0, len(images), batch_size)
    iterator: Any = starts
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(starts, desc="BN features", unit="batch", leave=False)
    model_device = next(model.parameters()).device
    moved = model_device != torch.device(device)
    if moved:
        model.to(device)
    try:
        for i in iterator:
            x = normalize(images[i:i + batch_size], spec).to(device)
            feats, emb = bn_features(model, x, kinds, names)
            if flip:
                f2, e2 = bn_features(model, hflip(x), kinds, names)
                feats = {k: (feats[k] + f2[k]) / 2 for k in kinds}
                emb = torch.cat([emb, e2], dim=1)
            for k in kinds:
                parts[k].append(feats[k].float().cpu().numpy())
            embs.append(emb.float().cpu().numpy())
    finally:
        if moved:
            model.to(model_device)
    return FeatureSet({k: np.concatenate(v) for k, v in parts.items()}, np.concatenate(embs), names,
                      {"kinds": list(kinds), "flip": flip})
