"""Fused softmax attention, with torch.nn.functional.scaled_dot_product_attention's semantics.

    attention(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0)

Shapes: q [B, H, N, D], k [B, H, S, D], v [B, H, S, Dv] -> out [B, H, N, Dv]; 3-D inputs
[B, N, D] are H = 1 (the output is 3-D too). Per (b, h):

    s    = scale * q @ k^T + mask          (-inf where is_causal and j > i: top-left aligned)
    P    = softmax(s) row by row           (lse_i = log(sum_j exp(s_ij)) is kept for backward)
    out  = dropout(P) @ v                  (P * keep / (1 - dropout_p))

scale defaults to 1/sqrt(D). attn_mask: bool (True = takes part) or additive of q's dtype,
broadcastable to [B, H, N, S] ([B, N, S] for 3-D q, like torch); it reaches the kernels as an
expanded view (stride 0 on broadcast dims, never copied). An additive mask that requires grad
gets dS (= dmask) summed over its broadcast dims (by the expand's own backward). is_causal and
attn_mask may be given together: both apply. A row where no key takes part gives out = 0 and
zero gradients (no NaN), as torch does; S = 0 gives out = 0.
Dropout applies whenever dropout_p > 0 (pass 0 in eval, as with torch). Its keep mask is the
Philox4x32-10 rule of pykernels/reference/attention.py, bit-identical on every backend, keyed by
a seed drawn here from torch's default CPU generator (torch.manual_seed reproduces it) and
passed into the op as a 0-d int64 tensor, so torch.compile draws a fresh one per call; the
backward regenerates the same mask from it. Nothing of size N x S is saved for backward: only
q, k, v, out, lse [B, H, N], the mask view and the seed (FlashAttention-2's backward).

The op is a ``torch.library.custom_op`` (``pykernels::attention`` -> (out, lse)) with a fake
function and an autograd formula whose backward is itself one custom op
(``pykernels::attention_backward`` -> (dq, dk, dv, dmask), dmask only when the mask needs it).
In eager mode on plain tensors the public function calls the implementation directly (through
a ``torch.autograd.Function`` when a gradient is needed), skipping the custom op's Python
dispatch; under torch.compile, tensor subclasses or a dispatch mode the registered ops run.
Outputs are contiguous: out [B, H, N, Dv], lse [B, H, N] (float32, float64 for float64
inputs), dq/dk/dv in q/k/v's shapes. Empty problems (B*H = 0, N = 0, S = 0, Dv = 0) are
answered here without a kernel (empty or zero outputs, zero gradients).

Device dispatch: CPU tensors -> pykernels._C (C++, csrc/attention.cpp), CUDA tensors -> Triton
(kernels/attention.py); ``pykernels.backend`` overrides it ("reference": the float64 NumPy
oracle, pykernels/reference/attention.py).

Not supported (raises before any kernel runs): ranks other than 3 or 4, D = 0, broadcasting
or grouped heads between q and k/v (B, H must match), integer dtypes, float16/bfloat16 on the
C++/reference backends, mixed dtypes or devices, masks of another dtype than bool or q's,
dropout_p outside [0, 1), a non-finite scale, double backward. torch 2.13 refuses attn_mask
together with is_causal; here both apply.

Test: pytest tests/test_attention.py      Benchmark: python -m pykernels bench attention
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _C
from .._backend import resolve, triton_kernels
from .gemm import TORCH, _dtype_name, _eager, _np64

__all__ = ["attention"]

_CPP_DTYPES = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_NO_MASK, _BOOL_MASK, _ADD_MASK = 0, 1, 2      # the C++ binding's mask_kind


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _seed_int(seed: Optional[Tensor]) -> int:
    return 0 if seed is None else int(seed.item())


# ---- the kernels, per backend ----------------------------------------------------------------
def _mask_kind(mask, bool_mask: bool) -> int:
    return _NO_MASK if mask is None else (_BOOL_MASK if bool_mask else _ADD_MASK)


# The C++ launches, shared with pykernels.numpy: io says how to read the front's arrays
# (gemm.TORCH for tensors; see gemm.TorchBuffers). q, k, v, out, dq, ... are 4-D [B, H, *, *],
# lse [B, H, N], mask None or a [B, H, N, S] view (bool bytes when bool_mask, else q's dtype).
def attention_forward_cpp(io, q, k, v, mask, bool_mask: bool, causal: bool, scale: float, dropout_p: float,
                          seed: int, out, lse) -> None:
    """out [B, H, N, Dv], lse [B, H, N]: every element written. B, H, N, S, D, Dv >= 1."""
    B, H, N, D = q.shape
    S, Dv = v.shape[2], v.shape[3]
    _C.attention_forward(io.fp64(q), B, H, N, S, D, Dv,
                         io.ptr(q), *io.strides(q, 4), io.ptr(k), *io.strides(k, 4), io.ptr(v), *io.strides(v, 4),
                         io.ptr(mask), _mask_kind(mask, bool_mask), *io.strides(mask, 4),
                         causal, scale, dropout_p, seed,
                         io.ptr(out), *io.strides(out, 4), io.ptr(lse), *io.strides(lse, 3))


def attention_backward_cpp(io, dout, q, k, v, out, lse, mask, bool_mask: bool, causal: bool, scale: float,
                           dropout_p: float, seed: int, dq, dk, dv, dmask) -> None:
    """dq, dk, dv (and dmask [B, H, N, S] when not None): every element written."""
    B, H, N, D = q.shape
    S, Dv = v.shape[2], v.shape[3]
    _C.attention_backward(io.fp64(q), B, H, N, S, D, Dv,
                          io.ptr(q), *io.strides(q, 4), io.ptr(k), *io.strides(k, 4), io.ptr(v), *io.strides(v, 4),
                          io.ptr(out), *io.strides(out, 4), io.ptr(dout), *io.strides(dout, 4),
                          io.ptr(lse), *io.strides(lse, 3),
                          io.ptr(mask), _mask_kind(mask, bool_mask), *io.strides(mask, 4),
                          causal, scale, dropout_p, seed,
                          io.ptr(dq), *io.strides(dq, 4), io.ptr(dk), *io.strides(dk, 4),
                          io.ptr(dv), *io.strides(dv, 4), io.ptr(dmask), *io.strides(dmask, 4))


def _is_bool(mask: Optional[Tensor]) -> bool:
    return mask is not None and mask.dtype == torch.bool


def _run_forward(backend: str, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], causal: bool,
                 scale: float, dropout_p: float, seed: int, out: Tensor, lse: Tensor) -> None:
    """out [B, H, N, Dv], lse [B, H, N]: every element written. B, H, N, S, D, Dv >= 1."""
    if backend == "cpp":
        attention_forward_cpp(TORCH, q, k, v, mask, _is_bool(mask), causal, scale, dropout_p, seed, out, lse)
    else:
        triton_kernels("attention").attention_forward(q, k, v, out, lse, mask=mask, causal=causal, scale=scale,
                                                      dropout_p=dropout_p, seed=seed)


def _run_backward(backend: str, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                  mask: Optional[Tensor], causal: bool, scale: float, dropout_p: float, seed: int,
                  dq: Tensor, dk: Tensor, dv: Tensor, dmask: Optional[Tensor]) -> None:
    """dq, dk, dv (and dmask [B, H, N, S] when given): every element written."""
    if backend == "cpp":
        attention_backward_cpp(TORCH, dout, q, k, v, out, lse, mask, _is_bool(mask), causal, scale, dropout_p,
                               seed, dq, dk, dv, dmask)
    else:
        triton_kernels("attention").attention_backward(q, k, v, out, dout, lse, dq, dk, dv, mask=mask,
                                                       causal=causal, scale=scale, dropout_p=dropout_p,
                                                       seed=seed, dmask=dmask)


# ---- the float64 NumPy oracle as a backend ---------------------------------------------------
def _keep(q: Tensor, S: int, dropout_p: float, seed: int):
    from ..reference import attention as ref
    B, H, N, _ = q.shape
    return ref.dropout_keep(B, H, N, S, seed, dropout_p) if dropout_p > 0 else None


def _additive64(mask: Optional[Tensor]):
    """The mask view as an additive float64 array (bool: True -> 0, False -> -inf)."""
    if mask is None:
        return None
    import numpy as np
    m = mask.detach().cpu()
    return np.where(m.numpy(), 0.0, -np.inf) if m.dtype == torch.bool else m.double().numpy()


def _from_np(arr, like: Tensor, dtype=None) -> Tensor:
    return torch.from_numpy(arr).to(dtype=like.dtype if dtype is None else dtype,
                                    device=like.device).contiguous()


# ---- pykernels::attention ---------------------------------------------------------------------
def _attention_impl(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], causal: bool, scale: float,
                    dropout_p: float, seed: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """(out [B, H, N, Dv], lse [B, H, N]) for 4-D q, k, v and a 4-D mask view [B, H, N, S]."""
    B, H, N, D = q.shape
    S, Dv = v.shape[2], v.shape[3]
    out = q.new_empty((B, H, N, Dv))
    lse = q.new_empty((B, H, N), dtype=_lse_dtype(q.dtype))
    if B * H * N == 0:
        return out, lse
    if S == 0:  # no key at all: every row is fully masked
        return out.zero_(), lse.fill_(-math.inf)
    backend = resolve(q.device)
    s = _seed_int(seed)
    if backend == "reference":
        from ..reference import attention as ref
        o, l = ref.attention_forward(_np64(q), _np64(k), _np64(v), _additive64(mask), causal, scale,
                                     _keep(q, S, dropout_p, s), dropout_p)
        return _from_np(o, q), _from_np(l, q, lse.dtype)
    if Dv == 0:  # out is empty; lse from the same kernel on a zero v of width 1 (stride 0)
        _run_forward(backend, q, k, q.new_zeros(()).expand(B, H, S, 1), mask, causal, scale, dropout_p, s,
                     q.new_empty((B, H, N, 1)), lse)
        return out, lse
    _run_forward(backend, q, k, v, mask, causal, scale, dropout_p, s, out, lse)
    return out, lse


_attention_op = torch.library.custom_op("pykernels::attention", mutates_args=())(_attention_impl)


@_attention_op.register_fake
def _(q, k, v, mask, causal, scale, dropout_p, seed):
    B, H, N, _ = q.shape
    return q.new_empty((B, H, N, v.shape[3])), q.new_empty((B, H, N), dtype=_lse_dtype(q.dtype))


# ---- pykernels::attention_backward ------------------------------------------------------------
def _attention_backward_impl(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                             mask: Optional[Tensor], causal: bool, scale: float, dropout_p: float,
                             seed: Optional[Tensor], need_dmask: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dmask): dmask [B, H, N, S] (the mask's dtype) when need_dmask, else empty."""
    B, H, N, D = q.shape
    S, Dv = v.shape[2], v.shape[3]
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    dmask = q.new_empty((B, H, N, S) if need_dmask else 0)
    if B * H * N * S * Dv == 0:  # no score, or no output to differentiate: all-zero gradients
        for t in (dq, dk, dv, dmask):
            t.zero_()
        return dq, dk, dv, dmask
    backend = resolve(q.device)
    s = _seed_int(seed)
    if backend == "reference":
        from ..reference import attention as ref
        gq, gk, gv, gm = ref.attention_backward(_np64(dout), _np64(q), _np64(k), _np64(v), _additive64(mask),
                                                causal, scale, _keep(q, S, dropout_p, s), dropout_p)
        dq.copy_(torch.from_numpy(gq))
        dk.copy_(torch.from_numpy(gk))
        dv.copy_(torch.from_numpy(gv))
        if need_dmask:
            dmask.copy_(torch.from_numpy(gm))
        return dq, dk, dv, dmask
    _run_backward(backend, dout, q, k, v, out, lse, mask, causal, scale, dropout_p, s, dq, dk, dv,
                  dmask if need_dmask else None)
    return dq, dk, dv, dmask


