"""Does a reconstruction show a training member? Judged by an independent face recognition model.

The target cannot judge its own inversion (the optimiser has fitted it), so every metric is computed with an
*evaluator*: by default the shared MobileFaceNet (``shared/weights/mobilefacenet_casia_arcface.ckpt``, CASIA-WebFace,
never trained on LFW or CelebA), never the target. Embeddings follow the verification protocol of
:mod:`frleak.verify`: the face and its mirror, concatenated, L2-normalised. Reconstructions and gallery photos go
through the same differentiable preprocessing (:func:`frleak.inversion.preprocess.to_backbone_input`); the gallery
can first be brought down to the reconstructions' resolution (``Gallery.from_images(..., resolution=...)``), so
that a 64x64 reconstruction is compared with 64x64 photos rather than penalised for its blur.

Untargeted metrics (reconstructions scored by membership only), on a balanced identity set: the member identities
(the target's private identities) and an equal number of unseen distractor identities (the larger group is
subsampled, seeded; identity centroid = normalised mean embedding):

* ``member_share``: share of reconstructions whose nearest centroid is a member identity (chance = 0.5);
* ``threshold``: the evaluator's acceptance threshold at ``far`` (1e-3) from impostor pairs of the evaluation
  gallery: every gallery image against the centroid of every *other* identity; accepted iff cos >= threshold, at most
  floor(far * n_pairs) impostors accepted (``far_resolved`` is False when n_pairs < 1 / far);
* ``member_ids_recovered`` / ``distractor_ids_recovered``: distinct identities that are some reconstruction's nearest
  centroid with cos >= threshold (the distractor count is the false-discovery floor);
* ``mean_nearest_member_cos`` / ``mean_nearest_distractor_cos``: cosine to the nearest single image of each group;
* with a ``cohort`` of plain generator samples, ``member_share_znorm`` and ``*_ids_recovered_znorm``: the same with
  each identity's cosine Z-normalised by the cosines the cohort reaches with it (hub identities, which every GAN
  face resembles a little, otherwise collect most nearest-identity votes, method and control alike).

Targeted metrics (reconstruction i was made for member identity ``targets[i]`` from one leaked photo, which is
excluded from the gallery with ``exclude``): ``top1`` / ``top5`` identity accuracy among the centroids of all member
identities, ``mean_target_cos`` (to the target's centroid), ``knn_dist`` (mean L2 distance between normalised
embeddings to the target's nearest other member image, as PPA's "KNN distance") and ``targets_recovered`` (share of
targets with at least one top-1 correct reconstruction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frleak.data.folder import Sample
from frleak.data.images import InputSpec, load_uint8
from frleak.errors import ConfigError, DataError
from frleak.features import eval_mode
from frleak.inversion.preprocess import resize, to_backbone_input, uint8_to_unit

EVALUATOR_WEIGHTS = ("weights", "mobilefacenet_casia_arcface.ckpt")


def load_evaluator(weights: str | Path | None = None, backbone: str | None = None, *, trust: bool = False) -> nn.Module:
    """The evaluation model: ``weights`` (a frleak model folder or a checkpoint + ``backbone`` name), by default
    the shared MobileFaceNet."""
    from frleak.models.checkpoint import load_backbone
    from frleak.paths import shared_path

    if weights is None:
        return load_backbone(shared_path(*EVALUATOR_WEIGHTS), backbone or "mobilefacenet", trust=trust)
    return load_backbone(weights, backbone, trust=trust)


@torch.no_grad()
def embed(evaluator: nn.Module, images: torch.Tensor, *, batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """Images (N, 3, h, w) in [-1, 1] -> L2-normalised [f(x), f(mirror x)] (N, 2D), float32 on CPU.
    The evaluator's modes are restored."""
    spec: InputSpec = evaluator.input_spec  # type: ignore[assignment]
    outs = []
    evaluator.to(device)  # the evaluator runs where the images are sent (a GPU run loads it on the CPU first)
    with eval_mode(evaluator):
        for i in range(0, len(images), batch_size):
            x = to_backbone_input(images[i:i + batch_size].to(device), spec)
            e = torch.cat([evaluator(x), evaluator(torch.flip(x, dims=(-1,)))], dim=1)
            outs.append(F.normalize(e.float(), dim=1).cpu())
    return torch.cat(outs) if outs else torch.empty(0)


