"""GEMM ops: ``pykernels.ops.linear`` and ``pykernels.ops.matmul``.

    linear(x, weight, bias=None, activation=None) = act(x @ weight.T + bias)
        x [..., K], weight [N, K], bias [N] -> [..., N]; act in None, relu, gelu, tanh, sigmoid,
        fused into the GEMM's epilogue.
    matmul(a, b) = torch.matmul(a, b): [..., M, K] @ [..., K, N] -> [..., M, N], batch dims
        broadcast (1-D operands are promoted like torch.matmul does).

Each is a ``torch.library.custom_op`` (``pykernels::linear``, ``pykernels::matmul``) with a fake
(meta) function and an autograd formula whose backward is itself one custom op
(``pykernels::linear_backward``, ``pykernels::matmul_backward``). The backward calls the same
GEMM kernels with transposed operands expressed as strides — no transposed copy is made:
    dz = dy * act'(.)            (gemm_backward: one pass, also gives the bias gradient)
    dx = dz @ W                  (gemm_forward on W as it is)
    dW = dz^T @ x                (gemm_forward on dz's transposed view)
Device dispatch: CPU tensors -> pykernels._C (C++), CUDA tensors -> pykernels.kernels.gemm
(Triton); ``pykernels.backend`` overrides it (see pykernels/_backend.py).

Not supported (raises): integer or complex dtypes, float16/bfloat16 on the C++ backend, 0-D
operands, double backward. The gradient of a *broadcast* matmul operand is summed over the
broadcast dims by one GEMM with the batch folded into K when the layout allows, else by one
accumulating GEMM call per batch entry (correct, but slow for many small batch entries).

Test: pytest tests/test_gemm.py      Benchmark: python -m pykernels bench gemm
"""
from __future__ import annotations

import itertools
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _C
from .._backend import resolve, triton_kernels
from . import _strided as S
from ._strided import View

_CPP_DTYPES = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---- launchers: the raw kernels on 3-D views -----------------------------------------------
def view(t: Tensor) -> View:
    return View(t, 0, tuple(t.shape), tuple(t.stride()))


class _CppTorch(S.CppLauncher):
    def ptr(self, v: View) -> int:
        return v.base.data_ptr() + v.offset * v.base.element_size()

    def is_fp64(self, v: View) -> bool:
        return v.base.dtype == torch.float64


def _as_tensor(v: Optional[View]) -> Optional[Tensor]:
    if v is None:
        return None
    t = v.base
    return t.as_strided(v.shape, v.strides, t.storage_offset() + v.offset)


class _Triton(S.Launcher):
    def __init__(self):
        self.k = triton_kernels("gemm")

    def gemm3(self, a, b, c, bias, act, preact, accumulate):
        self.k.gemm_forward(_as_tensor(a), _as_tensor(b), _as_tensor(c), bias=_as_tensor(bias),
                            activation=S.ACTIVATION_NAMES[act], preact=_as_tensor(preact),
                            accumulate=accumulate)

    def epilogue_backward(self, dy, saved, act, dz, dbias):
        self.k.gemm_backward(_as_tensor(dy), _as_tensor(saved), S.ACTIVATION_NAMES[act],
                             _as_tensor(dz), dbias=_as_tensor(dbias))


_CPP = _CppTorch()
_TRITON = None


def _launcher(backend: str) -> S.Launcher:
    global _TRITON
    if backend == "cpp":
        return _CPP
    if _TRITON is None:
        _TRITON = _Triton()
    return _TRITON


# ---- front-agnostic compositions (also used by pykernels.numpy) -----------------------------
def linear_forward_views(L, x: View, w: View, bias, act, out: View, preact) -> None:
    """out = act(x @ w^T + bias); x [..., K], w [N, K], out/preact [..., N]."""
    if x.ndim == 1:
        x = View(x.base, x.offset, (1,) + x.shape, (0,) + x.strides)
        out = View(out.base, out.offset, (1,) + out.shape, (0,) + out.strides)
        if preact is not None:
            preact = View(preact.base, preact.offset, (1,) + preact.shape, (0,) + preact.strides)
    xm, om = x.merge_rows(), out.merge_rows()
    pm = preact.merge_rows() if preact is not None else None
    if xm is not None and om is not None and (preact is None or pm is not None):
        S.gemm(L, xm, w.t(), om, bias, act, pm)
    else:  # leading dims of x that cannot be flattened: batched over them, W broadcast
        batch = x.shape[:-2]
        S.gemm(L, x, w.t().expand(batch), out, bias, act, preact)


