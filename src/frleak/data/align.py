"""Face alignment: five MTCNN landmarks -> similarity transform -> the ArcFace 112x112 template.

Every FR model expects faces aligned the way it was trained; the shared ``lfw-112`` / ``celeba-112`` sets and the
shared backbones use the ArcFace (insightface) 5-point template below. The transform is the least-squares
similarity (rotation, uniform scale, translation) of Umeyama, "Least-squares estimation of transformation
parameters between two point patterns", IEEE TPAMI 13(4), 1991 — the same estimate as insightface's
``norm_crop`` (skimage ``SimilarityTransform``).

Coordinates: landmarks and template use pixel-index coordinates (pixel (i, j) has its centre at x=j, y=i).
PIL's ``Image.transform`` works in continuous coordinates with pixel centres at +0.5; :func:`align_face` converts.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from frleak.data.images import is_image_file
from frleak.data.mtcnn import MTCNN, Face
from frleak.errors import ConfigError, DataError
from frleak.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

# ArcFace / insightface template for a 112x112 crop: left eye, right eye, nose, left mouth, right mouth (x, y).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
SELECT_MODES = ("center", "largest")
FORMATS = {"jpg": ("JPEG", ".jpg"), "png": ("PNG", ".png")}
LOG_NAME = "align_log.jsonl"
REPORT_NAME = "align_report.json"


def template(size: int = 112) -> np.ndarray:
    """The ArcFace template scaled to a ``size`` x ``size`` crop, (5, 2) float64."""
    return ARCFACE_TEMPLATE * (size / 112.0)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping ``src`` (N, 2) onto ``dst`` (N, 2), N >= 2 points.

    Returns the (2, 3) matrix M = [s R | t] minimising sum ||s R src_i + t - dst_i||^2 (R a rotation, det +1;
    Umeyama 1991, eqs. 38-42).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two matching (N>=2, 2) point arrays, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])  # no reflections
    rot = u @ np.diag(d) @ vt
    var_s = (sc**2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("source points are all identical: no similarity transform")
    scale = float((sig * d).sum() / var_s)
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def align_face(img: Image.Image, landmarks: np.ndarray, size: int = 112) -> Image.Image:
    """Warp ``img`` so that its five ``landmarks`` (5, 2) land on the ArcFace template of a ``size`` x ``size``
    crop; bilinear, outside pixels black. Returns an RGB image of (size, size)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
        raise ValueError(f"landmarks must be a finite (5, 2) array, got shape {landmarks.shape}")
    m = umeyama(landmarks, template(size))
    a_inv = np.linalg.inv(m[:, :2])
    # PIL samples output pixel centres p + 0.5 and wants the input point in the same continuous coordinates:
    # q_c = A^-1 (p_c - 0.5 - t) + 0.5.
    offset = -a_inv @ (m[:, 2] + 0.5) + 0.5
    # Rounding to 1e-9 (a billionth of a pixel per pixel) removes float noise, so that an exact transform (the
    # identity, a pure scale) samples exactly on pixel centres and gives back exact pixel values.
    coeffs = tuple(round(float(v), 9) + 0.0 for v in
                   (a_inv[0, 0], a_inv[0, 1], offset[0], a_inv[1, 0], a_inv[1, 1], offset[1]))
    return img.convert("RGB").transform((size, size), Image.Transform.AFFINE, coeffs,
                                        resample=Image.Resampling.BILINEAR)


def select_face(faces: Sequence[Face], image_size: tuple[int, int], select: str = "center") -> Face | None:
    """One face among detections: "center" = box centre nearest the image centre, "largest" = largest box area;
    ties go to the higher score. ``image_size`` is PIL's (width, height). None when ``faces`` is empty."""
    if select not in SELECT_MODES:
        raise ConfigError(f"select must be one of {SELECT_MODES}, got {select!r}")
    if not faces:
        return None
    if select == "largest":
        return max(faces, key=lambda f: (f.area, f.score))
    cx, cy = image_size[0] / 2.0, image_size[1] / 2.0
    return min(faces, key=lambda f: ((f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2, -f.score))


@dataclass
class AlignReport:
    """What :func:`align_folder` did. Counts are files (empty_folders: folders); ``log_path`` lists every image
    with no face or that could not be read, one JSON object a line."""

    src: str
    dst: str
    aligned: int = 0
    skipped_existing: int = 0
    no_face: int = 0
    unreadable: int = 0
    empty_folders: int = 0
    name_collisions: int = 0
    seconds: float = 0.0
    log_path: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.aligned + self.skipped_existing + self.no_face + self.unreadable + self.name_collisions

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}

    def summary(self) -> str:
        return (f"aligned {self.aligned}, already done {self.skipped_existing}, no face {self.no_face}, "
                f"unreadable {self.unreadable}, empty folders {self.empty_folders}"
                + (f", name collisions {self.name_collisions}" if self.name_collisions else "")
                + f" ({self.seconds:.1f} s); log: {self.log_path}")


