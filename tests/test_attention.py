"""attention tests: pykernels.ops.attention (fused softmax attention, the semantics of
torch.nn.functional.scaled_dot_product_attention) and pykernels.nn.MultiheadAttention.

    out = softmax(scale * q @ k^T + bias) @ v        per (batch, head)
    q [B, H, N, D], k [B, H, S, D], v [B, H, S, Dv] -> out [B, H, N, Dv]   (3-D: H = 1)

Every backend ("cpp" in float32 and float64, "triton" through the interpreter on CPU in
float32 on small shapes, "reference", and Triton on CUDA when there is a GPU) is checked against
the float64 NumPy oracle (pykernels.reference.attention, itself checked against torch here),
forward and every gradient (q, k, v and a float mask), with tests/helpers.check_op. An output
element sums S products (its scores D each): the `terms` of the tolerance say so.

What is covered:
  * shapes: N != S (cross attention) both ways, odd N and S, N = S = 1, one query, rows longer
    than a kernel block, D in {1, 16, 64, 80, 128, 256} (a subset in the interpreter), Dv != D,
    B*H = 1, 3-D inputs, scale given (negative, zero) or default.
  * layouts: [B, N, H, D] transposed views, a strided last dim, k/v expanded over the batch
    (stride 0), a transposed mask, a mask expanded by the caller.
  * masks: bool and float, broadcast from [N, S], [B, 1, 1, S] (key padding), [1, H, 1, S],
    [B, 1, N, S] and [B, H, N, S]; float masks with -inf entries and with requires_grad (the
    gradient summed over the broadcast dims); causal with N < S and N > S (top-left aligned);
    mask + causal together; fully masked rows (out 0, lse -inf, zero gradients, no NaN);
    softmax outliers (logits of +-1e4 that overflow a naive exp).
  * lse: the custom op's second output against the reference (-inf for fully masked rows).
  * dropout: the keep pattern equals the reference's dropout_keep (Philox4x32-10) bit for bit
    for the seed torch.manual_seed makes the op draw; the op is reproducible under
    torch.manual_seed; values and gradients with the reference's keep mask; keep rate within a
    binomial bound and kept values scaled by 1/(1 - p).
  * the kernels themselves (C++ binding and Triton launchers, the SPEC entry points) on
    NaN-poisoned, strided outputs: every element written.
  * gradcheck in float64 (with and without masks, causal, dropout), torch.library.opcheck on
    pykernels::attention and pykernels::attention_backward with the arguments the public op
    really passes, the registered op's autograd formula (under a dispatch mode),
    torch.compile(fullgraph=True), parity with torch's scaled_dot_product_attention.
  * pykernels.nn.MultiheadAttention against torch.nn.MultiheadAttention after load_state_dict:
    batch_first both ways, key_padding_mask, attn_mask (2-D, 3-D, bool, float), need_weights
    (averaged or per head), add_bias_kv, add_zero_attn, kdim/vdim, unbatched input, bias=False;
    outputs, attention weights, input and parameter gradients.
  * bad inputs: an error naming the argument for each entry of a table.

Run: TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_attention.py -q -p no:logging
"""

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pykernels
import pykernels.nn
import pykernels.ops as ops
from pykernels.reference import attention as RA
from helpers import (PassThrough, RecordPykernelsCalls, Reference, assert_all_rejected, assert_close, check_op,
                     make_tensor, opcheck_recorded, poison, to_numpy)

INF = float("inf")


# ----------------------------------------------------------------------------------------------
# the reference in check_op's calling convention: forward(q, k, v, attn_mask, **kwargs),
# backward(dout, q, k, v, attn_mask, **kwargs) -> (dq, dk, dv, d attn_mask)


def _additive(mask):
    """The oracle's additive float64 mask from a bool (True takes part) or float mask."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype == bool:
        return np.where(m, 0.0, -np.inf)
    return m.astype(np.float64)


def _sum_to(g, shape):
    """g summed over the dims that were broadcast to reach g.shape from `shape`."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    dims = tuple(i for i, (n, m) in enumerate(zip(shape, g.shape)) if n == 1 and m != 1)
    return g.sum(axis=dims, keepdims=True) if dims else g


def _ref_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0,
                   keep=None):
    out, _ = RA.attention_forward(q, k, v, _additive(attn_mask), is_causal, scale, keep,
                                  dropout_p)
    return out


def _ref_attention_grad(dout, q, k, v, attn_mask=None, is_causal=False, scale=None,
                        dropout_p=0.0, keep=None):
    dq, dk, dv, dm = RA.attention_backward(dout, q, k, v, _additive(attn_mask), is_causal,
                                           scale, keep, dropout_p)
    if attn_mask is None or np.asarray(attn_mask).dtype == bool:
        dm = None
    else:
        dm = _sum_to(dm, np.shape(attn_mask))
    return dq, dk, dv, dm


ATTENTION = Reference(_ref_attention, _ref_attention_grad)


def torch_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0):
    """torch's SDPA; mask + causal (which torch refuses together) folded into one mask."""
    if attn_mask is not None and is_causal:
        N, S = q.shape[-2], k.shape[-2]
        tril = torch.ones(N, S, dtype=torch.bool, device=q.device).tril()
        if attn_mask.dtype == torch.bool:
            attn_mask = attn_mask & tril
        else:
            attn_mask = attn_mask.masked_fill(~tril, -INF)
        is_causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale)


