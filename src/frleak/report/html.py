"""report.html: one self-contained page rendered from report.json (plots embedded as base64 PNG, no script, no
external resource; a Content-Security-Policy forbids any network access). Every string that comes from data or
config is HTML-escaped. Every number is a ``<span class="num" data-key="JSON pointer" data-value="exact">``, so a
test (or a reader) can check each printed value against report.json."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from frleak.report.build import SUMMARY_KINDS

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d232a;background:#fff}
main{max-width:1180px;margin:0 auto;padding:1.5rem 2rem 4rem}
header{background:#14213d;color:#fff;padding:1.4rem 2rem}header h1{margin:0 0 .3rem;font-size:1.6rem}
header p{margin:.15rem 0;color:#d9e2f2}nav{font-size:.9rem;margin:.8rem 0 0}nav a{color:#fca311;margin-right:.9rem}
h2{border-bottom:2px solid #e5e5e5;padding-bottom:.3rem;margin-top:2.4rem}h3{margin-top:1.6rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.86rem}th,td{border:1px solid #d6d6d6;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f1f3f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ci{color:#666;font-size:.8em;white-space:nowrap}.muted{color:#666}.removed{color:#8a3b12;font-style:italic}
.headline td,.headline th{font-size:.95rem}.figs{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;border:1px solid #e5e5e5;padding:.5rem;max-width:560px}
figure img{max-width:100%;height:auto;display:block}figcaption{font-size:.8rem;color:#444;margin-top:.3rem}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.8rem}
.kv th{width:14rem}.note{background:#fff7e0;border-left:4px solid #fca311;padding:.5rem .8rem;font-size:.9rem}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
REMOVED = "BN attack surface removed"


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def pointer(*parts: Any) -> str:
    """RFC 6901 JSON pointer of a path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def resolve(doc: Any, ptr: str) -> Any:
    """The value at JSON pointer ``ptr`` of ``doc`` (the inverse of :func:`pointer`)."""
    node = doc
    for raw in ptr.split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def fmt_number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


class Page:
    """Rendering helpers bound to the report (numbers carry their JSON pointer)."""

    def __init__(self, report: Mapping[str, Any], run_dir: Path | None) -> None:
        self.r = report
        self.run_dir = run_dir

    def num(self, value: Any, *path: Any, digits: int = 3) -> str:
        if value is None:
            return '<span class="muted">–</span>'
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return esc(value)
        return (f'<span class="num" data-key="{esc(pointer(*path))}" data-value="{esc(repr(value))}">'
                f"{fmt_number(value, digits)}</span>")

    def num_ci(self, row: Mapping[str, Any], key: str, *path: Any) -> str:
        if row.get(key) is None:
            return '<span class="muted">–</span>'
        out = self.num(row[key], *path, key)
        ci = row.get(f"{key}_ci")
        if ci:
            out += (f' <span class="ci">[{self.num(ci[0], *path, f"{key}_ci", 0)}, '
                    f'{self.num(ci[1], *path, f"{key}_ci", 1)}]</span>')
        return out

    def figure(self, fig: Mapping[str, Any] | None) -> str:
        if not fig or self.run_dir is None:
            return ""
        p = self.run_dir / fig["path"]
        if not p.is_file():
            return f'<p class="muted">figure {esc(fig["path"])} is missing</p>'
        data = base64.b64encode(p.read_bytes()).decode()
        cap = esc(fig.get("title", "")) + (f" — {esc(fig['caption'])}" if fig.get("caption") else "")
        return (f'<figure><img alt="{esc(fig.get("title", ""))}" src="data:image/png;base64,{data}">'
                f"<figcaption>{cap}</figcaption></figure>")

    def figures(self, figs: Mapping[str, Any], prefix: str = "") -> str:
        items = [self.figure(f) for k, f in figs.items() if k.startswith(prefix)]
        return f'<div class="figs">{"".join(items)}</div>' if items else '<p class="muted">no figures</p>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _kv(rows: Sequence[tuple[str, str]]) -> str:
    return '<table class="kv"><tbody>' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + \
        "</tbody></table>"