@dataclass
class Gallery:
    """Evaluator embeddings (M, E) of real photos, their identities (M,) and, for grids, the photos themselves
    (uint8 (M, 3, H, W) in the aligned frame)."""

    embeddings: torch.Tensor
    identities: np.ndarray
    images: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.identities = np.asarray(self.identities).astype(str)
        if len(self.embeddings) != len(self.identities):
            raise ConfigError(f"gallery: {len(self.embeddings)} embeddings but {len(self.identities)} identities")

    def __len__(self) -> int:
        return len(self.identities)

    @classmethod
    def from_images(cls, evaluator: nn.Module, images: torch.Tensor, identities: Sequence[str], *,
                    resolution: tuple[int, int] | None = None, keep_images: bool = True, batch_size: int = 64,
                    device: str = "cpu") -> Gallery:
        """Embed aligned uint8 photos (M, 3, H, W); ``resolution``: first resize them to it (e.g. the
        generator's output size), as a reconstruction of that size would be."""
        unit = uint8_to_unit(images)
        if resolution is not None:
            unit = resize(unit, tuple(resolution))  # type: ignore[arg-type]
        emb = embed(evaluator, unit, batch_size=batch_size, device=device)
        return cls(emb, np.asarray(identities), images if keep_images else None)

    @classmethod
    def from_samples(cls, evaluator: nn.Module, samples: Sequence[Sample], *, progress: bool = False,
                     **kwargs: Any) -> Gallery:
        """Load identity-folder samples in the 112x112 aligned frame and embed them (see :meth:`from_images`)."""
        if not samples:
            raise DataError("the evaluation gallery is empty")
        images = load_uint8([s.path for s in samples], InputSpec(), progress=progress)
        return cls.from_images(evaluator, images, [s.identity for s in samples], **kwargs)

    def subset(self, rows: np.ndarray | Sequence[int]) -> Gallery:
        rows = np.asarray(rows, dtype=np.int64)
        return Gallery(self.embeddings[torch.as_tensor(rows)], self.identities[rows],
                       None if self.images is None else self.images[torch.as_tensor(rows)])

    def names(self) -> list[str]:
        return sorted(set(self.identities.tolist()))

    def centroids(self, names: Sequence[str]) -> torch.Tensor:
        """Normalised mean embedding of each identity in ``names``: (K, E)."""
        out = []
        for n in names:
            rows = np.flatnonzero(self.identities == n)
            if len(rows) == 0:
                raise DataError(f"identity {n!r} has no image in the evaluation gallery")
            out.append(self.embeddings[torch.as_tensor(rows)].mean(0))
        return F.normalize(torch.stack(out), dim=1)


def far_threshold(impostor: np.ndarray, far: float) -> tuple[float, bool]:
    """Smallest threshold t with (#impostor scores >= t) <= floor(far * n); returns (t, resolved = far * n >= 1)."""
    s = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    if len(s) == 0:
        raise DataError("no impostor pairs: the evaluation gallery needs at least two identities")
    k = int(np.floor(far * len(s)))
    if k >= len(s):
        return float(-np.inf), True
    return float(np.nextafter(s[k], np.inf)), far * len(s) >= 1.0


def _balanced_names(member: Gallery, distractor: Gallery, seed: int) -> tuple[list[str], list[str]]:
    mem, dis = member.names(), distractor.names()
    n = min(len(mem), len(dis))
    rng = np.random.default_rng(seed)
    if len(mem) > n:
        mem = sorted(rng.choice(mem, n, replace=False).tolist())
    if len(dis) > n:
        dis = sorted(rng.choice(dis, n, replace=False).tolist())
    return mem, dis


