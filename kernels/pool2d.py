"""Triton 2-D pooling: max, average, adaptive average and adaptive max, forward and backward.

Images are x [N, C, H, W] -> out [N, C, OH, OW]; the output size is read from out's shape
(the ops layer computes it with torch's formula, per axis
    OH = floor((H + 2*pH - dH*(kH - 1) - 1 + (sH - 1 if ceil_mode else 0)) / sH) + 1,
minus one with ceil_mode when the last window would start past H + pH), and torch's
semantics are matched exactly:

    max:       window rows oh*sH - pH + kh*dH (kh < kH), in-range taps only, row-major order;
               `if v > m or isnan(v)` -> ties keep the FIRST max, a NaN wins (the last NaN
               of the window is reported), an all -inf window gives -inf and its first
               in-range tap. indices: int64, flat into the H*W input plane.
    avg:       sum / divisor, divisor = divisor_override (if nonzero), else the window
               clipped to the padded input [-pH, H + pH) when count_include_pad (the
               ceil_mode overhang past it does not count), else clipped to the input.
    adaptive:  window rows floor(oh*H/OH) .. ceil((oh+1)*H/OH) - 1; avg = sum / kh / kw.
    backward:  avg (both kinds) is a gather: each grad_in element sums grad_out / divisor over
               the windows that contain it (at most ceil(kH/sH) x ceil(kW/sW) of them), so no
               atomics and a deterministic result. Max (both kinds) scatters through the saved
               indices, since max_pool2d_backward gets no window geometry (it also serves
               adaptive_max_pool2d), which rules out a gather: a program owns a block of whole
               input planes, zeroes them, waits for its block (barrier), then adds its planes'
               grad_out into them with atomics (two outputs of one plane may pick the same
               input when windows overlap). No other program touches those planes, so the
               zeroing cannot race with the adds. When there are too few plane blocks to fill
               the GPU (small N*C), grad_in is zeroed up front and each block's outputs are
               split over several programs (atomics make that safe too). An input position
               that collects three or more gradients may be summed in a different order from
               run to run (last-bit differences); fp16/bf16 gradients are summed in their own
               dtype by the atomics.

Layout: every stride is passed to the kernels (sliced and channels_last inputs run without
copies). Each program computes a [BLOCK_P, BLOCK_Q] tile whose Q axis runs along the
contiguous dimension: NCHW-like tensors: P = N*C planes, Q = flattened spatial (oh*OW + ow),
so a row of the tile is a run of output columns that spans rows when OW is small;
channels_last tensors: P = flattened (n, oh, ow), Q = C. The window taps are unrolled
(kH, kW are compile-time constants; adaptive windows loop at run time). The layout is taken
from the tensor that is written (out / grad_in). Sums are accumulated, and max values
compared (exactly), in fp32 for fp16/bf16/fp32 and in fp64 for fp64.
BLOCK_P x BLOCK_Q and num_warps are autotuned over Hopper configs keyed on the tile sizes
(P, Q), the window and the layout; under the interpreter (TRITON_INTERPRET=1 at import)
one 4 x 16 config is used. Interpreter limits: no bf16 atomics (max_pool2d_backward then
scatters into an fp32 copy), and its fp32 -> bf16 casts truncate where GPUs round to
nearest, so bf16 results there may be 1 ulp off torch's.

Test (CPU, interpreter):  TRITON_INTERPRET=1 python -m pytest tests/test_pool2d.py
Benchmark (GPU):          python -m pykernels bench pool2d
"""

import torch
import triton
import triton.language as tl

from ._launch import INTERPRET as _INTERPRET
from ._launch import check_devices as _check_devices
from ._launch import target_programs as _target_programs

__all__ = [
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "adaptive_avg_pool2d_forward",
    "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d_forward",
]


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT32_MAX = 2**31 - 1


def _config(bp, bq, warps):
    return triton.Config({"BLOCK_P": bp, "BLOCK_Q": bq}, num_warps=warps)


if _INTERPRET:
    # One config, no tuning; small so that the little test images still span several tiles.
    _CONFIGS = [_config(4, 16, 1)]
