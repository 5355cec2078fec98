"""Shared test helpers: one checking helper for every op, one tolerance table, input makers.

    check_op(fn, reference, inputs, ...)   forward + every gradient of a pykernels op vs its
                                           float64 NumPy reference (pykernels.reference.*)
    assert_close(got, expected, ...)       one tensor/array vs one expected tensor/array
    make_tensor(shape, dtype, gen, ...)    random inputs, never all zeros, optionally non-contiguous
    poison(t)                              fill an output buffer with NaN before a kernel writes it
    RecordPykernelsCalls(*names)           a dispatch mode recording the pykernels custom-op calls
    opcheck_recorded(calls, aot_per_op)    torch.library.opcheck on each recorded call
    assert_twin_parity(model, twin, inputs) a model on pykernels layers vs its torch.nn twin with the
                                           same weights: outputs, every gradient and every buffer
    PassThrough()                          a dispatch mode that only forwards: under it the registered
                                           ops run instead of the eager fast paths

Tolerances come from TOLERANCES, one row per dtype. An element passes when

    |got - ref| <= atol + (rtol + rtol_acc * sqrt(terms)) * max(|ref|, rms(ref))

  * rtol covers rounding that does not grow with the problem size (the final rounding of the
    output, the activation epilogue).
  * rtol_acc * sqrt(terms) covers a sum of `terms` rounded products (K for a GEMM output, M for a
    weight gradient, C_in*KH*KW for a convolution). The worst-case error of such a sum grows
    like terms * eps, but the realistic (probabilistic, Higham & Mary 2019) bound grows like
    sqrt(terms) * eps, and blocked or pairwise kernels do better still; the reference is
    computed in float64 on exactly the same (already rounded) input values, so input rounding
    is not part of the error.
  * The scale is the element's own size, but never less than the RMS of the whole tensor: an
    element whose terms cancel to ~0 still carries the rounding error of its un-cancelled
    terms, which are of the size of a typical element.
When `expected` is itself a low-precision result (e.g. torch's float32 output), both sides
carry rounding error and the bound is doubled.

A test that needs a looser bound passes tol=dict(...) together with reason="why"; an override
without a reason is an error.
"""

import math
import threading
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "Tol",
    "TOLERANCES",
    "Reference",
    "check_op",
    "assert_close",
    "make_tensor",
    "poison",
    "to_numpy",
    "RecordPykernelsCalls",
    "PassThrough",
    "opcheck_recorded",
    "assert_all_rejected",
    "TWIN_TOLERANCES",
    "assert_twin_parity",
]


@dataclass(frozen=True)
class Tol:
    rtol: float      # relative, size-independent part
    rtol_acc: float  # relative, multiplied by sqrt(terms summed per element)
    atol: float      # absolute floor (matters only for tensors that are ~0 everywhere)


# The ONE tolerance table. Unit roundoff: fp64 1.1e-16, fp32 6.0e-8, fp16 4.9e-4, bf16 3.9e-3.
TOLERANCES = {
    torch.float64: Tol(rtol=1e-10, rtol_acc=1e-12, atol=1e-12),
    # ~30 ulp per element, plus ~30 ulp * sqrt(K): K=781 -> 5.8e-5 relative.
    torch.float32: Tol(rtol=2e-6, rtol_acc=2e-6, atol=1e-6),
    # half types accumulate in fp32 in every kernel; what grows is the rounding of the output and of
    # intermediates stored in half precision (a few ulp each), hardly with K.
    torch.float16: Tol(rtol=2e-3, rtol_acc=1e-4, atol=1e-3),
    torch.bfloat16: Tol(rtol=1.6e-2, rtol_acc=8e-4, atol=1e-2),
}

_NUMPY_TO_TORCH = {
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float16): torch.float16,
}


def _torch_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    return _NUMPY_TO_TORCH[np.dtype(dtype)]


def tolerance_for(dtype, tol=None, reason=None):
    """The row of TOLERANCES for `dtype`, with the fields in `tol` (a dict) overriding it."""
    base = TOLERANCES[_torch_dtype(dtype)]
    if tol is None:
        return base
    if not reason or not str(reason).strip():
        raise TypeError("a tolerance override needs reason='why this test needs a looser bound'")
    if isinstance(tol, Tol):
        return tol
    return replace(base, **tol)


