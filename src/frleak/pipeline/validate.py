"""Value checks of an :class:`frleak.config.AuditConfig` (types were checked when it was built): every error names
the dotted key at fault and what is allowed, before any stage runs."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from typing import Any

from frleak.config import AuditConfig, PoolConfig
from frleak.errors import ConfigError

SETTINGS = ("A", "B")
KINDS = ("same_identity", "unseen_identity", "other_dataset")
SHADOW_RECIPES = ("auto", "card", "config")
#: attacks that can guide stage 2 through run_inversion (a closed form on the target's own features, no
#: reference model; docs/inversion.md)
GUIDE_ATTACKS = ("paper_bn_linear", "bn_rich_linear", "bn_mean_threshold", "embedding_norm", "flip_consistency")
#: InversionConfig fields the audit sets itself (everything else may go into inversion.options)
_INVERSION_OWN = ("method", "mode", "n_images", "candidates", "n_optimize", "steps", "batch_size", "seed", "device",
                  "progress")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _unknown(key: str, value: str, known: Iterable[str], what: str) -> ConfigError:
    known = list(known)
    close = difflib.get_close_matches(value, known, n=2)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ConfigError(f"{key}: unknown {what} {value!r}{hint} Known: {', '.join(known)}")


def _names(key: str, values: Iterable[str], known: Iterable[str], what: str) -> None:
    known = list(known)
    for i, v in enumerate(values):
        if v not in known:
            raise _unknown(f"{key}[{i}]", v, known, what)


def _positive(key: str, value: float | None, minimum: float = 1) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value}")


def _pool(key: str, pool: PoolConfig | None) -> None:
    if pool is None:
        return
    _positive(f"{key}.min_images", pool.min_images)
    if pool.max_images is not None and pool.max_images < pool.min_images:
        raise ConfigError(f"{key}.max_images: must be >= min_images ({pool.min_images}), got {pool.max_images}")
    _positive(f"{key}.identities", pool.identities)
    _positive(f"{key}.max_per_identity", pool.max_per_identity)


def validate_audit_config(cfg: AuditConfig) -> None:
    """Raise a ConfigError naming the first bad key of ``cfg``."""
    from frleak.registry import ATTACKS, BACKBONES, DEFENSES, GENERATORS

    if not LABEL.match(cfg.name):
        raise ConfigError(f"name: use letters, digits, '_', '.', '-' (<= 64 characters), got {cfg.name!r}")
    if not re.match(r"^(cpu|cuda(:\d+)?|mps)$", cfg.device):
        raise ConfigError(f"device: expected cpu, cuda, cuda:N or mps, got {cfg.device!r}")
    _positive("threads", cfg.threads)
    if cfg.expected_minutes is not None and cfg.expected_minutes <= 0:
        raise ConfigError(f"expected_minutes: must be > 0, got {cfg.expected_minutes}")

    d = cfg.data
    if not 0.0 < d.member_fraction < 1.0:
        raise ConfigError(f"data.member_fraction: must be in (0, 1), got {d.member_fraction}")
    for name in ("target", "unseen", "other", "shadow", "shadow_unseen", "shadow_other"):
        _pool(f"data.{name}", getattr(d, name))
    _positive("data.verification_pairs", d.verification_pairs, 2)

    if cfg.model.backbone not in BACKBONES:
        raise _unknown("model.backbone", cfg.model.backbone, BACKBONES.names(), "backbone")
    try:
        cfg.train.validate()
    except ConfigError as exc:  # TrainConfig names its keys ``train.x`` already
        raise ConfigError(str(exc)) from None

    t = cfg.target
    if t.train:
        for key in ("members", "nonmembers", "other", "max_per_identity"):
            if getattr(t, key) is not None:
                raise ConfigError(f"target.{key}: only used with target.train: false (auditing a given model); "
                                  "with target.train: true the members come from data.target")
    else:
        if not cfg.model.weights:
            raise ConfigError("model.weights: required with target.train: false (the model to audit)")
        for key in ("members", "nonmembers"):
            if not getattr(t, key):
                raise ConfigError(f"target.{key}: required with target.train: false (an identity folder of "
                                  f"images the model was {'trained on' if key == 'members' else 'never trained on'})")
        _positive("target.max_per_identity", t.max_per_identity)

    s = cfg.shadow
    if s.recipe not in SHADOW_RECIPES:
        raise ConfigError(f"shadow.recipe: must be one of {', '.join(SHADOW_RECIPES)}, got {s.recipe!r}")
    if s.train and cfg.data.shadow is None:
        raise ConfigError("data.shadow: required when shadow.train is true (the attacker's auxiliary data); "
                          "set shadow.train: false to skip setting B")

    m = cfg.membership
    if not m.attacks:
        raise ConfigError("membership.attacks: list at least one attack (frleak list attacks)")
    _names("membership.attacks", m.attacks, ATTACKS.names(), "attack")
    _names("membership.identity_attacks", m.identity_attacks, ATTACKS.names(), "attack")
    _names("membership.settings", m.settings, SETTINGS, "setting")
    _names("membership.kinds", m.kinds, KINDS, "non-member kind")
    if not m.settings:
        raise ConfigError("membership.settings: list A, B or both")
    if not m.kinds:
        raise ConfigError(f"membership.kinds: list at least one of {', '.join(KINDS)}")
    _positive("membership.folds", m.folds, 2)
    _positive("membership.n_boot", m.n_boot, 0)
    for i, k in enumerate(m.identity_ks):
        _positive(f"membership.identity_ks[{i}]", k)
    _positive("membership.batch_size", m.batch_size)
    _positive("membership.attack_threads", m.attack_threads)
    for name, params in m.attack_params.items():
        if name not in ATTACKS:
            raise _unknown(f"membership.attack_params.{name}", name, ATTACKS.names(), "attack")
        from frleak.attacks import create_attack

        try:
            create_attack(name, **params)
        except TypeError as exc:
            raise ConfigError(f"membership.attack_params.{name}: {exc}") from None

    _validate_inversion(cfg)

    seen: set[str] = set()
    for i, spec in enumerate(cfg.defenses.apply):
        key = f"defenses.apply[{i}]"
        if spec.name not in DEFENSES:
            raise _unknown(f"{key}.name", spec.name, DEFENSES.names(), "defense")
        from frleak.defenses import create_defense

        try:
            defense = create_defense(spec.name, **spec.params)
        except ConfigError as exc:
            raise ConfigError(f"{key}.params: {exc}") from None
        label = spec.label or spec.name
        if not LABEL.match(label):
            raise ConfigError(f"{key}.label: use letters, digits, '_', '.', '-', got {label!r}")
        if label in seen:
            raise ConfigError(f"{key}: a second defense labelled {label!r}; give each a distinct label")
        seen.add(label)
        if defense.stage == "training" and not cfg.target.train:
            raise ConfigError(f"{key}: {spec.name!r} acts in training, so frleak would have to retrain your model; "
                              "with target.train: false only release-time defenses (bn_reestimate, bn_noise) apply")
        if defense.stage == "training" and cfg.model.weights:
            raise ConfigError(f"{key}: {spec.name!r} retrains the target from scratch, which would not compare with "
                              "a target fine-tuned from model.weights; use a release-time defense or no weights")
    _pool("defenses.public", cfg.defenses.public)
    _positive("defenses.public_images", cfg.defenses.public_images, 2)
    if cfg.defenses.attacks is not None:
        _names("defenses.attacks", cfg.defenses.attacks, ATTACKS.names(), "attack")
    _ = GENERATORS  # generators are checked in _validate_inversion


def _validate_inversion(cfg: AuditConfig) -> None:
    from frleak.inversion.search import InversionConfig
    from frleak.registry import GENERATORS

    inv = cfg.inversion
    if not inv.enabled:
        return
    if ":" not in inv.generator and inv.generator not in GENERATORS:
        raise _unknown("inversion.generator", inv.generator, GENERATORS.names(), "generator")
    if inv.attack not in GUIDE_ATTACKS:
        raise ConfigError(f"inversion.attack: {inv.attack!r} cannot guide the inversion (it needs a closed form on "
                          f"the target's own features); use one of {', '.join(GUIDE_ATTACKS)}")
    if inv.attack_setting not in SETTINGS:
        raise ConfigError(f"inversion.attack_setting: must be A or B, got {inv.attack_setting!r}")
    if inv.attack_setting == "B" and not cfg.shadow.train:
        raise ConfigError("inversion.attack_setting: B needs a shadow (shadow.train: true)")
    if inv.attack_nonmember not in KINDS:
        raise _unknown("inversion.attack_nonmember", inv.attack_nonmember, KINDS, "non-member kind")
    _positive("inversion.targets", inv.targets)
    _positive("inversion.cohort", inv.cohort, 0)
    _positive("inversion.gallery_max_per_identity", inv.gallery_max_per_identity)
    if not 0.0 < inv.far < 1.0:
        raise ConfigError(f"inversion.far: must be in (0, 1), got {inv.far}")
    fields = {f.name for f in dataclasses.fields(InversionConfig)}
    for k in inv.options:
        if k in _INVERSION_OWN:
            raise ConfigError(f"inversion.options.{k}: set inversion.{k} (or the top-level key) instead")
        if k not in fields:
            raise _unknown(f"inversion.options.{k}", k, sorted(fields - set(_INVERSION_OWN)), "inversion option")
    try:
        inversion_config(cfg).validate()
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"inversion: {exc}") from None


def inversion_config(cfg: AuditConfig) -> Any:
    """The :class:`frleak.inversion.InversionConfig` of the audit's stage 2."""
    from frleak.inversion.search import InversionConfig

    inv = cfg.inversion
    opts = dict(inv.options)
    for k in ("betas", "image_size"):  # YAML lists -> the tuples InversionConfig expects
        if isinstance(opts.get(k), list):
            opts[k] = tuple(opts[k])
    return InversionConfig(method=inv.method, mode=inv.mode, n_images=inv.n_images, candidates=inv.candidates,
                           n_optimize=inv.n_optimize, steps=inv.steps, batch_size=inv.batch_size, seed=cfg.seed,
                           device=cfg.device, progress=False, **opts)
