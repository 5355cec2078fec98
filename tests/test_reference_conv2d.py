"""The conv2d oracle itself (pykernels.reference.conv2d) against torch in float64.

Forward against torch.nn.functional.conv2d / conv_transpose2d, backward (dx, dw, db) against
torch autograd with a random upstream gradient, over a grid of stride 1/2/3, padding
0/1/2/"same"/"valid", dilation 1/2, groups 1/2/C_in (depthwise), kernels 1x1, 3x3, 5x5, 7x7,
3x5 (and even kernels for "same"), non-square images, batch 1 and 2, with and without bias;
output_padding for the transposed conv. Plus the adjoint identity <conv(x), y> = <x, conv^T(y)>
and the ValueError cases. Everything is float64, so the tolerance is ~1e-10 relative.

Torch's semantics pinned here:
  * padding="same" splits the total dH*(KH - 1) as top = total // 2, bottom = the rest: an odd
    total (even kernel, odd dilation) puts the extra row at the bottom / column at the right;
    "same" with stride > 1 is an error.
  * conv_transpose2d: output_padding must be < max(stride, dilation) per axis, so with
    stride 1 and dilation 2 an output_padding of 1 is legal.

Run: .venv/bin/python -m pytest tests/test_reference_conv2d.py -q
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pykernels import reference

RTOL = 1e-10  # float64 sums of at most a few hundred products: ~1e-15 in practice


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The shapes here are tiny: torch's thread pool only costs time (and a lot of it when
    another process competes for the 2 cores), so this file runs torch on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_close(actual, expected, name):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    actual = np.asarray(actual)
    assert actual.dtype == np.float64, f"{name}: dtype {actual.dtype}, expected float64"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
    err = np.abs(actual - expected)
    if not err.max(initial=0.0) <= RTOL * scale:
        first = np.unravel_index(np.argmax(err > RTOL * scale), err.shape)
        pytest.fail(f"{name}: max abs err {err.max():.3e} (scale {scale:.3e}), "
                    f"mean {err.mean():.3e}, first mismatch at {first}: "
                    f"{actual[first]!r} vs {expected[first]!r}")


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _np(t):
    return t.detach().numpy()


# ---- conv2d -----------------------------------------------------------------------------------
def check_conv2d(gen, N, C_in, C_out, H, W, KH, KW, stride, padding, dilation, groups, bias):
    x = randn(gen, N, C_in, H, W).requires_grad_()
    w = randn(gen, C_out, C_in // groups, KH, KW).requires_grad_()
    b = randn(gen, C_out).requires_grad_() if bias else None
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    y = F.conv2d(x, w, b, **args)
    out = reference.conv2d_forward(_np(x), _np(w), None if b is None else _np(b), **args)
    assert_close(out, y, "out")

    dy = randn(gen, *y.shape)
    grads = torch.autograd.grad(y, [x, w] + ([b] if bias else []), dy)
    dx, dw, db = reference.conv2d_backward(_np(dy), _np(x), _np(w), has_bias=bias, **args)
    assert_close(dx, grads[0], "dx")
    assert_close(dw, grads[1], "dw")
    if bias:
        assert_close(db, grads[2], "db")
    else:
        assert db is None


KERNELS = [(1, 1), (3, 3), (5, 5), (7, 7), (3, 5)]


def _conv2d_grid():
    cases = []
    combos = itertools.product([1, 2, 3], [0, 1, 2, "same", "valid"], [1, 2], [1, 2, "dw"],
                               KERNELS)
    for i, (s, p, d, g, (KH, KW)) in enumerate(combos):
        if p == "same" and s != 1:
            continue  # torch: padding='same' is not supported for strided convolutions
        C_in = 4
        groups = C_in if g == "dw" else g
        C_out = 8 if g == "dw" and i % 2 else (4 if g == "dw" else 6)  # depthwise x1 / x2
        # non-square, odd image just large enough for the dilated kernel plus a few outputs
        H, W = d * (KH - 1) + 5 + i % 3, d * (KW - 1) + 3 + i % 2
        N = 1 if i % 2 else 2
        cases.append(pytest.param(N, C_in, C_out, H, W, KH, KW, s, p, d, groups, i % 3 != 0,
                                  id=f"s{s}-p{p}-d{d}-g{g}-k{KH}x{KW}"))
    return cases


@pytest.mark.parametrize("N, C_in, C_out, H, W, KH, KW, stride, padding, dilation, groups, bias",
                         _conv2d_grid())
def test_conv2d_grid(gen, N, C_in, C_out, H, W, KH, KW, stride, padding, dilation, groups, bias):
    check_conv2d(gen, N, C_in, C_out, H, W, KH, KW, stride, padding, dilation, groups, bias)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's perf note
@pytest.mark.parametrize("KH, KW", [(2, 2), (4, 4), (2, 3), (4, 1), (1, 6)])
@pytest.mark.parametrize("dilation", [1, 2, 3, (1, 2)])
def test_conv2d_same_even_kernels(gen, KH, KW, dilation):
    """Odd total padding: torch puts the extra row/column at the bottom/right."""
    check_conv2d(gen, 1, 3, 5, 7, 10, KH, KW, 1, "same", dilation, 1, True)


@pytest.mark.parametrize("stride, padding, dilation, groups", [
    ((1, 2), (2, 0), (2, 1), 1),
    ((3, 1), (0, 3), (1, 3), 3),
    ([2], [1], [2], 2),             # one-element lists, like torch's _pair
    ((2, 3), (1, 2), (1, 1), 6),    # depthwise, per-axis everything
])
def test_conv2d_pairs(gen, stride, padding, dilation, groups):
    check_conv2d(gen, 2, 6, 12, 13, 11, 3, 4, stride, padding, dilation, groups, True)


def test_conv2d_odd_sizes(gen):
    """Prime sizes, kernel as large as the padded image (a 1x1 output), size-1 width."""
    check_conv2d(gen, 3, 5, 7, 17, 1, 5, 1, 2, (1, 0), 1, 1, True)
    check_conv2d(gen, 1, 3, 2, 5, 7, 7, 9, 1, 1, 1, 1, True)


def test_conv2d_unbatched(gen):
    x, w, b = randn(gen, 4, 9, 8), randn(gen, 6, 2, 3, 3), randn(gen, 6)
    y = F.conv2d(x, w, b, stride=2, padding=1, groups=2)
    out = reference.conv2d_forward(x.numpy(), w.numpy(), b.numpy(), 2, 1, 1, 2)
    assert_close(out, y, "out")
    dx, dw, db = reference.conv2d_backward(np.ones(y.shape), x.numpy(), w.numpy(), 2, 1, 1, 2)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (6,)


# ---- conv_transpose2d -------------------------------------------------------------------------
def check_conv_transpose2d(gen, N, C_in, C_out, H, W, KH, KW, stride, padding, output_padding,
                           dilation, groups, bias):
    x = randn(gen, N, C_in, H, W).requires_grad_()
    w = randn(gen, C_in, C_out // groups, KH, KW).requires_grad_()
    b = randn(gen, C_out).requires_grad_() if bias else None
    args = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                dilation=dilation)

    y = F.conv_transpose2d(x, w, b, **args)
    out = reference.conv_transpose2d_forward(_np(x), _np(w), None if b is None else _np(b),
                                             **args)
    assert_close(out, y, "out")

    dy = randn(gen, *y.shape)
    grads = torch.autograd.grad(y, [x, w] + ([b] if bias else []), dy)
    dx, dw, db = reference.conv_transpose2d_backward(_np(dy), _np(x), _np(w), has_bias=bias,
                                                     **args)
    assert_close(dx, grads[0], "dx")
    assert_close(dw, grads[1], "dw")
    if bias:
        assert_close(db, grads[2], "db")
    else:
        assert db is None


def _conv_transpose2d_grid():
    cases = []
    combos = itertools.product([1, 2, 3], [0, 1, 2], [0, 1, 2], [1, 2],
                               [(1, 1), (3, 3), (4, 4), (5, 5), (3, 5)])
    for i, (s, p, op, d, (KH, KW)) in enumerate(combos):
        if op >= max(s, d):
            continue  # torch: output padding must be smaller than either stride or dilation
        H, W = 5 + i % 2, 4 + i % 3
        OH = (H - 1) * s - 2 * p + d * (KH - 1) + op + 1
        OW = (W - 1) * s - 2 * p + d * (KW - 1) + op + 1
        if OH <= 0 or OW <= 0:
            continue
        g = ["1", "2", "dw"][i % 3]
        C_in = 4
        groups = C_in if g == "dw" else int(g)
        C_out = 4 if g == "dw" else 6
        N = 1 if i % 2 else 2
        cases.append(pytest.param(N, C_in, C_out, H, W, KH, KW, s, p, op, d, groups, i % 4 != 0,
                                  id=f"s{s}-p{p}-op{op}-d{d}-g{g}-k{KH}x{KW}"))
    return cases


@pytest.mark.parametrize(
    "N, C_in, C_out, H, W, KH, KW, stride, padding, output_padding, dilation, groups, bias",
    _conv_transpose2d_grid())
def test_conv_transpose2d_grid(gen, N, C_in, C_out, H, W, KH, KW, stride, padding,
                               output_padding, dilation, groups, bias):
    check_conv_transpose2d(gen, N, C_in, C_out, H, W, KH, KW, stride, padding, output_padding,
                           dilation, groups, bias)


@pytest.mark.parametrize("stride, padding, output_padding, dilation, groups", [
    ((2, 3), (1, 0), (1, 2), (1, 2), 1),
    ((1, 3), (0, 2), (1, 0), (2, 1), 3),    # output_padding 1 legal through dilation 2
    ((3, 2), (2, 1), (2, 0), 1, 6),         # depthwise
])
def test_conv_transpose2d_pairs(gen, stride, padding, output_padding, dilation, groups):
    check_conv_transpose2d(gen, 2, 6, 12, 7, 5, 3, 4, stride, padding, output_padding,
                           dilation, groups, True)


def test_conv_transpose2d_output_padding_past_every_tap(gen):
    """output_padding > padding: the last output rows are reached by no tap (bias only)."""
    check_conv_transpose2d(gen, 1, 3, 2, 4, 3, 1, 1, 3, 0, 2, 1, 1, True)


# ---- consistency and arguments ----------------------------------------------------------------
@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 0, 1, 1), (2, 1, 2, 2),
                                                               (3, 2, 1, 4)])
def test_transpose_is_adjoint(np_rng, stride, padding, dilation, groups):
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)>, with output_padding chosen so that
    the transposed conv gives back x's size."""
    x = np_rng.standard_normal((2, 4, 11, 9))
    w = np_rng.standard_normal((8, 4 // groups, 3, 2))
    cx = reference.conv2d_forward(x, w, None, stride, padding, dilation, groups)
    y = np_rng.standard_normal(cx.shape)
    op = [x.shape[2 + a] - reference.conv_transpose2d_output_size(
        cx.shape[2 + a], w.shape[2 + a], stride, padding, 0, dilation) for a in (0, 1)]
    ty = reference.conv_transpose2d_forward(y, w, None, stride, padding, op, groups, dilation)
    assert ty.shape == x.shape
    lhs, rhs = np.vdot(cx, y), np.vdot(x, ty)
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)
    dx, _, _ = reference.conv2d_backward(y, x, w, stride, padding, dilation, groups)
    assert_close(ty, dx, "conv_transpose2d vs conv2d's dx")


def test_output_size_formulas():
    # OH = floor((H + 2p - d(KH-1) - 1)/s) + 1
    assert reference.conv2d_output_size(224, 7, 2, 3, 1) == 112
    assert reference.conv2d_output_size(10, 3, 3, 0, 2) == 2
    assert reference.conv_transpose2d_output_size(4, 4, 2, 1, 0, 1) == 8
    assert reference.conv_transpose2d_output_size(5, 3, 2, 1, 1, 1) == 10


X = np.ones((1, 4, 6, 6))
W = np.ones((6, 2, 3, 3))


@pytest.mark.parametrize("kwargs, match", [
    (dict(stride=0), "stride"),
    (dict(stride=(1, -1)), "stride"),
    (dict(dilation=0), "dilation"),
    (dict(padding=-1), "padding"),
    (dict(padding=(0, -2)), "padding"),
    (dict(padding="full"), "padding"),
    (dict(padding="same", stride=2), "stride"),
    (dict(padding=(1, 2, 3)), "padding"),
    (dict(groups=3), "groups"),             # 4 input channels
    (dict(groups=0), "groups"),
    (dict(dilation=3), "empty"),            # dilated kernel 7 > 6
    (dict(stride=1, padding=0, weight=np.ones((6, 2, 7, 1))), "empty"),
    (dict(weight=np.ones((6, 4, 3, 3))), "weight"),         # C_in/groups mismatch
    (dict(weight=np.ones((5, 2, 3, 3))), "groups"),         # C_out not divisible
    (dict(weight=np.ones((6, 2, 3))), "weight"),            # wrong rank
    (dict(x=np.ones((4, 6))), "x"),
    (dict(bias=np.ones(5)), "bias"),
])
def test_conv2d_bad_arguments(kwargs, match):
    kwargs = dict(kwargs)
    x, w = kwargs.pop("x", X), kwargs.pop("weight", W)
    kwargs.setdefault("groups", 2)
    with pytest.raises(ValueError, match=match):
        reference.conv2d_forward(x, w, **kwargs)
    kwargs.pop("bias", None)
    if match != "bias":
        with pytest.raises(ValueError, match=match):
            reference.conv2d_backward(np.ones((1, 6, 4, 4)), x, w, **kwargs)


def test_conv2d_backward_bad_grad_out():
    with pytest.raises(ValueError, match="grad_out"):
        reference.conv2d_backward(np.ones((1, 6, 5, 4)), X, W, groups=2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(stride=0), "stride"),
    (dict(dilation=-1), "dilation"),
    (dict(padding=-1), "padding"),
    (dict(padding="same"), "padding"),
    (dict(output_padding=-1), "output_padding"),
    (dict(output_padding=2, stride=2), "output_padding"),   # must be < max(stride, dilation)
    (dict(output_padding=1), "output_padding"),             # stride 1, dilation 1
    (dict(padding=3, weight=np.ones((4, 3, 1, 1))), "empty"),  # (6-1) - 6 + 1 = 0
    (dict(groups=3), "groups"),
    (dict(weight=np.ones((6, 3, 3, 3))), "weight"),         # weight[0] must be C_in = 4
    (dict(bias=np.ones(4)), "bias"),                        # C_out = 3 * 2 = 6
])
def test_conv_transpose2d_bad_arguments(kwargs, match):
    kwargs = dict(kwargs)
    w = kwargs.pop("weight", np.ones((4, 3, 3, 3)))
    kwargs.setdefault("groups", 2)
    with pytest.raises(ValueError, match=match):
        reference.conv_transpose2d_forward(X, w, **kwargs)
    kwargs.pop("bias", None)
    if match != "bias":
        with pytest.raises(ValueError, match=match):
            reference.conv_transpose2d_backward(np.ones((1, 6, 8, 8)), X, w, **kwargs)