_attention_backward_op = torch.library.custom_op(
    "pykernels::attention_backward", mutates_args=())(_attention_backward_impl)


@_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, mask, causal, scale, dropout_p, seed, need_dmask):
    B, H, N, _ = q.shape
    # a distinct tensor per output: outputs of a custom op may not alias
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            q.new_empty((B, H, N, k.shape[2]) if need_dmask else 0))


# ---- autograd ---------------------------------------------------------------------------------
def _attention_setup(ctx, inputs, output):
    q, k, v, mask, causal, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.args = (causal, scale, dropout_p)
    ctx.save_for_backward(q, k, v, out, lse, mask, seed)


def _attention_grad_with(backward):
    def grad(ctx, dout, dlse):
        if dout is None:  # the output was not used (eager path: grads are not materialised)
            return (None,) * 8
        q, k, v, out, lse, mask, seed = ctx.saved_tensors
        causal, scale, dropout_p = ctx.args
        nq, nk, nv, nm = ctx.needs_input_grad[:4]
        nm = nm and mask is not None
        dq, dk, dv, dmask = backward(dout, q, k, v, out, lse, mask, causal, scale, dropout_p, seed, nm)
        return (dq if nq else None, dk if nk else None, dv if nv else None, dmask if nm else None,
                None, None, None, None)
    return grad


