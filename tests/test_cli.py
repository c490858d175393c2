"""``frleak audit``, ``frleak demo`` and ``frleak list`` from the command line (argument parsing and messages; the
pipeline itself is tested in test_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from frleak.cli import main
from frleak.config import AuditConfig, load_config
from frleak.registry import ATTACKS, BACKBONES, DEFENSES, GENERATORS, HEADS
from test_pipeline import MICRO, micro_run, write_config  # noqa: F401 - micro_run: the session fixture

ROOT = Path(__file__).resolve().parents[1]


def test_list_shows_every_registered_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for reg in (BACKBONES, HEADS, ATTACKS, GENERATORS, DEFENSES):
        for name, doc in reg.describe().items():
            assert f"  {name}" in out and doc in out
    assert main(["list", "defenses", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"defenses": DEFENSES.describe()}


def test_audit_typo_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(json.dumps(MICRO))
    data["inversion"]["n_imgaes"] = 3
    cfg = write_config(tmp_path / "typo.yaml", data)
    assert main(["audit", "--config", str(cfg), "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "inversion.n_imgaes: unknown key; did you mean 'n_images'?" in err and str(cfg) in err
    assert main(["audit", "--config", str(write_config(tmp_path / "ok.yaml", MICRO)), "--run", str(tmp_path / "r"),
                 "--set", "membership.attacks=[paper_bn_linear, bn_gmb]"]) == 2
    assert "membership.attacks[1]: unknown attack 'bn_gmb'; did you mean 'bn_gbm'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


def test_audit_rerun_prints_cached_report(micro_run: SimpleNamespace, tmp_path: Path,  # noqa: F811
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(micro_run.run, run)
    assert main(["audit", "--config", str(micro_run.cfg_path), "--run", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ran nothing (all cached)" in out and str(run / "report.html") in out
    head = micro_run.report["summary"]["headline"][0]
    assert f"AUC {head['strongest']['auc']:.3f}" in out
    assert main(["audit", "--config", str(micro_run.cfg_path), "--run", str(run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["stages"].values()) == {"skipped"} and res["summary"] == micro_run.report["summary"]


def test_audit_plan_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], shared: Path) -> None:
    assert main(["audit", "--config", str(ROOT / "configs" / "smoke.yaml"), "--run", str(tmp_path / "r"),
                 "--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["split", "target", "shadow", "features", "attack", "inversion",
                                               "defense_bn_reestimate", "defense_label_smoothing", "report"]
    assert all(ln.split()[1] == "run" for ln in lines)
    assert not any((tmp_path / "r").glob("*/stage.json"))


def test_demo_without_shared_data_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FRLEAK_SHARED", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    for hint in ("FRLEAK_SHARED", "frleak data lfw", "frleak align", "inversion.enabled: false"):
        assert hint in err
    assert not (tmp_path / "frleak-demo").exists()


def test_demo_announces_time_and_plans_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], shared: Path) -> None:
    monkeypatch.setenv("FRLEAK_SHARED", str(shared))
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--plan"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("split")
    assert not (tmp_path / "frleak-demo" / "split").exists()


def test_shipped_configs_load_and_validate(shared: Path) -> None:
    from frleak.pipeline.demo import demo_config_path

    packaged = demo_config_path()
    assert packaged.read_bytes() == (ROOT / "configs" / "demo.yaml").read_bytes()  # one demo, two places
    for path in (packaged, ROOT / "configs" / "smoke.yaml", ROOT / "configs" / "cpu.yaml"):
        cfg = load_config(AuditConfig, path).validate()
        assert cfg.expected_minutes is not None, path
        assert yaml.safe_load(path.read_text())["name"] == cfg.name
    demo = load_config(AuditConfig, packaged)
    assert demo.inversion.enabled and demo.inversion.evaluator_weights is None  # the shared MobileFaceNet
    assert demo.inversion.generator == "dcgan32_celeba" and demo.defenses.apply
    assert demo.expected_minutes is not None and demo.expected_minutes <= 30
