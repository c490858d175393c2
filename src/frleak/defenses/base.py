"""The defense interface: what a defense changes in training and what it changes in the released model.

A defense is a small dataclass (its fields are its parameters) registered in :data:`frleak.registry.DEFENSES`.
It may act at two moments (arXiv 2401.13719 attacks the *released* backbone, so both matter):

* training: :meth:`Defense.configure` rewrites the backbone options and the :class:`~frleak.train.TrainConfig`
  (``norm="gn"``, weight decay, label smoothing, fewer epochs) and :meth:`Defense.callbacks` hands the training
  loop callbacks (DP-SGD's per-sample clipping and noise, early stopping, augmentation);
* release: :meth:`Defense.finalize` post-processes the trained backbone before it is published (re-estimating or
  noising the BatchNorm running statistics), given public images the defender may use.

:meth:`Defense.card` is what was done (name, parameters, and results such as DP-SGD's epsilon and delta); it goes
into the model card under ``"defense"``. ``removes_bn_surface`` is True when the released model has no BatchNorm
running statistics: the BN-statistics attacks then have nothing to read, and a report must say so instead of
printing a number.

Typical use (a few lines; :func:`train_with_defense` does exactly this)::

    defense = create_defense("bn_noise", sigma=0.1)
    options, config = defense.configure({"input_size": 64}, TrainConfig())
    model = create_backbone("iresnet18", **options)
    train_backbone(model, images, labels, config, callbacks=defense.callbacks())
    model = defense.finalize(model, public_images)     # the released model
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from frleak.errors import ConfigError
from frleak.models.base import Backbone, create_backbone
from frleak.registry import DEFENSES
from frleak.train import TrainConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Defense:
    """Base class: no change anywhere (subclasses override what they change)."""

    #: registered name (set by each subclass)
    name: ClassVar[str] = "none"
    #: True when the released model has no BatchNorm running statistics (the BN attack surface is gone)
    removes_bn_surface: ClassVar[bool] = False
    #: where the defense acts: "training", "release" or "none"; the adaptive attacker copies it accordingly
    stage: ClassVar[str] = "none"

    def __post_init__(self) -> None:
        # results filled in during training / finalize (scikit-learn style: learned state ends in ``_``)
        self.result_: dict[str, Any] = {}

    # ---- parameters --------------------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The constructor parameters (what ``create_defense(name, **params)`` rebuilds it from)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def _fail(self, param: str, message: str) -> ConfigError:
        return ConfigError(f"defense {self.name!r}: {param} {message}")

    # ---- what it changes ---------------------------------------------------------------------------------------
    def configure(self, backbone_options: Mapping[str, Any], train_config: TrainConfig
                  ) -> tuple[dict[str, Any], TrainConfig]:
        """(backbone options, training recipe) -> the defended ones. The inputs are not modified."""
        return dict(backbone_options), train_config

    def callbacks(self) -> list[Any]:
        """Fresh training callbacks (see :class:`frleak.train.TrainCallback`) for one training run."""
        return []

    def finalize(self, model: Backbone, public_images: torch.Tensor | None = None) -> Backbone:
        """Post-process the trained backbone before release (in place; returns it). ``public_images``: uint8
        (N, 3, H, W) images that are not private training data, for defenses that need data."""
        return model

    def card(self) -> dict[str, Any]:
        """What was done, for the model card's ``"defense"`` entry (JSON-serialisable)."""
        out: dict[str, Any] = {"name": self.name, "params": self.params(), "stage": self.stage,
                               "removes_bn_surface": self.removes_bn_surface}
        if self.result_:
            out["result"] = dict(self.result_)
        return out


class DefenseCallback:
    """Base of the training callbacks a defense hands out; its ``card`` is the defense's card (the training loop
    merges it into the model card under ``"defense"``)."""

    def __init__(self, defense: Defense) -> None:
        self.defense = defense

    def card(self) -> dict[str, Any]:
        return self.defense.card()


# ---- construction ----------------------------------------------------------------------------------------------
def create_defense(name: str, **params: Any) -> Defense:
    """A registered defense with the given parameters; unknown parameters raise a ConfigError naming them."""
    cls = DEFENSES.get(name)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"defense {name!r} has no parameter(s) {', '.join(unknown)}; "
                          f"known: {', '.join(known) or '(none)'}")
    try:
        defense: Defense = cls(**params)
    except (TypeError, ValueError) as exc:  # e.g. a string where a number belongs (from YAML or --set)
        raise ConfigError(f"defense {name!r}: bad parameter value ({exc})") from None
    return defense


