"""Triton fused softmax attention (FlashAttention-2): forward with the row log-sum-exp saved,
and the backward as a Delta preprocess, a dK/dV pass and a dQ pass. No atomics: deterministic.

Shapes (one alphabet): q [B, H, N, D], k [B, H, S, D], v [B, H, S, Dv] -> out [B, H, N, Dv],
lse [B, H, N]; mask [B, H, N, S] (an expanded view: stride 0 on broadcast dims, never copied).
Per (b, h), as torch.nn.functional.scaled_dot_product_attention:
    s_ij   = scale * q_i . k_j + bias_ij       bias: 0 / -inf for a bool mask (True = attend),
                                               the value for an additive mask (q's dtype),
                                               -inf for j > i when causal (top-left aligned,
                                               also when N != S); both may be given.
    lse_i  = log(sum_j exp(s_ij))              natural log; -inf for a fully masked row
    P_ij   = exp(s_ij - lse_i)                 (0 on a fully masked row: out = 0, no NaN)
    out_i  = sum_j P_ij * keep_ij / (1 - p) * v_j
    keep_ij = Philox4x32-10(counter = (idx lo, idx hi, 0, 0), key = (seed lo, seed hi))[0]
              >= min(floor(p * 2**32), 2**32 - 1)   (unsigned), idx = ((b*H + h)*N + i)*S + j;
              the bits of the C++ kernels and of the NumPy reference (pykernels/reference).
Backward:  Delta_i = sum_e dout_ie * out_ie,  dP_ij = (dout_i . v_j) * keep_ij / (1 - p),
           dS_ij = P_ij * (dP_ij - Delta_i),   dv_j = sum_i P_ij keep_ij / (1 - p) * dout_i,
           dq_i = scale * sum_j dS_ij k_j,      dk_j = scale * sum_i dS_ij q_i,
           dmask_ij = dS_ij (written for every element when asked: the additive mask's gradient).

Layout: every stride is passed (transposed, sliced and expanded views run without copies).
Inputs float16 / bfloat16 / float32 / float64; fp32 accumulation (fp64 for fp64) and fp32 lse
(fp64 for fp64). fp32 uses TF32 tensor cores only when torch.backends.cuda.matmul.allow_tf32
is True, like kernels/gemm.py. Head dims D, Dv from 0 to 256 (padded to a power of two >= 16
with masked loads); any N, S.

Blocking. All grids are 1-D, (b, h) slowest so that neighbouring programs share K/V in L2.
  * _attn_fwd_kernel: a program owns BLOCK_M query rows and loops over key blocks of BLOCK_N
    with the online softmax in base 2 (scale * log2(e) folded into one multiply; with an
    additive mask the scores stay in natural units and the exponent is scaled after the max
    is subtracted, so that masks of torch.finfo(dtype).min do not overflow to -inf); the
    running max is guarded so that a row with no key yet (m = -inf) gives exp2(-inf) = 0,
    never NaN. The key loop runs in two stages: blocks that are whole (j < S) and fully
    visible (causal: every j <= the block's first row) without any bounds or causal test,
    then the rest with them; blocks fully above the diagonal are skipped. Causal programs
    start with the last (longest) rows.
  * _attn_bwd_delta_kernel: Delta = rowsum(dout * out), [B*H, N] fp32 (fp64) scratch.
  * _attn_bwd_dkdv_kernel: a program owns BLOCK_N keys, holds k, v and the dk, dv
    accumulators, and loops over query blocks of BLOCK_M computing the transposed tile
    (k @ q^T, [BLOCK_N, BLOCK_M]): P^T from the saved lse, dv += P_drop^T @ dout,
    dP^T = v @ dout^T, dS^T, dk += dS^T @ q. Causal: query blocks entirely above the keys are
    skipped, the diagonal ones tested, the rest run unmasked. Rows past N and fully masked
    rows read lse = +inf, so their P is exactly 0 without a test.
  * _attn_bwd_dq_kernel: a program owns BLOCK_M query rows and loops over key blocks in the
    forward's two stages: dq += dS @ k; it also writes dmask (dS, zeros where masked, the
    skipped causal blocks filled with zeros).
  The dropout keep bits are recomputed from the counter in every pass (nothing is stored).
BLOCK_* and num_warps / num_stages come from autotuning over Hopper configs (blocks 64 / 128;
the backward's inner step also 32; 4 / 8 warps; 2-4 stages) keyed on the padded head dims,
the flags and the sequence lengths rounded up to powers of two, pruned by estimates of shared
memory and of registers per thread (calibrated on ptxas spill reports for sm_90a, see
_EPT_LIMIT) to at most 6 per key; smaller fallbacks where none fits (fp32 / fp64 at large D).
Under the interpreter (TRITON_INTERPRET=1 at import) one small config per kernel is used
(BLOCK_M != BLOCK_N, so that the causal stages meet off the block grid in the tests), and
bf16 tiles are widened to fp32 before tl.dot (the interpreter's dot multiplies bf16 bit
patterns).

GPU notes (from compiling for sm_90a offline, not measured): the dots lower to wgmma (fp16 /
bf16 / tf32; fp64 to mma.sync) and K/V tiles load with cp.async when the head dim is the
unit-stride axis. Dropout costs one Philox4x32-10 (10 rounds, 2 mulhi each) per score
element and pass, since the counter layout gives every element its own counter; masks cost
a [BLOCK_M, BLOCK_N] load with per-element addresses. Both push the autotuner to smaller
tiles.

Test (CPU, interpreter):  TRITON_INTERPRET=1 python -m pytest tests/test_attention.py
Benchmark (GPU):          python -m pykernels bench attention
"""

import math

import torch
import triton
import triton.language as tl

from ._launch import INTERPRET as _INTERPRET
from ._launch import check_devices as _check_devices
from .gemm import _input_precision

__all__ = ["attention_forward", "attention_backward"]


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT32_MAX = 2**31 - 1
_MAX_HEAD_DIM = 256
_SMEM_BYTES = 227 * 1024   # H100/H200 shared memory available to one block

_LOG2E = 1.4426950408889634

# Philox4x32-10 constants (Random123).
_PHILOX_M0 = tl.constexpr(0xD2511F53)
_PHILOX_M1 = tl.constexpr(0xCD9E8D57)
_PHILOX_W0 = tl.constexpr(0x9E3779B9)
_PHILOX_W1 = tl.constexpr(0xBB67AE85)


# ----------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------

def _config(bm, bn, stages, warps):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_stages=stages, num_warps=warps)


if _INTERPRET:
    # One config per kernel, no tuning; BLOCK_M != BLOCK_N so that the causal stage
    # boundaries do not fall on a common block grid in the small test problems.
    _FWD_CONFIGS = [_config(32, 16, 1, 4)]
    _DKDV_CONFIGS = [_config(16, 32, 1, 4)]
    _DQ_CONFIGS = [_config(32, 16, 1, 4)]
    _DELTA_BLOCK_M = 16
