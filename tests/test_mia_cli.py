"""`frleak train` + `frleak mia` end to end on a micro real setup: the CLI's numbers equal a direct library call,
and a saved attack scores like the one in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import small_identity_folder

from frleak.cli import main

MICRO = [
    "--set", "data.unseen.min_images=2", "--set", "data.unseen.max_images=null", "--set", "data.unseen.identities=6",
    "--set", "data.other=null", "--set", "data.shadow=null", "--set", "data.verification=null",
    "--set", "model.backbone=tiny", "--set", "model.options={input_size: 32}",
    "--set", "train.epochs=2", "--set", "train.batch_size=16",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> Path:
    root = tmp_path_factory.mktemp("mia_cli")
    data = small_identity_folder(lfw, root / "faces", identities=14, per_identity=8, min_images=8)
    # 8 people with 8 photos are private (4 members each), the others unseen
    args = ["train", "--out", str(root / "target"), "--set", f"data.target={{source: {data}, min_images: 8, "
            "identities: 8}", "--set", f"data.unseen.source={data}", *MICRO]
    assert main(args) == 0
    return root


def test_train_writes_model_card_and_split(trained: Path) -> None:
    card = json.loads((trained / "target" / "model_card.json").read_text())
    assert card["arch"]["name"] == "tiny" and card["role"] == "target" and card["recipe"]["epochs"] == 2
    assert (trained / "target" / "split.json").is_file() and (trained / "target" / "config.resolved.yaml").is_file()


def test_mia_cli_matches_library(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from frleak.data.splits import MembershipSplit
    from frleak.membership import MembershipConfig, run_membership
    from frleak.models.checkpoint import load_backbone

    t = trained / "target"
    args = ["mia", "--target", str(t), "--split", str(t / "split.json"), "--settings", "A",
            "--attacks", "paper_bn_linear,embedding_norm", "--kinds", "same_identity,unseen_identity",
            "--n-boot", "50", "--out", str(trained / "mia"), "--save-attacks", str(trained / "attacks"), "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.split("\nnot saved")[0])
    direct = run_membership(load_backbone(t), MembershipSplit.load(t / "split.json"),
                            MembershipConfig(attacks=("paper_bn_linear", "embedding_norm"), settings=("A",),
                                             kinds=("same_identity", "unseen_identity"), n_boot=50), progress=False)
    assert [r.get("auc") for r in printed["results"]] == [r.get("auc") for r in direct["results"]]
    assert (trained / "mia" / "results.json").is_file() and (trained / "mia" / "roc_A_same_identity.png").is_file()
    assert (trained / "attacks" / "paper_bn_linear_unseen_identity.skops").is_file()


def test_mia_cli_bad_split_is_one_line(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mia", "--target", str(trained / "target"), "--split", str(trained / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
