"""Figures of a membership-inference report: ROC on log-log axes, per-layer BN distances, identity-level vs k.

Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no display, no global
backend switch) and written atomically as PNG. Every function returns the path it wrote.

Conventions follow :mod:`frleak.metrics`: members are the positive class, higher score = member; the ROC is drawn
on log-log axes so the low-FPR regime that matters for privacy is visible (Carlini et al., IEEE S&P 2022).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from frleak.io import atomic_write_bytes
from frleak.metrics import MetricError, auc, check_scores_labels, roc, tpr_at_fpr

_DPI = 120


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_roc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path, title: str = "Membership inference ROC"
) -> Path:
    """ROC curves of several attacks on log-log axes, with the chance diagonal.

    curves: name -> (scores (n,), labels (n,)), members = 1. The FPR axis starts at 1 / n_negatives of the curve
    with the most negatives (no smaller FPR can be measured), but not below 1e-4. The legend gives the AUC and the
    TPR at 1 % FPR of each curve.
    """
    if not curves:
        raise MetricError("plot_roc: no curves given")
    checked = {name: check_scores_labels(s, y, what=f"plot_roc curve {name!r}") for name, (s, y) in curves.items()}
    lo = max(1e-4, min(1.0 / int((~y).sum()) for _, y in checked.values()))
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot()
    for name, (s, y) in checked.items():
        fpr, tpr, _ = roc(s, y)
        label = f"{name} (AUC {auc(s, y):.3f}, TPR@1%FPR {tpr_at_fpr(s, y, 0.01):.3f})"
        ax.plot(fpr, tpr, lw=1.5, label=label)  # points at FPR or TPR 0 fall off the log axes, as in LiRA
    ax.plot([lo, 1.0], [lo, 1.0], ls="--", color="grey", lw=1, label="chance")
    ax.axvline(0.01, color="lightgrey", lw=0.8, ls=":", zorder=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(lo, 1.0)
    ax.set_xlabel("False positive rate (non-members called members)")
    ax.set_ylabel("True positive rate (members found)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def _as_2d(x: ArrayLike, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise MetricError(f"plot_layer_distances: {what} must be (n_images, n_layers) with both >= 1, got {a.shape}")
    if not np.isfinite(a).all():
        raise MetricError(f"plot_layer_distances: {what} holds {int((~np.isfinite(a)).sum())} NaN/inf values")
    return a


def plot_layer_distances(
    member_feats: ArrayLike,
    nonmember_feats: ArrayLike,
    path: str | Path,
    layer_names: Sequence[str] | None = None,
    title: str = "Per-layer BN distance",
    *,
    member_closer: bool = True,
) -> Path:
    """Which BatchNorm layers leak: per layer, member vs non-member distance distributions and the layer's AUC.

    member_feats: (N, L), nonmember_feats: (M, L): one distance d_i per image and BN layer (e.g. between the
    image's activation statistics and the layer's running statistics, arXiv 2401.13719 stage 1).
    Top panel: median and interquartile band of d_i per layer, members vs non-members (log y when all d > 0).
    Bottom panel: the AUC of the single-layer attack with score = -d_i (``member_closer=True``: members are
    expected closer to the training statistics) or +d_i; 0.5 is chance, below 0.5 the other direction leaks.
    """
    mem = _as_2d(member_feats, "member_feats")
    non = _as_2d(nonmember_feats, "nonmember_feats")
    if mem.shape[1] != non.shape[1]:
        raise MetricError(
            f"plot_layer_distances: member_feats has {mem.shape[1]} layers but nonmember_feats {non.shape[1]}"
        )
    n_layers = mem.shape[1]
    names = [str(i) for i in range(n_layers)] if layer_names is None else [str(n) for n in layer_names]
    if len(names) != n_layers:
        raise MetricError(f"plot_layer_distances: {len(names)} layer_names for {n_layers} layers")
    labels = np.r_[np.ones(mem.shape[0], dtype=int), np.zeros(non.shape[0], dtype=int)]
    sign = -1.0 if member_closer else 1.0
    both = np.vstack([mem, non])
    aucs = np.array([auc(sign * both[:, j], labels) for j in range(n_layers)])

    x = np.arange(n_layers)
    fig = Figure(figsize=(max(6.0, 0.22 * n_layers + 2.0), 6.5))
    ax_d, ax_a = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for feats, name, color, dx in ((mem, "members", "tab:red", -0.15), (non, "non-members", "tab:blue", 0.15)):
        q25, med, q75 = np.quantile(feats, [0.25, 0.5, 0.75], axis=0)
        ax_d.fill_between(x, q25, q75, color=color, alpha=0.2, lw=0)
        ax_d.plot(x + dx, med, marker="o", ms=3, lw=1, color=color, label=f"{name} (n={feats.shape[0]}): median, IQR")
    if (both > 0).all():
        ax_d.set_yscale("log")
    elif (both != 0).any():  # zeros (or signed features) cannot go on a log axis; symlog keeps wide ranges readable
        ax_d.set_yscale("symlog", linthresh=float(np.quantile(np.abs(both[both != 0]), 0.05)))
    ax_d.set_ylabel("distance d_i")
    ax_d.set_title(title)
    ax_d.legend(fontsize=7)
    ax_d.grid(True, alpha=0.3)

    colors = np.where(aucs >= 0.5, "tab:red", "tab:blue")
    ax_a.bar(x, aucs - 0.5, bottom=0.5, color=colors, width=0.8)
    ax_a.axhline(0.5, color="grey", ls="--", lw=1)
    ax_a.set_ylim(0.0, 1.0)
    ax_a.set_ylabel(f"single-layer AUC ({'-' if member_closer else '+'}d)")
    ax_a.grid(True, axis="y", alpha=0.3)
    step = max(1, int(np.ceil(n_layers / 60)))  # at most ~60 tick labels
    ax_a.set_xticks(x[::step])
    ax_a.set_xticklabels(names[::step], rotation=90, fontsize=6)
    ax_a.set_xlabel("BatchNorm layer")
    return _save(fig, path)


_CHANCE_TPR = re.compile(r"^tpr_at_([0-9.]+)pct_fpr$")


def _chance(key: str) -> float | None:
    """The value of a random guess: AUC 0.5, TPR at x % FPR = x / 100, accuracies 0.5."""
    if key in ("auc", "balanced_accuracy", "accuracy", "best_accuracy"):
        return 0.5
    m = _CHANCE_TPR.match(key)
    return float(m.group(1)) / 100.0 if m else None


def plot_metric_vs_k(
    results: Mapping[str, Mapping[int, Mapping[str, Any]]],
    path: str | Path,
    title: str = "Identity-level membership vs photos per identity",
    metrics: Sequence[str] = ("auc", "tpr_at_1pct_fpr"),
) -> Path:
    """Identity-level membership as the attacker gets more photos per person (k = 1, 2, 4, 8, ...).

    results: series name (an attack, an aggregation rule) -> k -> a :func:`frleak.metrics.mia_metrics` dict (at
    least the keys in ``metrics``; ``<key>_ci`` is drawn as an error bar when present and not None).
    One panel per metric, k on a log2 axis, the chance level dashed.
    """
    if not results:
        raise MetricError("plot_metric_vs_k: no results given")
    if not metrics:
        raise MetricError("plot_metric_vs_k: no metrics to plot")
    for name, by_k in results.items():
        if not by_k:
            raise MetricError(f"plot_metric_vs_k: series {name!r} has no k")
        for k, res in by_k.items():
            if int(k) != k or k < 1:
                raise MetricError(f"plot_metric_vs_k: series {name!r} has k={k!r}; k must be a positive integer")
            missing = [m for m in metrics if m not in res]
            if missing:
                raise MetricError(f"plot_metric_vs_k: series {name!r}, k={k} lacks {missing}")
    all_k = sorted({int(k) for by_k in results.values() for k in by_k})
    fig = Figure(figsize=(4.2 * len(metrics), 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, key in zip(axes, metrics):
        for i, (name, by_k) in enumerate(results.items()):
            ks = sorted(by_k)
            # Dodge the series a little along the log2 axis so their error bars do not hide each other.
            xs = np.array(ks, dtype=np.float64) * 2.0 ** (0.04 * (i - (len(results) - 1) / 2))
            vals = np.array([float(by_k[k][key]) for k in ks])
            cis = [by_k[k].get(f"{key}_ci") for k in ks]
            if all(ci is not None for ci in cis):
                lo, hi = np.asarray(cis, dtype=np.float64).T
                yerr = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
                ax.errorbar(xs, vals, yerr=yerr, marker="o", ms=4, capsize=3, label=name)
            else:
                ax.plot(xs, vals, marker="o", ms=4, label=name)
        chance = _chance(key)
        if chance is not None:
            ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_k)
        ax.set_xticklabels([str(k) for k in all_k])
        ax.set_xlabel("k (photos per identity)")
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)