def attention_terms(N, S, D, Dv, mask_numel=None, full=None):
    """Products summed per element: out sums S (each score D); dq S, dk and dv N (each through
    a score of D and a dP of Dv); a float mask's gradient sums dS over its broadcast dims."""
    terms = {"out": S + D, "q": S + D + Dv, "k": N + D + Dv, "v": N + D}
    if mask_numel:
        terms["attn_mask"] = max(1, full // mask_numel) * (D + Dv)
    return terms


# ----------------------------------------------------------------------------------------------
# inputs


def qkv(B, H, N, S, D, Dv, dtype, gen, *, device="cpu", layout="contiguous", three=False):
    """Fresh q [B, H, N, D], k [B, H, S, D], v [B, H, S, Dv] (3-D [B, N, D] etc. if three) in a
    layout: contiguous | bnhd (views of [B, N, H, D] tensors, as a projection gives them) |
    strided (every other element of the last dim) | expanded_kv (k, v broadcast over B)."""
    def t(shape, lay="contiguous"):
        return make_tensor(shape, dtype, gen, device=device, layout=lay)

    if three:
        return t((B, N, D), layout), t((B, S, D), layout), t((B, S, Dv), layout)
    if layout == "bnhd":
        return (t((B, N, H, D)).transpose(1, 2), t((B, S, H, D)).transpose(1, 2),
                t((B, S, H, Dv)).transpose(1, 2))
    if layout == "expanded_kv":
        return (t((B, H, N, D)), t((1, H, S, D)).expand(B, H, S, D),
                t((1, H, S, Dv)).expand(B, H, S, Dv))
    return t((B, H, N, D), layout), t((B, H, S, D), layout), t((B, H, S, Dv), layout)


def make_mask(kind, shape, dtype, gen, *, device="cpu", neg_inf=True):
    """A mask of `shape` whose broadcast rows each keep at least one key: key j = i % s of row i.

    kind "bool": True (takes part) with probability 0.7; "keypad": True for j < length, one
    random length >= 1 per leading index (a key padding mask, shape [.., 1, S]); "float":
    normal values, with -inf at ~15% of the positions when neg_inf."""
    n, s = (shape[-2] if len(shape) > 1 else 1), shape[-1]
    if kind == "keypad":
        lengths = torch.randint(1, s + 1, shape[:-2] + (1, 1), generator=gen)
        m = torch.arange(s).expand(shape) < lengths
    elif kind == "bool":
        m = torch.rand(shape, generator=gen) < 0.7
    else:
        m = make_tensor(shape, torch.float64, gen)
        if neg_inf:
            m = m.masked_fill(torch.rand(shape, generator=gen) < 0.15, -INF)
    rows = torch.arange(n)
    keep = torch.zeros(n, s, dtype=torch.bool)
    keep[rows, rows % s] = True
    keep = keep.reshape(tuple(shape[-2:]))  # [n, s], or [s] for a 1-D mask
    if kind == "float":
        m = torch.where(keep, m.clamp_min(-3.0), m).to(dtype)
    else:
        m = m | keep
    return m.to(device)


def _mask_shape(code, B, H, N, S):
    return {"NS": (N, S), "B11S": (B, 1, 1, S), "1H1S": (1, H, 1, S), "B1NS": (B, 1, N, S),
            "BHNS": (B, H, N, S), "BNS": (B, N, S), "S": (S,)}[code]


def check_attention(backend, dtype, gen, B, H, N, S, D, Dv, *, mask=None, causal=False,
                    scale=None, layout="contiguous", three=False, grad=True, with_torch=False,
                    mask_grad=True, tol=None, reason=None):
    """check_op of ops.attention on fresh inputs. mask: None or (kind, shape code)."""
    q, k, v = qkv(B, H, N, S, D, Dv, dtype, gen, device=backend.device, layout=layout,
                  three=three)
    m = None
    if mask is not None:
        kind, code = mask
        shape = _mask_shape(code, B, 1 if three else H, N, S)
        if three and len(shape) == 4:
            shape = (shape[0],) + shape[2:]
        m = make_mask(kind, shape, dtype, gen, device=backend.device)
    inputs = dict(q=q, k=k, v=v, attn_mask=m)
    if grad is True and (m is None or not mask_grad or m.dtype == torch.bool):
        grad = ("q", "k", "v")
    kw = dict(is_causal=causal, scale=scale)
    full = B * H * N * S
    terms = attention_terms(N, S, D, Dv, None if m is None else m.numel(), full)
    with backend.context():
        return check_op(ops.attention, ATTENTION, inputs, kwargs=kw, gen=gen, grad=grad,
                        terms=terms, torch_fn=torch_attention if with_torch else None,
                        tol=tol, reason=reason)


def _collect(cases, run):
    """Runs every case, then reports every failing one together."""
    failures = []
    for desc, args in cases:
        try:
            run(*args)
        except Exception as e:  # noqa: BLE001 - collected: report every failing case
            failures.append(f"[{desc}]: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}"
                            + ("\n    " + "\n    ".join(str(e).splitlines()[1:4])
                               if len(str(e).splitlines()) > 1 else ""))
    assert not failures, f"{len(failures)} of {len(cases)} cases fail:\n" + "\n".join(
        failures[:20])


# ----------------------------------------------------------------------------------------------
# the oracle itself: against torch in float64, and the Philox rule against Random123's vectors


@pytest.mark.parametrize("case", ["plain", "float_mask", "bool_mask", "causal_wide",
                                  "causal_tall", "fully_masked", "three_d"])
def test_reference_matches_torch(case, gen):
    f64 = torch.float64
    B, H, N, S, D, Dv = 2, 3, 7, 11, 5, 4
    if case == "causal_tall":
        N, S = 11, 5
    q, k, v = qkv(B, H, N, S, D, Dv, f64, gen, three=case == "three_d")
    m, causal = None, case.startswith("causal")
    if case == "float_mask":
        m = make_mask("float", (B, 1, N, S), f64, gen)
    elif case == "bool_mask":
        m = make_mask("bool", (N, S), f64, gen)
    elif case == "fully_masked":
        m = make_mask("bool", (B, H, N, S), f64, gen)
        m[0, 1, 3] = False
        m[1, :, N - 1] = False
    elif case == "three_d":
        m = make_mask("float", (N, S), f64, gen)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)] + (
        [m.clone().requires_grad_(True)] if m is not None and m.is_floating_point() else [])
    out = torch_attention(*leaves[:3], leaves[3] if len(leaves) > 3 else m, is_causal=causal,
                          scale=0.6)
    dout = make_tensor(out.shape, f64, gen)
    grads = torch.autograd.grad(out, leaves, dout)
    arrays = [to_numpy(t) for t in (q, k, v)] + [None if m is None else to_numpy(m)]
    want = _ref_attention(*arrays, is_causal=causal, scale=0.6)
    assert_close(want, out, dtype=f64, terms=S, name="reference out vs torch")
    ref_grads = _ref_attention_grad(to_numpy(dout), *arrays, is_causal=causal, scale=0.6)
    for name, g, r in zip("q k v attn_mask".split(), grads, ref_grads):
        assert_close(r, g, dtype=f64, terms=N + S, name=f"reference grad of {name} vs torch")


def test_reference_lse_and_fully_masked_rows(gen):
    q, k, v = (to_numpy(t) for t in qkv(1, 2, 4, 6, 3, 5, torch.float64, gen))
    mask = np.zeros((4, 6))
    mask[2] = -np.inf
    out, lse = RA.attention_forward(q, k, v, mask, False, 0.5)
    s = 0.5 * np.einsum("bhnd,bhsd->bhns", q, k)
    want = np.log(np.exp(s).sum(-1))
    assert np.isneginf(lse[:, :, 2]).all() and (out[:, :, 2] == 0).all()
    np.testing.assert_allclose(lse[:, :, [0, 1, 3]], want[:, :, [0, 1, 3]], rtol=1e-13)
    grads = RA.attention_backward(np.ones_like(out), q, k, v, mask, False, 0.5)
    for g in grads:
        assert np.isfinite(g).all()
    assert (grads[0][:, :, 2] == 0).all() and (grads[3][:, :, 2] == 0).all()
    # outliers: logits of 1e4 do not overflow the oracle
    out, lse = RA.attention_forward(q * 1e4, k, v, None, True, 1.0)
    assert np.isfinite(out).all() and np.isfinite(lse).all()


# Random123's known-answer vectors for philox4x32_10 (kat_vectors)
_PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _philox_scalar(c, key):
    """The spec's rule with Python ints, written independently of the reference's arrays."""
    c0, c1, c2, c3 = c
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c3 ^ k1,
                          p0 & 0xFFFFFFFF)
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def test_philox_known_answers():
    for c, key, want in _PHILOX_KAT:
        assert _philox_scalar(c, key) == want
        got = tuple(int(w) for w in RA.philox4x32_10(*c, *key))
        assert got == want, f"philox4x32_10{c, key}: {[hex(w) for w in got]}"


def test_dropout_keep_rule(np_rng):
    # element (b, h, i, j) <- counter ((b*H + h)*N + i)*S + j, key from the seed's two halves
    B, H, N, S = 2, 3, 5, 7
    for seed in (0, 12345, 2**40 + 17, 2**62 - 1):
        for p in (0.1, 0.5):
            keep = RA.dropout_keep(B, H, N, S, seed, p)
            assert keep.shape == (B, H, N, S) and keep.dtype == bool
            thresh = min(int(p * 4294967296.0), 4294967295)
            for _ in range(6):
                b, h, i, j = (int(np_rng.integers(n)) for n in (B, H, N, S))
                idx = ((b * H + h) * N + i) * S + j
                r = _philox_scalar((idx & 0xFFFFFFFF, idx >> 32, 0, 0),
                                   (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF))[0]
                assert keep[b, h, i, j] == (r >= thresh), (seed, p, (b, h, i, j))
    # the high counter word (idx >= 2**32) goes into c1
    idx = np.array([2**32 + 5, 3 * 2**32 + 2**31], dtype=np.uint64)
    r = RA.philox4x32_10(idx & np.uint64(0xFFFFFFFF), idx >> np.uint64(32), 0, 0, 7, 9)[0]
    assert [int(x) for x in r] == [_philox_scalar((int(i) & 0xFFFFFFFF, int(i) >> 32, 0, 0),
                                                  (7, 9))[0] for i in idx]
    # p = 0 keeps everything; the seed's high half matters
    assert RA.dropout_keep(1, 1, 4, 4, 3, 0.0).all()
    high = RA.dropout_keep(1, 2, 8, 8, 3 + 2**32, 0.5)
    assert (RA.dropout_keep(1, 2, 8, 8, 3, 0.5) != high).any()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_statistics(p):
    n = 2 * 4 * 64 * 64
    for seed in (1, 2**33 + 5):
        keep = RA.dropout_keep(2, 4, 64, 64, seed, p)
        rate = keep.mean()
        bound = 5 * math.sqrt(p * (1 - p) / n)  # 5 sigma of Binomial(n, 1 - p) / n
        assert abs(rate - (1 - p)) <= bound, (
            f"keep rate {rate:.4f}, expected {1 - p} +- {bound:.4f}")
        # no structure along rows or columns: every row's rate within 6 sigma of its own size
        rows = keep.reshape(-1, 64).mean(axis=1)
        assert np.abs(rows - (1 - p)).max() <= 6 * math.sqrt(p * (1 - p) / 64) + 1e-12


