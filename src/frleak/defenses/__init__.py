"""Defenses against training-data leakage of face recognition models, measured by frleak's own attacks.

Importing this package registers every defense in :data:`frleak.registry.DEFENSES`:

=================  ==========  ==========================================================================
name               stage       what it changes
=================  ==========  ==========================================================================
none               -           nothing (the baseline)
dpsgd              training    DP-SGD via opacus: GroupNorm backbone, Poisson sampling, clipping + noise
groupnorm          training    norm="gn" backbone: no BatchNorm running statistics at all
layernorm          training    norm="ln" backbone: no BatchNorm running statistics at all
weight_decay       training    stronger L2 weight decay
label_smoothing    training    label smoothing of the margin softmax
early_stopping     training    stop at a training-accuracy level / a shortened schedule
augmentation       training    random resized crop + colour jitter on top of flips
bn_reestimate      release     BN running statistics recomputed on public images
bn_noise           release     seeded Gaussian noise on the BN running statistics
=================  ==========  ==========================================================================

See docs/defenses.md for defaults, costs and the adaptive attacker.
"""

from frleak.defenses.adaptive import adaptive_defense, adaptive_reference
from frleak.defenses.augment import Augmentation, AugmentedBackbone, augment_batch
from frleak.defenses.base import (
    Defense,
    DefenseCallback,
    NoDefense,
    create_defense,
    defense_from_card,
    release,
    train_with_defense,
    write_release,
)
from frleak.defenses.bn_stats import BNNoise, BNReestimate, noise_bn_statistics, reestimate_bn_statistics
from frleak.defenses.dpsgd import DPSGD, DPMarginHead, default_delta, epsilon_for
from frleak.defenses.recipe import EarlyStopping, GroupNormDefense, LabelSmoothing, LayerNormDefense, WeightDecay

__all__ = [
    "DPSGD", "Augmentation", "AugmentedBackbone", "BNNoise", "BNReestimate", "DPMarginHead", "Defense",
    "DefenseCallback", "EarlyStopping", "GroupNormDefense", "LabelSmoothing", "LayerNormDefense", "NoDefense",
    "WeightDecay", "adaptive_defense", "adaptive_reference", "augment_batch", "create_defense", "default_delta",
    "defense_from_card", "epsilon_for", "noise_bn_statistics", "reestimate_bn_statistics", "release",
    "train_with_defense", "write_release",
]
