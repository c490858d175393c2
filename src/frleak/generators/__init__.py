"""Face generators for model inversion (stage 2 of arXiv 2401.13719), behind one interface.

``load_generator(name, weights=None, trust=False, **kwargs)`` resolves a registered name (``frleak list``:
``dcgan32_celeba``, ``dcgan64_digiface``, ``stylegan2``) or a ``package.module:factory`` string (your own module,
see :mod:`frleak.generators.custom`) and returns a frozen, eval-mode :class:`Generator`:

>>> gen = load_generator("dcgan32_celeba")                      # doctest: +SKIP
>>> z = gen.sample_latent(8, generator=torch.Generator().manual_seed(0))   # (8, 100), U(-1, 1)
>>> img = gen.synthesize(z)                                     # (8, 3, 32, 32) in [-1, 1]
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from frleak.errors import ConfigError
from frleak.generators.base import Generator, normal_prior_loss, uniform_prior_loss, w_prior_loss
from frleak.generators.custom import ModuleGenerator, load_custom
from frleak.registry import GENERATORS

__all__ = ["Generator", "ModuleGenerator", "load_custom", "load_generator", "normal_prior_loss",
           "uniform_prior_loss", "w_prior_loss"]


def load_generator(name: str, weights: str | Path | None = None, *, trust: bool = False, **kwargs: Any) -> Generator:
    """A registered generator by name, or ``'package.module:factory'`` (kwargs go to the factory, except
    ``latent_shape``, ``prior`` and ``output_range`` which describe it). ``weights=None`` uses the generator's
    default checkpoint where it has one; ``trust=True`` allows pickled Python objects in the checkpoint."""
    if ":" in name:
        return load_custom(name, weights, trust=trust, **kwargs)
    factory = GENERATORS.get(name)
    try:
        inspect.signature(factory).bind(weights, trust=trust, **kwargs)
    except TypeError as exc:
        params = [p for p in inspect.signature(factory).parameters if p not in ("weights", "trust")]
        raise ConfigError(f"generator {name!r}: {exc}; its options are {', '.join(params)}") from None
    gen: Generator = factory(weights, trust=trust, **kwargs)
    return gen