else:
    # Tiles of 256 (2 warps), 1024 (4 warps) and 2048 (8 warps) outputs, i.e. 4-8 per thread,
    # for every power-of-two split between P and Q; _prune_configs keeps the few that fit.
    _CONFIGS = [_config(max(tile // (1 << q), 1), 1 << q, warps)
                for tile, warps in ((256, 2), (1024, 4), (2048, 8))
                for q in range(11) if (1 << q) <= tile]


def _prune_configs(configs, named_args, **kwargs):
    """Keep tiles whose Q side is the contiguous extent (up to 1024) or a quarter of it, and
    whose P side does not run far past P: at most 6 configs are timed per key."""
    named_args = {**named_args, **kwargs}  # keyword (constexpr) arguments arrive in kwargs
    P, Q = named_args["P"], named_args["Q"]
    qp = min(triton.next_power_of_2(Q), 1024)
    pp = triton.next_power_of_2(P)
    wanted = (qp, max(qp // 4, 1))
    keep = [c for c in configs if c.kwargs["BLOCK_Q"] in wanted and c.kwargs["BLOCK_P"] <= pp]
    if keep:
        return keep
    fits = [c for c in configs if c.kwargs["BLOCK_Q"] == qp]
    return [min(fits, key=lambda c: c.kwargs["BLOCK_P"])]


_KEY = ["P", "Q", "CHANNELS_LAST"]

# max_pool2d_backward splits a plane block's outputs over several programs when there are
# fewer than _launch.target_programs() plane blocks (8 under the interpreter), each split
# getting at least _MIN_SPLIT outputs.
# (Small under the interpreter, so that little test images take both paths.)
_MIN_SPLIT = 16 if _INTERPRET else 512


# ----------------------------------------------------------------------------------------
# Tile helpers
# ----------------------------------------------------------------------------------------

@triton.jit
def _tile(P, Q, INT64_OFFSETS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    """This program's P and Q offsets (Q blocks vary fastest over the program ids) and the
    tile's mask. Lanes past the edge are masked, not clamped: their (possibly wrapped)
    addresses are formed but never dereferenced, and unclamped offsets keep the Q axis
    visibly contiguous to the compiler."""
    pid = tl.program_id(0)
    ar_p = tl.arange(0, BLOCK_P)
    ar_q = tl.arange(0, BLOCK_Q)
    if INT64_OFFSETS:
        pid = pid.to(tl.int64)
        ar_p = ar_p.to(tl.int64)
        ar_q = ar_q.to(tl.int64)
    num_q = (Q + BLOCK_Q - 1) // BLOCK_Q
    offs_p = (pid // num_q) * BLOCK_P + ar_p  # [BLOCK_P]
    offs_q = (pid % num_q) * BLOCK_Q + ar_q   # [BLOCK_Q]
    mask = (offs_p[:, None] < P) & (offs_q[None, :] < Q)       # [BLOCK_P, BLOCK_Q]
    return offs_p, offs_q, mask


@triton.jit
def _split(offs_p, offs_q, C, S1, S2, CHANNELS_LAST: tl.constexpr):
    """Image coordinates (n, c, a, b) of a tile over an [N, C, S1, S2] tensor, broadcastable
    to [BLOCK_P, BLOCK_Q]: NCHW: p = n*C + c, q = a*S2 + b; channels_last: p = (n*S1 + a)*S2
    + b, q = c."""
    if CHANNELS_LAST:
        b = (offs_p % S2)[:, None]       # [BLOCK_P, 1]
        t = offs_p // S2
        a = (t % S1)[:, None]            # [BLOCK_P, 1]
        n = (t // S1)[:, None]           # [BLOCK_P, 1]
        c = offs_q[None, :]              # [1, BLOCK_Q]
    else:
        n = (offs_p // C)[:, None]       # [BLOCK_P, 1]
        c = (offs_p % C)[:, None]        # [BLOCK_P, 1]
        a = (offs_q // S2)[None, :]      # [1, BLOCK_Q]
        b = (offs_q % S2)[None, :]       # [1, BLOCK_Q]
    return n, c, a, b


# ----------------------------------------------------------------------------------------
# Forward kernels
# ----------------------------------------------------------------------------------------

@triton.autotune(configs=_CONFIGS, key=_KEY + ["KH", "KW"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _max_pool2d_fwd_kernel(
    x_ptr, out_ptr, idx_ptr,
    C, H, W, OH, OW, P, Q,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    stride_in, stride_ic, stride_ih, stride_iw,
    sH, sW, pH, pW, dH, dW,
    STORE_INDICES: tl.constexpr, CHANNELS_LAST: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    ACC_FP64: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # Compared in fp32 (fp64 for fp64): exact for every input dtype (and the interpreter
    # gets bf16 comparisons wrong).
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    offs_p, offs_q, mask = _tile(P, Q, INT64_OFFSETS, BLOCK_P, BLOCK_Q)
    n, c, oh, ow = _split(offs_p, offs_q, C, OH, OW, CHANNELS_LAST)
    x_plane = x_ptr + (n * stride_xn + c * stride_xc)
    h0 = oh * sH - pH  # window origin, may lie in the padding
    w0 = ow * sW - pW
    # torch starts from the first in-range tap (while (h0 < 0) h0 += dH) and reports it when
    # nothing beats -inf
    h_first = tl.where(h0 < 0, h0 + ((dH - 1 - h0) // dH) * dH, h0)
    w_first = tl.where(w0 < 0, w0 + ((dW - 1 - w0) // dW) * dW, w0)
    best = tl.full([BLOCK_P, BLOCK_Q], float("-inf"), acc_dtype)  # [BLOCK_P, BLOCK_Q]
    best_idx = tl.broadcast_to(h_first * W + w_first, [BLOCK_P, BLOCK_Q])
    for kh in tl.static_range(KH):
        ih = h0 + kh * dH
        row_ok = (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = w0 + kw * dW
            ok = mask & row_ok & (iw >= 0) & (iw < W)
            v = tl.load(x_plane + ih * stride_xh + iw * stride_xw, mask=ok, other=float("-inf"))
            v = v.to(acc_dtype)
            take = ok & ((v > best) | (v != v))  # v != v: NaN wins, like torch
            best = tl.where(take, v, best)
            best_idx = tl.where(take, ih * W + iw, best_idx)
    tl.store(out_ptr + (n * stride_on + c * stride_oc + oh * stride_oh + ow * stride_ow),
             best.to(out_ptr.dtype.element_ty), mask=mask)
    if STORE_INDICES:
        tl.store(idx_ptr + (n * stride_in + c * stride_ic + oh * stride_ih + ow * stride_iw),
                 best_idx.to(tl.int64), mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY + ["max_kh", "max_kw"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _adaptive_max_pool2d_fwd_kernel(
    x_ptr, out_ptr, idx_ptr,
    C, H, W, OH, OW, P, Q, max_kh, max_kw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    stride_in, stride_ic, stride_ih, stride_iw,
    CHANNELS_LAST: tl.constexpr, INT64_OFFSETS: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    offs_p, offs_q, mask = _tile(P, Q, INT64_OFFSETS, BLOCK_P, BLOCK_Q)
    n, c, oh, ow = _split(offs_p, offs_q, C, OH, OW, CHANNELS_LAST)
    x_plane = x_ptr + (n * stride_xn + c * stride_xc)
    hs = (oh * H) // OH                 # window [hs, he) x [ws, we), never empty
    he = ((oh + 1) * H + OH - 1) // OH
    ws = (ow * W) // OW
    we = ((ow + 1) * W + OW - 1) // OW
    best = tl.full([BLOCK_P, BLOCK_Q], float("-inf"), acc_dtype)  # [BLOCK_P, BLOCK_Q]
    best_idx = tl.broadcast_to(hs * W + ws, [BLOCK_P, BLOCK_Q])
    for kh in range(0, max_kh):
        ih = hs + kh
        row_ok = ih < he
        for kw in range(0, max_kw):
            iw = ws + kw
            ok = mask & row_ok & (iw < we)
            v = tl.load(x_plane + ih * stride_xh + iw * stride_xw, mask=ok, other=float("-inf"))
            v = v.to(acc_dtype)
            take = ok & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            best_idx = tl.where(take, ih * W + iw, best_idx)
    tl.store(out_ptr + (n * stride_on + c * stride_oc + oh * stride_oh + ow * stride_ow),
             best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(idx_ptr + (n * stride_in + c * stride_ic + oh * stride_ih + ow * stride_iw),
             best_idx.to(tl.int64), mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY + ["KH", "KW"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _avg_pool2d_fwd_kernel(
    x_ptr, out_ptr,
    C, H, W, OH, OW, P, Q,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    sH, sW, pH, pW, divisor,
    COUNT_INCLUDE_PAD: tl.constexpr, HAS_DIVISOR: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    INT64_OFFSETS: tl.constexpr, ACC_FP64: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    offs_p, offs_q, mask = _tile(P, Q, INT64_OFFSETS, BLOCK_P, BLOCK_Q)
    n, c, oh, ow = _split(offs_p, offs_q, C, OH, OW, CHANNELS_LAST)
    x_plane = x_ptr + (n * stride_xn + c * stride_xc)
    h0 = oh * sH - pH
    w0 = ow * sW - pW
    acc = tl.zeros([BLOCK_P, BLOCK_Q], acc_dtype)  # [BLOCK_P, BLOCK_Q]
    for kh in tl.static_range(KH):
        ih = h0 + kh
        row_ok = (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = w0 + kw
            ok = mask & row_ok & (iw >= 0) & (iw < W)
            acc += tl.load(x_plane + ih * stride_xh + iw * stride_xw, mask=ok, other=0.0).to(acc_dtype)
    # divisor: the window clipped to the padded input, or to the input itself
    h1 = tl.minimum(h0 + KH, H + pH)
    w1 = tl.minimum(w0 + KW, W + pW)
    rows = tl.minimum(h1, H) - tl.maximum(h0, 0)
    cols = tl.minimum(w1, W) - tl.maximum(w0, 0)
    if HAS_DIVISOR:
        res = acc / divisor
    elif COUNT_INCLUDE_PAD:
        res = acc / tl.maximum((h1 - h0) * (w1 - w0), 1).to(acc_dtype)  # (<= 0: masked lanes)
    else:
        res = acc / tl.maximum(rows * cols, 1).to(acc_dtype)  # (empty windows: 0 below)
    res = tl.where((rows > 0) & (cols > 0), res, 0.0)  # torch: a window with no input gives 0
    tl.store(out_ptr + (n * stride_on + c * stride_oc + oh * stride_oh + ow * stride_ow),
             res.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY + ["max_kh", "max_kw"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _adaptive_avg_pool2d_fwd_kernel(
    x_ptr, out_ptr,
    C, H, W, OH, OW, P, Q, max_kh, max_kw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_on, stride_oc, stride_oh, stride_ow,
    CHANNELS_LAST: tl.constexpr, INT64_OFFSETS: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    offs_p, offs_q, mask = _tile(P, Q, INT64_OFFSETS, BLOCK_P, BLOCK_Q)
    n, c, oh, ow = _split(offs_p, offs_q, C, OH, OW, CHANNELS_LAST)
    x_plane = x_ptr + (n * stride_xn + c * stride_xc)
    hs = (oh * H) // OH
    he = ((oh + 1) * H + OH - 1) // OH
    ws = (ow * W) // OW
    we = ((ow + 1) * W + OW - 1) // OW
    acc = tl.zeros([BLOCK_P, BLOCK_Q], acc_dtype)  # [BLOCK_P, BLOCK_Q]
    for kh in range(0, max_kh):
        ih = hs + kh
        row_ok = ih < he
        for kw in range(0, max_kw):
            iw = ws + kw
            ok = mask & row_ok & (iw < we)
            acc += tl.load(x_plane + ih * stride_xh + iw * stride_xw, mask=ok, other=0.0).to(acc_dtype)
    res = acc / (he - hs).to(acc_dtype) / (we - ws).to(acc_dtype)  # torch: sum / kh / kw
    tl.store(out_ptr + (n * stride_on + c * stride_oc + oh * stride_oh + ow * stride_ow),
             res.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------
# Backward kernels
# ----------------------------------------------------------------------------------------

@triton.autotune(configs=_CONFIGS, key=_KEY + ["KH", "KW", "WIN_H", "WIN_W"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _avg_pool2d_bwd_kernel(
    go_ptr, gi_ptr,
    C, H, W, OH, OW, P, Q,
    stride_gon, stride_goc, stride_goh, stride_gow,
    stride_gin, stride_gic, stride_gih, stride_giw,
    sH, sW, pH, pW, divisor,
    COUNT_INCLUDE_PAD: tl.constexpr, HAS_DIVISOR: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    INT64_OFFSETS: tl.constexpr, ACC_FP64: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, WIN_H: tl.constexpr, WIN_W: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # Gather: grad_in[ih, iw] = sum of grad_out[oh, ow] / divisor(oh, ow) over the windows
    # oh*sH - pH <= ih < oh*sH - pH + kH (same for w): oh in [oh_lo, oh_hi], at most WIN_H.
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    offs_p, offs_q, mask = _tile(P, Q, INT64_OFFSETS, BLOCK_P, BLOCK_Q)
    n, c, ih, iw = _split(offs_p, offs_q, C, H, W, CHANNELS_LAST)
    go_plane = go_ptr + (n * stride_gon + c * stride_goc)
    oh_lo = tl.where(ih + pH >= KH, (ih + pH - KH) // sH + 1, 0)
    oh_hi = tl.minimum((ih + pH) // sH, OH - 1)
    ow_lo = tl.where(iw + pW >= KW, (iw + pW - KW) // sW + 1, 0)
    ow_hi = tl.minimum((iw + pW) // sW, OW - 1)
    acc = tl.zeros([BLOCK_P, BLOCK_Q], acc_dtype)  # [BLOCK_P, BLOCK_Q]
    for th in tl.static_range(WIN_H):
        oh = oh_lo + th
        row_ok = oh <= oh_hi
        h0 = oh * sH - pH
        h1 = tl.minimum(h0 + KH, H + pH)
        rows = tl.minimum(h1, H) - tl.maximum(h0, 0)
        for tw in tl.static_range(WIN_W):
            ow = ow_lo + tw
            ok = mask & row_ok & (ow <= ow_hi)
            g = tl.load(go_plane + oh * stride_goh + ow * stride_gow, mask=ok, other=0.0).to(acc_dtype)
            w0 = ow * sW - pW
            w1 = tl.minimum(w0 + KW, W + pW)
            if HAS_DIVISOR:
                term = g / divisor
            elif COUNT_INCLUDE_PAD:
                term = g / tl.maximum((h1 - h0) * (w1 - w0), 1).to(acc_dtype)  # (<= 0: masked)
            else:
                cols = tl.minimum(w1, W) - tl.maximum(w0, 0)
                term = g / tl.maximum(rows * cols, 1).to(acc_dtype)
            acc += tl.where(ok, term, 0.0)
    tl.store(gi_ptr + (n * stride_gin + c * stride_gic + ih * stride_gih + iw * stride_giw),
             acc.to(gi_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY + ["max_nh", "max_nw"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _adaptive_avg_pool2d_bwd_kernel(
    go_ptr, gi_ptr,
    C, H, W, OH, OW, P, Q, max_nh, max_nw,
    stride_gon, stride_goc, stride_goh, stride_gow,
    stride_gin, stride_gic, stride_gih, stride_giw,
    CHANNELS_LAST: tl.constexpr, INT64_OFFSETS: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # Gather: the windows holding input row ih are oh in [floor(ih*OH/H), ceil((ih+1)*OH/H)),
    # at most max_nh of them; each contributes grad_out / kh / kw like torch.
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    offs_p, offs_q, mask = _tile(P, Q, INT64_OFFSETS, BLOCK_P, BLOCK_Q)
    n, c, ih, iw = _split(offs_p, offs_q, C, H, W, CHANNELS_LAST)
    go_plane = go_ptr + (n * stride_gon + c * stride_goc)
    oh_lo = (ih * OH) // H
    oh_end = ((ih + 1) * OH + H - 1) // H
    ow_lo = (iw * OW) // W
    ow_end = ((iw + 1) * OW + W - 1) // W
    acc = tl.zeros([BLOCK_P, BLOCK_Q], acc_dtype)  # [BLOCK_P, BLOCK_Q]
    for th in range(0, max_nh):
        oh = oh_lo + th
        row_ok = oh < oh_end
        kh = (((oh + 1) * H + OH - 1) // OH - (oh * H) // OH).to(acc_dtype)
        for tw in range(0, max_nw):
            ow = ow_lo + tw
            ok = mask & row_ok & (ow < ow_end)
            kw = (((ow + 1) * W + OW - 1) // OW - (ow * W) // OW).to(acc_dtype)
            g = tl.load(go_plane + oh * stride_goh + ow * stride_gow, mask=ok, other=0.0).to(acc_dtype)
            acc += tl.where(ok, g / kh / kw, 0.0)
    tl.store(gi_ptr + (n * stride_gin + c * stride_gic + ih * stride_gih + iw * stride_giw),
             acc.to(gi_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY + ["OH", "OW", "splits", "ZERO_IN_KERNEL"],
                 prune_configs_by={"early_config_prune": _prune_configs},
                 reset_to_zero=["gi_ptr"])  # timing runs of the split form accumulate
@triton.jit
def _max_pool2d_bwd_kernel(
    go_ptr, idx_ptr, gi_ptr,
    C, H, W, OH, OW, P, Q, splits, chunk,
    stride_gon, stride_goc, stride_goh, stride_gow,
    stride_in, stride_ic, stride_ih, stride_iw,
    stride_gin, stride_gic, stride_gih, stride_giw,
    ZERO_IN_KERNEL: tl.constexpr, CHANNELS_LAST: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # A program owns a block of input planes and output positions [lo, hi) of them:
    # NCHW: planes [pb*BLOCK_P, +BLOCK_P) (P = N*C), positions walked in BLOCK_Q chunks;
    # channels_last: image n, channels [cb*BLOCK_Q, +BLOCK_Q) (Q = C), positions walked in
    # BLOCK_P chunks. With ZERO_IN_KERNEL (splits == 1, the program owns the planes whole)
    # it first zeroes them and waits for its whole block; otherwise the launcher zeroed
    # grad_in. The scatter uses atomics: windows of one plane may pick the same input.
    pid = tl.program_id(0)
    split = pid % splits
    pid = pid // splits
    ar_p = tl.arange(0, BLOCK_P)
    ar_q = tl.arange(0, BLOCK_Q)
    if INT64_OFFSETS:
        pid = pid.to(tl.int64)
        ar_p = ar_p.to(tl.int64)
        ar_q = ar_q.to(tl.int64)
    HW = H * W
    OHW = OH * OW
    lo = split * chunk
    hi = tl.minimum(lo + chunk, OHW)
    if CHANNELS_LAST:
        num_cb = (C + BLOCK_Q - 1) // BLOCK_Q
        n = pid // num_cb
        c = (pid % num_cb) * BLOCK_Q + ar_q
        plane_ok = (c < C)[None, :]                 # [1, BLOCK_Q]
        c = c[None, :]
        gi_plane = gi_ptr + (n * stride_gin + c * stride_gic)
        go_plane = go_ptr + (n * stride_gon + c * stride_goc)
        idx_plane = idx_ptr + (n * stride_in + c * stride_ic)
        if ZERO_IN_KERNEL:
            zeros = tl.zeros([BLOCK_P, BLOCK_Q], gi_ptr.dtype.element_ty)
            for s0 in range(0, HW, BLOCK_P):
                s = s0 + ar_p
                ok = (s < HW)[:, None] & plane_ok   # [BLOCK_P, BLOCK_Q]
                h = (s // W)[:, None]
                w = (s % W)[:, None]
                tl.store(gi_plane + h * stride_gih + w * stride_giw, zeros, mask=ok)
            tl.debug_barrier()  # every zero is stored before any atomic of this block
        for s0 in range(lo, hi, BLOCK_P):
            s = s0 + ar_p
            ok = (s < hi)[:, None] & plane_ok
            oh = (s // OW)[:, None]
            ow = (s % OW)[:, None]
            g = tl.load(go_plane + oh * stride_goh + ow * stride_gow, mask=ok, other=0.0)
            k = tl.load(idx_plane + oh * stride_ih + ow * stride_iw, mask=ok, other=0)
            if not INT64_OFFSETS:
                k = k.to(tl.int32)
            ok = ok & (k >= 0) & (k < HW)  # an index off the plane is dropped, never written
            tl.atomic_add(gi_plane + (k // W) * stride_gih + (k % W) * stride_giw, g,
                          mask=ok, sem="relaxed")
    else:
        pl = pid * BLOCK_P + ar_p
        plane_ok = (pl < P)[:, None]                # [BLOCK_P, 1]
        n = (pl // C)[:, None]
        c = (pl % C)[:, None]
        gi_plane = gi_ptr + (n * stride_gin + c * stride_gic)
        go_plane = go_ptr + (n * stride_gon + c * stride_goc)
        idx_plane = idx_ptr + (n * stride_in + c * stride_ic)
        if ZERO_IN_KERNEL:
            zeros = tl.zeros([BLOCK_P, BLOCK_Q], gi_ptr.dtype.element_ty)
            for s0 in range(0, HW, BLOCK_Q):
                s = s0 + ar_q
                ok = plane_ok & (s < HW)[None, :]   # [BLOCK_P, BLOCK_Q]
                h = (s // W)[None, :]
                w = (s % W)[None, :]
                tl.store(gi_plane + h * stride_gih + w * stride_giw, zeros, mask=ok)
            tl.debug_barrier()  # every zero is stored before any atomic of this block
        for s0 in range(lo, hi, BLOCK_Q):
            s = s0 + ar_q
            ok = plane_ok & (s < hi)[None, :]
            oh = (s // OW)[None, :]
            ow = (s % OW)[None, :]
            g = tl.load(go_plane + oh * stride_goh + ow * stride_gow, mask=ok, other=0.0)
            k = tl.load(idx_plane + oh * stride_ih + ow * stride_iw, mask=ok, other=0)
            if not INT64_OFFSETS:
                k = k.to(tl.int32)
            ok = ok & (k >= 0) & (k < HW)
            tl.atomic_add(gi_plane + (k // W) * stride_gih + (k % W) * stride_giw, g,
                          mask=ok, sem="relaxed")


# ----------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------

def _check_tensor(name, t, dtypes=_FLOAT_DTYPES, what="float16, bfloat16, float32 or float64"):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D [N, C, H, W], got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be {what}, got {t.dtype}")


def _check_same_dtype(name, t, ref_name, ref):
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")


def _check_images(name, t, N, C):
    """t is [N, C, >0, >0] (N, C those of the tensor it pairs with)."""
    if t.shape[0] != N or t.shape[1] != C:
        raise ValueError(f"{name} must be [{N}, {C}, ., .] (N and C of the other tensors), "
                         f"got {tuple(t.shape)}")
    if t.shape[2] <= 0 or t.shape[3] <= 0:
        raise ValueError(f"{name} must have non-empty H and W, got {tuple(t.shape)}")


def _check_ints(**params):
    """Window parameters: name -> (value, lowest allowed)."""
    for name, (v, lo) in params.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")


def _check_padding(pH, pW, kH, kW):
    if pH > kH // 2 or pW > kW // 2:
        raise ValueError(f"padding ({pH}, {pW}) must be at most half of kernel_size ({kH}, {kW})")


def _pool_size(size, k, s, p, d, ceil_mode):
    """torch's pooling_output_shape along one axis."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _check_out_size(small_name, small, big_name, big, kH, kW, sH, sW, pH, pW, dH, dW):
    """small's (OH, OW) must be what torch gives for big's (H, W), with or without ceil_mode."""
    H, W = big.shape[2], big.shape[3]
    ohs = sorted({_pool_size(H, kH, sH, pH, dH, c) for c in (False, True)})
    ows = sorted({_pool_size(W, kW, sW, pW, dW, c) for c in (False, True)})
    if max(ohs) <= 0 or max(ows) <= 0:
        raise ValueError(f"output size would be empty for {big_name} {tuple(big.shape)}, kernel_size "
                         f"({kH}, {kW}), stride ({sH}, {sW}), padding ({pH}, {pW}), dilation ({dH}, {dW})")
    if small.shape[2] not in ohs or small.shape[3] not in ows:
        raise ValueError(f"{small_name} must be [N, C, OH, OW] with OH in {ohs} and OW in {ows} "
                         f"(floor / ceil_mode) for {big_name} {tuple(big.shape)}, kernel_size ({kH}, {kW}), "
                         f"stride ({sH}, {sW}), padding ({pH}, {pW}), dilation ({dH}, {dW}); "
                         f"got {tuple(small.shape)}")


def _eff_stride(t, dim):
    return t.stride(dim) if t.shape[dim] > 1 else float("inf")


def _channels_last(t):
    """True when C is t's innermost dimension (channels_last and its slices): the tile's
    contiguous axis is then C, otherwise the flattened (H, W)."""
    return _eff_stride(t, 1) < min(_eff_stride(t, 2), _eff_stride(t, 3))


def _needs_int64(*tensors, extra=0):
    """True when an element offset of an in-range lane (or a product like oh * H, passed as
    extra) may not fit in int32; doubling leaves room for the window taps that hang over
    the edge of the input (formed, then masked)."""
    worst = extra
    for t in tensors:
        if t is None:
            continue
        extent = sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)
        worst = max(worst, t.numel(), extent)
    return 2 * worst > _INT32_MAX


def _layout(t, OH, OW):
    """(P, Q, channels_last) of a tile over t's [N, C, OH, OW] index space."""
    N, C = t.shape[0], t.shape[1]
    if _channels_last(t):
        return N * OH * OW, C, True
    return N * C, OH * OW, False


def _grid(P, Q):
    return lambda meta: (triton.cdiv(P, meta["BLOCK_P"]) * triton.cdiv(Q, meta["BLOCK_Q"]),)


def _adaptive_span(size, out_size):
    """Largest adaptive window along one axis: max over i of ceil((i+1)*size/out) - floor(i*size/out)."""
    i = torch.arange(out_size, dtype=torch.int64)
    return int((((i + 1) * size + out_size - 1) // out_size - (i * size) // out_size).max())


def max_pool2d_forward(x, out, indices, kH, kW, sH, sW, pH, pW, dH, dW):
    """out, indices = max over each window of x (torch.nn.functional.max_pool2d).

    Args:
        x: [N, C, H, W] float16, bfloat16, float32 or float64, any strides.
        out: [N, C, OH, OW] preallocated, x's dtype, any strides; (OH, OW) is torch's output
            size for these parameters with or without ceil_mode.
        indices: None or [N, C, OH, OW] int64 preallocated: the flat index into H*W of each
            max (a NaN wins, ties keep the first max in row-major window order).
        kH, kW: kernel size (>= 1); sH, sW: stride (>= 1); pH, pW: padding (0 .. k // 2);
        dH, dW: dilation (>= 1).

    Returns:
        (out, indices).

    Raises:
        TypeError: non-tensors, unsupported or mismatched dtypes, non-int parameters.
        ValueError: wrong ranks or shapes, bad parameters, an empty output, mixed devices.
        RuntimeError: CPU tensors without TRITON_INTERPRET=1 set at import.
    """
    _check_tensor("x", x)
    _check_tensor("out", out)
    _check_same_dtype("out", out, "x", x)
    if indices is not None:
        _check_tensor("indices", indices, (torch.int64,), "int64")
        if indices.shape != out.shape:
            raise ValueError(f"indices must be {list(out.shape)} like out, got {tuple(indices.shape)}")
    _check_ints(kH=(kH, 1), kW=(kW, 1), sH=(sH, 1), sW=(sW, 1), pH=(pH, 0), pW=(pW, 0),
                dH=(dH, 1), dW=(dW, 1))
    _check_padding(pH, pW, kH, kW)
    N, C = x.shape[0], x.shape[1]
    _check_images("x", x, N, C)
    _check_images("out", out, N, C)
    _check_out_size("out", out, "x", x, kH, kW, sH, sW, pH, pW, dH, dW)
    _check_devices([("x", x), ("out", out), ("indices", indices)])
    if N == 0:
        return out, indices

    _, _, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    P, Q, cl = _layout(out, OH, OW)
    i_strides = indices.stride() if indices is not None else (0, 0, 0, 0)
    _max_pool2d_fwd_kernel[_grid(P, Q)](
        x, out, indices,
        C, H, W, OH, OW, P, Q,
        *x.stride(), *out.stride(), *i_strides,
        sH, sW, pH, pW, dH, dW,
        STORE_INDICES=indices is not None, CHANNELS_LAST=cl,
        INT64_OFFSETS=_needs_int64(x, out, indices), ACC_FP64=x.dtype == torch.float64, KH=kH, KW=kW,
    )
    return out, indices


def max_pool2d_backward(grad_out, indices, grad_in):
    """grad_in = 0, then grad_in[n, c].flat[indices[n, c, i, j]] += grad_out[n, c, i, j].

    The backward of max_pool2d_forward and adaptive_max_pool2d_forward. Indices outside
    [0, H*W) are skipped.

    Args:
        grad_out: [N, C, OH, OW] float16, bfloat16, float32 or float64, any strides.
        indices: [N, C, OH, OW] int64, from the forward.
        grad_in: [N, C, H, W] preallocated, grad_out's dtype, any strides; fully written.
            Must not overlap grad_out or indices.

    Returns:
        grad_in.

    Raises:
        TypeError / ValueError / RuntimeError: as max_pool2d_forward.
    """
    _check_tensor("grad_out", grad_out)
    _check_tensor("indices", indices, (torch.int64,), "int64")
    _check_tensor("grad_in", grad_in)
    _check_same_dtype("grad_in", grad_in, "grad_out", grad_out)
    if indices.shape != grad_out.shape:
        raise ValueError(f"indices must be {list(grad_out.shape)} like grad_out, got {tuple(indices.shape)}")
    N, C = grad_in.shape[0], grad_in.shape[1]
    _check_images("grad_in", grad_in, N, C)
    _check_images("grad_out", grad_out, N, C)
    _check_devices([("grad_out", grad_out), ("indices", indices), ("grad_in", grad_in)])
    if N == 0:
        return grad_in
    if _INTERPRET and grad_in.dtype == torch.bfloat16:
        # The interpreter has no bf16 atomics (GPUs do): scatter into an fp32 copy instead.
        tmp = torch.empty_like(grad_in, dtype=torch.float32)
        max_pool2d_backward(grad_out.float(), indices, tmp)
        return grad_in.copy_(tmp)

    _, _, H, W = grad_in.shape
    OH, OW = grad_out.shape[2], grad_out.shape[3]
    cl = _channels_last(grad_in)
    if cl:  # a program: image n x a block of channels
        P, Q = H * W, C
        plane_blocks = N * triton.cdiv(C, 16)  # (estimate: the tile's channel side varies)
    else:   # a program: a block of planes
        P, Q = N * C, H * W
        plane_blocks = N * C
    # Few plane blocks (small N * C): split each one's output positions over several
    # programs, with grad_in zeroed up front instead of by the owner.
    want = _target_programs(grad_in.device, interpreted=8)
    splits = 1
    if plane_blocks < want:
        splits = max(1, min(triton.cdiv(want, plane_blocks), (OH * OW) // _MIN_SPLIT))
    chunk = triton.cdiv(OH * OW, splits)
    splits = triton.cdiv(OH * OW, chunk)
    if splits > 1:
        grad_in.zero_()

    def grid(meta):
        blocks = N * triton.cdiv(C, meta["BLOCK_Q"]) if cl else triton.cdiv(P, meta["BLOCK_P"])
        return (blocks * splits,)

    _max_pool2d_bwd_kernel[grid](
        grad_out, indices, grad_in,
        C, H, W, OH, OW, P, Q, splits, chunk,
        *grad_out.stride(), *indices.stride(), *grad_in.stride(),
        ZERO_IN_KERNEL=splits == 1, CHANNELS_LAST=cl,
        INT64_OFFSETS=_needs_int64(grad_out, indices, grad_in),
    )
    return grad_in


def _avg_checks(x_name, x, o_name, o, kH, kW, sH, sW, pH, pW, count_include_pad, divisor_override):
    _check_tensor(x_name, x)
    _check_tensor(o_name, o)
    _check_same_dtype(o_name, o, x_name, x)
    _check_ints(kH=(kH, 1), kW=(kW, 1), sH=(sH, 1), sW=(sW, 1), pH=(pH, 0), pW=(pW, 0))
    _check_padding(pH, pW, kH, kW)
    if divisor_override is None:
        divisor_override = 0
    if isinstance(divisor_override, bool) or not isinstance(divisor_override, int):
        raise TypeError(f"divisor_override must be an int (0 or None: no override), "
                        f"got {type(divisor_override).__name__}")
    if abs(divisor_override) > _INT32_MAX:
        raise ValueError(f"divisor_override must fit in int32, got {divisor_override}")
    N, C = x.shape[0], x.shape[1]
    _check_images(x_name, x, N, C)
    _check_images(o_name, o, N, C)
    return bool(count_include_pad), divisor_override


def avg_pool2d_forward(x, out, kH, kW, sH, sW, pH, pW, count_include_pad, divisor_override):
    """out = mean over each window of x (torch.nn.functional.avg_pool2d).

    Args:
        x: [N, C, H, W] float16, bfloat16, float32 or float64, any strides.
        out: [N, C, OH, OW] preallocated, x's dtype, any strides; (OH, OW) is torch's output
            size with or without ceil_mode.
        kH, kW, sH, sW, pH, pW: kernel size, stride, padding (0 .. k // 2).
        count_include_pad: the divisor counts the padding (not the ceil_mode overhang).
        divisor_override: nonzero int divisor, or 0 / None for none.

    Returns:
        out.

    Raises:
        TypeError / ValueError / RuntimeError: as max_pool2d_forward.
    """
    cip, div = _avg_checks("x", x, "out", out, kH, kW, sH, sW, pH, pW, count_include_pad, divisor_override)
    _check_out_size("out", out, "x", x, kH, kW, sH, sW, pH, pW, 1, 1)
    _check_devices([("x", x), ("out", out)])
    N, C, H, W = x.shape
    if N == 0:
        return out
    OH, OW = out.shape[2], out.shape[3]
    P, Q, cl = _layout(out, OH, OW)
    _avg_pool2d_fwd_kernel[_grid(P, Q)](
        x, out,
        C, H, W, OH, OW, P, Q,
        *x.stride(), *out.stride(),
        sH, sW, pH, pW, div,
        COUNT_INCLUDE_PAD=cip, HAS_DIVISOR=div != 0, CHANNELS_LAST=cl,
        INT64_OFFSETS=_needs_int64(x, out), ACC_FP64=x.dtype == torch.float64, KH=kH, KW=kW,
    )
    return out


def avg_pool2d_backward(grad_out, grad_in, kH, kW, sH, sW, pH, pW, count_include_pad, divisor_override):
    """grad_in[ih, iw] = sum of grad_out[oh, ow] / divisor(oh, ow) over the windows holding
    (ih, iw): the backward of avg_pool2d_forward, as a gather (no atomics, deterministic).

    Args:
        grad_out: [N, C, OH, OW] float16, bfloat16, float32 or float64, any strides.
        grad_in: [N, C, H, W] preallocated, grad_out's dtype, any strides; fully written.
        the rest: as avg_pool2d_forward ((OH, OW) tells whether ceil_mode was used).

    Returns:
        grad_in.

    Raises:
        TypeError / ValueError / RuntimeError: as max_pool2d_forward.
    """
    cip, div = _avg_checks("grad_out", grad_out, "grad_in", grad_in, kH, kW, sH, sW, pH, pW,
                           count_include_pad, divisor_override)
    _check_out_size("grad_out", grad_out, "grad_in", grad_in, kH, kW, sH, sW, pH, pW, 1, 1)
    _check_devices([("grad_out", grad_out), ("grad_in", grad_in)])
    N, C, H, W = grad_in.shape
    if N == 0:
        return grad_in
    OH, OW = grad_out.shape[2], grad_out.shape[3]
    P, Q, cl = _layout(grad_in, H, W)
    _avg_pool2d_bwd_kernel[_grid(P, Q)](
        grad_out, grad_in,
        C, H, W, OH, OW, P, Q,
        *grad_out.stride(), *grad_in.stride(),
        sH, sW, pH, pW, div,
        COUNT_INCLUDE_PAD=cip, HAS_DIVISOR=div != 0, CHANNELS_LAST=cl,
        INT64_OFFSETS=_needs_int64(grad_out, grad_in), ACC_FP64=grad_in.dtype == torch.float64,
        KH=kH, KW=kW, WIN_H=(kH - 1) // sH + 1, WIN_W=(kW - 1) // sW + 1,
    )
    return grad_in


def _adaptive_checks(x_name, x, o_name, o):
    _check_tensor(x_name, x)
    _check_tensor(o_name, o)
    _check_same_dtype(o_name, o, x_name, x)
    N, C = x.shape[0], x.shape[1]
    _check_images(x_name, x, N, C)
    _check_images(o_name, o, N, C)


def adaptive_avg_pool2d_forward(x, out):
    """out = torch.nn.functional.adaptive_avg_pool2d(x, out.shape[-2:]).

    Args:
        x: [N, C, H, W] float16, bfloat16, float32 or float64, any strides.
        out: [N, C, OH, OW] preallocated (OH, OW >= 1), x's dtype, any strides.

    Returns:
        out.

    Raises:
        TypeError / ValueError / RuntimeError: as max_pool2d_forward.
    """
    _adaptive_checks("x", x, "out", out)
    _check_devices([("x", x), ("out", out)])
    N, C, H, W = x.shape
    if N == 0:
        return out
    OH, OW = out.shape[2], out.shape[3]
    P, Q, cl = _layout(out, OH, OW)
    _adaptive_avg_pool2d_fwd_kernel[_grid(P, Q)](
        x, out,
        C, H, W, OH, OW, P, Q, _adaptive_span(H, OH), _adaptive_span(W, OW),
        *x.stride(), *out.stride(),
        CHANNELS_LAST=cl, INT64_OFFSETS=_needs_int64(x, out, extra=(OH + 1) * H + (OW + 1) * W),
        ACC_FP64=x.dtype == torch.float64,
    )
    return out


def adaptive_avg_pool2d_backward(grad_out, grad_in):
    """The backward of adaptive_avg_pool2d_forward, as a gather (no atomics, deterministic).

    Args:
        grad_out: [N, C, OH, OW] float16, bfloat16, float32 or float64, any strides.
        grad_in: [N, C, H, W] preallocated, grad_out's dtype, any strides; fully written.

    Returns:
        grad_in.

    Raises:
        TypeError / ValueError / RuntimeError: as max_pool2d_forward.
    """
    _adaptive_checks("grad_out", grad_out, "grad_in", grad_in)
    _check_devices([("grad_out", grad_out), ("grad_in", grad_in)])
    N, C, H, W = grad_in.shape
    if N == 0:
        return grad_in
    OH, OW = grad_out.shape[2], grad_out.shape[3]
    P, Q, cl = _layout(grad_in, H, W)
    _adaptive_avg_pool2d_bwd_kernel[_grid(P, Q)](
        grad_out, grad_in,
        C, H, W, OH, OW, P, Q, _adaptive_span(OH, H), _adaptive_span(OW, W),
        *grad_out.stride(), *grad_in.stride(),
        CHANNELS_LAST=cl,
        INT64_OFFSETS=_needs_int64(grad_out, grad_in, extra=(OH + 1) * H + (OW + 1) * W),
        ACC_FP64=grad_in.dtype == torch.float64,
    )
    return grad_in


def adaptive_max_pool2d_forward(x, out, indices):
    """out, indices = torch.nn.functional.adaptive_max_pool2d(x, out.shape[-2:], True).

    Same NaN / tie rules as max_pool2d_forward; the backward is max_pool2d_backward.

    Args:
        x: [N, C, H, W] float16, bfloat16, float32 or float64, any strides.
        out: [N, C, OH, OW] preallocated (OH, OW >= 1), x's dtype, any strides.
        indices: [N, C, OH, OW] int64 preallocated (flat into H*W).

    Returns:
        (out, indices).

    Raises:
        TypeError / ValueError / RuntimeError: as max_pool2d_forward.
    """
    _adaptive_checks("x", x, "out", out)
    _check_tensor("indices", indices, (torch.int64,), "int64")
    if indices.shape != out.shape:
        raise ValueError(f"indices must be {list(out.shape)} like out, got {tuple(indices.shape)}")
    _check_devices([("x", x), ("out", out), ("indices", indices)])
    N, C, H, W = x.shape
    if N == 0:
        return out, indices
    OH, OW = out.shape[2], out.shape[3]
    P, Q, cl = _layout(out, OH, OW)
    _adaptive_max_pool2d_fwd_kernel[_grid(P, Q)](
        x, out, indices,
        C, H, W, OH, OW, P, Q, _adaptive_span(H, OH), _adaptive_span(W, OW),
        *x.stride(), *out.stride(), *indices.stride(),
        CHANNELS_LAST=cl,
        INT64_OFFSETS=_needs_int64(x, out, indices, extra=(OH + 1) * H + (OW + 1) * W),
        ACC_FP64=x.dtype == torch.float64,
    )
    return out, indices