def list_sources(src: Path, skip: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Image files under ``src`` (any depth, sorted, relative to ``src``) and the folders that hold no image and
    no sub-folder (empty identities). ``skip``: a folder not to descend into (an output folder inside ``src``)."""
    files: list[Path] = []
    empty: list[Path] = []
    for root, dirs, names in os.walk(src):
        root_p = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (skip is None or (root_p / d).resolve() != skip))
        images = sorted(n for n in names if is_image_file(root_p / n))
        files.extend((root_p / n).relative_to(src) for n in images)
        if not images and not dirs and root_p != src:
            empty.append(root_p.relative_to(src))
    return files, empty


def read_photo(path: Path) -> Image.Image:
    """Open a photo as RGB, upright: camera photos often store the sensor image plus an EXIF rotation, and MTCNN
    finds no face in a sideways one. Unreadable or truncated files raise DataError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=95)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i: i + n]


def align_folder(src: str | Path, dst: str | Path, *, detector: MTCNN | None = None, select: str = "center",
                 batch_size: int = 16, resume: bool = True, progress: bool = True, size: int = 112,
                 fmt: str = "jpg", weights_dir: str | Path | None = None, device: str = "cpu",
                 min_face_size: int = 20) -> AlignReport:
    """Detect, select and align one face per image of ``src`` into ``dst``, keeping the folder layout
    (``SRC/ID/IMG.ext`` -> ``DST/ID/IMG.jpg``).

    Images with no face, unreadable files and empty folders are logged to ``DST/align_log.jsonl`` (rewritten each
    run; failed files are retried on a re-run) and skipped. With ``resume`` an output that exists is kept and its
    image not processed again (outputs are written atomically, so an existing file is complete). A summary with
    the settings goes to ``DST/align_report.json``. ``detector`` defaults to ``MTCNN(weights_dir, device,
    min_face_size)``.
    """
    t0 = time.perf_counter()
    src_p, dst_p = Path(src).expanduser(), Path(dst).expanduser()
    if not src_p.is_dir():
        raise DataError(f"source folder not found: {src_p}")
    if select not in SELECT_MODES:
        raise ConfigError(f"--select must be one of {SELECT_MODES}, got {select!r}")
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {tuple(FORMATS)}, got {fmt!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if size < 16:
        raise ConfigError(f"--size must be >= 16 pixels, got {size}")
    if src_p.resolve() == dst_p.resolve():
        raise ConfigError(f"destination {dst_p} is the source folder; choose another folder")
    files, empty = list_sources(src_p, skip=dst_p.resolve())
    if not files and not empty:
        raise DataError(f"no images found under {src_p} (looked for .jpg, .png, ... at any depth)")
    dst_p.mkdir(parents=True, exist_ok=True)
    suffix = FORMATS[fmt][1]
    report = AlignReport(str(src_p), str(dst_p), log_path=str(dst_p / LOG_NAME), settings={
        "select": select, "size": size, "format": fmt, "min_face_size": min_face_size,
        "template": template(size).tolist(), "detector": "MTCNN (Zhang et al. 2016)"})

    with open(dst_p / LOG_NAME, "w", encoding="utf-8") as logf:
        def note(rel: Path, status: str, detail: str = "") -> None:
            _log_line(logf, {"path": rel.as_posix(), "status": status, "detail": detail})

        for rel in empty:
            note(rel, "empty_folder", "folder holds no image")
            report.empty_folders += 1
        todo: list[tuple[Path, Path]] = []
        taken: dict[Path, Path] = {}
        for rel in files:
            out = dst_p / rel.with_suffix(suffix)
            if out in taken:
                note(rel, "name_collision", f"same output name as {taken[out].as_posix()}")
                report.name_collisions += 1
                continue
            taken[out] = rel
            if resume and out.is_file():
                report.skipped_existing += 1
            else:
                todo.append((rel, out))
        if todo and detector is None:
            detector = MTCNN(weights_dir=weights_dir, device=device, min_face_size=min_face_size)

        from tqdm.auto import tqdm

        with tqdm(total=len(todo), desc="align faces", unit="img", disable=not progress) as bar:
            for chunk in _chunks(todo, batch_size):
                images, kept = [], []
                for rel, out in chunk:
                    try:
                        images.append(read_photo(src_p / rel))
                        kept.append((rel, out))
                    except DataError as exc:
                        note(rel, "unreadable", str(exc))
                        report.unreadable += 1
                assert detector is not None
                for img, (rel, out), faces in zip(images, kept, detector.detect(images) if images else []):
                    face = select_face(faces, img.size, select)
                    if face is None:
                        note(rel, "no_face", f"MTCNN found no face in {img.size[0]}x{img.size[1]} image")
                        report.no_face += 1
                        continue
                    atomic_write_bytes(out, _encode(align_face(img, face.landmarks, size), fmt))
                    report.aligned += 1
                bar.update(len(chunk))
    report.seconds = time.perf_counter() - t0
    atomic_write_json(dst_p / REPORT_NAME, report.to_dict())
    return report


def _log_line(f: IO[str], record: dict[str, Any]) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()  # a crash leaves every line written so far
    log.info("%s: %s", record["status"], record["path"])
