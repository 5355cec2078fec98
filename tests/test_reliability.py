"""Reliability of the ops: concurrent calls, bitwise reproducibility, no_grad / inference mode,
64-bit index arithmetic and torch.autocast.

  * Concurrency: 4 Python threads calling the ops at once on different inputs get bitwise the
    results of the same calls made one after another (the C++ kernels keep their scratch
    buffers per OS thread; nothing is shared between calls), on both thread backends: torch's
    OpenMP team (the default) and the private pool (PYKERNELS_THREADS=pool, in a subprocess).
    The calls really overlap: every C++ binding the ops call releases the GIL while its kernel
    runs (shown binding by binding).
  * Reproducibility: the same call twice gives torch.equal results, forward and backward, at 1,
    2 and 3 threads (how a kernel splits its work depends on the thread count only, never on
    which thread claims a piece); attention dropout too, for the same torch.manual_seed.
  * torch.no_grad / torch.inference_mode: every op runs its forward only and saves nothing for
    backward (no tensor reaches a saved-tensors hook, the output has no grad_fn), through the
    eager path and through the registered op (what torch.compile runs: no backward op, and the
    forward op is told not to keep its extras: gelu pre-activation, max-pool indices, the RNN
    workspace). The C++ RNN and max-pool kernels get no workspace / index buffer at all.
  * 64-bit index arithmetic (marked slow and run only when selected with -m slow: ~10 GB of
    memory for 25-90 s each; skipped with the reason when that memory is not free): max/avg
    pooling of an 8.6 GB float32 tensor (2**31 + 282688 elements, as one [46344, 46344] plane
    and as [1931, 1931, 24, 24]) and a linear whose output has 2**31 + 97985 elements; every
    output element of the plane and of the linear is checked exactly.
  * torch.autocast (pykernels/ops/_autocast.py): on the CPU every op computes in float32
    (bfloat16 / float16 arguments are widened; the output is float32) and gradients flow back
    to the arguments' dtypes; float64 is left alone; outside a region bfloat16 still raises.
    On CUDA the GEMM-like ops run in the region's dtype and pooling in the input's (GPU only).

Run: TRITON_INTERPRET=1 .venv/bin/python -m pytest -q tests/test_reliability.py -p no:logging
     the 64-bit tests: ... -m slow
"""

import contextlib
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

import pykernels
import pykernels.ops as ops
from helpers import RecordPykernelsCalls, TOLERANCES, assert_close, in_threads, make_tensor

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]


# ---- one call of each op, forward and backward ------------------------------------------------
@dataclass(frozen=True)
class Case:
    """make(gen) -> dict name -> tensor (the floating ones get gradients); fn(t) runs the op on
    that dict and returns a tensor or a (nested) tuple of tensors."""
    name: str
    make: Callable
    fn: Callable


def _r(gen, *shape, scale=1.0):
    return make_tensor(shape, torch.float32, gen, scale=scale)


def _lstm_inputs(gen, T=7, B=5, I=24, H=32, G=4):
    s = H ** -0.5
    return dict(x=_r(gen, T, B, I), h0=_r(gen, B, H), c0=_r(gen, B, H), w_ih=_r(gen, G * H, I, scale=s),
                w_hh=_r(gen, G * H, H, scale=s), b_ih=_r(gen, G * H, scale=s), b_hh=_r(gen, G * H, scale=s))


def _attention_inputs(gen, B, H, N, S, D, Dv):
    return dict(q=_r(gen, B, H, N, D), k=_r(gen, B, H, S, D), v=_r(gen, B, H, S, Dv))