def defense_from_card(card: Mapping[str, Any]) -> Defense:
    """Rebuild the defense recorded in a model card (a whole card or its ``"defense"`` entry); ``none`` if absent.

    This is how an adaptive attacker learns the defense of a published model (Kerckhoffs: the defense is public,
    its random draws are not)."""
    if "defense" in card:
        entry = card["defense"]
    elif "arch" in card or "recipe" in card:  # a whole model card without a defense entry: undefended
        entry = None
    else:
        entry = card
    if not entry:
        return create_defense("none")
    if "name" not in entry:
        raise ConfigError("the model card's 'defense' entry has no 'name'")
    return create_defense(str(entry["name"]), **dict(entry.get("params", {})))


# ---- training and release in a few lines ----------------------------------------------------------------------
def check_public_images(images: torch.Tensor | None, model: Backbone, who: str) -> torch.Tensor:
    """Public images must be a uint8 (N, 3, H, W) tensor at the backbone's input size."""
    if images is None:
        raise ConfigError(f"defense {who!r} needs public images (uint8 (N, 3, H, W), not private training data)")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"defense {who!r}: public images must be uint8 (N, 3, H, W), got {images.dtype} "
                          f"{tuple(images.shape)}")
    if tuple(images.shape[2:]) != tuple(model.input_spec.size):
        raise ConfigError(f"defense {who!r}: public images are {tuple(images.shape[2:])} but the backbone expects "
                          f"{tuple(model.input_spec.size)}")
    if len(images) == 0:
        raise ConfigError(f"defense {who!r}: no public images")
    return images


def release(defense: Defense, model: Backbone, out_dir: str | Path, public_images: torch.Tensor | None = None,
            card: Mapping[str, Any] | None = None) -> Backbone:
    """Finalize ``model`` and write it as the released backbone of ``out_dir`` (replacing the undefended one that
    :func:`frleak.train.train_backbone` wrote there); the existing model card is kept and its ``"defense"`` entry
    set. The training checkpoint (``train_state.pt``: undefended weights and head) stays private."""
    model = defense.finalize(model, public_images)
    write_release(defense, model, out_dir, card)
    return model


def write_release(defense: Defense, model: Backbone, out_dir: str | Path,
                  card: Mapping[str, Any] | None = None) -> Path:
    """Save an already finalized ``model`` into ``out_dir``, merging ``card`` and the defense's card into the
    model card that is there (if any)."""
    from frleak.models.checkpoint import CARD_NAME, read_card, save_backbone

    out = Path(out_dir)
    full = read_card(out) if (out / CARD_NAME).is_file() else {}
    full.update(card or {})
    full["defense"] = defense.card()
    return save_backbone(model, out, full)


def train_with_defense(
    defense: Defense,
    backbone: str,
    options: Mapping[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    public_images: torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    card: Mapping[str, Any] | None = None,
    progress: bool = True,
    evaluate: Callable[[Backbone], dict[str, float]] | None = None,
    callbacks: Sequence[Any] = (),
) -> tuple[Backbone, dict[str, Any]]:
    """configure -> build -> train (with the defense's callbacks) -> finalize -> (evaluate) -> release.

    ``evaluate`` runs on the *released* (finalized) model, so utility is measured on what is published.
    Returns (released model, training result with ``"defense"`` = the card and ``"utility"`` if evaluated).
    """
    from frleak.train import train_backbone

    opts, cfg = defense.configure(options, config)
    model = create_backbone(backbone, **opts)
    result = train_backbone(model, images, labels, cfg, out_dir=out_dir, resume=resume,
                            callbacks=[*defense.callbacks(), *callbacks], card=dict(card or {}), progress=progress)
    model = defense.finalize(model, public_images)
    model.eval()
    extra: dict[str, Any] = {}
    if evaluate is not None:
        result["utility"] = extra["utility"] = evaluate(model)
    if out_dir is not None:
        write_release(defense, model, out_dir, extra)
    result["defense"] = defense.card()
    return model, result


@DEFENSES.register("none")
@dataclasses.dataclass
class NoDefense(Defense):
    """No defense: the baseline every defense is compared with"""

    name: ClassVar[str] = "none"
