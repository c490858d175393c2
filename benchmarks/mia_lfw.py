"""Stage-1 benchmark on real faces: train a target on LFW and a shadow on CelebA, run every membership attack in
both threat settings against every non-member kind, and write JSON + a Markdown table.

  python benchmarks/mia_lfw.py --preset smoke          # <= 5 min on 2 CPU cores, a small real subset
  python benchmarks/mia_lfw.py --preset cpu            # <= 60 min on 2 CPU cores (the calibration setup)
  python benchmarks/mia_lfw.py --preset gpu --device cuda   # IResNet-50 at 112x112, closer to the paper

Trained models are kept in --work (default benchmarks/results/_work/<preset>) and reused: a re-run resumes
training and recomputes the attacks. Results: <out>/mia_lfw_<preset>.json and .md (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, Timer, machine, write_results  # noqa: E402
from frleak.config import DataConfig, PoolConfig  # noqa: E402
from frleak.data.prepare import build_split  # noqa: E402
from frleak.data.splits import MembershipSplit  # noqa: E402
from frleak.membership import MembershipConfig, run_membership  # noqa: E402
from frleak.models.checkpoint import load_backbone, read_card  # noqa: E402
from frleak.tables import MIA_CI, MIA_COLUMNS, markdown_table  # noqa: E402
from frleak.targets import recipe_mismatch, shadow_recipe_from_card, train_role  # noqa: E402
from frleak.train import TrainConfig  # noqa: E402

LFW, CELEBA = "${shared}/data/lfw-112", "${shared}/data/celeba-112"


@dataclass(frozen=True)
class Preset:
    backbone: str
    options: dict[str, Any]
    train: TrainConfig
    data: DataConfig
    n_boot: int = 1000
    batch_size: int = 128


PRESETS: dict[str, Preset] = {
    # a small real subset: 40 LFW identities x 12 images, quarter-width IResNet-18 at 32x32
    "smoke": Preset(
        "iresnet18", {"width": 0.25, "input_size": 32},
        TrainConfig(epochs=8, batch_size=32, lr=0.1),
        DataConfig(target=PoolConfig(LFW, min_images=12, identities=40, max_per_identity=12),
                   unseen=PoolConfig(LFW, 5, 9, 60), other=PoolConfig(CELEBA, 2, None, 12),
                   shadow=PoolConfig(CELEBA, 12, None, 40, max_per_identity=12),
                   shadow_unseen=PoolConfig(LFW, 3, 4, 60), shadow_other=PoolConfig(LFW, 2, 2, 120),
                   verification=CELEBA, verification_pairs=600),
        n_boot=200),
    # the calibration setup: half-width IResNet-18 at 64x64, 15 epochs, ArcFace, 2,121 member images of 158 people
    "cpu": Preset("iresnet18", {"width": 0.5, "input_size": 64}, TrainConfig(epochs=15, batch_size=64, lr=0.1),
                  DataConfig(verification_pairs=3000)),
    # closer to the paper: IResNet-50 at 112x112 (79 BN layers), ArcFace s=64 m=0.5, same data
    "gpu": Preset("iresnet50", {"input_size": 112},
                  TrainConfig(epochs=20, batch_size=128, lr=0.1, head_kwargs={"s": 64.0, "m": 0.5}, amp=True,
                              warmup_epochs=2.0),
                  DataConfig(verification_pairs=3000), batch_size=256),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and Markdown go")
    p.add_argument("--work", type=Path, help="trained models and split (default <out>/_work/<preset>)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the preset's training epochs")
    p.add_argument("--split", type=Path, help="use this split.json instead of building one")
    p.add_argument("--attacks", help="comma-separated subset of attacks (default: all)")
    p.add_argument("--attack-threads", type=int, default=1,
                   help="OpenMP threads of the attack models (default 1: on a busy 2-core machine 2 are many times "
                        "slower; results do not depend on it)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    preset = PRESETS[args.preset]
    train_cfg = replace(preset.train, seed=args.seed, device=args.device,
                        amp=preset.train.amp and args.device.startswith("cuda"))
    if args.epochs:
        train_cfg = replace(train_cfg, epochs=args.epochs)
    work = args.work or args.out / "_work" / args.preset
    work.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    from frleak.config import expand_path

    if args.split:
        split = MembershipSplit.load(args.split)
    else:
        split = build_split(preset.data, args.seed)
    split.save(work / "split.json")
    verification = expand_path(preset.data.verification) if preset.data.verification else None
    progress = not args.quiet
    target, _ = train_role(split, "target", backbone=preset.backbone, options=preset.options, train=train_cfg,
                           out_dir=work / "target", verification=verification,
                           verification_pairs=preset.data.verification_pairs, progress=progress,
                           extra_card={"benchmark": f"mia_lfw/{args.preset}"})
    timer.mark("target_trained")
    # the attacker copies the target's recorded recipe (setting B), with a seed of its own
    t_card = read_card(work / "target")
    s_backbone, s_options, s_train = shadow_recipe_from_card(t_card)
    lfw_verify = expand_path(LFW)
    shadow, _ = train_role(split, "shadow", backbone=s_backbone, options=s_options, train=s_train,
                           out_dir=work / "shadow", verification=lfw_verify,
                           verification_pairs=preset.data.verification_pairs, progress=progress,
                           extra_card={"benchmark": f"mia_lfw/{args.preset}"})
    timer.mark("shadow_trained")
    s_card = read_card(work / "shadow")
    mismatch = recipe_mismatch(t_card, s_card)
    target, shadow = load_backbone(work / "target"), load_backbone(work / "shadow")  # exactly what was released
    attacks = tuple(args.attacks.split(",")) if args.attacks else MembershipConfig().attacks
    cfg = MembershipConfig(attacks=attacks, n_boot=preset.n_boot, device=args.device, seed=args.seed,
                           batch_size=preset.batch_size)
    res = run_membership(target, split, cfg, shadow=shadow, out_dir=work / "plots", progress=progress,
                         threads=args.attack_threads)
    timer.mark("attacks_done")
    payload = {
        "benchmark": "mia_lfw", "preset": args.preset, "seed": args.seed,
        "config": {"backbone": preset.backbone, "options": preset.options, "train": train_cfg.to_dict(),
                   "data": asdict(preset.data), "membership": asdict(cfg)},
        "split": {"digest": split.digest(), **{m: s.summary() for m, s in split.models().items()}},
        "target": {k: t_card.get(k) for k in ("utility", "final_loss", "epochs_run", "num_images", "identities")},
        "shadow": {k: s_card.get(k) for k in ("utility", "final_loss", "epochs_run", "num_images", "identities")},
        "shadow_recipe_mismatch": mismatch,
        "results": res["results"], "identity_level": res["identity_level"], "layer_auc": res["layer_auc"],
        "layer_names": res["layer_names"], "plots": res.get("plots", {}),
        "timing_s": {**timer.marks, **res["timing"]}, "machine": machine(),
    }
    md = render_markdown(payload)
    j, m = write_results(args.out, f"mia_lfw_{args.preset}", payload, md)
    print(md)
    print(f"\nwrote {j} and {m}")
    return 0


def render_markdown(p: dict[str, Any]) -> str:
    rows = [r for r in p["results"] if "auc" in r]
    na = [r for r in p["results"] if "auc" not in r]
    t_u, s_u = (p["target"].get("utility") or {}), (p["shadow"].get("utility") or {})
    lines = [
        f"# mia_lfw, preset `{p['preset']}` (seed {p['seed']})", "",
        f"Target: {p['config']['backbone']} {p['config']['options']}, {p['target'].get('num_images')} member images "
        f"of {p['target'].get('identities')} LFW identities, {p['target'].get('epochs_run')} epochs, final loss "
        f"{p['target'].get('final_loss') or float('nan'):.3f}; verification accuracy on identity-disjoint pairs "
        f"{t_u.get('verification_accuracy', float('nan')):.4f} ({t_u.get('verification_set', '?')}).",
        f"Shadow (setting B, recipe copied from the target's card): {p['shadow'].get('num_images')} member images "
        f"of {p['shadow'].get('identities')} CelebA identities; verification "
        f"{s_u.get('verification_accuracy', float('nan')):.4f}. Recipe mismatch: "
        f"{'; '.join(p['shadow_recipe_mismatch']) or 'none'}.",
        "",
        "Members are the positive class; balanced evaluation sets (chance = 0.5); setting A scores are out-of-fold "
        f"(5-fold); 95 % bootstrap intervals in brackets. Time: {p['timing_s']}.", "",
        markdown_table(rows, MIA_COLUMNS, MIA_CI),
    ]
    if na:
        lines += ["", "Not applicable: " + "; ".join(f"{r['attack']} ({r['setting']}, {r['nonmember']}): "
                                                      f"{r['status'].removeprefix('not applicable: ')}" for r in na)]
    if p["identity_level"]:
        lines += ["", "## Identity level (k photos never trained on, member people vs unseen people)", "",
                  markdown_table(p["identity_level"], [("setting", "setting"), ("attack", "attack"), ("k", "k"),
                                                       ("member ids", "n_member_identities"),
                                                       ("non-member ids", "n_nonmember_identities"), ("AUC", "auc"),
                                                       ("TPR@10%FPR", "tpr_at_10pct_fpr"),
                                                       ("TPR@1%FPR", "tpr_at_1pct_fpr")], ("auc",))]
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sys.exit(main())
