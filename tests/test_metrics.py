"""Membership metrics against scikit-learn (the oracle), hand computations and invariants."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score, roc_curve

from frleak import FrleakError
from frleak.metrics import (
    METRIC_KEYS,
    MetricError,
    accuracy_at_threshold,
    aggregate_by_group,
    auc,
    balanced_accuracy_at_threshold,
    best_accuracy,
    best_threshold,
    bootstrap_ci,
    bootstrap_values,
    make_metric,
    mia_metrics,
    roc,
    tpr_at_fpr,
    tpr_at_fpr_point,
)


def _data(seed: int, n_pos: int = 300, n_neg: int = 500, shift: float = 0.5, decimals: int | None = 1):
    """Members score higher by ``shift``; rounding makes many ties (within and across classes)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    s = rng.normal(size=y.size) + shift * y
    if decimals is not None:
        s = np.round(s, decimals)
    perm = rng.permutation(y.size)
    return s[perm], y[perm]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])
def test_agrees_with_sklearn(seed, decimals):
    s, y = _data(seed, decimals=decimals)
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    f, t, thr = roc(s, y)
    f2, t2, thr2 = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(f, f2)
    np.testing.assert_allclose(t, t2)
    np.testing.assert_array_equal(thr, thr2)
    assert thr.size == np.unique(s).size + 1  # exact ROC: one point per distinct score, plus t = inf
    for q in (0.2, 0.5, 0.8):
        t_q = float(np.quantile(s, q))
        pred = (s >= t_q).astype(int)
        assert accuracy_at_threshold(s, y, t_q) == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert balanced_accuracy_at_threshold(s, y, t_q) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    # best accuracy: brute force over every distinct score as a threshold, plus "nobody".
    brute = max([np.mean(y == 0)] + [accuracy_score(y, (s >= u).astype(int)) for u in np.unique(s)])
    assert best_accuracy(s, y) == pytest.approx(brute, abs=1e-12)


def test_tpr_at_fpr_hand_example():
    # Scores descending: 0.9 M, 0.8 N, 0.7 M, 0.6 M, 0.5 N, 0.4 M, 0.3 N, 0.2 N (4 members, 4 non-members).
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    y = np.array([1, 0, 1, 1, 0, 1, 0, 0])
    # ROC points (FPR, TPR): (0,0) (0,.25) (.25,.25) (.25,.5) (.25,.75) (.5,.75) (.5,1) (.75,1) (1,1)
    assert tpr_at_fpr(s, y, 0.0) == 0.25
    assert tpr_at_fpr(s, y, 0.1) == 0.25  # below 1/4: only FPR 0 qualifies
    assert tpr_at_fpr(s, y, 0.25) == 0.75  # FPR exactly at the target counts (<=)
    assert tpr_at_fpr(s, y, 0.49) == 0.75
    assert tpr_at_fpr(s, y, 0.5) == 1.0
    p = tpr_at_fpr_point(s, y, 0.25)
    assert (p.fpr, p.tpr, p.threshold, p.n_negatives, p.resolved) == (0.25, 0.75, 0.6, 4, True)
    assert not tpr_at_fpr_point(s, y, 0.1).resolved
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert best_threshold(s, y) == 0.6  # TPR .75, TNR .75: the best balanced accuracy, highest such threshold


def test_tpr_at_fpr_is_max_tpr_over_admissible_points():
    s, y = _data(3, n_pos=400, n_neg=500)
    f, t, _ = roc_curve(y, s, drop_intermediate=False)
    for target in (0.0, 0.001, 0.01, 0.1, 0.3):
        assert tpr_at_fpr(s, y, target) == pytest.approx(t[f <= target + 1e-12].max())
    # 0.1 % FPR with 500 negatives is FPR 0 exactly, and the point says it is unresolved.
    point = tpr_at_fpr_point(s, y, 0.001)
    assert point.fpr == 0.0 and not point.resolved and point.n_negatives == 500


def test_members_are_positive():
    s, y = _data(4)
    assert auc(s, 1 - y) == pytest.approx(1.0 - auc(s, y))
    assert auc(s, y) > 0.6  # members were generated with higher scores
    assert auc(-s, y) == pytest.approx(1.0 - auc(s, y))


def test_vectorised_bootstrap_matches_per_resample_loop():
    s, y = _data(5, n_pos=60, n_neg=90)
    metrics = [
        make_metric("auc"),
        make_metric("best_accuracy"),
        make_metric("tpr_at_fpr", fpr=0.05),
        make_metric("accuracy", threshold=0.3),
        make_metric("balanced_accuracy", threshold=0.3),
    ]
    fast = bootstrap_values(metrics, s, y, n_boot=40, seed=7)
    # The same metrics wrapped in lambdas take the per-resample path (sklearn-based point functions).
    slow = bootstrap_values([lambda a, b, m=m: m.fn(a, b) for m in metrics], s, y, n_boot=40, seed=7)
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_bootstrap_ci_contains_estimate_narrows_and_is_seeded():
    s, y = _data(6, n_pos=200, n_neg=200, decimals=None)
    lo, hi = bootstrap_ci(auc, s, y, n_boot=500, seed=1)
    assert lo < auc(s, y) < hi
    assert bootstrap_ci(auc, s, y, n_boot=500, seed=1) == (lo, hi)
    assert bootstrap_ci(auc, s, y, n_boot=500, seed=2) != (lo, hi)
    s_big, y_big = _data(6, n_pos=3200, n_neg=3200, decimals=None)
    lo_b, hi_b = bootstrap_ci(auc, s_big, y_big, n_boot=500, seed=1)
    # 16x the data: the width should shrink about 4x; require at least 2.5x.
    assert (hi_b - lo_b) < (hi - lo) / 2.5
    # Stratified: every resample keeps the class sizes, so the number of members is constant.
    n_members = bootstrap_values([lambda a, b: float(np.sum(b))], s, y, n_boot=20, seed=0)
    assert np.all(n_members == 200)


