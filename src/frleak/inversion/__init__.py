"""Stage 2 of arXiv 2401.13719: model inversion guided by the membership attack.

>>> from frleak.inversion import InversionConfig, invert, evaluate_reconstructions      # doctest: +SKIP
>>> cfg = InversionConfig(method="guided", mode="untargeted", n_images=32, candidates=256, steps=100, seed=0)
>>> result = invert(target, generator, cfg, attack=fitted_linear_attack)               # images in [-1, 1]
>>> metrics = evaluate_reconstructions(result.images, evaluator=evaluator, member_gallery=members,
...                                    distractor_gallery=distractors, mode="untargeted")

See docs/inversion.md for the objective, the methods, their defaults and the evaluation protocol.
"""

from frleak.inversion.differentiable import TorchLinearAttack, TorchThresholdAttack, is_differentiable, torch_attack
from frleak.inversion.evaluate import (
    Gallery,
    embed,
    evaluate_reconstructions,
    far_threshold,
    load_evaluator,
    targeted_metrics,
    untargeted_metrics,
    znorm_stats,
)
from frleak.inversion.gan_free import PixelGenerator
from frleak.inversion.grids import save_grid
from frleak.inversion.objective import InversionObjective, ObjectiveWeights, bn_stat_prior, l2_image, total_variation
from frleak.inversion.pipeline import run_inversion
from frleak.inversion.preprocess import to_backbone_input, uint8_to_unit, unit_to_uint8
from frleak.inversion.search import CONTROLS, METHOD_DEFAULTS, METHODS, MODES, InversionConfig, InversionResult, invert

__all__ = [
    "CONTROLS", "METHODS", "METHOD_DEFAULTS", "MODES", "Gallery", "InversionConfig", "InversionObjective",
    "InversionResult", "ObjectiveWeights", "PixelGenerator", "TorchLinearAttack", "TorchThresholdAttack",
    "bn_stat_prior", "embed", "evaluate_reconstructions", "far_threshold", "invert", "is_differentiable",
    "l2_image", "load_evaluator", "run_inversion", "save_grid", "targeted_metrics", "to_backbone_input",
    "torch_attack", "total_variation", "uint8_to_unit", "unit_to_uint8", "untargeted_metrics",
    "znorm_stats",
]
