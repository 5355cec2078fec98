"""Pooling benchmarks: pykernels.ops.max_pool2d / avg_pool2d against torch.nn.functional.

Pooling does no arithmetic to speak of: it is judged by memory traffic.

    GB/s  = bytes / t,  bytes = input read + output written (+ indices written, when the forward
            keeps them for a gradient); backward: grad_out read (+ indices read) + grad_in
            written. Every byte counted once, caches ignored. The bytes are what pykernels moves:
            indices kept only for its own backward are int32 on the C++ backend (4 B; torch
            writes int64), so torch's GB/s column uses the same byte count, not its own.
    floor = bytes / copy bandwidth (bench.common.copy_bandwidth_gbs, a large tensor copy measured
            in the same run): "% peak" = floor / t = GB/s / copy GB/s (100% = as fast as a copy).
    The record's gflops / torch_gflops fields (the "GF/s" columns of the table) hold GB/s.

Groups (pykernels and torch interleaved, medians; both sides allocate their outputs every call):
  fwd            32x64x112x112 fp32: max k2 s2, max k3 s2 p1 (ResNet stem), avg k2 s2; no grad
                 (the max writes no indices)
  fwd+idx        the two max pools on an input that requires grad (indices written and saved)
  bwd            the input gradient of each of the three (the graph is built once)
  channels_last  max k2 s2 on the same tensor in channels_last: fwd, fwd+idx, bwd
  seed           the seed CNN's pools, N64 C10 24x24 and N64 C20 8x8, max k2: one public call
                 each (call overhead included; 20 calls per sample), without and with grad
  fp64           max k3 s2 p1 forward in float64
Targets (issue 5, CPU fp32): fwd >= 3x torch and >= 67% of the floor (within 1.5x); bwd >= 1x
torch; seed >= 1x torch.

Run: .venv/bin/python -m pykernels bench pool2d [--quick]
"""

from __future__ import annotations

from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F

import pykernels.ops as ops

from .common import run_cases, setup_run, Record, bench_pair, copy_bandwidth_gbs, make_record

OP = "pool2d"

BIG = (32, 64, 112, 112)  # ResNet-18/50 stem activation (after conv1, before the max pool)
SEED = ((64, 10, 24, 24), (64, 20, 8, 8))  # the seed LeNet's two pools (conv1 / conv2 outputs)
# name, pykernels call, torch call, writes indices when x requires grad
POOLS = (
    ("max k2 s2", lambda f, x: f.max_pool2d(x, 2, 2), True),
    ("max k3 s2 p1", lambda f, x: f.max_pool2d(x, 3, 2, 1), True),
    ("avg k2 s2", lambda f, x: f.avg_pool2d(x, 2, 2), False),
)


