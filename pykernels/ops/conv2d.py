"""2-D convolution ops, with torch.nn.functional's signatures and semantics.

    conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None)
    conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1)

Shapes (G = groups): conv2d x [N, C, H, W] or [C, H, W], weight [K, C/G, R, S], bias [K]
-> out [N, K, OH, OW] (or [K, OH, OW]), per axis, with top/bottom padding pT/pB:
    OH = floor((H + pT + pB - dH*(R - 1) - 1) / sH) + 1
    out = act(conv2d(x, weight) + bias), act in None, "relu", "gelu" (erf), "tanh", "sigmoid"
padding: an int or a pair (pT = pB = pH), "valid" (0) or "same" (stride 1 only; the total
dH*(R - 1) split as pT = total // 2, pB = total - pT: the extra row goes at the bottom and the
extra column at the right, as in torch).
conv_transpose2d x [N, C_in, H, W], weight [C_in, C_out/G, R, S], bias [C_out] -> out
[N, C_out, OH, OW], OH = (H - 1)*sH - 2*pH + dH*(R - 1) + opH + 1, 0 <= opH < max(sH, dH).
The math (group layout, which rows get what) is spelled out in pykernels/reference/conv2d.py.

Each backend has three convolution kernels plus an epilogue pass, all with the geometry of a
FORWARD conv (input [N, C, H, W], weight [K, C/G, R, S], output [N, K, OH, OW], top/left padding
pH/pW; OH/OW are the output's, so "same" padding and output_padding need nothing else):
    forward          out = act(conv(x, w) + bias) (+ the pre-activation, kept for gelu's backward)
    backward_input   dx = conv's input gradient of dy (+ bias: conv_transpose2d's forward)
    backward_weight  dw = sum over n, oh, ow
    backward_bias    dz = dy * act'(saved) and/or dbias = sum of dz over n, oh, ow
conv2d backward:            dz = dy * act'(.); dx = backward_input(dz); dw = backward_weight(dz, x)
                            (act' from the saved output y, or from the pre-activation for gelu)
conv_transpose2d forward:   backward_input(x as dy, weight, bias)
conv_transpose2d backward:  dx = forward(dy, weight); dw = backward_weight(x as dy, dy as x)

Each op is a ``torch.library.custom_op`` (``pykernels::conv2d``, ``pykernels::conv_transpose2d``)
with a fake (meta) function and an autograd formula whose backward is itself one custom op
(``pykernels::conv2d_backward``, ``pykernels::conv_transpose2d_backward``) computing only the
gradients asked for. In eager mode on plain tensors the public functions call the
implementations directly (through a ``torch.autograd.Function`` when a gradient is needed),
skipping the custom op's Python dispatch; under torch.compile, tensor subclasses or a dispatch
mode the registered ops run: same kernels, same formulas.

Layout: the kernels take any strides (channels_last, non-contiguous views; stride-0 inputs such
as an expanded grad_out), so no input is ever copied. Outputs are allocated here: out (and dx) in
x's memory format (channels_last in -> channels_last out, decided from x alone as torch's
suggest_memory_format does; an unbatched [C, H, W] x gives a contiguous out, like torch), dw in
weight's memory format, dbias contiguous.
Empty batches (N = 0) work like torch's (an empty output; zero weight/bias gradients) without
calling a kernel.

Device dispatch: CPU tensors -> pykernels._C (C++, csrc/conv2d.cpp), CUDA tensors -> Triton
(kernels/conv2d.py); ``pykernels.backend`` overrides it ("reference": the float64 NumPy oracle).

Not supported (raises before any kernel runs): integer/bool dtypes, float16/bfloat16 on the C++
(and reference) backend, mixed dtypes or devices, x that is not 3-D or 4-D, C = 0 or K = 0
channels (torch answers C = 0 with a misshapen empty tensor), an empty output (kernel larger
than the padded input), padding strings for conv_transpose2d, an activation on
conv_transpose2d, padding_mode other than zeros (the modules in pykernels.nn pad first), double
backward. torch decides channels_last from x OR weight on some paths; here only x decides.

Test: pytest tests/test_conv2d.py      Benchmark: python -m pykernels bench conv2d
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .. import _C
from .._backend import resolve, triton_kernels
from . import _strided as S
# the layout/argument helpers the pooling ops already define (torch's suggest_memory_format,
# outputs allocated in a memory format, the eager-path test, int-or-pair arguments)
from .gemm import TORCH, _dtype_name, _eager, _np64, matmul
from .pool2d import _empty, _format, _pair

__all__ = ["conv2d", "conv_transpose2d"]

_CPP_DTYPES = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CL = torch.channels_last
_NCHW = torch.contiguous_format
_GELU = S.ACTIVATIONS["gelu"]


# ---- geometry ---------------------------------------------------------------------------------
class _Geom(NamedTuple):
    """A FORWARD conv's geometry, in the order the C++ entry points take it: input [N, C, H, W],
    weight [K, C/groups, R, S], output [N, K, OH, OW], stride, top/left padding, dilation."""
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    OH: int
    OW: int
    groups: int
    sH: int
    sW: int
    pH: int
    pW: int
    dH: int
    dW: int


def _conv_out(size, pad_lo, pad_hi, k, s, d):
    """floor((size + pad_lo + pad_hi - d*(k - 1) - 1) / s) + 1"""
    return (size + pad_lo + pad_hi - d * (k - 1) - 1) // s + 1


def _tconv_out(size, k, s, p, op, d):
    """(size - 1)*s - 2*p + d*(k - 1) + op + 1"""
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


def _conv_geom(x, weight, stride, padding, dilation, groups) -> _Geom:
    """conv2d: padding = (pT, pB, pL, pR)."""
    N, C, H, W = x.shape
    K, _, R, S_ = weight.shape
    (sH, sW), (pT, pB, pL, pR), (dH, dW) = stride, padding, dilation
    return _Geom(N, C, H, W, K, R, S_, _conv_out(H, pT, pB, R, sH, dH), _conv_out(W, pL, pR, S_, sW, dW),
                 groups, sH, sW, pT, pL, dH, dW)


def _tconv_geom(x, weight, stride, padding, output_padding, groups, dilation) -> _Geom:
    """conv_transpose2d as the forward conv whose input gradient it is: that conv's input is
    conv_transpose2d's out [N, C_out, OH, OW], its output is x [N, C_in, H, W], K = C_in."""
    N, C_in, H, W = x.shape
    _, cog, R, S_ = weight.shape
    (sH, sW), (pH, pW), (oH, oW), (dH, dW) = stride, padding, output_padding, dilation
    return _Geom(N, cog * groups, _tconv_out(H, R, sH, pH, oH, dH), _tconv_out(W, S_, sW, pW, oW, dW),
                 C_in, R, S_, H, W, groups, sH, sW, pH, pW, dH, dW)