def linear_backward_views(L, dy: View, x: View, w: View, saved, act, dz: View, dx, dw, db) -> None:
    """dz = dy * act'(saved) (+ db); dx = dz @ w; dw = dz^T @ x. dy/x already 2-D [M, *]."""
    if act != 0 or db is not None:
        L.epilogue_backward(dy, saved if saved is not None else dy, act, dz, db)
    else:
        dz = dy
    if dx is not None:
        S.gemm(L, dz, w, dx)
    if dw is not None:
        S.gemm(L, dz.t(), x, dw)


def matmul_forward_views(L, a: View, b: View, out: View) -> None:
    batch = out.shape[:-2]
    if b.ndim == 2 and a.ndim > 2:  # [..., M, K] @ [K, N]: one GEMM with the batch folded into M
        am, om = a.merge_rows(), out.merge_rows()
        if am is not None and om is not None:
            S.gemm(L, am, b, om)
            return
    S.gemm(L, a.expand(batch), b.expand(batch), out)


def _reduce_into(L, grad: View, lhs, rhs, batch, transpose_lhs: bool, transpose_rhs: bool) -> None:
    """grad[sel] += op(lhs[i]) @ op(rhs[i]) for every full batch index i (grad broadcast)."""
    g = grad.expand(batch)
    for idx in itertools.product(*[range(n) for n in batch]):
        gv, lv, rv = g, lhs, rhs
        for i in idx:
            gv, lv, rv = gv.select0(i), lv.select0(i), rv.select0(i)
        S.gemm(L, lv.t() if transpose_lhs else lv, rv.t() if transpose_rhs else rv, gv,
               accumulate=True)


def matmul_backward_views(L, g: View, a: View, b: View, da, db, zero) -> None:
    """da = g @ b^T and db = a^T @ g, each summed over the dims it was broadcast along.
    a/b/da/db are the (promoted, >= 2-D) operands' views; ``zero(v)`` fills a view with zeros."""
    batch = g.shape[:-2]
    if da is not None:
        if tuple(a.shape[:-2]) == tuple(batch):
            S.gemm(L, g, b.t().expand(batch), da)
        else:
            zero(da)
            _reduce_into(L, da, g, b.expand(batch), batch, False, True)
    if db is not None:
        if tuple(b.shape[:-2]) == tuple(batch):
            S.gemm(L, a.t().expand(batch), g, db)
        else:
            am, gm = a.expand(batch).merge_rows(), g.merge_rows()
            if b.ndim == 2 and am is not None and gm is not None:  # one GEMM, batch folded into K
                S.gemm(L, am.t(), gm, db)
            else:
                zero(db)
                _reduce_into(L, db, a.expand(batch), g, batch, True, False)


# ---- eager fast path ----------------------------------------------------------------------
def _eager(t: Tensor) -> bool:
    """True for a plain tensor in eager mode. There the public functions call the op's
    implementation directly (through a torch.autograd.Function when a gradient is needed) and
    skip the custom op's Python dispatch, ~13 us a call here, which dominates small GEMMs. Under
    torch.compile / export, for tensor subclasses (FakeTensor, ...), under a dispatch mode and in
    opcheck, the registered custom op runs: same kernels, same formulas."""
    return type(t) is Tensor and not _compiling() and _dispatch_depth() == 0


_compiling = torch.compiler.is_compiling               # bound once: _eager runs on every call
_dispatch_depth = torch._C._len_torch_dispatch_stack


# ---- argument checks ----------------------------------------------------------------------
def _check_tensor(name: str, t, allowed) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; "
                        f"this backend supports {names}")


def _allowed(backend: str):
    return _TRITON_DTYPES if backend == "triton" else _CPP_DTYPES


def _check_same(pairs, ref_name: str, ref: Tensor) -> None:
    for name, t in pairs:
        if t is None:
            continue
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; "
                            "pass tensors of one dtype")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def _np64(t: Optional[Tensor]):
    """t as a float64 NumPy array (None stays None): what the reference backend computes on."""
    return None if t is None else t.detach().cpu().double().numpy()


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _ptr(t: Optional[Tensor]) -> int:
    """The data pointer the C++ bindings take (0 = absent)."""
    return 0 if t is None else t.data_ptr()


