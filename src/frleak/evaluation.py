"""Membership evaluation in the paper's two threat settings, per non-member kind, and at the identity level.

Setting A (the attacker holds part of the training data): on the target's features, stratified k-fold
cross-fitting over a class-balanced set of members and non-members of one kind; every attack is fitted on k-1 folds
(its threshold too) and scores the held-out fold, so every reported score is out-of-fold.

Setting B (auxiliary data only): each attack is fitted on the *shadow* model's own members / non-members of the
same kind and applied unchanged to the target's evaluation set (same balanced set as A), threshold included.

Identity level ("was this person in training?"): images never trained on of member identities (``same_identity``)
against images of ``unseen_identity`` people; scores of k images per person are averaged; k = 1, 2, 4, 8.

Every result row carries the metrics of :func:`frleak.metrics.mia_metrics` (members positive, exact ROC,
bootstrap intervals) with the attack's own threshold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedKFold

from frleak.attack_data import nearest_member_cos
from frleak.attacks import MembershipAttack, create_attack
from frleak.attacks.base import take
from frleak.errors import ConfigError
from frleak.metrics import aggregate_by_group, mia_metrics

log = logging.getLogger(__name__)
KINDS = ("same_identity", "unseen_identity", "other_dataset")


@dataclass
class ModelPool:
    """Attack inputs of one model on all its split's images: feature groups (N rows), role and identity per row."""

    inputs: dict[str, np.ndarray]
    roles: np.ndarray
    identities: np.ndarray

    def rows(self, role: str) -> np.ndarray:
        return np.flatnonzero(self.roles == role)