else:
    # Candidates in order of preference (stages 3 first, big tiles first); _prune keeps the
    # first _MAX_CONFIGS that fit. dK/dV: BLOCK_N keys per program, BLOCK_M queries per
    # step; dQ: BLOCK_M queries per program, BLOCK_N keys per step.
    def _candidates(tiles):
        return [_config(bm, bn, st, wa) for st in (3, 2, 4) for bm, bn in tiles for wa in (8, 4)]

    _FWD_CONFIGS = _candidates([(128, 128), (128, 64), (64, 128), (64, 64)])
    _DKDV_CONFIGS = _candidates([(64, 128), (32, 128), (64, 64), (32, 64)])
    _DQ_CONFIGS = _candidates([(128, 64), (128, 32), (64, 64), (64, 32)])
    _DELTA_BLOCK_M = 64
# When nothing above fits (fp32 / fp64 at large head dims), the first of these that does.
_FALLBACK = [_config(64, 32, 2, 8), _config(32, 32, 2, 8), _config(32, 32, 1, 8),
             _config(32, 16, 1, 8), _config(16, 32, 1, 4), _config(16, 16, 1, 4)]
_MAX_CONFIGS = 6           # configs timed per autotuning key


def _np2(n):
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def _bucket(n):
    """The sequence length as an autotuning key: rounded up to a power of two (>= 64)."""
    return max(64, triton.next_power_of_2(max(int(n), 1)))


# Register model: live tile elements per thread (fp32 units), from the accumulators, the
# score tiles (x2 in the backward: P and dP), per score element +2 for a mask (the loaded
# tile and its 64-bit addresses), +1 for dropout (Philox state), +1 for dmask, +1 more when
# mask and dropout meet, and the streamed operand tiles (1/8 weight). Limits calibrated
# against ptxas -v for sm_90a (Triton 3.9; fp16, D 64 / 128, each of plain / mask / dropout /
# dmask, every tile and warp count of the candidates): below them nothing spilled more than
# a few bytes; above, most did. fp32 / fp64 / D 256 were only spot-checked.
_EPT_LIMIT = {"fwd": 160, "dkdv": 192, "dq": 168}


def _prune(configs, named_args, kind):
    """The configs to time: those whose shared memory (pipelined K/V or Q/dO tiles, the
    resident tiles, staging for fp32 operands) fits in 227 KiB and whose register model is
    within _EPT_LIMIT; block sizes not beyond the problem's rounded lengths unless it is
    shorter than 64; at most _MAX_CONFIGS of them, in the candidates' order. If none fits,
    the first fallback that does (else the smallest)."""
    if _INTERPRET:
        return configs
    elem = named_args["q_ptr"].element_size()
    acc_w = 2 if named_args["ACC_FP64"] else 1
    bd, bdv = named_args["BLOCK_D"], named_args["BLOCK_DV"]
    n_len, s_len = named_args["N_BUCKET"], named_args["S_BUCKET"]
    masked = named_args["MASK_KIND"] != 0
    dropout = bool(named_args["DROPOUT"])
    extra = 2.0 * masked + 1.0 * dropout + 1.0 * bool(named_args["HAS_DMASK"]) + 1.0 * (masked and dropout)
    mask_elem = 1 if named_args["MASK_KIND"] == 1 else elem

    def fits(c):
        bm, bn, st = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages
        threads = 32 * c.num_warps
        scores = bm * bn
        if kind == "fwd":     # resident q [bm, bd], acc [bm, bdv]; streamed k, v [bn, .]
            smem = st * bn * (bd + bdv) * elem + bm * bd * elem
            ept = (bm * bdv * acc_w + scores * (acc_w + extra) + bn * (bd + bdv) * elem / 8) / threads
        elif kind == "dkdv":  # resident k, v [bn, .], dk, dv; streamed q, dout [bm, .]
            # (one stage still stages q, dout twice: the transposed operands)
            smem = max(st, 2) * bm * (bd + bdv) * elem + bn * (bd + bdv) * elem
            ept = ((bn * (bd + bdv)) * acc_w + 2 * scores * (acc_w + extra)
                   + bm * (bd + bdv) * elem / 8) / threads
        else:                 # dq: resident q, dout [bm, .], dq; streamed k, v [bn, .]
            smem = st * bn * (bd + bdv) * elem + bm * (bd + bdv) * elem
            ept = (bm * bd * acc_w + 2 * scores * (acc_w + extra) + bn * (bd + bdv) * elem / 8) / threads
        if masked:
            smem += (st - 1) * scores * mask_elem
        if elem == 4 and acc_w == 1:
            smem += scores * 4  # fp32 (tf32) P / dS operands are staged through shared memory
        # A wide key block on a short query block (fwd: BLOCK_N > BLOCK_M) spilled with a
        # mask or dropout at every size measured.
        odd = kind == "fwd" and bn > bm and extra > 0
        return smem <= _SMEM_BYTES and ept <= _EPT_LIMIT[kind] and not odd

    # BLOCK_M always tiles the queries (N), BLOCK_N the keys (S).
    keep = [c for c in configs if fits(c)
            and c.kwargs["BLOCK_M"] <= max(n_len, 64) and c.kwargs["BLOCK_N"] <= max(s_len, 64)]
    if not keep:
        keep = [c for c in configs if fits(c)]
    if keep:
        return keep[:_MAX_CONFIGS]
    for c in _FALLBACK:
        if fits(c):
            return [c]
    return [_FALLBACK[-1]]


# The autotuner passes the positional arguments as named_args and the keyword ones (the
# constexpr flags and head blocks) as kwargs.
def _prune_fwd(configs, named_args, **kwargs):
    return _prune(configs, {**named_args, **kwargs}, "fwd")


def _prune_dkdv(configs, named_args, **kwargs):
    return _prune(configs, {**named_args, **kwargs}, "dkdv")


def _prune_dq(configs, named_args, **kwargs):
    return _prune(configs, {**named_args, **kwargs}, "dq")


_KEY = ["N_BUCKET", "S_BUCKET", "BLOCK_D", "BLOCK_DV", "CAUSAL", "MASK_KIND", "DROPOUT", "HAS_DMASK"]


# ----------------------------------------------------------------------------------------
# Shared device helpers
# ----------------------------------------------------------------------------------------

