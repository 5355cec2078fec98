"""Triton GPU kernels of pykernels, shipped as ``pykernels.kernels``.

One module per op stem (``gemm``, ...), each exposing ``<op>_forward`` / ``<op>_backward``
host launchers over preallocated torch tensors. Nothing here knows about autograd or
``pykernels.ops``: only torch and triton are imported.

CPU tensors work only in the Triton interpreter: set ``TRITON_INTERPRET=1`` before import.
"""

from .attention import attention_backward, attention_forward
from .gemm import gemm_backward, gemm_forward
from .pool2d import (
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool2d_forward,
    adaptive_max_pool2d_forward,
    avg_pool2d_backward,
    avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from .rnn import rnn_backward, rnn_forward, rnn_workspace_elems

__all__ = [
    "gemm_forward", "gemm_backward",
    "attention_forward", "attention_backward",
    "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d_forward",
    "rnn_workspace_elems", "rnn_forward", "rnn_backward",
]