CASES = [
    # M*N*K = 192*176*160 > 4M: the packed GEMM path, with its per-thread panels
    Case("linear", lambda g: dict(x=_r(g, 192, 160), w=_r(g, 176, 160, scale=160 ** -0.5), b=_r(g, 176)),
         lambda t: ops.linear(t["x"], t["w"], t["b"], activation="gelu")),
    # b broadcast over a's batch: db is one GEMM with the batch folded into K
    Case("matmul", lambda g: dict(a=_r(g, 2, 160, 128), b=_r(g, 128, 112)),
         lambda t: ops.matmul(t["a"], t["b"])),
    Case("conv2d", lambda g: dict(x=_r(g, 2, 8, 19, 21), w=_r(g, 12, 8, 3, 3, scale=72 ** -0.5), b=_r(g, 12)),
         lambda t: ops.conv2d(t["x"], t["w"], t["b"], padding=1, activation="relu")),
    Case("conv2d_channels_last",
         lambda g: dict(x=_r(g, 2, 8, 17, 15).contiguous(memory_format=torch.channels_last),
                        w=_r(g, 10, 4, 3, 3, scale=36 ** -0.5)),
         lambda t: ops.conv2d(t["x"], t["w"], stride=2, padding=1, groups=2)),
    Case("max_pool2d", lambda g: dict(x=_r(g, 2, 8, 23, 29)),
         lambda t: ops.max_pool2d(t["x"], 3, stride=2, padding=1)),
    Case("avg_pool2d", lambda g: dict(x=_r(g, 2, 8, 23, 29)),
         lambda t: ops.avg_pool2d(t["x"], 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    # B*H = 8: one backward task per head
    Case("attention", lambda g: _attention_inputs(g, 2, 4, 37, 41, 16, 24),
         lambda t: ops.attention(t["q"], t["k"], t["v"], is_causal=True)),
    # B*H = 3: with 2 threads the backward splits each head's keys over the threads and sums
    # the dQ partials (in a fixed order)
    Case("attention_few_heads",
         lambda g: dict(_attention_inputs(g, 1, 3, 29, 67, 16, 16),
                        mask=torch.rand((29, 67), generator=g) < 0.8),
         lambda t: ops.attention(t["q"], t["k"], t["v"], attn_mask=t["mask"])),
    Case("lstm", _lstm_inputs,
         lambda t: ops.lstm(t["x"], (t["h0"], t["c0"]), t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])),
    Case("gru", lambda g: {k: v for k, v in _lstm_inputs(g, G=3).items() if k != "c0"},
         lambda t: ops.gru(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])),
    Case("lstm_cell", lambda g: {k: (v[0] if k == "x" else v) for k, v in _lstm_inputs(g).items()},
         lambda t: ops.lstm_cell(t["x"], (t["h0"], t["c0"]), t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])),
]
CASE_IDS = [c.name for c in CASES]
_BY_NAME = {c.name: c for c in CASES}


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _to(inputs, device):
    return {n: t.to(device) for n, t in inputs.items()}


def _run(case, inputs, grad=True):
    """[(name, tensor)]: the op's outputs, then each input's gradient for fixed cotangents."""
    leaves = {n: t.detach().clone().requires_grad_(grad and t.is_floating_point()) for n, t in inputs.items()}
    outs = [o for o in _flat(case.fn(leaves)) if o.is_floating_point()]
    result = [(f"output {i}", o.detach()) for i, o in enumerate(outs)]
    if grad:
        cot = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i)).to(o)
               for i, o in enumerate(outs)]
        wrt = {n: t for n, t in leaves.items() if t.requires_grad}
        grads = torch.autograd.grad(outs, list(wrt.values()), cot, allow_unused=True)
        result += [(f"grad of {n}", g) for n, g in zip(wrt, grads)]
    return result


def _assert_same(got, want, what):
    assert [n for n, _ in got] == [n for n, _ in want], f"{what}: different outputs"
    for (name, g), (_, w) in zip(got, want):
        if g is None or w is None:
            assert g is None and w is None, f"{what}: {name} is None on one side only"
            continue
        if not torch.equal(g, w):
            d = (g.double() - w.double()).abs()
            raise AssertionError(f"{what}: {name} {tuple(g.shape)} differs in {int((d != 0).sum())} "
                                 f"elements, max |diff| {d.max().item():.3e}")


@contextlib.contextmanager
def _threads(n):
    old = pykernels.get_num_threads()
    pykernels.set_num_threads(n)
    try:
        yield
    finally:
        pykernels.set_num_threads(old)


# ---- concurrency ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_concurrent_calls_match_serial(case, seed):
    inputs = [case.make(torch.Generator().manual_seed(seed + i)) for i in range(4)]
    serial = [_run(case, inp) for inp in inputs]
    got = in_threads([lambda inp=inp: [_run(case, inp) for _ in range(3)] for inp in inputs])
    for i, runs in enumerate(got):
        for r, result in enumerate(runs):
            _assert_same(result, serial[i], f"{case.name}, thread {i}, call {r}")


