"""``frleak mia``: stage 1, membership inference from BatchNorm statistics, on a trained target (and shadow).

  frleak mia --target runs/lfw/target --shadow runs/lfw/shadow --split runs/lfw/target/split.json --out runs/lfw/mia
  frleak mia --target T --split S --settings A --attacks paper_bn_linear,frleak_strong --json

Every attack in setting A (cross-fitted on the target) and, with --shadow, setting B (fitted on the shadow); against
the split's non-member kinds; identity level; plots (log ROC, per-layer distances) under --out.
--save-attacks DIR also fits each attack on all of the target's data (setting A) and saves it (skops), e.g. for
``frleak invert --attack DIR/paper_bn_linear_unseen_identity.skops``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("mia", help="membership inference (stage 1) on a target backbone", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="target model folder (or checkpoint with --backbone)")
    p.add_argument("--backbone", help="architecture of a foreign --target checkpoint")
    p.add_argument("--shadow", help="shadow model folder (setting B; also the reference of calibrated attacks)")
    p.add_argument("--split", required=True, help="membership split.json (written by frleak train/audit)")
    p.add_argument("--attacks", help="comma-separated attacks (default: all of the report; frleak list)")
    p.add_argument("--settings", default="A,B", help="A, B or A,B (default)")
    p.add_argument("--kinds", default="same_identity,unseen_identity,other_dataset")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write results.json, results.md and plots here")
    p.add_argument("--save-attacks", help="fit every attack on all target data and save it here (.skops)")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from frleak.cli.common import print_json, setup_logging
    from frleak.data.splits import MembershipSplit
    from frleak.io import atomic_write_json, atomic_write_text
    from frleak.membership import DEFAULT_ATTACKS, MembershipConfig, build_pool, fit_full, run_membership
    from frleak.models.checkpoint import load_backbone
    from frleak.tables import MIA_CI, MIA_COLUMNS, markdown_table

    setup_logging(not args.json)
    target = load_backbone(args.target, args.backbone, trust=args.trust_checkpoint)
    shadow = load_backbone(args.shadow, trust=args.trust_checkpoint) if args.shadow else None
    split = MembershipSplit.load(args.split)
    settings = tuple(s.strip() for s in args.settings.split(",") if s.strip())
    cfg = MembershipConfig(attacks=tuple(args.attacks.split(",")) if args.attacks else DEFAULT_ATTACKS,
                           settings=settings, kinds=tuple(args.kinds.split(",")), n_boot=args.n_boot,
                           seed=args.seed, device=args.device)
    out = Path(args.out) if args.out else None
    res = run_membership(target, split, cfg, shadow=shadow if "B" in settings or shadow else None, out_dir=out,
                         progress=not args.json)
    table = markdown_table([r for r in res["results"] if "auc" in r], MIA_COLUMNS, MIA_CI)
    if out is not None:
        atomic_write_json(out / "results.json", res)
        atomic_write_text(out / "results.md", table + "\n")
    if args.save_attacks:
        pool, _ = build_pool(target, split.target, shadow, device=args.device, progress=not args.json)
        for kind in cfg.kinds:
            for name in cfg.attacks:
                try:
                    fit_full(pool, kind, name, seed=args.seed).save(Path(args.save_attacks) / f"{name}_{kind}")
                except Exception as exc:  # noqa: BLE001 - an attack that needs what this pool lacks is skipped
                    print(f"not saved: {name} vs {kind}: {exc}")
    if args.json:
        print_json(res)
    else:
        print(table)
        if out is not None:
            print(f"\nwrote {out / 'results.json'}, {out / 'results.md'} and plots")
    return 0
