"""Helpers shared by the benchmark scripts: presets from dataclasses, result files, machine facts."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_results(out_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    from frleak.io import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write_json(j, payload)
    atomic_write_text(m, markdown + "\n")
    return j, m


class Timer:
    def __init__(self) -> None:
        self.t0 = time.time()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.time() - self.t0, 1)


def dumps(obj: Any) -> str:
    from frleak.io import _json_default

    return json.dumps(obj, indent=1, default=_json_default)