def znorm_stats(cohort: torch.Tensor, centroids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-identity mean and std (K,) of the cosine between each centroid (K, E) and a cohort (C, E) of unguided
    generator faces: how strongly an identity attracts *any* generated face (its "hubness")."""
    c = (cohort @ centroids.T).numpy().astype(np.float64)
    return c.mean(0), c.std(0) + 1e-6


def untargeted_metrics(emb: torch.Tensor, member: Gallery, distractor: Gallery | None, *, far: float = 1e-3,
                       seed: int = 0, cohort: torch.Tensor | None = None) -> dict[str, Any]:
    """Untargeted metrics of reconstruction embeddings (N, E) (see the module docstring). ``cohort``: evaluator
    embeddings (C, E) of plain generator samples; adds hubness-corrected (Z-normalised) nearest identities."""
    out: dict[str, Any] = {"n_reconstructions": int(len(emb)),
                           "mean_nearest_member_cos": float((emb @ member.embeddings.T).max(1).values.mean())}
    if distractor is None or len(distractor) == 0:
        return out
    out["mean_nearest_distractor_cos"] = float((emb @ distractor.embeddings.T).max(1).values.mean())
    if set(member.names()) & set(distractor.names()):
        raise DataError("member and distractor galleries share identities")
    mem, dis = _balanced_names(member, distractor, seed)
    names = mem + dis
    is_member = np.array([True] * len(mem) + [False] * len(dis))
    gal = Gallery(torch.cat([member.embeddings, distractor.embeddings]),
                  np.concatenate([member.identities, distractor.identities]))
    gal = gal.subset(np.flatnonzero(np.isin(gal.identities, names)))
    cent = gal.centroids(names)
    # impostor pairs: every gallery image vs the centroid of every other identity
    sims = (gal.embeddings @ cent.T).numpy()
    own = np.array([names.index(i) for i in gal.identities])
    mask = np.ones_like(sims, dtype=bool)
    mask[np.arange(len(own)), own] = False
    thr, resolved = far_threshold(sims[mask], far)
    rs = (emb @ cent.T).numpy()
    nearest = rs.argmax(1)
    best = rs[np.arange(len(rs)), nearest]
    accepted = best >= thr
    near_member = is_member[nearest]
    out.update({
        "member_identities": len(mem), "distractor_identities": len(dis),
        "member_share": float(near_member.mean()) if len(emb) else float("nan"),
        "chance_member_share": len(mem) / len(names),
        "far": far, "threshold": thr, "n_impostor_pairs": int(mask.sum()), "far_resolved": bool(resolved),
        "accepted_share": float(accepted.mean()) if len(emb) else float("nan"),
        "member_ids_recovered": len({int(j) for j in nearest[accepted & near_member]}),
        "distractor_ids_recovered": len({int(j) for j in nearest[accepted & ~near_member]}),
        "per_image": {"nearest_identity": [names[j] for j in nearest], "nearest_is_member": near_member.tolist(),
                      "nearest_cos": best.tolist(), "accepted": accepted.tolist()},
    })
    out["member_ids_recovered_share"] = out["member_ids_recovered"] / len(mem)
    if cohort is not None and len(cohort) >= 2:
        # Z-norm (speaker verification's cohort normalisation): identity j's score is its cosine in units of the
        # spread of cosines that plain generator faces reach with it, so a hub identity stops attracting everything
        mu, sd = znorm_stats(cohort, cent)
        zn = ((rs - mu) / sd).argmax(1)
        zacc = rs[np.arange(len(rs)), zn] >= thr
        zmem = is_member[zn]
        out.update({
            "member_share_znorm": float(zmem.mean()) if len(emb) else float("nan"),
            "member_ids_recovered_znorm": len({int(j) for j in zn[zacc & zmem]}),
            "distractor_ids_recovered_znorm": len({int(j) for j in zn[zacc & ~zmem]}),
            "cohort_size": int(len(cohort)),
        })
        out["per_image"].update({"nearest_identity_znorm": [names[j] for j in zn],
                                 "nearest_is_member_znorm": zmem.tolist()})
    return out


def targeted_metrics(emb: torch.Tensor, member: Gallery, targets: Sequence[str], *, top: int = 5) -> dict[str, Any]:
    """Targeted metrics: reconstruction i (row of ``emb``) was made for identity ``targets[i]`` (see module doc)."""
    if len(targets) != len(emb):
        raise ConfigError(f"{len(emb)} reconstructions but {len(targets)} target identities")
    names = member.names()
    missing = sorted(set(targets) - set(names))
    if missing:
        raise DataError(f"target identities without member images in the gallery: {', '.join(missing[:5])}")
    cent = member.centroids(names)
    sims = emb @ cent.T
    t_idx = torch.as_tensor([names.index(t) for t in targets])
    k = min(top, len(names))
    topk = sims.topk(k, dim=1).indices
    top1 = topk[:, 0] == t_idx
    topn = (topk == t_idx[:, None]).any(1)
    knn_cos = torch.stack([(emb[i] @ member.embeddings[torch.as_tensor(np.flatnonzero(member.identities == t))].T)
                           .max() for i, t in enumerate(targets)])
    per_target = {t: bool(top1[[i for i, u in enumerate(targets) if u == t]].any()) for t in sorted(set(targets))}
    return {
        "n_targets": len(per_target), "n_identities": len(names), "top_k": k,
        "top1": float(top1.float().mean()), "top5": float(topn.float().mean()),
        "chance_top1": 1.0 / len(names), "chance_top5": k / len(names),
        "mean_target_cos": float(sims[torch.arange(len(emb)), t_idx].mean()),
        "knn_cos": float(knn_cos.mean()), "knn_dist": float(torch.sqrt(torch.clamp(2 - 2 * knn_cos, min=0)).mean()),
        "targets_recovered": float(np.mean(list(per_target.values()))),
        "per_image": {"target": list(targets), "top1_correct": top1.tolist(),
                      "predicted": [names[j] for j in topk[:, 0].tolist()]},
    }


def evaluate_reconstructions(images: torch.Tensor, *, evaluator: nn.Module, member_gallery: Gallery,
                             distractor_gallery: Gallery | None = None, mode: str = "untargeted",
                             targets: Sequence[str] | None = None, exclude: Sequence[int] | None = None,
                             far: float = 1e-3, seed: int = 0, batch_size: int = 64, device: str = "cpu",
                             cohort: torch.Tensor | None = None) -> dict[str, Any]:
    """Metrics of reconstructions (N, 3, H, W) in [-1, 1] under ``evaluator`` (never the target).

    ``member_gallery``: photos of the target's private identities (members); ``distractor_gallery``: photos of
    identities the target never saw; ``mode="targeted"`` also needs ``targets`` (N identity names) and takes
    ``exclude``: member-gallery rows (the leaked template photos) left out of every targeted metric.
    ``cohort``: plain generator samples (C, 3, h, w) in [-1, 1] for the hubness-corrected ``*_znorm`` metrics.
    Returns {"untargeted": {...}, "targeted": {...} (targeted mode only)}."""
    if mode not in ("untargeted", "targeted"):
        raise ConfigError(f"mode must be 'untargeted' or 'targeted', got {mode!r}")
    emb = embed(evaluator, images, batch_size=batch_size, device=device)
    coh = None if cohort is None else embed(evaluator, cohort, batch_size=batch_size, device=device)
    out: dict[str, Any] = {"untargeted": untargeted_metrics(emb, member_gallery, distractor_gallery, far=far,
                                                            seed=seed, cohort=coh)}
    if mode == "targeted":
        if targets is None:
            raise ConfigError("targeted evaluation needs targets: the member identity of every reconstruction")
        gal = member_gallery
        if exclude is not None and len(exclude):
            gal = member_gallery.subset(np.setdiff1d(np.arange(len(member_gallery)), np.asarray(exclude)))
        out["targeted"] = targeted_metrics(emb, gal, targets)
    return out