class TorchBuffers:
    """How the C++ launch helpers of the conv2d, pool2d, attention and rnn ops (their ``*_cpp``
    functions) read torch tensors; pykernels.numpy passes its NumPy twin instead.
        ptr(t)         the data pointer (0 for None = absent)
        strides(t, n)  the strides in elements ((0,) * n for None)
        fp64(t)        True for float64 (the kernels' only other dtype is float32)"""
    ptr = staticmethod(_ptr)

    @staticmethod
    def strides(t: Optional[Tensor], n: int) -> Tuple[int, ...]:
        return (0,) * n if t is None else t.stride()

    @staticmethod
    def fp64(t: Tensor) -> bool:
        return t.dtype == torch.float64


TORCH = TorchBuffers()


def _from_np(arr, like: Tensor) -> Tensor:
    return torch.from_numpy(arr).to(dtype=like.dtype, device=like.device)


# ---- linear -------------------------------------------------------------------------------
def _linear_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: int,
                 save_preact: bool) -> Tuple[Tensor, Tensor]:
    out_shape = tuple(x.shape[:-1]) + (weight.shape[0],)
    backend = resolve(x.device)
    if backend == "reference":
        from ..reference import gemm as ref
        name = S.ACTIVATION_NAMES[activation]
        args = (_np64(x), _np64(weight), None if bias is None else _np64(bias))
        out = _from_np(ref.linear_forward(*args, activation=None if name == "none" else name), x)
        pre = _from_np(ref.linear_forward(*args, activation=None), x) if save_preact else x.new_empty(0)
        return out, pre
    out = x.new_empty(out_shape)
    pre = x.new_empty(out_shape) if save_preact else x.new_empty(0)
    if backend == "cpp" and x.dim() == 2:  # the common case, straight to the kernel
        _linear_cpp2d(x, weight, bias, activation, out, pre if save_preact else None)
        return out, pre
    linear_forward_views(_launcher(backend), view(x), view(weight),
                         None if bias is None else view(bias), activation, view(out),
                         view(pre) if save_preact else None)
    return out, pre


def _linear_cpp2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: int, out: Tensor,
                  pre: Optional[Tensor]) -> Tensor:
    """x [M, K] @ weight^T on the C++ kernel, straight from the tensors' strides."""
    (sxm, sxk), (swn, swk) = x.stride(), weight.stride()
    n = weight.shape[0]
    _C.gemm_forward(x.dtype == torch.float64, 1, x.shape[0], n, x.shape[1],
                    x.data_ptr(), 0, sxm, sxk, weight.data_ptr(), 0, swk, swn,
                    out.data_ptr(), 0, n, 1,
                    0 if bias is None else bias.data_ptr(), 0 if bias is None else bias.stride(0),
                    1, activation, 0 if pre is None else pre.data_ptr(), 0, n, 1, False)
    return out


_linear_op = torch.library.custom_op("pykernels::linear", mutates_args=())(_linear_impl)


@_linear_op.register_fake
def _(x, weight, bias, activation, save_preact):
    out = x.new_empty(tuple(x.shape[:-1]) + (weight.shape[0],))
    return out, (x.new_empty(out.shape) if save_preact else x.new_empty(0))


def _matrix(t: Tensor) -> Tensor:
    """[..., C] -> [R, C] as a view when possible; a copy only when the leading dims cannot be
    walked with one stride (a transposed batch of x, an exotic upstream gradient)."""
    if t.dim() == 1:
        return t.unsqueeze(0)
    v = view(t).merge_rows()
    return t.reshape(-1, t.shape[-1]) if v is None else _as_tensor(v)


