"""Attack estimators: scikit-learn conventions for every registered attack (a conformance test, as sklearn runs
over its estimators), higher score = member, safe persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from frleak.attacks import ATTACKS, create_attack, load_attack
from frleak.errors import CheckpointError, ConfigError
from frleak.metrics import auc


def synthetic(n: int = 400, layers: int = 6, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Members (y=1) have smaller early-layer and larger last-layer distances, a larger embedding norm, and known
    members nearby: every feature group carries some signal."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n // 2, dtype=int), np.zeros(n - n // 2, dtype=int)]
    shift = np.where(y[:, None] == 1, -0.4, 0.0) * np.r_[np.ones(layers - 1), -1.0]
    X: dict[str, np.ndarray] = {}
    for k in ("paper", "normalized", "variance"):
        X[k] = np.exp(rng.normal(size=(n, layers)) + shift)
        X[f"ref_{k}"] = np.exp(rng.normal(size=(n, layers)))
    X["emb_norm"] = rng.normal(size=n) + y
    X["flip_cos"] = rng.normal(size=n) + y
    X["nn_cos"] = rng.normal(size=n) + y
    emb = rng.normal(size=(n, 8))
    X["embedding"] = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return X, y


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_conformance(name: str, tmp_path: Path) -> None:
    X, y = synthetic()
    Xt, yt = synthetic(seed=1)
    attack = create_attack(name)
    params = attack.get_params()
    assert clone(attack).get_params() == params  # __init__ only stores parameters
    assert not any(k.endswith("_") for k in vars(attack))  # nothing learned before fit
    with pytest.raises(ConfigError, match="not fitted"):
        attack.score(Xt)
    assert attack.fit(X, y) is attack
    assert hasattr(attack, "threshold_")
    s = attack.score(Xt)
    assert s.shape == (len(yt),) and np.isfinite(s).all()
    assert auc(s, yt) > 0.6  # higher = member, on held-out data
    assert set(np.unique(attack.predict(Xt))) <= {0, 1}
    back = load_attack(attack.save(tmp_path / name))
    np.testing.assert_allclose(back.score(Xt), s)


def test_missing_feature_group_is_named() -> None:
    X, y = synthetic()
    del X["ref_paper"]
    with pytest.raises(ConfigError, match="ref_paper"):
        create_attack("bn_calibrated").fit(X, y)


def test_single_class_is_refused() -> None:
    X, y = synthetic()
    with pytest.raises(ConfigError, match="both members"):
        create_attack("paper_bn_linear").fit(X, np.ones_like(y))


def test_paper_attack_is_logistic_regression_on_log_distances() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = synthetic()
    attack = create_attack("paper_bn_linear").fit(X, y)
    Z = np.log(X["paper"] + 1e-12)
    scaler = StandardScaler().fit(Z)
    ref = LogisticRegression(max_iter=2000).fit(scaler.transform(Z), y)
    np.testing.assert_allclose(attack.score(X), ref.decision_function(scaler.transform(Z)), rtol=1e-6, atol=1e-6)


def test_untrusted_file_is_refused(tmp_path: Path) -> None:
    import skops.io as sio

    (tmp_path / "evil.skops").write_bytes(sio.dumps({"x": Path("/etc")}))
    with pytest.raises(CheckpointError):
        load_attack(tmp_path / "evil.skops")
    with pytest.raises(CheckpointError, match="not found"):
        load_attack(tmp_path / "missing.skops")
