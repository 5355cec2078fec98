"""pykernels.numpy on CuPy arrays: the same functions, run by the Triton kernels on the GPU.

pykernels.numpy's functions route here when an array argument is a CuPy array (see
pykernels.numpy._front). Each CuPy array becomes a torch tensor with torch.from_dlpack (no copy:
the tensor is a view of the array's memory, on its GPU), the pykernels torch op runs (CUDA
tensors -> the Triton kernels, unless ``pykernels.backend`` says otherwise), and each result
goes back with cupy.from_dlpack (no copy either). DLPack's stream handshake orders CuPy's and
torch's current streams, so no synchronisation is added here.

Signatures and results are pykernels.numpy's, with these differences:
  * dtypes: float16, float32, float64 (what both the Triton kernels and CuPy have; CuPy has no
    bfloat16). attention's lse is float32 for float16 inputs (float64 for float64), as the
    torch op keeps it; attention_backward takes it so. attention's seed lies in [0, 2**63) (the
    torch op's int64; NumPy arrays take [0, 2**64)).
  * strides: any a torch tensor can view; negative strides (``a[::-1]``) cannot cross DLPack
    into torch, which raises (make the array contiguous first).
  * ``out=`` raises NotImplementedError: the torch ops allocate their outputs (copy into your
    buffer with ``out[...] = result``).
  * batch_sizes (lstm, gru) may be a NumPy or CuPy int64 array: it is host metadata, as in the
    torch op (a CuPy one is copied to the host, T integers).
  * backwards: linear, matmul, conv2d, conv_transpose2d, lstm, gru and the cells run the torch op
    forward once more with autograd and take its registered backward (torch.autograd.grad);
    avg_pool2d / adaptive_avg_pool2d backward run that autograd on a zero input of
    input_shape (their gradient does not depend on x); max-pool backward and
    attention_backward call the ops' backward implementations directly with the given indices /
    out, lse.
  * error messages come from the torch ops, which name their own arguments (``weight`` for
    linear's ``w``, for one).

Raises: TypeError for an argument that is not a CuPy array where the others are (mixed NumPy /
CuPy arrays are refused by pykernels.numpy before this module is imported) or a dtype the
Triton kernels do not take; ValueError for arrays on different GPUs, wrong shapes, bad
parameters, an attention seed >= 2**63; NotImplementedError for ``out=``.

Test (needs CuPy and a CUDA GPU; skipped otherwise): pytest tests/test_cupy.py
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple

import cupy
import numpy as np
import torch

from . import ops
from .ops.attention import _attention_backward_impl, _attention_impl, _lse_dtype, _operands4, _scalars
from .ops.pool2d import _max_pool2d_backward_impl

from .numpy import __all__  # noqa: E402,F401  (the same functions as the NumPy front)


# ---- the exchange: CuPy <-> torch through DLPack, no copy ---------------------------------------
def _tensors(*named):
    """(name, CuPy array or None) pairs -> torch tensors viewing the same memory (None kept),
    checked to be on one GPU."""
    out, first = [], None
    for name, a in named:
        if a is None:
            out.append(None)
            continue
        if not isinstance(a, cupy.ndarray):
            raise TypeError(f"{name} must be a cupy.ndarray like the other arrays, got {type(a).__name__}")
        t = torch.from_dlpack(a)
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise ValueError(f"{name} is on {t.device} but {first[0]} is on {first[1]}; pass arrays on one GPU")
        out.append(t)
    return out


def _cp(t: Optional[torch.Tensor]):
    return None if t is None else cupy.from_dlpack(t)


def _on(t: torch.Tensor):
    """The device guard under which the kernels launch (Triton uses the current device)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _no_out(out) -> None:
    if out is not None:
        raise NotImplementedError("out= is not supported for CuPy arrays: the Triton ops allocate their "
                                  "outputs; copy into your buffer with out[...] = result")


