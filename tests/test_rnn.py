"""LSTM / GRU tests: pykernels.ops.lstm_cell / gru_cell / lstm / gru (one layer, one direction,
the whole sequence in one op) and the modules pykernels.nn.LSTMCell / GRUCell / LSTM / GRU.

    LSTM, gates [i, f, g, o]: A = x W_ih^T + b_ih + h W_hh^T + b_hh;  c' = f*c + i*g;  h' = o*tanh(c')
    GRU,  gates [r, z, n]:    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn));  h' = (1-z)*n + z*h
    x [T, B, I], h0/c0 [B, H] -> y [T, B, H], hn/cn [B, H]; reverse walks t = T-1 .. 0;
    batch_sizes [T] (non-increasing): only rows b < batch_sizes[t] step at t, the others keep
    their state and get y = 0.

Every backend ("cpp" in float32 and float64, "triton" through the interpreter on CPU in float32
on small shapes, "reference", and Triton on CUDA when there is a GPU) is checked against the
float64 NumPy oracle (pykernels.reference.rnn, itself checked against torch here), forward and
every gradient (x, h0, c0, w_ih, w_hh, b_ih, b_hh), with tests/helpers.check_op.

Tolerance (helpers.TOLERANCES, no per-test override): `terms` = products summed per element,
counting the recurrence (rnn_terms below): a gate pre-activation sums I + H products; an error
made at step s reaches every later step through the recurrence, and the rounding errors of the
T steps add up like a random walk, so y, hn, cn get T*(I + H). Backprop through time adds, per
step, dh = dA W_hh (G*H products, G = 4 LSTM / 3 GRU) and reuses the forward's values: the
input/state gradients get T*(I + H + G*H) (+ G*H for dx = dA W_ih); the weight and bias
gradients sum over all T*B (step, row) pairs on top of that.

What is covered:
  * shapes: T = 1, odd T and T = 100, B = 1, odd H and I, I = 1, I != H, H = 1; empty
    (T = 0, B = 0).
  * initial states None (zeros) and given (non-zero), no bias and b_ih only, reverse,
    batch_sizes (packed: rows drop out; in reverse a row enters at its own last step), all
    three together.
  * layouts: x as a batch_first transposed view, strided last dims, transposed weights and h0,
    inputs expanded over the batch (stride 0); upstream gradients of stride 0 (y.sum()) and
    transposed; gradients of one output only (y, hn or cn), of some inputs only; no_grad.
  * the cells (T = 1): batched, B = 1, unbatched [I], hx None.
  * the kernels themselves (C++ binding and Triton launchers, the SPEC entry points) on
    NaN-poisoned, strided outputs and workspace: every element written; C++ with 1 and 2
    threads; C++ scratch reused from a NaN-poisoned block cache.
  * gradcheck in float64, torch.library.opcheck on pykernels::lstm / lstm_backward / gru /
    gru_backward with the arguments the public ops pass, the registered ops' autograd
    formulas (under a dispatch mode), torch.compile(fullgraph=True).
  * pykernels.nn.LSTM / GRU / LSTMCell / GRUCell against torch.nn after load_state_dict:
    multi-layer, bidirectional, batch_first, PackedSequence with unsorted lengths, hx None and
    given, unbatched, dropout in eval and dropout = 0 in train, bias=False; outputs, states,
    input, hx and every parameter gradient; proj_size > 0 raises NotImplementedError.
  * bad inputs: an error naming the argument for each entry of a table.

Run: TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_rnn.py -q -p no:logging
"""

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import pykernels
import pykernels.nn
import pykernels.ops as ops
from pykernels.reference import rnn as RR
from helpers import (PassThrough, RecordPykernelsCalls, Reference, assert_all_rejected, assert_close, check_op,
                     make_tensor, opcheck_recorded, poison, to_numpy)

GATES = {"lstm": 4, "gru": 3}


# ----------------------------------------------------------------------------------------------
# the reference in check_op's calling convention: one tensor per input, outputs flattened
#   lstm: (x, h0, c0, w_ih, w_hh, b_ih, b_hh) -> (y, hn, cn)
#   gru:  (x, h0, w_ih, w_hh, b_ih, b_hh) -> (y, hn)


def lstm_fn(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, **kw):
    y, (hn, cn) = ops.lstm(x, None if h0 is None else (h0, c0), w_ih, w_hh, b_ih, b_hh, **kw)
    return y, hn, cn


def gru_fn(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, **kw):
    return ops.gru(x, h0, w_ih, w_hh, b_ih, b_hh, **kw)