def to_numpy(t):
    """A float64 (or, for non-float data, unchanged-dtype) NumPy copy of a tensor or array."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.is_floating_point():
            return t.to(torch.float64).numpy()
        return t.numpy().copy()
    a = np.asarray(t)
    return a.astype(np.float64) if a.dtype.kind == "f" else a.copy()


def _dtype_of(x):
    if isinstance(x, torch.Tensor):
        return x.dtype
    return np.asarray(x).dtype


def _is_low_precision(x):
    d = _dtype_of(x)
    if isinstance(d, torch.dtype):
        return d.is_floating_point and d != torch.float64
    return d.kind == "f" and d != np.float64


def _describe_mismatch(name, got, ref, bound, bad, tol, terms, dtype, max_show=8):
    err = np.abs(got - ref)
    finite = np.isfinite(err)
    rel = err / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
    lines = [
        f"{name}: {int(bad.sum())} of {bad.size} elements out of tolerance "
        f"(dtype {dtype}, terms={terms}, {tol})",
        f"  max abs err  {err[finite].max() if finite.any() else float('nan'):.3e}"
        f"   mean abs err {err[finite].mean() if finite.any() else float('nan'):.3e}"
        f"   max rel err  {rel[finite].max() if finite.any() else float('nan'):.3e}"
        f"   non-finite in got: {int((~np.isfinite(got)).sum())}",
        "  first mismatches (index: got vs expected, |err| > bound):",
    ]
    for idx in list(zip(*np.nonzero(bad)))[:max_show]:
        idx = tuple(int(i) for i in idx)
        lines.append(
            f"    {idx}: {got[idx]!r} vs {ref[idx]!r}, |err| {err[idx]:.3e} > {bound[idx]:.3e}"
        )
    return "\n".join(lines)


def assert_close(got, expected, *, dtype=None, terms=1, name="output", tol=None, reason=None,
                 match_nonfinite=False):
    """Assert `got` matches `expected` elementwise within the tolerance for `dtype`.

    got, expected: tensors or arrays of the same shape (compared in float64 on the CPU).
    dtype: the precision `got` was computed in (default: got's dtype).
    terms: number of products summed into each element (see the module header); int.
    tol/reason: per-call override of TOLERANCES fields, e.g. tol=dict(rtol=1e-3), reason="...".
    Non-float data (indices) must match exactly. NaN in `got` never passes.
    match_nonfinite: True for ops that must propagate NaN/inf (pooling, softmax): where
        `expected` is NaN, +inf or -inf, `got` must be exactly that too; the finite elements are
        compared as usual (their RMS sets the scale). Off by default.
    """
    dtype = _dtype_of(got) if dtype is None else dtype
    g, e = to_numpy(got), to_numpy(expected)
    assert g.shape == e.shape, f"{name}: shape {g.shape}, expected {e.shape}"
    if g.dtype.kind != "f" or e.dtype.kind != "f":
        mism = g != e
        assert not mism.any(), f"{name}: {int(mism.sum())} of {g.size} elements differ; first at " + (
            ", ".join(f"{tuple(int(i) for i in idx)}: {g[idx]} vs {e[idx]}"
                      for idx in list(zip(*np.nonzero(mism)))[:8]))
        return
    if g.size == 0:
        return
    if match_nonfinite:
        special = ~np.isfinite(e)
        same = (np.isnan(g) & np.isnan(e)) | (g == e)
        wrong = special & ~same
        assert not wrong.any(), f"{name}: {int(wrong.sum())} non-finite expected values not matched; first at " + (
            ", ".join(f"{tuple(int(i) for i in idx)}: {g[idx]!r} vs {e[idx]!r}"
                      for idx in list(zip(*np.nonzero(wrong)))[:8]))
        if special.all():
            return
        g, e = np.where(special, 0.0, g), np.where(special, 0.0, e)
    t = tolerance_for(dtype, tol, reason)
    scale = np.maximum(np.abs(e), math.sqrt(float(np.mean(e * e))))
    bound = t.atol + (t.rtol + t.rtol_acc * math.sqrt(max(terms, 1))) * scale
    if _is_low_precision(expected):
        bound = 2.0 * bound  # both sides carry their own rounding error
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(g - e) <= bound)  # NaN compares False, so it is "bad"
    if bad.any():
        raise AssertionError(_describe_mismatch(name, g, e, bound, bad, t, terms, dtype))


@dataclass(frozen=True)
class Reference:
    """A float64 NumPy oracle for one op.

    forward(*arrays, **kwargs) -> array or tuple of arrays
    backward(douts, *arrays, **kwargs) -> tuple with one gradient (or None) per input, in the
        order of the inputs; douts is one array, or a tuple when forward returns a tuple.
    e.g. Reference(reference.linear_forward, reference.linear_backward)
    """
    forward: object
    backward: object


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _terms_for(terms, key):
    if not isinstance(terms, dict):
        return terms
    if key in terms:
        return terms[key]
    return terms.get("out", 1) if key.startswith("out") else 1


def check_op(fn, reference, inputs, *, kwargs=None, gen=None, grad=True, terms=1,
             tol=None, reason=None, expected_dtype=None, torch_fn=None, match_nonfinite=False):
    """Check a pykernels callable against its float64 reference: shape, dtype, forward, gradients.

    fn: the pykernels callable, called as fn(*inputs.values(), **kwargs) (inside whatever
        backend context the caller has entered).
    reference: a Reference (float64 NumPy forward + backward).
    inputs: dict name -> tensor or None (order = positional order). Floating tensors get
        gradients; pass grad=False to check the forward only, or a set of names to restrict.
    terms: products summed per element: an int for all, or a dict keyed by "out" / output index
        ("out0", "out1", ...) and by input name for that input's gradient.
    tol/reason: per-call override of the TOLERANCES row (reason required).
    expected_dtype: dtype of the outputs (default: dtype of the first floating input).
    torch_fn: optional PyTorch implementation with the same signature; its outputs and gradients
        (same inputs, same upstream gradients) are compared too, with the doubled bound.
    match_nonfinite: passed to every assert_close (NaN/inf in the reference must be reproduced).
    Returns the outputs of fn, for further checks.
    """
    kwargs = dict(kwargs or {})
    names = list(inputs)
    if gen is None:
        gen = torch.Generator().manual_seed(0)
    # float64 copies taken before the call, so an op that wrote into its inputs would be caught
    arrays = [None if v is None else (to_numpy(v) if isinstance(v, torch.Tensor) else v)
              for v in inputs.values()]

    floats = [n for n, v in inputs.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if expected_dtype is None:
        expected_dtype = inputs[floats[0]].dtype if floats else None
    if grad is True:
        want_grad = floats
    elif grad:
        want_grad = [n for n in floats if n in set(grad)]
    else:
        want_grad = []

    leaves = {}
    args = []
    for n, v in inputs.items():
        if n in want_grad:
            v = v.detach().requires_grad_(True)  # detach keeps the strides of a non-contiguous view
            leaves[n] = v
        args.append(v)

    outs = _as_tuple(fn(*args, **kwargs))
    refs = _as_tuple(reference.forward(*arrays, **kwargs))
    assert len(outs) == len(refs), f"{len(outs)} outputs, reference gives {len(refs)}"
    devices = {v.device for v in inputs.values() if isinstance(v, torch.Tensor)}
    multi = len(outs) > 1
    for i, (o, r) in enumerate(zip(outs, refs)):
        key = f"out{i}" if multi else "out"
        assert isinstance(o, torch.Tensor), f"{key}: expected a tensor, got {type(o).__name__}"
        assert tuple(o.shape) == tuple(np.shape(r)), f"{key}: shape {tuple(o.shape)}, expected {np.shape(r)}"
        if o.is_floating_point() and expected_dtype is not None:
            assert o.dtype == expected_dtype, f"{key}: dtype {o.dtype}, expected {expected_dtype}"
        assert o.device in devices or not devices, f"{key}: device {o.device}, inputs on {devices}"
        assert_close(o, r, dtype=o.dtype, terms=_terms_for(terms, key), name=key, tol=tol,
                     reason=reason, match_nonfinite=match_nonfinite)

    touts = None
    if torch_fn is not None:
        tleaves = {n: v.detach().requires_grad_(True) for n, v in leaves.items()}
        targs = [tleaves.get(n, v) for n, v in inputs.items()]
        touts = _as_tuple(torch_fn(*targs, **kwargs))
        for i, (o, t) in enumerate(zip(outs, touts)):
            key = f"out{i}" if multi else "out"
            assert_close(o, t, dtype=o.dtype, terms=_terms_for(terms, key), name=f"{key} vs torch",
                         tol=tol, reason=reason, match_nonfinite=match_nonfinite)

    if not want_grad:
        return outs

    diff = [(o, r) for o, r in zip(outs, refs) if o.is_floating_point()]
    douts = [make_tensor(o.shape, o.dtype, gen, device=o.device) for o, _ in diff]
    grads = torch.autograd.grad([o for o, _ in diff], [leaves[n] for n in want_grad], douts,
                                allow_unused=True)
    dref = [to_numpy(d) for d in douts]
    ref_grads = reference.backward(tuple(dref) if multi else dref[0], *arrays, **kwargs)
    ref_grads = dict(zip(names, _as_tuple(ref_grads)))
    for n, g in zip(want_grad, grads):
        r = ref_grads.get(n)
        leaf = leaves[n]
        if r is None:
            assert g is None or not g.any(), f"grad of {n}: reference has none, got nonzero"
            continue
        assert g is not None, f"grad of {n}: got None, reference has one"
        assert tuple(g.shape) == tuple(leaf.shape), f"grad of {n}: shape {tuple(g.shape)}, expected {tuple(leaf.shape)}"
        assert g.dtype == leaf.dtype, f"grad of {n}: dtype {g.dtype}, expected {leaf.dtype}"
        assert_close(g, r, dtype=g.dtype, terms=_terms_for(terms, n), name=f"grad of {n}",
                     tol=tol, reason=reason, match_nonfinite=match_nonfinite)

    if touts is not None:
        tdiff = [t for t in touts if t.is_floating_point()]
        tgrads = torch.autograd.grad(tdiff, [tleaves[n] for n in want_grad], douts, allow_unused=True)
        for n, g, t in zip(want_grad, grads, tgrads):
            if g is not None and t is not None:
                assert_close(g, t, dtype=g.dtype, terms=_terms_for(terms, n),
                             name=f"grad of {n} vs torch", tol=tol, reason=reason,
                             match_nonfinite=match_nonfinite)
    return outs


_LAYOUTS = ("contiguous", "strided", "transposed")


def make_tensor(shape, dtype, gen, *, device="cpu", layout="contiguous", scale=1.0,
                dyadic=False, requires_grad=False):
    """Random normal values * scale, of `shape`, never all zeros (zeros hide most kernel bugs).

    scale: e.g. 1/sqrt(K) for a GEMM weight, so that pre-activations are O(1) and tanh/sigmoid
        are not saturated (a saturated activation's derivative, computed from its output, is
        pure rounding noise and tests nothing).
    layout: "contiguous"; "strided" (a view taking every other element of the last dim, stride 2);
        "transposed" (the last two dims swapped in memory, like w.t(): stride(-2) == 1).
    dyadic: values k/8 with integer k in [-16, 16] (k != 0): sums of their products are exact in
        float32 (|sum| < 2^24 / 64), so every backend decides relu's kink the same way.
    Generated on the CPU with `gen` (reproducible), then moved to `device`.
    """
    assert layout in _LAYOUTS, f"layout must be one of {_LAYOUTS}"
    shape = tuple(int(s) for s in shape)
    if layout == "transposed" and len(shape) < 2:
        layout = "strided"
    if not shape:
        layout = "contiguous"
    alloc = list(shape)
    if layout == "strided":
        alloc[-1] = 2 * alloc[-1]
    elif layout == "transposed":
        alloc[-1], alloc[-2] = alloc[-2], alloc[-1]

    n = math.prod(alloc)
    if dyadic:
        k = torch.randint(1, 17, (n,), generator=gen) * (torch.randint(0, 2, (n,), generator=gen) * 2 - 1)
        flat = k.to(torch.float64) / 8.0 * 2.0 ** round(math.log2(scale))  # stays exact
    else:
        flat = torch.randn(n, generator=gen, dtype=torch.float64) * scale
        if n and not flat.any():
            flat[0] = 1.0
    base = flat.reshape(alloc).to(dtype=dtype, device=device)
    if layout == "strided":
        t = base[..., ::2]
    elif layout == "transposed":
        t = base.transpose(-1, -2)
    else:
        t = base
    assert tuple(t.shape) == shape
    if layout != "contiguous" and t.numel() > 1 and min(shape) > 1:
        assert not t.is_contiguous()
    return t.requires_grad_(requires_grad)


def poison(t):
    """Fill a float tensor or array with NaN in place (before a kernel writes it); returns it."""
    if isinstance(t, torch.Tensor):
        with torch.no_grad():
            return t.fill_(float("nan"))
    t.fill(np.nan)
    return t


# ---- the registered custom ops: opcheck on the calls the public ops really make ------------------
class RecordPykernelsCalls(TorchDispatchMode):
    """Runs every call and records (func, args, kwargs) of the pykernels custom ops whose name
    contains one of `names` (every pykernels op when none is given): the arguments the public
    ops really pass, below the autograd layer, forward and backward."""

    def __init__(self, *names):
        super().__init__()
        self.names = names
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "pykernels" and (not self.names or any(n in func._name for n in self.names)):
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


class PassThrough(TorchDispatchMode):
    """Forwards every call: under any dispatch mode (as under torch.compile) the public ops take
    the registered custom op and its register_autograd formula instead of their eager fast path."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _opcheck_copy(a, grad):
    if isinstance(a, torch.Tensor):
        c = a.detach().clone(memory_format=torch.preserve_format)
        return c.requires_grad_(grad and a.requires_grad and a.is_floating_point())
    if isinstance(a, (list, tuple)):
        return type(a)(_opcheck_copy(v, grad) for v in a)
    return a


_OPCHECK_CHEAP = ("test_schema", "test_autograd_registration", "test_faketensor")


def opcheck_recorded(calls, aot_per_op=None):
    """torch.library.opcheck on every recorded (func, args, kwargs), on fresh copies of the
    arguments (a backward op has no autograd formula: its inputs do not require grad). The
    AOT-compiled check (~0.5 s each) runs on the first `aot_per_op` samples of each op (None:
    all). Fails once, listing every failing op and sample."""
    failures = []
    seen = {}
    for func, args, kwargs in calls:
        grad = "backward" not in func._name
        a, kw = _opcheck_copy(args, grad), _opcheck_copy(kwargs, grad)
        seen[func._name] = seen.get(func._name, 0) + 1
        utils = _OPCHECK_CHEAP
        if aot_per_op is None or seen[func._name] <= aot_per_op:
            utils += ("test_aot_dispatch_dynamic",)
        try:
            torch.library.opcheck(func, a, kw, test_utils=utils)
        except Exception as e:  # noqa: BLE001 - report every failing op/sample
            shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else x for x in args]
            failures.append(f"{func._name}{shapes}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}")
    assert not failures, "\n".join(failures)


