"""Benchmark runner: python -m pykernels bench [OPS...] [--quick] [--json PATH] [--plot DIR] [--threads N]

Finds every bench_<op>.py next to this file, runs the requested ones (all by default), prints one
table, merges the records into <results>/<machine>.json (one section per op) and writes one PNG
per op.  Works as pykernels.bench.run (installed) and as bench.run (python -m bench.run in the repo).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

import pykernels

from .common import (Record, default_results_dir, machine_limits, machine_name, markdown_table, plot_op,
                     print_table, write_json)

_PREFIX = "bench_"


def available_ops() -> List[str]:
    """Op stems with a bench_<op>.py module in this folder, sorted."""
    here = str(Path(__file__).resolve().parent)
    return sorted(m.name[len(_PREFIX):] for m in pkgutil.iter_modules([here]) if m.name.startswith(_PREFIX))


def _load(op: str):
    return importlib.import_module(f"{__package__}.{_PREFIX}{op}")


def _parser(ops: List[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pykernels bench",
        description="Time pykernels against PyTorch on this machine (interleaved runs, medians) and report "
                    "GFLOP/s and the fraction of the measured machine limit.",
    )
    p.add_argument("ops", nargs="*", metavar="OP", help=f"ops to run (default: all of {', '.join(ops) or 'none'})")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    p.add_argument("--json", metavar="PATH", help="JSON file to merge results into "
                   "(default: <results dir>/<machine>.json)")
    p.add_argument("--plot", metavar="DIR", help="folder for the PNG plots (default: the results dir); "
                   "'none' to skip")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as markdown to PATH")
    p.add_argument("--threads", type=int, metavar="N", help="threads for pykernels and torch (default: unchanged)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if available; default)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"),
                   help="main dtype (default float32)")
    return p


def _busy_warning() -> Optional[float]:
    """1-minute load average; warns when other processes already keep the CPUs busy."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cpus = os.cpu_count() or 1
    if load > 0.5 * cpus:
        print(f"pykernels bench: warning: load average {load:.1f} on {cpus} CPUs before starting; "
              "other processes compete for the cores and the timings will be noisy", file=sys.stderr)
    return load


def main(argv: Optional[List[str]] = None) -> int:
    ops = available_ops()
    args = _parser(ops).parse_args(sys.argv[1:] if argv is None else argv)
    wanted = args.ops or ops
    unknown = [o for o in wanted if o not in ops]
    if unknown:
        print(f"pykernels bench: no benchmark for {', '.join(unknown)}; available: {', '.join(ops)}", file=sys.stderr)
        return 2

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print("pykernels bench: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    if args.threads is not None:
        if args.threads < 1:
            print("pykernels bench: --threads must be >= 1", file=sys.stderr)
            return 2
        pykernels.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    threads = pykernels.get_num_threads()
    if torch.device(device).type == "cpu" and torch.get_num_threads() != threads:
        print(f"pykernels bench: torch uses {torch.get_num_threads()} threads, pykernels {threads}; "
              f"timing both with {threads}", file=sys.stderr)
        torch.set_num_threads(threads)

    machine = machine_name(device)
    load = _busy_warning()
    limits = machine_limits(device, threads, quick=args.quick)
    meta = {
        "machine": machine,
        "device": device,
        "pykernels": getattr(pykernels, "__version__", "?"),
        "torch": torch.__version__,
        "isa": pykernels.isa() if hasattr(pykernels, "isa") else None,
        "threads": threads,
        "quick": args.quick,
        "dtype": args.dtype,
        "limits": limits,
        "loadavg_1min": load,
    }
    if torch.device(device).type == "cuda":
        meta["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32

    print(f"machine {machine}  device {device}  threads {threads}  isa {meta['isa']}  "
          f"pykernels {meta['pykernels']}  torch {torch.__version__}")
    peak32, peak64 = limits.get("fma_peak_gflops_fp32"), limits.get("fma_peak_gflops_fp64")
    if peak32:
        print(f"limits: FMA peak {peak32:.0f} GFLOP/s fp32, {peak64:.0f} fp64 ({threads} threads); "
              f"memory copy {limits['copy_gbs']:.1f} GB/s")
    else:
        print(f"limits: memory copy {limits['copy_gbs']:.1f} GB/s")

    records: List[Record] = []
    failed = []
    for op in wanted:
        t0 = time.perf_counter()
        try:
            recs = _load(op).run(quick=args.quick, device=device, dtype=dtype)
        except Exception as e:  # one broken op must not lose the others' results
            print(f"pykernels bench: {op} failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(op)
            continue
        print(f"{op}: {len(recs)} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        records.extend(recs)

    if records:
        print()
        print_table(records)
        if args.markdown:
            Path(args.markdown).write_text(markdown_table(records))
        print("times are medians of interleaved runs; base/pk > 1 means pykernels is faster")
        results = default_results_dir()
        json_path = Path(args.json) if args.json else results / f"{machine}.json"
        write_json(records, json_path, meta)
        print(f"results: {json_path}")
        if (args.plot or "").lower() != "none":
            plot_dir = Path(args.plot) if args.plot else results
            for op in dict.fromkeys(r.op for r in records):
                unit = next(r.unit for r in records if r.op == op)
                limit = limits.get("copy_gbs") if unit == "GB/s" else (peak32 if dtype == torch.float32 else None)
                png = plot_op(records, op, plot_dir, machine, peak_gflops=limit)
                if png:
                    print(f"plot:    {png}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