def _linear_backward_impl(grad: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                          saved: Tensor, activation: int, need_x: bool, need_w: bool,
                          need_b: bool) -> Tuple[Tensor, Tensor, Tensor]:
    backend = resolve(x.device)
    if backend == "reference":
        from ..reference import gemm as ref
        name = S.ACTIVATION_NAMES[activation]
        dx, dw, db = ref.linear_backward(_np64(grad), _np64(x), _np64(weight),
                                         None if bias is None else _np64(bias),
                                         activation=None if name == "none" else name)
        return (_from_np(dx, x) if need_x else x.new_empty(0),
                _from_np(dw, x) if need_w else x.new_empty(0),
                _from_np(db, x) if need_b and db is not None else x.new_empty(0))
    dx = x.new_empty(x.shape) if need_x else None
    dw = weight.new_empty(weight.shape) if need_w else None
    db = weight.new_empty(weight.shape[0]) if need_b else None
    if backend == "cpp" and x.dim() == 2 and grad.dim() == 2:  # the common case, direct
        _linear_backward_cpp2d(grad, x, weight, saved, activation, dx, dw, db)
        return tuple(x.new_empty(0) if t is None else t for t in (dx, dw, db))
    g2, x2 = _matrix(grad), _matrix(x)
    # dz is dy itself when there is no activation and no bias gradient to fuse
    dz = torch.empty(g2.shape, dtype=g2.dtype, device=g2.device) if activation or need_b else g2
    s2 = _matrix(saved) if saved.numel() else None
    linear_backward_views(_launcher(backend), view(g2), view(x2), view(weight),
                          None if s2 is None else view(s2), activation, view(dz),
                          None if dx is None else view(_matrix(dx)),
                          None if dw is None else view(dw), None if db is None else view(db))
    return tuple(x.new_empty(0) if t is None else t for t in (dx, dw, db))


def _linear_backward_cpp2d(g, x, w, saved, act, dx, dw, db) -> None:
    """linear_backward_views for 2-D operands on the C++ kernels, without the View layer."""
    (m, k), n = x.shape, w.shape[0]
    fp64 = x.dtype == torch.float64
    dz = g
    if act:
        dz = torch.empty((m, n), dtype=g.dtype)
        _C.gemm_backward(fp64, m, n, g.data_ptr(), *g.stride(), saved.data_ptr(), *saved.stride(), act,
                         dz.data_ptr(), n, 1, 0 if db is None else db.data_ptr(), 1)
    elif db is not None:  # bias gradient only: one column-sum pass over dy
        _C.gemm_backward(fp64, m, n, g.data_ptr(), *g.stride(), g.data_ptr(), *g.stride(), 0,
                         0, 0, 0, db.data_ptr(), 1)
    (szm, szn), (swn, swk), (sxm, sxk) = dz.stride(), w.stride(), x.stride()
    if dx is not None:  # dx[m, k] = dz[m, n] @ w[n, k]
        _C.gemm_forward(fp64, 1, m, k, n, dz.data_ptr(), 0, szm, szn, w.data_ptr(), 0, swn, swk,
                        dx.data_ptr(), 0, k, 1, 0, 0, 1, 0, 0, 0, 0, 0, False)
    if dw is not None:  # dw[n, k] = dz^T[n, m] @ x[m, k]
        _C.gemm_forward(fp64, 1, n, k, m, dz.data_ptr(), 0, szn, szm, x.data_ptr(), 0, sxm, sxk,
                        dw.data_ptr(), 0, k, 1, 0, 0, 1, 0, 0, 0, 0, 0, False)


_linear_backward_op = torch.library.custom_op(
    "pykernels::linear_backward", mutates_args=())(_linear_backward_impl)


@_linear_backward_op.register_fake
def _(grad, x, weight, bias, saved, activation, need_x, need_w, need_b):
    # a distinct empty tensor per absent gradient: outputs of a custom op may not alias
    return (x.new_empty(x.shape if need_x else 0), weight.new_empty(weight.shape if need_w else 0),
            weight.new_empty(weight.shape[0] if need_b else 0))


def _linear_setup(ctx, inputs, output):
    x, weight, bias, activation, save_preact = inputs
    out, pre = output
    name = S.ACTIVATION_NAMES[activation]
    saved = pre if name == "gelu" else (out if name != "none" else x.new_empty(0))
    ctx.activation = activation
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, bias, saved)


