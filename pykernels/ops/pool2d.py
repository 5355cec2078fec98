"""2-D pooling ops, with torch.nn.functional's signatures and semantics.

    max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False)
    avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None)
    adaptive_avg_pool2d(x, output_size)
    adaptive_max_pool2d(x, output_size, return_indices=False)

Shapes: x [N, C, H, W] or [C, H, W] -> out [N, C, OH, OW] (or [C, OH, OW]), per axis
    OH = floor((H + 2*pH - dH*(kH - 1) - 1 + (sH - 1 if ceil_mode else 0)) / sH) + 1,
    minus 1 with ceil_mode when the last window would start past H + pH;
adaptive: OH = output_size, window i = rows [floor(i*H/OH), ceil((i+1)*H/OH)).
indices: int64, the flat position h*W + w in the input plane of each maximum (torch's). A NaN in a
window wins (the last one), ties keep the first maximum in row-major window order. The output
(and indices, and the input gradient) keeps the input's memory format: channels_last in ->
channels_last out, like torch.

Each op is a ``torch.library.custom_op`` (``pykernels::max_pool2d``, ``avg_pool2d``,
``adaptive_avg_pool2d``, ``adaptive_max_pool2d``) with a fake (meta) function and an autograd
formula whose backward is itself a custom op (``pykernels::max_pool2d_backward`` — shared by both
max pools: grad_out scattered through the indices —, ``avg_pool2d_backward``,
``adaptive_avg_pool2d_backward``: gathers). In eager mode on plain tensors the public functions
call the implementations directly (through a ``torch.autograd.Function`` when a gradient is
needed), skipping the custom op's Python dispatch (~13 us a call, more than a small pool costs);
under torch.compile, tensor subclasses or a dispatch mode the registered op runs: same kernels.
The max forward writes indices only when they are returned or a gradient will need them; on the
C++ backend the indices kept only for the backward are int32 (returned indices are int64).

Device dispatch: CPU tensors -> pykernels._C (C++, csrc/pool2d.cpp), CUDA tensors -> Triton
(kernels/pool2d.py); ``pykernels.backend`` overrides it ("reference": the float64 NumPy oracle).

Not supported (raises): integer/bool dtypes, float16/bfloat16 on the C++ backend, inputs that
are not 3-D or 4-D, double backward.

Test: pytest tests/test_pool2d.py      Benchmark: python -m pykernels bench pool2d
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _C
from .._backend import resolve, triton_kernels
from .gemm import TORCH, _eager, _np64

__all__ = ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"]

_CPP_DTYPES = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CL = torch.channels_last
_NCHW = torch.contiguous_format


# ---- arguments --------------------------------------------------------------------------------
def _pair(name: str, v) -> Tuple[int, int]:
    """An int or a sequence of 1 or 2 ints -> (for H, for W)."""
    if type(v) is int:
        return v, v
    if isinstance(v, (tuple, list, torch.Size)) and len(v) in (1, 2) and all(
            isinstance(e, (int, torch.SymInt)) and not isinstance(e, bool) for e in v):
        return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


def _window(kernel_size, stride, padding, dilation) -> Tuple[tuple, tuple, tuple, tuple]:
    k = _pair("kernel_size", kernel_size)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else _pair("stride", stride)
    p, d = _pair("padding", padding), _pair("dilation", dilation)
    if k[0] <= 0 or k[1] <= 0:
        raise ValueError(f"kernel_size must be positive, got {k}")
    if s[0] <= 0 or s[1] <= 0:
        raise ValueError(f"stride must be positive, got {s}")
    if d[0] <= 0 or d[1] <= 0:
        raise ValueError(f"dilation must be positive, got {d}")
    if p[0] < 0 or p[1] < 0:
        raise ValueError(f"padding must be non-negative, got {p}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding {p} must be at most half of kernel_size {k}")
    return k, s, p, d


def _pool_size(size, k, s, p, d, ceil_mode):
    """Output length along one axis (torch's pooling_output_shape)."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _out_hw(H, W, k, s, p, d, ceil_mode) -> Tuple[int, int]:
    OH = _pool_size(H, k[0], s[0], p[0], d[0], ceil_mode)
    OW = _pool_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    return OH, OW


def _check_out_hw(H, W, OH, OW, k, s, p, d) -> None:
    if OH <= 0 or OW <= 0:
        raise ValueError(f"output size ({OH}, {OW}) would be empty: input ({H}, {W}) is smaller than "
                         f"the window (kernel_size {k}, dilation {d}, padding {p}, stride {s})")


def _adaptive_size(output_size, H, W) -> Tuple[int, int]:
    if isinstance(output_size, (tuple, list, torch.Size)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair, got {output_size!r}")
        oh, ow = output_size
    else:
        oh = ow = output_size
    oh, ow = H if oh is None else oh, W if ow is None else ow
    if not all(isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in (oh, ow)):
        raise ValueError(f"output_size must be ints (or None), got {output_size!r}")
    if oh <= 0 or ow <= 0:
        raise ValueError(f"output_size must be positive, got {(oh, ow)}")
    return oh, ow


def _images(x, backend: str) -> Tuple[Tensor, bool]:
    """x as [N, C, H, W] and whether it was [C, H, W]; checks type, dtype and rank."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    allowed = _TRITON_DTYPES if backend == "triton" else _CPP_DTYPES
    if x.dtype not in allowed:
        names = ", ".join(str(t).replace("torch.", "") for t in allowed)
        raise TypeError(f"x has dtype {str(x.dtype).replace('torch.', '')}; the {backend} backend "
                        f"supports {names}")
    if x.dim() == 4:
        return x, False
    if x.dim() == 3:  # torch gives a contiguous result for any 3-D layout
        return (x if x.is_contiguous() else x.contiguous()).unsqueeze(0), True
    raise ValueError(f"x must be [N, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")


def _format(x: Tensor) -> torch.memory_format:
    """torch's suggest_memory_format: channels_last when x's strides are ordered like it."""
    if x.is_contiguous():
        return _NCHW
    if x.is_contiguous(memory_format=_CL):
        return _CL
    from torch._prims_common import suggest_memory_format
    return suggest_memory_format(x)


def _empty(shape, like: Tensor, fmt, dtype=None) -> Tensor:
    if fmt is _NCHW:
        return like.new_empty(shape, dtype=like.dtype if dtype is None else dtype)
    return torch.empty(shape, dtype=like.dtype if dtype is None else dtype, device=like.device,
                       memory_format=fmt)


def _from_np(arr, like: Tensor, fmt, dtype=None) -> Tensor:
    t = torch.from_numpy(arr).to(dtype=like.dtype if dtype is None else dtype, device=like.device)
    return t.contiguous(memory_format=fmt)


def _kernels():
    return triton_kernels("pool2d")


# ---- the C++ launches, shared with pykernels.numpy ----------------------------------------------
# io says how to read the front's arrays (gemm.TORCH for tensors; see gemm.TorchBuffers). x / out
# are [N, C, H, W] / [N, C, OH, OW]; in a backward, grad_in is x's gradient and grad out's.
def max_pool2d_forward_cpp(io, x, out, idx, idx32: bool, kernel_size, stride, padding, dilation) -> None:
    """out = the maximum of every window; idx (None: not written) its flat position h*W + w,
    int32 when idx32, else int64."""
    N, C, H, W = x.shape
    (kH, kW), (sH, sW), (pH, pW), (dH, dW) = kernel_size, stride, padding, dilation
    _C.max_pool2d_forward(io.fp64(x), N, C, H, W, io.ptr(x), *io.strides(x, 4), out.shape[2], out.shape[3],
                          io.ptr(out), *io.strides(out, 4), io.ptr(idx), *io.strides(idx, 4),
                          kH, kW, sH, sW, pH, pW, dH, dW, idx32)


def adaptive_max_pool2d_forward_cpp(io, x, out, idx, idx32: bool) -> None:
    """max_pool2d_forward_cpp over the adaptive windows of out's size."""
    N, C, H, W = x.shape
    _C.adaptive_max_pool2d_forward(io.fp64(x), N, C, H, W, io.ptr(x), *io.strides(x, 4),
                                   out.shape[2], out.shape[3], io.ptr(out), *io.strides(out, 4),
                                   io.ptr(idx), *io.strides(idx, 4), idx32)


def max_pool2d_backward_cpp(io, grad_in, grad, idx, idx32: bool) -> None:
    """grad_in = 0, then grad_in[n, c].flat[idx] += grad (both max pools; idx outside the plane
    is skipped by the kernel)."""
    N, C, H, W = grad_in.shape
    _C.max_pool2d_backward(io.fp64(grad), N, C, H, W, io.ptr(grad_in), *io.strides(grad_in, 4),
                           grad.shape[2], grad.shape[3], io.ptr(grad), *io.strides(grad, 4),
                           io.ptr(idx), *io.strides(idx, 4), idx32)


def avg_pool2d_forward_cpp(io, x, out, kernel_size, stride, padding, count_include_pad: bool,
                           divisor_override: int) -> None:
    """out = the mean of every window (divisor_override 0 = none)."""
    N, C, H, W = x.shape
    (kH, kW), (sH, sW), (pH, pW) = kernel_size, stride, padding
    _C.avg_pool2d_forward(io.fp64(x), N, C, H, W, io.ptr(x), *io.strides(x, 4), out.shape[2], out.shape[3],
                          io.ptr(out), *io.strides(out, 4), kH, kW, sH, sW, pH, pW, count_include_pad,
                          divisor_override)


def avg_pool2d_backward_cpp(io, grad_in, grad, kernel_size, stride, padding, count_include_pad: bool,
                            divisor_override: int) -> None:
    """grad_in[h, w] = sum over the windows covering (h, w) of grad / divisor (a gather)."""
    N, C, H, W = grad_in.shape
    (kH, kW), (sH, sW), (pH, pW) = kernel_size, stride, padding
    _C.avg_pool2d_backward(io.fp64(grad), N, C, H, W, io.ptr(grad_in), *io.strides(grad_in, 4),
                           grad.shape[2], grad.shape[3], io.ptr(grad), *io.strides(grad, 4),
                           kH, kW, sH, sW, pH, pW, count_include_pad, divisor_override)


def adaptive_avg_pool2d_forward_cpp(io, x, out) -> None:
    N, C, H, W = x.shape
    _C.adaptive_avg_pool2d_forward(io.fp64(x), N, C, H, W, io.ptr(x), *io.strides(x, 4),
                                   out.shape[2], out.shape[3], io.ptr(out), *io.strides(out, 4))


def adaptive_avg_pool2d_backward_cpp(io, grad_in, grad) -> None:
    N, C, H, W = grad_in.shape
    _C.adaptive_avg_pool2d_backward(io.fp64(grad), N, C, H, W, io.ptr(grad_in), *io.strides(grad_in, 4),
                                    grad.shape[2], grad.shape[3], io.ptr(grad), *io.strides(grad, 4))


def _grad_like(grad: Tensor, fmt) -> Tensor:
    """grad_out in the layout the gather kernels read fastest (the grad_in layout)."""
    return grad if grad.is_contiguous(memory_format=fmt) else grad.contiguous(memory_format=fmt)


# ---- max_pool2d ---------------------------------------------------------------------------------
def _max_forward(x: Tensor, backend: str, kernel_size, stride, padding, dilation, ceil_mode: bool,
                 need_indices: bool, OH: int, OW: int, idx_dtype=torch.int64) -> Tuple[Tensor, Optional[Tensor]]:
    """out [N, C, OH, OW] and the indices (None unless need_indices; int32 only for the C++
    backend's private copy kept for the backward, see _MaxPool2dEager)."""
    N, C, H, W = x.shape
    (kH, kW), (sH, sW), (pH, pW), (dH, dW) = kernel_size, stride, padding, dilation
    fmt = _format(x)
    if backend == "reference":
        from ..reference import pool2d as ref
        out, idx = ref.max_pool2d_forward(_np64(x), (kH, kW), (sH, sW), (pH, pW), (dH, dW), ceil_mode)
        return _from_np(out, x, fmt), (_from_np(idx, x, fmt, torch.int64) if need_indices else None)
    out = _empty((N, C, OH, OW), x, fmt)
    idx = _empty((N, C, OH, OW), x, fmt, idx_dtype) if need_indices else None
    if backend == "cpp":
        max_pool2d_forward_cpp(TORCH, x, out, idx, idx_dtype is torch.int32, kernel_size, stride, padding,
                               dilation)
    else:
        _kernels().max_pool2d_forward(x, out, idx, kH, kW, sH, sW, pH, pW, dH, dW)
    return out, idx


def _max_pool2d_impl(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                     dilation: List[int], ceil_mode: bool, need_indices: bool) -> Tuple[Tensor, Tensor]:
    OH, OW = _out_hw(x.shape[2], x.shape[3], kernel_size, stride, padding, dilation, ceil_mode)
    out, idx = _max_forward(x, resolve(x.device), kernel_size, stride, padding, dilation, ceil_mode,
                            need_indices, OH, OW)
    return out, (x.new_empty(0, dtype=torch.int64) if idx is None else idx)


_max_pool2d_op = torch.library.custom_op("pykernels::max_pool2d", mutates_args=())(_max_pool2d_impl)


@_max_pool2d_op.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode, need_indices):
    N, C, H, W = x.shape
    OH, OW = _out_hw(H, W, kernel_size, stride, padding, dilation, ceil_mode)
    fmt = _format(x)
    idx = _empty((N, C, OH, OW), x, fmt, torch.int64) if need_indices else x.new_empty(0, dtype=torch.int64)
    return _empty((N, C, OH, OW), x, fmt), idx


def _max_pool2d_backward_impl(grad: Tensor, indices: Tensor, input_size: List[int],
                              channels_last: bool) -> Tensor:
    """grad_in [input_size] = 0, then grad_in[n, c].flat[indices] += grad (both max pools)."""
    N, C, H, W = input_size
    fmt = _CL if channels_last else _NCHW
    backend = resolve(grad.device)
    if backend == "reference":
        from ..reference import pool2d as ref
        return _from_np(ref.max_pool2d_backward(_np64(grad), indices.cpu().numpy(), (N, C, H, W)), grad, fmt)
    grad_in = _empty((N, C, H, W), grad, fmt)
    if backend == "cpp":
        max_pool2d_backward_cpp(TORCH, grad_in, grad, indices, indices.dtype == torch.int32)
    else:
        _kernels().max_pool2d_backward(grad, indices, grad_in)
    return grad_in


_max_pool2d_backward_op = torch.library.custom_op(
    "pykernels::max_pool2d_backward", mutates_args=())(_max_pool2d_backward_impl)


@_max_pool2d_backward_op.register_fake
def _(grad, indices, input_size, channels_last):
    return _empty(tuple(input_size), grad, _CL if channels_last else _NCHW)


def _save_max(ctx, x: Tensor, indices: Tensor) -> None:
    # no zero-filled "gradient" for the int64 indices output (a full-size allocation + fill,
    # 30 ms at 32x64x112x112): absent output gradients arrive as None
    ctx.set_materialize_grads(False)
    ctx.input_size = list(x.shape)
    ctx.channels_last = _format(x) is _CL
    ctx.save_for_backward(indices)


def _max_grad_with(backward, n_args):
    def grad(ctx, grad_out, grad_indices):
        if grad_out is None:
            return (None,) * n_args
        (indices,) = ctx.saved_tensors
        return (backward(grad_out, indices, ctx.input_size, ctx.channels_last),) + (None,) * (n_args - 1)
    return grad


def _max_setup(ctx, inputs, output):
    _save_max(ctx, inputs[0], output[1])


_max_pool2d_op.register_autograd(_max_grad_with(_max_pool2d_backward_op, 7), setup_context=_max_setup)


def _private_index_dtype(x: Tensor, backend: str, return_indices: bool):
    """Indices that only our own backward reads are int32 on the C++ backend: half the bytes to
    write and read again, and (32x64x112x112) a 26 MB buffer that malloc recycles instead of 51 MB
    of fresh pages to fault in on every call."""
    if backend == "cpp" and not return_indices and x.shape[2] * x.shape[3] < 2**31:
        return torch.int32
    return torch.int64


class _MaxPool2dEager(torch.autograd.Function):
    """The eager path of pykernels::max_pool2d when x needs a gradient (see _eager)."""
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode, backend, OH, OW, idx_dtype):
        out, idx = _max_forward(x, backend, kernel_size, stride, padding, dilation, ceil_mode, True, OH, OW,
                                idx_dtype)
        _save_max(ctx, x, idx)
        ctx.mark_non_differentiable(idx)
        return out, idx

    backward = staticmethod(_max_grad_with(_max_pool2d_backward_impl, 10))


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """``torch.nn.functional.max_pool2d``: the maximum of every (dilated) window.

    Args:
        x: ``[N, C, H, W]`` or ``[C, H, W]``, any strides (channels_last runs vectorised over C).
        kernel_size, stride (default: kernel_size), padding, dilation: an int or a pair (H, W).
        ceil_mode: round the output size up (the last window must start inside the input or
            the left padding).
        return_indices: also return the int64 indices (flat h*W + w within the input plane).

    Returns:
        ``out`` ``[N, C, OH, OW]`` in x's memory format, or ``(out, indices)``.

    Raises:
        TypeError: x is not a tensor, or its dtype is not supported by the active backend.
        ValueError: x is not 3-D or 4-D; a kernel_size/stride/dilation that is not positive;
            negative padding or padding above kernel_size // 2; an empty output.
    """
    backend = resolve(x.device) if isinstance(x, Tensor) else None
    x4, unbatched = _images(x, backend)
    k, s, p, d = _window(kernel_size, stride, padding, dilation)
    OH, OW = _out_hw(x4.shape[2], x4.shape[3], k, s, p, d, ceil_mode)
    _check_out_hw(x4.shape[2], x4.shape[3], OH, OW, k, s, p, d)
    grad = x4.requires_grad and torch.is_grad_enabled()
    if _eager(x4):
        if grad:
            out, idx = _MaxPool2dEager.apply(x4, k, s, p, d, bool(ceil_mode), backend, OH, OW,
                                             _private_index_dtype(x4, backend, return_indices))
        else:
            out, idx = _max_forward(x4, backend, k, s, p, d, bool(ceil_mode), bool(return_indices), OH, OW)
    else:
        out, idx = _max_pool2d_op(x4, list(k), list(s), list(p), list(d), bool(ceil_mode),
                                  bool(return_indices or grad))
    if not return_indices:
        return out.squeeze(0) if unbatched else out
    return (out.squeeze(0), idx.squeeze(0)) if unbatched else (out, idx)


