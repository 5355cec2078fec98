"""pykernels.numpy: the C++ CPU kernels called on NumPy arrays directly (no torch tensors).

    y = pykernels.numpy.linear(x, w, b, activation="relu")         # act(x @ w.T + b)
    dx, dw, db = pykernels.numpy.linear_backward(dy, x, w, b, activation="relu")
    c = pykernels.numpy.matmul(a, b)                                  # np.matmul semantics, >= 1-D
    da, db = pykernels.numpy.matmul_backward(dc, a, b)

float32 and float64 arrays only: other dtypes raise TypeError (nothing is silently upcast or
copied). Any strides work, negative ones included; ``out=`` lets a caller provide (and poison)
the output buffer. The backward recomputes the forward's activation input, since a NumPy call
keeps no state between forward and backward.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .ops import _strided as S
from .ops._strided import View
from .ops.gemm import (linear_backward_views, linear_forward_views, matmul_backward_views,
                       matmul_forward_views)

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class _CppNumpy(S.CppLauncher):
    def ptr(self, v: View) -> int:
        return v.base.ctypes.data + v.offset * v.base.itemsize

    def is_fp64(self, v: View) -> bool:
        return v.base.dtype == np.float64


_L = _CppNumpy()


def _check(name: str, arr, dtype=None) -> None:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype not in _DTYPES:
        raise TypeError(f"{name} has dtype {arr.dtype}; pykernels.numpy supports float32 and "
                        "float64 (convert explicitly: no silent upcast copy is made)")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name} has dtype {arr.dtype} but the other operands are {dtype}")
    if any(s % arr.itemsize for s in arr.strides):
        raise ValueError(f"{name} has strides {arr.strides} that are not whole elements")


def _view(arr: np.ndarray) -> View:
    return View(arr, 0, tuple(arr.shape), tuple(s // arr.itemsize for s in arr.strides))


def _out(name: str, out, shape, dtype) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    _check(name, out, dtype)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(out.shape)}")
    return out


def _check_linear(x, w, b, activation) -> int:
    act = S.activation_code(activation)
    _check("x", x)
    _check("w", w, x.dtype)
    if b is not None:
        _check("b", b, x.dtype)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [N, K], got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x must be [..., K={w.shape[1]}] to match w {w.shape}, got {x.shape}")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"b must have shape ({w.shape[0]},), got {b.shape}")
    return act


def linear(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray] = None,
           activation: Optional[str] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``act(x @ w.T + b)``: x ``[..., K]``, w ``[N, K]``, b ``[N]`` -> ``[..., N]``.

    Raises:
        TypeError: non-arrays, dtypes other than float32/float64, mixed dtypes.
        ValueError: mismatched shapes, an unknown activation, a wrong ``out``.
    """
    act = _check_linear(x, w, b, activation)
    y = _out("out", out, x.shape[:-1] + (w.shape[0],), x.dtype)
    linear_forward_views(_L, _view(x), _view(w), None if b is None else _view(b), act, _view(y), None)
    return y


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


def matmul(a: np.ndarray, b: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``np.matmul(a, b)`` for float32/float64 arrays with >= 1 dim (batch dims broadcast)."""
    a2, b2, shape = _check_matmul(a, b)
    final = shape
    if a.ndim == 1:
        final = final[:-2] + final[-1:]
    if b.ndim == 1:
        final = final[:-1]
    c = _out("out", out, final, a.dtype)
    matmul_forward_views(_L, _view(a2), _view(b2), _view(c.reshape(shape)))
    return c


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
