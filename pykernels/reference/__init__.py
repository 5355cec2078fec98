"""Float64 NumPy references (forward and backward) of every pykernels op: the test oracle.

Imports only NumPy. See each module's header for the formulas.
"""

from .gemm import (
    ACTIVATIONS,
    activation_derivative,
    activation_forward,
    linear_backward,
    linear_forward,
    matmul_backward,
    matmul_forward,
)
from .pool2d import (
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool2d_forward,
    adaptive_max_pool2d_backward,
    adaptive_max_pool2d_forward,
    avg_pool2d_backward,
    avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    pool2d_output_size,
)

__all__ = [
    "ACTIVATIONS",
    "activation_derivative",
    "activation_forward",
    "linear_backward",
    "linear_forward",
    "matmul_backward",
    "matmul_forward",
    "adaptive_avg_pool2d_backward",
    "adaptive_avg_pool2d_forward",
    "adaptive_max_pool2d_backward",
    "adaptive_max_pool2d_forward",
    "avg_pool2d_backward",
    "avg_pool2d_forward",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "pool2d_output_size",
]

from .conv2d import (  # noqa: E402
    conv2d_backward,
    conv2d_forward,
    conv2d_output_size,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
    conv_transpose2d_output_size,
)

__all__ += [
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_output_size",
    "conv_transpose2d_backward",
    "conv_transpose2d_forward",
    "conv_transpose2d_output_size",
]
