"""Shared fixtures. Real data comes from ../shared (FRLEAK_SHARED); tests that need it skip in a user's clone
without it, but FAIL under CI (CI=true), where a missing ../shared must never pass silently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import frleak.paths

torch.set_num_threads(min(2, torch.get_num_threads()))


def require_shared() -> Path:
    root = frleak.paths.shared_dir()
    if root is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("shared data folder not found (FRLEAK_SHARED)")
    assert root is not None
    return root


@pytest.fixture(scope="session")
def shared() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def lfw(shared: Path) -> Path:
    return shared / "data" / "lfw-112"


@pytest.fixture(scope="session")
def mobilefacenet_ckpt(shared: Path) -> Path:
    return shared / "weights" / "mobilefacenet_casia_arcface.ckpt"


def small_identity_folder(src: Path, dst: Path, identities: int, per_identity: int, min_images: int) -> Path:
    """Copy the first ``identities`` identities with >= ``min_images`` images (``per_identity`` each) to dst."""
    import shutil

    taken = 0
    for ident in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(ident.glob("*.jpg"))
        if len(files) < min_images:
            continue
        (dst / ident.name).mkdir(parents=True, exist_ok=True)
        for f in files[:per_identity]:
            shutil.copyfile(f, dst / ident.name / f.name)
        taken += 1
        if taken == identities:
            break
    return dst


class Interrupt(Exception):
    """Stands for Ctrl-C or a killed job in resume tests."""


class StopAfter:
    """A training callback that simulates a crash after ``epochs`` complete epochs (their checkpoints written)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def end_epoch(self, ctx: object, epoch: int, stats: dict) -> bool:
        if epoch + 1 == self.epochs:
            raise Interrupt
        return False