def lstm_cell_fn(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    return ops.lstm_cell(x, None if h is None else (h, c), w_ih, w_hh, b_ih, b_hh)


def gru_cell_fn(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    return ops.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)


def _np_kw(kw):
    kw = dict(kw)
    if kw.get("batch_sizes") is not None:
        kw["batch_sizes"] = to_numpy(kw["batch_sizes"])
    return kw


LSTM = Reference(lambda *a, **kw: RR.lstm_forward(*a, **_np_kw(kw)),
                 lambda d, *a, **kw: RR.lstm_backward(*d, *a, **_np_kw(kw)))
GRU = Reference(lambda *a, **kw: RR.gru_forward(*a, **_np_kw(kw)),
                lambda d, *a, **kw: RR.gru_backward(*d, *a, **_np_kw(kw)))
LSTM_CELL = Reference(RR.lstm_cell_forward, lambda d, *a: RR.lstm_cell_backward(*d, *a))
GRU_CELL = Reference(RR.gru_cell_forward, RR.gru_cell_backward)
FNS = {"lstm": (lstm_fn, LSTM), "gru": (gru_fn, GRU)}
CELLS = {"lstm": (lstm_cell_fn, LSTM_CELL), "gru": (gru_cell_fn, GRU_CELL)}


def rnn_terms(kind, T, B, I, H):
    """Products summed per element, the recurrence included (see the module docstring)."""
    G = GATES[kind]
    fwd = T * (I + H)
    bptt = T * (I + H + G * H)
    weights = bptt + T * B
    terms = {"out": fwd, "x": bptt + G * H, "h0": bptt, "c0": bptt, "h": bptt, "c": bptt}
    terms.update(w_ih=weights, w_hh=weights, b_ih=weights, b_hh=weights)
    return terms


# ----------------------------------------------------------------------------------------------
# inputs


def rnn_inputs(kind, T, B, I, H, dtype, gen, *, device="cpu", h0=True, bias="both",
               layout="contiguous"):
    """Fresh inputs in check_op's order (dict). Weights ~ N(0, 1/I) and N(0, 1/H), biases
    N(0, 1/4): pre-activations O(1), gates not saturated. h0 False: None (zeros).
    bias: "both" | "none" | "ih" (b_ih only).
    layout: contiguous | batch_first (x a [B, T, I] tensor transposed) | strided (every
    other element of the last dims; weights and h0 transposed views, biases strided) |
    expanded (x, h0 and c0 broadcast over the batch: stride 0)."""
    G = GATES[kind]

    def t(shape, scale=1.0, lay="contiguous"):
        return make_tensor(shape, dtype, gen, device=device, scale=scale, layout=lay)

    wl = "transposed" if layout == "strided" else "contiguous"
    vl = "strided" if layout == "strided" else "contiguous"
    if layout == "batch_first":
        x = t((B, T, I)).transpose(0, 1)
    elif layout == "expanded":
        x = t((T, 1, I)).expand(T, B, I)
    else:
        x = t((T, B, I), lay=vl)

    def state():
        if not h0:
            return None
        if layout == "expanded":
            return t((1, H)).expand(B, H)
        return t((B, H), lay="transposed" if layout == "strided" else "contiguous")

    d = dict(x=x, h0=state())
    if kind == "lstm":
        d["c0"] = state()
    d["w_ih"] = t((G * H, I), I ** -0.5, wl)
    d["w_hh"] = t((G * H, H), H ** -0.5, wl)
    d["b_ih"] = None if bias == "none" else t((G * H,), 0.5, vl)
    d["b_hh"] = t((G * H,), 0.5, vl) if bias == "both" else None
    return d


def random_batch_sizes(T, B, gen, *, full_first=True):
    """int64 [T], non-increasing, in [1, B] (a PackedSequence's), first B if full_first."""
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    if full_first:
        lengths[0] = T
    lengths = lengths.sort(descending=True).values
    bs = torch.tensor([int((lengths > t).sum()) for t in range(T)], dtype=torch.int64)
    assert bs.min() >= 1 and (bs[1:] <= bs[:-1]).all()
    return bs


def check_rnn(kind, backend, dtype, gen, T, B, I, H, *, h0=True, bias="both", reverse=False,
              packed=False, layout="contiguous", grad=True):
    inputs = rnn_inputs(kind, T, B, I, H, dtype, gen, device=backend.device, h0=h0, bias=bias,
                        layout=layout)
    kw = dict(reverse=reverse)
    if packed:
        kw["batch_sizes"] = random_batch_sizes(T, B, gen)
    fn, ref = FNS[kind]
    with backend.context():
        return check_op(fn, ref, inputs, kwargs=kw, gen=gen, grad=grad,
                        terms=rnn_terms(kind, T, B, I, H))


def _collect(cases, run):
    """Runs every case, then reports every failing one together."""
    failures = []
    for desc, args in cases:
        try:
            run(*args)
        except Exception as e:  # noqa: BLE001 - collected: report every failing case
            lines = str(e).splitlines() or [""]
            failures.append(f"[{desc}]: {type(e).__name__}: {lines[0]}"
                            + ("\n    " + "\n    ".join(lines[1:4]) if len(lines) > 1 else ""))
    assert not failures, f"{len(failures)} of {len(cases)} cases fail:\n" + "\n".join(
        failures[:20])


# ----------------------------------------------------------------------------------------------
# the oracle itself, against torch in float64 (torch's own LSTM/GRU, PackedSequence for
# batch_sizes, the bidirectional layer's second direction for reverse)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("case", ["plain", "packed", "no_bias"])
def test_reference_matches_torch(kind, case, gen):
    f64 = torch.float64
    T, B, I, H = 6, 4, 5, 7
    bias = case != "no_bias"
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    m = getattr(torch.nn, kind.upper())(I, H, bidirectional=True, bias=bias).double()
    x = make_tensor((T, B, I), f64, gen).requires_grad_(True)
    h0 = make_tensor((2, B, H), f64, gen).requires_grad_(True)
    c0 = make_tensor((2, B, H), f64, gen).requires_grad_(True)
    bs = None
    inp = x
    if case == "packed":
        lengths = torch.tensor([T, 4, 4, 1])
        inp = pack_padded_sequence(x, lengths)
        bs = inp.batch_sizes.numpy()
    hx = (h0, c0) if kind == "lstm" else h0
    out, hn = m(inp, hx)
    if case == "packed":
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    states = list(hn) if kind == "lstm" else [hn]
    dy = make_tensor(out.shape, f64, gen)
    dstates = [make_tensor(s.shape, f64, gen) for s in states]
    leaves = [x, h0] + ([c0] if kind == "lstm" else []) + list(m.parameters())
    grads = torch.autograd.grad([out] + states, leaves, [dy] + dstates)
    n_params = 4 if bias else 2
    X = to_numpy(x)
    dx = np.zeros_like(X)
    for d in range(2):
        sfx = "_reverse" if d else ""
        W = [to_numpy(getattr(m, f"weight_ih_l0{sfx}")), to_numpy(getattr(m, f"weight_hh_l0{sfx}"))]
        W += [to_numpy(getattr(m, f"bias_ih_l0{sfx}")), to_numpy(getattr(m, f"bias_hh_l0{sfx}"))] \
            if bias else [None, None]
        s0 = [to_numpy(h0[d])] + ([to_numpy(c0[d])] if kind == "lstm" else [])
        fwd = (RR.lstm_forward if kind == "lstm" else RR.gru_forward)(
            X, *s0, *W, reverse=bool(d), batch_sizes=bs)
        assert_close(fwd[0], out[..., d * H:(d + 1) * H], dtype=f64, terms=T * (I + H),
                     name=f"y dir {d}")
        for i, s in enumerate(states):
            assert_close(fwd[1 + i], s[d], dtype=f64, terms=T * (I + H), name=f"state {i} dir {d}")
        ds = [to_numpy(s[d]) for s in dstates]
        bwd = (RR.lstm_backward if kind == "lstm" else RR.gru_backward)(
            to_numpy(dy[..., d * H:(d + 1) * H]), *ds, X, *s0, *W, reverse=bool(d),
            batch_sizes=bs)
        dx += bwd[0]
        ns = len(s0)
        for i in range(ns):
            assert_close(bwd[1 + i], grads[1 + i][d], dtype=f64, terms=T * 8 * H,
                         name=f"d state {i} dir {d}")
        tp = grads[1 + ns + n_params * d: 1 + ns + n_params * (d + 1)]
        for name, r, g in zip(("w_ih", "w_hh", "b_ih", "b_hh"), bwd[1 + ns:], tp):
            assert_close(r, g, dtype=f64, terms=T * (B + 8 * H), name=f"d{name} dir {d}")
        if not bias:
            assert bwd[-1] is None and bwd[-2] is None
    assert_close(dx, grads[0], dtype=f64, terms=T * 8 * H, name="dx")


def test_reference_cells_and_rules():
    rng = np.random.default_rng(3)
    I, H = 3, 5
    x = rng.standard_normal(I)
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    # unbatched cell == batched with B = 1; hx None == zeros
    h, c = RR.lstm_cell_forward(x, None, None, w_ih, w_hh)
    hb, cb = RR.lstm_cell_forward(x[None], np.zeros((1, H)), np.zeros((1, H)), w_ih, w_hh)
    assert h.shape == (H,) and np.array_equal(h, hb[0]) and np.array_equal(c, cb[0])
    # batch_sizes: rows past batch_sizes[t] keep their state and get y = 0
    T, B = 4, 3
    xs = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    y, hn, cn = RR.lstm_forward(xs, h0, c0, w_ih, w_hh, batch_sizes=[3, 2, 2, 0])
    assert (y[1:, 2] == 0).all() and (y[3] == 0).all()
    y2, hn2, cn2 = RR.lstm_forward(xs[:1, 2:], h0[2:], c0[2:], w_ih, w_hh)
    # (allclose, not equal: BLAS may round a 1-row product differently from a 3-row one)
    np.testing.assert_allclose(hn[2:], hn2, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(cn[2:], cn2, rtol=1e-13, atol=1e-15)
    for bad, pat in (([3, 2, 3, 1], "non-increasing"), ([4, 3, 2, 1], r"\[0, B"),
                     ([3, 2, 1], "batch_sizes")):
        with pytest.raises(ValueError, match=pat):
            RR.lstm_forward(xs, h0, c0, w_ih, w_hh, batch_sizes=bad)
    with pytest.raises(ValueError, match="w_ih"):
        RR.gru_forward(xs, None, w_ih, w_hh[:3 * H])


# ----------------------------------------------------------------------------------------------
# shapes: (T, B, I, H, run in the interpreter too?)

_SHAPES = [
    (1, 3, 5, 7, True),        # T = 1
    (7, 4, 9, 11, True),       # odd T, I, H
    (5, 1, 3, 13, True),       # B = 1
    (4, 2, 1, 1, True),        # I = H = 1
    (3, 5, 16, 8, True),       # I > H
    (13, 6, 33, 31, False),    # more steps, odd sizes past a vector width
    (9, 3, 20, 67, False),     # H > 64
    (24, 7, 64, 48, False),    # longer sequence
    (100, 3, 16, 24, False),   # long BPTT: errors carried through 100 steps
]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("case", range(len(_SHAPES)),
                         ids=lambda i: "T{}B{}I{}H{}".format(*_SHAPES[i][:4]))
def test_rnn_shapes(backend, dtype, kind, case, gen):
    T, B, I, H, interp = _SHAPES[case]
    if backend.interpreted and not interp:
        pytest.skip("too large for the Triton interpreter")
    if backend.name == "reference" and case % 3:
        pytest.skip("the oracle through the ops layer: a subset")
    check_rnn(kind, backend, dtype, gen, T, B, I, H, h0=case % 2 == 1)


# (h0 given?, bias, reverse, packed): each option alone, then together
_OPTIONS = [
    (False, "both", False, False),     # zero initial state (None)
    (True, "none", False, False),      # no bias
    (True, "ih", False, False),        # b_ih only
    (True, "both", True, False),       # reverse
    (True, "both", False, True),       # packed (batch_sizes)
    (False, "both", True, True),       # reverse + packed, h0 None
    (True, "none", True, True),        # everything
]


def _opt_id(i):
    h0, bias, rev, packed = _OPTIONS[i]
    return "-".join(["h0" if h0 else "noh0", f"bias_{bias}"] + (["rev"] if rev else [])
                    + (["packed"] if packed else []))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("case", range(len(_OPTIONS)), ids=_opt_id)
def test_rnn_options(backend, dtype, kind, case, gen):
    h0, bias, rev, packed = _OPTIONS[case]
    if backend.interpreted and case not in (1, 5, 6):
        pytest.skip("the interpreter runs a subset")
    if backend.name == "reference" and case not in (2, 5, 6):
        pytest.skip("the oracle through the ops layer: a subset")
    T, B, I, H = (5, 3, 4, 5) if backend.interpreted else (9, 5, 7, 13)
    check_rnn(kind, backend, dtype, gen, T, B, I, H, h0=h0, bias=bias, reverse=rev,
              packed=packed)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_packed_edges(backend, dtype, kind, gen):
    # batch_sizes with a first entry < B (rows never stepped: hn = h0, y = 0), all equal to B,
    # and a single row surviving to the end; in both directions
    if backend.name == "reference":
        pytest.skip("the oracle through the ops layer: covered by test_rnn_options")
    T, B, I, H = 5, 4, 3, 6
    cases = [("first < B", [3, 3, 2, 1, 1]), ("all B", [B] * T), ("one row", [4, 1, 1, 1, 1])]
    if backend.interpreted:
        cases = cases[:1]

    def run(bs, reverse):
        inputs = rnn_inputs(kind, T, B, I, H, dtype, gen, device=backend.device)
        kw = dict(reverse=reverse, batch_sizes=torch.tensor(bs, dtype=torch.int64))
        fn, ref = FNS[kind]
        with backend.context():
            outs = check_op(fn, ref, inputs, kwargs=kw, gen=gen,
                            terms=rnn_terms(kind, T, B, I, H))
        if bs[0] < B:
            assert torch.equal(outs[1][bs[0]:], inputs["h0"][bs[0]:]), "unstepped rows: hn != h0"

    _collect([(f"{d} rev={r}", (bs, r)) for d, bs in cases for r in (False, True)], run)


# ----------------------------------------------------------------------------------------------
# layouts, upstream gradients, partial gradients


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layout", ["batch_first", "strided", "expanded"])
def test_rnn_layouts(backend, dtype, kind, layout, gen):
    if backend.interpreted and layout == "expanded":
        pytest.skip("the interpreter runs a subset")
    if backend.name == "reference" and layout != "strided":
        pytest.skip("the oracle through the ops layer: a subset")
    T, B, I, H = (4, 3, 5, 6) if backend.interpreted else (7, 5, 9, 11)
    check_rnn(kind, backend, dtype, gen, T, B, I, H, layout=layout, reverse=layout == "strided",
              packed=layout == "batch_first")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_grad_outputs(backend, dtype, kind, gen):
    # upstream gradients of stride 0 (out.sum()), transposed, and of one output only (the
    # others unused: None in the autograd formula)
    if backend.name == "reference":
        pytest.skip("the oracle through the ops layer: covered elsewhere")
    T, B, I, H = 4, 3, 5, 6
    dev = backend.device
    inputs = rnn_inputs(kind, T, B, I, H, dtype, gen, device=dev)
    fn, ref = FNS[kind]
    names = list(inputs)
    arrays = [None if v is None else to_numpy(v) for v in inputs.values()]
    outs_ref = ref.forward(*arrays, reverse=True)
    n_out = len(outs_ref)
    terms = rnn_terms(kind, T, B, I, H)

    def run(how):
        leaves = {n: v.detach().requires_grad_(True) for n, v in inputs.items() if v is not None}
        with backend.context():
            outs = fn(*[leaves.get(n) for n in names], reverse=True)
        if how == "sum":
            douts = [torch.full((), 1.5, dtype=dtype, device=dev).expand(o.shape) for o in outs]
        elif how == "transposed":
            douts = [make_tensor(o.shape[::-1], dtype, gen, device=dev).permute(
                *reversed(range(o.dim()))) for o in outs]
        else:  # only output number `how`
            douts = [make_tensor(o.shape, dtype, gen, device=dev) if i == how else None
                     for i, o in enumerate(outs)]
        used = [(o, d) for o, d in zip(outs, douts) if d is not None]
        with backend.context():
            grads = torch.autograd.grad([o for o, _ in used], list(leaves.values()),
                                        [d for _, d in used])
        dref = [None if d is None else to_numpy(d) for d in douts]
        want = dict(zip(names, ref.backward(tuple(dref), *arrays, reverse=True)))
        for (n, _), g in zip(leaves.items(), grads):
            assert_close(g, want[n], terms=terms[n], name=f"grad of {n}")

    hows = ["sum", "transposed"] + list(range(n_out))
    if backend.interpreted:
        hows = ["sum", 1]  # the interpreter runs a subset: stride 0, and hn alone
    _collect([(f"grad_out {h}", (h,)) for h in hows], run)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("needs", [("x",), ("w_ih", "w_hh"), ("h0", "b_hh")], ids="+".join)
def test_rnn_partial_grads(backend, dtype, kind, needs, gen):
    if backend.interpreted and needs != ("w_ih", "w_hh"):
        pytest.skip("the interpreter runs a subset")
    if backend.name == "reference":
        pytest.skip("the oracle through the ops layer: covered elsewhere")
    check_rnn(kind, backend, dtype, gen, 5, 3, 4, 6, packed=True, grad=needs)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_no_grad(backend, dtype, kind, gen):
    T, B, I, H = 5, 3, 4, 6
    inputs = rnn_inputs(kind, T, B, I, H, dtype, gen, device=backend.device)
    fn, ref = FNS[kind]
    with backend.context(), torch.no_grad():
        outs = fn(*inputs.values(), reverse=True)
    want = ref.forward(*[None if v is None else to_numpy(v) for v in inputs.values()],
                       reverse=True)
    for i, (o, w) in enumerate(zip(outs, want)):
        assert not o.requires_grad and o.dtype == dtype and o.device.type == backend.device
        assert_close(o, w, terms=T * (I + H), name=f"no-grad output {i}")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("which", ["T0", "B0"])
def test_rnn_empty(backend, dtype, kind, which, gen):
    # T = 0: y empty, hn = h0, dh0 = dhn, zero weight gradients; B = 0: empty everything
    if backend.name == "reference":
        pytest.skip("the oracle through the ops layer: covered by the other backends")
    T, B = (0, 3) if which == "T0" else (4, 0)
    check_rnn(kind, backend, dtype, gen, T, B, 4, 5)


# ----------------------------------------------------------------------------------------------
# the cells: the sequence op with T = 1; x [B, I] or unbatched [I]


_CELL_CASES = [  # (B or None for unbatched, I, H, hx given?, bias)
    (4, 5, 7, True, True),
    (1, 3, 9, True, True),
    (None, 6, 5, True, True),
    (None, 4, 3, False, True),
    (3, 7, 5, False, False),
    # whole SIMD vectors of I and H (16 floats): the C++ one-step backward's fused path
    (7, 80, 80, True, True),
    (2, 16, 32, False, True),
]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("case", range(len(_CELL_CASES)),
                         ids=lambda i: "B{}I{}H{}-{}-{}".format(
                             *_CELL_CASES[i][:3], "hx" if _CELL_CASES[i][3] else "nohx",
                             "bias" if _CELL_CASES[i][4] else "nobias"))
def test_cells(backend, dtype, kind, case, gen):
    B, I, H, hx, bias = _CELL_CASES[case]
    if backend.interpreted and case in (1, 4):
        pytest.skip("the interpreter runs a subset")
    G = GATES[kind]
    dev = backend.device

    def t(shape, scale=1.0):
        return make_tensor(shape, dtype, gen, device=dev, scale=scale)

    lead = () if B is None else (B,)
    inputs = dict(x=t(lead + (I,)), h=t(lead + (H,)) if hx else None)
    if kind == "lstm":
        inputs["c"] = t(lead + (H,)) if hx else None
    inputs.update(w_ih=t((G * H, I), I ** -0.5), w_hh=t((G * H, H), H ** -0.5),
                  b_ih=t((G * H,), 0.5) if bias else None, b_hh=t((G * H,), 0.5) if bias else None)
    fn, ref = CELLS[kind]
    with backend.context():
        outs = check_op(fn, ref, inputs, gen=gen, terms=rnn_terms(kind, 1, B or 1, I, H))
    for o in outs:
        assert tuple(o.shape) == lead + (H,)


# ----------------------------------------------------------------------------------------------
# the kernels themselves (SPEC entry points): every element of poisoned, strided outputs written


class _CppKernels:
    """pykernels._C behind the Triton launchers' signatures (pointers as ints, strides in
    elements, 0 for an absent pointer)."""

    KIND = {"lstm": 0, "gru": 1}

    def __init__(self):
        from pykernels import _C
        self.C = _C

    @staticmethod
    def _t(t, n):
        return (0,) * (n + 1) if t is None else (t.data_ptr(), *t.stride())

    @staticmethod
    def _bs(bs):
        return 0 if bs is None else bs.data_ptr()

    def rnn_workspace_elems(self, kind, T, B, H):
        if hasattr(self.C, "rnn_workspace_elems"):
            return int(self.C.rnn_workspace_elems(self.KIND[kind], T, B, H))
        return T * B * (6 if kind == "lstm" else 5) * H

    def rnn_forward(self, kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, hn, cn, ws, *,
                    reverse=False, batch_sizes=None):
        T, B, I = x.shape
        H = w_hh.shape[1]
        t = self._t
        self.C.rnn_forward(x.dtype == torch.float64, self.KIND[kind], T, B, I, H, bool(reverse),
                           *t(x, 3), *t(h0, 2), *t(c0, 2), *t(w_ih, 2), *t(w_hh, 2),
                           *t(b_ih, 1), *t(b_hh, 1), self._bs(batch_sizes), *t(y, 3), *t(hn, 2),
                           *t(cn, 2), 0 if ws is None else ws.data_ptr())

    def rnn_backward(self, kind, x, h0, c0, w_ih, w_hh, b_hh, ws, dy, dhn, dcn, dx, dh0, dc0,
                     dw_ih, dw_hh, db_ih, db_hh, *, reverse=False, batch_sizes=None):
        T, B, I = x.shape
        H = w_hh.shape[1]
        t = self._t
        self.C.rnn_backward(x.dtype == torch.float64, self.KIND[kind], T, B, I, H, bool(reverse),
                            *t(x, 3), *t(h0, 2), *t(c0, 2), *t(w_ih, 2), *t(w_hh, 2),
                            *t(b_hh, 1), self._bs(batch_sizes), ws.data_ptr(), *t(dy, 3),
                            *t(dhn, 2), *t(dcn, 2), *t(dx, 3), *t(dh0, 2), *t(dc0, 2),
                            *t(dw_ih, 2), *t(dw_hh, 2), *t(db_ih, 1), *t(db_hh, 1))


def _kernels(backend):
    if backend.name == "cpp":
        return _CppKernels()
    from pykernels._backend import triton_kernels
    return triton_kernels("rnn")


def _buffer(shape, dtype, device, strided):
    """A NaN-filled output buffer, contiguous or every other element of the last dim."""
    if strided:
        t = torch.empty(tuple(shape[:-1]) + (2 * shape[-1],), dtype=dtype,
                        device=device)[..., 1::2]
    else:
        t = torch.empty(shape, dtype=dtype, device=device)
    return poison(t)


# (kind, reverse, packed, h0 given, bias, strided outputs)
_KERNEL_CASES = [
    ("lstm", False, False, True, True, False),
    ("lstm", True, True, False, True, True),
    ("gru", False, True, True, False, True),
    ("gru", True, False, False, True, False),
]


@pytest.mark.backends("cpp", "triton")
@pytest.mark.parametrize("case", range(len(_KERNEL_CASES)),
                         ids=lambda i: "{}-rev{}-packed{}-h0{}-bias{}-strided{}".format(
                             *_KERNEL_CASES[i]))
def test_kernels_fill_poisoned_outputs(backend, dtype, case, gen):
    kind, reverse, packed, has_h0, bias, strided = _KERNEL_CASES[case]
    K = _kernels(backend)
    dev = backend.device
    T, B, I, H = 5, 4, 6, 7
    G = GATES[kind]
    inp = rnn_inputs(kind, T, B, I, H, dtype, gen, device=dev, h0=has_h0,
                     bias="both" if bias else "none", layout="strided")
    x, h0, w_ih, w_hh, b_ih, b_hh = (inp[k] for k in ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"))
    c0 = inp.get("c0")
    bs = random_batch_sizes(T, B, gen).to(dev) if packed else None
    lstm = kind == "lstm"
    arrays = [None if a is None else to_numpy(a) for a in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)]
    if not lstm:
        arrays.pop(2)
    bs_np = None if bs is None else to_numpy(bs)
    want = (RR.lstm_forward if lstm else RR.gru_forward)(*arrays, reverse=reverse,
                                                         batch_sizes=bs_np)
    y = _buffer((T, B, H), dtype, dev, strided)
    hn = _buffer((B, H), dtype, dev, strided)
    cn = _buffer((B, H), dtype, dev, strided) if lstm else None
    ws = poison(torch.empty(K.rnn_workspace_elems(kind, T, B, H), dtype=dtype, device=dev))
    K.rnn_forward(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, hn, cn, ws, reverse=reverse,
                  batch_sizes=bs)
    terms = rnn_terms(kind, T, B, I, H)
    assert_close(y, want[0], dtype=dtype, terms=terms["out"], name="forward y")
    assert_close(hn, want[1], dtype=dtype, terms=terms["out"], name="forward hn")
    if lstm:
        assert_close(cn, want[2], dtype=dtype, terms=terms["out"], name="forward cn")

    dy = make_tensor((T, B, H), dtype, gen, device=dev, layout="strided")
    dhn = make_tensor((B, H), dtype, gen, device=dev, layout="transposed")
    dcn = make_tensor((B, H), dtype, gen, device=dev) if lstm else None
    dx = _buffer((T, B, I), dtype, dev, strided)
    dh0 = _buffer((B, H), dtype, dev, strided) if has_h0 else None
    dc0 = _buffer((B, H), dtype, dev, strided) if lstm and has_h0 else None
    dw_ih = _buffer((G * H, I), dtype, dev, strided)
    dw_hh = _buffer((G * H, H), dtype, dev, strided)
    db_ih = _buffer((G * H,), dtype, dev, strided) if bias else None
    db_hh = _buffer((G * H,), dtype, dev, strided) if bias else None
    K.rnn_backward(kind, x, h0, c0, w_ih, w_hh, b_hh, ws, dy, dhn, dcn, dx, dh0, dc0, dw_ih,
                   dw_hh, db_ih, db_hh, reverse=reverse, batch_sizes=bs)
    ups = [to_numpy(dy), to_numpy(dhn)] + ([to_numpy(dcn)] if lstm else [])
    g = (RR.lstm_backward if lstm else RR.gru_backward)(*ups, *arrays, reverse=reverse,
                                                       batch_sizes=bs_np)
    got = [dx, dh0] + ([dc0] if lstm else []) + [dw_ih, dw_hh, db_ih, db_hh]
    names = ["x", "h0"] + (["c0"] if lstm else []) + ["w_ih", "w_hh", "b_ih", "b_hh"]
    for n, a, r in zip(names, got, g):
        if a is None:
            continue
        assert_close(a, r, dtype=dtype, terms=terms[n], name=f"backward d{n}")


@pytest.mark.backends("cpp")
@pytest.mark.dtypes(torch.float32)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cpp_threads_agree(backend, dtype, kind, gen):
    # one and two threads: the same result as the reference (weight gradients: no race)
    saved = pykernels.get_num_threads()
    try:
        for n in (1, 2):
            pykernels.set_num_threads(n)
            check_rnn(kind, backend, dtype, gen, 11, 9, 40, 37, packed=True)
    finally:
        pykernels.set_num_threads(saved)


@pytest.mark.backends("cpp")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("packed", [False, True])
def test_cpp_kernels_ignore_stale_cache_blocks(backend, dtype, kind, packed, gen):
    # The workspace, the packed weights and the gate gradients (each >= 1 MiB at this size) come
    # from the block cache (csrc/memory.cpp), reused from call to call: every element a kernel
    # reads it must have written. The first call leaves its blocks in the cache, they are filled
    # with NaN, and the second call (fresh inputs; packed: rows that skip steps) reuses them.
    from pykernels import _C
    T, B, I, H = 8, 16, 24, 512
    check_rnn(kind, backend, dtype, gen, T, B, I, H, packed=packed)
    assert _C.cached_bytes() >= T * B * GATES[kind] * H * dtype.itemsize
    _C.poison_cache()
    check_rnn(kind, backend, dtype, gen, T, B, I, H, packed=packed, reverse=packed)


# ----------------------------------------------------------------------------------------------
# gradcheck in float64 (finite differences, independent of the reference)

# (kind, T, B, I, H, h0 given, reverse, packed)
_GRADCHECK = [
    ("lstm", 3, 2, 3, 4, True, False, False),
    ("lstm", 4, 3, 2, 3, False, True, True),
    ("gru", 3, 2, 3, 4, True, False, True),
    ("gru", 2, 1, 2, 3, True, True, False),
]


@pytest.mark.dtypes(torch.float64)
@pytest.mark.parametrize("case", range(len(_GRADCHECK)),
                         ids=lambda i: "{}-T{}B{}I{}H{}-h0{}-rev{}-packed{}".format(
                             *_GRADCHECK[i]))
def test_rnn_gradcheck(backend, dtype, case, gen):
    kind, T, B, I, H, h0, reverse, packed = _GRADCHECK[case]
    inputs = rnn_inputs(kind, T, B, I, H, dtype, gen, device=backend.device, h0=h0)
    names = [n for n, v in inputs.items() if v is not None]
    kw = dict(reverse=reverse)
    if packed:
        kw["batch_sizes"] = random_batch_sizes(T, B, gen)
    fn = FNS[kind][0]

    def f(*args):
        a = dict(zip(names, args))
        return fn(*[a.get(n) for n in inputs], **kw)

    with backend.context():
        assert torch.autograd.gradcheck(
            f, tuple(inputs[n].detach().requires_grad_(True) for n in names))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cells_gradcheck(kind, gen):
    f64 = torch.float64
    G = GATES[kind]
    x, h, c = (make_tensor(s, f64, gen) for s in ((2, 3), (2, 4), (2, 4)))
    w_ih, w_hh = make_tensor((G * 4, 3), f64, gen, scale=0.5), make_tensor((G * 4, 4), f64, gen,
                                                                           scale=0.5)
    b = make_tensor((G * 4,), f64, gen)
    args = [x, h] + ([c] if kind == "lstm" else []) + [w_ih, w_hh, b, b.clone()]
    fn = CELLS[kind][0]
    assert torch.autograd.gradcheck(fn, tuple(a.requires_grad_(True) for a in args))


@pytest.mark.backends("triton")
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_triton_gradcheck_tiny(backend, kind, gen):
    # float64 through the Triton kernels; fast mode (a few directional derivatives instead of
    # one per input element): the interpreter is slow
    inputs = rnn_inputs(kind, 2, 2, 2, 3, torch.float64, gen, device=backend.device)
    fn = FNS[kind][0]
    bs = torch.tensor([2, 1])
    with backend.context():
        assert torch.autograd.gradcheck(
            lambda *a: fn(*a, reverse=True, batch_sizes=bs),
            tuple(v.detach().requires_grad_(True) for v in inputs.values()), fast_mode=True)


# ----------------------------------------------------------------------------------------------
# torch.library.opcheck on the four custom ops, with the arguments the public ops really pass
# (recorded below the autograd layer)


def _record_rnn_calls(gen):
    f64 = torch.float64

    def run(kind, h0=True, bias="both", **kw):
        inputs = rnn_inputs(kind, 4, 3, 3, 5, f64, gen, h0=h0, bias=bias)
        leaves = [None if v is None else v.detach().requires_grad_(True)
                  for v in inputs.values()]
        outs = FNS[kind][0](*leaves, **kw)
        torch.autograd.grad(outs, [v for v in leaves if v is not None],
                            [make_tensor(o.shape, f64, gen) for o in outs])

    bs = torch.tensor([3, 2, 2, 1])
    rec = RecordPykernelsCalls("lstm", "gru")
    with rec:
        run("lstm")
        run("lstm", h0=False, bias="none", reverse=True, batch_sizes=bs)
        run("gru", batch_sizes=bs)
        run("gru", h0=False, reverse=True)
        x = make_tensor((2, 3), f64, gen).requires_grad_(True)
        w = make_tensor((20, 3), f64, gen).requires_grad_(True)
        u = make_tensor((20, 5), f64, gen).requires_grad_(True)
        h, c = ops.lstm_cell(x, None, w, u)
        torch.autograd.grad((h, c), (x, w, u), (torch.ones_like(h), torch.ones_like(c)))
        with torch.no_grad():
            inputs = rnn_inputs("gru", 3, 2, 3, 4, torch.float32, gen)
            gru_fn(*inputs.values())
    return rec.calls


def test_opcheck_rnn_ops(gen):
    calls = _record_rnn_calls(gen)
    seen = {func._name.split("::")[1].split(".")[0] for func, _, _ in calls}
    for name in ("lstm", "lstm_backward", "gru", "gru_backward"):
        assert name in seen, f"pykernels::{name} never called by the public ops (saw {seen})"
    opcheck_recorded(calls, aot_per_op=1)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_registered_op_path(backend, dtype, kind, gen):
    # eager calls on plain tensors may skip the custom op's dispatch; under a dispatch mode (as
    # under torch.compile) the registered op and its register_autograd formula run: check those
    if backend.interpreted:
        pytest.skip("the interpreter: covered by the eager path")
    with PassThrough():
        check_rnn(kind, backend, dtype, gen, 5, 3, 4, 6, reverse=True, packed=True)


# ----------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): the custom ops trace as single nodes, compiled == eager


def _compile_fn(x, h0, c0, wl_ih, wl_hh, bl, wg_ih, wg_hh, bg, bs):
    y, (hn, cn) = ops.lstm(x, (h0, c0), wl_ih, wl_hh, bl, bl * 0.5, reverse=True)
    z, gn = ops.gru(torch.tanh(y), None, wg_ih, wg_hh, bg, None, batch_sizes=bs)
    h1, c1 = ops.lstm_cell(x[0], (hn, cn), wl_ih, wl_hh)
    return z * 2 + 1, gn + h1, c1


def _compile_check(gen, bs, fullgraph):
    f32 = torch.float32
    T, B, I, H = 5, 3, 4, 6
    t = lambda *s, scale=1.0: make_tensor(s, f32, gen, scale=scale)  # noqa: E731
    args = [t(T, B, I), t(B, H), t(B, H), t(4 * H, I, scale=0.5), t(4 * H, H, scale=0.4),
            t(4 * H), t(3 * H, H, scale=0.4), t(3 * H, H, scale=0.4), t(3 * H)]
    douts = [t(T, B, H), t(B, H), t(B, H)]

    def run(fn):
        leaves = [a.detach().requires_grad_(True) for a in args]
        outs = fn(*leaves, bs)
        grads = torch.autograd.grad(outs, leaves, douts)
        return [o.detach() for o in outs] + list(grads)

    eager = run(_compile_fn)
    torch._dynamo.reset()
    compiled = run(torch.compile(_compile_fn, fullgraph=fullgraph))
    for i, (e, c) in enumerate(zip(eager, compiled)):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5, msg=f"compiled result {i}")


def test_compile_fullgraph_matches_eager(gen):
    _compile_check(gen, None, fullgraph=True)


def test_compile_packed_matches_eager(gen):
    # batch_sizes' values are checked on the host (data-dependent: a graph break, so no
    # fullgraph; torch.compile cannot trace torch.nn.LSTM itself at all): still the eager result
    _compile_check(gen, torch.tensor([3, 3, 2, 2, 1]), fullgraph=False)


# ----------------------------------------------------------------------------------------------
# pykernels.nn.LSTM / GRU / LSTMCell / GRUCell vs torch.nn after load_state_dict

# (kind, constructor kwargs, forward setup)
_MODULES = [
    ("LSTM", dict(input_size=5, hidden_size=7), dict(hx=False)),
    ("LSTM", dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True),
     dict(hx=True)),
    ("LSTM", dict(input_size=4, hidden_size=6, num_layers=2, batch_first=True),
     dict(packed=True, hx=True)),
    ("LSTM", dict(input_size=3, hidden_size=5, bidirectional=True, batch_first=True),
     dict(packed=True, hx=False)),
    ("LSTM", dict(input_size=4, hidden_size=5, num_layers=2, bidirectional=True),
     dict(unbatched=True, hx=True)),
    ("LSTM", dict(input_size=4, hidden_size=5, num_layers=3, dropout=0.5, bias=False),
     dict(eval=True, hx=True)),
    ("LSTM", dict(input_size=4, hidden_size=9, num_layers=2, dropout=0.0), dict(hx=False)),
    ("GRU", dict(input_size=5, hidden_size=7), dict(hx=True)),
    ("GRU", dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True),
     dict(hx=False)),
    ("GRU", dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True,
                 batch_first=True), dict(packed=True, hx=True)),
    ("GRU", dict(input_size=3, hidden_size=5, batch_first=True), dict(unbatched=True,
                                                                      hx=False)),
    ("GRU", dict(input_size=4, hidden_size=5, num_layers=2, dropout=0.3, bias=False),
     dict(eval=True, hx=True)),
    ("LSTM", dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True),
     dict(hx=True, dtype=torch.float64)),
    ("GRU", dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True,
                 batch_first=True), dict(packed=True, hx=True, dtype=torch.float64)),
]


