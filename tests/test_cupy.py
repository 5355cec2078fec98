"""pykernels.numpy on CuPy arrays (the Triton kernels through DLPack): every op, forward and
backward, against the NumPy front (the C++ kernels) on the same float64 values; results are CuPy
arrays whose memory is torch's output (no copy); mixed NumPy / CuPy arguments and ``out=`` raise.

The dispatch test at the top runs anywhere (it never reaches CuPy); the rest needs CuPy and a
CUDA GPU and is skipped without them.

Test: .venv/bin/python -m pytest -q tests/test_cupy.py
"""
import numpy as np
import pytest
import torch

import pykernels.numpy as pknp

GPU_REASON = "needs CuPy and a CUDA GPU"


# ---- the dispatch, without CuPy: a stand-in whose type lives in a module named "cupy" ----------
class _CupyTyped:
    """Not an array: only what pykernels.numpy's dispatch looks at (its type's module)."""
    __module__ = "cupy"


@pytest.mark.parametrize("call, numpy_arg", [
    (lambda a, c: pknp.linear(a, c), "x"),
    (lambda a, c: pknp.linear(c, a), "w"),
    (lambda a, c: pknp.matmul_backward(a, c, c), "dc"),
    (lambda a, c: pknp.lstm(c, (c, a), c, c), "hx[1]"),
    (lambda a, c: pknp.attention(c, c, c, attn_mask=a), "attn_mask"),
], ids=["x", "w", "dc", "hx[1]", "attn_mask"])
def test_mixed_numpy_and_cupy_raise_naming_the_numpy_argument(call, numpy_arg):
    a = np.ones((2, 2), np.float32)
    with pytest.raises(TypeError, match=rf"^{numpy_arg.replace('[', '.').replace(']', '.')} is a numpy\.ndarray"):
        call(a, _CupyTyped())


# ---- on a GPU -----------------------------------------------------------------------------------
def _cupy():
    cp = pytest.importorskip("cupy", reason=GPU_REASON)
    if not torch.cuda.is_available():
        pytest.skip(GPU_REASON)
    return cp


def _to_cupy(cp, v):
    if isinstance(v, np.ndarray):
        return cp.asarray(v)
    if isinstance(v, (tuple, list)):
        return type(v)(_to_cupy(cp, x) for x in v)
    if isinstance(v, dict):
        return {k: _to_cupy(cp, x) for k, x in v.items()}
    return v


def _compare(cp, got, want, where: str, rtol: float, atol: float) -> None:
    if want is None:
        assert got is None, f"{where}: expected None, got {type(got).__name__}"
    elif isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want), f"{where}: {got!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(cp, g, w, f"{where}[{i}]", rtol, atol)
    else:
        assert isinstance(got, cp.ndarray), f"{where}: a {type(got).__name__}, not a cupy.ndarray"
        assert got.shape == want.shape and got.dtype == want.dtype, \
            f"{where}: {got.shape} {got.dtype} != {want.shape} {want.dtype}"
        g = cp.asnumpy(got)
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(g, want, err_msg=where)
        else:
            np.testing.assert_allclose(g, want, rtol=rtol, atol=atol, err_msg=where)


def _both(cp, name, *args, rtol=1e-9, atol=1e-10, **kwargs):
    """pykernels.numpy.<name> on NumPy arrays and on the same values as CuPy arrays; results
    compared (float64 on both backends: only the summation order differs); the NumPy one returned."""
    fn = getattr(pknp, name)
    want = fn(*args, **kwargs)
    got = fn(*_to_cupy(cp, args), **_to_cupy(cp, kwargs))
    _compare(cp, got, want, name, rtol, atol)
    return want


def _like(rng, a):
    return rng.standard_normal(a.shape)


# Each case runs an op's forward and backward through _both; arrays are fresh float64 normals.
def _linear(cp, rng):
    x, w, b = rng.standard_normal((5, 7)), rng.standard_normal((3, 7)), rng.standard_normal(3)
    y = _both(cp, "linear", x, w, b, activation="gelu")
    _both(cp, "linear_backward", _like(rng, y), x, w, b, activation="gelu")


def _matmul(cp, rng):
    a, b = rng.standard_normal((2, 5, 7)), rng.standard_normal(7)
    c = _both(cp, "matmul", a, b)
    _both(cp, "matmul_backward", _like(rng, c), a, b)


def _conv2d(cp, rng):
    x, w, b = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    y = _both(cp, "conv2d", x, w, b, stride=2, padding=1, activation="relu")
    _both(cp, "conv2d_backward", _like(rng, y), x, w, b, stride=2, padding=1, activation="relu")


def _conv_transpose2d(cp, rng):
    x, w, b = rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(3)
    kw = dict(stride=2, padding=1, output_padding=1)
    y = _both(cp, "conv_transpose2d", x, w, b, **kw)
    _both(cp, "conv_transpose2d_backward", _like(rng, y), x, w, b, **kw)