def balanced_indices(pool: ModelPool, kind: str, seed: int, max_per_class: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Members and non-members of ``kind``, the larger class subsampled (seeded) to the smaller: chance = 50 %."""
    mem, non = pool.rows("members"), pool.rows(kind)
    if len(mem) == 0 or len(non) == 0:
        raise ConfigError(f"no {'members' if len(mem) == 0 else kind} images to evaluate")
    n = min(len(mem), len(non), max_per_class or 10**12)
    rng = np.random.default_rng(seed)
    mem = np.sort(rng.choice(mem, n, replace=False))
    non = np.sort(rng.choice(non, n, replace=False))
    idx = np.concatenate([mem, non])
    return idx, np.r_[np.ones(n, dtype=int), np.zeros(n, dtype=int)]


def _usable(attack: MembershipAttack, X: dict[str, np.ndarray]) -> str | None:
    missing = [g for g in attack.required_groups() if g not in X]
    return f"needs {', '.join(missing)}" if missing else None


def _row(attack: str, setting: str, kind: str, scores: np.ndarray, labels: np.ndarray, threshold: float,
         n_boot: int, seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    m = mia_metrics(scores, labels, threshold=threshold, n_boot=n_boot, seed=seed)
    return {"attack": attack, "setting": setting, "nonmember": kind, **m, **(extra or {})}


def setting_a(pool: ModelPool, kind: str, attacks: Sequence[str], *, folds: int = 5, seed: int = 0,
              n_boot: int = 1000, attack_params: dict[str, dict[str, Any]] | None = None,
              use_known_members: bool = True) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Out-of-fold scores and metrics of every attack on the target's members vs ``kind`` non-members.

    ``use_known_members``: compute the nearest-known-member cosine (``nn_cos``) from the training folds' members.
    It is only offered against ``same_identity`` non-members: against other people it would measure whether the
    attacker knows the identity, not what the model leaks.
    Returns (result rows, {attack: out-of-fold margins (score - fold threshold)}) plus ``labels``.
    """
    idx, y = balanced_indices(pool, kind, seed)
    X_all = take(pool.inputs, idx)
    emb = X_all["embedding"]
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    margins = {a: np.full(len(idx), np.nan) for a in attacks}
    skipped: dict[str, str] = {}
    fit_seconds = dict.fromkeys(attacks, 0.0)
    for tr, te in skf.split(idx, y):
        X_tr, X_te = take(X_all, tr), take(X_all, te)
        if use_known_members and kind == "same_identity":
            gal = tr[y[tr] == 1]  # the members the attacker holds in this fold
            pos = {g: i for i, g in enumerate(gal)}
            X_tr["nn_cos"] = nearest_member_cos(emb[tr], emb[gal], np.array([pos.get(t, -1) for t in tr]))
            X_te["nn_cos"] = nearest_member_cos(emb[te], emb[gal])
        for name in attacks:
            attack = create_attack(name, **(attack_params or {}).get(name, {}))
            why = _usable(attack, X_tr)
            if why:
                skipped[name] = why
                continue
            t0 = time.time()
            attack.fit(X_tr, y[tr])
            margins[name][te] = attack.score(X_te) - attack.threshold_
            fit_seconds[name] += time.time() - t0
    rows = []
    for name in attacks:
        if name in skipped:
            rows.append({"attack": name, "setting": "A", "nonmember": kind, "status": f"not applicable: "
                         f"{skipped[name]}"})
            continue
        rows.append(_row(name, "A", kind, margins[name], y, 0.0, n_boot, seed,
                         {"folds": folds, "fit_seconds": round(fit_seconds[name], 2)}))
    out = {k: v for k, v in margins.items() if k not in skipped}
    out["labels"] = y
    return rows, out


def setting_b(shadow: ModelPool, target: ModelPool, kind: str, attacks: Sequence[str], *, seed: int = 0,
              n_boot: int = 1000, attack_params: dict[str, dict[str, Any]] | None = None
              ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Fit on the shadow's members vs its ``kind`` non-members; score the target's balanced evaluation set."""
    s_idx, s_y = balanced_indices(shadow, kind, seed)
    t_idx, t_y = balanced_indices(target, kind, seed)
    X_s, X_t = take(shadow.inputs, s_idx), take(target.inputs, t_idx)
    rows, scores = [], {}
    for name in attacks:
        attack = create_attack(name, **(attack_params or {}).get(name, {}))
        why = _usable(attack, X_s)
        if why:
            rows.append({"attack": name, "setting": "B", "nonmember": kind, "status": f"not applicable: {why}"})
            continue
        attack.fit(X_s, s_y)
        margin = attack.score(X_t) - attack.threshold_
        scores[name] = margin
        shadow_auc = mia_metrics(attack.score(X_s), s_y, n_boot=0)["auc"]
        rows.append(_row(name, "B", kind, margin, t_y, 0.0, n_boot, seed, {"shadow_fit_auc": shadow_auc}))
    scores["labels"] = t_y
    return rows, scores


def identity_level(target: ModelPool, attacks: Sequence[str], *, ks: Sequence[int] = (1, 2, 4, 8), folds: int = 5,
                   seed: int = 0, n_draws: int = 20, n_boot: int = 1000, shadow: ModelPool | None = None,
                   attack_params: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Identity-level membership from photos never trained on: member identities vs unseen identities.

    Setting A: grouped k-fold by identity on the target (the attacker knows some member and some non-member
    people). Setting B (when ``shadow`` is given): fitted on the shadow's same_identity vs unseen images.
    Image scores are averaged over k random photos per person (``n_draws`` draws; metrics are averaged over draws,
    intervals from the first draw's bootstrap).
    """
    pos, neg = target.rows("same_identity"), target.rows("unseen_identity")
    idx = np.concatenate([pos, neg])
    y = np.r_[np.ones(len(pos), dtype=int), np.zeros(len(neg), dtype=int)]
    groups = target.identities[idx]
    X = take(target.inputs, idx)
    rows: list[dict[str, Any]] = []
    settings: list[tuple[str, Callable[[str], np.ndarray]]] = []

    def oof(name: str) -> np.ndarray:
        s = np.full(len(idx), np.nan)
        for tr, te in GroupKFold(n_splits=folds).split(idx, y, groups):
            a = create_attack(name, **(attack_params or {}).get(name, {})).fit(take(X, tr), y[tr])
            s[te] = a.score(take(X, te)) - a.threshold_
        return s

    settings.append(("A", oof))
    if shadow is not None:
        s_idx = np.concatenate([shadow.rows("same_identity"), shadow.rows("unseen_identity")])
        s_y = np.r_[np.ones(len(shadow.rows("same_identity")), dtype=int),
                    np.zeros(len(shadow.rows("unseen_identity")), dtype=int)]

        def transfer(name: str) -> np.ndarray:
            a = create_attack(name, **(attack_params or {}).get(name, {})).fit(take(shadow.inputs, s_idx), s_y)
            return a.score(X) - a.threshold_

        settings.append(("B", transfer))
    for setting, scorer in settings:
        for name in attacks:
            probe = create_attack(name, **(attack_params or {}).get(name, {}))
            if _usable(probe, X):
                continue
            s = scorer(name)
            for k in ks:
                try:
                    agg = aggregate_by_group(s, groups, k, "mean", seed=seed, n_draws=n_draws, labels=y)
                except ValueError:
                    continue
                assert agg.labels is not None
                n_id = len(agg.scores) // n_draws
                if len(np.unique(agg.labels[:n_id])) < 2:
                    continue
                per_draw = [mia_metrics(agg.scores[d * n_id:(d + 1) * n_id], agg.labels[d * n_id:(d + 1) * n_id],
                                        threshold=0.0, n_boot=n_boot if d == 0 else 0, seed=seed)
                            for d in range(n_draws)]
                row = {"attack": name, "setting": setting, "level": "identity", "k": k,
                       "n_member_identities": int(agg.labels[:n_id].sum()),
                       "n_nonmember_identities": int(n_id - agg.labels[:n_id].sum())}
                for key, val in per_draw[0].items():
                    if key.endswith("_ci"):
                        row[key] = val
                    elif isinstance(val, float):
                        row[key] = float(np.mean([p[key] for p in per_draw]))
                rows.append(row)
    return rows
