"""GEMM benchmarks: pykernels.ops.matmul / ops.linear / nn.Linear against torch on the anchor shapes.

    C[M, N] = A[M, K] @ B[K, N]         GFLOP/s = 2*M*N*K / t   (one multiply + one add per term)

Groups (each row times pykernels and torch interleaved, medians; % peak = GFLOP/s / measured FMA peak):
  square       M = N = K in 256, 512, 1024, 2048, 4096 (4096 skipped with --quick)
  mlp          the demo MLP's GEMMs (784 -> 128 -> 10, batch 64 and 1000) as pykernels.ops.matmul
               sees them: forward x @ W^T, grad input dY @ W, grad weight dY^T @ X (transposed views)
  linear-step  a whole forward + backward step of nn.Linear (batch, in, out), dX included: 3 GEMMs
  fp64         float64 at 1024^3 against the float64 FMA peak
  overhead     per-call cost of ops.linear at 8x8x8 vs torch.nn.functional.linear (microseconds)
  threads      2048^3 with 1 and 2 threads (pykernels.set_num_threads and torch.set_num_threads)
  no-fight     pykernels matmul alone vs right after torch.matmul (torch's OpenMP workers must not
               spin against ours): the "baseline" column is pykernels alone; ratio ~1 is healthy

Run: .venv/bin/python -m pykernels bench gemm [--quick]
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

import pykernels
import pykernels.nn
import pykernels.ops

from .common import run_cases, setup_run, PairTiming, Record, Stats, bench_pair, fma_peak_gflops, make_record, time_fn

OP = "gemm"

SQUARE = (256, 512, 1024, 2048, 4096)
MLP_LAYERS = ((784, 128), (128, 10))  # (in_features, out_features) of the demo MLP
MLP_BATCHES = (64, 1000)  # demo minibatch, demo held-out evaluation batch
LINEAR_STEPS = ((32, 784, 128), (256, 1024, 1024), (4096, 1024, 4096), (64, 320, 50))  # (batch, in, out)


def _flops_mm(m: int, n: int, k: int) -> float:
    return 2.0 * m * n * k  # GFLOP/s = 2*M*N*K / t


def _peak(device, dtype, threads) -> Optional[float]:
    if torch.device(device).type != "cpu":
        return None  # no probe for GPU peaks: read fractions off BASELINES.md instead
    name = "float64" if dtype == torch.float64 else "float32"
    return fma_peak_gflops(threads, name)


def _set_threads(n: int) -> None:
    pykernels.set_num_threads(n)
    torch.set_num_threads(n)


def run(quick: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32,
        progress: bool = True) -> List[Record]:
    """Run every GEMM benchmark; returns the records (printing and saving is bench.run's job)."""
    device, on_cpu, gen, budget, threads = setup_run(device, quick)

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dt)

    cases: List[Tuple[str, Callable[[], List[Record]]]] = []

    def rec(shape, timing, flops=None, group="", dt=dtype, thr=None, **kw) -> Record:
        t = threads if thr is None else thr
        return make_record(OP, shape, dt, timing, flops=flops, peak_gflops=_peak(device, dt, t) if flops else None,
                           group=group, device=device, threads=t, **kw)

    # --- square matmul ------------------------------------------------------------------------
    sizes = [n for n in SQUARE if not (quick and n > 2048)]
    if not on_cpu and not quick:
        sizes.append(8192)
    for n in sizes:
        def square(n=n):
            a, b = randn(n, n), randn(n, n)
            t = bench_pair(lambda: pykernels.ops.matmul(a, b), lambda: torch.matmul(a, b), device=device,
                           warmup=1 if n >= 2048 else 3, budget_s=budget, min_reps=3 if n >= 4096 else 5,
                           what=f"matmul {n}^3")
            return [rec(f"{n}^3", t, _flops_mm(n, n, n), "square")]
        cases.append((f"matmul {n}^3", square))

    # --- the demo MLP's GEMMs, as ops.matmul sees them ----------------------------------------
    for batch in MLP_BATCHES:
        for k, n in MLP_LAYERS:
            def mlp(batch=batch, k=k, n=n):
                x, w, dy = randn(batch, k), randn(n, k), randn(batch, n)
                out = []
                # forward   y[B, N] = x[B, K] @ W^T[K, N]        (W^T: transposed view of W [N, K])
                # grad in   dX[B, K] = dY[B, N] @ W[N, K]
                # grad w    dW[N, K] = dY^T[N, B] @ X[B, K]      (dY^T: transposed view)
                for name, a, b, (m_, n_, k_) in (
                    (f"fwd x@W^T B{batch} {k}->{n}", x, w.t(), (batch, n, k)),
                    (f"dX=dY@W B{batch} {k}->{n}", dy, w, (batch, k, n)),
                    (f"dW=dY^T@X B{batch} {k}->{n}", dy.t(), x, (n, k, batch)),
                ):
                    t = bench_pair(lambda a=a, b=b: pykernels.ops.matmul(a, b), lambda a=a, b=b: torch.matmul(a, b),
                                   device=device, budget_s=budget / 3, what=name)
                    out.append(rec(name, t, _flops_mm(m_, n_, k_), "mlp"))
                return out
            cases.append((f"mlp B{batch} {k}->{n}", mlp))

    # --- whole nn.Linear training step --------------------------------------------------------
    for batch, fin, fout in LINEAR_STEPS:
        def step(batch=batch, fin=fin, fout=fout):
            torch.manual_seed(0)
            ref = torch.nn.Linear(fin, fout, device=device, dtype=dtype)
            pk = pykernels.nn.Linear(fin, fout, device=device, dtype=dtype)
            pk.load_state_dict(ref.state_dict())
            x_pk = randn(batch, fin).requires_grad_()
            x_t = x_pk.detach().clone().requires_grad_()
            gy = randn(batch, fout)

            def make(layer, x):
                def fn():
                    layer.zero_grad(set_to_none=True)
                    x.grad = None
                    y = layer(x)
                    y.backward(gy)
                    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad
                return fn

            big = batch * fin * fout >= 1 << 30
            t = bench_pair(make(pk, x_pk), make(ref, x_t), device=device, warmup=1 if big else 3,
                           budget_s=budget, min_reps=3 if big else 5, what=f"Linear step {batch}x{fin}x{fout}")
            # forward x@W^T, grad input dY@W, grad weight dY^T@X: 3 GEMMs of 2*B*in*out each
            return [rec(f"B{batch} {fin}->{fout} fwd+bwd", t, 3 * _flops_mm(batch, fout, fin), "linear-step")]
        cases.append((f"Linear step {batch}x{fin}x{fout}", step))

    # --- float64 ------------------------------------------------------------------------------
    if dtype != torch.float64:
        def fp64():
            a, b = randn(1024, 1024, dt=torch.float64), randn(1024, 1024, dt=torch.float64)
            t = bench_pair(lambda: pykernels.ops.matmul(a, b), lambda: torch.matmul(a, b), device=device,
                           budget_s=budget, what="matmul 1024^3 float64")
            return [rec("1024^3", t, _flops_mm(1024, 1024, 1024), "fp64", dt=torch.float64)]
        cases.append(("matmul 1024^3 float64", fp64))

    # --- per-call overhead --------------------------------------------------------------------
    def overhead():
        out = []
        for grad in (False, True):
            x, w, b = randn(8, 8), randn(8, 8).requires_grad_(grad), randn(8).requires_grad_(grad)
            t = bench_pair(lambda: pykernels.ops.linear(x, w, b), lambda: F.linear(x, w, b), device=device,
                           inner=50, warmup=5, budget_s=budget / 2, what="linear 8x8x8")
            label = "linear 8x8x8" + (" (params require grad)" if grad else "")
            out.append(rec(label, t, None, "overhead", note=f"+{(t.pk.median - t.torch.median) * 1e3:.1f} us/call"))
        return out
    cases.append(("overhead linear 8x8x8", overhead))

    # --- thread scaling and OpenMP coexistence (CPU only) -------------------------------------
    if on_cpu:
        def scaling():
            out, n = [], 2048
            a, b = randn(n, n), randn(n, n)
            try:
                for thr in (1, 2):
                    _set_threads(thr)
                    t = bench_pair(lambda: pykernels.ops.matmul(a, b), lambda: torch.matmul(a, b), device=device,
                                   warmup=1, budget_s=budget, check=False)
                    out.append(rec(f"{n}^3", t, _flops_mm(n, n, n), "threads", thr=thr,
                                   note=f"{thr} thread" + ("s" if thr > 1 else "")))
            finally:
                _set_threads(threads)
            if len(out) == 2:
                out[1].note += f", x{out[0].pk_ms / out[1].pk_ms:.2f} pk / x{out[0].torch_ms / out[1].torch_ms:.2f} torch vs 1"
            return out
        cases.append(("threads 1 vs 2 @2048", scaling))

        def no_fight():
            n = 512
            a, b = randn(n, n), randn(n, n)

            def pk():
                return pykernels.ops.matmul(a, b)

            for _ in range(5):  # warm both pools
                torch.matmul(a, b)
                pk()
            alone, mixed = [], []
            for _ in range(20 if quick else 60):  # interleaved, so machine drift hits both columns alike
                pk()
                alone.append(time_fn(pk, warmup=0, reps=1).median)  # right after a pykernels call
                torch.matmul(a, b)
                mixed.append(time_fn(pk, warmup=0, reps=1).median)  # right after torch's OpenMP region
            t = PairTiming(pk=Stats.of(mixed), torch=Stats.of(alone))
            return [rec(f"{n}^3 after torch.matmul", t, _flops_mm(n, n, n), "no-fight", baseline="pk alone",
                        note="ratio ~1 = no contention")]
        cases.append(("no-fight torch/pk OpenMP", no_fight))

    return run_cases(OP, cases, progress)
