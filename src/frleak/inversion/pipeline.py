"""One inversion experiment from files: what ``frleak invert`` runs (the CLI only parses arguments).

Loads the target (a frleak model folder or checkpoint), the stage-1 attack (skops), the generator; in targeted mode
picks ``n_targets`` member identities of the split (seeded) and one leaked photo of each, whose TARGET embedding is
the leaked gallery template; runs the method and its control (same budget, no membership term:
:meth:`InversionConfig.control`); evaluates both with the independent evaluator on the split's member photos and
unseen-identity distractors; writes ``result.json``, ``reconstructions.npz`` and PNG grids into ``out_dir``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frleak.data.folder import Sample, group_by_identity
from frleak.errors import ConfigError
from frleak.inversion.evaluate import Gallery, evaluate_reconstructions, load_evaluator
from frleak.inversion.gan_free import PixelGenerator
from frleak.inversion.grids import save_grid
from frleak.inversion.preprocess import unit_to_uint8
from frleak.inversion.search import InversionConfig, InversionResult, invert

RESULT_KEYS = ("method", "mode", "target", "attack", "generator", "evaluator", "config", "targets", "summary",
               "metrics", "control", "history", "files")


def _cap(samples: Sequence[Sample], per_identity: int | None) -> list[Sample]:
    if per_identity is None:
        return list(samples)
    return [s for group in group_by_identity(samples).values() for s in group[:per_identity]]


def choose_targets(members: Sequence[Sample], n_targets: int, seed: int) -> tuple[list[str], list[Sample]]:
    """``n_targets`` member identities with >= 2 member photos (seeded, sorted) and one leaked photo of each."""
    groups = {k: v for k, v in group_by_identity(members).items() if len(v) >= 2}
    if not groups:
        raise ConfigError("targeted mode needs member identities with at least two member photos (one is leaked, "
                          "the others judge the reconstruction)")
    rng = np.random.default_rng(seed)
    names = sorted(rng.choice(sorted(groups), min(n_targets, len(groups)), replace=False).tolist())
    leaked = [groups[n][int(rng.integers(len(groups[n])))] for n in names]
    return names, leaked


def leaked_templates(target: torch.nn.Module, leaked: Sequence[Sample], device: str = "cpu") -> torch.Tensor:
    """The target's L2-normalised embeddings (K, D) of the leaked photos (no test-time flip: one stored template)."""
    from frleak.data.images import load_uint8
    from frleak.verify import embed_images

    imgs = load_uint8([s.path for s in leaked], target.input_spec)  # type: ignore[arg-type]
    return embed_images(target, imgs, flip="none", device=device)  # type: ignore[arg-type]


def _grid(path: Path, result: InversionResult, metrics: dict[str, Any] | None, galleries: dict[str, Gallery],
          targets: list[str] | None, exclude_rows: set[int]) -> Path:
    real: list[torch.Tensor | None] = []
    captions: list[str] = []
    member = galleries.get("member")
    for i in range(len(result.images)):
        logit = "" if result.membership is None else f" logit {float(result.membership[i]):.2f}"
        name, gal, note = None, member, ""
        if metrics is not None and targets is not None and "targeted" in metrics:
            name = targets[int(result.target_index[i])]
            ok = metrics["targeted"]["per_image"]["top1_correct"][i]
            note = f"target {name}{' (top-1)' if ok else ''}"
        elif metrics is not None and "per_image" in metrics["untargeted"]:
            pi = metrics["untargeted"]["per_image"]
            name = pi["nearest_identity"][i]
            gal = member if pi["nearest_is_member"][i] else galleries.get("distractor")
            note = f"{name} ({'member' if pi['nearest_is_member'][i] else 'unseen'}) cos {pi['nearest_cos'][i]:.2f}"
        photos = None
        if name is not None and gal is not None and gal.images is not None:
            rows = [r for r in np.flatnonzero(gal.identities == name).tolist()
                    if not (gal is member and r in exclude_rows)]
            photos = gal.images[torch.as_tensor(rows, dtype=torch.long)] if rows else None
        real.append(photos)
        captions.append((note + logit).strip())
    return save_grid(path, result.images, real if metrics is not None else None, captions)


