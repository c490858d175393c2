"""Train a face recognition backbone (target or shadow) with a margin head: one readable loop.

Deterministic and resumable: the order of images and the flips of epoch e come from a generator seeded with
(seed, e), and every epoch ends with an atomic checkpoint (backbone, head, optimiser, schedule, epoch), so
``resume=True`` after an interrupt gives bit-identical final weights to an uninterrupted run (CPU; on GPU up to
non-deterministic kernels). Only the backbone is released (safetensors + model card); the head stays in the
training checkpoint, never in the released model.

Data: a uint8 image tensor (N, 3, H, W) already at the backbone's input size, and integer labels (N,), both in
memory (fast CPU epochs); :mod:`frleak.data` makes them from identity folders or insightface ``.rec`` files.
Multi-process: under ``torchrun`` (torch.distributed initialised) each rank takes a strided shard of every batch and
gradients are averaged by DistributedDataParallel.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from frleak.data.images import InputSpec, hflip, normalize
from frleak.errors import CheckpointError, ConfigError
from frleak.io import atomic_torch_save, atomic_write_json
from frleak.models.base import Backbone
from frleak.models.checkpoint import save_backbone
from frleak.registry import HEADS

log = logging.getLogger(__name__)

STATE_NAME = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe; saved in the model card so a shadow model can copy it (paper setting B)."""

    epochs: int = 15
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" (arcface_torch's choice) or "adamw"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine", "step" (x0.1 at 50 % and 75 % of training) or "constant"
    warmup_epochs: float = 1.0  # linear warm-up: ArcFace from scratch diverges without it on small data
    head: str = "arcface"
    head_kwargs: dict[str, float] = field(default_factory=lambda: {"s": 32.0, "m": 0.5})
    head_lr_mult: float = 1.0
    flip: bool = True  # random horizontal flip, the standard FR augmentation
    label_smoothing: float = 0.0
    grad_clip: float | None = 5.0  # global norm clip; keeps early ArcFace steps stable
    seed: int = 0
    device: str = "cpu"
    amp: bool = False  # bf16 autocast on CUDA
    drop_last: bool = True  # a tiny last batch would give BatchNorm noisy statistics
    # BatchNorm running-statistics momentum (PyTorch's default 0.1 = an average over the last ~10 batches);
    # None keeps the model's own. A knob of the leak: see benchmarks/signal_study.py.
    bn_momentum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**d)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ConfigError(f"train.batch_size must be >= 2 (BatchNorm needs a batch), got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"train.optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"train.schedule must be cosine, step or constant, got {self.schedule!r}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        HEADS.get(self.head)


class TrainCallback(Protocol):
    """What a defense (or anything else) may change in training; every method is optional to act on."""

    def setup(self, ctx: TrainContext) -> None: ...

    def after_step(self, ctx: TrainContext) -> None: ...

    def end_epoch(self, ctx: TrainContext, epoch: int, stats: dict[str, float]) -> bool:
        """Return True to stop training after this epoch (early stopping)."""
        ...


@dataclass
class TrainContext:
    """The objects of one training run, handed to callbacks (a defense may wrap or replace them in ``setup``)."""

    model: nn.Module
    head: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    num_classes: int
    num_images: int
    steps_per_epoch: int
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # A defense can take over batching (e.g. DP-SGD's Poisson sampling): a function epoch -> list of index tensors.
    batch_plan: Callable[[int], list[torch.Tensor]] | None = None
    extra_state: dict[str, Any] = field(default_factory=dict)


def _rank_world(device: str = "cpu") -> tuple[int, int]:
    """(rank, world size); under torchrun this joins the process group first (gloo on CPU, NCCL on CUDA)."""
    from frleak.distributed import init_distributed

    info = init_distributed(device)
    return info.rank, info.world_size


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True) -> list[torch.Tensor]:
    """The image order of one epoch: a permutation seeded by (seed, epoch), cut into batches."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    stop = (n // batch_size) * batch_size if drop_last and n >= batch_size else n
    return [perm[i:i + batch_size] for i in range(0, stop, batch_size)]


def lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Learning rate at a global step: linear warm-up, then the schedule."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        return cfg.lr * (0.1 ** (int(t >= 0.5) + int(t >= 0.75)))
    return cfg.lr


def build_optimizer(cfg: TrainConfig, model: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr_mult": 1.0},
        {"params": [p for p in head.parameters() if p.requires_grad], "lr_mult": cfg.head_lr_mult},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_backbone(
    model: Backbone,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    card: dict[str, Any] | None = None,
    progress: bool = True,
    evaluate: Callable[[Backbone], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on (images uint8 (N,3,H,W), labels (N,)) and return the history.

    With ``out_dir``: a checkpoint every epoch (``train_state.pt``), and at the end the released backbone
    (``backbone.safetensors`` + ``model_card.json`` with the recipe and ``card``). ``resume=True`` continues from the
    last complete epoch. ``evaluate(model)`` (e.g. verification accuracy) runs once at the end, into the card.
    """
    config.validate()
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ConfigError(f"images must be a uint8 tensor (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if tuple(images.shape[2:]) != tuple(model.input_spec.size):
        raise ConfigError(f"images are {tuple(images.shape[2:])} but the backbone expects {model.input_spec.size}")
    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} images but {len(labels)} labels")
    if len(images) < config.batch_size:
        config = replace(config, batch_size=max(2, len(images)))
    rank, world = _rank_world(config.device)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    labels = labels.long()
    num_classes = int(labels.max()) + 1
    if config.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = config.bn_momentum
    model.to(device)
    head_cls = HEADS.get(config.head)
    head_kwargs = dict(config.head_kwargs) if config.head in ("arcface", "cosface") else {}
    head = head_cls(model.embedding_dim, num_classes, **head_kwargs).to(device)
    optimizer = build_optimizer(config, model, head)
    steps_per_epoch = len(epoch_batches(len(images), config.batch_size, config.seed, 0, config.drop_last))

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)

    ctx = TrainContext(model=model, head=head, optimizer=optimizer, config=config, num_classes=num_classes,
                       num_images=len(images), steps_per_epoch=steps_per_epoch, loss_fn=loss_fn)
    for cb in callbacks:
        if hasattr(cb, "setup"):
            cb.setup(ctx)
    synced: list[tuple[str, nn.Module]] = []
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from frleak.distributed import convert_sync_batchnorm

        # BatchNorm over the global batch (CPU too), so that a step equals the single-process step; see
        # frleak.distributed. DDP's default broadcast of rank 0's buffers keeps the running statistics identical.
        synced = convert_sync_batchnorm(_unwrap(ctx.model), device.type)
        ctx.model = DDP(ctx.model)
        ctx.head = DDP(ctx.head)

    history: list[dict[str, float]] = []
    start_epoch = 0
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is not None and (out / STATE_NAME).is_file():
        start_epoch, history = _load_state(out / STATE_NAME, ctx)
        if rank == 0:
            log.info("resuming from epoch %d of %d (%s)", start_epoch, config.epochs, out / STATE_NAME)

    total_steps = config.epochs * steps_per_epoch
    stopped_early = bool(ctx.extra_state.get("stopped_early", False))  # a resumed run that had stopped early
    t0 = time.time()
    for epoch in range(start_epoch, config.epochs if not stopped_early else start_epoch):
        stats = _run_epoch(ctx, images, labels, epoch, total_steps, rank, world, progress and rank == 0, callbacks)
        history.append(stats)
        # a list, not a generator: every callback sees every epoch even when an earlier one asks to stop
        stop = any([bool(cb.end_epoch(ctx, epoch, stats)) for cb in callbacks if hasattr(cb, "end_epoch")])
        if out is not None and rank == 0:
            _save_state(out / STATE_NAME, ctx, epoch + 1, history)
        if stop:
            stopped_early = True
            ctx.extra_state["stopped_early"] = True
            if out is not None and rank == 0:
                _save_state(out / STATE_NAME, ctx, epoch + 1, history)
            break
    result: dict[str, Any] = {"history": history, "train_seconds": time.time() - t0, "stopped_early": stopped_early,
                              "epochs_run": len(history)}
    if synced:
        from frleak.distributed import revert_sync_batchnorm

        revert_sync_batchnorm(_unwrap(ctx.model), synced)  # the released model has plain BatchNorm layers
    model.eval()
    if evaluate is not None and rank == 0:
        result["utility"] = evaluate(model)
    if out is not None and rank == 0:
        full_card = {"recipe": config.to_dict(), "num_classes": num_classes, "num_images": len(images),
                     "final_loss": history[-1]["loss"] if history else None, "epochs_run": len(history),
                     "stopped_early": stopped_early, **(card or {})}
        if "utility" in result:
            full_card["utility"] = result["utility"]
        for cb in callbacks:
            if hasattr(cb, "card"):
                full_card.setdefault("defense", {}).update(cb.card())
        save_backbone(model, out, full_card)
        atomic_write_json(out / "history.json", history)
    if world > 1:
        dist.barrier()  # no rank returns before rank 0 has written the model
    return result


