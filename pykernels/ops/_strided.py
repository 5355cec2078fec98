"""Strided views shared by the torch and NumPy fronts of the GEMM kernels.

A ``View`` describes an operand as (base array, element offset, shape, strides in elements),
so transposes, broadcasting and batch flattening are done on the description, never by copying
data. ``gemm`` runs one (batched) GEMM on views through a ``Launcher`` (C++ on torch tensors,
C++ on NumPy arrays, or Triton), collapsing the batch dims into the single batch stride the
kernels take, or looping over the outermost batch dim when they do not collapse.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

ACTIVATIONS = {None: 0, "none": 0, "relu": 1, "gelu": 2, "tanh": 3, "sigmoid": 4}
ACTIVATION_NAMES = ("none", "relu", "gelu", "tanh", "sigmoid")


def activation_code(activation) -> int:
    if not (activation is None or isinstance(activation, str)) or activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of None, 'relu', 'gelu', 'tanh', 'sigmoid'; got {activation!r}")
    return ACTIVATIONS[activation]


def broadcast_shapes(s1: Sequence[int], s2: Sequence[int]) -> Tuple[int, ...]:
    """numpy/torch broadcasting of two shapes (torch.broadcast_shapes costs ~10 us a call)."""
    n = max(len(s1), len(s2))
    a, b = (1,) * (n - len(s1)) + tuple(s1), (1,) * (n - len(s2)) + tuple(s2)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"shapes {tuple(s1)} and {tuple(s2)} do not broadcast")
        out.append(y if x == 1 else x)
    return tuple(out)


class View(NamedTuple):
    base: object                  # torch.Tensor or numpy.ndarray the offsets are relative to
    offset: int                   # in elements, from base's first element
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]      # in elements

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def t(self) -> "View":
        """Swap the last two dims (a transpose by strides)."""
        s, st = list(self.shape), list(self.strides)
        s[-2], s[-1], st[-2], st[-1] = s[-1], s[-2], st[-1], st[-2]
        return View(self.base, self.offset, tuple(s), tuple(st))

    def expand(self, batch: Sequence[int]) -> "View":
        """Broadcast the leading (batch) dims to ``batch`` with stride 0 where needed."""
        nb = self.ndim - 2
        lead = (1,) * (len(batch) - nb) + tuple(self.shape[:nb])
        lead_st = (0,) * (len(batch) - nb) + tuple(self.strides[:nb])
        st = tuple(0 if s == 1 and b != 1 else t for s, t, b in zip(lead, lead_st, batch))
        return View(self.base, self.offset, tuple(batch) + self.shape[-2:], st + self.strides[-2:])

    def select0(self, i: int) -> "View":
        return View(self.base, self.offset + i * self.strides[0], self.shape[1:], self.strides[1:])

    def merge_rows(self) -> Optional["View"]:
        """[..., R, C] -> [R_total, C] when the leading dims and R collapse into one stride."""
        c = collapse(self.shape[:-1], self.strides[:-1])
        if c is None:
            return None
        return View(self.base, self.offset, (c[0], self.shape[-1]), (c[1], self.strides[-1]))


def collapse(shape: Sequence[int], strides: Sequence[int]) -> Optional[Tuple[int, int]]:
    """(size, stride) of dims that can be walked with one stride, else None."""
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    size = math.prod(shape)
    if size == 0 or not dims:
        return size, (dims[-1][1] if dims else 0)
    for (n0, s0), (n1, s1) in zip(dims, dims[1:]):
        if s0 != s1 * n1:
            return None
    return size, dims[-1][1]


class Launcher:
    """Runs the raw kernels on 3-D views. Subclasses: C++ on torch / NumPy, Triton."""

    def gemm3(self, a: View, b: View, c: View, bias: Optional[View], act: int,
              preact: Optional[View], accumulate: bool) -> None:
        raise NotImplementedError

    def epilogue_backward(self, dy: View, saved: View, act: int, dz: View,
                          dbias: Optional[View]) -> None:
        raise NotImplementedError


class CppLauncher(Launcher):
    """pykernels._C on any buffer; subclasses say where a view's first element is."""

    def ptr(self, v: View) -> int:
        raise NotImplementedError

    def is_fp64(self, v: View) -> bool:
        raise NotImplementedError

    def gemm3(self, a, b, c, bias, act, preact, accumulate):
        from .. import _C
        p = preact
        _C.gemm_forward(
            self.is_fp64(c), a.shape[0], a.shape[1], b.shape[2], a.shape[2],
            self.ptr(a), *a.strides, self.ptr(b), *b.strides, self.ptr(c), *c.strides,
            self.ptr(bias) if bias is not None else 0, bias.strides[0] if bias is not None else 0,
            1, act, self.ptr(p) if p is not None else 0, *(p.strides if p is not None else (0, 0, 0)),
            accumulate)

    def epilogue_backward(self, dy, saved, act, dz, dbias):
        from .. import _C
        _C.gemm_backward(
            self.is_fp64(dz), dz.shape[0], dz.shape[1], self.ptr(dy), *dy.strides,
            self.ptr(saved), *saved.strides, act, self.ptr(dz), *dz.strides,
            self.ptr(dbias) if dbias is not None else 0, dbias.strides[0] if dbias is not None else 0)


def gemm(L: Launcher, a: View, b: View, c: View, bias: Optional[View] = None, act: int = 0,
         preact: Optional[View] = None, accumulate: bool = False) -> None:
    """c = act(a @ b (+ c) + bias) for views of equal batch shape [..., M, K] @ [..., K, N]."""
    nb = c.ndim - 2
    ops = [a, b, c] + ([preact] if preact is not None else [])
    coll = [collapse(v.shape[:nb], v.strides[:nb]) for v in ops]
    if all(x is not None for x in coll):
        bt = coll[2][0]
        three = [View(v.base, v.offset, (bt,) + v.shape[-2:], (x[1],) + v.strides[-2:])
                 for v, x in zip(ops, coll)]
        L.gemm3(three[0], three[1], three[2], bias, act,
                three[3] if preact is not None else None, accumulate)
        return
    for i in range(c.shape[0]):  # batch dims that do not collapse: peel the outermost one
        gemm(L, a.select0(i), b.select0(i), c.select0(i), bias, act,
             preact.select0(i) if preact is not None else None, accumulate)
