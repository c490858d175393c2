"""The audit report: every number of report.html equals report.json's, strings from data are escaped, the page is
self-contained, and a real headless browser (Debian's chromium) loads it without errors and draws the plots."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from frleak.report import render_html, resolve
from frleak.report.html import fmt_number, pointer
from test_pipeline import micro_run  # noqa: F401 - the session fixture (one micro audit for all test files)


class NumberCells(HTMLParser):
    """Collects (data-key, data-value, printed text) of every number span, and every src / href."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str, str]] = []
        self.links: list[str] = []
        self._open: tuple[str, str] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for k in ("src", "href"):
            if a.get(k):
                self.links.append(str(a[k]))
        if tag == "span" and "data-key" in a:
            self._open = (str(a["data-key"]), str(a["data-value"]))
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._open is not None:
            self.cells.append((*self._open, self._text))
            self._open = None


def parse(page: str) -> NumberCells:
    p = NumberCells()
    p.feed(page)
    return p


def test_every_number_of_the_page_equals_the_json(micro_run: SimpleNamespace) -> None:  # noqa: F811
    report = json.loads((micro_run.run / "report.json").read_text())
    page = parse((micro_run.run / "report.html").read_text())
    assert len(page.cells) > 100
    for key, value, text in page.cells:
        expected = resolve(report, key)
        assert float(value) == expected, key  # the exact value behind the cell
        assert text == fmt_number(expected, 1 if key.endswith("/seconds") else
                                  4 if key.startswith(("/model_card", "/shadow/card")) else 3), key
    keys = {k for k, _, _ in page.cells}
    # every stage-1 metric with its interval, every headline and defense row is on the page
    for i, row in enumerate(report["stage1"]["results"]):
        if "auc" in row:
            for k in ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
                assert pointer("stage1", "results", i, k) in keys
                assert pointer("stage1", "results", i, f"{k}_ci", 0) in keys
    for i, _ in enumerate(report["summary"]["headline"]):
        assert pointer("summary", "headline", i, "strongest", "auc") in keys
    for j, d in enumerate(report["defenses"]):
        for i, _ in enumerate(d["headline"]):
            assert pointer("defenses", j, "headline", i, "strongest", "tpr_at_1pct_fpr") in keys
    assert pointer("stage2", "metrics", "untargeted", "member_share") in keys
    assert pointer("stage2", "control", "metrics", "untargeted", "member_share") in keys


def test_page_is_self_contained(micro_run: SimpleNamespace) -> None:  # noqa: F811
    text = (micro_run.run / "report.html").read_text()
    page = parse(text)
    assert "Content-Security-Policy" in text and "<script" not in text
    images = [s for s in page.links if s.startswith("data:")]
    assert len(images) >= 5 and all(s.startswith("data:image/png;base64,") for s in images)
    assert all(s.startswith(("data:image/png;base64,", "#")) for s in page.links)  # nothing to fetch
    # section headings the issue asks for
    for heading in ("Summary", "Model card", "Data and split", "Stage 1", "ROC curves (log-log)", "Per-layer leakage",
                    "Identity level", "Stage 2", "Defenses", "Configuration and versions"):
        assert heading in text, heading


def test_strings_from_data_are_escaped(micro_run: SimpleNamespace) -> None:  # noqa: F811
    report = json.loads((micro_run.run / "report.json").read_text())
    evil = '<img src=x onerror="alert(1)">&'
    bad = copy.deepcopy(report)
    bad["title"] = bad["name"] = evil
    bad["stage1"]["results"][0]["attack"] = evil
    bad["model_card"]["identities"] = evil
    bad["data"]["roots"] = [evil]
    bad["summary"]["headline"][0]["strongest"]["attack"] = evil
    bad["config_yaml"] = evil
    page = render_html(bad, micro_run.run)
    assert evil not in page and "<img src=x" not in page
    assert page.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;") >= 6


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_in_a_headless_browser(micro_run: SimpleNamespace, tmp_path: Path) -> None:  # noqa: F811
    exe = _chromium()
    if exe is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("chromium not installed (apt-get install chromium)")
    assert exe is not None
    url = (micro_run.run / "report.html").resolve().as_uri()
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--enable-logging=stderr", "--v=0"]
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([*base, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True,
                             text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # no console message at all: the page has no script, so any is an error (CSP violation, failed load, ...)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    report = json.loads((micro_run.run / "report.json").read_text())
    head = report["summary"]["headline"][0]["strongest"]
    assert f">{head['auc']:.3f}<" in dom.stdout and report["name"] in dom.stdout
    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run([*base, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,9000",
                              "--hide-scrollbars", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (9000, 1280)
    assert img.std() > 20  # not blank
    # matplotlib's first colour (tab:blue, 31,119,180) draws the ROC curves and layer plots
    blue = (np.abs(img - np.array([31, 119, 180])).sum(axis=2) < 30).sum()
    assert blue > 500, blue


def test_render_without_figures_and_defenses() -> None:
    """A minimal report (no stage 2, no defenses, no figures) still renders every section."""
    report: dict[str, Any] = {
        "title": "t", "name": "n", "mode": "given", "created": "now", "notes": "",
        "summary": {"headline": [], "utility": None, "inversion": None, "defenses": []},
        "model_card": {"arch": {"name": "tiny"}}, "shadow": None,
        "data": {"split_digest": "x", "mode": "given", "models": {}, "roots": [],
                 "verification": {"set": None, "pairs": 10}},
        "stage1": {"results": [], "identity_level": [], "figures": {}, "layer_auc": {}, "layer_names": []},
        "stage2": None, "defenses": [], "config_yaml": "a: 1\n", "versions": {"frleak": "0"}, "stages": {},
    }
    page = render_html(report, None)
    assert "not run (inversion.enabled: false)" in page and "none applied" in page
    cells = parse(page).cells
    assert cells == [(pointer("data", "verification", "pairs"), "10", "10")]