def _run_epoch(ctx: TrainContext, images: torch.Tensor, labels: torch.Tensor, epoch: int, total_steps: int,
               rank: int, world: int, progress: bool, callbacks: Sequence[Any]) -> dict[str, float]:
    cfg = ctx.config
    device = torch.device(cfg.device)
    spec: InputSpec = getattr(_unwrap(ctx.model), "input_spec")  # noqa: B009
    ctx.model.train()
    ctx.head.train()
    torch.manual_seed(cfg.seed * 7919 + epoch)  # dropout and any other in-model randomness, per epoch
    flip_gen = torch.Generator().manual_seed(cfg.seed * 1_000_033 + epoch)
    batches = (ctx.batch_plan(epoch) if ctx.batch_plan is not None
               else epoch_batches(len(images), cfg.batch_size, cfg.seed, epoch, cfg.drop_last))
    flips = torch.rand(len(images), generator=flip_gen) < 0.5
    iterator: Any = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
    total_loss, total_correct, seen = 0.0, 0, 0
    for i, batch in enumerate(iterator):
        idx = batch
        if world > 1:
            if len(batch) < world:  # a rank would get no row; every rank decides alike and skips it
                log.warning("epoch %d step %d: batch of %d < %d ranks skipped", epoch + 1, i, len(batch), world)
                continue
            idx = batch[rank::world]
        if len(idx) == 0:
            continue
        step = epoch * ctx.steps_per_epoch + i
        lr = lr_at(cfg, step, total_steps, ctx.steps_per_epoch)
        for g in ctx.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        x = normalize(images[idx], spec)
        if cfg.flip:
            f = flips[idx]
            x[f] = hflip(x[f])
        for cb in callbacks:  # e.g. a defense's data augmentation, seeded by (epoch, global image index)
            if hasattr(cb, "transform_batch"):
                x = cb.transform_batch(ctx, x, idx, epoch)
        x, y = x.to(device, non_blocking=True), labels[idx].to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
            emb = ctx.model(x)
            logits = ctx.head(emb.float(), y)
            loss = ctx.loss_fn(logits.float(), y)
        ctx.optimizer.zero_grad(set_to_none=True)
        # Under DDP each rank's mean loss is weighted by its share of the global batch: DDP's gradient average then
        # is the gradient of the mean loss over the whole batch, as in one process (also for uneven shards).
        (loss * (len(idx) * world / len(batch)) if world > 1 else loss).backward()
        if cfg.grad_clip:
            params = [p for g in ctx.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        ctx.optimizer.step()
        for cb in callbacks:
            if hasattr(cb, "after_step"):
                cb.after_step(ctx)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training diverged at epoch {epoch + 1}, step {i}: loss {loss.item()}; "
                                     "lower train.lr or raise warmup_epochs")
        total_loss += loss.item() * len(idx)
        total_correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
        if progress and hasattr(iterator, "set_postfix"):
            iterator.set_postfix(loss=f"{total_loss / seen:.3f}", lr=f"{lr:.4f}")
    if world > 1:  # the epoch's statistics over all ranks, so history, card and early stopping agree everywhere
        sums = torch.tensor([total_loss, float(total_correct), float(seen)], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total_loss, total_correct, seen = float(sums[0]), int(sums[1]), int(sums[2])
    stats = {"epoch": epoch + 1, "loss": total_loss / max(1, seen), "train_acc": total_correct / max(1, seen),
             "lr": lr_at(cfg, (epoch + 1) * ctx.steps_per_epoch - 1, total_steps, ctx.steps_per_epoch)}
    if progress:
        log.info("epoch %d/%d loss %.4f train-acc %.3f", epoch + 1, cfg.epochs, stats["loss"], stats["train_acc"])
    return stats


def _unwrap(m: nn.Module) -> nn.Module:
    while hasattr(m, "module") and isinstance(m.module, nn.Module):
        m = m.module
    return m


def _save_state(path: Path, ctx: TrainContext, epoch: int, history: list[dict[str, float]]) -> None:
    atomic_torch_save({
        "epoch": epoch,
        "model": _unwrap(ctx.model).state_dict(),
        "head": _unwrap(ctx.head).state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "config": ctx.config.to_dict(),
        "history": history,
        "extra": ctx.extra_state,
    }, path)


def _load_state(path: Path, ctx: TrainContext) -> tuple[int, list[dict[str, float]]]:
    try:
        state = torch.load(path, map_location=ctx.config.device, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot resume from {path}: {exc}") from None
    if state.get("config") != ctx.config.to_dict():
        diff = sorted(k for k in ctx.config.to_dict() if state.get("config", {}).get(k) != ctx.config.to_dict()[k])
        raise CheckpointError(f"{path} was written with another training recipe (differs in: {', '.join(diff)}); "
                              "remove it or train into another folder")
    _unwrap(ctx.model).load_state_dict(state["model"])
    _unwrap(ctx.head).load_state_dict(state["head"])
    ctx.optimizer.load_state_dict(state["optimizer"])
    ctx.extra_state.update(state.get("extra", {}))
    return int(state["epoch"]), list(state["history"])