def assert_all_rejected(cases):
    """Every (description, call, exception type, message pattern) raises as expected; fails once,
    listing every call that did not."""
    import pytest

    failures = []
    for desc, call, exc, pattern in cases:
        try:
            with pytest.raises(exc, match=pattern):
                call()
        except BaseException as e:  # noqa: BLE001 - report every failing case
            failures.append(f"{desc}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    assert not failures, f"{len(failures)} bad inputs not rejected as expected:\n" + "\n".join(failures)


# ---- whole models: pykernels layers vs torch.nn layers with the same weights ---------------------
# Relative to each element's size (never less than the tensor's RMS). A model is a chain of many
# ops whose rounding errors compound (and batch norm divides by small variances), so the bound is
# per model, not per sum like TOLERANCES: float64 shows a wrong structure at ~1e-1 and a right one
# at ~1e-13; float32 at ~1e-5.
TWIN_TOLERANCES = {torch.float64: 1e-9, torch.float32: 2e-3}


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if hasattr(x, "data") and isinstance(getattr(x, "data"), torch.Tensor):  # PackedSequence
        return [x.data]
    return []


def _twin_run(model, inputs, train, seed, cotangent_gen_seed):
    model.train(train)
    model.zero_grad(set_to_none=True)
    ins = [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
           for t in inputs]
    torch.manual_seed(seed)  # torch.nn.Dropout and friends draw the same masks in both runs
    out = model(*ins)
    outs = [o for o in _tensors(out) if o.is_floating_point()]
    gen = torch.Generator().manual_seed(cotangent_gen_seed)
    douts = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    diff = [(o, d) for o, d in zip(outs, douts) if o.requires_grad]
    if diff:
        torch.autograd.backward([o for o, _ in diff], [d for _, d in diff])
    grads = {f"grad of input {i}": t.grad for i, t in enumerate(ins)
             if isinstance(t, torch.Tensor) and t.requires_grad}
    grads.update({f"grad of {n}": p.grad for n, p in model.named_parameters() if p.requires_grad})
    bufs = {f"buffer {n}": b for n, b in model.named_buffers()}
    return [o.detach() for o in outs], grads, bufs


def assert_twin_parity(model, twin, inputs, *, train=True, seed=0, tol=None, reason=None):
    """Loads `model`'s state_dict into `twin` (strict: same keys and shapes), runs both in train or
    eval mode on copies of `inputs` (tensors that require grad get their gradient compared),
    back-propagates the same random cotangent of every floating output, and compares outputs,
    the gradient of every parameter (by name) and every buffer (batch-norm running statistics)
    afterwards. Both forwards start from torch.manual_seed(seed), so torch.nn.Dropout draws the
    same masks; pykernels' fused attention dropout draws differently, so models compared in train
    mode use dropout 0 there. `tol` (relative, with `reason`) overrides TWIN_TOLERANCES."""
    twin.load_state_dict(model.state_dict())
    dtype = next(model.parameters()).dtype
    bound = TWIN_TOLERANCES[dtype] if tol is None else tol
    if tol is not None and not (reason and str(reason).strip()):
        raise TypeError("a tolerance override needs reason='why this model needs a looser bound'")
    got_out, got_grads, got_bufs = _twin_run(model, inputs, train, seed, seed + 1)
    ref_out, ref_grads, ref_bufs = _twin_run(twin, inputs, train, seed, seed + 1)
    assert len(got_out) == len(ref_out), f"{len(got_out)} outputs vs the twin's {len(ref_out)}"
    assert got_grads.keys() == ref_grads.keys(), "different parameters require grad"
    pairs = [(f"output {i}", g, r) for i, (g, r) in enumerate(zip(got_out, ref_out))]
    pairs += [(k, got_grads[k], ref_grads[k]) for k in ref_grads]
    pairs += [(k, got_bufs[k], ref_bufs[k]) for k in ref_bufs]
    failures = []
    for name, g, r in pairs:
        if r is None or g is None:
            if (r is None) != (g is None):
                failures.append(f"{name}: None on one side only")
            continue
        if g.shape != r.shape or g.dtype != r.dtype:
            failures.append(f"{name}: {tuple(g.shape)} {g.dtype} vs the twin's {tuple(r.shape)} {r.dtype}")
            continue
        if not r.is_floating_point():
            if not torch.equal(g, r):
                failures.append(f"{name}: differs")
            continue
        g64, r64 = g.double(), r.double()
        if not torch.isfinite(g64).all():
            failures.append(f"{name}: non-finite values")
            continue
        rms = r64.pow(2).mean().sqrt().item() if r64.numel() else 0.0
        scale = torch.maximum(r64.abs(), torch.tensor(rms, dtype=torch.float64))
        err = ((g64 - r64).abs() / scale.clamp_min(1e-300)).max().item() if r64.numel() else 0.0
        if err > bound:
            failures.append(f"{name}: max relative error {err:.3g} > {bound:.3g} (twin rms {rms:.3g})")
    assert not failures, f"{type(model).__name__} vs its torch.nn twin ({dtype}, train={train}):\n" + \
        "\n".join(failures)


def in_threads(jobs):
    """Runs each job (a callable without arguments) in its own thread, all released at once by a
    barrier; returns their results in order and re-raises the first exception."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def work(i, job):
        try:
            barrier.wait()
            results[i] = job()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
