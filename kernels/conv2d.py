"""Triton 2-D convolution as implicit GEMM: forward with a fused bias + activation epilogue,
input gradient (also conv_transpose2d's forward), weight gradient, and the epilogue's backward.

Shapes (one alphabet; geometry always that of the FORWARD conv, as in torch.nn.functional):
    x [N, C, H, W], weight [K, C/G, R, S] (G = groups, Cg = C/G, Kg = K/G), out [N, K, OH, OW],
    stride (sH, sW), dilation (dH, dW), top/left padding (pH, pW); OH, OW are read from the
    output tensor, so the bottom/right padding is implied (asymmetric "same" padding and
    conv_transpose2d's output_padding need nothing else):
        out[n, g*Kg + k, oh, ow] = act(bias[g*Kg + k] + sum over c < Cg, r < R, s < S of
            x[n, g*Cg + c, oh*sH - pH + r*dH, ow*sW - pW + s*dW] * weight[g*Kg + k, c, r, s])
    (taps outside x read 0); preact = the same before act, saved for gelu's backward.
    act in {"none", "relu", "gelu" (exact erf form), "tanh", "sigmoid"} (kernels/gemm.py's).

    backward_input:  grad_in[n, g*Cg + c, h, w] = bias[g*Cg + c] (optional) + sum over k < Kg,
                     r, s with (h + pH - r*dH) % sH == 0, oh = (h + pH - r*dH) / sH in [0, OH)
                     (same for w) of grad_out[n, g*Kg + k, oh, ow] * weight[g*Kg + k, c, r, s]
    backward_weight: grad_w[g*Kg + k, c, r, s] = sum over n, oh, ow of
                     grad_out[n, g*Kg + k, oh, ow] * x[n, g*Cg + c, oh*sH - pH + r*dH, ...]
    backward_bias:   dz = grad_out * act'(saved) (saved = out, or preact for gelu),
                     dbias[k] = sum over n, oh, ow of dz[n, k, oh, ow]

Layout: every stride is passed (channels_last, sliced and transposed views, stride-0 inputs
run without copies). Inputs float16 / bfloat16 / float32 / float64 (x and weight alike),
accumulated in fp32 (fp64 for fp64); fp32 uses TF32 tensor cores only when
torch.backends.cuda.matmul.allow_tf32 is True, like kernels/gemm.py. Results are cast to the
output's dtype. No atomics anywhere: every result is deterministic.

Blocking. forward and backward_input are one kernel, _conv2d_kernel: a GEMM whose rows are
output pixels (n, h, w) of the tensor written ("dst": out, or grad_in), whose columns are the
dst channels of one group (grid axis 2 = group), and whose reduction runs over (src channel,
tap). Each program owns a BLOCK_M x BLOCK_N tile (grouped tile order, as in gemm) and loops
over the reduction in BLOCK_K steps with tl.dot; nothing like an im2col buffer exists.
  * TAPS_OUTER (src channels per group >= 16): one flat loop over taps x channel blocks, so
    a step reads BLOCK_K channels of ONE tap: the padding mask is per row ([BLOCK_M]) and
    the channel offsets per column, never a 2-D index computation.
  * otherwise (RGB stems, depthwise, few channels): the reduction index enumerates
    (channel, tap) pairs, decoded per column; masks are [BLOCK_M, BLOCK_K].
  backward_input is a gather (no scatter, no atomics): the pixels of grad_in are split into
  sH*sW stride phases (grid axis 1). Within a phase, (h + pH) % sH is fixed, so exactly the
  taps r = rho, rho + sH/gcd(sH, dH), ... reach it (none for phases not a multiple of
  gcd(sH, dH): those pixels get just the bias), and oh moves by -dH/gcd per tap: a stride-2
  layer does 1/4 of the tap work a masked gather would, and stride 1 is one phase.
  backward_weight (_conv2d_wgrad_kernel) is a GEMM with rows = Kg out channels, columns =
  (c, r, s) of one group (TAPS_OUTER: a program's columns share one tap), reduction over the
  N*OH*OW pixels. When there are too few weight tiles to fill the GPU the pixels are split
  over grid axis 1 into fp32 (fp64) partials, summed afterwards by torch in a fixed order.
  backward_bias (_conv2d_bias_bwd_kernel): a tile of channels x pixels (the contiguous one
  of the two along the tile's fast axis), pixel chunks over grid axis 1, partials as above.
  Tiles whose fast axis is pixels (NCHW) are loaded as [channels, pixels] and transposed in
  registers, so that neighbouring threads read neighbouring addresses in both layouts.
BLOCK_* come from autotuning over Hopper configs keyed on the GEMM sizes and the mode
(pruned to BLOCK_K 64 for 2-byte types, 32 otherwise, and to tiles that suit the problem);
under the interpreter (TRITON_INTERPRET=1 at import) one small config (32x16x16) is used so
that little test images still span several tiles, and bf16 tiles are widened to fp32 before
tl.dot (the interpreter's dot multiplies bf16 bit patterns).

GPU speed notes (checked by compiling for sm_90, not measured). Triton pipelines a tile load
(cp.async) only when it is vectorised, i.e. when the tile has a unit-stride axis whose stride
the launch specialises to 1: channels_last activations (channel stride 1) qualify, NCHW ones
do not (a tile's pixels are decoded with div/mod), so fp16/bf16 NCHW runs unpipelined and
channels_last is the fast layout, as with cuDNN. For the same reason the launcher repacks a
[K, C/groups, R, S]-contiguous fp16/bf16 weight channels-innermost (weight.contiguous(
memory_format=torch.channels_last), a small copy per call) for the tap-outer kernels; keep the
weight channels_last to skip it. The few-channel path gathers with 2-D masks (unpipelined).

Test (CPU, interpreter):  TRITON_INTERPRET=1 python -m pytest tests/test_conv2d.py
Benchmark (GPU):          python -m pykernels bench conv2d
"""

import math

import torch
import triton
import triton.language as tl

from ._launch import INTERPRET as _INTERPRET
from ._launch import check_devices as _check_devices
from ._launch import split_reduction as _split_reduction
from .gemm import ACTIVATIONS, _activation, _activation_grad, _input_precision