# ---- sections --------------------------------------------------------------------------------------------------
def _headline_rows(p: Page, head: Sequence[Mapping[str, Any]], *base: Any) -> list[list[str]]:
    rows = []
    for i, h in enumerate(head):
        s, pa = h["strongest"], h.get("paper")
        kind = esc(h["nonmember"]) + (' <span class="muted">(dataset shift)</span>'
                                      if h["nonmember"] == "other_dataset" else "")
        rows.append([esc(h["setting"]), kind, esc(s["attack"]),
                     p.num_ci(s, "auc", *base, i, "strongest"), p.num_ci(s, "tpr_at_1pct_fpr", *base, i, "strongest"),
                     p.num_ci(pa, "auc", *base, i, "paper") if pa else '<span class="muted">not run</span>',
                     p.num_ci(pa, "tpr_at_1pct_fpr", *base, i, "paper") if pa else ""])
    return rows


HEAD_COLS = ["setting", "non-members", "strongest attack", "AUC", "TPR@1%FPR", "paper attack AUC",
             "paper TPR@1%FPR"]


def _summary(p: Page) -> str:
    s = p.r["summary"]
    out = ['<section id="summary"><h2>Summary</h2>']
    if s["headline"]:
        out.append(_table(HEAD_COLS, _headline_rows(p, s["headline"], "summary", "headline"), "headline"))
        out.append('<p class="note">Members are the positive class; each evaluation set is balanced (chance AUC '
                   '0.5). Setting A: the attacker holds part of the training data (out-of-fold scores); setting B: '
                   'auxiliary data and a shadow model only. "Strongest" is the best AUC of '
                   f"{esc(s['headline'][0]['attacks_compared'])} attacks on the same data: a maximum, hence "
                   "optimistic; the paper's attack (arXiv 2401.13719) is the fixed comparison. 95 % bootstrap "
                   "intervals in brackets.</p>")
    else:
        out.append('<p class="muted">no stage-1 results</p>')
    u = s.get("utility")
    if u:
        def un(k: str) -> str:
            return p.num(u.get(k), "summary", "utility", k)

        out.append(f"<p>Utility: verification accuracy {un('verification_accuracy')} ± "
                   f"{un('verification_accuracy_std')}, TAR@FAR=1e-3 {un('tar_at_far_1e-3')} on "
                   f"{un('verification_pairs')} random pairs of {esc(u.get('verification_set'))} (identities the "
                   "target never saw).</p>")
    inv = s.get("inversion")
    if inv:
        def iv(k: str) -> str:
            return p.num(inv.get(k), "summary", "inversion", k)

        out.append(f"<p>Stage 2 ({esc(inv['method'])} inversion vs its control {esc(inv['control'])}): share of "
                   f"reconstructions nearest to a member identity {iv('member_share')} vs "
                   f"{iv('control_member_share')} (hubness-corrected {iv('member_share_znorm')} vs "
                   f"{iv('control_member_share_znorm')}); member identities recovered {iv('member_ids_recovered')} "
                   f"vs {iv('control_member_ids_recovered')}.</p>")
    for i, d in enumerate(s.get("defenses", [])):
        acc = (d.get("utility") or {}).get("verification_accuracy")
        cand = [(h["strongest"]["auc"], j) for j, h in enumerate(d["headline"]) if h["nonmember"] in SUMMARY_KINDS]
        bi = max(cand)[1] if cand else None
        strongest = (p.num(d["headline"][bi]["strongest"]["auc"], "summary", "defenses", i, "headline", bi,
                           "strongest", "auc") if bi is not None else "–")
        removed = f' <span class="removed">({REMOVED})</span>' if d["removes_bn_surface"] else ""
        out.append(f"<p>Defense <b>{esc(d['label'])}</b>{removed}: highest attack AUC against same/unseen-identity "
                   f"non-members {strongest}, verification "
                   f"accuracy {p.num(acc, 'summary', 'defenses', i, 'utility', 'verification_accuracy')}.</p>")
    if p.r.get("notes"):
        out.append(f"<p>{esc(p.r['notes'])}</p>")
    out.append("</section>")
    return "".join(out)


def _card_rows(p: Page, card: Mapping[str, Any], *base: Any) -> list[tuple[str, str]]:
    import json

    rows = []
    for k, v in card.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append((k, p.num(v, *base, k, digits=4)))
        elif isinstance(v, Mapping) and all(isinstance(x, (int, float, str, bool, type(None))) for x in v.values()):
            rows.append((k, "<br>".join(f"{esc(a)}: {p.num(b, *base, k, a, digits=4)}" for a, b in v.items())))
        else:
            rows.append((k, f"<code>{esc(json.dumps(v, default=str))}</code>"))
    return rows


