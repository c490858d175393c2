"""A fitted membership attack as a differentiable torch function: feature groups -> membership logit.

Model inversion guided by the membership attack (arXiv 2401.13719, stage 2) needs the gradient of the attack's
score with respect to the generated image, so the attack must be a torch function of the BN features. Attacks with
a closed form convert exactly:

* :class:`frleak.attacks.paper.LinearBNAttack` (``paper_bn_linear``, ``bn_rich_linear``, ``bn_calibrated``): the
  scikit-learn pipeline StandardScaler -> LogisticRegression on :func:`frleak.attacks.features.design_matrix`, i.e.
  ``logit = ((M(X) - mean_) / scale_) . coef_ + intercept_`` with ``M`` = log distances (optionally minus the
  reference model's log distances) and raw non-distance groups, stacked in the attack's group order.
* :class:`frleak.attacks.baselines.ThresholdAttack` (``bn_mean_threshold``, ``embedding_norm``,
  ``flip_consistency``): ``sign * mean_j((log d_j - mu_j) / sd_j)`` or ``sign * mean(v)``.

Tree ensembles (``bn_gbm``, ``frleak_strong``) are piecewise constant: their gradient is zero almost everywhere.
They can still rank finished reconstructions (``selection_attack`` in :func:`frleak.inversion.invert`), never guide
the optimiser. ``embedding_nn`` needs the attacker's known member images and is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from frleak.attacks.base import _TINY, DISTANCE_GROUPS, MembershipAttack
from frleak.errors import ConfigError


def _log_distance(d: torch.Tensor) -> torch.Tensor:
    """torch twin of :func:`frleak.attacks.base.log_distance`: log(max(d, 0) + 1e-12)."""
    return torch.log(torch.clamp(d, min=0.0) + _TINY)


def _column(feats: Mapping[str, torch.Tensor], group: str) -> torch.Tensor:
    if group not in feats:
        raise ConfigError(f"the attack needs feature group {group!r}, which was not computed "
                          f"(have: {', '.join(sorted(feats))})")
    v = feats[group].to(torch.float64)
    return v.reshape(v.shape[0], -1)


class TorchLinearAttack(nn.Module):
    """``logit = ((M(X) - mean) / scale) @ coef + intercept`` (float64): the torch form of a fitted LinearBNAttack.

    ``forward(feats)``: {group: (N, k)} -> (N,) logits, equal to ``attack.score`` on the same features."""

    mean: torch.Tensor
    scale: torch.Tensor
    coef: torch.Tensor

    def __init__(self, groups: tuple[str, ...], log: bool, calibrate: bool, mean: np.ndarray, scale: np.ndarray,
                 coef: np.ndarray, intercept: float) -> None:
        super().__init__()
        self.groups, self.log, self.calibrate = tuple(groups), bool(log), bool(calibrate)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float64)))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, dtype=np.float64)))
        self.register_buffer("coef", torch.as_tensor(np.asarray(coef, dtype=np.float64).reshape(-1)))
        self.intercept = float(intercept)

    def required_groups(self) -> tuple[str, ...]:
        refs = tuple(f"ref_{g}" for g in self.groups if g in DISTANCE_GROUPS) if self.calibrate else ()
        return self.groups + refs

    def design(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The attack's design matrix (N, k) in torch (twin of :func:`frleak.attacks.features.design_matrix`)."""
        cols = []
        for g in self.groups:
            v = _column(feats, g)
            if g in DISTANCE_GROUPS:
                if self.log:
                    v = _log_distance(v)
                if self.calibrate:
                    ref = _column(feats, f"ref_{g}")
                    v = v - (_log_distance(ref) if self.log else ref)
            cols.append(v)
        x = torch.cat(cols, dim=1)
        if x.shape[1] != self.coef.shape[0]:
            raise ConfigError(f"the attack was fitted on {self.coef.shape[0]} features but the target gives "
                              f"{x.shape[1]} ({', '.join(self.groups)}): was it fitted on another architecture?")
        return x

    def forward(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        z = (self.design(feats) - self.mean) / self.scale
        return z @ self.coef + self.intercept


class TorchThresholdAttack(nn.Module):
    """Torch form of a fitted :class:`~frleak.attacks.baselines.ThresholdAttack` (one statistic times a sign)."""

    mu: torch.Tensor
    sd: torch.Tensor

    def __init__(self, group: str, reduce: str, sign: float, mu: np.ndarray | None, sd: np.ndarray | None) -> None:
        super().__init__()
        self.group, self.reduce, self.sign = group, reduce, float(sign)
        self.register_buffer("mu", torch.as_tensor(np.asarray(mu if mu is not None else [0.0], dtype=np.float64)))
        self.register_buffer("sd", torch.as_tensor(np.asarray(sd if sd is not None else [1.0], dtype=np.float64)))

    def required_groups(self) -> tuple[str, ...]:
        return (self.group,)

    def forward(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        v = _column(feats, self.group)
        if self.reduce == "mean_log_z":
            return self.sign * ((_log_distance(v) - self.mu) / self.sd).mean(dim=1)
        return self.sign * v.mean(dim=1)


def torch_attack(attack: MembershipAttack) -> TorchLinearAttack | TorchThresholdAttack:
    """Convert a fitted attack into a differentiable callable ``feats -> logit`` (see the module docstring).

    Raises ConfigError for an unfitted attack or one without a differentiable closed form (trees)."""
    from frleak.attacks.baselines import ThresholdAttack
    from frleak.attacks.paper import LinearBNAttack

    name = getattr(attack, "registry_name", type(attack).__name__)
    if not hasattr(attack, "threshold_"):
        raise ConfigError(f"attack {name} is not fitted: fit it (or load a saved one) before inversion")
    if isinstance(attack, LinearBNAttack):
        scaler, logreg = attack.model_.steps[0][1], attack.model_.steps[-1][1]
        coef = np.asarray(logreg.coef_, dtype=np.float64)
        if coef.shape[0] != 1:
            raise ConfigError(f"attack {name}: expected a binary logistic regression, got coef_ {coef.shape}")
        n = coef.shape[1]
        mean = scaler.mean_ if getattr(scaler, "mean_", None) is not None and scaler.with_mean else np.zeros(n)
        scale = scaler.scale_ if getattr(scaler, "scale_", None) is not None and scaler.with_std else np.ones(n)
        return TorchLinearAttack(tuple(attack.features), attack.log, attack.calibrate, mean, scale, coef,
                                 float(np.asarray(logreg.intercept_).reshape(-1)[0]))
    if isinstance(attack, ThresholdAttack) and attack.feature != "nn_cos":
        mu = getattr(attack, "mu_", None) if attack.reduce == "mean_log_z" else None
        sd = getattr(attack, "sd_", None) if attack.reduce == "mean_log_z" else None
        return TorchThresholdAttack(attack.feature, attack.reduce, attack.sign_, mu, sd)
    raise ConfigError(
        f"attack {name} ({type(attack).__name__}) has no differentiable form: guided inversion needs a linear "
        "attack (paper_bn_linear, bn_rich_linear, bn_calibrated, bn_mean_threshold). Tree attacks can still rank "
        "the final reconstructions: pass them as the selection attack (--selection-attack)."
    )


def is_differentiable(attack: MembershipAttack) -> bool:
    """True when :func:`torch_attack` can convert ``attack``."""
    try:
        torch_attack(attack)
    except ConfigError:
        return False
    return True
