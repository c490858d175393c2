"""``frleak invert``: model inversion guided by the membership attack (arXiv 2401.13719, stage 2).

  frleak invert --target runs/target/model --attack runs/attack.skops --generator dcgan64_digiface \\
      --mode untargeted --method guided --n 16 --steps 100 --candidates 256 --split runs/split.json --out runs/inv
  frleak invert --target runs/target/model --attack runs/attack.skops --generator dcgan32_celeba \\
      --mode targeted --method template_membership --targets 10 --split runs/split.json --out runs/inv_t --json

Writes OUT/result.json, OUT/reconstructions.npz, OUT/grid.png (and *_control for the control run, which is the
same budget without the membership term). Evaluation (with --split) uses an independent model, by default the
shared MobileFaceNet. Methods and defaults: docs/inversion.md.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from frleak.inversion.search import METHODS, MODES

    p = subparsers.add_parser("invert", help="GAN model inversion guided by the membership attack (stage 2)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="target backbone: a frleak model folder (or checkpoint)")
    p.add_argument("--attack", help="fitted stage-1 attack (.skops); required unless the method has no membership "
                   "term (unguided, template)")
    p.add_argument("--selection-attack", help="optional second attack (.skops, e.g. trees) ranking the final images")
    p.add_argument("--generator", help="registered generator name or package.module:factory (not for gan_free)")
    p.add_argument("--generator-weights", help="generator checkpoint (default: the generator's shared weights)")
    p.add_argument("--generator-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="generator option, e.g. --generator-opt random_init=true")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled Python objects in checkpoints (only for files you trust)")
    p.add_argument("--mode", choices=MODES, default="untargeted")
    p.add_argument("--method", choices=METHODS, default="guided")
    p.add_argument("--n", type=int, default=16, help="reconstructions (per target in targeted mode)")
    p.add_argument("--candidates", type=int, default=256, help="latents sampled and scored (per target)")
    p.add_argument("--n-optimize", type=int, help="latents optimised per target (default 2 x --n)")
    p.add_argument("--steps", type=int, default=100, help="Adam steps")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: 0.01 latents, 0.05 gan_free pixels)")
    p.add_argument("--membership-weight", type=float)
    p.add_argument("--template-weight", type=float)
    p.add_argument("--bn-weight", type=float, help="weight of the BN-statistics image prior")
    p.add_argument("--latent-weight", type=float, default=0.0, help="weight of the generator's latent prior")
    p.add_argument("--tv-weight", type=float)
    p.add_argument("--l2-weight", type=float)
    p.add_argument("--bn-prior", choices=["sample", "batch"], default="sample")
    p.add_argument("--selection-transforms", type=int, default=10,
                   help="random transforms averaged in the final selection (1 = the untransformed face only)")
    p.add_argument("--no-augment", action="store_true",
                   help="optimise on the untransformed face (default: one small random transform per step)")
    p.add_argument("--image-size", type=int, help="GAN-free image side (default: the generator's, else 64)")
    p.add_argument("--targets", type=int, default=10, help="member identities attacked in targeted mode")
    p.add_argument("--split", help="membership split JSON of the target (evaluation galleries, templates)")
    p.add_argument("--evaluator-weights", help="independent evaluation model (default: shared MobileFaceNet)")
    p.add_argument("--evaluator-backbone", help="architecture of --evaluator-weights when it has no model card")
    p.add_argument("--gallery-resolution", choices=["reconstruction", "native"], default="reconstruction",
                   help="resize gallery photos to the reconstructions' size before embedding (default) or not")
    p.add_argument("--max-per-identity", type=int, help="cap gallery photos per identity")
    p.add_argument("--far", type=float, default=1e-3, help="evaluator false accept rate for 'recovered'")
    p.add_argument("--cohort", type=int, default=64,
                   help="plain generator samples for the hubness-corrected *_znorm metrics (0: none)")
    p.add_argument("--no-control", action="store_true", help="skip the control run")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print the result JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from frleak.cli.common import parse_kv, print_json, setup_logging
    from frleak.inversion.pipeline import run_inversion
    from frleak.inversion.search import InversionConfig

    setup_logging(not args.json)
    cfg = InversionConfig(
        method=args.method, mode=args.mode, n_images=args.n, candidates=args.candidates, n_optimize=args.n_optimize,
        steps=args.steps, lr=args.lr, membership_weight=args.membership_weight,
        template_weight=args.template_weight, bn_weight=args.bn_weight, latent_weight=args.latent_weight,
        tv_weight=args.tv_weight, l2_weight=args.l2_weight, bn_prior=args.bn_prior,
        selection_transforms=args.selection_transforms, augment=not args.no_augment,
        image_size=(args.image_size, args.image_size) if args.image_size else None, batch_size=args.batch_size,
        seed=args.seed, device=args.device, progress=not args.json)
    result = run_inversion(
        args.target, cfg, args.out, attack=args.attack, generator=args.generator,
        generator_weights=args.generator_weights, generator_options=parse_kv(args.generator_opt, "--generator-opt"),
        trust=args.trust_checkpoint, split=args.split, n_targets=args.targets,
        evaluator_weights=args.evaluator_weights, evaluator_backbone=args.evaluator_backbone,
        selection_attack=args.selection_attack, control=not args.no_control,
        gallery_resolution=args.gallery_resolution, max_per_identity=args.max_per_identity, far=args.far,
        cohort_size=args.cohort)
    if args.json:
        print_json(result)
    else:
        s = result["summary"]
        line = f"{result['method']} ({result['mode']}): {s['n_images']} images"
        if "mean_membership_logit" in s:
            line += f", attack logit {s['mean_membership_logit']:.3f}, member rate {s['attack_member_rate']:.2f}"
        print(line)
        rows = [(result["method"], result["metrics"])]
        if result["control"]:
            rows.append((f"control {result['control']['method']}", result["control"]["metrics"]))
        for name, m in rows:
            if m:
                u = m["untargeted"]
                print(f"  {name}: member share {u.get('member_share', float('nan')):.3f}, member ids recovered "
                      f"{u.get('member_ids_recovered', '-')}" + (f", top-1 {m['targeted']['top1']:.3f}"
                                                                 if "targeted" in m else ""))
        print(f"  wrote {result['files']['result']}")
    return 0