__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias"]


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT32_MAX = 2**31 - 1
_MAX_GRID_Z = 65535        # CUDA limit of grid axes 1 and 2
_SMEM_BYTES = 227 * 1024   # H100/H200 shared memory available to one block
_TAPS_MIN_CHANNELS = 16    # src channels per group from which the tap-outer loop is used
# Split-K of the weight / bias gradients: at least this many pixels per split, and partial
# buffers of at most _MAX_PARTIAL_BYTES.
_MIN_SPLIT_PIXELS = 16 if _INTERPRET else 1024
_MAX_PARTIAL_BYTES = 64 * 2**20


def _config(bm, bn, bk, stages, warps, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_stages=stages, num_warps=warps)


if _INTERPRET:
    # One config, no tuning: small enough that tiny test problems span several tiles.
    _CONV_CONFIGS = [_config(32, 16, 16, 1, 4)]
    _WGRAD_CONFIGS = [_config(16, 16, 16, 1, 4)]
else:
    # Hopper tiles (BLOCK_M, BLOCK_N, stages, warps), each with BLOCK_K 16, 32 and 64;
    # _prune keeps one BLOCK_K per problem and the tiles that suit its size (<= 7 configs).
    _TILES = [
        (128, 256, 3, 8), (256, 128, 3, 8), (128, 128, 3, 8), (128, 128, 4, 4),  # big (wgmma)
        (128, 64, 4, 4), (64, 128, 4, 4), (64, 64, 4, 4),
        (128, 32, 4, 4), (64, 32, 4, 4), (128, 16, 4, 4), (64, 16, 4, 2),      # few out channels
        (32, 64, 4, 2), (32, 32, 4, 2),                                         # few rows
    ]
    _CONV_CONFIGS = [_config(bm, bn, bk, st, wa) for bm, bn, st, wa in _TILES for bk in (16, 32, 64)]
    _WGRAD_CONFIGS = _CONV_CONFIGS


