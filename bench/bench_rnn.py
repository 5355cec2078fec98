"""LSTM / GRU benchmarks: the pykernels.nn modules against torch.nn.LSTM / GRU / LSTMCell /
GRUCell (torch's own CPU kernels; cuDNN on CUDA) on the targets of issue 7.

    one layer, one direction, T steps, batch B, input I, hidden H, G gates (4 LSTM, 3 GRU):
    forward   FLOP = 2*T*B*(I + H)*G*H      (the input and hidden GEMMs of every step; the gate
                                             nonlinearities and the cell update, O(T*B*H), are
                                             not counted)
    fwd+bwd   FLOP = 3 * forward            (the backward is two GEMMs of the forward's size:
                                             dx, dh = dA @ W and dW = dA^T @ [x, h])
    a stack:  the sum over layers and directions; layer l > 0 reads the previous layer's output
              (I = D*H, D = 2 when bidirectional)
    GFLOP/s = FLOP / t;  % peak = GFLOP/s / FMA peak measured in the same run
              (bench.common.fma_peak_gflops with pykernels' thread count; CPU only)

Rows (each times pykernels and torch interleaved, medians; both get the same weights through
load_state_dict and the same inputs):
  lstm      nn.LSTM T100 B32 I256 H256 and T50 B64 I512 H1024 (one layer), "fwd" (no grad) and
            "fwd+bwd" (x and the parameters require grad; one forward, then torch.autograd.grad
            of x and every parameter against a fixed random dy)
  gru       nn.GRU at the same shapes
  cell      nn.LSTMCell and nn.GRUCell, one step at B32 I256 H256, the module call included
            (Python, argument checks and dispatch: the per-call overhead is part of the time)
  stack     nn.LSTM(num_layers=2, bidirectional=True) T100 B32 I256 H256
Before timing each row is checked once (pykernels' outputs, and gradients for fwd+bwd, against
torch's: bench.common.assert_close; a BenchCorrectnessError stops that row).
--quick: T20 B8 I64 H64 and T10 B16 I128 H256, cells at B8 I64 H64, the stack at T20 B8 I64 H64;
fewer repeats.
CPU: float32, pykernels' thread count for both (2 on this machine). CUDA (--device cuda): the same
shapes in float32 and bfloat16 against cuDNN.

Run: .venv/bin/python -m pykernels bench rnn [--quick] [--device cuda] [--threads N]
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple

import torch

import pykernels.nn

from .common import bench_pair, fma_peak_gflops, make_record, run_cases, setup_run

OP = "rnn"
FWD_BWD = 3.0  # fwd+bwd FLOP = 3 * forward FLOP (see the header)


class Shape(NamedTuple):
    group: str      # lstm | gru | cell | stack
    module: str     # LSTM | GRU | LSTMCell | GRUCell
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False

    @property
    def gates(self) -> int:
        return 4 if self.module.startswith("LSTM") else 3

    @property
    def cell(self) -> bool:
        return self.module.endswith("Cell")

    def flops(self) -> float:
        """Forward FLOP: 2*T*B*(I_l + H)*G*H summed over layers l and directions."""
        D = 2 if self.bidirectional else 1
        total = 0.0
        for layer in range(self.layers):
            i = self.I if layer == 0 else D * self.H
            total += D * 2.0 * self.T * self.B * (i + self.H) * self.gates * self.H
        return total

    def label(self) -> str:
        s = f"{self.module} "
        if not self.cell:
            s += f"T{self.T} "
        s += f"B{self.B} I{self.I} H{self.H}"
        if self.layers > 1:
            s += f" L{self.layers}"
        if self.bidirectional:
            s += " bi"
        return s


def _shapes(quick: bool) -> List[Shape]:
    seqs = [(20, 8, 64, 64), (10, 16, 128, 256)] if quick else [(100, 32, 256, 256),
                                                                   (50, 64, 512, 1024)]
    cell = (8, 64, 64) if quick else (32, 256, 256)
    stack = (20, 8, 64, 64) if quick else (100, 32, 256, 256)
    out = [Shape("lstm", "LSTM", *s) for s in seqs]
    out += [Shape("gru", "GRU", *s) for s in seqs]
    out += [Shape("cell", m, 1, *cell) for m in ("LSTMCell", "GRUCell")]
    out.append(Shape("stack", "LSTM", *stack, layers=2, bidirectional=True))
    return out


def run(quick: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32,
        progress: bool = True) -> List:
    """Run every RNN benchmark; returns the records (printing and saving is bench.run's job)."""
    device, on_cpu, gen, budget, threads = setup_run(device, quick)
    dtypes = [dtype] if on_cpu else [torch.float32, torch.bfloat16]
    peak = fma_peak_gflops(threads, "float64" if dtype == torch.float64 else "float32") \
        if on_cpu else None

    def randn(*shape, dt):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dt)

    def modules(shape: Shape, dt):
        kw = {}
        if not shape.cell:
            kw = dict(num_layers=shape.layers, bidirectional=shape.bidirectional)
        torch.manual_seed(0)
        ref = getattr(torch.nn, shape.module)(shape.I, shape.H, **kw).to(device=device, dtype=dt)
        pk = getattr(pykernels.nn, shape.module)(shape.I, shape.H, **kw).to(device=device,
                                                                            dtype=dt)
        pk.load_state_dict(ref.state_dict())
        return pk, ref

    def inputs(shape: Shape, dt):
        D = 2 if shape.bidirectional else 1
        if shape.cell:
            x = randn(shape.B, shape.I, dt=dt)
            n = 2 if shape.module == "LSTMCell" else 1
            hx = [randn(shape.B, shape.H, dt=dt) for _ in range(n)]
            dy = randn(shape.B, shape.H, dt=dt)
        else:
            x = randn(shape.T, shape.B, shape.I, dt=dt)
            hx = None
            dy = randn(shape.T, shape.B, D * shape.H, dt=dt)
        return x, hx, dy

    def call(module, shape: Shape, x, hx):
        """The module's output that the benchmark differentiates: h' (cells), y (sequences)."""
        if shape.cell:
            out = module(x, tuple(hx) if len(hx) == 2 else hx[0])
            return out[0] if isinstance(out, tuple) else out
        return module(x)[0]

    def fwd(module, shape, x, hx):
        def f():
            with torch.no_grad():
                return call(module, shape, x, hx)
        return f

    def step(module, shape, x, hx, dy):
        xl = x.detach().clone().requires_grad_(True)
        params = list(module.parameters())

        def f():
            out = call(module, shape, xl, hx)
            return (out.detach(),) + torch.autograd.grad(out, [xl] + params, dy)
        return f

    def case(shape: Shape) -> Callable[[], list]:
        def go() -> list:
            out = []
            for dt in dtypes:
                pk, ref = modules(shape, dt)
                x, hx, dy = inputs(shape, dt)
                big = shape.flops() > 2e10
                kw = dict(device=device, budget_s=budget, warmup=1 if big else 2,
                          min_reps=3 if (big or quick) else 5, inner=20 if shape.cell else 1)
                name = shape.label()
                for what, fp, ft, mult in (
                        ("fwd", fwd(pk, shape, x, hx), fwd(ref, shape, x, hx), 1.0),
                        ("fwd+bwd", step(pk, shape, x, hx, dy), step(ref, shape, x, hx, dy),
                         FWD_BWD)):
                    t = bench_pair(fp, ft, what=f"{name} {what}", **kw)
                    out.append(make_record(
                        OP, f"{name} {what}", dt, t, flops=mult * shape.flops(),
                        peak_gflops=peak, group=shape.group, device=device, threads=threads,
                        baseline="torch" if on_cpu else "torch (cuDNN)"))
            return out
        return go

    cases = [(s.label(), case(s)) for s in _shapes(quick)]
    return run_cases(OP, cases, progress)
