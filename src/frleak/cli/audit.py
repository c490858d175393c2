"""``frleak audit``: audit a face recognition model end to end and write one report.

  frleak audit --config configs/smoke.yaml --run runs/smoke
  frleak audit --config my_audit.yaml --run runs/a --set train.epochs=5 --set membership.n_boot=200
  frleak audit --config my_audit.yaml --run runs/a --plan          (what would run / is cached; runs nothing)

Stages: split -> target -> shadow -> features -> attack -> inversion -> defense_<label> ... -> report. Each stage is
skipped when its inputs and config section are unchanged, re-run when they changed, and resumed after an
interruption (re-run the same command). Writes RUN/report.html (self-contained), RUN/report.json (every number),
RUN/config.resolved.yaml and one folder per stage. Config keys: docs/audit.md.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("audit", help="stage 1 + stage 2 + defenses -> one HTML/JSON report (resumable)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, config_required=True)
    p.set_defaults(func=run)


def add_run_args(p: argparse.ArgumentParser, config_required: bool) -> None:
    from frleak.cli.common import add_config_args

    add_config_args(p)
    if config_required:
        for action in p._actions:
            if action.dest == "config":
                action.required = True
    p.add_argument("--run", dest="run_dir", required=config_required, help="run folder (created; re-use to resume)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="re-run this stage even if unchanged (repeatable; its consumers follow if outputs change)")
    p.add_argument("--plan", action="store_true", help="print which stages would run or be skipped, and exit")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the report's summary as JSON at the end")


def run(args: argparse.Namespace) -> int:
    from frleak.config import AuditConfig, load_config

    cfg = load_config(AuditConfig, args.config, args.overrides)
    return execute(cfg, args)


def execute(cfg, args: argparse.Namespace) -> int:  # noqa: ANN001 - AuditConfig, imported lazily
    from frleak.cli.common import print_json, setup_logging
    from frleak.pipeline import plan_audit, run_audit
    from frleak.report import load_report, summary_text

    setup_logging(not (args.quiet or args.json))
    if args.plan:
        for s in plan_audit(cfg, args.run_dir):
            print(f"{s.name:<24} {s.status:<5} {s.reason}")
        return 0
    result = run_audit(cfg, args.run_dir, force=args.force, progress=not (args.quiet or args.json))
    report = load_report(result.run_dir)
    if args.json:
        print_json({"run": str(result.run_dir), "stages": result.status(), "seconds": result.seconds,
                    "summary": report["summary"]})
        return 0
    ran = [s.name for s in result.stages if s.status != "skipped"]
    print(f"audit {cfg.name!r} finished in {result.seconds:.0f} s; ran {', '.join(ran) or 'nothing (all cached)'}")
    print(summary_text(report))
    print(f"report: {result.report_html}  (numbers: {result.report_json})")
    return 0
