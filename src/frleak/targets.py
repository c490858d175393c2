"""Train the target (or the attacker's shadow) on its members from a membership split, and measure its utility.

The shadow copies the target's architecture and recipe from the target's model card (paper setting B: the BN
layers must line up); :func:`recipe_mismatch` reports any difference so that a shadow that silently does not
mimic the target is caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frleak.data.folder import scan_identity_folder
from frleak.data.prepare import load_training_set
from frleak.data.splits import MembershipSplit
from frleak.models.base import Backbone, create_backbone
from frleak.models.checkpoint import extract_state_dict, load_state_dict_checked
from frleak.seeding import seed_everything
from frleak.train import TrainConfig, train_backbone
from frleak.verify import verify_folder


def build_model(backbone: str, options: dict[str, Any], weights: str | None = None, trust: bool = False) -> Backbone:
    """A backbone, optionally initialised from weights (fine-tuning); mismatches are reported by key."""
    model = create_backbone(backbone, **options)
    if weights:
        from frleak.models.checkpoint import load_backbone

        path = Path(weights)
        if path.is_dir() or path.suffix == ".safetensors":
            src = load_backbone(path)
            load_state_dict_checked(model, src.state_dict(), path)
        else:
            from frleak.io import safe_torch_load

            load_state_dict_checked(model, extract_state_dict(safe_torch_load(path, trust=trust), path), path)
    return model


def utility_fn(verification_root: str | None, n_pairs: int, seed: int, exclude: set[str] | None = None):  # noqa: ANN201
    """A closure measuring verification accuracy on seeded random pairs of an identity-disjoint set."""
    if not verification_root:
        return None

    def evaluate(model: Backbone) -> dict[str, float]:
        ids = None
        if exclude:
            ids = sorted({s.identity for s in scan_identity_folder(verification_root)} - exclude)
        device = next(model.parameters()).device  # verify where the model is (cuda after GPU training)
        r = verify_folder(model, verification_root, n_pairs=n_pairs, seed=seed, identities=ids, device=device)
        return {"verification_accuracy": r["accuracy"], "verification_accuracy_std": r["accuracy_std"],
                "tar_at_far_1e-3": r["tar_at_far_1e-3"], "verification_auc": r["auc"],
                "verification_set": str(verification_root), "verification_pairs": r["n_pairs"]}

    return evaluate


def train_role(split: MembershipSplit, role: str, *, backbone: str, options: dict[str, Any], train: TrainConfig,
               out_dir: str | Path, weights: str | None = None, trust: bool = False, resume: bool = True,
               verification: str | None = None, verification_pairs: int = 3000, callbacks: tuple[Any, ...] = (),
               progress: bool = True, extra_card: dict[str, Any] | None = None) -> tuple[Backbone, dict[str, Any]]:
    """Train the ``role`` model ("target" or "shadow") of ``split`` on its members; returns (model, result)."""
    ms = split.models()[role]
    seed_everything(train.seed)
    model = build_model(backbone, options, weights, trust)
    images, labels, names = load_training_set(ms.members, model.input_spec, progress=progress)
    card = {"role": role, "split_digest": split.digest(), "identities": len(names), "init_weights": weights,
            **(extra_card or {})}
    result = train_backbone(model, images, labels, train, out_dir=out_dir, resume=resume, callbacks=callbacks,
                            card=card, progress=progress,
                            evaluate=utility_fn(verification, verification_pairs, train.seed))
    return model, result


def recipe_mismatch(target_card: dict[str, Any], shadow_card: dict[str, Any]) -> list[str]:
    """Differences between a target's and a shadow's architecture and recipe (seed and data excluded)."""
    diffs = []
    if target_card.get("arch") != shadow_card.get("arch"):
        diffs.append(f"arch: target {target_card.get('arch')} vs shadow {shadow_card.get('arch')}")
    tr, sr = target_card.get("recipe", {}), shadow_card.get("recipe", {})
    for k in sorted(set(tr) | set(sr)):
        if k in ("seed", "device", "amp"):
            continue
        if tr.get(k) != sr.get(k):
            diffs.append(f"recipe.{k}: target {tr.get(k)!r} vs shadow {sr.get(k)!r}")
    td, sd = _defense_key(target_card), _defense_key(shadow_card)
    if td != sd:
        diffs.append(f"defense: target {td} vs shadow {sd}")
    return diffs


def _defense_key(card: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A defense's name and parameters, without its seed and its measured results (which legitimately differ)."""
    d = card.get("defense")
    if not d:
        return None
    params = {k: v for k, v in (d.get("params") or {}).items() if k != "seed"}
    return d.get("name", "?"), params


def shadow_recipe_from_card(card: dict[str, Any], seed_offset: int = 1) -> tuple[str, dict[str, Any], TrainConfig]:
    """The shadow's architecture and recipe, copied from the target's model card (paper setting B). The seed is
    shifted: the attacker does not know the target's seed, and an identical seed would flatter the shadow."""
    from dataclasses import replace

    arch = card.get("arch") or {}
    if "name" not in arch or "recipe" not in card:
        from frleak.errors import CheckpointError

        raise CheckpointError("the target's model card lacks 'arch' or 'recipe': cannot derive a shadow recipe")
    recipe = TrainConfig.from_dict(card["recipe"])
    return arch["name"], dict(arch.get("kwargs", {})), replace(recipe, seed=recipe.seed + seed_offset)