@triton.jit
def _load2d(ptrs, ok_rows, ok_cols, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """tl.load of a 2-D tile, masked only along the axes that need it (ok_rows [R, 1],
    ok_cols [1, C]); masked elements read 0."""
    if CHECK_ROWS:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=ok_rows & ok_cols, other=0.0)
        else:
            x = tl.load(ptrs, mask=ok_rows, other=0.0)
    else:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=ok_cols, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _store2d(ptrs, x, ok_rows, ok_cols, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """tl.store of a 2-D tile, masked only along the axes that need it (as _load2d): a mask
    on a runtime head dim would keep the stores from being vectorised."""
    if CHECK_ROWS:
        if CHECK_COLS:
            tl.store(ptrs, x, mask=ok_rows & ok_cols)
        else:
            tl.store(ptrs, x, mask=ok_rows)
    else:
        if CHECK_COLS:
            tl.store(ptrs, x, mask=ok_cols)
        else:
            tl.store(ptrs, x)


@triton.jit
def _mma(a, b, acc, INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """acc + a @ b in acc's dtype."""
    if DOT_IN_FP32:  # interpreter only: its tl.dot multiplies bf16 bit patterns as ints
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)


@triton.jit
def _exp(x, NATURAL: tl.constexpr):
    """exp of a score difference: scores are kept in log2 units (scale * log2(e) folded into
    the scale: one exp2), except with an additive mask (NATURAL), which is added unscaled:
    masks of torch.finfo(dtype).min (common padding masks) would overflow to -inf times
    log2(e), turning an all-"masked" row (uniform weights in torch) into an empty one."""
    if NATURAL:
        y = tl.exp2(x * 1.4426950408889634)
    else:
        y = tl.exp2(x)
    return y


@triton.jit
def _lse_units(lse, NATURAL: tl.constexpr):
    """The saved natural-log lse in the scores' units, +inf for -inf (empty rows: P = 0)."""
    if not NATURAL:
        lse = lse * 1.4426950408889634
    return tl.where(lse == float("-inf"), float("inf"), lse)


@triton.jit
def _dropout_keep(row_lo, row_hi, cols, k0, k1, thresh):
    """The keep bits of the elements with counters idx = row + col (64-bit; row given as
    its low / high uint32 words, broadcast against cols): Philox4x32-10 with counter
    (idx lo, idx hi, 0, 0) and key (k0, k1); keep = first output word >= thresh (unsigned)."""
    c0 = row_lo + cols.to(tl.uint32)                     # wraps: carry into the high word
    c1 = row_hi + (c0 < row_lo).to(tl.uint32)
    c2 = tl.zeros_like(c0)
    c3 = tl.zeros_like(c0)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _PHILOX_M0)
        lo0 = c0 * _PHILOX_M0
        hi1 = tl.umulhi(c2, _PHILOX_M1)
        lo1 = c2 * _PHILOX_M1
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = k0 + _PHILOX_W0
        k1 = k1 + _PHILOX_W1
    return c0 >= thresh


@triton.jit
def _program_head(pid, num_blocks, H, REVERSE: tl.constexpr):
    """(b, h, block) of a 1-D grid laid out as [B*H, num_blocks]; b, h as int64."""
    bh = pid // num_blocks
    blk = pid - bh * num_blocks
    if REVERSE:
        blk = num_blocks - 1 - blk
    b = bh // H
    h = bh - b * H
    return b.to(tl.int64), h.to(tl.int64), bh.to(tl.int64), blk


@triton.jit
def _dropout_rows(bh, offs_m, N, S, seed_k0, seed_k1, drop_thresh):
    """Per query row, the counter of its element j = 0 as (lo, hi) uint32 words, and the
    key and threshold as uint32 (passed as int32 bit patterns)."""
    row = (bh * N + offs_m) * S                           # [BLOCK_M] int64
    row_lo = (row & 0xFFFFFFFF).to(tl.uint32)
    row_hi = (row >> 32).to(tl.uint32)
    k0 = seed_k0.to(tl.uint32, bitcast=True)
    k1 = seed_k1.to(tl.uint32, bitcast=True)
    thresh = drop_thresh.to(tl.uint32, bitcast=True)
    return row_lo, row_hi, k0, k1, thresh


# ----------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------

@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q,
    k_base, v_base, mask_base,
    offs_m, m_ok, offs_d, d_ok, offs_dv, dv_ok,
    lo, hi, S,
    stride_ks, stride_kd, stride_vs, stride_vd, stride_mn, stride_ms,
    qk_scale, row_lo, row_hi, k0, k1, thresh,
    CHECKED: tl.constexpr, CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
    PAD_D: tl.constexpr, PAD_DV: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Key blocks [lo, hi); CHECKED: test j < S (and j <= i when causal).
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)                       # [BLOCK_N]
        if INT64_OFFSETS:
            offs_n = offs_n.to(tl.int64)
        n_ok = offs_n < S
        kt = _load2d(k_base + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_ks,
                     d_ok[:, None], n_ok[None, :], PAD_D, CHECKED)    # [BLOCK_D, BLOCK_N]
        s = _mma(q, kt, tl.zeros((q.shape[0], BLOCK_N), acc.dtype), INPUT_PRECISION, DOT_IN_FP32)
        s = s * qk_scale                                               # [BLOCK_M, BLOCK_N] (units: _exp)
        if MASK_KIND != 0:
            mv = _load2d(mask_base + offs_m[:, None] * stride_mn + offs_n[None, :] * stride_ms,
                         m_ok[:, None], n_ok[None, :], True, CHECKED)
            if MASK_KIND == 1:
                s = tl.where(mv != 0, s, float("-inf"))
            else:
                s = s + mv.to(acc.dtype)
        if CHECKED:
            vis = n_ok[None, :]
            if CAUSAL:
                vis = vis & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))                          # [BLOCK_M]
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)           # no key yet: no NaN
        alpha = _exp(m_i - m_use, MASK_KIND == 2)
        p = _exp(s - m_use[:, None], MASK_KIND == 2)                   # [BLOCK_M, BLOCK_N]
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            keep = _dropout_keep(row_lo[:, None], row_hi[:, None], offs_n[None, :], k0, k1, thresh)
            p = tl.where(keep, p, 0.0)
        v = _load2d(v_base + offs_n[:, None] * stride_vs + offs_dv[None, :] * stride_vd,
                    n_ok[:, None], dv_ok[None, :], CHECKED, PAD_DV)   # [BLOCK_N, BLOCK_DV]
        acc = _mma(p.to(v.dtype), v, acc, INPUT_PRECISION, DOT_IN_FP32)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY,
                 prune_configs_by={"early_config_prune": _prune_fwd})
