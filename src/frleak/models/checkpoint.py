"""Saving and loading backbones, safely, with a model card beside the weights.

frleak's own format is a folder (or file prefix) with ``backbone.safetensors`` (tensors only: safe by construction)
and ``model_card.json`` (architecture, input spec, data split hash, training recipe, seed, utility). The margin head
is never saved with it: the released model emits embeddings only (the paper's threat model).

Foreign checkpoints (``.pth``, ``.pt``, ``.ckpt``: insightface arcface_torch ``backbone.pth``, the shared
MobileFaceNet) load with ``torch.load(weights_only=True)`` unless the user opts in with ``trust=True``; common
wrappers (``state_dict``, ``net_state_dict``, ``model``, ``backbone``) and the DataParallel ``module.`` prefix are
unwrapped; key or shape mismatches raise a CheckpointError that lists them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from frleak.errors import CheckpointError
from frleak.io import atomic_write_json, safe_torch_load
from frleak.models.base import Backbone, create_backbone

WEIGHTS_NAME = "backbone.safetensors"
CARD_NAME = "model_card.json"
_WRAPPER_KEYS = ("state_dict", "net_state_dict", "model_state_dict", "model", "backbone", "g_ema")


def save_backbone(model: Backbone, folder: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Write ``folder/backbone.safetensors`` and ``folder/model_card.json``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS_NAME)
    full_card = {"arch": getattr(model, "arch", None), "input_spec": model.input_spec.to_dict(),
                 "embedding_dim": model.embedding_dim, **(card or {})}
    atomic_write_json(folder / CARD_NAME, full_card)
    return folder


def read_card(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    card_path = path / CARD_NAME if path.is_dir() else path.with_name(CARD_NAME)
    if not card_path.is_file():
        raise CheckpointError(f"no {CARD_NAME} beside {path}")
    try:
        card: dict[str, Any] = json.loads(card_path.read_text())
        return card
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{card_path} is not valid JSON: {exc}") from None


def extract_state_dict(obj: Any, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Find the tensor dict inside common checkpoint wrappers and drop DataParallel/DDP prefixes."""
    depth = 0
    while isinstance(obj, dict) and depth < 3:
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
        if inner is None:
            break
        obj, depth = inner, depth + 1
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict (looked inside {', '.join(_WRAPPER_KEYS)})")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "_orig_mod.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                            strict: bool = True) -> dict[str, list[str]]:
    """``load_state_dict`` that reports every mismatch by name first, instead of PyTorch's wall of text.

    Returns {"missing": [...], "unexpected": [...]} (empty lists when ``strict`` and all matched).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if shape or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:5])})")
        if shape:
            parts.append(f"{len(shape)} shape mismatch(es) (e.g. {'; '.join(shape[:3])})")
        raise CheckpointError(
            f"{path} does not match the {type(model).__name__} architecture: {'; '.join(parts)}. "
            "Check --backbone and its options (depth, width, input size, embedding size)."
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def load_backbone(path: str | Path, backbone: str | None = None, *, trust: bool = False, strict: bool = True,
                  **kwargs: Any) -> Backbone:
    """Load a backbone in eval mode.

    ``path``: a frleak folder (card + safetensors), a ``.safetensors`` file, or a foreign ``.pth/.pt/.ckpt``.
    ``backbone`` + ``kwargs``: the architecture, required for foreign files, optional (must agree) for frleak ones.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    card: dict[str, Any] | None = None
    if path.is_dir() or weights.suffix == ".safetensors":
        try:
            card = read_card(path)
        except CheckpointError:
            if backbone is None:
                raise
    if card is not None and card.get("arch"):
        name = card["arch"]["name"]
        arch_kwargs = {**card["arch"].get("kwargs", {}), **kwargs}
        if backbone is not None and backbone != name:
            raise CheckpointError(f"{path} is a {name!r} backbone, not {backbone!r} (see its {CARD_NAME})")
    elif backbone is None:
        raise CheckpointError(f"{path} has no {CARD_NAME}: say which architecture it is (--backbone NAME)")
    else:
        name, arch_kwargs = backbone, dict(kwargs)
    model = create_backbone(name, **arch_kwargs)
    if weights.suffix == ".safetensors":
        if not weights.is_file():
            raise CheckpointError(f"weights not found: {weights}")
        try:
            state = load_file(str(weights))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise CheckpointError(f"cannot read {weights}: {exc}") from None
    else:
        state = extract_state_dict(safe_torch_load(weights, trust=trust), weights)
    load_state_dict_checked(model, state, weights, strict=strict)
    model.eval()
    return model