def _module_id(i):
    kind, kw, setup = _MODULES[i]
    parts = [kind, f"L{kw.get('num_layers', 1)}"]
    parts += [k for k in ("bidirectional", "batch_first") if kw.get(k)]
    if kw.get("bias") is False:
        parts.append("nobias")
    if kw.get("dropout"):
        parts.append(f"dropout{kw['dropout']}")
    parts += [k for k in ("packed", "unbatched", "eval") if setup.get(k)]
    parts.append("hx" if setup.get("hx") else "nohx")
    if setup.get("dtype") == torch.float64:
        parts.append("f64")
    return "-".join(parts)


@pytest.mark.parametrize("case", range(len(_MODULES)), ids=_module_id)
def test_nn_rnn_matches_torch(case, gen):
    kind, kw, setup = _MODULES[case]
    dtype = setup.get("dtype", torch.float32)
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    ref = getattr(torch.nn, kind)(**kw).to(dtype)
    pk = getattr(pykernels.nn, kind)(**kw).to(dtype)
    assert isinstance(pk, getattr(torch.nn, kind))
    assert pk.state_dict().keys() == ref.state_dict().keys()
    pk.load_state_dict(ref.state_dict())
    if setup.get("eval"):
        ref.eval()
        pk.eval()
    I, H = kw["input_size"], kw["hidden_size"]
    L = kw.get("num_layers", 1)
    D = 2 if kw.get("bidirectional") else 1
    bf = kw.get("batch_first", False)
    T, B = 6, 4
    if setup.get("unbatched"):
        x = make_tensor((T, I), dtype, gen)
        state_shape = (L * D, H)
    else:
        x = make_tensor((B, T, I) if bf else (T, B, I), dtype, gen)
        state_shape = (L * D, B, H)
    lstm = kind == "LSTM"
    hx = None
    if setup.get("hx"):
        hx = [make_tensor(state_shape, dtype, gen) for _ in range(2 if lstm else 1)]
    lengths = torch.tensor([3, T, 1, 5])  # unsorted: sorted_indices is not the identity

    def run(module):
        xl = x.detach().clone().requires_grad_(True)
        hl = None if hx is None else [h.detach().clone().requires_grad_(True) for h in hx]
        inp = pack_padded_sequence(xl, lengths, batch_first=bf, enforce_sorted=False) \
            if setup.get("packed") else xl
        h_arg = None if hl is None else (tuple(hl) if lstm else hl[0])
        out, hn = module(inp, h_arg)
        return xl, hl, out, hn

    xr, hr, out_r, hn_r = run(ref)
    xp, hp, out_p, hn_p = run(pk)
    if setup.get("packed"):
        assert isinstance(out_p, PackedSequence), f"output is a {type(out_p).__name__}"
        for f in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert torch.equal(getattr(out_p, f), getattr(out_r, f)), f"PackedSequence.{f}"
        out_p, out_r = out_p.data, out_r.data
    states_r = list(hn_r) if lstm else [hn_r]
    states_p = list(hn_p) if lstm else [hn_p]
    terms = T * (I + D * H + H) * L
    assert out_p.shape == out_r.shape and out_p.dtype == out_r.dtype
    assert_close(out_p, out_r, terms=terms, name="output")
    for i, (a, b) in enumerate(zip(states_p, states_r)):
        assert a.shape == b.shape, f"state {i}: shape {tuple(a.shape)}, torch {tuple(b.shape)}"
        assert_close(a, b, terms=terms, name=f"state {i}")

    douts = [make_tensor(out_r.shape, dtype, gen)] + [make_tensor(s.shape, dtype, gen)
                                                      for s in states_r]
    names = ["x"] + ([f"hx[{i}]" for i in range(len(hx))] if hx else []) + \
        [n for n, _ in ref.named_parameters()]
    g_r = torch.autograd.grad([out_r] + states_r, [xr] + (hr or []) + list(ref.parameters()),
                              douts)
    g_p = torch.autograd.grad([out_p] + states_p, [xp] + (hp or []) + list(pk.parameters()),
                              douts, allow_unused=True)
    for name, a, b in zip(names, g_p, g_r):
        assert a is not None, f"grad of {name}: None, torch has one"
        assert_close(a, b, terms=4 * terms + T * B, name=f"grad of {name}")


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("setup", ["batched", "unbatched", "nohx", "nobias"])
def test_nn_cells_match_torch(kind, setup, gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    I, H, B = 6, 5, 3
    kw = dict(bias=setup != "nobias")
    ref = getattr(torch.nn, kind)(I, H, **kw)
    pk = getattr(pykernels.nn, kind)(I, H, **kw)
    assert isinstance(pk, getattr(torch.nn, kind))
    assert pk.state_dict().keys() == ref.state_dict().keys()
    pk.load_state_dict(ref.state_dict())
    lead = () if setup == "unbatched" else (B,)
    x = make_tensor(lead + (I,), torch.float32, gen)
    lstm = kind == "LSTMCell"
    hx = None if setup == "nohx" else [make_tensor(lead + (H,), torch.float32, gen)
                                       for _ in range(2 if lstm else 1)]

    def run(module):
        xl = x.detach().clone().requires_grad_(True)
        hl = None if hx is None else [h.detach().clone().requires_grad_(True) for h in hx]
        out = module(xl, None if hl is None else (tuple(hl) if lstm else hl[0]))
        return xl, hl or [], list(out) if lstm else [out]

    xr, hr, out_r = run(ref)
    xp, hp, out_p = run(pk)
    for i, (a, b) in enumerate(zip(out_p, out_r)):
        assert a.shape == b.shape
        assert_close(a, b, terms=I + H, name=f"output {i}")
    douts = [make_tensor(o.shape, torch.float32, gen) for o in out_r]
    g_r = torch.autograd.grad(out_r, [xr] + hr + list(ref.parameters()), douts)
    g_p = torch.autograd.grad(out_p, [xp] + hp + list(pk.parameters()), douts)
    names = ["x"] + [f"hx[{i}]" for i in range(len(hr))] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, g_p, g_r):
        assert_close(a, b, terms=4 * (I + H) + B, name=f"grad of {name}")