@triton.jit(do_not_specialize=["seed_k0", "seed_k1", "drop_thresh"])
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, lse_ptr,
    H, N, S, D, DV, N_BUCKET, S_BUCKET,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_mb, stride_mh, stride_mn, stride_ms,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_lb, stride_lh, stride_ln,
    qk_scale_arg: tl.float64, drop_scale_arg: tl.float64, seed_k0, seed_k1, drop_thresh,
    CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, HAS_DMASK: tl.constexpr,
    PAD_D: tl.constexpr, PAD_DV: tl.constexpr, ACC_FP64: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # out[b, h, i] = softmax_j(s_ij) (dropped) @ v, lse[b, h, i]; MASK_KIND 0 none, 1 bool, 2 additive.
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    num_m = (N + BLOCK_M - 1) // BLOCK_M
    b, h, bh, pid_m = _program_head(tl.program_id(0), num_m, H, CAUSAL)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)                           # [BLOCK_M]
    offs_d = tl.arange(0, BLOCK_D)                                     # [BLOCK_D]
    offs_dv = tl.arange(0, BLOCK_DV)                                   # [BLOCK_DV]
    if INT64_OFFSETS:
        offs_m = offs_m.to(tl.int64)
        offs_d = offs_d.to(tl.int64)
        offs_dv = offs_dv.to(tl.int64)
    m_ok = offs_m < N
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    mask_base = mask_ptr
    if MASK_KIND != 0:
        mask_base = mask_ptr + b * stride_mb + h * stride_mh
    q = _load2d(q_ptr + b * stride_qb + h * stride_qh
                + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                m_ok[:, None], d_ok[None, :], True, PAD_D)              # [BLOCK_M, BLOCK_D]
    qk_scale = tl.full([], qk_scale_arg, acc_dtype)

    row_lo = offs_m
    row_hi = offs_m
    k0 = seed_k0
    k1 = seed_k1
    thresh = drop_thresh
    if DROPOUT:
        row_lo, row_hi, k0, k1, thresh = _dropout_rows(bh, offs_m, N, S, seed_k0, seed_k1, drop_thresh)

    acc = tl.zeros((BLOCK_M, BLOCK_DV), acc_dtype)                    # [BLOCK_M, BLOCK_DV]
    l_i = tl.zeros((BLOCK_M,), acc_dtype)                              # [BLOCK_M] sum of exp2
    m_i = tl.full((BLOCK_M,), float("-inf"), acc_dtype)                # [BLOCK_M] running max
    # Stage 1: whole key blocks every row of this block sees (no tests); stage 2: the
    # partial last block and, when causal, the blocks on the diagonal; the rest is skipped.
    s_full = S // BLOCK_N * BLOCK_N
    if CAUSAL:
        mid = tl.minimum((start_m + 1) // BLOCK_N * BLOCK_N, s_full)
        hi = tl.minimum(start_m + BLOCK_M, S)
    else:
        mid = s_full
        hi = S
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, mask_base,
        offs_m, m_ok, offs_d, d_ok, offs_dv, dv_ok, 0, mid, S,
        stride_ks, stride_kd, stride_vs, stride_vd, stride_mn, stride_ms,
        qk_scale, row_lo, row_hi, k0, k1, thresh,
        False, CAUSAL, MASK_KIND, DROPOUT, PAD_D, PAD_DV, INT64_OFFSETS,
        INPUT_PRECISION, DOT_IN_FP32, BLOCK_N)
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, mask_base,
        offs_m, m_ok, offs_d, d_ok, offs_dv, dv_ok, mid, hi, S,
        stride_ks, stride_kd, stride_vs, stride_vd, stride_mn, stride_ms,
        qk_scale, row_lo, row_hi, k0, k1, thresh,
        True, CAUSAL, MASK_KIND, DROPOUT, PAD_D, PAD_DV, INT64_OFFSETS,
        INPUT_PRECISION, DOT_IN_FP32, BLOCK_N)

    # Epilogue: a row with no key (l = 0) gets out = 0, lse = -inf.
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    if DROPOUT:
        o = o * tl.full([], drop_scale_arg, acc_dtype)
    o_ptrs = (out_ptr + b * stride_ob + h * stride_oh
              + offs_m[:, None] * stride_on + offs_dv[None, :] * stride_od)
    _store2d(o_ptrs, o.to(out_ptr.dtype.element_ty), m_ok[:, None], dv_ok[None, :], True, PAD_DV)
    if MASK_KIND == 2:
        lse = m_i + tl.log2(l_safe) * 0.6931471805599453
    else:
        lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453
    lse = tl.where(empty, float("-inf"), lse)
    tl.store(lse_ptr + b * stride_lb + h * stride_lh + offs_m * stride_ln,
             lse.to(lse_ptr.dtype.element_ty), mask=m_ok)


# ----------------------------------------------------------------------------------------
# Backward: Delta
# ----------------------------------------------------------------------------------------

@triton.jit
def _attn_bwd_delta_kernel(
    out_ptr, dout_ptr, delta_ptr,
    H, N, DV,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_gb, stride_gh, stride_gn, stride_gd,
    PAD_DV: tl.constexpr, ACC_FP64: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    # delta[bh * N + i] = sum over e < DV of dout[b, h, i, e] * out[b, h, i, e]
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    num_m = (N + BLOCK_M - 1) // BLOCK_M
    b, h, bh, pid_m = _program_head(tl.program_id(0), num_m, H, False)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    if INT64_OFFSETS:
        offs_m = offs_m.to(tl.int64)
        offs_dv = offs_dv.to(tl.int64)
    m_ok = offs_m < N
    dv_ok = offs_dv < DV
    o = _load2d(out_ptr + b * stride_ob + h * stride_oh
                + offs_m[:, None] * stride_on + offs_dv[None, :] * stride_od,
                m_ok[:, None], dv_ok[None, :], True, PAD_DV)            # [BLOCK_M, BLOCK_DV]
    g = _load2d(dout_ptr + b * stride_gb + h * stride_gh
                + offs_m[:, None] * stride_gn + offs_dv[None, :] * stride_gd,
                m_ok[:, None], dv_ok[None, :], True, PAD_DV)
    delta = tl.sum(o.to(acc_dtype) * g.to(acc_dtype), 1)              # [BLOCK_M]
    tl.store(delta_ptr + bh * N + offs_m, delta, mask=m_ok)


# ----------------------------------------------------------------------------------------
# Backward: dK, dV
# ----------------------------------------------------------------------------------------

@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dv, k, v,
    q_base, do_base, mask_base, lse_base, delta_base,
    offs_n, n_ok, offs_d, d_ok, offs_dv, dv_ok,
    lo, hi, N,
    stride_qn, stride_qd, stride_gn, stride_gd, stride_mn, stride_ms, stride_ln,
    qk_scale, drop_scale, bh, S, k0, k1, thresh,
    CAUSAL_TEST: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
    PAD_D: tl.constexpr, PAD_DV: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # Query blocks [lo, hi); tiles are transposed: [BLOCK_N keys, BLOCK_M queries].
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)                       # [BLOCK_M]
        if INT64_OFFSETS:
            offs_m = offs_m.to(tl.int64)
        m_ok = offs_m < N
        qt = _load2d(q_base + offs_d[:, None] * stride_qd + offs_m[None, :] * stride_qn,
                     d_ok[:, None], m_ok[None, :], PAD_D, True)        # [BLOCK_D, BLOCK_M]
        do = _load2d(do_base + offs_m[:, None] * stride_gn + offs_dv[None, :] * stride_gd,
                     m_ok[:, None], dv_ok[None, :], True, PAD_DV)      # [BLOCK_M, BLOCK_DV]
        # lse in the scores' units; +inf for rows past N and fully masked rows: P = 0 there.
        lse = tl.load(lse_base + offs_m * stride_ln, mask=m_ok, other=float("inf")).to(dk.dtype)
        lse = _lse_units(lse, MASK_KIND == 2)
        delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)     # [BLOCK_M]
        st = _mma(k, qt, tl.zeros((k.shape[0], BLOCK_M), dk.dtype), INPUT_PRECISION, DOT_IN_FP32)
        st = st * qk_scale                                             # [BLOCK_N, BLOCK_M]
        if MASK_KIND != 0:
            mv = _load2d(mask_base + offs_n[:, None] * stride_ms + offs_m[None, :] * stride_mn,
                         n_ok[:, None], m_ok[None, :], True, True)
            if MASK_KIND == 1:
                st = tl.where(mv != 0, st, float("-inf"))
            else:
                st = st + mv.to(dk.dtype)
        if CAUSAL_TEST:
            st = tl.where(offs_n[:, None] <= offs_m[None, :], st, float("-inf"))
        pt = _exp(st - lse[None, :], MASK_KIND == 2)                   # [BLOCK_N, BLOCK_M]
        dpt = _mma(v, tl.trans(do), tl.zeros((k.shape[0], BLOCK_M), dk.dtype),
                   INPUT_PRECISION, DOT_IN_FP32)                       # [BLOCK_N, BLOCK_M]
        if DROPOUT:
            row_lo, row_hi, kk0, kk1, th = _dropout_rows(bh, offs_m, N, S, k0, k1, thresh)
            keep = _dropout_keep(row_lo[None, :], row_hi[None, :], offs_n[:, None], kk0, kk1, th)
            pdt = tl.where(keep, pt * drop_scale, 0.0)
            dpt = tl.where(keep, dpt * drop_scale, 0.0)
        else:
            pdt = pt
        dv = _mma(pdt.to(do.dtype), do, dv, INPUT_PRECISION, DOT_IN_FP32)
        dst = pt * (dpt - delta[None, :])                              # [BLOCK_N, BLOCK_M]
        dk = _mma(dst.to(qt.dtype), tl.trans(qt), dk, INPUT_PRECISION, DOT_IN_FP32)
    return dk, dv


