"""Functional ops, mirroring torch.nn.functional where a counterpart exists.

Each op is a torch.library custom op with a fake (meta) function and an autograd formula;
CPU tensors run the C++ kernels (pykernels._C), CUDA tensors the Triton kernels
(pykernels.kernels), unless ``pykernels.backend(...)`` says otherwise.
"""
from .attention import attention
from .conv2d import conv2d, conv_transpose2d
from .gemm import linear, matmul
from .pool2d import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d
from .rnn import gru, gru_cell, lstm, lstm_cell

__all__ = ["linear", "matmul", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d",
           "adaptive_avg_pool2d", "adaptive_max_pool2d", "attention", "lstm_cell", "gru_cell", "lstm",
           "gru"]