# ----------------------------------------------------------------------------------------------
# shapes: (B, H, N, S, D, Dv, scale, run in the interpreter too?)

_SHAPES = [
    (2, 3, 17, 17, 16, 16, None, True),       # self attention, odd N = S
    (1, 1, 9, 23, 16, 16, None, True),        # cross attention N < S, B*H = 1
    (2, 2, 31, 7, 64, 64, None, True),        # N > S, D = 64
    (1, 2, 13, 11, 1, 1, None, True),         # D = 1
    (2, 1, 19, 21, 80, 80, None, False),      # D = 80 (not a power of two)
    (1, 2, 33, 17, 128, 128, None, False),    # D = 128
    (1, 1, 16, 40, 256, 256, None, False),    # D = 256
    (2, 2, 15, 20, 16, 40, None, True),       # Dv > D
    (1, 2, 12, 9, 64, 8, 0.3, False),         # Dv < D, scale given
    (3, 1, 1, 1, 16, 16, None, True),         # N = S = 1
    (1, 3, 1, 37, 32, 32, -0.7, True),        # one query (decoding), negative scale
    (1, 1, 5, 8, 8, 8, 0.0, True),            # scale 0: uniform weights
    (1, 1, 130, 200, 64, 64, None, False),    # several blocks of rows and keys
    (2, 1, 67, 67, 48, 24, 1.25, False),      # block edges off by 3
]


@pytest.mark.parametrize("case", range(len(_SHAPES)),
                         ids=lambda i: "B{}H{}N{}S{}D{}Dv{}".format(*_SHAPES[i][:6]))
def test_attention_shapes(backend, dtype, case, gen):
    B, H, N, S, D, Dv, scale, interp = _SHAPES[case]
    if backend.interpreted and not interp:
        pytest.skip("too large for the Triton interpreter")
    if backend.name == "reference" and case % 3:
        pytest.skip("the oracle through the ops layer: a subset")
    check_attention(backend, dtype, gen, B, H, N, S, D, Dv, scale=scale,
                    with_torch=case % 2 == 0)


# ----------------------------------------------------------------------------------------------
# masks x causal: (kind, broadcast shape) with N < S (even cases) and N > S (odd cases)

_MASKS = [
    ("bool", "NS"), ("float", "NS"), ("keypad", "B11S"), ("float", "B11S"),
    ("bool", "BHNS"), ("float", "BHNS"), ("float", "1H1S"), ("bool", "B1NS"), ("float", "S"),
]
_INTERPRETED_MASKS = {(0, False), (1, True), (2, True), (5, False), (3, True)}


@pytest.mark.parametrize("causal", [False, True], ids=["nocausal", "causal"])
@pytest.mark.parametrize("case", range(len(_MASKS)), ids=lambda i: "-".join(_MASKS[i]))
def test_attention_masks(backend, dtype, case, causal, gen):
    if backend.interpreted and (case, causal) not in _INTERPRETED_MASKS:
        pytest.skip("the interpreter runs a subset")
    if backend.name == "reference" and (case + causal) % 3:
        pytest.skip("the oracle through the ops layer: a subset")
    B, H, N, S = (2, 3, 9, 14) if case % 2 == 0 else (2, 2, 15, 6)
    D, Dv = (16, 8) if backend.interpreted else (24, 20)
    check_attention(backend, dtype, gen, B, H, N, S, D, Dv, mask=_MASKS[case], causal=causal,
                    with_torch=True)


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (7, 7), (1, 6), (6, 1), (40, 37), (37, 70)],
                         ids=lambda s: f"N{s[0]}S{s[1]}")
def test_attention_causal(backend, dtype, shape, gen):
    # top-left aligned (query i sees keys j <= i) also when N != S, like torch; the last two
    # span several query and key blocks of the interpreter's configs (32 x 16, 16 x 32), so the
    # diagonal crosses blocks at offsets that are not multiples of either
    if backend.interpreted and shape in ((7, 7), (6, 1), (37, 70)):
        pytest.skip("the interpreter runs a subset")
    N, S = shape
    mask = ("float", "B1NS") if N > 30 else None
    check_attention(backend, dtype, gen, 2, 2, N, S, 8, 8, causal=True, mask=mask,
                    with_torch=True)


# the C++ kernel's blocks: 64 queries, 192 keys (forward) / 96 keys (backward); shapes that
# cross several of each, with tails, causal diagonals through blocks, and few heads (the
# backward then splits one head's key blocks over the threads)
_CPP_BIG = [
    (1, 1, 200, 300, 64, 64, True, ("float", "NS")),
    (1, 2, 257, 129, 32, 48, True, ("bool", "B1NS")),
    (2, 1, 65, 385, 16, 16, False, ("keypad", "B11S")),
]


@pytest.mark.backends("cpp")
@pytest.mark.parametrize("case", range(len(_CPP_BIG)))
def test_cpp_several_blocks(backend, dtype, case, gen):
    B, H, N, S, D, Dv, causal, mask = _CPP_BIG[case]
    check_attention(backend, dtype, gen, B, H, N, S, D, Dv, causal=causal, mask=mask)


@pytest.mark.parametrize("kind", ["bool", "float", "keypad", "causal+mask"])
def test_attention_fully_masked_rows(backend, dtype, kind, gen):
    # rows where no key takes part: out = 0 and zero gradients (torch's answer), never NaN
    if backend.interpreted and kind in ("float", "keypad"):
        pytest.skip("the interpreter runs a subset")
    B, H, N, S, D = 2, 2, 7, 10, 8
    if kind == "keypad":
        m = make_mask("keypad", (B, 1, 1, S), dtype, gen)
        m[1] = False  # every key of batch 1 padded
        dead = [(1, slice(None), slice(None))]
    elif kind == "causal+mask":
        m = make_mask("bool", (N, S), dtype, gen)
        m[0, 0] = False  # row 0 sees only key 0 under causal, which the mask removes
        m[4, :5] = False  # row 4 sees keys 0..4, all removed
        dead = [(slice(None), slice(None), 0), (slice(None), slice(None), 4)]
    else:
        m = make_mask("bool", (B, H, N, S), dtype, gen)
        m[0, 1, 2] = False
        m[1, :, N - 1] = False
        m[:, :, 0] = False
        if kind == "float":
            m = torch.zeros(m.shape, dtype=dtype).masked_fill(~m, -INF)
            m = m + make_tensor(m.shape, dtype, gen) * 0.5
        dead = [(0, 1, 2), (1, slice(None), N - 1), (slice(None), slice(None), 0)]
    m = m.to(backend.device)
    q, k, v = qkv(B, H, N, S, D, D, dtype, gen, device=backend.device)
    causal = kind == "causal+mask"
    terms = attention_terms(N, S, D, D, m.numel(), B * H * N * S)
    with backend.context():
        out = check_op(ops.attention, ATTENTION, dict(q=q, k=k, v=v, attn_mask=m),
                       kwargs=dict(is_causal=causal), gen=gen, terms=terms,
                       torch_fn=torch_attention)[0]
    for idx in dead:
        assert (out[idx] == 0).all(), f"fully masked rows {idx}: out {out[idx]} is not 0"
    # gradients: finite everywhere, and a dead row's dq is exactly 0
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    mg = m.detach().requires_grad_(True) if m.is_floating_point() else m
    with backend.context():
        o = ops.attention(*leaves, attn_mask=mg, is_causal=causal)
        grads = torch.autograd.grad(o, leaves + ([mg] if m.is_floating_point() else []),
                                    make_tensor(o.shape, dtype, gen, device=backend.device))
    for name, g in zip("q k v attn_mask".split(), grads):
        assert torch.isfinite(g).all(), f"grad of {name} has non-finite values"
    for idx in dead:
        assert (grads[0][idx] == 0).all(), f"grad of q in fully masked rows {idx} is not 0"
        if m.is_floating_point():
            assert (grads[3][idx] == 0).all(), f"grad of attn_mask in rows {idx} is not 0"


