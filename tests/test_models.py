"""Backbones: build and run, BatchNorm counts of the paper's reading, checkpoints load by name, mismatches are
reported clearly, the margin head is never part of a saved model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from frleak.errors import CheckpointError, ConfigError
from frleak.models import create_backbone
from frleak.models.checkpoint import load_backbone, save_backbone
from frleak.registry import BACKBONES, HEADS


def n_bn(m: nn.Module) -> int:
    return sum(isinstance(x, (nn.BatchNorm1d, nn.BatchNorm2d)) for x in m.modules())


@pytest.mark.parametrize(("name", "kwargs", "bn", "dim"), [
    ("iresnet18", {"width": 0.25, "input_size": 32}, 31, 512),
    ("iresnet34", {"width": 0.25, "input_size": 32}, 55, 512),
    ("iresnet50", {"width": 0.125, "input_size": 32}, 79, 512),
    ("iresnet100", {"width": 0.125, "input_size": 32}, 154, 512),
    ("mobilefacenet", {}, 50, 128),
    ("tiny", {}, 5, 32),
])
def test_backbones_run_and_count_bn(name: str, kwargs: dict, bn: int, dim: int) -> None:
    m = create_backbone(name, **kwargs).eval()
    assert n_bn(m) == bn
    x = torch.randn(2, 3, *m.input_spec.size)
    assert m(x).shape == (2, dim)


def test_full_size_iresnet50_matches_insightface_parameter_count() -> None:
    m = create_backbone("iresnet50")
    # insightface arcface_torch's iresnet50 at 112x112 with a 512-d embedding has 43.59 M parameters
    assert abs(sum(p.numel() for p in m.parameters()) / 1e6 - 43.59) < 0.01


def test_norm_variants_have_no_batchnorm() -> None:
    for norm in ("gn", "ln"):
        m = create_backbone("iresnet18", width=0.25, input_size=32, norm=norm)
        assert n_bn(m) == 0
        assert m.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_registry_errors_name_the_choice() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'iresnet50'"):
        create_backbone("iresnet5O")
    assert {"iresnet18", "iresnet50", "mobilefacenet", "tiny"} <= set(BACKBONES.names())
    assert {"arcface", "cosface", "softmax"} <= set(HEADS.names())


def test_shared_mobilefacenet_loads_strict_and_safe(mobilefacenet_ckpt: Path) -> None:
    m = load_backbone(mobilefacenet_ckpt, "mobilefacenet")  # weights_only loading (plain tensors)
    assert not m.training and m.input_spec.size == (112, 96) and m.input_spec.crop == (0, 8, 112, 96)


def test_save_load_round_trip_has_no_head(tmp_path: Path) -> None:
    m = create_backbone("tiny", input_size=32).eval()
    save_backbone(m, tmp_path / "model", {"note": "x"})
    back = load_backbone(tmp_path / "model")
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(m(x), back(x))
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "model" / "backbone.safetensors")).keys()
    assert not any("head" in k or k.startswith("weight") for k in keys)


def test_mismatched_checkpoint_is_reported_by_key(tmp_path: Path) -> None:
    sd = create_backbone("tiny", input_size=32).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    sd.pop("fc.bias")
    sd["fc.weight"] = torch.zeros(5, 5)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_backbone(tmp_path / "bad.pth", "tiny", input_size=32)
    msg = str(err.value)
    assert "fc.bias" in msg and "extra.weight" in msg and "fc.weight" in msg and "bad.pth" in msg
    with pytest.raises(CheckpointError, match="say which architecture"):
        load_backbone(tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(tmp_path / "missing.pth", "tiny")


def test_margin_heads_add_margin_to_true_class_only() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 1])
    for name, kw in (("arcface", {"s": 10.0, "m": 0.5}), ("cosface", {"s": 10.0, "m": 0.35})):
        head = HEADS.create(name, embedding_dim=8, num_classes=3, **kw)
        logits = head(x, y)
        cos = head.cosine(x)
        off = torch.ones_like(cos, dtype=torch.bool)
        off[torch.arange(4), y] = False
        assert torch.allclose(logits[off], 10.0 * cos[off], atol=1e-5)
        assert (logits[~off] < 10.0 * cos[~off]).all()  # the margin lowers the true-class logit
