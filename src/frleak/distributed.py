"""Multi-process training and BN-feature extraction under ``torchrun`` (gloo on CPU, NCCL on CUDA).

    torchrun --standalone --nproc_per_node 2 -m frleak train ...        (DistributedDataParallel)
    torchrun --standalone --nproc_per_node 2 -m frleak extract ...      (rows sharded, gathered on rank 0)

What "identical to the single-process run" means here (see docs/scale.md, tested in tests/test_distributed.py):

* Extraction: every rank extracts whole batches of the single-process batching (batch b goes to rank b mod W), so
  each image sees exactly the batch, kernels and eval-mode BatchNorm it would see in one process; the gathered
  result is in the original row order. Features are per-image in eval mode, so the only possible difference is the
  floating-point summation order of a kernel (e.g. a thread count that differs); with the same kernels and threads
  the result is bitwise equal, otherwise equal within float32 rounding (~1e-6 relative).
* Training: rank r takes rows ``batch[r::W]`` of every global batch; BatchNorm layers are synchronised
  (:class:`SyncBatchNorm2d` and friends on CPU, ``nn.SyncBatchNorm`` on CUDA: statistics of the *global* batch),
  each rank's loss is weighted by its share of the batch and DDP averages the gradients, so every step computes the
  gradient of the same mean loss over the same global batch as one process, and the running statistics follow the
  global batch too. The result equals the
  single-process run up to float32 summation order (reductions split over ranks), which drifts slowly with the
  number of steps: same data order, same steps, same files and model card, weights equal within a small tolerance.
  Not reproduced: dropout masks (drawn per rank; off in the shipped recipes) and a global batch with fewer rows
  than ranks (skipped on every rank, with a warning; never happens with ``drop_last=True``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from frleak.errors import ConfigError
from frleak.features import FeatureSet, extract_features

log = logging.getLogger(__name__)

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# ---- process group ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank, its device and the backend (None: one process)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None


def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher setting its environment) started this process with WORLD_SIZE > 1."""
    return all(k in os.environ for k in _TORCHRUN_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch understands it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return dev


def init_distributed(device: str | torch.device = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group (idempotent); a plain ``python`` run gets rank 0 of 1 and no group.

    Backend: NCCL when ``device`` is CUDA, else gloo. On CUDA each process is pinned to ``cuda:LOCAL_RANK``
    (``torch.cuda.set_device``), so ``"cuda"`` everywhere else in frleak means this rank's GPU.
    """
    dev = resolve_device(device)
    if not launched_by_torchrun():
        if dist.is_available() and dist.is_initialized():  # a caller set the group up itself
            return DistInfo(dist.get_rank(), dist.get_world_size(), dist.get_rank(), dev, dist.get_backend())
        return DistInfo(0, 1, 0, dev, None)
    local_rank = int(os.environ["LOCAL_RANK"])
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in a single-process run): the rank that writes files and shows progress."""
    return rank_world()[0] == 0


def barrier() -> None:
    """Wait for every rank; a no-op in a single-process run."""
    if rank_world()[1] > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- synchronised BatchNorm ------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Differentiable SUM all-reduce: every rank's output is the sum of all inputs, so the gradient of each input
    is the sum over ranks of the gradients of the output (an all-reduce of the incoming gradients)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # noqa: ANN401
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN401
        return _AllReduceSum.apply(grad.contiguous(), ctx.group), None


class _SyncStatsMixin:
    """BatchNorm whose training statistics are those of the global batch over all ranks, on any device.

    Needed on CPU: PyTorch's ``nn.SyncBatchNorm`` refuses CPU tensors and DDP refuses ``nn.SyncBatchNorm`` in a CPU
    module (torch 2.13: "SyncBatchNorm layers only work with GPU modules"). So these layers stay subclasses of
    ``nn.BatchNorm{1,2,3}d`` and compute the global statistics with two differentiable all-reduces (sum and count,
    then the centred sum of squares: two passes, no cancellation), in float32; the running statistics are updated
    like ``F.batch_norm`` does with the global batch (unbiased variance). Out of training, or without a process
    group of more than one rank, they are exactly the plain BatchNorm.
    """

    process_group: Any = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Module's name
        bn: Any = self
        if not bn.training or not (dist.is_available() and dist.is_initialized()):
            return super().forward(input)  # type: ignore[misc]
        group = self.process_group or dist.group.WORLD
        if dist.get_world_size(group) == 1:
            return super().forward(input)  # type: ignore[misc]
        bn._check_input_dim(input)
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm
                factor = 1.0 / float(bn.num_batches_tracked)
        c = input.shape[1]
        dims = [0, *range(2, input.ndim)]
        shape = [1, c] + [1] * (input.ndim - 2)
        x = input.float()
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() // max(1, c))])
        total = _AllReduceSum.apply(local, group)
        count = total[c].detach()
        mean = total[:c] / count
        xc = x - mean.view(shape)
        var = _AllReduceSum.apply(xc.pow(2).sum(dims), group) / count
        y = xc * torch.rsqrt(var + bn.eps).view(shape)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        if bn.track_running_stats:
            with torch.no_grad():
                n = float(count)
                bn.running_mean.mul_(1 - factor).add_(mean.detach().to(bn.running_mean.dtype), alpha=factor)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)
        return y.to(input.dtype)


class SyncBatchNorm1d(_SyncStatsMixin, nn.BatchNorm1d):
    """:class:`nn.BatchNorm1d` with global-batch statistics under torch.distributed (any device)."""


class SyncBatchNorm2d(_SyncStatsMixin, nn.BatchNorm2d):
    """:class:`nn.BatchNorm2d` with global-batch statistics under torch.distributed (any device)."""


class SyncBatchNorm3d(_SyncStatsMixin, nn.BatchNorm3d):
    """:class:`nn.BatchNorm3d` with global-batch statistics under torch.distributed (any device)."""


_SYNC_OF: dict[type[nn.Module], type[_BatchNorm]] = {
    nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d, nn.BatchNorm3d: SyncBatchNorm3d}


def convert_sync_batchnorm(module: nn.Module, device_type: str = "cpu",
                           process_group: Any = None) -> list[tuple[str, nn.Module]]:  # noqa: ANN401
    """Replace every plain BatchNorm{1,2,3}d below ``module`` (in place) by a synchronised one sharing its
    parameters and buffers (the same tensor objects: an optimiser built before keeps working): PyTorch's fused
    ``nn.SyncBatchNorm`` on CUDA, :class:`SyncBatchNorm2d` and friends elsewhere. Returns the replaced modules,
    for :func:`revert_sync_batchnorm`. ``module`` itself must not be a BatchNorm layer."""
    replaced: list[tuple[str, nn.Module]] = []
    for parent_name, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            cls = _SYNC_OF.get(type(child))
            if cls is None:
                continue
            sync: _BatchNorm
            if device_type == "cuda":
                sync = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                        child.track_running_stats, process_group)
            else:
                sync = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                sync.process_group = process_group
            _move_tensors(child, sync)
            sync.train(child.training)
            setattr(parent, name, sync)
            replaced.append((f"{parent_name}.{name}" if parent_name else name, child))
    return replaced


