"""report.json: every number of an audit, assembled from the run folder's artifacts (the single source of truth;
report.html is rendered from it)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FORMAT = "frleak-audit-report/1"
PAPER_ATTACK = "paper_bn_linear"
#: metric keys shown with their bootstrap intervals
CI_KEYS = ("auc", "accuracy", "balanced_accuracy", "tpr_at_10pct_fpr", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
INVERSION_KEYS = ("member_share", "member_share_znorm", "chance_member_share", "member_ids_recovered",
                  "member_ids_recovered_share", "distractor_ids_recovered", "member_ids_recovered_znorm",
                  "distractor_ids_recovered_znorm", "accepted_share", "mean_nearest_member_cos",
                  "mean_nearest_distractor_cos", "threshold", "far_resolved")
#: non-member kinds a one-line summary speaks for: other_dataset mostly measures dataset shift, never the headline
SUMMARY_KINDS = ("same_identity", "unseen_identity")
TARGETED_KEYS = ("top1", "top5", "chance_top1", "mean_target_cos", "knn_cos", "knn_dist", "targets_recovered")


def versions() -> dict[str, Any]:
    """Versions of frleak and of what its numbers depend on, and the machine."""
    import matplotlib
    import numpy
    import scipy
    import sklearn
    import torch

    from frleak import __version__

    return {"frleak": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__, "scipy": scipy.__version__,
            "matplotlib": matplotlib.__version__, "platform": platform.platform(), "cpus": os.cpu_count()}


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _figure(run_dir: Path, rel: str, title: str, caption: str = "") -> dict[str, Any] | None:
    from frleak.io import file_sha256

    p = run_dir / rel
    if not p.is_file():
        return None
    return {"path": rel, "sha256": file_sha256(p), "title": title, "caption": caption}


def _metric(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"attack": row["attack"], **{k: row.get(k) for k in ("auc", "auc_ci", "tpr_at_1pct_fpr",
                                                                "tpr_at_1pct_fpr_ci", "n_members", "n_nonmembers")}}


def headline(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (setting, non-member kind): the strongest attack by AUC and the paper's attack.

    Taking the maximum over many attacks on the same evaluation set is optimistic (a selection effect); the
    paper's attack is the pre-registered comparison."""
    out = []
    keys: list[tuple[str, str]] = []
    for r in rows:
        k = (r["setting"], r["nonmember"])
        if k not in keys:
            keys.append(k)
    for setting, kind in keys:
        scored = [r for r in rows if r["setting"] == setting and r["nonmember"] == kind and "auc" in r]
        if not scored:
            continue
        best = max(scored, key=lambda r: (r["auc"], r.get("tpr_at_1pct_fpr", 0.0)))
        paper = next((r for r in scored if r["attack"] == PAPER_ATTACK), None)
        out.append({"setting": setting, "nonmember": kind, "strongest": _metric(best), "paper": _metric(paper),
                    "attacks_compared": len(scored)})
    return out


