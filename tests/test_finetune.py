"""Fine-tuning: a target / shadow can start from pretrained weights (``model.weights`` in a training config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frleak.errors import FrleakError
from frleak.io import safe_torch_load
from frleak.targets import build_model


def test_build_model_starts_from_the_pretrained_weights(mobilefacenet_ckpt: Path) -> None:
    model = build_model("mobilefacenet", {}, weights=str(mobilefacenet_ckpt))
    saved = safe_torch_load(mobilefacenet_ckpt)["net_state_dict"]
    own = model.state_dict()
    assert set(own) == set(saved)
    assert all(torch.equal(own[k], saved[k]) for k in own)
    # and a from-scratch model differs from it (the weights were really loaded)
    scratch = build_model("mobilefacenet", {})
    assert not torch.equal(scratch.state_dict()["conv1.conv.weight"], own["conv1.conv.weight"])


def test_weights_of_another_architecture_are_refused_by_name(mobilefacenet_ckpt: Path) -> None:
    with pytest.raises(FrleakError, match=str(mobilefacenet_ckpt.name)):
        build_model("iresnet18", {"width": 0.25, "input_size": 32}, weights=str(mobilefacenet_ckpt))


def test_frleak_model_folder_round_trip(tmp_path: Path) -> None:
    from frleak.models.checkpoint import save_backbone

    torch.manual_seed(3)
    src = build_model("tiny", {})
    save_backbone(src, tmp_path / "m", card={"note": "test"})
    dst = build_model("tiny", {}, weights=str(tmp_path / "m"))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
