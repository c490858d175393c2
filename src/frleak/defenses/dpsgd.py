"""DP-SGD (Abadi et al. 2016, arXiv 1607.00133) through opacus: per-sample gradient clipping + Gaussian noise,
Poisson sampling, and a privacy accountant (RDP, Mironov 2017; or PRV, Gopi et al. 2021).

What changes:

* the backbone is built with ``norm="gn"``: BatchNorm mixes the samples of a batch, so it has no per-sample
  gradient and its running statistics are themselves an unprotected function of the data (opacus rejects it;
  ``opacus.validators.ModuleValidator.fix`` would swap it for GroupNorm, which is what ``norm="gn"`` builds, but
  through the backbone's own option the released model keeps an ``arch`` that :func:`load_backbone` rebuilds).
  The released model therefore has no running statistics (``removes_bn_surface``);
* each epoch is ``steps_per_epoch`` Poisson-sampled batches (every image independently with probability
  q = batch_size / N), the sampling the accountant's analysis assumes;
* the optimiser becomes opacus' ``DPOptimizer`` (clip every per-sample gradient to ``max_grad_norm``, sum, add
  N(0, (noise_multiplier * max_grad_norm)^2), divide by the expected batch size); the loop's global-norm clip is
  turned off (per-sample clipping replaces it);
* margin heads (``frleak.models.heads.ArcFace``/``CosFace``) keep their class weight as a raw ``nn.Parameter``
  used with two inputs (embeddings, labels), which opacus' functorch fallback cannot differentiate per sample
  (it vmaps one input). The head is wrapped so that the parametrised part is a one-input module
  (embeddings -> cosines, per-sample gradients by functorch) and the label-dependent margin is parameter-free.

The privacy unit is one *image* (example-level DP). An identity with k training images is protected only at the
group level: roughly (k * epsilon, k * exp((k - 1) * epsilon) * delta). The identity-level membership question of
arXiv 2401.13719 is therefore weakly covered for identities with many images; docs/defenses.md says more.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from frleak.defenses.base import Defense, DefenseCallback
from frleak.errors import ConfigError
from frleak.models.base import Backbone
from frleak.registry import DEFENSES
from frleak.train import TrainConfig, TrainContext

log = logging.getLogger(__name__)
ACCOUNTANTS = ("rdp", "prv")


def default_delta(num_images: int) -> float:
    """min(1e-5, 1 / N^1.1): below 1/N as the DP guarantee requires (a delta of 1/N allows releasing one random
    record), and never above the 1e-5 customary in the literature."""
    return min(1e-5, 1.0 / float(num_images) ** 1.1)


# opacus' default RDP orders (1.1 .. 63) plus larger ones: large orders are optimal for small sample rates and
# large noise, and a wider grid can only tighten the (always valid) RDP -> (epsilon, delta) conversion
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [64, 80, 96, 128, 192, 256, 512, 1024]


def _accountant_kwargs(accountant: str) -> dict[str, Any]:
    return {"alphas": RDP_ORDERS} if accountant == "rdp" else {}


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
                ) -> float:
    """epsilon after ``steps`` steps of the subsampled Gaussian mechanism (opacus' accountant)."""
    if steps == 0:
        return 0.0
    acc = _accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta=delta, **_accountant_kwargs(accountant)))


def noise_for(target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
              ) -> float:
    """The smallest noise multiplier (to opacus' bisection tolerance, 0.01 in epsilon) reaching the target."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # the bisection's first brackets (sigma 20, 40, ...) hit the largest order
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=accountant, **_accountant_kwargs(accountant)))


def _accountant(name: str) -> Any:
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=name)


def poisson_batches(num_images: int, sample_rate: float, steps: int, generator: torch.Generator
                    ) -> list[torch.Tensor]:
    """``steps`` Poisson-sampled batches: every index in [0, num_images) joins each batch with prob sample_rate."""
    return [torch.nonzero(torch.rand(num_images, generator=generator) < sample_rate).flatten()
            for _ in range(steps)]


class _Cosines(nn.Module):
    """One-input module (N, D) -> (N, C) owning a margin head's class weight, for per-sample gradients."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.weight = head.weight
        cls: Any = type(head)
        self._cosine = cls.cosine  # the head's own formula (an unbound method), applied to this module's weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._cosine(self, x)
        return out