def _inversion(run_dir: Path) -> dict[str, Any] | None:
    res = _read(run_dir / "inversion" / "result.json")
    if res is None:
        return None
    guide = _read(run_dir / "inversion" / "guide_attack.json")
    summary = (_read(run_dir / "inversion" / "stage.json") or {}).get("summary", {})

    def metrics(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if not m:
            return None
        out: dict[str, Any] = {"untargeted": {k: m["untargeted"].get(k) for k in INVERSION_KEYS
                                              if k in m.get("untargeted", {})}}
        if "targeted" in m:
            out["targeted"] = {k: m["targeted"].get(k) for k in TARGETED_KEYS if k in m["targeted"]}
        return out

    control = res.get("control")
    figures = {k: f for k, f in {
        "grid": _figure(run_dir, "inversion/grid.png", f"Reconstructions ({res['method']}, {res['mode']})",
                        "Each reconstruction (red frame) beside real photos of the identity the independent "
                        "evaluator matches it to."),
        "grid_control": _figure(run_dir, "inversion/grid_control.png",
                                f"Control ({control['method'] if control else '-'}): same budget, no membership "
                                "term"),
    }.items() if f is not None}
    return {"method": res["method"], "mode": res["mode"], "generator": res.get("generator"),
            "evaluator": res.get("evaluator"), "guide": {**summary.get("guide", {}),
                                                         "threshold": (guide or {}).get("threshold")},
            "config": res.get("config"), "targets": res.get("targets"), "summary": res.get("summary"),
            "metrics": metrics(res.get("metrics")),
            "control": None if not control else {"method": control["method"], "summary": control.get("summary"),
                                                 "metrics": metrics(control.get("metrics"))},
            "figures": figures}


def _stage1(run_dir: Path) -> dict[str, Any]:
    res = _read(run_dir / "attack" / "results.json") or {}
    titles = {"identity_level": "Identity-level membership vs photos per person"}
    figures = {}
    kinds = ("same_identity", "unseen_identity", "other_dataset")

    def order(key: str) -> tuple[int, str, int]:
        kind = next((k for k in kinds if key.endswith(k)), "")
        return (0 if key.startswith("roc_") else 1 if key.startswith("layers_") else 2, key[:6],
                kinds.index(kind) if kind else 0)

    for key, rel in sorted((res.get("plots") or {}).items(), key=lambda kv: order(kv[0])):
        if key.startswith("roc_"):
            setting, kind = key[4:].split("_", 1)
            title = f"ROC (log-log), setting {setting}, non-members: {kind}"
        elif key.startswith("layers_"):
            title = f"Per-layer BN leakage: members vs {key[7:]}"
        else:
            title = titles.get(key, key)
        f = _figure(run_dir, rel, title)
        if f is not None:
            figures[key] = f
    return {"results": res.get("results", []), "identity_level": res.get("identity_level", []),
            "layer_names": res.get("layer_names", []), "layer_auc": res.get("layer_auc", {}), "figures": figures}


def _defenses(run_dir: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for n in names:
        r = _read(run_dir / n / "results.json")
        if r is None:
            continue
        r["headline"] = headline(r.get("results", []))
        out.append(r)
    return out


def _card(run_dir: Path, stage: str) -> dict[str, Any] | None:
    card: dict[str, Any] | None = _read(run_dir / stage / "model" / "model_card.json")
    return card


def build_report(run_dir: str | Path, config: Any, manifests: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Assemble report.json from the artifacts of ``run_dir`` (``manifests``: the stage manifests it reads)."""
    from frleak.config import dump_yaml, to_dict

    run_dir = Path(run_dir)
    split = _read(run_dir / "split" / "split.json") or {}
    split_summary = (manifests.get("split") or {}).get("summary", {})
    stage1 = _stage1(run_dir)
    target_card = _card(run_dir, "target") or {}
    shadow_summary = (manifests.get("shadow") or {}).get("summary")
    inversion = _inversion(run_dir) if "inversion" in manifests else None
    defenses = _defenses(run_dir, [n for n in manifests if n.startswith("defense_")])
    head = headline(stage1["results"])
    inv_summary = None
    if inversion and inversion["metrics"]:
        u = inversion["metrics"]["untargeted"]
        cu = ((inversion["control"] or {}).get("metrics") or {}).get("untargeted", {})
        inv_summary = {"method": inversion["method"], "control": (inversion["control"] or {}).get("method"),
                       **{k: u.get(k) for k in ("member_share", "member_share_znorm", "member_ids_recovered")},
                       **{f"control_{k}": cu.get(k) for k in ("member_share", "member_share_znorm",
                                                              "member_ids_recovered")}}
    return {
        "format": FORMAT,
        "title": config.report.title,
        "name": config.name,
        "notes": config.report.notes,
        "mode": "train" if config.target.train else "given",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "summary": {"headline": head, "utility": target_card.get("utility"), "inversion": inv_summary,
                    "defenses": [{"label": d["label"], "removes_bn_surface": d["removes_bn_surface"],
                                  "utility": d.get("utility"), "headline": d["headline"]} for d in defenses]},
        "model_card": target_card,
        "shadow": None if shadow_summary is None else {"card": _card(run_dir, "shadow"), **shadow_summary},
        "data": {"split_digest": split.get("digest"), "mode": (split.get("spec") or {}).get("mode", "pools"),
                 "models": split_summary.get("models", {}), "spec": split.get("spec"), "roots": split.get("roots"),
                 "verification": {"set": config.data.verification, "pairs": config.data.verification_pairs}},
        "stage1": stage1,
        "stage2": inversion,
        "defenses": defenses,
        "config": to_dict(config),
        "config_yaml": dump_yaml(config),
        "versions": versions(),
        "stages": {n: {"key": str(m.get("key", ""))[:16], "seconds": m.get("seconds"),
                       "outputs_digest": str(m.get("outputs_digest", ""))[:16]} for n, m in manifests.items()},
    }


def summary_text(report: Mapping[str, Any]) -> str:
    """A few plain lines for the terminal: the headline per setting, utility, stage 2, defenses."""
    lines = []
    for h in report["summary"]["headline"]:
        s, pa = h["strongest"], h.get("paper")
        line = (f"  setting {h['setting']}, {h['nonmember']:<15}: strongest {s['attack']} AUC {s['auc']:.3f}, "
                f"TPR@1%FPR {s['tpr_at_1pct_fpr']:.3f}")
        if pa:
            line += f"; paper attack AUC {pa['auc']:.3f}, TPR@1%FPR {pa['tpr_at_1pct_fpr']:.3f}"
        lines.append(line)
    u = report["summary"].get("utility") or {}
    if "verification_accuracy" in u:
        lines.append(f"  utility: verification accuracy {u['verification_accuracy']:.3f} "
                     f"({u.get('verification_pairs')} pairs of unseen identities)")
    inv = report["summary"].get("inversion")
    if inv and inv.get("member_share") is not None:
        lines.append(f"  stage 2 ({inv['method']}): member share {inv['member_share']:.3f} vs control "
                     f"{inv['control_member_share']:.3f}; member identities recovered {inv['member_ids_recovered']} "
                     f"vs {inv['control_member_ids_recovered']}")
    for d in report["summary"].get("defenses", []):
        aucs = [h["strongest"]["auc"] for h in d["headline"] if h["nonmember"] in SUMMARY_KINDS]
        acc = (d.get("utility") or {}).get("verification_accuracy")
        lines.append(f"  defense {d['label']}: " + ("BN attack surface removed; " if d["removes_bn_surface"] else "")
                     + (f"highest attack AUC {max(aucs):.3f} (same/unseen identity)" if aucs else
                        "no attack applies")
                     + (f", verification accuracy {acc:.3f}" if acc is not None else ""))
    return "\n".join(lines)