def _linear_grad_with(backward):
    def grad(ctx, grad_out, grad_pre):
        x, weight, bias, saved = ctx.saved_tensors
        if grad_out is None:  # the output was not used (eager path: grads are not materialised)
            return None, None, None, None, None
        if S.ACTIVATION_NAMES[ctx.activation] == "gelu" and saved.numel() == 0 and x.numel():
            raise RuntimeError("pykernels.ops.linear: the gelu pre-activation was not saved; call "
                               "linear with grad mode enabled to differentiate it")
        nx, nw, nb = ctx.needs_input_grad[:3]
        dx, dw, db = backward(grad_out, x, weight, bias, saved, ctx.activation, nx, nw,
                              nb and ctx.has_bias)
        return (dx if nx else None, dw if nw else None, db if nb and ctx.has_bias else None,
                None, None)
    return grad


_linear_op.register_autograd(_linear_grad_with(_linear_backward_op), setup_context=_linear_setup)


class _LinearEager(torch.autograd.Function):
    """The eager-mode path of pykernels::linear: the same kernels and formulas, minus the
    custom op's dispatch (see _eager). forward(ctx, ...) rather than a separate setup_context:
    with setup_context defined, Function.apply binds arguments through inspect.signature on every
    call (~25 us)."""
    @staticmethod
    def forward(ctx, *inputs):
        output = _linear_impl(*inputs)
        _linear_setup(ctx, inputs, output)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zeros the size of `pre` for its (absent) gradient
        return output

    backward = staticmethod(_linear_grad_with(_linear_backward_impl))


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           activation: Optional[str] = None) -> Tensor:
    """``act(x @ weight.T + bias)`` with the activation fused into the GEMM epilogue.

    Args:
        x: ``[..., K]`` input (any strides).
        weight: ``[N, K]``, like ``torch.nn.Linear.weight``.
        bias: optional ``[N]``.
        activation: None, "relu", "gelu" (exact, erf form), "tanh" or "sigmoid".

    Returns:
        ``[..., N]`` tensor of x's dtype.

    Raises:
        TypeError: a non-tensor, an unsupported dtype or mixed dtypes.
        ValueError: wrong shapes (K mismatch, weight not 2-D, bias not ``[N]``), mixed devices,
            an unknown activation.
    """
    act = S.activation_code(activation)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    backend = resolve(x.device)
    _check_tensor("x", x, _allowed(backend))
    _check_tensor("weight", weight, _allowed(backend))
    if bias is not None:
        _check_tensor("bias", bias, _allowed(backend))
    _check_same([("weight", weight), ("bias", bias)], "x", x)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dim [..., K], got a 0-D tensor")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has K={x.shape[-1]} features (last dim) but weight is "
                         f"{tuple(weight.shape)}: expected weight [N, {x.shape[-1]}]")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape [N] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    save = (act == 2 and torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in (x, weight, bias)))
    if _eager(x):
        if save or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                                 (bias is not None and bias.requires_grad))):
            return _LinearEager.apply(x, weight, bias, act, save)[0]
        if backend == "cpp" and x.dim() == 2:  # inference on a matrix: nothing else to do
            return _linear_cpp2d(x, weight, bias, act, x.new_empty((x.shape[0], weight.shape[0])), None)
        return _linear_impl(x, weight, bias, act, False)[0]
    return _linear_op(x, weight, bias, act, save)[0]


# ---- matmul -------------------------------------------------------------------------------
def _promote(a: Tensor, b: Tensor):
    """torch.matmul's 1-D rules: a [K] -> [1, K], b [K] -> [K, 1]; returns the dims to squeeze."""
    squeeze = []
    if a.dim() == 1:
        a = a.unsqueeze(0)
        squeeze.append(-2)
    if b.dim() == 1:
        b = b.unsqueeze(-1)
        squeeze.append(-1)
    return a, b, squeeze


def _matmul_shape(a: Tensor, b: Tensor):
    if a.dim() == 2 and b.dim() == 2:
        return (a.shape[0], b.shape[1])
    return S.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])


def _matmul_impl(a: Tensor, b: Tensor) -> Tensor:
    backend = resolve(a.device)
    if backend == "reference":
        from ..reference import gemm as ref
        return _from_np(ref.matmul_forward(_np64(a), _np64(b)), a)
    out = a.new_empty(_matmul_shape(a, b))
    if backend == "cpp" and a.dim() == 2 and b.dim() == 2:  # straight to the kernel
        (m, k), n = a.shape, b.shape[1]
        _C.gemm_forward(a.dtype == torch.float64, 1, m, n, k, a.data_ptr(), 0, *a.stride(),
                        b.data_ptr(), 0, *b.stride(), out.data_ptr(), 0, n, 1, 0, 0, 1, 0,
                        0, 0, 0, 0, False)
        return out
    matmul_forward_views(_launcher(backend), view(a), view(b), view(out))
    return out


