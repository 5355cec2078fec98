"""Support for tests/test_fuzz.py: input specs, hypothesis strategies, and the per-op tally.

    Spec(shape, layout, scale, values)   one input tensor, as plain data (what hypothesis prints
                                         in a falsifying example); .build(dtype, gen, device)
    Case(op, dtype, seed, inputs, ...)   one drawn example of one op: specs + keyword arguments
    sizes(lo, hi) / spatial(...) / ...   size strategies: size 1, small, primes, one long side
    layouts(ndim)                        memory layouts: contiguous, strided, transposed,
                                         permuted, offset (unaligned), expanded (stride 0),
                                         channels_last
    TALLY / record(...)                  cases run and mismatches per (op, backend, dtype), printed
                                         at the end of the session by pytest_terminal_summary below
                                         (test_fuzz.py loads this module as a plugin through
                                         pytest_plugins)

Values come from a torch.Generator seeded by the case's `seed`, so a case is reproduced from its
repr alone; hypothesis shrinks shapes and parameters towards small ones and the seed towards 0.
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

from helpers import make_tensor

CL = torch.channels_last
PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 53, 67, 97)


# ---- one input tensor -------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One input tensor: its shape, memory layout and values.

    layout: ("contiguous",) | ("strided",): every other element of the last dim |
        ("transposed",): the last two dims swapped in memory | ("permuted", perm): dense, dims
        stored in the order `perm` | ("offset",): dense at storage offset 1 (not aligned for
        SIMD loads) | ("expanded", d): dim d broadcast from size 1 (stride 0) |
        ("channels_last",): 4-D NHWC.
    scale: values ~ N(0, scale^2) (make_tensor; dyadic k/8 * scale when the case asks for it).
    values: "normal" | "bool" (True with probability 0.7) | "neg_inf" (normal with ~15% -inf).
    """

    shape: tuple
    layout: tuple = ("contiguous",)
    scale: float = 1.0
    values: str = "normal"

    def __repr__(self):
        extra = "" if self.scale == 1.0 else f", scale={self.scale:.3g}"
        extra += "" if self.values == "normal" else f", values={self.values!r}"
        lay = self.layout[0] if len(self.layout) == 1 else self.layout
        return f"Spec({self.shape}, {lay!r}{extra})"

    def _dense(self, shape, dtype, gen, device, dyadic):
        if self.values == "bool":
            return (torch.rand(shape, generator=gen) < 0.7).to(device)
        t = make_tensor(shape, dtype, gen, device=device, scale=self.scale, dyadic=dyadic)
        if self.values == "neg_inf":
            hole = torch.rand(shape, generator=gen) < 0.15
            t = t.masked_fill(hole.to(device), float("-inf"))
        return t

    def build(self, dtype, gen, device="cpu", dyadic=False):
        shape, kind = tuple(self.shape), self.layout[0]
        if kind == "strided":
            t = self._dense(shape[:-1] + (2 * shape[-1],), dtype, gen, device, dyadic)[..., ::2]
        elif kind == "transposed" and len(shape) >= 2:
            t = self._dense(shape[:-2] + (shape[-1], shape[-2]), dtype, gen, device,
                            dyadic).transpose(-1, -2)
        elif kind == "permuted":
            perm = self.layout[1]
            inverse = [perm.index(i) for i in range(len(perm))]
            t = self._dense(tuple(shape[p] for p in perm), dtype, gen, device,
                            dyadic).permute(inverse)
        elif kind == "offset":
            t = self._dense((math.prod(shape) + 1,), dtype, gen, device, dyadic)[1:].view(shape)
        elif kind == "expanded":
            one = list(shape)
            one[self.layout[1]] = 1
            t = self._dense(tuple(one), dtype, gen, device, dyadic).expand(shape)
        elif kind == "channels_last":
            t = self._dense(shape, dtype, gen, device, dyadic).contiguous(memory_format=CL)
        else:
            t = self._dense(shape, dtype, gen, device, dyadic)
        assert tuple(t.shape) == shape, (t.shape, self)
        return t


@dataclass(frozen=True)
class Case:
    """One example of one op: inputs (name -> Spec or None, in positional order), keyword
    arguments, the inputs to differentiate (a tuple of names; () = forward only), and whether the
    floating values are dyadic (relu: exact sums, so no kernel lands on the other side of the
    kink from the reference)."""

    op: str
    dtype: torch.dtype
    seed: int
    inputs: dict
    kwargs: dict = field(default_factory=dict)
    grad: tuple = ()
    dyadic: bool = False

    def __repr__(self):
        ins = ", ".join(f"{k}={v!r}" for k, v in self.inputs.items())
        return (f"Case({self.op!r}, {str(self.dtype).replace('torch.', '')}, seed={self.seed}, "
                f"inputs=dict({ins}), kwargs={self.kwargs!r}, grad={self.grad!r}"
                + (", dyadic=True" if self.dyadic else "") + ")")

    def build(self, device="cpu"):
        """(inputs dict of tensors / None, torch.Generator for the upstream gradients)."""
        gen = torch.Generator().manual_seed(self.seed)
        return {n: None if s is None else s.build(self.dtype, gen, device, self.dyadic)
                for n, s in self.inputs.items()}, gen

    def numel(self):
        return sum(math.prod(s.shape) for s in self.inputs.values() if s is not None)


