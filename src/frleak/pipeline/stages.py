"""The audit's stages, each a small function of a :class:`~frleak.pipeline.core.StageContext`.

split -> target -> shadow -> features -> attack -> inversion; defense_<label> (one per defense); report.
Every stage reads its inputs from the run folder (never from another stage's memory) and writes its own folder.
Cache keys hash the config section returned by the ``*_params`` function next to each stage (docs/audit.md).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frleak.config import AuditConfig, expand_path, to_dict
from frleak.data.splits import ROLES, MembershipSplit
from frleak.errors import ConfigError, DataError
from frleak.io import atomic_write_json, file_sha256
from frleak.pipeline.core import Stage, StageContext
from frleak.pipeline.pools import evaluate_pools, load_pool, membership_config, model_pool, save_pool

log = logging.getLogger("frleak.audit")


# ---- helpers ---------------------------------------------------------------------------------------------------
def _expand(path: str | None) -> str | None:
    return expand_path(path) if path else None


def folder_fingerprint(root: str | Path) -> str:
    """sha256 of the (identity/file name, size) listing of an identity folder: a changed dataset changes the key.
    Sizes, not modification times, so a copied dataset fingerprints the same."""
    h = hashlib.sha256()
    root = Path(root)
    if not root.is_dir():
        return "missing"
    for sub in sorted(os.scandir(root), key=lambda e: e.name):
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        for f in sorted(os.scandir(sub.path), key=lambda e: e.name):
            if f.is_file():
                h.update(f"{sub.name}/{f.name}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def path_fingerprint(path: str | None) -> str | None:
    """sha256 of a weights file, or of every file of a model folder; None for no path."""
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return file_sha256(p)[:16]
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file() and q.name != "train_state.pt"):
            h.update(f"{f.relative_to(p)}:{file_sha256(f)}\n".encode())
        return h.hexdigest()[:16]
    return "missing"


def _train_config(cfg: AuditConfig) -> Any:
    return dataclasses.replace(cfg.train, device=cfg.device)


def utility(cfg: AuditConfig, model: torch.nn.Module) -> dict[str, Any] | None:
    """Verification accuracy on ``data.verification`` (seeded random pairs, the target's recipe seed)."""
    from frleak.targets import utility_fn

    fn = utility_fn(_expand(cfg.data.verification), cfg.data.verification_pairs, cfg.train.seed)
    return None if fn is None else fn(model)


def _load_split(ctx: StageContext) -> MembershipSplit:
    return MembershipSplit.load(ctx.input_path("split", "split.json"))


def _load_model(path: Path) -> Any:
    from frleak.models.checkpoint import load_backbone

    return load_backbone(path)


# ---- split -----------------------------------------------------------------------------------------------------
def split_params(cfg: AuditConfig) -> dict[str, Any]:
    d = cfg.data
    sources: set[str] = set()
    if cfg.target.train:
        pools = [d.target, d.unseen, d.other]
    else:
        pools = []
        sources |= {p for p in (cfg.target.members, cfg.target.nonmembers, cfg.target.other) if p}
    if cfg.shadow.train:
        pools += [d.shadow, d.shadow_unseen, d.shadow_other]
    sources |= {p.source for p in pools if p is not None}
    return {"data": to_dict(d), "seed": cfg.seed, "target": to_dict(cfg.target), "shadow": cfg.shadow.train,
            "fingerprints": {s: folder_fingerprint(expand_path(s)) for s in sorted(sources)}}


def given_split(cfg: AuditConfig) -> MembershipSplit:
    """Mode b: the target's roles from the user's folders (members; non-members of member identities are
    ``same_identity``, of other identities ``unseen_identity``; ``target.other`` is ``other_dataset``); the shadow's
    roles drawn from the auxiliary pools ``data.shadow*`` as in mode a."""
    from frleak.data.folder import group_by_identity, scan_identity_folder
    from frleak.data.prepare import build_split
    from frleak.data.splits import ModelSplit

    t = cfg.target

    def scan(path: str | None, key: str) -> list[Any]:
        if not path:
            return []
        try:
            samples = scan_identity_folder(expand_path(path))
        except DataError as exc:
            raise DataError(f"target.{key}: {exc}") from None
        if t.max_per_identity:
            samples = [s for g in group_by_identity(samples).values() for s in g[:t.max_per_identity]]
        return samples

    members = scan(t.members, "members")
    nonmembers = scan(t.nonmembers, "nonmembers")
    member_ids = {s.identity for s in members}
    target = ModelSplit(members=members, same_identity=[s for s in nonmembers if s.identity in member_ids],
                        unseen_identity=[s for s in nonmembers if s.identity not in member_ids],
                        other_dataset=scan(t.other, "other"))
    shadow = None
    if cfg.shadow.train:
        d = cfg.data
        assert d.shadow is not None  # validated: shadow.train needs data.shadow
        aux = dataclasses.replace(d, target=d.shadow, unseen=d.shadow_unseen, other=d.shadow_other, shadow=None)
        shadow = build_split(aux, cfg.seed).target
    split = MembershipSplit(target=target, shadow=shadow,
                            spec={"mode": "given", "members": t.members, "nonmembers": t.nonmembers,
                                  "other": t.other, "max_per_identity": t.max_per_identity, "seed": cfg.seed})
    split.check_disjoint()
    return split


def run_split(ctx: StageContext) -> dict[str, Any]:
    from frleak.data.prepare import build_split

    cfg: AuditConfig = ctx.config
    if cfg.target.train:
        data = cfg.data if cfg.shadow.train else dataclasses.replace(cfg.data, shadow=None)
        split = build_split(data, cfg.seed)
    else:
        split = given_split(cfg)
    split.save(ctx.dir / "split.json")
    return {"digest": split.digest(), "models": {m: s.summary() for m, s in split.models().items()}}


# ---- target ----------------------------------------------------------------------------------------------------
def target_params(cfg: AuditConfig) -> dict[str, Any]:
    return {"model": to_dict(cfg.model), "weights": path_fingerprint(_expand(cfg.model.weights)),
            "train": to_dict(_train_config(cfg)) if cfg.target.train else None, "target": to_dict(cfg.target),
            "verification": [cfg.data.verification, cfg.data.verification_pairs], "name": cfg.name}


def load_given_model(cfg: AuditConfig) -> tuple[Any, dict[str, Any]]:
    """Mode b: the user's model (a frleak folder with its card, or a foreign checkpoint of ``model.backbone``)."""
    from frleak.errors import CheckpointError
    from frleak.models.checkpoint import load_backbone, read_card

    path = Path(_expand(cfg.model.weights) or "")
    trust = cfg.model.trust_checkpoint
    try:
        card = read_card(path)
    except CheckpointError:
        card = {}
    if card.get("arch"):
        model = load_backbone(path, trust=trust)
    else:
        model = load_backbone(path, cfg.model.backbone, trust=trust, **cfg.model.options)
    return model, card


def run_target(ctx: StageContext) -> dict[str, Any]:
    from frleak.models.checkpoint import read_card, save_backbone
    from frleak.targets import train_role

    cfg: AuditConfig = ctx.config
    split = _load_split(ctx)
    out = ctx.dir / "model"
    if cfg.target.train:
        train_role(split, "target", backbone=cfg.model.backbone, options=dict(cfg.model.options),
                   train=_train_config(cfg), out_dir=out, weights=_expand(cfg.model.weights),
                   trust=cfg.model.trust_checkpoint, resume=True, verification=_expand(cfg.data.verification),
                   verification_pairs=cfg.data.verification_pairs, callbacks=tuple(ctx.train_callbacks),
                   progress=ctx.progress, extra_card={"audit": cfg.name})
    else:
        model, card = load_given_model(cfg)
        keep = {k: v for k, v in card.items() if k not in ("arch", "input_spec", "embedding_dim", "utility")}
        u = utility(cfg, model)
        save_backbone(model, out, {**keep, "role": "target", "audited_weights": _expand(cfg.model.weights),
                                   "audited_weights_sha256": path_fingerprint(_expand(cfg.model.weights)),
                                   "split_digest": split.digest(), **({"utility": u} if u else {})})
    card = read_card(out)
    return {"utility": card.get("utility"), "epochs_run": card.get("epochs_run"), "final_loss": card.get("final_loss")}


# ---- shadow ----------------------------------------------------------------------------------------------------
def shadow_params(cfg: AuditConfig) -> dict[str, Any]:
    return {"shadow": to_dict(cfg.shadow), "device": cfg.device, "model": to_dict(cfg.model),
            "train": to_dict(cfg.train), "pairs": cfg.data.verification_pairs}


def shadow_recipe(cfg: AuditConfig, target_card: dict[str, Any]) -> tuple[str, dict[str, Any], Any, str | None, str]:
    """(backbone, options, TrainConfig, init weights, where from): the target's card (setting B copies the recipe)
    or the config's ``model`` + ``train``, with the seed shifted by ``shadow.seed_offset``."""
    from frleak.targets import shadow_recipe_from_card

    use_card = cfg.shadow.recipe == "card" or (cfg.shadow.recipe == "auto" and "recipe" in target_card
                                                and "arch" in target_card)
    if use_card:
        backbone, options, train = shadow_recipe_from_card(target_card, cfg.shadow.seed_offset)
        return backbone, options, dataclasses.replace(train, device=cfg.device), target_card.get("init_weights"), \
            "target model card"
    train = dataclasses.replace(cfg.train, device=cfg.device, seed=cfg.train.seed + cfg.shadow.seed_offset)
    weights = _expand(cfg.model.weights) if cfg.target.train else None
    return cfg.model.backbone, dict(cfg.model.options), train, weights, "config (model, train)"


def run_shadow(ctx: StageContext) -> dict[str, Any]:
    from frleak.models.checkpoint import read_card
    from frleak.targets import recipe_mismatch, train_role

    cfg: AuditConfig = ctx.config
    split = _load_split(ctx)
    if split.shadow is None:
        raise ConfigError("the split has no shadow part: set data.shadow (or shadow.train: false)")
    t_card = read_card(ctx.input_path("target", "model"))
    backbone, options, train, weights, source = shadow_recipe(cfg, t_card)
    out = ctx.dir / "model"
    train_role(split, "shadow", backbone=backbone, options=options, train=train, out_dir=out, weights=weights,
               trust=cfg.model.trust_checkpoint, resume=True, verification=_expand(cfg.shadow.verification),
               verification_pairs=cfg.data.verification_pairs, progress=ctx.progress,
               extra_card={"audit": cfg.name, "recipe_source": source})
    s_card = read_card(out)
    return {"recipe_source": source, "recipe_mismatch": recipe_mismatch(t_card, s_card),
            "utility": s_card.get("utility")}


# ---- features --------------------------------------------------------------------------------------------------
def features_params(cfg: AuditConfig) -> dict[str, Any]:
    return {"batch_size": cfg.membership.batch_size, "device": cfg.device}


def run_features(ctx: StageContext) -> dict[str, Any]:
    cfg: AuditConfig = ctx.config
    split = _load_split(ctx)
    target = _load_model(ctx.input_path("target", "model"))
    shadow = _load_model(ctx.input_path("shadow", "model")) if "shadow" in ctx.stage.inputs else None
    kw = {"batch_size": cfg.membership.batch_size, "device": cfg.device, "progress": ctx.progress}
    tpool, names = model_pool(target, split.target, shadow, **kw)  # type: ignore[arg-type]
    save_pool(ctx.dir / "target_pool.npz", tpool, names)
    summary: dict[str, Any] = {"bn_layers": len(names), "target_rows": len(tpool.roles),
                               "groups": sorted(tpool.inputs)}
    if shadow is not None and split.shadow is not None:
        spool, s_names = model_pool(shadow, split.shadow, target, **kw)  # type: ignore[arg-type]
        save_pool(ctx.dir / "shadow_pool.npz", spool, s_names)
        summary["shadow_rows"] = len(spool.roles)
    return summary


def _pools(ctx: StageContext) -> tuple[Any, Any, list[str]]:
    tpool, names = load_pool(ctx.input_path("features", "target_pool.npz"))
    sp = ctx.input_path("features", "shadow_pool.npz")
    spool = load_pool(sp)[0] if sp.is_file() else None
    return tpool, spool, names


# ---- attack (stage 1) ------------------------------------------------------------------------------------------
def attack_params(cfg: AuditConfig) -> dict[str, Any]:
    return {"membership": to_dict(cfg.membership), "seed": cfg.seed}


def run_attack(ctx: StageContext) -> dict[str, Any]:
    cfg: AuditConfig = ctx.config
    tpool, spool, names = _pools(ctx)
    res = evaluate_pools(tpool, spool, names, membership_config(cfg), plots_dir=ctx.dir / "plots",
                         threads=cfg.membership.attack_threads)
    plots = {k: str(Path(v).relative_to(ctx.run_dir)) for k, v in res.plots.items()}
    atomic_write_json(ctx.dir / "results.json", {
        "results": res.rows, "identity_level": res.identity_level, "layer_auc": res.layer_auc,
        "layer_names": names, "plots": plots})
    ok = [r for r in res.rows if "auc" in r]
    best = max(ok, key=lambda r: r["auc"]) if ok else None
    return {"rows": len(res.rows), "fit_seconds": res.fit_seconds, "best": None if best is None else
            {k: best[k] for k in ("attack", "setting", "nonmember", "auc", "tpr_at_1pct_fpr")}}


# ---- inversion (stage 2) ---------------------------------------------------------------------------------------
def inversion_params(cfg: AuditConfig) -> dict[str, Any]:
    inv = cfg.inversion
    return {"inversion": to_dict(inv), "seed": cfg.seed, "device": cfg.device,
            "attack_params": cfg.membership.attack_params.get(inv.attack, {}),
            "generator_weights": path_fingerprint(_expand(inv.generator_weights)),
            "evaluator_weights": path_fingerprint(_expand(inv.evaluator_weights))}


def fit_guide_attack(cfg: AuditConfig, tpool: Any, spool: Any) -> Any:
    """The attack that guides stage 2, fitted on all of the chosen setting's balanced members vs non-members."""
    from frleak.attacks import create_attack
    from frleak.attacks.base import take
    from frleak.evaluation import balanced_indices
    from frleak.inversion import is_differentiable

    inv = cfg.inversion
    pool = tpool if inv.attack_setting == "A" else spool
    if pool is None:
        raise ConfigError("inversion.attack_setting: B needs the shadow's features (shadow.train: true)")
    attack = create_attack(inv.attack, **cfg.membership.attack_params.get(inv.attack, {}))
    missing = [g for g in attack.required_groups() if g not in pool.inputs]
    if missing:
        raise ConfigError(f"inversion.attack: {inv.attack!r} needs feature group(s) {', '.join(missing)}, which the "
                          "target does not have (a model without BatchNorm statistics?)")
    idx, y = balanced_indices(pool, inv.attack_nonmember, cfg.seed)
    attack.fit(take(pool.inputs, idx), y)
    if not is_differentiable(attack):
        raise ConfigError(f"inversion.attack: {inv.attack!r} cannot guide the inversion")
    return attack


def run_inversion_stage(ctx: StageContext) -> dict[str, Any]:
    from frleak.inversion import run_inversion
    from frleak.pipeline.validate import inversion_config

    cfg: AuditConfig = ctx.config
    inv = cfg.inversion
    tpool, spool, _ = _pools(ctx)
    guide = fit_guide_attack(cfg, tpool, spool)
    guide_path = guide.save(ctx.dir / "guide_attack")
    icfg = dataclasses.replace(inversion_config(cfg), progress=ctx.progress)
    result = run_inversion(
        ctx.input_path("target", "model"), icfg, ctx.dir, attack=guide_path, generator=inv.generator,
        generator_weights=_expand(inv.generator_weights), generator_options=dict(inv.generator_options),
        trust=cfg.model.trust_checkpoint, split=ctx.input_path("split", "split.json"), n_targets=inv.targets,
        evaluator_weights=_expand(inv.evaluator_weights), evaluator_backbone=inv.evaluator_backbone,
        control=inv.control, max_per_identity=inv.gallery_max_per_identity, far=inv.far, cohort_size=inv.cohort)
    u = (result.get("metrics") or {}).get("untargeted", {})
    return {"guide": {"attack": inv.attack, "setting": inv.attack_setting, "nonmember": inv.attack_nonmember},
            "member_share": u.get("member_share"), "member_ids_recovered": u.get("member_ids_recovered")}


# ---- defenses --------------------------------------------------------------------------------------------------
def defense_params(cfg: AuditConfig, index: int) -> dict[str, Any]:
    spec = cfg.defenses.apply[index]
    d = cfg.defenses
    return {"spec": to_dict(spec), "public": to_dict(d.public), "public_images": d.public_images,
            "adaptive": d.adaptive, "attacks": d.attacks, "membership": to_dict(cfg.membership),
            "seed": cfg.seed, "device": cfg.device, "model": to_dict(cfg.model), "train": to_dict(cfg.train),
            "verification": [cfg.data.verification, cfg.data.verification_pairs],
            "public_fingerprint": folder_fingerprint(expand_path(d.public.source)) if d.public else None}


def public_images(cfg: AuditConfig, split: MembershipSplit, spec: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(defender's, attacker's) public images, uint8 (N, 3, H, W) at ``spec``: identities of ``defenses.public``
    that the split does not use (same folder), shuffled (seeded) and dealt alternately to the two sides, at most
    ``defenses.public_images`` each."""
    from frleak.data.folder import group_by_identity, scan_identity_folder
    from frleak.data.images import load_uint8

    pool = cfg.defenses.public
    if pool is None:
        raise ConfigError("defenses.public: release-time defenses need public images (an identity-folder pool)")
    groups = group_by_identity(scan_identity_folder(expand_path(pool.source)))
    used = {(str(Path(s.path).parent.parent), s.identity) for ms in split.models().values() for r in ROLES
            for s in ms.role(r)}
    eligible = [i for i, s in groups.items() if (str(Path(s[0].path).parent.parent), i) not in used
                and len(s) >= pool.min_images and (pool.max_images is None or len(s) <= pool.max_images)]
    rng = np.random.default_rng(cfg.seed * 1_000_003 + 17)
    ids = [eligible[i] for i in rng.permutation(len(eligible))][:pool.identities]
    sides = []
    for part in (ids[0::2], ids[1::2]):
        paths = [s.path for i in sorted(part) for s in groups[i][:pool.max_per_identity]][:cfg.defenses.public_images]
        if len(paths) < 2:
            raise ConfigError(f"defenses.public: only {len(paths)} public image(s) per side are left in "
                              f"{pool.source} after excluding the split's identities; widen the pool")
        sides.append(load_uint8(paths, spec))
    return sides[0], sides[1]


def run_defense(ctx: StageContext, index: int) -> dict[str, Any]:
    from frleak.data.prepare import load_training_set
    from frleak.defenses import adaptive_defense, adaptive_reference, create_defense, train_with_defense, write_release
    from frleak.models.checkpoint import read_card, save_backbone
    from frleak.seeding import seed_everything
    from frleak.train import TrainConfig

    cfg: AuditConfig = ctx.config
    spec = cfg.defenses.apply[index]
    label = spec.label or spec.name
    split = _load_split(ctx)
    t_dir = ctx.input_path("target", "model")
    t_card = read_card(t_dir)
    base_target = _load_model(t_dir)
    base_shadow = _load_model(ctx.input_path("shadow", "model")) if "shadow" in ctx.stage.inputs else None
    defense = create_defense(spec.name, **spec.params)
    shadow = base_shadow
    info: dict[str, Any] = {}
    if defense.stage == "training":
        recipe = _train_config(cfg)
        images, labels, _ = load_training_set(split.target.members, base_target.input_spec, progress=ctx.progress)
        seed_everything(recipe.seed)  # the undefended target's initial weights (train_role seeds the same way)
        target, res = train_with_defense(
            defense, cfg.model.backbone, dict(cfg.model.options), images, labels, recipe, out_dir=ctx.dir / "target",
            resume=True, progress=ctx.progress, card={"role": "target", "split_digest": split.digest(),
                                                       "audit": cfg.name, "audit_defense": label},
            evaluate=(lambda m: utility(cfg, m) or {}) if cfg.data.verification else None)
        info["training"] = {"epochs_run": res.get("epochs_run"), "stopped_early": res.get("stopped_early")}
        if base_shadow is not None and split.shadow is not None and cfg.defenses.adaptive:
            s_backbone, s_options, s_train, _, _ = shadow_recipe(cfg, t_card)
            s_images, s_labels, _ = load_training_set(split.shadow.members, base_shadow.input_spec,
                                                      progress=ctx.progress)
            seed_everything(s_train.seed)
            shadow, _ = train_with_defense(adaptive_defense(defense), s_backbone, s_options, s_images, s_labels,
                                           s_train, out_dir=ctx.dir / "shadow", resume=True, progress=ctx.progress,
                                           card={"role": "shadow", "audit": cfg.name, "audit_defense": label})
    else:
        target = copy.deepcopy(base_target)
        pub_def = pub_att = None
        if defense.stage == "release":
            pub_def, pub_att = public_images(cfg, split, base_target.input_spec)
            if "recipe" in t_card:  # e.g. bn_reestimate re-estimates at the training batch size
                defense.configure(dict(t_card.get("arch", {}).get("kwargs", {})),
                                  TrainConfig.from_dict(t_card["recipe"]))
        target = defense.finalize(target, pub_def)
        target.eval()
        u = utility(cfg, target)
        keep = {k: v for k, v in t_card.items() if k not in ("utility", "defense")}
        write_release(defense, target, ctx.dir / "target", {**keep, **({"utility": u} if u else {})})
        if base_shadow is not None and cfg.defenses.adaptive and defense.stage == "release":
            shadow = adaptive_reference(defense, base_shadow, pub_att)
            save_backbone(shadow, ctx.dir / "shadow", {"role": "shadow", "audit_defense": label,
                                                       "adaptive_of": defense.card()})
    card = read_card(ctx.dir / "target")
    kw = {"batch_size": cfg.membership.batch_size, "device": cfg.device, "progress": ctx.progress}
    tpool, names = model_pool(target, split.target, shadow, **kw)  # type: ignore[arg-type]
    spool = None
    if shadow is not None and split.shadow is not None:
        spool, _ = model_pool(shadow, split.shadow, target, **kw)  # type: ignore[arg-type]
    res_pools = evaluate_pools(tpool, spool, names, membership_config(cfg, cfg.defenses.attacks, identity=False),
                               threads=cfg.membership.attack_threads)
    removes = bool(getattr(defense, "removes_bn_surface", False)) or not names
    out = {"label": label, "name": spec.name, "params": defense.params(), "stage": defense.stage,
           "removes_bn_surface": removes, "defense": card.get("defense", defense.card()),
           "utility": card.get("utility"), "baseline_utility": t_card.get("utility"),
           "adaptive": cfg.defenses.adaptive and base_shadow is not None, "results": res_pools.rows,
           "layer_auc": res_pools.layer_auc, **info}
    atomic_write_json(ctx.dir / "results.json", out)
    return {"label": label, "removes_bn_surface": removes, "fit_seconds": res_pools.fit_seconds,
            "utility": (card.get("utility") or {}).get("verification_accuracy")}


# ---- report ----------------------------------------------------------------------------------------------------
def report_params(cfg: AuditConfig) -> dict[str, Any]:
    from frleak.report import versions

    return {"config": to_dict(cfg), "versions": versions()}


def run_report(ctx: StageContext) -> dict[str, Any]:
    from frleak.report import build_report, write_report

    report = build_report(ctx.run_dir, ctx.config, {n: ctx.manifests[n] for n in ctx.stage.inputs})
    paths = write_report(report, ctx.run_dir)
    for p in paths:
        ctx.add_output(p)
    return {"headline": report["summary"]["headline"][:2]}


# ---- the graph -------------------------------------------------------------------------------------------------
def audit_stages(cfg: AuditConfig) -> list[Stage]:
    """The stages of ``cfg``, inputs first."""
    has_shadow = cfg.shadow.train
    models = ("split", "target", "shadow") if has_shadow else ("split", "target")
    stages = [
        Stage("split", (), split_params, run_split, "membership split (who is a member of what)"),
        Stage("target", ("split",), target_params, run_target,
              "train the target model" if cfg.target.train else "load the audited model, measure its utility"),
    ]
    if has_shadow:
        stages.append(Stage("shadow", ("split", "target"), shadow_params, run_shadow,
                            "train the attacker's shadow model (setting B)"))
    stages.append(Stage("features", models, features_params, run_features,
                        "BN-statistics and embedding features of every split image"))
    stages.append(Stage("attack", ("features",), attack_params, run_attack,
                        "stage 1: every membership attack, settings A/B, identity level, plots"))
    if cfg.inversion.enabled:
        stages.append(Stage("inversion", ("split", "target", "features"), inversion_params, run_inversion_stage,
                            "stage 2: GAN inversion guided by the attack, with its control"))
    for i, spec in enumerate(cfg.defenses.apply):
        label = spec.label or spec.name

        def params(c: AuditConfig, i: int = i) -> dict[str, Any]:
            return defense_params(c, i)

        def run(ctx: StageContext, i: int = i) -> dict[str, Any]:
            return run_defense(ctx, i)

        stages.append(Stage(f"defense_{label}", models, params, run, f"defense {label}: defended model, attacks, "
                            "utility"))
    stages.append(Stage("report", tuple(s.name for s in stages), report_params, run_report,
                        "report.json + report.html"))
    return stages
