"""Reading face images (any size, grey or RGB) and turning them into network input, without torchvision.

An aligned face is first brought to the aligned frame (112x112, the ArcFace template), then optionally cropped
(MobileFaceNet's 112x96 uses columns 8:104) and resized to the network's input size, then normalised.
Grey images are replicated to three channels; other sizes are resized to the aligned frame (documented: frleak
expects faces already aligned, `frleak align` makes them from raw photos).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from frleak.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class InputSpec:
    """How a backbone expects its input.

    size: (H, W) fed to the network. crop: (top, left, height, width) taken from the aligned frame before the
    final resize, or None. mean / std: pixel normalisation, x' = (x - mean) / std, x in [0, 255].
    aligned_size: (H, W) of the aligned frame that ``crop`` refers to.
    """

    size: tuple[int, int] = (112, 112)
    crop: tuple[int, int, int, int] | None = None
    mean: float = 127.5
    std: float = 127.5
    aligned_size: tuple[int, int] = (112, 112)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        crop = d.get("crop")
        return cls(
            size=tuple(d["size"]),
            crop=tuple(crop) if crop is not None else None,
            mean=float(d["mean"]),
            std=float(d["std"]),
            aligned_size=tuple(d.get("aligned_size", (112, 112))),
        )


def read_image(path: str | Path) -> Image.Image:
    """Open an image as RGB; a missing, unreadable or truncated file raises DataError naming it."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def to_network_array(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """PIL image -> uint8 array (H, W, 3) at ``spec.size``: aligned-frame resize, crop, final resize."""
    ah, aw = spec.aligned_size
    if img.size != (aw, ah):
        img = img.resize((aw, ah), Image.Resampling.BILINEAR)
    if spec.crop is not None:
        top, left, h, w = spec.crop
        img = img.crop((left, top, left + w, top + h))
    h, w = spec.size
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


def load_uint8(paths: Sequence[str | Path], spec: InputSpec, progress: bool = False) -> torch.Tensor:
    """Decode many images into one uint8 tensor (N, 3, H, W), kept in memory for fast CPU epochs."""
    out = torch.empty((len(paths), 3, *spec.size), dtype=torch.uint8)
    iterator: Any = paths
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc="decode images", unit="img", leave=False)
    for i, p in enumerate(iterator):
        out[i] = torch.from_numpy(to_network_array(read_image(p), spec)).permute(2, 0, 1)
    return out


def normalize(x_uint8: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 network input."""
    return (x_uint8.float() - spec.mean) / spec.std


def to_pixels(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Inverse of :func:`normalize`, in [0, 255] float."""
    return x * spec.std + spec.mean


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of (N, C, H, W)."""
    return torch.flip(x, dims=(-1,))


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
