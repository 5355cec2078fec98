"""conv2d tests: pykernels.ops.conv2d / conv_transpose2d and the pykernels.nn.Conv2d /
ConvTranspose2d modules.

Every backend ("cpp", "triton" through the interpreter on CPU, "reference", and Triton on CUDA
when there is a GPU) is checked against the float64 NumPy reference (pykernels.reference.conv2d,
itself checked against torch in tests/test_reference_conv2d.py), forward and every gradient
(x, weight, bias), with tests/helpers.check_op. Shapes: x [N, C, H, W] (or [C, H, W]), weight
[K, C/groups, R, S] (conv_transpose2d: [C, K/groups, R, S]), out [N, K, OH, OW] with
OH = floor((H + pT + pB - dH*(R - 1) - 1) / sH) + 1.

What is covered:
  * sweeps: stride 1/2/3 x padding 0/1/2/"same"/"valid" x dilation 1/2 x groups 1/2/C
    (depthwise, multiplier 1 and 2) x kernels 1x1/3x3/5x5/7x7/3x5 on non-square images, with
    the fused activations cycling through the cases; conv_transpose2d the same with
    output_padding 0/1/2 (< max(stride, dilation)). All on the C++ backend, a spread subset on
    the reference backend and (tiny) in the Triton interpreter.
  * odd shapes: batch 1, unbatched [C, H, W], C = K = 1, 1x1 outputs, width 1, stride past the
    kernel (input pixels no tap reads: their gradient must be 0), even kernels with "same"
    (asymmetric padding), per-axis everything, prime sizes, channel counts off the vector width.
  * fused bias + relu/gelu/tanh/sigmoid, forward and all gradients, against torch too; frozen
    inputs (partial gradients); upstream gradients that are expanded / transposed / sliced.
  * layouts: channels_last in -> channels_last out (like torch); transposed, sliced and
    batch-sliced views of x; transposed / channels_last / sliced weights, strided bias.
  * the kernels themselves (C++ binding and Triton launchers, pykernels' SPEC entry points)
    on NaN-poisoned outputs in three layouts: every element written, untouched taps zero.
  * the C++ multi-block paths (> 512 reduction taps, > 3072 output columns), 1 vs 2 threads.
  * gradcheck in float64 (cpp, reference; Triton in fast mode on a tiny case), opcheck on
    every registered conv op with the arguments the public ops really pass, the registered
    op's autograd formula (under a dispatch mode), torch.compile(fullgraph=True).
  * modules: state_dict keys/shapes, load_state_dict both ways, forward and gradients equal to
    torch.nn.Conv2d / ConvTranspose2d (output_size too), padding_mode, a small CNN trained a
    few SGD steps equal to the torch model.
  * bad inputs: ValueError naming the argument (groups, weight, x, padding, stride, dilation,
    output_padding, bias, activation), TypeError for dtypes (SPEC_GEMM / SPEC_POOL convention).

Run: TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_conv2d.py -q
"""

import itertools
import math
import re
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pykernels
import pykernels.nn
import pykernels.ops as ops
from pykernels import reference
from helpers import (PassThrough, RecordPykernelsCalls, Reference, assert_close, check_op, make_tensor,
                     opcheck_recorded, poison, to_numpy)

CL = torch.channels_last
ACTIVATIONS = [None, "relu", "gelu", "tanh", "sigmoid"]
_ACT_CODE = {None: 0, "none": 0, "relu": 1, "gelu": 2, "tanh": 3, "sigmoid": 4}

# torch's own performance note for padding="same" with even kernels: not ours to show
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

_TORCH_ACT = {
    None: lambda z: z,
    "relu": torch.relu,
    "gelu": F.gelu,  # exact erf form (approximate="none")
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


# ----------------------------------------------------------------------------------------------
# the reference in check_op's calling convention: forward(x, weight, bias, **kwargs),
# backward(dout, x, weight, bias, **kwargs) -> (dx, dw, db)


def _ref_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                activation=None):
    z = reference.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
    return reference.activation_forward(z, activation)


def _ref_conv2d_grad(dout, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                     activation=None):
    z = reference.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
    dz = np.asarray(dout) * reference.activation_derivative(z, activation)  # [N, K, OH, OW]
    return reference.conv2d_backward(dz, x, weight, stride, padding, dilation, groups,
                                     has_bias=bias is not None)


def _ref_conv_t_grad(dout, x, weight, bias=None, **kwargs):
    return reference.conv_transpose2d_backward(dout, x, weight, has_bias=bias is not None,
                                               **kwargs)


CONV2D = Reference(_ref_conv2d, _ref_conv2d_grad)
CONV_T = Reference(reference.conv_transpose2d_forward, _ref_conv_t_grad)


def torch_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                 activation=None):
    return _TORCH_ACT[activation](F.conv2d(x, weight, bias, stride, padding, dilation, groups))


def torch_conv_t(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                 dilation=1):
    return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)


# ----------------------------------------------------------------------------------------------
# sizes and products per element (the `terms` of the tolerance)


def _pair(v):
    return (v[0], v[0]) if isinstance(v, (tuple, list)) and len(v) == 1 else (
        tuple(v) if isinstance(v, (tuple, list)) else (v, v))


def conv2d_out_hw(x_shape, w_shape, stride=1, padding=0, dilation=1, **_):
    """(OH, OW) of conv2d: floor((H + pT + pB - d*(R - 1) - 1) / s) + 1 per axis."""
    H, W = x_shape[-2:]
    if padding == "same":
        return H, W
    p = (0, 0) if padding == "valid" else _pair(padding)
    s, d = _pair(stride), _pair(dilation)
    return tuple(reference.conv2d_output_size(n, k, s_, p_, d_)
                 for n, k, s_, p_, d_ in zip((H, W), w_shape[2:], s, p, d))


def conv_t_out_hw(x_shape, w_shape, stride=1, padding=0, output_padding=0, dilation=1, **_):
    """(OH, OW) of conv_transpose2d: (H - 1)*s - 2p + d*(R - 1) + output_padding + 1."""
    s, p, op, d = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)
    return tuple(reference.conv_transpose2d_output_size(n, k, *a)
                 for n, k, a in zip(x_shape[-2:], w_shape[2:], zip(s, p, op, d)))


def conv2d_terms(x_shape, w_shape, kw):
    """out sums C/g*R*S products; grad x at most K/g*R*S; grad weight and bias N*OH*OW."""
    K, Cg, R, S = w_shape
    groups = kw.get("groups", 1)
    n = x_shape[0] if len(x_shape) == 4 else 1
    OH, OW = conv2d_out_hw(x_shape, w_shape, **kw)
    return {"out": Cg * R * S, "x": K // groups * R * S, "weight": n * OH * OW,
            "bias": n * OH * OW}


def conv_t_terms(x_shape, w_shape, kw):
    """out sums at most C/g*R*S products; grad x K/g*R*S; grad weight N*H*W; bias N*OH*OW."""
    C, Kg, R, S = w_shape
    groups = kw.get("groups", 1)
    n = x_shape[0] if len(x_shape) == 4 else 1
    OH, OW = conv_t_out_hw(x_shape, w_shape, **kw)
    return {"out": C // groups * R * S, "x": Kg * R * S,
            "weight": n * x_shape[-2] * x_shape[-1], "bias": n * OH * OW}


# ----------------------------------------------------------------------------------------------
# inputs


def image(shape, dtype, gen, *, device="cpu", layout="contiguous", scale=1.0, dyadic=False):
    """Fresh random values of `shape` ([N, C, H, W], [C, H, W] or a weight [K, C, R, S]) in a
    memory layout: contiguous | channels_last | strided (every other column) | transposed (H and
    W swapped in memory) | channel_slice (every other channel of 2C) | channels_last_slice (the
    same from a channels_last tensor: not dense) | batch_slice (every other image of 2N)."""
    shape = tuple(shape)
    kw = dict(scale=scale, dyadic=dyadic)
    if layout in ("contiguous", "strided", "transposed"):
        x = make_tensor(shape, torch.float64, gen, layout=layout, **kw)
    elif layout == "channels_last":
        x = make_tensor(shape, torch.float64, gen, **kw).contiguous(memory_format=CL)
    elif layout in ("channel_slice", "channels_last_slice"):
        n, c, h, w = shape
        x = make_tensor((n, 2 * c, h, w), torch.float64, gen, **kw)
        if layout == "channels_last_slice":
            x = x.contiguous(memory_format=CL)
        x = x[:, 1::2]
    elif layout == "batch_slice":
        x = make_tensor((2 * shape[0],) + shape[1:], torch.float64, gen, **kw)[::2]
    else:
        raise AssertionError(f"unknown layout {layout}")
    # .to() keeps the strides of a dense tensor (channels_last stays channels_last) but not of
    # a sliced view: that one is rebuilt with the same strides (its skipped elements NaN)
    if layout in ("contiguous", "channels_last"):
        x = x.to(dtype=dtype, device=device)
    else:
        x = _same_view(x, dtype, device)
    assert tuple(x.shape) == shape
    return x