def _max_pool2d(cp, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    y, idx = _both(cp, "max_pool2d", x, 3, 2, 1, return_indices=True)
    _both(cp, "max_pool2d_backward", _like(rng, y), idx, x.shape)


def _avg_pool2d(cp, rng):
    x = rng.standard_normal((3, 9, 8))  # unbatched
    y = _both(cp, "avg_pool2d", x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    _both(cp, "avg_pool2d_backward", _like(rng, y), x.shape, 3, 2, 1, ceil_mode=True, count_include_pad=False)


def _adaptive_avg_pool2d(cp, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    y = _both(cp, "adaptive_avg_pool2d", x, (4, 3))
    _both(cp, "adaptive_avg_pool2d_backward", _like(rng, y), x.shape)


def _adaptive_max_pool2d(cp, rng):
    x = rng.standard_normal((2, 3, 9, 8))
    y, idx = _both(cp, "adaptive_max_pool2d", x, (4, 3), return_indices=True)
    _both(cp, "adaptive_max_pool2d_backward", _like(rng, y), idx, x.shape)


def _attention(cp, rng):
    q, k, v = (rng.standard_normal(s) for s in ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6)))
    mask = rng.standard_normal((1, 3, 5, 7))  # additive, broadcast over B: dmask is summed back
    kw = dict(attn_mask=mask, dropout_p=0.25, seed=2 ** 62 + 12345)  # both words of the key non-zero
    out, lse = _both(cp, "attention", q, k, v, **kw)
    _both(cp, "attention_backward", _like(rng, out), q, k, v, out, lse, **kw)


def _lstm(cp, rng):
    T, B, I, H = 4, 3, 5, 6
    x, h0, c0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    b_ih, b_hh = rng.standard_normal(4 * H), rng.standard_normal(4 * H)
    bs = np.array([3, 3, 2, 1], np.int64)
    y, (hn, cn) = _both(cp, "lstm", x, (h0, c0), w_ih, w_hh, b_ih, b_hh, batch_sizes=bs)
    _both(cp, "lstm_backward", _like(rng, y), _like(rng, hn), None, x, (h0, c0), w_ih, w_hh, b_ih, b_hh,
          batch_sizes=bs)


def _gru(cp, rng):
    T, B, I, H = 4, 3, 5, 6
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    w_ih, w_hh, b_hh = rng.standard_normal((3 * H, I)), rng.standard_normal((3 * H, H)), rng.standard_normal(3 * H)
    y, hn = _both(cp, "gru", x, h0, w_ih, w_hh, None, b_hh, reverse=True)
    _both(cp, "gru_backward", _like(rng, y), _like(rng, hn), x, h0, w_ih, w_hh, None, b_hh, reverse=True)


def _lstm_cell(cp, rng):
    B, I, H = 3, 5, 6
    x, h0 = rng.standard_normal((B, I)), rng.standard_normal((B, H))
    w_ih, w_hh, b_ih = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H)), rng.standard_normal(4 * H)
    h, c = _both(cp, "lstm_cell", x, (h0, None), w_ih, w_hh, b_ih)
    _both(cp, "lstm_cell_backward", _like(rng, h), _like(rng, c), x, (h0, None), w_ih, w_hh, b_ih)


def _gru_cell(cp, rng):
    I, H = 5, 6
    x, h0 = rng.standard_normal(I), rng.standard_normal(H)  # unbatched
    w_ih, w_hh = rng.standard_normal((3 * H, I)), rng.standard_normal((3 * H, H))
    h = _both(cp, "gru_cell", x, h0, w_ih, w_hh)
    _both(cp, "gru_cell_backward", _like(rng, h), x, h0, w_ih, w_hh)


CASES = [_linear, _matmul, _conv2d, _conv_transpose2d, _max_pool2d, _avg_pool2d, _adaptive_avg_pool2d,
         _adaptive_max_pool2d, _attention, _lstm, _gru, _lstm_cell, _gru_cell]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[1:] for c in CASES])
def test_forward_and_backward_match_the_numpy_front(case):
    cp = _cupy()
    case(cp, np.random.default_rng(CASES.index(case)))


def test_float16_runs_on_the_triton_kernels():
    cp = _cupy()
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((33, 17)), rng.standard_normal((9, 17))
    y = pknp.linear(cp.asarray(x, cp.float16), cp.asarray(w, cp.float16))
    assert isinstance(y, cp.ndarray) and y.dtype == cp.float16
    want = x.astype(np.float16).astype(np.float64) @ w.astype(np.float16).astype(np.float64).T
    np.testing.assert_allclose(cp.asnumpy(y).astype(np.float64), want, rtol=1e-2, atol=1e-2)


def test_no_copy_either_way(monkeypatch):
    """The torch op reads the CuPy array's memory, and the CuPy result is the op's output."""
    cp = _cupy()
    import pykernels.ops
    seen = {}
    op = pykernels.ops.linear

    def recording(x, w, b=None, activation=None):
        y = op(x, w, b, activation)
        seen.update(x=x.data_ptr(), w=w.data_ptr(), y=y.data_ptr())
        return y
    monkeypatch.setattr(pykernels.ops, "linear", recording)
    x, w = cp.random.standard_normal((6, 4))[:, ::2], cp.random.standard_normal((3, 2))  # x strided
    y = pknp.linear(x, w)
    assert seen["x"] == x.data.ptr and seen["w"] == w.data.ptr
    assert y.data.ptr == seen["y"]


def test_mixed_arrays_and_out_raise():
    cp = _cupy()
    x, w = cp.ones((4, 3)), np.ones((2, 3))
    with pytest.raises(TypeError, match=r"^w is a numpy\.ndarray but x is a CuPy array"):
        pknp.linear(x, w)
    with pytest.raises(NotImplementedError, match="out="):
        pknp.matmul(x, cp.ones((3, 2)), out=cp.empty((4, 2)))
    with pytest.raises(TypeError, match="b must be a cupy.ndarray"):
        pknp.linear(x, cp.ones((2, 3)), [0.0, 1.0])
    q = cp.ones((1, 2, 3))
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*63\)"):
        pknp.attention(q, q, q, dropout_p=0.5, seed=2 ** 63)


def test_arrays_on_two_gpus_raise():
    cp = _cupy()
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cp.cuda.Device(0):
        x = cp.ones((4, 3))
    with cp.cuda.Device(1):
        w = cp.ones((2, 3))
    with pytest.raises(ValueError, match="w is on cuda:1 but x is on cuda:0"):
        pknp.linear(x, w)