@pytest.mark.parametrize("where", ["q", "mask"])
def test_attention_softmax_outliers(backend, dtype, where, gen):
    # logits of +-1e4: exp overflows unless the row maximum is subtracted first
    if dtype in (torch.float16, torch.bfloat16):
        pytest.skip("logits of 1e4 round to multiples of 8 (float16) or 64 (bfloat16): the "
                    "weights would be noise")
    B, H, N, S, D = 1, 2, 9, 12, 16
    q, k, v = qkv(B, H, N, S, D, D, dtype, gen, device=backend.device)
    m = None
    if where == "q":
        with torch.no_grad():
            # rows 2 and 5 of q scaled so that their logits reach ~ +-1e4 (|q.k|/sqrt(D) ~ 1)
            q[:, :, 2] *= 1e4 / q[:, :, 2].norm(dim=-1, keepdim=True) * 4
            q[:, :, 5] *= -2e4 / q[:, :, 5].norm(dim=-1, keepdim=True)
        tol = dict(rtol=1e-2) if dtype == torch.float32 else None
        reason = ("q rows of norm 4e4 give logits ~1e4 whose float32 rounding (eps * |q| |k| "
                  "* scale ~ 1e-3 absolute) moves the weights of keys with close logits by "
                  "~1e-3 relative; torch's float32 SDPA is off by as much")
    else:
        # a float mask adding +1e4 / -1e4 to whole rows and single entries: softmax is shift
        # invariant per row, and a lone +1e4 entry takes all of its row's weight
        m = torch.zeros(N, S, dtype=torch.float64)
        m[1] += 1e4
        m[3] -= 1e4
        m[6, 4] = 1e4
        m[7, 0] = -1e4
        m = m.to(dtype=dtype, device=backend.device)
        tol, reason = None, None
        if dtype == torch.float32:
            tol = dict(rtol=2e-3)
            reason = ("scores + 1e4 are rounded to ulp(1e4)/2 ~ 5e-4 in float32 before exp: a "
                      "relative error of that size in the weights of the shifted rows")
    inputs = dict(q=q, k=k, v=v, attn_mask=m)
    # with outliers in q, dk = scale * dS^T @ q multiplies dS's rounding error (eps * |dP|,
    # where dS itself is ~0: the outlier rows are one-hot) by |q| * scale ~ 1e4: torch's float32
    # dk is off by as much; dk is checked for finiteness there, not against the oracle
    grad = ("q", "v") if where == "q" else ("q", "k", "v")
    with backend.context():
        out = check_op(ops.attention, ATTENTION, inputs, gen=gen, grad=grad,
                       terms=attention_terms(N, S, D, D), tol=tol, reason=reason)[0]
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        o = ops.attention(*leaves, attn_mask=m)
        grads = torch.autograd.grad(o, leaves, torch.ones_like(o))
    assert torch.isfinite(out).all()
    for name, g in zip("qkv", grads):
        assert torch.isfinite(g).all(), f"grad of {name} has non-finite values"


def test_attention_finfo_min_mask(backend, dtype, gen):
    # the padding masks of many libraries use torch.finfo(dtype).min instead of -inf: a row
    # where every key has it is NOT fully masked (its scores are all equal: uniform weights,
    # torch's answer), and a partly "masked" row ignores those keys. Scaling such a mask (e.g.
    # by log2(e) for exp2) overflows it to -inf.
    # Gradients: a partly "masked" row has well-defined ones (checked); a whole row at
    # finfo.min has scores that all round to finfo.min, and its lse (finfo.min + log S) rounds
    # to finfo.min, so a backward recomputing P = exp(s - lse) sees P = 1 instead of 1/S (torch
    # does, giving S times the oracle's gradient): only finiteness is checked for that row.
    B, H, N, S, D = 1, 2, 5, 7, 8
    q, k, v = qkv(B, H, N, S, D, D, dtype, gen, device=backend.device)
    lo = torch.finfo(dtype).min
    m = torch.zeros(N, S, dtype=dtype)
    m[3, :4] = lo
    m = m.to(backend.device)
    terms = attention_terms(N, S, D, D)
    with backend.context():
        check_op(ops.attention, ATTENTION, dict(q=q, k=k, v=v, attn_mask=m), gen=gen,
                 grad=("q", "k", "v"), terms=terms, torch_fn=torch_attention)
        m[1] = lo
        check_op(ops.attention, ATTENTION, dict(q=q, k=k, v=v, attn_mask=m), gen=gen,
                 grad=False, terms=terms, torch_fn=torch_attention)
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        o = ops.attention(*leaves, attn_mask=m)
        grads = torch.autograd.grad(o, leaves, torch.ones_like(o))
    for name, g in zip("qkv", grads):
        assert torch.isfinite(g).all(), f"grad of {name} has non-finite values"


def test_attention_float_mask_requires_grad(backend, dtype, gen):
    # d attn_mask = dS summed over the broadcast dims, for every broadcast shape, vs torch too
    if backend.interpreted:
        shapes = [(2, 1, 5, 7)]
    else:
        shapes = [(2, 3, 5, 7), (2, 1, 5, 7), (1, 3, 1, 7), (5, 7), (7,), (2, 1, 1, 7)]
    B, H, N, S, D = 2, 3, 5, 7, 8

    def run(shape):
        q, k, v = qkv(B, H, N, S, D, D, dtype, gen, device=backend.device)
        m = make_mask("float", shape, dtype, gen, device=backend.device, neg_inf=False)
        with backend.context():
            check_op(ops.attention, ATTENTION, dict(q=q, k=k, v=v, attn_mask=m), gen=gen,
                     grad=("attn_mask", "q"), torch_fn=torch_attention,
                     terms=attention_terms(N, S, D, D, m.numel(), B * H * N * S))

    _collect([(f"mask {s}", (s,)) for s in shapes], run)


# ----------------------------------------------------------------------------------------------
# layouts and 3-D inputs


@pytest.mark.parametrize("layout", ["bnhd", "strided", "expanded_kv"])
def test_attention_layouts(backend, dtype, layout, gen):
    if backend.interpreted and layout == "strided":
        pytest.skip("the interpreter runs a subset")
    B, H, N, S, D, Dv = (2, 2, 7, 9, 16, 8) if backend.interpreted else (2, 3, 19, 13, 32, 24)
    check_attention(backend, dtype, gen, B, H, N, S, D, Dv, layout=layout,
                    mask=("float", "B1NS"), causal=layout == "bnhd", with_torch=True)


def test_attention_mask_layouts(backend, dtype, gen):
    # a transposed mask, a bool mask expanded by the caller (stride 0), a sliced float mask
    B, H, N, S, D = 2, 2, 6, 9, 8
    q, k, v = qkv(B, H, N, S, D, D, dtype, gen, device=backend.device)
    dev = backend.device
    masks = {
        "transposed": make_mask("float", (S, N), dtype, gen, device=dev, neg_inf=False).t(),
        "expanded": make_mask("bool", (1, 1, N, S), dtype, gen, device=dev).expand(B, H, N, S),
        "sliced": make_mask("float", (B, 1, N, 2 * S), dtype, gen, device=dev)[..., ::2],
    }
    masks["transposed"][:, 0] = 0.0  # the forced key of make_mask was for the other shape
    cases = list(masks.items())
    if backend.interpreted:
        cases = cases[:2]

    def run(name, m):
        with backend.context():
            check_op(ops.attention, ATTENTION, dict(q=q, k=k, v=v, attn_mask=m), gen=gen,
                     torch_fn=torch_attention, grad=("q", "k", "v"),
                     terms=attention_terms(N, S, D, D))

    _collect([(name, (name, m)) for name, m in cases], run)


@pytest.mark.parametrize("mask", [None, ("float", "NS"), ("bool", "BNS")],
                         ids=["nomask", "float-NS", "bool-BNS"])
def test_attention_3d(backend, dtype, mask, gen):
    # [B, N, D] inputs: H = 1, a 3-D output; masks broadcast to [B, N, S]
    if backend.interpreted and mask == ("float", "NS"):
        pytest.skip("the interpreter runs a subset")
    out = check_attention(backend, dtype, gen, 3, 1, 7, 10, 16, 12, mask=mask, three=True,
                          causal=mask is not None and mask[0] == "bool", with_torch=True)[0]
    assert out.dim() == 3 and tuple(out.shape) == (3, 7, 12)


def test_attention_strided_grad_out(backend, dtype, gen):
    # out.sum() gives an expanded upstream gradient (stride 0); a transposed one from a view
    B, H, N, S, D = 2, 2, 5, 6, 8
    q, k, v = qkv(B, H, N, S, D, D, dtype, gen, device=backend.device)
    dev = backend.device
    for how in ("expanded", "transposed"):
        pk = [t.detach().requires_grad_(True) for t in (q, k, v)]
        tt = [t.detach().requires_grad_(True) for t in (q, k, v)]
        with backend.context():
            out = ops.attention(*pk, is_causal=True)
        want = torch_attention(*tt, is_causal=True)
        if how == "expanded":
            dout = torch.full((), 1.5, dtype=dtype, device=dev).expand(out.shape)
        else:
            dout = make_tensor((B, H, D, N), dtype, gen, device=dev).transpose(-1, -2)
        with backend.context():
            grads = torch.autograd.grad(out, pk, dout)
        tgrads = torch.autograd.grad(want, tt, dout)
        for name, g, t in zip("qkv", grads, tgrads):
            assert_close(g, t, terms=N + S + D, name=f"grad of {name}, {how} grad_out")


