"""Identity-folder datasets: ``ROOT/IDENTITY/IMAGE.ext``, the layout of LFW, CelebA crops, ORL and most FR sets."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from frleak.data.images import is_image_file
from frleak.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Sample:
    """One face image: its identity and its path (absolute, resolved)."""

    identity: str
    path: str


def scan_identity_folder(root: str | Path, *, min_images: int = 1, verify: bool = False) -> list[Sample]:
    """List the images of an identity-folder dataset, sorted by (identity, path) so that order never depends on
    the file system.

    Identities with fewer than ``min_images`` images are left out. With ``verify=True`` each image header is
    checked and unreadable files are skipped with a warning naming them (nothing else is lost).
    Raises DataError for a missing folder, a folder with no identity sub-folders, or no images at all.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    by_id: dict[str, list[str]] = defaultdict(list)
    bad: list[str] = []
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"{root} has no identity sub-folders; expected ROOT/IDENTITY/IMAGE.jpg")
    for sub in subdirs:
        for f in sorted(sub.iterdir()):
            if not (f.is_file() and is_image_file(f)):
                continue
            if verify and not _readable(f):
                bad.append(str(f))
                continue
            by_id[sub.name].append(str(f.resolve()))
    if bad:
        log.warning("skipped %d unreadable image(s) in %s: %s", len(bad), root, ", ".join(bad[:10]))
    samples = [Sample(i, p) for i in sorted(by_id) if len(by_id[i]) >= min_images for p in by_id[i]]
    if not samples:
        raise DataError(
            f"no images found in {root} (looked for {', '.join(('jpg', 'png', 'pgm', '...'))} in identity "
            f"sub-folders{f' with at least {min_images} images each' if min_images > 1 else ''})"
        )
    return samples


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure means unreadable
        return False


def group_by_identity(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """identity -> its samples, identities sorted, samples in input order."""
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.identity].append(s)
    return {k: out[k] for k in sorted(out)}


def identity_labels(samples: Sequence[Sample]) -> tuple[list[int], list[str]]:
    """Dense integer labels (sorted identity order) and the identity names."""
    names = sorted({s.identity for s in samples})
    index = {n: i for i, n in enumerate(names)}
    return [index[s.identity] for s in samples], names