# ---- the kernels, per backend ----------------------------------------------------------------
def _kernels():
    return triton_kernels("conv2d")


# The C++ launches, shared with pykernels.numpy: io says how to read the front's arrays
# (gemm.TORCH for tensors; see gemm.TorchBuffers). Sizes come from the geometry g.
def conv2d_forward_cpp(io, g: _Geom, x, w, bias, act: int, out, pre) -> None:
    """out = act(conv(x, w) + bias); pre = conv(x, w) + bias when given."""
    _C.conv2d_forward(io.fp64(x), *g, io.ptr(x), *io.strides(x, 4), io.ptr(w), *io.strides(w, 4),
                      io.ptr(bias), *io.strides(bias, 1), act,
                      io.ptr(out), *io.strides(out, 4), io.ptr(pre), *io.strides(pre, 4))


def conv2d_backward_input_cpp(io, g: _Geom, dy, w, dx, bias) -> None:
    """dx [N, C, H, W] = conv's input gradient of dy [N, K, OH, OW] (+ bias[c])."""
    _C.conv2d_backward_input(io.fp64(dy), *g, io.ptr(dy), *io.strides(dy, 4), io.ptr(w), *io.strides(w, 4),
                             io.ptr(dx), *io.strides(dx, 4), io.ptr(bias), *io.strides(bias, 1))


def conv2d_backward_weight_cpp(io, g: _Geom, dy, x, dw) -> None:
    """dw [K, C/G, R, S] = sum over n, oh, ow of dy [N, K, OH, OW] * the taps of x [N, C, H, W]."""
    _C.conv2d_backward_weight(io.fp64(dy), *g, io.ptr(dy), *io.strides(dy, 4), io.ptr(x), *io.strides(x, 4),
                              io.ptr(dw), *io.strides(dw, 4))


def conv2d_backward_bias_cpp(io, dy, saved, act: int, dz, dbias) -> None:
    """dz = dy * act'(saved) (dz None only for act 0); dbias = sum of dz over n, oh, ow."""
    N, K, OH, OW = dy.shape
    _C.conv2d_backward_bias(io.fp64(dy), N, K, OH, OW, io.ptr(dy), *io.strides(dy, 4),
                            io.ptr(saved), *io.strides(saved, 4), act, io.ptr(dz), *io.strides(dz, 4),
                            io.ptr(dbias), *io.strides(dbias, 1))