@pytest.mark.parametrize("needs", [("q",), ("k",), ("v",), ("k", "v")], ids="+".join)
def test_attention_partial_grads(backend, dtype, needs, gen):
    if backend.interpreted and needs in (("k",), ("v",)):
        pytest.skip("the interpreter runs a subset")
    check_attention(backend, dtype, gen, 2, 2, 6, 9, 8, 8, mask=("bool", "NS"), grad=needs)


def test_attention_no_grad(backend, dtype, gen):
    q, k, v = qkv(2, 2, 5, 7, 8, 8, dtype, gen, device=backend.device)
    with backend.context(), torch.no_grad():
        out = ops.attention(q, k, v, is_causal=True)
    assert not out.requires_grad and out.dtype == dtype
    assert_close(out, _ref_attention(*(to_numpy(t) for t in (q, k, v)), is_causal=True),
                 terms=15, name="no-grad forward")


@pytest.mark.parametrize("which", ["N0", "S0", "B0", "Dv0"])
def test_attention_empty(backend, dtype, which, gen):
    # N = 0 / B = 0 / Dv = 0: empty outputs (zero gradients); S = 0: out = 0 (torch does), zero
    # dq, empty dk and dv
    B, H, N, S, D, Dv = 2, 2, 4, 5, 8, 8
    if which == "N0":
        N = 0
    elif which == "S0":
        S = 0
    elif which == "Dv0":
        Dv = 0
    else:
        B = 0
    q, k, v = (t.requires_grad_(True) for t in qkv(B, H, N, S, D, Dv, dtype, gen,
                                                    device=backend.device))
    with backend.context():
        out = ops.attention(q, k, v)
        want = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach())
        assert out.shape == want.shape == (B, H, N, Dv) and out.dtype == dtype
        assert not out.isnan().any()
        assert (out == 0).all()
        grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out), allow_unused=True)
    for t, g in zip((q, k, v), grads):
        assert g is None or (g.shape == t.shape and (g == 0).all())


def test_attention_lse(backend, dtype, gen):
    # the custom op's second output: lse [B, H, N] per score row (float32 for float32 inputs,
    # float64 for float64), -inf for fully masked rows
    B, H, N, S, D = 2, 2, 7, 9, 8
    q, k, v = qkv(B, H, N, S, D, D, dtype, gen, device=backend.device)
    m = make_mask("float", (B, 1, N, S), dtype, gen, device=backend.device)
    m[1, 0, 3] = -INF
    with backend.context():  # the op takes the mask as the 4-D expanded view
        out, lse = torch.ops.pykernels.attention(q, k, v, m.expand(B, H, N, S), True, 0.4, 0.0,
                                                 None)
    want_out, want_lse = RA.attention_forward(*(to_numpy(t) for t in (q, k, v, m)), True, 0.4)
    lse_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert lse.shape == (B, H, N) and lse.dtype == lse_dtype and lse.is_contiguous()
    assert_close(out, want_out, terms=S + D, name="out")
    assert_close(lse, want_lse, terms=S + D, name="lse", match_nonfinite=True)
    assert torch.isneginf(lse[1, :, 3]).all()


# ----------------------------------------------------------------------------------------------
# dropout: the keep mask is the reference's, bit for bit, for the seed the op draws


def _drawn_seed(torch_seed):
    """The seed the op draws after torch.manual_seed(torch_seed) (SPEC: one int64 draw)."""
    torch.manual_seed(torch_seed)
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def _identity_v(B, H, S, dtype, device):
    """v = I [B, H, S, S]: out = P_drop @ I = P_drop, so out != 0 exactly where kept."""
    return torch.eye(S, dtype=dtype, device=device).expand(B, H, S, S).contiguous()


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_dropout_keep_pattern_matches_reference(backend, dtype, p, gen):
    if backend.interpreted and p == 0.6:
        pytest.skip("the interpreter runs a subset")
    B, H, N, S, D = (2, 2, 8, 12, 8) if backend.interpreted else (2, 3, 19, 33, 16)
    dev = backend.device
    q, k, _ = qkv(B, H, N, S, D, D, dtype, gen, device=dev)
    v = _identity_v(B, H, S, dtype, dev)
    m = make_mask("bool", (N, S), dtype, gen, device=dev)
    torch_seed = int(torch.randint(0, 2**31, (), generator=gen))
    seed = _drawn_seed(torch_seed)
    keep = RA.dropout_keep(B, H, N, S, seed, p)
    torch.manual_seed(torch_seed)
    with backend.context(), torch.no_grad():
        out = ops.attention(q, k, v, attn_mask=m, dropout_p=p)
    arrays = [to_numpy(t) for t in (q, k, v, m)]
    P = _ref_attention(*arrays)  # weights without dropout: > 0 where the mask allows
    allowed = np.broadcast_to(to_numpy(m), P.shape)
    got_keep = to_numpy(out) != 0
    want_keep = keep & allowed
    diff = got_keep != want_keep
    assert not diff.any(), (
        f"{int(diff.sum())} of {diff.size} elements kept/dropped unlike the reference's "
        f"dropout_keep(seed={seed}, p={p}); first at "
        f"{[tuple(int(i) for i in ix) for ix in list(zip(*np.nonzero(diff)))[:6]]}")
    # the kept weights are P / (1 - p)
    assert_close(out, _ref_attention(*arrays, dropout_p=p, keep=keep), terms=S + D,
                 name="out with the reference's keep mask")


def test_dropout_values_and_grads_match_reference(backend, dtype, gen):
    # forward and every gradient with the reference's keep mask: the backward regenerates the
    # same bits from the saved seed
    p = 0.3
    B, H, N, S, D, Dv = (1, 2, 7, 10, 8, 8) if backend.interpreted else (2, 2, 13, 17, 16, 12)
    dev = backend.device
    q, k, v = qkv(B, H, N, S, D, Dv, dtype, gen, device=dev)
    m = make_mask("float", (B, 1, N, S), dtype, gen, device=dev)
    torch_seed = int(torch.randint(0, 2**31, (), generator=gen))
    keep = RA.dropout_keep(B, H, N, S, _drawn_seed(torch_seed), p)

    def op(q, k, v, attn_mask, **kw):
        torch.manual_seed(torch_seed)
        return ops.attention(q, k, v, attn_mask, dropout_p=p, **kw)

    ref = Reference(functools.partial(_ref_attention, dropout_p=p, keep=keep),
                    functools.partial(_ref_attention_grad, dropout_p=p, keep=keep))
    with backend.context():
        check_op(op, ref, dict(q=q, k=k, v=v, attn_mask=m), kwargs=dict(is_causal=True),
                 gen=gen, terms=attention_terms(N, S, D, Dv, m.numel(), B * H * N * S))


def test_dropout_reproducible(backend, dtype, gen):
    B, H, N, S, D = 2, 2, 6, 9, 8
    q, k, v = qkv(B, H, N, S, D, D, dtype, gen, device=backend.device)

    def run(torch_seed, grad=True):
        leaves = [t.detach().requires_grad_(grad) for t in (q, k, v)]
        torch.manual_seed(torch_seed)
        with backend.context():
            out = ops.attention(*leaves, dropout_p=0.4)
            grads = torch.autograd.grad(out, leaves, torch.ones_like(out)) if grad else []
        return [out.detach()] + list(grads)

    a, b, c = run(7), run(7), run(8, grad=False)
    for name, x, y in zip(("out", "dq", "dk", "dv"), a, b):
        assert torch.equal(x, y), f"{name} differs between two runs with torch.manual_seed(7)"
    assert not torch.equal(a[0], c[0]), "torch.manual_seed(7) and (8) give the same dropout"
    # dropout_p = 0 is no dropout at all
    with backend.context():
        assert torch.equal(ops.attention(q, k, v, dropout_p=0.0), ops.attention(q, k, v))


