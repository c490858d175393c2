"""benchmarks/inversion_lfw.py: identity partition, run selection, aggregation over seeds (against numpy / scipy
by hand), and one end-to-end run on a tiny LFW target with a micro budget (real data, generator and evaluator)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import fisher_exact

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import inversion_lfw as bench  # noqa: E402
from frleak.errors import ConfigError, DataError  # noqa: E402


# ---- pure parts --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_mem,n_uns", [(40, 60), (158, 150), (7, 5)])
def test_partition_is_disjoint_balanced_and_seeded(n_mem: int, n_uns: int) -> None:
    mem, uns = [f"m{i}" for i in range(n_mem)], [f"u{i}" for i in range(n_uns)]
    part = bench.partition_identities(mem, uns, seed=3)
    n = min(n_mem, n_uns) // 2
    assert len(part["eval_members"]) == len(part["eval_unseen"]) == n
    assert not set(part["eval_members"]) & set(part["attacker_members"])
    assert not set(part["eval_unseen"]) & set(part["attacker_unseen"])
    assert sorted(part["eval_members"] + part["attacker_members"]) == sorted(mem)
    assert sorted(part["eval_unseen"] + part["attacker_unseen"]) == sorted(uns)
    assert part == bench.partition_identities(list(reversed(mem)), uns, seed=3)  # order of the input is irrelevant
    assert part != bench.partition_identities(mem, uns, seed=4)
    everything = bench.partition_identities(mem, uns, seed=3, attack_data="all")
    assert everything["attacker_members"] == sorted(mem)
    assert len(everything["eval_members"]) == len(everything["eval_unseen"]) == min(n_mem, n_uns)


def test_partition_refuses_too_few_and_bad_option() -> None:
    with pytest.raises(DataError, match="too few identities"):
        bench.partition_identities(["a", "b", "c"], ["x", "y"], seed=0)
    with pytest.raises(ConfigError, match="--attack-data"):
        bench.partition_identities(["a"] * 9, ["x"] * 9, seed=0, attack_data="some")


def test_selected_labels_add_controls_in_order() -> None:
    assert bench.selected_labels(None) == [r.label for r in bench.RUNS]
    assert bench.selected_labels("template_membership") == ["template", "template_membership", "unguided_targeted"]
    assert bench.selected_labels("gan_free,guided") == ["guided", "unguided", "gan_free", "gan_free_control"]
    with pytest.raises(ConfigError, match="unknown"):
        bench.selected_labels("guided,nope")


def _rec(label: str, seed: int, values: dict[str, float], n: int = 0, member: int = 0,
         recovered: tuple[str, ...] = ()) -> dict[str, Any]:
    spec = bench.SPECS[label]
    rec: dict[str, Any] = {"label": label, "method": spec.method, "mode": spec.mode, "seed": seed, "values": values,
                           "summary": {"n_images": n}, "wall_s": 1.0}
    if spec.mode == "untargeted":
        rec["counts"] = {"n": n, "member": member, "member_znorm": member, "recovered": list(recovered)}
    return rec


def test_aggregate_against_hand_computation() -> None:
    share_g, share_c = [0.75, 0.5, 0.625], [0.5, 0.5, 0.375]
    top1_t, top1_tm = [0.1, 0.2, 0.3], [0.2, 0.2, 0.5]
    per_seed = []
    for s in range(3):
        per_seed.append({
            "guided": _rec("guided", s, {"member_share": share_g[s]}, 8, int(share_g[s] * 8), (f"id{s}", "idX")),
            "unguided": _rec("unguided", s, {"member_share": share_c[s]}, 8, int(share_c[s] * 8)),
            "template": _rec("template", s, {"top1": top1_t[s]}),
            "template_membership": _rec("template_membership", s, {"top1": top1_tm[s]}),
        })
    rows = {r["label"]: r for r in bench.aggregate(per_seed)}
    g = rows["guided"]
    assert (g["method"], g["mode"], g["control"]) == ("guided", "untargeted", "unguided")
    assert g["member_share"] == pytest.approx(np.mean(share_g))
    assert g["std"]["member_share"] == pytest.approx(np.std(share_g, ddof=1))
    assert g["control_values"]["member_share"] == pytest.approx(np.mean(share_c))
    diff = np.subtract(share_g, share_c)
    assert g["delta"]["member_share"] == pytest.approx(diff.mean())
    assert g["delta_std"]["member_share"] == pytest.approx(diff.std(ddof=1))
    assert g["delta_per_seed"]["member_share"] == pytest.approx(diff.tolist())
    m, cm = sum(int(v * 8) for v in share_g), sum(int(v * 8) for v in share_c)
    assert g["pooled"]["member"] == m and g["pooled"]["n"] == 24
    assert g["pooled"]["fisher_p_greater"] == pytest.approx(fisher_exact([[m, 24 - m], [cm, 24 - cm]],
                                                                         alternative="greater")[1])
    assert g["pooled"]["identities_recovered_any_seed"] == 4  # id0, id1, id2, idX
    assert "control_values" not in rows["unguided"]
    tm = rows["template_membership"]
    assert tm["delta"]["top1"] == pytest.approx(np.mean(np.subtract(top1_tm, top1_t)))
    assert "control_values" not in rows["template"]  # its control (the chance floor) was not run


# ---- end to end on a tiny real target ----------------------------------------------------------------------------
TINY = bench.InvPreset("tiny", n_images=2, candidates=4, steps=1, seeds=2, targets=2, n_per_target=1,
                       targeted_candidates=2, gan_free_n_images=2, gan_free_steps=1, cohort=4, selection_transforms=1,
                       batch_size=16)


@pytest.fixture(scope="module")
def tiny_target(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1-epoch tiny BN net on 6 LFW people (3 member photos each) with 8 unseen people (3 photos each)."""
    from frleak.config import DataConfig, PoolConfig
    from frleak.data.prepare import build_split
    from frleak.targets import train_role
    from frleak.train import TrainConfig

    lfw = str(shared / "data" / "lfw-112")
    data = DataConfig(target=PoolConfig(lfw, 12, None, 6, max_per_identity=6), unseen=PoolConfig(lfw, 5, 9, 8, 3),
                      other=None, shadow=None, shadow_unseen=None, shadow_other=None, verification=None)
    split = build_split(data, 0)
    out = tmp_path_factory.mktemp("inv_bench")
    split.save(out / "split.json")
    train_role(split, "target", backbone="tiny", options={"input_size": 32},
               train=TrainConfig(epochs=1, batch_size=8, lr=0.05), out_dir=out / "target", progress=False)
    return out / "target", out / "split.json"