def revert_sync_batchnorm(module: nn.Module, replaced: Sequence[tuple[str, nn.Module]]) -> None:
    """Undo :func:`convert_sync_batchnorm`: put the original layers back with the (trained) tensors of the
    synchronised ones, so the model is a plain BatchNorm model again (what is saved and attacked)."""
    for qual, original in replaced:
        parent_name, _, name = qual.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        sync = getattr(parent, name)
        _move_tensors(sync, original)
        original.train(sync.training)
        setattr(parent, name, original)


def _move_tensors(src: nn.Module, dst: nn.Module) -> None:
    for pname, p in src.named_parameters(recurse=False):
        setattr(dst, pname, p)
    for bname, b in src.named_buffers(recurse=False):
        setattr(dst, bname, b)


# ---- sharded extraction ----------------------------------------------------------------------------------------
class RowSource(Protocol):
    """Anything with a length whose rows (an int64 index array) give uint8 images (n, 3, H, W): a uint8 tensor,
    or a lazy loader (:class:`FolderRows`, :class:`RecRows`) so that each rank decodes only its own shard."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: Any) -> torch.Tensor: ...  # noqa: ANN401


def shard_rows(n: int, batch_size: int, rank: int, world: int, strategy: str = "strided") -> np.ndarray:
    """Rows of ``n`` that ``rank`` of ``world`` extracts, made of whole batches ``[b*bs, (b+1)*bs)`` of the
    single-process batching: "strided" gives batch b to rank b mod world (balanced even when batches differ in
    cost), "contiguous" gives each rank one run of consecutive batches. Every row belongs to exactly one rank."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of {world}")
    nb = -(-n // batch_size)
    if strategy == "strided":
        batches = list(range(rank, nb, world))
    elif strategy == "contiguous":
        lo, hi = (rank * nb) // world, ((rank + 1) * nb) // world
        batches = list(range(lo, hi))
    else:
        raise ConfigError(f"shard strategy must be 'strided' or 'contiguous', got {strategy!r}")
    if not batches:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([np.arange(b * batch_size, min(n, (b + 1) * batch_size)) for b in batches]).astype(np.int64)


def distributed_extract(model: nn.Module, images: RowSource | torch.Tensor, *,
                        kinds: Sequence[str] = ("paper", "normalized", "variance"), batch_size: int = 128,
                        device: str | torch.device | None = None, flip: bool = False,
                        layers: Sequence[str] | None = None, amp: bool = False, progress: bool = False,
                        strategy: str = "strided", gather_to: int | None = None) -> FeatureSet | None:
    """:func:`frleak.features.extract_features` over all ranks: each extracts its :func:`shard_rows` and the parts
    are gathered back into the original row order. In one process this is ``extract_features`` itself.

    ``gather_to=None``: every rank gets the full FeatureSet (``all_gather_object``); ``gather_to=k``: only rank k
    does (``gather_object``, less memory) and the others get None. ``device=None`` is this rank's device (see
    :func:`init_distributed`). ``amp``: bf16 autocast on CUDA (ignored on CPU); BN statistics and distances stay
    float32 (float32 reductions in the hooks). Progress is shown on rank 0 only.
    """
    rank, world = rank_world()
    dev = resolve_device("auto" if device is None else device)
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device("cuda", torch.cuda.current_device())
    if amp and dev.type != "cuda":
        log.info("--amp: mixed precision is for CUDA; extracting in float32 on %s", dev)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and dev.type == "cuda" else nullcontext())
    n = len(images)
    if n == 0:
        raise ConfigError("nothing to extract: the image set is empty")
    rows = shard_rows(n, batch_size, rank, world, strategy) if world > 1 else np.arange(n, dtype=np.int64)
    part: FeatureSet | None = None
    if len(rows):
        x = images[torch.from_numpy(rows)] if isinstance(images, torch.Tensor) else images[rows]
        with autocast:
            part = extract_features(model, x, kinds=kinds, batch_size=batch_size, device=dev, flip=flip,
                                    layers=layers, progress=progress and rank == 0)
    if world == 1:
        return part
    payload = (rows, part)
    if gather_to is None:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, payload)
    else:
        parts = [None] * world if rank == gather_to else []
        dist.gather_object(payload, parts if rank == gather_to else None, dst=gather_to)
        if rank != gather_to:
            return None
    return _assemble(n, parts)


