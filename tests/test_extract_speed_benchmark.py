"""benchmarks/extract_speed.py end to end on a micro budget: the documented JSON keys, and the ratio is what it says
(extraction time / plain time of each repeat's two passes, median)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import extract_speed as bench  # noqa: E402


@pytest.mark.parametrize("path", ["auto", "hooks"])
def test_micro_run_writes_the_documented_json(tmp_path: Path, path: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = bench.main(["--device", "cpu", "--threads", "1", "--batch-size", "2", "--repeats", "3", "--warmup", "0",
                     "--models", "mobilefacenet", "--path", path, "--out", str(tmp_path), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "extract_speed.json").read_text())
    assert printed == saved
    m = saved["models"]["mobilefacenet"]
    assert m["extraction_path"] == "hooks"  # no fused kernel on CPU, whatever was asked
    assert m["bn_layers"] == 50 and m["input_size"] == [112, 112]
    ratios = [e / p for e, p in zip(m["extract_seconds"], m["plain_seconds"])]
    assert m["overhead_ratios"] == pytest.approx(ratios)
    assert m["overhead_ratio"] == pytest.approx(statistics.median(ratios))
    assert m["overhead_ratio"] > 0 and saved["bound"] == 1.10
    assert "| mobilefacenet | 112x112 | hooks | 50 |" in (tmp_path / "extract_speed.md").read_text()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--kinds", "paper,nonsense", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--input-size", "abc", "--out", str(tmp_path)])
