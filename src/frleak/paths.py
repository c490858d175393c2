"""Where the shared real data and weights live: ``$FRLEAK_SHARED``, else ``../shared`` beside the project."""

from __future__ import annotations

import os
from pathlib import Path

from frleak.errors import DataError

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def shared_dir(required: bool = False) -> Path | None:
    """The shared folder, or None when absent (``required=True`` raises with instructions instead)."""
    env = os.environ.get("FRLEAK_SHARED")
    candidates = [Path(env)] if env else [Path.cwd() / ".." / "shared", _PROJECT_ROOT / ".." / "shared"]
    for cand in candidates:
        if (cand / "README.md").is_file() or (cand / "data").is_dir():
            return cand.resolve()
    if required:
        where = env or "../shared"
        raise DataError(
            f"the shared data folder was not found at {where}. Set FRLEAK_SHARED to a folder holding "
            "data/lfw-112, data/celeba-112 and weights/ (see README.md, 'Data'), or pass explicit --data/--weights."
        )
    return None


def shared_path(*parts: str) -> Path:
    """A path inside the shared folder; raises a clear DataError when the folder or the entry is missing."""
    root = shared_dir(required=True)
    assert root is not None
    path = root.joinpath(*parts)
    if not path.exists():
        raise DataError(f"{path} does not exist in the shared folder {root}")
    return path