class DPMarginHead(nn.Module):
    """A margin head re-plumbed for opacus: ``cosines`` (the only parametrised part, one input) then the head's
    own margin applied to those cosines. The original head is ``.module`` (same Parameter), so the training
    checkpoint keeps the head's key names."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.module = head
        self.cosines = _Cosines(head)
        # A shallow copy of the head whose ``cosine`` is the identity: calling its forward on cosines applies
        # exactly the head's margin. Stored outside nn.Module's registry so opacus never hooks it.
        margin = copy.copy(head)
        object.__setattr__(margin, "cosine", lambda c: c)
        object.__setattr__(self, "_margin", margin)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = type(self.module).forward(self._margin, self.cosines(x), labels)
        return out


class _DPSGDCallback(DefenseCallback):
    defense: DPSGD

    def __init__(self, defense: DPSGD) -> None:
        super().__init__(defense)
        self._modules: list[Any] = []
        self._noise = torch.Generator()
        self._ctx: TrainContext | None = None

    def setup(self, ctx: TrainContext) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        d = self.defense
        # opacus draws its noise on the parameters' device, so the generator must live there too
        self._noise = torch.Generator(device=torch.device(ctx.config.device))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ConfigError("defense 'dpsgd' runs in a single process (opacus' distributed mode is not wired in)")
        errors = ModuleValidator.validate(ctx.model, strict=False)
        if errors:
            raise ConfigError(f"defense 'dpsgd': the backbone is not DP-SGD compatible ({errors[0]}); build it "
                              "with norm='gn' (DPSGD.configure does) and no other BatchNorm")
        n, cfg = ctx.num_images, ctx.config
        q = cfg.batch_size / n
        steps = ctx.steps_per_epoch * cfg.epochs
        delta = d.delta if d.delta is not None else default_delta(n)
        if d.noise_multiplier is not None:
            sigma = d.noise_multiplier
        else:
            assert d.target_epsilon is not None
            sigma = noise_for(d.target_epsilon, q, steps, delta, d.accountant)
        self.sample_rate, self.delta, self.sigma = q, delta, sigma
        d.result_ = {"noise_multiplier": sigma, "max_grad_norm": d.max_grad_norm, "sample_rate": q,
                     "num_images": n, "delta": delta, "accountant": d.accountant, "steps": 0, "epsilon": 0.0,
                     "privacy_unit": "image", "planned_steps": steps,
                     "planned_epsilon": epsilon_for(sigma, q, steps, delta, d.accountant)}

        # per-sample gradients: hooks on the modules themselves (ctx.model stays the backbone the loop expects)
        if any(True for _ in ctx.head.parameters(recurse=False)):
            if not hasattr(ctx.head, "cosine"):
                raise ConfigError(f"defense 'dpsgd' cannot compute per-sample gradients of head "
                                  f"{type(ctx.head).__name__}")
            ctx.head = DPMarginHead(ctx.head)
            head_part: nn.Module = ctx.head.cosines
        else:
            head_part = ctx.head
        # opacus' backward hook on the first layer fires with no input gradient (images need none): expected
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                                "respect to module outputs since no inputs require gradients")
        for module in (ctx.model, head_part):
            gsm = GradSampleModule(module, batch_first=True, loss_reduction="mean", strict=True)
            gsm.forbid_grad_accumulation()  # Poisson sampling: one backward per step, as the loop does
            self._modules.append(gsm)
        ctx.optimizer = DPOptimizer(ctx.optimizer, noise_multiplier=sigma, max_grad_norm=d.max_grad_norm,
                                    expected_batch_size=cfg.batch_size, loss_reduction="mean",
                                    generator=self._noise)
        seed = cfg.seed

        def plan(epoch: int) -> list[torch.Tensor]:
            # both draws of epoch e are seeded by (seed, e): resuming at an epoch boundary is exact
            self._noise.manual_seed(seed * 1_000_037 + epoch + 17)
            g = torch.Generator().manual_seed(seed * 1_000_039 + epoch)
            return poisson_batches(n, q, ctx.steps_per_epoch, g)

        ctx.batch_plan = plan
        self._steps_per_epoch = ctx.steps_per_epoch
        self._ctx = ctx

    def end_epoch(self, ctx: TrainContext, epoch: int, stats: dict[str, float]) -> bool:
        # kept in the checkpointed extra_state: a resumed run (even one with no epoch left) reports the right epsilon
        ctx.extra_state["dpsgd_epochs_done"] = epoch + 1
        self.refresh()
        return False

    def refresh(self) -> None:
        """Account for the epochs done so far. Every planned step counts, also an empty Poisson batch that the
        loop skips (conservative: the accountant assumes every step ran)."""
        if self._ctx is None:
            return
        epochs = int(self._ctx.extra_state.get("dpsgd_epochs_done", 0))
        steps = epochs * self._steps_per_epoch
        d = self.defense
        d.result_.update(steps=steps, epochs_run=epochs,
                         epsilon=epsilon_for(self.sigma, self.sample_rate, steps, self.delta, d.accountant))

    def card(self) -> dict[str, Any]:
        self.refresh()
        return super().card()

    def close(self) -> None:
        """Remove opacus' hooks and per-sample attributes from the trained modules."""
        while self._modules:
            self._modules.pop().cleanup()
        self._ctx = None  # the result stays in the defense; drop the model/optimizer references


