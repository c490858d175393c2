"""Attack inputs ("pools") as run-directory artifacts, and stage 1 on them.

The features stage computes each model's attack inputs on every image of its split once
(:func:`frleak.membership.build_pool`) and saves them; the attack, inversion and report stages read them instead of
running the networks again. :func:`evaluate_pools` is stage 1 of :func:`frleak.membership.run_membership` from that
point on (settings A and B per non-member kind, identity level, plots, single-layer AUCs), written against the
public functions of :mod:`frleak.evaluation` and :mod:`frleak.membership`.

A model without BatchNorm running statistics (a GroupNorm/LayerNorm/DP-SGD defense, or a user's model) has no BN
attack surface: :func:`model_pool` then computes the embedding features only (embedding norm, flip consistency,
nearest known member), and the BN attacks are reported as "BN attack surface removed", never as a number.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frleak.data.splits import ModelSplit
from frleak.errors import FrleakError
from frleak.evaluation import KINDS, ModelPool, identity_level, setting_a, setting_b
from frleak.io import atomic_write_bytes
from frleak.membership import MembershipConfig, build_pool, layer_aucs, split_pool_samples, write_plots

NO_BN = "BN attack surface removed"
log = logging.getLogger("frleak.audit")


def has_bn(model: torch.nn.Module) -> bool:
    from frleak.features import bn_layers

    try:
        bn_layers(model)
    except FrleakError:
        return False
    return True


def embedding_pool(model: torch.nn.Module, ms: ModelSplit, *, batch_size: int = 128, device: str = "cpu",
                   progress: bool = False) -> ModelPool:
    """Embedding-only attack inputs (``emb_norm``, ``flip_cos``, ``embedding``) for a model without BN statistics
    (:func:`frleak.defense_eval.embedding_inputs`), rows in :func:`frleak.membership.build_pool`'s order."""
    from frleak.attack_data import load_images
    from frleak.defense_eval import embedding_inputs

    samples, roles, ids = split_pool_samples(ms)
    images = load_images(samples, model.input_spec, progress=progress)
    return ModelPool(embedding_inputs(model, images, batch_size=batch_size, device=device), roles, ids)


def model_pool(model: torch.nn.Module, ms: ModelSplit, reference: torch.nn.Module | None, *, batch_size: int = 128,
               device: str = "cpu", progress: bool = False) -> tuple[ModelPool, list[str]]:
    """Attack inputs of ``model`` on its split (with ``reference`` distances when both models have BN);
    returns (pool, BN layer names) — no layer names for a model without BN statistics."""
    if not has_bn(model):
        return embedding_pool(model, ms, batch_size=batch_size, device=device, progress=progress), []
    ref = reference if reference is not None and has_bn(reference) else None
    pool, fs = build_pool(model, ms, ref, batch_size=batch_size, device=device, progress=progress)
    return pool, list(fs.layer_names)


# ---- persistence ---------------------------------------------------------------------------------------------
def save_pool(path: str | Path, pool: ModelPool, layer_names: list[str]) -> None:
    """npz (no pickle): every feature group as ``in_<name>``, roles, identities, layer names."""
    buf = io.BytesIO()
    arrays: dict[str, Any] = {f"in_{k}": np.asarray(v) for k, v in pool.inputs.items()}
    arrays.update(roles=pool.roles.astype(str), identities=pool.identities.astype(str),
                  layer_names=np.array(layer_names, dtype=str))
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_pool(path: str | Path) -> tuple[ModelPool, list[str]]:
    with np.load(path, allow_pickle=False) as z:
        inputs = {k[3:]: z[k] for k in z.files if k.startswith("in_")}
        return ModelPool(inputs, z["roles"], z["identities"]), [str(s) for s in z["layer_names"]]


# ---- stage 1 on pools ----------------------------------------------------------------------------------------
@dataclass
class PoolResults:
    rows: list[dict[str, Any]]
    identity_level: list[dict[str, Any]]
    layer_auc: dict[str, list[float]]
    plots: dict[str, str]
    fit_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # per attack, setting A folds


def evaluate_pools(tpool: ModelPool, spool: ModelPool | None, layer_names: list[str], config: MembershipConfig,
                   plots_dir: Path | None = None, threads: int | None = 1) -> PoolResults:
    """Every attack in settings A (out-of-fold on the target) and B (fitted on the shadow's pool), per non-member
    kind present; the identity level; plots into ``plots_dir`` (None: no plots). Rows of BN attacks on a pool
    without BN features carry ``status`` = "BN attack surface removed". ``threads``: OpenMP threads of the attack
    models while fitting (None: the library default); results do not depend on it."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="openmp"):
        res = _evaluate_pools(tpool, spool, layer_names, config, plots_dir)
    # timings are not results: an artifact must hash the same when the same work is redone
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
        s: dict[str, Any]
        log.info("  attacks vs %s non-members: %d attack(s), setting(s) %s", kind, len(config.attacks),
                 "/".join(x for x in config.settings if x == "A" or spool is not None))
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
                row["status"] = NO_BN
    id_rows: list[dict[str, Any]] = []
    if config.identity_ks and len(tpool.rows("same_identity")) and len(tpool.rows("unseen_identity")):
        log.info("  identity level: k = %s", ", ".join(map(str, config.identity_ks)))
    if config.identity_ks and len(tpool.rows("same_identity")) and len(tpool.rows("unseen_identity")):
        id_rows = identity_level(tpool, config.identity_attacks, ks=config.identity_ks, folds=config.folds,
                                 seed=config.seed, n_boot=config.n_boot,
                                 shadow=spool if "B" in config.settings else None, attack_params=config.attack_params)
    plots: dict[str, str] = {}
    if plots_dir is not None:
        if bn:
            plots = write_plots(plots_dir, tpool, layer_names, curves, id_rows)
        else:
            plots = write_plots(plots_dir, _without_layers(tpool), [], curves, id_rows)
    return PoolResults(rows, id_rows, layer_aucs(tpool) if bn else {}, plots)


def _without_layers(pool: ModelPool) -> ModelPool:
    """A pool whose per-layer plot loop finds no kind (no BN distances to draw)."""
    return ModelPool({**pool.inputs, "paper": np.zeros((len(pool.roles), 0))}, np.full(len(pool.roles), "-"),
                     pool.identities)


def membership_config(cfg: Any, attacks: tuple[str, ...] | None = None, identity: bool = True) -> MembershipConfig:
    """The :class:`MembershipConfig` of an :class:`frleak.config.AuditConfig`."""
    m = cfg.membership
    return MembershipConfig(attacks=tuple(attacks or m.attacks), settings=tuple(m.settings), kinds=tuple(m.kinds),
                            folds=m.folds, n_boot=m.n_boot, identity_ks=tuple(m.identity_ks) if identity else (),
                            identity_attacks=tuple(m.identity_attacks), batch_size=m.batch_size, device=cfg.device,
                            seed=cfg.seed, attack_params=dict(m.attack_params))


__all__ = ["KINDS", "NO_BN", "PoolResults", "embedding_pool", "evaluate_pools", "has_bn", "load_pool",
           "membership_config", "model_pool", "save_pool"]