_attention_op.register_autograd(_attention_grad_with(_attention_backward_op), setup_context=_attention_setup)


class _AttentionEager(torch.autograd.Function):
    """The eager path of pykernels::attention when a gradient is needed (see gemm._eager)."""
    @staticmethod
    def forward(ctx, *inputs):
        output = _attention_impl(*inputs)
        _attention_setup(ctx, inputs, output)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zeros for lse's (absent) gradient
        return output

    backward = staticmethod(_attention_grad_with(_attention_backward_impl))


# ---- argument checks --------------------------------------------------------------------------
def _check_operands(q, k, v, attn_mask) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if attn_mask is not None and not isinstance(attn_mask, Tensor):
        raise TypeError(f"attn_mask must be None or a torch.Tensor, got {type(attn_mask).__name__}")
    backend = resolve(q.device)
    allowed = _TRITON_DTYPES if backend == "triton" else _CPP_DTYPES
    if q.dtype not in allowed:
        names = ", ".join(_dtype_name(d) for d in allowed)
        raise TypeError(f"q has dtype {_dtype_name(q.dtype)}; the {backend} backend supports {names}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {_dtype_name(t.dtype)} but q has {_dtype_name(q.dtype)}; "
                            "pass tensors of one dtype")
    if attn_mask is not None and attn_mask.dtype not in (torch.bool, q.dtype):
        raise TypeError(f"attn_mask has dtype {_dtype_name(attn_mask.dtype)}; it must be bool (True = takes "
                        f"part) or q's dtype {_dtype_name(q.dtype)} (added to the scores)")
    for name, t in (("k", k), ("v", v), ("attn_mask", attn_mask)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")


def _check_shapes(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() not in (3, 4):
        raise ValueError(f"q must be [B, H, N, D] or [B, N, D], got shape {tuple(q.shape)}")
    form = "[B, H, S, D]" if q.dim() == 4 else "[B, S, D]"
    vform = "[B, H, S, Dv]" if q.dim() == 4 else "[B, S, Dv]"
    for name, t, f in (("k", k, form), ("v", v, vform)):
        if t.dim() != q.dim():
            raise ValueError(f"{name} must be {q.dim()}-D {f} like q {tuple(q.shape)}, got shape {tuple(t.shape)}")
        lead = q.dim() - 2
        if t.shape[:lead] != q.shape[:lead]:
            what = "B, H" if lead == 2 else "B"
            raise ValueError(f"{name} must have the same {what} as q {tuple(q.shape)} (no broadcasting), "
                             f"got shape {tuple(t.shape)}")
    if q.shape[-1] == 0:
        raise ValueError(f"q has D = 0 (shape {tuple(q.shape)}): the head dim must be at least 1")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k must have D = {q.shape[-1]} (q's last dim), got shape {tuple(k.shape)}")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v must have S = {k.shape[-2]} (k's dim -2), got shape {tuple(v.shape)}")


def _mask_view(attn_mask: Tensor, target: Tuple[int, ...]) -> Tensor:
    """attn_mask expanded to target ([B, H, N, S], or [B, N, S] for 3-D q), without a copy."""
    shape = tuple(attn_mask.shape)
    ok = len(shape) <= len(target) and all(m in (1, t) for m, t in zip(reversed(shape), reversed(target)))
    if not ok:
        form = "[B, H, N, S]" if len(target) == 4 else "[B, N, S]"
        raise ValueError(f"attn_mask of shape {shape} does not broadcast to the score shape {form} = "
                         f"{target}")
    return attn_mask.expand(target)


def _scalars(is_causal, scale, dropout_p, D: int) -> Tuple[bool, float, float]:
    if not isinstance(is_causal, (bool, int)):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be None or a float, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    return bool(is_causal), float(scale), float(dropout_p)


# ---- public function --------------------------------------------------------------------------

def _operands4(q, k, v, attn_mask):
    """Checked q, k, v as 4-D [B, H, *, *] tensors (a 3-D call gets H = 1), the mask as a
    [B, H, N, S] view (or None), and whether q was 3-D."""
    _check_operands(q, k, v, attn_mask)
    _check_shapes(q, k, v)
    three = q.dim() == 3
    q4, k4, v4 = (q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)) if three else (q, k, v)
    B, H, N, _ = q4.shape
    S = k4.shape[2]
    mask = None
    if attn_mask is not None:
        mask = _mask_view(attn_mask, (B, N, S) if three else (B, H, N, S))
        if three:
            mask = mask.unsqueeze(1)
    return q4, k4, v4, mask, three


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False,
              scale: Optional[float] = None, dropout_p: float = 0.0) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal,
    scale)`` in one fused kernel: ``softmax(scale * q @ k^T + mask) @ v`` per batch and head.

    Args:
        q: ``[B, H, N, D]`` or ``[B, N, D]`` (H = 1), any strides.
        k: ``[B, H, S, D]`` (or ``[B, S, D]``): same B, H and D as q.
        v: ``[B, H, S, Dv]`` (or ``[B, S, Dv]``): same B, H and S as k; Dv may differ from D.
        attn_mask: None, a bool tensor (True = the key takes part) or a tensor of q's dtype added
            to the scores, broadcastable to ``[B, H, N, S]`` (``[B, N, S]`` for 3-D q). Never
            copied. A float mask that requires grad gets its gradient.
        is_causal: query i attends key j only when j <= i (top-left aligned, also when N != S);
            combined with attn_mask when both are given.
        scale: the factor of the scores; None means ``1 / sqrt(D)``.
        dropout_p: dropout on the attention weights, in [0, 1); applied whenever > 0 (pass 0
            in eval, as with torch). The keep mask comes from a seed drawn from torch's default
            CPU generator, so ``torch.manual_seed`` reproduces it.

    Returns:
        ``[B, H, N, Dv]`` (``[B, N, Dv]`` for 3-D q), contiguous, q's dtype. Rows where no key
        takes part are 0 (and get zero gradients); S = 0 gives zeros.

    Raises:
        TypeError: a non-tensor q, k, v or attn_mask; a dtype the active backend does not
            support (C++ and reference: float32, float64; Triton also float16, bfloat16); k or v
            of another dtype than q; attn_mask neither bool nor q's dtype; is_causal not a bool;
            scale or dropout_p not a number.
        ValueError: q not 3-D or 4-D; k or v of another rank, or with other B (or H) than q;
            D = 0; k's D differing from q's; v's S differing from k's; attn_mask not
            broadcastable to the score shape; k, v or attn_mask on another device than q;
            dropout_p outside [0, 1); a non-finite scale.
    """
    q4, k4, v4, mask, three = _operands4(q, k, v, attn_mask)
    causal, scale, dropout_p = _scalars(is_causal, scale, dropout_p, q.shape[-1])
    # drawn from torch's default generator on every call (also under torch.compile)
    seed = torch.randint(0, 2 ** 62, (), dtype=torch.int64) if dropout_p > 0 else None
    args = (q4, k4, v4, mask, causal, scale, dropout_p, seed)
    if not _eager(q4):
        out = _attention_op(*args)[0]
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q4, k4, v4, mask)):
        out = _AttentionEager.apply(*args)[0]
    else:
        out = _attention_impl(*args)[0]
    return out.squeeze(1) if three else out


# ---- torch.autocast: the public functions cast their arguments first (see ops/_autocast.py) ------
from . import _autocast  # noqa: E402  (kept with the wrapping it serves)

attention = _autocast.lower_precision(attention)
