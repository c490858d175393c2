"""Training-recipe defenses: an architecture without running statistics, and ordinary regularisation.

Membership signals grow with overfitting (Yeom et al. 2018, arXiv 1709.01604), so the usual regularisers are the
first baseline a new defense must beat. GroupNorm/LayerNorm remove the BN-statistics surface of arXiv 2401.13719
altogether (the released model has no running statistics); what is left is the embedding behaviour, which the
non-BN attacks measure.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from frleak.defenses.base import Defense, DefenseCallback
from frleak.registry import DEFENSES
from frleak.train import TrainConfig, TrainContext

log = logging.getLogger(__name__)


def _set_norm(options: Mapping[str, Any], norm: str, who: str) -> dict[str, Any]:
    out = dict(options)
    if out.get("norm", "bn") != "bn" and out["norm"] != norm:
        log.warning("defense %s replaces backbone option norm=%r by %r", who, out["norm"], norm)
    out["norm"] = norm
    return out


@DEFENSES.register("groupnorm")
@dataclasses.dataclass
class GroupNormDefense(Defense):
    """Train a GroupNorm backbone (norm="gn"): no running statistics, no BN attack surface"""

    name: ClassVar[str] = "groupnorm"
    stage: ClassVar[str] = "training"
    removes_bn_surface: ClassVar[bool] = True

    def configure(self, backbone_options: Mapping[str, Any], train_config: TrainConfig
                  ) -> tuple[dict[str, Any], TrainConfig]:
        return _set_norm(backbone_options, "gn", self.name), train_config


@DEFENSES.register("layernorm")
@dataclasses.dataclass
class LayerNormDefense(Defense):
    """Train a LayerNorm backbone (norm="ln", GroupNorm with one group): no BN attack surface"""

    name: ClassVar[str] = "layernorm"
    stage: ClassVar[str] = "training"
    removes_bn_surface: ClassVar[bool] = True

    def configure(self, backbone_options: Mapping[str, Any], train_config: TrainConfig
                  ) -> tuple[dict[str, Any], TrainConfig]:
        return _set_norm(backbone_options, "ln", self.name), train_config


@DEFENSES.register("weight_decay")
@dataclasses.dataclass
class WeightDecay(Defense):
    """Stronger L2 weight decay (default 5e-3, ten times the arcface_torch recipe's 5e-4)"""

    name: ClassVar[str] = "weight_decay"
    stage: ClassVar[str] = "training"
    weight_decay: float = 5e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise self._fail("weight_decay", f"must be a finite number >= 0, got {self.weight_decay}")

    def configure(self, backbone_options: Mapping[str, Any], train_config: TrainConfig
                  ) -> tuple[dict[str, Any], TrainConfig]:
        return dict(backbone_options), replace(train_config, weight_decay=self.weight_decay)


@DEFENSES.register("label_smoothing")
@dataclasses.dataclass
class LabelSmoothing(Defense):
    """Label smoothing of the margin-softmax cross-entropy (default 0.1, Szegedy et al. 2016)"""

    name: ClassVar[str] = "label_smoothing"
    stage: ClassVar[str] = "training"
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 1.0:
            raise self._fail("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")

    def configure(self, backbone_options: Mapping[str, Any], train_config: TrainConfig
                  ) -> tuple[dict[str, Any], TrainConfig]:
        return dict(backbone_options), replace(train_config, label_smoothing=self.label_smoothing)


class _StopOnTrainAccuracy(DefenseCallback):
    defense: EarlyStopping

    def end_epoch(self, ctx: TrainContext, epoch: int, stats: dict[str, float]) -> bool:
        d = self.defense
        d.result_.update({"epochs_run": epoch + 1, "epochs_planned": ctx.config.epochs,
                          "final_train_acc": float(stats["train_acc"])})
        stop = d.max_train_acc is not None and epoch + 1 >= d.min_epochs and stats["train_acc"] >= d.max_train_acc
        d.result_["stopped_early"] = bool(stop)
        if stop:  # checkpointed with the epoch, so a resumed run can tell that training is over
            ctx.extra_state["stopped_early"] = True
        return bool(stop)


@DEFENSES.register("early_stopping")
@dataclasses.dataclass
class EarlyStopping(Defense):
    """Stop before memorisation: when training accuracy reaches max_train_acc, and/or train a fraction of epochs

    Rule: after each epoch (from ``min_epochs`` on), stop if the epoch's training accuracy (the margin-head
    argmax over the epoch's augmented batches, as the training loop measures it) is >= ``max_train_acc``
    (default 0.8: well short of the ~1.0 a memorising model reaches). ``epoch_fraction`` (default None) instead
    shortens the recipe to round(fraction * epochs) epochs with the *whole* learning-rate schedule compressed into
    them, which is better than cutting a cosine schedule at a high learning rate. Neither needs validation data of
    members: the defender uses only what the training loop already measures.
    """

    name: ClassVar[str] = "early_stopping"
    stage: ClassVar[str] = "training"
    max_train_acc: float | None = 0.8
    epoch_fraction: float | None = None
    min_epochs: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_train_acc is not None and not 0.0 < self.max_train_acc <= 1.0:
            raise self._fail("max_train_acc", f"must be in (0, 1] or null, got {self.max_train_acc}")
        if self.epoch_fraction is not None and not 0.0 < self.epoch_fraction <= 1.0:
            raise self._fail("epoch_fraction", f"must be in (0, 1] or null, got {self.epoch_fraction}")
        if self.min_epochs < 1:
            raise self._fail("min_epochs", f"must be >= 1, got {self.min_epochs}")
        if self.max_train_acc is None and self.epoch_fraction is None:
            raise self._fail("max_train_acc/epoch_fraction", "cannot both be null (nothing would stop training)")

    def configure(self, backbone_options: Mapping[str, Any], train_config: TrainConfig
                  ) -> tuple[dict[str, Any], TrainConfig]:
        if self.epoch_fraction is None:
            return dict(backbone_options), train_config
        epochs = max(1, round(self.epoch_fraction * train_config.epochs))
        warmup = min(train_config.warmup_epochs, float(epochs))
        return dict(backbone_options), replace(train_config, epochs=epochs, warmup_epochs=warmup)

    def callbacks(self) -> list[Any]:
        return [_StopOnTrainAccuracy(self)] if self.max_train_acc is not None else []
