"""frleak audit as a library: strict config, cached / resumable stages, given-model mode.

One micro audit on the shared data (tiny backbone at 32x32, 8 LFW identities, 3 epochs, three attacks, a
two-image inversion, bn_reestimate) runs once per session (``micro_run``, also used by test_report.py and
test_cli.py); the other tests re-run it in copies of its run folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from frleak.config import AuditConfig, load_config
from frleak.errors import ConfigError
from frleak.pipeline import audit_stages, plan_audit, run_audit

LFW, CELEBA = "${shared}/data/lfw-112", "${shared}/data/celeba-112"
MICRO: dict[str, Any] = {
    "name": "micro",
    "threads": 1,  # a shared 2-core machine: one thread is several times faster than two under contention
    "data": {
        "target": {"source": LFW, "min_images": 12, "identities": 8, "max_per_identity": 8},
        "unseen": {"source": LFW, "min_images": 5, "max_images": 9, "identities": 8},
        "other": {"source": CELEBA, "min_images": 2, "identities": 3, "max_per_identity": 8},
        "shadow": {"source": CELEBA, "min_images": 10, "identities": 8, "max_per_identity": 8},
        "shadow_unseen": {"source": LFW, "min_images": 3, "max_images": 4, "identities": 10},
        "shadow_other": {"source": LFW, "min_images": 2, "max_images": 2, "identities": 10},
        "verification": CELEBA, "verification_pairs": 100,
    },
    "model": {"backbone": "tiny", "options": {"input_size": 32, "channels": 8, "embedding_dim": 16}},
    "train": {"epochs": 3, "batch_size": 16, "lr": 0.05},
    "membership": {"attacks": ["paper_bn_linear", "embedding_norm", "bn_calibrated"],
                   "kinds": ["same_identity", "unseen_identity"], "folds": 3, "n_boot": 20, "identity_ks": [1, 2],
                   "identity_attacks": ["paper_bn_linear"]},
    "inversion": {"n_images": 2, "candidates": 4, "steps": 2, "cohort": 4, "gallery_max_per_identity": 2,
                  "options": {"selection_transforms": 1}},
    "defenses": {"apply": [{"name": "bn_reestimate"}], "public_images": 32,
                 "attacks": ["paper_bn_linear", "embedding_norm"]},
}
VOLATILE = ("created", "stages", "fit_seconds")  # keys that legitimately differ between two runs of one config


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def numbers(obj: Any) -> Any:
    """The report (or part of it) without its timings and dates."""
    if isinstance(obj, dict):
        return {k: numbers(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [numbers(v) for v in obj]
    return obj


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


_MICRO_RUNS: dict[str, SimpleNamespace] = {}  # one run per session, also for the modules that import the fixture


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> SimpleNamespace:
    if "run" not in _MICRO_RUNS:
        _MICRO_RUNS["run"] = _micro_run(tmp_path_factory)
    return _MICRO_RUNS["run"]


def _micro_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("micro_audit")
    cfg_path = write_config(root / "micro.yaml", MICRO)
    cfg = load_config(AuditConfig, cfg_path)
    t0 = time.time()
    result = run_audit(cfg, root / "run", progress=False, on_stage=None)
    return SimpleNamespace(root=root, cfg_path=cfg_path, cfg=cfg, run=root / "run", result=result,
                           seconds=time.time() - t0, report=read_json(root / "run" / "report.json"))


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# ---- config --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, key", [
    (["membership.atacks=[paper_bn_linear]"], "membership.atacks: unknown key; did you mean 'attacks'"),
    (["train.epocs=2"], "train.epocs: unknown key; did you mean 'epochs'"),
    (["defenses.apply=[{name: bn_reestimate, parms: {}}]"], "defenses.apply[0].parms: unknown key"),
    (["membership.n_boot=many"], "membership.n_boot: expected an integer"),
])
def test_typo_in_keys_or_types_is_rejected_naming_the_key(tmp_path: Path, overrides: list[str], key: str) -> None:
    cfg_path = write_config(tmp_path / "c.yaml", MICRO)
    with pytest.raises(ConfigError) as exc:
        load_config(AuditConfig, cfg_path, overrides)
    assert key in str(exc.value)
    assert str(cfg_path) in str(exc.value)


@pytest.mark.parametrize("overrides, key", [
    (["membership.attacks=[paper_bn_linaer]"], "membership.attacks[0]: unknown attack 'paper_bn_linaer'; did you "
                                               "mean 'paper_bn_linear'"),
    (["defenses.apply=[{name: bn_reestimat}]"], "defenses.apply[0].name: unknown defense 'bn_reestimat'"),
    (["defenses.apply=[{name: bn_noise, params: {sigma: -1}}]"], "defenses.apply[0].params: defense 'bn_noise': "
                                                                  "sigma"),
    (["inversion.attack=bn_gbm"], "inversion.attack: 'bn_gbm' cannot guide"),
    (["inversion.options={stepz: 3}"], "inversion.options.stepz: unknown inversion option"),
    (["train.epochs=0"], "train.epochs must be >= 1"),
    (["membership.kinds=[same_identty]"], "membership.kinds[0]: unknown non-member kind"),
    (["target.train=false"], "model.weights: required with target.train: false"),
    (["data.member_fraction=1.5"], "data.member_fraction: must be in (0, 1)"),
    (["defenses.apply=[{name: label_smoothing}, {name: label_smoothing}]"], "defenses.apply[1]: a second defense"),
    (["model.weights=/w.pth", "defenses.apply=[{name: label_smoothing}]"], "defenses.apply[0]: 'label_smoothing' "
                                                                            "retrains the target from scratch"),
])
def test_bad_values_are_rejected_naming_the_key_before_anything_runs(tmp_path: Path, overrides: list[str],
                                                                     key: str) -> None:
    cfg = load_config(AuditConfig, write_config(tmp_path / "c.yaml", MICRO), overrides)
    with pytest.raises(ConfigError) as exc:
        run_audit(cfg, tmp_path / "run", progress=False, on_stage=None)
    assert key in str(exc.value)
    assert not (tmp_path / "run").exists()  # validated before the run folder is touched


def test_stage_graph_follows_the_config() -> None:
    cfg = load_config(AuditConfig, None, ["shadow.train=false", "inversion.enabled=false",
                                          "defenses.apply=[{name: bn_noise, label: noise01}]"])
    stages = audit_stages(cfg)
    assert [s.name for s in stages] == ["split", "target", "features", "attack", "defense_noise01", "report"]
    assert all(set(s.inputs) <= {t.name for t in stages[:i]} for i, s in enumerate(stages))  # inputs come first


# ---- runs ------------------------------------------------------------------------------------------------------
def test_first_run_writes_manifests_config_and_report(micro_run: SimpleNamespace) -> None:
    from frleak.io import file_sha256

    run = micro_run.run
    assert set(micro_run.result.status().values()) == {"ran"}
    names = [s.name for s in audit_stages(micro_run.cfg)]
    assert list(micro_run.result.status()) == names
    for name in names:
        m = read_json(run / name / "stage.json")
        assert not (run / name / "stage.pending.json").exists()
        assert m["outputs"], name
        for rel, sha in m["outputs"].items():  # every output is recorded with its content hash
            assert file_sha256(run / rel) == sha
    assert "report.html" in read_json(run / "report" / "stage.json")["outputs"]
    # the resolved config is the exact config: loading it gives the same object
    assert load_config(AuditConfig, run / "config.resolved.yaml") == micro_run.cfg
    assert micro_run.report["config"] == json.loads(json.dumps(dataclasses.asdict(micro_run.cfg)))


def test_second_run_skips_every_stage(micro_run: SimpleNamespace, tmp_path: Path) -> None:
    run = copy_run(micro_run.run, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("stage.json")}
    result = run_audit(micro_run.cfg, run, progress=False, on_stage=None)
    assert set(result.status().values()) == {"skipped"}
    assert {p: p.read_bytes() for p in run.rglob("stage.json")} == before
    assert all(s.status == "skip" for s in plan_audit(micro_run.cfg, run))


def test_changed_value_reruns_exactly_the_downstream_stages(micro_run: SimpleNamespace, tmp_path: Path) -> None:
    run = copy_run(micro_run.run, tmp_path / "run")
    # the plan of a training change: everything but the split
    plan = {s.name: s.status for s in plan_audit(load_config(AuditConfig, micro_run.cfg_path,
                                                             ["train.epochs=4"]), run)}
    assert plan == {n: ("skip" if n == "split" else "run") for n in plan}
    cfg = load_config(AuditConfig, micro_run.cfg_path, ["inversion.steps=3"])
    result = run_audit(cfg, run, progress=False, on_stage=None)
    ran = {n for n, s in result.status().items() if s != "skipped"}
    assert ran == {"inversion", "report"}  # the stage that reads inversion.* and the report that reads it
    report = read_json(run / "report.json")
    assert report["stage2"]["config"]["steps"] == 3 and micro_run.report["stage2"]["config"]["steps"] == 2
    assert report["stage1"] == micro_run.report["stage1"] and report["defenses"] == micro_run.report["defenses"]
    # a changed upstream output that is byte-identical to the old one stops the cascade (content hashes)
    result = run_audit(cfg, run, progress=False, on_stage=None, force=["split"])
    assert result.status()["split"] == "ran" and {s for n, s in result.status().items() if n != "split"} == \
        {"skipped"}


def test_tampered_output_is_not_trusted(micro_run: SimpleNamespace, tmp_path: Path) -> None:
    run = copy_run(micro_run.run, tmp_path / "run")
    (run / "report.json").write_text("{}")  # e.g. half-written by a crashed editor, or edited by hand
    (run / "inversion" / "result.json").write_text("{}")
    result = run_audit(micro_run.cfg, run, progress=False, on_stage=None)
    ran = {n for n, s in result.status().items() if s != "skipped"}
    assert ran == {"inversion", "report"}
    assert numbers(read_json(run / "report.json")) == numbers(micro_run.report)


KILLER = textwrap.dedent("""
    import sys, time, pathlib
    from frleak.config import AuditConfig, load_config
    from frleak.pipeline import run_audit

    class PauseInSecondEpoch:
        # an observer: it waits (so the parent can kill the process mid-stage) and changes nothing
        def end_epoch(self, ctx, epoch, stats):
            if epoch >= 1:
                pathlib.Path(sys.argv[3]).touch()
                time.sleep(120)
            return False

    run_audit(load_config(AuditConfig, sys.argv[1]), sys.argv[2], progress=False, on_stage=None,
              train_callbacks=[PauseInSecondEpoch()])
