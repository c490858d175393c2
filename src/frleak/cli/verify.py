"""``frleak verify``: face verification accuracy (utility) of a backbone.

  frleak verify --backbone mobilefacenet --weights W.ckpt --data lfw-112 --pairs lfw-meta/pairs.txt --json
  frleak verify --weights runs/target/model --data celeba-112 --n-pairs 3000      (seeded random pairs)
"""

from __future__ import annotations

import argparse

from frleak.cli.common import add_backbone_args, parse_kv, print_json, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("verify", help="verification accuracy: LFW pairs protocol or random pairs of a folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(p)
    p.add_argument("--data", required=True, help="aligned identity folder (IDENTITY/IMAGE.jpg)")
    p.add_argument("--pairs", help="LFW pairs.txt; without it, seeded random pairs of --data are used")
    p.add_argument("--n-pairs", type=int, default=6000, help="random pairs (half same identity; default 6000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flip", choices=["concat", "sum", "none"], default="concat",
                   help="test-time flip: concatenate (default), sum, or no mirrored embedding")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object (accuracy, accuracy_std, ...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from frleak.errors import ConfigError
    from frleak.models.checkpoint import load_backbone
    from frleak.verify import verify_folder, verify_lfw

    setup_logging(not args.json)
    if not args.weights:
        raise ConfigError("--weights is required (a frleak model folder or a checkpoint file)")
    model = load_backbone(args.weights, args.backbone, trust=args.trust_checkpoint,
                          **parse_kv(args.backbone_opt, "--backbone-opt")).to(args.device)
    common = {"batch_size": args.batch_size, "flip": args.flip, "device": args.device, "progress": not args.json}
    if args.pairs:
        result = verify_lfw(model, args.data, args.pairs, **common)
    else:
        result = verify_folder(model, args.data, n_pairs=args.n_pairs, seed=args.seed, **common)
    result.pop("thresholds", None)
    if args.json:
        print_json(result)
    else:
        print(f"accuracy {result['accuracy']:.4f} +- {result['accuracy_std']:.4f} ({result['protocol']}, "
              f"{result['n_pairs']} pairs, {result['skipped_pairs']} skipped); TAR@FAR=1e-3 "
              f"{result['tar_at_far_1e-3']:.4f}")
    return 0
