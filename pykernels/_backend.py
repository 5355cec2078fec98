"""Which kernels run: ``pykernels.backend("auto" | "cpp" | "triton" | "reference")``.

``auto`` picks the C++ kernels for CPU tensors and the Triton kernels for CUDA tensors.
``triton`` on CPU tensors runs the Triton kernels in Triton's interpreter, which needs
``TRITON_INTERPRET=1`` in the environment before pykernels is imported (that is how the GPU
kernels are tested on a machine without a GPU). ``reference`` runs the float64 NumPy oracle.
The choice is per thread / per async context (a ``ContextVar``).
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import torch

BACKENDS = ("auto", "cpp", "triton", "reference")
_current = contextvars.ContextVar("pykernels_backend", default="auto")


@contextlib.contextmanager
def backend(name: str):
    """Context manager choosing the kernels used inside the block.

    Raises:
        ValueError: ``name`` is not one of "auto", "cpp", "triton", "reference".
    """
    if name not in BACKENDS:
        raise ValueError(f"backend: name must be one of {BACKENDS}, got {name!r}")
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)


def current_backend() -> str:
    return _current.get()


def resolve(device) -> str:
    """The concrete backend ("cpp", "triton" or "reference") for tensors on ``device``.

    While torch.compile traces a function (where a ContextVar cannot be read), the public
    wrappers see the "auto" choice; the ops' kernels, which run outside the trace, still read
    the ``backend(...)`` in force when they execute."""
    if torch.compiler.is_compiling():
        return "triton" if device.type == "cuda" else "cpp"
    name = _current.get()
    if name == "auto":
        return "triton" if device.type == "cuda" else "cpp"
    if name == "cpp" and device.type != "cpu":
        raise ValueError(f"backend 'cpp' runs on CPU tensors only, got a tensor on {device}")
    if name == "reference" and device.type != "cpu":
        raise ValueError(f"backend 'reference' runs on CPU tensors only, got a tensor on {device}")
    if name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "backend 'triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "in the environment before importing pykernels")
    return name


def triton_kernels(stem: str):
    """Imports pykernels.kernels.<stem> lazily (Triton is optional on CPU-only machines)."""
    import importlib

    try:
        return importlib.import_module(f"pykernels.kernels.{stem}")
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(f"the Triton backend needs the 'triton' package: {e}") from e
