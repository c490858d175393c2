"""The paper's attack model (arXiv 2401.13719, stage 1): one fully connected layer + sigmoid on [d_1, ..., d_L].

A single linear layer with a sigmoid, trained with binary cross-entropy, is logistic regression; we fit it with
scikit-learn's solver (L-BFGS, L2 penalty ``C``) on standardised features, which reaches the optimum the paper's
SGD-trained layer approximates. The paper is silent on the input scaling; the d_i span several decades, so the
default feeds log d_i (``log=False`` for raw distances, as a literal reading would). The score is the logit,
the threshold 0 (probability 0.5).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from frleak.attacks.base import MembershipAttack
from frleak.attacks.features import design_matrix, required_for
from frleak.registry import ATTACKS


class LinearBNAttack(MembershipAttack):
    """Logistic regression (one linear layer + sigmoid) on standardised BN-distance features."""

    def __init__(self, features: tuple[str, ...] = ("paper",), *, log: bool = True, calibrate: bool = False,
                 C: float = 1.0, max_iter: int = 2000) -> None:
        self.features = features
        self.log = log
        self.calibrate = calibrate
        self.C = C
        self.max_iter = max_iter

    def required_groups(self) -> tuple[str, ...]:
        return required_for(self.features, self.calibrate)

    def _matrix(self, X: Any) -> np.ndarray:
        return design_matrix(X, self.features, log=self.log, calibrate=self.calibrate)

    def _fit(self, X: Any, y: np.ndarray) -> None:
        self.model_: Pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))
        self.model_.fit(self._matrix(X), y)
        self.threshold_ = 0.0

    def _score(self, X: Any) -> np.ndarray:
        return np.asarray(self.model_.decision_function(self._matrix(X)))


@ATTACKS.register("paper_bn_linear")
class PaperBNLinear(LinearBNAttack):
    """The paper's attack: one linear layer + sigmoid on the per-layer BN distances d_i = ||mean(v_i) - u_i||^2 / c_i"""

    registry_name = "paper_bn_linear"

    def __init__(self, features: tuple[str, ...] = ("paper",), *, log: bool = True, calibrate: bool = False,
                 C: float = 1.0, max_iter: int = 2000) -> None:
        super().__init__(features, log=log, calibrate=calibrate, C=C, max_iter=max_iter)