def _model(p: Page) -> str:
    card = p.r.get("model_card") or {}
    out = ['<section id="model"><h2>Model card (target)</h2>', _kv(_card_rows(p, card, "model_card"))]
    sh = p.r.get("shadow")
    if sh:
        mism = sh.get("recipe_mismatch") or []
        out.append(f"<h3>Shadow model (setting B)</h3><p>Recipe from {esc(sh.get('recipe_source'))}; mismatch with "
                   f"the target: {esc('; '.join(mism) if mism else 'none')}.</p>")
        if sh.get("card"):
            out.append(_kv(_card_rows(p, sh["card"], "shadow", "card")))
    out.append("</section>")
    return "".join(out)


def _data(p: Page) -> str:
    d = p.r["data"]
    out = ['<section id="data"><h2>Data and split</h2>',
           f"<p>Split <code>{esc(d.get('split_digest'))}</code> ({esc(d.get('mode'))}); verification set "
           f"{esc(d['verification']['set'])}, {p.num(d['verification']['pairs'], 'data', 'verification', 'pairs')} "
           "pairs.</p>"]
    roles = ("members", "same_identity", "unseen_identity", "other_dataset")
    rows = []
    for m, summ in d.get("models", {}).items():
        rows.append([esc(m)] + [f"{p.num(summ[r]['images'], 'data', 'models', m, r, 'images')} images / "
                                f"{p.num(summ[r]['identities'], 'data', 'models', m, r, 'identities')} ids"
                                for r in roles])
    out.append(_table(["model"] + list(roles), rows))
    out.append("<p class=\"muted\">members: training images; same_identity: other photos of member people, never "
               "trained on; unseen_identity: people never trained on (same source); other_dataset: another "
               "dataset (mostly dataset shift).</p>")
    if d.get("roots"):
        out.append("<p>Image folders: " + ", ".join(f"<code>{esc(r)}</code>" for r in d["roots"]) + "</p>")
    out.append("</section>")
    return "".join(out)


MIA_COLS = [("AUC", "auc"), ("accuracy", "accuracy"), ("balanced acc.", "balanced_accuracy"),
            ("TPR@10%FPR", "tpr_at_10pct_fpr"), ("TPR@1%FPR", "tpr_at_1pct_fpr"), ("TPR@0.1%FPR", "tpr_at_0.1pct_fpr")]


def _result_rows(p: Page, rows: Sequence[Mapping[str, Any]], *base: Any) -> tuple[list[list[str]], list[str]]:
    table, na = [], []
    for i, r in enumerate(rows):
        if "auc" not in r:
            cls = "removed" if r.get("status") == REMOVED else "muted"
            na.append(f'<span class="{cls}">{esc(r["attack"])} ({esc(r["setting"])}, {esc(r["nonmember"])}): '
                      f"{esc(r.get('status'))}</span>")
            continue
        table.append([esc(r["setting"]), esc(r["nonmember"]), esc(r["attack"])]
                     + [p.num_ci(r, k, *base, i) for _, k in MIA_COLS]
                     + [f"{p.num(r.get('n_members'), *base, i, 'n_members')} / "
                        f"{p.num(r.get('n_nonmembers'), *base, i, 'n_nonmembers')}"])
    return table, na


