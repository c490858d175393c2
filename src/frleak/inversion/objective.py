"""The inversion objective (arXiv 2401.13719, stage 2): what a reconstruction minimises, per image.

For a generated face x (N, 3, h, w) in [-1, 1], mapped to the target backbone's input by
:func:`frleak.inversion.preprocess.to_backbone_input`:

    loss(x) = - w_mem * A(phi(x))                  membership logit of the stage-1 attack A on the target's BN
                                                   features phi (averaged over x and its mirror, as frleak's
                                                   attack data are: :func:`frleak.attack_data.model_inputs`)
              + w_tmpl * (1 - cos(f(x), t_k))      similarity to a leaked gallery template t_k (target embedding f)
              + w_bn * R_bn(x)                     BatchNorm-statistics image prior (DeepInversion, Yin et al. 2020)
              + w_lat * R_z(z)                     the generator's latent prior (``Generator.latent_prior_loss``)
              + w_tv * TV(x) + w_l2 * ||x||^2      image priors (GAN-free inversion, DeepInversion)

    R_bn(x) = sum over BN layers l of ||mu_l(x) - running_mean_l||_2 + ||sigma^2_l(x) - running_var_l||_2

with mu_l, sigma^2_l the per-channel statistics of the layer's input: per image over its spatial positions
("sample", the default: every reconstruction is independent of the rest of its batch) or over the whole batch
("batch", DeepInversion's original; the images of a batch are then coupled). BatchNorm1d inputs have no spatial
extent: their per-sample variance term is 0.

Terms with weight 0 are left out of the loss entirely (not multiplied by 0), so e.g. ``membership_weight=0`` gives
bit-identical results to a run without the attack. The target is never changed: it runs in eval mode (restored
afterwards), gradients are taken w.r.t. the image only (``torch.autograd.grad``), BN buffers are read, never written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frleak.attacks.base import DISTANCE_GROUPS, MembershipAttack
from frleak.errors import ConfigError
from frleak.features import bn_features, bn_layers, capture_bn_inputs, eval_mode, has_bn_statistics
from frleak.inversion.differentiable import TorchLinearAttack, TorchThresholdAttack, torch_attack
from frleak.inversion.preprocess import to_backbone_input

BN_PRIOR_MODES = ("sample", "batch")
_BN_KINDS = ("paper", "normalized", "variance", "channels")
_EMB_GROUPS = ("emb_norm", "flip_cos")


# ---- pure functions -------------------------------------------------------------------------------------------
def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between vertical and horizontal neighbours, per image: (N, C, H, W) -> (N,)."""
    dv = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1)
    dh = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).mean(1)
    return dv + dh


