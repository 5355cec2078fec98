"""LSTM and GRU: fused cells and whole-sequence ops, with torch.nn.LSTM / torch.nn.GRU's semantics.

    lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None) -> (y, (hn, cn))
    gru(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None)  -> (y, hn)
    lstm_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None) -> (h', c')
    gru_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None)  -> h'

One layer, one direction. Shapes: x [T, B, I], h0 / c0 [B, H] (hx = (h0, c0) for LSTM, h0 for
GRU; None = zeros) -> y [T, B, H] (h after every step), hn / cn [B, H]; w_ih [G*H, I],
w_hh [G*H, H], b_ih / b_hh [G*H], G = 4 (LSTM, gates i, f, g, o) or 3 (GRU, gates r, z, n):
    LSTM:  A = x W_ih^T + b_ih + h W_hh^T + b_hh;  i, f, o = sigmoid(A_i, A_f, A_o); g = tanh(A_g)
           c' = f * c + i * g;  h' = o * tanh(c')
    GRU:   r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr);  z likewise
           n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn));  h' = (1 - z) * n + z * h
reverse=True walks t = T-1 .. 0 over the same x (the second direction of a bidirectional layer:
no flipped copy). batch_sizes (int64 [T] on the CPU, non-increasing, each in [0, B]: a
PackedSequence's): at step t only rows b < batch_sizes[t] are updated; the others keep their
state and get y = 0 there. The cells are the sequence ops with T = 1 (x [B, I] -> a [1, B, I]
view; an unbatched x [I] with h, c [H] gives h', c' [H]). The formulas, forward and backprop
through time, are spelled out in pykernels/reference/rnn.py.

Each sequence op is a ``torch.library.custom_op`` (``pykernels::lstm`` -> (y, hn, cn, ws),
``pykernels::gru`` -> (y, hn, ws)) with a fake function and an autograd formula whose backward is
itself one custom op (``pykernels::lstm_backward``, ``pykernels::gru_backward``) computing only
the gradients asked for. ws is the workspace the forward fills for the backward (the gates of
every step, the backend's own layout: T*B*6*H elements for LSTM, T*B*5*H for GRU on the C++
kernels); it is allocated only when a gradient will be needed (grad mode on and an input that
requires grad), otherwise the kernels get none and save nothing; on the C++ kernels it is a tensor
over a block of pykernels' block cache (``_cpu_workspace``). Saved for backward: x, h0, c0,
the weights and biases, batch_sizes and ws (y, hn, cn are not kept). The backward op given an
empty ws (the forward op called with need_ws=False) recomputes the forward to fill one.
In eager mode on plain tensors the public functions call the implementation directly (through a
``torch.autograd.Function`` when a gradient is needed), skipping the custom op's Python dispatch
(~13 us a call, which matters for the cells); under torch.compile, tensor subclasses or a
dispatch mode the registered ops run: same kernels, same formulas.

Layout: x, h0, c0, the weights and the upstream gradients are read through their strides (a
batch_first input is a transposed view, never copied). Outputs are contiguous, x's dtype.
Empty problems (T = 0 or B = 0) are answered here without a kernel: y empty, hn = h0 (zeros
when None), zero weight gradients, dh0 = dhn.

Device dispatch: CPU tensors -> pykernels._C (C++, csrc/rnn.cpp), CUDA tensors -> Triton
(kernels/rnn.py); ``pykernels.backend`` overrides it ("reference": the float64 NumPy oracle,
pykernels/reference/rnn.py, which recomputes the forward in its backward and leaves ws zero).

Not supported (raises before any kernel runs): integer dtypes, float16/bfloat16 on the C++ and
reference backends, mixed dtypes or devices, H = 0, batch_sizes on another device than the CPU
or of another dtype than int64, double backward. The multi-layer, bidirectional, batch_first,
dropout and PackedSequence handling of torch.nn.LSTM / GRU lives in pykernels.nn.

Test: pytest tests/test_rnn.py      Benchmark: python -m pykernels bench rnn
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _C
from .._backend import resolve, triton_kernels
from ._outputs import new_output
from .gemm import TORCH, _dtype_name, _eager, _np64

__all__ = ["lstm", "gru", "lstm_cell", "gru_cell"]

_CPP_DTYPES = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_LSTM, _GRU = 0, 1                 # the C++ binding's kind
_KIND_NAMES = ("lstm", "gru")      # the Triton launchers' kind
_GATES = (4, 3)
_WS_PER_H = (6, 5)                 # C++ workspace: T * B * _WS_PER_H[kind] * H elements
_CELL_STATES = (("hx[0]", "hx[1]"), ("hx", "c"))   # the cells' names for h0, c0 in messages


def _ws_numel(backend: str, kind: int, T, B, H):
    """Elements of the workspace the forward fills for the backward (SymInts under tracing)."""
    if backend == "triton":
        return triton_kernels("rnn").rnn_workspace_elems(_KIND_NAMES[kind], T, B, H)
    # the C++ layout (= _C.rnn_workspace_elems(kind, T, B, H)); the reference backend allocates
    # the same size and leaves it zero, so the fake function needs no backend of its own
    return T * B * _WS_PER_H[kind] * H


# ---- the kernels, per backend ----------------------------------------------------------------
# The C++ launches, shared with pykernels.numpy: io says how to read the front's arrays
# (gemm.TORCH for tensors; see gemm.TorchBuffers). batch_sizes: None or contiguous int64 [T];
# ws: None or a contiguous workspace of _ws_numel("cpp", kind, T, B, H) elements.
def rnn_forward_cpp(io, kind: int, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse: bool,
                    y, hn, cn, ws) -> None:
    """y [T, B, H], hn (and cn) [B, H] fully written; ws filled when given. T, B >= 1."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    st = io.strides
    _C.rnn_forward(io.fp64(x), kind, T, B, I, H, reverse,
                   io.ptr(x), *st(x, 3), io.ptr(h0), *st(h0, 2), io.ptr(c0), *st(c0, 2),
                   io.ptr(w_ih), *st(w_ih, 2), io.ptr(w_hh), *st(w_hh, 2),
                   io.ptr(b_ih), *st(b_ih, 1), io.ptr(b_hh), *st(b_hh, 1), io.ptr(batch_sizes),
                   io.ptr(y), *st(y, 3), io.ptr(hn), *st(hn, 2), io.ptr(cn), *st(cn, 2), io.ptr(ws))


