"""Face recognition backbones (embeddings out, no classifier), margin heads (training only), checkpoint I/O."""

from frleak.models.base import create_backbone, make_norm1d, make_norm2d

__all__ = ["create_backbone", "make_norm1d", "make_norm2d"]
