"""``frleak data NAME --out DIR``: obtain a public face dataset (where there is internet) and align it."""

from __future__ import annotations

import argparse
from typing import Any

from frleak.cli.align import add_align_options, align_kwargs


def register(sub: Any) -> None:
    from frleak.data.fetch import DATASETS

    listing = "; ".join(f"{s.name}: {s.description}" for s in DATASETS.values())
    p = sub.add_parser("data", help="download a public face dataset and align it",
                       description="Download a public dataset through scikit-learn's fetcher (cached) and align it "
                                   "with MTCNN to 112x112. Without internet it says so within --timeout seconds and "
                                   f"explains how to use a local copy. Datasets: {listing}.")
    p.add_argument("name", choices=sorted(DATASETS), help="dataset")
    p.add_argument("--out", required=True, help="folder for the aligned faces")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="download cache (default: scikit-learn's data home, ~/scikit_learn_data)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the host (default 5)")
    p.add_argument("--no-align", dest="align", action="store_false", help="only download, print the photo folder")
    add_align_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from frleak.data.fetch import fetch_dataset

    res = fetch_dataset(args.name, args.out, cache_dir=args.cache, timeout=args.timeout, align=args.align,
                        **align_kwargs(args))
    print(f"{args.name}: photos in {res.raw_dir}" + (" (downloaded)" if res.downloaded else " (cached)"))
    if res.report is not None:
        print(res.report.summary())
    return 0