def run(quick: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32,
        progress: bool = True) -> List[Record]:
    """Run every pooling benchmark; returns the records (printing and saving is bench.run's job)."""
    device, on_cpu, gen, budget, threads = setup_run(device, quick)
    # the same probe (and cached result) as the runner's machine limits
    copy_gbs = copy_bandwidth_gbs(device, (256 << 20) if quick else (1 << 30))

    def randn(shape, dt=dtype, cl=False):
        t = torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dt)
        return t.contiguous(memory_format=torch.channels_last) if cl else t

    def rec(shape, timing, nbytes, group, dt=dtype, note=""):
        r = make_record(OP, shape, dt, timing, flops=nbytes, peak_gflops=copy_gbs, unit="GB/s", group=group,
                        device=device, threads=threads)
        floor_ms = nbytes / (copy_gbs * 1e9) * 1e3
        r.note = (f"{r.gflops:.1f} GB/s (torch {r.torch_gflops:.1f}), floor {floor_ms:.2f} ms"
                  + (f"; {note}" if note else ""))
        return r

    def shape_str(shape, name, cl=False):
        return "x".join(map(str, shape)) + f" {name}" + (" CL" if cl else "")

    def out_numel(shape, name):
        n, c, h, w = shape
        k, s, p = (3, 2, 1) if "k3" in name else (2, 2, 0)
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        return n * c * oh * ow

    # bytes per saved index: int32 on the C++ backend (pykernels.ops.pool2d._private_index_dtype)
    idx_bytes = 4 if on_cpu else 8
    cases: List[Tuple[str, Callable[[], List[Record]]]] = []

    def big_cases(name, fn, has_idx, cl, groups):
        def case():
            x = randn(BIG, cl=cl)
            esize = x.element_size()
            n_in, n_out = x.numel(), out_numel(BIG, name)
            out = []
            label = shape_str(BIG, name, cl)
            if "fwd" in groups:
                with torch.no_grad():
                    t = bench_pair(lambda: fn(ops, x), lambda: fn(F, x), device=device, budget_s=budget,
                                   what=f"{label} fwd")
                out.append(rec(label, t, (n_in + n_out) * esize, "channels_last" if cl else "fwd",
                               note="fwd" if cl else ""))
            xg = x.detach().clone().requires_grad_(True)
            if "fwd+idx" in groups and has_idx:
                # forward of a training step: indices written (8 bytes each) for the backward
                t = bench_pair(lambda: fn(ops, xg), lambda: fn(F, xg), device=device, budget_s=budget,
                               what=f"{label} fwd+idx")
                out.append(rec(label, t, (n_in + n_out) * esize + n_out * idx_bytes,
                               "channels_last" if cl else "fwd+idx", note="fwd+idx" if cl else ""))
            if "bwd" in groups:
                y_pk, y_t = fn(ops, xg), fn(F, xg)
                gy = torch.randn(y_t.shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
                if cl:
                    gy = gy.contiguous(memory_format=torch.channels_last)
                t = bench_pair(lambda: torch.autograd.grad(y_pk, xg, gy, retain_graph=True)[0],
                               lambda: torch.autograd.grad(y_t, xg, gy, retain_graph=True)[0],
                               device=device, budget_s=budget, what=f"{label} bwd")
                # grad_out read + indices read (max) + grad_in written
                nbytes = n_out * esize + (n_out * idx_bytes if has_idx else 0) + n_in * esize
                out.append(rec(label, t, nbytes, "channels_last" if cl else "bwd", note="bwd" if cl else ""))
            return out
        return case

    for name, fn, has_idx in POOLS:
        cases.append((f"{name} fwd/bwd", big_cases(name, fn, has_idx, False, ("fwd", "fwd+idx", "bwd"))))
    cases.append(("max k2 s2 channels_last", big_cases(*POOLS[0], True, ("fwd", "fwd+idx", "bwd"))))

    for shape in SEED:
        def seed(shape=shape):
            x = randn(shape)
            out = []
            n_in, n_out = x.numel(), out_numel(shape, "max k2")
            label = shape_str(shape, "max k2")
            with torch.no_grad():
                t = bench_pair(lambda: ops.max_pool2d(x, 2), lambda: F.max_pool2d(x, 2), device=device,
                               inner=20, warmup=3, budget_s=budget / 2, what=f"seed {label}")
            out.append(rec(label, t, (n_in + n_out) * x.element_size(), "seed",
                           note=f"fwd, +{(t.pk.median - t.torch.median) * 1e3:.1f} us/call vs torch"))
            xg = x.detach().clone().requires_grad_(True)
            t = bench_pair(lambda: ops.max_pool2d(xg, 2), lambda: F.max_pool2d(xg, 2), device=device,
                           inner=20, warmup=3, budget_s=budget / 2, what=f"seed {label} grad")
            out.append(rec(label, t, (n_in + n_out) * x.element_size() + n_out * idx_bytes, "seed",
                           note="fwd+idx (x requires grad)"))
            return out
        cases.append((f"seed {shape}", seed))

    if on_cpu and dtype != torch.float64:
        def fp64():
            x = randn(BIG, dt=torch.float64)
            name = "max k3 s2 p1"
            with torch.no_grad():
                t = bench_pair(lambda: ops.max_pool2d(x, 3, 2, 1), lambda: F.max_pool2d(x, 3, 2, 1),
                               device=device, budget_s=budget, what="fp64 max k3")
            return [rec(shape_str(BIG, name), t, (x.numel() + out_numel(BIG, name)) * 8, "fp64",
                        dt=torch.float64)]
        cases.append(("fp64 max k3 s2 p1", fp64))

    return run_cases(OP, cases, progress)