def _stage1(p: Page) -> str:
    s1 = p.r["stage1"]
    table, na = _result_rows(p, s1["results"], "stage1", "results")
    out = ['<section id="stage1"><h2>Stage 1: membership inference</h2>',
           _table(["setting", "non-members", "attack"] + [h for h, _ in MIA_COLS] + ["members / non-members"], table)]
    if na:
        out.append("<p>Not applicable: " + "; ".join(na) + "</p>")
    out.append('<h3 id="roc">ROC curves (log-log)</h3>' + p.figures(s1["figures"], "roc_"))
    out.append('<h3 id="layers">Per-layer leakage</h3><p>Each BN layer alone: distance of members vs non-members '
               "to the running statistics, and that layer's single-feature AUC.</p>"
               + p.figures(s1["figures"], "layers_"))
    idr = s1.get("identity_level") or []
    out.append('<h3 id="identity">Identity level</h3>')
    if idr:
        rows = [[esc(r["setting"]), esc(r["attack"]), p.num(r["k"], "stage1", "identity_level", i, "k"),
                 f"{p.num(r.get('n_member_identities'), 'stage1', 'identity_level', i, 'n_member_identities')} / "
                 f"{p.num(r.get('n_nonmember_identities'), 'stage1', 'identity_level', i, 'n_nonmember_identities')}",
                 p.num_ci(r, "auc", "stage1", "identity_level", i),
                 p.num_ci(r, "tpr_at_1pct_fpr", "stage1", "identity_level", i)] for i, r in enumerate(idr)]
        out.append("<p>Was this person in the training set? Photos never trained on of member people vs people "
                   "never seen; scores averaged over k photos per person.</p>")
        out.append(_table(["setting", "attack", "k", "member / non-member people", "AUC", "TPR@1%FPR"], rows))
        out.append(p.figures(s1["figures"], "identity_level"))
    else:
        out.append('<p class="muted">not computed (needs same_identity and unseen_identity non-members)</p>')
    out.append("</section>")
    return "".join(out)


def _stage2(p: Page) -> str:
    s2 = p.r.get("stage2")
    out = ['<section id="stage2"><h2>Stage 2: model inversion</h2>']
    if not s2:
        out.append('<p class="muted">not run (inversion.enabled: false)</p></section>')
        return "".join(out)
    g = s2.get("guide") or {}
    out.append(f"<p>Method <b>{esc(s2['method'])}</b> ({esc(s2['mode'])}), generator {esc(s2.get('generator'))}, "
               f"guided by the attack {esc(g.get('attack'))} fitted in setting {esc(g.get('setting'))} against "
               f"{esc(g.get('nonmember'))} non-members; judged by an independent evaluator "
               f"({esc(s2.get('evaluator'))}).</p>")
    out.append(p.figures(s2.get("figures", {})))
    m = s2.get("metrics")
    c = (s2.get("control") or {}).get("metrics")
    if m:
        for mode in ("untargeted", "targeted"):
            if mode not in m:
                continue
            keys = list(m[mode])
            rows = [[esc(k), p.num(m[mode][k], "stage2", "metrics", mode, k),
                     p.num((c or {}).get(mode, {}).get(k), "stage2", "control", "metrics", mode, k)] for k in keys]
            out.append(f"<h3>{esc(mode)} metrics vs the control</h3>")
            control = esc((s2.get("control") or {}).get("method"))
            out.append(_table(["metric", esc(s2["method"]), f"control ({control})"], rows))
        out.append("<p class=\"muted\">Read the method against its control (same generator, budget and seed, no "
                   "membership term); docs/inversion.md explains each metric.</p>")
    else:
        out.append('<p class="muted">no evaluation (no split)</p>')
    out.append("</section>")
    return "".join(out)


