"""What every model in pykernels.models shares: the choice of layer library.

Each architecture is written once, against a namespace of layer classes (`layers`, default
pykernels.nn). The kernel layers (Linear, Conv2d, ConvTranspose2d, the pools, MultiheadAttention,
LSTM, GRU, RNN) come from it; layers pykernels has no kernel for (BatchNorm2d, LayerNorm, ReLU,
Dropout, ...) are torch.nn's in both builds. `Model.with_torch_layers(...)` builds the same
architecture from torch.nn: the same parameter names and shapes, so one state_dict loads into
both. That twin is the baseline of the parity tests, the demo and bench/bench_models.py.
"""

import torch

from .. import nn as pk_nn

__all__ = ["TorchTwin", "resolve_layers", "check_positive_ints"]


def resolve_layers(layers):
    """The layer namespace a model builds from: pykernels.nn when `layers` is None."""
    return pk_nn if layers is None else layers


def check_positive_ints(**sizes):
    """ValueError naming the first argument that is not a positive int (bools refused)."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


class TorchTwin:
    """Mixin for models whose constructor takes a keyword `layers`."""

    @classmethod
    def with_torch_layers(cls, *args, **kwargs):
        """The same architecture built from torch.nn layers (same state_dict keys and shapes)."""
        if "layers" in kwargs:
            raise TypeError(f"{cls.__name__}.with_torch_layers() sets layers itself")
        return cls(*args, layers=torch.nn, **kwargs)