def _assemble(n: int, parts: Sequence[tuple[np.ndarray, FeatureSet | None]]) -> FeatureSet:
    """Put the ranks' parts back at their rows: (rows, FeatureSet) per rank -> one FeatureSet of n rows."""
    present = [(r, fs) for r, fs in parts if fs is not None]
    if not present:
        raise ConfigError("nothing to extract: the image set is empty")
    first = present[0][1]
    feats = {k: np.empty((n, *v.shape[1:]), dtype=v.dtype) for k, v in first.features.items()}
    emb = np.empty((n, *first.embeddings.shape[1:]), dtype=first.embeddings.dtype)
    seen = np.zeros(n, dtype=bool)
    for rows, fs in present:
        for k in feats:
            feats[k][rows] = fs.features[k]
        emb[rows] = fs.embeddings
        seen[rows] = True
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} row(s) were extracted by no rank")  # a bug, not a user error
    return FeatureSet(feats, emb, first.layer_names, dict(first.meta))


# ---- lazy row sources: each rank decodes only its shard --------------------------------------------------------
class FolderRows:
    """Images of an identity folder (sorted as :func:`frleak.data.folder.scan_identity_folder`), decoded on
    demand at ``spec``: ``rows[idx] -> uint8 (len(idx), 3, H, W)``."""

    def __init__(self, root: str | Path, spec: Any, limit: int | None = None) -> None:  # noqa: ANN401
        from frleak.data.folder import identity_labels, scan_identity_folder

        self.root = Path(root)
        self.spec = spec
        self.samples = scan_identity_folder(root)[:limit]
        self.labels, self.identities = identity_labels(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, rows: Any) -> torch.Tensor:  # noqa: ANN401
        from frleak.data.images import load_uint8

        return load_uint8([self.samples[int(i)].path for i in rows], self.spec)

    def meta(self) -> dict[str, Any]:
        """Row order, for the saved features: relative paths, identity names and labels."""
        base = self.root.resolve()
        return {"source": str(self.root), "paths": [os.path.relpath(s.path, base) for s in self.samples],
                "identities": self.identities, "labels": self.labels}