def _run_forward(backend: str, g: _Geom, x: Tensor, w: Tensor, bias: Optional[Tensor], act: int,
                 out: Tensor, pre: Optional[Tensor]) -> None:
    """out = act(conv(x, w) + bias); pre = conv(x, w) + bias when given."""
    if backend == "cpp":
        conv2d_forward_cpp(TORCH, g, x, w, bias, act, out, pre)
    else:
        _kernels().conv2d_forward(x, w, out, bias=bias, stride=(g.sH, g.sW), padding=(g.pH, g.pW),
                                  dilation=(g.dH, g.dW), groups=g.groups,
                                  activation=S.ACTIVATION_NAMES[act], preact=pre)


def _run_backward_input(backend: str, g: _Geom, dy: Tensor, w: Tensor, dx: Tensor,
                        bias: Optional[Tensor]) -> None:
    """dx [N, C, H, W] = conv's input gradient of dy [N, K, OH, OW] (+ bias[c])."""
    if backend == "cpp":
        conv2d_backward_input_cpp(TORCH, g, dy, w, dx, bias)
    else:
        _kernels().conv2d_backward_input(dy, w, dx, (g.sH, g.sW), (g.pH, g.pW), (g.dH, g.dW), g.groups,
                                         bias=bias)


def _run_backward_weight(backend: str, g: _Geom, dy: Tensor, x: Tensor, dw: Tensor) -> None:
    """dw [K, C/G, R, S] = sum over n, oh, ow of dy [N, K, OH, OW] * the taps of x [N, C, H, W]."""
    if backend == "cpp":
        conv2d_backward_weight_cpp(TORCH, g, dy, x, dw)
    else:
        _kernels().conv2d_backward_weight(dy, x, dw, (g.sH, g.sW), (g.pH, g.pW), (g.dH, g.dW), g.groups)


def _run_backward_bias(backend: str, dy: Tensor, saved: Tensor, act: int, dz: Optional[Tensor],
                       dbias: Optional[Tensor]) -> None:
    """dz = dy * act'(saved) (dz None only for act 0); dbias = sum of dz over n, oh, ow."""
    if backend == "cpp":
        conv2d_backward_bias_cpp(TORCH, dy, saved, act, dz, dbias)
    else:
        _kernels().conv2d_backward_bias(dy, saved, S.ACTIVATION_NAMES[act], dz=dz, dbias=dbias)


# ---- the float64 NumPy oracle as a backend ---------------------------------------------------
def _from_np(arr, like: Tensor, fmt) -> Tensor:
    """arr copied into a fresh tensor of like's dtype/device in memory format fmt (the strides the
    fake functions promise, also where a size-1 dim makes two formats equivalent)."""
    out = _empty(arr.shape, like, fmt)
    out.copy_(torch.from_numpy(arr))
    return out


def _padded64(x: Tensor, padding):
    """x in float64, zero-padded by padding = (pT, pB, pL, pR)."""
    import numpy as np
    pT, pB, pL, pR = padding
    return np.pad(_np64(x), ((0, 0), (0, 0), (pT, pB), (pL, pR)))


def _act_name(act: int):
    name = S.ACTIVATION_NAMES[act]
    return None if name == "none" else name


def _reference_forward(x, weight, bias, stride, padding, dilation, groups, act, fmt, save_preact):
    from ..reference import conv2d as ref
    from ..reference import gemm as ref_gemm
    z = ref.conv2d_forward(_padded64(x, padding), _np64(weight), _np64(bias), tuple(stride), 0,
                           tuple(dilation), groups)
    out = _from_np(ref_gemm.activation_forward(z, _act_name(act)), x, fmt)
    return out, (_from_np(z, x, fmt) if save_preact else x.new_empty(0))


def _reference_backward(grad, x, weight, bias, stride, padding, dilation, groups, act, fmt,
                        need_x, need_w, need_b):
    """dz = dy * act'(z) with z recomputed in float64 from x, weight and bias."""
    from ..reference import conv2d as ref
    from ..reference import gemm as ref_gemm
    xp, w = _padded64(x, padding), _np64(weight)
    dz = _np64(grad)
    if act:
        z = ref.conv2d_forward(xp, w, _np64(bias), tuple(stride), 0, tuple(dilation), groups)
        dz = dz * ref_gemm.activation_derivative(z, _act_name(act))
    dxp, dw, db = ref.conv2d_backward(dz, xp, w, tuple(stride), 0, tuple(dilation), groups, has_bias=need_b)
    H, W = x.shape[2:]
    dx = dxp[:, :, padding[0]:padding[0] + H, padding[2]:padding[2] + W]
    return (_from_np(dx, x, fmt) if need_x else x.new_empty(0),
            _from_np(dw, weight, _format(weight)) if need_w else weight.new_empty(0),
            _from_np(db, weight, _NCHW) if need_b else weight.new_empty(0))


