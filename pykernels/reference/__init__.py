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

__all__ = [
    "ACTIVATIONS",
    "activation_derivative",
    "activation_forward",
    "linear_backward",
    "linear_forward",
    "matmul_backward",
    "matmul_forward",
]
