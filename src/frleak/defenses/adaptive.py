"""The adaptive attacker: one who knows the defense (its name and parameters, e.g. from the model card) but not
its secret random draws, and defends its own shadow/reference model the same way before training the attack.

Why it matters: a defense evaluated only against the unadapted attack can look strong because the attack model
was calibrated on an undefended shadow (its thresholds and feature scales no longer fit), not because the signal
is gone. For release-time defenses the adaptation is cheap:

* ``bn_noise``: one noisy release cannot be averaged back (the attacker sees a single draw), but the attacker
  noises its shadow with the same sigma (a different seed), so the attack is trained on features that carry the
  same noise; per-layer normalised distances and layers where sigma is small relative to the member/non-member
  gap keep working;
* ``bn_reestimate``: the statistics now describe public data; an adapted shadow is re-estimated on the attacker's
  own public data, so what remains is whatever the weights still encode about members (the features' residual
  shift), plus the embedding/consistency features and the non-BN attacks.

For training-time defenses (DP-SGD, GroupNorm, regularisation) the adaptation is to train the shadow with the same
recipe: :func:`adaptive_defense` gives a fresh copy for :func:`frleak.defenses.train_with_defense`.
"""

from __future__ import annotations

import copy
import logging

import torch

from frleak.defenses.base import Defense, create_defense
from frleak.models.base import Backbone

log = logging.getLogger(__name__)


def adaptive_defense(defense: Defense, seed: int | None = None) -> Defense:
    """A fresh copy of ``defense`` (same name and parameters, no results) for the attacker's shadow.

    ``seed``: the attacker's own random draws; None = the defender's seed + 1 (the attacker does not know the
    defender's seed, and must not be credited with it). Defenses without a seed ignore it."""
    params = defense.params()
    if "seed" in params:
        own = params["seed"] if params["seed"] is not None else 0
        params["seed"] = seed if seed is not None else own + 1
    return create_defense(defense.name, **params)


def adaptive_reference(defense: Defense, shadow_model: Backbone, public_images: torch.Tensor | None = None, *,
                       seed: int | None = None) -> Backbone:
    """The attacker's shadow/reference model post-processed like the target's release (a copy; the input model
    is not changed). ``public_images``: the *attacker's* public images (uint8 (N, 3, H, W)), needed by
    ``bn_reestimate``. For training-time defenses this returns an unchanged copy: the shadow itself must have
    been trained with :func:`adaptive_defense` (``defense.stage == "training"``)."""
    ref = copy.deepcopy(shadow_model)
    if defense.stage == "training":
        log.info("defense %s acts in training: train the shadow with adaptive_defense(); no post-processing",
                 defense.name)
        return ref
    return adaptive_defense(defense, seed).finalize(ref, public_images)


__all__ = ["adaptive_defense", "adaptive_reference"]
