"""pykernels.numpy: the C++ CPU kernels called on NumPy arrays directly (no torch tensors).

Every op of pykernels.ops, forward and backward, with the torch op's argument names and
semantics (torch.nn.functional's where one exists); a backward takes the upstream gradient
first, then the forward's arguments, and returns one gradient per array argument (None for an
optional argument given as None):

    y = linear(x, w, b=None, activation=None, out=None)            # act(x @ w.T + b)
    dx, dw, db = linear_backward(dy, x, w, b=None, activation=None)
    c = matmul(a, b, out=None)                                     # np.matmul, >= 1-D operands
    da, db = matmul_backward(dc, a, b)
    y = conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None, out=None)
    dx, dweight, dbias = conv2d_backward(dy, x, weight, bias=None, <the same arguments>)
    y = conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                         dilation=1, out=None)
    dx, dweight, dbias = conv_transpose2d_backward(dy, x, weight, bias=None, <the same arguments>)
    y[, indices] = max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                              return_indices=False, out=None)
    dx = max_pool2d_backward(dy, indices, input_shape)             # also adaptive_max_pool2d's
    y = avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                   divisor_override=None, out=None)
    dx = avg_pool2d_backward(dy, input_shape, kernel_size, <the same arguments>)
    y = adaptive_avg_pool2d(x, output_size, out=None);  dx = adaptive_avg_pool2d_backward(dy, input_shape)
    y[, indices] = adaptive_max_pool2d(x, output_size, return_indices=False, out=None)
    dx = adaptive_max_pool2d_backward(dy, indices, input_shape)
    out, lse = attention(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0, seed=None,
                         out=None)
    dq, dk, dv, dmask = attention_backward(dout, q, k, v, out, lse, attn_mask=None, <the same arguments>)
    y, (hn, cn) = lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None)
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = lstm_backward(dy, dhn, dcn, x, hx, w_ih, w_hh, <...>)
    y, hn = gru(x, hx, w_ih, w_hh, ...);  dx, dh0, dw_ih, dw_hh, db_ih, db_hh = gru_backward(dy, dhn, x, hx, ...)
    h, c = lstm_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None)
    dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh = lstm_cell_backward(dh, dc, x, hx, w_ih, w_hh, ...)
    h = gru_cell(x, hx, w_ih, w_hh, ...);  dx, dh, dw_ih, dw_hh, db_ih, db_hh = gru_cell_backward(dh, x, hx, ...)

Shapes, formulas and edge cases are those of the torch ops (see pykernels/ops/<op>.py and the
float64 oracle pykernels/reference/<op>.py). What a NumPy call cannot keep between forward and
backward is recomputed or passed in: linear/conv2d backward recompute the activation's input
(one extra forward); max-pool backward takes the forward's indices; attention returns lse for its
backward (which also takes out); lstm/gru backward rerun the forward to fill the kernels'
workspace (one extra forward, allocated here with NumPy).

Arrays: float32 or float64 only; other dtypes (ints, float16, non-native byte order) raise
TypeError naming the argument, and so do mixed dtypes: nothing is silently cast or copied. Any
strides work (non-contiguous, negative, zero, channels_last); the kernels read each operand
through its own shape and strides, so nothing outside an array is read. Outputs are new arrays
(image outputs in x's memory format: channels_last in -> channels_last out) unless ``out=`` is
given (the forwards that return one array, or the array before the indices / lse): an
aligned, writable array of the right shape and dtype, any strides, whose elements do not overlap
each other or the inputs; it is returned.

Raises (every function): TypeError for a non-ndarray, a wrong dtype or mixed dtypes;
ValueError for wrong ranks or shapes (naming the argument and the expected shape), bad
parameters, misaligned arrays or a bad ``out``. Not supported: dropout_p > 0 without a seed
(the backward must regenerate the same keep mask), double backward.

CuPy arrays (a GPU): the same functions take them and return CuPy arrays, running the Triton
kernels through the pykernels torch ops; the arrays are exchanged through DLPack with no copy
(pykernels/_cupy.py says what differs: float16 too, no ``out=``). Mixing NumPy and CuPy arrays
in one call raises TypeError naming the NumPy argument.

Test: pytest tests/test_numpy.py tests/test_cupy.py
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional, Tuple

import numpy as np

from .ops import _strided as S
from .ops._strided import View
from .ops.attention import _scalars as _attention_scalars
from .ops.attention import attention_backward_cpp, attention_forward_cpp
from .ops.conv2d import _conv_args, _conv_geom, _tconv_args, _tconv_geom
from .ops.conv2d import (conv2d_backward_bias_cpp, conv2d_backward_input_cpp, conv2d_backward_weight_cpp,
                         conv2d_forward_cpp)
from .ops.gemm import (linear_backward_views, linear_forward_views, matmul_backward_views,
                       matmul_forward_views)
from .ops.pool2d import _adaptive_size, _check_out_hw, _out_hw, _window
from .ops.pool2d import (adaptive_avg_pool2d_backward_cpp, adaptive_avg_pool2d_forward_cpp,
                         adaptive_max_pool2d_forward_cpp, avg_pool2d_backward_cpp, avg_pool2d_forward_cpp,
                         max_pool2d_backward_cpp, max_pool2d_forward_cpp)
from .ops.rnn import _GATES, _GRU, _LSTM, _ws_numel, rnn_backward_cpp, rnn_forward_cpp

__all__ = [
    "linear", "linear_backward", "matmul", "matmul_backward",
    "conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d",
    "adaptive_max_pool2d_backward",
    "attention", "attention_backward",
    "lstm", "lstm_backward", "gru", "gru_backward",
    "lstm_cell", "lstm_cell_backward", "gru_cell", "gru_cell_backward",
]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---- the CuPy route -----------------------------------------------------------------------------
_HOST_ARGS = ("batch_sizes",)  # host metadata in the torch ops too: NumPy is fine beside CuPy


def _is_cupy(a) -> bool:
    """A CuPy array, told by its type's module (cupy is not imported to ask)."""
    return type(a).__module__.split(".", 1)[0] == "cupy"


def _arrays(named):
    """(name, value) for every array-like argument; the members of a tuple argument (LSTM's hx)
    as name[i]."""
    for name, value in named:
        if isinstance(value, (tuple, list)):
            yield from ((f"{name}[{i}]", v) for i, v in enumerate(value))
        else:
            yield name, value