# ---- avg_pool2d ---------------------------------------------------------------------------------
def _avg_forward(x: Tensor, backend: str, kernel_size, stride, padding, ceil_mode: bool,
                 count_include_pad: bool, divisor_override: Optional[int], OH: int, OW: int) -> Tensor:
    N, C, H, W = x.shape
    (kH, kW), (sH, sW), (pH, pW) = kernel_size, stride, padding
    fmt = _format(x)
    if backend == "reference":
        from ..reference import pool2d as ref
        return _from_np(ref.avg_pool2d_forward(_np64(x), (kH, kW), (sH, sW), (pH, pW), ceil_mode,
                                               count_include_pad, divisor_override), x, fmt)
    out = _empty((N, C, OH, OW), x, fmt)
    div = divisor_override or 0
    if backend == "cpp":
        avg_pool2d_forward_cpp(TORCH, x, out, kernel_size, stride, padding, count_include_pad, div)
    else:
        _kernels().avg_pool2d_forward(x, out, kH, kW, sH, sW, pH, pW, count_include_pad, div)
    return out


def _avg_pool2d_impl(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                     ceil_mode: bool, count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
    OH, OW = _out_hw(x.shape[2], x.shape[3], kernel_size, stride, padding, (1, 1), ceil_mode)
    return _avg_forward(x, resolve(x.device), kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, OH, OW)


_avg_pool2d_op = torch.library.custom_op("pykernels::avg_pool2d", mutates_args=())(_avg_pool2d_impl)


@_avg_pool2d_op.register_fake
def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    N, C, H, W = x.shape
    OH, OW = _out_hw(H, W, kernel_size, stride, padding, (1, 1), ceil_mode)
    return _empty((N, C, OH, OW), x, _format(x))


def _avg_pool2d_backward_impl(grad: Tensor, input_size: List[int], channels_last: bool,
                              kernel_size: List[int], stride: List[int], padding: List[int],
                              ceil_mode: bool, count_include_pad: bool,
                              divisor_override: Optional[int]) -> Tensor:
    """grad_in[h, w] = sum over the windows covering (h, w) of grad / divisor (a gather)."""
    N, C, H, W = input_size
    (kH, kW), (sH, sW), (pH, pW) = kernel_size, stride, padding
    fmt = _CL if channels_last else _NCHW
    backend = resolve(grad.device)
    if backend == "reference":
        from ..reference import pool2d as ref
        return _from_np(ref.avg_pool2d_backward(_np64(grad), (N, C, H, W), (kH, kW), (sH, sW), (pH, pW),
                                                ceil_mode, count_include_pad, divisor_override), grad, fmt)
    grad_in = _empty((N, C, H, W), grad, fmt)
    div = divisor_override or 0
    if backend == "cpp":
        avg_pool2d_backward_cpp(TORCH, grad_in, _grad_like(grad, fmt), kernel_size, stride, padding,
                                count_include_pad, div)
    else:
        _kernels().avg_pool2d_backward(grad, grad_in, kH, kW, sH, sW, pH, pW, count_include_pad, div)
    return grad_in


_avg_pool2d_backward_op = torch.library.custom_op(
    "pykernels::avg_pool2d_backward", mutates_args=())(_avg_pool2d_backward_impl)


@_avg_pool2d_backward_op.register_fake
def _(grad, input_size, channels_last, kernel_size, stride, padding, ceil_mode, count_include_pad,
      divisor_override):
    return _empty(tuple(input_size), grad, _CL if channels_last else _NCHW)


def _save_avg(ctx, x, window) -> None:
    ctx.input_size = list(x.shape)
    ctx.channels_last = _format(x) is _CL
    ctx.window = window


def _avg_grad_with(backward, n_args):
    def grad(ctx, grad_out):
        return (backward(grad_out, ctx.input_size, ctx.channels_last, *ctx.window),) + (None,) * (n_args - 1)
    return grad


def _avg_setup(ctx, inputs, output):
    _save_avg(ctx, inputs[0], inputs[1:])


_avg_pool2d_op.register_autograd(_avg_grad_with(_avg_pool2d_backward_op, 7), setup_context=_avg_setup)


class _AvgPool2dEager(torch.autograd.Function):
    """The eager path of pykernels::avg_pool2d when x needs a gradient (see _eager)."""
    @staticmethod
    def forward(ctx, x, *window):
        _save_avg(ctx, x, window)
        return _avg_pool2d_impl(x, *window)

    backward = staticmethod(_avg_grad_with(_avg_pool2d_backward_impl, 7))


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None) -> Tensor:
    """``torch.nn.functional.avg_pool2d``: the mean of every window.

    The divisor is ``divisor_override`` when given, else the window clipped to the padded input
    (count_include_pad=True: padding counts, the ceil_mode overhang past it does not) or to the
    input (count_include_pad=False).

    Args:
        x: ``[N, C, H, W]`` or ``[C, H, W]``, any strides.
        kernel_size, stride (default: kernel_size), padding: an int or a pair (H, W).

    Returns:
        ``[N, C, OH, OW]`` in x's memory format.

    Raises:
        TypeError: x is not a tensor, or its dtype is not supported by the active backend.
        ValueError: x is not 3-D or 4-D; kernel_size/stride not positive; padding negative or
            above kernel_size // 2; an empty output; divisor_override == 0.
    """
    backend = resolve(x.device) if isinstance(x, Tensor) else None
    x4, unbatched = _images(x, backend)
    k, s, p, _ = _window(kernel_size, stride, padding, 1)
    if divisor_override is not None and (isinstance(divisor_override, bool) or divisor_override == 0):
        raise ValueError(f"divisor_override must be a non-zero int or None, got {divisor_override!r}")
    OH, OW = _out_hw(x4.shape[2], x4.shape[3], k, s, p, (1, 1), ceil_mode)
    _check_out_hw(x4.shape[2], x4.shape[3], OH, OW, k, s, p, (1, 1))
    window = (k, s, p, bool(ceil_mode), bool(count_include_pad),
              None if divisor_override is None else int(divisor_override))
    if not _eager(x4):
        out = _avg_pool2d_op(x4, list(k), list(s), list(p), *window[3:])
    elif x4.requires_grad and torch.is_grad_enabled():
        out = _AvgPool2dEager.apply(x4, *window)
    else:
        out = _avg_forward(x4, backend, *window, OH, OW)
    return out.squeeze(0) if unbatched else out


