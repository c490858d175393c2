"""``frleak demo``: the embedded default audit on real faces, with no arguments.

Trains a small target on LFW identities and a shadow on CelebA identities (CPU-sized), runs every membership
attack (settings A and B), a small guided GAN inversion judged by the pretrained MobileFaceNet, and the
bn_reestimate defense, then writes ./frleak-demo/report.html. Re-running resumes or reuses what is done.
Needs the shared data folder ($FRLEAK_SHARED or ../shared); without it, it says how to obtain the data.

  frleak demo
  frleak demo --run /tmp/demo --set defenses.apply=[]      (any config key can be overridden)
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from frleak.cli.audit import add_run_args

    p = subparsers.add_parser("demo", help="the embedded default audit on the shared LFW data (CPU, <= 30 min)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, config_required=False)
    p.set_defaults(func=run, run_dir="frleak-demo")


def run(args: argparse.Namespace) -> int:
    from frleak.cli.audit import execute
    from frleak.config import AuditConfig, load_config
    from frleak.pipeline.demo import check_demo_prerequisites, demo_config_path

    check_demo_prerequisites()
    cfg = load_config(AuditConfig, args.config or demo_config_path(), args.overrides)
    if not (args.plan or args.json):
        minutes = f"about {cfg.expected_minutes:.0f} minutes" if cfg.expected_minutes else "a while"
        print(f"frleak demo: auditing a face recognition model trained on real faces (LFW). This takes {minutes} on "
              f"2 CPU cores the first time (training two models, attacks, inversion, a defense); progress follows. "
              f"Interrupt any time: re-running resumes. Report: {args.run_dir}/report.html", flush=True)
    return execute(cfg, args)
