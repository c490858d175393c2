"""Membership-inference metrics: exact ROC, AUC, TPR at low FPR, accuracies, stratified bootstrap intervals.

Conventions (Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022, "LiRA"):

* members are the POSITIVE class (label 1) and a higher score means "more likely a member";
* the ROC is exact: every distinct score is a threshold (``sklearn.metrics.roc_curve`` with
  ``drop_intermediate=False``), never a grid of thresholds;
* the headline numbers are the TPR at a low FPR (10 %, 1 %, 0.1 %), read off that exact ROC as the largest TPR
  among points with FPR <= target (LiRA's code uses FPR < target; <= differs only when the target is an exact
  multiple of 1/n_negatives). With n negatives, FPRs below 1/n cannot be resolved: the value returned is then
  the TPR at FPR = 0 exactly, and :class:`OperatingPoint` / ``n_nonmembers`` let a report flag it.

Uncertainty is a percentile bootstrap, stratified by class (members and non-members are resampled separately,
so every resample keeps both classes and the class sizes of the data). All resamples of one call share a grid of
thresholds (the distinct scores), so a resample's exact ROC is a pair of cumulative counts; every metric here is
a function of those counts and is evaluated for all resamples at once (see :class:`RocBatch`).

Identity-level membership ("given k photos of this person, was the person in training?") aggregates image scores
per identity with :func:`aggregate_by_group`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import roc_curve

from frleak.errors import FrleakError

FloatArray = NDArray[np.float64]

#: The low-FPR operating points reported by :func:`mia_metrics`: key -> target FPR.
TPR_AT_FPR_KEYS: dict[str, float] = {
    "tpr_at_10pct_fpr": 0.10,
    "tpr_at_1pct_fpr": 0.01,
    "tpr_at_0.1pct_fpr": 0.001,
}
#: The metric keys of :func:`mia_metrics`, each also reported with ``<key>_ci``.
METRIC_KEYS: tuple[str, ...] = ("auc", "accuracy", "balanced_accuracy", "best_accuracy", *TPR_AT_FPR_KEYS)

# Resamples are evaluated in blocks of at most this many (resample x threshold) cells per count matrix (~16 MB).
_BLOCK_CELLS = 1 << 21


class MetricError(FrleakError, ValueError):
    """Scores/labels unusable for a metric (NaN, one class only, mismatched lengths, bad shapes).

    A ValueError too, so numeric code can catch it as one; a FrleakError, so the CLI prints it as one line."""


# ---------------------------------------------------------------------------------------------------------------
# input checks


def check_scores_labels(scores: ArrayLike, labels: ArrayLike, what: str = "scores") -> tuple[FloatArray, NDArray]:
    """Validate and convert: scores (n,) finite floats, labels (n,) in {0, 1} with both classes present.

    Returns ``(scores float64 (n,), labels bool (n,))``; raises :class:`MetricError` naming ``what``."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise MetricError(f"{what}: scores and labels must be 1-D arrays, got shapes {s.shape} and {y.shape}")
    if s.shape[0] != y.shape[0]:
        raise MetricError(f"{what}: {s.shape[0]} scores but {y.shape[0]} labels; they must have the same length")
    bad = ~np.isfinite(s)
    if bad.any():
        raise MetricError(
            f"{what}: {int(bad.sum())} of {s.size} scores are NaN or infinite (first at index "
            f"{int(np.flatnonzero(bad)[0])}); fix the attack's scoring before computing metrics"
        )
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.number):
            raise MetricError(f"{what}: labels must be 0/1 or booleans (1 = member), got dtype {y.dtype}")
        if not np.isin(y, (0, 1)).all():
            raise MetricError(f"{what}: labels must be 0 (non-member) or 1 (member), got values {np.unique(y)[:5]}")
        y = y.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise MetricError(
            f"{what}: labels hold a single class ({n_pos} members, {y.size - n_pos} non-members); membership "
            "metrics need both members and non-members"
        )
    return s, y


# ---------------------------------------------------------------------------------------------------------------
# point estimates


