"""Training: the loss goes down on a tiny real set; resuming after an interrupt equals an uninterrupted run;
the released model has no head and carries its recipe."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tests.conftest import Interrupt, StopAfter, small_identity_folder

from frleak.data.folder import scan_identity_folder
from frleak.data.prepare import load_training_set
from frleak.errors import CheckpointError, ConfigError
from frleak.models import create_backbone
from frleak.train import TrainConfig, train_backbone

CFG = TrainConfig(epochs=4, batch_size=16, lr=0.05, warmup_epochs=0.5, head_kwargs={"s": 16.0, "m": 0.2}, seed=3)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> tuple[torch.Tensor, torch.Tensor]:
    root = small_identity_folder(lfw, tmp_path_factory.mktemp("train"), identities=6, per_identity=8, min_images=8)
    spec = create_backbone("tiny", input_size=32).input_spec
    images, labels, _ = load_training_set(scan_identity_folder(root), spec, progress=False)
    return images, labels


def test_loss_decreases(tiny_set: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    model = create_backbone("tiny", input_size=32)
    hist = train_backbone(model, *tiny_set, replace(CFG, epochs=8), progress=False)["history"]
    assert hist[-1]["loss"] < 0.7 * hist[0]["loss"]




def test_resume_equals_uninterrupted(tiny_set: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = create_backbone("tiny", input_size=32)
    train_backbone(full, *tiny_set, CFG, out_dir=tmp_path / "full", progress=False)
    torch.manual_seed(0)
    first = create_backbone("tiny", input_size=32)
    with pytest.raises(Interrupt):
        train_backbone(first, *tiny_set, CFG, out_dir=tmp_path / "resumed", progress=False, callbacks=[StopAfter(2)])
    assert not (tmp_path / "resumed" / "backbone.safetensors").exists()
    torch.manual_seed(123)  # a different global RNG state must not matter
    second = create_backbone("tiny", input_size=32)
    train_backbone(second, *tiny_set, CFG, out_dir=tmp_path / "resumed", resume=True, progress=False)
    for (k, a), (_, b) in zip(full.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), k
    card = json.loads((tmp_path / "resumed" / "model_card.json").read_text())
    assert card["recipe"]["epochs"] == 4 and card["arch"]["name"] == "tiny" and card["epochs_run"] == 4


def test_resume_with_another_recipe_is_refused(tiny_set: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    model = create_backbone("tiny", input_size=32)
    train_backbone(model, *tiny_set, replace(CFG, epochs=1), out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="lr"):
        train_backbone(model, *tiny_set, replace(CFG, epochs=1, lr=0.5), out_dir=tmp_path, resume=True,
                       progress=False)


def test_bad_inputs_are_clear_errors(tiny_set: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = tiny_set
    model = create_backbone("tiny", input_size=32)
    with pytest.raises(ConfigError, match="expects"):
        train_backbone(model, images[:, :, :16, :16].contiguous(), labels, CFG, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        train_backbone(model, images, labels, replace(CFG, batch_size=1), progress=False)
    with pytest.raises(ConfigError, match="unknown margin head"):
        train_backbone(model, images, labels, replace(CFG, head="arcfce"), progress=False)