@triton.autotune(configs=_DKDV_CONFIGS, key=_KEY,
                 prune_configs_by={"early_config_prune": _prune_dkdv})
@triton.jit(do_not_specialize=["seed_k0", "seed_k1", "drop_thresh"])
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    H, N, S, D, DV, N_BUCKET, S_BUCKET,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_mb, stride_mh, stride_mn, stride_ms,
    stride_gb, stride_gh, stride_gn, stride_gd,
    stride_lb, stride_lh, stride_ln,
    stride_dkb, stride_dkh, stride_dks, stride_dkd,
    stride_dvb, stride_dvh, stride_dvs, stride_dvd,
    scale_arg: tl.float64, qk_scale_arg: tl.float64, drop_scale_arg: tl.float64,
    seed_k0, seed_k1, drop_thresh,
    CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, HAS_DMASK: tl.constexpr,
    PAD_D: tl.constexpr, PAD_DV: tl.constexpr, ACC_FP64: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # dk[b, h, j] = scale * sum_i dS_ij q_i, dv[b, h, j] = sum_i P_drop_ij dout_i for BLOCK_N keys j.
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    num_n = (S + BLOCK_N - 1) // BLOCK_N
    b, h, bh, pid_n = _program_head(tl.program_id(0), num_n, H, False)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)                           # [BLOCK_N]
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if INT64_OFFSETS:
        offs_n = offs_n.to(tl.int64)
        offs_d = offs_d.to(tl.int64)
        offs_dv = offs_dv.to(tl.int64)
    n_ok = offs_n < S
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    k = _load2d(k_ptr + b * stride_kb + h * stride_kh
                + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd,
                n_ok[:, None], d_ok[None, :], True, PAD_D)              # [BLOCK_N, BLOCK_D]
    v = _load2d(v_ptr + b * stride_vb + h * stride_vh
                + offs_n[:, None] * stride_vs + offs_dv[None, :] * stride_vd,
                n_ok[:, None], dv_ok[None, :], True, PAD_DV)            # [BLOCK_N, BLOCK_DV]
    q_base = q_ptr + b * stride_qb + h * stride_qh
    do_base = dout_ptr + b * stride_gb + h * stride_gh
    lse_base = lse_ptr + b * stride_lb + h * stride_lh
    delta_base = delta_ptr + bh * N
    mask_base = mask_ptr
    if MASK_KIND != 0:
        mask_base = mask_ptr + b * stride_mb + h * stride_mh
    qk_scale = tl.full([], qk_scale_arg, acc_dtype)
    drop_scale = tl.full([], drop_scale_arg, acc_dtype)

    dk = tl.zeros((BLOCK_N, BLOCK_D), acc_dtype)                       # [BLOCK_N, BLOCK_D]
    dv = tl.zeros((BLOCK_N, BLOCK_DV), acc_dtype)                      # [BLOCK_N, BLOCK_DV]
    if CAUSAL:
        # Query blocks below start_n see none of these keys (skipped); those up to the one
        # holding row start_n + BLOCK_N - 1 need the causal test; the rest see all keys.
        lo = start_n // BLOCK_M * BLOCK_M
        mid = tl.minimum((start_n + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M * BLOCK_M, N)
        dk, dv = _attn_bwd_dkdv_inner(
            dk, dv, k, v, q_base, do_base, mask_base, lse_base, delta_base,
            offs_n, n_ok, offs_d, d_ok, offs_dv, dv_ok, lo, mid, N,
            stride_qn, stride_qd, stride_gn, stride_gd, stride_mn, stride_ms, stride_ln,
            qk_scale, drop_scale, bh, S, seed_k0, seed_k1, drop_thresh,
            True, MASK_KIND, DROPOUT, PAD_D, PAD_DV, INT64_OFFSETS,
            INPUT_PRECISION, DOT_IN_FP32, BLOCK_M)
    else:
        mid = 0
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, mask_base, lse_base, delta_base,
        offs_n, n_ok, offs_d, d_ok, offs_dv, dv_ok, mid, N, N,
        stride_qn, stride_qd, stride_gn, stride_gd, stride_mn, stride_ms, stride_ln,
        qk_scale, drop_scale, bh, S, seed_k0, seed_k1, drop_thresh,
        False, MASK_KIND, DROPOUT, PAD_D, PAD_DV, INT64_OFFSETS,
        INPUT_PRECISION, DOT_IN_FP32, BLOCK_M)

    dk = dk * tl.full([], scale_arg, acc_dtype)
    _store2d(dk_ptr + b * stride_dkb + h * stride_dkh
             + offs_n[:, None] * stride_dks + offs_d[None, :] * stride_dkd,
             dk.to(dk_ptr.dtype.element_ty), n_ok[:, None], d_ok[None, :], True, PAD_D)
    _store2d(dv_ptr + b * stride_dvb + h * stride_dvh
             + offs_n[:, None] * stride_dvs + offs_dv[None, :] * stride_dvd,
             dv.to(dv_ptr.dtype.element_ty), n_ok[:, None], dv_ok[None, :], True, PAD_DV)


# ----------------------------------------------------------------------------------------
# Backward: dQ (and dmask)
# ----------------------------------------------------------------------------------------