_matmul_op = torch.library.custom_op("pykernels::matmul", mutates_args=())(_matmul_impl)


@_matmul_op.register_fake
def _(a, b):
    return a.new_empty(_matmul_shape(a, b))


def _zero(v: View) -> None:
    _as_tensor(v).zero_()


def _matmul_backward_impl(grad: Tensor, a: Tensor, b: Tensor, need_a: bool,
                          need_b: bool) -> Tuple[Tensor, Tensor]:
    backend = resolve(a.device)
    if backend == "reference":
        from ..reference import gemm as ref
        da, db = ref.matmul_backward(_np64(grad), _np64(a), _np64(b))
        return (_from_np(da, a) if need_a else a.new_empty(0),
                _from_np(db, a) if need_b else a.new_empty(0))
    da = a.new_empty(a.shape) if need_a else None
    db = b.new_empty(b.shape) if need_b else None
    matmul_backward_views(_launcher(backend), view(grad), view(a), view(b),
                          None if da is None else view(da), None if db is None else view(db), _zero)
    return tuple(a.new_empty(0) if t is None else t for t in (da, db))


_matmul_backward_op = torch.library.custom_op(
    "pykernels::matmul_backward", mutates_args=())(_matmul_backward_impl)


@_matmul_backward_op.register_fake
def _(grad, a, b, need_a, need_b):
    return (a.new_empty(a.shape if need_a else 0), b.new_empty(b.shape if need_b else 0))


def _matmul_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _matmul_grad_with(backward):
    def grad(ctx, grad):
        a, b = ctx.saved_tensors
        na, nb = ctx.needs_input_grad[:2]
        da, db = backward(grad, a, b, na, nb)
        return (da if na else None, db if nb else None)
    return grad


_matmul_op.register_autograd(_matmul_grad_with(_matmul_backward_op), setup_context=_matmul_setup)


class _MatmulEager(torch.autograd.Function):
    """The eager-mode path of pykernels::matmul (see _eager and _LinearEager)."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _matmul_impl(a, b)

    backward = staticmethod(_matmul_grad_with(_matmul_backward_impl))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``torch.matmul(a, b)`` on pykernels' GEMM: ``[..., M, K] @ [..., K, N]``, batch dims
    broadcast; 1-D operands are promoted and the added dim removed, as torch does.

    Raises:
        TypeError: a non-tensor, an unsupported dtype or mixed dtypes.
        ValueError: 0-D operands, mismatched K, batch dims that do not broadcast, mixed devices.
    """
    if not isinstance(a, Tensor):
        raise TypeError(f"a must be a torch.Tensor, got {type(a).__name__}")
    backend = resolve(a.device)
    _check_tensor("a", a, _allowed(backend))
    _check_tensor("b", b, _allowed(backend))
    _check_same([("b", b)], "a", a)
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(f"matmul needs operands with >= 1 dim, got a {tuple(a.shape)} and b {tuple(b.shape)}")
    a2, b2, squeeze = _promote(a, b)
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"a is [..., M, K={a2.shape[-1]}] but b is [..., K={b2.shape[-2]}, N]: "
                         f"a {tuple(a.shape)} and b {tuple(b.shape)} do not multiply")
    try:
        S.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise ValueError(f"batch dims of a {tuple(a.shape)} and b {tuple(b.shape)} do not broadcast") from None
    if not _eager(a2):
        out = _matmul_op(a2, b2)
    elif torch.is_grad_enabled() and (a2.requires_grad or b2.requires_grad):
        out = _MatmulEager.apply(a2, b2)
    else:
        out = _matmul_impl(a2, b2)
    for d in squeeze:
        out = out.squeeze(d)
    return out


# ---- torch.autocast: the public functions cast their arguments first (see ops/_autocast.py) ------
from . import _autocast  # noqa: E402  (kept with the wrapping it serves)

linear = _autocast.lower_precision(linear)
matmul = _autocast.lower_precision(matmul)
