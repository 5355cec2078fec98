"""2-D pooling tests: pykernels.ops.max_pool2d / avg_pool2d / adaptive_avg_pool2d /
adaptive_max_pool2d and the pykernels.nn pooling modules.

Every backend ("cpp", "triton" through the interpreter on CPU, "reference", and Triton on CUDA
when there is a GPU) is checked against the float64 NumPy reference (pykernels.reference.pool2d),
forward, indices (exactly, int64) and the input gradient, with tests/helpers.check_op; all but
the sweeps compare with torch.nn.functional too. The sweeps run every combination of kernel
1..7, stride 1..3, padding 0..kernel/2, dilation 1..2 and ceil_mode (avg: count_include_pad,
divisor_override) on the C++ backend (and Triton on CUDA); the interpreter (slow) gets a spread
subset on smaller images, the reference backend (the oracle through the ops layer) a few.

Torch's semantics, which every backend must reproduce:
  * max: a NaN in the window wins (with several, torch reports the LAST one: its loop is
    `if (val > max || isnan(val))`); ties keep the FIRST maximum in row-major window order; an
    all -inf window gives -inf and the first in-range position.
  * avg: count_include_pad counts padding but not the ceil_mode overhang past it.
  * the output keeps the input's memory format (channels_last in -> channels_last out).

Run: TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_pool2d.py -q
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pykernels
import pykernels.nn
import pykernels.ops as ops
from pykernels import reference
from helpers import (PassThrough, RecordPykernelsCalls, Reference, assert_close, check_op, make_tensor,
                     opcheck_recorded, to_numpy)

CL = torch.channels_last


# ----------------------------------------------------------------------------------------------
# the reference in check_op's calling convention: forward(x, **kwargs), backward(dout, x, **kwargs)


def _ref_max(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
             return_indices=False):
    out, idx = reference.max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode)
    return (out, idx) if return_indices else out


def _ref_max_grad(dout, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                  return_indices=False):
    dout = dout[0] if return_indices else dout  # (grad of out,): indices get no gradient
    _, idx = reference.max_pool2d_forward(x, kernel_size, stride, padding, dilation, ceil_mode)
    return (reference.max_pool2d_backward(dout, idx, np.shape(x)),)


def _ref_avg_grad(dout, x, **kwargs):
    return (reference.avg_pool2d_backward(dout, np.shape(x), **kwargs),)


def _ref_adaptive_max(x, output_size, return_indices=False):
    out, idx = reference.adaptive_max_pool2d_forward(x, output_size)
    return (out, idx) if return_indices else out


def _ref_adaptive_max_grad(dout, x, output_size, return_indices=False):
    dout = dout[0] if return_indices else dout
    _, idx = reference.adaptive_max_pool2d_forward(x, output_size)
    return (reference.adaptive_max_pool2d_backward(dout, idx, np.shape(x)),)


MAX = Reference(_ref_max, _ref_max_grad)
AVG = Reference(reference.avg_pool2d_forward, _ref_avg_grad)
ADAPTIVE_AVG = Reference(reference.adaptive_avg_pool2d_forward,
                         lambda dout, x, output_size: (
                             reference.adaptive_avg_pool2d_backward(dout, np.shape(x)),))
ADAPTIVE_MAX = Reference(_ref_adaptive_max, _ref_adaptive_max_grad)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _pool_terms(kernel_size):
    """Values summed per element: a window for avg; overlapping windows' gradients (at most
    kH*kW of them, stride >= 1) for both backwards."""
    kh, kw = _pair(kernel_size)
    return kh * kw


def _adaptive_terms(in_hw, output_size):
    """Bound on the largest adaptive window: floor(H/OH) + 2 rows by floor(W/OW) + 2 columns."""
    oh, ow = _pair(output_size)
    oh, ow = oh or in_hw[0], ow or in_hw[1]
    return (in_hw[0] // oh + 2) * (in_hw[1] // ow + 2)


def _terms_of(name, kw, shape):
    if name.startswith("adaptive"):
        return _adaptive_terms(shape[-2:], kw["output_size"])
    return _pool_terms(kw["kernel_size"])


# name -> (the pykernels op, looked up when called; its reference; torch's function)
_OPS = {
    "max": (lambda: ops.max_pool2d, MAX, F.max_pool2d),
    "avg": (lambda: ops.avg_pool2d, AVG, F.avg_pool2d),
    "adaptive_avg": (lambda: ops.adaptive_avg_pool2d, ADAPTIVE_AVG, F.adaptive_avg_pool2d),
    "adaptive_max": (lambda: ops.adaptive_max_pool2d, ADAPTIVE_MAX, F.adaptive_max_pool2d),
}


def _check_indices(outs, return_indices):
    """return_indices=True -> (out, int64 indices), else one tensor (like torch)."""
    if return_indices:
        assert isinstance(outs, tuple) and len(outs) == 2, "return_indices=True: (out, indices)"
        assert outs[1].dtype == torch.int64, f"indices dtype {outs[1].dtype}, expected int64"
    else:
        assert isinstance(outs, tuple) and len(outs) == 1, "return_indices=False: one tensor"


def _fmt(kwargs):
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def _memory_format(t):
    """'channels_last', 'contiguous' or 'strided' (ambiguous shapes count as contiguous)."""
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=CL):
        return "channels_last"
    return "strided"


# ----------------------------------------------------------------------------------------------
# inputs

_LAYOUTS = ("contiguous", "channels_last", "strided", "transposed", "channel_slice",
            "channels_last_slice", "batch_slice")


def image(shape, dtype, gen, *, device="cpu", layout="contiguous", values="normal"):
    """A fresh random image [N, C, H, W] (or [C, H, W]) in the given memory layout.

    layout: contiguous | channels_last | strided (every other column) | transposed (H and W
        swapped in memory) | channel_slice (C taken from 2C channels, NCHW) |
        channels_last_slice (the same from a channels_last tensor: not dense) |
        batch_slice (every other image of 2N).
    values: "normal"; "ties" (integers in -2..2: most windows hold tied maxima); "distinct"
        (a random permutation of values 0.05 apart: no ties, safe for finite differences);
        "special" (normal with ~10% NaN, ~15% -inf, ~3% +inf).
    """
    shape = tuple(shape)
    if layout in ("strided", "transposed"):
        x = make_tensor(shape, torch.float64, gen, layout=layout)
    elif layout in ("channel_slice", "channels_last_slice"):
        n, c, h, w = shape
        x = make_tensor((n, 2 * c, h, w), torch.float64, gen)
        if layout == "channels_last_slice":
            x = x.contiguous(memory_format=CL)
        x = x[:, 1:1 + 2 * c:2]
    elif layout == "batch_slice":
        x = make_tensor((2 * shape[0],) + shape[1:], torch.float64, gen)[::2]
    else:
        x = make_tensor(shape, torch.float64, gen)
        if layout == "channels_last":
            x = x.contiguous(memory_format=CL)
    n = x.numel()
    with torch.no_grad():
        if values == "ties":
            x.copy_(torch.randint(-2, 3, shape, generator=gen).to(torch.float64))
            if not x.any():
                x.view(-1)[0] = 1.0
        elif values == "distinct":
            perm = torch.randperm(n, generator=gen).to(torch.float64)
            x.copy_(((perm - n / 2) * 0.05).reshape(shape))
        elif values == "special":
            u = torch.rand(shape, generator=gen, dtype=torch.float64)
            x[u < 0.10] = float("nan")
            x[(u >= 0.10) & (u < 0.25)] = float("-inf")
            x[(u >= 0.25) & (u < 0.28)] = float("inf")
    x = x.to(dtype=dtype, device=device)
    assert x.shape == shape
    return x


def _valid(in_hw, kernel_size, stride, padding, dilation, ceil_mode):
    """True when torch accepts the combination (non-empty output, padding <= kernel/2) and no
    window lies wholly in the padding (possible with dilation on tiny images: torch then reports
    -inf with an index outside the plane, and its backward writes out of bounds)."""
    k, p, d = _pair(kernel_size), _pair(padding), _pair(dilation)
    s = k if stride is None else _pair(stride)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        return False
    for i in range(2):
        n = reference.pool2d_output_size(in_hw[i], k[i], s[i], p[i], d[i], ceil_mode)
        if n <= 0:
            return False
        starts = np.arange(n) * s[i] - p[i]
        taps = starts[:, None] + np.arange(k[i])[None, :] * d[i]
        if not ((taps >= 0) & (taps < in_hw[i])).any(axis=1).all():
            return False
    return True


# ----------------------------------------------------------------------------------------------
# the parameter sweeps: every combination on the compiled backends, a spread subset interpreted


def _max_combos(k):
    return [dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=c)
            for s in (1, 2, 3) for p in range(k // 2 + 1) for d in (1, 2) for c in (False, True)]


def _avg_combos(k):
    combos = [dict(kernel_size=k, stride=s, padding=p, ceil_mode=c, count_include_pad=cip,
                   divisor_override=None)
              for s in (1, 2, 3) for p in range(k // 2 + 1) for c in (False, True)
              for cip in (True, False)]
    # divisor_override replaces every divisor: with the ceil_mode overhang and with padding
    combos += [dict(kernel_size=k, stride=2, padding=k // 2, ceil_mode=True,
                    count_include_pad=cip, divisor_override=dv)
               for cip, dv in ((True, 3), (False, k * k + 2))]
    combos.append(dict(kernel_size=k, stride=1, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=1))
    return combos


def _spread(combos, n):
    """n combinations evenly spread over the list, first and last included."""
    if len(combos) <= n:
        return combos
    return [combos[round(i * (len(combos) - 1) / (n - 1))] for i in range(n)]


def _sweep(backend, dtype, gen, op, ref, combos, *, extra=None):
    """check_op on every combination, against the reference only (the reference itself is
    checked against torch in test_reference_matches_torch; torch's own CPU pooling costs more
    per call than the kernels under test). All failing combinations are reported together."""
    shape = (1, 2, 10, 9) if backend.interpreted else (2, 3, 15, 14)
    combos = [kw for kw in combos  # all valid at 15 x 14; the interpreter's image is smaller
              if _valid(shape[2:], kw["kernel_size"], kw["stride"], kw["padding"],
                        kw.get("dilation", 1), kw["ceil_mode"])]
    if backend.interpreted:
        combos = _spread(combos, 3)
    elif backend.name == "reference":  # the oracle run through the ops layer: plumbing only
        combos = _spread(combos, 6)
    failures = []
    for kw in combos:
        kw = dict(kw, **(extra or {}))
        x = image(shape, dtype, gen, device=backend.device)  # fresh values for every case
        try:
            with backend.context():
                outs = check_op(op, ref, dict(x=x), kwargs=kw, gen=gen,
                                terms=_pool_terms(kw["kernel_size"]))
            if "return_indices" in kw:
                _check_indices(outs, kw["return_indices"])
        except Exception as e:  # noqa: BLE001 - collected: report every failing combination
            failures.append(f"[{_fmt(kw)}] x{tuple(x.shape)}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}")
    assert not failures, f"{len(failures)} of {len(combos)} combinations fail:\n" + "\n".join(
        failures[:20])


@pytest.mark.parametrize("k", range(1, 8), ids=lambda k: f"k{k}")
def test_max_pool2d_sweep(backend, dtype, k, gen):
    _sweep(backend, dtype, gen, ops.max_pool2d, MAX, _max_combos(k),
           extra=dict(return_indices=True))


@pytest.mark.parametrize("k", range(1, 8), ids=lambda k: f"k{k}")
def test_avg_pool2d_sweep(backend, dtype, k, gen):
    _sweep(backend, dtype, gen, ops.avg_pool2d, AVG, _avg_combos(k))


# ----------------------------------------------------------------------------------------------
# ceil_mode edge windows, windows starting in the padding, tiny images

# (input [N, C, H, W], kernel, stride, padding): every one with ceil_mode True
_EDGES = [
    ((1, 2, 1, 1), 3, 2, 1),          # one pixel: the only window starts in the left padding
    ((1, 2, 2, 3), 3, 2, 1),          # window 0 starts in the padding, window 1 overhangs
    ((2, 3, 6, 6), 2, 2, 1),          # last window: last row + right padding
    ((1, 1, 4, 4), 3, 3, 1),          # last window reaches exactly the end of the padding
    ((1, 1, 5, 5), 2, 2, 1),          # ceil would start a window in the right padding: dropped
    ((1, 1, 3, 3), 3, 2, 1),          # the last window covers the right padding
    ((1, 2, 4, 4), 3, 2, 0),          # no padding: the last window overhangs the input
    ((1, 2, 7, 5), (3, 2), (2, 3), (1, 1)),  # non-square everything
    ((2, 1, 6, 9), (5, 4), 3, (2, 1)),       # overhang wider than the padding
]


@pytest.mark.parametrize("case", range(len(_EDGES)))
def test_max_pool2d_ceil_edges(backend, dtype, case, gen):
    shape, k, s, p = _EDGES[case]
    for d in (1, 2):
        kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=True,
                  return_indices=True)
        if not _valid(shape[2:], k, s, p, d, True):
            continue
        x = image(shape, dtype, gen, device=backend.device)
        with backend.context():
            check_op(ops.max_pool2d, MAX, dict(x=x), kwargs=kw, gen=gen, terms=_pool_terms(k),
                     torch_fn=F.max_pool2d)


@pytest.mark.parametrize("case", range(len(_EDGES)))
def test_avg_pool2d_ceil_edges(backend, dtype, case, gen):
    shape, k, s, p = _EDGES[case]
    for cip, dv in ((True, None), (False, None), (True, 5)):
        kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=True, count_include_pad=cip,
                  divisor_override=dv)
        x = image(shape, dtype, gen, device=backend.device)
        with backend.context():
            check_op(ops.avg_pool2d, AVG, dict(x=x), kwargs=kw, gen=gen, terms=_pool_terms(k),
                     torch_fn=F.avg_pool2d)


# ----------------------------------------------------------------------------------------------
# shapes: non-square kernels and images, N = 1, C = 1, odd sizes, unbatched [C, H, W], big planes

# (input shape, kernel, stride, padding, dilation, interpreted too?)
_SHAPES = [
    ((1, 1, 9, 7), 3, 2, 1, 1, True),               # N = 1, C = 1
    ((2, 3, 8, 19), (2, 5), (1, 3), (1, 2), 1, True),  # non-square kernel, stride, padding
    ((2, 3, 17, 3), (4, 1), (3, 1), (2, 0), (1, 1), True),  # tall image, 1-wide kernel
    ((2, 3, 3, 17), (1, 4), (1, 2), 0, (1, 2), True),  # wide image, dilation in W only
    ((4, 13, 11), 3, 2, 1, 1, True),                 # unbatched [C, H, W]
    ((2, 2, 6, 5), (6, 5), None, 0, 1, True),        # one window: the whole plane
    ((2, 3, 5, 5), 1, 1, 0, 1, True),                # kernel 1: identity
    ((2, 3, 10, 10), 2, None, 0, 1, True),           # stride defaults to kernel_size
    ((1, 5, 37, 41), 3, 2, 1, 1, False),             # N = 1: the work is split inside a plane
    ((1, 1, 64, 64), 5, 1, 2, 1, False),             # one plane, heavily overlapping windows
    ((3, 7, 23, 29), (7, 3), (2, 1), (3, 1), (1, 2), False),
    ((2, 64, 12, 12), 3, 2, 1, 1, False),            # many channels
]


@pytest.mark.parametrize("case", range(len(_SHAPES)))
def test_max_pool2d_shapes(backend, dtype, case, gen):
    shape, k, s, p, d, interp = _SHAPES[case]
    if backend.interpreted and not interp:
        pytest.skip("too large for the Triton interpreter")
    for return_indices in (True, False):  # False: the op keeps its own indices for backward
        kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=case % 2 == 1,
                  return_indices=return_indices)
        x = image(shape, dtype, gen, device=backend.device)
        with backend.context():
            outs = check_op(ops.max_pool2d, MAX, dict(x=x), kwargs=kw, gen=gen,
                            terms=_pool_terms(k), torch_fn=F.max_pool2d)
        _check_indices(outs, return_indices)


@pytest.mark.parametrize("case", range(len(_SHAPES)))
def test_avg_pool2d_shapes(backend, dtype, case, gen):
    shape, k, s, p, _, interp = _SHAPES[case]
    if backend.interpreted and not interp:
        pytest.skip("too large for the Triton interpreter")
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=case % 2 == 0,
              count_include_pad=case % 3 != 0)
    x = image(shape, dtype, gen, device=backend.device)
    with backend.context():
        check_op(ops.avg_pool2d, AVG, dict(x=x), kwargs=kw, gen=gen, terms=_pool_terms(k),
                 torch_fn=F.avg_pool2d)


@pytest.mark.parametrize("op", ["max", "max_indices", "avg", "adaptive_max",
                                "adaptive_max_indices"])
def test_no_grad_forward(backend, dtype, op, gen):
    # no gradient needed: the max kernels may skip the indices, unless they are returned
    shape = (2, 3, 9, 11) if backend.interpreted else (2, 4, 21, 18)
    x = image(shape, dtype, gen, device=backend.device, values="ties")
    xs = to_numpy(x)
    want_idx = None
    with backend.context(), torch.no_grad():
        if op.startswith("max"):
            got = ops.max_pool2d(x, 3, 2, 1, return_indices=op == "max_indices")
            want, want_idx = reference.max_pool2d_forward(xs, 3, 2, 1)
        elif op.startswith("adaptive_max"):
            got = ops.adaptive_max_pool2d(x, (4, 3), return_indices=op.endswith("indices"))
            want, want_idx = reference.adaptive_max_pool2d_forward(xs, (4, 3))
        else:
            got = ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True)
            want = reference.avg_pool2d_forward(xs, 3, 2, 1, ceil_mode=True)
    if op.endswith("indices"):
        got, idx = got
        assert idx.dtype == torch.int64
        assert_close(idx, want_idx, name="indices")
    assert isinstance(got, torch.Tensor) and got.dtype == dtype
    assert_close(got, want, terms=9)


# (name, kwargs): SIMD widths along W (NCHW) and C (channels_last): full vectors plus a tail
_WIDE = [
    ("max", dict(kernel_size=3, stride=2, padding=1, return_indices=True)),   # ResNet stem
    ("max", dict(kernel_size=2, stride=2, return_indices=True)),
    ("max", dict(kernel_size=3, stride=1, padding=1, return_indices=True)),
    ("avg", dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)),
    ("avg", dict(kernel_size=2, stride=2)),
    ("adaptive_avg", dict(output_size=1)),
    ("adaptive_avg", dict(output_size=(7, 5))),
    ("adaptive_max", dict(output_size=(5, 7), return_indices=True)),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", range(len(_WIDE)))
def test_vector_widths(backend, dtype, case, layout, gen):
    if backend.interpreted:
        pytest.skip("too large for the Triton interpreter")
    name, kw = _WIDE[case]
    # C = 37: two 16-wide vectors and a tail along C; W = 67: four 16-wide vectors and a tail
    shape = (2, 37, 13, 67) if layout == "contiguous" else (2, 37, 13, 12)
    fn, ref, torch_fn = _OPS[name]
    x = image(shape, dtype, gen, device=backend.device, layout=layout)
    with backend.context():
        check_op(fn(), ref, dict(x=x), kwargs=kw, gen=gen, terms=_terms_of(name, kw, shape),
                 torch_fn=torch_fn)


@pytest.mark.parametrize("grad_layout", ["expanded", "transposed", "channels_last", "sliced"])
@pytest.mark.parametrize("name", ["max", "avg", "adaptive_avg", "adaptive_max"])
def test_backward_with_strided_grad(backend, dtype, name, grad_layout, gen):
    # the upstream gradient is rarely a fresh contiguous tensor: y.sum() gives an expanded one
    # (every stride 0); transposes and slices downstream give strided ones
    if backend.interpreted and grad_layout in ("channels_last", "sliced"):
        pytest.skip("the interpreter runs a subset")
    kw = {"max": dict(kernel_size=3, stride=2, padding=1),
          "avg": dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
          "adaptive_avg": dict(output_size=(4, 3)),
          "adaptive_max": dict(output_size=(4, 3))}[name]
    fn, _, torch_fn = _OPS[name]
    shape = (2, 3, 9, 8) if backend.interpreted else (2, 5, 13, 11)
    x = image(shape, dtype, gen, device=backend.device)
    xp = x.detach().clone().requires_grad_(True)
    xt = x.detach().clone().requires_grad_(True)
    with backend.context():
        y = fn()(xp, **kw)
    yt = torch_fn(xt, **kw)
    if grad_layout == "expanded":
        dy = torch.full((), 1.5, dtype=dtype, device=backend.device).expand(y.shape)
    elif grad_layout == "transposed":
        dy = make_tensor(y.shape, dtype, gen, device=backend.device, layout="transposed")
    elif grad_layout == "channels_last":
        dy = make_tensor(y.shape, dtype, gen, device=backend.device).contiguous(memory_format=CL)
    else:
        dy = make_tensor(y.shape[:1] + (2 * y.shape[1],) + y.shape[2:], dtype, gen,
                         device=backend.device)[:, ::2]
    with backend.context():
        (g,) = torch.autograd.grad(y, xp, dy)
    (gt,) = torch.autograd.grad(yt, xt, dy)
    assert_close(g, gt, terms=_terms_of(name, kw, shape), name=f"grad of x, {grad_layout} grad_out")


@pytest.mark.backends("cpp")
@pytest.mark.parametrize("name", ["max", "avg", "adaptive_max"])
def test_cpp_threads_agree(backend, name, gen):
    # one big plane (N = C = 1) and many small ones: however the work is split between the two
    # threads, the backward (a scatter for max: no two threads may write one plane) is the
    # reference's, every time
    kw = {"max": dict(kernel_size=3, stride=1, padding=1),
          "avg": dict(kernel_size=3, stride=1, padding=1, count_include_pad=False),
          "adaptive_max": dict(output_size=(40, 50))}[name]
    fn, ref, _ = _OPS[name]
    saved = pykernels.get_num_threads()
    try:
        for shape in ((1, 1, 96, 101), (3, 7, 20, 21)):
            for layout in ("contiguous", "channels_last"):
                x = image(shape, torch.float32, gen, layout=layout)
                for n in (2, 1, 2):
                    pykernels.set_num_threads(n)
                    with backend.context():
                        check_op(fn(), ref, dict(x=x), kwargs=kw, gen=gen,
                                 terms=_terms_of(name, kw, shape))
    finally:
        pykernels.set_num_threads(saved)


def test_argument_forms(gen):
    # lists, 1-element sequences and torch.Size work like ints/pairs, as in torch
    x = image((2, 3, 11, 10), torch.float32, gen)
    cases = [
        (ops.max_pool2d, F.max_pool2d, dict(kernel_size=[3, 2], stride=[2, 1], padding=[1, 0])),
        (ops.max_pool2d, F.max_pool2d, dict(kernel_size=(3,), stride=(2,), dilation=(2,))),
        (ops.avg_pool2d, F.avg_pool2d, dict(kernel_size=[3, 2], stride=[1, 2], padding=(1,))),
        (ops.adaptive_avg_pool2d, F.adaptive_avg_pool2d, dict(output_size=[4, 3])),
        (ops.adaptive_avg_pool2d, F.adaptive_avg_pool2d, dict(output_size=(None, None))),
        (ops.adaptive_max_pool2d, F.adaptive_max_pool2d, dict(output_size=torch.Size([5, 2]))),
    ]
    for fn, torch_fn, kw in cases:
        assert_close(fn(x, **kw), torch_fn(x, **kw), terms=6, name=_fmt(kw))


@pytest.mark.parametrize("name", ["max", "avg", "adaptive_avg", "adaptive_max"])
def test_empty_batch(backend, dtype, name, gen):
    # N = 0: an empty result of the right shape, like torch, and an empty gradient
    fn, _, torch_fn = _OPS[name]
    kw = dict(output_size=(2, 3)) if name.startswith("adaptive") else dict(kernel_size=3, stride=2)
    x = image((0, 3, 7, 8), dtype, gen, device=backend.device).requires_grad_(True)
    with backend.context():
        out = fn()(x, **kw)
        out = out[0] if isinstance(out, tuple) else out
        (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
    want = torch_fn(x.detach(), **kw)
    assert out.shape == want.shape and out.dtype == dtype
    assert g.shape == x.shape


# ----------------------------------------------------------------------------------------------
# adaptive pools

# (input shape, output_size): divisible, non-divisible (overlapping windows), identity,
# upsampling (OH > H: windows repeat rows), None keeps a size, int, 1x1 (the classifier head)
_ADAPTIVE = [
    ((2, 3, 7, 7), (1, 1)),
    ((2, 3, 8, 12), (4, 3)),
    ((1, 2, 7, 5), (3, 2)),
    ((2, 1, 5, 7), (5, 7)),
    ((1, 2, 4, 5), (7, 9)),
    ((2, 2, 9, 11), (None, 4)),
    ((3, 10, 13), 3),
    ((1, 3, 1, 1), (2, 3)),
    ((2, 2, 13, 1), (4, 1)),
    ((2, 4, 16, 16), (5, 5)),
    ((1, 64, 7, 7), 1),
]
_ADAPTIVE_INTERP = (0, 2, 4, 5, 6, 7)


@pytest.mark.parametrize("case", range(len(_ADAPTIVE)))
def test_adaptive_avg_pool2d(backend, dtype, case, gen):
    if backend.interpreted and case not in _ADAPTIVE_INTERP:
        pytest.skip("the interpreter runs a subset")
    shape, size = _ADAPTIVE[case]
    x = image(shape, dtype, gen, device=backend.device)
    with backend.context():
        check_op(ops.adaptive_avg_pool2d, ADAPTIVE_AVG, dict(x=x), kwargs=dict(output_size=size),
                 gen=gen, terms=_adaptive_terms(shape[-2:], size), torch_fn=F.adaptive_avg_pool2d)


@pytest.mark.parametrize("case", range(len(_ADAPTIVE)))
def test_adaptive_max_pool2d(backend, dtype, case, gen):
    if backend.interpreted and case not in _ADAPTIVE_INTERP:
        pytest.skip("the interpreter runs a subset")
    shape, size = _ADAPTIVE[case]
    for return_indices in (True, False):
        x = image(shape, dtype, gen, device=backend.device)
        kw = dict(output_size=size, return_indices=return_indices)
        with backend.context():
            outs = check_op(ops.adaptive_max_pool2d, ADAPTIVE_MAX, dict(x=x), kwargs=kw, gen=gen,
                            terms=_adaptive_terms(shape[-2:], size),
                            torch_fn=F.adaptive_max_pool2d)
        _check_indices(outs, return_indices)


# ----------------------------------------------------------------------------------------------
# memory layouts: channels_last in -> channels_last out (like torch), strided views read right

_LAYOUT_CASES = [
    ("max", dict(kernel_size=3, stride=2, padding=1, return_indices=True)),
    ("max", dict(kernel_size=(2, 3), stride=(2, 1), dilation=(2, 1), ceil_mode=True,
                 return_indices=True)),
    ("avg", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("avg", dict(kernel_size=2)),
    ("adaptive_avg", dict(output_size=(3, 2))),
    ("adaptive_max", dict(output_size=(2, 3), return_indices=True)),
]


@pytest.mark.parametrize("layout", _LAYOUTS[1:])
@pytest.mark.parametrize("case", range(len(_LAYOUT_CASES)))
def test_layouts(backend, dtype, case, layout, gen):
    name, kw = _LAYOUT_CASES[case]
    if backend.interpreted and layout not in ("channels_last", "transposed"):
        pytest.skip("the interpreter runs a subset")
    shape = (1, 3, 8, 7) if backend.interpreted else (2, 5, 13, 11)
    fn, ref, torch_fn = _OPS[name]
    x = image(shape, dtype, gen, device=backend.device, layout=layout)
    with backend.context():
        outs = check_op(fn(), ref, dict(x=x), kwargs=kw, gen=gen, terms=_terms_of(name, kw, shape),
                        torch_fn=torch_fn)
    want = torch_fn(x, **kw)
    want = want if isinstance(want, tuple) else (want,)
    for i, (o, t) in enumerate(zip(outs, want)):
        assert _memory_format(o) == _memory_format(t), (
            f"output {i}: memory format {_memory_format(o)} (strides {o.stride()}), torch gives "
            f"{_memory_format(t)} (strides {t.stride()}) for a {layout} input")


# ----------------------------------------------------------------------------------------------
# NaN, -inf, +inf and ties: values AND indices exactly like torch


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", ["max", "avg", "adaptive_avg", "adaptive_max"])
def test_nan_and_inf(backend, dtype, name, layout, gen):
    if backend.interpreted and layout == "channels_last" and name.startswith("adaptive"):
        pytest.skip("the interpreter runs a subset")
    shape = (1, 3, 9, 8) if backend.interpreted else (2, 4, 17, 15)
    kw = {
        "max": dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True,
                    return_indices=True),
        "avg": dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
        "adaptive_avg": dict(output_size=(4, 3)),
        "adaptive_max": dict(output_size=(4, 3), return_indices=True),
    }[name]
    fn, ref, torch_fn = _OPS[name]
    x = image(shape, dtype, gen, device=backend.device, layout=layout, values="special")
    with backend.context():
        check_op(fn(), ref, dict(x=x), kwargs=kw, gen=gen, terms=_terms_of(name, kw, shape),
                 torch_fn=torch_fn, match_nonfinite=True)


def _plane(rows, dtype, device):
    return torch.tensor(rows, dtype=torch.float64).to(dtype=dtype, device=device)[None, None]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_max_special_windows(backend, dtype, layout, gen):
    """Hand-built windows whose answer is written down: the rules torch follows."""
    nan, inf = float("nan"), float("inf")
    x = _plane([[1.0, nan, 3.0, nan, -inf, -inf],
                [nan, 2.0, 5.0, 0.0, -inf, -inf],
                [2.0, 2.0, -1.0, 7.0, 7.0, -inf],
                [2.0, 0.5, 7.0, 7.0, -inf, -inf]], dtype, backend.device)
    x = x.expand(2, 3, 4, 6).contiguous() * 1  # several planes, all the same
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    with backend.context():
        out, idx = ops.max_pool2d(x, 2, 2, return_indices=True)
        out_p, idx_p = ops.max_pool2d(x, 3, 2, padding=1, return_indices=True)
    # window (0,0): NaN at 1 and at 6 -> the last NaN (6); (0,1): NaN at 3; (0,2): all -inf -> 4
    # (1,0): tie of 2.0 at 12, 13, 18 -> the first (12); (1,1): tie of 7.0 at 15, 20, 21 -> 15
    # (1,2): 7.0 at 16 wins over -inf
    want_idx = torch.tensor([[6, 3, 4], [12, 15, 16]])
    want = torch.tensor([[nan, nan, -inf], [2.0, 7.0, 7.0]], dtype=torch.float64)
    assert idx.dtype == torch.int64
    assert (idx.cpu() == want_idx).all(), f"indices {idx[0, 0].tolist()}, want {want_idx.tolist()}"
    assert_close(out[0, 0], want, dtype=dtype, match_nonfinite=True)
    t_out, t_idx = F.max_pool2d(x, 3, 2, padding=1, return_indices=True)
    assert (idx_p == t_idx).all(), (
        f"padded: indices {idx_p[0, 0].tolist()}, torch {t_idx[0, 0].tolist()}")
    assert_close(out_p, t_out, match_nonfinite=True, name="padded out vs torch")
    # all -inf windows that start in the padding report their first in-range position
    y = torch.full((1, 2, 3, 3), -inf, dtype=dtype, device=backend.device)
    with backend.context():
        o, i = ops.max_pool2d(y, 3, 2, padding=1, return_indices=True)
    want_idx = torch.tensor([[0, 1], [3, 4]])
    assert (i.cpu() == want_idx).all() and (o == -inf).all(), (
        f"all -inf: {o[0, 0].tolist()}, indices {i[0, 0].tolist()}, want {want_idx.tolist()}")


@pytest.mark.parametrize("name", ["max", "adaptive_max"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_ties(backend, dtype, name, layout, gen):
    # integer values in -2..2: nearly every window holds a tie; the index must be torch's (the
    # first maximum in row-major window order), and so is where the gradient goes
    shape = (1, 3, 10, 9) if backend.interpreted else (2, 4, 19, 17)
    fn, ref, torch_fn = _OPS[name]
    cases = ([dict(kernel_size=3, stride=1, padding=1, return_indices=True),
              dict(kernel_size=(4, 3), stride=(2, 3), padding=(2, 1), dilation=(1, 2),
                   ceil_mode=True, return_indices=True)]
             if name == "max" else
             [dict(output_size=(4, 3), return_indices=True),
              dict(output_size=(7, 5), return_indices=True)])
    for kw in cases:
        x = image(shape, dtype, gen, device=backend.device, layout=layout, values="ties")
        with backend.context():
            check_op(fn(), ref, dict(x=x), kwargs=kw, gen=gen, terms=_terms_of(name, kw, shape),
                     torch_fn=torch_fn)


# ----------------------------------------------------------------------------------------------
# gradcheck in float64 (finite differences, independent of the reference) on tie-free inputs

_GRADCHECK = [
    ("max", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("max", dict(kernel_size=(2, 3), stride=1, dilation=(2, 1))),
    ("avg", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True)),
    ("avg", dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0), ceil_mode=True,
                 count_include_pad=False)),
    ("avg", dict(kernel_size=2, stride=1, divisor_override=3)),
    ("adaptive_avg", dict(output_size=(3, 4))),
    ("adaptive_max", dict(output_size=(4, 3))),
]


@pytest.mark.dtypes(torch.float64)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", range(len(_GRADCHECK)))
def test_gradcheck(backend, dtype, case, layout, gen):
    name, kw = _GRADCHECK[case]
    fn = _OPS[name][0]()
    x = image((2, 2, 7, 6), dtype, gen, device=backend.device, layout=layout,
              values="distinct").requires_grad_(True)
    with backend.context():
        assert torch.autograd.gradcheck(lambda t: fn(t, **kw), (x,))


# ----------------------------------------------------------------------------------------------
# torch.library.opcheck on every registered pooling op, with the arguments the public ops
# really pass (recorded below the autograd layer, forward and backward)


def _pool_op_names():
    return sorted(n for n in dir(torch.ops.pykernels)
                  if "pool" in n
                  and isinstance(getattr(torch.ops.pykernels, n, None),
                                 torch._ops.OpOverloadPacket))


def _record_pool_calls(gen):
    usages = [
        (lambda x: ops.max_pool2d(x, 3, 2, 1, ceil_mode=True), (2, 3, 9, 8), "contiguous"),
        (lambda x: ops.max_pool2d(x, (2, 3), 1, (1, 0), (2, 1), return_indices=True)[0],
         (2, 3, 9, 8), "channels_last"),
        (lambda x: ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
         (2, 3, 9, 8), "contiguous"),
        (lambda x: ops.avg_pool2d(x, 2, divisor_override=3), (2, 3, 9, 8), "channels_last"),
        (lambda x: ops.adaptive_avg_pool2d(x, (3, 2)), (2, 3, 7, 8), "contiguous"),
        (lambda x: ops.adaptive_avg_pool2d(x, 1), (3, 7, 8), "contiguous"),
        (lambda x: ops.adaptive_max_pool2d(x, (3, 2), return_indices=True)[0], (2, 3, 7, 8),
         "channels_last"),
        (lambda x: ops.adaptive_max_pool2d(x, 4), (2, 3, 7, 8), "contiguous"),
        (lambda x: ops.max_pool2d(x, 2), (3, 6, 6), "contiguous"),
    ]
    rec = RecordPykernelsCalls()
    with rec:
        for fn, shape, layout in usages:
            x = image(shape, torch.float64, gen, layout=layout).requires_grad_(True)
            y = fn(x)
            y.backward(make_tensor(y.shape, y.dtype, gen))
        with torch.no_grad():
            ops.max_pool2d(image((2, 3, 9, 8), torch.float32, gen), 3, 2, 1)
    return rec.calls


def test_opcheck_every_pool_op(gen):
    names = _pool_op_names()
    assert names, f"no pooling op registered in torch.ops.pykernels: {dir(torch.ops.pykernels)}"
    calls = _record_pool_calls(gen)
    seen = {func._name.split("::")[1] for func, _, _ in calls}
    missing = [n for n in names if n not in seen]
    assert not missing, f"registered pooling ops the public ops never called here: {missing}"
    opcheck_recorded(calls)


@pytest.mark.parametrize("case", range(len(_LAYOUT_CASES)))
def test_registered_op_path(backend, dtype, case, gen):
    # eager calls on plain tensors skip the custom op's dispatch; under a dispatch mode (as under
    # torch.compile) the registered op and its register_autograd formula run: check those too
    name, kw = _LAYOUT_CASES[case]
    fn, ref, torch_fn = _OPS[name]
    shape = (1, 3, 8, 7) if backend.interpreted else (2, 5, 13, 11)
    x = image(shape, dtype, gen, device=backend.device, layout="channels_last" if case % 2 else
              "contiguous")
    with backend.context(), PassThrough():
        check_op(fn(), ref, dict(x=x), kwargs=kw, gen=gen, terms=_terms_of(name, kw, shape))


# ----------------------------------------------------------------------------------------------
# pykernels.nn modules vs torch.nn modules

_MODULES = [
    ("MaxPool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("MaxPool2d", dict(kernel_size=(2, 3), stride=(1, 2), dilation=2, ceil_mode=True,
                       return_indices=True)),
    ("AvgPool2d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                       count_include_pad=False)),
    ("AvgPool2d", dict(kernel_size=2, divisor_override=5)),
    ("AdaptiveAvgPool2d", dict(output_size=(1, 1))),
    ("AdaptiveAvgPool2d", dict(output_size=(None, 3))),
    ("AdaptiveMaxPool2d", dict(output_size=(3, 2))),
    ("AdaptiveMaxPool2d", dict(output_size=4, return_indices=True)),
]


@pytest.mark.parametrize("case", range(len(_MODULES)), ids=lambda i: _MODULES[i][0] + str(i))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nn_modules_match_torch(case, layout, gen):
    name, kw = _MODULES[case]
    ref = getattr(torch.nn, name)(**kw)
    pk = getattr(pykernels.nn, name)(**kw)
    assert isinstance(pk, getattr(torch.nn, name))
    assert repr(pk) == repr(ref)
    assert pk.state_dict().keys() == ref.state_dict().keys()
    x = image((2, 3, 11, 10), torch.float32, gen, layout=layout)
    xr, xp = x.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)
    yr, yp = ref(xr), pk(xp)
    if kw.get("return_indices"):
        (yr, ir), (yp, ip) = yr, yp
        assert ip.dtype == torch.int64 and (ip == ir).all(), "indices differ from torch's"
    assert yp.shape == yr.shape and yp.dtype == yr.dtype
    assert _memory_format(yp) == _memory_format(yr), (
        f"{_memory_format(yp)} vs torch {_memory_format(yr)}")
    terms = 9 if "kernel_size" in kw else 30
    assert_close(yp, yr, terms=terms, name="output")
    dy = make_tensor(yr.shape, torch.float32, gen)
    yr.backward(dy)
    yp.backward(dy)
    assert_close(xp.grad, xr.grad, terms=terms, name="grad of x")


def test_nn_modules_exported():
    for name in ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d"):
        assert name in pykernels.nn.__all__, name
    for name in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"):
        assert name in ops.__all__, name


# ----------------------------------------------------------------------------------------------
# bad inputs: exception type from SPEC_POOL.md, argument named in the message


def test_max_pool2d_bad_arguments(backend, gen):
    x = image((2, 3, 8, 8), torch.float32, gen, device=backend.device)
    bad = [
        (dict(kernel_size=3, padding=2), "padding"),             # padding > kernel/2
        (dict(kernel_size=(4, 2), padding=(2, 2)), "padding"),   # W: 2 > 2/2
        (dict(kernel_size=2, padding=-1), "padding"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=(3, -1)), "kernel_size"),
        (dict(kernel_size=2, stride=0), "stride"),
        (dict(kernel_size=2, stride=(1, -2)), "stride"),
        (dict(kernel_size=2, dilation=0), "dilation"),
        (dict(kernel_size=9), "kernel_size|output"),             # empty output: 8 < 9
        (dict(kernel_size=5, dilation=2), "kernel_size|dilation|output"),  # effective 9 > 8
    ]
    with backend.context():
        for kw, arg in bad:
            with pytest.raises(ValueError, match=arg):
                ops.max_pool2d(x, **kw)
                pytest.fail(f"no error for {_fmt(kw)}")


def test_avg_pool2d_bad_arguments(backend, gen):
    x = image((2, 3, 8, 8), torch.float32, gen, device=backend.device)
    bad = [
        (dict(kernel_size=3, padding=2), "padding"),
        (dict(kernel_size=(2, 5), padding=(1, 3)), "padding"),
        (dict(kernel_size=-2), "kernel_size"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=2, stride=0), "stride"),
        (dict(kernel_size=2, stride=-1), "stride"),
        (dict(kernel_size=(9, 2)), "kernel_size|output"),
        (dict(kernel_size=2, divisor_override=0), "divisor_override"),
    ]
    with backend.context():
        for kw, arg in bad:
            with pytest.raises(ValueError, match=arg):
                ops.avg_pool2d(x, **kw)
                pytest.fail(f"no error for {_fmt(kw)}")


def test_adaptive_bad_arguments(backend, gen):
    x = image((2, 3, 8, 8), torch.float32, gen, device=backend.device)
    with backend.context():
        for fn in (ops.adaptive_avg_pool2d, ops.adaptive_max_pool2d):
            for size in (0, (2, 0), (-1, 3)):
                with pytest.raises(ValueError, match="output_size"):
                    fn(x, size)


@pytest.mark.parametrize("shape", [(8, 8), (2, 2, 3, 8, 8), (5,)], ids=["2d", "5d", "1d"])
def test_wrong_rank(backend, shape, gen):
    x = make_tensor(shape, torch.float32, gen, device=backend.device)
    with backend.context():
        for call in (lambda: ops.max_pool2d(x, 2), lambda: ops.avg_pool2d(x, 2),
                     lambda: ops.adaptive_avg_pool2d(x, 2), lambda: ops.adaptive_max_pool2d(x, 2)):
            with pytest.raises(ValueError, match=r"\bx\b|input"):
                call()


def test_bad_dtypes(backend, gen):
    xi = torch.randint(-5, 5, (2, 3, 8, 8), generator=gen).to(backend.device)
    cases = [xi, xi.to(torch.int32), xi.to(torch.bool)]
    if backend.name == "cpp":
        cases.append(xi.to(torch.float16))  # the C++ kernels: float32 and float64 only
    with backend.context():
        for x in cases:
            for call in (lambda: ops.max_pool2d(x, 2), lambda: ops.avg_pool2d(x, 2),
                         lambda: ops.adaptive_avg_pool2d(x, 2),
                         lambda: ops.adaptive_max_pool2d(x, 2)):
                with pytest.raises(TypeError, match=r"\bx\b|input"):
                    call()


# ----------------------------------------------------------------------------------------------
# the Triton launchers themselves: every element of a poisoned, strided output buffer is written


def _buffer(shape, dtype, device, layout, fill):
    n, c, h, w = shape
    if layout == "channels_last":
        t = torch.empty(shape, dtype=dtype, device=device, memory_format=CL)
    elif layout == "strided":
        t = torch.empty((n, c, h, 2 * w), dtype=dtype, device=device)[..., 1::2]
    else:
        t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(fill)


@pytest.mark.backends("triton")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_triton_launchers_fill_poisoned_outputs(backend, dtype, layout, gen):
    from pykernels._backend import triton_kernels

    K = triton_kernels("pool2d")
    x = image((2, 3, 9, 8), dtype, gen, device=backend.device, layout=layout)
    xs = to_numpy(x)
    N, C, H, W = x.shape
    nan = float("nan")

    def buf(shape, fill=nan, dt=dtype):
        return _buffer(shape, dt, backend.device, layout, fill)

    # max k3 s2 p1 d1 ceil_mode -> 5 x 5 (ceil) output
    want, want_idx = reference.max_pool2d_forward(xs, 3, 2, 1, 1, True)
    out, idx = buf(want.shape), buf(want.shape, -7, torch.int64)
    K.max_pool2d_forward(x, out, idx, 3, 3, 2, 2, 1, 1, 1, 1)
    assert_close(out, want, name="max_pool2d_forward out")
    assert_close(idx, want_idx, name="max_pool2d_forward indices")
    dy = make_tensor(want.shape, dtype, gen, device=backend.device)
    grad_in = buf((N, C, H, W))
    K.max_pool2d_backward(dy, idx, grad_in)
    assert_close(grad_in, reference.max_pool2d_backward(to_numpy(dy), want_idx, xs.shape),
                 terms=9, name="max_pool2d_backward grad_in")

    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    want = reference.avg_pool2d_forward(xs, **kw)
    out = buf(want.shape)
    K.avg_pool2d_forward(x, out, 3, 3, 2, 2, 1, 1, False, 0)
    assert_close(out, want, terms=9, name="avg_pool2d_forward out")
    grad_in = buf((N, C, H, W))
    K.avg_pool2d_backward(dy, grad_in, 3, 3, 2, 2, 1, 1, False, 0)
    assert_close(grad_in, reference.avg_pool2d_backward(to_numpy(dy), xs.shape, **kw), terms=9,
                 name="avg_pool2d_backward grad_in")

    want = reference.adaptive_avg_pool2d_forward(xs, (4, 3))
    out = buf(want.shape)
    K.adaptive_avg_pool2d_forward(x, out)
    assert_close(out, want, terms=12, name="adaptive_avg_pool2d_forward out")
    dy = make_tensor(want.shape, dtype, gen, device=backend.device)
    grad_in = buf((N, C, H, W))
    K.adaptive_avg_pool2d_backward(dy, grad_in)
    assert_close(grad_in, reference.adaptive_avg_pool2d_backward(to_numpy(dy), xs.shape), terms=4,
                 name="adaptive_avg_pool2d_backward grad_in")

    want, want_idx = reference.adaptive_max_pool2d_forward(xs, (4, 3))
    out, idx = buf(want.shape), buf(want.shape, -7, torch.int64)
    K.adaptive_max_pool2d_forward(x, out, idx)
    assert_close(out, want, name="adaptive_max_pool2d_forward out")
    assert_close(idx, want_idx, name="adaptive_max_pool2d_forward indices")


# ----------------------------------------------------------------------------------------------
# the reference itself: spot checks against torch float64 (the full sweep is in the docstring's
# definition; these keep the oracle honest when someone edits it)


@pytest.mark.parametrize("values", ["normal", "ties", "special"])
def test_reference_matches_torch(values, gen):
    x = image((2, 3, 11, 9), torch.float64, gen, values=values)
    xs = to_numpy(x)
    for k, s, p, d, c in itertools.product((2, 3, 5), (1, 2), (0, 1), (1, 2), (False, True)):
        o, i = reference.max_pool2d_forward(xs, k, s, p, d, c)
        to, ti = F.max_pool2d(x, k, s, p, d, c, return_indices=True)
        assert_close(o, to, match_nonfinite=True, name=f"max k{k} s{s} p{p} d{d} c{c}")
        assert (i == ti.numpy()).all(), f"max indices k{k} s{s} p{p} d{d} c{c}"
        for cip in (True, False):
            a = reference.avg_pool2d_forward(xs, k, s, p, c, cip)
            assert_close(a, F.avg_pool2d(x, k, s, p, c, cip), match_nonfinite=True, terms=k * k,
                         name=f"avg k{k} s{s} p{p} c{c} cip{cip}")
    for size in ((3, 4), (5, 7), (1, 1), (None, 2)):
        assert_close(reference.adaptive_avg_pool2d_forward(xs, size),
                     F.adaptive_avg_pool2d(x, size), match_nonfinite=True, terms=30)
        o, i = reference.adaptive_max_pool2d_forward(xs, size)
        to, ti = F.adaptive_max_pool2d(x, size, return_indices=True)
        assert_close(o, to, match_nonfinite=True)
        assert (i == ti.numpy()).all()
    if values != "special":
        dy = make_tensor((2, 3, 6, 5), torch.float64, gen)
        xr = x.clone().requires_grad_(True)
        want, = torch.autograd.grad(F.max_pool2d(xr, 3, 2, 1, 1, True), xr, dy)
        _, i = reference.max_pool2d_forward(xs, 3, 2, 1, 1, True)
        assert_close(reference.max_pool2d_backward(to_numpy(dy), i, xs.shape), want)
        want, = torch.autograd.grad(F.avg_pool2d(xr, 3, 2, 1, True, False), xr, dy)
        assert_close(reference.avg_pool2d_backward(to_numpy(dy), xs.shape, 3, 2, 1, True, False),
                     want, terms=9)