""")


def test_run_killed_mid_stage_resumes_to_identical_results(micro_run: SimpleNamespace, tmp_path: Path) -> None:
    run, flag = tmp_path / "run", tmp_path / "in_second_epoch"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.Popen([sys.executable, str(script), str(micro_run.cfg_path), str(run), str(flag)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not flag.exists():
            assert proc.poll() is None, "the audit ended before reaching the second epoch"
            assert time.time() < deadline, "the audit did not reach the second epoch in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # no clean-up handler runs: as after a power cut
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (run / "split" / "stage.json").is_file()
    assert (run / "target" / "stage.pending.json").is_file() and not (run / "target" / "stage.json").exists()
    state = torch.load(run / "target" / "model" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 1  # the first epoch's checkpoint; the second was cut short
    result = run_audit(micro_run.cfg, run, progress=False, on_stage=None)
    assert result.status()["split"] == "skipped" and result.status()["target"] == "resumed"
    assert numbers(read_json(run / "report.json")) == numbers(micro_run.report)
    for name in ("target", "features", "attack", "defense_bn_reestimate"):  # byte-identical artifacts too
        assert read_json(run / name / "stage.json")["outputs"] == \
            read_json(micro_run.run / name / "stage.json")["outputs"], name


# ---- mode b: a given model and given member / non-member folders -----------------------------------------------
def test_given_model_and_folders_reproduce_the_trained_audit(micro_run: SimpleNamespace, tmp_path: Path) -> None:
    """Auditing the micro target "as is" from folders that hold exactly its split's images gives the setting-A
    numbers of the audit that trained it (same model, same images, same seeds)."""
    from frleak.data.splits import MembershipSplit

    split = MembershipSplit.load(micro_run.run / "split" / "split.json")
    folders = {"members": split.target.members, "nonmembers": split.target.same_identity
               + split.target.unseen_identity}
    for name, samples in folders.items():
        for s in samples:
            dst = tmp_path / name / s.identity / Path(s.path).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s.path, dst)
    data = json.loads(json.dumps(MICRO))
    data["target"] = {"train": False, "members": str(tmp_path / "members"),
                      "nonmembers": str(tmp_path / "nonmembers")}
    data["model"]["weights"] = str(micro_run.run / "target" / "model")
    data["inversion"] = {"enabled": False}
    data["membership"].update(settings=["A"], identity_ks=[])  # setting A only: the shadow's data differ here
    cfg = load_config(AuditConfig, write_config(tmp_path / "given.yaml", data))
    result = run_audit(cfg, tmp_path / "run", progress=False, on_stage=None)
    assert set(result.status().values()) == {"ran"}
    report = read_json(tmp_path / "run" / "report.json")
    assert report["mode"] == "given"
    assert report["model_card"]["audited_weights"] == str(micro_run.run / "target" / "model")

    def rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
        # bn_calibrated is left out: its reference model is the shadow, whose auxiliary data differ here
        return [r for r in rep["stage1"]["results"] if r["setting"] == "A" and r["attack"] != "bn_calibrated"]

    assert len(rows(report)) == 4 and numbers(rows(report)) == numbers(rows(micro_run.report))
    assert report["summary"]["utility"] == micro_run.report["summary"]["utility"]
    assert report["defenses"][0]["label"] == "bn_reestimate"


def test_given_mode_refuses_training_time_defenses(tmp_path: Path) -> None:
    cfg = load_config(AuditConfig, None, ["target.train=false", "model.weights=/x", "target.members=/m",
                                          "target.nonmembers=/n", "defenses.apply=[{name: groupnorm}]"])
    with pytest.raises(ConfigError, match=r"defenses.apply\[0\]: 'groupnorm' acts in training"):
        cfg.validate()


def test_defense_that_removes_batchnorm_reports_no_bn_number(micro_run: SimpleNamespace, tmp_path: Path) -> None:
    run = copy_run(micro_run.run, tmp_path / "run")
    cfg = load_config(AuditConfig, micro_run.cfg_path,
                      ["defenses.apply=[{name: bn_reestimate}, {name: groupnorm, label: gn}]"])
    result = run_audit(cfg, run, progress=False, on_stage=None)
    assert {n for n, s in result.status().items() if s != "skipped"} == {"defense_gn", "report"}
    report = read_json(run / "report.json")
    gn = next(d for d in report["defenses"] if d["label"] == "gn")
    assert gn["removes_bn_surface"] and gn["stage"] == "training"
    bn_rows = [r for r in gn["results"] if r["attack"] == "paper_bn_linear"]
    emb_rows = [r for r in gn["results"] if r["attack"] == "embedding_norm"]
    assert bn_rows and all(r["status"] == "BN attack surface removed" and "auc" not in r for r in bn_rows)
    assert emb_rows and all(0.0 <= r["auc"] <= 1.0 for r in emb_rows)  # the embedding attack still runs
    assert {h["strongest"]["attack"] for h in gn["headline"]} == {"embedding_norm"}
    assert all(h["paper"] is None for h in gn["headline"])
    assert "BN attack surface removed" in (run / "report.html").read_text()
    assert gn["utility"]["verification_pairs"] == micro_run.report["summary"]["utility"]["verification_pairs"]
