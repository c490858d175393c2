"""Alignment quality on real photos: align ``shared/data/lfw-raw-sample`` with ``frleak align`` (MTCNN + similarity
warp onto the ArcFace 112x112 template) and compare each face with the same image in the shared ``lfw-112`` through
the shared MobileFaceNet (an independent FR model): cosine similarity of the two embeddings (docs/alignment.md).

  python benchmarks/align_lfw.py [--select center|largest] [--out DIR]

Writes ``OUT/align_lfw.json`` and ``.md`` (default OUT: benchmarks/results/): mean / min / median cosine over all
aligned photos, the per-image values, and for scale the mean cosine of *different* photos of the same person.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common import RESULTS, machine, write_results
from frleak.data.align import align_folder
from frleak.data.images import load_uint8, normalize
from frleak.inversion.evaluate import load_evaluator
from frleak.paths import shared_path


def embed(net: torch.nn.Module, paths: list[Path]) -> torch.Tensor:
    spec = getattr(net, "input_spec")  # noqa: B009
    with torch.no_grad():
        return torch.nn.functional.normalize(net(normalize(load_uint8(paths, spec), spec)), dim=1)


def run(select: str, work: Path) -> dict[str, Any]:
    raw, ref_root = shared_path("data", "lfw-raw-sample"), shared_path("data", "lfw-112")
    t0 = time.time()
    report = align_folder(raw, work, select=select, progress=True, batch_size=16)
    align_s = time.time() - t0
    rels = sorted(p.relative_to(work) for p in work.glob("*/*.jpg"))
    rels = [r for r in rels if (ref_root / r).exists()]
    if not rels:
        raise SystemExit(f"no aligned face of {raw} has a counterpart in {ref_root}")
    net = load_evaluator()  # the shared MobileFaceNet, in eval mode
    ours, ref = embed(net, [work / r for r in rels]), embed(net, [ref_root / r for r in rels])
    cos = (ours * ref).sum(1).tolist()
    same_person = [float(ours[i] @ ref[j]) for i in range(len(rels)) for j in range(len(rels))
                   if i != j and rels[i].parent == rels[j].parent]
    return {
        "benchmark": "align_lfw", "select": select, "n_photos": report.aligned + report.no_face + report.unreadable,
        "aligned": report.aligned, "no_face": report.no_face, "unreadable": report.unreadable,
        "compared": len(rels), "mean_cosine": statistics.fmean(cos), "min_cosine": min(cos),
        "median_cosine": statistics.median(cos),
        "same_person_other_photo_mean_cosine": statistics.fmean(same_person) if same_person else None,
        "align_seconds": round(align_s, 1), "per_image": dict(zip(map(str, rels), cos)), "machine": machine(),
    }


def to_markdown(r: dict[str, Any]) -> str:
    other = r["same_person_other_photo_mean_cosine"]
    return "\n".join([
        "# align_lfw: `frleak align` vs the shared lfw-112 (shared MobileFaceNet embeddings)", "",
        f"{r['aligned']} of {r['n_photos']} photos aligned (no face: {r['no_face']}, unreadable: {r['unreadable']}), "
        f"{r['compared']} compared, select={r['select']}, alignment {r['align_seconds']} s.", "",
        "| mean cosine | min | median | same person, other photo (for scale) |", "|---|---|---|---|",
        f"| **{r['mean_cosine']:.4f}** | {r['min_cosine']:.4f} | {r['median_cosine']:.4f} | "
        + ("–" if other is None else f"{other:.4f}") + " |",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--select", choices=("center", "largest"), default="center")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.select, Path(tmp) / "aligned")
    md = to_markdown(res)
    write_results(args.out, "align_lfw", res, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