# ---- adaptive_avg_pool2d ------------------------------------------------------------------------
def _adaptive_avg_pool2d_impl(x: Tensor, output_size: List[int]) -> Tensor:
    N, C, H, W = x.shape
    OH, OW = output_size
    fmt = _format(x)
    backend = resolve(x.device)
    if backend == "reference":
        from ..reference import pool2d as ref
        return _from_np(ref.adaptive_avg_pool2d_forward(_np64(x), (OH, OW)), x, fmt)
    out = _empty((N, C, OH, OW), x, fmt)
    if backend == "cpp":
        adaptive_avg_pool2d_forward_cpp(TORCH, x, out)
    else:
        _kernels().adaptive_avg_pool2d_forward(x, out)
    return out


_adaptive_avg_pool2d_op = torch.library.custom_op(
    "pykernels::adaptive_avg_pool2d", mutates_args=())(_adaptive_avg_pool2d_impl)


@_adaptive_avg_pool2d_op.register_fake
def _(x, output_size):
    return _empty((x.shape[0], x.shape[1], output_size[0], output_size[1]), x, _format(x))


def _adaptive_avg_pool2d_backward_impl(grad: Tensor, input_size: List[int], channels_last: bool) -> Tensor:
    """grad_in[h, w] = sum over the adaptive windows covering (h, w) of grad / window size."""
    N, C, H, W = input_size
    fmt = _CL if channels_last else _NCHW
    backend = resolve(grad.device)
    if backend == "reference":
        from ..reference import pool2d as ref
        return _from_np(ref.adaptive_avg_pool2d_backward(_np64(grad), (N, C, H, W)), grad, fmt)
    grad_in = _empty((N, C, H, W), grad, fmt)
    if backend == "cpp":
        adaptive_avg_pool2d_backward_cpp(TORCH, grad_in, _grad_like(grad, fmt))
    else:
        _kernels().adaptive_avg_pool2d_backward(grad, grad_in)
    return grad_in