# ---- strategies -------------------------------------------------------------------------------
def sizes(lo=1, hi=8):
    """A size in [lo, hi]: small integers (hypothesis favours the ends: lo and 1) or a prime."""
    primes = [p for p in PRIMES if lo <= p <= hi]
    ints = st.integers(lo, hi)
    return st.one_of(ints, st.sampled_from(primes)) if primes else ints


@st.composite
def shape_with_long_side(draw, n, lo=1, hi=8, long=None):
    """n sizes in [lo, hi]; when `long` (an int), sometimes one of them in (hi, long] instead:
    extreme aspect ratios (1 x 97, 3 x 67 ...)."""
    dims = [draw(sizes(lo, hi)) for _ in range(n)]
    if long and n and draw(st.integers(0, 3)) == 0:
        dims[draw(st.integers(0, n - 1))] = draw(sizes(hi + 1, long))
    return tuple(dims)


@st.composite
def layouts(draw, ndim, *, expand=True, channels_last=False):
    """A memory layout (Spec.layout) for a tensor of `ndim` dims."""
    kinds = ["contiguous", "strided", "permuted", "offset"]
    if ndim >= 2:
        kinds.append("transposed")
    if expand and ndim >= 1:
        kinds.append("expanded")
    if channels_last and ndim == 4:
        kinds.append("channels_last")
    kind = draw(st.sampled_from(kinds))
    if kind == "permuted":
        return ("permuted", tuple(draw(st.permutations(range(ndim)))))
    if kind == "expanded":
        return ("expanded", draw(st.integers(0, ndim - 1)))
    return (kind,)


def seeds():
    return st.integers(0, 2**31 - 1)


@st.composite
def grad_subset(draw, names):
    """The inputs to differentiate: usually all of `names`, sometimes a subset or none
    (forward only), so the partial-gradient paths run too."""
    names = tuple(names)
    if draw(st.integers(0, 2)):
        return names
    return tuple(n for n in names if draw(st.booleans()))


# ---- the tally: cases run and mismatches per op -----------------------------------------------
@dataclass
class Tally:
    cases: int = 0
    mismatches: int = 0       # AssertionError from check_op: a value, shape or dtype differs
    errors: int = 0           # any other exception on an input the op documents as valid
    shrink_runs: int = 0      # calls after the first failure (hypothesis shrinking it)
    smallest: tuple = None    # (numel, repr of the case, first lines of the error)


TALLY = defaultdict(Tally)  # (op, backend id, dtype name) -> Tally


def record(key, case, exc, *, stopped):
    """Count one run of `case` under `key`. exc: None (passed) or the exception raised.
    stopped: a failure was already seen in this test and hypothesis does not generate new
    cases any more (it only shrinks): the run is counted as a shrink run."""
    t = TALLY[key]
    if stopped:
        t.shrink_runs += 1
    else:
        t.cases += 1
        if isinstance(exc, AssertionError):
            t.mismatches += 1
        elif exc is not None:
            t.errors += 1
    if exc is not None:
        lines = (f"{type(exc).__name__}: {exc}").splitlines()
        msg = "\n".join(lines[:6])
        if t.smallest is None or case.numel() < t.smallest[0]:
            t.smallest = (case.numel(), repr(case), msg)


def pytest_terminal_summary(terminalreporter):
    if not TALLY:
        return
    tr = terminalreporter
    tr.section("fuzz summary (cases run / mismatches per op, backend and dtype)")
    tr.write_line(f"{'op':<22}{'backend':<13}{'dtype':<9}{'cases':>7}{'mismatches':>12}"
                  f"{'errors':>8}{'shrink runs':>13}")
    totals = Tally()
    for (op, backend, dtype), t in sorted(TALLY.items()):
        tr.write_line(f"{op:<22}{backend:<13}{dtype:<9}{t.cases:>7}{t.mismatches:>12}"
                      f"{t.errors:>8}{t.shrink_runs:>13}")
        totals.cases += t.cases
        totals.mismatches += t.mismatches
        totals.errors += t.errors
    tr.write_line(f"{'total':<44}{totals.cases:>7}{totals.mismatches:>12}{totals.errors:>8}")
    for (op, backend, dtype), t in sorted(TALLY.items()):
        if t.smallest is not None:
            tr.write_line(f"\nsmallest failing case of {op} [{backend}, {dtype}]:")
            tr.write_line(f"  {t.smallest[1]}")
            for line in t.smallest[2].splitlines():
                tr.write_line(f"    {line}")
