"""Baselines that also need no classifier: one score, one threshold. They show what the BN statistics add.

bn_mean_threshold   minus the mean over layers of the standardised log d_i (small distance = member)
embedding_nn        cosine to the nearest image the attacker knows to be a member (setting A: the attacker holds
                    part of the training data; a member's other trained photos pull its embedding close)
embedding_norm      embedding norm before L2 normalisation (margin losses shape it for training images)
flip_consistency    cosine between an image's embedding and its mirror's (trained with flips, members agree more)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from frleak.attacks.base import MembershipAttack, log_distance
from frleak.registry import ATTACKS


class ThresholdAttack(MembershipAttack):
    """Score = sign * statistic of one feature group; the sign (direction) and threshold are learned on fit data."""

    def __init__(self, feature: str = "paper", *, reduce: str = "mean_log_z", sign: str = "learn") -> None:
        self.feature = feature
        self.reduce = reduce
        self.sign = sign

    def required_groups(self) -> tuple[str, ...]:
        return (self.feature,)

    def _stat(self, X: Any) -> np.ndarray:
        v = np.asarray(X if isinstance(X, np.ndarray) else X[self.feature], dtype=np.float64)
        if self.reduce == "mean_log_z":
            lv = log_distance(v.reshape(len(v), -1))
            return np.asarray(((lv - self.mu_) / self.sd_).mean(axis=1))
        return v.reshape(len(v), -1).mean(axis=1)

    def _fit(self, X: Any, y: np.ndarray) -> None:
        from frleak.metrics import auc

        if self.reduce == "mean_log_z":
            v = np.asarray(X if isinstance(X, np.ndarray) else X[self.feature], dtype=np.float64)
            lv = log_distance(v.reshape(len(v), -1))
            self.mu_, self.sd_ = lv.mean(axis=0), lv.std(axis=0) + 1e-12
        s = self._stat(X)
        if self.sign == "learn":
            self.sign_ = 1.0 if auc(s, y) >= 0.5 else -1.0
        else:
            self.sign_ = 1.0 if self.sign in ("+", "higher") else -1.0

    def _score(self, X: Any) -> np.ndarray:
        return self.sign_ * self._stat(X)


@ATTACKS.register("bn_mean_threshold")
def bn_mean_threshold(**kw: Any) -> ThresholdAttack:
    """Threshold on the mean standardised log BN distance over layers (small = member)"""
    a = ThresholdAttack("paper", reduce="mean_log_z", sign=kw.pop("sign", "-"), **kw)
    a.registry_name = "bn_mean_threshold"
    return a


@ATTACKS.register("embedding_nn")
def embedding_nn(**kw: Any) -> ThresholdAttack:
    """Cosine to the nearest known member image (setting A, same-identity non-members; needs no BN)"""
    a = ThresholdAttack("nn_cos", reduce="mean", sign=kw.pop("sign", "+"), **kw)
    a.registry_name = "embedding_nn"
    a.knowledge = "known member images"
    return a


@ATTACKS.register("embedding_norm")
def embedding_norm(**kw: Any) -> ThresholdAttack:
    """Embedding norm before normalisation, direction learned (needs no BN)"""
    a = ThresholdAttack("emb_norm", reduce="mean", sign=kw.pop("sign", "learn"), **kw)
    a.registry_name = "embedding_norm"
    return a


@ATTACKS.register("flip_consistency")
def flip_consistency(**kw: Any) -> ThresholdAttack:
    """Cosine between the embeddings of an image and of its mirror, direction learned (needs no BN)"""
    a = ThresholdAttack("flip_cos", reduce="mean", sign=kw.pop("sign", "learn"), **kw)
    a.registry_name = "flip_consistency"
    return a