_adaptive_avg_pool2d_backward_op = torch.library.custom_op(
    "pykernels::adaptive_avg_pool2d_backward", mutates_args=())(_adaptive_avg_pool2d_backward_impl)


@_adaptive_avg_pool2d_backward_op.register_fake
def _(grad, input_size, channels_last):
    return _empty(tuple(input_size), grad, _CL if channels_last else _NCHW)


def _adaptive_avg_grad_with(backward):
    def grad(ctx, grad_out):
        return backward(grad_out, ctx.input_size, ctx.channels_last), None
    return grad


def _adaptive_avg_setup(ctx, inputs, output):
    _save_avg(ctx, inputs[0], ())


_adaptive_avg_pool2d_op.register_autograd(_adaptive_avg_grad_with(_adaptive_avg_pool2d_backward_op),
                                          setup_context=_adaptive_avg_setup)


class _AdaptiveAvgPool2dEager(torch.autograd.Function):
    """The eager path of pykernels::adaptive_avg_pool2d when x needs a gradient (see _eager)."""
    @staticmethod
    def forward(ctx, x, output_size):
        _save_avg(ctx, x, ())
        return _adaptive_avg_pool2d_impl(x, output_size)

    backward = staticmethod(_adaptive_avg_grad_with(_adaptive_avg_pool2d_backward_impl))


