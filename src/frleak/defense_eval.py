"""The defense study (issue 5): every defense on the same membership split and seed, attacked by the paper's attack,
the strongest attacks and the non-BN baselines in both threat settings, next to the utility it leaves.

For each defense the released target is made once and kept in the work folder (a re-run reuses it, and reuses a
defense's result rows when nothing they depend on changed):

* ``none``: the undefended target (trained like ``benchmarks/mia_lfw.py``, or reused from its work folder);
* release-stage defenses (``bn_reestimate``, ``bn_noise``): the *same* undefended target post-processed with the
  defender's public images (identities of ``public_source`` that appear nowhere in the split), no retraining;
* training-stage defenses: a target trained from the same initial seed with the defense (``train_with_defense``).

Attackers (arXiv 2401.13719 setting A: part of the training data; setting B: a shadow trained on auxiliary data with
the target's recorded recipe). The *naive* attacker uses the undefended shadow, for every defense. The *adaptive*
attacker knows the defense (Kerckhoffs; :func:`frleak.defenses.defense_from_card`) and defends its shadow the same
way: for release defenses the shadow is post-processed with an own seed and the attacker's own public images
(``attacker_public_source``: identities outside the split, the shadow's domain); for training defenses the shadow is
retrained with the defense (``adaptive_training``, one more model each). The shadow is also the reference model of
the calibrated attacks in setting A, so adaptive rows are reported for setting B and for the reference-using attacks
of setting A (the other setting-A attacks never see the shadow: their rows hold for both attackers).

When a released model has no BatchNorm running statistics (``removes_bn_surface``: GroupNorm, LayerNorm, DP-SGD) the
BN attacks are not run: their rows carry ``status = "BN attack surface removed"`` and no metric, and the non-BN
attacks (embedding norm, flip consistency, nearest known member) run on embedding-only features
(:func:`embedding_inputs`).

Each row: ``defense, attack, setting, nonmember, adaptive`` + the metrics of :func:`frleak.metrics.mia_metrics`
(``auc``, ``accuracy``, ``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr``, ... with ``*_ci``) + the released model's
``verification_accuracy`` (+ ``_std``) on identity-disjoint pairs; or ``status`` instead of metrics.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frleak.attack_data import NO_BN_STATUS, load_images, model_inputs, with_reference
from frleak.data.folder import Sample, group_by_identity, scan_identity_folder
from frleak.data.splits import ROLES, MembershipSplit, ModelSplit
from frleak.errors import ConfigError, DataError
from frleak.evaluation import ModelPool, setting_a, setting_b
from frleak.features import has_bn_statistics
from frleak.models.base import Backbone
from frleak.train import TrainConfig

log = logging.getLogger(__name__)

ALL_DEFENSES = ("none", "dpsgd", "bn_reestimate", "bn_noise", "groupnorm", "layernorm", "weight_decay",
                "label_smoothing", "early_stopping", "augmentation")
#: the paper's attack, the strongest ones (boosted trees, reference-calibrated), the non-BN baselines
DEFENSE_ATTACKS = ("paper_bn_linear", "frleak_strong", "bn_gbm", "embedding_nn", "embedding_norm", "flip_consistency")
SURFACE_REMOVED = NO_BN_STATUS
_BN_GROUPS = {"paper", "normalized", "variance", "channels", "ref_paper", "ref_normalized", "ref_variance"}
_RESULTS_DIR = "results"


@dataclass(frozen=True)
class DefenseEvalConfig:
    """What the defense study runs (the model, data and recipe come separately)."""

    defenses: tuple[str, ...] = ALL_DEFENSES
    defense_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> create_defense kwargs
    attacks: tuple[str, ...] = DEFENSE_ATTACKS
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: tuple[str, ...] = ("A", "B")
    kinds: tuple[str, ...] = ("same_identity", "unseen_identity")  # add other_dataset for dataset shift
    adaptive: bool = True  # also measure the attacker who defends its shadow the same way
    adaptive_training: bool = False  # ... for training-stage defenses too (trains one more shadow per defense)
    # the defender's public images for release defenses: identities of this folder that are not in the split
    public_source: str = "${shared}/data/lfw-112"
    public_images: int = 1000
    public_max_per_identity: int | None = 1
    # the adaptive attacker's own public images (for its re-estimated shadow): the shadow's domain, outside the split
    attacker_public_source: str = "${shared}/data/celeba-112"
    attacker_public_images: int = 500
    attacker_public_max_per_identity: int | None = None
    folds: int = 5
    n_boot: int = 1000
    batch_size: int = 128
    device: str = "cpu"
    # stage 2 (optional, minutes per defense on a CPU): untargeted membership-guided inversion vs its control,
    # guided by paper_bn_linear fitted on the released target (members vs same-identity non-members)
    inversion: bool = False
    inversion_generator: str = "dcgan32_celeba"
    inversion_images: int = 16
    inversion_candidates: int = 128
    inversion_steps: int = 50

    def validate(self) -> None:
        from frleak.attacks import create_attack
        from frleak.defenses import create_defense
        from frleak.evaluation import KINDS

        for name in self.defenses:
            create_defense(name, **self.defense_params.get(name, {}))  # unknown names/params: ConfigError
        unknown = sorted(set(self.defense_params) - set(self.defenses))
        if unknown:
            raise ConfigError(f"study.defense_params: {', '.join(unknown)} not in study.defenses")
        if len(set(self.defenses)) != len(self.defenses):
            raise ConfigError(f"study.defenses lists a defense twice: {', '.join(self.defenses)}")
        for a in self.attacks:
            create_attack(a, **self.attack_params.get(a, {}))
        bad = [s for s in self.settings if s not in ("A", "B")]
        if bad or not self.settings:
            raise ConfigError(f"study.settings must be a non-empty subset of A, B; got {list(self.settings)}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"study.kinds: unknown non-member kind(s) {bad}; expected some of {', '.join(KINDS)}")
        if self.inversion and self.inversion_candidates < 2 * self.inversion_images:
            raise ConfigError("study.inversion_candidates must be >= 2 * study.inversion_images")
        if self.n_boot < 0 or self.folds < 2:
            raise ConfigError("study.n_boot must be >= 0 and study.folds >= 2")


# ---- features ----------------------------------------------------------------------------------------------------
def is_bn_attack(name: str, params: dict[str, Any] | None = None) -> bool:
    """Does the attack read BN-statistics features (its own or a reference model's)?"""
    from frleak.attacks import create_attack

    return bool(set(create_attack(name, **(params or {})).required_groups()) & _BN_GROUPS)


def uses_reference(name: str, params: dict[str, Any] | None = None) -> bool:
    """Does the attack need a reference model's distances (``ref_*``), i.e. the shadow, in setting A?"""
    from frleak.attacks import create_attack

    return any(g.startswith("ref_") for g in create_attack(name, **(params or {})).required_groups())


def attack_inputs(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 128, device: str = "cpu"
                  ) -> dict[str, np.ndarray]:
    """All attack feature groups a model offers: BN distances + embedding features, or embedding features only."""
    return model_inputs(model, images, batch_size=batch_size, device=device)[0]


class _Pools:
    """Attack inputs per (model, image set), computed once per study (the undefended shadow's features serve every
    defense), and the pools of settings A/B assembled from them exactly as :func:`frleak.membership.build_pool`
    does. Image sets are decoded on first use."""

    def __init__(self, loaders: dict[str, Callable[[], tuple[torch.Tensor, np.ndarray, np.ndarray]]],
                 batch_size: int, device: str) -> None:
        self.loaders = loaders  # image set -> () -> (uint8 images, roles, identities)
        self.batch_size, self.device = batch_size, device
        self._images: dict[str, tuple[torch.Tensor, np.ndarray, np.ndarray]] = {}
        self._cache: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def images(self, image_set: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        if image_set not in self._images:
            self._images[image_set] = self.loaders[image_set]()
        return self._images[image_set]

    def inputs(self, key: str, model: torch.nn.Module, image_set: str) -> dict[str, np.ndarray]:
        if (key, image_set) not in self._cache:
            self._cache[(key, image_set)] = attack_inputs(model, self.images(image_set)[0],
                                                          batch_size=self.batch_size, device=self.device)
        return self._cache[(key, image_set)]

    def pool(self, key: str, model: torch.nn.Module, image_set: str,
             reference: tuple[str, torch.nn.Module] | None) -> ModelPool:
        """The pool of ``model`` on ``image_set``, with the reference model's BN distances (``ref_*``) when both
        models have BN statistics."""
        inputs = self.inputs(key, model, image_set)
        if reference is not None and "paper" in inputs:
            inputs = with_reference(inputs, self.inputs(reference[0], reference[1], image_set))
        _, roles, ids = self.images(image_set)
        return ModelPool(inputs, roles, ids)

    def forget(self, key: str) -> None:
        for k in [k for k in self._cache if k[0] == key]:
            del self._cache[k]


def pool_images(ms: ModelSplit, kinds: Sequence[str], spec: Any, progress: bool = False
                ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Members and the requested non-member kinds of one model's split, in ROLES order (as ``build_pool``)."""
    roles_used = [r for r in ROLES if r == "members" or r in kinds]
    samples = [s for r in roles_used for s in ms.role(r)]
    roles = np.array([r for r in roles_used for _ in ms.role(r)])
    return load_images(samples, spec, progress=progress), roles, np.array([s.identity for s in samples])


# ---- public images -----------------------------------------------------------------------------------------------
def public_samples(source: str, split: MembershipSplit, n_images: int, *, seed: int,
                   max_per_identity: int | None = None) -> list[Sample]:
    """Up to ``n_images`` images of identities of ``source`` that appear nowhere in ``split`` (seeded draw of
    identities, at most ``max_per_identity`` images each): data a defender or an attacker may use freely."""
    root = str(Path(source).expanduser().resolve())
    used = {s.identity for ms in split.models().values() for r in ROLES for s in ms.role(r)
            if str(Path(s.path).parent.parent) == root}
    groups = {i: s for i, s in group_by_identity(scan_identity_folder(root)).items() if i not in used}
    if not groups:
        raise DataError(f"{source}: every identity is used by the membership split; no public images left")
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    out: list[Sample] = []
    for j in rng.permutation(len(names)):
        imgs = groups[names[j]]
        if max_per_identity is not None and len(imgs) > max_per_identity:
            imgs = [imgs[i] for i in sorted(rng.choice(len(imgs), max_per_identity, replace=False))]
        out += imgs[:n_images - len(out)]
        if len(out) >= n_images:
            break
    if len(out) < n_images:
        log.warning("%s: only %d public images outside the split (asked for %d)", source, len(out), n_images)
    if len(out) < 2:
        raise DataError(f"{source}: fewer than 2 public images outside the split")
    return sorted(out)


# ---- models ------------------------------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    """First 16 hex digits of a file's SHA-256 (identifies released weights in the result cache)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def check_card(folder: Path, *, split: MembershipSplit, backbone: str, options: dict[str, Any], recipe: TrainConfig,
               defense: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model card of ``folder``, checked: same split, architecture and recipe (seed included; device and AMP
    excluded), and the given defense (name and parameters) if one is given. Raises ConfigError naming the folder."""
    from frleak.models.checkpoint import read_card

    card = read_card(folder)
    if card.get("split_digest") != split.digest():
        raise ConfigError(f"{folder} was trained on split {card.get('split_digest')}, this study's split is "
                          f"{split.digest()}: pass the split.json it was trained on, or another folder")
    arch = card.get("arch") or {}
    if arch.get("name") != backbone or arch.get("kwargs") != dict(options):
        raise ConfigError(f"{folder} holds {arch.get('name')} {arch.get('kwargs')}, the study expects {backbone} "
                          f"{dict(options)}")
    have, want = card.get("recipe") or {}, recipe.to_dict()
    diff = [k for k in want if k not in ("device", "amp") and have.get(k) != want[k]]
    if diff:
        raise ConfigError(f"{folder} was trained with another recipe (differs in: {', '.join(diff)})")
    got = card.get("defense") or {"name": "none", "params": {}}
    if defense is not None and (got.get("name"), got.get("params")) != (defense["name"], defense["params"]):
        raise ConfigError(f"{folder} holds defense {got.get('name')} {got.get('params')}, not {defense['name']} "
                          f"{defense['params']}")
    return card


def _finished(folder: Path, **kw: Any) -> bool:
    """Is there a released model from an earlier run that matches? (False when absent or different.)"""
    from frleak.models.checkpoint import CARD_NAME

    if not (folder / CARD_NAME).is_file():
        return False
    try:
        check_card(folder, **kw)
    except ConfigError as exc:
        log.warning("%s does not match this study, it is made again: %s", folder, exc)
        return False
    return True


def _facts(folder: Path) -> dict[str, Any]:
    f = folder / "study.json"
    return json.loads(f.read_text()) if f.is_file() else {}


@dataclass
class Study:
    """The fixed parts of a defense study: split, architecture, recipe, configuration, folders, and caches."""

    split: MembershipSplit
    work: Path
    backbone: str
    options: dict[str, Any]
    train: TrainConfig
    config: DefenseEvalConfig
    verification: str | None = None
    verification_pairs: int = 3000
    target_dir: Path | None = None  # None: work/target
    shadow_dir: Path | None = None  # None: work/shadow
    progress: bool = True
    extra_card: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def target_path(self) -> Path:
        return self.target_dir or self.work / "target"

    @property
    def shadow_path(self) -> Path:
        return self.shadow_dir or self.work / "shadow"

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def utility(self) -> Callable[[Backbone], dict[str, Any]] | None:
        """Verification accuracy on seeded random pairs of the identity-disjoint set (as ``train_role``)."""
        from frleak.targets import utility_fn

        return utility_fn(self.verification, self.verification_pairs, self.train.seed)

    def load(self, folder: Path) -> Backbone:
        from frleak.models.checkpoint import load_backbone

        return self.once(f"model:{folder}", lambda: load_backbone(folder))

    def shadow_recipe(self) -> tuple[str, dict[str, Any], TrainConfig]:
        """The attacker copies the undefended target's recorded recipe, with a seed of its own (setting B)."""
        from frleak.models.checkpoint import read_card
        from frleak.targets import shadow_recipe_from_card

        return shadow_recipe_from_card(read_card(self.target_path))

    def training_set(self, role: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        from frleak.data.prepare import load_training_set
        from frleak.models.base import create_backbone

        spec = create_backbone(self.backbone, **self.options).input_spec
        members = self.split.models()[role].members
        return self.once(f"train:{role}", lambda: load_training_set(members, spec, progress=self.progress))

    def public(self, who: str, spec: Any) -> torch.Tensor:
        """Public uint8 images of the defender (``who="defender"``) or of the adaptive attacker, at ``spec``."""
        from frleak.config import expand_path

        c = self.config
        if who == "defender":
            src, n, per, seed = c.public_source, c.public_images, c.public_max_per_identity, self.train.seed + 101
        else:
            src, n, per = c.attacker_public_source, c.attacker_public_images, c.attacker_public_max_per_identity
            seed = self.train.seed + 202
        samples = self.once(f"public:{who}", lambda: public_samples(expand_path(src), self.split, n, seed=seed,
                                                                    max_per_identity=per))
        return self.once(f"public:{who}:{spec}", lambda: load_images(samples, spec))

    def train_with(self, defense: Any, role: str, out: Path, backbone: str, options: dict[str, Any],
                   recipe: TrainConfig, evaluate: Callable[[Backbone], dict[str, Any]] | None) -> dict[str, Any]:
        """Train the ``role`` model with a training-stage ``defense`` into ``out`` unless a matching release is
        there (an interrupted one resumes); returns the training facts."""
        from frleak.defenses import train_with_defense
        from frleak.io import atomic_write_json
        from frleak.seeding import seed_everything

        opts, cfg = defense.configure(options, recipe)
        if _finished(out, split=self.split, backbone=backbone, options=opts, recipe=cfg,
                     defense={"name": defense.name, "params": defense.params()}):
            return _facts(out)
        images, labels, names = self.training_set(role)
        seed_everything(recipe.seed)  # the initial weights of the undefended model (train_role seeds the same way)
        card = {"role": role, "split_digest": self.split.digest(), "identities": len(names), "init_weights": None,
                **self.extra_card}
        _, result = train_with_defense(defense, backbone, options, images, labels, recipe, out_dir=out, resume=True,
                                       card=card, progress=self.progress, evaluate=evaluate)
        facts = {"train_seconds": round(result["train_seconds"], 1), "epochs_run": result["epochs_run"]}
        atomic_write_json(out / "study.json", facts)
        return facts


def ensure_undefended(study: Study, role: str) -> dict[str, Any]:
    """The undefended target or shadow: a given folder (checked against split, architecture and recipe), an earlier
    run's, or trained now with :func:`frleak.targets.train_role`, exactly as ``benchmarks/mia_lfw.py`` does."""
    from frleak.io import atomic_write_json
    from frleak.targets import train_role

    if role == "target":
        folder, given = study.target_path, study.target_dir is not None
        backbone, options, recipe = study.backbone, study.options, study.train
        verification = study.verification
    else:
        folder, given = study.shadow_path, study.shadow_dir is not None
        backbone, options, recipe = study.shadow_recipe()
        verification = None  # the shadow's utility is not part of the report
    kw: dict[str, Any] = {"split": study.split, "backbone": backbone, "options": options, "recipe": recipe}
    if given:
        check_card(folder, **kw, defense={"name": "none", "params": {}})
        return {"reused": str(folder), **_facts(folder)}
    if _finished(folder, **kw):
        return _facts(folder)
    _, result = train_role(study.split, role, backbone=backbone, options=options, train=recipe, out_dir=folder,
                           verification=verification, verification_pairs=study.verification_pairs,
                           progress=study.progress, extra_card=study.extra_card)
    facts = {"train_seconds": round(result["train_seconds"], 1), "epochs_run": result["epochs_run"]}
    atomic_write_json(folder / "study.json", facts)
    return facts


def release_defended(study: Study, defense: Any) -> dict[str, Any]:
    """A release-stage defense applied to the undefended target (no retraining), written to work/defended/NAME
    with the defender's public images; utility measured on the released model."""
    from frleak.defenses import write_release
    from frleak.io import atomic_write_json
    from frleak.models.checkpoint import WEIGHTS_NAME, read_card

    out = study.work / "defended" / defense.name
    source = {"dir": str(study.target_path), "sha256": file_digest(study.target_path / WEIGHTS_NAME)}
    want = {"name": defense.name, "params": defense.params()}
    if _finished(out, split=study.split, backbone=study.backbone, options=study.options, recipe=study.train,
                 defense=want) and read_card(out).get("released_from") == source:
        return _facts(out)
    model = copy.deepcopy(study.load(study.target_path))  # finalize works in place
    defense.configure(study.options, study.train)  # e.g. bn_reestimate takes the training batch size
    public = study.public("defender", model.input_spec)
    t0 = time.time()
    defense.finalize(model, public)
    model.eval()
    seconds = round(time.time() - t0, 2)
    card = {k: v for k, v in read_card(study.target_path).items() if k not in ("defense", "utility")}
    evaluate = study.utility()
    if evaluate is not None:
        card["utility"] = evaluate(model)
    card["released_from"] = source
    write_release(defense, model, out, card)
    facts = {"finalize_seconds": seconds}
    atomic_write_json(out / "study.json", facts)
    return facts


# ---- one defense -------------------------------------------------------------------------------------------------
def _attack_rows(study: Study, pools: _Pools, target: tuple[str, torch.nn.Module],
                 shadow: tuple[str, torch.nn.Module], attacks_a: Sequence[str], attacks_b: Sequence[str]
                 ) -> list[dict[str, Any]]:
    """Setting A (out-of-fold on the target) and B (fitted on the shadow), per non-member kind, as
    :func:`frleak.membership.run_membership` composes them."""
    c = study.config
    tpool = pools.pool(*target, "target", reference=shadow)
    spool = pools.pool(*shadow, "shadow", reference=target) if "B" in c.settings and attacks_b else None
    rows: list[dict[str, Any]] = []
    for kind in c.kinds:
        if len(tpool.rows(kind)) == 0:
            continue
        if "A" in c.settings and attacks_a:
            rows += setting_a(tpool, kind, attacks_a, folds=c.folds, seed=study.train.seed, n_boot=c.n_boot,
                              attack_params=c.attack_params)[0]
        if spool is not None and len(spool.rows(kind)):
            rows += setting_b(spool, tpool, kind, attacks_b, seed=study.train.seed, n_boot=c.n_boot,
                              attack_params=c.attack_params)[0]
    return rows


def _adaptive_shadow(study: Study, defense: Any, naive: Backbone) -> tuple[Backbone | None, dict[str, Any]]:
    """The adaptive attacker's shadow: defended like the target (own seed, own public data), or None."""
    from frleak.defenses import adaptive_defense
    from frleak.models.checkpoint import read_card
    from frleak.targets import recipe_mismatch

    c = study.config
    if defense.name == "none" or not c.adaptive:
        return None, {}
    s_backbone, s_options, s_recipe = study.shadow_recipe()
    own = adaptive_defense(defense)
    if defense.stage == "release":
        shadow = copy.deepcopy(naive)
        own.configure(s_options, s_recipe)  # the recipe is public (the card): same batch size as the defender
        own.finalize(shadow, study.public("attacker", shadow.input_spec))
        shadow.eval()
        return shadow, {"adaptive_shadow": "undefended shadow post-processed with the same defense",
                        "adaptive_defense": own.card()}
    if not c.adaptive_training:
        return None, {"adaptive_shadow": "not measured (adaptive_training is off)"}
    out = study.work / "adaptive_shadow" / defense.name
    facts = study.train_with(own, "shadow", out, s_backbone, s_options, s_recipe, evaluate=None)
    mismatch = recipe_mismatch(read_card(study.work / "defended" / defense.name), read_card(out))
    return study.load(out), {"adaptive_shadow": "trained with the same defense", "adaptive_shadow_dir": str(out),
                             "adaptive_shadow_train": facts, "recipe_mismatch_adaptive": mismatch}


def evaluate_defense(study: Study, pools: _Pools, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Release (or train) the defended target, then attack it with the naive and the adaptive attacker.
    Returns (result rows, facts about the defense); both cached in work/results/NAME.json."""
    from frleak.defenses import adaptive_defense, create_defense
    from frleak.io import atomic_write_json
    from frleak.models.checkpoint import WEIGHTS_NAME, read_card
    from frleak.targets import recipe_mismatch

    c = study.config
    defense = create_defense(name, **c.defense_params.get(name, {}))
    if name == "none":
        folder, facts = study.target_path, {}
    elif defense.stage == "release":
        folder, facts = study.work / "defended" / name, release_defended(study, defense)
    else:
        folder = study.work / "defended" / name
        facts = study.train_with(defense, "target", folder, study.backbone, study.options, study.train,
                                 study.utility())
    adaptive_dir = study.work / "adaptive_shadow" / name
    trained_adaptive = defense.stage == "training" and c.adaptive and c.adaptive_training
    if trained_adaptive:  # before the cache key, which depends on its weights
        study.train_with(adaptive_defense(defense), "shadow", adaptive_dir, *study.shadow_recipe(), evaluate=None)
    key = _cache_key(study, defense, folder, adaptive_dir if trained_adaptive else None)
    cached = study.work / _RESULTS_DIR / f"{name}.json"
    if cached.is_file():
        old = json.loads(cached.read_text())
        if old.get("key") == key:
            log.info("defense %s: results of an earlier run reused (%s)", name, cached)
            return old["rows"], {**old["facts"], "cached": True}
    t0 = time.time()
    card = read_card(folder)
    target = study.load(folder)
    naive = study.load(study.shadow_path)
    tkey = "target" if name == "none" else f"defended:{name}"
    bn = has_bn_statistics(target)
    removed = [a for a in c.attacks if not bn and is_bn_attack(a, c.attack_params.get(a))]
    runnable = [a for a in c.attacks if a not in removed]
    rows = [{**r, "adaptive": False} for r in _attack_rows(study, pools, (tkey, target), ("shadow", naive),
                                                           runnable, runnable)]
    ashadow, afacts = (None, {}) if name == "none" else _adaptive_shadow(study, defense, naive)
    if ashadow is not None:
        akey = f"adaptive:{name}"
        ref_attacks = [a for a in runnable if uses_reference(a, c.attack_params.get(a))]
        rows += [{**r, "adaptive": True} for r in _attack_rows(study, pools, (tkey, target), (akey, ashadow),
                                                               ref_attacks, runnable)]
        pools.forget(akey)
    for setting in c.settings:
        for kind in c.kinds:
            rows += [{"attack": a, "setting": setting, "nonmember": kind, "adaptive": False,
                      "status": SURFACE_REMOVED} for a in removed]
    inversion = None
    if c.inversion:
        inversion = {"status": SURFACE_REMOVED} if not bn else \
            inversion_metric(study, pools.pool(tkey, target, "target", None), folder, name)
    pools.forget(tkey)
    utility = card.get("utility") or {}
    for r in rows:
        r.update({"defense": name, "verification_accuracy": utility.get("verification_accuracy"),
                  "verification_accuracy_std": utility.get("verification_accuracy_std")})
    entry = card.get("defense") or defense.card()
    facts = {"stage": defense.stage, "removes_bn_surface": bool(defense.removes_bn_surface or not bn),
             "defense": entry, "utility": utility, "model_dir": str(folder), "epochs_run": card.get("epochs_run"),
             "final_loss": card.get("final_loss"), "recipe": card.get("recipe"), **facts,
             "recipe_mismatch_naive": recipe_mismatch(card, read_card(study.shadow_path)), **afacts,
             "removed_attacks": removed, "attack_seconds": round(time.time() - t0, 1)}
    if inversion is not None:
        facts["inversion"] = inversion
    result = entry.get("result") or {}
    if "epsilon" in result:
        facts.update({"epsilon": result["epsilon"], "delta": result.get("delta")})
    if defense.stage == "release":
        facts["public_images"] = int(len(study.public("defender", target.input_spec)))
        if ashadow is not None:
            facts["attacker_public_images"] = int(len(study.public("attacker", naive.input_spec)))
    atomic_write_json(cached, {"key": key, "rows": rows, "facts": facts, "weights": file_digest(folder / WEIGHTS_NAME)})
    return rows, facts


def inversion_metric(study: Study, tpool: ModelPool, folder: Path, name: str) -> dict[str, Any]:
    """Stage 2, one cheap number per defense: untargeted membership-guided GAN inversion of the released target
    (``frleak.inversion.run_inversion``) and its unguided control; the share of reconstructions whose nearest
    identity (independent evaluator, hubness-corrected) is a member, guided minus control. The guide is
    ``paper_bn_linear`` fitted on all of the target's members vs same-identity non-members (setting A knowledge)."""
    from frleak.attacks import create_attack
    from frleak.attacks.base import take
    from frleak.evaluation import balanced_indices
    from frleak.inversion import InversionConfig, run_inversion

    c = study.config
    out = study.work / "inversion" / name
    out.mkdir(parents=True, exist_ok=True)
    idx, y = balanced_indices(tpool, "same_identity", study.train.seed)
    attack = create_attack("paper_bn_linear", **c.attack_params.get("paper_bn_linear", {}))
    attack.fit(take(tpool.inputs, idx), y)
    path = attack.save(out / "attack")
    cfg = InversionConfig(method="guided", mode="untargeted", n_images=c.inversion_images,
                          candidates=c.inversion_candidates, steps=c.inversion_steps, seed=study.train.seed,
                          device=c.device, progress=study.progress)
    t0 = time.time()
    res = run_inversion(folder, cfg, out, attack=path, generator=c.inversion_generator,
                        split=study.work / "split.json")
    method = (res.get("metrics") or {}).get("untargeted") or {}
    control = ((res.get("control") or {}).get("metrics") or {}).get("untargeted") or {}
    keys = ("member_share", "member_share_znorm", "member_ids_recovered", "distractor_ids_recovered")
    m = {k: method.get(k) for k in keys} | {f"control_{k}": control.get(k) for k in keys}
    if m["member_share_znorm"] is not None and m["control_member_share_znorm"] is not None:
        m["member_share_znorm_gain"] = m["member_share_znorm"] - m["control_member_share_znorm"]
    return {**m, "n_reconstructions": method.get("n_reconstructions"), "generator": c.inversion_generator,
            "steps": c.inversion_steps, "seconds": round(time.time() - t0, 1), "dir": str(out)}


def _cache_key(study: Study, defense: Any, folder: Path, adaptive_dir: Path | None) -> str:
    """Everything a defense's rows depend on: configuration, defense, split, the released weights, the shadows."""
    from frleak.models.checkpoint import WEIGHTS_NAME

    cfg = {k: v for k, v in asdict(study.config).items()
           if k not in ("defenses", "defense_params", "batch_size", "device")}
    parts = {"config": cfg, "defense": [defense.name, defense.params()], "split": study.split.digest(),
             "seed": study.train.seed, "target": file_digest(folder / WEIGHTS_NAME),
             "shadow": file_digest(study.shadow_path / WEIGHTS_NAME),
             "adaptive_shadow": file_digest(adaptive_dir / WEIGHTS_NAME) if adaptive_dir is not None else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- the whole study ---------------------------------------------------------------------------------------------
def run_defense_study(split: MembershipSplit, work: str | Path, *, backbone: str, options: dict[str, Any],
                      train: TrainConfig, config: DefenseEvalConfig, verification: str | None = None,
                      verification_pairs: int = 3000, target_dir: str | Path | None = None,
                      shadow_dir: str | Path | None = None, progress: bool = True,
                      extra_card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every defense of ``config`` on ``split``; models and per-defense results are kept under ``work`` (re-runs
    reuse them). ``target_dir`` / ``shadow_dir``: undefended models trained elsewhere on the same split with the
    same architecture and recipe (e.g. ``benchmarks/mia_lfw.py``'s work folder); checked, never written.
    Returns {"results": rows, "defenses": {name: facts}, "target": facts, "shadow": facts, "timing": {...}}."""
    config.validate()
    if split.shadow is None:
        raise ConfigError("the defense study needs a shadow part in the split (data.shadow): setting B and the "
                          "reference model of the calibrated attacks")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    split.save(work / "split.json")
    train = replace(train, device=config.device if train.device == "cpu" else train.device)
    study = Study(split, work, backbone, dict(options), train, config, verification, verification_pairs,
                  Path(target_dir) if target_dir else None, Path(shadow_dir) if shadow_dir else None, progress,
                  dict(extra_card or {}))
    t0 = time.time()
    out: dict[str, Any] = {"target": ensure_undefended(study, "target")}
    out["shadow"] = ensure_undefended(study, "shadow")
    timing = {"undefended_models_s": round(time.time() - t0, 1)}
    spec = study.load(study.target_path).input_spec
    s_spec = study.load(study.shadow_path).input_spec
    pools = _Pools({"target": lambda: pool_images(split.target, config.kinds, spec, progress),
                    "shadow": lambda: pool_images(split.shadow, config.kinds, s_spec, progress)},  # type: ignore
                   config.batch_size, config.device)
    rows: list[dict[str, Any]] = []
    out["defenses"] = {}
    for name in config.defenses:
        t1 = time.time()
        r, facts = evaluate_defense(study, pools, name)
        rows += r
        out["defenses"][name] = facts
        timing[f"{name}_s"] = round(time.time() - t1, 1)
        log.info("defense %s done in %.0f s", name, time.time() - t1)
    timing["total_s"] = round(time.time() - t0, 1)
    out.update({"results": rows, "timing": timing, "split_digest": split.digest()})
    return out


# ---- report ------------------------------------------------------------------------------------------------------
_SHORT = {"same_identity": "same id", "unseen_identity": "unseen id", "other_dataset": "other set"}


def _cell(row: dict[str, Any] | None, key: str, ci: bool) -> str:
    from frleak.tables import fmt, fmt_ci

    if row is None:
        return ""
    if "status" in row:
        return ""
    return fmt_ci(row, key) if ci else fmt(row.get(key))


def _status_cells(rows: list[dict[str, Any] | None], width: int) -> list[str] | None:
    status = {r.get("status") for r in rows if r is not None}
    if status == {SURFACE_REMOVED}:
        return [SURFACE_REMOVED] + ["–"] * (width - 1)
    return None


def privacy_table(results: Sequence[dict[str, Any]], setting: str, kinds: Sequence[str],
                  defenses: Sequence[str], attacks: Sequence[str]) -> str:
    """One Markdown table for one setting: a line per (defense, attacker, attack); per non-member kind AUC [CI],
    accuracy, TPR@1%FPR [CI], TPR@0.1%FPR; the released model's verification accuracy."""
    from frleak.tables import fmt

    index = {(r["defense"], bool(r.get("adaptive")), r["attack"], r["nonmember"]): r for r in results
             if r["setting"] == setting}
    head = ["defense", "attacker", "attack"]
    for k in kinds:
        s = _SHORT.get(k, k)
        head += [f"AUC ({s})", f"acc. ({s})", f"TPR@1%FPR ({s})", f"TPR@0.1%FPR ({s})"]
    head.append("verification acc.")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for d in defenses:
        for adaptive in (False, True):
            for a in attacks:
                rows = [index.get((d, adaptive, a, k)) for k in kinds]
                if all(r is None for r in rows):
                    continue
                present = [r for r in rows if r is not None]
                if all("status" in r and r["status"] != SURFACE_REMOVED for r in present):
                    continue  # not applicable anywhere (e.g. embedding_nn outside setting A, same identity)
                any_row = present[0]
                cells = [d, "adaptive" if adaptive else "naive", a]
                metric_cells = _status_cells(rows, 4 * len(kinds))
                if metric_cells is None:
                    metric_cells = []
                    for r in rows:
                        if r is not None and "status" in r:
                            metric_cells += ["n/a", "", "", ""]
                            continue
                        metric_cells += [_cell(r, "auc", True), _cell(r, "accuracy", False),
                                         _cell(r, "tpr_at_1pct_fpr", True), _cell(r, "tpr_at_0.1pct_fpr", False)]
                acc, std = any_row.get("verification_accuracy"), any_row.get("verification_accuracy_std")
                util = "–" if acc is None else f"{fmt(acc)} ± {fmt(std)}"
                lines.append("| " + " | ".join(cells + metric_cells + [util]) + " |")
    return "\n".join(lines)


def defense_table(defenses: dict[str, dict[str, Any]]) -> str:
    """Per defense: stage, BN statistics released or not, utility (verification accuracy ± std over folds),
    DP epsilon (delta), epochs and time, the attacker's shadow."""
    from frleak.tables import fmt

    head = ["defense", "stage", "BN statistics released", "verification acc.", "ε (δ)", "epochs", "time s",
            "adaptive shadow"]
    inv = any("inversion" in f for f in defenses.values())
    if inv:
        head.append("inversion: member share (control), z-norm")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, f in defenses.items():
        u = f.get("utility") or {}
        acc = u.get("verification_accuracy")
        eps = f"{f['epsilon']:.2f} ({f['delta']:.1e})" if f.get("epsilon") is not None else "–"
        secs = f.get("train_seconds", f.get("finalize_seconds"))
        lines.append("| " + " | ".join([
            name, f.get("stage", "?"), "no" if f.get("removes_bn_surface") else "yes",
            "–" if acc is None else f"{fmt(acc)} ± {fmt(u.get('verification_accuracy_std'))}", eps,
            fmt(f.get("epochs_run")), fmt(secs, 1), f.get("adaptive_shadow", "–")] + _inversion_cell(f, inv)) + " |")
    return "\n".join(lines)


def _inversion_cell(facts: dict[str, Any], wanted: bool) -> list[str]:
    from frleak.tables import fmt

    if not wanted:
        return []
    m = facts.get("inversion")
    if not m:
        return ["–"]
    if "status" in m:
        return [m["status"]]
    return [f"{fmt(m.get('member_share_znorm'), 2)} ({fmt(m.get('control_member_share_znorm'), 2)})"]


def headline_table(results: Sequence[dict[str, Any]], defenses: Sequence[str], kinds: Sequence[str],
                   paper: str = "paper_bn_linear") -> str:
    """Per defense and non-member kind: the paper's attack (naive attacker, AUC [CI]) and the strongest attack of
    each setting over every attack and attacker (AUC, which attack; a maximum over many attacks is optimistic)."""
    from frleak.tables import fmt, fmt_ci

    head = ["defense", "verification acc."]
    for k in kinds:
        s = _SHORT.get(k, k)
        head += [f"paper A ({s})", f"paper B ({s})", f"strongest A ({s})", f"strongest B ({s})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for d in defenses:
        mine = [r for r in results if r["defense"] == d]
        if not mine:
            continue
        acc = mine[0].get("verification_accuracy")
        cells = [d, "–" if acc is None else f"{fmt(acc)} ± {fmt(mine[0].get('verification_accuracy_std'))}"]
        for k in kinds:
            for setting in ("A", "B"):  # the naive attacker's: the adaptive one is in the strongest column
                p = [r for r in mine if r["attack"] == paper and r["setting"] == setting and r["nonmember"] == k
                     and not r.get("adaptive")]
                cells.append(SURFACE_REMOVED if p and "status" in p[0] else (fmt_ci(p[0], "auc") if p else "–"))
            for setting in ("A", "B"):
                cand = [r for r in mine if r["setting"] == setting and r["nonmember"] == k and "auc" in r]
                if not cand:
                    cells.append("–")
                    continue
                best = max(cand, key=lambda r: r["auc"])
                cells.append(f"{fmt(best['auc'])} ({best['attack']}{', adaptive' if best.get('adaptive') else ''})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(study: dict[str, Any], config: DefenseEvalConfig, title: str,
                    intro: Sequence[str] = ()) -> str:
    """The study's report: headline, defenses, and one privacy table per setting."""
    defenses = [d for d in config.defenses if d in study["defenses"]]
    parts = [f"# {title}", "", *intro,
             "Members are the positive class; balanced evaluation sets (chance AUC = 0.5); setting A is out-of-fold "
             f"({config.folds}-fold), setting B fitted on the attacker's shadow; 95 % bootstrap intervals in "
             "brackets. *naive*: the attacker's shadow is undefended; *adaptive*: the shadow is defended the same way "
             "(own seed, own public data). TPR@0.1%FPR with fewer than 1000 non-members is the TPR at FPR 0. "
             f"'{SURFACE_REMOVED}': the released model has no BatchNorm running statistics, so the BN attacks have "
             "nothing to read and only the non-BN attacks are run.", "",
             "## Headline", "", headline_table(study["results"], defenses, config.kinds), "",
             "## Defenses", "", defense_table({d: study["defenses"][d] for d in defenses})]
    for setting in config.settings:
        parts += ["", f"## Setting {setting}", "",
                  privacy_table(study["results"], setting, config.kinds, defenses, config.attacks)]
    return "\n".join(parts)