def _grads(fn, inputs: Sequence[Optional[torch.Tensor]], upstream) -> list:
    """Gradients of fn(*inputs) (a tensor or a tuple of them) for the upstream gradients
    ``upstream``: (name, tensor or None = no gradient from that output) per output. One gradient
    per input (None for an input given as None; zeros where no gradient reaches it)."""
    leaves = [None if t is None else (t.detach().requires_grad_() if t.is_floating_point() else t)
              for t in inputs]
    with torch.enable_grad():
        outs = fn(*leaves)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    pairs = []
    for o, (name, g) in zip(outs, upstream):
        if g is None:
            continue
        if tuple(g.shape) != tuple(o.shape):
            raise ValueError(f"{name} must have the output's shape {tuple(o.shape)}, got {tuple(g.shape)}")
        if g.dtype != o.dtype:
            raise TypeError(f"{name} has dtype {g.dtype} but the output is {o.dtype}")
        pairs.append((o, g))
    live = [t for t in leaves if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad([o for o, _ in pairs], live, [g for _, g in pairs], allow_unused=True)
               if pairs and live else [None] * len(live))
    result = []
    for t in leaves:
        if t is None or not t.requires_grad:
            result.append(None)
        else:
            g = next(got)
            result.append(torch.zeros_like(t) if g is None else g)
    return result


# ---- GEMM ---------------------------------------------------------------------------------------
def linear(x, w, b=None, activation=None, out=None):
    _no_out(out)
    x, w, b = _tensors(("x", x), ("w", w), ("b", b))
    with _on(x), torch.no_grad():
        return _cp(ops.linear(x, w, b, activation))


def linear_backward(dy, x, w, b=None, activation=None):
    dy, x, w, b = _tensors(("dy", dy), ("x", x), ("w", w), ("b", b))
    with _on(x):
        g = _grads(lambda x_, w_, b_: ops.linear(x_, w_, b_, activation), (x, w, b), [("dy", dy)])
    return tuple(_cp(t) for t in g)


def matmul(a, b, out=None):
    _no_out(out)
    a, b = _tensors(("a", a), ("b", b))
    with _on(a), torch.no_grad():
        return _cp(ops.matmul(a, b))


def matmul_backward(dc, a, b):
    dc, a, b = _tensors(("dc", dc), ("a", a), ("b", b))
    with _on(a):
        g = _grads(ops.matmul, (a, b), [("dc", dc)])
    return tuple(_cp(t) for t in g)


# ---- conv2d, conv_transpose2d -------------------------------------------------------------------
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None, out=None):
    _no_out(out)
    x, weight, bias = _tensors(("x", x), ("weight", weight), ("bias", bias))
    with _on(x), torch.no_grad():
        return _cp(ops.conv2d(x, weight, bias, stride, padding, dilation, groups, activation))


def conv2d_backward(dy, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None):
    dy, x, weight, bias = _tensors(("dy", dy), ("x", x), ("weight", weight), ("bias", bias))
    with _on(x):
        g = _grads(lambda x_, w_, b_: ops.conv2d(x_, w_, b_, stride, padding, dilation, groups, activation),
                   (x, weight, bias), [("dy", dy)])
    return tuple(_cp(t) for t in g)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     out=None):
    _no_out(out)
    x, weight, bias = _tensors(("x", x), ("weight", weight), ("bias", bias))
    with _on(x), torch.no_grad():
        return _cp(ops.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation))


def conv_transpose2d_backward(dy, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1):
    dy, x, weight, bias = _tensors(("dy", dy), ("x", x), ("weight", weight), ("bias", bias))
    with _on(x):
        g = _grads(lambda x_, w_, b_: ops.conv_transpose2d(x_, w_, b_, stride, padding, output_padding, groups,
                                                           dilation),
                   (x, weight, bias), [("dy", dy)])
    return tuple(_cp(t) for t in g)


# ---- pooling ------------------------------------------------------------------------------------
def _pair(y, idx, return_indices: bool):
    return (_cp(y), _cp(idx)) if return_indices else _cp(y)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False,
               out=None):
    _no_out(out)
    (x,) = _tensors(("x", x))
    with _on(x), torch.no_grad():
        r = ops.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return _pair(*(r if return_indices else (r, None)), return_indices)