def _defenses(p: Page) -> str:
    ds = p.r.get("defenses") or []
    out = ['<section id="defenses"><h2>Defenses</h2>']
    if not ds:
        out.append('<p class="muted">none applied (defenses.apply is empty)</p></section>')
        return "".join(out)
    rows = []
    base_u = (p.r["summary"].get("utility") or {}).get("verification_accuracy")
    for i, h in enumerate(p.r["summary"]["headline"]):
        rows.append(["none (target as trained)", "–", esc(h["setting"]), esc(h["nonmember"]),
                     esc(h["strongest"]["attack"]),
                     p.num_ci(h["strongest"], "auc", "summary", "headline", i, "strongest"),
                     p.num_ci(h["strongest"], "tpr_at_1pct_fpr", "summary", "headline", i, "strongest"),
                     p.num_ci(h["paper"], "auc", "summary", "headline", i, "paper") if h.get("paper") else "–",
                     p.num(base_u, "summary", "utility", "verification_accuracy"), ""])
    for j, d in enumerate(ds):
        u = (d.get("utility") or {}).get("verification_accuracy")
        dres = d.get("defense", {}).get("result") or {}
        note = ", ".join(f"{esc(k)} {p.num(v, 'defenses', j, 'defense', 'result', k)}" for k, v in dres.items())
        if d["removes_bn_surface"]:
            note = f'<span class="removed">{REMOVED}</span>' + (f"; {note}" if note else "")
        for i, h in enumerate(d["headline"]):
            paper = (f'<span class="removed">{REMOVED}</span>' if d["removes_bn_surface"] else
                     (p.num_ci(h["paper"], "auc", "defenses", j, "headline", i, "paper") if h.get("paper") else "–"))
            rows.append([esc(d["label"]), esc(d["stage"]), esc(h["setting"]), esc(h["nonmember"]),
                         esc(h["strongest"]["attack"]),
                         p.num_ci(h["strongest"], "auc", "defenses", j, "headline", i, "strongest"),
                         p.num_ci(h["strongest"], "tpr_at_1pct_fpr", "defenses", j, "headline", i, "strongest"),
                         paper, p.num(u, "defenses", j, "utility", "verification_accuracy"), note])
        if not d["headline"]:
            rows.append([esc(d["label"]), esc(d["stage"]), "–", "–", "–", "–", "–",
                         f'<span class="removed">{REMOVED}</span>' if d["removes_bn_surface"] else "–",
                         p.num(u, "defenses", j, "utility", "verification_accuracy"), note])
    out.append(_table(["defense", "acts at", "setting", "non-members", "strongest attack", "AUC", "TPR@1%FPR",
                       "paper attack AUC", "verification acc.", "notes"], rows))
    adaptive = any(d.get("adaptive") for d in ds)
    out.append('<p class="note">Privacy and utility side by side: lower attack numbers and unchanged verification '
               "accuracy are better. "
               + ("The attacker is adaptive: it applies the same defense (own seed, own public data) to its shadow "
                  "model. " if adaptive else "The attacker is not adaptive (its shadow is undefended). ")
               + "For defenses that remove BatchNorm, no BN attack number exists; only embedding attacks run.</p>")
    for j, d in enumerate(ds):
        table, na = _result_rows(p, d.get("results", []), "defenses", j, "results")
        out.append(f"<details><summary>All attacks against defense {esc(d['label'])}</summary>"
                   + _table(["setting", "non-members", "attack"] + [h for h, _ in MIA_COLS]
                            + ["members / non-members"], table)
                   + ("<p>" + "; ".join(na) + "</p>" if na else "") + "</details>")
    out.append("</section>")
    return "".join(out)


def _config(p: Page) -> str:
    v = p.r.get("versions", {})
    rows = [(k, esc(val)) for k, val in v.items()]
    st = p.r.get("stages", {})
    srows = [[esc(n), p.num(m.get("seconds"), "stages", n, "seconds", digits=1), f"<code>{esc(m.get('key'))}</code>"]
             for n, m in st.items()]
    return ('<section id="config"><h2>Configuration and versions</h2>'
            "<p>The exact configuration of this run (also in config.resolved.yaml beside this report):</p>"
            f"<pre>{esc(p.r.get('config_yaml'))}</pre><h3>Versions</h3>{_kv(rows)}"
            "<h3>Stages</h3>" + _table(["stage", "seconds (last run)", "cache key"], srows) + "</section>")


def render_html(report: Mapping[str, Any], run_dir: str | Path | None = None) -> str:
    """The report page. ``run_dir``: where the figure paths of the report point (None: no figures)."""
    p = Page(report, Path(run_dir) if run_dir is not None else None)
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("summary", "Summary"), ("model", "Model card"), ("data", "Data"), ("stage1", "Stage 1"), ("roc", "ROC"),
        ("layers", "Per-layer"), ("identity", "Identity level"), ("stage2", "Stage 2"), ("defenses", "Defenses"),
        ("config", "Config")))
    body = "".join([_summary(p), _model(p), _data(p), _stage1(p), _stage2(p), _defenses(p), _config(p)])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(report.get('title'))}: {esc(report.get('name'))}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(report.get('title'))}: {esc(report.get('name'))}</h1>"
        f"<p>Audit of a face recognition model ({'trained by frleak' if report.get('mode') == 'train' else 'given'})"
        f" — frleak {esc(report.get('versions', {}).get('frleak'))}, {esc(report.get('created'))}. Attacks after "
        "arXiv 2401.13719 (BatchNorm-statistics membership inference, guided GAN inversion).</p>"
        f"<nav>{nav}</nav></header><main>{body}</main></body></html>\n"
    )
