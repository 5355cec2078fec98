"""GEMM tests: pykernels.ops.linear / matmul, pykernels.nn.Linear, pykernels.numpy GEMM functions.

Every backend ("cpp", "triton" through the interpreter on CPU, "reference", and Triton on CUDA
when there is a GPU) is checked against the float64 NumPy reference (pykernels.reference.gemm)
and against torch, forward and every gradient, with tests/helpers.check_op.

Run: .venv/bin/python -m pytest tests/test_gemm.py -q
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pykernels
import pykernels.nn
import pykernels.numpy as pknp
import pykernels.ops as ops
from pykernels import reference
from helpers import Reference, assert_close, check_op, in_threads, make_tensor, poison, to_numpy

ACTIVATIONS = [None, "relu", "gelu", "tanh", "sigmoid"]
LINEAR = Reference(reference.linear_forward, reference.linear_backward)
MATMUL = Reference(reference.matmul_forward, reference.matmul_backward)

_TORCH_ACT = {
    None: lambda z: z,
    "relu": torch.relu,
    "gelu": F.gelu,  # exact erf form (approximate="none")
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def torch_linear(x, weight, bias=None, activation=None):
    return _TORCH_ACT[activation](F.linear(x, weight, bias))


def linear_inputs(x_shape, N, dtype, gen, *, bias=True, activation=None, device="cpu",
                  layouts=("contiguous", "contiguous", "contiguous")):
    """x [..., K], weight [N, K] scaled by 1/sqrt(K) (pre-activations O(1): tanh/sigmoid are not
    saturated), bias [N]. relu gets dyadic values: exact sums, so no backend can land on the
    other side of the kink from the reference."""
    K = x_shape[-1]
    kw = dict(device=device, dyadic=activation == "relu")
    x = make_tensor(x_shape, dtype, gen, layout=layouts[0], **kw)
    w = make_tensor((N, K), dtype, gen, layout=layouts[1], scale=1 / math.sqrt(max(K, 1)), **kw)
    b = make_tensor((N,), dtype, gen, layout=layouts[2], **kw) if bias else None
    return dict(x=x, weight=w, bias=b)


def linear_terms(x_shape, N):
    """Products summed per element: out and grad of x sum over K and N, weight/bias over rows."""
    K = x_shape[-1]
    rows = math.prod(x_shape[:-1])
    return {"out": K, "x": N, "weight": rows, "bias": rows}


def matmul_terms(a_shape, b_shape):
    M, K = a_shape[-2:]
    N = b_shape[-1]
    batch = math.prod(torch.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    # broadcast operands get their gradient summed over the batch as well
    return {"out": K, "a": N * batch, "b": M * batch}


# ----------------------------------------------------------------------------------------------
# linear: every activation, with and without bias, every backend and dtype


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_linear(backend, dtype, activation, bias, gen):
    # interpreter: 2 x 2 output tiles of 32 x 32 and two K steps, the second one ragged
    x_shape, N = ((2, 21, 37), 35) if backend.interpreted else ((3, 41, 67), 29)
    inputs = linear_inputs(x_shape, N, dtype, gen, bias=bias, activation=activation,
                           device=backend.device)
    with backend.context():
        check_op(ops.linear, LINEAR, inputs, kwargs=dict(activation=activation), gen=gen,
                 terms=linear_terms(x_shape, N), torch_fn=torch_linear)


# (x shape, N): size-1 dims, primes, K = 1, K = 0 (-> act(bias)), empty batch (M = 0),
# a tall odd GEMM (1823 x 781, small K) for all but the Triton interpreter (~30 s there).
_LINEAR_SHAPES = [
    ((1, 1), 1),
    ((7, 1), 5),            # K = 1
    ((13, 0), 7),           # K = 0
    ((0, 9), 4),            # M = 0
    ((2, 0, 9), 4),         # empty leading batch
    ((31, 37), 29),         # primes, none a multiple of a block size
    ((3, 1, 33), 17),       # a size-1 batch dim, K just past a block edge
    ((300, 9), 70),         # > 8 row tiles of 32: crosses a tile-group (GROUP_M) boundary
    ((2, 97, 131), 127),    # several tiles each way, K loop with a ragged tail
]
_LINEAR_SHAPES_BIG = [((1823, 7), 781)]


@pytest.mark.parametrize("case", range(len(_LINEAR_SHAPES) + len(_LINEAR_SHAPES_BIG)))
def test_linear_odd_shapes(backend, dtype, case, gen):
    x_shape, N = (_LINEAR_SHAPES + _LINEAR_SHAPES_BIG)[case]
    if backend.interpreted and case >= len(_LINEAR_SHAPES):
        pytest.skip("too slow for the Triton interpreter")
    activation = ACTIVATIONS[case % len(ACTIVATIONS)]
    inputs = linear_inputs(x_shape, N, dtype, gen, activation=activation, device=backend.device)
    with backend.context():
        check_op(ops.linear, LINEAR, inputs, kwargs=dict(activation=activation), gen=gen,
                 terms=linear_terms(x_shape, N), torch_fn=torch_linear)


@pytest.mark.parametrize("layouts", [
    ("transposed", "contiguous", "contiguous"),  # x = X.t()
    ("contiguous", "transposed", "contiguous"),  # weight = W.t(), W [K, N] (tied weights)
    ("strided", "strided", "strided"),           # every other element of the last dim
    ("transposed", "transposed", "strided"),
], ids=["xT", "wT", "sliced", "all"])
def test_linear_layouts(backend, dtype, layouts, gen):
    x_shape, N = ((40, 35), 33) if backend.interpreted else ((45, 71), 37)
    inputs = linear_inputs(x_shape, N, dtype, gen, activation="gelu", device=backend.device,
                           layouts=layouts)
    with backend.context():
        check_op(ops.linear, LINEAR, inputs, kwargs=dict(activation="gelu"), gen=gen,
                 terms=linear_terms(x_shape, N), torch_fn=torch_linear)


def test_linear_batched_non_contiguous_x(backend, dtype, gen):
    # x [B, M, K] seen through a transpose of its two leading dims: not viewable as [B*M, K]
    base = make_tensor((5, 3, 17), dtype, gen, device=backend.device)
    x = base.transpose(0, 1)
    w = make_tensor((6, 17), dtype, gen, device=backend.device, scale=17**-0.5)
    b = make_tensor((6,), dtype, gen, device=backend.device)
    with backend.context():
        check_op(ops.linear, LINEAR, dict(x=x, weight=w, bias=b), kwargs=dict(activation="tanh"),
                 gen=gen, terms=linear_terms(x.shape, 6), torch_fn=torch_linear)


@pytest.mark.parametrize("needs", [("x",), ("weight",), ("bias",), ("x", "bias")], ids="+".join)
def test_linear_partial_grads(backend, dtype, needs, gen):
    # frozen layers: only some inputs require grad, the backward computes only those
    x_shape, N = (33, 35), 34
    inputs = linear_inputs(x_shape, N, dtype, gen, activation="sigmoid", device=backend.device)
    with backend.context():
        check_op(ops.linear, LINEAR, inputs, kwargs=dict(activation="sigmoid"), gen=gen,
                 grad=needs, terms=linear_terms(x_shape, N), torch_fn=torch_linear)


# ----------------------------------------------------------------------------------------------
# matmul: 2-D, batched, broadcast batch dims, odd sizes, layouts

_MATMUL_SHAPES = [
    ((5, 7), (7, 3)),
    ((1, 1), (1, 1)),
    ((6, 1), (1, 4)),                 # K = 1
    ((0, 5), (5, 3)),                 # M = 0
    ((4, 5), (5, 0)),                 # N = 0
    ((4, 0), (0, 3)),                 # K = 0 -> zeros
    ((3, 5, 7), (3, 7, 4)),           # batched
    ((3, 5, 7), (7, 4)),              # [B, M, K] @ [K, N]
    ((5, 7), (3, 7, 4)),              # [M, K] @ [B, K, N]
    ((2, 1, 5, 7), (3, 7, 4)),        # [2, 1, M, K] @ [3, K, N] -> [2, 3, M, N]
    ((1, 3, 5, 7), (2, 1, 7, 4)),     # both broadcast
    ((0, 5, 7), (7, 4)),              # empty batch
    ((2, 13, 31), (2, 31, 17)),       # primes
    ((300, 9), (9, 70)),              # crosses a tile-group boundary
    ((3, 97, 131), (131, 127)),       # several tiles each way, ragged K tail
]
_MATMUL_SHAPES_BIG = [((1823, 5), (5, 781))]


@pytest.mark.parametrize("case", range(len(_MATMUL_SHAPES) + len(_MATMUL_SHAPES_BIG)))
def test_matmul(backend, dtype, case, gen):
    a_shape, b_shape = (_MATMUL_SHAPES + _MATMUL_SHAPES_BIG)[case]
    if backend.interpreted and case >= len(_MATMUL_SHAPES):
        pytest.skip("too slow for the Triton interpreter")
    a = make_tensor(a_shape, dtype, gen, device=backend.device)
    b = make_tensor(b_shape, dtype, gen, device=backend.device)
    with backend.context():
        check_op(ops.matmul, MATMUL, dict(a=a, b=b), gen=gen, terms=matmul_terms(a_shape, b_shape),
                 torch_fn=torch.matmul)


@pytest.mark.parametrize("layouts", [
    ("transposed", "contiguous"), ("contiguous", "transposed"), ("strided", "transposed"),
    ("transposed", "strided"),
], ids=["aT", "bT", "a_sliced-bT", "aT-b_sliced"])
@pytest.mark.parametrize("batched", [False, True], ids=["2d", "batched"])
def test_matmul_layouts(backend, dtype, layouts, batched, gen):
    a_shape, b_shape = ((35, 37), (37, 33)) if backend.interpreted else ((37, 53), (53, 29))
    if batched:
        a_shape, b_shape = (2, 1) + a_shape, (3,) + b_shape
    a = make_tensor(a_shape, dtype, gen, device=backend.device, layout=layouts[0])
    b = make_tensor(b_shape, dtype, gen, device=backend.device, layout=layouts[1])
    with backend.context():
        check_op(ops.matmul, MATMUL, dict(a=a, b=b), gen=gen, terms=matmul_terms(a_shape, b_shape),
                 torch_fn=torch.matmul)


@pytest.mark.parametrize("shapes", [((7,), (7, 3)), ((3, 5, 7), (7,)), ((7,), (7,))], ids=str)
def test_matmul_1d_like_torch(backend, dtype, shapes, gen):
    # 1-D operands are promoted as torch.matmul does (outside the reference's >= 2-D scope)
    a = make_tensor(shapes[0], dtype, gen, device=backend.device, requires_grad=True)
    b = make_tensor(shapes[1], dtype, gen, device=backend.device, requires_grad=True)
    with backend.context():
        c = ops.matmul(a, b)
        dc = make_tensor(c.shape, dtype, gen, device=backend.device)
        da, db = torch.autograd.grad(c, (a, b), dc)
    ta, tb = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
    tc = torch.matmul(ta, tb)
    tda, tdb = torch.autograd.grad(tc, (ta, tb), dc)
    assert c.shape == tc.shape and c.dtype == tc.dtype
    assert_close(c, tc, terms=7, name="out vs torch")
    assert_close(da, tda, terms=15, name="grad of a vs torch")
    assert_close(db, tdb, terms=15, name="grad of b vs torch")


@pytest.mark.parametrize("needs", [("a",), ("b",)], ids="+".join)
def test_matmul_partial_grads(backend, dtype, needs, gen):
    a = make_tensor((2, 1, 33, 34), dtype, gen, device=backend.device)
    b = make_tensor((3, 34, 35), dtype, gen, device=backend.device)
    with backend.context():
        check_op(ops.matmul, MATMUL, dict(a=a, b=b), gen=gen, grad=needs,
                 terms=matmul_terms(a.shape, b.shape), torch_fn=torch.matmul)


def test_matmul_expanded_batch(backend, dtype, gen):
    # a batch dim of stride 0 (expand), as autograd and broadcasting code produce
    a = make_tensor((1, 6, 10), dtype, gen, device=backend.device).expand(4, 6, 10)
    b = make_tensor((4, 10, 7), dtype, gen, device=backend.device)
    with backend.context():
        check_op(ops.matmul, MATMUL, dict(a=a, b=b), gen=gen,
                 terms=matmul_terms(a.shape, b.shape), torch_fn=torch.matmul)


# ----------------------------------------------------------------------------------------------
# gradcheck in float64 (finite differences, independent of the reference)


def _away_from_kink(inputs, activation, gen, shape, N, device):
    """Resample until every pre-activation is at least 0.05 from relu's kink (gradcheck's
    finite differences are meaningless across it)."""
    for _ in range(200):
        z = reference.linear_forward(to_numpy(inputs["x"]), to_numpy(inputs["weight"]),
                                     to_numpy(inputs["bias"]))
        if activation != "relu" or np.abs(z).min() > 0.05:
            return inputs
        inputs = linear_inputs(shape, N, torch.float64, gen, device=device)
    raise AssertionError("could not draw inputs away from relu's kink")


@pytest.mark.dtypes(torch.float64)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_linear_gradcheck(backend, dtype, activation, gen):
    shape, N = (2, 3, 4), 5
    inputs = linear_inputs(shape, N, dtype, gen, device=backend.device,
                           layouts=("contiguous", "transposed", "contiguous"))
    inputs = _away_from_kink(inputs, activation, gen, shape, N, backend.device)
    args = tuple(v.detach().requires_grad_(True) for v in inputs.values())
    with backend.context():
        assert torch.autograd.gradcheck(lambda x, w, b: ops.linear(x, w, b, activation=activation),
                                        args)


@pytest.mark.dtypes(torch.float64)
@pytest.mark.parametrize("shapes", [((4, 3), (3, 5)), ((2, 1, 4, 3), (3, 3, 2))], ids=["2d", "broadcast"])
def test_matmul_gradcheck(backend, dtype, shapes, gen):
    a = make_tensor(shapes[0], dtype, gen, device=backend.device, requires_grad=True)
    b = make_tensor(shapes[1], dtype, gen, device=backend.device, requires_grad=True)
    with backend.context():
        assert torch.autograd.gradcheck(ops.matmul, (a, b))


# ----------------------------------------------------------------------------------------------
# torch.library.opcheck on every registered GEMM op


def _opcheck_samples(name, gen):
    """(args, kwargs) samples for torch.ops.pykernels.<name>, or None for an op not listed here.

    Schemas (pykernels/ops/gemm.py): linear(x, weight, bias?, activation: int, save_preact: bool)
    -> (out, preact); linear_backward(grad, x, weight, bias?, saved, activation, need_x, need_w,
    need_b); matmul(a, b); matmul_backward(grad, a, b, need_a, need_b). Activation codes index
    (none, relu, gelu, tanh, sigmoid). Inputs of the backward ops do not require grad (they
    have no autograd formula: no double backward)."""
    f64 = torch.float64

    def t(shape, grad=False, **kw):
        return make_tensor(shape, f64, gen, requires_grad=grad, **kw)

    if name == "linear":
        x, w, b = t((3, 4, 5), True), t((6, 5), True, scale=5**-0.5), t((6,), True)
        return ([((x, w, b, code, code == 2), {}) for code in range(5)]
                + [((x, w, None, 2, True), {}), ((t((7, 5), True, layout="transposed"), w, b, 3, False), {})])
    if name == "linear_backward":
        samples = []
        x, w, b = t((3, 4, 5)), t((6, 5), scale=5**-0.5), t((6,))
        for code in range(5):
            out, pre = torch.ops.pykernels.linear(x, w, b, code, True)
            saved = pre if code == 2 else (out if code else x.new_empty(0))
            g = t(out.shape)
            samples.append(((g, x, w, b, saved, code, True, True, True), {}))
        samples.append(((g, x, w, None, saved, 4, True, False, False), {}))
        return samples
    if name == "matmul":
        return [((t((2, 1, 3, 4), True), t((3, 4, 5), True)), {}),
                ((t((6, 4), True, layout="transposed"), t((4, 3), True)), {})]
    if name == "matmul_backward":
        a, b = t((2, 1, 3, 4)), t((3, 4, 5))
        return [((t((2, 3, 3, 5)), a, b, True, True), {}), ((t((2, 3, 3, 5)), a, b, False, True), {})]
    return None


def _registered_ops():
    return sorted(n for n in dir(torch.ops.pykernels)
                  if isinstance(getattr(torch.ops.pykernels, n, None), torch._ops.OpOverloadPacket))


_GEMM_OPS = ("linear", "linear_backward", "matmul", "matmul_backward")


def test_every_gemm_op_has_an_opcheck_sample():
    registered = _registered_ops()
    gemm_ops = [n for n in registered if any(s in n for s in ("linear", "matmul", "gemm"))]
    assert set(_GEMM_OPS) <= set(gemm_ops), f"torch.ops.pykernels has {registered}"
    missing = [n for n in gemm_ops if n not in _GEMM_OPS]
    assert not missing, f"registered GEMM ops without an opcheck case in this file: {missing}"


@pytest.mark.parametrize("name", _GEMM_OPS)
def test_opcheck(name, gen):
    op = getattr(torch.ops.pykernels, name)
    for args, kwargs in _opcheck_samples(name, gen):
        torch.library.opcheck(op, args, kwargs)


# ----------------------------------------------------------------------------------------------
# pykernels.nn.Linear


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_nn_linear_matches_torch(bias, gen):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    ref = torch.nn.Linear(23, 17, bias=bias)
    pk = pykernels.nn.Linear(23, 17, bias=bias)
    assert isinstance(pk, torch.nn.Linear)
    assert pk.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert pk.state_dict()[k].shape == v.shape, k
    pk.load_state_dict(ref.state_dict())

    x = make_tensor((4, 9, 23), torch.float32, gen)
    xr, xp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yr, yp = ref(xr), pk(xp)
    assert yp.shape == yr.shape and yp.dtype == yr.dtype
    assert_close(yp, yr, terms=23, name="output")
    dy = make_tensor(yr.shape, torch.float32, gen)
    yr.backward(dy)
    yp.backward(dy)
    assert_close(xp.grad, xr.grad, terms=17, name="grad of x")
    assert_close(pk.weight.grad, ref.weight.grad, terms=36, name="grad of weight")
    if bias:
        assert_close(pk.bias.grad, ref.bias.grad, terms=36, name="grad of bias")


def test_nn_linear_load_into_torch(gen):
    pk = pykernels.nn.Linear(8, 3)
    ref = torch.nn.Linear(8, 3)
    ref.load_state_dict(pk.state_dict())
    x = make_tensor((5, 8), torch.float32, gen)
    with torch.no_grad():
        assert_close(pk(x), ref(x), terms=8)


# ----------------------------------------------------------------------------------------------
# pykernels.numpy: the C++ kernels on NumPy arrays


def _np(shape, dtype, gen, scale=1.0, dyadic=False):
    return make_tensor(shape, torch.float64, gen, scale=scale, dyadic=dyadic).numpy().astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_numpy_linear(dtype, activation, gen):
    M, N, K = 37, 19, 43
    d = activation == "relu"  # exact sums: every backend decides the kink alike (linear_inputs)
    x, w = _np((M, K), dtype, gen, dyadic=d), _np((N, K), dtype, gen, K**-0.5, dyadic=d)
    b = _np((N,), dtype, gen, dyadic=d)
    want = reference.linear_forward(x, w, b, activation)
    y = pknp.linear(x, w, b, activation=activation)
    assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == (M, N)
    assert_close(y, want, dtype=dtype, terms=K)
    out = poison(np.empty((N, M), dtype)).T  # a poisoned, transposed output buffer
    assert pknp.linear(x, w, b, activation=activation, out=out) is out
    assert_close(out, want, dtype=dtype, terms=K, name="out=")

    dy = _np((M, N), dtype, gen)
    got = pknp.linear_backward(dy, x, w, b, activation=activation)
    want = reference.linear_backward(dy, x, w, b, activation)
    for name, g, r, t, like in zip(("x", "weight", "bias"), got, want, (N, M, M), (x, w, b)):
        assert g.dtype == dtype and g.shape == like.shape, name
        assert_close(g, r, dtype=dtype, terms=t, name=f"grad of {name}")

    dx, dw, db = pknp.linear_backward(dy, x, w, None, activation=activation)
    assert db is None
    rdx, rdw, _ = reference.linear_backward(dy, x, w, None, activation)
    assert_close(dx, rdx, dtype=dtype, terms=N, name="grad of x (no bias)")
    assert_close(dw, rdw, dtype=dtype, terms=M, name="grad of weight (no bias)")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shapes", [((29, 31), (31, 23)), ((2, 1, 7, 9), (3, 9, 5))], ids=["2d", "broadcast"])
def test_numpy_matmul(dtype, shapes, gen):
    a, b = _np(shapes[0], dtype, gen), _np(shapes[1], dtype, gen)
    terms = matmul_terms(shapes[0], shapes[1])
    want = reference.matmul_forward(a, b)
    c = pknp.matmul(a, b)
    assert isinstance(c, np.ndarray) and c.dtype == dtype and c.shape == want.shape
    assert_close(c, want, dtype=dtype, terms=terms["out"])
    out = poison(np.empty(want.shape[:-1] + (2 * want.shape[-1],), dtype))[..., ::2]
    assert pknp.matmul(a, b, out=out) is out
    assert_close(out, want, dtype=dtype, terms=terms["out"], name="out=")
    dc = _np(c.shape, dtype, gen)
    da, db = pknp.matmul_backward(dc, a, b)
    rda, rdb = reference.matmul_backward(dc, a, b)
    assert da.shape == a.shape and db.shape == b.shape
    assert da.dtype == dtype and db.dtype == dtype
    assert_close(da, rda, dtype=dtype, terms=terms["a"], name="grad of a")
    assert_close(db, rdb, dtype=dtype, terms=terms["b"], name="grad of b")


def test_numpy_non_contiguous(gen):
    x = _np((40, 30), np.float32, gen).T        # [30, 40], F-ordered
    w = _np((12, 80), np.float32, gen)[:, ::2]  # [12, 40], stride 2
    b = _np((12,), np.float32, gen)[::-1]       # negative stride
    assert_close(pknp.linear(x, w, b), reference.linear_forward(x, w, b), dtype=np.float32, terms=40)
    assert_close(pknp.matmul(x[::-1], w.T), reference.matmul_forward(x[::-1], w.T),
                 dtype=np.float32, terms=40)
    dy = _np((30, 12), np.float32, gen)[::-1]
    got = pknp.linear_backward(dy, x, w, b, activation="tanh")
    want = reference.linear_backward(dy, x, w, b, "tanh")
    for name, g, r, t in zip(("x", "w", "b"), got, want, (12, 30, 30)):
        assert_close(g, r, dtype=np.float32, terms=t, name=f"grad of {name}")


def test_numpy_out_is_checked(gen):
    x, w = _np((4, 5), np.float32, gen), _np((3, 5), np.float32, gen)
    with pytest.raises(ValueError, match="out"):
        pknp.linear(x, w, out=np.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="out"):
        pknp.linear(x, w, out=np.empty((4, 3), np.float64))
    with pytest.raises(ValueError, match="out"):
        pknp.matmul(x, w.T, out=np.empty((4, 4), np.float32))


@pytest.mark.parametrize("bad", [np.int32, np.float16], ids=["int32", "float16"])
def test_numpy_unsupported_dtype(bad, gen):
    x, w = _np((4, 5), np.float32, gen), _np((3, 5), np.float32, gen)
    with pytest.raises(TypeError, match=r"\bx\b"):
        pknp.linear(x.astype(bad), w)
    with pytest.raises(TypeError, match=r"\ba\b"):
        pknp.matmul(x.astype(bad), w.T)
    with pytest.raises(TypeError, match=r"\bw\b"):  # pykernels.numpy names it w, like reference
        pknp.linear(x, w.astype(np.float64))  # mixed float32 / float64


# ----------------------------------------------------------------------------------------------
# threads


@pytest.mark.backends("cpp")
def test_matmul_reentrant_from_threads(backend, gen):
    shapes = [((70, 90), (90, 50)), ((3, 40, 60), (60, 30))]
    data = [(make_tensor(sa, torch.float32, gen), make_tensor(sb, torch.float32, gen))
            for sa, sb in shapes]
    want = [reference.matmul_forward(to_numpy(a), to_numpy(b)) for a, b in data]

    def work(i):
        a, b = data[i]
        with backend.context():
            for _ in range(20):
                assert_close(ops.matmul(a, b), want[i], dtype=torch.float32, terms=90,
                             name=f"thread {i}")

    in_threads([lambda i=i: work(i) for i in range(len(data))])


@pytest.mark.backends("cpp")
def test_num_threads_give_same_results(backend, gen):
    x_shape, N = (61, 83), 47
    inputs = linear_inputs(x_shape, N, torch.float32, gen, activation="gelu")
    dy = make_tensor((61, N), torch.float32, gen)
    saved = pykernels.get_num_threads()
    results = {}
    try:
        for n in (1, 2):
            pykernels.set_num_threads(n)
            assert pykernels.get_num_threads() == n
            leaves = [v.detach().requires_grad_(True) for v in inputs.values()]
            with backend.context():
                y = ops.linear(*leaves, activation="gelu")
                grads = torch.autograd.grad(y, leaves, dy)
            results[n] = (y.detach(), *grads)
    finally:
        pykernels.set_num_threads(saved)
    for name, one, two in zip(("out", "x", "weight", "bias"), results[1], results[2]):
        assert_close(two, one, terms=83, name=f"{name}: 2 threads vs 1")


# ----------------------------------------------------------------------------------------------
# bad inputs: exception type from SPEC_GEMM.md, argument named in the message


def test_linear_bad_inputs(backend, gen):
    def t(*shape):
        return make_tensor(shape, torch.float32, gen, device=backend.device)

    x, w, b = t(4, 5), t(3, 5), t(3)
    with backend.context():
        with pytest.raises(ValueError, match="weight"):
            ops.linear(x, t(3, 6))                            # K mismatch
        with pytest.raises(ValueError, match="weight"):
            ops.linear(x, t(5))                               # 1-D weight
        with pytest.raises(ValueError, match="bias"):
            ops.linear(x, w, t(4))                            # bias of the wrong length
        with pytest.raises(ValueError, match="bias"):
            ops.linear(x, w, t(1, 3))                         # 2-D bias
        with pytest.raises(ValueError, match="activation"):
            ops.linear(x, w, b, activation="swish")
        with pytest.raises(TypeError, match=r"\bx\b"):
            ops.linear(x.to(torch.int32), w.to(torch.int32))  # integer tensors
        with pytest.raises(TypeError, match="weight"):
            ops.linear(x, w.double())                         # mixed dtypes
        with pytest.raises(TypeError, match="bias"):
            ops.linear(x, w, b.double())


def test_matmul_bad_inputs(backend, gen):
    def t(*shape):
        return make_tensor(shape, torch.float32, gen, device=backend.device)

    a, b = t(4, 5), t(5, 3)
    with backend.context():
        with pytest.raises(ValueError, match=r"\bb\b"):
            ops.matmul(a, t(6, 3))                            # K mismatch
        with pytest.raises(ValueError, match=r"\ba\b"):
            ops.matmul(t(), b)                                # 0-D
        with pytest.raises(ValueError, match=r"\b(a|b)\b"):
            ops.matmul(t(2, 4, 5), t(3, 5, 3))                # batch dims do not broadcast
        with pytest.raises(TypeError, match=r"\ba\b"):
            ops.matmul(a.to(torch.int64), b.to(torch.int64))  # integer tensors
        with pytest.raises(TypeError, match=r"\bb\b"):
            ops.matmul(a, b.double())                         # mixed dtypes


def test_mixed_devices_rejected(gen):
    if not torch.cuda.is_available():
        pytest.skip("mixed-device inputs need a CUDA device")

    def t(*shape, device="cpu"):
        return make_tensor(shape, torch.float32, gen, device=device)

    with pytest.raises(ValueError, match="weight"):
        ops.linear(t(4, 5), t(3, 5, device="cuda"))
    with pytest.raises(ValueError, match="bias"):
        ops.linear(t(4, 5, device="cuda"), t(3, 5, device="cuda"), t(3))
    with pytest.raises(ValueError, match=r"\bb\b"):
        ops.matmul(t(4, 5), t(5, 3, device="cuda"))


def test_poison_helper_catches_unwritten_output(gen):
    # the helpers themselves: a NaN left in an output never passes the comparison
    out = poison(torch.empty(3, 4))
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(out, np.zeros((3, 4)))


@pytest.fixture(params=[0, 1], ids=["packed", "in-place"])
def gemm_packing(request):
    """Forces the C++ GEMM to pack both operands (0) or to read A and row-major B in place (1),
    whatever the problem size, so both code paths see every shape below."""
    from pykernels import _C
    saved = _C.gemm_direct_mode()
    _C.set_gemm_direct_mode(request.param)
    yield request.param
    _C.set_gemm_direct_mode(saved)


@pytest.mark.backends("cpp")
@pytest.mark.parametrize("x_shape,N", [((1, 1), 1), ((13, 37), 29), ((25, 600), 45),
                                       ((3, 26, 33), 70), ((300, 9), 3)])
def test_linear_packing_paths(backend, dtype, x_shape, N, gemm_packing, gen):
    activation = "gelu"
    inputs = linear_inputs(x_shape, N, dtype, gen, activation=activation, device=backend.device,
                           layouts=("transposed", "contiguous", "contiguous"))
    with backend.context():
        check_op(ops.linear, LINEAR, inputs, kwargs=dict(activation=activation), gen=gen,
                 terms=linear_terms(x_shape, N), torch_fn=torch_linear)


@pytest.mark.backends("cpp")
@pytest.mark.dtypes(torch.float64)
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_eager_path_equals_custom_op(backend, dtype, activation, gen, monkeypatch):
    """ops.linear / ops.matmul skip the custom op's dispatch in eager mode (ops/gemm.py _eager):
    the registered op (what torch.compile and opcheck see) must give the same values and grads."""
    import pykernels.ops.gemm as G
    x, w, b = (make_tensor(s, dtype, gen).requires_grad_() for s in ((6, 11), (5, 11), (5,)))
    a, c = (make_tensor(s, dtype, gen).requires_grad_() for s in ((2, 3, 4), (4, 7)))
    dy, dc = make_tensor((6, 5), dtype, gen), make_tensor((2, 3, 7), dtype, gen)

    def run():
        y, m = ops.linear(x, w, b, activation=activation), ops.matmul(a, c)
        grads = torch.autograd.grad((y, m), (x, w, b, a, c), (dy, dc))
        return (y, m) + grads

    eager = run()
    monkeypatch.setattr(G, "_eager", lambda t: False)
    via_op = run()
    for e, o in zip(eager, via_op):
        torch.testing.assert_close(e, o, rtol=0, atol=0)
