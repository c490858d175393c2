"""``frleak defend``: every defense on one membership split and seed, attacked in settings A and B (naive and adaptive
attacker), with the utility of each released model (issue 5; docs/defenses.md).

  frleak defend --config defend.yaml --run runs/defend
  frleak defend --config ... --run runs/defend --defenses none,bn_reestimate,bn_noise --set study.n_boot=200
  frleak defend --config ... --run runs/defend --split runs/lfw/split.json \
      --target runs/lfw/target --shadow runs/lfw/shadow

The YAML has the sections of ``frleak train`` (seed, data, model, train) plus ``study``
(:class:`frleak.defense_eval.DefenseEvalConfig`: defenses, defense_params, attacks, settings, kinds, adaptive,
adaptive_training, public images, n_boot, inversion, ...). RUN keeps the split, every trained or post-processed
model and each defense's result rows: re-run the same command to resume or to add defenses. Results:
RUN/defenses.json (top-level ``results``: one row per defense x attack x setting x non-member kind x attacker;
``defenses``: per defense card, epsilon, utility, times) and RUN/defenses.md (the tables printed).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from frleak.config import DataConfig, ModelConfig
from frleak.defense_eval import DefenseEvalConfig
from frleak.train import TrainConfig


@dataclass(frozen=True)
class DefendExperiment:
    """``frleak defend``: a split (``seed`` draws it), a backbone, a recipe, and what the study runs."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    study: DefenseEvalConfig = field(default_factory=DefenseEvalConfig)


def register(subparsers: argparse._SubParsersAction) -> None:
    from frleak.cli.common import add_config_args

    p = subparsers.add_parser("defend", help="train/release every defense and measure privacy and utility",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--run", required=True, help="work and output folder (models, split, results; resumable)")
    p.add_argument("--defenses", help="comma-separated defenses (overrides study.defenses)")
    p.add_argument("--split", help="existing split.json (default: build it from the config's data section)")
    p.add_argument("--target", help="undefended target folder trained on this split and recipe (checked; not written)")
    p.add_argument("--shadow", help="undefended shadow folder (with --target)")
    p.add_argument("--device", help="cpu or cuda (overrides train.device and study.device)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from frleak.cli.common import print_json, setup_logging
    from frleak.config import dump_yaml, expand_path, load_config, to_dict
    from frleak.data.prepare import build_split
    from frleak.data.splits import MembershipSplit
    from frleak.defense_eval import render_markdown, run_defense_study
    from frleak.errors import ConfigError
    from frleak.io import atomic_write_json, atomic_write_text

    setup_logging(not args.quiet)
    overrides = list(args.overrides)
    if args.defenses:
        overrides.append("study.defenses=" + json.dumps([d.strip() for d in args.defenses.split(",") if d.strip()]))
    if args.device:
        overrides += [f"train.device={args.device}", f"study.device={args.device}"]
    cfg = load_config(DefendExperiment, args.config, overrides)
    if cfg.model.weights:
        raise ConfigError("model.weights: frleak defend trains every defended model from scratch (fine-tuning "
                          "from weights is not supported here)")
    if args.shadow and not args.target:
        raise ConfigError("--shadow needs --target (the shadow copies that target's recipe)")
    out = Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.resolved.yaml", dump_yaml(cfg))
    split = MembershipSplit.load(args.split) if args.split else build_split(cfg.data, cfg.seed)
    res = run_defense_study(split, out, backbone=cfg.model.backbone, options=cfg.model.options, train=cfg.train,
                            config=cfg.study, verification=expand_path(cfg.data.verification)
                            if cfg.data.verification else None, verification_pairs=cfg.data.verification_pairs,
                            target_dir=args.target, shadow_dir=args.shadow, progress=not args.quiet)
    payload = {"split": {"digest": split.digest(), **{m: s.summary() for m, s in split.models().items()}},
               "config": to_dict(cfg), **res}
    atomic_write_json(out / "defenses.json", payload)
    md = render_markdown(res, cfg.study, f"frleak defend: {out}")
    atomic_write_text(out / "defenses.md", md + "\n")
    if args.json:
        print_json(payload)
    else:
        print(md)
        print(f"\nwrote {out / 'defenses.json'} and {out / 'defenses.md'}")
    return 0