def test_nn_dropout_in_training_is_torchs(gen):
    # dropout between layers in training mode is torch's F.dropout on each layer's output: with
    # the same seed the same elements are dropped as torch.nn.LSTM drops
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    ref = torch.nn.LSTM(4, 6, num_layers=3, dropout=0.5)
    pk = pykernels.nn.LSTM(4, 6, num_layers=3, dropout=0.5)
    pk.load_state_dict(ref.state_dict())
    x = make_tensor((5, 3, 4), torch.float32, gen)
    torch.manual_seed(11)
    out_r, _ = ref(x)
    torch.manual_seed(11)
    out_p, _ = pk(x)
    torch.manual_seed(12)
    out_p2, _ = pk(x)
    assert not torch.equal(out_p, out_p2), "two seeds, the same dropout"
    assert_close(out_p, out_r, terms=5 * 22 * 3, name="output with dropout")


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_nn_exported(kind):
    assert kind in pykernels.nn.__all__
    for name in ("lstm", "gru", "lstm_cell", "gru_cell"):
        assert name in ops.__all__


def test_nn_lstm_proj_size_not_implemented():
    with pytest.raises(NotImplementedError, match="proj_size"):
        pykernels.nn.LSTM(4, 6, proj_size=3)


# ----------------------------------------------------------------------------------------------
# bad inputs: an error naming the argument


