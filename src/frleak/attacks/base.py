"""The attack-model interface (scikit-learn conventions).

``__init__`` stores parameters; ``fit(X, y)`` learns and returns self (learned state ends in ``_``);
``score(X)`` returns one membership score per sample, higher = member (members are the positive class, label 1);
``predict(X)`` thresholds the score at ``threshold_`` (chosen on the attack's own training data, never on the
evaluation data); ``save`` / ``load_attack`` persist it safely (skops: no arbitrary pickle).

X is an :data:`AttackInputs` mapping of named feature groups, each (N, k) or (N,):

  paper, normalized, variance   BN distances per layer (N, L) of the model under attack (:mod:`frleak.features`)
  channels                      per-channel BN deviations (N, sum c_i)
  ref_paper, ref_normalized,    the same distances under a *reference* model that never trained on these images
  ref_variance                  (the shadow model, or the target for the shadow's own images): difficulty calibration
  emb_norm                      embedding L2 norm before normalisation (N,)
  flip_cos                      cosine between the embeddings of the image and of its mirror (N,)
  nn_cos                        cosine to the nearest image the attacker knows to be a member (N,), setting A only

A plain ndarray is accepted too and used as the only feature block.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from frleak.errors import CheckpointError, ConfigError

AttackInputs = Mapping[str, np.ndarray]
DISTANCE_GROUPS = ("paper", "normalized", "variance")
_TINY = 1e-12


def take(X: AttackInputs | np.ndarray, idx: np.ndarray | Sequence[int]) -> Any:
    """Rows ``idx`` of every feature group."""
    if isinstance(X, np.ndarray):
        return X[np.asarray(idx)]
    return {k: v[np.asarray(idx)] for k, v in X.items()}


def n_samples(X: AttackInputs | np.ndarray) -> int:
    if isinstance(X, np.ndarray):
        return len(X)
    return len(next(iter(X.values())))


def log_distance(d: np.ndarray) -> np.ndarray:
    """Distances are positive and heavy-tailed over 3-4 decades; a linear model needs their logarithm."""
    return np.log(np.maximum(d, 0.0) + _TINY)


class MembershipAttack(BaseEstimator):
    """Base class. Subclasses set ``requires`` (feature groups) and implement ``_fit`` / ``_score``."""

    requires: ClassVar[tuple[str, ...]] = ()
    #: what the attacker must hold beyond the target (shown in reports)
    knowledge: str = "white-box backbone"

    def _check_inputs(self, X: AttackInputs | np.ndarray) -> None:
        if isinstance(X, np.ndarray):
            return
        missing = [g for g in self.required_groups() if g not in X]
        if missing:
            raise ConfigError(f"{type(self).__name__} needs feature group(s) {', '.join(missing)}; "
                              f"got {', '.join(sorted(X))}")

    def required_groups(self) -> tuple[str, ...]:
        return tuple(self.requires)

    def fit(self, X: AttackInputs | np.ndarray, y: np.ndarray) -> MembershipAttack:
        self._check_inputs(X)
        y = np.asarray(y).astype(int)
        if set(np.unique(y)) != {0, 1}:
            raise ConfigError("attack training labels must contain both members (1) and non-members (0)")
        self._fit(X, y)
        from frleak.metrics import best_threshold

        if not hasattr(self, "threshold_"):
            self.threshold_ = float(best_threshold(np.asarray(self._score(X), dtype=np.float64), y))
        self.n_features_in_ = self._n_features(X)
        return self

    def score(self, X: AttackInputs | np.ndarray) -> np.ndarray:
        """Membership score per sample (N,), higher = member."""
        self._check_inputs(X)
        if not hasattr(self, "threshold_"):
            raise ConfigError(f"{type(self).__name__} is not fitted yet: call fit(X, y) first")
        return np.asarray(self._score(X), dtype=np.float64)

    # scikit-learn names for the same thing
    def decision_function(self, X: AttackInputs | np.ndarray) -> np.ndarray:
        return self.score(X)

    score_samples = decision_function

    def predict(self, X: AttackInputs | np.ndarray) -> np.ndarray:
        return (self.score(X) >= self.threshold_).astype(int)

    def _n_features(self, X: AttackInputs | np.ndarray) -> int:
        return int(self._matrix(X).shape[1]) if hasattr(self, "_matrix") else 0

    def _fit(self, X: AttackInputs | np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, X: AttackInputs | np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Persist with skops (safe: loading never runs arbitrary code). ``path`` gets the ``.skops`` suffix."""
        import skops.io as sio

        from frleak.io import atomic_write_bytes

        path = Path(path).with_suffix(".skops")
        atomic_write_bytes(path, sio.dumps(self))
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(
            {"attack": getattr(self, "registry_name", type(self).__name__), "params": _jsonable(self.get_params()),
             "threshold": getattr(self, "threshold_", None)}, indent=1).encode())
        return path


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = repr(v)
    return out


def load_attack(path: str | Path) -> MembershipAttack:
    """Load an attack saved by :meth:`MembershipAttack.save`; only frleak, scikit-learn and numpy types are
    trusted (skops refuses anything else instead of executing it)."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"attack file not found: {path}")
    data = path.read_bytes()
    try:
        untrusted = sio.get_untrusted_types(data=data)
        allowed = [t for t in untrusted if t.startswith(("frleak.", "sklearn.", "numpy.", "builtins."))]
        refused = sorted(set(untrusted) - set(allowed))
        if refused:
            raise CheckpointError(f"{path} contains types that are not trusted: {', '.join(refused)}")
        attack = sio.loads(data, trusted=allowed)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - skops raises several types on bad files
        raise CheckpointError(f"cannot load attack {path}: {exc}") from None
    if not isinstance(attack, MembershipAttack):
        raise CheckpointError(f"{path} does not hold a frleak membership attack")
    return attack
