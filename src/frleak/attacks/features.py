"""Assembling attack design matrices from named feature groups (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from frleak.attacks.base import DISTANCE_GROUPS, AttackInputs, log_distance


def design_matrix(X: AttackInputs | np.ndarray, groups: Sequence[str], *, log: bool = True,
                  calibrate: bool = False) -> np.ndarray:
    """Stack the feature groups into (N, k). Distance groups are log-transformed (``log``); with ``calibrate`` each
    distance group becomes log d(target) - log d(reference) (difficulty calibration, Watson et al. 2022): an image
    that is atypical for *any* face model stops looking like a non-member."""
    if isinstance(X, np.ndarray):
        return X.reshape(len(X), -1).astype(np.float64)
    cols = []
    for g in groups:
        v = np.asarray(X[g], dtype=np.float64).reshape(len(X[g]), -1)
        if g in DISTANCE_GROUPS:
            if log:
                v = log_distance(v)
            if calibrate:
                ref = np.asarray(X[f"ref_{g}"], dtype=np.float64).reshape(len(v), -1)
                v = v - (log_distance(ref) if log else ref)
        cols.append(v)
    return np.hstack(cols)


def required_for(groups: Sequence[str], calibrate: bool) -> tuple[str, ...]:
    extra = tuple(f"ref_{g}" for g in groups if g in DISTANCE_GROUPS) if calibrate else ()
    return tuple(groups) + extra
