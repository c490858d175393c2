"""``frleak train``: train a target (or the attacker's shadow) face recognition model on its membership split.

  frleak train --config configs/train_lfw_cpu.yaml --out runs/lfw/target
  frleak train --config configs/train_lfw_cpu.yaml --out runs/lfw/shadow --role shadow \
      --split runs/lfw/target/split.json
  frleak train ... --set train.epochs=3 --set model.backbone=iresnet34

Writes OUT/split.json (unless --split is given), OUT/train_state.pt every epoch (re-run the same command to resume),
and at the end OUT/backbone.safetensors + OUT/model_card.json (architecture, split hash, recipe, seed, utility).
The margin head is never part of the released model.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from frleak.cli.common import add_config_args

    p = subparsers.add_parser("train", help="train a target or shadow FR model (resumable)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--out", required=True, help="output folder (model, card, checkpoints)")
    p.add_argument("--role", choices=["target", "shadow"], default="target")
    p.add_argument("--split", help="existing split.json (default: build it from the config's data section)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT has a checkpoint")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow pickled objects in model.weights")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from frleak.cli.common import print_json, setup_logging
    from frleak.config import TrainExperiment, dump_yaml, load_config
    from frleak.data.prepare import build_split
    from frleak.data.splits import MembershipSplit
    from frleak.errors import ConfigError
    from frleak.io import atomic_write_text
    from frleak.targets import train_role

    setup_logging()
    cfg = load_config(TrainExperiment, args.config, args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.resolved.yaml", dump_yaml(cfg))
    if args.split:
        split = MembershipSplit.load(args.split)
    else:
        split = build_split(cfg.data, cfg.seed)
        split.save(out / "split.json")
    if args.role == "shadow" and split.shadow is None:
        raise ConfigError("the split has no shadow part: set data.shadow in the config")
    summary = split.models()[args.role].summary()
    print(f"{args.role}: {summary['members']['images']} member images of {summary['members']['identities']} "
          f"identities; split {split.digest()}")
    _, result = train_role(split, args.role, backbone=cfg.model.backbone, options=cfg.model.options, train=cfg.train,
                           out_dir=out, weights=cfg.model.weights, trust=cfg.model.trust_checkpoint or
                           args.trust_checkpoint, resume=not args.no_resume,
                           verification=_expand(cfg.data.verification), verification_pairs=cfg.data.verification_pairs)
    if args.json:
        print_json(result)
    else:
        last = result["history"][-1] if result["history"] else {}
        print(f"trained {result['epochs_run']} epoch(s) in {result['train_seconds']:.0f}s; final loss "
              f"{last.get('loss', float('nan')):.3f}, train accuracy {last.get('train_acc', float('nan')):.3f}")
        if "utility" in result:
            u = result["utility"]
            print(f"verification accuracy {u['verification_accuracy']:.4f} +- {u['verification_accuracy_std']:.4f} "
                  f"on {u['verification_set']}")
        print(f"model: {out / 'backbone.safetensors'} + {out / 'model_card.json'}")
    return 0


def _expand(path: str | None) -> str | None:
    from frleak.config import expand_path

    return expand_path(path) if path else None
