"""Shared benchmark machinery: interleaved timing, machine limits, records, table, JSON, plots.

Every benchmark follows one pattern (STYLE.md point 9):
  1. check correctness once (pykernels output vs torch output, per-dtype tolerance; raise if wrong),
  2. warm up both,
  3. time them interleaved (pk, torch, pk, torch, ...) so drift hits both alike,
  4. report medians (with quartiles), GFLOP/s or GB/s with the formula next to the code,
     and the fraction of a limit measured on this machine in the same run.

Results go to bench/results/<machine>.json (one section per op, merged) and one PNG per op.
Run: .venv/bin/python -m pykernels bench [OPS...] [--quick]
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

import torch

__all__ = [
    "BenchCorrectnessError",
    "Stats",
    "PairTiming",
    "Record",
    "Progress",
    "assert_close",
    "bench_pair",
    "time_fn",
    "make_record",
    "fma_peak_gflops",
    "copy_bandwidth_gbs",
    "machine_limits",
    "machine_name",
    "default_results_dir",
    "print_table",
    "write_json",
    "plot_op",
    "sync",
]


class BenchCorrectnessError(AssertionError):
    """pykernels and torch disagree beyond tolerance: the timing that would follow is meaningless."""


# Max |pk - torch| / max |torch| allowed by the one-off check before timing.  A benchmark's check
# catches gross errors (wrong layout, stale buffers); the tight checks live in tests/ and `check`.
_TOL = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 3e-2,
}
_TOL_CUDA_FP32 = 1e-2  # Triton's tl.dot on fp32 may use tf32 (10-bit mantissa) where torch does not


# ----------------------------------------------------------------------------------------------
# timing


def sync(device) -> None:
    """Wait for queued GPU work; no-op on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclasses.dataclass
class Stats:
    """Summary of per-call times, in milliseconds."""

    median: float
    q25: float
    q75: float
    min: float
    n: int

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> "Stats":
        s = sorted(samples_ms)
        if len(s) == 1:
            return cls(s[0], s[0], s[0], s[0], 1)
        q = statistics.quantiles(s, n=4, method="inclusive")
        return cls(statistics.median(s), q[0], q[2], s[0], len(s))


@dataclasses.dataclass
class PairTiming:
    pk: Stats
    torch: Stats


