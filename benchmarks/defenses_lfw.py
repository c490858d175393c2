"""Defense benchmark on real faces (issue 5): every defense on the same LFW split and seed, attacked by the paper's
attack, the strongest attacks and the non-BN baselines in settings A and B (naive and adaptive attacker), with the
released model's utility; JSON + Markdown.

  python benchmarks/defenses_lfw.py --preset smoke       # <= 5 min on 2 CPU cores: 5 fast defenses, a small subset
  python benchmarks/defenses_lfw.py --preset cpu         # the calibration target of mia_lfw.py's cpu preset, all
                                                         # 10 defenses: hours on 2 CPU cores (resumable), or
  python benchmarks/defenses_lfw.py --preset cpu --device cuda
  python benchmarks/defenses_lfw.py --preset cpu --defenses none,bn_reestimate,bn_noise   # a subset
  python benchmarks/defenses_lfw.py --preset cpu --reuse-target benchmarks/results/_work/cpu/target \\
      --reuse-shadow benchmarks/results/_work/cpu/shadow      # the undefended models of mia_lfw.py --preset cpu

Trained models, the split and per-defense results are kept in --work (default <out>/_work/defenses_<preset>): a
re-run skips every defense whose model and results are there, and resumes an interrupted training. Results:
<out>/defenses_lfw_<preset>.json and .md (keys in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, Timer, machine, write_results  # noqa: E402
from frleak.config import expand_path  # noqa: E402
from frleak.data.prepare import build_split  # noqa: E402
from frleak.data.splits import MembershipSplit  # noqa: E402
from frleak.defense_eval import ALL_DEFENSES, DefenseEvalConfig, render_markdown, run_defense_study  # noqa: E402
from frleak.errors import ConfigError  # noqa: E402
from frleak.train import TrainConfig  # noqa: E402
from mia_lfw import PRESETS as MIA_PRESETS  # noqa: E402
from mia_lfw import Preset  # noqa: E402


@dataclass(frozen=True)
class DefensePreset:
    model: Preset  # backbone, recipe and data: mia_lfw.py's preset of the same name (same split, same target)
    study: DefenseEvalConfig


PRESETS: dict[str, DefensePreset] = {
    # mia_lfw's smoke subset (40 LFW identities x 12 images, quarter-width IResNet-18 at 32x32, 8 epochs); the
    # defenses that cost at most one more training of this small target (and one of its adaptive shadow)
    "smoke": DefensePreset(MIA_PRESETS["smoke"], DefenseEvalConfig(
        defenses=("none", "bn_reestimate", "bn_noise", "groupnorm", "label_smoothing"), n_boot=200,
        public_images=300, attacker_public_images=300, adaptive_training=True)),
    # the calibration target (half-width IResNet-18 at 64x64, 15 epochs, 158 LFW identities), every defense; the
    # adaptive attacker also retrains its shadow with each training-stage defense
    "cpu": DefensePreset(MIA_PRESETS["cpu"], DefenseEvalConfig(defenses=ALL_DEFENSES, n_boot=1000,
                                                               adaptive_training=True, attacker_public_images=350)),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and Markdown go")
    p.add_argument("--work", type=Path,
                   help="models, split, per-defense results (default <out>/_work/defenses_<preset>)")
    p.add_argument("--defenses",
                   help=f"comma-separated subset (default: the preset's); known: {', '.join(ALL_DEFENSES)}")
    p.add_argument("--attacks", help="comma-separated attacks (default: the preset's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the preset's training epochs")
    p.add_argument("--split", type=Path, help="use this split.json instead of building one")
    p.add_argument("--reuse-target", type=Path, help="undefended target folder trained on the same split and recipe "
                   "(e.g. benchmarks/results/_work/cpu/target of mia_lfw.py); checked against split and card")
    p.add_argument("--reuse-shadow", type=Path, help="undefended shadow folder, likewise")
    adapt = p.add_mutually_exclusive_group()
    adapt.add_argument("--adaptive-training", dest="adaptive_training", action="store_true", default=None,
                       help="retrain the adaptive attacker's shadow with every training-stage defense")
    adapt.add_argument("--no-adaptive-training", dest="adaptive_training", action="store_false")
    p.add_argument("--inversion", action="store_true",
                   help="stage 2 per BN defense: guided vs unguided untargeted inversion (minutes per defense)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch and scikit-learn (default 1: on a shared 2-core machine two OpenMP "
                        "threads ran 10-100x slower than one)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="only merge result files of runs over disjoint --defenses subsets (same preset, split and "
                        "undefended models, e.g. runs split across GPU calls) into <out>/defenses_lfw_<preset>.*")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, args.threads))
    with threadpool_limits(limits=max(1, args.threads)):
        return run(args)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    preset = PRESETS[args.preset]
    mp = preset.model
    train = replace(mp.train, seed=args.seed, device=args.device, amp=mp.train.amp and args.device.startswith("cuda"))
    if args.epochs:
        train = replace(train, epochs=args.epochs)
    study_cfg = replace(preset.study, device=args.device, batch_size=mp.batch_size)
    if args.defenses:
        study_cfg = replace(study_cfg, defenses=tuple(d.strip() for d in args.defenses.split(",") if d.strip()))
    if args.attacks:
        study_cfg = replace(study_cfg, attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()))
    if args.inversion:
        study_cfg = replace(study_cfg, inversion=True)
    if args.adaptive_training is not None:
        study_cfg = replace(study_cfg, adaptive_training=args.adaptive_training)
    work = args.work or args.out / "_work" / f"defenses_{args.preset}"
    split_file = args.split
    if split_file is None and args.reuse_target is not None and (args.reuse_target.parent / "split.json").is_file():
        split_file = args.reuse_target.parent / "split.json"  # mia_lfw.py keeps it beside target/
    split = MembershipSplit.load(split_file) if split_file else build_split(mp.data, args.seed)
    if args.reuse_target is None and args.reuse_shadow is not None:
        raise ConfigError("--reuse-shadow needs --reuse-target (the shadow copies that target's recipe)")
    timer = Timer()
    verification = expand_path(mp.data.verification) if mp.data.verification else None
    res = run_defense_study(split, work, backbone=mp.backbone, options=mp.options, train=train, config=study_cfg,
                            verification=verification, verification_pairs=mp.data.verification_pairs,
                            target_dir=args.reuse_target, shadow_dir=args.reuse_shadow, progress=not args.quiet,
                            extra_card={"benchmark": f"defenses_lfw/{args.preset}"})
    timer.mark("done")
    payload = {
        "benchmark": "defenses_lfw", "preset": args.preset, "seed": args.seed,
        "config": {"backbone": mp.backbone, "options": mp.options, "train": train.to_dict(),
                   "data": asdict(mp.data), "study": asdict(study_cfg)},
        "split": {"digest": split.digest(), **{m: s.summary() for m, s in split.models().items()}},
        "target": res["target"], "shadow": res["shadow"],
        "results": res["results"], "defenses": res["defenses"],
        "timing_s": {**timer.marks, **res["timing"]}, "machine": machine(),
    }
    md = render(payload, study_cfg)
    j, m = write_results(args.out, f"defenses_lfw_{args.preset}", payload, md)
    print(md)
    print(f"\nwrote {j} and {m}")
    return 0


def render(payload: dict[str, Any], study_cfg: DefenseEvalConfig) -> str:
    mp = PRESETS[payload["preset"]].model
    train = TrainConfig.from_dict(payload["config"]["train"])
    timing = payload["timing_s"]
    t = payload["split"]["target"]
    intro = [f"Target: {mp.backbone} {mp.options}, {t['members']['images']} member images of "
             f"{t['members']['identities']} LFW identities, {train.epochs} epochs, seed {payload['seed']}; split "
             f"{payload['split']['digest']}; device {train.device} ({payload['machine'].get('cuda') or 'CPU'}). "
             f"Utility: verification accuracy ± std over 10 folds on {mp.data.verification_pairs} "
             f"seeded random pairs of identity-disjoint people ({mp.data.verification}). Release defenses use "
             f"{study_cfg.public_images} public images of LFW people outside the split; the adaptive attacker "
             f"re-estimates/noises its shadow with {study_cfg.attacker_public_images} CelebA images outside the split. "
             f"Time: {timing['total_s']:.0f} s in all (undefended target and shadow "
             f"{timing['undefended_models_s']:.0f} s; per defense, models + attacks: "
             + ", ".join(f"{d} {timing[f'{d}_s']:.0f} s" for d in study_cfg.defenses)
             + "; a defense whose results were kept from an earlier run takes ~0 s).", ""]
    return render_markdown(payload, study_cfg, f"defenses_lfw, preset `{payload['preset']}`", intro)


def merge(files: list[Path], out: Path) -> int:
    """One result file from runs over disjoint defense subsets (their undefended models must be the same)."""
    parts = [json.loads(f.read_text()) for f in files]
    base = parts[0]
    for p in parts[1:]:
        for key in ("preset", "seed", "split"):
            if p[key] != base[key]:
                raise ConfigError(f"cannot merge: {key} differs between the result files")
        if p["target"] != base["target"] or p["shadow"] != base["shadow"]:
            raise ConfigError("cannot merge: the undefended target or shadow differ")
    merged = dict(base)
    merged["results"] = [r for p in parts for r in p["results"]]
    merged["defenses"] = {k: v for p in parts for k, v in p["defenses"].items()}
    timing: dict[str, float] = {}
    for p in parts:
        for k, v in p["timing_s"].items():
            timing[k] = round(timing.get(k, 0.0) + v, 1) if k in ("total_s", "done") else v
    merged["timing_s"] = timing
    merged["merged_from"] = [str(f) for f in files]
    defenses = tuple(merged["defenses"])
    study_cfg = replace(DefenseEvalConfig(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in base["config"]["study"].items()}), defenses=defenses)
    merged["config"]["study"] = asdict(study_cfg)
    md = render(merged, study_cfg)
    j, m = write_results(out, f"defenses_lfw_{base['preset']}", merged, md)
    print(md)
    print(f"\nwrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
