"""Model inversion guided by the membership attack (arXiv 2401.13719, stage 2): search, optimise, select.

Following Plug & Play Attacks (Struppek et al., ICML 2022), per target (one in untargeted mode, one per leaked
template in targeted mode):

1. **candidate search**: sample ``candidates`` latents from the generator's prior, score each face by the
   objective, keep the ``n_optimize`` best (lowest loss);
2. **optimisation**: Adam on those latents for ``steps`` steps (``betas=(0.1, 0.1)`` as PPA: nearly sign-gradient
   steps of size ``lr``, little momentum), each step followed by the generator's projection (clamp for a box prior);
3. **final selection**: score each optimised face averaged over ``selection_transforms`` small random transforms
   (:mod:`frleak.inversion.transforms`) and keep the ``n_images`` best.

Every image's loss depends on that image only (per-sample BN prior, eval-mode networks), so the batch size changes
nothing but speed. Determinism: the candidates of target k come from ``torch.Generator`` seeded with
``seed * 1_000_003 + k``, the transforms from ``seed * 1_000_003 - 1``; Adam on CPU is deterministic.

Methods (``InversionConfig.method``; the defaults they imply are in :data:`METHOD_DEFAULTS` and docs/inversion.md):

``guided``               membership term only (the paper's stage 2, untargeted)
``unguided``             the control: the same pipeline and budget without the membership term. With the default
                         weights nothing else depends on the image, so every candidate ties, the first
                         ``n_optimize`` are kept, Adam takes zero steps and the selection ties too: the control is
                         ``n_images`` plain samples of the generator's prior, drawn from the same seeded stream
``template``             similarity to the leaked gallery template of the target identity (targeted)
``template_membership``  template + membership term (targeted)
``gan_free``             pixels optimised directly under membership + BN-statistics + TV + l2 priors (DeepInversion)

In targeted mode ``guided`` / ``unguided`` ignore the templates' content (they only set the number of targets):
each target gets its own candidate pool, and the targeted metrics of these rows are the chance floor of the
protocol (docs/inversion.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from frleak.attacks.base import MembershipAttack
from frleak.errors import ConfigError
from frleak.generators.base import Generator
from frleak.inversion.differentiable import is_differentiable
from frleak.inversion.gan_free import PixelGenerator
from frleak.inversion.objective import BN_PRIOR_MODES, InversionObjective, ObjectiveWeights
from frleak.inversion.transforms import apply_transform, sample_transforms

METHODS = ("guided", "unguided", "template", "template_membership", "gan_free")
MODES = ("untargeted", "targeted")
TEMPLATE_METHODS = ("template", "template_membership")

#: method -> default weights and learning rate (None in InversionConfig means "take this").
METHOD_DEFAULTS: dict[str, dict[str, float]] = {
    "guided": {"membership": 1.0, "template": 0.0, "bn": 0.0, "tv": 0.0, "l2": 0.0, "lr": 0.01},
    "unguided": {"membership": 0.0, "template": 0.0, "bn": 0.0, "tv": 0.0, "l2": 0.0, "lr": 0.01},
    "template": {"membership": 0.0, "template": 10.0, "bn": 0.0, "tv": 0.0, "l2": 0.0, "lr": 0.01},
    "template_membership": {"membership": 1.0, "template": 10.0, "bn": 0.0, "tv": 0.0, "l2": 0.0, "lr": 0.01},
    "gan_free": {"membership": 1.0, "template": 10.0, "bn": 0.01, "tv": 1.0, "l2": 0.01, "lr": 0.05},
}
#: the control of each method: the same pipeline without the membership term (see docs/inversion.md)
CONTROLS: dict[str, str | None] = {"guided": "unguided", "template_membership": "template",
                                   "template": "unguided", "gan_free": "gan_free", "unguided": None}


@dataclass(frozen=True)
class InversionConfig:
    """One inversion run. Weights left at None take the method's default (:data:`METHOD_DEFAULTS`).

    Sizes are per target (untargeted: one target). ``n_optimize`` None = ``min(candidates, 2 * n_images)``.
    ``image_size``: GAN-free resolution (None: the generator's output size if one is given, else 64x64).
    """

    method: str = "guided"
    mode: str = "untargeted"
    n_images: int = 16
    candidates: int = 256
    n_optimize: int | None = None
    steps: int = 100
    lr: float | None = None
    betas: tuple[float, float] = (0.1, 0.1)
    membership_weight: float | None = None
    template_weight: float | None = None
    bn_weight: float | None = None
    latent_weight: float = 0.0
    tv_weight: float | None = None
    l2_weight: float | None = None
    bn_prior: str = "sample"
    flip: bool = True
    selection_transforms: int = 10
    augment: bool = True
    image_size: tuple[int, int] | None = None
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def optimize_count(self) -> int:
        return self.n_optimize if self.n_optimize is not None else min(self.candidates, 2 * self.n_images)

    def weights(self) -> ObjectiveWeights:
        d = METHOD_DEFAULTS[self.method]
        mem = d["membership"] if self.membership_weight is None else self.membership_weight
        tmpl = d["template"] if self.template_weight is None else self.template_weight
        if self.method == "gan_free" and self.mode == "untargeted":
            tmpl = 0.0 if self.template_weight is None else tmpl
        return ObjectiveWeights(
            membership=float(mem), template=float(tmpl),
            bn=float(d["bn"] if self.bn_weight is None else self.bn_weight), latent=float(self.latent_weight),
            tv=float(d["tv"] if self.tv_weight is None else self.tv_weight),
            l2=float(d["l2"] if self.l2_weight is None else self.l2_weight))

    def learning_rate(self) -> float:
        return float(METHOD_DEFAULTS[self.method]["lr"] if self.lr is None else self.lr)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown inversion method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.mode not in MODES:
            raise ConfigError(f"unknown inversion mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.method in TEMPLATE_METHODS and self.mode != "targeted":
            raise ConfigError(f"method {self.method!r} needs --mode targeted (it matches a leaked template)")
        if self.method == "unguided" and self.membership_weight:
            raise ConfigError("method 'unguided' is the control without the membership term: membership_weight "
                              "must be 0 (use method 'guided' instead)")
        if self.method == "template" and self.membership_weight:
            raise ConfigError("method 'template' has no membership term: use 'template_membership'")
        if self.mode == "targeted" and self.method in TEMPLATE_METHODS and self.weights().template <= 0:
            raise ConfigError(f"method {self.method!r} needs template_weight > 0")
        checks = [(self.n_images >= 1, "n_images must be >= 1"), (self.steps >= 0, "steps must be >= 0"),
                  (self.candidates >= 1, "candidates must be >= 1"),
                  (self.optimize_count >= self.n_images,
                   f"n_optimize ({self.optimize_count}) must be >= n_images ({self.n_images})"),
                  (self.candidates >= self.optimize_count,
                   f"candidates ({self.candidates}) must be >= n_optimize ({self.optimize_count}); raise "
                   "--candidates or lower --n"),
                  (self.learning_rate() > 0, "lr must be > 0"),
                  (self.selection_transforms >= 1, "selection_transforms must be >= 1"),
                  (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.bn_prior in BN_PRIOR_MODES, f"bn_prior must be one of {', '.join(BN_PRIOR_MODES)}"),
                  (all(0.0 <= b < 1.0 for b in self.betas), "betas must be in [0, 1)")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"inversion config: {msg}")

    def control(self) -> InversionConfig | None:
        """The control run of this config: same everything, without the membership term (None for unguided)."""
        name = CONTROLS[self.method]
        if name is None:
            return None
        if name == self.method:  # gan_free: its own pixel pipeline minus the membership term
            return replace(self, membership_weight=0.0)
        return replace(self, method=name, membership_weight=None,
                       template_weight=self.template_weight if name in TEMPLATE_METHODS else None)


@dataclass
class InversionResult:
    """Reconstructions of one run, grouped by target (untargeted: one target), best first within a target.

    images (N, 3, H, W) in [-1, 1]; latents (N, *latent_shape); scores (N,) the selection score (higher =
    better, averaged over transforms); target_index (N,) the template index (0 in untargeted mode); membership /
    template_cos (N,) the attack logit / template cosine of the final untransformed image (None when absent);
    history: per optimisation step (index 0 = before the first step), the mean of every term over all optimised
    latents; start / end: per optimised latent, every term before and after optimisation; selected: rows of the
    optimised set that were kept; candidate_loss: the search-stage loss of every optimised latent."""

    images: torch.Tensor
    latents: torch.Tensor
    scores: torch.Tensor
    target_index: torch.Tensor
    membership: torch.Tensor | None
    template_cos: torch.Tensor | None
    history: dict[str, list[float]]
    start: dict[str, torch.Tensor]
    end: dict[str, torch.Tensor]
    selected: torch.Tensor
    candidate_loss: torch.Tensor
    config: InversionConfig
    weights: ObjectiveWeights
    generator_name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self, threshold: float = 0.0) -> dict[str, Any]:
        """JSON-friendly numbers: mean attack logit of the reconstructions, share the attack calls members
        (logit >= ``threshold``, the attack's own threshold), mean template cosine, and the change over
        optimisation of the loss and of the logit."""
        out: dict[str, Any] = {"n_images": int(len(self.images)), "method": self.config.method,
                               "mode": self.config.mode, "weights": asdict(self.weights),
                               "lr": self.config.learning_rate(), "generator": self.generator_name,
                               "mean_selection_score": float(self.scores.mean())}
        if self.membership is not None:
            out["mean_membership_logit"] = float(self.membership.mean())
            out["attack_member_rate"] = float((self.membership >= threshold).float().mean())
        if self.template_cos is not None:
            out["mean_template_cos"] = float(self.template_cos.mean())
        for k in ("loss", "membership", "template_cos"):
            if k in self.start and k in self.end:
                out[f"{k}_start"] = float(self.start[k].mean())
                out[f"{k}_end"] = float(self.end[k].mean())
        return out


# ---------------------------------------------------------------------------------------------------------------
def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _cat_terms(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: torch.cat([p[k].detach().float().cpu() for p in parts]) for k in keys}


@dataclass
class _Run:
    objective: InversionObjective
    generator: Generator
    cfg: InversionConfig


def _search(run: _Run, n_targets: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate search: per target, sample, score, keep the n_optimize lowest losses (stable: ties keep order)."""
    cfg, gen = run.cfg, run.generator
    keep = cfg.optimize_count
    latents, index, losses = [], [], []
    bar = _progress(n_targets * cfg.candidates, "candidates", cfg.progress)
    for k in range(n_targets):
        pool = gen.sample_latent(cfg.candidates, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + k))
        scores = []
        for sl in _chunks(cfg.candidates, cfg.batch_size):
            z = pool[sl]
            tidx = torch.full((len(z),), k, dtype=torch.long, device=z.device)
            with torch.no_grad():
                terms, _ = run.objective.terms(gen.synthesize(z), latents=z, generator=gen, template_index=tidx,
                                               grad=False, log=False)
            scores.append(terms["loss"].float().cpu())
            if bar is not None:
                bar.update(len(z))
        loss = torch.cat(scores)
        order = torch.argsort(loss, stable=True)[:keep]
        latents.append(pool[order])
        losses.append(loss[order])
        index.append(torch.full((keep,), k, dtype=torch.long))
    if bar is not None:
        bar.close()
    return torch.cat(latents), torch.cat(index), torch.cat(losses)


def _optimise(run: _Run, latents: torch.Tensor, index: torch.Tensor
              ) -> tuple[torch.Tensor, dict[str, list[float]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Adam on every latent (chunk by chunk; losses are per image, so chunking changes nothing)."""
    cfg, gen, obj = run.cfg, run.generator, run.objective
    lr = cfg.learning_rate()
    out = latents.clone()
    sums: dict[str, np.ndarray] = {}
    starts, ends = [], []
    bar = _progress(len(_chunks(len(latents), cfg.batch_size)) * cfg.steps, "optimise", cfg.progress and cfg.steps > 0)
    # one random transform per step, the same for every chunk (so chunking still changes nothing); the first
    # transform is the identity and the last step (logged as the result) is never transformed
    aug = sample_transforms(cfg.steps + 1, torch.Generator().manual_seed(cfg.seed * 1_000_003 - 2)) \
        if cfg.augment else None
    for sl in _chunks(len(latents), cfg.batch_size):
        z = latents[sl].clone().requires_grad_(True)
        tidx = index[sl].to(z.device)
        opt = torch.optim.Adam([z], lr=lr, betas=cfg.betas)
        for step in range(cfg.steps + 1):
            images = gen.synthesize(z)
            if aug is not None and step < cfg.steps:
                images = apply_transform(images, aug, step)
            terms, _ = obj.terms(images, latents=z, generator=gen, template_index=tidx, grad=True)
            loss = terms["loss"].sum()
            frozen = not loss.requires_grad  # nothing depends on the latent (the unguided control): no step at
            last = step == cfg.steps or frozen  # all, so every later step would log the same values
            for k, v in terms.items():
                sums.setdefault(k, np.zeros(cfg.steps + 1))[step if not frozen else slice(step, None)] += \
                    float(v.detach().double().sum())
            if step == 0:
                starts.append({k: v.detach() for k, v in terms.items()})
            if last:
                ends.append({k: v.detach() for k, v in terms.items()})
                break
            (g,) = torch.autograd.grad(loss, z)
            z.grad = g
            opt.step()
            gen.project_(z)
            if bar is not None:
                bar.update(1)
        out[sl] = z.detach()
    if bar is not None:
        bar.close()
    history = {k: (v / len(latents)).tolist() for k, v in sums.items()}
    return out, history, _cat_terms(starts), _cat_terms(ends)


def _select(run: _Run, latents: torch.Tensor, index: torch.Tensor, n_targets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Averaged selection score over random transforms; per target the n_images best (stable on ties)."""
    cfg, gen, obj = run.cfg, run.generator, run.objective
    params = sample_transforms(cfg.selection_transforms, torch.Generator().manual_seed(cfg.seed * 1_000_003 - 1))
    score = torch.zeros(len(latents), dtype=torch.float64)
    w = obj.weights
    if not (w.needs_target() or w.tv or w.l2):  # the score is identically 0: every candidate ties
        params = sample_transforms(0, torch.Generator())
        bar = None
    else:
        bar = _progress(len(latents), "selection", cfg.progress)
    for sl in _chunks(len(latents), cfg.batch_size) if len(params) else []:
        with torch.no_grad():
            images = gen.synthesize(latents[sl])
            tidx = index[sl].to(images.device)
            for i in range(len(params)):
                score[sl] += obj.selection_score(apply_transform(images, params, i), tidx).double().cpu()
        if bar is not None:
            bar.update(sl.stop - sl.start)
    if bar is not None:
        bar.close()
    score /= max(1, len(params))
    keep = []
    for k in range(n_targets):
        rows = torch.nonzero(index == k).flatten()
        order = torch.argsort(-score[rows], stable=True)[:cfg.n_images]
        keep.append(rows[order])
    return torch.cat(keep), score


def invert(target: nn.Module, generator: Generator | None, cfg: InversionConfig, *,
           attack: MembershipAttack | None = None, templates: torch.Tensor | None = None,
           reference: nn.Module | None = None, selection_attack: MembershipAttack | None = None) -> InversionResult:
    """Reconstruct faces the target (and its stage-1 ``attack``) judge as training members.

    ``target``: the backbone under attack (never modified: mode, parameters and BN buffers are as before);
    ``generator``: a :class:`frleak.generators.Generator` (ignored for ``gan_free``, which optimises pixels at
    ``cfg.image_size`` or the generator's resolution); ``attack``: a fitted differentiable attack (required when the
    method's membership weight is non-zero; otherwise only logged, if differentiable); ``templates``: (K, D)
    leaked embeddings of the target for targeted mode (K targets); ``reference``: the reference model of a
    calibrated attack; ``selection_attack``: any fitted attack to rank the final candidates instead of ``attack``.
    """
    cfg.validate()
    weights = cfg.weights()
    if cfg.mode == "targeted":
        if templates is None or templates.ndim != 2 or len(templates) == 0:
            raise ConfigError("targeted mode needs templates: a (K, D) tensor of leaked target embeddings")
        emb_dim = getattr(target, "embedding_dim", templates.shape[1])
        if templates.shape[1] != emb_dim:
            raise ConfigError(f"templates are {templates.shape[1]}-d but the target embeds in {emb_dim} dimensions")
        n_targets = len(templates)
    else:
        templates, n_targets = None, 1
    if cfg.method == "gan_free":
        size = cfg.image_size or (tuple(generator.output_size) if generator is not None else (64, 64))
        generator = PixelGenerator(size)  # type: ignore[arg-type]
    elif generator is None:
        raise ConfigError(f"method {cfg.method!r} needs a generator")
    if attack is not None and not weights.membership and not is_differentiable(attack):
        attack = None  # only logged when membership does not drive the loss; trees cannot be logged as logits
    if weights.membership and attack is None:
        raise ConfigError(f"method {cfg.method!r} uses the membership term: pass the fitted stage-1 attack")
    if selection_attack is not None and tuple(getattr(selection_attack, "optional_used_", ())):
        raise ConfigError("the selection attack uses known-member features (nn_cos), which a generated face lacks")

    device = torch.device(cfg.device)
    moved = [(m, _device_of(m)) for m in (target, generator, reference) if m is not None]
    for m, _ in moved:
        m.to(device)
    try:
        objective = InversionObjective(target, weights=weights, attack=attack, reference=reference,
                                       templates=None if templates is None else templates.to(device),
                                       flip=cfg.flip, bn_prior=cfg.bn_prior, selection_attack=selection_attack)
        if objective.attack is not None:
            objective.attack.to(device)
        run = _Run(objective, generator, cfg)
        latents, index, cand_loss = _search(run, n_targets)
        latents, history, start, end = _optimise(run, latents, index)
        keep, score = _select(run, latents, index, n_targets)
        with torch.no_grad():
            images = generator.synthesize(latents[keep]).detach().float().cpu()
    finally:
        for m, dev in moved:
            m.to(dev)
    return InversionResult(
        images=images, latents=latents[keep].cpu(), scores=score[keep].float(), target_index=index[keep],
        membership=end["membership"][keep] if "membership" in end else None,
        template_cos=end["template_cos"][keep] if "template_cos" in end else None,
        history=history, start=start, end=end, selected=keep, candidate_loss=cand_loss, config=cfg,
        weights=weights, generator_name=generator.name)


def _device_of(m: nn.Module) -> torch.device:
    for t in list(m.parameters()) + list(m.buffers()):
        return t.device
    return torch.device("cpu")
