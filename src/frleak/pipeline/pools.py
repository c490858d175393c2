"""Attack inputs ("pools") as run-directory artifacts.

The features stage computes each model's attack inputs on every image of its split once
(:func:`frleak.membership.build_pool`) and saves them here (npz, no pickle); the attack, inversion and report
stages read them instead of running the networks again, and stage 1 runs on them with
:func:`frleak.membership.evaluate_pools`. A model without BatchNorm running statistics gets the embedding features
only, and its BN attacks are reported as "BN attack surface removed", never as a number.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frleak.attack_data import NO_BN_STATUS
from frleak.data.splits import ModelSplit
from frleak.evaluation import KINDS, ModelPool
from frleak.io import atomic_write_bytes
from frleak.membership import MembershipConfig, PoolResults, build_pool, evaluate_pools

NO_BN = NO_BN_STATUS
log = logging.getLogger("frleak.audit")


def model_pool(model: torch.nn.Module, ms: ModelSplit, reference: torch.nn.Module | None, *, batch_size: int = 128,
               device: str = "cpu", progress: bool = False) -> tuple[ModelPool, list[str]]:
    """Attack inputs of ``model`` on its split (:func:`frleak.membership.build_pool`) and its BN layer names (none
    for a model without BN statistics)."""
    pool, fs = build_pool(model, ms, reference, batch_size=batch_size, device=device, progress=progress)
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


def membership_config(cfg: Any, attacks: tuple[str, ...] | None = None, identity: bool = True) -> MembershipConfig:
    """The :class:`MembershipConfig` of an :class:`frleak.config.AuditConfig`."""
    m = cfg.membership
    return MembershipConfig(attacks=tuple(attacks or m.attacks), settings=tuple(m.settings), kinds=tuple(m.kinds),
                            folds=m.folds, n_boot=m.n_boot, identity_ks=tuple(m.identity_ks) if identity else (),
                            identity_attacks=tuple(m.identity_attacks), batch_size=m.batch_size, device=cfg.device,
                            seed=cfg.seed, attack_params=dict(m.attack_params))


__all__ = ["KINDS", "NO_BN", "PoolResults", "evaluate_pools", "load_pool", "membership_config", "model_pool",
           "save_pool"]
