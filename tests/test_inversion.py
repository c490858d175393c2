"""Model inversion guided by the membership attack (stage 2): objective, search, evaluation, CLI.

Oracles: ``attack.score`` (the torch attack must equal it); the PIL preprocessing path of frleak.data.images;
hand-computed BN statistics from forward hooks; hand-built galleries whose nearest identities are known; the
generator's own prior samples (the unguided control must be exactly those); bit-identical target state.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from frleak.attack_data import model_inputs
from frleak.attacks import create_attack, load_attack
from frleak.cli import main
from frleak.data.folder import Sample
from frleak.data.images import InputSpec, normalize, to_network_array
from frleak.data.splits import MembershipSplit, ModelSplit
from frleak.errors import ConfigError
from frleak.features import bn_features, bn_layers
from frleak.generators import Generator, load_generator
from frleak.inversion import (
    Gallery,
    InversionConfig,
    InversionObjective,
    ObjectiveWeights,
    PixelGenerator,
    bn_stat_prior,
    far_threshold,
    invert,
    save_grid,
    targeted_metrics,
    to_backbone_input,
    torch_attack,
    untargeted_metrics,
    znorm_stats,
)
from frleak.inversion.pipeline import RESULT_KEYS
from frleak.inversion.transforms import apply_transform, sample_transforms
from frleak.models import create_backbone
from frleak.models.checkpoint import save_backbone
from frleak.train import TrainConfig, train_backbone

torch.set_num_threads(1)


def smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """uint8 (n, 3, size, size): 8x8 random colour fields upsampled, a little like blurry faces."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 3, 8, 8), generator=g) * 255
    return F.interpolate(x, size=(size, size), mode="bilinear").round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def target() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_backbone("tiny", input_size=32)
    images, labels = smooth_images(96, 0), torch.arange(96) % 8
    train_backbone(model, images, labels, TrainConfig(epochs=3, batch_size=32, lr=0.05), progress=False)
    model.zero_grad(set_to_none=True)  # training leaves the last step's gradients; inversion must add none
    return model.eval()


@pytest.fixture(scope="module")
def attack_data(target: torch.nn.Module) -> tuple[dict[str, np.ndarray], np.ndarray]:
    members, _ = model_inputs(target, smooth_images(96, 0)[:48])
    non, _ = model_inputs(target, smooth_images(48, 1))
    X = {k: np.concatenate([members[k], non[k]]) for k in members}
    return X, np.r_[np.ones(48), np.zeros(48)]


@pytest.fixture(scope="module")
def attack(attack_data: tuple[dict[str, np.ndarray], np.ndarray]):  # noqa: ANN201
    X, y = attack_data
    return create_attack("paper_bn_linear").fit(X, y)


