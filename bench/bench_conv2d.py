"""conv2d benchmarks: pykernels.ops.conv2d against torch.nn.functional.conv2d (oneDNN on the CPU,
cuDNN on CUDA) on the layers of issue 4's targets.

    out[N, K, OH, OW] = conv2d(x[N, C, H, W], weight[K, C/g, R, S]) + bias[K]
    forward   FLOP = 2 * N * K * OH * OW * (C/g) * R * S     (one multiply + one add per tap)
    fwd+bwd   FLOP = 3 * forward: grad input and grad weight are each one more convolution of
              the same size (the bias and its gradient, O(N*K*OH*OW), are not counted)
    GFLOP/s = FLOP / t;  % peak = GFLOP/s / FMA peak measured in the same run
              (bench.common.fma_peak_gflops, pykernels' thread count; CPU only)

Groups (each row times pykernels and torch interleaved, medians; both sides get the same tensors):
  lenet     the seed MNIST CNN's two convolutions at batch 64: C1 28x28 -> K10 5x5 and
            C10 12x12 -> K20 5x5 (target: fwd+bwd >= 1.5x torch)
  resnet18  ResNet-18's convolutions at batch 32: the 7x7 stride-2 stem (C3 224x224 -> 64), the
            3x3 layers C64 56x56, C128 28x28, C256 14x14, C512 7x7, and the 1x1 stride-2
            downsamples 64->128 at 56x56, 128->256 at 28x28, 256->512 at 14x14
            (target: >= 1.0x torch, fwd and fwd+bwd)
Every shape twice: "fwd" (no grad: nothing saved) and "fwd+bwd" (x, weight and bias all require
grad; one forward, then torch.autograd.grad of all three against a fixed random grad_out).
Before timing, each shape is checked once: pykernels' output (and its three gradients) against
torch's, bench.common.assert_close (a BenchCorrectnessError stops the shape).
--quick: a subset of the ResNet layers (stem, C64 56x56, C512 7x7, 1x1 128->256), fewer repeats.
Layout: NCHW on the CPU. On CUDA (--device cuda) the dtype is bfloat16 when float32 (the
default) is asked for, the tensors are channels_last (cuDNN's tensor-core path) and the baseline
is cuDNN with torch.backends.cudnn.benchmark = True (its fastest algorithm per shape); target
>= 0.8x cuDNN on the ResNet-18 layers.

Run: .venv/bin/python -m pykernels bench conv2d [--quick] [--device cuda] [--threads N]
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Tuple

import torch
import torch.nn.functional as F

import pykernels.ops as ops

from .common import bench_pair, fma_peak_gflops, make_record, run_cases, setup_run, Record

OP = "conv2d"


class Layer(NamedTuple):
    group: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    padding: int = 0

    @property
    def out_hw(self) -> Tuple[int, int]:
        # OH = floor((H + 2p - (R - 1) - 1) / s) + 1 (dilation 1)
        oh = (self.H + 2 * self.padding - self.R) // self.stride + 1
        ow = (self.W + 2 * self.padding - self.S) // self.stride + 1
        return oh, ow

    def flops(self) -> float:
        oh, ow = self.out_hw
        return 2.0 * self.N * self.K * oh * ow * self.C * self.R * self.S  # groups = 1 here

    def label(self) -> str:
        s = f"N{self.N} C{self.C} {self.H}x{self.W} -> K{self.K} {self.R}x{self.S}"
        if self.stride != 1:
            s += f" s{self.stride}"
        if self.padding:
            s += f" p{self.padding}"
        return s


LENET = [
    Layer("lenet", 64, 1, 28, 28, 10, 5, 5),
    Layer("lenet", 64, 10, 12, 12, 20, 5, 5),
]
RESNET18 = [
    Layer("resnet18", 32, 3, 224, 224, 64, 7, 7, 2, 3),      # stem
    Layer("resnet18", 32, 64, 56, 56, 64, 3, 3, 1, 1),
    Layer("resnet18", 32, 128, 28, 28, 128, 3, 3, 1, 1),
    Layer("resnet18", 32, 256, 14, 14, 256, 3, 3, 1, 1),
    Layer("resnet18", 32, 512, 7, 7, 512, 3, 3, 1, 1),
    Layer("resnet18", 32, 64, 56, 56, 128, 1, 1, 2, 0),      # downsamples
    Layer("resnet18", 32, 128, 28, 28, 256, 1, 1, 2, 0),
    Layer("resnet18", 32, 256, 14, 14, 512, 1, 1, 2, 0),
]
QUICK_RESNET18 = (0, 1, 4, 6)  # stem, C64 56x56, C512 7x7, 1x1 128->256


def run(quick: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32,
        progress: bool = True) -> List[Record]:
    """Run every conv2d benchmark; returns the records (printing and saving is bench.run's job)."""
    device, on_cpu, gen, budget, threads = setup_run(device, quick)
    if not on_cpu and dtype == torch.float32:
        dtype = torch.bfloat16  # issue 4's GPU target is bf16 against cuDNN
    fmt = torch.contiguous_format if on_cpu else torch.channels_last
    peak = fma_peak_gflops(threads, "float64" if dtype == torch.float64 else "float32") \
        if on_cpu else None
    baseline = "torch" if on_cpu else "cuDNN"

    def randn(*shape, scale=1.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float32) * scale
        t = t.to(device=device, dtype=dtype)
        return t.contiguous(memory_format=fmt) if t.dim() == 4 else t

    def rec(layer: Layer, what: str, timing, flops) -> Record:
        return make_record(OP, f"{layer.label()} {what}", dtype, timing, flops=flops,
                           peak_gflops=peak, group=layer.group, device=device, threads=threads,
                           baseline=baseline)

    def case(layer: Layer) -> Callable[[], List[Record]]:
        def go() -> List[Record]:
            n, c, h, w, k, r, s = layer.N, layer.C, layer.H, layer.W, layer.K, layer.R, layer.S
            x = randn(n, c, h, w)
            wt = randn(k, c, r, s, scale=(c * r * s) ** -0.5)  # outputs O(1), like torch's init
            b = randn(k)
            conv = dict(stride=layer.stride, padding=layer.padding)
            big = layer.flops() > 2e9
            kw = dict(device=device, budget_s=budget, warmup=1 if big else 2,
                      min_reps=3 if (big or quick) else 5)
            out: List[Record] = []

            # forward, no grad: nothing saved for a backward
            def fwd(fn):
                def f():
                    with torch.no_grad():
                        return fn(x, wt, b, **conv)
                return f

            t = bench_pair(fwd(ops.conv2d), fwd(F.conv2d), what=f"{layer.label()} fwd", **kw)
            out.append(rec(layer, "fwd", t, layer.flops()))

            # forward + backward: grads of x, weight and bias (separate leaves per side)
            oh, ow = layer.out_hw
            gy = randn(n, k, oh, ow)

            def step(fn):
                leaves = [v.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
                          for v in (x, wt, b)]

                def f():
                    y = fn(*leaves, **conv)
                    return (y.detach(),) + torch.autograd.grad(y, leaves, gy)
                return f

            t = bench_pair(step(ops.conv2d), step(F.conv2d), what=f"{layer.label()} fwd+bwd",
                           **kw)
            out.append(rec(layer, "fwd+bwd", t, 3 * layer.flops()))
            return out
        return go

    layers = LENET + ([RESNET18[i] for i in QUICK_RESNET18] if quick else RESNET18)
    cases = [(layer.label(), case(layer)) for layer in layers]

    saved_benchmark = torch.backends.cudnn.benchmark
    if not on_cpu:
        torch.backends.cudnn.benchmark = True  # the baseline uses cuDNN's fastest algorithm
    try:
        return run_cases(OP, cases, progress)
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
