"""Standard architectures built only from pykernels.nn layers."""

from .mlp import MLP

__all__ = ["MLP"]
