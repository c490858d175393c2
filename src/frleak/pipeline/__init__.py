"""``frleak audit`` as a library: one typed config in, a run folder with a self-contained report out.

>>> from frleak.config import AuditConfig, load_config                      # doctest: +SKIP
>>> from frleak.pipeline import run_audit
>>> cfg = load_config(AuditConfig, "configs/smoke.yaml")
>>> result = run_audit(cfg, "runs/smoke")                                   # resumable; a re-run skips
>>> result.report_html, [s.status for s in result.stages]

Stages (each skipped when its cache key and outputs are unchanged, resumed after an interruption; see
:mod:`frleak.pipeline.core` and docs/audit.md): split -> target -> shadow -> features -> attack -> inversion ->
defense_<label> ... -> report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from frleak.config import AuditConfig, dump_yaml
from frleak.io import atomic_write_json, atomic_write_text
from frleak.pipeline.core import Stage, StageStatus, plan, run_lock, run_stages
from frleak.pipeline.stages import audit_stages

log = logging.getLogger("frleak.audit")

RESOLVED_CONFIG = "config.resolved.yaml"


@dataclass
class AuditResult:
    run_dir: Path
    stages: list[StageStatus]
    seconds: float

    @property
    def report_json(self) -> Path:
        return self.run_dir / "report.json"

    @property
    def report_html(self) -> Path:
        return self.run_dir / "report.html"

    def status(self) -> dict[str, str]:
        return {s.name: s.status for s in self.stages}


def _announce(i: int, n: int, stage: Stage, what: str) -> None:
    verb = {"skip": "unchanged, skipped", "resume": "resuming an interrupted run", "run": "running"}[what]
    log.info("[%d/%d] %s: %s (%s)", i + 1, n, stage.name, stage.description, verb)


def plan_audit(config: AuditConfig, run_dir: str | Path) -> list[StageStatus]:
    """What :func:`run_audit` would run or skip now (nothing is run or written)."""
    config.validate()
    return plan(audit_stages(config), config, Path(run_dir))


def run_audit(config: AuditConfig, run_dir: str | Path, *, force: Sequence[str] = (), progress: bool = True,
              train_callbacks: Sequence[Any] = (),
              on_stage: Callable[[int, int, Stage, str], None] | None = _announce) -> AuditResult:
    """Run (or resume, or skip) every stage of ``config`` in ``run_dir``; returns the stage statuses.

    Writes ``run_dir/config.resolved.yaml`` (the exact config), one folder per stage with its ``stage.json``
    manifest, ``run_dir/report.json`` and ``run_dir/report.html``, and ``run_dir/run.json`` (this run's statuses
    and timings). ``force``: stage names to re-run although unchanged. ``train_callbacks``: extra callbacks of the
    target's training (observers such as progress or logging; they must not change training: the cache key does not
    see them). One audit at a time per folder (a lock).
    """
    import torch

    config.validate()
    run_dir = Path(run_dir)
    stages = audit_stages(config)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    t0 = time.time()
    try:
        with run_lock(run_dir):
            atomic_write_text(run_dir / RESOLVED_CONFIG, dump_yaml(config))
            statuses = run_stages(stages, config, run_dir, force=force, progress=progress,
                                  train_callbacks=train_callbacks, on_stage=on_stage)
            seconds = round(time.time() - t0, 1)
            atomic_write_json(run_dir / "run.json", {"name": config.name, "seconds": seconds,
                                                     "stages": [asdict(s) for s in statuses]})
    finally:
        torch.set_num_threads(threads)
    return AuditResult(run_dir, statuses, seconds)


__all__ = ["RESOLVED_CONFIG", "AuditResult", "Stage", "StageStatus", "audit_stages", "plan_audit", "run_audit"]