def run_inversion(target: str | Path, cfg: InversionConfig, out_dir: str | Path, *, attack: str | Path | None = None,
                  generator: str | None = None, generator_weights: str | Path | None = None,
                  generator_options: dict[str, Any] | None = None, trust: bool = False,
                  split: str | Path | None = None, n_targets: int = 10, evaluator_weights: str | Path | None = None,
                  evaluator_backbone: str | None = None, selection_attack: str | Path | None = None,
                  control: bool = True, gallery_resolution: str = "reconstruction", max_per_identity: int | None = None,
                  far: float = 1e-3, cohort_size: int = 64) -> dict[str, Any]:
    """Run, evaluate and save one inversion experiment; returns the JSON written to ``out_dir/result.json``
    (keys :data:`RESULT_KEYS`). ``gallery_resolution``: "reconstruction" (gallery photos resized to the
    reconstructions' size first) or "native". ``cohort_size``: plain generator samples for the hubness-corrected
    ``*_znorm`` metrics (0: none)."""
    from frleak.attacks import load_attack
    from frleak.data.splits import MembershipSplit
    from frleak.generators import load_generator
    from frleak.io import atomic_write_bytes, atomic_write_json
    from frleak.models.checkpoint import load_backbone, read_card

    cfg.validate()
    if gallery_resolution not in ("reconstruction", "native"):
        raise ConfigError(f"gallery_resolution must be 'reconstruction' or 'native', got {gallery_resolution!r}")
    out = Path(out_dir)
    target_model = load_backbone(target)
    attack_obj = load_attack(attack) if attack is not None else None
    sel = load_attack(selection_attack) if selection_attack is not None else None
    gen = None
    if generator is not None:
        gen = load_generator(generator, generator_weights, trust=trust, **(generator_options or {}))
    elif cfg.method != "gan_free":
        raise ConfigError(f"method {cfg.method!r} needs --generator")

    ms = None
    names: list[str] | None = None
    leaked: list[Sample] = []
    templates: torch.Tensor | None = None
    if split is not None:
        sp = MembershipSplit.load(split)
        try:
            digest = read_card(target).get("split_digest")
        except Exception:  # noqa: BLE001 - a foreign checkpoint has no card: nothing to check against
            digest = None
        if digest is not None and digest != sp.digest():
            raise ConfigError(f"{split} is not the split the target was trained on (card split_digest {digest}, "
                              f"file {sp.digest()})")
        ms = sp.target
    if cfg.mode == "targeted":
        if ms is None:
            raise ConfigError("targeted mode needs --split: the leaked templates are photos of member identities")
        names, leaked = choose_targets(ms.members, n_targets, cfg.seed)
        templates = leaked_templates(target_model, leaked, cfg.device)

    runs = {"method": (cfg, invert(target_model, gen, cfg, attack=attack_obj, templates=templates,
                                   selection_attack=sel))}
    ccfg = cfg.control() if control else None
    if ccfg is not None:
        runs["control"] = (ccfg, invert(target_model, gen, ccfg, attack=attack_obj, templates=templates,
                                        selection_attack=sel))

    metrics: dict[str, dict[str, Any] | None] = {k: None for k in runs}
    galleries: dict[str, Gallery] = {}
    exclude_rows: set[int] = set()
    evaluator_name = None
    if ms is not None:
        if evaluator_weights is not None and Path(evaluator_weights).resolve() == Path(target).resolve():
            raise ConfigError("the evaluator must be an independent model, not the target")
        evaluator = load_evaluator(evaluator_weights, evaluator_backbone, trust=trust)
        evaluator_name = str(evaluator_weights or "shared mobilefacenet_casia_arcface.ckpt")
        res = tuple(runs["method"][1].images.shape[-2:]) if gallery_resolution == "reconstruction" else None
        members = _cap(ms.members, max_per_identity)
        members += [s for s in leaked if s not in members]  # leaked photos are excluded, but must be findable
        distractors = _cap(ms.unseen_identity or ms.other_dataset, max_per_identity)
        kw: dict[str, Any] = {"resolution": res, "device": cfg.device, "batch_size": cfg.batch_size,
                              "progress": cfg.progress}
        galleries["member"] = Gallery.from_samples(evaluator, members, **kw)
        if distractors:
            galleries["distractor"] = Gallery.from_samples(evaluator, distractors, **kw)
        exclude_rows = {members.index(s) for s in leaked}
        cohort = None
        if cohort_size > 0:
            cgen = gen if cfg.method != "gan_free" and gen is not None else \
                PixelGenerator(tuple(runs["method"][1].images.shape[-2:]))  # type: ignore[arg-type]
            with torch.no_grad():
                z = cgen.sample_latent(cohort_size, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 - 3))
                cohort = cgen.synthesize(z).float().cpu()
        for key, (_, r) in runs.items():
            tnames = [names[int(k)] for k in r.target_index] if names is not None else None
            metrics[key] = evaluate_reconstructions(
                r.images, evaluator=evaluator, member_gallery=galleries["member"],
                distractor_gallery=galleries.get("distractor"), mode=cfg.mode, targets=tnames,
                exclude=sorted(exclude_rows), far=far, seed=cfg.seed, batch_size=cfg.batch_size, device=cfg.device,
                cohort=cohort)

    files: dict[str, str] = {}
    threshold = float(getattr(attack_obj, "threshold_", 0.0))
    for key, (_, r) in runs.items():
        stem = "" if key == "method" else "_control"
        files[f"grid{stem}"] = str(_grid(out / f"grid{stem}.png", r, metrics[key], galleries, names, exclude_rows))
        buf = io.BytesIO()
        np.savez_compressed(buf, images=unit_to_uint8(r.images).numpy(), latents=r.latents.numpy(),
                            scores=r.scores.numpy(), target_index=r.target_index.numpy(),
                            membership=(r.membership.numpy() if r.membership is not None else np.zeros(0)))
        atomic_write_bytes(out / f"reconstructions{stem}.npz", buf.getvalue())
        files[f"reconstructions{stem}"] = str(out / f"reconstructions{stem}.npz")
    files["result"] = str(out / "result.json")
    method_res = runs["method"][1]
    result = {
        "method": cfg.method, "mode": cfg.mode, "target": str(target),
        "attack": None if attack is None else str(attack),
        "generator": method_res.generator_name, "evaluator": evaluator_name, "config": cfg.to_dict(),
        "targets": names, "summary": method_res.summary(threshold), "metrics": metrics["method"],
        "control": None if "control" not in runs else {
            "method": runs["control"][0].method, "config": runs["control"][0].to_dict(),
            "summary": runs["control"][1].summary(threshold), "metrics": metrics["control"]},
        "history": method_res.history, "files": files,
    }
    atomic_write_json(out / "result.json", result)
    return result