@triton.jit
def _attn_bwd_dq_inner(
    dq, q, do, lse, delta,
    k_base, v_base, mask_base, dmask_base,
    offs_m, m_ok, offs_d, d_ok, offs_dv, dv_ok,
    lo, hi, S,
    stride_ks, stride_kd, stride_vs, stride_vd, stride_mn, stride_ms, stride_dmn, stride_dms,
    qk_scale, drop_scale, row_lo, row_hi, k0, k1, thresh,
    CHECKED: tl.constexpr, CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr,
    HAS_DMASK: tl.constexpr, PAD_D: tl.constexpr, PAD_DV: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Key blocks [lo, hi) as in the forward; CHECKED: test j < S (and j <= i when causal).
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)                       # [BLOCK_N]
        if INT64_OFFSETS:
            offs_n = offs_n.to(tl.int64)
        n_ok = offs_n < S
        kt = _load2d(k_base + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_ks,
                     d_ok[:, None], n_ok[None, :], PAD_D, CHECKED)    # [BLOCK_D, BLOCK_N]
        vt = _load2d(v_base + offs_dv[:, None] * stride_vd + offs_n[None, :] * stride_vs,
                     dv_ok[:, None], n_ok[None, :], PAD_DV, CHECKED)  # [BLOCK_DV, BLOCK_N]
        s = _mma(q, kt, tl.zeros((q.shape[0], BLOCK_N), dq.dtype), INPUT_PRECISION, DOT_IN_FP32)
        s = s * qk_scale                                               # [BLOCK_M, BLOCK_N]
        if MASK_KIND != 0:
            mv = _load2d(mask_base + offs_m[:, None] * stride_mn + offs_n[None, :] * stride_ms,
                         m_ok[:, None], n_ok[None, :], True, CHECKED)
            if MASK_KIND == 1:
                s = tl.where(mv != 0, s, float("-inf"))
            else:
                s = s + mv.to(dq.dtype)
        if CHECKED:
            vis = n_ok[None, :]
            if CAUSAL:
                vis = vis & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(vis, s, float("-inf"))
        p = _exp(s - lse[:, None], MASK_KIND == 2)                     # [BLOCK_M, BLOCK_N]
        dp = _mma(do, vt, tl.zeros((q.shape[0], BLOCK_N), dq.dtype), INPUT_PRECISION, DOT_IN_FP32)
        if DROPOUT:
            keep = _dropout_keep(row_lo[:, None], row_hi[:, None], offs_n[None, :], k0, k1, thresh)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])                                 # [BLOCK_M, BLOCK_N]
        if HAS_DMASK:
            _store2d(dmask_base + offs_m[:, None] * stride_dmn + offs_n[None, :] * stride_dms,
                     ds.to(dmask_base.dtype.element_ty), m_ok[:, None], n_ok[None, :], True, CHECKED)
        dq = _mma(ds.to(kt.dtype), tl.trans(kt), dq, INPUT_PRECISION, DOT_IN_FP32)
    return dq


@triton.autotune(configs=_DQ_CONFIGS, key=_KEY,
                 prune_configs_by={"early_config_prune": _prune_dq})
@triton.jit(do_not_specialize=["seed_k0", "seed_k1", "drop_thresh"])
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, dq_ptr, dmask_ptr,
    H, N, S, D, DV, N_BUCKET, S_BUCKET,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_mb, stride_mh, stride_mn, stride_ms,
    stride_gb, stride_gh, stride_gn, stride_gd,
    stride_lb, stride_lh, stride_ln,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    stride_dmb, stride_dmh, stride_dmn, stride_dms,
    scale_arg: tl.float64, qk_scale_arg: tl.float64, drop_scale_arg: tl.float64,
    seed_k0, seed_k1, drop_thresh,
    CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DROPOUT: tl.constexpr, HAS_DMASK: tl.constexpr,
    PAD_D: tl.constexpr, PAD_DV: tl.constexpr, ACC_FP64: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # dq[b, h, i] = scale * sum_j dS_ij k_j for BLOCK_M rows i; dmask[b, h, i, j] = dS_ij.
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    num_m = (N + BLOCK_M - 1) // BLOCK_M
    b, h, bh, pid_m = _program_head(tl.program_id(0), num_m, H, CAUSAL)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)                           # [BLOCK_M]
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if INT64_OFFSETS:
        offs_m = offs_m.to(tl.int64)
        offs_d = offs_d.to(tl.int64)
        offs_dv = offs_dv.to(tl.int64)
    m_ok = offs_m < N
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    q = _load2d(q_ptr + b * stride_qb + h * stride_qh
                + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                m_ok[:, None], d_ok[None, :], True, PAD_D)              # [BLOCK_M, BLOCK_D]
    do = _load2d(dout_ptr + b * stride_gb + h * stride_gh
                 + offs_m[:, None] * stride_gn + offs_dv[None, :] * stride_gd,
                 m_ok[:, None], dv_ok[None, :], True, PAD_DV)           # [BLOCK_M, BLOCK_DV]
    lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + offs_m * stride_ln,
                  mask=m_ok, other=float("inf")).to(acc_dtype)
    lse = _lse_units(lse, MASK_KIND == 2)                             # +inf: P = 0 rows
    delta = tl.load(delta_ptr + bh * N + offs_m, mask=m_ok, other=0.0)  # [BLOCK_M]
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    mask_base = mask_ptr
    if MASK_KIND != 0:
        mask_base = mask_ptr + b * stride_mb + h * stride_mh
    dmask_base = dmask_ptr
    if HAS_DMASK:
        dmask_base = dmask_ptr + b * stride_dmb + h * stride_dmh
    qk_scale = tl.full([], qk_scale_arg, acc_dtype)
    drop_scale = tl.full([], drop_scale_arg, acc_dtype)

    row_lo = offs_m
    row_hi = offs_m
    k0 = seed_k0
    k1 = seed_k1
    thresh = drop_thresh
    if DROPOUT:
        row_lo, row_hi, k0, k1, thresh = _dropout_rows(bh, offs_m, N, S, seed_k0, seed_k1, drop_thresh)

    dq = tl.zeros((BLOCK_M, BLOCK_D), acc_dtype)                       # [BLOCK_M, BLOCK_D]
    s_full = S // BLOCK_N * BLOCK_N
    if CAUSAL:
        mid = tl.minimum((start_m + 1) // BLOCK_N * BLOCK_N, s_full)
        hi = tl.minimum(start_m + BLOCK_M, S)
    else:
        mid = s_full
        hi = S
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_base, v_base, mask_base, dmask_base,
        offs_m, m_ok, offs_d, d_ok, offs_dv, dv_ok, 0, mid, S,
        stride_ks, stride_kd, stride_vs, stride_vd, stride_mn, stride_ms, stride_dmn, stride_dms,
        qk_scale, drop_scale, row_lo, row_hi, k0, k1, thresh,
        False, CAUSAL, MASK_KIND, DROPOUT, HAS_DMASK, PAD_D, PAD_DV, INT64_OFFSETS,
        INPUT_PRECISION, DOT_IN_FP32, BLOCK_N)
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_base, v_base, mask_base, dmask_base,
        offs_m, m_ok, offs_d, d_ok, offs_dv, dv_ok, mid, hi, S,
        stride_ks, stride_kd, stride_vs, stride_vd, stride_mn, stride_ms, stride_dmn, stride_dms,
        qk_scale, drop_scale, row_lo, row_hi, k0, k1, thresh,
        True, CAUSAL, MASK_KIND, DROPOUT, HAS_DMASK, PAD_D, PAD_DV, INT64_OFFSETS,
        INPUT_PRECISION, DOT_IN_FP32, BLOCK_N)
    if HAS_DMASK:
        # The blocks past the diagonal (causal) hold dS = 0: write them too.
        zero = tl.zeros((BLOCK_M, BLOCK_N), dmask_ptr.dtype.element_ty)
        for start_n in range(hi, S, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            if INT64_OFFSETS:
                offs_n = offs_n.to(tl.int64)
            tl.store(dmask_base + offs_m[:, None] * stride_dmn + offs_n[None, :] * stride_dms,
                     zero, mask=m_ok[:, None] & (offs_n < S)[None, :])

    dq = dq * tl.full([], scale_arg, acc_dtype)
    _store2d(dq_ptr + b * stride_dqb + h * stride_dqh
             + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd,
             dq.to(dq_ptr.dtype.element_ty), m_ok[:, None], d_ok[None, :], True, PAD_D)


# ----------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------

def _check_tensor(name, t, ndim, what, dtypes=_FLOAT_DTYPES):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must be one of {names}, got {t.dtype}")


def _check_shape(name, t, shape, what):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be {what} = {list(shape)}, got {tuple(t.shape)}")


def _check_output(name, t):
    """An output must not broadcast (a zero stride on a dimension of size > 1)."""
    if any(st == 0 and sz > 1 for sz, st in zip(t.shape, t.stride())):
        raise ValueError(f"{name} must not have a zero stride (a broadcast view), got strides {t.stride()}")


def _check_same_dtype(name, t, ref_name, ref):
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")


def _check_lse(lse, q, shape):
    _check_tensor("lse", lse, 3, "[B, H, N]", (torch.float32, torch.float64))
    _check_shape("lse", lse, shape, "[B, H, N]")
    want = torch.float64 if q.dtype == torch.float64 else torch.float32
    if lse.dtype != want:
        raise TypeError(f"lse must be {want} for {q.dtype} inputs, got {lse.dtype}")


def _check_mask(mask, q, shape):
    """The mask as (tensor to pass, MASK_KIND): bool -> its uint8 view, kind 1; additive
    (q's dtype) -> kind 2; None -> (None, 0)."""
    if mask is None:
        return None, 0
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype not in (torch.bool, q.dtype):
        raise TypeError(f"mask must be bool or q's dtype ({q.dtype}), got {mask.dtype}")
    _check_tensor("mask", mask, 4, "[B, H, N, S] (an expanded view)", (torch.bool, q.dtype))
    _check_shape("mask", mask, shape, "[B, H, N, S]")
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8), 1  # same element size: a view for any strides
    return mask, 2