def _same_view(x, dtype, device):
    """x's values in dtype/device, in a tensor with x's strides (and storage offset)."""
    base = torch.empty(x.untyped_storage().nbytes() // x.element_size(), dtype=dtype,
                       device=device).fill_(float("nan"))
    out = base.as_strided(x.shape, x.stride(), x.storage_offset())
    out.copy_(x)
    return out


def memory_format(t):
    """'contiguous', 'channels_last' or 'strided' (ambiguous shapes count as contiguous)."""
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=CL):
        return "channels_last"
    return "strided"


def conv2d_inputs(x_shape, w_shape, dtype, gen, *, bias=True, activation=None, device="cpu",
                  layout="contiguous", w_layout="contiguous", b_layout="contiguous"):
    """x, weight scaled by 1/sqrt(C/g*R*S) (pre-activations O(1): tanh/sigmoid/gelu are not
    saturated), bias. relu gets dyadic values: exact sums in every precision, so no backend
    lands on the other side of the kink from the reference."""
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]
    kw = dict(device=device, dyadic=activation == "relu")
    x = image(x_shape, dtype, gen, layout=layout, **kw)
    w = image(w_shape, dtype, gen, layout=w_layout, scale=1 / math.sqrt(fan_in), **kw)
    b = None
    if bias:
        b = make_tensor((w_shape[0],), dtype, gen, layout=b_layout, **kw)
    return dict(x=x, weight=w, bias=b)


def _fmt(kwargs):
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _spread(combos, n):
    """n combinations evenly spread over the list, first and last included."""
    if len(combos) <= n:
        return combos
    return [combos[round(i * (len(combos) - 1) / (n - 1))] for i in range(n)]