@DEFENSES.register("dpsgd")
@dataclasses.dataclass
class DPSGD(Defense):
    """DP-SGD via opacus (GroupNorm backbone, Poisson sampling, per-sample clipping, RDP accounting), default eps 8

    target_epsilon: the budget to reach at the end of training (default 8, a common reference point); the noise
    multiplier is found by opacus for the run's sample rate and step count. noise_multiplier: give it instead of
    target_epsilon (then epsilon is reported). max_grad_norm: per-sample clipping norm C (1.0). delta: None =
    min(1e-5, 1/N^1.1). accountant: "rdp" (default) or "prv".
    """

    name: ClassVar[str] = "dpsgd"
    stage: ClassVar[str] = "training"
    removes_bn_surface: ClassVar[bool] = True
    target_epsilon: float | None = 8.0
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    delta: float | None = None
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise_multiplier is not None:
            if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
                raise self._fail("noise_multiplier", f"must be > 0, got {self.noise_multiplier}")
            self.target_epsilon = None  # the noise is given; epsilon is the result
        elif self.target_epsilon is None or not self.target_epsilon > 0:
            raise self._fail("target_epsilon", f"must be > 0 (or give noise_multiplier), got {self.target_epsilon}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise self._fail("max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise self._fail("delta", f"must be in (0, 1), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise self._fail("accountant", f"must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")
        self._callbacks: list[_DPSGDCallback] = []

    def configure(self, backbone_options: Mapping[str, Any], train_config: TrainConfig
                  ) -> tuple[dict[str, Any], TrainConfig]:
        options = dict(backbone_options)
        if options.get("norm", "bn") == "bn":
            options["norm"] = "gn"
        return options, replace(train_config, grad_clip=None, amp=False)

    def callbacks(self) -> list[Any]:
        cb = _DPSGDCallback(self)
        self._callbacks.append(cb)
        return [cb]

    def finalize(self, model: Backbone, public_images: torch.Tensor | None = None) -> Backbone:
        for cb in self._callbacks:
            cb.refresh()
            cb.close()
        self._callbacks.clear()
        return model