def rnn_backward_cpp(io, kind: int, x, h0, c0, w_ih, w_hh, b_hh, batch_sizes, ws, reverse: bool,
                     dy, dhn, dcn, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) -> None:
    """Every gradient given (not None) fully written; dy, dhn, dcn None = no gradient from there."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    st = io.strides
    _C.rnn_backward(io.fp64(x), kind, T, B, I, H, reverse,
                    io.ptr(x), *st(x, 3), io.ptr(h0), *st(h0, 2), io.ptr(c0), *st(c0, 2),
                    io.ptr(w_ih), *st(w_ih, 2), io.ptr(w_hh), *st(w_hh, 2),
                    io.ptr(b_hh), *st(b_hh, 1), io.ptr(batch_sizes), io.ptr(ws),
                    io.ptr(dy), *st(dy, 3), io.ptr(dhn), *st(dhn, 2), io.ptr(dcn), *st(dcn, 2),
                    io.ptr(dx), *st(dx, 3), io.ptr(dh0), *st(dh0, 2), io.ptr(dc0), *st(dc0, 2),
                    io.ptr(dw_ih), *st(dw_ih, 2), io.ptr(dw_hh), *st(dw_hh, 2),
                    io.ptr(db_ih), *st(db_ih, 1), io.ptr(db_hh), *st(db_hh, 1))


def _run_forward(backend: str, kind: int, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                 y, hn, cn, ws) -> None:
    """y [T, B, H], hn (and cn) [B, H] fully written; ws filled when given. T, B >= 1."""
    if backend == "cpp":
        rnn_forward_cpp(TORCH, kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, y, hn, cn, ws)
    else:
        triton_kernels("rnn").rnn_forward(_KIND_NAMES[kind], x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, hn, cn, ws,
                                          reverse=reverse, batch_sizes=batch_sizes)


def _run_backward(backend: str, kind: int, x, h0, c0, w_ih, w_hh, b_hh, batch_sizes, ws, reverse,
                  dy, dhn, dcn, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) -> None:
    """Every gradient given (not None) fully written; dy, dhn, dcn None = no gradient from there."""
    if backend == "cpp":
        rnn_backward_cpp(TORCH, kind, x, h0, c0, w_ih, w_hh, b_hh, batch_sizes, ws, reverse,
                         dy, dhn, dcn, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)
    else:
        triton_kernels("rnn").rnn_backward(_KIND_NAMES[kind], x, h0, c0, w_ih, w_hh, b_hh, ws, dy, dhn, dcn,
                                           dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh,
                                           reverse=reverse, batch_sizes=batch_sizes)


# ---- the float64 NumPy oracle as a backend ---------------------------------------------------
def _bs_np(batch_sizes: Optional[Tensor]):
    return None if batch_sizes is None else batch_sizes.numpy()


def _reference_forward(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, y, hn, cn) -> None:
    from ..reference import rnn as ref
    w = (_np64(w_ih), _np64(w_hh), _np64(b_ih), _np64(b_hh))
    if kind == _LSTM:
        outs = ref.lstm_forward(_np64(x), _np64(h0), _np64(c0), *w, reverse, _bs_np(batch_sizes))
    else:
        outs = ref.gru_forward(_np64(x), _np64(h0), *w, reverse, _bs_np(batch_sizes))
    for t, a in zip((y, hn, cn), outs):
        t.copy_(torch.from_numpy(a))


def _reference_backward(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, dy, dhn, dcn,
                        grads) -> None:
    from ..reference import rnn as ref
    w = (_np64(w_ih), _np64(w_hh), _np64(b_ih), _np64(b_hh), reverse, _bs_np(batch_sizes))
    if kind == _LSTM:
        outs = ref.lstm_backward(_np64(dy), _np64(dhn), _np64(dcn), _np64(x), _np64(h0), _np64(c0), *w)
    else:
        dx, dh0, *rest = ref.gru_backward(_np64(dy), _np64(dhn), _np64(x), _np64(h0), *w)
        outs = (dx, dh0, None, *rest)
    for t, a in zip(grads, outs):
        if t is not None:
            t.copy_(torch.from_numpy(a))


def _cpu_workspace(numel: int, dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor over a block of pykernels' block cache (csrc/memory.cpp).

    The workspace is tens of MB at real sizes; a fresh torch allocation that big is mmap'd and
    faults its pages in on every forward (~0.5 ms per MB here, ~45 ms for an LSTM layer of T50
    B64 H1024). The cached block comes back when autograd frees the tensor and serves the next
    forward already faulted in. ``pykernels.empty_cache()`` frees the cache's free blocks.
    """
    return torch.from_dlpack(_C.workspace(int(numel), 8 if dtype == torch.float64 else 4))


