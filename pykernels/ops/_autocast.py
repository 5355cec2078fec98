"""What the public ops do inside ``torch.autocast``: cast their arguments first, then run as usual.

Inside ``torch.autocast(device_type, dtype=...)`` a public op casts its floating-point tensor
arguments on that device (float64 ones are left alone, as torch does) before any check or
kernel, and returns what the op returns for the cast arguments:

    op                                         CUDA region (float16 / bfloat16)   CPU region (any dtype)
    linear, matmul, conv2d, conv_transpose2d,  to the region's dtype: the Triton  bfloat16 / float16 ->
    attention, lstm, gru, lstm_cell, gru_cell  kernels run in it, accumulating    float32: the output is
                                               in float32 (torch's lower-         float32
                                               precision list holds these ops)
    the pooling ops                            unchanged: the input's dtype       (same)
                                               (torch's pooling does the same)

On the CPU the C++ kernels compute in float32 and float64 only, so a low-precision argument is
widened (exactly) to float32 instead of being rejected: a pykernels layer then composes with
torch layers that autocast to bfloat16 around it, and the answer is never less accurate than
torch's. Outside an autocast region nothing changes: a bfloat16 CPU tensor still raises
TypeError (no silent upcast copy). Gradients flow back through the casts (a differentiable
``Tensor.to``) to the arguments' own dtypes. Not done: torch's per-region cache of cast
weights (here every call casts again).

Why here and not ``torch.library.register_autocast``: in eager mode the public functions call
the op's implementation directly (see ops/gemm.py ``_eager``), so an autocast kernel registered
on the custom op would run only under torch.compile; and register_autocast fixes one dtype at
registration, where the region picks float16 or bfloat16 when it is entered. The wrapper is
plain Python, so torch.compile traces the casts with the rest of the public function.

Test: pytest tests/test_reliability.py -k autocast
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["lower_precision", "input_precision"]

_any_enabled = getattr(torch._C, "_is_any_autocast_enabled", None) or (
    lambda: torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))


def _first_tensor(args, kwargs):
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, Tensor):
            return v
    return None


def _cast(v, device_type: str, dtype: torch.dtype):
    """v with every floating tensor on device_type (not float64) cast to dtype; tuples and lists
    (an LSTM's hx) are walked."""
    if isinstance(v, Tensor):
        if (v.is_floating_point() and v.dtype != dtype and v.dtype != torch.float64
                and v.device.type == device_type):
            return v.to(dtype)
        return v
    if isinstance(v, (tuple, list)):
        return type(v)(_cast(e, device_type, dtype) for e in v)
    return v


def _target(args, kwargs, lower: bool):
    """(device_type, dtype) to cast to, or None when the op runs as it is."""
    first = _first_tensor(args, kwargs)
    if first is None:
        return None
    device_type = first.device.type
    if not torch.is_autocast_enabled(device_type):
        return None
    if device_type == "cpu":
        return device_type, torch.float32
    return (device_type, torch.get_autocast_dtype(device_type)) if lower else None


def _wrap(fn, lower: bool):
    @functools.wraps(fn)
    def op(*args, **kwargs):
        if _any_enabled():
            target = _target(args, kwargs, lower)
            if target is not None:
                args = _cast(args, *target)
                kwargs = {k: _cast(v, *target) for k, v in kwargs.items()}
        return fn(*args, **kwargs)
    return op


def lower_precision(fn):
    """fn under autocast: CUDA -> the region's dtype; CPU -> float32 (see the module header)."""
    return _wrap(fn, lower=True)


def input_precision(fn):
    """fn under autocast: CUDA -> the input's dtype; CPU -> float32 (see the module header)."""
    return _wrap(fn, lower=False)