def _check_scalars(causal, scale, dropout_p, seed):
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")


def _head_dims(name, d):
    if d > _MAX_HEAD_DIM:
        raise ValueError(f"{name} = {d} is not supported: head dims must be <= {_MAX_HEAD_DIM}")
    return _np2(d)


def _as_i32(u):
    """A uint32 as the int32 with the same bits (the kernels bitcast it back)."""
    return u - 2**32 if u >= 2**31 else u


def _dropout_args(dropout_p, seed):
    """(DROPOUT, 1 / (1 - p), key word 0, key word 1, threshold) as kernel arguments."""
    thresh = min(int(dropout_p * 4294967296.0), 4294967295)
    return (dropout_p > 0.0, 1.0 / (1.0 - dropout_p), _as_i32(seed & 0xFFFFFFFF),
            _as_i32((seed >> 32) & 0xFFFFFFFF), _as_i32(thresh))


def _score_scale(scale, mask_kind):
    """The factor from q.k to the kernels' score units: log2 (scale * log2(e), so that
    softmax needs one exp2), or natural with an additive mask (see _exp)."""
    return float(scale) if mask_kind == 2 else float(scale) * _LOG2E


def _needs_int64(*tensors):
    """True when an offset within one (b, h) slice (batch and head offsets are always
    int64) may not fit in int32; tile lanes past the edges (up to 256) are counted."""
    worst = 0
    for t in tensors:
        if t is None:
            continue
        extent = sum((s + 256) * abs(st) for s, st in zip(t.shape[2:], t.stride()[2:]))
        worst = max(worst, extent)
    return worst + 4096 > _INT32_MAX


def _strides(t, n=4):
    return t.stride() if t is not None else (0,) * n


def _common_meta(q, D, Dv, causal, mask_kind, dropout, has_dmask, int64):
    return dict(
        CAUSAL=causal, MASK_KIND=mask_kind, DROPOUT=dropout, HAS_DMASK=has_dmask,
        PAD_D=D != _np2(D), PAD_DV=Dv != _np2(Dv), ACC_FP64=q.dtype == torch.float64,
        INT64_OFFSETS=int64, INPUT_PRECISION=_input_precision(q.dtype, q.device),
        DOT_IN_FP32=_INTERPRET and q.dtype == torch.bfloat16,
        BLOCK_D=_np2(D), BLOCK_DV=_np2(Dv),
    )