def _front(fn):
    """Run fn on NumPy arrays, or its pykernels._cupy twin when an argument is a CuPy array.
    Mixed NumPy / CuPy arrays raise TypeError naming the NumPy one."""
    names = tuple(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        named = [(n, a) for n, a in zip(names, args) if n not in _HOST_ARGS]
        named += [(n, a) for n, a in kwargs.items() if n not in _HOST_ARGS]
        cupy_arg = next((n for n, a in _arrays(named) if _is_cupy(a)), None)
        if cupy_arg is None:
            return fn(*args, **kwargs)
        for n, a in _arrays(named):
            if isinstance(a, np.ndarray):
                raise TypeError(f"{n} is a numpy.ndarray but {cupy_arg} is a CuPy array; pass arrays of one "
                                "kind (cupy.asarray / cupy.asnumpy)")
        from . import _cupy
        return getattr(_cupy, fn.__name__)(*args, **kwargs)
    return call


_INDEX_DTYPES = (np.dtype(np.int64), np.dtype(np.int32))


# ---- how the C++ launch helpers read NumPy arrays ---------------------------------------------
class _CppNumpy(S.CppLauncher):
    """The GEMM compositions' launcher (pykernels.ops.gemm's *_views) on NumPy-backed views."""

    def ptr(self, v: View) -> int:
        return v.base.ctypes.data + v.offset * v.base.itemsize

    def is_fp64(self, v: View) -> bool:
        return v.base.dtype == np.float64


_L = _CppNumpy()


class _NumpyBuffers:
    """pykernels.ops.gemm.TorchBuffers' twin: what the ops' *_cpp launch helpers read of an array.
    The data pointer is the address of element [0, ..., 0] whatever the strides' signs."""

    @staticmethod
    def ptr(a: Optional[np.ndarray]) -> int:
        return 0 if a is None else a.ctypes.data

    @staticmethod
    def strides(a: Optional[np.ndarray], n: int) -> Tuple[int, ...]:
        return (0,) * n if a is None else tuple(s // a.itemsize for s in a.strides)

    @staticmethod
    def fp64(a: np.ndarray) -> bool:
        return a.dtype == np.float64


_IO = _NumpyBuffers()


# ---- argument checks ----------------------------------------------------------------------------
def _check(name: str, arr, dtype=None) -> None:
    """arr is a float32/float64 ndarray (of `dtype` when given) the kernels can read."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype not in _DTYPES:
        raise TypeError(f"{name} has dtype {arr.dtype}; pykernels.numpy supports float32 and "
                        "float64 (convert explicitly: no silent upcast copy is made)")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name} has dtype {arr.dtype} but the other operands are {dtype}")
    _check_layout(name, arr)


def _check_layout(name: str, arr: np.ndarray) -> None:
    if any(s % arr.itemsize for s in arr.strides):
        raise ValueError(f"{name} has strides {arr.strides} that are not whole elements")
    if not arr.flags.aligned:
        raise ValueError(f"{name} is not aligned to its dtype {arr.dtype}")


def _check_opt(name: str, arr, dtype) -> None:
    if arr is not None:
        _check(name, arr, dtype)


def _overlaps_itself(a: np.ndarray) -> bool:
    """True when two elements of a may share memory (zero strides, as_strided views)."""
    if a.size <= 1:
        return False
    extent = a.itemsize
    for st, n in sorted((abs(st), n) for n, st in zip(a.shape, a.strides) if n > 1):
        if st < extent:
            return True
        extent += st * (n - 1)
    return False


def _out(name: str, out, shape, dtype, inputs=()) -> np.ndarray:
    """A new array of shape, or out after checking it can take the result."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    _check(name, out, dtype)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    _check_writable(name, out, inputs)
    return out


def _check_writable(name: str, out: np.ndarray, inputs) -> None:
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if _overlaps_itself(out):
        raise ValueError(f"{name} has elements that share memory (strides {out.strides}); the kernels "
                         "write every element")
    for arg, a in inputs:
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(f"{name} may overlap {arg}: pass a separate output buffer")


def _shape(name: str, arr: np.ndarray, shape, form: str) -> None:
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must be {form} = {tuple(shape)}, got shape {tuple(arr.shape)}")


# ---- GEMM: linear, matmul -----------------------------------------------------------------------
def _view(arr: np.ndarray) -> View:
    return View(arr, 0, tuple(arr.shape), tuple(s // arr.itemsize for s in arr.strides))


def _check_linear(x, w, b, activation) -> int:
    act = S.activation_code(activation)
    _check("x", x)
    _check("w", w, x.dtype)
    _check_opt("b", b, x.dtype)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [N, K], got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x must be [..., K={w.shape[1]}] to match w {w.shape}, got {x.shape}")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"b must have shape ({w.shape[0]},), got {b.shape}")
    return act


@_front
def linear(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray] = None,
           activation: Optional[str] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``act(x @ w.T + b)``: x ``[..., K]``, w ``[N, K]``, b ``[N]`` -> ``[..., N]``.

    Raises:
        TypeError: non-arrays, dtypes other than float32/float64, mixed dtypes.
        ValueError: mismatched shapes, an unknown activation, a wrong ``out``.
    """
    act = _check_linear(x, w, b, activation)
    y = _out("out", out, x.shape[:-1] + (w.shape[0],), x.dtype, (("x", x), ("w", w), ("b", b)))
    linear_forward_views(_L, _view(x), _view(w), None if b is None else _view(b), act, _view(y), None)
    return y


@_front
def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray] = None,
                    activation: Optional[str] = None):
    """Gradients ``(dx, dw, db)`` of ``linear`` for the upstream gradient ``dy`` (``db`` is
    None when ``b`` is None)."""
    act = _check_linear(x, w, b, activation)
    _check("dy", dy, x.dtype)
    if dy.shape != x.shape[:-1] + (w.shape[0],):
        raise ValueError(f"dy must have shape {x.shape[:-1] + (w.shape[0],)}, got {dy.shape}")
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
    dy2 = dy.reshape(-1, dy.shape[-1]) if dy.ndim != 2 else dy
    saved = None
    if act:  # what the activation's derivative needs: y, or the pre-activation z for gelu
        y = np.empty(dy2.shape, x.dtype)
        z = np.empty(dy2.shape, x.dtype) if act == 2 else None
        linear_forward_views(_L, _view(x2), _view(w), None if b is None else _view(b), act,
                             _view(y), None if z is None else _view(z))
        saved = _view(z if act == 2 else y)
    dx = np.empty(x.shape, x.dtype)
    dw = np.empty(w.shape, x.dtype)
    db = np.empty(w.shape[0], x.dtype) if b is not None else None
    dz = np.empty(dy2.shape, x.dtype)
    linear_backward_views(_L, _view(dy2), _view(x2), _view(w), saved, act, _view(dz),
                          _view(dx.reshape(x2.shape)), _view(dw), None if db is None else _view(db))
    return dx, dw, db


def _promote(a, b):
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    return a2, b2


def _check_matmul(a, b):
    _check("a", a)
    _check("b", b, a.dtype)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul needs operands with >= 1 dim, got a {a.shape} and b {b.shape}")
    a2, b2 = _promote(a, b)
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"a {a.shape} and b {b.shape} do not multiply: K {a2.shape[-1]} != {b2.shape[-2]}")
    try:
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise ValueError(f"batch dims of a {a.shape} and b {b.shape} do not broadcast") from None
    return a2, b2, tuple(batch) + (a2.shape[-2], b2.shape[-1])


@_front
def matmul(a: np.ndarray, b: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``np.matmul(a, b)`` for float32/float64 arrays with >= 1 dim (batch dims broadcast)."""
    a2, b2, shape = _check_matmul(a, b)
    final = shape
    if a.ndim == 1:
        final = final[:-2] + final[-1:]
    if b.ndim == 1:
        final = final[:-1]
    c = _out("out", out, final, a.dtype, (("a", a), ("b", b)))
    matmul_forward_views(_L, _view(a2), _view(b2), _view(c.reshape(shape)))
    return c


@_front
def matmul_backward(dc: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Gradients ``(da, db)`` of ``matmul`` for the upstream gradient ``dc``."""
    a2, b2, shape = _check_matmul(a, b)
    _check("dc", dc, a.dtype)
    if dc.size != int(np.prod(shape)):
        raise ValueError(f"dc must hold the shape of matmul(a, b), {shape}; got {dc.shape}")
    da = np.empty(a.shape, a.dtype)
    db = np.empty(b.shape, a.dtype)
    matmul_backward_views(_L, _view(dc.reshape(shape)), _view(a2), _view(b2),
                          _view(da.reshape(a2.shape)), _view(db.reshape(b2.shape)),
                          _zero)
    return da, db


def _zero(v: View) -> None:
    # only ever called on a whole, freshly allocated gradient array
    assert v.offset == 0 and v.shape == v.base.shape
    v.base[...] = 0


# ---- images: outputs in x's memory format -------------------------------------------------------
def _channels_last(a: np.ndarray) -> bool:
    """a [N, C, H, W] is stored as a C-ordered [N, H, W, C] (and not also as [N, C, H, W])."""
    return a.shape[1] > 1 and not a.flags.c_contiguous and a.transpose(0, 2, 3, 1).flags.c_contiguous


def _new_image(shape, like: np.ndarray, dtype=None) -> np.ndarray:
    """np.empty of the 4-D shape in like's memory format (channels_last or C order)."""
    dtype = like.dtype if dtype is None else dtype
    if _channels_last(like):
        N, C, H, W = shape
        return np.empty((N, H, W, C), dtype).transpose(0, 3, 1, 2)
    return np.empty(shape, dtype)


def _image_out(out, shape4, like4: np.ndarray, unbatched: bool, inputs):
    """(what to return, its 4-D view): a new image in like4's format, or the checked out."""
    if out is None:
        y4 = _new_image(shape4, like4)
        return (y4[0] if unbatched else y4), y4
    y = _out("out", out, shape4[1:] if unbatched else shape4, like4.dtype, inputs)
    return y, (y[None] if unbatched else y)


def _images(name: str, x, dtype=None, form="[N, C, H, W] or [C, H, W]") -> Tuple[np.ndarray, bool]:
    """x as [N, C, H, W] (a view) and whether it was [C, H, W]."""
    _check(name, x, dtype)
    if x.ndim not in (3, 4):
        raise ValueError(f"{name} must be {form}, got shape {x.shape}")
    return (x, False) if x.ndim == 4 else (x[None], True)


def _int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _input_shape(input_shape, dy4: np.ndarray, unbatched: bool) -> Tuple[int, int, int, int]:
    """input_shape ([N, C, H, W], or [C, H, W] for an unbatched dy) checked against dy's N, C."""
    rank = 3 if unbatched else 4
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != rank or not all(
            _int(v) for v in input_shape):
        raise ValueError(f"input_shape must be {rank} ints ({'[C, H, W]' if unbatched else '[N, C, H, W]'}, "
                         f"like dy's rank), got {input_shape!r}")
    shape = (1,) * (4 - rank) + tuple(int(v) for v in input_shape)
    if min(shape) < 0 or shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"input_shape must be non-negative with H, W >= 1, got {tuple(input_shape)}")
    if shape[:2] != dy4.shape[:2]:
        raise ValueError(f"input_shape {tuple(input_shape)} must have the N, C of dy {dy4.shape[:2]}")
    return shape


def _nonempty_image(name: str, x4: np.ndarray) -> None:
    if x4.shape[2] == 0 or x4.shape[3] == 0:
        raise ValueError(f"{name} has an empty image (H or W is 0): shape {x4.shape}")


# ---- conv2d, conv_transpose2d -------------------------------------------------------------------
def _conv_operands(x, weight, bias, transposed: bool) -> Tuple[np.ndarray, bool]:
    x4, unbatched = _images("x", x)
    _check("weight", weight, x.dtype)
    _check_opt("bias", bias, x.dtype)
    wshape = "[C_in, C_out/groups, R, S]" if transposed else "[K, C/groups, R, S]"
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D {wshape}, got shape {weight.shape}")
    if weight.shape[2] <= 0 or weight.shape[3] <= 0:
        raise ValueError(f"weight must have a non-empty kernel (R, S > 0), got shape {weight.shape}")
    _nonempty_image("x", x4)
    return x4, unbatched


def _conv_setup(x, weight, bias, stride, padding, dilation, groups):
    """(x [N, C, H, W], unbatched, the forward geometry) of conv2d, checked as the torch op does."""
    x4, unbatched = _conv_operands(x, weight, bias, transposed=False)
    groups, s, pads, d = _conv_args(x4, weight, bias, stride, padding, dilation, groups)
    g = _conv_geom(x4, weight, s, pads, d, groups)
    if g.OH <= 0 or g.OW <= 0:
        raise ValueError(f"output size ({g.OH}, {g.OW}) would be empty: x of size ({g.H}, {g.W}) padded by "
                         f"(top, bottom, left, right) {pads} is smaller than weight's kernel {tuple(weight.shape[2:])} "
                         f"with dilation {d}")
    return x4, unbatched, g


def _grad_image(dy, like_dtype, shape4, unbatched: bool, form: str) -> np.ndarray:
    """dy checked to be the forward output's shape; as a 4-D view."""
    _check("dy", dy, like_dtype)
    want = shape4[1:] if unbatched else shape4
    if tuple(dy.shape) != tuple(want):
        raise ValueError(f"dy must be the output's shape {form} = {tuple(want)}, got shape {dy.shape}")
    return dy[None] if unbatched else dy


@_front
def conv2d(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None, stride=1, padding=0,
           dilation=1, groups: int = 1, activation: Optional[str] = None,
           out: Optional[np.ndarray] = None) -> np.ndarray:
    """``act(conv2d(x, weight) + bias)`` (torch.nn.functional.conv2d + a fused activation).

    x ``[N, C, H, W]`` or ``[C, H, W]``, weight ``[K, C/groups, R, S]``, bias ``[K]`` ->
    ``[N, K, OH, OW]`` (``[K, OH, OW]``), ``OH = floor((H + pT + pB - dH*(R - 1) - 1) / sH) + 1``.
    stride, dilation: int or pair; padding: int, pair, "valid" or "same" (stride 1);
    activation: None, "relu", "gelu", "tanh", "sigmoid". See pykernels.ops.conv2d.
    """
    act = S.activation_code(activation)
    x4, unbatched, g = _conv_setup(x, weight, bias, stride, padding, dilation, groups)
    y, y4 = _image_out(out, (g.N, g.K, g.OH, g.OW), x4, unbatched, (("x", x), ("weight", weight), ("bias", bias)))
    if g.N:
        conv2d_forward_cpp(_IO, g, x4, weight, bias, act, y4, None)
    return y


@_front
def conv2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None,
                    stride=1, padding=0, dilation=1, groups: int = 1, activation: Optional[str] = None):
    """Gradients ``(dx, dweight, dbias)`` of ``conv2d`` for the upstream gradient ``dy`` (its
    output's shape); dbias is None when bias is None. With an activation the forward is run
    once more for act' (from the output, or from the pre-activation for gelu)."""
    act = S.activation_code(activation)
    x4, unbatched, g = _conv_setup(x, weight, bias, stride, padding, dilation, groups)
    shape = (g.N, g.K, g.OH, g.OW)
    dy4 = _grad_image(dy, x.dtype, shape, unbatched, "[N, K, OH, OW]")
    dx4 = _new_image(x4.shape, x4)
    dw = np.empty(weight.shape, x.dtype)
    db = None if bias is None else np.empty(g.K, x.dtype)
    if g.N == 0:  # nothing to sum: zero weight and bias gradients
        dw[...] = 0
        if db is not None:
            db[...] = 0
    else:
        dz = dy4
        if act:  # dz = dy * act'(saved), and the bias gradient in the same pass
            saved = _new_image(shape, x4)  # y, or the pre-activation z (act 0) for gelu
            conv2d_forward_cpp(_IO, g, x4, weight, bias, 0 if act == S.ACTIVATIONS["gelu"] else act, saved, None)
            dz = _new_image(shape, x4)
            conv2d_backward_bias_cpp(_IO, dy4, saved, act, dz, db)
        elif db is not None:
            conv2d_backward_bias_cpp(_IO, dy4, dy4, 0, None, db)
        conv2d_backward_input_cpp(_IO, g, dz, weight, dx4, None)
        conv2d_backward_weight_cpp(_IO, g, dz, x4, dw)
    return (dx4[0] if unbatched else dx4), dw, db


def _conv_transpose_setup(x, weight, bias, stride, padding, output_padding, groups, dilation):
    """(x [N, C_in, H, W], unbatched, the geometry of the conv whose input gradient this is)."""
    x4, unbatched = _conv_operands(x, weight, bias, transposed=True)
    groups, s, p, op, d = _tconv_args(x4, weight, bias, stride, padding, output_padding, groups, dilation)
    R, S_ = weight.shape[2], weight.shape[3]
    g = _tconv_geom(x4, weight, s, p, op, groups, d)
    if g.H <= 0 or g.W <= 0:
        raise ValueError(f"output size ({g.H}, {g.W}) would be empty: padding {p} crops away the whole "
                         f"output of x of size {x4.shape[2:]} and weight's kernel {(R, S_)}")
    return x4, unbatched, g


@_front
def conv_transpose2d(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1,
                     out: Optional[np.ndarray] = None) -> np.ndarray:
    """torch.nn.functional.conv_transpose2d: conv2d's input gradient of x, + bias.

    x ``[N, C_in, H, W]`` or ``[C_in, H, W]``, weight ``[C_in, C_out/groups, R, S]``, bias
    ``[C_out]`` -> ``[N, C_out, OH, OW]``, ``OH = (H - 1)*sH - 2*pH + dH*(R - 1) + opH + 1``.
    """
    x4, unbatched, g = _conv_transpose_setup(x, weight, bias, stride, padding, output_padding, groups, dilation)
    y, y4 = _image_out(out, (g.N, g.C, g.H, g.W), x4, unbatched, (("x", x), ("weight", weight), ("bias", bias)))
    if g.N:
        conv2d_backward_input_cpp(_IO, g, x4, weight, y4, bias)
    return y


@_front
def conv_transpose2d_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray,
                              bias: Optional[np.ndarray] = None, stride=1, padding=0, output_padding=0,
                              groups: int = 1, dilation=1):
    """Gradients ``(dx, dweight, dbias)`` of ``conv_transpose2d`` (dbias None when bias is None):
    dx = conv2d(dy, weight), dweight = the weight gradient of that conv with x as its output
    gradient, dbias = dy summed over n, oh, ow."""
    x4, unbatched, g = _conv_transpose_setup(x, weight, bias, stride, padding, output_padding, groups, dilation)
    dy4 = _grad_image(dy, x.dtype, (g.N, g.C, g.H, g.W), unbatched, "[N, C_out, OH, OW]")
    dx4 = _new_image(x4.shape, x4)
    dw = np.empty(weight.shape, x.dtype)
    db = None if bias is None else np.empty(g.C, x.dtype)
    if g.N == 0:
        dw[...] = 0
        if db is not None:
            db[...] = 0
    else:
        if db is not None:
            conv2d_backward_bias_cpp(_IO, dy4, dy4, 0, None, db)
        conv2d_forward_cpp(_IO, g, dy4, weight, None, 0, dx4, None)
        conv2d_backward_weight_cpp(_IO, g, x4, dy4, dw)
    return (dx4[0] if unbatched else dx4), dw, db


# ---- pooling ------------------------------------------------------------------------------------
def _pool_input(x) -> Tuple[np.ndarray, bool]:
    x4, unbatched = _images("x", x)
    _nonempty_image("x", x4)
    return x4, unbatched


def _indices_out(shape4, like4, unbatched):
    idx4 = _new_image(shape4, like4, np.int64)
    return (idx4[0] if unbatched else idx4), idx4


@_front
def max_pool2d(x: np.ndarray, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False, out: Optional[np.ndarray] = None):
    """torch.nn.functional.max_pool2d: ``out`` ``[N, C, OH, OW]`` (x ``[N, C, H, W]`` or
    ``[C, H, W]``), or ``(out, indices)``: int64, the flat position h*W + w of each maximum in its
    input plane (what max_pool2d_backward takes). NaN wins a window; ties keep the first."""
    x4, unbatched = _pool_input(x)
    k, s, p, d = _window(kernel_size, stride, padding, dilation)
    N, C, H, W = x4.shape
    OH, OW = _out_hw(H, W, k, s, p, d, ceil_mode)
    _check_out_hw(H, W, OH, OW, k, s, p, d)
    y, y4 = _image_out(out, (N, C, OH, OW), x4, unbatched, (("x", x),))
    idx, idx4 = _indices_out((N, C, OH, OW), x4, unbatched) if return_indices else (None, None)
    if y4.size:
        max_pool2d_forward_cpp(_IO, x4, y4, idx4, False, k, s, p, d)
    return (y, idx) if return_indices else y


@_front
def max_pool2d_backward(dy: np.ndarray, indices: np.ndarray, input_shape) -> np.ndarray:
    """dx ``input_shape`` of max_pool2d and adaptive_max_pool2d: zeros, plus each dy added at
    its indices (the forward's, int64 or int32, each in [0, H*W))."""
    dy4, unbatched = _images("dy", dy, form="[N, C, OH, OW] or [C, OH, OW]")
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype not in _INDEX_DTYPES:
        raise TypeError(f"indices has dtype {indices.dtype}; it must be int64 (or int32), as the forward "
                        "returns them")
    _check_layout("indices", indices)
    _shape("indices", indices, dy.shape, "dy's shape")
    N, C, H, W = _input_shape(input_shape, dy4, unbatched)
    if indices.size and (indices.min() < 0 or indices.max() >= H * W):
        raise ValueError(f"indices must lie in [0, H*W = {H * W}) (flat positions in the input plane), got "
                         f"values in [{indices.min()}, {indices.max()}]")
    dx4 = _new_image((N, C, H, W), dy4)
    if dy4.size == 0:
        dx4[...] = 0
    else:
        max_pool2d_backward_cpp(_IO, dx4, dy4, indices[None] if unbatched else indices,
                                indices.dtype == np.int32)
    return dx4[0] if unbatched else dx4


def _avg_window(kernel_size, stride, padding, divisor_override):
    k, s, p, _ = _window(kernel_size, stride, padding, 1)
    if divisor_override is not None and (not _int(divisor_override) or divisor_override == 0):
        raise ValueError(f"divisor_override must be a non-zero int or None, got {divisor_override!r}")
    return k, s, p, 0 if divisor_override is None else int(divisor_override)


@_front
def avg_pool2d(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None,
               out: Optional[np.ndarray] = None) -> np.ndarray:
    """torch.nn.functional.avg_pool2d: the mean of every window, ``[N, C, OH, OW]``."""
    x4, unbatched = _pool_input(x)
    k, s, p, div = _avg_window(kernel_size, stride, padding, divisor_override)
    N, C, H, W = x4.shape
    OH, OW = _out_hw(H, W, k, s, p, (1, 1), ceil_mode)
    _check_out_hw(H, W, OH, OW, k, s, p, (1, 1))
    y, y4 = _image_out(out, (N, C, OH, OW), x4, unbatched, (("x", x),))
    if y4.size:
        avg_pool2d_forward_cpp(_IO, x4, y4, k, s, p, bool(count_include_pad), div)
    return y


@_front
def avg_pool2d_backward(dy: np.ndarray, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode: bool = False, count_include_pad: bool = True,
                        divisor_override: Optional[int] = None) -> np.ndarray:
    """dx ``input_shape`` of avg_pool2d: each dy spread over its window / the divisor."""
    dy4, unbatched = _images("dy", dy, form="[N, C, OH, OW] or [C, OH, OW]")
    k, s, p, div = _avg_window(kernel_size, stride, padding, divisor_override)
    N, C, H, W = _input_shape(input_shape, dy4, unbatched)
    OH, OW = _out_hw(H, W, k, s, p, (1, 1), ceil_mode)
    _check_out_hw(H, W, OH, OW, k, s, p, (1, 1))
    _shape("dy", dy4, (N, C, OH, OW), "avg_pool2d's output shape [N, C, OH, OW]")
    dx4 = _new_image((N, C, H, W), dy4)
    if dy4.size == 0:
        dx4[...] = 0
    else:
        avg_pool2d_backward_cpp(_IO, dx4, dy4, k, s, p, bool(count_include_pad), div)
    return dx4[0] if unbatched else dx4


@_front
def adaptive_avg_pool2d(x: np.ndarray, output_size, out: Optional[np.ndarray] = None) -> np.ndarray:
    """torch.nn.functional.adaptive_avg_pool2d: window i = rows [floor(i*H/OH), ceil((i+1)*H/OH))."""
    x4, unbatched = _pool_input(x)
    N, C, H, W = x4.shape
    OH, OW = _adaptive_size(output_size, H, W)
    y, y4 = _image_out(out, (N, C, OH, OW), x4, unbatched, (("x", x),))
    if y4.size:
        adaptive_avg_pool2d_forward_cpp(_IO, x4, y4)
    return y


@_front
def adaptive_avg_pool2d_backward(dy: np.ndarray, input_shape) -> np.ndarray:
    """dx ``input_shape`` of adaptive_avg_pool2d (dy ``[N, C, OH, OW]``: OH, OW from its shape)."""
    dy4, unbatched = _images("dy", dy, form="[N, C, OH, OW] or [C, OH, OW]")
    N, C, H, W = _input_shape(input_shape, dy4, unbatched)
    if dy4.shape[2] == 0 or dy4.shape[3] == 0:
        raise ValueError(f"dy must have OH, OW >= 1, got shape {dy.shape}")
    dx4 = _new_image((N, C, H, W), dy4)
    if dy4.size == 0:
        dx4[...] = 0
    else:
        adaptive_avg_pool2d_backward_cpp(_IO, dx4, dy4)
    return dx4[0] if unbatched else dx4


@_front
def adaptive_max_pool2d(x: np.ndarray, output_size, return_indices: bool = False,
                        out: Optional[np.ndarray] = None):
    """torch.nn.functional.adaptive_max_pool2d: max_pool2d's rule over adaptive_avg_pool2d's windows."""
    x4, unbatched = _pool_input(x)
    N, C, H, W = x4.shape
    OH, OW = _adaptive_size(output_size, H, W)
    y, y4 = _image_out(out, (N, C, OH, OW), x4, unbatched, (("x", x),))
    idx, idx4 = _indices_out((N, C, OH, OW), x4, unbatched) if return_indices else (None, None)
    if y4.size:
        adaptive_max_pool2d_forward_cpp(_IO, x4, y4, idx4, False)
    return (y, idx) if return_indices else y


@_front
def adaptive_max_pool2d_backward(dy: np.ndarray, indices: np.ndarray, input_shape) -> np.ndarray:
    """dx ``input_shape`` of adaptive_max_pool2d: max_pool2d_backward (the same scatter)."""
    return max_pool2d_backward(dy, indices, input_shape)


# ---- attention ----------------------------------------------------------------------------------
def _attention_operands(q, k, v, attn_mask):
    """q, k, v as 4-D views, the mask as a [B, H, N, S] view (or None), whether q was 3-D."""
    _check("q", q)
    _check("k", k, q.dtype)
    _check("v", v, q.dtype)
    if attn_mask is not None:
        if not isinstance(attn_mask, np.ndarray):
            raise TypeError(f"attn_mask must be None or a numpy.ndarray, got {type(attn_mask).__name__}")
        if attn_mask.dtype not in (np.dtype(np.bool_), q.dtype):
            raise TypeError(f"attn_mask has dtype {attn_mask.dtype}; it must be bool (True = takes part) or "
                            f"q's dtype {q.dtype} (added to the scores)")
        _check_layout("attn_mask", attn_mask)
    if q.ndim not in (3, 4):
        raise ValueError(f"q must be [B, H, N, D] or [B, N, D], got shape {q.shape}")
    three = q.ndim == 3
    form, vform = ("[B, S, D]", "[B, S, Dv]") if three else ("[B, H, S, D]", "[B, H, S, Dv]")
    lead = q.ndim - 2
    for name, t, f in (("k", k, form), ("v", v, vform)):
        if t.ndim != q.ndim:
            raise ValueError(f"{name} must be {q.ndim}-D {f} like q {q.shape}, got shape {t.shape}")
        if t.shape[:lead] != q.shape[:lead]:
            raise ValueError(f"{name} must have the same {'B' if three else 'B, H'} as q {q.shape} "
                             f"(no broadcasting), got shape {t.shape}")
    if q.shape[-1] == 0:
        raise ValueError(f"q has D = 0 (shape {q.shape}): the head dim must be at least 1")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k must have D = {q.shape[-1]} (q's last dim), got shape {k.shape}")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v must have S = {k.shape[-2]} (k's dim -2), got shape {v.shape}")
    q4, k4, v4 = (q[:, None], k[:, None], v[:, None]) if three else (q, k, v)
    B, H, N, _ = q4.shape
    S_ = k4.shape[2]
    mask = None
    if attn_mask is not None:
        target = (B, N, S_) if three else (B, H, N, S_)
        shape = attn_mask.shape
        if len(shape) > len(target) or not all(m in (1, t) for m, t in zip(reversed(shape), reversed(target))):
            raise ValueError(f"attn_mask of shape {shape} does not broadcast to the score shape "
                             f"{'[B, N, S]' if three else '[B, H, N, S]'} = {target}")
        mask = np.broadcast_to(attn_mask, target)  # stride 0 on broadcast dims: never copied
        if three:
            mask = mask[:, None]
    return q4, k4, v4, mask, three


def _seed(dropout_p: float, seed) -> int:
    if dropout_p == 0:
        return 0
    if seed is None:
        raise ValueError(f"dropout_p = {dropout_p} needs seed= (an int): the keep mask is drawn from it "
                         "(pykernels.reference.attention.dropout_keep) and the backward must be given the "
                         "same seed")
    if not _int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2 ** 64:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
    return int(seed)


@_front
def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, attn_mask: Optional[np.ndarray] = None,
              is_causal: bool = False, scale: Optional[float] = None, dropout_p: float = 0.0,
              seed: Optional[int] = None, out: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(out, lse)``: torch.nn.functional.scaled_dot_product_attention's output
    ``softmax(scale * q @ k^T + mask) @ v`` and the row log-sum-exp of the scores that
    attention_backward takes.

    q ``[B, H, N, D]``, k ``[B, H, S, D]``, v ``[B, H, S, Dv]`` (or all 3-D ``[B, *, *]``) ->
    out ``[B, H, N, Dv]``, lse ``[B, H, N]`` (q's dtype; -inf for a row where no key takes part,
    whose out is 0). attn_mask: bool (True = takes part) or additive of q's dtype, broadcastable
    to ``[B, H, N, S]``. is_causal: key j <= query i (top-left aligned), combined with the mask.
    scale: None = 1/sqrt(D). dropout_p > 0 needs ``seed`` (int in [0, 2**64)): the keep mask is
    pykernels.reference.attention.dropout_keep(B, H, N, S, seed, dropout_p).
    """
    q4, k4, v4, mask, three = _attention_operands(q, k, v, attn_mask)
    causal, scale, dropout_p = _attention_scalars(is_causal, scale, dropout_p, q.shape[-1])
    seed = _seed(dropout_p, seed)
    B, H, N, _ = q4.shape
    S_, Dv = v4.shape[2], v4.shape[3]
    shape = (B, N, Dv) if three else (B, H, N, Dv)
    o = _out("out", out, shape, q.dtype, (("q", q), ("k", k), ("v", v), ("attn_mask", attn_mask)))
    o4 = o[:, None] if three else o
    lse = np.empty((B, H, N), q.dtype)
    if B * H * N == 0:
        pass
    elif S_ == 0:  # no key at all: every row is fully masked
        o4[...] = 0
        lse[...] = -np.inf
    elif Dv == 0:  # out is empty; lse from the same kernel on a zero v of width 1 (stride 0)
        zero_v = np.broadcast_to(np.zeros((), q.dtype), (B, H, S_, 1))
        attention_forward_cpp(_IO, q4, k4, zero_v, mask, _is_bool(mask), causal, scale, dropout_p, seed,
                              np.empty((B, H, N, 1), q.dtype), lse)
    else:
        attention_forward_cpp(_IO, q4, k4, v4, mask, _is_bool(mask), causal, scale, dropout_p, seed, o4, lse)
    return o, (lse[:, 0] if three else lse)


def _is_bool(mask: Optional[np.ndarray]) -> bool:
    return mask is not None and mask.dtype == np.bool_


def _sum_to(g: np.ndarray, shape) -> np.ndarray:
    """g summed over the dims a mask of `shape` was broadcast along (its gradient)."""
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=dims, keepdims=True) if dims else g


@_front
def attention_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray,
                       lse: np.ndarray, attn_mask: Optional[np.ndarray] = None, is_causal: bool = False,
                       scale: Optional[float] = None, dropout_p: float = 0.0, seed: Optional[int] = None):
    """``(dq, dk, dv, dmask)`` of ``attention`` for the upstream gradient ``dout``; out and lse
    are what the forward returned for the same arguments (seed included). dmask is the gradient
    of an additive attn_mask, in the mask's own shape (summed over its broadcast dims); None for
    no mask or a bool one."""
    q4, k4, v4, mask, three = _attention_operands(q, k, v, attn_mask)
    causal, scale, dropout_p = _attention_scalars(is_causal, scale, dropout_p, q.shape[-1])
    seed = _seed(dropout_p, seed)
    B, H, N, _ = q4.shape
    S_, Dv = v4.shape[2], v4.shape[3]
    oshape = (B, N, Dv) if three else (B, H, N, Dv)
    oform = "[B, N, Dv]" if three else "[B, H, N, Dv]"
    for name, t in (("dout", dout), ("out", out)):
        _check(name, t, q.dtype)
        _shape(name, t, oshape, oform)
    _check("lse", lse, q.dtype)
    _shape("lse", lse, oshape[:-1], "[B, N]" if three else "[B, H, N]")
    dout4, out4, lse3 = (dout[:, None], out[:, None], lse[:, None]) if three else (dout, out, lse)
    need_dmask = mask is not None and not _is_bool(mask)
    dq, dk, dv = np.empty(q.shape, q.dtype), np.empty(k.shape, q.dtype), np.empty(v.shape, q.dtype)
    dq4, dk4, dv4 = (dq[:, None], dk[:, None], dv[:, None]) if three else (dq, dk, dv)
    dmask4 = np.empty((B, H, N, S_), q.dtype) if need_dmask else None
    if B * H * N * S_ * Dv == 0:  # no score, or no output to differentiate: all-zero gradients
        for t in (dq, dk, dv, dmask4):
            if t is not None:
                t[...] = 0
    else:
        attention_backward_cpp(_IO, dout4, q4, k4, v4, out4, lse3, mask, _is_bool(mask), causal, scale,
                               dropout_p, seed, dq4, dk4, dv4, dmask4)
    dmask = None
    if need_dmask:
        dmask = _sum_to(dmask4[:, 0] if three else dmask4, attn_mask.shape)
    return dq, dk, dv, dmask


# ---- LSTM, GRU ----------------------------------------------------------------------------------
def _state_names(kind: int):
    return ("hx[0]", "hx[1]") if kind == _LSTM else ("hx", None)


def _hx(kind: int, hx):
    """(h0, c0) from hx: None, h (GRU) or a pair (h, c) (LSTM; either may be None)."""
    if hx is None:
        return None, None
    if kind == _GRU:
        return hx, None
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError(f"hx must be None or a pair (h, c) of arrays, got {type(hx).__name__}")
    return hx[0], hx[1]


def _check_rnn(kind: int, x, h0, c0, w_ih, w_hh, b_ih, b_hh) -> None:
    """x [T, B, I] (already 3-D), the states [B, H] and the weights, as the torch op checks them."""
    G = _GATES[kind]
    gates = f"{G}*H"
    hname, cname = _state_names(kind)
    _check("x", x)
    for name, t in (("w_ih", w_ih), ("w_hh", w_hh)):
        _check(name, t, x.dtype)
    for name, t in ((hname, h0), (cname, c0), ("b_ih", b_ih), ("b_hh", b_hh)):
        _check_opt(name, t, x.dtype)
    T, B, I = x.shape
    for name, t in (("w_ih", w_ih), ("w_hh", w_hh)):
        if t.ndim != 2:
            raise ValueError(f"{name} must be 2-D [{gates}, {'I' if name == 'w_ih' else 'H'}], got shape {t.shape}")
    if w_hh.shape[0] != G * w_hh.shape[1]:
        raise ValueError(f"w_hh must be [{gates}, H] ({G} gates of H rows), got shape {w_hh.shape}")
    H = w_hh.shape[1]
    if H == 0:
        raise ValueError(f"w_hh has H = 0 (shape {w_hh.shape}): the hidden size must be at least 1")
    _shape("w_ih", w_ih, (G * H, I), f"[{gates}, I] (H from w_hh, I: x's last dim)")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            _shape(name, b, (G * H,), f"[{gates}]")
    for name, s in ((hname, h0), (cname, c0)):
        if s is not None:
            _shape(name, s, (B, H), "[B, H] (B: x's batch size, H: w_hh's second dim)")


def _check_batch_sizes(batch_sizes, T: int, B: int) -> Optional[np.ndarray]:
    if batch_sizes is None:
        return None
    if not isinstance(batch_sizes, np.ndarray):
        raise TypeError(f"batch_sizes must be None or an int64 numpy.ndarray [T], got {type(batch_sizes).__name__}")
    if batch_sizes.dtype != np.int64:
        raise TypeError(f"batch_sizes must be int64 (a PackedSequence's), got {batch_sizes.dtype}")
    _shape("batch_sizes", batch_sizes, (T,), "[T] (T: x's first dim)")
    if T and (batch_sizes.min() < 0 or batch_sizes.max() > B):
        raise ValueError(f"batch_sizes must lie in [0, B = {B}], got {batch_sizes.tolist()}")
    if np.any(np.diff(batch_sizes) > 0):
        raise ValueError(f"batch_sizes must be non-increasing (sorted lengths), got {batch_sizes.tolist()}")
    return np.ascontiguousarray(batch_sizes)  # the kernels read it as a plain int64 [T]


def _check_reverse(reverse) -> bool:
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse must be a bool, got {type(reverse).__name__}")
    return reverse


def _sequence_args(kind: int, x, hx, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes):
    _check("x", x)
    if x.ndim != 3:
        raise ValueError(f"x must be [T, B, I] (3-D), got shape {x.shape}")
    h0, c0 = _hx(kind, hx)
    _check_rnn(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    reverse = _check_reverse(reverse)
    bs = _check_batch_sizes(batch_sizes, x.shape[0], x.shape[1])
    return h0, c0, reverse, bs


def _forward(kind: int, x, h0, c0, w_ih, w_hh, b_ih, b_hh, bs, reverse, ws=None):
    """(y [T, B, H], hn [B, H], cn [B, H] or None for GRU); ws filled when given."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    y = np.empty((T, B, H), x.dtype)
    hn = np.empty((B, H), x.dtype)
    cn = np.empty((B, H), x.dtype) if kind == _LSTM else None
    if T == 0 or B == 0:  # no step: the state passes through
        for s, s0 in ((hn, h0), (cn, c0)):
            if s is not None:
                s[...] = 0 if s0 is None else s0
    else:
        rnn_forward_cpp(_IO, kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, bs, reverse, y, hn, cn, ws)
    return y, hn, cn


def _upstream(name: str, d, shape, dtype, form: str):
    if d is not None:
        _check(name, d, dtype)
        _shape(name, d, shape, form)
    return d


def _backward(kind: int, dy, dhn, dcn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, bs, reverse):
    """[dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh]: None for an argument given as None (and dc0
    for GRU); dy, dhn, dcn None = no gradient from there."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    dt = x.dtype
    dy = _upstream("dy", dy, (T, B, H), dt, "[T, B, H]")
    dhn = _upstream("dhn", dhn, (B, H), dt, "[B, H]")
    dcn = _upstream("dcn", dcn, (B, H), dt, "[B, H]")
    grads = [np.empty(x.shape, dt), None if h0 is None else np.empty((B, H), dt),
             None if c0 is None or kind == _GRU else np.empty((B, H), dt),
             np.empty(w_ih.shape, dt), np.empty(w_hh.shape, dt),
             None if b_ih is None else np.empty(b_ih.shape, dt), None if b_hh is None else np.empty(b_hh.shape, dt)]
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = grads
    no_step = T == 0 or B == 0
    if no_step or (dy is None and dhn is None and dcn is None):  # nothing to backpropagate: zeros,
        for g in grads:                                          # but with no step at all the
            if g is not None:                                    # state's gradient passes through
                g[...] = 0
        for g, d in ((dh0, dhn), (dc0, dcn)):
            if no_step and g is not None and d is not None:
                g[...] = d
        return grads
    # the forward once more, for the gates the backward reads (rows a batch_sizes step skips
    # stay unwritten: zeros, as the torch op allocates them)
    numel = _ws_numel("cpp", kind, T, B, H)
    ws = np.zeros(numel, dt) if bs is not None else np.empty(numel, dt)
    _forward(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, bs, reverse, ws)
    rnn_backward_cpp(_IO, kind, x, h0, c0, w_ih, w_hh, b_hh, bs, ws, reverse, dy, dhn, dcn,
                     dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)
    return grads


@_front
def lstm(x: np.ndarray, hx, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: Optional[np.ndarray] = None,
         b_hh: Optional[np.ndarray] = None, reverse: bool = False, batch_sizes: Optional[np.ndarray] = None):
    """``(y, (hn, cn))``: one LSTM layer in one direction over the sequence (pykernels.ops.lstm).

    x ``[T, B, I]``; hx None or ``(h0, c0)``, each ``[B, H]`` or None (zeros); w_ih ``[4*H, I]``,
    w_hh ``[4*H, H]`` (gates i, f, g, o), b_ih / b_hh ``[4*H]`` or None; reverse walks
    t = T-1 .. 0; batch_sizes None or int64 ``[T]``, non-increasing in [0, B]: at step t only rows
    b < batch_sizes[t] are updated (the others keep their state and get y = 0).
    """
    h0, c0, reverse, bs = _sequence_args(_LSTM, x, hx, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes)
    y, hn, cn = _forward(_LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, bs, reverse)
    return y, (hn, cn)


@_front
def lstm_backward(dy: Optional[np.ndarray], dhn: Optional[np.ndarray], dcn: Optional[np.ndarray],
                  x: np.ndarray, hx, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: Optional[np.ndarray] = None,
                  b_hh: Optional[np.ndarray] = None, reverse: bool = False,
                  batch_sizes: Optional[np.ndarray] = None):
    """``(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)`` of ``lstm`` for the upstream gradients dy
    ``[T, B, H]``, dhn, dcn ``[B, H]`` (each None = zero); dh0 / dc0 / db_ih / db_hh are None when
    that argument is None. Runs the forward once more to fill the kernels' workspace."""
    h0, c0, reverse, bs = _sequence_args(_LSTM, x, hx, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes)
    return tuple(_backward(_LSTM, dy, dhn, dcn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, bs, reverse))


@_front
def gru(x: np.ndarray, hx: Optional[np.ndarray], w_ih: np.ndarray, w_hh: np.ndarray,
        b_ih: Optional[np.ndarray] = None, b_hh: Optional[np.ndarray] = None, reverse: bool = False,
        batch_sizes: Optional[np.ndarray] = None):
    """``(y, hn)``: one GRU layer in one direction (pykernels.ops.gru): as ``lstm`` with hx = h0
    ``[B, H]`` or None, 3*H rows in gate order r, z, n and no cell state."""
    h0, _, reverse, bs = _sequence_args(_GRU, x, hx, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes)
    y, hn, _ = _forward(_GRU, x, h0, None, w_ih, w_hh, b_ih, b_hh, bs, reverse)
    return y, hn


@_front
def gru_backward(dy: Optional[np.ndarray], dhn: Optional[np.ndarray], x: np.ndarray, hx: Optional[np.ndarray],
                 w_ih: np.ndarray, w_hh: np.ndarray, b_ih: Optional[np.ndarray] = None,
                 b_hh: Optional[np.ndarray] = None, reverse: bool = False,
                 batch_sizes: Optional[np.ndarray] = None):
    """``(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)`` of ``gru`` (see ``lstm_backward``)."""
    h0, _, reverse, bs = _sequence_args(_GRU, x, hx, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes)
    g = _backward(_GRU, dy, dhn, None, x, h0, None, w_ih, w_hh, b_ih, b_hh, bs, reverse)
    return tuple(g[:2] + g[3:])


def _cell_args(kind: int, x, hx, w_ih, w_hh, b_ih, b_hh):
    """x as [1, B, I] and the states as [B, H] (views); unbatched x [I] with states [H] -> B = 1."""
    _check("x", x)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be [B, I] or [I], got shape {x.shape}")
    h0, c0 = _hx(kind, hx)
    unbatched = x.ndim == 1
    if unbatched:  # a state of the wrong rank is left to _check_rnn's shape message
        h0 = h0[None] if isinstance(h0, np.ndarray) and h0.ndim == 1 else h0
        c0 = c0[None] if isinstance(c0, np.ndarray) and c0.ndim == 1 else c0
    x3 = x[None, None] if unbatched else x[None]
    _check_rnn(kind, x3, h0, c0, w_ih, w_hh, b_ih, b_hh)
    return x3, h0, c0, unbatched


def _cell_grad(name: str, d, x3, H: int, unbatched: bool):
    """An upstream gradient of the cell's new state ([B, H], or [H] unbatched) as [B, H]."""
    if d is None:
        return None
    _check(name, d, x3.dtype)
    B = x3.shape[1]
    _shape(name, d, (H,) if unbatched else (B, H), "[H]" if unbatched else "[B, H]")
    return d[None] if unbatched else d


@_front
def lstm_cell(x: np.ndarray, hx, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: Optional[np.ndarray] = None,
              b_hh: Optional[np.ndarray] = None):
    """``(h', c')``: one LSTM step (torch.nn.LSTMCell): x ``[B, I]`` (or ``[I]``, then the states
    are ``[H]``), hx None or ``(h, c)``, each ``[B, H]`` or None."""
    x3, h0, c0, unbatched = _cell_args(_LSTM, x, hx, w_ih, w_hh, b_ih, b_hh)
    _, hn, cn = _forward(_LSTM, x3, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)
    return (hn[0], cn[0]) if unbatched else (hn, cn)


@_front
def lstm_cell_backward(dh: Optional[np.ndarray], dc: Optional[np.ndarray], x: np.ndarray, hx,
                       w_ih: np.ndarray, w_hh: np.ndarray, b_ih: Optional[np.ndarray] = None,
                       b_hh: Optional[np.ndarray] = None):
    """``(dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh)`` of ``lstm_cell`` for the upstream gradients
    dh, dc of h', c' (None = zero); dh / dc / db_* are None for arguments given as None."""
    x3, h0, c0, unbatched = _cell_args(_LSTM, x, hx, w_ih, w_hh, b_ih, b_hh)
    H = w_hh.shape[1]
    g = _backward(_LSTM, None, _cell_grad("dh", dh, x3, H, unbatched), _cell_grad("dc", dc, x3, H, unbatched),
                  x3, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)
    dx, dh0, dc0 = g[0][0], g[1], g[2]
    if unbatched:
        dx, dh0, dc0 = dx[0], None if dh0 is None else dh0[0], None if dc0 is None else dc0[0]
    return (dx, dh0, dc0) + tuple(g[3:])


@_front
def gru_cell(x: np.ndarray, hx: Optional[np.ndarray], w_ih: np.ndarray, w_hh: np.ndarray,
             b_ih: Optional[np.ndarray] = None, b_hh: Optional[np.ndarray] = None) -> np.ndarray:
    """h': one GRU step (torch.nn.GRUCell): x ``[B, I]`` (or ``[I]``), hx None or ``[B, H]``."""
    x3, h0, _, unbatched = _cell_args(_GRU, x, hx, w_ih, w_hh, b_ih, b_hh)
    _, hn, _ = _forward(_GRU, x3, h0, None, w_ih, w_hh, b_ih, b_hh, None, False)
    return hn[0] if unbatched else hn


@_front
def gru_cell_backward(dh: Optional[np.ndarray], x: np.ndarray, hx: Optional[np.ndarray], w_ih: np.ndarray,
                      w_hh: np.ndarray, b_ih: Optional[np.ndarray] = None, b_hh: Optional[np.ndarray] = None):
    """``(dx, dh, dw_ih, dw_hh, db_ih, db_hh)`` of ``gru_cell`` (see ``lstm_cell_backward``)."""
    x3, h0, _, unbatched = _cell_args(_GRU, x, hx, w_ih, w_hh, b_ih, b_hh)
    H = w_hh.shape[1]
    g = _backward(_GRU, None, _cell_grad("dh", dh, x3, H, unbatched), None, x3, h0, None, w_ih, w_hh,
                  b_ih, b_hh, None, False)
    dx, dh0 = g[0][0], g[1]
    if unbatched:
        dx, dh0 = dx[0], None if dh0 is None else dh0[0]
    return (dx, dh0) + tuple(g[3:])
