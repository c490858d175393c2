"""The audit report: ``report.json`` (every number: the single source of truth) and ``report.html`` (one
self-contained page rendered from that JSON: plots embedded, no network, every data string escaped).

>>> report = build_report(run_dir, config, manifests)          # doctest: +SKIP
>>> write_report(report, run_dir)                              # run_dir/report.json, run_dir/report.html

Sections (docs/audit.md): summary, model card, data and split, stage-1 table with intervals, log-scale ROC,
per-layer leakage, identity level, reconstruction grids and inversion metrics vs the control, defenses (privacy and
utility side by side), configuration and versions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from frleak.report.build import FORMAT, build_report, headline, summary_text, versions
from frleak.report.html import pointer, render_html, resolve


def write_report(report: Mapping[str, Any], run_dir: str | Path) -> list[Path]:
    """Write ``report.json`` and ``report.html`` (rendered from the JSON as written, so every number of the page
    is the JSON's) into ``run_dir``; returns both paths."""
    from frleak.io import _json_default, atomic_write_text

    run_dir = Path(run_dir)
    text = json.dumps(report, indent=1, default=_json_default, allow_nan=True) + "\n"
    atomic_write_text(run_dir / "report.json", text)
    page = render_html(json.loads(text), run_dir)
    atomic_write_text(run_dir / "report.html", page)
    return [run_dir / "report.json", run_dir / "report.html"]


def load_report(run_dir: str | Path) -> dict[str, Any]:
    from frleak.errors import DataError

    path = Path(run_dir) / "report.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if data.get("format") != FORMAT:
        raise DataError(f"{path} is not a frleak audit report (format {data.get('format')!r})")
    return data


__all__ = ["FORMAT", "build_report", "headline", "load_report", "pointer", "render_html", "resolve", "summary_text",
           "versions", "write_report"]
