"""``frleak rec``: insightface MXNet RecordIO datasets (train.rec / train.idx) without mxnet.

  frleak rec pack FOLDER PREFIX      identity folder -> PREFIX.rec, PREFIX.idx, property (original bytes kept)
  frleak rec unpack PREFIX OUT       rec -> OUT/id_<label>/<key>.<ext> (bytes unchanged)
  frleak rec info PREFIX [--json]    images, identities, num_classes, first image size

PREFIX is a folder holding train.rec, a .rec path, or a path prefix (``data/casia/train``).
"""

from __future__ import annotations

import argparse
import json

from frleak.data import recordio


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rec",
        help="read/write insightface RecordIO datasets (train.rec/.idx) without mxnet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="rec_command", metavar="ACTION")
    sub.required = True

    pack = sub.add_parser("pack", help="pack an identity folder (ROOT/IDENTITY/IMAGE) into PREFIX.rec/.idx")
    pack.add_argument("folder", help="identity folder: one sub-folder of images per identity")
    pack.add_argument("prefix", help="output: a folder (gets train.rec/.idx) or a path prefix")
    pack.add_argument("--min-images", type=int, default=1, help="skip identities with fewer images (default 1)")
    pack.add_argument("--quality", type=int, default=None,
                      help="re-encode every image as JPEG at this quality (default: keep the original bytes)")
    pack.set_defaults(func=_pack)

    unpack = sub.add_parser("unpack", help="unpack a rec into OUT/id_<label>/<key>.<ext>")
    unpack.add_argument("prefix", help="a folder holding train.rec, a .rec path, or a path prefix")
    unpack.add_argument("out", help="output folder (must be empty or absent)")
    unpack.set_defaults(func=_unpack)

    info = sub.add_parser("info", help="count images and identities of a rec dataset")
    info.add_argument("prefix", help="a folder holding train.rec, a .rec path, or a path prefix")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_info)


def _pack(args: argparse.Namespace) -> int:
    info = recordio.folder_to_rec(args.folder, args.prefix, min_images=args.min_images, quality=args.quality,
                                  progress=True)
    print(f"wrote {info.rec} and {info.idx}: {info.images} images, {info.identities} identities")
    return 0


def _unpack(args: argparse.Namespace) -> int:
    n = recordio.rec_to_folder(args.prefix, args.out, progress=True)
    print(f"wrote {n} images to {args.out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    info = recordio.rec_info(args.prefix)
    if args.json:
        print(json.dumps(info.to_dict()))
        return 0
    size = "none" if info.image_size is None else f"{info.image_size[0]}x{info.image_size[1]}"
    print(f"rec:         {info.rec}\nidx:         {info.idx}\nimages:      {info.images}\n"
          f"identities:  {info.identities}"
          f"{'' if info.identity_records else ' (counted from the labels: no identity records)'}\n"
          f"num_classes: {info.num_classes}\nimage size:  {size} (first record)")
    return 0
