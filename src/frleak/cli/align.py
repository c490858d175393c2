"""``frleak align SRC DST``: detect faces with MTCNN and align them to the ArcFace 112x112 template."""

from __future__ import annotations

import argparse
from typing import Any


def add_align_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``frleak align`` and ``frleak data`` (which aligns what it fetches)."""
    p.add_argument("--select", choices=("center", "largest"), default="center",
                   help="which face to keep when an image has several: nearest the image centre (default) or largest")
    p.add_argument("--batch-size", type=int, default=16, help="images detected together (default 16)")
    p.add_argument("--format", dest="fmt", choices=("jpg", "png"), default="jpg",
                   help="output format: JPEG quality 95 (default) or PNG")
    p.add_argument("--size", type=int, default=112, help="output side in pixels; template scaled (default 112)")
    p.add_argument("--min-face-size", type=int, default=20, help="smallest face searched, pixels (default 20)")
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="folder with MTCNN pnet.pt, rnet.pt, onet.pt (default: shared/weights/mtcnn, else an "
                        "installed facenet-pytorch; never downloaded)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="re-align every image (default: keep outputs that exist)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def align_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"select": args.select, "batch_size": args.batch_size, "fmt": args.fmt, "size": args.size,
            "min_face_size": args.min_face_size, "weights_dir": args.weights, "device": args.device,
            "resume": args.resume, "progress": args.progress}


def register(sub: Any) -> None:
    p = sub.add_parser("align", help="align raw face photos to the 112x112 ArcFace template (MTCNN)",
                       description="Detect faces and five landmarks with MTCNN, keep one face per image and warp it "
                                   "by a similarity transform onto the ArcFace 112x112 template. SRC/ID/IMG.jpg -> "
                                   "DST/ID/IMG.jpg; images with no face or unreadable are listed in "
                                   "DST/align_log.jsonl. Re-running resumes.")
    p.add_argument("src", help="folder of photos, one sub-folder per identity")
    p.add_argument("dst", help="output folder (created)")
    add_align_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from frleak.data.align import align_folder

    report = align_folder(args.src, args.dst, **align_kwargs(args))
    print(report.summary())
    return 0
