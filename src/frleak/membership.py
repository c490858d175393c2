"""Stage 1 end to end: features of target and shadow on their splits, every attack in both threat settings and
against every non-member kind, identity-level membership, plots. The benchmark, the CLI and the audit pipeline call
:func:`run_membership`; it takes objects (models, split) and keyword arguments, and writes only under ``out_dir``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frleak.attack_data import NO_BN_STATUS, load_images, model_inputs, with_reference
from frleak.data.splits import ROLES, MembershipSplit, ModelSplit
from frleak.evaluation import KINDS, ModelPool, identity_level, setting_a, setting_b
from frleak.features import FeatureSet, has_bn_statistics

log = logging.getLogger(__name__)

PAPER_ATTACK = "paper_bn_linear"
DEFAULT_ATTACKS = ("paper_bn_linear", "bn_mean_threshold", "embedding_nn", "embedding_norm", "flip_consistency",
                   "bn_rich_linear", "bn_calibrated", "bn_gbm", "frleak_strong")
IDENTITY_ATTACKS = ("paper_bn_linear", "frleak_strong")


@dataclass(frozen=True)
class MembershipConfig:
    """What stage 1 runs. Defaults: every registered attack of the report, both settings, all kinds."""

    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    settings: tuple[str, ...] = ("A", "B")
    kinds: tuple[str, ...] = KINDS
    folds: int = 5  # setting A cross-fitting folds
    n_boot: int = 1000  # bootstrap resamples for the intervals
    identity_ks: tuple[int, ...] = (1, 2, 4, 8)
    identity_attacks: tuple[str, ...] = IDENTITY_ATTACKS
    batch_size: int = 128
    device: str = "cpu"
    seed: int = 0
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)


def split_pool_samples(ms: ModelSplit) -> tuple[list[Any], np.ndarray, np.ndarray]:
    samples = [s for r in ROLES for s in ms.role(r)]
    roles = np.array([r for r in ROLES for _ in ms.role(r)])
    ids = np.array([s.identity for s in samples])
    return samples, roles, ids


def build_pool(model: torch.nn.Module, ms: ModelSplit, reference: torch.nn.Module | None, *, batch_size: int = 128,
               device: str = "cpu", progress: bool = True) -> tuple[ModelPool, FeatureSet]:
    """Attack inputs of ``model`` on every image of its split (all roles), with ``reference`` distances when both
    models have BN statistics. A BN-free model gets the embedding groups only (its FeatureSet has no layers)."""
    samples, roles, ids = split_pool_samples(ms)
    images = load_images(samples, model.input_spec, progress=progress)
    inputs, fs = model_inputs(model, images, batch_size=batch_size, device=device, progress=progress)
    if reference is not None and fs.layer_names and has_bn_statistics(reference):
        ref_images = images if reference.input_spec == model.input_spec else load_images(samples, reference.input_spec)
        ref_inputs, _ = model_inputs(reference, ref_images, batch_size=batch_size, device=device, progress=progress)
        inputs = with_reference(inputs, ref_inputs)
    return ModelPool(inputs, roles, ids), fs


@dataclass
class PoolResults:
    """Stage 1 on precomputed pools: result rows, identity-level rows, single-layer AUCs, plot paths."""

    rows: list[dict[str, Any]]
    identity_level: list[dict[str, Any]]
    layer_auc: dict[str, list[float]]
    plots: dict[str, str]
    fit_seconds: dict[str, float] = field(default_factory=dict)  # per attack, summed over setting-A folds


def evaluate_pools(tpool: ModelPool, spool: ModelPool | None, layer_names: Sequence[str], config: MembershipConfig,
                   plots_dir: Path | None = None, threads: int | None = 1) -> PoolResults:
    """Every attack in setting A (out-of-fold on the target's pool) and B (fitted on the shadow's pool), per
    non-member kind present; the identity level; plots into ``plots_dir`` (None: no plots). On a pool without BN
    features the BN attacks get ``status`` = :data:`NO_BN_STATUS`, never a number. ``threads``: OpenMP threads of
    the attack models (None: the library default; on a busy 2-core machine 1 is many times faster than 2);
    results do not depend on it. Timings go to ``fit_seconds``, not into the rows (rows are results)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="openmp"):
        res = _evaluate_pools(tpool, spool, list(layer_names), config, plots_dir)
    for row in res.rows:
        secs = row.pop("fit_seconds", None)
        if secs is not None:
            res.fit_seconds[row["attack"]] = round(res.fit_seconds.get(row["attack"], 0.0) + secs, 2)
    return res


