"""pykernels.nn pooling modules: torch.nn.MaxPool2d, AvgPool2d, AdaptiveAvgPool2d and
AdaptiveMaxPool2d whose forward runs pykernels.ops (same constructor arguments, attributes and
repr as torch's; they hold no parameters)."""
from __future__ import annotations

import torch

from .. import ops


class MaxPool2d(torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` on ``pykernels.ops.max_pool2d``.

    Shape: ``[N, C, H, W]`` or ``[C, H, W]`` -> ``[N, C, OH, OW]`` (see pykernels.ops.pool2d);
    returns ``(out, indices)`` when constructed with return_indices=True.

    Raises (from forward): see ``pykernels.ops.max_pool2d``.
    """

    def forward(self, input: torch.Tensor):
        return ops.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                              ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` on ``pykernels.ops.avg_pool2d``.

    Raises (from forward): see ``pykernels.ops.avg_pool2d``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d`` on ``pykernels.ops.adaptive_avg_pool2d``.

    Raises (from forward): see ``pykernels.ops.adaptive_avg_pool2d``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool2d(torch.nn.AdaptiveMaxPool2d):
    """``torch.nn.AdaptiveMaxPool2d`` on ``pykernels.ops.adaptive_max_pool2d``; returns
    ``(out, indices)`` when constructed with return_indices=True.

    Raises (from forward): see ``pykernels.ops.adaptive_max_pool2d``.
    """

    def forward(self, input: torch.Tensor):
        return ops.adaptive_max_pool2d(input, self.output_size, self.return_indices)