def test_run_benchmark_end_to_end(tiny_target: tuple[Path, Path], tmp_path: Path) -> None:
    torch.set_num_threads(1)
    target_dir, split_path = tiny_target
    payload = bench.run_benchmark(target_dir, split_path, TINY, generator="dcgan32_celeba", grid_dir=tmp_path)
    rows = payload["results"]
    keys = [(r["method"], r["mode"]) for r in rows]
    assert len(keys) == len(set(keys))  # one row per method x mode
    assert {r["method"] for r in rows} >= {"guided", "unguided", "template", "template_membership", "gan_free"}
    for r in rows:
        assert r["seeds"] == [0, 1]
        if r["mode"] == "untargeted":
            assert 0.0 <= r["member_share"] <= 1.0 and 0 <= r["identities_recovered"] <= 3
            assert r["identities_recovered"] <= r["n_images"]
        else:
            assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
            assert r["chance_top1"] == pytest.approx(1 / 6)  # top-k among all 6 member identities
        if r["control"] is not None:
            assert set(r["control_values"]) <= set(r["per_seed"])
            assert r["grids"] and all(Path(g).is_file() for g in r["grids"])
    # the attack is fitted on attacker identities only and judged on the others
    ids = payload["identities"]
    assert not set(ids["eval_members"]) & set(ids["attacker_members"])
    assert payload["attack"]["n_per_class"] >= 5 and 0.0 <= payload["attack"]["heldout_auc"] <= 1.0
    assert payload["evaluation"]["member_identities"] == payload["evaluation"]["distractor_identities"] == 3
    # targeted runs attack evaluation identities only
    for s in payload["runs"].values():
        assert set(s["template"]["targets"]) <= set(ids["eval_members"])
    payload.update(preset="tiny", machine={})
    md = bench.render_markdown(payload)
    for method in ("guided", "unguided", "template_membership", "gan_free"):
        assert f"| {method} |" in md
    assert "* guided (untargeted) vs unguided: Δ member_share" in md
    json.dumps(payload, default=str)  # JSON-able as written by write_results
    assert len(list(tmp_path.glob("reconstructions_seed*.npz"))) == 2