# ---- the sequence ops, shared by LSTM (kind 0) and GRU (kind 1) ------------------------------
def _forward(backend: str, kind: int, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], w_ih: Tensor,
             w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], batch_sizes: Optional[Tensor],
             reverse: bool, need_ws: bool):
    """(y [T, B, H], hn [B, H], cn [B, H] or None for GRU, ws [numel] or None unless need_ws)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    y = x.new_empty((T, B, H))
    hn = x.new_empty((B, H))
    cn = x.new_empty((B, H)) if kind == _LSTM else None
    ws = None
    if need_ws:
        # zeros where the kernels leave it unwritten (the rows a batch_sizes step skips; all of it
        # on the reference backend), so the op's outputs are deterministic (opcheck, compile)
        numel = _ws_numel(backend, kind, T, B, H)
        zero = batch_sizes is not None or T == 0 or B == 0 or backend == "reference"
        ws = _cpu_workspace(numel, x.dtype) if backend == "cpp" else x.new_empty(numel)
        if zero:
            ws.zero_()
    if T == 0 or B == 0:  # no step: the state passes through
        for s, s0 in ((hn, h0), (cn, c0)):
            if s is not None:
                s.zero_() if s0 is None else s.copy_(s0)
    elif backend == "reference":
        _reference_forward(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, y, hn, cn)
    else:
        _run_forward(backend, kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, y, hn, cn, ws)
    return y, hn, cn, ws


def _backward(kind: int, dy: Optional[Tensor], dhn: Optional[Tensor], dcn: Optional[Tensor], x: Tensor,
              h0: Optional[Tensor], c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], batch_sizes: Optional[Tensor], ws: Tensor, reverse: bool,
              needs: List[bool]) -> List[Optional[Tensor]]:
    """[dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh], None where not needed (needs: the same 7
    flags; a flag of an argument given as None must be False)."""
    T, B, _ = x.shape
    nx, nh, nc, nwi, nwh, nbi, nbh = needs
    # on storage kept between calls (_outputs): a fresh 1 MiB weight gradient can cost as much to
    # fault in as a cell's whole backward
    grads = [new_output(x.shape, x) if nx else None,
             new_output(h0.shape, x) if nh else None,
             new_output(c0.shape, x) if nc and kind == _LSTM else None,
             new_output(w_ih.shape, x) if nwi else None,
             new_output(w_hh.shape, x) if nwh else None,
             new_output(b_ih.shape, x) if nbi else None,
             new_output(b_hh.shape, x) if nbh else None]
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = grads
    if T == 0 or B == 0:  # no step: the state's gradient passes through, nothing reaches the weights
        for g in (dw_ih, dw_hh, db_ih, db_hh):
            if g is not None:
                g.zero_()
        for g, d in ((dh0, dhn), (dc0, dcn)):
            if g is not None:
                g.zero_() if d is None else g.copy_(d)
        return grads
    backend = resolve(x.device)
    if backend == "reference":
        _reference_backward(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, dy, dhn, dcn,
                            grads)
        return grads
    if ws.numel() == 0:  # the op was called with need_ws=False: recompute the forward to fill one
        H = w_hh.shape[1]
        ws = x.new_empty(_ws_numel(backend, kind, T, B, H))
        _run_forward(backend, kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes,
                     reverse, x.new_empty((T, B, H)), x.new_empty((B, H)),
                     x.new_empty((B, H)) if kind == _LSTM else None, ws)
    _run_backward(backend, kind, x, h0, c0, w_ih, w_hh, b_hh, batch_sizes, ws, reverse, dy, dhn, dcn,
                  dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)
    return grads


def _filled(grads: List[Optional[Tensor]], x: Tensor) -> Tuple[Tensor, ...]:
    # a distinct empty tensor per absent gradient: outputs of a custom op may not alias
    return tuple(x.new_empty(0) if g is None else g for g in grads)


# ---- pykernels::lstm / pykernels::lstm_backward ----------------------------------------------
def _lstm_impl(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor], b_hh: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool,
               need_ws: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y [T, B, H], hn [B, H], cn [B, H], ws): x [T, B, I] checked by the public function."""
    y, hn, cn, ws = _forward(resolve(x.device), _LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                             need_ws)
    return y, hn, cn, (x.new_empty(0) if ws is None else ws)