def _evaluate_pools(tpool: ModelPool, spool: ModelPool | None, layer_names: list[str], config: MembershipConfig,
                    plots_dir: Path | None) -> PoolResults:
    bn = "paper" in tpool.inputs
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for kind in config.kinds:
        if len(tpool.rows(kind)) == 0:
            continue
        log.info("  attacks vs %s non-members: %d attack(s)", kind, len(config.attacks))
        if "A" in config.settings:
            r, s = setting_a(tpool, kind, config.attacks, folds=config.folds, seed=config.seed, n_boot=config.n_boot,
                             attack_params=config.attack_params)
            rows += r
            curves[f"A_{kind}"] = {a: (v, s["labels"]) for a, v in s.items() if a != "labels"}
        if spool is not None and "B" in config.settings and len(spool.rows(kind)):
            r, s = setting_b(spool, tpool, kind, config.attacks, seed=config.seed, n_boot=config.n_boot,
                             attack_params=config.attack_params)
            rows += r
            curves[f"B_{kind}"] = {a: (v, s["labels"]) for a, v in s.items() if a != "labels"}
    if not bn:
        for row in rows:
            if "status" in row and any(g in row["status"] for g in ("paper", "normalized", "variance")):
                row["status"] = NO_BN_STATUS
    id_rows: list[dict[str, Any]] = []
    if config.identity_ks and len(tpool.rows("same_identity")) and len(tpool.rows("unseen_identity")):
        log.info("  identity level: k = %s", ", ".join(map(str, config.identity_ks)))
        id_rows = identity_level(tpool, config.identity_attacks, ks=config.identity_ks, folds=config.folds,
                                 seed=config.seed, n_boot=config.n_boot,
                                 shadow=spool if "B" in config.settings else None, attack_params=config.attack_params)
    plots: dict[str, str] = {}
    if plots_dir is not None:
        plots = write_plots(plots_dir, tpool if bn else _without_layers(tpool), layer_names if bn else [], curves,
                            id_rows)
    return PoolResults(rows, id_rows, layer_aucs(tpool) if bn else {}, plots)


def _without_layers(pool: ModelPool) -> ModelPool:
    """A pool whose per-layer plot loop finds no kind (no BN distances to draw)."""
    return ModelPool({**pool.inputs, "paper": np.zeros((len(pool.roles), 0))}, np.full(len(pool.roles), "-"),
                     pool.identities)


def run_membership(target: torch.nn.Module, split: MembershipSplit, config: MembershipConfig, *,
                   shadow: torch.nn.Module | None = None, out_dir: str | Path | None = None,
                   progress: bool = True, threads: int | None = None) -> dict[str, Any]:
    """All of stage 1. Returns {"results": rows, "identity_level": rows, "plots": {...}, "timing": {...}}.

    The shadow (setting B) also serves as the reference model of the calibrated attacks in setting A; for the
    shadow's own images the target is the reference (it never saw the attacker's auxiliary data).
    """
    t0 = time.time()
    tpool, tfs = build_pool(target, split.target, shadow, batch_size=config.batch_size, device=config.device,
                            progress=progress)
    spool = None
    if shadow is not None and split.shadow is not None and "B" in config.settings:
        spool, _ = build_pool(shadow, split.shadow, target, batch_size=config.batch_size, device=config.device,
                              progress=progress)
    t_feat = time.time() - t0
    res = evaluate_pools(tpool, spool, tfs.layer_names, config, Path(out_dir) if out_dir is not None else None,
                         threads=threads)
    out: dict[str, Any] = {"results": res.rows, "identity_level": res.identity_level, "layer_names": tfs.layer_names,
                           "layer_auc": res.layer_auc, "fit_seconds": res.fit_seconds,
                           "timing": {"features_s": round(t_feat, 1), "total_s": round(time.time() - t0, 1)}}
    if out_dir is not None:
        out["plots"] = res.plots
    return out


def layer_aucs(pool: ModelPool) -> dict[str, list[float]]:
    """Single-layer attack strength: per non-member kind, AUC of -d_i per BN layer (members closer)."""
    from frleak.metrics import auc

    out = {}
    mem = pool.rows("members")
    for kind in KINDS:
        non = pool.rows(kind)
        if len(non) == 0:
            continue
        d = np.concatenate([pool.inputs["paper"][mem], pool.inputs["paper"][non]])
        y = np.r_[np.ones(len(mem)), np.zeros(len(non))]
        out[kind] = [round(auc(-d[:, i], y), 4) for i in range(d.shape[1])]
    return out


def write_plots(out: Path, pool: ModelPool, layer_names: Sequence[str],
                curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], id_rows: list[dict[str, Any]]
                ) -> dict[str, str]:
    from frleak.plots import plot_layer_distances, plot_metric_vs_k, plot_roc

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    mem = pool.inputs["paper"][pool.rows("members")]
    for kind in KINDS:
        if len(pool.rows(kind)):
            p = plot_layer_distances(mem, pool.inputs["paper"][pool.rows(kind)], out / f"layers_{kind}.png",
                                     list(layer_names), title=f"BN distance per layer: members vs {kind}")
            paths[f"layers_{kind}"] = str(p)
    for key, c in curves.items():
        if c:
            setting, kind = key.split("_", 1)
            p = plot_roc(c, out / f"roc_{key}.png", title=f"Setting {setting}, non-members: {kind}")
            paths[f"roc_{key}"] = str(p)
    if id_rows:
        series: dict[str, dict[int, dict[str, Any]]] = {}
        for r in id_rows:
            series.setdefault(f"{r['attack']} ({r['setting']})", {})[r["k"]] = r
        paths["identity_level"] = str(plot_metric_vs_k(series, out / "identity_level.png",
                                                       title="Identity-level membership vs photos per person"))
    return paths


def fit_full(pool: ModelPool, kind: str, attack: str, *, seed: int = 0,
             params: dict[str, Any] | None = None) -> Any:
    """Fit one attack on ALL of the target's balanced members vs ``kind`` (setting A), e.g. to guide stage 2 or to
    score new images; evaluation numbers always come from the cross-fitted :func:`run_membership` instead."""
    from frleak.attacks import create_attack
    from frleak.attacks.base import take
    from frleak.evaluation import balanced_indices

    idx, y = balanced_indices(pool, kind, seed)
    return create_attack(attack, **(params or {})).fit(take(pool.inputs, idx), y)
