"""Defenses: every registered defense trains a tiny backbone into a released model that loads and runs; the
release-time defenses change only BatchNorm buffers (re-estimation against a direct oracle, noise seeded and of
the requested scale); DP-SGD trains, reports a finite epsilon, reaches its target epsilon, has per-sample gradients
equal to one-sample backward passes through the ArcFace head, and resumes exactly; GroupNorm/LayerNorm releases
have no BN surface; early stopping stops; augmentation is seeded and is the identity at zero strength."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import Interrupt, StopAfter

from frleak.defenses import (
    DPMarginHead,
    adaptive_reference,
    augment_batch,
    create_defense,
    defense_from_card,
    epsilon_for,
    noise_bn_statistics,
    reestimate_bn_statistics,
    release,
    train_with_defense,
)
from frleak.errors import ConfigError, FrleakError
from frleak.features import bn_layers
from frleak.models import create_backbone
from frleak.models.base import Backbone
from frleak.models.checkpoint import load_backbone, read_card
from frleak.registry import DEFENSES, HEADS
from frleak.train import TrainConfig, train_backbone

CFG = TrainConfig(epochs=2, batch_size=8, lr=0.1, warmup_epochs=0.5, head_kwargs={"s": 16.0, "m": 0.2}, seed=1)
ALL = ("none", "dpsgd", "bn_reestimate", "bn_noise", "groupnorm", "layernorm", "weight_decay", "label_smoothing",
       "early_stopping", "augmentation")


def toy_set(classes: int = 4, per_class: int = 10, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A separable set: each class a random mean colour plus pixel noise; uint8 (N, 3, size, size), labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(classes, 3, 1, 1, generator=g) * 200 + 20
    x = colours.repeat_interleave(per_class, 0) + 20 * torch.randn(classes * per_class, 3, size, size, generator=g)
    return x.clamp(0, 255).to(torch.uint8), torch.arange(classes).repeat_interleave(per_class)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: one thread is faster, and far faster on a shared, busy CPU (no OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return toy_set()


@pytest.fixture(scope="module")
def public() -> torch.Tensor:
    return toy_set(classes=3, per_class=8, seed=7)[0]


@pytest.fixture(scope="module")
def trained_bn(data: tuple[torch.Tensor, torch.Tensor]) -> Backbone:
    torch.manual_seed(0)
    model = create_backbone("tiny", input_size=32)
    train_backbone(model, *data, CFG, progress=False)
    return model.eval()


def first_bn(model: torch.nn.Module) -> Any:
    """The first BatchNorm layer (the tiny net's body[1], after the first convolution)."""
    return bn_layers(model)[0][1]


def params_and_buffers(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return ({k: v.detach().clone() for k, v in model.named_parameters()},
            {k: v.detach().clone() for k, v in model.named_buffers()})


# ---- interface ---------------------------------------------------------------------------------------------------
def test_registry_knows_every_defense_and_checks_parameters() -> None:
    assert set(ALL) <= set(DEFENSES.names())
    with pytest.raises(ConfigError, match="sigmaa"):
        create_defense("bn_noise", sigmaa=0.1)
    with pytest.raises(ConfigError, match="bn_noise"):
        create_defense("bn_nosie")
    with pytest.raises(ConfigError, match="sigma"):
        create_defense("bn_noise", sigma=-1.0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        create_defense("label_smoothing", label_smoothing=1.5)
    with pytest.raises(ConfigError, match="accountant"):
        create_defense("dpsgd", accountant="gdp2")
    with pytest.raises(ConfigError, match="bad parameter value"):
        create_defense("bn_noise", sigma="a lot")


@pytest.mark.parametrize("name", ALL)
def test_card_round_trips_through_json(name: str) -> None:
    d = create_defense(name)
    card = json.loads(json.dumps(d.card()))
    assert card["name"] == name
    again = defense_from_card({"arch": {}, "defense": card})
    assert again.name == name and again.params() == json.loads(json.dumps(d.params()))


@pytest.mark.parametrize("name", ALL)
def test_every_defense_releases_a_model_that_loads_and_runs(name: str, data: tuple[torch.Tensor, torch.Tensor],
                                                             public: torch.Tensor, tmp_path: Path) -> None:
    torch.manual_seed(0)
    d = create_defense(name)
    model, result = train_with_defense(d, "tiny", {"input_size": 32}, *data, CFG, public_images=public,
                                       out_dir=tmp_path, progress=False)
    loaded = load_backbone(tmp_path)
    x = (public[:5].float() - 127.5) / 127.5
    with torch.no_grad():
        out = loaded(x)
        assert out.shape == (5, 32) and torch.isfinite(out).all()
        assert torch.equal(out, model.eval()(x))  # what was written is the finalized model
    card = read_card(tmp_path)
    assert card["defense"]["name"] == name and result["defense"]["name"] == name
    assert card["defense"]["removes_bn_surface"] == d.removes_bn_surface
    if d.removes_bn_surface:
        with pytest.raises(FrleakError, match="attack"):
            bn_layers(loaded)
    else:
        assert len(bn_layers(loaded)) == 5


# ---- release-time defenses on BN statistics ------------------------------------------------------------------
def test_reestimation_changes_only_bn_buffers(trained_bn: Backbone, public: torch.Tensor) -> None:
    model = copy.deepcopy(trained_bn)
    p0, b0 = params_and_buffers(model)
    create_defense("bn_reestimate", batch_size=8).finalize(model, public)
    p1, b1 = params_and_buffers(model)
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    stats = [k for k in b0 if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 10 and all(not torch.equal(b0[k], b1[k]) for k in stats)
    assert not model.training and all(not m.training for m in model.modules())


def test_reestimation_matches_the_direct_statistics_and_forgets_the_old_ones(trained_bn: Backbone,
                                                                             public: torch.Tensor) -> None:
    # one batch holding every public image, no flips: the first BN layer's statistics must be exactly the
    # per-channel mean and unbiased variance of the first convolution's output over the public images
    model = reestimate_bn_statistics(copy.deepcopy(trained_bn), public, batch_size=len(public), flip=False)
    with torch.no_grad():
        v = cast(Any, trained_bn).body[0]((public.float() - 127.5) / 127.5)
    bn = first_bn(model)
    torch.testing.assert_close(bn.running_mean, v.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, v.transpose(0, 1).flatten(1).var(dim=1), rtol=1e-4, atol=1e-5)
    # the result does not depend on the statistics the model had before (the private training batches)
    other = noise_bn_statistics(copy.deepcopy(trained_bn), sigma=2.0, seed=5)
    again = reestimate_bn_statistics(other, public, batch_size=8, seed=3)
    ref = reestimate_bn_statistics(copy.deepcopy(trained_bn), public, batch_size=8, seed=3)
    for (k, a), (_, b) in zip(again.named_buffers(), ref.named_buffers()):
        assert torch.equal(a, b), k


def test_bn_defenses_need_public_images_and_a_bn_model(trained_bn: Backbone, public: torch.Tensor) -> None:
    gn = create_backbone("tiny", input_size=32, norm="gn")
    for name in ("bn_reestimate", "bn_noise"):
        with pytest.raises(ConfigError, match="has none"):
            create_defense(name).finalize(gn, public)
    d = create_defense("bn_reestimate")
    with pytest.raises(ConfigError, match="public images"):
        d.finalize(copy.deepcopy(trained_bn), None)
    with pytest.raises(ConfigError, match="expects"):
        d.finalize(copy.deepcopy(trained_bn), public[:, :, :16, :16].contiguous())


def test_bn_noise_is_seeded_of_the_requested_scale_and_changes_only_bn_buffers(trained_bn: Backbone) -> None:
    sigma = 0.3
    p0, b0 = params_and_buffers(trained_bn)
    a = create_defense("bn_noise", sigma=sigma, seed=4).finalize(copy.deepcopy(trained_bn))
    b = create_defense("bn_noise", sigma=sigma, seed=4).finalize(copy.deepcopy(trained_bn))
    c = create_defense("bn_noise", sigma=sigma, seed=5).finalize(copy.deepcopy(trained_bn))
    pa, ba = params_and_buffers(a)
    assert all(torch.equal(p0[k], pa[k]) for k in p0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(first_bn(a).running_mean, first_bn(c).running_mean)
    z_mean, z_logstd = [], []
    for name, m in bn_layers(a):
        mean0, var0 = b0[f"{name}.running_mean"], b0[f"{name}.running_var"]
        mean1, var1 = ba[f"{name}.running_mean"], ba[f"{name}.running_var"]
        assert (var1 > 0).all()
        z_mean.append((mean1 - mean0) / torch.sqrt(var0 + m.eps))
        z_logstd.append(0.5 * torch.log(var1 / var0))
    for z in (torch.cat(z_mean), torch.cat(z_logstd)):  # 160 channels: the sample std is within ~ +-11 % of sigma
        assert len(z) == 160 and 0.75 * sigma < float(z.std()) < 1.25 * sigma and abs(float(z.mean())) < 0.1
    zero = create_defense("bn_noise", sigma=0.0).finalize(copy.deepcopy(trained_bn))
    assert all(torch.equal(x, y) for x, y in zip(zero.state_dict().values(), trained_bn.state_dict().values()))


def test_release_rewrites_the_published_model(trained_bn: Backbone, tmp_path: Path) -> None:
    from frleak.models.checkpoint import save_backbone

    save_backbone(trained_bn, tmp_path, {"recipe": CFG.to_dict()})
    model = release(create_defense("bn_noise", sigma=0.5, seed=2), copy.deepcopy(trained_bn), tmp_path)
    loaded = load_backbone(tmp_path)
    assert torch.equal(first_bn(loaded).running_mean, first_bn(model).running_mean)
    assert not torch.equal(first_bn(loaded).running_mean, first_bn(trained_bn).running_mean)
    card = read_card(tmp_path)
    assert card["recipe"] == CFG.to_dict() and card["defense"]["params"] == {"sigma": 0.5, "seed": 2}
    assert defense_from_card(card).params() == {"sigma": 0.5, "seed": 2}


def test_adaptive_reference_noises_a_copy_with_the_attackers_own_draw(trained_bn: Backbone,
                                                                      public: torch.Tensor) -> None:
    defense = create_defense("bn_noise", sigma=0.3, seed=4)
    before = copy.deepcopy(trained_bn.state_dict())
    ref = adaptive_reference(defense, trained_bn)
    assert all(torch.equal(before[k], v) for k, v in trained_bn.state_dict().items())  # input untouched
    defended = defense.finalize(copy.deepcopy(trained_bn))
    assert not torch.equal(first_bn(ref).running_mean, first_bn(defended).running_mean)  # not the defender's seed
    same = adaptive_reference(defense, trained_bn, seed=4)
    assert torch.equal(first_bn(same).running_mean, first_bn(defended).running_mean)
    reest = adaptive_reference(create_defense("bn_reestimate"), trained_bn, public)
    assert not torch.equal(first_bn(reest).running_mean, first_bn(trained_bn).running_mean)
    gn = adaptive_reference(create_defense("groupnorm"), trained_bn)  # training-time: the shadow is trained so
    assert all(torch.equal(before[k], v) for k, v in gn.state_dict().items())


# ---- architecture and recipe defenses ----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "norm"), [("groupnorm", "gn"), ("layernorm", "ln"), ("dpsgd", "gn")])
def test_norm_defenses_build_models_without_bn(name: str, norm: str) -> None:
    options, _ = create_defense(name).configure({"input_size": 32}, CFG)
    assert options == {"input_size": 32, "norm": norm}
    with pytest.raises(FrleakError):
        bn_layers(create_backbone("tiny", **options))


def test_recipe_defenses_change_the_recipe() -> None:
    _, cfg = create_defense("weight_decay").configure({}, CFG)
    assert cfg == replace(CFG, weight_decay=5e-3)
    _, cfg = create_defense("label_smoothing", label_smoothing=0.2).configure({}, CFG)
    assert cfg == replace(CFG, label_smoothing=0.2)
    _, cfg = create_defense("early_stopping", epoch_fraction=0.5).configure({}, replace(CFG, epochs=10))
    assert cfg.epochs == 5


def test_early_stopping_stops_at_the_accuracy_level(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    level = 0.5
    torch.manual_seed(0)
    d = create_defense("early_stopping", max_train_acc=level)
    _, result = train_with_defense(d, "tiny", {"input_size": 32}, *data, replace(CFG, epochs=12), progress=False)
    accs = [h["train_acc"] for h in result["history"]]
    assert result["stopped_early"] and len(accs) < 12
    assert accs[-1] >= level and all(a < level for a in accs[:-1])
    assert d.result_ == {"epochs_run": len(accs), "epochs_planned": 12, "final_train_acc": accs[-1],
                         "stopped_early": True}


# ---- augmentation ------------------------------------------------------------------------------------------------
def test_augmentation_is_seeded_and_the_identity_at_zero_strength(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = data[0][:6]

    def run(seed: int, **kw: object) -> torch.Tensor:
        return augment_batch(x, torch.Generator().manual_seed(seed), **kw)  # type: ignore[arg-type]

    a, b, c = run(0), run(0), run(1)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a.int() - x.int()).abs().float().mean() > 2  # it does change the images
    ident = run(0, scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0.0, contrast=0.0, saturation=0.0)
    assert (ident.int() - x.int()).abs().max() <= 1  # bilinear resampling at pixel centres: exact up to rounding
    xf = x.float()
    shifted = augment_batch(xf, torch.Generator().manual_seed(0), brightness=0.0, contrast=0.0, saturation=0.0)
    assert shifted.dtype == torch.float32 and float(shifted.min()) >= 0 and float(shifted.max()) <= 255




@pytest.mark.parametrize("name", ["augmentation", "dpsgd"])
def test_seeded_training_defenses_resume_exactly(name: str, data: tuple[torch.Tensor, torch.Tensor],
                                                 tmp_path: Path) -> None:
    cfg = replace(CFG, epochs=3)
    kw = {"noise_multiplier": 1.0} if name == "dpsgd" else {}
    torch.manual_seed(0)
    full, _ = train_with_defense(create_defense(name, **kw), "tiny", {"input_size": 32}, *data, cfg,
                                 out_dir=tmp_path / "full", progress=False)
    torch.manual_seed(0)
    with pytest.raises(Interrupt):
        train_with_defense(create_defense(name, **kw), "tiny", {"input_size": 32}, *data, cfg,
                           out_dir=tmp_path / "resumed", progress=False, callbacks=[StopAfter(2)])
    torch.manual_seed(99)
    d = create_defense(name, **kw)
    resumed, _ = train_with_defense(d, "tiny", {"input_size": 32}, *data, cfg, out_dir=tmp_path / "resumed",
                                    resume=True, progress=False)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    if name == "dpsgd":
        assert read_card(tmp_path / "full")["defense"] == read_card(tmp_path / "resumed")["defense"]
        # resuming a finished run trains nothing and still reports the budget spent
        d = create_defense(name, **kw)
        again, _ = train_with_defense(d, "tiny", {"input_size": 32}, *data, cfg, out_dir=tmp_path / "resumed",
                                      resume=True, progress=False)
        assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), again.state_dict().values()))
        assert d.card() == read_card(tmp_path / "full")["defense"]


# ---- DP-SGD ------------------------------------------------------------------------------------------------------
def test_dpsgd_trains_and_reports_a_finite_epsilon(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    d = create_defense("dpsgd", noise_multiplier=0.7, max_grad_norm=1.0)
    model, result = train_with_defense(d, "tiny", {"input_size": 32}, *data, replace(CFG, epochs=8),
                                       progress=False)
    losses = [h["loss"] for h in result["history"]]
    assert min(losses[-2:]) < 0.7 * losses[0], losses
    r = result["defense"]["result"]
    n, steps = len(data[0]), 8 * (len(data[0]) // CFG.batch_size)
    assert r["steps"] == steps and r["sample_rate"] == CFG.batch_size / n and r["delta"] == min(1e-5, n ** -1.1)
    assert math.isfinite(r["epsilon"]) and r["epsilon"] > 0
    assert r["epsilon"] == pytest.approx(epsilon_for(0.7, CFG.batch_size / n, steps, r["delta"]))
    # more noise, less epsilon (the accountant is monotone)
    assert epsilon_for(1.4, CFG.batch_size / n, steps, r["delta"]) < r["epsilon"]
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # opacus' traces are gone


def test_dpsgd_reaches_its_target_epsilon(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    d = create_defense("dpsgd", target_epsilon=3.0, delta=1e-4)
    _, result = train_with_defense(d, "tiny", {"input_size": 32}, *data, CFG, progress=False)
    r = result["defense"]["result"]
    assert 0.9 * 3.0 < r["epsilon"] <= 3.0 * 1.02 and r["delta"] == 1e-4


def test_dpsgd_refuses_a_batchnorm_backbone(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(ConfigError, match="norm='gn'"):
        train_backbone(create_backbone("tiny", input_size=32), *data, CFG, progress=False,
                       callbacks=create_defense("dpsgd").callbacks())


@pytest.mark.parametrize("head_name", ["arcface", "cosface"])
def test_dpsgd_per_sample_gradients_equal_one_sample_backward_passes(head_name: str) -> None:
    """Opacus' per-sample gradients through the re-plumbed margin head and a GroupNorm backbone equal those of
    separate backward passes of each sample's loss through the original modules (the oracle)."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = create_backbone("tiny", input_size=32, norm="gn").double()  # float64: a tight oracle
    head = HEADS.create(head_name, embedding_dim=32, num_classes=5, s=16.0, m=0.3).double()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 3, 3, 1])
    expected = []
    for i in range(4):
        model.zero_grad()
        head.zero_grad()
        F.cross_entropy(head(model(x[i:i + 1]), y[i:i + 1]), y[i:i + 1]).backward()
        expected.append([cast(torch.Tensor, p.grad).clone() for p in [*model.parameters(), head.weight]])
    dp_head = DPMarginHead(head)
    gsms = [GradSampleModule(model), GradSampleModule(dp_head.cosines)]
    F.cross_entropy(dp_head(model(x), y), y).backward()
    for j, p in enumerate([*model.parameters(), head.weight]):
        per_sample = cast(Any, p).grad_sample
        assert per_sample.shape == (4, *p.shape)
        for i in range(4):
            torch.testing.assert_close(per_sample[i], expected[i][j], rtol=1e-9, atol=1e-12)
    for g in gsms:
        g.cleanup()