def test_bootstrap_auc_is_fast():
    s, y = _data(7, n_pos=2500, n_neg=2500, decimals=None)
    t0 = time.perf_counter()
    bootstrap_ci(auc, s, y, n_boot=1000, seed=0)
    assert time.perf_counter() - t0 < 2.0


def test_mia_metrics_keys_and_values():
    s, y = _data(8, n_pos=300, n_neg=1200)
    m = mia_metrics(s, y, threshold=0.25, n_boot=200, seed=0)
    expected = {*METRIC_KEYS, *(f"{k}_ci" for k in METRIC_KEYS), "threshold", "n_members", "n_nonmembers"}
    assert set(m) == expected
    assert set(METRIC_KEYS) == {"auc", "accuracy", "balanced_accuracy", "best_accuracy", "tpr_at_10pct_fpr",
                                "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"}
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, (s >= 0.25).astype(int)))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, (s >= 0.25).astype(int)))
    assert m["tpr_at_1pct_fpr"] == tpr_at_fpr(s, y, 0.01)
    assert m["best_accuracy"] >= m["accuracy"]
    assert m["tpr_at_0.1pct_fpr"] <= m["tpr_at_1pct_fpr"] <= m["tpr_at_10pct_fpr"]
    assert (m["threshold"], m["n_members"], m["n_nonmembers"]) == (0.25, 300, 1200)
    for k in METRIC_KEYS:
        lo, hi = m[f"{k}_ci"]
        assert 0.0 <= lo <= hi <= 1.0
    # threshold None: the label-free median rule; n_boot=0: no intervals.
    m0 = mia_metrics(s, y, n_boot=0)
    assert m0["threshold"] == float(np.median(s)) and m0["auc_ci"] is None


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, np.nan, 0.3], [1, 0, 1], "NaN"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "single class"),
        ([0.1, 0.2, 0.3], [1, 0], "same length"),
        ([0.1, 0.2], [1, 2], "0 \\(non-member\\) or 1"),
        ([[0.1, 0.2]], [[1, 0]], "1-D"),
    ],
)
def test_bad_input_raises(scores, labels, match):
    for fn in (auc, roc, best_accuracy, mia_metrics):
        with pytest.raises(MetricError, match=match):
            fn(scores, labels)
    with pytest.raises(ValueError):
        tpr_at_fpr(scores, labels, 0.01)
    assert issubclass(MetricError, FrleakError)


def test_aggregate_by_group():
    # Identity a: 5 images, b: 3, c: 1 (left out at k=2).
    groups = np.array(["a"] * 5 + ["b"] * 3 + ["c"])
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 7.0])
    labels = np.array([1] * 5 + [0] * 3 + [1])
    out = aggregate_by_group(scores, groups, 2, "max", seed=0, n_draws=50, labels=labels)
    assert out.n_left_out == 1 and out.labels is not None
    assert out.scores.shape == out.groups.shape == out.labels.shape == (100,)
    assert list(out.groups[:2]) == ["a", "b"] and list(out.labels[:2]) == [1, 0]
    a, b = out.scores[out.groups == "a"], out.scores[out.groups == "b"]
    # max of 2 of {1..5} without replacement is in {2..5}, all values reached over 50 draws
    assert set(a) == {2.0, 3.0, 4.0, 5.0} and set(b) == {20.0, 30.0}
    # k = all images: every draw is the full set, so the mean is the identity's mean
    full = aggregate_by_group(scores, groups, 3, "mean", n_draws=3)
    np.testing.assert_allclose(full.scores[full.groups == "b"], 20.0)
    assert full.n_left_out == 1 and full.labels is None
    med = aggregate_by_group(scores, groups, 5, "median")
    assert list(med.groups) == ["a"] and med.scores[0] == 3.0
    # seeded
    again = aggregate_by_group(scores, groups, 2, "max", seed=0, n_draws=50, labels=labels)
    np.testing.assert_array_equal(again.scores, out.scores)
    with pytest.raises(MetricError, match="no identity"):
        aggregate_by_group(scores, groups, 6)
    with pytest.raises(MetricError, match="differ within identity"):
        aggregate_by_group(scores, groups, 2, labels=np.r_[0, labels[1:]])
    with pytest.raises(MetricError, match="how"):
        aggregate_by_group(scores, groups, 2, "sum")  # type: ignore[arg-type]


def test_identity_aggregation_raises_auc_on_weak_signal():
    # 200 identities x 8 images, a weak per-image shift for members: averaging k images should help.
    rng = np.random.default_rng(9)
    ids = np.repeat(np.arange(200), 8)
    member = (ids < 100).astype(int)
    s = rng.normal(size=ids.size) + 0.3 * member
    aucs = []
    for k in (1, 8):
        g = aggregate_by_group(s, ids, k, "mean", seed=0, labels=member)
        assert g.labels is not None
        aucs.append(auc(g.scores, g.labels))
    assert aucs[1] > aucs[0] + 0.1