def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    """``torch.nn.functional.adaptive_avg_pool2d``: the mean of window i = rows
    [floor(i*H/OH), ceil((i+1)*H/OH)) (and the same along W).

    Args:
        x: ``[N, C, H, W]`` or ``[C, H, W]``, any strides.
        output_size: an int or a pair (OH, OW); None in the pair keeps that input size.

    Raises:
        TypeError: x is not a tensor, or its dtype is not supported by the active backend.
        ValueError: x is not 3-D or 4-D; output_size not positive.
    """
    backend = resolve(x.device) if isinstance(x, Tensor) else None
    x4, unbatched = _images(x, backend)
    size = _adaptive_size(output_size, x4.shape[2], x4.shape[3])
    if not _eager(x4):
        out = _adaptive_avg_pool2d_op(x4, list(size))
    elif x4.requires_grad and torch.is_grad_enabled():
        out = _AdaptiveAvgPool2dEager.apply(x4, size)
    else:
        out = _adaptive_avg_pool2d_impl(x4, size)
    return out.squeeze(0) if unbatched else out


# ---- adaptive_max_pool2d ------------------------------------------------------------------------
def _adaptive_max_pool2d_impl(x: Tensor, output_size: List[int], need_indices: bool) -> Tuple[Tensor, Tensor]:
    return _adaptive_max_forward(x, output_size, need_indices, torch.int64)


