"""Attack inputs of a model on a set of images: BN distances, embedding features, reference-model distances.

``model_inputs`` runs one extraction per view (the image and its mirror) and returns the feature groups of
:mod:`frleak.attacks.base`. ``with_reference`` adds the same distances under a reference model (``ref_*``), which
the calibrated attacks need. ``nearest_member_cos`` is computed per cross-validation fold (it depends on which
members the attacker knows), so it is a separate pure function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from frleak.data.folder import Sample
from frleak.data.images import InputSpec, hflip, load_uint8, normalize
from frleak.features import FeatureSet, eval_mode, extract_features, has_bn_statistics

DIST_KINDS = ("paper", "normalized", "variance")
#: the result status of a BN attack on a model without BatchNorm running statistics (never a number)
NO_BN_STATUS = "BN attack surface removed"


def inputs_from_features(fs: FeatureSet) -> dict[str, np.ndarray]:
    """FeatureSet (extracted with ``flip=True``: embeddings (N, 2D) = [view, mirror]) -> attack feature groups."""
    out = {k: fs.features[k] for k in DIST_KINDS if k in fs.features}
    emb = fs.embeddings
    d = emb.shape[1] // 2 if fs.meta.get("flip") else emb.shape[1]
    e1 = emb[:, :d]
    out["emb_norm"] = np.linalg.norm(e1, axis=1)
    if fs.meta.get("flip"):
        e2 = emb[:, d:]
        out["flip_cos"] = (e1 * e2).sum(1) / (np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1) + 1e-12)
    out["embedding"] = e1 / (np.linalg.norm(e1, axis=1, keepdims=True) + 1e-12)
    return out


def model_inputs(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 128, device: str = "cpu",
                 progress: bool = False) -> tuple[dict[str, np.ndarray], FeatureSet]:
    """Attack feature groups of ``model`` on uint8 images (N, 3, H, W); also returns the raw FeatureSet.

    A model without BatchNorm running statistics (GroupNorm / LayerNorm / DP-SGD backbones) has no BN attack
    surface: only the embedding groups are returned (and a FeatureSet without layers)."""
    if not has_bn_statistics(model):
        fs = FeatureSet({}, embed_with_mirror(model, images, batch_size=batch_size, device=device), [],
                        {"flip": True})
        return inputs_from_features(fs), fs
    fs = extract_features(model, images, kinds=DIST_KINDS, batch_size=batch_size, device=device, flip=True,
                          progress=progress)
    return inputs_from_features(fs), fs


@torch.no_grad()
def embed_with_mirror(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 128,
                      device: str = "cpu") -> np.ndarray:
    """Embeddings of each uint8 image and of its mirror, concatenated: (N, 2D), as ``extract_features(flip=True)``
    gives them, without BN hooks (so BN-free models have them too). Modes and device are restored."""
    spec: InputSpec = getattr(model, "input_spec")  # noqa: B009
    home = next(model.parameters()).device
    model.to(device)
    embs = []
    try:
        with eval_mode(model):
            for i in range(0, len(images), batch_size):
                x = normalize(images[i:i + batch_size], spec).to(device)
                embs.append(torch.cat([model(x), model(hflip(x))], dim=1).float().cpu().numpy())
    finally:
        model.to(home)
    return np.concatenate(embs)


def with_reference(inputs: dict[str, np.ndarray], ref_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add the reference model's distances as ``ref_paper``, ``ref_normalized``, ``ref_variance``."""
    out = dict(inputs)
    for k in DIST_KINDS:
        if k in ref_inputs:
            out[f"ref_{k}"] = ref_inputs[k]
    return out


def nearest_member_cos(query: np.ndarray, gallery: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Cosine of each L2-normalised query embedding (N, D) to its nearest gallery embedding (M, D).

    ``exclude``: for each query, the gallery row that is the query itself (-1 for none), so known members are
    scored by their *other* known members (leave-one-out), as a fresh query would be."""
    if len(gallery) == 0:
        return np.full(len(query), -1.0)
    sims = query @ gallery.T
    if exclude is not None:
        rows = np.flatnonzero(exclude >= 0)
        sims[rows, exclude[rows]] = -np.inf
    return np.asarray(sims.max(axis=1))


def load_images(samples: Sequence[Sample], spec: Any, progress: bool = False) -> torch.Tensor:
    return load_uint8([s.path for s in samples], spec, progress=progress)