class RecRows:
    """Images of an insightface ``train.rec``/``.idx`` pair (the first ``limit``), decoded on demand at ``spec``."""

    def __init__(self, prefix: str | Path, spec: Any, limit: int | None = None) -> None:  # noqa: ANN401
        from frleak.data.recordio import InsightFaceRecDataset

        self.prefix = str(prefix)
        self.spec = spec
        self.dataset = InsightFaceRecDataset(prefix, decode=False)
        self.n = len(self.dataset) if limit is None else min(int(limit), len(self.dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: Any) -> torch.Tensor:  # noqa: ANN401
        from frleak.data.images import to_network_array
        from frleak.data.recordio import decode_image

        out = torch.empty((len(rows), 3, *self.spec.size), dtype=torch.uint8)
        for j, i in enumerate(rows):
            key, _, payload = self.dataset.record(int(i))
            img = decode_image(payload, f"{self.dataset.paths.rec} key {key}")
            out[j] = torch.from_numpy(to_network_array(img, self.spec)).permute(2, 0, 1)
        return out

    def meta(self) -> dict[str, Any]:
        return {"source": self.prefix, "labels": self.dataset.labels[: self.n].tolist()}


def extract_to_file(model: nn.Module, source: FolderRows | RecRows, out: str | Path, *,
                    meta: dict[str, Any] | None = None, **kwargs: Any) -> FeatureSet | None:  # noqa: ANN401
    """:func:`distributed_extract` of ``source`` gathered on rank 0, which writes ``out`` (FeatureSet .npz, with the
    source's row order in its meta); every rank returns once the file is complete (rank 0 gets the FeatureSet)."""
    fs = distributed_extract(model, source, gather_to=0, **kwargs)
    if fs is not None:
        fs.meta.update(source.meta())
        fs.meta.update(meta or {})
        fs.save(out)
    barrier()
    return fs
