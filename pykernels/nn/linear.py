"""pykernels.nn.Linear: torch.nn.Linear on pykernels' GEMM (same constructor and state_dict)."""
from __future__ import annotations

import torch

from .. import ops


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` whose forward runs ``pykernels.ops.linear``.

    Same constructor (in_features, out_features, bias=True, device=None, dtype=None), same
    parameters and state_dict keys, so ``load_state_dict(torch_linear.state_dict())`` works.

    Raises (from forward): TypeError for dtypes the active backend does not support
    (the C++ backend: float32 and float64).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.linear(input, self.weight, self.bias)
