"""Image grids: each reconstruction next to real member photos of the identity it matched (PNG, Pillow only).

Row i: the reconstruction (first column, framed) followed by up to ``max_real`` photos of its matched identity
(targeted: the target identity; untargeted: the evaluator's nearest member identity), with a caption line under the
row (identity name, score). Every cell is resized to ``cell`` x ``cell`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from frleak.inversion.preprocess import unit_to_uint8

_CAPTION = 14
_PAD = 2


def _cell(img_uint8: torch.Tensor, cell: int) -> Image.Image:
    arr = img_uint8.permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    return Image.fromarray(arr, "RGB").resize((cell, cell), Image.Resampling.BILINEAR)


def save_grid(path: str | Path, reconstructions: torch.Tensor, real: Sequence[torch.Tensor | None] | None = None,
              captions: Sequence[str] | None = None, *, cell: int = 64, max_real: int = 4,
              max_rows: int | None = 32) -> Path:
    """Write a PNG grid. ``reconstructions``: (N, 3, h, w) in [-1, 1]; ``real``: per row, uint8 photos
    (k, 3, H, W) of the matched identity (or None); ``captions``: one text per row. Returns the path."""
    recon = unit_to_uint8(reconstructions)
    n = len(recon) if max_rows is None else min(len(recon), max_rows)
    cols = 1 + (max_real if real is not None else 0)
    width = cols * (cell + _PAD) + _PAD
    row_h = cell + _PAD + (_CAPTION if captions is not None else 0)
    canvas = Image.new("RGB", (width, max(1, n) * row_h + _PAD), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        y = _PAD + i * row_h
        canvas.paste(_cell(recon[i], cell), (_PAD, y))
        draw.rectangle([_PAD - 1, y - 1, _PAD + cell, y + cell], outline=(220, 30, 30))
        photos = real[i] if real is not None and i < len(real) else None
        if photos is not None:
            for j, photo in enumerate(photos[:max_real]):
                canvas.paste(_cell(photo, cell), (_PAD + (j + 1) * (cell + _PAD), y))
        if captions is not None and i < len(captions):
            draw.text((_PAD, y + cell + 1), str(captions[i])[: width // 6], fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    canvas.save(tmp, format="PNG")
    tmp.replace(path)
    return path