def _bad_calls(t):
    T, B, I, H = 4, 3, 5, 6
    x, h, c = t(T, B, I), t(B, H), t(B, H)
    wl, ul, bl = t(4 * H, I), t(4 * H, H), t(4 * H)
    wg, ug, bg = t(3 * H, I), t(3 * H, H), t(3 * H)
    V, TV = ValueError, (ValueError, TypeError)
    bs = lambda *v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return [
        # (description, call, exception types, regex the message must match)
        ("lstm w_ih rows 3H", lambda: ops.lstm(x, (h, c), t(3 * H, I), ul, bl, bl), V, "w_ih"),
        ("gru w_ih rows 4H", lambda: ops.gru(x, h, t(4 * H, I), ug, bg, bg), V, "w_ih"),
        ("lstm_cell w_ih rows 4H+1",
         lambda: ops.lstm_cell(x[0], (h, c), t(4 * H + 1, I), ul), V, "w_ih"),
        ("lstm w_hh rows 4H+4", lambda: ops.lstm(x, (h, c), wl, t(4 * H + 4, H)), V, "w_hh"),
        ("gru w_hh [3H, H+1]", lambda: ops.gru(x, h, wg, t(3 * H, H + 1)), V, "w_hh"),
        ("lstm w_hh 1-D", lambda: ops.lstm(x, (h, c), wl, t(4 * H * H)), V, "w_hh"),
        ("gru_cell w_hh [2H, H]", lambda: ops.gru_cell(x[0], h, wg, t(2 * H, H)), V, "w_hh"),
        ("lstm b_ih [4H+1]", lambda: ops.lstm(x, (h, c), wl, ul, t(4 * H + 1), bl), V, "b_ih"),
        ("lstm b_hh [3H]", lambda: ops.lstm(x, (h, c), wl, ul, bl, t(3 * H)), V, "b_hh"),
        ("gru b_hh 2-D", lambda: ops.gru(x, h, wg, ug, bg, t(1, 3 * H)), V, "b_hh"),
        ("lstm_cell b_ih [H]", lambda: ops.lstm_cell(x[0], (h, c), wl, ul, t(H), bl), V,
         "b_ih"),
        ("lstm x 2-D", lambda: ops.lstm(x[0], (h, c), wl, ul), V, r"\bx\b|input"),
        ("gru x 4-D", lambda: ops.gru(x[None], h, wg, ug), V, r"\bx\b|input"),
        ("lstm_cell x 3-D", lambda: ops.lstm_cell(x, (h, c), wl, ul), V, r"\bx\b|input"),
        ("gru_cell x 0-D", lambda: ops.gru_cell(x[0, 0, 0], h, wg, ug), V, r"\bx\b|input"),
        ("lstm h0 batch B+1", lambda: ops.lstm(x, (t(B + 1, H), t(B + 1, H)), wl, ul), V,
         r"\bh0?\b|hx"),
        ("lstm c0 batch B-1", lambda: ops.lstm(x, (h, t(B - 1, H)), wl, ul), V, r"\bc0?\b|hx"),
        ("gru h0 batch B+2", lambda: ops.gru(x, t(B + 2, H), wg, ug), V, r"\bh0?\b|hx"),
        ("gru h0 [B, H+1]", lambda: ops.gru(x, t(B, H + 1), wg, ug), V, r"\bh0?\b|hx"),
        ("lstm_cell h batch B+1", lambda: ops.lstm_cell(x[0], (t(B + 1, H), c), wl, ul), V,
         r"\bh0?\b|hx"),
        ("gru_cell h batch B-1", lambda: ops.gru_cell(x[0], t(B - 1, H), wg, ug), V,
         r"\bh0?\b|hx"),
        ("lstm I mismatch", lambda: ops.lstm(x, (h, c), t(4 * H, I + 1), ul), V,
         r"w_ih|\bx\b"),
        ("gru_cell I mismatch", lambda: ops.gru_cell(t(B, I - 1), h, wg, ug), V, r"w_ih|\bx\b"),
        ("lstm w_hh float64", lambda: ops.lstm(x, (h, c), wl, ul.double()), TV, "w_hh"),
        ("gru h0 float64", lambda: ops.gru(x, h.double(), wg, ug), TV, r"\bh0?\b|hx"),
        ("lstm b_ih float64", lambda: ops.lstm(x, (h, c), wl, ul, bl.double(), bl), TV, "b_ih"),
        ("lstm_cell c float64", lambda: ops.lstm_cell(x[0], (h, c.double()), wl, ul), TV,
         r"\bc0?\b|hx"),
        ("lstm int x", lambda: ops.lstm(x.int(), (h, c), wl, ul), TV, r"\bx\b|input"),
        ("lstm batch_sizes increasing",
         lambda: ops.lstm(x, (h, c), wl, ul, batch_sizes=bs(2, 3, 3, 1)), V, "batch_sizes"),
        ("gru batch_sizes > B",
         lambda: ops.gru(x, h, wg, ug, batch_sizes=bs(B + 1, 2, 1, 1)), V, "batch_sizes"),
        ("gru batch_sizes negative",
         lambda: ops.gru(x, h, wg, ug, batch_sizes=bs(3, 2, 1, -1)), V, "batch_sizes"),
        ("lstm batch_sizes of length T-1",
         lambda: ops.lstm(x, (h, c), wl, ul, batch_sizes=bs(3, 2, 1)), V, "batch_sizes"),
        ("lstm batch_sizes float",
         lambda: ops.lstm(x, (h, c), wl, ul, batch_sizes=torch.tensor([3.0, 2, 1, 1])), TV,
         "batch_sizes"),
    ]


def test_rnn_bad_arguments(backend, gen):
    def t(*shape):
        return make_tensor(shape, torch.float32, gen, device=backend.device, scale=0.3)

    with backend.context():
        assert_all_rejected(_bad_calls(t))


def test_rnn_mixed_devices_rejected(gen):
    if not torch.cuda.is_available():
        pytest.skip("mixed-device inputs need a second device (CUDA); this machine has only the CPU")

    def t(*shape, device="cuda"):
        return make_tensor(shape, torch.float32, gen, device=device)

    T, B, I, H = 3, 2, 4, 5
    x, h, c = t(T, B, I), t(B, H), t(B, H)
    w, u = t(4 * H, I), t(4 * H, H)
    with pytest.raises(ValueError, match="w_hh"):
        ops.lstm(x, (h, c), w, t(4 * H, H, device="cpu"))
    with pytest.raises(ValueError, match=r"\bh0?\b|hx"):
        ops.lstm(x, (t(B, H, device="cpu"), c), w, u)
    with pytest.raises(ValueError, match=r"\bx\b|input"):
        ops.gru(t(T, B, I, device="cpu"), t(B, H), t(3 * H, I), t(3 * H, H))