def attention_forward(q, k, v, out, lse, *, mask=None, causal=False, scale, dropout_p=0.0, seed=0):
    """out = softmax(scale * q @ k^T + mask (+ causal)) (with dropout) @ v, and lse.

    Args:
        q: [B, H, N, D] float16, bfloat16, float32 or float64, any strides.
        k: [B, H, S, D], q's dtype, any strides.
        v: [B, H, S, Dv], q's dtype, any strides. D, Dv <= 256.
        out: [B, H, N, Dv] preallocated, any float dtype (the result is cast), no zero
            strides; fully written. Must not overlap the inputs.
        lse: [B, H, N] preallocated, float32 (float64 for float64 inputs); fully written with
            the natural-log log-sum-exp of each score row (after scale, mask and causal,
            before dropout), -inf for a row with no key (whose out is 0).
        mask: None, or a [B, H, N, S] view (stride 0 on broadcast dims): bool (True =
            attend) or q's dtype (added to the scores).
        causal: query i attends key j only if j <= i (top-left aligned); combines with mask.
        scale: the score scale (finite; the caller's default is 1/sqrt(D)).
        dropout_p: in [0, 1); the keep bits are the Philox rule of the module docstring.
        seed: int in [0, 2**64), the Philox key.

    Returns:
        (out, lse).

    Raises:
        TypeError: a non-tensor argument, wrong or mismatched dtypes, non-number scalars.
        ValueError: shapes that do not match, head dims > 256, an output with a zero stride,
            tensors on different devices, dropout_p outside [0, 1), a non-finite scale.
        RuntimeError: CPU tensors without TRITON_INTERPRET=1 set at import.
    """
    _check_tensor("q", q, 4, "[B, H, N, D]")
    _check_tensor("k", k, 4, "[B, H, S, D]")
    _check_tensor("v", v, 4, "[B, H, S, Dv]")
    _check_same_dtype("k", k, "q", q)
    _check_same_dtype("v", v, "q", q)
    B, H, N, D = q.shape
    S, Dv = k.shape[2], v.shape[3]
    _check_shape("k", k, (B, H, S, D), "[B, H, S, D]")
    _check_shape("v", v, (B, H, S, Dv), "[B, H, S, Dv]")
    _check_tensor("out", out, 4, "[B, H, N, Dv]")
    _check_shape("out", out, (B, H, N, Dv), "[B, H, N, Dv]")
    _check_output("out", out)
    _check_lse(lse, q, (B, H, N))
    _check_output("lse", lse)
    mask_arg, mask_kind = _check_mask(mask, q, (B, H, N, S))
    _check_scalars(causal, scale, dropout_p, seed)
    _head_dims("D", D)
    _head_dims("Dv", Dv)
    _check_devices([("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse), ("mask", mask)])
    if B * H * N == 0:
        return out, lse
    if S == 0:  # no keys: every row is empty
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse
    dropout, drop_scale, k0, k1, thresh = _dropout_args(dropout_p, seed)
    meta = _common_meta(q, D, Dv, causal, mask_kind, dropout, False,
                        _needs_int64(q, k, v, out, lse, mask))

    def grid(m):
        return (B * H * triton.cdiv(N, m["BLOCK_M"]),)

    _attn_fwd_kernel[grid](
        q, k, v, mask_arg, out, lse,
        H, N, S, D, Dv, _bucket(N), _bucket(S),
        *q.stride(), *k.stride(), *v.stride(), *_strides(mask_arg), *out.stride(), *lse.stride(),
        _score_scale(scale, mask_kind), drop_scale, k0, k1, thresh,
        **meta,
    )
    return out, lse


def attention_backward(q, k, v, out, dout, lse, dq, dk, dv, *, mask=None, causal=False, scale,
                       dropout_p=0.0, seed=0, dmask=None):
    """dq, dk, dv (and dmask = dS) of attention_forward, from its out and lse.

    Args:
        q, k, v, mask, causal, scale, dropout_p, seed: as given to attention_forward.
        out: [B, H, N, Dv], the forward's output (any float dtype, any strides).
        dout: [B, H, N, Dv], the gradient of out (any float dtype, any strides).
        lse: [B, H, N], the forward's lse (float32; float64 for float64 inputs).
        dq, dk, dv: [B, H, N, D], [B, H, S, D], [B, H, S, Dv] preallocated, any float dtype,
            no zero strides; fully written (zeros for keys no query sees and rows with no key).
        dmask: None or [B, H, N, S] preallocated, any float dtype, no zero strides; fully
            written with dS (zeros where masked): the gradient of an additive mask before
            the caller sums it over the broadcast dims.

    Returns:
        (dq, dk, dv, dmask).

    Raises:
        TypeError / ValueError / RuntimeError: as attention_forward.
    """
    _check_tensor("q", q, 4, "[B, H, N, D]")
    _check_tensor("k", k, 4, "[B, H, S, D]")
    _check_tensor("v", v, 4, "[B, H, S, Dv]")
    _check_same_dtype("k", k, "q", q)
    _check_same_dtype("v", v, "q", q)
    B, H, N, D = q.shape
    S, Dv = k.shape[2], v.shape[3]
    _check_shape("k", k, (B, H, S, D), "[B, H, S, D]")
    _check_shape("v", v, (B, H, S, Dv), "[B, H, S, Dv]")
    for name, t in (("out", out), ("dout", dout)):
        _check_tensor(name, t, 4, "[B, H, N, Dv]")
        _check_shape(name, t, (B, H, N, Dv), "[B, H, N, Dv]")
    _check_lse(lse, q, (B, H, N))
    for name, t, shape, what in (("dq", dq, (B, H, N, D), "[B, H, N, D]"),
                                 ("dk", dk, (B, H, S, D), "[B, H, S, D]"),
                                 ("dv", dv, (B, H, S, Dv), "[B, H, S, Dv]")):
        _check_tensor(name, t, 4, what)
        _check_shape(name, t, shape, what)
        _check_output(name, t)
    if dmask is not None:
        _check_tensor("dmask", dmask, 4, "[B, H, N, S]")
        _check_shape("dmask", dmask, (B, H, N, S), "[B, H, N, S]")
        _check_output("dmask", dmask)
    mask_arg, mask_kind = _check_mask(mask, q, (B, H, N, S))
    _check_scalars(causal, scale, dropout_p, seed)
    _head_dims("D", D)
    _head_dims("Dv", Dv)
    _check_devices([("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout), ("lse", lse),
                    ("dq", dq), ("dk", dk), ("dv", dv), ("mask", mask), ("dmask", dmask)])
    if B * H == 0:
        return dq, dk, dv, dmask
    if N == 0 or S == 0:  # no scores: every gradient is zero
        for t in (dq, dk, dv, dmask):
            if t is not None:
                t.zero_()
        return dq, dk, dv, dmask
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    int64 = _needs_int64(q, k, v, out, dout, lse, dq, dk, dv, mask, dmask)
    dropout, drop_scale, k0, k1, thresh = _dropout_args(dropout_p, seed)
    meta = _common_meta(q, D, Dv, causal, mask_kind, dropout, dmask is not None, int64)

    delta = torch.empty((B * H, N), dtype=acc_dtype, device=q.device)
    _attn_bwd_delta_kernel[(B * H * triton.cdiv(N, _DELTA_BLOCK_M),)](
        out, dout, delta, H, N, Dv, *out.stride(), *dout.stride(),
        PAD_DV=meta["PAD_DV"], ACC_FP64=meta["ACC_FP64"], INT64_OFFSETS=int64,
        BLOCK_M=_DELTA_BLOCK_M, BLOCK_DV=meta["BLOCK_DV"], num_warps=4,
    )
    head = (H, N, S, D, Dv, _bucket(N), _bucket(S),
            *q.stride(), *k.stride(), *v.stride(), *_strides(mask_arg), *dout.stride(), *lse.stride())
    scalars = (float(scale), _score_scale(scale, mask_kind), drop_scale, k0, k1, thresh)

    def grid_kv(m):
        return (B * H * triton.cdiv(S, m["BLOCK_N"]),)

    _attn_bwd_dkdv_kernel[grid_kv](
        q, k, v, mask_arg, dout, lse, delta, dk, dv,
        *head, *dk.stride(), *dv.stride(), *scalars, **meta,
    )

    def grid_q(m):
        return (B * H * triton.cdiv(N, m["BLOCK_M"]),)

    _attn_bwd_dq_kernel[grid_q](
        q, k, v, mask_arg, dout, lse, delta, dq, dmask,
        *head, *dq.stride(), *_strides(dmask), *scalars, **meta,
    )
    return dq, dk, dv, dmask