_lstm_op = torch.library.custom_op("pykernels::lstm", mutates_args=())(_lstm_impl)


@_lstm_op.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_ws):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    ws = _ws_numel(resolve(x.device), _LSTM, T, B, H) if need_ws else 0
    return x.new_empty((T, B, H)), x.new_empty((B, H)), x.new_empty((B, H)), x.new_empty(ws)


def _lstm_backward_impl(dy: Optional[Tensor], dhn: Optional[Tensor], dcn: Optional[Tensor], x: Tensor,
                        h0: Optional[Tensor], c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
                        b_ih: Optional[Tensor], b_hh: Optional[Tensor], batch_sizes: Optional[Tensor],
                        ws: Tensor, reverse: bool, needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor,
                                                                               Tensor, Tensor, Tensor]:
    """(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh), each an empty tensor when not needed."""
    return _filled(_backward(_LSTM, dy, dhn, dcn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws, reverse,
                             needs), x)


_lstm_backward_op = torch.library.custom_op("pykernels::lstm_backward", mutates_args=())(_lstm_backward_impl)


def _grad_shapes_fake(x, args, needs):
    return tuple(x.new_empty(a.shape if n else 0) for a, n in zip(args, needs))


@_lstm_backward_op.register_fake
def _(dy, dhn, dcn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws, reverse, needs):
    return _grad_shapes_fake(x, (x, h0, c0, w_ih, w_hh, b_ih, b_hh), needs)


def _lstm_setup(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_ws = inputs
    ctx.reverse = reverse
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, output[3])


def _needs(ctx, args) -> List[bool]:
    return [bool(n) and a is not None for n, a in zip(ctx.needs_input_grad, args)]


def _lstm_grad_with(backward):
    def grad(ctx, dy, dhn, dcn, dws):
        if dy is None and dhn is None and dcn is None:  # no output was used (eager path)
            return (None,) * 10
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws = ctx.saved_tensors
        needs = _needs(ctx, (x, h0, c0, w_ih, w_hh, b_ih, b_hh))
        g = backward(dy, dhn, dcn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws, ctx.reverse, needs)
        return tuple(t if n else None for t, n in zip(g, needs)) + (None, None, None)
    return grad


_lstm_op.register_autograd(_lstm_grad_with(_lstm_backward_op), setup_context=_lstm_setup)


