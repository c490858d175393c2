"""Stage-2 benchmark on real faces: invert the stage-1 LFW target with and without the membership attack's guidance
and judge the reconstructions with an independent face model (arXiv 2401.13719, stage 2; docs/inversion.md).

  python benchmarks/inversion_lfw.py --preset smoke          # <= 5 min on 2 CPU cores (trains the smoke target
                                                              # of mia_lfw.py first if it is missing)
  python benchmarks/inversion_lfw.py --preset cpu            # <= 45 min on 2 CPU cores, the calibration target
  python benchmarks/inversion_lfw.py --preset cpu --device cuda
  python benchmarks/inversion_lfw.py --preset cpu --target DIR --split split.json --out /tmp/inv   # another target

The target is the one ``benchmarks/mia_lfw.py --preset <stage1>`` trains into ``<out>/_work/<stage1>/target``
(with its split in ``.../split.json``); it is trained here the same way when absent. The guiding attack is the
paper's linear attack (``paper_bn_linear``), fitted in setting A on the target's members vs unseen-identity
non-members of *attacker* identities; every metric is computed on the other, *evaluation* identities (see
benchmarks/README.md). Results: ``<out>/inversion_lfw_<preset>.json`` and ``.md``; image grids and reconstructions
in ``<out>/_work/inversion_<preset>/``.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, Timer, machine, write_results  # noqa: E402
from frleak.attacks import MembershipAttack, create_attack  # noqa: E402
from frleak.attacks.base import take  # noqa: E402
from frleak.data.folder import Sample  # noqa: E402
from frleak.data.splits import MembershipSplit, ModelSplit  # noqa: E402
from frleak.errors import ConfigError, DataError  # noqa: E402
from frleak.evaluation import ModelPool  # noqa: E402
from frleak.generators.base import Generator  # noqa: E402
from frleak.inversion import (  # noqa: E402
    Gallery,
    InversionConfig,
    InversionResult,
    PixelGenerator,
    evaluate_reconstructions,
    invert,
    load_evaluator,
    unit_to_uint8,
)
from frleak.inversion.pipeline import _grid, choose_targets, leaked_templates  # noqa: E402

log = logging.getLogger("inversion_lfw")
ATTACK = "paper_bn_linear"
NONMEMBER_KIND = "unseen_identity"
GENERATORS = ("dcgan32_celeba", "dcgan64_digiface")


@dataclass(frozen=True)
class InvPreset:
    """Budget of one preset. ``stage1``: the mia_lfw preset whose target is attacked. Untargeted runs make
    ``n_images`` faces from ``candidates`` latents (``2 * n_images`` optimised for ``steps``); targeted runs
    ``n_per_target`` faces for each of ``targets`` member identities from ``targeted_candidates`` latents each.
    GAN-free runs keep ``gan_free_n_images`` of ``2 * gan_free_n_images`` pixel images optimised for
    ``gan_free_steps`` (each costs about as much per step as a GAN latent). ``cohort``: plain samples for the
    Z-norm metrics."""

    stage1: str
    n_images: int
    candidates: int
    steps: int
    seeds: int
    targets: int
    n_per_target: int
    targeted_candidates: int
    gan_free_n_images: int
    gan_free_steps: int
    cohort: int = 64
    selection_transforms: int = 10
    batch_size: int = 64
    gan_bn_weight: float | None = None  # BN-statistics image prior on every GAN run (attack and control alike)


PRESETS: dict[str, InvPreset] = {
    # 80-84 s on 2 idle cores (the smoke target is a 32-px quarter-width IResNet-18)
    "smoke": InvPreset("smoke", n_images=16, candidates=128, steps=50, seeds=3, targets=8, n_per_target=2,
                       targeted_candidates=32, gan_free_n_images=16, gan_free_steps=100),
    # per seed ~22k latent-steps (untargeted 64 + GAN-free 2 x 32 + targeted 2 x 48 latents, 100 steps) on the
    # 64-px half-width calibration target: 229-263 s per seed on 2 idle cores, ~14 min in all
    "cpu": InvPreset("cpu", n_images=32, candidates=256, steps=100, seeds=3, targets=8, n_per_target=3,
                     targeted_candidates=64, gan_free_n_images=16, gan_free_steps=100),
}


@dataclass(frozen=True)
class RunSpec:
    """One inversion run per seed. ``control``: label of the run it is compared with (same generator, budget and
    seed, no membership term); ``row``: whether it is a row of ``results`` (the GAN-free control is reported inside
    the gan_free row only, so that (method, mode) stays unique)."""

    label: str
    method: str
    mode: str
    control: str | None
    role: str
    membership_weight: float | None = None
    row: bool = True


RUNS: tuple[RunSpec, ...] = (
    RunSpec("guided", "guided", "untargeted", "unguided", "attack"),
    RunSpec("unguided", "unguided", "untargeted", None, "control"),
    RunSpec("gan_free", "gan_free", "untargeted", "gan_free_control", "attack"),
    RunSpec("gan_free_control", "gan_free", "untargeted", None, "control", membership_weight=0.0, row=False),
    RunSpec("template", "template", "targeted", "unguided_targeted", "attack"),
    RunSpec("template_membership", "template_membership", "targeted", "template", "attack"),
    RunSpec("unguided_targeted", "unguided", "targeted", None, "chance_floor"),
)
SPECS = {r.label: r for r in RUNS}

# ---- inputs: target, split, attacker / evaluation identities, the guiding attack --------------------------------
def ensure_stage1_target(stage1: str, work: Path, device: str, progress: bool) -> tuple[Path, Path]:
    """The target of ``mia_lfw.py --preset stage1`` in ``work`` (its split in ``work/split.json``); trains it exactly
    as mia_lfw does (its presets, seed 0, its model card) when the folder holds no finished target."""
    target_dir, split_path = work / "target", work / "split.json"
    if (target_dir / "backbone.safetensors").is_file() and split_path.is_file():
        return target_dir, split_path
    from frleak.config import expand_path
    from frleak.data.prepare import build_split
    from frleak.targets import train_role
    from mia_lfw import PRESETS as STAGE1

    if stage1 not in STAGE1:
        raise ConfigError(f"no mia_lfw preset {stage1!r} (have {', '.join(sorted(STAGE1))})")
    p = STAGE1[stage1]
    log.warning("no stage-1 target in %s: training it as `mia_lfw.py --preset %s` would", work, stage1)
    train_cfg = replace(p.train, seed=0, device=device, amp=p.train.amp and device.startswith("cuda"))
    work.mkdir(parents=True, exist_ok=True)
    split = MembershipSplit.load(split_path) if split_path.is_file() else build_split(p.data, 0)
    split.save(split_path)
    verification = expand_path(p.data.verification) if p.data.verification else None
    train_role(split, "target", backbone=p.backbone, options=p.options, train=train_cfg, out_dir=target_dir,
               verification=verification, verification_pairs=p.data.verification_pairs, progress=progress,
               extra_card={"benchmark": f"mia_lfw/{stage1}"})
    return target_dir, split_path


def partition_identities(member_ids: list[str], unseen_ids: list[str], seed: int, attack_data: str = "disjoint"
                         ) -> dict[str, list[str]]:
    """Split the target's member identities and its unseen identities into the attacker's (to fit the attack) and
    the evaluation's (to judge reconstructions): ``n = min(#members, #unseen) // 2`` of each go to evaluation, the
    rest to the attacker, so the evaluation is balanced (chance member share 0.5) and no evaluation identity was
    seen by the attack. ``attack_data="all"``: the attacker uses every identity (evaluation still balanced, n =
    min of both)."""
    if attack_data not in ("disjoint", "all"):
        raise ConfigError(f"--attack-data must be 'disjoint' or 'all', got {attack_data!r}")
    rng = np.random.default_rng(seed)
    mem, uns = rng.permutation(sorted(member_ids)).tolist(), rng.permutation(sorted(unseen_ids)).tolist()
    n = min(len(mem), len(uns)) // (2 if attack_data == "disjoint" else 1)
    if n < 2:
        raise DataError(f"too few identities to evaluate: {len(mem)} member and {len(uns)} unseen identities")
    if attack_data == "all":
        return {"attacker_members": sorted(mem), "attacker_unseen": sorted(uns), "eval_members": sorted(mem[:n]),
                "eval_unseen": sorted(uns[:n])}
    return {"attacker_members": sorted(mem[n:]), "attacker_unseen": sorted(uns[n:]), "eval_members": sorted(mem[:n]),
            "eval_unseen": sorted(uns[:n])}


def _rows(pool: ModelPool, role: str, ids: list[str]) -> np.ndarray:
    return np.flatnonzero((pool.roles == role) & np.isin(pool.identities, ids))


def fit_guidance_attack(pool: ModelPool, part: dict[str, list[str]], seed: int) -> tuple[MembershipAttack, dict]:
    """Fit ``paper_bn_linear`` on the attacker's members vs its unseen-identity photos (classes balanced, seeded);
    returns the attack and its quality: in-sample AUC, and held-out AUC on the evaluation identities' members vs
    unseen photos (the attack never saw those people)."""
    from frleak.metrics import auc

    rng = np.random.default_rng(seed)
    mem, non = _rows(pool, "members", part["attacker_members"]), _rows(pool, NONMEMBER_KIND, part["attacker_unseen"])
    n = min(len(mem), len(non))
    if n < 5:
        raise DataError(f"too few attacker images to fit {ATTACK}: {len(mem)} members, {len(non)} non-members")
    idx = np.r_[np.sort(rng.choice(mem, n, replace=False)), np.sort(rng.choice(non, n, replace=False))]
    y = np.r_[np.ones(n), np.zeros(n)]
    attack = create_attack(ATTACK).fit(take(pool.inputs, idx), y)
    ev = np.r_[_rows(pool, "members", part["eval_members"]), _rows(pool, NONMEMBER_KIND, part["eval_unseen"])]
    y_ev = (pool.roles[ev] == "members").astype(int)
    score_ev = attack.score(take(pool.inputs, ev))
    info = {"attack": ATTACK, "setting": "A", "nonmember": NONMEMBER_KIND, "n_per_class": int(n),
            "attacker_member_identities": len(part["attacker_members"]),
            "attacker_unseen_identities": len(part["attacker_unseen"]),
            "train_auc": auc(attack.score(take(pool.inputs, idx)), y),
            "heldout_auc": auc(score_ev, y_ev),
            # the logit scale of real photos, to set the reconstructions' logits against
            "heldout_mean_logit_members": float(score_ev[y_ev == 1].mean()),
            "heldout_mean_logit_unseen": float(score_ev[y_ev == 0].mean()),
            "heldout_members": int(y_ev.sum()), "heldout_nonmembers": int(len(y_ev) - y_ev.sum()),
            "threshold": float(attack.threshold_)}
    return attack, info


# ---- one seed: every run, evaluated --------------------------------------------------------------------------
@dataclass
class Context:
    """Everything the runs of all seeds share (models, galleries, budget)."""

    target: torch.nn.Module
    generator: Generator
    attack: MembershipAttack
    evaluator: torch.nn.Module
    members: list[Sample]  # all member photos of the target (the targeted gallery's order)
    eval_members: list[str]
    galleries: dict[str, Gallery]  # member_all, member_eval, distractor_eval
    preset: InvPreset
    device: str
    progress: bool
    grid_dir: Path | None
    grid_seed: int = 0  # grids of this seed only (every seed's reconstructions go into an npz)


def inversion_config(spec: RunSpec, p: InvPreset, seed: int, device: str, progress: bool) -> InversionConfig:
    targeted = spec.mode == "targeted"
    gan_free = spec.method == "gan_free"
    n = p.n_per_target if targeted else p.gan_free_n_images if gan_free else p.n_images
    return InversionConfig(
        method=spec.method, mode=spec.mode, n_images=n,
        candidates=p.targeted_candidates if targeted else p.candidates,
        steps=p.gan_free_steps if gan_free else p.steps, membership_weight=spec.membership_weight,
        bn_weight=None if gan_free else p.gan_bn_weight,
        selection_transforms=p.selection_transforms, batch_size=p.batch_size, seed=seed, device=device,
        progress=progress)


def _cohort(gen: Generator, n: int, seed: int) -> torch.Tensor | None:
    if n <= 0:
        return None
    with torch.no_grad():  # the stream run_inversion uses for its cohort
        z = gen.sample_latent(n, generator=torch.Generator().manual_seed(seed * 1_000_003 - 3))
        return gen.synthesize(z).float().cpu()


def flat_metrics(res: InversionResult, metrics: dict[str, Any], mode: str, threshold: float) -> dict[str, float]:
    """The row numbers of one run: evaluator metrics, the attack's own verdict (``summary``) and the images'
    colour saturation (mean over pixels of the standard deviation across R, G, B, in [0, 1] units: the attack
    logit is easy to inflate with adversarial colour, docs/inversion.md)."""
    s = res.summary(threshold)
    out: dict[str, float] = {}
    if mode == "untargeted":
        u = metrics["untargeted"]
        out = {k: u[k] for k in ("member_share", "member_share_znorm", "distractor_ids_recovered", "accepted_share",
                                 "mean_nearest_member_cos", "mean_nearest_distractor_cos", "threshold") if k in u}
        out["identities_recovered"] = u["member_ids_recovered"]
        if "member_ids_recovered_znorm" in u:
            out["identities_recovered_znorm"] = u["member_ids_recovered_znorm"]
        out["distinct_nearest_share"] = len(set(u["per_image"]["nearest_identity"])) / max(1, u["n_reconstructions"])
        out["far_resolved"] = float(u["far_resolved"])
    else:
        t = metrics["targeted"]
        out = {k: t[k] for k in ("top1", "top5", "knn_dist", "knn_cos", "mean_target_cos", "targets_recovered",
                                 "chance_top1", "chance_top5")}
    for k in ("mean_membership_logit", "attack_member_rate", "mean_template_cos"):
        if k in s:
            out[k] = s[k]
    out["saturation"] = float(((res.images + 1) / 2).std(dim=1, unbiased=False).mean())
    return {k: float(v) for k, v in out.items()}


def run_seed(ctx: Context, seed: int, labels: list[str]) -> dict[str, dict[str, Any]]:
    """Every run of ``labels`` at ``seed``; returns {label: record} with the row metrics, counts for pooling,
    the config, the attack's summary, the wall time and the grid / reconstruction files."""
    p = ctx.preset
    out: dict[str, dict[str, Any]] = {}
    names: list[str] = []
    leaked: list[Sample] = []
    templates = None
    if any(SPECS[lab].mode == "targeted" for lab in labels):
        pool = [s for s in ctx.members if s.identity in set(ctx.eval_members)]
        names, leaked = choose_targets(pool, p.targets, seed)
        templates = leaked_templates(ctx.target, leaked, ctx.device)
    exclude = sorted(ctx.members.index(s) for s in leaked)
    cohorts: dict[str, torch.Tensor | None] = {}
    threshold = float(ctx.attack.threshold_)
    images: dict[str, Any] = {}  # label -> uint8 (N, 3, H, W)
    for lab in labels:
        spec = SPECS[lab]
        cfg = inversion_config(spec, p, seed, ctx.device, ctx.progress)
        t0 = time.time()
        res = invert(ctx.target, ctx.generator, cfg, attack=ctx.attack,
                     templates=templates if spec.mode == "targeted" else None)
        t_inv = time.time() - t0
        kind = "pixels" if spec.method == "gan_free" else "gan"
        if kind not in cohorts:
            cgen = ctx.generator if kind == "gan" else PixelGenerator((res.images.shape[-2], res.images.shape[-1]))
            cohorts[kind] = _cohort(cgen, p.cohort, seed)
        if spec.mode == "untargeted":
            gal = {"member": ctx.galleries["member_eval"], "distractor": ctx.galleries["distractor_eval"]}
            metrics = evaluate_reconstructions(res.images, evaluator=ctx.evaluator, member_gallery=gal["member"],
                                               distractor_gallery=gal["distractor"], mode="untargeted", seed=seed,
                                               batch_size=p.batch_size, device=ctx.device, cohort=cohorts[kind])
        else:
            gal = {"member": ctx.galleries["member_all"]}
            tnames = [names[int(k)] for k in res.target_index]
            metrics = evaluate_reconstructions(res.images, evaluator=ctx.evaluator, member_gallery=gal["member"],
                                               mode="targeted", targets=tnames, exclude=exclude, seed=seed,
                                               batch_size=p.batch_size, device=ctx.device)
        rec: dict[str, Any] = {"label": lab, "method": spec.method, "mode": spec.mode, "seed": seed,
                               "values": flat_metrics(res, metrics, spec.mode, threshold),
                               "summary": res.summary(threshold), "config": cfg.to_dict(),
                               "wall_s": round(time.time() - t0, 1), "invert_s": round(t_inv, 1)}
        if spec.mode == "untargeted":
            pi = metrics["untargeted"]["per_image"]
            rec["counts"] = {"n": len(pi["nearest_is_member"]), "member": int(sum(pi["nearest_is_member"])),
                             "member_znorm": int(sum(pi.get("nearest_is_member_znorm", []))),
                             "recovered": sorted({name for name, m, a in zip(pi["nearest_identity"],
                                                                              pi["nearest_is_member"], pi["accepted"])
                                                  if m and a})}
        else:
            rec["targets"] = names
        if ctx.grid_dir is not None and seed == ctx.grid_seed:
            path = ctx.grid_dir / f"grid_{lab}_seed{seed}.png"
            rec["grid"] = str(_grid(path, res, metrics, gal, names if spec.mode == "targeted" else None,
                                    set(exclude) if spec.mode == "targeted" else set()))
        images[lab] = unit_to_uint8(res.images).numpy()
        out[lab] = rec
        log.info("seed %d %-20s %5.1fs %s", seed, lab, rec["wall_s"],
                 {k: round(v, 3) for k, v in rec["values"].items() if k in ("member_share", "top1", "top5",
                                                                             "identities_recovered",
                                                                             "mean_membership_logit")})
    if ctx.grid_dir is not None:
        from frleak.io import atomic_write_bytes

        buf = io.BytesIO()
        np.savez_compressed(buf, **images)
        path = ctx.grid_dir / f"reconstructions_seed{seed}.npz"
        atomic_write_bytes(path, buf.getvalue())
        for rec in out.values():
            rec["reconstructions"] = str(path)
    return out


