"""``frleak extract``: BatchNorm-statistics features and embeddings of a dataset, to one .npz (FeatureSet).

  frleak extract --weights runs/lfw/target --data lfw-112 --out feats/target_lfw.npz --flip
  frleak extract --backbone iresnet50 --weights backbone.pth --rec ms1m/train --limit 100000 --out f.npz --amp
  torchrun --standalone --nproc_per_node 4 -m frleak extract ...      (rows sharded over ranks; rank 0 writes)

The .npz holds ``feat_<kind>`` (N, L) per kind, ``embeddings`` (N, D; 2D with --flip: image and mirror
concatenated), ``layer_names`` and ``meta`` (the row order: image paths, identities, labels). Under torchrun every
rank extracts whole batches of the single-process batching, so the file equals a one-process run (docs/scale.md).
"""

from __future__ import annotations

import argparse

from frleak.cli.common import add_backbone_args, parse_kv, print_json, setup_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("extract", help="BN-statistics features + embeddings of a dataset to .npz (torchrun ok)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="aligned identity folder (IDENTITY/IMAGE.jpg)")
    src.add_argument("--rec", help="insightface train.rec/.idx (folder, .rec path or prefix)")
    p.add_argument("--limit", type=int, help="only the first N images (in sorted / record order)")
    p.add_argument("--out", required=True, help="output FEATURES.npz")
    p.add_argument("--kinds", default="paper,normalized,variance",
                   help="comma-separated feature kinds: paper, normalized, variance, channels (default: first three)")
    p.add_argument("--flip", action="store_true", help="average features over each image and its mirror")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: 1024 on CUDA, where smaller batches leave the GPU "
                        "waiting on kernel launches, see docs/scale.md; 128 on CPU)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda (torchrun: one GPU per rank)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (BN statistics stay float32)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from frleak.distributed import FolderRows, RecRows, cleanup, extract_to_file, init_distributed, is_main
    from frleak.errors import ConfigError
    from frleak.features import KINDS
    from frleak.models.checkpoint import load_backbone

    setup_logging(not args.json and is_main())
    if not args.weights:
        raise ConfigError("--weights is required (a frleak model folder or a checkpoint file)")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"--kinds {args.kinds!r}: expected a comma-separated subset of {', '.join(KINDS)}")
    info = init_distributed(args.device)
    try:
        model = load_backbone(args.weights, args.backbone, trust=args.trust_checkpoint,
                              **parse_kv(args.backbone_opt, "--backbone-opt"))
        source = (FolderRows(args.data, model.input_spec, args.limit) if args.data
                  else RecRows(args.rec, model.input_spec, args.limit))
        batch_size = args.batch_size or (1024 if info.device.type == "cuda" else 128)
        fs = extract_to_file(model, source, args.out, kinds=kinds, batch_size=batch_size, device=info.device,
                             flip=args.flip, amp=args.amp, progress=not args.json,
                             meta={"weights": str(args.weights)})
    finally:
        cleanup()
    if fs is None:  # not rank 0
        return 0
    summary = {"out": args.out, "images": len(fs), "layers": len(fs.layer_names), "kinds": kinds,
               "embedding_dim": int(fs.embeddings.shape[1]), "world_size": info.world_size}
    if args.json:
        print_json(summary)
    else:
        print(f"{len(fs)} images x {len(fs.layer_names)} BN layers ({', '.join(kinds)}) + "
              f"{fs.embeddings.shape[1]}-d embeddings -> {args.out} ({info.world_size} process(es))")
    return 0