@pytest.mark.backends("cpp")
@pytest.mark.dtypes(torch.float32)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.85])
def test_dropout_statistics(backend, dtype, p, gen):
    # keep rate ~ 1 - p within a binomial bound; kept weights scaled by exactly 1/(1 - p)
    B, H, N, S, D = 2, 4, 48, 96, 8
    q, k, _ = qkv(B, H, N, S, D, D, dtype, gen)
    v = _identity_v(B, H, S, dtype, "cpu")
    with backend.context(), torch.no_grad():
        torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
        out = ops.attention(q, k, v, dropout_p=p).double()
        P = ops.attention(q, k, v).double()
    kept = out != 0
    n = kept.numel()
    rate = kept.double().mean().item()
    bound = 5 * math.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) <= bound, f"keep rate {rate:.4f}, expected {1 - p} +- {bound:.4f}"
    ratio = out[kept] / P[kept]
    assert torch.allclose(ratio, torch.full_like(ratio, 1 / (1 - p)), rtol=1e-5), (
        f"kept weights scaled by {ratio.min().item():.6f}..{ratio.max().item():.6f}, "
        f"expected 1/(1 - p) = {1 / (1 - p):.6f}")


# ----------------------------------------------------------------------------------------------
# the kernels themselves (SPEC entry points): every element of poisoned, strided outputs written


class _CppKernels:
    """pykernels._C behind the Triton launchers' signatures (pointers as ints, strides in
    elements, 0 for an absent pointer; the mask a 4-D expanded view)."""

    def __init__(self):
        from pykernels import _C
        self.C = _C

    @staticmethod
    def _t(t, n=4):
        return (0,) * (n + 1) if t is None else (t.data_ptr(), *t.stride())

    @staticmethod
    def _mask(mask):
        if mask is None:
            return (0, 0, 0, 0, 0, 0)
        kind = 1 if mask.dtype == torch.bool else 2
        return (mask.data_ptr(), kind, *mask.stride())

    def attention_forward(self, q, k, v, out, lse, *, mask=None, causal=False, scale,
                          dropout_p=0.0, seed=0):
        B, H, N, D = q.shape
        S, Dv = v.shape[2], v.shape[3]
        self.C.attention_forward(q.dtype == torch.float64, B, H, N, S, D, Dv, *self._t(q),
                                 *self._t(k), *self._t(v), *self._mask(mask), bool(causal),
                                 float(scale), float(dropout_p), int(seed), *self._t(out),
                                 *self._t(lse, 3))

    def attention_backward(self, q, k, v, out, dout, lse, dq, dk, dv, *, mask=None,
                           causal=False, scale, dropout_p=0.0, seed=0, dmask=None):
        B, H, N, D = q.shape
        S, Dv = v.shape[2], v.shape[3]
        self.C.attention_backward(q.dtype == torch.float64, B, H, N, S, D, Dv, *self._t(q),
                                  *self._t(k), *self._t(v), *self._t(out), *self._t(dout),
                                  *self._t(lse, 3), *self._mask(mask), bool(causal),
                                  float(scale), float(dropout_p), int(seed), *self._t(dq),
                                  *self._t(dk), *self._t(dv), *self._t(dmask))


def _kernels(backend):
    if backend.name == "cpp":
        return _CppKernels()
    from pykernels._backend import triton_kernels
    return triton_kernels("attention")


def _buffer(shape, dtype, device, layout):
    """A NaN-filled output buffer: contiguous | strided (every other element of the last dim)
    | bnhd (a view of a [B, N, H, X] buffer; lse: [B, N, H])."""
    if layout == "strided":
        t = torch.empty(tuple(shape[:-1]) + (2 * shape[-1],), dtype=dtype,
                        device=device)[..., 1::2]
    elif layout == "bnhd" and len(shape) == 4:
        t = torch.empty((shape[0], shape[2], shape[1], shape[3]), dtype=dtype,
                        device=device).transpose(1, 2)
    elif layout == "bnhd":
        t = torch.empty((shape[0], shape[2], shape[1]), dtype=dtype,
                        device=device).transpose(1, 2)
    else:
        t = torch.empty(shape, dtype=dtype, device=device)
    return poison(t)


# (mask kind or None, causal, dropout p, output layout)
_KERNEL_CASES = [
    (None, False, 0.0, "contiguous"),
    ("bool", True, 0.0, "bnhd"),
    ("float", False, 0.25, "strided"),
    ("float", True, 0.0, "contiguous"),
]


@pytest.mark.backends("cpp", "triton")
@pytest.mark.parametrize("case", range(len(_KERNEL_CASES)),
                         ids=lambda i: "{}-{}-p{}-{}".format(*_KERNEL_CASES[i]))
def test_kernels_fill_poisoned_outputs(backend, dtype, case, gen):
    mask_kind, causal, p, layout = _KERNEL_CASES[case]
    if backend.interpreted and case in (0, 3):
        pytest.skip("the interpreter runs a subset")
    K = _kernels(backend)
    dev = backend.device
    B, H, N, S, D, Dv = 2, 2, 11, 7, 16, 8
    q, k, v = qkv(B, H, N, S, D, Dv, dtype, gen, device=dev, layout="bnhd")
    mask = None
    if mask_kind is not None:
        mask = make_mask(mask_kind, (B, 1, N, S), dtype, gen, device=dev)
        if mask_kind == "bool":
            mask[1, 0, 4] = False  # a fully masked row: out 0, lse -inf
        else:
            mask[0, 0, 2] = -INF
        mask = mask.expand(B, H, N, S)  # the ops layer passes a 4-D expanded view
    scale, seed = 0.37, 2**40 + 123
    keep = RA.dropout_keep(B, H, N, S, seed, p) if p else None
    arrays = [to_numpy(t) for t in (q, k, v)]
    am = None if mask is None else _additive(to_numpy(mask))
    want_out, want_lse = RA.attention_forward(*arrays, am, causal, scale, keep, p)
    lse_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    out = _buffer((B, H, N, Dv), dtype, dev, layout)
    lse = _buffer((B, H, N), lse_dtype, dev, layout)
    K.attention_forward(q, k, v, out, lse, mask=mask, causal=causal, scale=scale, dropout_p=p,
                        seed=seed)
    assert_close(out, want_out, dtype=dtype, terms=S + D, name="forward out")
    assert_close(lse, want_lse, dtype=dtype, terms=D, name="forward lse", match_nonfinite=True)

    dout = make_tensor((B, H, N, Dv), dtype, gen, device=dev, layout="strided")
    want = RA.attention_backward(to_numpy(dout), *arrays, am, causal, scale, keep, p)
    dq = _buffer((B, H, N, D), dtype, dev, layout)
    dk = _buffer((B, H, S, D), dtype, dev, layout)
    dv = _buffer((B, H, S, Dv), dtype, dev, layout)
    dmask = _buffer((B, H, N, S), dtype, dev, layout) if mask_kind == "float" else None
    # out as the kernel wrote it (the backward's Delta = rowsum(dout * out))
    K.attention_backward(q, k, v, out, dout, lse, dq, dk, dv, mask=mask, causal=causal,
                         scale=scale, dropout_p=p, seed=seed, dmask=dmask)
    terms = attention_terms(N, S, D, Dv)
    assert_close(dq, want[0], terms=terms["q"], name="backward dq")
    assert_close(dk, want[1], terms=terms["k"], name="backward dk")
    assert_close(dv, want[2], terms=terms["v"], name="backward dv")
    if dmask is not None:
        assert_close(dmask, want[3], terms=D + Dv, name="backward dmask")


@pytest.mark.backends("cpp")
@pytest.mark.dtypes(torch.float32)
def test_cpp_threads_agree(backend, dtype, gen):
    # one and two threads: the same result as the reference (dk/dv: no race between threads)
    saved = pykernels.get_num_threads()
    try:
        for n in (1, 2):
            pykernels.set_num_threads(n)
            check_attention(backend, dtype, gen, 1, 3, 70, 45, 32, 32, mask=("float", "NS"),
                            causal=True)
            check_attention(backend, dtype, gen, 1, 1, 100, 290, 16, 16, mask=("float", "NS"),
                            causal=True)
    finally:
        pykernels.set_num_threads(saved)


# ----------------------------------------------------------------------------------------------
# gradcheck in float64 (finite differences, independent of the reference)