# ---- aggregation over seeds ----------------------------------------------------------------------------------
def _mean_std(v: list[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def aggregate(per_seed: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (method, mode): mean, std (over seeds, ddof 1) and per-seed values of every metric; the control
    run's means beside them (``control_values``, ``control_std``) and the paired per-seed difference (``delta``,
    ``delta_std``, ``delta_per_seed``);
    untargeted rows also pool the reconstructions of all seeds (member share, a one-sided Fisher exact test
    against the control's pooled share, identities recovered in any seed)."""
    from scipy.stats import fisher_exact

    labels = [lab for lab in per_seed[0] if SPECS[lab].row]
    rows = []
    for lab in labels:
        spec = SPECS[lab]
        recs = [s[lab] for s in per_seed]
        keys = list(recs[0]["values"])
        row: dict[str, Any] = {"method": spec.method, "mode": spec.mode, "label": lab, "role": spec.role,
                               "control": spec.control, "seeds": [r["seed"] for r in recs],
                               "n_images": recs[0]["summary"]["n_images"]}
        std, per = {}, {}
        for k in keys:
            vals = [r["values"][k] for r in recs]
            row[k], std[k] = _mean_std(vals)
            per[k] = vals
        row["std"], row["per_seed"] = std, per
        ctrl = [s[spec.control] for s in per_seed] if spec.control and spec.control in per_seed[0] else None
        if ctrl is not None:
            for name in ("control_values", "control_std", "delta", "delta_std", "delta_per_seed"):
                row[name] = {}
            for k in keys:
                if k not in ctrl[0]["values"]:
                    continue
                c = [r["values"][k] for r in ctrl]
                row["control_values"][k], row["control_std"][k] = _mean_std(c)
                row["delta_per_seed"][k] = [a - b for a, b in zip(per[k], c)]
                row["delta"][k], row["delta_std"][k] = _mean_std(row["delta_per_seed"][k])
        if spec.mode == "untargeted":
            n, m = sum(r["counts"]["n"] for r in recs), sum(r["counts"]["member"] for r in recs)
            pooled: dict[str, Any] = {"n": n, "member": m, "member_share": m / n,
                                      "member_znorm": sum(r["counts"]["member_znorm"] for r in recs),
                                      "identities_recovered_any_seed": len(set().union(*[r["counts"]["recovered"]
                                                                                        for r in recs]))}
            if ctrl is not None:
                cn, cm = sum(r["counts"]["n"] for r in ctrl), sum(r["counts"]["member"] for r in ctrl)
                pooled["control_n"], pooled["control_member"], pooled["control_member_share"] = cn, cm, cm / cn
                pooled["fisher_p_greater"] = float(fisher_exact([[m, n - m], [cm, cn - cm]],
                                                                alternative="greater")[1])
            row["pooled"] = pooled
        if spec.role == "chance_floor":
            row["note"] = "no template, no membership term: the targeted chance floor (images ignore the target)"
        row["grids"] = [r["grid"] for r in recs if "grid" in r]
        if ctrl is not None:
            row["control_grids"] = [r["grid"] for r in ctrl if "grid" in r]
        row["wall_s"] = round(sum(r["wall_s"] for r in recs), 1)
        rows.append(row)
    return rows


# ---- Markdown ------------------------------------------------------------------------------------------------
def _pm(mean: dict[str, Any], std: dict[str, Any], k: str, nd: int, seeds: int) -> str:
    if k not in mean:
        return "—"
    return f"{mean[k]:.{nd}f} ± {std.get(k, 0.0):.{nd}f}" if seeds > 1 else f"{mean[k]:.{nd}f}"


def _cell(row: dict[str, Any], k: str, nd: int = 3) -> str:
    """``mean ± std (ctrl mean ± std; Δ paired difference)``."""
    seeds = len(row["seeds"])
    main = _pm(row, row["std"], k, nd, seeds)
    if k not in row.get("control_values", {}):
        return main
    ctrl = _pm(row["control_values"], row["control_std"], k, nd, seeds)
    return f"{main} (ctrl {ctrl}; Δ {row['delta'][k]:+.{nd}f})"


def render_markdown(p: dict[str, Any]) -> str:
    t, a, e, cfg = p["target"], p["attack"], p["evaluation"], p["config"]
    u = t.get("utility") or {}
    lines = [
        f"# inversion_lfw, preset `{p['preset']}` (seeds {cfg['seeds']})", "",
        f"Target: `{t['path']}` ({(t.get('arch') or {}).get('name')} {(t.get('arch') or {}).get('kwargs')}, "
        f"{t.get('num_images')} member images of {t.get('identities')} LFW "
        f"identities, verification {u.get('verification_accuracy', float('nan')):.3f}). Generator "
        f"`{cfg['generator']}`; evaluator: {e['evaluator']} (independent of the target).",
        f"Guiding attack: `{a['attack']}`, setting A, fitted on {a['n_per_class']} member vs {a['n_per_class']} "
        f"{a['nonmember']} photos of {a['attacker_member_identities']} + {a['attacker_unseen_identities']} attacker "
        f"identities (`--attack-data {cfg['attack_data']}`): AUC {a['train_auc']:.3f} in-sample, "
        f"**{a['heldout_auc']:.3f} held out** on the evaluation identities (mean logit of their real photos: "
        f"members {a['heldout_mean_logit_members']:.2f}, unseen {a['heldout_mean_logit_unseen']:.2f}).",
        f"Evaluation: {e['member_identities']} member vs {e['distractor_identities']} unseen LFW identities "
        f"(chance member share 0.5), evaluator threshold at FAR 1e-3 {e.get('threshold', float('nan')):.3f} "
        f"(resolved: {e.get('far_resolved')}).", _budget(cfg["preset"], p["timing_s"].get("total", "?")),
        "", "Mean ± std over seeds; `ctrl` = the control (same generator, budget and seed, no membership term), "
        "Δ = paired mean difference to it.", "", "## Untargeted", "",
    ]
    und = [r for r in p["results"] if r["mode"] == "untargeted"]
    cols = [("method", "method"), ("control", "control"), ("member share", "member_share"),
            ("member share (Z-norm)", "member_share_znorm"), ("identities recovered", "identities_recovered"),
            ("identities recovered (Z-norm)", "identities_recovered_znorm"),
            ("distractor ids recovered", "distractor_ids_recovered"), ("distinct nearest", "distinct_nearest_share"),
            ("attack logit", "mean_membership_logit"), ("saturation", "saturation")]
    lines += _table(und, cols)
    pooled = [r for r in und if "pooled" in r and "fisher_p_greater" in r["pooled"]]
    if pooled:
        lines += [""] + [f"Pooled over seeds, {r['method']}: {r['pooled']['member']}/{r['pooled']['n']} member "
                         f"({r['pooled']['member_share']:.3f}) vs control {r['pooled']['control_member']}/"
                         f"{r['pooled']['control_n']} ({r['pooled']['control_member_share']:.3f}); one-sided Fisher "
                         f"p = {r['pooled']['fisher_p_greater']:.3g} (reconstructions are not independent: "
                         f"optimistic); member identities recovered in any seed: "
                         f"{r['pooled']['identities_recovered_any_seed']}." for r in pooled]
    tg = [r for r in p["results"] if r["mode"] == "targeted"]
    if tg:
        lines += ["", "## Targeted", "",
                  f"{cfg['targets']} member identities per seed (from the evaluation identities), one leaked photo "
                  f"each (its target embedding is the template, excluded from the gallery), {cfg['n_per_target']} "
                  f"reconstructions per target; top-k among the centroids of all {e['all_member_identities']} "
                  f"member identities; knn dist = L2 distance to the nearest other member photo of the target "
                  f"(lower is closer).", ""]
        lines += _table(tg, [("method", "method"), ("control", "control"), ("top-1", "top1"), ("top-5", "top5"),
                             ("knn dist", "knn_dist"), ("target cos", "mean_target_cos"),
                             ("attack logit", "mean_membership_logit")])
    lines += ["", "## Membership term vs its control", ""] + [_verdict(r) for r in p["results"] if r.get("delta")]
    return "\n".join(lines)


def _verdict(r: dict[str, Any]) -> str:
    """One line per row with a control: the paired difference of its headline metrics and in how many seeds the
    method beat its control (for knn_dist lower is better)."""
    keys = ("member_share", "member_share_znorm", "identities_recovered") if r["mode"] == "untargeted" else \
        ("top1", "top5", "knn_dist")
    parts = []
    for k in keys:
        if k in r["delta"]:
            wins = sum((d < 0) if k == "knn_dist" else (d > 0) for d in r["delta_per_seed"][k])
            parts.append(f"Δ {k} {r['delta'][k]:+.3f} ± {r['delta_std'][k]:.3f} (better in {wins}/{len(r['seeds'])} "
                         f"seeds)")
    return f"* {r['method']} ({r['mode']}) vs {r['control']}: " + "; ".join(parts) + "."


def _budget(b: dict[str, Any], total: Any) -> str:
    return (f"Budget per seed: untargeted {b['n_images']} faces from {b['candidates']} candidates "
            f"({2 * b['n_images']} optimised, {b['steps']} steps); GAN-free {b['gan_free_n_images']} of "
            f"{2 * b['gan_free_n_images']} pixel images, {b['gan_free_steps']} steps; targeted {b['targets']} targets "
            f"x {b['n_per_target']} faces from {b['targeted_candidates']} candidates each."
            + (f" BN-statistics image prior weight {b['gan_bn_weight']:g} on every GAN run (controls included)."
               if b.get("gan_bn_weight") else "") + f" Wall time {total} s.")


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> list[str]:
    head = "| " + " | ".join(c for c, _ in cols) + " |"
    out = [head, "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, k in cols:
            if k in ("method", "control"):
                v = r.get(k) or "—"
                cells.append(f"{v} ({r['role']})" if k == "method" and r["role"] == "chance_floor" else str(v))
            else:
                cells.append(_cell(r, k, 2 if k == "mean_membership_logit" else 3))
        out.append("| " + " | ".join(cells) + " |")
    return out


# ---- main ----------------------------------------------------------------------------------------------------
def build_galleries(evaluator: torch.nn.Module, members: list[Sample], unseen: list[Sample],
                    part: dict[str, list[str]], resolution: tuple[int, int], device: str, batch_size: int,
                    progress: bool) -> dict[str, Gallery]:
    """Evaluator galleries at the reconstructions' resolution: every member photo (targeted top-k), and the
    evaluation identities' member photos and unseen photos (untargeted)."""
    kw: dict[str, Any] = {"resolution": resolution, "device": device, "batch_size": batch_size, "progress": progress}
    mem_all = Gallery.from_samples(evaluator, members, **kw)
    ev_unseen = [s for s in unseen if s.identity in set(part["eval_unseen"])]
    return {"member_all": mem_all,
            "member_eval": mem_all.subset(np.flatnonzero(np.isin(mem_all.identities, part["eval_members"]))),
            "distractor_eval": Gallery.from_samples(evaluator, ev_unseen, **kw)}


def selected_labels(methods: str | None) -> list[str]:
    """Run labels for a comma-separated method subset (their controls included), in RUNS order."""
    if not methods:
        return [r.label for r in RUNS]
    want = set(methods.split(","))
    unknown = want - set(SPECS)
    if unknown:
        raise ConfigError(f"--methods: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SPECS)}")
    while more := {c for w in want if (c := SPECS[w].control) is not None} - want:
        want |= more
    return [r.label for r in RUNS if r.label in want]


def run_benchmark(target_dir: Path, split_path: Path, preset: InvPreset, *, generator: str, device: str = "cpu",
                  seed: int = 0, attack_data: str = "disjoint", methods: str | None = None,
                  grid_dir: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Everything except writing the result files: returns the JSON payload (``results`` = rows)."""
    from frleak.generators import load_generator
    from frleak.membership import build_pool
    from frleak.models.checkpoint import load_backbone, read_card

    timer = Timer()
    split = MembershipSplit.load(split_path)
    card = read_card(target_dir)
    if card.get("split_digest") not in (None, split.digest()):
        raise ConfigError(f"{split_path} is not the split {target_dir} was trained on (card split_digest "
                          f"{card.get('split_digest')}, file {split.digest()})")
    ms = split.target
    if not ms.members or not ms.unseen_identity:
        raise DataError(f"{split_path}: the target split needs members and unseen_identity photos")
    target = load_backbone(target_dir)
    part = partition_identities(ms.member_identities(), sorted({s.identity for s in ms.unseen_identity}), seed,
                                attack_data)
    sub = ModelSplit(members=ms.members, unseen_identity=ms.unseen_identity)
    pool, _ = build_pool(target, sub, None, batch_size=preset.batch_size, device=device, progress=progress)
    attack, attack_info = fit_guidance_attack(pool, part, seed)
    timer.mark("attack_fitted")
    target.to(device)  # inversion, templates and evaluation all run on ``device``
    gen = load_generator(generator).to(device)
    evaluator = load_evaluator().to(device)
    galleries = build_galleries(evaluator, ms.members, ms.unseen_identity, part, gen.output_size, device,
                                preset.batch_size, progress)
    timer.mark("galleries")
    if grid_dir is not None:
        grid_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(target, gen, attack, evaluator, list(ms.members), part["eval_members"], galleries, preset, device,
                  progress, grid_dir, grid_seed=seed)
    labels = selected_labels(methods)
    per_seed = []
    for s in range(seed, seed + preset.seeds):
        per_seed.append(run_seed(ctx, s, labels))
        timer.mark(f"seed{s}")
    rows = aggregate(per_seed)
    first_u = next((r for r in per_seed[0].values() if r["mode"] == "untargeted"), None)
    evaluation = {"evaluator": "shared mobilefacenet_casia_arcface.ckpt (CASIA-WebFace)",
                  "member_identities": len(part["eval_members"]), "distractor_identities": len(part["eval_unseen"]),
                  "member_photos": len(galleries["member_eval"]),
                  "distractor_photos": len(galleries["distractor_eval"]),
                  "all_member_identities": len(galleries["member_all"].names()),
                  "gallery_resolution": list(gen.output_size), "far": 1e-3}
    if first_u is not None:
        evaluation["threshold"] = first_u["values"].get("threshold")
        evaluation["far_resolved"] = bool(first_u["values"].get("far_resolved"))
    timer.mark("total")
    return {
        "benchmark": "inversion_lfw",
        "config": {"preset": asdict(preset), "generator": generator, "attack_data": attack_data, "device": device,
                   "seeds": list(range(seed, seed + preset.seeds)), "targets": preset.targets,
                   "n_per_target": preset.n_per_target, "runs": labels},
        "target": {"path": str(target_dir), "split": str(split_path), "split_digest": split.digest(),
                   "arch": card.get("arch"), **{k: card.get(k) for k in ("num_images", "identities", "epochs_run",
                                                                          "utility", "benchmark")}},
        "attack": attack_info, "identities": part, "evaluation": evaluation, "results": rows,
        "runs": {str(seed + i): {lab: {k: v for k, v in rec.items() if k != "counts"} for lab, rec in s.items()}
                 for i, s in enumerate(per_seed)},
        "timing_s": timer.marks,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and Markdown go")
    p.add_argument("--work", type=Path, help="the stage-1 work folder holding target/ and split.json (default "
                   "benchmarks/results/_work/<preset>, where mia_lfw.py puts them; --out does not move it)")
    p.add_argument("--target", type=Path, help="attack this model folder instead of the stage-1 target")
    p.add_argument("--split", type=Path, help="its split.json (required with --target)")
    p.add_argument("--generator", choices=GENERATORS, default="dcgan32_celeba")
    p.add_argument("--attack-data", choices=("disjoint", "all"), default="disjoint",
                   help="fit the attack on identities disjoint from the evaluation's (default) or on all")
    p.add_argument("--methods", help=f"comma-separated subset of runs (controls added): {', '.join(SPECS)}")
    p.add_argument("--seeds", type=int, help="override the preset's number of seeds")
    p.add_argument("--seed", type=int, default=0, help="first seed (also seeds the identity partition)")
    p.add_argument("--steps", type=int, help="override the preset's optimisation steps (GAN and GAN-free)")
    p.add_argument("--bn-weight", type=float, help="weight of the BN-statistics image prior on every GAN run, the "
                   "membership-guided runs and their controls alike (default 0: no prior); results then go to "
                   "inversion_lfw_<preset>_bn<weight>.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    preset = PRESETS[args.preset]
    if args.seeds:
        preset = replace(preset, seeds=args.seeds)
    if args.steps is not None:
        preset = replace(preset, steps=args.steps, gan_free_steps=args.steps)
    if args.bn_weight is not None:
        if args.bn_weight < 0:
            raise SystemExit("error: --bn-weight must be >= 0")
        preset = replace(preset, gan_bn_weight=args.bn_weight)
    if (args.target is None) != (args.split is None):
        raise SystemExit("error: --target and --split go together")
    if args.target is not None:
        target_dir, split_path = args.target, args.split
    else:
        target_dir, split_path = ensure_stage1_target(preset.stage1, args.work or RESULTS / "_work" / preset.stage1,
                                                      args.device, not args.quiet)
    t0 = time.time()
    payload = run_benchmark(target_dir, split_path, preset, generator=args.generator, device=args.device,
                            seed=args.seed, attack_data=args.attack_data, methods=args.methods,
                            grid_dir=args.out / "_work" / f"inversion_{args.preset}", progress=not args.quiet)
    payload = {"benchmark": "inversion_lfw", "preset": args.preset, **payload, "machine": machine()}
    payload["timing_s"]["total"] = round(time.time() - t0, 1)
    md = render_markdown(payload)
    name = f"inversion_lfw_{args.preset}" + (f"_bn{args.bn_weight:g}" if args.bn_weight is not None else "")
    j, m = write_results(args.out, name, payload, md)
    print(md)
    print(f"\nwrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
