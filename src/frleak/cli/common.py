"""Argument helpers shared by subcommands (parsing only; no logic)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import yaml

from frleak.errors import ConfigError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML experiment file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")


def add_backbone_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--backbone", required=required, help="registered backbone name (frleak list)")
    parser.add_argument("--backbone-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="backbone option, e.g. --backbone-opt width=0.5 --backbone-opt input_size=64")
    parser.add_argument("--weights", help="checkpoint: a frleak model folder, .safetensors, or .pth/.pt/.ckpt")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickled Python objects in --weights (only for files you trust)")


def parse_kv(items: list[str], option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{option} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def print_json(obj: Any) -> None:
    from frleak.io import _json_default

    print(json.dumps(obj, indent=1, default=_json_default))


def setup_logging(verbose: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