def _channels_last(t: torch.Tensor) -> bool:
    return t.shape[1] > 1 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _input_shape(input_shape, dy4: torch.Tensor, unbatched: bool) -> Tuple[int, int, int, int]:
    rank = 3 if unbatched else 4
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != rank or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in input_shape):
        raise ValueError(f"input_shape must be {rank} ints (like dy's rank), got {input_shape!r}")
    shape = (1,) * (4 - rank) + tuple(int(v) for v in input_shape)
    if min(shape) < 0 or shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"input_shape must be non-negative with H, W >= 1, got {tuple(input_shape)}")
    if shape[:2] != tuple(dy4.shape[:2]):
        raise ValueError(f"input_shape {tuple(input_shape)} must have the N, C of dy {tuple(dy4.shape[:2])}")
    return shape


def _dy4(dy: torch.Tensor):
    if dy.dim() not in (3, 4):
        raise ValueError(f"dy must be [N, C, OH, OW] or [C, OH, OW], got shape {tuple(dy.shape)}")
    return (dy, False) if dy.dim() == 4 else (dy.unsqueeze(0), True)


def max_pool2d_backward(dy, indices, input_shape):
    dy, indices = _tensors(("dy", dy), ("indices", indices))
    dy4, unbatched = _dy4(dy)
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"indices has dtype {indices.dtype}; it must be int64 (or int32), as the forward "
                        "returns them")
    if tuple(indices.shape) != tuple(dy.shape):
        raise ValueError(f"indices must have dy's shape {tuple(dy.shape)}, got {tuple(indices.shape)}")
    N, C, H, W = _input_shape(input_shape, dy4, unbatched)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= H * W):  # the kernel scatters
        raise ValueError(f"indices must lie in [0, H*W = {H * W}) (flat positions in the input plane)")
    with _on(dy), torch.no_grad():
        idx4 = indices.unsqueeze(0) if unbatched else indices
        if dy4.numel() == 0:
            dx4 = dy4.new_zeros((N, C, H, W))
        else:
            dx4 = _max_pool2d_backward_impl(dy4, idx4, [N, C, H, W], _channels_last(dy4))
    return _cp(dx4[0] if unbatched else dx4)


def _linear_pool_backward(dy, input_shape, fn):
    """dx of a pool that is linear in x (avg, adaptive avg): autograd through fn on zeros."""
    (dy,) = _tensors(("dy", dy))
    dy4, unbatched = _dy4(dy)
    shape = _input_shape(input_shape, dy4, unbatched)
    fmt = torch.channels_last if _channels_last(dy4) else torch.contiguous_format
    x4 = torch.zeros(shape, dtype=dy.dtype, device=dy.device).contiguous(memory_format=fmt)
    with _on(dy):
        (dx4,) = _grads(fn, (x4,), [("dy", dy4)])
    return _cp(dx4[0] if unbatched else dx4)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, out=None):
    _no_out(out)
    (x,) = _tensors(("x", x))
    with _on(x), torch.no_grad():
        return _cp(ops.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override))


