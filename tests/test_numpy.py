"""pykernels.numpy: every op, forward and backward, on NumPy arrays (the C++ kernels, no torch).

Each function is checked against the float64 oracle pykernels.reference in float32 and float64
(helpers.assert_close, the one tolerance table, `terms` = products summed per element as in the
op's own test file), on odd shapes and on inputs that are non-contiguous, channels_last or walked
with negative strides; outputs passed as out= are NaN-poisoned, negative-stride views. A table
of bad inputs checks that each raises TypeError / ValueError naming the argument.

Test: TRITON_INTERPRET=1 .venv/bin/python -m pytest -q tests/test_numpy.py -p no:logging
"""

import numpy as np
import pytest

import pykernels.numpy as pknp
from pykernels import reference
from pykernels.reference import attention as ref_attention
from pykernels.reference import rnn as ref_rnn

from helpers import assert_close, poison

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def _make(rng, shape, dtype, layout="contiguous", scale=1.0):
    """Random normal values * scale of `shape`, stored as layout says:
    contiguous; strided (every other element of the last dim); reversed (negative strides on the
    first and last dims); channels_last (4-D: stored [N, H, W, C]); transposed (last two dims)."""
    shape = tuple(shape)
    if layout == "channels_last":
        N, C, H, W = shape
        a = (rng.standard_normal((N, H, W, C)) * scale).astype(dtype).transpose(0, 3, 1, 2)
    elif layout == "strided":
        a = (rng.standard_normal(shape[:-1] + (2 * shape[-1],)) * scale).astype(dtype)[..., ::2]
    elif layout == "transposed":
        a = (rng.standard_normal(shape[:-2] + shape[:-3:-1]) * scale).astype(dtype).swapaxes(-1, -2)
    else:
        a = (rng.standard_normal(shape) * scale).astype(dtype)
        if layout == "reversed":
            a = a[::-1] if a.ndim == 1 else a[::-1, ..., ::-1]
    assert a.shape == shape
    if layout != "contiguous" and min(shape) > 1:
        assert not a.flags.c_contiguous
    return a


def _poisoned(shape, dtype):
    """A NaN-filled output buffer of `shape` walked with a negative stride on its last dim."""
    return poison(np.empty(shape, dtype))[..., ::-1]


def _check_out(fn, want, dtype, terms, *args, **kwargs):
    """fn(*args, out=<poisoned, negative-stride buffer>, **kwargs) returns that buffer, filled."""
    out = _poisoned(want.shape, dtype)
    got = fn(*args, out=out, **kwargs)
    got = got[0] if isinstance(got, tuple) else got
    assert got is out
    assert_close(out, want, dtype=dtype, terms=terms, name="out=")


def _check_result(got, want, dtype, terms, name):
    assert isinstance(got, np.ndarray) and got.dtype == dtype, f"{name}: {type(got)} {getattr(got, 'dtype', '')}"
    assert_close(got, want, dtype=dtype, terms=terms, name=name)


# ----------------------------------------------------------------------------------------------
# GEMM (more in tests/test_gemm.py)


@DTYPES
def test_linear_matmul(dtype, np_rng):
    x = _make(np_rng, (7, 13), dtype, "reversed")
    w = _make(np_rng, (5, 13), dtype, "strided", 13 ** -0.5)
    b = _make(np_rng, (5,), dtype, "reversed")
    want = reference.linear_forward(x, w, b, "tanh")
    _check_result(pknp.linear(x, w, b, activation="tanh"), want, dtype, 13, "linear")
    _check_out(pknp.linear, want, dtype, 13, x, w, b, activation="tanh")
    dy = _make(np_rng, (7, 5), dtype, "transposed")
    for name, g, r, t in zip("xwb", pknp.linear_backward(dy, x, w, b, activation="tanh"),
                             reference.linear_backward(dy, x, w, b, "tanh"), (5, 7, 7)):
        _check_result(g, r, dtype, t, f"grad of {name}")
    a, c = _make(np_rng, (2, 3, 4), dtype, "reversed"), _make(np_rng, (4, 5), dtype, "transposed")
    want = reference.matmul_forward(a, c)
    _check_result(pknp.matmul(a, c), want, dtype, 4, "matmul")
    _check_out(pknp.matmul, want, dtype, 4, a, c)
    dc = _make(np_rng, want.shape, dtype)
    for name, g, r, t in zip("ab", pknp.matmul_backward(dc, a, c), reference.matmul_backward(dc, a, c), (5, 6)):
        _check_result(g, r, dtype, t, f"grad of {name}")


# ----------------------------------------------------------------------------------------------
# conv2d, conv_transpose2d

