"""Loading insightface arcface_torch ``backbone.pth`` files by name, and the checkpoint error reports.

Oracle for the key names and shapes: insightface ``recognition/arcface_torch/backbones/iresnet.py`` (deepinsight/
insightface, read for this test; nothing copied). What that file defines, written out here as data:

* stem: ``conv1`` Conv2d(3, 64, 3x3, no bias), ``bn1`` BatchNorm2d(64), ``prelu`` PReLU(64);
* ``layer1..layer4`` with planes 64, 128, 256, 512 and (2,2,2,2) / (3,4,6,3) / (3,4,14,3) / (3,13,30,3) blocks for
  IResNet-18 / 34 / 50 / 100; every stage has stride 2, so block 0 of each stage has
  ``downsample = Sequential(conv1x1(inplanes, planes, stride 2), BatchNorm2d(planes))``;
* IBasicBlock, registered in this order: ``bn1`` BN(inplanes), ``conv1`` conv3x3(inplanes, planes), ``bn2``
  BN(planes), ``prelu`` PReLU(planes), ``conv2`` conv3x3(planes, planes, stride), ``bn3`` BN(planes),
  ``downsample``;
* head: ``bn2`` BatchNorm2d(512), ``dropout`` (no tensors), ``fc`` Linear(512 * 7 * 7, 512), ``features``
  BatchNorm1d(512) (its weight frozen at 1);
* every BatchNorm contributes ``weight, bias, running_mean, running_var, num_batches_tracked`` (the last a scalar).

arcface_torch saves ``torch.save(backbone.module.state_dict(), "backbone.pth")`` (plain tensors, no wrapper);
older scripts saved the DDP/DataParallel model itself, whose keys carry a ``module.`` prefix.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from frleak.errors import CheckpointError
from frleak.models.base import create_backbone
from frleak.models.checkpoint import load_backbone, load_state_dict_checked

STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


def insightface_iresnet_keys(depth: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every state_dict entry of arcface_torch's iresnet{depth}, in registration order."""
    keys: list[tuple[str, tuple[int, ...]]] = [("conv1.weight", (64, 3, 3, 3)), *_bn("bn1", 64),
                                               ("prelu.weight", (64,))]
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), STAGES[depth]), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            keys += [*_bn(f"{p}.bn1", inplanes), (f"{p}.conv1.weight", (planes, inplanes, 3, 3)),
                     *_bn(f"{p}.bn2", planes), (f"{p}.prelu.weight", (planes,)),
                     (f"{p}.conv2.weight", (planes, planes, 3, 3)), *_bn(f"{p}.bn3", planes)]
            if b == 0:
                keys += [(f"{p}.downsample.0.weight", (planes, inplanes, 1, 1)), *_bn(f"{p}.downsample.1", planes)]
            inplanes = planes
    keys += [*_bn("bn2", 512), ("fc.weight", (512, 512 * 7 * 7)), ("fc.bias", (512,)), *_bn("features", 512)]
    return keys


@pytest.mark.parametrize("depth", [18, 34, 50, 100])
def test_iresnet_state_dict_is_insightface_layout(depth: int) -> None:
    model = create_backbone(f"iresnet{depth}")
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == insightface_iresnet_keys(depth)  # names, shapes and order
    n_bn = sum(1 for k, _ in ours if k.endswith("running_mean"))
    assert n_bn == 3 * sum(STAGES[depth]) + 4 + 3  # 3 per block, 1 per downsample, bn1 + bn2 + features
    assert model.get_parameter("features.weight").requires_grad is False


def _random_state(depth: int, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """A trained-looking state_dict (every tensor random, so a mis-assigned key would be caught)."""
    g = torch.Generator().manual_seed(seed)
    model = create_backbone(f"iresnet{depth}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in model.state_dict().items():
        out[k] = (torch.randint(1, 1000, v.shape, generator=g) if not v.dtype.is_floating_point
                  else torch.rand(v.shape, generator=g) + (0.5 if "running_var" in k else 0.0)).to(v.dtype)
    return out


@pytest.mark.parametrize(("depth", "prefix"), [(50, ""), (18, "module.")])
def test_arcface_torch_backbone_pth_loads_by_name(tmp_path: Path, depth: int, prefix: str) -> None:
    state = _random_state(depth)
    path = tmp_path / "backbone.pth"
    torch.save(OrderedDict((prefix + k, v) for k, v in state.items()), path)
    model = load_backbone(path, f"iresnet{depth}")  # weights_only loading: a plain state_dict is safe
    assert not model.training
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 512)


def test_mismatches_are_reported_by_name(tmp_path: Path) -> None:
    state = _random_state(18)
    del state["layer2.1.bn3.running_var"]
    state["head.kernel"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(512, 512 * 4 * 4)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_backbone(path, "iresnet18")
    msg = str(err.value)
    assert str(path) in msg
    assert "1 missing key(s) (e.g. layer2.1.bn3.running_var)" in msg
    assert "1 unexpected key(s) (e.g. head.kernel)" in msg
    assert "fc.weight: checkpoint (512, 8192) vs model (512, 25088)" in msg


def test_non_strict_load_returns_the_report() -> None:
    model = create_backbone("iresnet18")
    state = _random_state(18)
    del state["features.bias"]
    state["extra.thing"] = torch.ones(1)
    report = load_state_dict_checked(model, state, "<mem>", strict=False)
    assert report == {"missing": ["features.bias"], "unexpected": ["extra.thing"]}
    assert torch.equal(model.state_dict()["fc.bias"], state["fc.bias"])  # the rest did load
    with pytest.raises(CheckpointError, match="shape mismatch"):  # shapes are never forgiven
        load_state_dict_checked(model, {**state, "fc.bias": torch.zeros(7)}, "<mem>", strict=False)


def test_pickled_objects_need_trust(tmp_path: Path) -> None:
    state = _random_state(18)
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(network="r18", lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="trust"):
        load_backbone(path, "iresnet18")
    model = load_backbone(path, "iresnet18", trust=True)
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_shared_mobilefacenet_loads_weights_only(mobilefacenet_ckpt: Path) -> None:
    raw = torch.load(mobilefacenet_ckpt, map_location="cpu", weights_only=True)  # plain tensors: safe loading works
    assert "net_state_dict" in raw
    model = load_backbone(mobilefacenet_ckpt, "mobilefacenet")  # trust=False
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in raw["net_state_dict"].items())
    assert sum(1 for k in sd if k.endswith("running_mean")) == 50