def _adaptive_max_forward(x: Tensor, output_size, need_indices: bool, idx_dtype) -> Tuple[Tensor, Tensor]:
    N, C, H, W = x.shape
    OH, OW = output_size
    fmt = _format(x)
    backend = resolve(x.device)
    if backend == "reference":
        from ..reference import pool2d as ref
        out, idx = ref.adaptive_max_pool2d_forward(_np64(x), (OH, OW))
        return (_from_np(out, x, fmt),
                _from_np(idx, x, fmt, torch.int64) if need_indices else x.new_empty(0, dtype=torch.int64))
    out = _empty((N, C, OH, OW), x, fmt)
    # the Triton launcher always writes indices
    write = need_indices or backend != "cpp"
    if backend != "cpp":
        idx_dtype = torch.int64
    idx = _empty((N, C, OH, OW), x, fmt, idx_dtype) if write else x.new_empty(0, dtype=torch.int64)
    if backend == "cpp":
        adaptive_max_pool2d_forward_cpp(TORCH, x, out, idx if need_indices else None, idx_dtype is torch.int32)
    else:
        _kernels().adaptive_max_pool2d_forward(x, out, idx)
        if not need_indices:
            idx = x.new_empty(0, dtype=torch.int64)
    return out, idx


_adaptive_max_pool2d_op = torch.library.custom_op(
    "pykernels::adaptive_max_pool2d", mutates_args=())(_adaptive_max_pool2d_impl)