class TinyGenerator(Generator):
    """A small randomly initialised generator (z ~ U(-1, 1)^16 -> 32x32): a freshly initialised DCGAN (N(0, 0.02)
    weights) emits an almost constant image, this one varies with z, so optimisation has something to move."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.latent_shape, self.output_size, self.name, self.prior = (16,), (32, 32), "tiny_test", "uniform"
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 32 * 8 * 8), torch.nn.Unflatten(1, (32, 8, 8)), torch.nn.LeakyReLU(0.2),
            torch.nn.ConvTranspose2d(32, 16, 4, 2, 1), torch.nn.LeakyReLU(0.2),
            torch.nn.ConvTranspose2d(16, 3, 4, 2, 1), torch.nn.Tanh())
        self.freeze()

    def _synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(3 * latent)


@pytest.fixture(scope="module")
def generator() -> Generator:
    return TinyGenerator(3)


def small_cfg(**kw: Any) -> InversionConfig:
    base: dict[str, Any] = {"n_images": 3, "candidates": 12, "n_optimize": 6, "steps": 8, "selection_transforms": 3,
            "batch_size": 4, "progress": False}
    base.update(kw)
    return InversionConfig(**base)


# ---- the differentiable attack ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [
    ("paper_bn_linear", {}),
    ("bn_rich_linear", {}),
    ("paper_bn_linear", {"log": False, "C": 0.1}),
    ("bn_calibrated", {}),
    ("bn_mean_threshold", {}),
    ("embedding_norm", {}),
    ("flip_consistency", {}),
])
def test_torch_attack_equals_score(attack_data, name, params) -> None:  # noqa: ANN001
    X, y = attack_data
    X = dict(X)
    rng = np.random.default_rng(0)
    for k in ("paper", "normalized", "variance"):  # a reference model's distances, for the calibrated attack
        X[f"ref_{k}"] = X[k] * rng.uniform(0.5, 2.0, size=X[k].shape)
    att = create_attack(name, **params).fit(X, y)
    ta = torch_attack(att)
    logits = ta({k: torch.as_tensor(v) for k, v in X.items()})
    np.testing.assert_allclose(logits.detach().numpy(), att.score(X), rtol=1e-9, atol=1e-9)


def test_torch_attack_gradient_and_refusals(attack_data) -> None:  # noqa: ANN001
    X, y = attack_data
    ta = torch_attack(create_attack("paper_bn_linear").fit(X, y))
    d = torch.as_tensor(X["paper"][:4]).requires_grad_(True)
    ta({"paper": d}).sum().backward()
    assert d.grad is not None and torch.isfinite(d.grad).all() and d.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="no differentiable form"):
        torch_attack(create_attack("bn_gbm", max_iter=5).fit(X, y))
    with pytest.raises(ConfigError, match="not fitted"):
        torch_attack(create_attack("paper_bn_linear"))


# ---- preprocessing ---------------------------------------------------------------------------------------------
def _pil_vs_torch(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """Difference in grey levels between the PIL path (frleak.data.images) and to_backbone_input."""
    pil = normalize(torch.from_numpy(to_network_array(img, spec)).permute(2, 0, 1)[None], spec)
    unit = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    ours = to_backbone_input(unit, spec)
    assert ours.shape == pil.shape
    return ((ours - pil) * spec.std).numpy()


MFN_SPEC = InputSpec(size=(112, 96), crop=(0, 8, 112, 96), mean=127.5, std=128.0)


@pytest.mark.parametrize("spec", [MFN_SPEC, InputSpec(size=(32, 32)), InputSpec(size=(64, 48), crop=(0, 8, 112, 96))])
def test_preprocess_matches_pil_on_real_face(lfw: Path, spec: InputSpec) -> None:
    photo = Image.open(sorted(lfw.glob("Aaron_Peirsol/*.jpg"))[0]).convert("RGB")
    for side in (64, 32, 112):  # a generator's output size, and the aligned frame itself
        diff = _pil_vs_torch(photo.resize((side, side), Image.Resampling.BILINEAR), spec)
        assert np.abs(diff).mean() < 0.75, (side, np.abs(diff).mean())  # PIL rounds to uint8: ~0.25 alone
        assert np.abs(diff).max() < 3.0, (side, np.abs(diff).max())


def test_preprocess_is_differentiable_and_checks_shape() -> None:
    x = (smooth_images(2, 5, 64).float() / 127.5 - 1).requires_grad_(True)
    to_backbone_input(x, MFN_SPEC).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="RGB"):
        to_backbone_input(torch.zeros(1, 1, 8, 8), MFN_SPEC)


# ---- the objective ---------------------------------------------------------------------------------------------
def _hooked_stats(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: inputs.__setitem__(n, a[0].detach()))
             for n, m in bn_layers(model)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return inputs


def test_bn_prior_against_hand_computed(target) -> None:  # noqa: ANN001
    images = smooth_images(3, 7).float() / 127.5 - 1
    x = to_backbone_input(images, target.input_spec)
    raw = _hooked_stats(target, x)
    running: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        n: (m.running_mean, m.running_var) for n, m in bn_layers(target)}  # type: ignore[misc]
    sample = torch.zeros(3, dtype=torch.float64)
    batch = torch.zeros((), dtype=torch.float64)
    for n, v in raw.items():
        v64, (rm, rv) = v.double(), (t.double() for t in running[n])
        if v.ndim == 4:  # per image, over space; batch: over images and space (DeepInversion)
            sample += (v64.mean((2, 3)) - rm).norm(dim=1) + (v64.var((2, 3), unbiased=False) - rv).norm(dim=1)
            batch += (v64.mean((0, 2, 3)) - rm).norm() + (v64.var((0, 2, 3), unbiased=False) - rv).norm()
        else:  # BatchNorm1d: no spatial variance per image
            sample += (v64 - rm).norm(dim=1)
            batch += (v64.mean(0) - rm).norm() + (v64.var(0, unbiased=False) - rv).norm()
    stats = {n: (v.mean((2, 3)) if v.ndim == 4 else v,
                 v.var((2, 3), unbiased=False) if v.ndim == 4 else torch.zeros_like(v)) for n, v in raw.items()}
    running32 = {n: (a.float(), b.float()) for n, (a, b) in running.items()}
    np.testing.assert_allclose(bn_stat_prior(stats, running32, "sample").numpy(), sample.numpy(), rtol=1e-4)
    np.testing.assert_allclose(bn_stat_prior(stats, running32, "batch").sum().item(), batch.item(), rtol=1e-4)


def test_objective_features_equal_bn_features(target, attack) -> None:  # noqa: ANN001
    images = smooth_images(4, 8).float() / 127.5 - 1
    obj = InversionObjective(target, weights=ObjectiveWeights(), attack=attack, flip=True)
    fwd = obj.forward_target(images)
    x = to_backbone_input(images, target.input_spec)
    f1, e1 = bn_features(target, x, ("paper",))
    f2, _ = bn_features(target, torch.flip(x, dims=(-1,)), ("paper",))
    torch.testing.assert_close(fwd["paper"], (f1["paper"] + f2["paper"]) / 2)
    torch.testing.assert_close(fwd["embedding"], e1)


def test_optimisation_raises_membership_score(target, attack, generator) -> None:  # noqa: ANN001
    r = invert(target, generator, small_cfg(method="guided", steps=15, lr=0.05, augment=False), attack=attack)
    h = r.history
    assert len(h["loss"]) == 16
    assert h["membership"][-1] > h["membership"][0]
    assert np.mean(np.diff(h["loss"]) < 0) >= 0.9  # the loss falls at (almost) every step
    assert bool((r.end["membership"] > r.start["membership"]).all())  # every optimised face gained
    assert r.images.shape == (3, 3, 32, 32) and r.images.abs().max() <= 1.0
    # the final images are the optimised latents' images, best selection score first
    torch.testing.assert_close(r.images, generator.synthesize(r.latents))
    assert bool((r.scores[:-1] >= r.scores[1:]).all())


@pytest.mark.shared
def test_shared_dcgan32_guided(shared, target, attack) -> None:  # noqa: ANN001
    gen = load_generator("dcgan32_celeba")
    r = invert(target, gen, small_cfg(method="guided", steps=10), attack=attack)
    u = invert(target, gen, small_cfg(method="unguided", steps=10), attack=attack)
    assert r.history["membership"][-1] > r.history["membership"][0]
    assert r.membership is not None and u.membership is not None and r.membership.mean() > u.membership.mean()


def test_same_seed_same_reconstructions(target, attack, generator) -> None:  # noqa: ANN001
    a = invert(target, generator, small_cfg(seed=4), attack=attack)
    b = invert(target, generator, small_cfg(seed=4), attack=attack)
    c = invert(target, generator, small_cfg(seed=5), attack=attack)
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    assert a.history == b.history
    assert not torch.equal(a.images, c.images)
    plain = invert(target, generator, small_cfg(seed=4, augment=False), attack=attack)
    assert not torch.equal(a.latents, plain.latents)  # the per-step augmentation is live
    # the batch size only changes speed: every loss is per image
    d = invert(target, generator, small_cfg(seed=4, batch_size=6), attack=attack)
    torch.testing.assert_close(d.images, a.images, atol=1e-5, rtol=0)


def test_membership_weight_zero_is_the_unguided_control(target, attack, generator) -> None:  # noqa: ANN001
    cfg = small_cfg(seed=2)
    unguided = invert(target, generator, replace(cfg, method="unguided"), attack=attack)
    zero = invert(target, generator, replace(cfg, membership_weight=0.0), attack=attack)
    no_attack = invert(target, generator, replace(cfg, method="unguided"))
    assert torch.equal(unguided.images, zero.images) and torch.equal(unguided.images, no_attack.images)
    # with nothing else depending on the image, the control is the first prior samples of the seeded stream
    prior = generator.sample_latent(cfg.candidates, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003))
    assert torch.equal(unguided.latents, prior[:cfg.n_images])
    guided = invert(target, generator, cfg, attack=attack)
    assert not torch.equal(guided.images, unguided.images)
    assert guided.membership is not None and unguided.membership is not None  # logged for both
    assert guided.membership.mean() > unguided.membership.mean()
    assert cfg.control() == replace(cfg, method="unguided")


def test_target_is_unchanged(target, attack, generator) -> None:  # noqa: ANN001
    before = {k: v.clone() for k, v in target.state_dict().items()}
    target.train()  # a mode that inversion must restore (it runs the target in eval mode)
    try:
        invert(target, generator, small_cfg(method="guided", bn_weight=0.1), attack=attack)
        assert all(m.training for m in target.modules())
    finally:
        target.eval()
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is None for p in generator.parameters())


def test_targeted_template_methods(target, attack, generator) -> None:  # noqa: ANN001
    templates = F.normalize(target.eval()(normalize(smooth_images(2, 9), target.input_spec)).detach(), dim=1)
    cfg = small_cfg(mode="targeted", method="template", steps=12)
    r = invert(target, generator, cfg, attack=attack, templates=templates)  # the attack is only logged here
    assert r.target_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert r.template_cos is not None
    assert r.history["template_cos"][-1] > r.history["template_cos"][0]
    rm = invert(target, generator, replace(cfg, method="template_membership"),
                attack=attack, templates=templates)
    assert rm.history["membership"][-1] > r.history["membership"][-1]  # the membership term pulls
    assert cfg.control() is not None and cfg.control().method == "unguided"  # type: ignore[union-attr]
    tm = replace(cfg, method="template_membership")
    assert tm.control() is not None and tm.control().method == "template"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="targeted"):
        InversionConfig(method="template").validate()
    with pytest.raises(ConfigError, match="templates"):
        invert(target, generator, cfg)


def test_gan_free_pixels(target, attack) -> None:  # noqa: ANN001
    cfg = small_cfg(method="gan_free", steps=10, image_size=(24, 24))
    r = invert(target, None, cfg, attack=attack)
    assert r.images.shape == (3, 3, 24, 24) and r.images.abs().max() <= 1.0
    assert r.weights.bn > 0 and r.weights.tv > 0 and r.weights.template == 0
    assert r.history["membership"][-1] > r.history["membership"][0]
    assert r.history["loss"][-1] < r.history["loss"][0]
    ctrl = cfg.control()
    assert ctrl is not None and ctrl.method == "gan_free" and ctrl.weights().membership == 0
    assert PixelGenerator((24, 24)).latent_shape == (3, 24, 24)


def test_tree_attack_ranks_but_cannot_guide(target, attack_data, attack, generator) -> None:  # noqa: ANN001
    X, y = attack_data
    trees = create_attack("bn_gbm", max_iter=10, min_samples_leaf=5).fit(X, y)
    with pytest.raises(ConfigError, match="no differentiable form"):
        invert(target, generator, small_cfg(), attack=trees)
    r = invert(target, generator, small_cfg(), attack=attack, selection_attack=trees)
    assert r.images.shape[0] == 3
    with pytest.raises(ConfigError, match="attack"):
        invert(target, generator, small_cfg(method="guided"))


def test_transforms_identity_first_and_seeded() -> None:
    x = smooth_images(2, 3).float() / 127.5 - 1
    p = sample_transforms(5, torch.Generator().manual_seed(0))
    q = sample_transforms(5, torch.Generator().manual_seed(0))
    assert torch.equal(apply_transform(x, p, 0), x)
    assert all(torch.equal(apply_transform(x, p, i), apply_transform(x, q, i)) for i in range(5))
    assert float((apply_transform(x, p, 3) - x).abs().mean()) > 0


# ---- evaluation ------------------------------------------------------------------------------------------------
def _unit(*v: float) -> list[float]:
    a = np.asarray(v, dtype=np.float64)
    return (a / np.linalg.norm(a)).tolist()


def test_untargeted_metrics_hand_example() -> None:
    # members A (x axis) and B (y axis), distractors C (z) and D (w); 2 photos each, slightly apart
    e = torch.tensor([_unit(1, .1, 0, 0), _unit(1, -.1, 0, 0), _unit(.1, 1, 0, 0), _unit(-.1, 1, 0, 0)],
                     dtype=torch.float32)
    d = torch.tensor([_unit(0, 0, 1, .1), _unit(0, 0, 1, -.1), _unit(0, 0, .1, 1), _unit(0, 0, -.1, 1)],
                     dtype=torch.float32)
    member = Gallery(e, np.array(["A", "A", "B", "B"]))
    distractor = Gallery(d, np.array(["C", "C", "D", "D"]))
    recon = torch.tensor([_unit(1, 0, 0, 0), _unit(.9, .1, 0, 0), _unit(0, 0, 0, 1), _unit(.2, 1, 0, .1)],
                         dtype=torch.float32)
    m = untargeted_metrics(recon, member, distractor, far=0.01)
    pi = m["per_image"]
    assert pi["nearest_identity"] == ["A", "A", "D", "B"]
    assert m["member_share"] == pytest.approx(0.75) and m["chance_member_share"] == 0.5
    # impostor pairs: 8 photos x 3 other centroids; scores +-0.0995 (A/B and C/D photos lean 0.1 towards each
    # other) or 0. FAR 0.01 of 24 pairs accepts none: threshold just above 0.0995, not resolved (24 < 100)
    assert m["n_impostor_pairs"] == 24 and not m["far_resolved"]
    assert m["threshold"] == pytest.approx(0.1 / np.sqrt(1.01), rel=1e-6)
    assert pi["accepted"] == [True, True, True, True]
    assert m["member_ids_recovered"] == 2 and m["distractor_ids_recovered"] == 1
    assert m["member_ids_recovered_share"] == 1.0
    np.testing.assert_allclose(m["mean_nearest_member_cos"], float((recon @ e.T).max(1).values.mean()), rtol=1e-6)
    # a looser FAR (0.2 of 24 pairs: 4 impostors may pass) lowers the threshold to just above 0
    m2 = untargeted_metrics(recon, member, distractor, far=0.2)
    assert 0 < m2["threshold"] < 1e-6 and m2["far_resolved"]
    # unequal identity counts: the larger group is subsampled to the smaller
    m3 = untargeted_metrics(recon, member, distractor.subset([0, 1]), far=0.01)
    assert m3["member_identities"] == 1 and m3["distractor_identities"] == 1


def test_znorm_corrects_a_hub_identity() -> None:
    # identity H (a distractor) is a hub: every generated face leans towards it. A reconstruction that is 0.5 from
    # member A and 0.55 from H is nearest to H in raw cosine, but far more typical of A once each identity's
    # cosine is measured against what plain generator faces (the cohort) reach with it.
    e = torch.tensor([_unit(1, 0, 0, 0)] * 2 + [_unit(0, 1, 0, 0)] * 2, dtype=torch.float32)
    member = Gallery(e[:2], np.array(["A", "A"]))
    distractor = Gallery(e[2:], np.array(["H", "H"]))
    g = torch.Generator().manual_seed(0)
    cohort = F.normalize(torch.tensor([[0.0, 0.6, 0.0, 0.8]]) + 0.05 * torch.randn((40, 4), generator=g), dim=1)
    recon = torch.tensor([_unit(0.5, 0.55, 0, 0.67)], dtype=torch.float32)
    m = untargeted_metrics(recon, member, distractor, far=0.5, cohort=cohort)
    assert m["per_image"]["nearest_identity"] == ["H"] and m["member_share"] == 0.0
    assert m["per_image"]["nearest_identity_znorm"] == ["A"] and m["member_share_znorm"] == 1.0
    mu, sd = znorm_stats(cohort, member.centroids(["A"]))
    np.testing.assert_allclose(mu, (cohort @ e[0]).mean().item(), rtol=1e-5)
    assert "member_share_znorm" not in untargeted_metrics(recon, member, distractor)


def test_far_threshold() -> None:
    scores = np.arange(1000) / 1000.0  # 0.000 ... 0.999
    t, resolved = far_threshold(scores, 1e-2)
    assert resolved and (scores >= t).sum() == 10  # floor(0.01 * 1000) impostors pass
    tied = np.r_[np.full(5, 0.9), np.zeros(995)]  # ties at the cut: none of them may pass
    t3, _ = far_threshold(tied, 2e-3)
    assert (tied >= t3).sum() == 0 and t3 > 0.9
    t2, resolved2 = far_threshold(scores[:50], 1e-3)
    assert not resolved2 and (scores[:50] >= t2).sum() == 0


def test_targeted_metrics_hand_example() -> None:
    names = np.array(["A", "A", "B", "B", "C", "C"])
    e = torch.tensor([_unit(1, .1, 0), _unit(1, -.1, 0), _unit(0, 1, .1), _unit(0, 1, -.1), _unit(.1, 0, 1),
                      _unit(-.1, 0, 1)], dtype=torch.float32)
    recon = torch.tensor([_unit(1, 0, 0), _unit(0, 1, .2), _unit(1, .9, 0)], dtype=torch.float32)
    m = targeted_metrics(recon, Gallery(e, names), ["A", "A", "B"])
    assert m["per_image"]["predicted"] == ["A", "B", "A"]
    assert m["top1"] == pytest.approx(1 / 3)
    assert m["top_k"] == 3 and m["top5"] == 1.0  # fewer than 5 identities: all are in the top-k
    assert m["targets_recovered"] == pytest.approx(0.5)  # A recovered, B not
    knn = [max(float(recon[0] @ e[0]), float(recon[0] @ e[1])), max(float(recon[1] @ e[0]), float(recon[1] @ e[1])),
           max(float(recon[2] @ e[2]), float(recon[2] @ e[3]))]
    assert m["knn_cos"] == pytest.approx(np.mean(knn), rel=1e-5)
    assert m["knn_dist"] == pytest.approx(np.mean([np.sqrt(2 - 2 * k) for k in knn]), rel=1e-4)


def test_save_grid(tmp_path: Path) -> None:
    recon = smooth_images(3, 1).float() / 127.5 - 1
    real = [smooth_images(2, 2, 112), None, smooth_images(5, 3, 112)]
    path = save_grid(tmp_path / "g.png", recon, real, ["a", "b", "c"], cell=40, max_real=3)
    img = Image.open(path)
    assert img.size[0] == 4 * 42 + 2 and img.size[1] == 3 * (40 + 2 + 14) + 2


# ---- CLI -------------------------------------------------------------------------------------------------------
def _write_faces(root: Path, ident: str, n: int, seed: int) -> list[Sample]:
    (root / ident).mkdir(parents=True, exist_ok=True)
    out = []
    for i, img in enumerate(smooth_images(n, seed, 64)):
        p = root / ident / f"{ident}_{i:04d}.png"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(p)
        out.append(Sample(ident, str(p.resolve())))
    return out


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, target, attack) -> dict[str, Path]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("inv_cli")
    members = [s for i in range(4) for s in _write_faces(root / "lfw", f"m{i}", 3, 10 + i)]
    unseen = [s for i in range(4) for s in _write_faces(root / "lfw", f"u{i}", 2, 20 + i)]
    split = MembershipSplit(target=ModelSplit(members=members, unseen_identity=unseen))
    split.save(root / "split.json")
    save_backbone(target, root / "target", {"split_digest": split.digest()})
    torch.manual_seed(1)
    save_backbone(create_backbone("tiny", input_size=32).eval(), root / "evaluator")
    attack_path = attack.save(root / "attack")
    X = {"paper": np.abs(np.random.default_rng(0).normal(size=(3, 5))) + 1e-3}
    np.testing.assert_allclose(load_attack(attack_path).score(X), attack.score(X))  # the saved attack loads
    return {"root": root, "split": root / "split.json", "target": root / "target", "evaluator": root / "evaluator",
            "attack": attack_path}


def _cli(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["invert", "--target", str(files["target"]), "--attack", str(files["attack"]),
            "--generator", "dcgan32_celeba", "--generator-opt", "random_init=true", "--n", "2", "--candidates", "6",
            "--steps", "3", "--selection-transforms", "2", "--split", str(files["split"]),
            "--evaluator-weights", str(files["evaluator"]), "--out", str(out), "--json", *extra]


@pytest.mark.parametrize("mode,method", [("untargeted", "guided"), ("targeted", "template_membership")])
def test_cli_end_to_end(cli_files, tmp_path: Path, capsys, mode: str, method: str) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    assert main(_cli(cli_files, out, "--mode", mode, "--method", method, "--targets", "2")) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "result.json").read_text())
    assert printed == saved and set(RESULT_KEYS) <= set(saved)
    assert saved["method"] == method and saved["control"]["method"] == ("unguided" if method == "guided"
                                                                         else "template")
    for key in ("metrics",):
        assert "member_share" in saved[key]["untargeted"] and "member_ids_recovered" in saved[key]["untargeted"]
        assert "member_share" in saved["control"][key]["untargeted"]
        assert "member_share_znorm" in saved[key]["untargeted"]
    if mode == "targeted":
        assert len(saved["targets"]) == 2 and "top1" in saved["metrics"]["targeted"]
        assert "top5" in saved["control"]["metrics"]["targeted"]
    for name in ("grid", "grid_control"):
        assert Image.open(saved["files"][name]).format == "PNG"
    with np.load(out / "reconstructions.npz") as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape[0] == (2 if mode == "untargeted" else 4)


def test_cli_text_output(cli_files, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    argv = [a for a in _cli(cli_files, tmp_path / "t") if a != "--json"]
    assert main([*argv, "--method", "gan_free", "--image-size", "16", "--no-control"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gan_free (untargeted): 2 images") and "member share" in out and "result.json" in out
    assert json.loads((tmp_path / "t" / "result.json").read_text())["control"] is None


def test_cli_errors_are_one_line(cli_files, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    bad = tmp_path / "bad_generator.pt"
    torch.save({"foo": torch.zeros(3)}, bad)
    argv = _cli(cli_files, tmp_path / "o")
    i = argv.index("--generator-opt")
    argv[i:i + 2] = ["--generator-weights", str(bad)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("frleak invert: error:") and "bad_generator.pt" in err and "\n" not in err
    # a latent size that does not fit the weights
    weights = tmp_path / "dcgan100.pt"
    torch.save(load_generator("dcgan32_celeba", random_init=True).state_dict(), weights)
    argv[argv.index("--generator-weights") + 1] = str(weights)
    assert main([*argv, "--generator-opt", "nz=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dcgan100.pt" in err and "shape" in err and "\n" not in err
    # a split the target was not trained on is refused
    other = MembershipSplit(target=ModelSplit(members=[Sample("x", str(cli_files["root"] / "lfw/m0/m0_0000.png"))]))
    other.save(tmp_path / "other.json")
    argv = _cli(cli_files, tmp_path / "o")
    argv[argv.index("--split") + 1] = str(tmp_path / "other.json")
    assert main(argv) == 2
    assert "not the split the target was trained on" in capsys.readouterr().err
    # the evaluator must not be the target
    argv = _cli(cli_files, tmp_path / "o")
    argv[argv.index("--evaluator-weights") + 1] = str(cli_files["target"])
    assert main(argv) == 2
    assert "independent" in capsys.readouterr().err
