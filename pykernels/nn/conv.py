"""pykernels.nn convolution modules: torch.nn.Conv2d and torch.nn.ConvTranspose2d whose forward
runs pykernels.ops (same constructor arguments, parameters, state_dict keys and repr as torch's,
so ``load_state_dict(torch_layer.state_dict())`` just works).

padding_mode: Conv2d's "reflect", "replicate" and "circular" work as in torch: the input is padded
by ``torch.nn.functional.pad`` in that mode (a torch op, outside pykernels' kernels: one padded
copy of the input per call), then convolved with padding 0. ConvTranspose2d supports "zeros" only,
as torch.nn.ConvTranspose2d does.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from .. import ops


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` whose forward runs ``pykernels.ops.conv2d``.

    Shape: ``[N, C, H, W]`` or ``[C, H, W]`` -> ``[N, K, OH, OW]`` (or ``[K, OH, OW]``), in the
    input's memory format (see pykernels.ops.conv2d).

    Raises (from forward): see ``pykernels.ops.conv2d``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # torch's own route: pad in that mode, then no padding
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return ops.conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return ops.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                          self.groups)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` whose forward runs ``pykernels.ops.conv_transpose2d``.

    ``forward(input, output_size=None)``: output_size ((OH, OW), or with the leading dims) picks
    the output_padding among the valid sizes, exactly as torch does.

    Raises (from forward): ValueError for padding_mode other than "zeros" or an output_size out
    of range (as torch); otherwise see ``pykernels.ops.conv_transpose2d``.
    """

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(f"padding_mode={self.padding_mode!r}: only 'zeros' padding mode is supported "
                             "for ConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              2, self.dilation)
        return ops.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                    self.groups, self.dilation)