@_adaptive_max_pool2d_op.register_fake
def _(x, output_size, need_indices):
    shape = (x.shape[0], x.shape[1], output_size[0], output_size[1])
    fmt = _format(x)
    idx = _empty(shape, x, fmt, torch.int64) if need_indices else x.new_empty(0, dtype=torch.int64)
    return _empty(shape, x, fmt), idx


def _adaptive_max_setup(ctx, inputs, output):
    _save_max(ctx, inputs[0], output[1])


_adaptive_max_pool2d_op.register_autograd(_max_grad_with(_max_pool2d_backward_op, 3),
                                          setup_context=_adaptive_max_setup)


class _AdaptiveMaxPool2dEager(torch.autograd.Function):
    """The eager path of pykernels::adaptive_max_pool2d when x needs a gradient (see _eager)."""
    @staticmethod
    def forward(ctx, x, output_size, idx_dtype):
        out, idx = _adaptive_max_forward(x, output_size, True, idx_dtype)
        _save_max(ctx, x, idx)
        ctx.mark_non_differentiable(idx)
        return out, idx

    backward = staticmethod(_max_grad_with(_max_pool2d_backward_impl, 3))


def adaptive_max_pool2d(x: Tensor, output_size, return_indices: bool = False):
    """``torch.nn.functional.adaptive_max_pool2d``: max_pool2d's rule (NaN wins, first of ties)
    over the adaptive windows of adaptive_avg_pool2d.

    Args:
        x: ``[N, C, H, W]`` or ``[C, H, W]``, any strides.
        output_size: an int or a pair (OH, OW); None in the pair keeps that input size.
        return_indices: also return the int64 indices (flat h*W + w within the input plane).

    Raises:
        TypeError: x is not a tensor, or its dtype is not supported by the active backend.
        ValueError: x is not 3-D or 4-D; output_size not positive.
    """
    backend = resolve(x.device) if isinstance(x, Tensor) else None
    x4, unbatched = _images(x, backend)
    size = _adaptive_size(output_size, x4.shape[2], x4.shape[3])
    grad = x4.requires_grad and torch.is_grad_enabled()
    if not _eager(x4):
        out, idx = _adaptive_max_pool2d_op(x4, list(size), bool(return_indices or grad))
    elif grad:
        out, idx = _AdaptiveMaxPool2dEager.apply(x4, size, _private_index_dtype(x4, backend, return_indices))
    else:
        out, idx = _adaptive_max_pool2d_impl(x4, size, bool(return_indices))
    if unbatched:
        out, idx = out.squeeze(0), idx.squeeze(0) if idx.dim() == 4 else idx
    return (out, idx) if return_indices else out


# ---- torch.autocast: the public functions cast their arguments first (see ops/_autocast.py) ------
from . import _autocast  # noqa: E402  (kept with the wrapping it serves)

max_pool2d = _autocast.input_precision(max_pool2d)
avg_pool2d = _autocast.input_precision(avg_pool2d)
adaptive_avg_pool2d = _autocast.input_precision(adaptive_avg_pool2d)
adaptive_max_pool2d = _autocast.input_precision(adaptive_max_pool2d)