def _pick(combos, n, salt):
    """n combinations evenly spaced over the list, starting at an offset that depends on
    `salt` (the kernel size): the interpreter's few cases differ from one kernel to the next
    instead of always being the first and the last."""
    if len(combos) <= n:
        return combos
    start = salt * len(combos) // (5 * n) + salt  # 5 kernel sizes share the list's regions
    return [combos[(start + i * len(combos) // n) % len(combos)] for i in range(n)]


def check_conv2d(backend, dtype, gen, x_shape, w_shape, kw, *, bias=True, layout="contiguous",
                 w_layout="contiguous", b_layout="contiguous", grad=True, with_torch=False):
    """check_op of ops.conv2d on fresh inputs (forward, grads of x, weight, bias)."""
    inputs = conv2d_inputs(x_shape, w_shape, dtype, gen, bias=bias,
                           activation=kw.get("activation"), device=backend.device,
                           layout=layout, w_layout=w_layout, b_layout=b_layout)
    with backend.context():
        return check_op(ops.conv2d, CONV2D, inputs, kwargs=kw, gen=gen, grad=grad,
                        terms=conv2d_terms(x_shape, w_shape, kw),
                        torch_fn=torch_conv2d if with_torch else None)


def check_conv_t(backend, dtype, gen, x_shape, w_shape, kw, *, bias=True, layout="contiguous",
                 w_layout="contiguous", grad=True, with_torch=False):
    """check_op of ops.conv_transpose2d on fresh inputs (forward, grads of x, weight, bias)."""
    groups = kw.get("groups", 1)
    C, Kg, R, S = w_shape
    x = image(x_shape, dtype, gen, device=backend.device, layout=layout)
    w = image(w_shape, dtype, gen, device=backend.device, layout=w_layout,
              scale=1 / math.sqrt(C // groups * R * S))
    b = make_tensor((Kg * groups,), dtype, gen, device=backend.device) if bias else None
    with backend.context():
        return check_op(ops.conv_transpose2d, CONV_T, dict(x=x, weight=w, bias=b), kwargs=kw,
                        gen=gen, grad=grad, terms=conv_t_terms(x_shape, w_shape, kw),
                        torch_fn=torch_conv_t if with_torch else None)


def _collect(cases, run):
    """Runs every case, then reports every failing one together."""
    failures = []
    for desc, args in cases:
        try:
            run(*args)
        except Exception as e:  # noqa: BLE001 - collected: report every failing case
            failures.append(f"[{desc}]: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}")
    assert not failures, f"{len(failures)} of {len(cases)} cases fail:\n" + "\n".join(
        failures[:25])


# ----------------------------------------------------------------------------------------------
# conv2d sweep: stride x padding x dilation x groups, per kernel size

_KERNELS = [(1, 1), (3, 3), (5, 5), (7, 7), (3, 5)]
# the interpreter's cases, (stride, padding, dilation, groups) per kernel: between them every
# stride, padding, dilation and groups value, each kernel with a different mix
_INTERPRETED = {
    (1, 1): [(1, 0, 1, 1), (2, 1, 2, 2)],
    (3, 3): [(1, "same", 2, 1), (2, 1, 1, "dw")],
    (5, 5): [(1, 2, 1, 2), (3, 0, 2, "dw")],
    (7, 7): [(2, 2, 1, 1), (1, "valid", 2, 2)],
    (3, 5): [(1, "same", 1, "dw"), (3, 1, 2, 1)],
}


def _conv2d_sweep_cases(kernel, interpreted):
    R, S = kernel
    C = 4
    cases = []
    combos = itertools.product((1, 2, 3), (0, 1, 2, "same", "valid"), (1, 2), (1, 2, "dw"))
    for i, (s, p, d, g) in enumerate(combos):
        if p == "same" and s != 1:
            continue  # torch: padding='same' is not supported for strided convolutions
        groups = C if g == "dw" else g
        K = (8 if i % 2 else 4) if g == "dw" else 6  # depthwise multiplier 2 / 1
        # non-square image just large enough for the dilated kernel plus a few outputs
        if interpreted:
            N, H, W = 1, d * (R - 1) + 2 + i % 2, d * (S - 1) + 3
        else:
            N, H, W = 1 + i % 2, d * (R - 1) + 5 + i % 3, d * (S - 1) + 3 + i % 2
        kw = dict(stride=s, padding=p, dilation=d, groups=groups,
                  activation=ACTIVATIONS[i % len(ACTIVATIONS)])
        if interpreted and (s, p, d, g) not in _INTERPRETED[kernel]:
            continue
        cases.append(((N, C, H, W), (K, C // groups, R, S), kw, i % 3 != 0))
    return cases


@pytest.mark.parametrize("kernel", _KERNELS, ids=lambda k: f"k{k[0]}x{k[1]}")
def test_conv2d_sweep(backend, dtype, kernel, gen):
    cases = _conv2d_sweep_cases(kernel, backend.interpreted)
    if backend.name == "reference":  # the oracle through the ops layer: plumbing only
        cases = _spread(cases, 5)
    elif dtype == torch.float64:  # the same C++ code as float32, instantiated for double
        cases = _spread(cases, 20)

    def run(x_shape, w_shape, kw, bias):
        check_conv2d(backend, dtype, gen, x_shape, w_shape, kw, bias=bias)

    _collect([(f"x{xs} w{ws} {_fmt(kw)} bias={b}", (xs, ws, kw, b)) for xs, ws, kw, b in cases],
             run)


# ----------------------------------------------------------------------------------------------
# odd shapes: (x shape, weight shape, kwargs, interpreted too?)

_SHAPES = [
    ((1, 3, 9, 7), (5, 3, 3, 3), dict(padding=1), True),                    # batch 1
    ((3, 10, 8), (6, 3, 3, 3), dict(stride=2, padding=1), True),            # unbatched [C, H, W]
    ((2, 1, 11, 6), (1, 1, 5, 2), dict(stride=(2, 1), padding=(2, 0)), True),  # C = K = 1
    ((2, 3, 5, 7), (4, 3, 5, 7), dict(), True),                             # 1x1 output
    ((1, 2, 5, 7), (3, 2, 7, 9), dict(padding=1), False),                   # kernel = padded x
    ((2, 3, 17, 1), (4, 3, 5, 1), dict(stride=2, padding=(1, 0)), False),   # width 1
    ((2, 3, 10, 9), (4, 3, 1, 1), dict(stride=3), True),    # stride > kernel: untouched pixels
    ((2, 3, 7, 10), (5, 3, 2, 4), dict(padding="same", dilation=(1, 3)), True),  # asym. "same"
    ((1, 6, 13, 11), (12, 2, 3, 4), dict(stride=(1, 2), padding=(2, 0), dilation=(2, 1),
                                         groups=3), False),                 # per-axis everything
    ((2, 6, 11, 9), (12, 1, 3, 3), dict(stride=2, padding=1, groups=6), False),  # depthwise x2
    ((3, 5, 23, 19), (7, 5, 7, 7), dict(stride=2, padding=3), False),       # stem-like, primes
    ((2, 33, 9, 10), (17, 33, 3, 3), dict(padding=1), False),               # C, K off SIMD width
    ((1, 3, 31, 37), (2, 3, 5, 5), dict(padding=2), False),                 # a big plane
    ((2, 18, 8, 9), (20, 18, 1, 1), dict(stride=2), False),                 # 1x1 stride 2
]


@pytest.mark.parametrize("case", range(len(_SHAPES)))
def test_conv2d_shapes(backend, dtype, case, gen):
    x_shape, w_shape, kw, interp = _SHAPES[case]
    if backend.interpreted and not interp:
        pytest.skip("too large for the Triton interpreter")
    if backend.name == "reference" and not interp:
        pytest.skip("the oracle through the ops layer: a subset")
    kw = dict(kw, activation=ACTIVATIONS[case % len(ACTIVATIONS)])
    check_conv2d(backend, dtype, gen, x_shape, w_shape, kw, bias=case % 4 != 3, with_torch=True)


# ----------------------------------------------------------------------------------------------
# fused bias + activation, every backend, against torch too


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_conv2d_activation(backend, dtype, activation, bias, gen):
    if backend.interpreted and not bias and activation is not None:
        pytest.skip("the interpreter runs a subset")
    x_shape, w_shape = ((1, 3, 6, 5), (4, 3, 3, 3)) if backend.interpreted else (
        (2, 5, 9, 8), (7, 5, 3, 3))
    kw = dict(stride=1, padding=1, activation=activation)
    check_conv2d(backend, dtype, gen, x_shape, w_shape, kw, bias=bias, with_torch=True)


@pytest.mark.parametrize("needs", [("x",), ("weight",), ("bias",), ("weight", "bias")],
                         ids="+".join)
def test_conv2d_partial_grads(backend, dtype, needs, gen):
    # frozen layers and a frozen input: only some inputs require grad
    if backend.interpreted and needs == ("weight",):
        pytest.skip("the interpreter runs a subset")
    x_shape, w_shape = ((1, 4, 6, 5), (4, 2, 3, 3)) if backend.interpreted else (
        (2, 4, 9, 8), (6, 2, 3, 3))
    kw = dict(stride=2, padding=1, groups=2, activation="gelu")
    check_conv2d(backend, dtype, gen, x_shape, w_shape, kw, grad=needs, with_torch=True)


@pytest.mark.parametrize("grad_layout", ["expanded", "transposed", "channels_last", "sliced"])
def test_conv2d_strided_grad_out(backend, dtype, grad_layout, gen):
    # the upstream gradient is rarely a fresh contiguous tensor: y.sum() gives an expanded one
    # (every stride 0); transposes and slices downstream give strided ones
    if backend.interpreted and grad_layout in ("channels_last", "sliced"):
        pytest.skip("the interpreter runs a subset")
    x_shape, w_shape = ((1, 3, 6, 5), (4, 3, 3, 3)) if backend.interpreted else (
        (2, 3, 9, 8), (5, 3, 3, 3))
    kw = dict(stride=1, padding=1, activation="tanh")
    inputs = conv2d_inputs(x_shape, w_shape, dtype, gen, device=backend.device)
    pk = [v.detach().clone().requires_grad_(True) for v in inputs.values()]
    tt = [v.detach().clone().requires_grad_(True) for v in inputs.values()]
    with backend.context():
        y = ops.conv2d(*pk, **kw)
    yt = torch_conv2d(*tt, **kw)
    if grad_layout == "expanded":
        dy = torch.full((), 1.5, dtype=dtype, device=backend.device).expand(y.shape)
    elif grad_layout == "transposed":
        dy = make_tensor(y.shape, dtype, gen, device=backend.device, layout="transposed")
    elif grad_layout == "channels_last":
        dy = make_tensor(y.shape, dtype, gen, device=backend.device).contiguous(memory_format=CL)
    else:
        dy = make_tensor((y.shape[0], 2 * y.shape[1]) + y.shape[2:], dtype, gen,
                         device=backend.device)[:, ::2]
    with backend.context():
        grads = torch.autograd.grad(y, pk, dy)
    tgrads = torch.autograd.grad(yt, tt, dy)
    terms = conv2d_terms(x_shape, w_shape, kw)
    for name, g, t in zip(("x", "weight", "bias"), grads, tgrads):
        assert_close(g, t, terms=terms[name], name=f"grad of {name}, {grad_layout} grad_out")


def test_conv2d_no_grad_forward(backend, dtype, gen):
    # no gradient needed: nothing saved (gelu's pre-activation included), same values
    x_shape, w_shape = ((1, 3, 6, 5), (4, 3, 3, 3)) if backend.interpreted else (
        (2, 3, 9, 8), (5, 3, 3, 3))
    for activation in ("gelu", "sigmoid"):
        inputs = conv2d_inputs(x_shape, w_shape, dtype, gen, device=backend.device)
        with backend.context(), torch.no_grad():
            y = ops.conv2d(*inputs.values(), padding=1, activation=activation)
        want = _ref_conv2d(*(to_numpy(v) for v in inputs.values()), padding=1,
                           activation=activation)
        assert isinstance(y, torch.Tensor) and y.dtype == dtype and not y.requires_grad
        assert_close(y, want, terms=27, name=activation)


def test_conv2d_empty_batch(backend, dtype, gen):
    # N = 0: an empty result of the right shape, like torch, and empty gradients
    x = image((0, 3, 7, 8), dtype, gen, device=backend.device).requires_grad_(True)
    w = make_tensor((4, 3, 3, 3), dtype, gen, device=backend.device, requires_grad=True)
    b = make_tensor((4,), dtype, gen, device=backend.device, requires_grad=True)
    with backend.context():
        out = ops.conv2d(x, w, b, stride=2, padding=1)
        gx, gw, gb = torch.autograd.grad(out, (x, w, b), torch.ones_like(out))
    want = F.conv2d(x.detach(), w.detach(), b.detach(), stride=2, padding=1)
    assert out.shape == want.shape and out.dtype == dtype
    assert gx.shape == x.shape
    assert_close(gw, torch.zeros_like(gw), name="grad of weight (no images)")
    assert_close(gb, torch.zeros_like(gb), name="grad of bias (no images)")


def test_conv2d_argument_forms(gen):
    # lists, 1-element sequences and torch.Size work like ints/pairs, as in torch
    x = image((2, 4, 11, 10), torch.float32, gen)
    xt = make_tensor((2, 6, 5, 4), torch.float32, gen)
    w = make_tensor((6, 2, 3, 2), torch.float32, gen)
    cases = [
        dict(stride=[2, 1], padding=[1, 0], dilation=[1, 2], groups=2),
        dict(stride=(2,), padding=(1,), dilation=(2,), groups=2),
        dict(stride=torch.Size([1, 2]), padding="valid", groups=2),
    ]
    for kw in cases:
        assert_close(ops.conv2d(x, w, **kw), F.conv2d(x, w, **kw), terms=12, name=_fmt(kw))
    cases = [
        dict(stride=[2, 1], padding=[1, 0], output_padding=[1, 0], dilation=[1, 2], groups=2),
        dict(stride=(2,), padding=(1,), output_padding=(1,), dilation=(1,), groups=2),
        dict(stride=torch.Size([1, 2]), output_padding=torch.Size([0, 1]), groups=2),
    ]
    for kw in cases:
        assert_close(ops.conv_transpose2d(xt, w, **kw), F.conv_transpose2d(xt, w, **kw),
                     terms=18, name=f"transpose {_fmt(kw)}")


# ----------------------------------------------------------------------------------------------
# memory layouts: channels_last in -> channels_last out (like torch), strided views read right

# x layout, weight layout, bias layout
_LAYOUT_CASES = [
    ("channels_last", "contiguous", "contiguous"),
    ("channels_last", "channels_last", "strided"),
    ("strided", "contiguous", "contiguous"),
    ("transposed", "transposed", "contiguous"),
    ("channel_slice", "strided", "strided"),
    ("channels_last_slice", "contiguous", "contiguous"),
    ("batch_slice", "channel_slice", "contiguous"),
    ("contiguous", "channels_last", "contiguous"),
]


@pytest.mark.parametrize("case", range(len(_LAYOUT_CASES)),
                         ids=lambda i: "x_{}-w_{}-b_{}".format(*_LAYOUT_CASES[i]))
@pytest.mark.parametrize("kernel", [(3, 3), (1, 1)], ids=["k3x3", "k1x1"])
def test_conv2d_layouts(backend, dtype, case, kernel, gen):
    layout, w_layout, b_layout = _LAYOUT_CASES[case]
    if backend.name != "cpp" and (case not in (0, 3) or kernel == (1, 1)):
        pytest.skip("the interpreter and the oracle run a subset")
    R, S = kernel
    x_shape, w_shape = ((1, 4, 6, 5), (6, 2, R, S)) if backend.interpreted else (
        (2, 6, 11, 9), (8, 3, R, S))
    kw = dict(stride=(2, 1) if R == 3 else 2, padding=1 if R == 3 else 0, groups=2,
              activation="sigmoid")
    outs = check_conv2d(backend, dtype, gen, x_shape, w_shape, kw, layout=layout,
                        w_layout=w_layout, b_layout=b_layout, with_torch=True)
    if layout in ("contiguous", "channels_last"):
        fmt = memory_format(outs[0])
        assert fmt == layout, (f"output memory format {fmt} (strides {outs[0].stride()}) for a "
                               f"{layout} x: the output keeps x's memory format")


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "channel_slice"])
def test_conv_transpose2d_layouts(backend, dtype, layout, gen):
    if backend.interpreted and layout == "channel_slice":
        pytest.skip("the interpreter runs a subset")
    x_shape, w_shape = ((1, 4, 4, 3), (4, 3, 3, 3)) if backend.interpreted else (
        (2, 6, 7, 5), (6, 4, 3, 2))
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    w_layout = "channels_last" if layout == "channels_last" else "strided"
    outs = check_conv_t(backend, dtype, gen, x_shape, w_shape, kw, layout=layout,
                        w_layout=w_layout, with_torch=True)
    if layout == "channels_last":
        fmt = memory_format(outs[0])
        assert fmt == "channels_last", (f"output memory format {fmt} (strides "
                                        f"{outs[0].stride()}) for a channels_last x")


# ----------------------------------------------------------------------------------------------
# conv_transpose2d: stride x padding x output_padding x dilation x groups, per kernel size

_T_KERNELS = [(1, 1), (3, 3), (4, 4), (5, 5), (3, 5)]


def _conv_t_sweep_cases(kernel, interpreted):
    R, S = kernel
    C = 4
    cases = []
    combos = itertools.product((1, 2, 3), (0, 1, 2), (0, 1, 2), (1, 2), (1, 2, "dw"))
    for i, (s, p, op, d, g) in enumerate(combos):
        if op >= max(s, d):
            continue  # torch: output_padding must be smaller than either stride or dilation
        N, H, W = (1, 3 + i % 2, 2 + i % 3) if interpreted else (1 + i % 2, 5 + i % 2, 4 + i % 3)
        kw = dict(stride=s, padding=p, output_padding=op, dilation=d,
                  groups=C if g == "dw" else g)
        if min(conv_t_out_hw((H, W), (C, 1, R, S), **kw)) <= 0:
            continue  # the padding crops the whole output
        Kg = (1 + i % 2) if g == "dw" else 6 // g
        cases.append(((N, C, H, W), (C, Kg, R, S), kw, i % 4 != 0))
    return cases


@pytest.mark.parametrize("kernel", _T_KERNELS, ids=lambda k: f"k{k[0]}x{k[1]}")
def test_conv_transpose2d_sweep(backend, dtype, kernel, gen):
    cases = _conv_t_sweep_cases(kernel, backend.interpreted)
    if backend.interpreted:
        cases = _pick(cases, 1, _T_KERNELS.index(kernel))
    elif backend.name == "reference":
        cases = _spread(cases, 4)
    elif dtype == torch.float64:
        cases = _spread(cases, 20)

    def run(x_shape, w_shape, kw, bias):
        check_conv_t(backend, dtype, gen, x_shape, w_shape, kw, bias=bias)

    _collect([(f"x{xs} w{ws} {_fmt(kw)} bias={b}", (xs, ws, kw, b)) for xs, ws, kw, b in cases],
             run)


_T_SHAPES = [
    ((3, 4, 5), (3, 2, 3, 3), dict(stride=2, padding=1, output_padding=1), True),  # unbatched
    ((1, 1, 4, 3), (1, 1, 1, 1), dict(stride=3, output_padding=2), True),  # rows no tap writes
    ((2, 6, 5, 4), (6, 4, 3, 4), dict(stride=(1, 3), padding=(0, 2), output_padding=(1, 0),
                                      dilation=(2, 1), groups=3), True),   # op 1 via dilation
    ((2, 8, 7, 7), (8, 8, 4, 4), dict(stride=2, padding=1), False),        # the GAN up-block
    ((1, 6, 9, 11), (6, 2, 3, 3), dict(stride=3, padding=2, output_padding=2, groups=6), False),
    ((3, 7, 1, 1), (7, 5, 4, 3), dict(stride=2), True),  # a 1 x 1 image: the GEMM path (GAN stem)
]


@pytest.mark.parametrize("case", range(len(_T_SHAPES)))
def test_conv_transpose2d_shapes(backend, dtype, case, gen):
    x_shape, w_shape, kw, interp = _T_SHAPES[case]
    if backend.interpreted and not interp:
        pytest.skip("too large for the Triton interpreter")
    check_conv_t(backend, dtype, gen, x_shape, w_shape, kw, bias=case != 1, with_torch=True)


# ----------------------------------------------------------------------------------------------
# the kernels themselves (SPEC entry points): every element of a poisoned output written


class _CppKernels:
    """The C++ binding (pykernels._C) behind the Triton launchers' signatures: pointers as ints,
    strides in elements, geometry of the FORWARD conv; 0 for an absent pointer."""

    def __init__(self):
        from pykernels import _C
        self.C = _C

    @staticmethod
    def _t(t):
        return (0, 0, 0, 0, 0) if t is None else (t.data_ptr(), *t.stride())

    @staticmethod
    def _v(t):
        return (0, 0) if t is None else (t.data_ptr(), t.stride(0))

    @staticmethod
    def _geo(N, C, H, W, K, R, S, OH, OW, groups, stride, padding, dilation):
        return (N, C, H, W, K, R, S, OH, OW, groups, *stride, *padding, *dilation)

    def conv2d_forward(self, x, weight, out, bias=None, stride=(1, 1), padding=(0, 0),
                       dilation=(1, 1), groups=1, activation="none", preact=None):
        N, C, H, W = x.shape
        K, _, R, S = weight.shape
        geo = self._geo(N, C, H, W, K, R, S, *out.shape[2:], groups, stride, padding, dilation)
        self.C.conv2d_forward(x.dtype == torch.float64, *geo, *self._t(x), *self._t(weight),
                              *self._v(bias), _ACT_CODE[activation], *self._t(out),
                              *self._t(preact))

    def conv2d_backward_input(self, grad_out, weight, grad_in, stride, padding, dilation, groups,
                              bias=None):
        N, C, H, W = grad_in.shape
        K, _, R, S = weight.shape
        geo = self._geo(N, C, H, W, K, R, S, *grad_out.shape[2:], groups, stride, padding,
                        dilation)
        self.C.conv2d_backward_input(grad_in.dtype == torch.float64, *geo, *self._t(grad_out),
                                     *self._t(weight), *self._t(grad_in), *self._v(bias))

    def conv2d_backward_weight(self, grad_out, x, grad_weight, stride, padding, dilation, groups):
        N, C, H, W = x.shape
        K, _, R, S = grad_weight.shape
        geo = self._geo(N, C, H, W, K, R, S, *grad_out.shape[2:], groups, stride, padding,
                        dilation)
        self.C.conv2d_backward_weight(x.dtype == torch.float64, *geo, *self._t(grad_out),
                                      *self._t(x), *self._t(grad_weight))

    def conv2d_backward_bias(self, grad_out, saved, activation, dz=None, dbias=None):
        N, K, OH, OW = grad_out.shape
        self.C.conv2d_backward_bias(grad_out.dtype == torch.float64, N, K, OH, OW,
                                    *self._t(grad_out), *self._t(saved), _ACT_CODE[activation],
                                    *self._t(dz), *self._v(dbias))


def _buffer(shape, dtype, device, layout):
    """A NaN-filled output buffer in a layout: contiguous | channels_last | strided."""
    if layout == "channels_last":
        t = torch.empty(shape, dtype=dtype, device=device, memory_format=CL)
    elif layout == "strided":
        t = torch.empty(tuple(shape[:-1]) + (2 * shape[-1],), dtype=dtype, device=device)[..., 1::2]
    else:
        t = torch.empty(shape, dtype=dtype, device=device)
    return poison(t)


# (x shape, weight shape, stride, dilation, groups, padding for the reference): an even kernel
# with "same" (top/left padding only: the kernels get OH, OW from the output), and stride 3
# past a (1, 2) kernel (input pixels no tap reaches: grad_in must be written as 0 there)
_KERNEL_GEOMETRIES = [
    ((2, 3, 7, 8), (4, 3, 2, 3), (1, 1), (1, 2), 1, "same"),
    ((2, 4, 10, 9), (6, 2, 1, 2), (3, 3), (1, 1), 2, (1, 0)),
]


@pytest.mark.backends("cpp", "triton")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("geometry", [0, 1], ids=["same-even", "stride3-gaps"])
def test_kernels_fill_poisoned_outputs(backend, dtype, layout, geometry, gen):
    if backend.interpreted and (geometry + ["contiguous", "channels_last", "strided"].index(
            layout)) % 2:
        pytest.skip("the interpreter runs a subset")
    if backend.name == "cpp":
        K = _CppKernels()
    else:
        from pykernels._backend import triton_kernels
        K = triton_kernels("conv2d")
    x_shape, w_shape, s, d, g, pad = _KERNEL_GEOMETRIES[geometry]
    dev = backend.device
    x = image(x_shape, dtype, gen, device=dev, layout=layout)
    w = image(w_shape, dtype, gen, device=dev, layout="strided" if layout == "strided" else
              "contiguous", scale=0.5)
    b = make_tensor((2 * w_shape[0],), dtype, gen, device=dev)[::2]  # bias of stride 2
    xs, ws, bs = to_numpy(x), to_numpy(w), to_numpy(b)
    args = dict(stride=s, dilation=d, groups=g)
    if pad == "same":  # top/left = total // 2
        top_left = tuple(dd * (k - 1) // 2 for dd, k in zip(d, w_shape[2:]))
    else:
        top_left = pad
    terms = conv2d_terms(x_shape, w_shape, dict(args, padding=pad))

    z = reference.conv2d_forward(xs, ws, bs, padding=pad, **args)  # [N, K, OH, OW]
    out, preact = _buffer(z.shape, dtype, dev, layout), _buffer(z.shape, dtype, dev, layout)
    K.conv2d_forward(x, w, out, b, s, top_left, d, g, "gelu", preact)
    assert_close(preact, z, terms=terms["out"], name="forward preact")
    assert_close(out, reference.activation_forward(z, "gelu"), terms=terms["out"],
                 name="forward out (gelu)")
    out = _buffer(z.shape, dtype, dev, layout)
    K.conv2d_forward(x, w, out, None, s, top_left, d, g, "none", None)
    assert_close(out, z - bs[None, :, None, None], terms=terms["out"], name="forward, no bias")

    dy = image(z.shape, dtype, gen, device=dev, layout=layout)
    dys = to_numpy(dy)
    dx_want, dw_want, _ = reference.conv2d_backward(dys, xs, ws, padding=pad, **args)
    dx = _buffer(x_shape, dtype, dev, layout)
    K.conv2d_backward_input(dy, w, dx, s, top_left, d, g)
    assert_close(dx, dx_want, terms=terms["x"], name="backward_input")
    cb = make_tensor((x_shape[1],), dtype, gen, device=dev)  # conv_transpose2d's bias
    dx = _buffer(x_shape, dtype, dev, layout)
    K.conv2d_backward_input(dy, w, dx, s, top_left, d, g, bias=cb)
    assert_close(dx, dx_want + to_numpy(cb)[None, :, None, None], terms=terms["x"],
                 name="backward_input + bias")
    dw = _buffer(w_shape, dtype, dev, layout)
    K.conv2d_backward_weight(dy, x, dw, s, top_left, d, g)
    assert_close(dw, dw_want, terms=terms["weight"], name="backward_weight")

    db_want = dys.sum(axis=(0, 2, 3))
    for act in ("gelu", "tanh", "relu", "sigmoid"):
        saved_np = z if act == "gelu" else reference.activation_forward(z, act)  # gelu: preact
        saved = image(z.shape, dtype, gen, device=dev, layout=layout)
        with torch.no_grad():
            saved.copy_(torch.from_numpy(saved_np))
        dz_want = dys * reference.activation_derivative(z, act)
        if act == "relu":  # y > 0 from the rounded y: the same decision as z > 0 here
            dz_want = dys * (to_numpy(saved) > 0)
        dz, dbias = _buffer(z.shape, dtype, dev, layout), poison(torch.empty(
            (2 * z.shape[1],), dtype=dtype, device=dev))[1::2]
        K.conv2d_backward_bias(dy, saved, act, dz, dbias)
        # tanh/sigmoid derivatives come from the rounded output y: 1 - y^2 and y(1 - y)
        assert_close(dz, dz_want, terms=4, name=f"backward_bias dz ({act})")
        assert_close(dbias, dz_want.sum(axis=(0, 2, 3)), terms=terms["bias"],
                     name=f"backward_bias dbias ({act})")
    dbias = poison(torch.empty(z.shape[1], dtype=dtype, device=dev))
    K.conv2d_backward_bias(dy, None, "none", None, dbias)
    assert_close(dbias, db_want, terms=terms["bias"], name="backward_bias dbias (none)")


# ----------------------------------------------------------------------------------------------
# the C++ kernel on layers large enough for its multi-block paths: > 512 reduction taps
# (C*R*S for the forward and grad weight, K*R*S for grad input) and > 3072 output columns
# (N*OH*OW)

_BIG = [
    ((2, 64, 14, 14), (64, 64, 3, 3), dict(padding=1), "contiguous"),   # 576 taps
    ((2, 64, 14, 14), (64, 64, 3, 3), dict(padding=1, activation="relu"), "channels_last"),
    ((8, 3, 40, 40), (16, 3, 7, 7), dict(stride=2, padding=3), "contiguous"),  # stem: 3200 cols
    ((8, 3, 40, 40), (16, 3, 7, 7), dict(stride=2, padding=3, activation="relu"),
     "channels_last"),
    ((4, 96, 30, 30), (24, 96, 3, 3), dict(padding=1, activation="gelu"), "contiguous"),
    ((2, 64, 28, 28), (128, 64, 1, 1), dict(stride=2), "channels_last"),  # ResNet downsample
    ((1, 40, 17, 83), (96, 20, 3, 3), dict(padding=(1, 2), groups=2), "contiguous"),  # 1 image
]


@pytest.mark.backends("cpp")
@pytest.mark.dtypes(torch.float32)
@pytest.mark.parametrize("case", range(len(_BIG)))
def test_cpp_large_layers(backend, dtype, case, gen):
    x_shape, w_shape, kw, layout = _BIG[case]
    outs = check_conv2d(backend, dtype, gen, x_shape, w_shape, kw, layout=layout)
    assert memory_format(outs[0]) == layout


@pytest.mark.backends("cpp")
@pytest.mark.dtypes(torch.float64)
def test_cpp_large_layer_fp64(backend, dtype, gen):
    check_conv2d(backend, dtype, gen, (2, 64, 14, 14), (64, 64, 3, 3), dict(padding=1))


@pytest.mark.backends("cpp")
def test_cpp_large_conv_transpose2d(backend, gen):
    # the DCGAN generator's up-block: grad x is a forward conv with K*R*S = 64*16 taps
    check_conv_t(backend, torch.float32, gen, (4, 64, 8, 8), (64, 32, 4, 4),
                 dict(stride=2, padding=1), layout="channels_last")


@pytest.mark.backends("cpp")
def test_cpp_threads_agree(backend, gen):
    # batch 1 (the work split inside one image) and a batch of several: 1 and 2 threads give
    # the reference's result every time (grad weight: no race between the threads' partials)
    saved = pykernels.get_num_threads()
    try:
        for x_shape, w_shape, kw in (((1, 32, 20, 21), (24, 32, 3, 3), dict(padding=1)),
                                     ((6, 8, 12, 11), (16, 8, 5, 5), dict(stride=2))):
            for n in (2, 1, 2):
                pykernels.set_num_threads(n)
                check_conv2d(backend, torch.float32, gen, x_shape, w_shape, kw)
    finally:
        pykernels.set_num_threads(saved)


# ----------------------------------------------------------------------------------------------
# gradcheck in float64 (finite differences, independent of the reference)

# (x shape, weight shape, kwargs, x layout, bias)
_GRADCHECK = [
    ((2, 4, 6, 5), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2,
                                      activation="gelu"), "contiguous", True),
    ((1, 3, 5, 6), (4, 3, 2, 3), dict(padding="same", dilation=(1, 2), activation="sigmoid"),
     "channels_last", True),
    ((1, 4, 7, 5), (8, 1, 3, 3), dict(stride=3, groups=4), "transposed", False),
    ((2, 2, 5, 5), (3, 2, 3, 3), dict(padding=1, activation="relu"), "contiguous", True),
    ((3, 6, 5), (2, 3, 3, 1), dict(padding=(0, 1), activation="tanh"), "contiguous", True),
]


def _away_from_kink(inputs, kw, draw):
    """Redraw until every relu pre-activation is at least 1e-3 from the kink (finite
    differences across it are meaningless; gradcheck's eps = 1e-6 moves a pre-activation by
    at most eps * sum |w| ~ 1e-5)."""
    for _ in range(200):
        if kw.get("activation") != "relu":
            return inputs
        z = reference.conv2d_forward(*(None if v is None else to_numpy(v)
                                       for v in inputs.values()),
                                     **{k: v for k, v in kw.items() if k != "activation"})
        if np.abs(z).min() > 1e-3:
            return inputs
        inputs = draw()
    raise AssertionError("could not draw inputs away from relu's kink")


@pytest.mark.dtypes(torch.float64)
@pytest.mark.parametrize("case", range(len(_GRADCHECK)))
def test_conv2d_gradcheck(backend, dtype, case, gen):
    x_shape, w_shape, kw, layout, bias = _GRADCHECK[case]

    def draw():
        ins = conv2d_inputs(x_shape, w_shape, dtype, gen, bias=bias, device=backend.device,
                            layout=layout)
        return ins

    inputs = _away_from_kink(draw(), kw, draw)
    args = tuple(v.detach().requires_grad_(True) for v in inputs.values() if v is not None)
    with backend.context():
        if bias:
            assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d(x, w, b, **kw), args)
        else:
            assert torch.autograd.gradcheck(lambda x, w: ops.conv2d(x, w, **kw), args)


_GRADCHECK_T = [
    ((1, 4, 4, 3), (4, 3, 3, 2), dict(stride=2, padding=1, output_padding=1, groups=2,
                                      dilation=(1, 2)), "contiguous", True),
    ((2, 2, 3, 4), (2, 2, 2, 3), dict(stride=(3, 1), output_padding=(2, 0)), "channels_last",
     False),
]


@pytest.mark.dtypes(torch.float64)
@pytest.mark.parametrize("case", range(len(_GRADCHECK_T)))
def test_conv_transpose2d_gradcheck(backend, dtype, case, gen):
    x_shape, w_shape, kw, layout, bias = _GRADCHECK_T[case]
    x = image(x_shape, dtype, gen, device=backend.device, layout=layout).requires_grad_(True)
    w = make_tensor(w_shape, dtype, gen, device=backend.device, requires_grad=True)
    groups = kw.get("groups", 1)
    with backend.context():
        if bias:
            b = make_tensor((w_shape[1] * groups,), dtype, gen, device=backend.device,
                            requires_grad=True)
            assert torch.autograd.gradcheck(
                lambda x, w, b: ops.conv_transpose2d(x, w, b, **kw), (x, w, b))
        else:
            assert torch.autograd.gradcheck(
                lambda x, w: ops.conv_transpose2d(x, w, **kw), (x, w))


@pytest.mark.backends("triton")
def test_triton_gradcheck_tiny(backend, gen):
    # float64 through the Triton kernels; fast mode (a few directional derivatives instead of
    # one per input element): the interpreter is slow
    f64 = torch.float64
    x = make_tensor((1, 2, 4, 3), f64, gen, device=backend.device, requires_grad=True)
    w = make_tensor((4, 1, 2, 2), f64, gen, device=backend.device, requires_grad=True)
    b = make_tensor((4,), f64, gen, device=backend.device, requires_grad=True)
    with backend.context():
        assert torch.autograd.gradcheck(
            lambda x, w, b: ops.conv2d(x, w, b, padding=1, groups=2, activation="tanh"),
            (x, w, b), fast_mode=True)
        wt = make_tensor((2, 2, 2, 2), f64, gen, device=backend.device, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, w, b: ops.conv_transpose2d(x, w, b, stride=2, output_padding=1),
            (x, wt, b[:2].detach().requires_grad_(True)), fast_mode=True)


# ----------------------------------------------------------------------------------------------
# torch.library.opcheck on every registered conv op, with the arguments the public ops really
# pass (recorded below the autograd layer, forward and backward)


def _conv_op_names():
    return sorted(n for n in dir(torch.ops.pykernels)
                  if "conv" in n
                  and isinstance(getattr(torch.ops.pykernels, n, None),
                                 torch._ops.OpOverloadPacket))


def _record_conv_calls(gen):
    f64 = torch.float64

    def t(shape, layout="contiguous"):
        return image(shape, f64, gen, layout=layout, scale=0.5).requires_grad_(True)

    usages = [
        lambda: ops.conv2d(t((2, 4, 7, 6)), t((6, 2, 3, 2)), t((6,)), stride=(2, 1),
                           padding=1, groups=2, activation="gelu"),
        lambda: ops.conv2d(t((2, 3, 7, 6), "channels_last"), t((4, 3, 2, 2)), None,
                           padding="same", dilation=(1, 2), activation="relu"),
        lambda: ops.conv2d(t((3, 7, 6)), t((5, 3, 3, 3)), t((5,)), activation="tanh"),
        lambda: ops.conv2d(t((1, 4, 6, 6)), t((4, 1, 3, 3)), t((4,)), stride=2, groups=4,
                           activation="sigmoid"),
        lambda: ops.conv2d(t((2, 3, 5, 5), "transposed"), t((4, 3, 1, 1)), t((4,))),
        lambda: ops.conv_transpose2d(t((2, 4, 4, 3)), t((4, 3, 3, 3)), t((6,)), stride=2,
                                     padding=1, output_padding=1, groups=2),
        lambda: ops.conv_transpose2d(t((4, 3, 5), "contiguous"), t((4, 2, 2, 3)), None,
                                     dilation=2),
    ]
    rec = RecordPykernelsCalls()
    with rec:
        for fn in usages:
            y = fn()
            y.backward(make_tensor(y.shape, y.dtype, gen))
        with torch.no_grad():
            ops.conv2d(t((2, 3, 6, 6)).float(), t((4, 3, 3, 3)).float(), padding=1,
                       activation="gelu")
            ops.conv_transpose2d(t((2, 3, 4, 4)).float(), t((3, 2, 2, 2)).float(), stride=2)
    return rec.calls


def test_opcheck_every_conv_op(gen):
    names = _conv_op_names()
    assert names, f"no conv op registered in torch.ops.pykernels: {dir(torch.ops.pykernels)}"
    calls = _record_conv_calls(gen)
    seen = {func._name.split("::")[1] for func, _, _ in calls}
    missing = [n for n in names if n not in seen]
    assert not missing, f"registered conv ops the public ops never called here: {missing}"
    opcheck_recorded(calls, aot_per_op=2)


@pytest.mark.parametrize("which", ["conv2d", "conv_transpose2d"])
def test_registered_op_path(backend, dtype, which, gen):
    # eager calls on plain tensors may skip the custom op's dispatch; under a dispatch mode (as
    # under torch.compile) the registered op and its register_autograd formula run: check those
    with PassThrough():
        if which == "conv2d":
            x_shape, w_shape = ((1, 4, 6, 5), (4, 2, 3, 3)) if backend.interpreted else (
                (2, 4, 9, 8), (6, 2, 3, 3))
            check_conv2d(backend, dtype, gen, x_shape, w_shape,
                         dict(stride=(1, 2), padding=1, groups=2, activation="gelu"),
                         layout="channels_last")
        else:
            x_shape, w_shape = ((1, 2, 3, 4), (2, 2, 3, 3)) if backend.interpreted else (
                (2, 4, 5, 4), (4, 3, 3, 3))
            check_conv_t(backend, dtype, gen, x_shape, w_shape,
                         dict(stride=2, padding=1, output_padding=1))


# ----------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): the custom ops trace as single nodes, compiled == eager


class _CompileNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = pykernels.nn.Conv2d(3, 8, 3, padding=1)
        self.w2 = torch.nn.Parameter(torch.randn(8, 4, 3, 3) * 0.2)
        self.b2 = torch.nn.Parameter(torch.randn(8) * 0.1)
        self.up = pykernels.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):
        h = self.conv1(x)
        h = ops.conv2d(h, self.w2, self.b2, stride=2, padding=1, groups=2, activation="gelu")
        return self.up(h)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compile_fullgraph_matches_eager(layout, gen):
    torch.manual_seed(0)
    net = _CompileNet()
    x = image((2, 3, 10, 9), torch.float32, gen, layout=layout).requires_grad_(True)
    dout = make_tensor((2, 4, 10, 10), torch.float32, gen)

    def run(model):
        for p in list(net.parameters()) + [x]:
            p.grad = None
        out = model(x)
        out.backward(dout)
        return [out.detach()] + [p.grad.clone() for p in list(net.parameters()) + [x]]

    eager = run(net)
    torch._dynamo.reset()
    compiled = run(torch.compile(net, fullgraph=True))
    for i, (e, c) in enumerate(zip(eager, compiled)):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5, msg=f"tensor {i}")
    assert memory_format(compiled[0]) == memory_format(eager[0])


# ----------------------------------------------------------------------------------------------
# pykernels.nn.Conv2d / ConvTranspose2d vs torch.nn

_MODULES = [
    ("Conv2d", dict(in_channels=3, out_channels=5, kernel_size=3)),
    ("Conv2d", dict(in_channels=6, out_channels=6, kernel_size=(3, 2), stride=(2, 1),
                    padding=(1, 0), dilation=(1, 2), groups=3, bias=False)),
    ("Conv2d", dict(in_channels=4, out_channels=8, kernel_size=5, padding="same", groups=4)),
    ("Conv2d", dict(in_channels=4, out_channels=3, kernel_size=4, padding="same")),  # asym.
    ("Conv2d", dict(in_channels=3, out_channels=4, kernel_size=1, stride=2)),
    ("Conv2d", dict(in_channels=3, out_channels=4, kernel_size=3, padding="valid", stride=3)),
    ("ConvTranspose2d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1,
                             output_padding=1, groups=2)),
    ("ConvTranspose2d", dict(in_channels=3, out_channels=2, kernel_size=(2, 3), stride=(2, 3),
                             dilation=(2, 1), bias=False)),
]


def _seed_from(gen):
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", range(len(_MODULES)), ids=lambda i: _MODULES[i][0] + str(i))
def test_nn_modules_match_torch(case, layout, gen):
    name, kw = _MODULES[case]
    torch.manual_seed(_seed_from(gen))
    ref = getattr(torch.nn, name)(**kw)
    pk = getattr(pykernels.nn, name)(**kw)
    assert isinstance(pk, getattr(torch.nn, name))
    assert repr(pk) == repr(ref)
    assert pk.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert pk.state_dict()[k].shape == v.shape, k
    pk.load_state_dict(ref.state_dict())
    x = image((2, kw["in_channels"], 11, 10), torch.float32, gen, layout=layout)
    xr, xp = x.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)
    yr, yp = ref(xr), pk(xp)
    assert yp.shape == yr.shape and yp.dtype == yr.dtype
    assert memory_format(yp) == memory_format(yr), (
        f"{memory_format(yp)} vs torch {memory_format(yr)}")
    w = ref.weight
    fan = w.shape[1] * w.shape[2] * w.shape[3]
    big = w.shape[0] * w.shape[2] * w.shape[3]
    assert_close(yp, yr, terms=max(fan, big), name="output")
    dy = make_tensor(yr.shape, torch.float32, gen)
    yr.backward(dy)
    yp.backward(dy)
    assert_close(xp.grad, xr.grad, terms=max(fan, big), name="grad of x")
    m = 2 * max(yr.shape[-2] * yr.shape[-1], 110)
    assert_close(pk.weight.grad, ref.weight.grad, terms=m, name="grad of weight")
    if ref.bias is not None:
        assert_close(pk.bias.grad, ref.bias.grad, terms=m, name="grad of bias")


def test_nn_modules_load_into_torch(gen):
    torch.manual_seed(_seed_from(gen))
    for pk, ref in ((pykernels.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(3, 4, 3, padding=1)),
                    (pykernels.nn.ConvTranspose2d(3, 4, 3, stride=2),
                     torch.nn.ConvTranspose2d(3, 4, 3, stride=2))):
        ref.load_state_dict(pk.state_dict())
        x = make_tensor((2, 3, 7, 6), torch.float32, gen)
        with torch.no_grad():
            assert_close(pk(x), ref(x), terms=36)


@pytest.mark.parametrize("output_size", [[9, 11], (2, 3, 10, 12), torch.Size([10, 11])],
                         ids=["hw", "nchw", "size"])
def test_nn_conv_transpose2d_output_size(output_size, gen):
    # output_size picks output_padding, like torch (9x11 -> 0, 10x12 -> 1 on both axes)
    torch.manual_seed(_seed_from(gen))
    ref = torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1)
    pk = pykernels.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1)
    pk.load_state_dict(ref.state_dict())
    x = make_tensor((2, 4, 5, 6), torch.float32, gen)
    xr, xp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yr, yp = ref(xr, output_size=output_size), pk(xp, output_size=output_size)
    assert yp.shape == yr.shape
    assert_close(yp, yr, terms=36)
    dy = make_tensor(yr.shape, torch.float32, gen)
    yr.backward(dy)
    yp.backward(dy)
    assert_close(xp.grad, xr.grad, terms=27, name="grad of x")
    assert_close(pk.weight.grad, ref.weight.grad, terms=60, name="grad of weight")


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_nn_conv2d_padding_mode(mode, gen):
    # either it works exactly like torch, or NotImplementedError names padding_mode
    kw = dict(in_channels=3, out_channels=4, kernel_size=3, padding=(2, 1), padding_mode=mode)
    torch.manual_seed(_seed_from(gen))
    ref = torch.nn.Conv2d(**kw)
    x = make_tensor((2, 3, 8, 7), torch.float32, gen)
    xr, xp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    try:
        pk = pykernels.nn.Conv2d(**kw)
        pk.load_state_dict(ref.state_dict())
        yp = pk(xp)
    except NotImplementedError as e:
        assert "padding_mode" in str(e), f"NotImplementedError without naming padding_mode: {e}"
        return
    yr = ref(xr)
    assert yp.shape == yr.shape
    assert_close(yp, yr, terms=27, name=f"output, padding_mode={mode}")
    dy = make_tensor(yr.shape, torch.float32, gen)
    yr.backward(dy)
    yp.backward(dy)
    assert_close(xp.grad, xr.grad, terms=36, name="grad of x")
    assert_close(pk.weight.grad, ref.weight.grad, terms=200, name="grad of weight")