def l2_image(x: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel value in [-1, 1] units, per image: (N, C, H, W) -> (N,)."""
    return x.pow(2).flatten(1).mean(1)


def bn_stat_prior(stats: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]],
                  running: Mapping[str, tuple[torch.Tensor, torch.Tensor]], mode: str = "sample") -> torch.Tensor:
    """The BN-statistics prior from per-sample channel statistics: (N,).

    ``stats``: {layer: (mean (N, C), var (N, C))}, the per-image spatial mean and biased variance of each BN
    input (var = 0 for BatchNorm1d); ``running``: {layer: (running_mean (C,), running_var (C,))}.
    ``mode="sample"``: each image's own statistics. ``mode="batch"``: the batch statistics (law of total variance:
    var = mean_i var_i + mean_i (mean_i - mean)^2), the batch value divided by N for every image (so the sum over
    the batch is DeepInversion's loss).
    """
    if mode not in BN_PRIOR_MODES:
        raise ConfigError(f"bn_prior must be one of {', '.join(BN_PRIOR_MODES)}, got {mode!r}")
    total: torch.Tensor | None = None
    for name, (mean, var) in stats.items():
        rm, rv = running[name]
        spatial = var is not None and bool(var.abs().sum() > 0)
        if mode == "sample":
            term = torch.linalg.vector_norm(mean - rm, dim=1)
            if spatial:
                assert var is not None
                term = term + torch.linalg.vector_norm(var - rv, dim=1)
        else:
            bm = mean.mean(0)
            bv = (var.mean(0) if spatial and var is not None else 0.0) + (mean - bm).pow(2).mean(0)
            value = torch.linalg.vector_norm(bm - rm) + torch.linalg.vector_norm(bv - rv)
            term = value.expand(mean.shape[0]) / mean.shape[0]
        total = term if total is None else total + term
    if total is None:
        raise ConfigError("the BN-statistics prior needs BatchNorm layers; the target has none")
    return total


# ---- weights --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectiveWeights:
    """Weights of the terms of :class:`InversionObjective` (0 = term absent)."""

    membership: float = 1.0
    template: float = 0.0
    bn: float = 0.0
    latent: float = 0.0
    tv: float = 0.0
    l2: float = 0.0

    def needs_target(self) -> bool:
        return bool(self.membership or self.template or self.bn)


# ---- the objective --------------------------------------------------------------------------------------------
class InversionObjective:
    """Per-image terms and loss of a batch of generated faces under the target (see the module docstring).

    ``attack``: a fitted differentiable attack (MembershipAttack or its torch form) or None; ``reference``: the
    reference model of a calibrated attack (``ref_*`` groups); ``templates``: (K, D) leaked embeddings of the target
    (L2-normalised here); ``flip``: average the BN features over the image and its mirror (must match how the
    attack's training features were extracted: frleak's ``model_inputs`` uses ``flip=True``);
    ``selection_attack``: any fitted attack (trees too) used instead of ``attack`` by :meth:`selection_score`.
    """

    def __init__(self, target: nn.Module, *, weights: ObjectiveWeights, attack: Any = None,
                 reference: nn.Module | None = None, templates: torch.Tensor | None = None, flip: bool = True,
                 bn_prior: str = "sample", selection_attack: MembershipAttack | None = None) -> None:
        if bn_prior not in BN_PRIOR_MODES:
            raise ConfigError(f"bn_prior must be one of {', '.join(BN_PRIOR_MODES)}, got {bn_prior!r}")
        self.target, self.weights, self.flip, self.bn_prior = target, weights, flip, bn_prior
        self.reference = reference
        self.selection_attack = selection_attack
        self.attack: TorchLinearAttack | TorchThresholdAttack | None = None
        if attack is not None:
            self.attack = attack if isinstance(attack, (TorchLinearAttack, TorchThresholdAttack)) \
                else torch_attack(attack)
        if weights.membership and self.attack is None:
            raise ConfigError("membership_weight is non-zero but no differentiable attack was given")
        self.templates = None if templates is None else F.normalize(templates.detach().float(), dim=1)
        if weights.template and self.templates is None:
            raise ConfigError("template_weight is non-zero but no templates were given (targeted mode)")
        self.has_bn = has_bn_statistics(target)
        if weights.bn and not self.has_bn:
            raise ConfigError("bn_weight is non-zero but the target has no BatchNorm layer with running statistics")
        groups = set(self.attack.required_groups()) if self.attack is not None else set()
        if selection_attack is not None and weights.membership:
            groups |= set(selection_attack.required_groups())
        self.groups = groups
        unknown = groups - set(_BN_KINDS) - set(_EMB_GROUPS) - {f"ref_{k}" for k in DISTANCE_GROUPS}
        if unknown:
            raise ConfigError(f"the attack needs feature group(s) {', '.join(sorted(unknown))}, which inversion "
                              "cannot compute from a generated face")
        if "flip_cos" in groups and not flip:
            raise ConfigError("the attack uses flip_cos, which needs flip=True")
        if any(g.startswith("ref_") for g in groups) and reference is None:
            raise ConfigError("the attack is calibrated with a reference model (ref_* features): pass reference=")
        self.kinds = tuple(k for k in _BN_KINDS if k in groups)
        self.ref_kinds = tuple(k for k in DISTANCE_GROUPS if f"ref_{k}" in groups)
        if self.kinds and not self.has_bn:
            raise ConfigError("the attack needs BN features but the target has no BatchNorm layer")
        self._running = ({n: (m.running_mean.float(), m.running_var.float())  # type: ignore[union-attr]
                          for n, m in bn_layers(target)} if self.has_bn else {})

    # ---- forward passes ---------------------------------------------------------------------------------------
    def _views(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.flip(x, dims=(-1,))]) if self.flip else x

    def _merge(self, t: torch.Tensor, n: int) -> torch.Tensor:
        return (t[:n] + t[n:]) / 2 if self.flip else t

    def forward_target(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass of the target on ``images`` [-1, 1] (and their mirrors): the attack's feature groups,
        the embedding (N, D) of the unmirrored view, and the BN prior (N,) when the target has BN layers."""
        n = images.shape[0]
        x = self._views(to_backbone_input(images, self.target.input_spec))  # type: ignore[arg-type]
        out: dict[str, torch.Tensor] = {}
        if self.has_bn:
            with capture_bn_inputs(self.target, with_var=True) as store:
                if self.kinds:
                    feats, emb = bn_features(self.target, x, self.kinds)
                else:
                    with eval_mode(self.target):
                        emb = self.target(x)
                    feats = {}
            stats = {k: (m[:n], None if v is None else v[:n]) for k, (m, v) in store.items()}
            prior = bn_stat_prior(stats, self._running, self.bn_prior)
            if self.flip:  # the mirror is the same face: average its prior in
                mstats = {k: (m[n:], None if v is None else v[n:]) for k, (m, v) in store.items()}
                prior = (prior + bn_stat_prior(mstats, self._running, self.bn_prior)) / 2
            out["bn_prior"] = prior
        else:
            with eval_mode(self.target):
                emb = self.target(x)
            feats = {}
        for k, v in feats.items():
            out[k] = self._merge(v, n)
        e1 = emb[:n].float()
        out["embedding"] = e1
        out["emb_norm"] = torch.linalg.vector_norm(e1, dim=1)
        if self.flip:
            out["flip_cos"] = F.cosine_similarity(e1, emb[n:].float(), dim=1, eps=1e-12)
        if self.ref_kinds:
            assert self.reference is not None
            xr = self._views(to_backbone_input(images, self.reference.input_spec))  # type: ignore[arg-type]
            rfeats, _ = bn_features(self.reference, xr, self.ref_kinds)
            for k, v in rfeats.items():
                out[f"ref_{k}"] = self._merge(v, n)
        return out

    def terms(self, images: torch.Tensor, *, latents: torch.Tensor | None = None, generator: Any = None,
              template_index: torch.Tensor | None = None, grad: bool = True, log: bool = True
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(per-image terms (N,) with ``loss`` (N,), the target's feature groups). With ``grad`` the loss keeps its
        graph to ``images``/``latents``; target terms are computed without a graph when the loss has none of them
        (logged only); with ``log=False`` they are not computed at all then (the candidate search only ranks)."""
        w = self.weights
        out: dict[str, torch.Tensor] = {}
        fwd: dict[str, torch.Tensor] = {}
        loss = torch.zeros(images.shape[0], device=images.device)
        uses_target = self.attack is not None or self.templates is not None or self.has_bn
        if uses_target and (log or w.needs_target()):
            with torch.set_grad_enabled(grad and w.needs_target()):
                fwd = self.forward_target(images)
            if self.attack is not None:
                out["membership"] = self.attack(fwd).float()
                if w.membership:
                    loss = loss - w.membership * out["membership"]
            if self.templates is not None and template_index is not None:
                t = self.templates.to(images.device)[template_index]
                out["template_cos"] = F.cosine_similarity(fwd["embedding"], t, dim=1, eps=1e-12)
                if w.template:
                    loss = loss + w.template * (1.0 - out["template_cos"])
            if "bn_prior" in fwd:
                out["bn_prior"] = fwd["bn_prior"]
                if w.bn:
                    loss = loss + w.bn * fwd["bn_prior"]
        if latents is not None and generator is not None:
            out["latent_prior"] = generator.latent_prior_loss(latents)
            if w.latent:
                loss = loss + w.latent * out["latent_prior"]
        if w.tv:
            out["tv"] = total_variation(images)
            loss = loss + w.tv * out["tv"]
        if w.l2:
            out["l2"] = l2_image(images)
            loss = loss + w.l2 * out["l2"]
        out["loss"] = loss
        return out, fwd

    def selection_score(self, images: torch.Tensor, template_index: torch.Tensor | None = None) -> torch.Tensor:
        """Higher = better: minus the loss, with the membership term taken from ``selection_attack`` when one was
        given (any attack, e.g. trees). (N,), no graph. Latent priors are left out (they rank latents, not faces)."""
        with torch.no_grad():
            t, feats = self.terms(images, template_index=template_index, grad=False)
            loss = t["loss"]
            if self.selection_attack is not None and self.weights.membership:
                x = numpy_features(feats, self.selection_attack.required_groups())
                s = torch.as_tensor(self.selection_attack.score(x), dtype=loss.dtype, device=loss.device)
                loss = loss + self.weights.membership * (t["membership"] - s)
        return -loss


def numpy_features(feats: Mapping[str, torch.Tensor], groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Torch feature groups -> the numpy mapping ``MembershipAttack.score`` takes."""
    return {g: feats[g].detach().cpu().double().numpy() for g in groups if g in feats}