def avg_pool2d_backward(dy, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    return _linear_pool_backward(dy, input_shape, lambda x_: ops.avg_pool2d(
        x_, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override))


def adaptive_avg_pool2d(x, output_size, out=None):
    _no_out(out)
    (x,) = _tensors(("x", x))
    with _on(x), torch.no_grad():
        return _cp(ops.adaptive_avg_pool2d(x, output_size))


def adaptive_avg_pool2d_backward(dy, input_shape):
    (t,) = _tensors(("dy", dy))
    output_size = tuple(t.shape[-2:])  # OH, OW from dy's shape, as pykernels.numpy reads them
    if t.dim() in (3, 4) and min(output_size) < 1:
        raise ValueError(f"dy must have OH, OW >= 1, got shape {tuple(t.shape)}")
    return _linear_pool_backward(dy, input_shape, lambda x_: ops.adaptive_avg_pool2d(x_, output_size))


def adaptive_max_pool2d(x, output_size, return_indices=False, out=None):
    _no_out(out)
    (x,) = _tensors(("x", x))
    with _on(x), torch.no_grad():
        r = ops.adaptive_max_pool2d(x, output_size, return_indices)
    return _pair(*(r if return_indices else (r, None)), return_indices)


def adaptive_max_pool2d_backward(dy, indices, input_shape):
    return max_pool2d_backward(dy, indices, input_shape)


# ---- attention ----------------------------------------------------------------------------------
def _seed_tensor(dropout_p: float, seed) -> Optional[torch.Tensor]:
    """The op's 0-d int64 seed (None without dropout)."""
    from .numpy import _seed
    s = _seed(dropout_p, seed)
    if dropout_p == 0:
        return None
    if s >= 2 ** 63:
        raise ValueError(f"seed must lie in [0, 2**63) for CuPy arrays (the torch op carries it as an int64), "
                         f"got {seed}")
    return torch.tensor(s, dtype=torch.int64)


def attention(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0, seed=None, out=None):
    _no_out(out)
    q, k, v, m = _tensors(("q", q), ("k", k), ("v", v), ("attn_mask", attn_mask))
    q4, k4, v4, mask, three = _operands4(q, k, v, m)
    causal, scale, dropout_p = _scalars(is_causal, scale, dropout_p, q.shape[-1])
    s = _seed_tensor(dropout_p, seed)
    with _on(q), torch.no_grad():
        o, lse = _attention_impl(q4, k4, v4, mask, causal, scale, dropout_p, s)
    return (_cp(o[:, 0]), _cp(lse[:, 0])) if three else (_cp(o), _cp(lse))


def _sum_to(g: torch.Tensor, shape) -> torch.Tensor:
    """g summed over the dims a mask of `shape` was broadcast along (its gradient)."""
    lead = g.dim() - len(shape)
    g = g.sum(dim=tuple(range(lead))) if lead else g
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(dim=dims, keepdim=True) if dims else g


def attention_backward(dout, q, k, v, out, lse, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0,
                       seed=None):
    dout, q, k, v, out, lse, m = _tensors(("dout", dout), ("q", q), ("k", k), ("v", v), ("out", out),
                                          ("lse", lse), ("attn_mask", attn_mask))
    q4, k4, v4, mask, three = _operands4(q, k, v, m)
    causal, scale, dropout_p = _scalars(is_causal, scale, dropout_p, q.shape[-1])
    s = _seed_tensor(dropout_p, seed)
    B, H, N, _ = q4.shape
    Dv = v4.shape[3]
    oshape = (B, N, Dv) if three else (B, H, N, Dv)
    lse_dtype = _lse_dtype(q.dtype)
    for name, t, shape, dtype in (("dout", dout, oshape, q.dtype), ("out", out, oshape, q.dtype),
                                  ("lse", lse, oshape[:-1], lse_dtype)):
        if t.dtype != dtype:
            raise TypeError(f"{name} has dtype {t.dtype}; it must be {dtype}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    lift = (lambda t: t.unsqueeze(1)) if three else (lambda t: t)
    need_dmask = mask is not None and mask.dtype != torch.bool
    with _on(q), torch.no_grad():
        dq, dk, dv, dmask4 = _attention_backward_impl(lift(dout), q4, k4, v4, lift(out), lift(lse), mask,
                                                            causal, scale, dropout_p, s, need_dmask)
        dmask = _sum_to(dmask4[:, 0] if three else dmask4, tuple(m.shape)) if need_dmask else None
    if three:
        dq, dk, dv = dq[:, 0], dk[:, 0], dv[:, 0]
    return _cp(dq), _cp(dk), _cp(dv), _cp(dmask)


# ---- LSTM, GRU ----------------------------------------------------------------------------------
def _batch_sizes(batch_sizes) -> Optional[torch.Tensor]:
    """The torch op's int64 CPU tensor [T] from a NumPy or CuPy array (host metadata)."""
    if batch_sizes is None:
        return None
    if isinstance(batch_sizes, cupy.ndarray):
        batch_sizes = cupy.asnumpy(batch_sizes)
    if not isinstance(batch_sizes, np.ndarray):
        raise TypeError(f"batch_sizes must be None or an int64 array [T], got {type(batch_sizes).__name__}")
    return torch.from_numpy(batch_sizes)


def _pair_hx(hx):
    if hx is None:
        return None, None
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx must be None or a pair (h, c) of arrays, got {type(hx).__name__}")
    return hx[0], hx[1]


def _lstm_tensors(x, hx, w_ih, w_hh, b_ih, b_hh, *upstream):
    h0, c0 = _pair_hx(hx)
    return _tensors(("x", x), ("hx[0]", h0), ("hx[1]", c0), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih),
                    ("b_hh", b_hh), *upstream)


def lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_tensors(x, hx, w_ih, w_hh, b_ih, b_hh)
    hx = None if h0 is None and c0 is None else (h0, c0)
    with _on(x), torch.no_grad():
        y, (hn, cn) = ops.lstm(x, hx, w_ih, w_hh, b_ih, b_hh, reverse, _batch_sizes(batch_sizes))
    return _cp(y), (_cp(hn), _cp(cn))


def lstm_backward(dy, dhn, dcn, x, hx, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, dy, dhn, dcn = _lstm_tensors(x, hx, w_ih, w_hh, b_ih, b_hh, ("dy", dy),
                                                                    ("dhn", dhn), ("dcn", dcn))
    bs = _batch_sizes(batch_sizes)

    def run(x_, h_, c_, wi, wh, bi, bh):
        y, (hn, cn) = ops.lstm(x_, None if h_ is None and c_ is None else (h_, c_), wi, wh, bi, bh, reverse, bs)
        return y, hn, cn
    with _on(x):
        g = _grads(run, (x, h0, c0, w_ih, w_hh, b_ih, b_hh), [("dy", dy), ("dhn", dhn), ("dcn", dcn)])
    return tuple(_cp(t) for t in g)


def gru(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None):
    x, h0, w_ih, w_hh, b_ih, b_hh = _tensors(("x", x), ("hx", hx), ("w_ih", w_ih), ("w_hh", w_hh),
                                             ("b_ih", b_ih), ("b_hh", b_hh))
    with _on(x), torch.no_grad():
        y, hn = ops.gru(x, h0, w_ih, w_hh, b_ih, b_hh, reverse, _batch_sizes(batch_sizes))
    return _cp(y), _cp(hn)


def gru_backward(dy, dhn, x, hx, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None):
    x, h0, w_ih, w_hh, b_ih, b_hh, dy, dhn = _tensors(("x", x), ("hx", hx), ("w_ih", w_ih), ("w_hh", w_hh),
                                                      ("b_ih", b_ih), ("b_hh", b_hh), ("dy", dy), ("dhn", dhn))
    bs = _batch_sizes(batch_sizes)
    with _on(x):
        g = _grads(lambda x_, h_, wi, wh, bi, bh: ops.gru(x_, h_, wi, wh, bi, bh, reverse, bs),
                   (x, h0, w_ih, w_hh, b_ih, b_hh), [("dy", dy), ("dhn", dhn)])
    return tuple(_cp(t) for t in g)


def lstm_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_tensors(x, hx, w_ih, w_hh, b_ih, b_hh)
    hx = None if h0 is None and c0 is None else (h0, c0)
    with _on(x), torch.no_grad():
        h, c = ops.lstm_cell(x, hx, w_ih, w_hh, b_ih, b_hh)
    return _cp(h), _cp(c)


def lstm_cell_backward(dh, dc, x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, dh, dc = _lstm_tensors(x, hx, w_ih, w_hh, b_ih, b_hh, ("dh", dh),
                                                              ("dc", dc))

    def run(x_, h_, c_, wi, wh, bi, bh):
        return ops.lstm_cell(x_, None if h_ is None and c_ is None else (h_, c_), wi, wh, bi, bh)
    with _on(x):
        g = _grads(run, (x, h0, c0, w_ih, w_hh, b_ih, b_hh), [("dh", dh), ("dc", dc)])
    return tuple(_cp(t) for t in g)


def gru_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    x, h0, w_ih, w_hh, b_ih, b_hh = _tensors(("x", x), ("hx", hx), ("w_ih", w_ih), ("w_hh", w_hh),
                                             ("b_ih", b_ih), ("b_hh", b_hh))
    with _on(x), torch.no_grad():
        return _cp(ops.gru_cell(x, h0, w_ih, w_hh, b_ih, b_hh))


def gru_cell_backward(dh, x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    x, h0, w_ih, w_hh, b_ih, b_hh, dh = _tensors(("x", x), ("hx", hx), ("w_ih", w_ih), ("w_hh", w_hh),
                                                 ("b_ih", b_ih), ("b_hh", b_hh), ("dh", dh))
    with _on(x):
        g = _grads(ops.gru_cell, (x, h0, w_ih, w_hh, b_ih, b_hh), [("dh", dh)])
    return tuple(_cp(t) for t in g)