def test_nn_modules_exported():
    for name in ("Conv2d", "ConvTranspose2d"):
        assert name in pykernels.nn.__all__, name
    for name in ("conv2d", "conv_transpose2d"):
        assert name in ops.__all__, name


# ----------------------------------------------------------------------------------------------
# a small CNN (conv -> relu -> pool -> conv -> relu -> linear) trained a few SGD steps: the
# pykernels model follows the torch model step by step


class _CNN(torch.nn.Module):
    def __init__(self, nn):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):                          # x [N, 1, 10, 10]
        h = self.pool(torch.relu(self.conv1(x)))   # [N, 4, 5, 5]
        h = torch.relu(self.conv2(h))              # [N, 6, 3, 3]
        return self.fc(h.flatten(1))               # [N, 5]


@pytest.mark.backends("cpp", "reference", "triton")
def test_small_cnn_trains_like_torch(backend, gen):
    steps = 2 if backend.interpreted else 4
    torch.manual_seed(_seed_from(gen))
    ref = _CNN(torch.nn).to(backend.device)
    pk_nn = types.SimpleNamespace(Conv2d=pykernels.nn.Conv2d, MaxPool2d=pykernels.nn.MaxPool2d,
                                  Linear=pykernels.nn.Linear)
    pk = _CNN(pk_nn).to(backend.device)
    pk.load_state_dict(ref.state_dict())
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt_p = torch.optim.SGD(pk.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        x = make_tensor((8, 1, 10, 10), torch.float32, gen, device=backend.device)
        target = torch.randint(0, 5, (8,), generator=gen).to(backend.device)
        losses = []
        for model, opt in ((ref, opt_r), (pk, opt_p)):
            opt.zero_grad()
            with backend.context():
                loss = F.cross_entropy(model(x), target)
                loss.backward()
            opt.step()
            losses.append(loss.detach())
        # fp32 rounding differences compound over the steps: ~100 terms' worth of slack
        assert_close(losses[1], losses[0], terms=100, name=f"loss at step {step}")
    for (name, pr), pp in zip(ref.named_parameters(), pk.parameters()):
        assert_close(pp, pr, terms=400, name=f"{name} after {steps} steps")


# ----------------------------------------------------------------------------------------------
# bad inputs: ValueError naming the argument, TypeError for dtypes


def _conv2d_bad_calls(t):
    x, w, b = t(2, 4, 6, 6), t(6, 2, 3, 3), t(6)
    return [
        (lambda: ops.conv2d(x, t(6, 1, 3, 3), groups=3), "groups"),      # 4 channels, 3 groups
        (lambda: ops.conv2d(x, t(5, 2, 3, 3), groups=2), "groups|weight"),  # K=5 not divisible
        (lambda: ops.conv2d(x, t(6, 4, 3, 3), groups=2), "weight"),      # C/groups mismatch
        (lambda: ops.conv2d(x, t(6, 2, 3), groups=2), "weight"),         # weight of rank 3
        (lambda: ops.conv2d(x, t(1, 6, 2, 3, 3), groups=2), "weight"),   # weight of rank 5
        (lambda: ops.conv2d(t(4, 6), w, groups=2), r"\bx\b|input"),      # x of rank 2
        (lambda: ops.conv2d(t(1, 2, 4, 6, 6), w, groups=2), r"\bx\b|input"),  # rank 5
        # kernel larger than the padded input: 6 + 2 < 9, dilated 3x3 with dilation 4: 9 > 6
        (lambda: ops.conv2d(x, t(6, 2, 9, 3), groups=2, padding=1),
         "weight|kernel|padding|output|input|empty"),
        (lambda: ops.conv2d(x, w, groups=2, dilation=4),
         "weight|kernel|dilation|output|input|empty"),
        (lambda: ops.conv2d(x, w, groups=2, padding=-1), "padding"),
        (lambda: ops.conv2d(x, w, groups=2, padding=(0, -2)), "padding"),
        (lambda: ops.conv2d(x, w, groups=2, padding="full"), "padding"),
        (lambda: ops.conv2d(x, w, groups=2, padding=(1, 2, 3)), "padding"),
        (lambda: ops.conv2d(x, w, groups=2, stride=0), "stride"),
        (lambda: ops.conv2d(x, w, groups=2, stride=(1, -1)), "stride"),
        (lambda: ops.conv2d(x, w, groups=2, dilation=0), "dilation"),
        (lambda: ops.conv2d(x, w, groups=2, padding="same", stride=2), "same|stride"),
        (lambda: ops.conv2d(x, w, groups=0), "groups"),
        (lambda: ops.conv2d(x, w, t(5), groups=2), "bias"),              # wrong length
        (lambda: ops.conv2d(x, w, t(1, 6), groups=2), "bias"),           # 2-D bias
        (lambda: ops.conv2d(x, w, b, groups=2, activation="swish"), "activation"),
    ]


def _conv_t_bad_calls(t):
    x, w = t(2, 4, 5, 5), t(4, 3, 3, 3)  # groups=2 -> 6 output channels
    return [
        (lambda: ops.conv_transpose2d(x, w, groups=2, stride=2, output_padding=2),
         "output_padding"),                                               # >= stride
        (lambda: ops.conv_transpose2d(x, w, groups=2, output_padding=1), "output_padding"),
        (lambda: ops.conv_transpose2d(x, w, groups=2, stride=2, output_padding=-1),
         "output_padding"),
        (lambda: ops.conv_transpose2d(x, w, groups=2, padding="same"), "padding"),
        (lambda: ops.conv_transpose2d(x, w, groups=2, padding=-1), "padding"),
        (lambda: ops.conv_transpose2d(x, w, groups=2, stride=0), "stride"),
        (lambda: ops.conv_transpose2d(x, w, groups=2, dilation=0), "dilation"),
        (lambda: ops.conv_transpose2d(x, t(6, 3, 3, 3), groups=2), "weight"),  # [0] != C
        (lambda: ops.conv_transpose2d(x, t(4, 3, 3), groups=2), "weight"),     # rank 3
        (lambda: ops.conv_transpose2d(x, w, groups=3), "groups"),
        (lambda: ops.conv_transpose2d(x, t(4, 3, 1, 1), padding=3),
         "padding|output|empty"),                                          # (5-1) - 6 + 1 = -1
        (lambda: ops.conv_transpose2d(x, w, t(4), groups=2), "bias"),
        (lambda: ops.conv_transpose2d(t(4, 5), w, groups=2), r"\bx\b|input"),
    ]


def test_conv2d_bad_arguments(backend, gen):
    def t(*shape):
        return make_tensor(shape, torch.float32, gen, device=backend.device)

    failures = []
    with backend.context():
        for i, (call, arg) in enumerate(_conv2d_bad_calls(t) + _conv_t_bad_calls(t)):
            try:
                call()
                failures.append(f"case {i} (expects {arg}): no error")
            except ValueError as e:
                if not re.search(arg, str(e)):
                    failures.append(f"case {i}: ValueError does not name {arg!r}: {e}")
            except Exception as e:  # noqa: BLE001 - wrong exception type: report it
                failures.append(f"case {i} (expects ValueError naming {arg}): "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    assert not failures, "\n".join(failures)


def test_conv2d_bad_dtypes(backend, gen):
    def t(*shape, dt=torch.float32):
        return make_tensor(shape, dt, gen, device=backend.device)

    x, w, b = t(2, 3, 6, 6), t(4, 3, 3, 3), t(4)
    xt, wt = t(2, 4, 5, 5), t(4, 3, 3, 3)
    cases = [
        (lambda: ops.conv2d(x, w.double()), "weight"),
        (lambda: ops.conv2d(x, w, b.double()), "bias"),
        (lambda: ops.conv2d(x.double(), w, b), r"\bx\b|input|weight"),
        (lambda: ops.conv2d(x.to(torch.int32), w.to(torch.int32)), r"\bx\b|input"),
        (lambda: ops.conv2d(x.to(torch.int64), w.to(torch.int64)), r"\bx\b|input"),
        (lambda: ops.conv_transpose2d(xt, wt.double()), "weight"),
        (lambda: ops.conv_transpose2d(xt, wt, t(3, dt=torch.float64)), "bias"),
        (lambda: ops.conv_transpose2d(xt.to(torch.int32), wt.to(torch.int32)), r"\bx\b|input"),
    ]
    if backend.name == "cpp":  # the C++ kernels: float32 and float64 only
        cases.append((lambda: ops.conv2d(x.half(), w.half()), r"\bx\b|input|dtype"))
    with backend.context():
        for call, arg in cases:
            with pytest.raises(TypeError, match=arg):
                call()


def test_conv2d_mixed_devices_rejected(gen):
    if not torch.cuda.is_available():
        pytest.skip("mixed-device inputs need a CUDA device")

    def t(*shape, device="cpu"):
        return make_tensor(shape, torch.float32, gen, device=device)

    with pytest.raises(ValueError, match="weight"):
        ops.conv2d(t(2, 3, 6, 6), t(4, 3, 3, 3, device="cuda"))
    with pytest.raises(ValueError, match="bias"):
        ops.conv2d(t(2, 3, 6, 6, device="cuda"), t(4, 3, 3, 3, device="cuda"), t(4))
    with pytest.raises(ValueError, match="weight"):
        ops.conv_transpose2d(t(2, 4, 5, 5, device="cuda"), t(4, 3, 3, 3))