# (B, H, N, S, D, Dv, mask (kind, shape code) or None, causal, dropout p)
_GRADCHECK = [
    (1, 2, 3, 4, 3, 2, None, False, 0.0),
    (2, 1, 4, 3, 2, 3, ("float", "B1NS"), False, 0.0),
    (1, 2, 4, 5, 3, 3, ("bool", "NS"), True, 0.0),
    (1, 1, 5, 3, 2, 2, ("float", "NS"), True, 0.0),
    (1, 2, 3, 4, 2, 2, ("float", "1H1S"), False, 0.3),
]


@pytest.mark.dtypes(torch.float64)
@pytest.mark.parametrize("case", range(len(_GRADCHECK)))
def test_attention_gradcheck(backend, dtype, case, gen):
    B, H, N, S, D, Dv, mask, causal, p = _GRADCHECK[case]
    q, k, v = (t.requires_grad_(True) for t in qkv(B, H, N, S, D, Dv, dtype, gen,
                                                    device=backend.device))
    args = [q, k, v]
    m = None
    if mask is not None:
        m = make_mask(mask[0], _mask_shape(mask[1], B, H, N, S), dtype, gen,
                      device=backend.device, neg_inf=False)
        if m.is_floating_point():
            args.append(m.requires_grad_(True))

    def fn(q, k, v, *rest):
        if p:
            torch.manual_seed(1234)  # the same dropout pattern in every evaluation
        return ops.attention(q, k, v, rest[0] if rest else m, is_causal=causal, dropout_p=p)

    with backend.context():
        assert torch.autograd.gradcheck(fn, tuple(args), fast_mode=backend.interpreted)


@pytest.mark.backends("triton")
def test_triton_gradcheck_tiny(backend, gen):
    # float64 through the Triton kernels; fast mode (a few directional derivatives instead of
    # one per input element): the interpreter is slow
    f64 = torch.float64
    q, k, v = (t.requires_grad_(True) for t in qkv(1, 2, 3, 4, 2, 3, f64, gen,
                                                    device=backend.device))
    m = make_mask("float", (3, 4), f64, gen, device=backend.device, neg_inf=False)
    with backend.context():
        assert torch.autograd.gradcheck(
            lambda q, k, v, m: ops.attention(q, k, v, m, is_causal=True, scale=0.8),
            (q, k, v, m.requires_grad_(True)), fast_mode=True)


# ----------------------------------------------------------------------------------------------
# torch.library.opcheck on pykernels::attention and pykernels::attention_backward, with the
# arguments the public op really passes (recorded below the autograd layer)


def _record_attention_calls(gen):
    f64 = torch.float64

    def t(*shape):
        return make_tensor(shape, f64, gen, scale=0.5).requires_grad_(True)

    usages = [
        lambda: ops.attention(t(2, 2, 5, 4), t(2, 2, 6, 4), t(2, 2, 6, 3)),
        lambda: ops.attention(t(1, 2, 5, 4), t(1, 2, 6, 4), t(1, 2, 6, 4),
                              attn_mask=make_mask("bool", (5, 6), f64, gen), is_causal=True),
        lambda: ops.attention(t(2, 2, 5, 4), t(2, 2, 3, 4), t(2, 2, 3, 4),
                              attn_mask=make_mask("float", (2, 1, 5, 3), f64, gen,
                                                  neg_inf=False).requires_grad_(True),
                              scale=0.3),
        lambda: ops.attention(t(2, 5, 4), t(2, 6, 4), t(2, 6, 4), dropout_p=0.25),
    ]
    rec = RecordPykernelsCalls("attention")
    with rec:
        for fn in usages:
            y = fn()
            y.backward(make_tensor(y.shape, y.dtype, gen))
        with torch.no_grad():
            ops.attention(t(1, 2, 4, 8).float(), t(1, 2, 4, 8).float(), t(1, 2, 4, 8).float())
    return rec.calls


def test_opcheck_attention_ops(gen):
    calls = _record_attention_calls(gen)
    seen = {func._name.split("::")[1].split(".")[0] for func, _, _ in calls}
    for name in ("attention", "attention_backward"):
        assert name in seen, f"pykernels::{name} never called by ops.attention (saw {seen})"
    opcheck_recorded(calls, aot_per_op=2)


def test_registered_op_path(backend, dtype, gen):
    # eager calls on plain tensors may skip the custom op's dispatch; under a dispatch mode (as
    # under torch.compile) the registered op and its register_autograd formula run: check those
    with PassThrough():
        check_attention(backend, dtype, gen, 2, 2, 5, 7, 8, 8, mask=("float", "B1NS"),
                        causal=True)


# ----------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): the custom ops trace as single nodes, compiled == eager


def _compile_fn(q, k, v, m, eye):
    plain = ops.attention(q, k, v, attn_mask=m, is_causal=True)
    dropped = ops.attention(q, k, eye, dropout_p=0.5)  # v = I: out = the dropped weights
    return torch.tanh(plain) * 2, dropped


def test_compile_fullgraph_matches_eager(gen):
    f32 = torch.float32
    q, k, v = qkv(2, 2, 6, 8, 8, 8, f32, gen)
    m = make_mask("float", (2, 1, 6, 8), f32, gen, neg_inf=False)
    dout = make_tensor((2, 2, 6, 8), f32, gen)

    def run(fn):
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v, m)]
        plain, dropped = fn(*leaves, _identity_v(2, 2, 8, f32, "cpu"))
        grads = torch.autograd.grad(plain, leaves, dout)
        return [plain.detach()] + list(grads), dropped.detach()

    eager, _ = run(_compile_fn)
    torch._dynamo.reset()
    cfn = torch.compile(_compile_fn, fullgraph=True)
    compiled, d1 = run(cfn)
    _, d2 = run(cfn)
    for name, e, c in zip(("out", "dq", "dk", "dv", "dmask"), eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5, msg=f"compiled {name}")
    # the dropout seed is an input of the graph, not a constant baked into it
    assert not torch.equal(d1, d2), "two calls of the compiled function dropped the same weights"
    rate = (d1 != 0).double().mean().item()
    assert 0.3 < rate < 0.7, f"compiled dropout(0.5) keeps {rate:.2f} of the weights"


# ----------------------------------------------------------------------------------------------
# pykernels.nn.MultiheadAttention vs torch.nn.MultiheadAttention

# (constructor kwargs, forward setup)
_MHA = [
    (dict(embed_dim=16, num_heads=4), dict(need_weights=False)),
    (dict(embed_dim=16, num_heads=2, batch_first=True),
     dict(key_padding_mask="bool", need_weights=True)),
    (dict(embed_dim=12, num_heads=3),
     dict(attn_mask="float", key_padding_mask="float", need_weights=True,
          average_attn_weights=False)),
    (dict(embed_dim=16, num_heads=4, add_bias_kv=True, add_zero_attn=True),
     dict(attn_mask="bool", key_padding_mask="bool", need_weights=True)),
    (dict(embed_dim=16, num_heads=4, kdim=6, vdim=10, batch_first=True),
     dict(key_padding_mask="float", need_weights=False)),
    (dict(embed_dim=8, num_heads=2), dict(unbatched=True, attn_mask="bool", need_weights=True)),
    (dict(embed_dim=8, num_heads=2, bias=False, batch_first=True),
     dict(attn_mask="float3d", need_weights=False)),
    (dict(embed_dim=16, num_heads=4), dict(attn_mask="causal", is_causal=True,
                                           need_weights=False, self_attention=True)),
    (dict(embed_dim=16, num_heads=4, dropout=0.4), dict(eval=True, need_weights=False,
                                                        key_padding_mask="bool")),
]


def _mha_inputs(kw, setup, gen):
    E, heads = kw["embed_dim"], kw["num_heads"]
    B, L, S = 3, 5, 7
    if setup.get("self_attention"):
        S = L
    kdim, vdim = kw.get("kdim") or E, kw.get("vdim") or E
    bf = kw.get("batch_first", False)

    def seq(n, d):
        if setup.get("unbatched"):
            return make_tensor((n, d), torch.float32, gen)
        return make_tensor((B, n, d) if bf else (n, B, d), torch.float32, gen)

    query = seq(L, E)
    if setup.get("self_attention"):
        key = value = query
    else:
        key, value = seq(S, kdim), seq(S, vdim)
    fw = {k: v for k, v in setup.items()
          if k in ("need_weights", "average_attn_weights", "is_causal")}
    kpm = setup.get("key_padding_mask")
    if kpm and not setup.get("unbatched"):
        pad = torch.arange(S).expand(B, S) >= torch.tensor([S, S - 2, 3])[:, None]  # True: pad
        fw["key_padding_mask"] = pad if kpm == "bool" else torch.zeros(B, S).masked_fill(
            pad, -INF)
    am = setup.get("attn_mask")
    if am == "bool":  # torch.nn.MultiheadAttention: True = NOT allowed
        m = torch.rand(L, S, generator=gen) < 0.3
        m[:, 0] = False
        fw["attn_mask"] = m
    elif am == "float":
        fw["attn_mask"] = make_tensor((L, S), torch.float32, gen)
    elif am == "float3d":
        fw["attn_mask"] = make_tensor((B * heads, L, S), torch.float32, gen)
    elif am == "causal":
        fw["attn_mask"] = torch.ones(L, S, dtype=torch.bool).triu(1)
    return query, key, value, fw


