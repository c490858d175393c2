"""From configuration to tensors: a DataConfig becomes a membership split; a list of samples becomes a uint8 image
tensor at a backbone's input size plus dense identity labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from frleak.data.folder import Sample, identity_labels
from frleak.data.images import InputSpec, load_uint8
from frleak.data.splits import MembershipSplit, ModelSplitSpec, PoolSpec, SplitSpec, make_split


def split_spec(data: object, seed: int, shared: Path | None = None) -> SplitSpec:
    """:class:`frleak.config.DataConfig` -> :class:`SplitSpec` (``${shared}`` expanded)."""
    from frleak.config import DataConfig, PoolConfig, expand_path

    assert isinstance(data, DataConfig)

    def pool(p: PoolConfig | None) -> PoolSpec | None:
        if p is None:
            return None
        return PoolSpec(source=expand_path(p.source, shared), min_images=p.min_images, max_images=p.max_images,
                        identities=p.identities, max_per_identity=p.max_per_identity)

    target_private = pool(data.target)
    assert target_private is not None
    target = ModelSplitSpec(private=target_private, unseen=pool(data.unseen), other=pool(data.other),
                            member_fraction=data.member_fraction)
    shadow = None
    shadow_private = pool(data.shadow)
    if shadow_private is not None:
        shadow = ModelSplitSpec(private=shadow_private, unseen=pool(data.shadow_unseen), other=pool(data.shadow_other),
                                member_fraction=data.member_fraction)
    return SplitSpec(target=target, shadow=shadow, seed=seed)


def build_split(data: object, seed: int, shared: Path | None = None) -> MembershipSplit:
    return make_split(split_spec(data, seed, shared))


def load_training_set(samples: Sequence[Sample], spec: InputSpec, progress: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode ``samples`` at ``spec`` -> (uint8 (N,3,H,W), labels (N,), identity names indexed by label)."""
    labels, names = identity_labels(samples)
    images = load_uint8([s.path for s in samples], spec, progress=progress)
    return images, torch.tensor(labels, dtype=torch.long), names
