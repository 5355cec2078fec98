"""pykernels: hand-written GEMM, conv2d, pooling, attention and RNN kernels for PyTorch.

Triton kernels on NVIDIA GPUs, C++ kernels (AVX-512 / AVX2 / generic, chosen at import) on the
CPU, both under one autograd-registered torch.library op per operation.

    import pykernels
    y = pykernels.ops.linear(x, w, b, activation="relu")
    layer = pykernels.nn.Linear(784, 128)          # a torch.nn.Linear with faster kernels
    with pykernels.backend("reference"): ...        # the float64 NumPy oracle instead
"""
from __future__ import annotations

__version__ = "0.1.0"

import os as _os

import torch as _torch

from . import _C
from ._backend import backend, current_backend


def set_num_threads(n: int) -> None:
    """Threads used by the C++ kernels (pykernels' own pool, independent of torch's OpenMP).

    Raises:
        ValueError: ``n`` is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    """Threads used by the C++ kernels (default: torch.get_num_threads() at import)."""
    return _C.get_num_threads()


def isa() -> str:
    """The SIMD path of the C++ kernels chosen at import: "avx512", "avx2" or "generic"."""
    return _C.isa()


def thread_backend() -> str:
    """Where the C++ kernels' threads come from: "host-openmp" (torch's own OpenMP team, the
    default, so pykernels and torch share one set of workers) or "pool" (a private pool, chosen
    with PYKERNELS_THREADS=pool or when torch's libgomp is not found)."""
    return _C.thread_backend()


def empty_cache() -> int:
    """Frees the free blocks of pykernels' host block cache and returns how many bytes that was.

    The C++ kernels keep their large per-call buffers (the RNN's workspace and gate gradients)
    in a cache, so that the next call finds their pages already faulted in; free blocks are kept
    up to PYKERNELS_CACHE_MB (default 1024 MiB). Blocks still in use (a workspace an autograd graph
    holds) are not touched. The storage kept for large gradients (pykernels/ops/_outputs.py, up
    to PYKERNELS_OUTPUT_POOL_MB, default 256 MiB) that no tensor uses any more is dropped too.
    """
    from .ops import _outputs
    return _C.empty_cache() + _outputs.empty()


_C.set_num_threads(max(1, _torch.get_num_threads()))
if _os.environ.get("PYKERNELS_THREADS", "openmp") != "pool":
    _C.attach_host_openmp()

from . import ops, nn, reference  # noqa: E402  (the ops need _C configured first)
from .convert import convert  # noqa: E402

__all__ = ["ops", "nn", "reference", "convert", "backend", "current_backend", "set_num_threads",
           "get_num_threads", "isa", "thread_backend", "empty_cache", "__version__"]
