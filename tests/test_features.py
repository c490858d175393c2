"""BN features: the paper's distance by hand, invariants (buffers, modes, hooks restored), gradients, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from frleak.errors import FrleakError
from frleak.features import bn_features, bn_layers, extract_features
from frleak.models import create_backbone


class OneLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).mean((2, 3))


def test_paper_distance_matches_hand_computation() -> None:
    torch.manual_seed(0)
    net = OneLayer()
    net.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    net.bn.running_var.copy_(torch.tensor([1.0, 2.0, 0.5, 4.0]))
    x = torch.randn(5, 3, 6, 7)
    feats, _ = bn_features(net, x, ("paper", "normalized", "variance", "channels"))
    v = net.conv(x)  # the BN input
    mu = v.mean(dim=(2, 3))  # per-channel spatial mean (5, 4)
    rm, rv = net.bn.running_mean, net.bn.running_var
    d = ((mu - rm) ** 2).sum(1) / 4  # ||mean(v) - u||^2 / c
    n = (((mu - rm) / torch.sqrt(rv + 1e-5)) ** 2).sum(1) / 4
    var = v.var(dim=(2, 3), unbiased=False)
    q = ((torch.log(var + 1e-5) - torch.log(rv + 1e-5)) ** 2).sum(1) / 4
    assert torch.allclose(feats["paper"][:, 0], d, atol=1e-6)
    assert torch.allclose(feats["normalized"][:, 0], n, atol=1e-6)
    assert torch.allclose(feats["variance"][:, 0], q, atol=1e-5)
    assert torch.allclose(feats["channels"], (mu - rm) / torch.sqrt(rv + 1e-5), atol=1e-6)


def test_extraction_leaves_model_untouched() -> None:
    torch.manual_seed(0)
    m = create_backbone("iresnet18", width=0.25, input_size=32)
    m.train()
    m.layer2.eval()  # a mixed-mode model: every module's own mode must come back
    m(torch.randn(8, 3, 32, 32))  # give BN non-trivial running stats
    before = {k: v.clone() for k, v in m.state_dict().items()}
    modes = {n: mod.training for n, mod in m.named_modules()}
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    fs = extract_features(m, images, kinds=("paper", "normalized", "variance"), batch_size=4, flip=True)
    assert fs.features["paper"].shape == (6, 31) and fs.embeddings.shape == (6, 1024)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k  # bit-identical, num_batches_tracked included
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert all(not mod._forward_pre_hooks for mod in m.modules())


def test_hooks_removed_after_an_exception() -> None:
    m = create_backbone("tiny", input_size=32)
    with pytest.raises(RuntimeError):
        bn_features(m, torch.randn(2, 3, 16, 16))  # wrong input size fails mid-forward
    assert all(not mod._forward_pre_hooks for mod in m.modules())


def test_features_are_differentiable_wrt_input() -> None:
    m = create_backbone("tiny", input_size=32)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    feats, _ = bn_features(m, x, ("paper",))
    feats["paper"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_model_without_batchnorm_is_a_clear_error() -> None:
    with pytest.raises(FrleakError, match="no BatchNorm"):
        bn_layers(create_backbone("tiny", input_size=32, norm="gn"))


def test_layer_order_is_module_order() -> None:
    names = [n for n, _ in bn_layers(create_backbone("iresnet18", width=0.25, input_size=32))]
    assert names[0] == "bn1" and names[1] == "layer1.0.bn1" and names[-2:] == ["bn2", "features"]