# ---- conv2d -----------------------------------------------------------------------------------
def _conv2d_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                 dilation: List[int], groups: int, activation: int, channels_last: bool,
                 save_preact: bool) -> Tuple[Tensor, Tensor]:
    """(out, preact) [N, K, OH, OW]; padding = (pT, pB, pL, pR); preact is empty unless
    save_preact (only gelu's backward reads it)."""
    g = _conv_geom(x, weight, stride, padding, dilation, groups)
    fmt = _CL if channels_last else _NCHW
    shape = (g.N, g.K, g.OH, g.OW)
    backend = resolve(x.device)
    if g.N == 0:
        return _empty(shape, x, fmt), (_empty(shape, x, fmt) if save_preact else x.new_empty(0))
    if backend == "reference":
        return _reference_forward(x, weight, bias, stride, padding, dilation, groups, activation, fmt,
                                  save_preact)
    out = _empty(shape, x, fmt)
    pre = _empty(shape, x, fmt) if save_preact else None
    _run_forward(backend, g, x, weight, bias, activation, out, pre)
    return out, (x.new_empty(0) if pre is None else pre)


_conv2d_op = torch.library.custom_op("pykernels::conv2d", mutates_args=())(_conv2d_impl)


@_conv2d_op.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, activation, channels_last, save_preact):
    g = _conv_geom(x, weight, stride, padding, dilation, groups)
    fmt = _CL if channels_last else _NCHW
    shape = (g.N, g.K, g.OH, g.OW)
    return _empty(shape, x, fmt), (_empty(shape, x, fmt) if save_preact else x.new_empty(0))


def _conv2d_backward_impl(grad: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], saved: Tensor,
                          stride: List[int], padding: List[int], dilation: List[int], groups: int,
                          activation: int, channels_last: bool, need_x: bool, need_w: bool,
                          need_b: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dw, db), each an empty tensor when not needed. saved: the output y for relu/tanh/
    sigmoid, the pre-activation for gelu, unused without an activation (bias: reference only)."""
    g = _conv_geom(x, weight, stride, padding, dilation, groups)
    fmt = _CL if channels_last else _NCHW
    backend = resolve(x.device)
    if backend == "reference" and g.N:
        return _reference_backward(grad, x, weight, bias, stride, padding, dilation, groups, activation,
                                   fmt, need_x, need_w, need_b)
    dx = _empty(x.shape, x, fmt) if need_x else None
    dw = _empty(weight.shape, weight, _format(weight)) if need_w else None
    db = weight.new_empty(g.K) if need_b else None
    if g.N == 0:  # nothing to sum: zero weight and bias gradients, an empty dx
        for t in (dw, db):
            if t is not None:
                t.zero_()
    else:
        dz = grad
        if activation:  # dz = dy * act'(saved), and the bias gradient in the same pass
            dz = _empty(grad.shape, grad, fmt)
            _run_backward_bias(backend, grad, saved, activation, dz, db)
        elif db is not None:
            _run_backward_bias(backend, grad, grad, 0, None, db)
        if dx is not None:
            _run_backward_input(backend, g, dz, weight, dx, None)
        if dw is not None:
            _run_backward_weight(backend, g, dz, x, dw)
    # a distinct empty tensor per absent gradient: outputs of a custom op may not alias
    return (x.new_empty(0) if dx is None else dx, weight.new_empty(0) if dw is None else dw,
            weight.new_empty(0) if db is None else db)


_conv2d_backward_op = torch.library.custom_op(
    "pykernels::conv2d_backward", mutates_args=())(_conv2d_backward_impl)


@_conv2d_backward_op.register_fake
def _(grad, x, weight, bias, saved, stride, padding, dilation, groups, activation, channels_last,
      need_x, need_w, need_b):
    return (_empty(x.shape, x, _CL if channels_last else _NCHW) if need_x else x.new_empty(0),
            _empty(weight.shape, weight, _format(weight)) if need_w else weight.new_empty(0),
            weight.new_empty(weight.shape[0] if need_b else 0))


def _conv2d_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups, activation, channels_last, save_preact = inputs
    out, pre = output
    saved = pre if activation == _GELU else (out if activation else x.new_empty(0))
    ctx.args = (stride, padding, dilation, groups, activation, channels_last)
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, bias, saved)


def _conv2d_grad_with(backward):
    def grad(ctx, grad_out, grad_pre):
        if grad_out is None:  # the output was not used (eager path: grads are not materialised)
            return (None,) * 10
        x, weight, bias, saved = ctx.saved_tensors
        activation = ctx.args[4]
        if activation == _GELU and saved.numel() == 0 and x.shape[0]:
            raise RuntimeError("pykernels.ops.conv2d: the gelu pre-activation was not saved; call "
                               "conv2d with grad mode enabled to differentiate it")
        nx, nw, nb = ctx.needs_input_grad[:3]
        nb = nb and ctx.has_bias
        dx, dw, db = backward(grad_out, x, weight, bias, saved, *ctx.args, nx, nw, nb)
        return (dx if nx else None, dw if nw else None, db if nb else None) + (None,) * 7
    return grad


_conv2d_op.register_autograd(_conv2d_grad_with(_conv2d_backward_op), setup_context=_conv2d_setup)


class _Conv2dEager(torch.autograd.Function):
    """The eager path of pykernels::conv2d when a gradient is needed (see pool2d._eager)."""
    @staticmethod
    def forward(ctx, *inputs):
        output = _conv2d_impl(*inputs)
        _conv2d_setup(ctx, inputs, output)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zeros the size of `pre` for its (absent) gradient
        return output

    backward = staticmethod(_conv2d_grad_with(_conv2d_backward_impl))


# ---- conv_transpose2d -------------------------------------------------------------------------
def _conv_transpose2d_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                           padding: List[int], output_padding: List[int], groups: int,
                           dilation: List[int], channels_last: bool) -> Tensor:
    """out [N, C_out, OH, OW]: conv2d's input gradient of x, + bias (one backward_input call)."""
    g = _tconv_geom(x, weight, stride, padding, output_padding, groups, dilation)
    fmt = _CL if channels_last else _NCHW
    shape = (g.N, g.C, g.H, g.W)
    backend = resolve(x.device)
    if g.N == 0:
        return _empty(shape, x, fmt)
    if backend == "reference":
        from ..reference import conv2d as ref
        return _from_np(ref.conv_transpose2d_forward(_np64(x), _np64(weight), _np64(bias), tuple(stride),
                                                     tuple(padding), tuple(output_padding), groups,
                                                     tuple(dilation)), x, fmt)
    out = _empty(shape, x, fmt)
    _run_backward_input(backend, g, x, weight, out, bias)
    return out