@pytest.mark.parametrize("case", range(len(_MHA)))
def test_nn_multihead_attention_matches_torch(case, gen):
    kw, setup = _MHA[case]
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    ref = torch.nn.MultiheadAttention(**kw)
    pk = pykernels.nn.MultiheadAttention(**kw)
    assert isinstance(pk, torch.nn.MultiheadAttention)
    assert pk.state_dict().keys() == ref.state_dict().keys()
    pk.load_state_dict(ref.state_dict())
    if setup.get("eval"):  # no dropout in eval mode, in either
        ref.eval()
        pk.eval()
    query, key, value, fw = _mha_inputs(kw, setup, gen)
    self_attn = setup.get("self_attention")
    ins_r = [t.detach().clone().requires_grad_(True) for t in (query, key, value)]
    ins_p = [t.detach().clone().requires_grad_(True) for t in (query, key, value)]
    if self_attn:
        ins_r, ins_p = [ins_r[0]] * 3, [ins_p[0]] * 3
    out_r, w_r = ref(*ins_r, **fw)
    out_p, w_p = pk(*ins_p, **fw)
    E = kw["embed_dim"]
    terms = 4 * E + 10
    assert out_p.shape == out_r.shape and out_p.dtype == out_r.dtype
    assert_close(out_p, out_r, terms=terms, name="output")
    if fw.get("need_weights", True):
        assert w_p is not None and w_p.shape == w_r.shape, (
            f"attention weights {None if w_p is None else tuple(w_p.shape)}, torch "
            f"{tuple(w_r.shape)}")
        assert_close(w_p, w_r, terms=terms, name="attention weights")
    else:
        assert w_p is None
    dout = make_tensor(out_r.shape, torch.float32, gen)
    uniq_r = list(dict.fromkeys(ins_r))
    uniq_p = list(dict.fromkeys(ins_p))
    g_r = torch.autograd.grad(out_r, uniq_r + list(ref.parameters()), dout, allow_unused=True)
    g_p = torch.autograd.grad(out_p, uniq_p + list(pk.parameters()), dout, allow_unused=True)
    names = ["query", "key", "value"][:len(uniq_r)] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, g_p, g_r):
        if b is None:
            assert a is None or not a.any(), f"grad of {name}: torch has none"
            continue
        assert a is not None, f"grad of {name}: None, torch has one"
        assert_close(a, b, terms=4 * terms, name=f"grad of {name}")


def test_nn_multihead_attention_dropout(gen):
    # training mode with dropout: reproducible under torch.manual_seed, different from eval
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    pk = pykernels.nn.MultiheadAttention(16, 4, dropout=0.5, batch_first=True)
    x = make_tensor((2, 6, 16), torch.float32, gen)
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(pk(x, x, x, need_weights=False)[0])
    assert torch.equal(outs[0], outs[1]), "dropout not reproducible under torch.manual_seed"
    pk.eval()
    assert not torch.equal(outs[0], pk(x, x, x, need_weights=False)[0]), (
        "training-mode output equals eval-mode output: no dropout applied")


def test_nn_multihead_attention_eval_fast_path(gen):
    # eval + no_grad + self-attention: torch takes its fused fast path; same numbers
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    pk = pykernels.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    pk.load_state_dict(ref.state_dict())
    x = make_tensor((3, 6, 16), torch.float32, gen)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        out_r, _ = ref(x, x, x, key_padding_mask=pad, need_weights=False)
        out_p, _ = pk(x, x, x, key_padding_mask=pad, need_weights=False)
    assert_close(out_p, out_r, terms=80, name="output")


def test_nn_exported():
    assert "MultiheadAttention" in pykernels.nn.__all__
    assert "attention" in ops.__all__


# ----------------------------------------------------------------------------------------------
# bad inputs: an error naming the argument


def _bad_calls(t):
    q, k, v = t(2, 2, 5, 8), t(2, 2, 6, 8), t(2, 2, 6, 4)
    V, T = ValueError, (ValueError, TypeError)
    return [
        # (description, call, exception types, regex the message must match)
        ("D of k != D of q", lambda: ops.attention(q, t(2, 2, 6, 7), v), V, r"\bk\b|key"),
        ("S of v != S of k", lambda: ops.attention(q, k, t(2, 2, 7, 4)), V, r"\bv\b|value"),
        ("B of k != B of q", lambda: ops.attention(q, t(3, 2, 6, 8), t(3, 2, 6, 4)), V,
         r"\bk\b|key"),
        ("H of v != H of q", lambda: ops.attention(q, k, t(2, 1, 6, 4)), V, r"\bv\b|value"),
        ("mask not broadcastable", lambda: ops.attention(q, k, v, attn_mask=t(5, 5)), V,
         "attn_mask"),
        ("mask of 5 dims", lambda: ops.attention(q, k, v, attn_mask=t(1, 2, 2, 5, 6)), V,
         "attn_mask"),
        ("q of rank 2", lambda: ops.attention(t(5, 8), t(6, 8), t(6, 4)), V, r"\bq\b|query"),
        ("q of rank 5", lambda: ops.attention(t(1, 2, 2, 5, 8), t(1, 2, 2, 6, 8),
                                              t(1, 2, 2, 6, 4)), V, r"\bq\b|query"),
        ("k of rank 3, q of rank 4", lambda: ops.attention(q, t(2, 6, 8), v), V, r"\bk\b|key"),
        ("k float64, q float32", lambda: ops.attention(q, k.double(), v), T, r"\bk\b|key"),
        ("v float64, q float32", lambda: ops.attention(q, k, v.double()), T, r"\bv\b|value"),
        ("int q, k, v", lambda: ops.attention(q.int(), k.int(), v.int()), T, r"\bq\b|query"),
        ("mask of int dtype",
         lambda: ops.attention(q, k, v, attn_mask=torch.zeros(5, 6, dtype=torch.int32)), T,
         "attn_mask"),
        ("float64 mask, float32 q",
         lambda: ops.attention(q, k, v, attn_mask=torch.zeros(5, 6, dtype=torch.float64)), T,
         "attn_mask"),
        ("dropout_p = 1", lambda: ops.attention(q, k, v, dropout_p=1.0), V, "dropout_p"),
        ("dropout_p = -0.1", lambda: ops.attention(q, k, v, dropout_p=-0.1), V, "dropout_p"),
        ("dropout_p = nan", lambda: ops.attention(q, k, v, dropout_p=float("nan")), V,
         "dropout_p"),
        ("scale = nan", lambda: ops.attention(q, k, v, scale=float("nan")), V, "scale"),
        ("scale = inf", lambda: ops.attention(q, k, v, scale=INF), V, "scale"),
        ("q a list", lambda: ops.attention(q.tolist(), k, v), T, r"\bq\b|query"),
    ]


def test_attention_bad_arguments(backend, gen):
    def t(*shape):
        return make_tensor(shape, torch.float32, gen, device=backend.device)

    with backend.context():
        assert_all_rejected(_bad_calls(t))


def test_attention_mixed_devices_rejected(gen):
    if not torch.cuda.is_available():
        pytest.skip("mixed-device inputs need a CUDA device")

    def t(*shape, device="cpu"):
        return make_tensor(shape, torch.float32, gen, device=device)

    q, k, v = t(1, 2, 5, 8, device="cuda"), t(1, 2, 6, 8, device="cuda"), t(1, 2, 6, 8,
                                                                            device="cuda")
    with pytest.raises(ValueError, match=r"\bk\b|key"):
        ops.attention(q, t(1, 2, 6, 8), v)
    with pytest.raises(ValueError, match=r"\bv\b|value"):
        ops.attention(q, k, t(1, 2, 6, 8))
    with pytest.raises(ValueError, match="attn_mask"):
        ops.attention(q, k, v, attn_mask=torch.zeros(5, 6))
