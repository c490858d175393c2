"""What drives the BatchNorm membership signal? Train variants of the calibration target on the same split and
measure the paper's attack (setting A, 5-fold, balanced) and frleak's boosted attack against each non-member kind.

Variants: training length (epochs), BN momentum (how many late batches the running statistics average), training
set size (people), and for the base model: the late batches (members seen in the last batches of the last epoch vs
earlier members) and which layers (single-layer AUC).

  python benchmarks/signal_study.py --device cuda            # minutes on one GPU
  python benchmarks/signal_study.py --variants base,epochs5  # a subset, on CPU
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402
from frleak.config import DataConfig  # noqa: E402
from frleak.data.prepare import build_split  # noqa: E402
from frleak.data.splits import MembershipSplit, ModelSplit  # noqa: E402
from frleak.evaluation import KINDS, setting_a  # noqa: E402
from frleak.membership import build_pool, layer_aucs  # noqa: E402
from frleak.metrics import auc  # noqa: E402
from frleak.tables import markdown_table  # noqa: E402
from frleak.targets import train_role  # noqa: E402
from frleak.train import TrainConfig, epoch_batches  # noqa: E402

BASE = TrainConfig(epochs=15, batch_size=64, lr=0.1)
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "epochs5": {"epochs": 5},
    "epochs30": {"epochs": 30},
    "epochs60": {"epochs": 60},
    "momentum0.01": {"bn_momentum": 0.01},
    "momentum0.5": {"bn_momentum": 0.5},
    "batch256": {"batch_size": 256, "lr": 0.2},
    "half_people": {"_identities": 79},
    "no_flip": {"flip": False},
}
ATTACKS = ("paper_bn_linear", "bn_gbm")


def late_batch_auc(split: ModelSplit, pool: Any, cfg: TrainConfig, n_last: int) -> dict[str, float]:
    """AUC of the paper attack's out-of-fold scores for members seen in the last ``n_last`` batches of the last
    epoch vs the same-identity non-members, and for the other members."""
    order = epoch_batches(len(split.members), cfg.batch_size, cfg.seed, cfg.epochs - 1, cfg.drop_last)
    late = set(torch.cat(order[-n_last:]).tolist())
    from sklearn.model_selection import StratifiedKFold

    from frleak.attacks import create_attack
    from frleak.attacks.base import take

    mem, non = pool.rows("members"), pool.rows("same_identity")
    idx = np.r_[mem, non]
    y = np.r_[np.ones(len(mem), dtype=int), np.zeros(len(non), dtype=int)]
    X = take(pool.inputs, idx)
    s = np.zeros(len(idx))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(idx, y):
        s[te] = create_attack("paper_bn_linear").fit(take(X, tr), y[tr]).score(take(X, te))
    is_late = np.array([i in late for i in range(len(mem))])
    s_mem, s_non = s[: len(mem)], s[len(mem):]
    return {
        "late_members": int(is_late.sum()),
        "auc_late_vs_same_identity": auc(np.r_[s_mem[is_late], s_non],
                                         np.r_[np.ones(is_late.sum()), np.zeros(len(s_non))]),
        "auc_early_vs_same_identity": auc(np.r_[s_mem[~is_late], s_non],
                                          np.r_[np.ones((~is_late).sum()), np.zeros(len(s_non))]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--split", type=Path, help="split.json (default: the standard LFW split, seed 0)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--work", type=Path)
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--rerender", type=Path, help="only rewrite the Markdown of this signal_study.json")
    args = p.parse_args(argv)
    if args.rerender:
        rerender(args.rerender)
        return 0
    logging.basicConfig(level=logging.WARNING)
    work = args.work or args.out / "_work" / "signal_study"
    base_split = MembershipSplit.load(args.split) if args.split else build_split(DataConfig(), 0)
    rows: list[dict[str, Any]] = []
    extras: dict[str, Any] = {}
    for name in args.variants.split(","):
        over = dict(VARIANTS[name])
        n_ids = over.pop("_identities", None)
        split = base_split
        if n_ids:  # the first n_ids private people (sorted), members and same-identity images alike
            keep = set(base_split.target.member_identities()[:n_ids])
            t = base_split.target
            split = MembershipSplit(target=ModelSplit([s for s in t.members if s.identity in keep],
                                                      [s for s in t.same_identity if s.identity in keep],
                                                      t.unseen_identity, t.other_dataset), shadow=None)
        cfg = replace(BASE, device=args.device, **over)
        t0 = time.time()
        model, res = train_role(split, "target", backbone="iresnet18", options={"width": 0.5, "input_size": 64},
                                train=cfg, out_dir=work / name, verification=None, progress=False)
        model.eval()
        pool, _ = build_pool(model, split.target, None, device=args.device, progress=False)
        train_s = time.time() - t0
        for kind in KINDS:
            r, _ = setting_a(pool, kind, ATTACKS, seed=0, n_boot=args.n_boot)
            for row in r:
                rows.append({"variant": name, "epochs": cfg.epochs, "bn_momentum": cfg.bn_momentum or 0.1,
                             "batch_size": cfg.batch_size, "members": len(split.target.members),
                             "final_loss": res["history"][-1]["loss"], "train_acc": res["history"][-1]["train_acc"],
                             "train_s": round(train_s, 1), **row})
        if name == "base":
            la = layer_aucs(pool)
            extras["layer_auc"] = la
            extras["late_batches"] = {str(n): late_batch_auc(split.target, pool, cfg, n) for n in (1, 5, 10, 30)}
        print(f"{name}: done in {time.time() - t0:.0f}s", flush=True)
    md = render(rows, extras)
    write_results(args.out, "signal_study", {"results": rows, **extras, "machine": machine()}, md)
    print(md)
    return 0


def render(rows: list[dict[str, Any]], extras: dict[str, Any]) -> str:
    cols = [("variant", "variant"), ("epochs", "epochs"), ("BN mom.", "bn_momentum"), ("batch", "batch_size"),
            ("members", "members"), ("train acc", "train_acc"), ("non-members", "nonmember"), ("attack", "attack"),
            ("AUC", "auc"), ("TPR@1%FPR", "tpr_at_1pct_fpr"), ("TPR@10%FPR", "tpr_at_10pct_fpr")]
    md = ["# What drives the BN membership signal (setting A, half-width IResNet-18 at 64x64, LFW)", "",
          markdown_table(rows, cols, ("auc",))]
    if "late_batches" in extras:
        md += ["", "## Late batches (base model): paper attack AUC vs same-identity non-members", "",
               markdown_table([{"last batches": k, **v} for k, v in extras["late_batches"].items()],
                              [("last batches of the last epoch", "last batches"), ("members in them", "late_members"),
                               ("AUC late members", "auc_late_vs_same_identity"),
                               ("AUC other members", "auc_early_vs_same_identity")])]
    if "layer_auc" in extras:
        md += ["", "## Which layers (base model): single-layer AUC, either direction", "",
               "AUC of the score -d_i (members closer to the running mean); values below 0.5 mean members are "
               "FARTHER from it. Strongest five layers per kind (layer index in module order, AUC of -d_i):", ""]
        for kind, aucs in extras["layer_auc"].items():
            a = np.asarray(aucs)
            top = np.argsort(-np.abs(a - 0.5))[:5]
            md.append(f"- {kind}: " + ", ".join(f"#{i} ({a[i]:.3f}, members {'closer' if a[i] > 0.5 else 'farther'})"
                                                for i in top))
    return "\n".join(md)


def rerender(path: Path) -> None:
    """Rewrite the Markdown of an existing signal_study.json (e.g. one produced on a GPU machine)."""
    import json

    d = json.loads(path.read_text())
    path.with_suffix(".md").write_text(render(d["results"], d) + "\n")


if __name__ == "__main__":
    sys.exit(main())
