"""Bring your own generator: ``load_generator("package.module:factory", latent_shape=(128,), ...)``.

The factory is imported, called with the remaining keyword arguments and must return a ``torch.nn.Module`` that maps
latents (N, *latent_shape) to images (N, 3, H, W) (a tuple/list output counts by its first element, as
rosinality-style generators return ``(image, latents)``). It is probed once with two latents from the prior, frozen,
put in eval mode and wrapped into the :class:`~frleak.generators.base.Generator` interface.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frleak.errors import ConfigError
from frleak.generators.base import PRIORS, Generator, load_state_dict_strict, unwrap_state_dict
from frleak.io import safe_torch_load

STATE_KEYS = ("g_ema", "netG_state_dict", "state_dict", "generator", "G", "model")


class ModuleGenerator(Generator):
    """Wrap any latent -> image module.

    ``output_range`` is the (low, high) range of the module's output, mapped linearly onto [-1, 1]
    (e.g. (0, 1) for a sigmoid output). ``output_size`` is measured by a probe forward pass."""

    def __init__(self, module: nn.Module, latent_shape: Sequence[int], *, prior: str = "normal",
                 output_range: tuple[float, float] = (-1.0, 1.0), name: str = "custom") -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ConfigError(f"{name}: prior must be one of {PRIORS}, got {prior!r}")
        lo, hi = (float(v) for v in output_range)
        if not hi > lo:
            raise ConfigError(f"{name}: output_range must be (low, high) with high > low, got {output_range}")
        try:
            shape = tuple(int(v) for v in latent_shape)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: latent_shape must be a sequence of ints, got {latent_shape!r}") from None
        if not shape or min(shape) < 1:
            raise ConfigError(f"{name}: latent_shape must be non-empty positive ints, got {latent_shape!r}")
        self.module, self.latent_shape, self.prior, self.name = module, shape, prior, name
        self.output_range = (lo, hi)
        self.output_size = (0, 0)
        self.freeze()
        self.output_size = self._probe()

    def _raw(self, latent: torch.Tensor) -> torch.Tensor:
        out = self.module(latent)
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        return out

    def _synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        img = self._raw(latent)
        lo, hi = self.output_range
        return img if (lo, hi) == (-1.0, 1.0) else (img - lo) * (2.0 / (hi - lo)) - 1.0

    @torch.no_grad()
    def _probe(self) -> tuple[int, int]:
        z = self.sample_latent(2, generator=torch.Generator().manual_seed(0))
        try:
            out = self._raw(z)
        except Exception as exc:  # noqa: BLE001 - any failure here means the latent_shape or module is wrong
            raise ConfigError(f"{self.name}: probing the module with latents of shape {tuple(z.shape)} failed "
                              f"({type(exc).__name__}: {exc}); check latent_shape") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != 2 or out.shape[1] != 3:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{self.name}: the module must map latents (N, *latent_shape) to images (N, 3, H, W); "
                              f"for latents {tuple(z.shape)} it returned {got}")
        return int(out.shape[2]), int(out.shape[3])


def _resolve(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"custom generator {spec!r} must be written 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"custom generator {spec!r}: cannot import module {module_name!r} ({exc}); "
                          "is it installed or on PYTHONPATH?") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        raise ConfigError(f"custom generator {spec!r}: importing {module_name!r} raised "
                          f"{type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"custom generator {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"custom generator {spec!r}: {attr!r} is not callable")
    return obj


def load_custom(spec: str, weights: str | Path | None = None, *, trust: bool = False,
                latent_shape: Sequence[int] | None = None, prior: str = "normal",
                output_range: tuple[float, float] = (-1.0, 1.0), **factory_kwargs: Any) -> Generator:
    """Import ``spec`` = 'package.module:factory', call ``factory(**factory_kwargs)``, load ``weights`` (a
    state_dict, or a checkpoint holding one under a usual key) strictly, and wrap the module.

    ``latent_shape`` may be left out when the module has a ``latent_shape`` attribute; a factory that already
    returns a :class:`Generator` is returned as is (frozen)."""
    factory = _resolve(spec)
    try:
        module = factory(**factory_kwargs)
    except TypeError as exc:
        raise ConfigError(f"custom generator {spec!r}: calling the factory with {sorted(factory_kwargs)} "
                          f"failed: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"custom generator {spec!r}: the factory returned {type(module).__name__}, "
                          "expected a torch.nn.Module")
    if weights is not None:
        obj = safe_torch_load(weights, trust=trust)
        load_state_dict_strict(module, unwrap_state_dict(obj, weights, STATE_KEYS), weights)
    if isinstance(module, Generator):
        gen: Generator = module.freeze()
    else:
        shape = latent_shape if latent_shape is not None else getattr(module, "latent_shape", None)
        if shape is None:
            raise ConfigError(f"custom generator {spec!r}: pass latent_shape=(...) (per-sample latent shape)")
        gen = ModuleGenerator(module, shape, prior=prior, output_range=output_range, name=spec)
    if weights is not None:
        gen.weights_path = str(weights)
    return gen
