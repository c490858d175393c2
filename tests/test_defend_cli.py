"""``frleak defend`` end to end on a micro setup of real faces (tiny backbone at 32x32, 8 LFW identities, 2 epochs):
the JSON carries the documented keys; a BN-removing defense yields status rows without BN numbers while the non-BN
attacks still run; the undefended rows equal a direct :func:`frleak.membership.run_membership` call on the same models
(oracle); embedding-only features equal those of the BN feature path; a re-run reuses every result; bad input is a
clear error."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from frleak.attack_data import embed_with_mirror, inputs_from_features
from frleak.cli import main
from frleak.defense_eval import SURFACE_REMOVED, attack_inputs
from frleak.features import FeatureSet, has_bn_statistics
from frleak.io import _json_default
from frleak.models.checkpoint import load_backbone, read_card

DEFENSES = ("none", "bn_reestimate", "groupnorm")
ATTACKS = ("paper_bn_linear", "bn_calibrated", "embedding_norm")  # bn_calibrated: the shadow as reference model
KINDS = ("same_identity", "unseen_identity")
METRICS = ("auc", "auc_ci", "accuracy", "accuracy_ci", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci", "tpr_at_0.1pct_fpr",
           "tpr_at_0.1pct_fpr_ci")
LFW, CELEBA = "${shared}/data/lfw-112", "${shared}/data/celeba-112"
CONFIG: dict[str, Any] = {
    "seed": 0,
    "data": {"target": {"source": LFW, "min_images": 12, "identities": 8, "max_per_identity": 12},
             "unseen": {"source": LFW, "min_images": 5, "max_images": 9, "identities": 10}, "other": None,
             "shadow": {"source": CELEBA, "min_images": 12, "identities": 8, "max_per_identity": 12},
             "shadow_unseen": {"source": LFW, "min_images": 3, "max_images": 4, "identities": 15},
             "shadow_other": None, "verification": CELEBA, "verification_pairs": 100},
    "model": {"backbone": "tiny", "options": {"input_size": 32}},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.1, "warmup_epochs": 0.5, "head_kwargs": {"s": 16.0, "m": 0.2}},
    "study": {"defenses": list(DEFENSES), "attacks": list(ATTACKS), "kinds": list(KINDS), "n_boot": 20,
              "public_images": 64, "attacker_public_images": 64, "adaptive_training": True},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared CPU
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def config_file(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("defend_cfg") / "defend.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture(scope="module")
def run(config_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], float]:
    out = tmp_path_factory.mktemp("defend_run")
    t0 = time.time()
    assert main(["defend", "--config", str(config_file), "--run", str(out), "--quiet"]) == 0
    return out, json.loads((out / "defenses.json").read_text()), time.time() - t0


def test_json_has_the_documented_keys(run: tuple[Path, dict[str, Any], float]) -> None:
    out, payload, _ = run
    rows = payload["results"]
    assert {r["defense"] for r in rows} == set(DEFENSES)
    keys = [(r["defense"], r["attack"], r["setting"], r["nonmember"], r["adaptive"]) for r in rows]
    assert len(keys) == len(set(keys))  # one row per defense x attack x setting x kind x attacker
    for r in rows:
        assert {"defense", "attack", "setting", "nonmember", "adaptive", "verification_accuracy",
                "verification_accuracy_std"} <= set(r)
        # the utility on each row is the released model's, as measured into its card
        folder = out / "target" if r["defense"] == "none" else out / "defended" / r["defense"]
        assert r["verification_accuracy"] == read_card(folder)["utility"]["verification_accuracy"]
        if "status" not in r:
            assert set(METRICS) <= set(r)
            assert 0.0 <= r["auc"] <= 1.0 and r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
    # every attack x setting x kind is there for the naive attacker, for every defense
    for d in DEFENSES:
        for a in ATTACKS:
            for s in ("A", "B"):
                for k in KINDS:
                    assert (d, a, s, k, False) in keys
    assert set(payload["defenses"]) == set(DEFENSES)
    for d in DEFENSES:
        f = payload["defenses"][d]
        assert {"stage", "removes_bn_surface", "defense", "utility", "model_dir"} <= set(f)
    md = (out / "defenses.md").read_text()
    assert "## Setting A" in md and "## Setting B" in md and SURFACE_REMOVED in md


def test_bn_removing_defense_reports_status_not_numbers(run: tuple[Path, dict[str, Any], float]) -> None:
    out, payload, _ = run
    assert not has_bn_statistics(load_backbone(out / "defended" / "groupnorm"))
    assert payload["defenses"]["groupnorm"]["removes_bn_surface"] is True
    gn = [r for r in payload["results"] if r["defense"] == "groupnorm"]
    bn_rows = [r for r in gn if r["attack"] in ("paper_bn_linear", "bn_calibrated")]
    assert len(bn_rows) == 2 * 2 * len(KINDS)
    for r in bn_rows:
        assert r["status"] == SURFACE_REMOVED
        assert not set(METRICS) & set(r)
    emb_rows = [r for r in gn if r["attack"] == "embedding_norm"]
    assert emb_rows and all(math.isfinite(r["auc"]) for r in emb_rows)
    # the adaptive attacker retrained its shadow with the same defense: a GroupNorm shadow, same recipe
    assert {r["setting"] for r in emb_rows if r["adaptive"]} == {"B"}
    assert not has_bn_statistics(load_backbone(out / "adaptive_shadow" / "groupnorm"))
    assert payload["defenses"]["groupnorm"]["recipe_mismatch_adaptive"] == []
    # BN defenses keep their BN numbers; the adaptive attacker (re-estimated shadow) is measured in setting B
    # for every attack, in setting A only for the attack that uses the shadow as its reference model
    re = [r for r in payload["results"] if r["defense"] == "bn_reestimate"]
    assert all("auc" in r for r in re)
    adaptive = {(r["attack"], r["setting"]) for r in re if r["adaptive"]}
    assert adaptive == {(a, "B") for a in ATTACKS} | {("bn_calibrated", "A")}
    assert not [r for r in payload["results"] if r["defense"] == "none" and r["adaptive"]]


def test_undefended_rows_equal_run_membership(run: tuple[Path, dict[str, Any], float]) -> None:
    from frleak.data.splits import MembershipSplit
    from frleak.membership import MembershipConfig, run_membership

    out, payload, _ = run
    split = MembershipSplit.load(out / "split.json")
    direct = run_membership(load_backbone(out / "target"), split,
                            MembershipConfig(attacks=ATTACKS, kinds=KINDS, n_boot=20, seed=0, identity_ks=()),
                            shadow=load_backbone(out / "shadow"), progress=False)["results"]
    direct = json.loads(json.dumps(direct, default=_json_default))  # the same JSON round trip (floats exact)
    mine = [r for r in payload["results"] if r["defense"] == "none"]
    drop = {"defense", "adaptive", "verification_accuracy", "verification_accuracy_std", "fit_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in mine] == \
        [{k: v for k, v in r.items() if k != "fit_seconds"} for r in direct]


def test_embedding_features_equal_the_bn_path(run: tuple[Path, dict[str, Any], float]) -> None:
    out, _, _ = run
    model = load_backbone(out / "target")
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    full = attack_inputs(model, images, batch_size=4)
    emb = inputs_from_features(FeatureSet({}, embed_with_mirror(model, images, batch_size=4), [], {"flip": True}))
    assert "paper" in full and "paper" not in emb
    for k in ("emb_norm", "flip_cos", "embedding"):
        np.testing.assert_allclose(emb[k], full[k], rtol=1e-5, atol=1e-6)


def test_rerun_reuses_models_and_results(run: tuple[Path, dict[str, Any], float], config_file: Path) -> None:
    out, payload, first = run
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("backbone.safetensors")}
    t0 = time.time()
    assert main(["defend", "--config", str(config_file), "--run", str(out), "--quiet"]) == 0
    again = json.loads((out / "defenses.json").read_text())
    assert again["results"] == payload["results"]
    assert all(again["defenses"][d].get("cached") for d in DEFENSES)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("backbone.safetensors")} == stamps  # nothing retrained
    assert time.time() - t0 < first


def test_bad_input_is_a_clear_error(run: tuple[Path, dict[str, Any], float], config_file: Path,
                                    capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out, _, _ = run
    assert main(["defend", "--config", str(config_file), "--run", str(tmp_path / "a"), "--defenses",
                 "none,bogus_defense", "--quiet"]) == 2
    assert "bogus_defense" in capsys.readouterr().err
    # a reused target must match the recipe: a different epoch count is refused, naming the folder and the key
    assert main(["defend", "--config", str(config_file), "--run", str(tmp_path / "b"), "--target", str(out / "target"),
                 "--split", str(out / "split.json"), "--set", "train.epochs=3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(out / "target") in err and "epochs" in err