def check_mixed_concurrency(seed, n_threads=4):
    """n_threads threads, each running every case in its own (rotated) order while the others
    run different ops, against serial results; importable by the subprocess test below."""
    inputs = [c.make(torch.Generator().manual_seed(seed + i)) for i, c in enumerate(CASES)]
    serial = [_run(c, inp) for c, inp in zip(CASES, inputs)]
    n = len(CASES)

    def job(shift):
        return [(j, _run(CASES[j], inputs[j])) for j in ((shift + k) % n for k in range(n))]

    for t, runs in enumerate(in_threads([lambda s=s: job(s * n // n_threads) for s in range(n_threads)])):
        for j, result in runs:
            _assert_same(result, serial[j], f"{CASES[j].name} in thread {t} (mixed ops)")


def test_concurrent_mixed_ops_match_serial(seed):
    check_mixed_concurrency(seed)


def test_concurrent_mixed_ops_private_pool(seed):
    """The same on the private thread pool (PYKERNELS_THREADS=pool, chosen at import, hence a
    subprocess): a thread that finds the pool busy runs its tasks itself."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys; sys.path.insert(0, {here!r}); import pykernels, test_reliability as t; "
            f"assert pykernels.thread_backend() == 'pool', pykernels.thread_backend(); "
            f"t.check_mixed_concurrency({seed}); print('ok')")
    env = dict(os.environ, PYKERNELS_THREADS="pool")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]


_KERNEL_BINDINGS = ("gemm_forward", "gemm_backward", "conv2d_forward", "conv2d_backward_input",
                    "conv2d_backward_weight", "conv2d_backward_bias", "max_pool2d_forward",
                    "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward", "attention_forward",
                    "attention_backward", "rnn_forward", "rnn_backward")


# the ops of CASES on inputs large enough that each kernel runs for a millisecond or more
_GIL_CASES = [
    Case("linear", lambda g: dict(x=_r(g, 512, 512), w=_r(g, 512, 512, scale=512 ** -0.5), b=_r(g, 512)),
         lambda t: ops.linear(t["x"], t["w"], t["b"], activation="gelu")),
    Case("conv2d",
         lambda g: dict(x=_r(g, 4, 32, 48, 48), w=_r(g, 32, 32, 3, 3, scale=288 ** -0.5), b=_r(g, 32)),
         lambda t: ops.conv2d(t["x"], t["w"], t["b"], padding=1, activation="relu")),
    Case("max_pool2d", lambda g: dict(x=_r(g, 4, 32, 256, 256)), lambda t: ops.max_pool2d(t["x"], 3, 2, 1)),
    Case("avg_pool2d", lambda g: dict(x=_r(g, 4, 32, 256, 256)), lambda t: ops.avg_pool2d(t["x"], 3, 2, 1)),
    Case("attention", lambda g: _attention_inputs(g, 2, 4, 384, 384, 64, 64),
         lambda t: ops.attention(t["q"], t["k"], t["v"])),
    Case("lstm", lambda g: _lstm_inputs(g, T=16, B=32, I=256, H=256),
         lambda t: ops.lstm(t["x"], (t["h0"], t["c0"]), t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])),
]


def test_cpp_bindings_release_the_gil(monkeypatch):
    """Each C++ kernel binding the ops call is replaced by a probe that wakes a second Python
    thread and then calls the binding. With a switch interval of 100 s no thread is made to hand
    the GIL over, so the second thread runs during the kernel only if the binding released the
    GIL; otherwise it runs after the call, when the caller blocks. A kernel that ends before the
    woken thread is scheduled (a loaded machine) is tried again: each op is rerun until every
    binding it calls has shown it, up to 30 times."""
    released, tries = {}, {}

    def probe(name, real):
        def call(*args):
            if released.get(name):
                return real(*args)
            tries[name] = tries.get(name, 0) + 1
            state, seen, go = ["before"], [], threading.Event()
            t = threading.Thread(target=lambda: (go.wait(), seen.append(state[0])))
            t.start()
            old = sys.getswitchinterval()
            sys.setswitchinterval(100.0)
            try:
                go.set()
                state[0] = "inside"
                out = real(*args)
                state[0] = "after"
            finally:
                sys.setswitchinterval(old)
            t.join()
            released[name] = seen == ["inside"]
            return out
        return call

    for name in _KERNEL_BINDINGS:
        monkeypatch.setattr(pykernels._C, name, probe(name, getattr(pykernels._C, name)))
    gen = torch.Generator().manual_seed(0)
    with _threads(1):  # leaves the other core to the woken thread
        for c in _GIL_CASES:
            inputs = c.make(gen)
            for _ in range(30):
                _run(c, inputs)
                if all(released.values()):
                    break
    assert set(released) == set(_KERNEL_BINDINGS), f"not called: {set(_KERNEL_BINDINGS) - set(released)}"
    held = sorted(n for n, ok in released.items() if not ok)
    assert not held, f"these bindings kept the GIL while their kernel ran (in {tries}): {held}"


# ---- bitwise reproducibility ------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_same_call_twice_is_bitwise_equal(case, device, gen):
    inputs = _to(case.make(gen), device)
    for n in (1, 2, 3) if device == "cpu" else (None,):
        with _threads(n) if n else contextlib.nullcontext():
            first = _run(case, inputs)
            _assert_same(_run(case, inputs), first, f"{case.name} on {device}, {n} threads")


@pytest.mark.parametrize("device", DEVICES)
def test_attention_dropout_is_reproducible_for_a_seed(device, gen):
    case = Case("attention_dropout", lambda g: _attention_inputs(g, 2, 3, 33, 47, 16, 16),
                lambda t: ops.attention(t["q"], t["k"], t["v"], dropout_p=0.3))
    inputs = _to(case.make(gen), device)

    def seeded(seed):
        torch.manual_seed(seed)
        return _run(case, inputs)

    for n in (1, 2, 3) if device == "cpu" else (None,):
        with _threads(n) if n else contextlib.nullcontext():
            first = seeded(1234)
            _assert_same(seeded(1234), first, f"attention dropout on {device}, {n} threads")
    other = seeded(4321)
    assert not torch.equal(other[0][1], first[0][1]), "another seed must draw another dropout mask"


# ---- torch.no_grad / torch.inference_mode -----------------------------------------------------
# the forward op's last argument says whether to keep an extra for the backward
_KEEPS_EXTRA = {"pykernels::linear": "the gelu pre-activation",
                "pykernels::conv2d": "the gelu pre-activation", "pykernels::max_pool2d": "the indices",
                "pykernels::lstm": "the workspace", "pykernels::gru": "the workspace"}
_GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
_SAVES_NOTHING = {"avg_pool2d"}  # its backward needs the input's shape only


def _forward_saving(case, inputs, mode):
    """(outputs, shapes of the tensors saved for backward) of the forward run under `mode`."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        with mode():
            outs = _flat(case.fn(inputs))
    return outs, saved


@pytest.mark.parametrize("mode", list(_GRAD_MODES))
@pytest.mark.parametrize("case", CASES + [
    Case("linear_gelu_3d", lambda g: dict(x=_r(g, 2, 5, 24), w=_r(g, 16, 24), b=_r(g, 16)),
         lambda t: ops.linear(t["x"], t["w"], t["b"], activation="gelu")),
    Case("conv2d_gelu", lambda g: dict(x=_r(g, 2, 3, 9, 9), w=_r(g, 4, 3, 3, 3)),
         lambda t: ops.conv2d(t["x"], t["w"], activation="gelu")),
    Case("gru_cell",
         lambda g: {k: (v[0] if k == "x" else v) for k, v in _lstm_inputs(g, G=3).items() if k != "c0"},
         lambda t: ops.gru_cell(t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])),
], ids=lambda c: c.name)
def test_no_grad_runs_the_forward_only(case, mode, gen):
    inputs = {n: t.requires_grad_(t.is_floating_point()) for n, t in case.make(gen).items()}
    # with grad mode on, the same call saves tensors (the hook sees them) and builds a graph
    outs, saved = _forward_saving(case, inputs, contextlib.nullcontext)
    assert all(o.grad_fn is not None for o in outs)
    assert bool(saved) != (case.name in _SAVES_NOTHING), f"{case.name} with grad on saved {saved}"
    outs, saved = _forward_saving(case, inputs, _GRAD_MODES[mode])
    assert not saved, f"{case.name} under {mode} saved tensors of shapes {saved}"
    for o in outs:
        assert o.grad_fn is None and not o.requires_grad, f"{case.name} under {mode}: output has a grad_fn"
    # the registered ops (what torch.compile runs): forward ops only, told to keep no extras
    with _GRAD_MODES[mode](), RecordPykernelsCalls() as rec:
        outs_op = _flat(case.fn(inputs))
    names = [f._name for f, _, _ in rec.calls]
    assert names and not any("backward" in n for n in names), names
    for f, args, _ in rec.calls:
        if f._name in _KEEPS_EXTRA:
            assert args[-1] is False, f"{f._name} under {mode} computes {_KEEPS_EXTRA[f._name]}"
    for o, p in zip(outs, outs_op):
        assert torch.equal(o, p) and p.grad_fn is None


def _pointer_spy(monkeypatch, name, position):
    """Replaces pykernels._C.<name> with a pass-through recording the argument at `position`."""
    real, seen = getattr(pykernels._C, name), []

    def spy(*args):
        seen.append(args[position])
        return real(*args)
    monkeypatch.setattr(pykernels._C, name, spy)
    return seen


def _arg_position(binding, arg):
    """Index of a named argument in a pybind11 binding's signature (its docstring's first line)."""
    sig = getattr(pykernels._C, binding).__doc__.split("\n")[0]
    names = [p.split(":")[0].strip() for p in sig[sig.index("(") + 1:sig.rindex(")")].split(",")]
    return names.index(arg)


@pytest.mark.parametrize("mode", list(_GRAD_MODES))
def test_inference_computes_no_workspace_and_no_indices(mode, monkeypatch, gen):
    """Without grad the C++ RNN forward gets no workspace (its last argument, the pointer, is 0)
    and the max-pool forward no index buffer; with grad both get one."""
    ws = _pointer_spy(monkeypatch, "rnn_forward", -1)
    idx = _pointer_spy(monkeypatch, "max_pool2d_forward", _arg_position("max_pool2d_forward", "idx"))
    run = [_BY_NAME[n] for n in ("lstm", "gru", "lstm_cell", "max_pool2d")]
    inputs = [{n: t.requires_grad_() for n, t in c.make(gen).items()} for c in run]
    for c, inp in zip(run, inputs):
        with _GRAD_MODES[mode]():
            c.fn(inp)
    assert ws == [0, 0, 0] and idx == [0], f"under {mode}: workspace pointers {ws}, index pointers {idx}"
    for c, inp in zip(run, inputs):
        c.fn(inp)
    assert all(ws[3:]) and len(ws) == 6 and all(idx[1:]) and len(idx) == 2, (ws, idx)


# ---- 64-bit index arithmetic ------------------------------------------------------------------
def _memory_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _opt_in(request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("a 64-bit index test: ~10 GB of memory for a minute or more; select it with -m slow")


def _need_memory(nbytes, what):
    avail = _memory_available()
    if avail < nbytes:
        pytest.skip(f"{what} needs {nbytes / 2 ** 30:.1f} GiB of free memory, MemAvailable is "
                    f"{avail / 2 ** 30:.1f} GiB")


@pytest.mark.slow
def test_pooling_beyond_2_31_elements(request):
    """max_pool2d (with indices) and avg_pool2d, 4x4 windows with stride 4, of one float32 tensor
    of 2**31 + 282688 elements (8.6 GB), seen two ways:
      * one [46344, 46344] plane: flat positions and indices past 2**31. x[h, w] = r[h] + c[w]
        with small integers r, c (distinct within a window), so every window's maximum, index
        and mean is known exactly: the whole output is checked, the last rows against torch too;
      * [1931, 1931, 24, 24]: 490 planes start past 2**31 (the small-plane kernels, OW = 6 < one
        vector): the planes of the last image against torch."""
    side, q = 46344, 46344 // 4
    n = side * side
    assert n > 2 ** 31
    _opt_in(request)
    _need_memory(n * 4 + q * q * 12 + 2 ** 30, "pooling a tensor of 2**31 + 282688 float32 elements")
    ar = torch.arange(side)
    r, c = (ar * 7919 % 1021).float() * 1024, (ar * 104729 % 1019).float()
    x = torch.empty(1, 1, side, side)
    torch.add(r[:, None], c[None, :], out=x[0, 0])
    rmax, rarg = r.view(q, 4).max(1)
    cmax, carg = c.view(q, 4).max(1)
    cols = 4 * torch.arange(q) + carg                                   # [q]
    # the expected values of 1024 output rows at a time, in buffers whose pages fault in once
    want, want_idx = torch.empty(1024, q), torch.empty(1024, q, dtype=torch.int64)
    out, idx = ops.max_pool2d(x, 4, return_indices=True)
    for i in range(0, q, 1024):
        j, m = slice(i, min(i + 1024, q)), min(1024, q - i)
        rows = (4 * torch.arange(j.start, j.stop) + rarg[j]) * side   # int64
        assert torch.equal(out[0, 0, j], torch.add(rmax[j, None], cmax, out=want[:m])), f"max, rows {j}"
        assert torch.equal(idx[0, 0, j], torch.add(rows[:, None], cols, out=want_idx[:m])), f"idx, rows {j}"
    t_out, t_idx = F.max_pool2d(x[..., -8:, :], 4, return_indices=True)
    assert torch.equal(out[..., -2:, :], t_out) and torch.equal(idx[..., -2:, :], t_idx + (side - 8) * side)
    del out, idx
    avg = ops.avg_pool2d(x, 4)
    rsum, csum = r.view(q, 4).sum(1) / 4, c.view(q, 4).sum(1) / 4      # exact: quarters below 2**21
    for i in range(0, q, 1024):
        j, m = slice(i, min(i + 1024, q)), min(1024, q - i)
        assert torch.equal(avg[0, 0, j], torch.add(rsum[j, None], csum, out=want[:m])), f"avg, rows {j}"
    assert torch.equal(avg[..., -2:, :], F.avg_pool2d(x[..., -8:, :], 4))
    del avg
    x4 = x.view(1931, 1931, 24, 24)           # planes 1930 * 1931 + 1441 .. start past 2**31
    out4 = ops.max_pool2d(x4, 4)
    assert torch.equal(out4[-1], F.max_pool2d(x4[-1], 4)) and torch.equal(out4[0], F.max_pool2d(x4[0], 4))
    del out4
    avg4 = ops.avg_pool2d(x4, 4)
    assert torch.equal(avg4[-1], F.avg_pool2d(x4[-1], 4)) and torch.equal(avg4[0], F.avg_pool2d(x4[0], 4))


@pytest.mark.slow
def test_linear_output_beyond_2_31_elements(request):
    """x [65537, 16] @ w[32769, 16]^T: an output of 2**31 + 97985 float32 elements (8.6 GB).
    Inputs are multiples of 1/8 in [-2, 2] (make_tensor's dyadic values): every sum is exact,
    so each block of output rows must equal torch's product bitwise."""
    M, N, K = 65537, 32769, 16
    assert M * N > 2 ** 31
    _opt_in(request)
    _need_memory(M * N * 4 + 4096 * N * 4 + 2 ** 30, "a linear with 2**31 + 97985 float32 outputs")
    gen = torch.Generator().manual_seed(0)
    x = make_tensor((M, K), torch.float32, gen, dyadic=True)
    w = make_tensor((N, K), torch.float32, gen, dyadic=True)
    out = ops.linear(x, w)
    want = torch.empty(4096, N)  # one buffer for torch's blocks: its pages are faulted in once
    for i in range(0, M, 4096):
        j = slice(i, min(i + 4096, M))
        block = torch.mm(x[j], w.t(), out=want[:j.stop - i])
        assert torch.equal(out[j], block), f"output rows {j}"


# ---- torch.autocast ---------------------------------------------------------------------------
# the first input of each case arrives in bfloat16, as if from a torch layer that autocast ran in
# bfloat16; the others stay float32 (parameters)
@pytest.mark.parametrize("region", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_autocast_cpu_computes_in_float32(case, region, gen):
    inputs = case.make(gen)
    first = next(iter(inputs))
    low = dict(inputs, **{first: inputs[first].to(torch.bfloat16)})
    want = _run(case, dict(inputs, **{first: low[first].float()}))   # the same values, in float32
    with torch.autocast("cpu", dtype=region):
        got = _run(case, low)
    for (name, g), (_, w) in zip(got, want):
        if name == f"grad of {first}":  # flows back through the cast to the argument's dtype
            assert g.dtype == torch.bfloat16 and torch.equal(g, w.to(torch.bfloat16)), name
        else:
            assert g.dtype == torch.float32 and torch.equal(g, w), name


def test_autocast_cpu_leaves_float64_and_rejects_bfloat16_outside(gen):
    x, w = _r(gen, 6, 8).double(), _r(gen, 5, 8).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.linear(x, w).dtype == torch.float64
        assert ops.max_pool2d(_r(gen, 1, 2, 6, 6).double(), 2).dtype == torch.float64
    with pytest.raises(TypeError, match="bfloat16"):
        ops.linear(x.to(torch.bfloat16), w.float())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        with pytest.raises(TypeError, match="bfloat16"):
            ops.max_pool2d(_r(gen, 1, 2, 6, 6).to(torch.bfloat16), 2)


def test_autocast_cpu_layers_compose_with_torch_layers(gen):
    """A torch.nn.Linear autocast to bfloat16 feeding pykernels layers (fp32 weights) and back:
    runs, and gradients reach every parameter in its own dtype."""
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), pykernels.nn.Linear(16, 16), torch.nn.ReLU(),
                                pykernels.nn.Linear(16, 8), torch.nn.Linear(8, 4))
    x = _r(gen, 3, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model[0](x)
        assert h.dtype == torch.bfloat16
        out = model(x)
    assert out.dtype == torch.bfloat16  # torch's last Linear ran in bfloat16
    out.float().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


def test_autocast_cpu_under_compile(gen):
    """torch.compile(fullgraph=True) traces the casts with the rest of the public function."""
    x, w = _r(gen, 6, 8).to(torch.bfloat16), _r(gen, 5, 8)
    fn = torch.compile(lambda x, w: ops.linear(x, w, activation="relu"), fullgraph=True, backend="aot_eager")
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(x, w)
    assert got.dtype == torch.float32 and torch.equal(got, ops.linear(x.float(), w, activation="relu"))


_GPU_ONLY = pytest.mark.skipif(
    not HAS_CUDA, reason="autocast on CUDA runs the Triton kernels in the region's dtype: needs a GPU")


@_GPU_ONLY
@pytest.mark.parametrize("region", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [c for c in CASES if "pool" not in c.name], ids=lambda c: c.name)
def test_autocast_cuda_runs_in_the_region_dtype(case, region, gen):
    inputs = _to(case.make(gen), "cuda")
    with torch.autocast("cuda", dtype=region):
        got = _run(case, inputs)
    # the reference: the same op on the inputs rounded to the region's dtype, computed in float32
    want = _run(case, {n: (t.to(region).float() if t.is_floating_point() else t) for n, t in inputs.items()})
    for (name, g), (_, w) in zip(got, want):
        assert g.dtype == (region if name.startswith("output") else torch.float32), (name, g.dtype)
        assert_close(g, w, dtype=region, terms=256, name=name, tol=dict(rtol=2 * TOLERANCES[region].rtol),
                     reason="both sides compute in float32 from the same rounded inputs; the region's "
                            "outputs and intermediates are stored in half precision")


@_GPU_ONLY
@pytest.mark.parametrize("region", [torch.float16, torch.bfloat16])
def test_autocast_cuda_pooling_keeps_the_input_dtype(region, gen):
    for dtype in (torch.float32, region):
        x = _r(gen, 2, 3, 9, 9).to("cuda", dtype)
        with torch.autocast("cuda", dtype=region):
            assert ops.max_pool2d(x, 2).dtype == dtype and ops.avg_pool2d(x, 2).dtype == dtype


# ---- the C++ layer checks what it is given, even when called directly through pykernels._C -----
def _c_calls():
    """(name, call, what the message must name): each call has one value no tensor could have."""
    from pykernels import _C
    buf = torch.zeros(64)
    p = buf.data_ptr()
    conv = dict(N=1, C=2, H=4, W=4, K=2, R=3, S=3, OH=2, OW=2, groups=1, sH=1, sW=1, pH=0, pW=0, dH=1, dW=1)

    def conv_fwd(**over):
        g = {**conv, **over}
        return lambda: _C.conv2d_forward(False, *g.values(), p, 32, 16, 4, 1, p, 18, 9, 3, 1, 0, 0, 0,
                                         p, 8, 4, 2, 1, 0, 0, 0, 0, 0)

    return [
        ("conv2d N < 0", conv_fwd(N=-1), "N must be >= 0"),
        ("conv2d stride 0", conv_fwd(sH=0), "sH must be >= 1"),
        ("conv2d groups 3 of 2 channels", conv_fwd(groups=3), "groups must divide"),
        ("conv2d null weight", lambda: _C.conv2d_forward(False, *conv.values(), p, 32, 16, 4, 1, 0, 18, 9, 3, 1,
                                                         0, 0, 0, p, 8, 4, 2, 1, 0, 0, 0, 0, 0), "w is 0"),
        ("conv2d act 9", lambda: _C.conv2d_forward(False, *conv.values(), p, 32, 16, 4, 1, p, 18, 9, 3, 1, 0, 0,
                                                   9, p, 8, 4, 2, 1, 0, 0, 0, 0, 0), "act must be"),
        ("max pool kernel 0", lambda: _C.max_pool2d_forward(False, 1, 1, 4, 4, p, 16, 16, 4, 1, 2, 2, p, 4, 4, 2,
                                                            1, 0, 0, 0, 0, 0, 0, 2, 2, 2, 0, 0, 1, 1), "kH must be"),
        ("max pool padding > half", lambda: _C.max_pool2d_forward(False, 1, 1, 4, 4, p, 16, 16, 4, 1, 2, 2, p, 4,
                                                                  4, 2, 1, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 1, 1),
         "padding must be at most half"),
        ("avg pool null output", lambda: _C.avg_pool2d_forward(False, 1, 1, 4, 4, p, 16, 16, 4, 1, 2, 2, 0, 4, 4,
                                                               2, 1, 2, 2, 2, 2, 0, 0, True, 0), "the output is 0"),
        ("gemm M < 0", lambda: _C.gemm_forward(False, 1, -2, 2, 2, p, 0, 2, 1, p, 0, 2, 1, p, 0, 2, 1, 0, 0, 0, 0,
                                               0, 0, 0, 0, False), "M must be >= 0"),
        ("gemm bias_dim 5", lambda: _C.gemm_forward(False, 1, 2, 2, 2, p, 0, 2, 1, p, 0, 2, 1, p, 0, 2, 1, 0, 0, 5,
                                                    0, 0, 0, 0, 0, False), "bias_dim"),
        ("attention dropout 1", lambda: _C.attention_forward(False, 1, 1, 2, 2, 2, 2, p, 8, 8, 2, 1, p, 8, 8, 2, 1,
                                                             p, 8, 8, 2, 1, 0, 0, 0, 0, 0, 0, False, 1.0, 1.0, 0,
                                                             p, 8, 8, 2, 1, p, 4, 2, 1), "dropout_p"),
        ("attention mask kind 7", lambda: _C.attention_forward(False, 1, 1, 2, 2, 2, 2, p, 8, 8, 2, 1, p, 8, 8, 2,
                                                               1, p, 8, 8, 2, 1, p, 7, 0, 0, 2, 1, False, 1.0, 0.0,
                                                               0, p, 8, 8, 2, 1, p, 4, 2, 1), "mask kind"),
        ("rnn kind 5", lambda: _C.rnn_forward(False, 5, 2, 1, 2, 2, False, p, 2, 2, 1, 0, 0, 0, 0, 0, 0, p, 2, 1,
                                              p, 2, 1, 0, 0, 0, 0, 0, p, 2, 2, 1, p, 2, 1, 0, 0, 0, 0),
         "kind must be"),
        ("rnn null w_hh", lambda: _C.rnn_forward(False, 1, 2, 1, 2, 2, False, p, 2, 2, 1, 0, 0, 0, 0, 0, 0, p, 2,
                                                 1, 0, 2, 1, 0, 0, 0, 0, 0, p, 2, 2, 1, p, 2, 1, 0, 0, 0, 0),
         "w_hh is 0"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_c_layer_rejects_impossible_arguments(case):
    name, call, needle = _c_calls()[case]
    with pytest.raises(ValueError, match=needle):
        call()
