"""attention benchmarks: pykernels.ops.attention against torch.nn.functional.scaled_dot_product_attention
(torch's fused CPU flash-attention kernel; FlashAttention / cuDNN / efficient kernels on CUDA) on
the anchor shapes of issue 6.

    out[B, H, N, Dv] = softmax(scale * q[B, H, N, D] @ k[B, H, S, D]^T) @ v[B, H, S, Dv]
    forward   FLOP = 2*B*H*N*S*D (q @ k^T) + 2*B*H*N*S*Dv (P @ v) = 4*B*H*N*S*D here (Dv = D, S = N)
              causal: only the pairs j <= i count: 4*B*H*D * N*(N + 1)/2 (about half);
              the softmax's exp/max/sum (O(B*H*N*S)) is not counted
    fwd+bwd   FLOP = 3.5 * forward: the backward is five matmuls of the forward's size (recompute
              q @ k^T, dv = P^T @ dout, dP = dout @ v^T, dq = dS @ k, dk = dS^T @ q) = 2.5 * forward
    GFLOP/s = FLOP / t;  % peak = GFLOP/s / FMA peak measured in the same run
              (bench.common.fma_peak_gflops, pykernels' thread count; CPU only)

Groups (each row times pykernels and torch interleaved, medians; both sides get the same tensors):
  anchor    B8 H8 N512 D64, B4 H8 N2048 D64, B1 H16 N4096 D128 (self-attention, no mask), each
            "fwd" (no grad: nothing saved) and "fwd+bwd" (q, k, v require grad; one forward, then
            torch.autograd.grad of all three against a fixed random dout)
  causal    B4 H8 N2048 D64 with is_causal=True against torch's causal SDPA, fwd and fwd+bwd;
            and pykernels causal against pykernels without a mask (baseline column "pk no mask"):
            base/pk there is t(no mask) / t(causal), ~2 when the kernel skips the masked tiles
  memory    B1 H16 N4096 D128 fwd+bwd, each library in a fresh process: the peak resident set
            (VmHWM, i.e. getrusage's ru_maxrss without the parent's peak that Linux carries
            into a child) after one fwd+bwd of the shape, minus the RSS just before it, with
            q, k, v, dout already allocated. Before measuring, a tiny fwd+bwd
            pages in the code and starts the threads, and the peak is reset to the current RSS
            (/proc/self/clear_refs) so the import's transient peak does not hide a smaller one
            (without that reset the numbers are lower bounds, and the note says so). Reported in
            the row's note (and so in the JSON) as "peak extra RSS", and that minus the outputs
            fwd+bwd must allocate anyway (out, dq, dk, dv, lse); the times of that row are
            one further fwd+bwd in the same process. (tracemalloc does not see torch's
            allocations; RSS does.)
Before timing, each shape is checked once: pykernels' output (and its three gradients) against
torch's, bench.common.assert_close (a BenchCorrectnessError stops the shape).
--quick: B2 H4 N256 D64, B1 H4 N512 D64, causal at N=512, memory at B1 H4 N1024 D64; fewer repeats.
CPU: float32 (the dtype asked for), pykernels' thread count for both (2 on this machine). On
CUDA (--device cuda) float32 becomes bfloat16 and the baseline is torch's SDPA dispatch.

Run: .venv/bin/python -m pykernels bench attention [--quick] [--device cuda] [--threads N]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable, List, NamedTuple

import torch
import torch.nn.functional as F

import pykernels.ops as ops

from .common import Record, bench_pair, fma_peak_gflops, make_record, run_cases, setup_run

OP = "attention"


class Shape(NamedTuple):
    group: str
    B: int
    H: int
    N: int
    D: int
    causal: bool = False

    def pairs(self) -> int:
        """(i, j) score pairs computed: N*S, or N*(N + 1)/2 when causal (S = N)."""
        return self.N * (self.N + 1) // 2 if self.causal else self.N * self.N

    def flops(self) -> float:
        # 2*N*S*D for q @ k^T plus 2*N*S*Dv for P @ v (Dv = D), per (b, h)
        return 4.0 * self.B * self.H * self.pairs() * self.D

    def label(self) -> str:
        return f"B{self.B} H{self.H} N{self.N} D{self.D}" + (" causal" if self.causal else "")


ANCHORS = [Shape("anchor", 8, 8, 512, 64), Shape("anchor", 4, 8, 2048, 64),
           Shape("anchor", 1, 16, 4096, 128)]
CAUSAL = Shape("causal", 4, 8, 2048, 64, causal=True)
MEMORY = Shape("memory", 1, 16, 4096, 128)
QUICK_ANCHORS = [Shape("anchor", 2, 4, 256, 64), Shape("anchor", 1, 4, 512, 64)]
QUICK_CAUSAL = Shape("causal", 1, 4, 512, 64, causal=True)
QUICK_MEMORY = Shape("memory", 1, 4, 1024, 64)
FWD_BWD = 3.5  # fwd+bwd FLOP = 3.5 * forward FLOP (see the header)


def _torch_sdpa(q, k, v, is_causal=False):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def _pk_attention(q, k, v, is_causal=False):
    return ops.attention(q, k, v, is_causal=is_causal)


# ---- memory: one fwd+bwd in a fresh process ---------------------------------------------------
def _peak_rss_mib() -> float:
    """This process's peak RSS in MiB: VmHWM of /proc/self/status (reset by clear_refs), else
    resource.getrusage's ru_maxrss. (ru_maxrss alone will not do in a child: Linux carries the
    parent's peak over fork and exec into it, and clear_refs does not reset that part.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Resets the peak RSS to the current RSS (Linux >= 4.0: /proc/self/clear_refs "5"), so that
    the import's transient peak does not hide a smaller one later. False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_child(which: str, B: int, H: int, N: int, D: int, threads: int) -> dict:
    """Runs in its own process: peak RSS before and after one fwd+bwd, and a timed second one."""
    import pykernels

    pykernels.set_num_threads(threads)
    torch.set_num_threads(threads)
    fn = _pk_attention if which == "pykernels" else _torch_sdpa
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(B, H, N, D, generator=gen) for _ in range(4))
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    # a tiny fwd+bwd first: pages in the code and starts the threads, which are no part of the
    # problem's memory
    small = [t[:, :1, :16].detach().clone().requires_grad_(True) for t in (q, k, v)]
    torch.autograd.grad(fn(*small), small, dout[:, :1, :16])
    reset = _reset_peak_rss()
    before = _peak_rss_mib()  # = the current RSS after a reset
    t0 = time.perf_counter()
    out = fn(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    first_ms = (time.perf_counter() - t0) * 1e3
    after = _peak_rss_mib()
    del out, grads
    t0 = time.perf_counter()
    out = fn(q, k, v)
    torch.autograd.grad(out, (q, k, v), dout)
    again_ms = (time.perf_counter() - t0) * 1e3
    return dict(before_mib=before, after_mib=after, extra_mib=after - before, first_ms=first_ms,
                ms=again_ms, peak_reset=reset)


def measure_memory(which: str, shape: Shape, threads: int) -> dict:
    """_memory_child in a fresh Python process (this one's peak RSS already holds other runs)."""
    module = f"{__package__}.bench_attention"
    code = (f"import json, {module} as m; "
            f"print('RESULT', json.dumps(m._memory_child({which!r}, {shape.B}, {shape.H}, "
            f"{shape.N}, {shape.D}, {threads})))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=root, timeout=1800)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"memory measurement of {which} failed (exit {res.returncode}): "
                           f"{res.stderr.strip().splitlines()[-1:] or res.stdout[-200:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---- the benchmark ----------------------------------------------------------------------------
def run(quick: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32,
        progress: bool = True) -> List[Record]:
    """Run every attention benchmark; returns the records (printing and saving is bench.run's job)."""
    device, on_cpu, gen, budget, threads = setup_run(device, quick)
    if not on_cpu and dtype == torch.float32:
        dtype = torch.bfloat16
    peak = fma_peak_gflops(threads, "float64" if dtype == torch.float64 else "float32") \
        if on_cpu else None

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)

    def kw_for(shape: Shape):
        big = shape.flops() > 5e10
        return dict(device=device, budget_s=budget, warmup=1 if big else 2,
                    min_reps=3 if (big or quick) else 5)

    def rec(shape: Shape, what: str, timing, flops, **extra) -> Record:
        return make_record(OP, f"{shape.label()} {what}", dtype, timing, flops=flops,
                           peak_gflops=peak, group=shape.group, device=device, threads=threads,
                           **extra)

    def tensors(shape: Shape):
        B, H, N, D = shape.B, shape.H, shape.N, shape.D
        return randn(B, H, N, D), randn(B, H, N, D), randn(B, H, N, D), randn(B, H, N, D)

    def fwd(fn, q, k, v, causal):
        def f():
            with torch.no_grad():
                return fn(q, k, v, is_causal=causal)
        return f

    def step(fn, q, k, v, dout, causal):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]

        def f():
            out = fn(*leaves, is_causal=causal)
            return (out.detach(),) + torch.autograd.grad(out, leaves, dout)
        return f

    def vs_torch(shape: Shape) -> Callable[[], List[Record]]:
        def go() -> List[Record]:
            q, k, v, dout = tensors(shape)
            c, kw = shape.causal, kw_for(shape)
            t = bench_pair(fwd(_pk_attention, q, k, v, c), fwd(_torch_sdpa, q, k, v, c),
                           what=f"{shape.label()} fwd", **kw)
            out = [rec(shape, "fwd", t, shape.flops())]
            t = bench_pair(step(_pk_attention, q, k, v, dout, c),
                           step(_torch_sdpa, q, k, v, dout, c),
                           what=f"{shape.label()} fwd+bwd", **kw)
            out.append(rec(shape, "fwd+bwd", t, FWD_BWD * shape.flops()))
            return out
        return go

    def causal_vs_full(shape: Shape) -> Callable[[], List[Record]]:
        # the same pykernels kernel with and without is_causal: base/pk = t(full) / t(causal)
        full = shape._replace(causal=False)

        def go() -> List[Record]:
            q, k, v, dout = tensors(shape)
            kw = kw_for(full)
            out = []
            for what, make, mult in (("fwd", lambda c: fwd(_pk_attention, q, k, v, c), 1.0),
                                     ("fwd+bwd", lambda c: step(_pk_attention, q, k, v, dout, c),
                                      FWD_BWD)):
                t = bench_pair(make(True), make(False), check=False, **kw)
                pk_ms, base_ms = t.pk.median, t.torch.median
                gf = mult * shape.flops() / (pk_ms * 1e-3) / 1e9
                out.append(Record(
                    op=OP, shape=f"{shape.label()} {what} vs no mask", dtype=str(dtype).replace("torch.", ""),
                    pk_ms=pk_ms, torch_ms=base_ms, ratio=base_ms / pk_ms, gflops=gf,
                    torch_gflops=mult * full.flops() / (base_ms * 1e-3) / 1e9,
                    frac_peak=gf / peak if peak else None, pk_q25=t.pk.q25, pk_q75=t.pk.q75,
                    torch_q25=t.torch.q25, torch_q75=t.torch.q75, group="causal", device=device,
                    threads=threads, baseline="pk no mask",
                    note="t(no mask)/t(causal); ~2 if masked tiles are skipped"))
            return out
        return go

    def memory(shape: Shape) -> Callable[[], List[Record]]:
        def go() -> List[Record]:
            if not on_cpu:
                return []  # peak RSS says nothing about GPU memory
            pk = measure_memory("pykernels", shape, threads)
            tt = measure_memory("torch", shape, threads)
            ratio = tt["extra_mib"] / pk["extra_mib"] if pk["extra_mib"] > 0 else float("inf")
            inputs_mib = 4 * shape.B * shape.H * shape.N * shape.D * 4 / 2**20
            # what fwd+bwd must allocate anyway: out, dq, dk, dv (q's size each) and lse
            needed_mib = (4 * shape.B * shape.H * shape.N * shape.D + shape.B * shape.H * shape.N) * 4 / 2**20
            note = (f"peak extra RSS: pykernels {pk['extra_mib']:.0f} MiB, torch "
                    f"{tt['extra_mib']:.0f} MiB (torch/pk {ratio:.2f}); of which out, dq, dk, dv, lse "
                    f"{needed_mib:.0f} MiB, so beyond them pykernels "
                    f"{pk['extra_mib'] - needed_mib:.0f} MiB, torch {tt['extra_mib'] - needed_mib:.0f} MiB; "
                    f"inputs q,k,v,dout {inputs_mib:.0f} MiB")
            if not (pk["peak_reset"] and tt["peak_reset"]):
                note += " (lower bounds: the peak RSS could not be reset)"
            return [Record(
                op=OP, shape=f"{shape.label()} fwd+bwd peak RSS", dtype="float32",
                pk_ms=pk["ms"], torch_ms=tt["ms"], ratio=tt["ms"] / pk["ms"],
                gflops=FWD_BWD * shape.flops() / (pk["ms"] * 1e-3) / 1e9,
                torch_gflops=FWD_BWD * shape.flops() / (tt["ms"] * 1e-3) / 1e9,
                frac_peak=None, group="memory", device=device, threads=threads, note=note)]
        return go

    anchors = QUICK_ANCHORS if quick else ANCHORS
    causal = QUICK_CAUSAL if quick else CAUSAL
    mem = QUICK_MEMORY if quick else MEMORY
    cases = [(s.label(), vs_torch(s)) for s in anchors]
    cases += [(causal.label(), vs_torch(causal)),
              (f"{causal.label()} vs no mask", causal_vs_full(causal)),
              (f"{mem.label()} memory", memory(mem))]
    return run_cases(OP, cases, progress)