_conv_transpose2d_op = torch.library.custom_op(
    "pykernels::conv_transpose2d", mutates_args=())(_conv_transpose2d_impl)


@_conv_transpose2d_op.register_fake
def _(x, weight, bias, stride, padding, output_padding, groups, dilation, channels_last):
    g = _tconv_geom(x, weight, stride, padding, output_padding, groups, dilation)
    return _empty((g.N, g.C, g.H, g.W), x, _CL if channels_last else _NCHW)


def _conv_transpose2d_backward_impl(grad: Tensor, x: Tensor, weight: Tensor, stride: List[int],
                                    padding: List[int], output_padding: List[int], groups: int,
                                    dilation: List[int], channels_last: bool, need_x: bool, need_w: bool,
                                    need_b: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dw, db): dx = conv2d(dy, weight) (the forward kernel, same geometry), dw =
    backward_weight with x as dy and dy as x, db = sum of dy over n, oh, ow."""
    g = _tconv_geom(x, weight, stride, padding, output_padding, groups, dilation)
    fmt = _CL if channels_last else _NCHW
    backend = resolve(x.device)
    if backend == "reference" and g.N:
        from ..reference import conv2d as ref
        dx, dw, db = ref.conv_transpose2d_backward(_np64(grad), _np64(x), _np64(weight), tuple(stride),
                                                   tuple(padding), tuple(output_padding), groups,
                                                   tuple(dilation), has_bias=need_b)
        return (_from_np(dx, x, fmt) if need_x else x.new_empty(0),
                _from_np(dw, weight, _format(weight)) if need_w else weight.new_empty(0),
                _from_np(db, weight, _NCHW) if need_b else weight.new_empty(0))
    dx = _empty(x.shape, x, fmt) if need_x else None
    dw = _empty(weight.shape, weight, _format(weight)) if need_w else None
    db = weight.new_empty(g.C) if need_b else None
    if g.N == 0:
        for t in (dw, db):
            if t is not None:
                t.zero_()
    else:
        if db is not None:
            _run_backward_bias(backend, grad, grad, 0, None, db)
        if dx is not None:
            _run_forward(backend, g, grad, weight, None, 0, dx, None)
        if dw is not None:
            _run_backward_weight(backend, g, x, grad, dw)
    return (x.new_empty(0) if dx is None else dx, weight.new_empty(0) if dw is None else dw,
            weight.new_empty(0) if db is None else db)


_conv_transpose2d_backward_op = torch.library.custom_op(
    "pykernels::conv_transpose2d_backward", mutates_args=())(_conv_transpose2d_backward_impl)


@_conv_transpose2d_backward_op.register_fake
def _(grad, x, weight, stride, padding, output_padding, groups, dilation, channels_last, need_x, need_w,
      need_b):
    return (_empty(x.shape, x, _CL if channels_last else _NCHW) if need_x else x.new_empty(0),
            _empty(weight.shape, weight, _format(weight)) if need_w else weight.new_empty(0),
            weight.new_empty(weight.shape[1] * groups if need_b else 0))


def _conv_transpose2d_setup(ctx, inputs, output):
    x, weight, bias = inputs[:3]
    ctx.args = tuple(inputs[3:])  # stride, padding, output_padding, groups, dilation, channels_last
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _conv_transpose2d_grad_with(backward):
    def grad(ctx, grad_out):
        x, weight = ctx.saved_tensors
        nx, nw, nb = ctx.needs_input_grad[:3]
        nb = nb and ctx.has_bias
        dx, dw, db = backward(grad_out, x, weight, *ctx.args, nx, nw, nb)
        return (dx if nx else None, dw if nw else None, db if nb else None) + (None,) * 6
    return grad


_conv_transpose2d_op.register_autograd(_conv_transpose2d_grad_with(_conv_transpose2d_backward_op),
                                       setup_context=_conv_transpose2d_setup)


class _ConvTranspose2dEager(torch.autograd.Function):
    """The eager path of pykernels::conv_transpose2d when a gradient is needed."""
    @staticmethod
    def forward(ctx, *inputs):
        out = _conv_transpose2d_impl(*inputs)
        _conv_transpose2d_setup(ctx, inputs, out)
        return out

    backward = staticmethod(_conv_transpose2d_grad_with(_conv_transpose2d_backward_impl))


# ---- argument checks --------------------------------------------------------------------------
def _operands(x, weight, bias, transposed: bool) -> Tuple[Tensor, bool]:
    """x as [N, C, H, W] and whether it was [C, H, W]; checks the types, dtypes (for the active
    backend), devices and ranks of x, weight and bias."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    backend = resolve(x.device)
    allowed = _TRITON_DTYPES if backend == "triton" else _CPP_DTYPES
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is None and name == "bias":
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in allowed:
            names = ", ".join(_dtype_name(d) for d in allowed)
            raise TypeError(f"{name} has dtype {_dtype_name(t.dtype)}; the {backend} backend supports {names}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {_dtype_name(t.dtype)} but x has {_dtype_name(x.dtype)}; "
                            "pass tensors of one dtype")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    wshape = "[C_in, C_out/groups, R, S]" if transposed else "[K, C/groups, R, S]"
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D {wshape}, got shape {tuple(weight.shape)}")
    if weight.shape[2] <= 0 or weight.shape[3] <= 0:
        raise ValueError(f"weight must have a non-empty kernel (R, S > 0), got shape {tuple(weight.shape)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be [N, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    if x.shape[-2] == 0 or x.shape[-1] == 0:  # torch: only an empty batch or channels are allowed
        raise ValueError(f"x has an empty image (H or W is 0): shape {tuple(x.shape)}")
    return (x, False) if x.dim() == 4 else (x.unsqueeze(0), True)


def _positive(name: str, v) -> Tuple[int, int]:
    p = _pair(name, v)
    if p[0] <= 0 or p[1] <= 0:
        raise ValueError(f"{name} must be positive, got {p}")
    return p


def _groups(groups) -> int:
    if type(groups) is not int or groups <= 0:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return groups


def _channels(x4: Tensor, weight: Tensor, groups: int, transposed: bool) -> None:
    C = x4.shape[1]
    if C == 0:
        raise ValueError(f"x has 0 channels (shape {tuple(x4.shape)}): nothing to convolve")
    if C % groups:
        raise ValueError(f"x has C={C} channels, not divisible by groups={groups}")
    if transposed:  # weight [C_in, C_out/G, R, S]
        if weight.shape[0] != C:
            raise ValueError(f"weight must be [C_in={C}, C_out/groups, R, S] for x with C_in={C} channels, "
                             f"got shape {tuple(weight.shape)}")
        if weight.shape[1] == 0:
            raise ValueError(f"weight has 0 output channels (shape {tuple(weight.shape)})")
        return
    K = weight.shape[0]
    if K == 0:
        raise ValueError(f"weight has K=0 output channels (shape {tuple(weight.shape)})")
    if K % groups:
        raise ValueError(f"weight has K={K} output channels (weight.shape[0]), not divisible by groups={groups}")
    if weight.shape[1] != C // groups:
        raise ValueError(f"weight must be [K, C/groups={C // groups}, R, S] for x with C={C} channels and "
                         f"groups={groups}, got shape {tuple(weight.shape)}")


def _check_bias(bias: Optional[Tensor], n: int, what: str) -> None:
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must have shape [{what}] = [{n}], got {tuple(bias.shape)}")


def _conv_padding(padding, kernel, stride, dilation) -> Tuple[int, int, int, int]:
    """(pT, pB, pL, pR) from an int, a pair, "valid" or "same"."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
        pads = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]  # odd total: the extra row/column at the bottom/right
        return tuple(pads)
    pH, pW = _pair("padding", padding)
    if pH < 0 or pW < 0:
        raise ValueError(f"padding must be non-negative, got {(pH, pW)}")
    return pH, pH, pW, pW


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


# ---- public functions -------------------------------------------------------------------------
def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1,
           groups: int = 1, activation: Optional[str] = None) -> Tensor:
    """``act(torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups))`` with
    the bias and activation fused into the kernel's epilogue.

    Args:
        x: ``[N, C, H, W]`` or ``[C, H, W]``, any strides (channels_last, non-contiguous views).
        weight: ``[K, C/groups, R, S]``, like ``torch.nn.Conv2d.weight``.
        bias: optional ``[K]``.
        stride, dilation: an int or a pair (H, W), positive.
        padding: an int or a pair (H, W), non-negative; "valid" (0) or "same" (stride 1 only;
            an odd total puts the extra row/column at the bottom/right, like torch).
        groups: C and K split into this many blocks (groups = C: depthwise).
        activation: None, "relu", "gelu" (exact, erf form), "tanh" or "sigmoid".

    Returns:
        ``[N, K, OH, OW]`` (``[K, OH, OW]`` for unbatched x) in x's memory format,
        ``OH = floor((H + pT + pB - dH*(R - 1) - 1) / sH) + 1``.

    Raises:
        TypeError: a non-tensor, a dtype the active backend does not support (C++: float32,
            float64), mixed dtypes.
        ValueError: x not 3-D or 4-D, or with H or W zero; weight not 4-D or with an empty
            kernel; C or K zero or not divisible by groups; weight's C/groups not matching x;
            bias not ``[K]``; mixed devices; stride/dilation not positive; negative padding; an
            unknown padding string; padding="same" with stride > 1; an empty output (kernel
            larger than the padded input); an unknown activation; groups not a positive int.
    """
    act = S.activation_code(activation)
    x4, unbatched = _operands(x, weight, bias, transposed=False)
    groups, s, pads, d = _conv_args(x4, weight, bias, stride, padding, dilation, groups)
    K, _, R, S_ = weight.shape
    H, W = x4.shape[2], x4.shape[3]
    OH, OW = _conv_out(H, pads[0], pads[1], R, s[0], d[0]), _conv_out(W, pads[2], pads[3], S_, s[1], d[1])
    if OH <= 0 or OW <= 0:
        raise ValueError(f"output size ({OH}, {OW}) would be empty: x of size ({H}, {W}) padded by "
                         f"(top, bottom, left, right) {pads} is smaller than weight's kernel {(R, S_)} "
                         f"with dilation {d}")
    channels_last = not unbatched and _format(x4) is _CL  # unbatched: contiguous, like torch
    grad = _needs_grad(x4, weight, bias)
    args = (x4, weight, bias, s, pads, d, groups, act, channels_last, grad and act == _GELU)
    if not _eager(x4):
        out = _conv2d_op(x4, weight, bias, list(s), list(pads), list(d), *args[6:])[0]
    elif grad:
        out = _Conv2dEager.apply(*args)[0]
    else:
        out = _conv2d_impl(*args)[0]
    return out.squeeze(0) if unbatched else out


def _conv_args(x4, weight, bias, stride, padding, dilation, groups):
    """The checked arguments of a conv (torch tensors or NumPy arrays): (groups, stride pair,
    padding (top, bottom, left, right), dilation pair)."""
    groups = _groups(groups)
    s, d = _positive("stride", stride), _positive("dilation", dilation)
    _channels(x4, weight, groups, transposed=False)
    _check_bias(bias, weight.shape[0], "K")
    return groups, s, _conv_padding(padding, tuple(weight.shape[2:]), s, d), d


def _tconv_args(x4, weight, bias, stride, padding, output_padding, groups, dilation):
    """The checked arguments of a transposed conv (torch tensors or NumPy arrays):
    (groups, stride, padding, output_padding, dilation), each geometry one a pair."""
    groups = _groups(groups)
    s, d = _positive("stride", stride), _positive("dilation", dilation)
    _channels(x4, weight, groups, transposed=True)
    _check_bias(bias, weight.shape[1] * groups, "C_out")
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a pair for conv_transpose2d, got {padding!r}")
    p, op = _pair("padding", padding), _pair("output_padding", output_padding)
    if p[0] < 0 or p[1] < 0:
        raise ValueError(f"padding must be non-negative, got {p}")
    if op[0] < 0 or op[1] < 0:
        raise ValueError(f"output_padding must be non-negative, got {op}")
    if op[0] >= max(s[0], d[0]) or op[1] >= max(s[1], d[1]):
        raise ValueError(f"output_padding {op} must be smaller than either stride {s} or dilation {d} "
                         "(per axis)")
    return groups, s, p, op, d


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """``torch.nn.functional.conv_transpose2d``: conv2d's input gradient of x, + bias.

    Args:
        x: ``[N, C_in, H, W]`` or ``[C_in, H, W]``, any strides.
        weight: ``[C_in, C_out/groups, R, S]``, like ``torch.nn.ConvTranspose2d.weight``.
        bias: optional ``[C_out]``.
        stride, dilation: an int or a pair (H, W), positive.
        padding: an int or a pair (H, W), non-negative: rows/columns cropped from each side.
        output_padding: an int or a pair, 0 <= output_padding < max(stride, dilation) per axis:
            rows/columns added at the bottom/right (reached by no tap when past the padding:
            they hold bias only).
        groups: C_in and C_out split into this many blocks.

    Returns:
        ``[N, C_out, OH, OW]`` (``[C_out, OH, OW]`` for unbatched x) in x's memory format,
        ``OH = (H - 1)*sH - 2*pH + dH*(R - 1) + opH + 1``.

    Raises:
        TypeError: a non-tensor, an unsupported dtype, mixed dtypes.
        ValueError: x not 3-D or 4-D, or with H or W zero; weight not 4-D or not
            ``[C_in, C_out/groups, R, S]``; C_in zero or not divisible by groups; bias not
            ``[C_out]``; mixed devices; stride/dilation not positive; negative or string padding;
            output_padding negative or >= max(stride, dilation); an empty output; groups not a
            positive int.
    """
    x4, unbatched = _operands(x, weight, bias, transposed=True)
    groups, s, p, op, d = _tconv_args(x4, weight, bias, stride, padding, output_padding, groups, dilation)
    _, cog, R, S_ = weight.shape
    H, W = x4.shape[2], x4.shape[3]
    OH, OW = _tconv_out(H, R, s[0], p[0], op[0], d[0]), _tconv_out(W, S_, s[1], p[1], op[1], d[1])
    if OH <= 0 or OW <= 0:
        raise ValueError(f"output size ({OH}, {OW}) would be empty: padding {p} crops away the whole "
                         f"output of x of size ({H}, {W}) and weight's kernel {(R, S_)}")
    channels_last = not unbatched and _format(x4) is _CL
    if (H, W, p, op, d, groups) == (1, 1, (0, 0), (0, 0), (1, 1), 1) and not channels_last \
            and weight.is_contiguous():
        # A 1 x 1 image (a GAN generator's first layer) is one GEMM, forward and backward:
        # out[n, o, r, s] = sum_c x[n, c] * w[c, o, r, s]. The implicit GEMM of the general path
        # would sum over every tap of a 1 x 1 image: R*S times the work, nearly all of it padding.
        out = matmul(x4.flatten(1), weight.flatten(1)).view(x4.shape[0], cog, R, S_)  # [N, C_out, R, S]
        if bias is not None:
            out = out + bias.view(1, -1, 1, 1)
        return out.squeeze(0) if unbatched else out
    args = (x4, weight, bias, s, p, op, groups, d, channels_last)
    if not _eager(x4):
        out = _conv_transpose2d_op(x4, weight, bias, list(s), list(p), list(op), groups, list(d),
                                   channels_last)
    elif _needs_grad(x4, weight, bias):
        out = _ConvTranspose2dEager.apply(*args)
    else:
        out = _conv_transpose2d_impl(*args)
    return out.squeeze(0) if unbatched else out


# ---- torch.autocast: the public functions cast their arguments first (see ops/_autocast.py) ------
from . import _autocast  # noqa: E402  (kept with the wrapping it serves)

conv2d = _autocast.lower_precision(conv2d)
conv_transpose2d = _autocast.lower_precision(conv_transpose2d)
