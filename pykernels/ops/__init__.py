"""Functional ops, mirroring torch.nn.functional where a counterpart exists.

Each op is a torch.library custom op with a fake (meta) function and an autograd formula;
CPU tensors run the C++ kernels (pykernels._C), CUDA tensors the Triton kernels
(pykernels.kernels), unless ``pykernels.backend(...)`` says otherwise.
"""
from .gemm import linear, matmul

__all__ = ["linear", "matmul"]
