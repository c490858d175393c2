"""Verification utility: does the model still recognise faces? The standard LFW 10-fold pairs protocol, and the
same protocol on seeded random pairs of any identity-folder set (identity-disjoint utility for a trained target).

Protocol (as the LFW benchmark and the MobileFaceNet / SphereFace evaluation code): embeddings of each image and of
its horizontal flip, concatenated and L2-normalised; cosine similarity per pair; for each of 10 folds the threshold
that maximises accuracy on the other 9 folds is applied to the held-out fold; accuracy is the mean +- std over
folds. TAR at FAR comes from the exact ROC over all pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve

from frleak.data.folder import Sample, group_by_identity, scan_identity_folder
from frleak.data.images import hflip, load_uint8, normalize
from frleak.errors import DataError
from frleak.models.base import Backbone


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    same: bool
    fold: int


@torch.no_grad()
def embed_images(model: Backbone, images: torch.Tensor, *, batch_size: int = 256, flip: str = "concat",
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (N, 3, H, W) -> L2-normalised embeddings (N, D) or (N, 2D) with ``flip="concat"`` (test-time flip,
    as the LFW evaluation code of MobileFaceNet); ``"sum"`` adds the flipped embedding; ``"none"`` skips it.
    The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    outs = []
    try:
        for i in range(0, len(images), batch_size):
            x = normalize(images[i:i + batch_size], model.input_spec).to(device)
            e = model(x)
            if flip == "concat":
                e = torch.cat([e, model(hflip(x))], dim=1)
            elif flip == "sum":
                e = e + model(hflip(x))
            elif flip != "none":
                raise ValueError(f"flip must be concat, sum or none, got {flip!r}")
            outs.append(F.normalize(e.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def read_lfw_pairs(pairs_file: str | Path, data_root: str | Path) -> tuple[list[Pair], list[str]]:
    """Parse LFW ``pairs.txt`` (header "folds n", then n same pairs and n different pairs per fold).

    Returns the pairs whose two images exist under ``data_root`` and the list of skipped lines (missing images,
    e.g. the two LFW images with no detectable face)."""
    pairs_file, root = Path(pairs_file), Path(data_root)
    try:
        lines = [ln.split() for ln in pairs_file.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise DataError(f"cannot read pairs file {pairs_file}: {exc}") from None
    try:
        folds, per = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError):
        raise DataError(f"{pairs_file}: first line must be '<folds> <pairs per fold>'") from None
    if len(lines) - 1 != folds * 2 * per:
        raise DataError(f"{pairs_file}: expected {folds * 2 * per} pair lines, found {len(lines) - 1}")

    def img(name: str, num: str) -> Path:
        return root / name / f"{name}_{int(num):04d}.jpg"

    pairs, skipped = [], []
    for i, parts in enumerate(lines[1:]):
        fold = i // (2 * per)
        if len(parts) == 3:
            a, b, same = img(parts[0], parts[1]), img(parts[0], parts[2]), True
        elif len(parts) == 4:
            a, b, same = img(parts[0], parts[1]), img(parts[2], parts[3]), False
        else:
            raise DataError(f"{pairs_file}: line {i + 2} is not a pair: {' '.join(parts)}")
        if a.is_file() and b.is_file():
            pairs.append(Pair(str(a), str(b), same, fold))
        else:
            skipped.append(" ".join(parts))
    if not pairs:
        raise DataError(f"none of the images named in {pairs_file} exist under {root}")
    return pairs, skipped


def random_pairs(samples: Sequence[Sample], *, n_pairs: int = 6000, folds: int = 10, seed: int = 0) -> list[Pair]:
    """Seeded LFW-style pairs on any identity set: half same-identity, half different, spread over ``folds``.
    Needs at least two identities with two or more images."""
    groups = group_by_identity(samples)
    multi = [k for k, v in groups.items() if len(v) >= 2]
    ids = list(groups)
    if len(multi) < 2 or len(ids) < 2:
        raise DataError("random pairs need at least two identities with two or more images")
    rng = np.random.default_rng(seed)
    half = n_pairs // 2
    out: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    attempts = 0
    while len(out) < 2 * half and attempts < 50 * n_pairs:
        attempts += 1
        same = len(out) % 2 == 0
        if same:
            ident = multi[rng.integers(len(multi))]
            i, j = rng.choice(len(groups[ident]), 2, replace=False)
            a, b = groups[ident][i].path, groups[ident][j].path
        else:
            i1, i2 = rng.choice(len(ids), 2, replace=False)
            a = groups[ids[i1]][rng.integers(len(groups[ids[i1]]))].path
            b = groups[ids[i2]][rng.integers(len(groups[ids[i2]]))].path
        key = (min(a, b), max(a, b))
        if key in seen:
            continue
        seen.add(key)
        out.append(Pair(a, b, same, 0))
    return [Pair(p.a, p.b, p.same, i * folds // len(out)) for i, p in enumerate(out)]


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold (score >= t means same) maximising accuracy, searched over every distinct score (exact);
    returns (threshold, accuracy)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order].astype(np.int64)
    # accepting the top-k: correct = positives among top-k + negatives outside top-k
    tp = np.concatenate([[0], np.cumsum(y)])
    fp = np.concatenate([[0], np.cumsum(1 - y)])
    correct = tp + ((1 - y).sum() - fp)
    # only cut between distinct scores
    valid = np.concatenate([[True], s[:-1] != s[1:], [True]])
    correct = np.where(valid, correct, -1)
    k = int(np.argmax(correct))
    thr = np.inf if k == 0 else (s[k - 1] if k == len(s) else (s[k - 1] + s[k]) / 2.0)
    return float(thr), float(correct[k] / len(s))


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """10-fold protocol: per fold, threshold from the other folds, accuracy on this one."""
    accs, thrs = [], []
    for f in np.unique(folds):
        test = folds == f
        thr, _ = best_threshold(scores[~test], same[~test])
        accs.append(float(((scores[test] >= thr) == same[test]).mean()))
        thrs.append(thr)
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "fold_accuracies": accs,
            "thresholds": thrs}


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    """True accept rate at the largest ROC point with false accept rate <= ``far`` (exact ROC)."""
    fpr, tpr, _ = roc_curve(same.astype(int), scores, drop_intermediate=False)
    ok = fpr <= far
    return float(tpr[ok].max()) if ok.any() else 0.0


def evaluate_pairs(model: Backbone, pairs: Sequence[Pair], *, batch_size: int = 256, flip: str = "concat",
                   device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Verification metrics of ``model`` on ``pairs``: accuracy +- std (k-fold), TAR at FAR 1e-3 / 1e-2, AUC."""
    paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
    index = {p: i for i, p in enumerate(paths)}
    images = load_uint8(paths, model.input_spec, progress=progress)
    emb = embed_images(model, images, batch_size=batch_size, flip=flip, device=device).numpy()
    a = np.array([index[p.a] for p in pairs])
    b = np.array([index[p.b] for p in pairs])
    scores = (emb[a] * emb[b]).sum(1)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    out = kfold_accuracy(scores, same, folds)
    fpr, tpr, _ = roc_curve(same.astype(int), scores)
    out.update({
        "tar_at_far_1e-3": tar_at_far(scores, same, 1e-3),
        "tar_at_far_1e-2": tar_at_far(scores, same, 1e-2),
        "auc": float(np.trapezoid(tpr, fpr)),
        "n_pairs": len(pairs),
        "n_folds": int(len(np.unique(folds))),
    })
    return out


def verify_lfw(model: Backbone, data_root: str | Path, pairs_file: str | Path, **kwargs: Any) -> dict[str, Any]:
    pairs, skipped = read_lfw_pairs(pairs_file, data_root)
    out = evaluate_pairs(model, pairs, **kwargs)
    out.update({"protocol": "lfw-pairs", "skipped_pairs": len(skipped)})
    return out


def verify_folder(model: Backbone, data_root: str | Path, *, n_pairs: int = 6000, seed: int = 0,
                  identities: Sequence[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    samples = scan_identity_folder(data_root)
    if identities is not None:
        keep = set(identities)
        samples = [s for s in samples if s.identity in keep]
    pairs = random_pairs(samples, n_pairs=n_pairs, seed=seed)
    out = evaluate_pairs(model, pairs, **kwargs)
    out.update({"protocol": f"random-pairs(seed={seed})", "skipped_pairs": 0})
    return out