class _LSTMEager(torch.autograd.Function):
    """The eager path of pykernels::lstm when a gradient is needed (see gemm._eager)."""
    @staticmethod
    def forward(ctx, *inputs):
        output = _lstm_impl(*inputs)
        _lstm_setup(ctx, inputs, output)
        ctx.mark_non_differentiable(output[3])
        ctx.set_materialize_grads(False)  # unused outputs (y of a cell) get no zero gradient
        return output

    @staticmethod
    def backward(ctx, dy, dhn, dcn, dws):
        if dy is None and dhn is None and dcn is None:
            return (None,) * 10
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws = ctx.saved_tensors
        needs = _needs(ctx, (x, h0, c0, w_ih, w_hh, b_ih, b_hh))
        g = _backward(_LSTM, dy, dhn, dcn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws, ctx.reverse,
                      needs)
        return (*g, None, None, None)


# ---- pykernels::gru / pykernels::gru_backward ------------------------------------------------
def _gru_impl(x: Tensor, h0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool,
              need_ws: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(y [T, B, H], hn [B, H], ws): x [T, B, I] checked by the public function."""
    y, hn, _, ws = _forward(resolve(x.device), _GRU, x, h0, None, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                            need_ws)
    return y, hn, (x.new_empty(0) if ws is None else ws)


_gru_op = torch.library.custom_op("pykernels::gru", mutates_args=())(_gru_impl)


@_gru_op.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_ws):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    ws = _ws_numel(resolve(x.device), _GRU, T, B, H) if need_ws else 0
    return x.new_empty((T, B, H)), x.new_empty((B, H)), x.new_empty(ws)


def _gru_backward_impl(dy: Optional[Tensor], dhn: Optional[Tensor], x: Tensor, h0: Optional[Tensor],
                       w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                       batch_sizes: Optional[Tensor], ws: Tensor, reverse: bool,
                       needs: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh0, dw_ih, dw_hh, db_ih, db_hh), each an empty tensor when not needed."""
    nx, nh, *nw = needs
    g = _backward(_GRU, dy, dhn, None, x, h0, None, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws, reverse,
                  [nx, nh, False, *nw])
    return _filled(g[:2] + g[3:], x)


_gru_backward_op = torch.library.custom_op("pykernels::gru_backward", mutates_args=())(_gru_backward_impl)


@_gru_backward_op.register_fake
def _(dy, dhn, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws, reverse, needs):
    return _grad_shapes_fake(x, (x, h0, w_ih, w_hh, b_ih, b_hh), needs)


def _gru_setup(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_ws = inputs
    ctx.reverse = reverse
    ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, output[2])


def _gru_grad_with(backward):
    def grad(ctx, dy, dhn, dws):
        if dy is None and dhn is None:  # no output was used (eager path)
            return (None,) * 9
        x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws = ctx.saved_tensors
        needs = _needs(ctx, (x, h0, w_ih, w_hh, b_ih, b_hh))
        g = backward(dy, dhn, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws, ctx.reverse, needs)
        return tuple(t if n else None for t, n in zip(g, needs)) + (None, None, None)
    return grad


_gru_op.register_autograd(_gru_grad_with(_gru_backward_op), setup_context=_gru_setup)


class _GRUEager(torch.autograd.Function):
    """The eager path of pykernels::gru when a gradient is needed (see gemm._eager)."""
    @staticmethod
    def forward(ctx, *inputs):
        output = _gru_impl(*inputs)
        _gru_setup(ctx, inputs, output)
        ctx.mark_non_differentiable(output[2])
        ctx.set_materialize_grads(False)  # unused outputs (y of a cell) get no zero gradient
        return output

    @staticmethod
    def backward(ctx, dy, dhn, dws):
        if dy is None and dhn is None:
            return (None,) * 9
        x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws = ctx.saved_tensors
        needs = _needs(ctx, (x, h0, w_ih, w_hh, b_ih, b_hh))
        g = _backward(_GRU, dy, dhn, None, x, h0, None, w_ih, w_hh, b_ih, b_hh, batch_sizes, ws, ctx.reverse,
                      [needs[0], needs[1], False, *needs[2:]])
        return (g[0], g[1], *g[3:], None, None, None)


# ---- argument checks --------------------------------------------------------------------------
def _check(kind: int, fn: str, x: Tensor, h0, c0, w_ih, w_hh, b_ih, b_hh, states=("h0", "c0")) -> str:
    """The backend for x's device, after checking the types, dtypes, devices and shapes of a
    sequence op's operands (x a tensor, already [T, B, I] for the cells). The common case is one
    straight-line test (a few us: the cells' call overhead); any failure is explained by
    _explain, whose messages name the argument (states: the caller's names for h0 and c0)."""
    dtype, device = x.dtype, x.device
    backend = resolve(device)
    try:
        T, B, I = x.shape
        GH, H = w_hh.shape
        bshape, sshape = (GH,), (B, H)
        if ((dtype in _CPP_DTYPES or (backend == "triton" and dtype in _TRITON_DTYPES))
                and GH == _GATES[kind] * H and H > 0 and w_ih.shape == (GH, I)
                and w_ih.dtype == dtype and w_hh.dtype == dtype and w_ih.device == device and w_hh.device == device
                and (h0 is None or (h0.shape == sshape and h0.dtype == dtype and h0.device == device))
                and (c0 is None or (c0.shape == sshape and c0.dtype == dtype and c0.device == device))
                and (b_ih is None or (b_ih.shape == bshape and b_ih.dtype == dtype and b_ih.device == device))
                and (b_hh is None or (b_hh.shape == bshape and b_hh.dtype == dtype and b_hh.device == device))):
            return backend
    except (AttributeError, TypeError, ValueError):  # a non-tensor, a wrong rank: explained below
        pass
    _explain(kind, fn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, states)
    raise AssertionError(f"{fn}: invalid arguments")  # _explain raised already


def _explain(kind: int, fn: str, x, h0, c0, w_ih, w_hh, b_ih, b_hh, states) -> None:
    """Raises the error that names the first bad argument."""
    G = _GATES[kind]
    for name, t in (("w_ih", w_ih), ("w_hh", w_hh)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in ((states[0], h0), (states[1], c0), ("b_ih", b_ih), ("b_hh", b_hh)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be None or a torch.Tensor, got {type(t).__name__}")
    dtype, device = x.dtype, x.device
    backend = resolve(device)
    allowed = _TRITON_DTYPES if backend == "triton" else _CPP_DTYPES
    if dtype not in allowed:
        names = ", ".join(_dtype_name(d) for d in allowed)
        raise TypeError(f"{fn}: x has dtype {_dtype_name(dtype)}; the {backend} backend supports {names}")
    for name, t in (("w_ih", w_ih), ("w_hh", w_hh), (states[0], h0), (states[1], c0), ("b_ih", b_ih),
                    ("b_hh", b_hh)):
        if t is None:
            continue
        if t.dtype != dtype:
            raise TypeError(f"{fn}: {name} has dtype {_dtype_name(t.dtype)} but x has {_dtype_name(dtype)}; "
                            "pass tensors of one dtype")
        if t.device != device:
            raise ValueError(f"{fn}: {name} is on {t.device} but x is on {device}")
    T, B, I = x.shape
    gates = "4*H" if kind == _LSTM else "3*H"
    for name, t in (("w_ih", w_ih), ("w_hh", w_hh)):
        if t.dim() != 2:
            raise ValueError(f"{fn}: {name} must be 2-D [{gates}, {'I' if name == 'w_ih' else 'H'}], got shape "
                             f"{tuple(t.shape)}")
    if w_hh.shape[0] != G * w_hh.shape[1]:
        raise ValueError(f"{fn}: w_hh must be [{gates}, H] (2-D, {G} gates of H rows), got shape "
                         f"{tuple(w_hh.shape)}")
    H = w_hh.shape[1]
    if H == 0:
        raise ValueError(f"{fn}: w_hh has H = 0 (shape {tuple(w_hh.shape)}): the hidden size must be at least 1")
    if w_ih.shape[0] != G * H:
        raise ValueError(f"{fn}: w_ih must have {gates} = {G * H} rows ([{gates}, I], H = {H} from w_hh), got "
                         f"shape {tuple(w_ih.shape)}")
    if w_ih.shape[1] != I:
        raise ValueError(f"{fn}: w_ih must be [{gates}, I] = [{G * H}, {I}] (I = {I}: x's last dim), got shape "
                         f"{tuple(w_ih.shape)}")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None and b.shape != (G * H,):
            raise ValueError(f"{fn}: {name} must be [{gates}] = [{G * H}], got shape {tuple(b.shape)}")
    for name, s in zip(states, (h0, c0)):
        if s is not None and s.shape != (B, H):
            raise ValueError(f"{fn}: {name} must be [B, H] = [{B}, {H}] (B: x's batch size, H: w_hh's second "
                             f"dim), got shape {tuple(s.shape)}")


def _check_batch_sizes(fn: str, batch_sizes, T: int, B: int) -> Tensor:
    if not isinstance(batch_sizes, Tensor):
        raise TypeError(f"{fn}: batch_sizes must be None or an int64 torch.Tensor [T], got "
                        f"{type(batch_sizes).__name__}")
    if batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        raise TypeError(f"{fn}: batch_sizes must be an int64 CPU tensor (a PackedSequence's), got "
                        f"{_dtype_name(batch_sizes.dtype)} on {batch_sizes.device}")
    if batch_sizes.shape != (T,):
        raise ValueError(f"{fn}: batch_sizes must be [T] = [{T}] (T = x's first dim), got shape "
                         f"{tuple(batch_sizes.shape)}")
    sizes = batch_sizes.tolist()
    if any(not 0 <= n <= B for n in sizes):
        raise ValueError(f"{fn}: batch_sizes must lie in [0, B = {B}], got {sizes}")
    if any(a < b for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"{fn}: batch_sizes must be non-increasing (sorted lengths, as a PackedSequence's), "
                         f"got {sizes}")
    return batch_sizes.contiguous()


def _check_x(fn: str, x, rank: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != rank and not (rank == 2 and x.dim() == 1):
        form = "[T, B, I] (3-D)" if rank == 3 else "[B, I] or [I]"
        raise ValueError(f"{fn}: x must be {form}, got shape {tuple(x.shape)}")


def _state(fn: str, kind: int, hx):
    """(h0, c0) from hx: None, h (GRU) or a pair (h, c) (LSTM; either may be None)."""
    if hx is None:
        return None, None
    if kind == _GRU:
        return hx, None
    if isinstance(hx, Tensor) or not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"{fn}: hx must be None or a pair (h, c) of tensors, got {type(hx).__name__}")
    return hx[0], hx[1]


# ---- running one op ---------------------------------------------------------------------------
def _run(backend: str, kind: int, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse: bool):
    """(y, hn, cn or None) through the eager function, the eager autograd Function or the op."""
    grad = torch.is_grad_enabled() and (x.requires_grad or w_ih.requires_grad or w_hh.requires_grad or any(
        t is not None and t.requires_grad for t in (h0, c0, b_ih, b_hh)))
    if kind == _LSTM:
        if not _eager(x):
            y, hn, cn, _ = _lstm_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, grad)
        elif grad:
            y, hn, cn, _ = _LSTMEager.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, True)
        else:
            y, hn, cn, _ = _forward(backend, _LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, False)
        return y, hn, cn
    if not _eager(x):
        y, hn, _ = _gru_op(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, grad)
    elif grad:
        y, hn, _ = _GRUEager.apply(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, True)
    else:
        y, hn, _, _ = _forward(backend, _GRU, x, h0, None, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, False)
    return y, hn, None


def _sequence(kind: int, fn: str, x, hx, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes):
    _check_x(fn, x, 3)
    h0, c0 = _state(fn, kind, hx)
    backend = _check(kind, fn, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    if not isinstance(reverse, bool):
        raise TypeError(f"{fn}: reverse must be a bool, got {type(reverse).__name__}")
    if batch_sizes is not None:
        batch_sizes = _check_batch_sizes(fn, batch_sizes, x.shape[0], x.shape[1])
    return _run(backend, kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)


def _cell(kind: int, fn: str, x, hx, w_ih, w_hh, b_ih, b_hh):
    """The sequence op on a [1, B, I] view of x; unbatched x [I] with h, c [H] -> [1, 1, I]."""
    _check_x(fn, x, 2)
    h0, c0 = _state(fn, kind, hx)
    if x.dim() == 1:  # [I] -> [1, 1, I]; h, c [H] -> [1, H] (a wrong shape is left to _check)
        x3 = x.unsqueeze(0).unsqueeze(0)
        if isinstance(h0, Tensor) and h0.dim() == 1:
            h0 = h0.unsqueeze(0)
        if isinstance(c0, Tensor) and c0.dim() == 1:
            c0 = c0.unsqueeze(0)
    else:
        x3 = x.unsqueeze(0)
    backend = _check(kind, fn, x3, h0, c0, w_ih, w_hh, b_ih, b_hh, _CELL_STATES[kind])
    _, hn, cn = _run(backend, kind, x3, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)
    if x.dim() == 1:
        hn, cn = hn[0], (None if cn is None else cn[0])
    return hn, cn


# ---- public functions -------------------------------------------------------------------------
def lstm(x: Tensor, hx: Optional[Tuple[Optional[Tensor], Optional[Tensor]]], w_ih: Tensor, w_hh: Tensor,
         b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, reverse: bool = False,
         batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One LSTM layer in one direction over a whole sequence, in one op (torch.nn.LSTM's math).

    Args:
        x: ``[T, B, I]``, any strides (a batch_first input's transposed view is not copied).
        hx: None or ``(h0, c0)``, each ``[B, H]`` or None (None = zeros).
        w_ih: ``[4*H, I]``, w_hh: ``[4*H, H]``: torch.nn.LSTM's weight_ih_l0 / weight_hh_l0,
            row blocks in gate order i, f, g, o.
        b_ih, b_hh: ``[4*H]`` or None (no bias).
        reverse: walk t = T-1 .. 0 (the backward direction of a bidirectional layer).
        batch_sizes: None or an int64 CPU tensor ``[T]``, non-increasing, each in [0, B] (a
            PackedSequence's): at step t only rows b < batch_sizes[t] are updated; the other rows
            keep their state and get y = 0.

    Returns:
        ``(y, (hn, cn))``: y ``[T, B, H]`` (h after every step), hn, cn ``[B, H]``; contiguous,
        x's dtype.

    Raises:
        TypeError: a non-tensor operand, hx not a pair, a dtype the active backend does not
            support (C++ and reference: float32, float64; Triton also float16, bfloat16), mixed
            dtypes, reverse not a bool, batch_sizes not an int64 CPU tensor.
        ValueError: x not 3-D; w_hh not ``[4*H, H]`` (H >= 1); w_ih not ``[4*H, I]``; a bias not
            ``[4*H]``; h0 or c0 not ``[B, H]``; operands on another device than x; batch_sizes not
            ``[T]``, out of [0, B] or increasing.
    """
    y, hn, cn = _sequence(_LSTM, "lstm", x, hx, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes)
    return y, (hn, cn)


def gru(x: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
        b_hh: Optional[Tensor] = None, reverse: bool = False,
        batch_sizes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One GRU layer in one direction over a whole sequence, in one op (torch.nn.GRU's math).

    Args:
        x: ``[T, B, I]``, any strides.
        hx: None (zeros) or h0 ``[B, H]``.
        w_ih: ``[3*H, I]``, w_hh: ``[3*H, H]``: row blocks in gate order r, z, n.
        b_ih, b_hh: ``[3*H]`` or None (b_hh's n block stays inside r * (...), as in torch).
        reverse, batch_sizes: as for ``lstm``.

    Returns:
        ``(y, hn)``: y ``[T, B, H]``, hn ``[B, H]``; contiguous, x's dtype.

    Raises:
        as ``lstm``, with 3*H in place of 4*H (and no c0).
    """
    y, hn, _ = _sequence(_GRU, "gru", x, hx, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes)
    return y, hn


def lstm_cell(x: Tensor, hx: Optional[Tuple[Optional[Tensor], Optional[Tensor]]], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One LSTM step (torch.nn.LSTMCell's forward(input, hx)): the sequence op with T = 1.

    Args:
        x: ``[B, I]``, or ``[I]`` unbatched (then h, c are ``[H]``).
        hx: None (zeros) or ``(h, c)``, each ``[B, H]`` (``[H]``) or None.
        w_ih ``[4*H, I]``, w_hh ``[4*H, H]``, b_ih / b_hh ``[4*H]`` or None.

    Returns:
        ``(h', c')``, each ``[B, H]`` (``[H]`` for unbatched x).

    Raises:
        as ``lstm`` (x must be 1-D or 2-D here).
    """
    return _cell(_LSTM, "lstm_cell", x, hx, w_ih, w_hh, b_ih, b_hh)


def gru_cell(x: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None) -> Tensor:
    """One GRU step (torch.nn.GRUCell's forward(input, hx)): the sequence op with T = 1.

    Args:
        x: ``[B, I]``, or ``[I]`` unbatched (then h is ``[H]``).
        hx: None (zeros) or h ``[B, H]`` (``[H]``).
        w_ih ``[3*H, I]``, w_hh ``[3*H, H]``, b_ih / b_hh ``[3*H]`` or None.

    Returns:
        h' ``[B, H]`` (``[H]`` for unbatched x).

    Raises:
        as ``gru`` (x must be 1-D or 2-D here).
    """
    return _cell(_GRU, "gru_cell", x, hx, w_ih, w_hh, b_ih, b_hh)[0]


# ---- torch.autocast: the public functions cast their arguments first (see ops/_autocast.py) ------
from . import _autocast  # noqa: E402  (kept with the wrapping it serves)

lstm = _autocast.lower_precision(lstm)
gru = _autocast.lower_precision(gru)
lstm_cell = _autocast.lower_precision(lstm_cell)
gru_cell = _autocast.lower_precision(gru_cell)