CONV_CASES = {
    # x shape, x layout, weight shape, kwargs
    "basic": ((2, 3, 9, 7), "contiguous", (4, 3, 3, 2), dict(stride=(2, 1), padding=1)),
    "groups-same-gelu-cl": ((2, 4, 6, 5), "channels_last", (6, 2, 3, 2),
                            dict(padding="same", groups=2, activation="gelu")),
    "unbatched-dilated-sigmoid-reversed": ((3, 8, 7), "reversed", (5, 3, 2, 3),
                                           dict(dilation=(2, 1), padding=(1, 0), stride=2, activation="sigmoid")),
}


def _ref_conv(x, w, b, kw):
    """The oracle's conv2d plus the activation, and z (the pre-activation)."""
    kw = dict(kw)
    act = kw.pop("activation", None)
    z = reference.conv2d_forward(x, w, b, **kw)
    return reference.activation_forward(z, act), z, act, kw


@DTYPES
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(dtype, case, np_rng):
    x_shape, layout, w_shape, kw = CONV_CASES[case]
    groups = kw.get("groups", 1)
    x = _make(np_rng, x_shape, dtype, layout)
    w = _make(np_rng, w_shape, dtype, "reversed", (w_shape[1] * w_shape[2] * w_shape[3]) ** -0.5)
    b = _make(np_rng, (w_shape[0],), dtype)
    want, z, act, ref_kw = _ref_conv(x, w, b, kw)
    n_out = w_shape[1] * w_shape[2] * w_shape[3]
    y = pknp.conv2d(x, w, b, **kw)
    _check_result(y, want, dtype, n_out, "out")
    if layout == "channels_last":
        assert y.transpose(0, 2, 3, 1).flags.c_contiguous, "channels_last in -> channels_last out"
    _check_out(pknp.conv2d, want, dtype, n_out, x, w, b, **kw)

    dy = _make(np_rng, want.shape, dtype, "reversed")
    dz = dy * reference.activation_derivative(z, act)
    rdx, rdw, rdb = reference.conv2d_backward(dz, x, w, **ref_kw)
    dx, dw, db = pknp.conv2d_backward(dy, x, w, b, **kw)
    n_pix = int(np.prod(want.shape[-2:])) * (x_shape[0] if len(x_shape) == 4 else 1)
    _check_result(dx, rdx, dtype, w_shape[0] // groups * w_shape[2] * w_shape[3], "grad of x")
    _check_result(dw, rdw, dtype, n_pix, "grad of weight")
    _check_result(db, rdb, dtype, n_pix, "grad of bias")
    if act is None:
        dx2, dw2, db2 = pknp.conv2d_backward(dy, x, w, None, **kw)
        assert db2 is None
        _check_result(dw2, rdw, dtype, n_pix, "grad of weight (no bias)")


CONV_T_CASES = {
    "basic": ((2, 4, 5, 6), "contiguous", (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    "unbatched-groups-dilated-reversed": ((4, 5, 5), "reversed", (4, 2, 2, 3),
                                          dict(groups=2, dilation=(2, 1), stride=(1, 2), output_padding=1)),
    "cl": ((1, 3, 4, 7), "channels_last", (3, 5, 2, 2), dict(stride=(2, 3), padding=(0, 1))),
}


@DTYPES
@pytest.mark.parametrize("case", CONV_T_CASES)
def test_conv_transpose2d(dtype, case, np_rng):
    x_shape, layout, w_shape, kw = CONV_T_CASES[case]
    groups = kw.get("groups", 1)
    x = _make(np_rng, x_shape, dtype, layout)
    w = _make(np_rng, w_shape, dtype, "strided", 0.5)
    b = _make(np_rng, (w_shape[1] * groups,), dtype)
    want = reference.conv_transpose2d_forward(x, w, b, **kw)
    n_out = w_shape[0] // groups * w_shape[2] * w_shape[3]
    _check_result(pknp.conv_transpose2d(x, w, b, **kw), want, dtype, n_out, "out")
    _check_out(pknp.conv_transpose2d, want, dtype, n_out, x, w, b, **kw)
    dy = _make(np_rng, want.shape, dtype, "strided")
    rdx, rdw, rdb = reference.conv_transpose2d_backward(dy, x, w, **kw)
    dx, dw, db = pknp.conv_transpose2d_backward(dy, x, w, b, **kw)
    n = x_shape[0] if len(x_shape) == 4 else 1
    _check_result(dx, rdx, dtype, w_shape[1] * w_shape[2] * w_shape[3], "grad of x")
    _check_result(dw, rdw, dtype, n * x_shape[-2] * x_shape[-1], "grad of weight")
    _check_result(db, rdb, dtype, n * want.shape[-2] * want.shape[-1], "grad of bias")


def test_conv_empty_batch(np_rng):
    x, w, b = np.empty((0, 3, 5, 5), np.float32), _make(np_rng, (2, 3, 3, 3), np.float32), np.ones(2, np.float32)
    assert pknp.conv2d(x, w, b).shape == (0, 2, 3, 3)
    dx, dw, db = pknp.conv2d_backward(np.empty((0, 2, 3, 3), np.float32), x, w, b)
    assert dx.shape == x.shape and not dw.any() and not db.any()


# ----------------------------------------------------------------------------------------------
# pooling

POOL_CASES = {
    "ceil-pad-nan": ((2, 3, 9, 10), "contiguous", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "unbatched-dilated-reversed": ((3, 8, 7), "reversed", dict(kernel_size=(2, 3), stride=(1, 2), padding=1,
                                                                 dilation=2)),
    "cl": ((2, 5, 6, 7), "channels_last", dict(kernel_size=2)),
}


@DTYPES
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d(dtype, case, np_rng):
    shape, layout, kw = POOL_CASES[case]
    x = _make(np_rng, shape, dtype, layout)
    if "nan" in case:
        x[1, 2, 4, 5] = np.nan  # a NaN wins its windows (and gets their gradient)
    want, want_idx = reference.max_pool2d_forward(x, **kw)
    y, idx = pknp.max_pool2d(x, **kw, return_indices=True)
    assert y.dtype == dtype and idx.dtype == np.int64
    assert_close(y, want, dtype=dtype, name="out", match_nonfinite=True)
    assert_close(idx, want_idx, name="indices")
    assert_close(pknp.max_pool2d(x, **kw), want, dtype=dtype, name="out only", match_nonfinite=True)
    out = _poisoned(want.shape, dtype)
    assert pknp.max_pool2d(x, **kw, out=out) is out
    assert_close(out, want, dtype=dtype, name="out=", match_nonfinite=True)
    dy = _make(np_rng, want.shape, dtype, "reversed")
    k = kw["kernel_size"]
    terms = int(np.prod(k if isinstance(k, tuple) else (k, k)))
    _check_result(pknp.max_pool2d_backward(dy, idx, x.shape),
                  reference.max_pool2d_backward(dy, want_idx, x.shape), dtype, terms, "grad of x")
    idx32 = idx.astype(np.int32)[..., ::-1][..., ::-1]  # int32 indices work too
    _check_result(pknp.max_pool2d_backward(dy, idx32, list(x.shape)),
                  reference.max_pool2d_backward(dy, want_idx, x.shape), dtype, terms, "grad of x (int32)")


AVG_CASES = {
    "ceil-pad-exclude": ((2, 3, 9, 10), "reversed", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                                        count_include_pad=False)),
    "divisor-cl": ((2, 4, 7, 6), "channels_last", dict(kernel_size=(2, 3), stride=(2, 1), divisor_override=5)),
    "unbatched": ((3, 5, 8), "strided", dict(kernel_size=2, stride=1, padding=1)),
}


@DTYPES
@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_pool2d(dtype, case, np_rng):
    shape, layout, kw = AVG_CASES[case]
    x = _make(np_rng, shape, dtype, layout)
    want = reference.avg_pool2d_forward(x, **kw)
    k = kw["kernel_size"]
    terms = int(np.prod(k if isinstance(k, tuple) else (k, k)))
    _check_result(pknp.avg_pool2d(x, **kw), want, dtype, terms, "out")
    _check_out(pknp.avg_pool2d, want, dtype, terms, x, **kw)
    dy = _make(np_rng, want.shape, dtype, "strided")
    _check_result(pknp.avg_pool2d_backward(dy, x.shape, **kw),
                  reference.avg_pool2d_backward(dy, x.shape, **kw), dtype, terms, "grad of x")


ADAPTIVE_CASES = {
    "uneven": ((2, 3, 11, 7), "contiguous", (4, 3)),
    "grow-cl": ((1, 4, 3, 5), "channels_last", (5, None)),
    "unbatched-reversed": ((2, 9, 10), "reversed", 4),
}


@DTYPES
@pytest.mark.parametrize("case", ADAPTIVE_CASES)
def test_adaptive_pool2d(dtype, case, np_rng):
    shape, layout, size = ADAPTIVE_CASES[case]
    x = _make(np_rng, shape, dtype, layout)
    terms = (shape[-2] // 3 + 2) * (shape[-1] // 3 + 2)  # the largest window, loosely
    want = reference.adaptive_avg_pool2d_forward(x, size)
    _check_result(pknp.adaptive_avg_pool2d(x, size), want, dtype, terms, "avg out")
    _check_out(pknp.adaptive_avg_pool2d, want, dtype, terms, x, size)
    dy = _make(np_rng, want.shape, dtype, "reversed")
    _check_result(pknp.adaptive_avg_pool2d_backward(dy, x.shape),
                  reference.adaptive_avg_pool2d_backward(dy, x.shape), dtype, terms, "avg grad of x")

    want, want_idx = reference.adaptive_max_pool2d_forward(x, size)
    y, idx = pknp.adaptive_max_pool2d(x, size, return_indices=True)
    _check_result(y, want, dtype, 1, "max out")
    assert_close(idx, want_idx, name="max indices")
    _check_out(pknp.adaptive_max_pool2d, want, dtype, 1, x, size)
    _check_result(pknp.adaptive_max_pool2d_backward(dy, idx, x.shape),
                  reference.adaptive_max_pool2d_backward(dy, want_idx, x.shape), dtype, terms, "max grad of x")


# ----------------------------------------------------------------------------------------------
# attention


def _sum_to(g, shape):
    """A full [.., N, S] gradient summed over the dims a mask of `shape` was broadcast along."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    return g.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)


ATTENTION_CASES = {
    # q, k, v shapes, layout of q, mask (shape, kind), kwargs
    "causal": (((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6)), "reversed", None, dict(is_causal=True)),
    "3d-float-mask-scale": (((2, 5, 4), (2, 6, 4), (2, 6, 3)), "transposed", ((1, 5, 6), "float"),
                            dict(scale=0.3)),
    "bool-mask-dropout": (((1, 2, 4, 5), (1, 2, 9, 5), (1, 2, 9, 5)), "strided", ((2, 4, 9), "bool"),
                          dict(dropout_p=0.25, seed=1234, is_causal=True)),
}


@DTYPES
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention(dtype, case, np_rng):
    (qs, ks, vs), layout, mask_spec, kw = ATTENTION_CASES[case]
    q = _make(np_rng, qs, dtype, layout)
    k, v = _make(np_rng, ks, dtype, "reversed"), _make(np_rng, vs, dtype)
    mask = ref_mask = None
    if mask_spec is not None:
        shape, kind = mask_spec
        if kind == "bool":
            mask = np_rng.random(shape) > 0.3
            mask[..., 1, :] = False  # a fully masked row: out 0, lse -inf, zero gradients
            ref_mask = np.where(mask, 0.0, -np.inf)
        else:
            mask = ref_mask = _make(np_rng, shape, dtype)
    N, S, D, Dv = qs[-2], ks[-2], qs[-1], vs[-1]
    rkw = dict(mask=ref_mask, causal=kw.get("is_causal", False), scale=kw.get("scale"))
    if kw.get("dropout_p"):
        B, H = (qs[0], qs[1]) if len(qs) == 4 else (qs[0], 1)
        keep = ref_attention.dropout_keep(B, H, N, S, kw["seed"], kw["dropout_p"])
        rkw.update(keep=keep if len(qs) == 4 else keep[:, 0], p=kw["dropout_p"])
    want, want_lse = ref_attention.attention_forward(q, k, v, **rkw)
    out, lse = pknp.attention(q, k, v, mask, **kw)
    _check_result(out, want, dtype, S + D, "out")
    assert lse.dtype == dtype
    assert_close(lse, want_lse, dtype=dtype, terms=S + D, name="lse", match_nonfinite=True)
    _check_out(pknp.attention, want, dtype, S + D, q, k, v, mask, **kw)

    dout = _make(np_rng, want.shape, dtype, "reversed")
    rdq, rdk, rdv, rdm = ref_attention.attention_backward(dout, q, k, v, **rkw)
    dq, dk, dv, dmask = pknp.attention_backward(dout, q, k, v, out, lse, mask, **kw)
    _check_result(dq, rdq, dtype, S + D + Dv, "grad of q")
    _check_result(dk, rdk, dtype, N + D + Dv, "grad of k")
    _check_result(dv, rdv, dtype, N + D, "grad of v")
    if mask is None or mask.dtype == bool:
        assert dmask is None
    else:
        want_dm = _sum_to(rdm, mask.shape)
        _check_result(dmask, want_dm, dtype, (want_dm.size and rdm.size // want_dm.size) * (D + Dv),
                      "grad of attn_mask")


def test_attention_empty_keys(np_rng):
    q, k = _make(np_rng, (1, 2, 3, 4), np.float64), np.empty((1, 2, 0, 4))
    out, lse = pknp.attention(q, k, np.empty((1, 2, 0, 5)))
    assert out.shape == (1, 2, 3, 5) and not out.any() and np.isneginf(lse).all()
    dq, dk, dv, _ = pknp.attention_backward(np.ones_like(out), q, k, np.empty((1, 2, 0, 5)), out, lse)
    assert not dq.any() and dk.shape == k.shape


# ----------------------------------------------------------------------------------------------
# LSTM, GRU

GATES = {"lstm": 4, "gru": 3}


def _rnn_inputs(np_rng, kind, T, B, I, H, dtype, x_layout="contiguous", states=True, biases=True):
    G = GATES[kind]
    if x_layout == "batch_first":  # [B, T, I] seen as [T, B, I]: a transposed view
        x = _make(np_rng, (B, T, I), dtype).transpose(1, 0, 2)
    else:
        x = _make(np_rng, (T, B, I), dtype, x_layout)
    s = H ** -0.5
    w_ih, w_hh = _make(np_rng, (G * H, I), dtype, "strided", s), _make(np_rng, (G * H, H), dtype, "reversed", s)
    b_ih = _make(np_rng, (G * H,), dtype, scale=s) if biases else None
    b_hh = _make(np_rng, (G * H,), dtype, "reversed", s) if biases else None
    h0 = _make(np_rng, (B, H), dtype, "transposed") if states else None
    c0 = _make(np_rng, (B, H), dtype) if states and kind == "lstm" else None
    return x, h0, c0, w_ih, w_hh, b_ih, b_hh


def _rnn_terms(kind, T, B, I, H):
    G = GATES[kind]
    bptt = T * (I + H + G * H)
    return {"out": T * (I + H), "x": bptt + G * H, "h0": bptt, "c0": bptt, "w": bptt + T * B}


RNN_CASES = {
    "states-biases": (5, 3, 4, 5, "reversed", True, True, False, None),
    "reverse-packed-batch_first": (6, 4, 3, 5, "batch_first", False, False, True, [4, 4, 3, 2, 2, 1]),
    "one-step": (1, 1, 7, 3, "contiguous", True, True, False, None),
}


@DTYPES
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("case", RNN_CASES)
def test_rnn_sequence(dtype, kind, case, np_rng):
    T, B, I, H, layout, states, biases, reverse, sizes = RNN_CASES[case]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _rnn_inputs(np_rng, kind, T, B, I, H, dtype, layout, states, biases)
    bs = None if sizes is None else np.array(sizes, np.int64)
    terms = _rnn_terms(kind, T, B, I, H)
    dy = _make(np_rng, (T, B, H), dtype, "strided")
    dhn = _make(np_rng, (B, H), dtype, "reversed")
    if kind == "lstm":
        y, (hn, cn) = pknp.lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, reverse, bs)
        want = ref_rnn.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, bs)
        got = (y, hn, cn)
        dcn = _make(np_rng, (B, H), dtype)
        grads = pknp.lstm_backward(dy, dhn, dcn, x, (h0, c0), w_ih, w_hh, b_ih, b_hh, reverse, bs)
        want_grads = ref_rnn.lstm_backward(dy, dhn, dcn, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, bs)
        names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")
    else:
        y, hn = pknp.gru(x, h0, w_ih, w_hh, b_ih, b_hh, reverse, bs)
        want = ref_rnn.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, reverse, bs)
        got = (y, hn)
        grads = pknp.gru_backward(dy, dhn, x, h0, w_ih, w_hh, b_ih, b_hh, reverse, bs)
        want_grads = ref_rnn.gru_backward(dy, dhn, x, h0, w_ih, w_hh, b_ih, b_hh, reverse, bs)
        names = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
    for name, g, w in zip(("y", "hn", "cn"), got, want):
        _check_result(g, w, dtype, terms["out"], name)
    assert len(grads) == len(names)
    for name, g, w in zip(names, grads, want_grads):
        if w is None:
            assert g is None, f"grad of {name} should be None"
        else:
            _check_result(g, w, dtype, terms.get(name, terms["w"]), f"grad of {name}")


@DTYPES
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_rnn_cell(dtype, kind, batched, np_rng):
    B, I, H = 3, 5, 4
    x, h, c, w_ih, w_hh, b_ih, b_hh = _rnn_inputs(np_rng, kind, 1, B, I, H, dtype, "reversed")
    x, h = x[0], h
    if not batched:
        x, h, c = x[1], h[1], (None if c is None else c[1])
    terms = _rnn_terms(kind, 1, B, I, H)
    dh = _make(np_rng, h.shape, dtype, "reversed")
    if kind == "lstm":
        got = pknp.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        want = ref_rnn.lstm_cell_forward(x, h, c, w_ih, w_hh, b_ih, b_hh)
        dc = _make(np_rng, h.shape, dtype)
        grads = pknp.lstm_cell_backward(dh, dc, x, (h, c), w_ih, w_hh, b_ih, b_hh)
        want_grads = ref_rnn.lstm_cell_backward(dh, dc, x, h, c, w_ih, w_hh, b_ih, b_hh)
        names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")
        # no state given: zeros, and no state gradient
        g0 = pknp.lstm_cell_backward(dh, None, x, None, w_ih, w_hh)
        assert g0[1] is None and g0[2] is None and g0[5] is None
        _check_result(g0[0], ref_rnn.lstm_cell_backward(dh, None, x, None, None, w_ih, w_hh)[0], dtype,
                      terms["x"], "grad of x, no state")
    else:
        got = (pknp.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh),)
        want = (ref_rnn.gru_cell_forward(x, h, w_ih, w_hh, b_ih, b_hh),)
        grads = pknp.gru_cell_backward(dh, x, h, w_ih, w_hh, b_ih, b_hh)
        want_grads = ref_rnn.gru_cell_backward(dh, x, h, w_ih, w_hh, b_ih, b_hh)
        names = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
    for name, g, w in zip(("h", "c"), got, want):
        assert g.shape == h.shape
        _check_result(g, w, dtype, terms["out"], name)
    for name, g, w in zip(names, grads, want_grads):
        assert g.shape == w.shape
        _check_result(g, w, dtype, terms.get(name, terms["w"]), f"grad of {name}")


def test_rnn_no_step(np_rng):
    """T = 0: y is empty, the state and its gradient pass through, the weights get zeros."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _rnn_inputs(np_rng, "lstm", 0, 2, 3, 4, np.float64)
    y, (hn, cn) = pknp.lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
    assert y.shape == (0, 2, 4) and (hn == h0).all() and (cn == c0).all()
    g = pknp.lstm_backward(None, h0, None, x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
    assert (g[1] == h0).all() and not g[2].any() and not g[3].any() and not g[5].any()


# ----------------------------------------------------------------------------------------------
# out= buffers that cannot take the result


def test_out_is_checked(np_rng):
    x = _make(np_rng, (1, 2, 6, 6), np.float32)
    w = _make(np_rng, (3, 2, 3, 3), np.float32)
    good = (1, 3, 4, 4)
    with pytest.raises(ValueError, match="out must have shape"):
        pknp.conv2d(x, w, out=np.empty((1, 3, 4, 5), np.float32))
    with pytest.raises(TypeError, match="out"):
        pknp.conv2d(x, w, out=np.empty(good, np.float64))
    ro = np.empty(good, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        pknp.conv2d(x, w, out=ro)
    with pytest.raises(ValueError, match="share memory"):  # a stride-0 view: elements alias
        pknp.avg_pool2d(x, 2, out=np.lib.stride_tricks.as_strided(np.empty(4, np.float32), (1, 2, 3, 3),
                                                                 (0, 0, 0, 4)))
    with pytest.raises(ValueError, match="overlap x"):
        pknp.avg_pool2d(x, 1, out=x)
    q = _make(np_rng, (1, 1, 3, 4), np.float32)
    with pytest.raises(ValueError, match="overlap q"):
        pknp.attention(q, q, q, out=q)


# ----------------------------------------------------------------------------------------------
# bad inputs: each raises a Python exception naming the argument


def _f(rng, *shape, dtype=np.float32):
    return (rng.standard_normal(shape)).astype(dtype)


def _bad_cases():
    """(id, call(rng), exception, regex the message must match)."""
    f, i32 = _f, np.int32

    def conv(rng, **over):
        a = dict(x=f(rng, 2, 3, 6, 6), weight=f(rng, 4, 3, 3, 3), bias=f(rng, 4))
        a.update(over)
        return a

    def att(rng, **over):
        a = dict(q=f(rng, 1, 2, 3, 4), k=f(rng, 1, 2, 5, 4), v=f(rng, 1, 2, 5, 4))
        a.update(over)
        return a

    def lstm(rng, **over):
        a = dict(x=f(rng, 3, 2, 4), hx=(f(rng, 2, 5), f(rng, 2, 5)), w_ih=f(rng, 20, 4), w_hh=f(rng, 20, 5))
        a.update(over)
        return a

    def pool_bwd(rng, **over):
        a = dict(dy=f(rng, 1, 2, 2, 2), indices=np.zeros((1, 2, 2, 2), np.int64), input_shape=(1, 2, 4, 4))
        a.update(over)
        return a

    return [
        ("linear-list", lambda r: pknp.linear([[1.0]], f(r, 1, 1)), TypeError, r"\bx\b.*ndarray"),
        ("linear-int", lambda r: pknp.linear(f(r, 2, 3).astype(i32), f(r, 4, 3)), TypeError, r"\bx\b.*int32"),
        ("conv-int-x", lambda r: pknp.conv2d(**conv(r, x=np.ones((2, 3, 6, 6), i32))), TypeError, r"\bx\b.*int32"),
        ("conv-f16-x", lambda r: pknp.conv2d(**conv(r, x=f(r, 2, 3, 6, 6, dtype=np.float16))), TypeError,
         r"\bx\b.*float16"),
        ("conv-mixed", lambda r: pknp.conv2d(**conv(r, weight=f(r, 4, 3, 3, 3, dtype=np.float64))), TypeError,
         r"\bweight\b.*float64"),
        ("conv-bigendian", lambda r: pknp.conv2d(**conv(r, x=f(r, 2, 3, 6, 6).astype(">f4"))), TypeError, r"\bx\b"),
        ("conv-rank-x", lambda r: pknp.conv2d(**conv(r, x=f(r, 6, 6))), ValueError, r"\bx must be \[N, C, H, W\]"),
        ("conv-rank-w", lambda r: pknp.conv2d(**conv(r, weight=f(r, 4, 3, 3))), ValueError, r"\bweight must be 4-D"),
        ("conv-channels", lambda r: pknp.conv2d(**conv(r, weight=f(r, 4, 2, 3, 3))), ValueError, r"\bweight must"),
        ("conv-bias", lambda r: pknp.conv2d(**conv(r, bias=f(r, 3))), ValueError, r"\bbias must have shape"),
        ("conv-bias-list", lambda r: pknp.conv2d(**conv(r, bias=[0.0] * 4)), TypeError, r"\bbias\b.*ndarray"),
        ("conv-stride", lambda r: pknp.conv2d(**conv(r), stride=0), ValueError, r"\bstride\b"),
        ("conv-too-small", lambda r: pknp.conv2d(**conv(r, x=f(r, 2, 3, 2, 2))), ValueError, r"would be empty"),
        ("conv-bwd-dy", lambda r: pknp.conv2d_backward(f(r, 2, 4, 4, 5), **conv(r)), ValueError, r"\bdy must be"),
        ("conv-bwd-dy-dtype", lambda r: pknp.conv2d_backward(f(r, 2, 4, 4, 4, dtype=np.float64), **conv(r)),
         TypeError, r"\bdy\b"),
        ("convT-same", lambda r: pknp.conv_transpose2d(f(r, 1, 3, 4, 4), f(r, 3, 2, 3, 3), padding="same"),
         ValueError, r"\bpadding\b"),
        ("convT-bias", lambda r: pknp.conv_transpose2d(f(r, 1, 3, 4, 4), f(r, 3, 2, 3, 3), f(r, 3)),
         ValueError, r"\bbias\b.*C_out"),
        ("convT-opad", lambda r: pknp.conv_transpose2d(f(r, 1, 3, 4, 4), f(r, 3, 2, 3, 3), output_padding=1),
         ValueError, r"\boutput_padding\b"),
        ("pool-rank", lambda r: pknp.max_pool2d(f(r, 1, 1, 2, 4, 4), 2), ValueError, r"\bx must be"),
        ("pool-int", lambda r: pknp.avg_pool2d(np.ones((1, 2, 4, 4), np.int64), 2), TypeError, r"\bx\b.*int64"),
        ("pool-empty-image", lambda r: pknp.adaptive_avg_pool2d(f(r, 1, 2, 0, 4), 2), ValueError, r"\bx\b.*empty"),
        ("pool-kernel", lambda r: pknp.max_pool2d(f(r, 1, 2, 4, 4), 0), ValueError, r"\bkernel_size\b"),
        ("pool-output-size", lambda r: pknp.adaptive_max_pool2d(f(r, 1, 2, 4, 4), 0), ValueError, r"output_size"),
        ("pool-bwd-idx-dtype", lambda r: pknp.max_pool2d_backward(**pool_bwd(r, indices=f(r, 1, 2, 2, 2))),
         TypeError, r"\bindices\b"),
        ("pool-bwd-idx-range", lambda r: pknp.max_pool2d_backward(
            **pool_bwd(r, indices=np.full((1, 2, 2, 2), 16, np.int64))), ValueError, r"\bindices must lie"),
        ("pool-bwd-idx-negative", lambda r: pknp.adaptive_max_pool2d_backward(
            **pool_bwd(r, indices=np.full((1, 2, 2, 2), -1, np.int64))), ValueError, r"\bindices must lie"),
        ("pool-bwd-idx-shape", lambda r: pknp.max_pool2d_backward(
            **pool_bwd(r, indices=np.zeros((1, 2, 2, 3), np.int64))), ValueError, r"\bindices must"),
        ("pool-bwd-input-shape", lambda r: pknp.max_pool2d_backward(**pool_bwd(r, input_shape=(2, 2, 4, 4))),
         ValueError, r"\binput_shape\b"),
        ("pool-bwd-input-rank", lambda r: pknp.adaptive_avg_pool2d_backward(f(r, 1, 2, 2, 2), (2, 4, 4)),
         ValueError, r"\binput_shape\b"),
        ("avg-bwd-dy", lambda r: pknp.avg_pool2d_backward(f(r, 1, 2, 3, 2), (1, 2, 4, 4), 2), ValueError,
         r"\bdy must be"),
        ("att-mixed", lambda r: pknp.attention(**att(r, k=f(r, 1, 2, 5, 4, dtype=np.float64))), TypeError,
         r"\bk\b.*float64"),
        ("att-int-q", lambda r: pknp.attention(**att(r, q=np.ones((1, 2, 3, 4), i32))), TypeError, r"\bq\b"),
        ("att-mask-dtype", lambda r: pknp.attention(**att(r), attn_mask=np.ones((3, 5), i32)), TypeError,
         r"\battn_mask\b"),
        ("att-rank", lambda r: pknp.attention(**att(r, q=f(r, 3, 4))), ValueError, r"\bq must be"),
        ("att-S", lambda r: pknp.attention(**att(r, v=f(r, 1, 2, 6, 4))), ValueError, r"\bv must have S"),
        ("att-D", lambda r: pknp.attention(**att(r, k=f(r, 1, 2, 5, 3))), ValueError, r"\bk must have D"),
        ("att-heads", lambda r: pknp.attention(**att(r, k=f(r, 1, 1, 5, 4))), ValueError, r"\bk must have the same"),
        ("att-mask-shape", lambda r: pknp.attention(**att(r), attn_mask=np.ones((4, 5), bool)), ValueError,
         r"\battn_mask\b.*broadcast"),
        ("att-dropout-no-seed", lambda r: pknp.attention(**att(r), dropout_p=0.1), ValueError, r"\bseed\b"),
        ("att-dropout-range", lambda r: pknp.attention(**att(r), dropout_p=1.0, seed=1), ValueError,
         r"\bdropout_p\b"),
        ("att-bwd-lse", lambda r: pknp.attention_backward(f(r, 1, 2, 3, 4), **att(r), out=f(r, 1, 2, 3, 4),
                                                          lse=f(r, 1, 2, 4)), ValueError, r"\blse must be"),
        ("att-bwd-lse-dtype", lambda r: pknp.attention_backward(
            f(r, 1, 2, 3, 4), **att(r), out=f(r, 1, 2, 3, 4), lse=f(r, 1, 2, 3, dtype=np.float64)),
         TypeError, r"\blse\b"),
        ("att-bwd-out", lambda r: pknp.attention_backward(f(r, 1, 2, 3, 4), **att(r), out=f(r, 1, 2, 3, 5),
                                                          lse=f(r, 1, 2, 3)), ValueError, r"\bout must be"),
        ("lstm-int-x", lambda r: pknp.lstm(**lstm(r, x=np.ones((3, 2, 4), np.int64))), TypeError, r"\bx\b.*int64"),
        ("lstm-rank-x", lambda r: pknp.lstm(**lstm(r, x=f(r, 2, 4))), ValueError, r"\bx must be \[T, B, I\]"),
        ("lstm-w_hh", lambda r: pknp.lstm(**lstm(r, w_hh=f(r, 15, 5))), ValueError, r"\bw_hh must be"),
        ("lstm-w_ih", lambda r: pknp.lstm(**lstm(r, w_ih=f(r, 20, 3))), ValueError, r"\bw_ih must be"),
        ("lstm-hx-array", lambda r: pknp.lstm(**lstm(r, hx=f(r, 2, 5))), TypeError, r"\bhx must be"),
        ("lstm-h0-shape", lambda r: pknp.lstm(**lstm(r, hx=(f(r, 3, 5), None))), ValueError, r"hx\[0\] must be"),
        ("lstm-c0-dtype", lambda r: pknp.lstm(**lstm(r, hx=(None, f(r, 2, 5, dtype=np.float64)))), TypeError,
         r"hx\[1\]"),
        ("lstm-reverse", lambda r: pknp.lstm(**lstm(r), reverse=1), TypeError, r"\breverse\b"),
        ("lstm-bs-dtype", lambda r: pknp.lstm(**lstm(r), batch_sizes=np.array([2, 2, 1], i32)), TypeError,
         r"\bbatch_sizes\b"),
        ("lstm-bs-increasing", lambda r: pknp.lstm(**lstm(r), batch_sizes=np.array([1, 2, 2])), ValueError,
         r"\bbatch_sizes\b.*non-increasing"),
        ("lstm-bs-range", lambda r: pknp.lstm(**lstm(r), batch_sizes=np.array([3, 2, 2])), ValueError,
         r"\bbatch_sizes must lie"),
        ("lstm-bwd-dy", lambda r: pknp.lstm_backward(f(r, 3, 2, 4), None, None, **lstm(r)), ValueError,
         r"\bdy must be"),
        ("gru-b_ih", lambda r: pknp.gru(f(r, 3, 2, 4), None, f(r, 15, 4), f(r, 15, 5), f(r, 20)), ValueError,
         r"\bb_ih must be"),
        ("gru-hx-dtype", lambda r: pknp.gru(f(r, 3, 2, 4), f(r, 2, 5, dtype=np.float64), f(r, 15, 4),
                                            f(r, 15, 5)), TypeError, r"\bhx\b"),
        ("lstm_cell-rank", lambda r: pknp.lstm_cell(f(r, 1, 2, 4), None, f(r, 20, 4), f(r, 20, 5)), ValueError,
         r"\bx must be \[B, I\]"),
        ("gru_cell-bwd-dh", lambda r: pknp.gru_cell_backward(f(r, 2, 4), f(r, 2, 4), None, f(r, 15, 4),
                                                             f(r, 15, 5)), ValueError, r"\bdh must be"),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_inputs(call, exc, match, np_rng):
    with pytest.raises(exc, match=match):
        call(np_rng)