def _np2(n):
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def _prune(configs, m, n, k, elem):
    """The configs for an [m, n] x k problem of elem-byte operands: BLOCK_K = 64 for 2-byte
    types, 32 for fp32 / fp64 (smaller only when k is); BLOCK_M, BLOCK_N not past the problem
    and not below 64 unless it is smaller; pipelined tiles that fit in shared memory. If
    none is left, the smallest tile with 2 stages."""
    mp, np_, kp = _np2(m), _np2(n), _np2(k)
    bk = min(kp, 64 if elem == 2 else 32)

    def fits(c):
        tile = (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * elem
        return c.num_stages * tile <= _SMEM_BYTES

    keep = [c for c in configs
            if c.kwargs["BLOCK_K"] == bk
            and min(mp, 64) <= c.kwargs["BLOCK_M"] <= max(mp, 32)
            and min(np_, 64) <= c.kwargs["BLOCK_N"] <= np_ and fits(c)]
    if keep:
        return keep
    same_k = [c for c in configs if c.kwargs["BLOCK_K"] == bk]
    small = min(same_k, key=lambda c: c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"])
    return [triton.Config(dict(small.kwargs), num_stages=2, num_warps=small.num_warps)]


# The autotuner passes the positional arguments as named_args and the keyword ones (the
# constexpr flags) in kwargs: read both.
def _prune_conv_configs(configs, named_args, **kwargs):
    if _INTERPRET:
        return configs
    named_args = {**named_args, **kwargs}
    k = named_args["CI"] if named_args["TAPS_OUTER"] else named_args["CI"] * named_args["R"] * named_args["S"]
    return _prune(configs, named_args["M_MAX"], named_args["CO"], k, named_args["src_ptr"].element_size())


def _prune_wgrad_configs(configs, named_args, **kwargs):
    if _INTERPRET:
        return configs
    named_args = {**named_args, **kwargs}
    n = named_args["CI"] if named_args["TAPS_OUTER"] else named_args["CI"] * named_args["R"] * named_args["S"]
    return _prune(configs, named_args["CO"], n, named_args["chunk"], named_args["dy_ptr"].element_size())


# ----------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------

@triton.jit
def _phase(ph, size, KS, s, p, d, gcd):
    """The dst rows of stride phase ph (0 <= ph < s) of the input gradient along one axis.

    Phases ph < s/gcd are reached by the taps r = ph, ph + s/gcd, ... (their rows h satisfy
    (h + p) % s == (ph * d) % s); the others are the residues that are not multiples of gcd,
    which no tap reaches. Returns (first dst row, number of dst rows, src row of dst row 0 at
    tap 0, src row step per tap (subtracted), first tap, tap step, number of taps)."""
    period = s // gcd
    reached = ph < period
    gm1 = tl.maximum(gcd - 1, 1)
    i = tl.maximum(ph - period, 0)
    resid = tl.where(reached, (ph * d) % s, (i // gm1) * gcd + i % gm1 + 1)
    first = (resid - p % s + s) % s                  # first dst row h with (h + p) % s == resid
    count = (size - first + s - 1) // s
    ntaps = tl.where(reached & (ph < KS), (KS - ph + period - 1) // period, 0)
    src0 = (first + p - ph * d) // s                 # exact division when reached
    return first, count, src0, d // gcd, ph, period, ntaps


# ----------------------------------------------------------------------------------------
# Forward / input-gradient kernel
# ----------------------------------------------------------------------------------------

@triton.autotune(configs=_CONV_CONFIGS,
                 key=["M_MAX", "CO", "CI", "R", "S", "sH", "sW", "TRANSPOSED", "TAPS_OUTER", "SRC_PIX_FAST"],
                 prune_configs_by={"early_config_prune": _prune_conv_configs})
@triton.jit
def _conv2d_kernel(
    src_ptr, w_ptr, dst_ptr, bias_ptr, preact_ptr,
    NB, HS, WS, HD, WD, CI, CO, R, S,
    sH, sW, pH, pW, dH, dW, gcd_h, gcd_w, g0, M_MAX,
    stride_sn, stride_sc, stride_sh, stride_sw,
    stride_wg, stride_wi, stride_wo, stride_wr, stride_ws,
    stride_dn, stride_dc, stride_dh, stride_dw,
    stride_bias,
    stride_pn, stride_pc, stride_ph, stride_pw,
    TRANSPOSED: tl.constexpr, TAPS_OUTER: tl.constexpr,
    SRC_PIX_FAST: tl.constexpr, DST_PIX_FAST: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_PREACT: tl.constexpr, ACTIVATION: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # dst[n, g*CO + j, h, w] = epilogue(sum over i < CI and taps of
    #                                   src[n, g*CI + i, hs, ws] * w[g, i, j, r, s])
    # forward:   src = x [N, C, H, W], dst = out, (i, j) = (c, k), w[g, i, j] = weight[g*Kg + k, c]
    # transposed (input gradient): src = grad_out, dst = grad_in, (i, j) = (k, c).
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32

    pid = tl.program_id(0)
    phase = tl.program_id(1)
    g = g0 + tl.program_id(2)
    if INT64_OFFSETS:
        g = g.to(tl.int64)

    # Per axis: dst row = d0 + d1*j; src row = a1*j + a0 + b*t; tap r = r0 + rs*t, t < nt.
    if TRANSPOSED:
        ph = phase // sW
        pw = phase - ph * sW
        d0h, rows_h, a0h, bh, r0h, rsh, nth = _phase(ph, HD, R, sH, pH, dH, gcd_h)
        d0w, rows_w, a0w, bw, r0w, rsw, ntw = _phase(pw, WD, S, sW, pW, dW, gcd_w)
        d1h = sH
        d1w = sW
        a1h = 1
        a1w = 1
        bh = -bh
        bw = -bw
    else:
        d0h = 0
        d0w = 0
        rows_h = HD
        rows_w = WD
        d1h = 1
        d1w = 1
        a1h = sH
        a1w = sW
        a0h = -pH
        a0w = -pW
        bh = dH
        bw = dW
        r0h = 0
        r0w = 0
        rsh = 1
        rsw = 1
        nth = R
        ntw = S

    # Grouped tile order over the largest phase's rows (smaller phases mask the excess).
    num_pid_m = (M_MAX + BLOCK_M - 1) // BLOCK_M  # (not tl.cdiv: slow in the interpreter)
    num_pid_n = (CO + BLOCK_N - 1) // BLOCK_N
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_in_group = pid % num_pid_in_group
    pid_m = first_pid_m + pid_in_group % group_size_m
    pid_n = pid_in_group // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] dst pixel (n, jh, jw) of this phase
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] dst channel within the group
    offs_k = tl.arange(0, BLOCK_K)                    # [BLOCK_K]
    if INT64_OFFSETS:
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    plane = rows_h * rows_w
    m_total = NB * plane
    m_ok = offs_m < m_total
    n_img = offs_m // tl.maximum(plane, 1)
    rem = offs_m - n_img * plane
    jh = rem // tl.maximum(rows_w, 1)
    jw = rem - jh * rows_w
    hs0 = a1h * jh + a0h                              # [BLOCK_M] src row at tap 0
    ws0 = a1w * jw + a0w
    src_img = src_ptr + g * CI * stride_sc + n_img * stride_sn    # [BLOCK_M] pointers
    cols = offs_n % CO                                # wrapped: the weight loads need no mask
    w_base = w_ptr + g * stride_wg + cols * stride_wo  # [BLOCK_N] pointers

    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, acc_dtype)  # [BLOCK_M, BLOCK_N]
    tile_live = pid_m * BLOCK_M < m_total
    if TAPS_OUTER:
        n_cb = (CI + BLOCK_K - 1) // BLOCK_K
        n_iter = tl.where(tile_live, nth * ntw * n_cb, 0)
        for it in range(0, n_iter):
            tap = it // n_cb
            cb = it - tap * n_cb
            th = tap // ntw
            tw = tap - th * ntw
            hs = hs0 + bh * th                        # [BLOCK_M]
            ws = ws0 + bw * tw
            row_ok = m_ok & (hs >= 0) & (hs < HS) & (ws >= 0) & (ws < WS)
            ci = cb * BLOCK_K + offs_k                # [BLOCK_K]
            ci_ok = ci < CI
            row_ptr = src_img + hs * stride_sh + ws * stride_sw  # [BLOCK_M]
            if SRC_PIX_FAST:
                a = tl.load(row_ptr[None, :] + ci[:, None] * stride_sc,
                            mask=ci_ok[:, None] & row_ok[None, :], other=0.0)  # [BLOCK_K, BLOCK_M]
                a = tl.trans(a)                                                # [BLOCK_M, BLOCK_K]
            else:
                a = tl.load(row_ptr[:, None] + ci[None, :] * stride_sc,
                            mask=row_ok[:, None] & ci_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
            r = r0h + rsh * th
            s = r0w + rsw * tw
            b = tl.load(w_base[None, :] + (ci[:, None] * stride_wi + (r * stride_wr + s * stride_ws)),
                        mask=ci_ok[:, None], other=0.0)                        # [BLOCK_K, BLOCK_N]
            if DOT_IN_FP32:  # interpreter only: its tl.dot multiplies bf16 bit patterns as ints
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc_dtype)
    else:
        taps = nth * ntw
        red = CI * taps
        n_iter = tl.where(tile_live, (red + BLOCK_K - 1) // BLOCK_K, 0)
        taps1 = tl.maximum(taps, 1)
        ntw1 = tl.maximum(ntw, 1)
        for it in range(0, n_iter):
            kk = it * BLOCK_K + offs_k                # [BLOCK_K] reduction index (i, th, tw)
            k_ok = kk < red
            ci = kk // taps1
            tap = kk - ci * taps
            th = tap // ntw1
            tw = tap - th * ntw
            hs = hs0[:, None] + (bh * th)[None, :]    # [BLOCK_M, BLOCK_K]
            ws = ws0[:, None] + (bw * tw)[None, :]
            ok = (m_ok[:, None] & k_ok[None, :]) & ((hs >= 0) & (hs < HS)) & ((ws >= 0) & (ws < WS))
            a_ptrs = src_img[:, None] + (ci[None, :] * stride_sc + hs * stride_sh + ws * stride_sw)
            if SRC_PIX_FAST:
                a = tl.trans(tl.load(tl.trans(a_ptrs), mask=tl.trans(ok), other=0.0))
            else:
                a = tl.load(a_ptrs, mask=ok, other=0.0)  # [BLOCK_M, BLOCK_K]
            r = r0h + rsh * th
            s = r0w + rsw * tw
            b = tl.load(w_base[None, :] + (ci * stride_wi + r * stride_wr + s * stride_ws)[:, None],
                        mask=k_ok[:, None], other=0.0)    # [BLOCK_K, BLOCK_N]
            if DOT_IN_FP32:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc_dtype)

    # Epilogue: z = acc (+ bias); preact <- z; dst <- act(z).
    hd = d0h + d1h * jh                               # [BLOCK_M] dst pixel
    wd = d0w + d1w * jw
    n_ok = offs_n < CO
    ch = g * CO + offs_n                              # [BLOCK_N] dst channel
    z = acc
    if HAS_BIAS:
        z += tl.load(bias_ptr + (g * CO + cols) * stride_bias).to(acc_dtype)[None, :]
    if HAS_PREACT:
        p_ptrs = (preact_ptr + (n_img * stride_pn + hd * stride_ph + wd * stride_pw)[:, None]
                  + (ch * stride_pc)[None, :])
        zp = z.to(preact_ptr.dtype.element_ty)
        if DST_PIX_FAST:
            tl.store(tl.trans(p_ptrs), tl.trans(zp), mask=n_ok[:, None] & m_ok[None, :])
        else:
            tl.store(p_ptrs, zp, mask=m_ok[:, None] & n_ok[None, :])
    y = _activation(z, ACTIVATION).to(dst_ptr.dtype.element_ty)  # [BLOCK_M, BLOCK_N]
    d_ptrs = (dst_ptr + (n_img * stride_dn + hd * stride_dh + wd * stride_dw)[:, None]
              + (ch * stride_dc)[None, :])
    if DST_PIX_FAST:
        tl.store(tl.trans(d_ptrs), tl.trans(y), mask=n_ok[:, None] & m_ok[None, :])
    else:
        tl.store(d_ptrs, y, mask=m_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------------
# Weight-gradient kernel
# ----------------------------------------------------------------------------------------

@triton.autotune(configs=_WGRAD_CONFIGS,
                 key=["CO", "CI", "R", "S", "chunk", "TAPS_OUTER", "X_PIX_FAST"],
                 prune_configs_by={"early_config_prune": _prune_wgrad_configs})
@triton.jit
def _conv2d_wgrad_kernel(
    dy_ptr, x_ptr, part_ptr,
    H, W, OH, OW, CI, CO, R, S,
    sH, sW, pH, pW, dH, dW, P, chunk, g0,
    stride_yn, stride_yc, stride_yh, stride_yw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_qs, stride_qk, stride_qc, stride_qr, stride_qw,
    TAPS_OUTER: tl.constexpr, DY_PIX_FAST: tl.constexpr, X_PIX_FAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # part[split, g*CO + k, c, r, s] = sum over pixels p in [split*chunk, +chunk) of
    #     dy[n, g*CO + k, oh, ow] * x[n, g*CI + c, oh*sH - pH + r*dH, ow*sW - pW + s*dW]
    # rows: k < CO (= Kg); columns: TAPS_OUTER: c of one tap (r, s); else flat (c, r, s).
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    pid = tl.program_id(0)
    split = tl.program_id(1)
    g = g0 + tl.program_id(2)
    num_pid_m = (CO + BLOCK_M - 1) // BLOCK_M  # (GROUP_M unused: the configs are shared)
    pid_m = pid % num_pid_m      # row tiles fastest: neighbouring programs share x columns
    pid_n = pid // num_pid_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] out channel k
    ar_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)                    # [BLOCK_K] pixel within the step
    if INT64_OFFSETS:
        g = g.to(tl.int64)
        split = split.to(tl.int64)
        offs_m = offs_m.to(tl.int64)
        ar_n = ar_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    rows = offs_m % CO
    dy_rows = dy_ptr + (g * CO + rows) * stride_yc   # [BLOCK_M] pointers
    x_grp = x_ptr + g * CI * stride_xc
    if TAPS_OUTER:
        n_cb = (CI + BLOCK_N - 1) // BLOCK_N
        tap = pid_n // n_cb
        r = tap // S
        s = tap - r * S
        c = (pid_n - tap * n_cb) * BLOCK_N + ar_n    # [BLOCK_N]
        col_ok = c < CI
        c = c % CI
        x_cols = c * stride_xc                       # [BLOCK_N]
        q_cols = c * stride_qc + r * stride_qr + s * stride_qw
        rdh = r * dH
        sdw = s * dW
    else:
        RS = R * S
        j = pid_n * BLOCK_N + ar_n                   # [BLOCK_N] flat (c, r, s)
        col_ok = j < CI * RS
        j = j % (CI * RS)
        c = j // RS
        t = j - c * RS
        r = t // S
        s = t - r * S
        rdh = r * dH                                 # [BLOCK_N]
        sdw = s * dW
        x_cols = c * stride_xc + rdh * stride_xh + sdw * stride_xw
        q_cols = c * stride_qc + r * stride_qr + s * stride_qw

    OHW = OH * OW
    lo = split * chunk
    hi = tl.minimum(lo + chunk, P)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, acc_dtype)  # [BLOCK_M, BLOCK_N]
    for p0 in range(lo, hi, BLOCK_K):
        p = p0 + offs_k                              # [BLOCK_K] pixel (n, oh, ow)
        p_ok = p < hi
        n_img = p // OHW
        q = p - n_img * OHW
        oh = q // OW
        ow = q - oh * OW
        y_pix = n_img * stride_yn + oh * stride_yh + ow * stride_yw  # [BLOCK_K]
        if DY_PIX_FAST:
            # [BLOCK_M, BLOCK_K]
            a = tl.load(dy_rows[:, None] + y_pix[None, :], mask=p_ok[None, :], other=0.0)
        else:
            a = tl.trans(tl.load(dy_rows[None, :] + y_pix[:, None], mask=p_ok[:, None], other=0.0))
        h0 = oh * sH - pH                            # [BLOCK_K]
        w0 = ow * sW - pW
        if TAPS_OUTER:
            hs = h0 + rdh
            ws = w0 + sdw
            ok = p_ok & (hs >= 0) & (hs < H) & (ws >= 0) & (ws < W)   # [BLOCK_K]
            x_pix = x_grp + n_img * stride_xn + hs * stride_xh + ws * stride_xw  # [BLOCK_K] pointers
            if X_PIX_FAST:
                b = tl.trans(tl.load(x_pix[None, :] + x_cols[:, None], mask=ok[None, :], other=0.0))
            else:
                # [BLOCK_K, BLOCK_N]
                b = tl.load(x_pix[:, None] + x_cols[None, :], mask=ok[:, None], other=0.0)
        else:
            hs = h0[:, None] + rdh[None, :]          # [BLOCK_K, BLOCK_N]
            ws = w0[:, None] + sdw[None, :]
            ok = p_ok[:, None] & ((hs >= 0) & (hs < H)) & ((ws >= 0) & (ws < W))
            x_pix = x_grp + (n_img * stride_xn + h0 * stride_xh + w0 * stride_xw)  # [BLOCK_K] pointers
            b_ptrs = x_pix[:, None] + x_cols[None, :]
            if X_PIX_FAST:
                b = tl.trans(tl.load(tl.trans(b_ptrs), mask=tl.trans(ok), other=0.0))
            else:
                b = tl.load(b_ptrs, mask=ok, other=0.0)  # [BLOCK_K, BLOCK_N]
        if DOT_IN_FP32:  # interpreter only: its tl.dot multiplies bf16 bit patterns as ints
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc_dtype)

    mask = (offs_m < CO)[:, None] & col_ok[None, :]
    q_ptrs = part_ptr + split * stride_qs + ((g * CO + offs_m) * stride_qk)[:, None] + q_cols[None, :]
    tl.store(q_ptrs, acc.to(part_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------
# Epilogue backward: dz = dy * act'(saved), dbias = sum of dz over n, h, w
# ----------------------------------------------------------------------------------------

@triton.jit
def _conv2d_bias_bwd_kernel(
    dy_ptr, saved_ptr, dz_ptr, part_ptr,
    K, OW, OHW, P, chunk,
    stride_yn, stride_yc, stride_yh, stride_yw,
    stride_sn, stride_sc, stride_sh, stride_sw,
    stride_zn, stride_zc, stride_zh, stride_zw,
    stride_qs, stride_qk,
    HAS_SAVED: tl.constexpr, HAS_DZ: tl.constexpr, HAS_DBIAS: tl.constexpr,
    ACTIVATION: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    ACC_FP64: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Program (cb, split) owns channels [cb*BLOCK_C, +BLOCK_C) and pixels [split*chunk, +chunk).
    # The tile is [BLOCK_P, BLOCK_C] (channels fastest) for channels_last tensors and
    # [BLOCK_C, BLOCK_P] (pixels fastest) otherwise.
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    cb = tl.program_id(0)
    split = tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)     # [BLOCK_C]
    ar_p = tl.arange(0, BLOCK_P)                 # [BLOCK_P]
    if INT64_OFFSETS:
        split = split.to(tl.int64)
        c = c.to(tl.int64)
        ar_p = ar_p.to(tl.int64)
    c_ok = c < K
    lo = split * chunk
    hi = tl.minimum(lo + chunk, P)
    if CHANNELS_LAST:
        cv = c[None, :]                          # [1, BLOCK_C]
        c_okv = c_ok[None, :]
        acc = tl.zeros([BLOCK_P, BLOCK_C], acc_dtype)
    else:
        cv = c[:, None]                          # [BLOCK_C, 1]
        c_okv = c_ok[:, None]
        acc = tl.zeros([BLOCK_C, BLOCK_P], acc_dtype)
    for p0 in range(lo, hi, BLOCK_P):
        p = p0 + ar_p
        n = p // OHW
        q = p - n * OHW
        oh = q // OW
        ow = q - oh * OW
        if CHANNELS_LAST:
            n = n[:, None]                       # [BLOCK_P, 1]
            oh = oh[:, None]
            ow = ow[:, None]
            mask = (p < hi)[:, None] & c_okv     # [BLOCK_P, BLOCK_C]
        else:
            n = n[None, :]                       # [1, BLOCK_P]
            oh = oh[None, :]
            ow = ow[None, :]
            mask = c_okv & (p < hi)[None, :]     # [BLOCK_C, BLOCK_P]
        dy = tl.load(dy_ptr + (n * stride_yn + cv * stride_yc + oh * stride_yh + ow * stride_yw),
                     mask=mask, other=0.0).to(acc_dtype)
        if HAS_SAVED:
            sv = tl.load(saved_ptr + (n * stride_sn + cv * stride_sc + oh * stride_sh + ow * stride_sw),
                         mask=mask, other=0.0).to(acc_dtype)
        else:
            sv = dy
        dz = _activation_grad(dy, sv, ACTIVATION)
        if HAS_DZ:
            tl.store(dz_ptr + (n * stride_zn + cv * stride_zc + oh * stride_zh + ow * stride_zw),
                     dz.to(dz_ptr.dtype.element_ty), mask=mask)
        if HAS_DBIAS:
            acc += tl.where(mask, dz, 0.0)
    if HAS_DBIAS:
        if CHANNELS_LAST:
            tot = tl.sum(acc, axis=0)            # [BLOCK_C]
        else:
            tot = tl.sum(acc, axis=1)
        tl.store(part_ptr + split * stride_qs + c * stride_qk, tot.to(part_ptr.dtype.element_ty), mask=c_ok)


# ----------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------

def _check_activation(activation):
    if activation is None:
        return "none"
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS} (or None), got {activation!r}")
    return activation


def _check_tensor(name, t, ndim, what):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def _check_output(name, t):
    """An output must not broadcast (a zero stride on a dimension of size > 1)."""
    if any(st == 0 and sz > 1 for sz, st in zip(t.shape, t.stride())):
        raise ValueError(f"{name} must not have a zero stride (a broadcast view), got strides {t.stride()}")


def _check_same_dtype(name, t, ref_name, ref):
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")


def _pair(name, v, lo):
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list, torch.Size)) or len(v) != 2
            or any(isinstance(e, bool) or not isinstance(e, int) for e in v)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if min(v) < lo:
        raise ValueError(f"{name} must be >= {lo}, got {tuple(v)}")
    return int(v[0]), int(v[1])


def _geometry(x_name, x_shape, w_name, weight, o_name, o_shape, stride, padding, dilation, groups):
    """Checks the forward geometry: x_shape [N, C, H, W] (input of the forward conv), weight
    [K, C/groups, R, S], o_shape [N, K, OH, OW] (its output). OH must be a size torch can
    give: OH = floor((H + pH + pB - dH*(R - 1) - 1) / sH) + 1 for a bottom padding pB from
    pH - max(sH, dH) + 1 (conv_transpose2d's largest output_padding) to pH (to pH + 1 at
    stride 1: odd "same" padding); the same for W."""
    sH, sW = _pair("stride", stride, 1)
    pH, pW = _pair("padding", padding, 0)
    dH, dW = _pair("dilation", dilation, 1)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    N, C, H, W = x_shape
    K, Cg, R, S = weight.shape
    if C % groups or K % groups:
        raise ValueError(f"in channels {C} ({x_name}.shape[1]) and out channels {K} ({w_name}.shape[0]) "
                         f"must be divisible by groups={groups}")
    if Cg != C // groups:
        raise ValueError(f"{w_name} must be [K, C/groups={C // groups}, R, S] for {x_name} of "
                         f"{C} channels and groups={groups}, got {tuple(weight.shape)}")
    if R < 1 or S < 1 or H < 1 or W < 1:
        raise ValueError(f"{w_name} {tuple(weight.shape)} and {x_name} {tuple(x_shape)} must have "
                         f"non-empty kernel and image sizes")
    if tuple(o_shape[:2]) != (N, K):
        raise ValueError(f"{o_name} must be [{N}, {K}, OH, OW] (N of {x_name}, K of {w_name}), "
                         f"got {tuple(o_shape)}")
    OH, OW = o_shape[2], o_shape[3]
    for axis, size, out, k, s, p, d in (("H", H, OH, R, sH, pH, dH), ("W", W, OW, S, sW, pW, dW)):
        top = p + (s == 1)  # largest bottom padding
        lo = max((size + 2 * p - d * (k - 1) - max(s, d)) // s + 1, 1)  # pB = p - max(s, d) + 1
        hi = (size + p + top - d * (k - 1) - 1) // s + 1
        if not lo <= out <= hi:
            raise ValueError(f"{o_name} has {axis} size {out}, but {x_name} of {axis} size {size}, kernel "
                             f"{k}, stride {s}, padding {p}, dilation {d} give {lo}..{hi} "
                             f"(bottom/right padding from {p - max(s, d) + 1} to {top})")
    return (N, C, H, W, K, Cg, R, S, OH, OW), (sH, sW), (pH, pW), (dH, dW)


def _eff_stride(t, dim):
    return t.stride(dim) if t.shape[dim] > 1 else float("inf")


def _pix_fast(t):
    """True when t's pixels are closer in memory than its channels (NCHW-like): tiles over
    it are then loaded with the pixel axis fastest."""
    return min(_eff_stride(t, 2), _eff_stride(t, 3)) < _eff_stride(t, 1)


def _needs_int64(*tensors, extra=0):
    """True when an element offset (or a product like a pixel index, passed as extra) may
    not fit in int32; doubling leaves room for taps hanging over the padding (formed, then
    masked) and for tile lanes past the edges."""
    worst = extra
    for t in tensors:
        if t is None:
            continue
        extent = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)
        worst = max(worst, t.numel(), extent)
    return 2 * worst + 4096 > _INT32_MAX


def _splits(P, tiles, partial_elems, device, elem_bytes):
    """(splits, chunk) of a reduction over P pixels (_launch.split_reduction)."""
    return _split_reduction(P, tiles, partial_elems, device, elem_bytes, _MIN_SPLIT_PIXELS,
                            _MAX_PARTIAL_BYTES)


def _launch_conv(src, weight, dst, bias, preact, activation, transposed,
                 N, HS, WS, HD, WD, CI, CO, R, S, groups, stride, padding, dilation):
    """The implicit-GEMM kernel over dst [N, groups*CO, HD, WD] from src [N, groups*CI, HS, WS]."""
    (sH, sW), (pH, pW), (dH, dW) = stride, padding, dilation
    taps_outer = CI >= _TAPS_MIN_CHANNELS
    if (src.device.type == "cuda" and src.element_size() == 2 and taps_outer
            and weight.stride(1) != 1 and weight.shape[1] > 1):
        # A weight tile of one tap has no unit stride in the [K, C/groups, R, S] layout: its
        # 2-byte elements would be loaded one by one, which keeps Triton from pipelining them
        # (cp.async needs >= 4 bytes). Repacked channels-innermost, the tile rows are
        # contiguous (a copy of the weight: callers that keep the weight channels_last skip it).
        weight = weight.contiguous(memory_format=torch.channels_last)
    if transposed:  # weight[g*CI + i, j]: i (reduced) along dim 0
        phases = sH * sW
        if phases > _MAX_GRID_Z:
            raise ValueError(f"stride ({sH}, {sW}) is too large: sH * sW must be <= {_MAX_GRID_Z}")
        m_max = N * triton.cdiv(HD, sH) * triton.cdiv(WD, sW)
        stride_wi, stride_wo = weight.stride(0), weight.stride(1)
        stride_wg = CI * weight.stride(0)
    else:           # weight[g*CO + j, i]
        phases = 1
        m_max = N * HD * WD
        stride_wi, stride_wo = weight.stride(1), weight.stride(0)
        stride_wg = CO * weight.stride(0)
    p_strides = preact.stride() if preact is not None else (0, 0, 0, 0)
    int64 = _needs_int64(src, weight, dst, bias, preact, extra=m_max + N * (HD + sH) * (WD + sW))

    def grid(meta):
        return (triton.cdiv(m_max, meta["BLOCK_M"]) * triton.cdiv(CO, meta["BLOCK_N"]), phases, ng)

    for g0 in range(0, groups, _MAX_GRID_Z):  # grid axis 2 holds at most 65535 groups
        ng = min(_MAX_GRID_Z, groups - g0)
        _conv2d_kernel[grid](
            src, weight, dst, bias, preact,
            N, HS, WS, HD, WD, CI, CO, R, S,
            sH, sW, pH, pW, dH, dW, math.gcd(sH, dH), math.gcd(sW, dW), g0, m_max,
            *src.stride(),
            stride_wg, stride_wi, stride_wo, weight.stride(2), weight.stride(3),
            *dst.stride(),
            bias.stride(0) if bias is not None else 0,
            *p_strides,
            TRANSPOSED=transposed, TAPS_OUTER=taps_outer,
            SRC_PIX_FAST=_pix_fast(src), DST_PIX_FAST=_pix_fast(dst),
            HAS_BIAS=bias is not None, HAS_PREACT=preact is not None, ACTIVATION=activation,
            INPUT_PRECISION=_input_precision(src.dtype, src.device),
            ACC_FP64=src.dtype == torch.float64, INT64_OFFSETS=int64,
            DOT_IN_FP32=_INTERPRET and src.dtype == torch.bfloat16,
        )


def conv2d_forward(x, weight, out, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                   activation="none", preact=None):
    """out = act(conv2d(x, weight) + bias), as torch.nn.functional.conv2d followed by act.

    Args:
        x: [N, C, H, W] float16, bfloat16, float32 or float64, any strides.
        weight: [K, C/groups, R, S], x's dtype, any strides.
        out: [N, K, OH, OW] preallocated, any float dtype (the result is cast), any non-zero
            strides; OH = floor((H + pH + pB - dH*(R - 1) - 1) / sH) + 1 for some implied
            bottom padding pB from pH - max(sH, dH) + 1 (conv_transpose2d's output_padding)
            to pH (pH + 1 at stride 1: odd "same" padding); the same for OW.
            Must not overlap the inputs.
        bias: None or [K], added before the activation.
        stride, padding, dilation: ints or (H, W) pairs; padding is the top/left padding.
        groups: divides C and K (C == groups: depthwise).
        activation: "none" (or None), "relu", "gelu" (exact erf form), "tanh", "sigmoid".
        preact: None or [N, K, OH, OW] preallocated; receives conv + bias before the
            activation (what conv2d_backward_bias needs for gelu).

    Returns:
        out.

    Raises:
        TypeError: a non-tensor argument, non-float or mismatched dtypes, non-int geometry.
        ValueError: shapes that do not match, bad geometry, an output with a zero stride,
            tensors on different devices, an unknown activation.
        RuntimeError: CPU tensors without TRITON_INTERPRET=1 set at import.
    """
    activation = _check_activation(activation)
    _check_tensor("x", x, 4, "[N, C, H, W]")
    _check_tensor("weight", weight, 4, "[K, C/groups, R, S]")
    _check_tensor("out", out, 4, "[N, K, OH, OW]")
    _check_same_dtype("weight", weight, "x", x)
    dims, s, p, d = _geometry("x", x.shape, "weight", weight, "out", out.shape, stride, padding, dilation,
                              groups)
    N, C, H, W, K, Cg, R, S, OH, OW = dims
    if bias is not None:
        _check_tensor("bias", bias, 1, f"[{K}]")
        if bias.shape[0] != K:
            raise ValueError(f"bias must be [{K}] (K of weight), got {tuple(bias.shape)}")
    _check_output("out", out)
    if preact is not None:
        _check_tensor("preact", preact, 4, "[N, K, OH, OW]")
        if preact.shape != out.shape:
            raise ValueError(f"preact must be {list(out.shape)} like out, got {tuple(preact.shape)}")
        _check_output("preact", preact)
    _check_devices([("x", x), ("weight", weight), ("out", out), ("bias", bias), ("preact", preact)])
    if N == 0:
        return out
    _launch_conv(x, weight, out, bias, preact, activation, False,
                 N, H, W, OH, OW, Cg, K // groups, R, S, groups, s, p, d)
    return out


def conv2d_backward_input(grad_out, weight, grad_in, stride, padding, dilation, groups, bias=None):
    """grad_in = the input gradient of conv2d (+ bias per channel): a gather, no atomics.

    Also conv_transpose2d's forward: grad_out plays its input, grad_in its output, bias its
    bias. Every element of grad_in is written (0, or bias, where no tap reaches).

    Args:
        grad_out: [N, K, OH, OW] float16, bfloat16, float32 or float64, any strides.
        weight: [K, C/groups, R, S], grad_out's dtype, any strides.
        grad_in: [N, C, H, W] preallocated, any float dtype, non-zero strides; the forward
            conv's input. (OH, OW) must be an output size of the forward conv for (H, W), as
            in conv2d_forward. Must not overlap the inputs.
        stride, padding, dilation, groups: the forward conv's (padding: top/left).
        bias: None or [C], added to every pixel of channel c.

    Returns:
        grad_in.

    Raises:
        TypeError / ValueError / RuntimeError: as conv2d_forward.
    """
    _check_tensor("grad_out", grad_out, 4, "[N, K, OH, OW]")
    _check_tensor("weight", weight, 4, "[K, C/groups, R, S]")
    _check_tensor("grad_in", grad_in, 4, "[N, C, H, W]")
    _check_same_dtype("weight", weight, "grad_out", grad_out)
    dims, s, p, d = _geometry("grad_in", grad_in.shape, "weight", weight, "grad_out", grad_out.shape,
                              stride, padding, dilation, groups)
    N, C, H, W, K, Cg, R, S, OH, OW = dims
    if bias is not None:
        _check_tensor("bias", bias, 1, f"[{C}]")
        if bias.shape[0] != C:
            raise ValueError(f"bias must be [{C}] (C of grad_in), got {tuple(bias.shape)}")
    _check_output("grad_in", grad_in)
    _check_devices([("grad_out", grad_out), ("weight", weight), ("grad_in", grad_in), ("bias", bias)])
    if N == 0:
        return grad_in
    _launch_conv(grad_out, weight, grad_in, bias, None, "none", True,
                 N, OH, OW, H, W, K // groups, Cg, R, S, groups, s, p, d)
    return grad_in


def conv2d_backward_weight(grad_out, x, grad_weight, stride, padding, dilation, groups):
    """grad_weight = the weight gradient of conv2d: per weight tile a reduction over
    N*OH*OW pixels, split into fp32 (fp64) partials summed in a fixed order when there are
    too few tiles to fill the GPU. Deterministic.

    conv_transpose2d's weight gradient is this with grad_out = its input, x = its grad_out.

    Args:
        grad_out: [N, K, OH, OW] float16, bfloat16, float32 or float64, any strides.
        x: [N, C, H, W], grad_out's dtype, any strides.
        grad_weight: [K, C/groups, R, S] preallocated, any float dtype, non-zero strides;
            fully written. (OH, OW) as in conv2d_forward.
        stride, padding, dilation, groups: the forward conv's (padding: top/left).

    Returns:
        grad_weight.

    Raises:
        TypeError / ValueError / RuntimeError: as conv2d_forward.
    """
    _check_tensor("grad_out", grad_out, 4, "[N, K, OH, OW]")
    _check_tensor("x", x, 4, "[N, C, H, W]")
    _check_tensor("grad_weight", grad_weight, 4, "[K, C/groups, R, S]")
    _check_same_dtype("x", x, "grad_out", grad_out)
    dims, (sH, sW), (pH, pW), (dH, dW) = _geometry("x", x.shape, "grad_weight", grad_weight, "grad_out",
                                                   grad_out.shape, stride, padding, dilation, groups)
    N, C, H, W, K, Cg, R, S, OH, OW = dims
    _check_output("grad_weight", grad_weight)
    _check_devices([("grad_out", grad_out), ("x", x), ("grad_weight", grad_weight)])
    if N == 0:
        return grad_weight.zero_()
    Kg = K // groups
    P = N * OH * OW
    taps_outer = Cg >= _TAPS_MIN_CHANNELS
    cols = R * S * triton.cdiv(Cg, 64) if taps_outer else triton.cdiv(Cg * R * S, 64)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    splits, chunk = _splits(P, groups * triton.cdiv(Kg, 64) * cols, grad_weight.numel(), x.device,
                            acc_dtype.itemsize)
    if splits == 1:
        part, q_strides = grad_weight, (0, *grad_weight.stride())
    else:
        part = torch.empty((splits, K, Cg, R, S), dtype=acc_dtype, device=x.device)
        q_strides = part.stride()
    int64 = _needs_int64(grad_out, x, grad_weight, part, extra=P + chunk)

    def grid(meta):
        if taps_outer:
            n_tiles = R * S * triton.cdiv(Cg, meta["BLOCK_N"])
        else:
            n_tiles = triton.cdiv(Cg * R * S, meta["BLOCK_N"])
        return (triton.cdiv(Kg, meta["BLOCK_M"]) * n_tiles, splits, ng)

    for g0 in range(0, groups, _MAX_GRID_Z):
        ng = min(_MAX_GRID_Z, groups - g0)
        _conv2d_wgrad_kernel[grid](
            grad_out, x, part,
            H, W, OH, OW, Cg, Kg, R, S,
            sH, sW, pH, pW, dH, dW, P, chunk, g0,
            *grad_out.stride(), *x.stride(), *q_strides,
            TAPS_OUTER=taps_outer, DY_PIX_FAST=_pix_fast(grad_out), X_PIX_FAST=_pix_fast(x),
            INPUT_PRECISION=_input_precision(x.dtype, x.device),
            ACC_FP64=x.dtype == torch.float64, INT64_OFFSETS=int64,
            DOT_IN_FP32=_INTERPRET and x.dtype == torch.bfloat16,
        )
    if splits > 1:
        grad_weight.copy_(part.sum(0))  # fixed-order reduction of the partials: deterministic
    return grad_weight


def conv2d_backward_bias(grad_out, saved, activation, dz=None, dbias=None):
    """dz = grad_out * act'(saved) and dbias[k] = sum over n, oh, ow of dz[n, k, oh, ow].

    Args:
        grad_out: [N, K, OH, OW] float16, bfloat16, float32 or float64, any strides
            (stride 0 broadcasts work).
        saved: [N, K, OH, OW]; the forward output for "relu", "tanh", "sigmoid", the
            pre-activation for "gelu"; not read (may be None) for "none".
        activation: "none" (or None), "relu", "gelu", "tanh", "sigmoid".
        dz: None or [N, K, OH, OW] preallocated, non-zero strides (may alias grad_out);
            None: not stored (dbias is still computed from it).
        dbias: None or [K] preallocated; accumulated in fp32 (fp64 if any operand is fp64),
            in partial sums over pixel ranges added in a fixed order: deterministic.

    Returns:
        (dz, dbias).

    Raises:
        TypeError / ValueError / RuntimeError: as conv2d_forward; also saved None for an
        activation that needs it.
    """
    activation = _check_activation(activation)
    _check_tensor("grad_out", grad_out, 4, "[N, K, OH, OW]")
    shape = tuple(grad_out.shape)
    N, K, OH, OW = shape
    if saved is None:
        if activation != "none":
            raise ValueError(f"saved is required for activation {activation!r}")
    else:
        _check_tensor("saved", saved, 4, "[N, K, OH, OW]")
        if tuple(saved.shape) != shape:
            raise ValueError(f"saved must be {list(shape)} like grad_out, got {tuple(saved.shape)}")
    if dz is not None:
        _check_tensor("dz", dz, 4, "[N, K, OH, OW]")
        if tuple(dz.shape) != shape:
            raise ValueError(f"dz must be {list(shape)} like grad_out, got {tuple(dz.shape)}")
        _check_output("dz", dz)
    if dbias is not None:
        _check_tensor("dbias", dbias, 1, f"[{K}]")
        if dbias.shape[0] != K:
            raise ValueError(f"dbias must be [{K}] (grad_out.shape[1]), got {tuple(dbias.shape)}")
        _check_output("dbias", dbias)
    _check_devices([("grad_out", grad_out), ("saved", saved), ("dz", dz), ("dbias", dbias)])
    if K == 0 or (dz is None and dbias is None):
        return dz, dbias
    P = N * OH * OW
    if P == 0:
        if dbias is not None:
            dbias.zero_()
        return dz, dbias
    has_saved = saved is not None and activation != "none"
    acc_fp64 = any(t is not None and t.dtype == torch.float64 for t in (grad_out, saved, dz, dbias))
    acc_dtype = torch.float64 if acc_fp64 else torch.float32
    cl = not _pix_fast(dz if dz is not None else grad_out)
    if _INTERPRET:
        block_p, block_c, warps = 16, 16, 4
    else:
        block_p, block_c, warps = (32, 64, 4) if cl else (128, 8, 4)
    c_blocks = triton.cdiv(K, block_c)
    if dbias is not None:
        splits, chunk = _splits(P, c_blocks, K, grad_out.device, acc_dtype.itemsize)
    else:  # no reduction: just cut the pixels into ranges of a few tiles each
        chunk = max(block_p * (1 if _INTERPRET else 8),
                    triton.cdiv(triton.cdiv(P, _MAX_GRID_Z), block_p) * block_p)
        splits = triton.cdiv(P, chunk)
    if dbias is not None and splits == 1:
        part, q_strides = dbias, (0, dbias.stride(0))
    elif dbias is not None:
        part = torch.empty((splits, K), dtype=acc_dtype, device=grad_out.device)
        q_strides = part.stride()
    else:
        part, q_strides = None, (0, 0)
    s = saved if has_saved else grad_out
    z = dz if dz is not None else grad_out
    _conv2d_bias_bwd_kernel[(c_blocks, splits)](
        grad_out, s, dz, part,
        K, OW, OH * OW, P, chunk,
        *grad_out.stride(), *s.stride(), *z.stride(), *q_strides,
        HAS_SAVED=has_saved, HAS_DZ=dz is not None, HAS_DBIAS=dbias is not None,
        ACTIVATION=activation, CHANNELS_LAST=cl, ACC_FP64=acc_fp64,
        INT64_OFFSETS=_needs_int64(grad_out, s, dz, part, extra=P + chunk),
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps,
    )
    if dbias is not None and splits > 1:
        dbias.copy_(part.sum(0))  # fixed-order reduction of the partials: deterministic
    return dz, dbias
