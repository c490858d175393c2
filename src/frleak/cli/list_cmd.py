"""``frleak list``: what is registered (backbones, margin heads, attacks, generators, defenses).

  frleak list                 every registry, one line per entry
  frleak list attacks --json
"""

from __future__ import annotations

import argparse

KINDS = ("backbones", "heads", "attacks", "generators", "defenses")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="registered backbones, heads, attacks, generators, defenses",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", nargs="?", choices=KINDS, help="one registry (default: all)")
    p.add_argument("--json", action="store_true", help="print {registry: {name: description}}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from frleak.cli.common import print_json
    from frleak.registry import ATTACKS, BACKBONES, DEFENSES, GENERATORS, HEADS

    registries = dict(zip(KINDS, (BACKBONES, HEADS, ATTACKS, GENERATORS, DEFENSES)))
    listing = {k: registries[k].describe() for k in ([args.kind] if args.kind else KINDS)}
    if args.json:
        print_json(listing)
        return 0
    for kind, entries in listing.items():
        print(f"{kind}:")
        width = max((len(n) for n in entries), default=0)
        for name, doc in entries.items():
            print(f"  {name:<{width}}  {doc}")
    return 0
