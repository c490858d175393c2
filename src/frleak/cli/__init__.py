"""The ``frleak`` command: one subcommand per module in this package, no logic here.

Each subcommand module exposes ``register(subparsers)`` which adds its parser and sets ``func`` to a function
``(args) -> int``. User errors (:class:`frleak.errors.FrleakError`) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from frleak import __version__
from frleak.errors import FrleakError

# Subcommand modules, in the order ``frleak --help`` lists them.
COMMANDS = ("train", "verify", "mia", "invert", "defend", "audit", "demo", "align", "data", "rec", "extract",
            "list_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frleak",
        description="Measure what a face recognition model leaks about its training data (arXiv 2401.13719).",
    )
    parser.add_argument("--version", action="version", version=f"frleak {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"frleak.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"frleak.cli.{name}":
                continue  # a subcommand not built in this version
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FrleakError as exc:
        print(f"frleak {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"frleak {args.command}: interrupted; completed work is saved, re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