def roc(scores: ArrayLike, labels: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The exact ROC: ``(fpr, tpr, thresholds)``, each (n_distinct_scores + 1,).

    Every distinct score is a threshold (``score >= t`` -> member); the first point is (0, 0) at ``t = inf``.
    """
    s, y = check_scores_labels(scores, labels)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return fpr.astype(np.float64), tpr.astype(np.float64), thr.astype(np.float64)


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the exact ROC = P(member score > non-member score) + P(tie) / 2 (Mann-Whitney U / n1 n0)."""
    s, y = check_scores_labels(scores, labels)
    return float(_auc_batch(_single_batch(s, y))[0])


@dataclass(frozen=True)
class OperatingPoint:
    """The ROC point chosen for a target FPR: the largest TPR among points with FPR <= ``target_fpr``.

    ``resolved`` is False when the negatives are too few for the target (target * n_negatives < 1): the point is
    then the one at FPR = 0 exactly, which a report should flag (e.g. 0.1 % FPR needs >= 1000 non-members)."""

    target_fpr: float
    fpr: float
    tpr: float
    threshold: float
    n_negatives: int
    n_positives: int

    @property
    def resolved(self) -> bool:
        return self.target_fpr * self.n_negatives >= 1.0


def tpr_at_fpr_point(scores: ArrayLike, labels: ArrayLike, fpr: float) -> OperatingPoint:
    """The exact operating point for a target FPR (see :class:`OperatingPoint`)."""
    if not 0.0 <= fpr <= 1.0:
        raise MetricError(f"target fpr must be in [0, 1], got {fpr}")
    s, y = check_scores_labels(scores, labels)
    n_neg = int((~y).sum())
    f, t, thr = roc_curve(y, s, drop_intermediate=False)
    # Compare false-positive counts, not float rates, so a target that is an exact multiple of 1/n is included.
    ok = np.flatnonzero(np.rint(f * n_neg) <= _fp_limit(fpr, n_neg))
    i = int(ok[-1])  # TPR is non-decreasing along the ROC; the point at (0, 0) always qualifies
    return OperatingPoint(fpr, float(f[i]), float(t[i]), float(thr[i]), n_neg, int(y.sum()))


def tpr_at_fpr(scores: ArrayLike, labels: ArrayLike, fpr: float) -> float:
    """Largest TPR among exact-ROC points with FPR <= ``fpr`` (LiRA convention, see the module docstring).

    With fewer than 1/fpr non-members this is the TPR at FPR = 0; use :func:`tpr_at_fpr_point` to know."""
    return tpr_at_fpr_point(scores, labels, fpr).tpr


def accuracy_at_threshold(scores: ArrayLike, labels: ArrayLike, threshold: float) -> float:
    """Accuracy of the rule ``score >= threshold`` -> member. Depends on the class ratio of the data."""
    s, y = check_scores_labels(scores, labels)
    return float(np.mean((s >= threshold) == y))


def balanced_accuracy_at_threshold(scores: ArrayLike, labels: ArrayLike, threshold: float) -> float:
    """(TPR + TNR) / 2 of the rule ``score >= threshold`` -> member (as sklearn's balanced_accuracy_score)."""
    s, y = check_scores_labels(scores, labels)
    pred = s >= threshold
    return float(0.5 * (pred[y].mean() + (~pred[~y]).mean()))


def best_accuracy(scores: ArrayLike, labels: ArrayLike) -> float:
    """OPTIMISTIC accuracy: the maximum over all exact-ROC thresholds, chosen with the evaluated labels.

    An upper bound on what the score can achieve with one threshold; not an attack's accuracy (an attack must
    choose its threshold without the labels, e.g. on shadow data with :func:`best_threshold`)."""
    s, y = check_scores_labels(scores, labels)
    return float(_best_accuracy_batch(_single_batch(s, y))[0])


def best_threshold(scores: ArrayLike, labels: ArrayLike, *, balanced: bool = True) -> float:
    """The exact-ROC threshold maximising balanced accuracy (``balanced=False``: plain accuracy).

    For calibrating an attack on data the attacker owns (shadow members / non-members); the highest such
    threshold wins ties. Returns a score value (``score >= t`` -> member), or ``inf`` if predicting nobody wins."""
    s, y = check_scores_labels(scores, labels)
    f, t, thr = roc_curve(y, s, drop_intermediate=False)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if balanced:
        gain = 0.5 * (t + 1.0 - f)
    else:
        gain = (t * n_pos + (1.0 - f) * n_neg) / (n_pos + n_neg)
    return float(thr[int(np.argmax(gain))])


# ---------------------------------------------------------------------------------------------------------------
# many resamples at once


@dataclass(frozen=True)
class RocBatch:
    """Exact ROCs of B resamples of the same data, on a shared grid of thresholds.

    thresholds: (m,) the distinct scores of the data, descending. tp / fp: (B, m + 1) integer counts of members /
    non-members with ``score >= thresholds[j - 1]`` in column j; column 0 is "predict nobody" (t = inf).
    Every resample has n_pos members and n_neg non-members (stratified). A threshold absent from a resample gives
    a repeated point, which changes none of the metrics.
    """

    thresholds: FloatArray
    tp: NDArray[np.int64]
    fp: NDArray[np.int64]
    n_pos: int
    n_neg: int


def _roc_batch(s: FloatArray, y: NDArray, pos_idx: NDArray, neg_idx: NDArray) -> RocBatch:
    """Build the RocBatch of resamples given as indices into the members (B, n_pos) and non-members (B, n_neg)."""
    uniq = np.unique(s)  # ascending
    m = uniq.size
    desc_bin = m - 1 - np.searchsorted(uniq, s)  # position of each score among the descending thresholds
    pos_bin, neg_bin = desc_bin[y], desc_bin[~y]
    n_boot = pos_idx.shape[0]
    offsets = (np.arange(n_boot, dtype=np.int64) * m)[:, None]

    def cumulative(bins: NDArray) -> NDArray[np.int64]:
        counts = np.bincount((offsets + bins).ravel(), minlength=n_boot * m).reshape(n_boot, m)
        out = np.zeros((n_boot, m + 1), dtype=np.int64)
        np.cumsum(counts, axis=1, out=out[:, 1:])
        return out

    return RocBatch(uniq[::-1].copy(), cumulative(pos_bin[pos_idx]), cumulative(neg_bin[neg_idx]),
                    pos_idx.shape[1], neg_idx.shape[1])


def _single_batch(s: FloatArray, y: NDArray) -> RocBatch:
    """The RocBatch of the data itself (B = 1, no resampling)."""
    return _roc_batch(s, y, np.arange(int(y.sum()))[None], np.arange(int((~y).sum()))[None])


def _fp_limit(fpr: float, n_neg: int) -> float:
    """Most false positives allowed at a target FPR (the 1e-9 absorbs float error in fpr * n_neg)."""
    return float(np.floor(fpr * n_neg + 1e-9))


def _column_at(b: RocBatch, threshold: float) -> int:
    """Column of the rule ``score >= threshold``: the number of distinct scores >= threshold."""
    return int(np.count_nonzero(b.thresholds >= threshold))


def _auc_batch(b: RocBatch) -> FloatArray:
    # Trapezoids of the exact ROC in counts: sum over steps of d(FP) * (TP_left + TP_right) / 2, which equals the
    # Mann-Whitney U statistic with ties counted 1/2 (sklearn's roc_auc_score).
    area = (np.diff(b.fp, axis=1) * (b.tp[:, 1:] + b.tp[:, :-1])).sum(axis=1)
    return area / (2.0 * b.n_pos * b.n_neg)


def _best_accuracy_batch(b: RocBatch) -> FloatArray:
    return (b.tp + b.n_neg - b.fp).max(axis=1) / (b.n_pos + b.n_neg)


def _tpr_at_fpr_batch(b: RocBatch, fpr: float) -> FloatArray:
    ok = b.fp <= _fp_limit(fpr, b.n_neg)
    return np.where(ok, b.tp, 0).max(axis=1) / b.n_pos


def _accuracy_batch(b: RocBatch, threshold: float) -> FloatArray:
    j = _column_at(b, threshold)
    return (b.tp[:, j] + b.n_neg - b.fp[:, j]) / (b.n_pos + b.n_neg)


def _balanced_accuracy_batch(b: RocBatch, threshold: float) -> FloatArray:
    j = _column_at(b, threshold)
    return 0.5 * (b.tp[:, j] / b.n_pos + 1.0 - b.fp[:, j] / b.n_neg)


@dataclass(frozen=True)
class Metric:
    """A metric of (scores, labels) that :func:`bootstrap_ci` can evaluate on all resamples at once.

    Call it like the plain function; ``batched`` maps a :class:`RocBatch` to (B,) values. Build with
    :func:`make_metric`."""

    name: str
    fn: Callable[[ArrayLike, ArrayLike], float]
    batched: Callable[[RocBatch], FloatArray]

    def __call__(self, scores: ArrayLike, labels: ArrayLike) -> float:
        return self.fn(scores, labels)


def make_metric(
    name: Literal["auc", "best_accuracy", "tpr_at_fpr", "accuracy", "balanced_accuracy"], **params: float
) -> Metric:
    """A vectorised :class:`Metric`: ``make_metric("auc")``, ``make_metric("tpr_at_fpr", fpr=0.01)``,
    ``make_metric("accuracy", threshold=0.5)``, ``make_metric("balanced_accuracy", threshold=0.5)``."""
    need = {"tpr_at_fpr": "fpr", "accuracy": "threshold", "balanced_accuracy": "threshold"}.get(name)
    if name not in ("auc", "best_accuracy", "tpr_at_fpr", "accuracy", "balanced_accuracy"):
        raise MetricError(
            f"unknown metric {name!r}; known: auc, best_accuracy, tpr_at_fpr, accuracy, balanced_accuracy"
        )
    if set(params) != ({need} if need else set()):
        raise MetricError(f"metric {name!r} takes {'parameter ' + need if need else 'no parameters'}, got {params}")
    if name == "auc":
        return Metric(name, auc, _auc_batch)
    if name == "best_accuracy":
        return Metric(name, best_accuracy, _best_accuracy_batch)
    p = float(params[need])  # type: ignore[index]
    if name == "tpr_at_fpr":
        return Metric(f"tpr_at_fpr({p:g})", lambda s, y: tpr_at_fpr(s, y, p), lambda b: _tpr_at_fpr_batch(b, p))
    if name == "accuracy":
        return Metric(
            f"accuracy({p:g})", lambda s, y: accuracy_at_threshold(s, y, p), lambda b: _accuracy_batch(b, p)
        )
    return Metric(
        f"balanced_accuracy({p:g})",
        lambda s, y: balanced_accuracy_at_threshold(s, y, p),
        lambda b: _balanced_accuracy_batch(b, p),
    )


# The plain functions without parameters map to their vectorised forms, so bootstrap_ci(auc, ...) is fast.
_VECTORISED: dict[Callable[..., float], Metric] = {auc: make_metric("auc"), best_accuracy: make_metric("best_accuracy")}


def _resample_indices(n_pos: int, n_neg: int, n_boot: int, seed: int) -> tuple[NDArray, NDArray]:
    """Stratified bootstrap: (n_boot, n_pos) member and (n_boot, n_neg) non-member indices, with replacement.
    Drawn all at once from one seeded stream, so a seed gives the same resamples whatever the blocking."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n_pos, size=(n_boot, n_pos), dtype=np.int32),
            rng.integers(0, n_neg, size=(n_boot, n_neg), dtype=np.int32))


def bootstrap_values(
    metrics: Sequence[Callable[..., float]], scores: ArrayLike, labels: ArrayLike, *, n_boot: int = 1000, seed: int = 0
) -> FloatArray:
    """Each metric on the same ``n_boot`` stratified resamples: (len(metrics), n_boot).

    :class:`Metric` objects (and the plain :func:`auc`, :func:`best_accuracy`) are vectorised; any other callable
    ``f(scores, labels) -> float`` is called once per resample (correct, but slower)."""
    if n_boot < 1:
        raise MetricError(f"n_boot must be >= 1, got {n_boot}")
    s, y = check_scores_labels(scores, labels)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    pos_idx, neg_idx = _resample_indices(pos.size, neg.size, n_boot, seed)
    out = np.empty((len(metrics), n_boot), dtype=np.float64)
    resolved = [m if isinstance(m, Metric) else _VECTORISED.get(m) for m in metrics]
    fast = [i for i, m in enumerate(resolved) if m is not None]
    if fast:
        block = max(1, _BLOCK_CELLS // (np.unique(s).size + 1))
        for start in range(0, n_boot, block):
            b = _roc_batch(s, y, pos_idx[start:start + block], neg_idx[start:start + block])
            for i in fast:
                out[i, start:start + block] = resolved[i].batched(b)  # type: ignore[union-attr]
    slow = [i for i, m in enumerate(resolved) if m is None]
    if slow:
        # Members first, then non-members: the same resample the vectorised path sees.
        y_boot = np.r_[np.ones(pos.size, dtype=bool), np.zeros(neg.size, dtype=bool)]
        for r in range(n_boot):
            s_boot = np.r_[s[pos[pos_idx[r]]], s[neg[neg_idx[r]]]]
            for i in slow:
                out[i, r] = float(metrics[i](s_boot, y_boot))
    return out


def bootstrap_ci(
    metric_fn: Callable[..., float],
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(lo, hi)`` of ``metric_fn(scores, labels)`` at confidence ``level``.

    Stratified by class: members and non-members are resampled separately with replacement (Efron & Tibshirani,
    "An Introduction to the Bootstrap", ch. 13). Same seed -> same interval. Vectorised for :class:`Metric`
    objects and for :func:`auc` / :func:`best_accuracy` (1000 resamples of 5000 scores in well under a second).
    Note: for TPR at an FPR near 1/n_negatives, and for the optimistic best accuracy, the bootstrap is biased;
    read such intervals as rough."""
    if not 0.0 < level < 1.0:
        raise MetricError(f"level must be in (0, 1), got {level}")
    vals = bootstrap_values([metric_fn], scores, labels, n_boot=n_boot, seed=seed)[0]
    return _percentile(vals, level)


def _percentile(vals: FloatArray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------------------
# the report


def mia_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """All membership-inference metrics of one attack, with bootstrap intervals (JSON-ready plain floats).

    Keys: ``auc``, ``accuracy``, ``balanced_accuracy``, ``best_accuracy``, ``tpr_at_10pct_fpr``,
    ``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr``, each with ``<key>_ci = [lo, hi]`` (None when ``n_boot == 0``),
    plus ``threshold``, ``n_members``, ``n_nonmembers``.

    threshold: the attack's decision rule ``score >= threshold`` -> member for ``accuracy`` and
    ``balanced_accuracy``. It must be chosen WITHOUT the evaluated labels: pass the threshold the attack
    calibrated on its own (shadow) data, e.g. 0.5 for a member probability, or :func:`best_threshold` on shadow
    scores. When None, the MEDIAN of the evaluated scores is used: a label-free rule (it predicts half the
    queries as members, right for the usual balanced evaluation), so ``accuracy`` stays an honest number; the
    label-chosen optimum is reported separately as the optimistic ``best_accuracy``. The threshold is held fixed
    across bootstrap resamples (it is part of the attack, not of the data).

    ``tpr_at_0.1pct_fpr`` with fewer than 1000 non-members is the TPR at FPR = 0 (see :class:`OperatingPoint`);
    a report should flag it using ``n_nonmembers``.
    """
    s, y = check_scores_labels(scores, labels)
    if n_boot < 0:
        raise MetricError(f"n_boot must be >= 0, got {n_boot}")
    if threshold is None:
        thr = float(np.median(s))
    else:
        thr = float(threshold)
        if np.isnan(thr):
            raise MetricError("threshold is NaN; pass the attack's calibrated threshold or None")
    metrics: dict[str, Metric] = {
        "auc": make_metric("auc"),
        "accuracy": make_metric("accuracy", threshold=thr),
        "balanced_accuracy": make_metric("balanced_accuracy", threshold=thr),
        "best_accuracy": make_metric("best_accuracy"),
        **{k: make_metric("tpr_at_fpr", fpr=f) for k, f in TPR_AT_FPR_KEYS.items()},
    }
    out: dict[str, Any] = {}
    for key, metric in metrics.items():
        out[key] = float(metric(s, y))
    if n_boot > 0:
        vals = bootstrap_values(list(metrics.values()), s, y, n_boot=n_boot, seed=seed)
        for i, key in enumerate(metrics):
            out[f"{key}_ci"] = list(_percentile(vals[i], level))
    else:
        for key in metrics:
            out[f"{key}_ci"] = None
    out["threshold"] = thr
    out["n_members"] = int(y.sum())
    out["n_nonmembers"] = int((~y).sum())
    return out


# ---------------------------------------------------------------------------------------------------------------
# identity level


class GroupedScores(NamedTuple):
    """Scores aggregated per identity. scores / groups / labels: (n_draws * n_kept,), draw-major (all kept
    identities of draw 0, then of draw 1, ...), identities in sorted order within a draw. labels is None unless
    per-image labels were given. n_left_out: identities with fewer than k images, left out."""

    scores: FloatArray
    groups: NDArray
    labels: NDArray | None
    n_left_out: int


_AGGREGATORS: dict[str, Callable[..., FloatArray]] = {"mean": np.mean, "median": np.median, "max": np.max}


def aggregate_by_group(
    scores: ArrayLike,
    groups: ArrayLike | Sequence[Hashable],
    k: int,
    how: Literal["mean", "median", "max"] = "mean",
    *,
    seed: int = 0,
    n_draws: int = 1,
    labels: ArrayLike | None = None,
) -> GroupedScores:
    """Identity-level scores: for each identity, draw k of its images without replacement and aggregate their
    scores with ``how``; repeat ``n_draws`` times with fresh draws.

    scores: (n,) image scores (higher = member). groups: (n,) identity of each image (ints or strings).
    labels: optional (n,) per-image identity-membership labels, which must be constant within an identity;
    returned per aggregated score. Identities with fewer than k images are left out and counted.

    Repeated draws of one identity are not independent: compute metrics per draw (or average over draws), not on
    the pooled draws, or the bootstrap intervals will be too narrow.
    """
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups)
    if s.ndim != 1 or g.ndim != 1 or s.shape != g.shape:
        raise MetricError(f"scores and groups must be 1-D of the same length, got shapes {s.shape} and {g.shape}")
    if not np.isfinite(s).all():
        raise MetricError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    if how not in _AGGREGATORS:
        raise MetricError(f"how must be one of {sorted(_AGGREGATORS)}, got {how!r}")
    if int(k) != k or k < 1:
        raise MetricError(f"k must be a positive integer, got {k}")
    if int(n_draws) != n_draws or n_draws < 1:
        raise MetricError(f"n_draws must be a positive integer, got {n_draws}")
    k, n_draws = int(k), int(n_draws)
    uniq, codes = np.unique(g, return_inverse=True)
    counts = np.bincount(codes, minlength=uniq.size)
    keep = counts >= k
    if not keep.any():
        raise MetricError(f"no identity has k={k} images (the largest has {int(counts.max(initial=0))})")
    lab: NDArray | None = None
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != s.shape:
            raise MetricError(f"labels must have the shape of scores {s.shape}, got {y.shape}")
        first = np.zeros(uniq.size, dtype=np.int64)
        first[codes[::-1]] = np.arange(s.size)[::-1]  # index of each identity's first image
        mixed = np.flatnonzero(y != y[first[codes]])
        if mixed.size:
            raise MetricError(f"labels differ within identity {uniq[codes[mixed[0]]]!r}; identity labels must agree")
        lab = np.tile(y[first[keep]], n_draws)

    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rng = np.random.default_rng(seed)
    agg = _AGGREGATORS[how]
    out = np.empty((n_draws, int(keep.sum())), dtype=np.float64)
    for d in range(n_draws):
        # A random order within each identity (sort by identity, then by a random key); keep the first k.
        order = np.lexsort((rng.random(s.size), codes))
        c = codes[order]
        rank = np.arange(s.size) - starts[c]
        take = (rank < k) & keep[c]
        out[d] = agg(s[order][take].reshape(-1, k), axis=1)
    return GroupedScores(out.ravel(), np.tile(uniq[keep], n_draws), lab, int((~keep).sum()))