def _time_once(fn: Callable, device, inner: int) -> float:
    """Wall time of `inner` back-to-back calls of fn, per call, in ms."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3 / inner


def _flatten(out) -> list:
    if out is None:
        return []
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    raise TypeError(f"benchmark function returned {type(out).__name__}; expected tensors or tuples of them")


def assert_close(out_pk, out_torch, tol: Optional[float] = None, what: str = "") -> float:
    """Compare (nested tuples of) tensors; max |pk - torch| / max |torch| must be <= tol.

    Returns the worst normalised error.  Raises BenchCorrectnessError on a mismatch.
    """
    a_list, b_list = _flatten(out_pk), _flatten(out_torch)
    if len(a_list) != len(b_list):
        raise BenchCorrectnessError(f"{what}: pykernels returned {len(a_list)} tensors, torch {len(b_list)}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(a_list, b_list)):
        if a.shape != b.shape:
            raise BenchCorrectnessError(f"{what}: output {i} shape {tuple(a.shape)} != torch {tuple(b.shape)}")
        if a.dtype != b.dtype:
            raise BenchCorrectnessError(f"{what}: output {i} dtype {a.dtype} != torch {b.dtype}")
        if a.numel() == 0:
            continue
        t = tol
        if t is None:
            t = _TOL_CUDA_FP32 if (a.is_cuda and a.dtype == torch.float32) else _TOL.get(a.dtype, 1e-4)
        a64, b64 = a.detach().double(), b.detach().double()
        if not torch.isfinite(a64).all():
            raise BenchCorrectnessError(f"{what}: output {i} of pykernels has non-finite values")
        scale = b64.abs().max().item() or 1.0
        err = (a64 - b64).abs().max().item() / scale
        worst = max(worst, err)
        if not err <= t:
            idx = torch.nonzero((a64 - b64).abs() == (a64 - b64).abs().max())[0].tolist()
            raise BenchCorrectnessError(
                f"{what}: output {i} {tuple(a.shape)} {a.dtype}: max|pk - torch| / max|torch| = "
                f"{err:.3g} > tol {t:.1g} (first worst index {idx}: pk {a64[tuple(idx)].item():.6g}, "
                f"torch {b64[tuple(idx)].item():.6g})"
            )
    return worst


def bench_pair(
    fn_pk: Callable,
    fn_torch: Callable,
    warmup: int = 2,
    reps: Optional[int] = None,
    *,
    device="cpu",
    check: bool = True,
    tol: Optional[float] = None,
    what: str = "",
    inner: int = 1,
    budget_s: float = 2.0,
    min_reps: int = 5,
    max_reps: int = 200,
) -> PairTiming:
    """Time fn_pk against fn_torch, interleaved (pk, torch, pk, torch, ...); medians and quartiles in ms.

    check:  call each once first and compare outputs (assert_close); raises BenchCorrectnessError.
    reps:   samples per side; None picks it so that timing takes about budget_s (within
            [min_reps, max_reps]) from the warm-up times.
    inner:  calls per sample (use > 1 for microsecond-scale calls so the clock is not the noise).
    """
    if check:
        assert_close(fn_pk(), fn_torch(), tol, what)
    pair_ms = math.inf
    for _ in range(max(warmup, 1)):
        t_pk = _time_once(fn_pk, device, inner)
        t_t = _time_once(fn_torch, device, inner)
        pair_ms = min(pair_ms, (t_pk + t_t) * inner)
    if reps is None:
        reps = int(budget_s * 1e3 / max(pair_ms, 1e-6))
        reps = max(min_reps, min(max_reps, reps))
    pk, tt = [], []
    for _ in range(reps):
        pk.append(_time_once(fn_pk, device, inner))
        tt.append(_time_once(fn_torch, device, inner))
    return PairTiming(Stats.of(pk), Stats.of(tt))


def time_fn(fn: Callable, warmup: int = 2, reps: int = 20, *, device="cpu", inner: int = 1) -> Stats:
    """Time one function alone (median and quartiles, ms)."""
    for _ in range(warmup):
        _time_once(fn, device, inner)
    return Stats.of([_time_once(fn, device, inner) for _ in range(reps)])


# ----------------------------------------------------------------------------------------------
# machine limits, measured in the same run


@functools.lru_cache(maxsize=None)
def fma_peak_gflops(threads: int, dtype: str = "float32") -> Optional[float]:
    """FMA throughput of this CPU with `threads` threads (pykernels._C's probe, best of 3), GFLOP/s."""
    try:
        from pykernels import _C
    except ImportError:
        return None
    return max(float(_C.fma_peak_gflops(int(threads), str(dtype))) for _ in range(3))


@functools.lru_cache(maxsize=None)
def copy_bandwidth_gbs(device: str = "cpu", nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Memory copy bandwidth (read + write bytes per second), median of `reps` large tensor copies, GB/s."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault in the pages
    ms = time_fn(lambda: dst.copy_(src), warmup=1, reps=reps, device=device).median
    return 2 * nbytes / (ms * 1e-3) / 1e9  # GB/s = (bytes read + bytes written) / t


def machine_limits(device="cpu", threads: Optional[int] = None, quick: bool = False) -> dict:
    """The limits benchmarks are measured against: FMA peak (CPU) and copy bandwidth."""
    device = str(torch.device(device))
    limits: dict = {"device": device}
    if torch.device(device).type == "cpu":
        threads = threads or _pk_threads()
        limits["threads"] = threads
        limits["fma_peak_gflops_fp32"] = fma_peak_gflops(threads, "float32")
        limits["fma_peak_gflops_fp64"] = fma_peak_gflops(threads, "float64")
    limits["copy_gbs"] = copy_bandwidth_gbs(device, (256 << 20) if quick else (1 << 30))
    return limits


def _pk_threads() -> int:
    try:
        import pykernels

        return int(pykernels.get_num_threads())
    except (ImportError, AttributeError):
        return torch.get_num_threads()


def machine_name(device="cpu") -> str:
    """Filesystem-safe machine name: the GPU's name on CUDA, else /proc/cpuinfo's "model name"."""
    name = ""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        if not name:
            import platform

            name = platform.processor() or platform.machine() or "unknown"
    name = re.sub(r"\((R|TM|C)\)", "", name, flags=re.I)
    name = re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")
    return name or "unknown"


def default_results_dir() -> Path:
    """bench/results in a source checkout (or editable install); ./pykernels-bench-results otherwise."""
    here = Path(__file__).resolve().parent
    if "site-packages" not in here.parts and "dist-packages" not in here.parts:
        return here / "results"
    return Path.cwd() / "pykernels-bench-results"


# ----------------------------------------------------------------------------------------------
# records


@dataclasses.dataclass
class Record:
    """One benchmark row.  ratio = torch_ms / pk_ms: > 1 means pykernels is faster."""

    op: str
    shape: str
    dtype: str
    pk_ms: float
    torch_ms: float
    ratio: float
    gflops: Optional[float] = None  # pykernels GFLOP/s
    torch_gflops: Optional[float] = None
    frac_peak: Optional[float] = None  # pykernels GFLOP/s / measured peak
    pk_q25: Optional[float] = None
    pk_q75: Optional[float] = None
    torch_q25: Optional[float] = None
    torch_q75: Optional[float] = None
    group: str = ""  # plot / table grouping ("square", "mlp", "linear-step", ...)
    device: str = "cpu"
    threads: Optional[int] = None
    baseline: str = "torch"  # what the torch_ms column measured (normally torch)
    note: str = ""
    unit: str = "GFLOP/s"  # of gflops / torch_gflops: "GB/s" for memory-bound ops (then
    #                        frac_peak is the fraction of the measured copy bandwidth)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def setup_run(device: str, quick: bool):
    """Common start of every bench_<op>.run: (device, on_cpu, seeded CPU generator, time budget
    per case in seconds, pykernels' thread count). On the CPU, torch gets the same thread count
    as pykernels, or the ratio means nothing."""
    import pykernels

    device = str(torch.device(device))
    on_cpu = torch.device(device).type == "cpu"
    gen = torch.Generator(device="cpu").manual_seed(0)
    threads = pykernels.get_num_threads() if on_cpu else None
    if on_cpu and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return device, on_cpu, gen, (0.75 if quick else 2.0), threads


def run_cases(op: str, cases, progress: bool = True) -> List["Record"]:
    """Runs (label, fn -> list of Records) cases in order under one progress bar."""
    records: List[Record] = []
    bar = Progress(len(cases), f"bench {op}") if progress else None
    try:
        for label, case in cases:
            if bar:
                bar.show(label)
            records.extend(case())
            if bar:
                bar.update(label)
    finally:
        if bar:
            bar.close()
    return records


def make_record(
    op: str,
    shape: str,
    dtype,
    timing: PairTiming,
    *,
    flops: Optional[float] = None,
    peak_gflops: Optional[float] = None,
    **kw,
) -> Record:
    """Record from a PairTiming; flops = floating-point operations of one call (GFLOP/s = flops / t)."""
    pk_ms, t_ms = timing.pk.median, timing.torch.median
    gf = flops / (pk_ms * 1e-3) / 1e9 if flops else None
    tgf = flops / (t_ms * 1e-3) / 1e9 if flops else None
    return Record(
        op=op,
        shape=shape,
        dtype=str(dtype).replace("torch.", ""),
        pk_ms=pk_ms,
        torch_ms=t_ms,
        ratio=t_ms / pk_ms,
        gflops=gf,
        torch_gflops=tgf,
        frac_peak=(gf / peak_gflops) if (gf and peak_gflops) else None,
        pk_q25=timing.pk.q25,
        pk_q75=timing.pk.q75,
        torch_q25=timing.torch.q25,
        torch_q75=timing.torch.q75,
        **kw,
    )


# ----------------------------------------------------------------------------------------------
# output: progress bar, table, JSON, plots


class Progress:
    """A one-line text progress bar on stderr: [#####.....] 5/10 label.

    On a terminal the bar redraws in place; otherwise (a log file, a pipe) it writes one line per
    finished step and nothing in between.
    """

    def __init__(self, total: int, desc: str = "", width: int = 24, stream=None):
        self.total, self.desc, self.width = max(total, 1), desc, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self._last_len = 0
        self._t0 = time.perf_counter()

    def update(self, label: str = "", step: int = 1) -> None:
        self.done = min(self.done + step, self.total)
        if self.tty:
            self._draw(label)
        else:
            self.stream.write(f"{self._line(label)} ({time.perf_counter() - self._t0:.0f} s)\n")
            self.stream.flush()

    def show(self, label: str) -> None:
        """Redraw with a new label without advancing (call before starting a slow step)."""
        if self.tty:
            self._draw(label)

    def _line(self, label: str) -> str:
        filled = self.width * self.done // self.total
        return f"{self.desc} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"

    def _draw(self, label: str) -> None:
        line = self._line(label)
        pad = " " * max(0, self._last_len - len(line))
        self._last_len = len(line)
        self.stream.write("\r" + line + pad)
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.flush()


def _fmt_time(ms: Optional[float]) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    if ms < 1.0:
        return f"{ms * 1e3:.1f} us"
    if ms < 1000.0:
        return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{ms / 1e3:.2f} s"


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _rate(v: Optional[float], unit: str) -> str:
    return "-" if v is None else f"{v:.1f} {_UNIT_SHORT.get(unit, unit)}"


_HEADER = ("op", "group", "shape", "dtype", "thr", "pykernels", "baseline", "base/pk",
           "pk rate", "base rate", "% limit", "note")
_UNIT_SHORT = {"GFLOP/s": "GF/s", "GB/s": "GB/s"}


def _table_rows(records: Iterable[Record]):
    rows = []
    for r in records:
        base = r.baseline if r.baseline != "torch" else ""
        rows.append((
            r.op, r.group, r.shape, r.dtype, _fmt(r.threads, "d"),
            _fmt_time(r.pk_ms), _fmt_time(r.torch_ms) + (f" ({base})" if base else ""),
            f"{r.ratio:.2f}x", _rate(r.gflops, r.unit), _rate(r.torch_gflops, r.unit),
            _fmt(None if r.frac_peak is None else 100 * r.frac_peak, ".0f"), r.note,
        ))
    return rows


def markdown_table(records: Iterable[Record]) -> str:
    """The same table as print_table, as GitHub markdown (for the README and closing notes)."""
    rows = _table_rows(records)
    out = ["| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def print_table(records: Iterable[Record], file=None) -> None:
    """Plain-text table: times are medians; torch/pk > 1 means pykernels is faster."""
    file = file if file is not None else sys.stdout
    header = _HEADER
    rows = _table_rows(records)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = {4, 5, 6, 7, 8, 9, 10}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(line(header), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in rows:
        print(line(row), file=file)


def write_json(records: Sequence[Record], path, meta: Optional[dict] = None) -> Path:
    """Merge `records` into the machine's JSON file: one section per op, replaced as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict = {}
    if path.exists():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
    if not isinstance(doc, dict):
        doc = {}
    doc.setdefault("ops", {})
    meta = dict(meta or {})
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    doc["machine"] = meta.get("machine", doc.get("machine"))
    doc["updated"] = now
    by_op: dict = {}
    for r in records:
        by_op.setdefault(r.op, []).append(r.to_dict())
    for op, rows in by_op.items():
        doc["ops"][op] = {"meta": {**meta, "date": now}, "records": rows}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def plot_op(records: Sequence[Record], op: str, outdir, machine: str,
            peak_gflops: Optional[float] = None) -> Optional[Path]:
    """One PNG per op: GFLOP/s (pykernels vs baseline, with the measured peak) and the speed ratio per shape."""
    rows = [r for r in records if r.op == op]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    labels = [f"{r.group}: {r.shape} {r.dtype}" + (f" t{r.threads}" if r.group == "threads" else "") for r in rows]
    flop_rows = [i for i, r in enumerate(rows) if r.gflops is not None]
    n = len(rows)
    fig, axes = plt.subplots(1, 2, figsize=(15, 0.38 * n + 1.8), sharey=True)
    y = list(range(n))[::-1]

    ax = axes[0]
    h = 0.4
    ax.barh([y[i] + h / 2 for i in flop_rows], [rows[i].gflops for i in flop_rows], h, label="pykernels", color="tab:blue")
    ax.barh([y[i] - h / 2 for i in flop_rows], [rows[i].torch_gflops for i in flop_rows], h, label="baseline (torch)",
            color="tab:orange")
    unit = rows[0].unit
    if peak_gflops:
        limit = "measured FMA peak" if unit == "GFLOP/s" else "measured copy bandwidth"
        ax.axvline(peak_gflops, color="k", ls="--", lw=1, label=f"{limit} ({peak_gflops:.0f})")
    ax.set_xlabel("GFLOP/s (2*M*N*K / t)" if unit == "GFLOP/s" else f"{unit} (bytes moved / t)")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)

    ax = axes[1]
    ratios = [r.ratio for r in rows]
    ax.barh(y, ratios, 0.6, color=["tab:green" if q >= 1 else "tab:red" for q in ratios])
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xscale("log")
    fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x")
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(fmt)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("baseline time / pykernels time  (> 1: pykernels faster)")
    for yi, q in zip(y, ratios):
        ax.text(q, yi, f" {q:.2f}x", va="center", fontsize=7)
    ax.grid(axis="x", alpha=0.3)

    fig.suptitle(f"pykernels {op} vs torch on {machine} (medians)")
    fig.tight_layout()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / f"{machine}_{op}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
