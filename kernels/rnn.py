"""Triton LSTM / GRU over a whole sequence (one layer, one direction): forward and backward
through time, with reverse and PackedSequence (batch_sizes) semantics.

Shapes (one alphabet): x [T, B, I], h0 / c0 / hn / cn [B, H], y [T, B, H]; w_ih [G*H, I],
w_hh [G*H, H], b_ih / b_hh [G*H]; G = 4 gates [i, f, g, o] (LSTM), 3 gates [r, z, n] (GRU),
exactly torch.nn.LSTM / torch.nn.GRU:
    LSTM  i, f, o = sigmoid(x W_{i,f,o}^T + b_i{.} + h W_h{.}^T + b_h{.});  g = tanh(...)
          c' = f * c + i * g;   h' = o * tanh(c')
    GRU   r, z = sigmoid(x W_{r,z}^T + b_i{.} + h W_h{.}^T + b_h{.})
          n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn));   h' = (1 - z) * n + z * h
The steps run t = 0 .. T-1, or T-1 .. 0 with reverse=True (indices into x and y, no flipped
copy). batch_sizes (int64 [T], from a PackedSequence): at time t only rows b < batch_sizes[t]
are updated; the others keep their state, get y = 0 and pass gradients through unchanged
(no gradient flows through them into the weights, x or dy at that step).

Workspace (this module's own layout, rnn_workspace_elems(kind, T, B, H) elements of x's dtype,
contiguous, allocated by the caller; written by rnn_forward, only read by rnn_backward, so one
forward can serve several backwards): ws [T, B, S, H], indexed by time t (not by the order of
processing), row (t, b) holding S slabs of H:
    LSTM S = 6:  i, f, g, o (the activated gates), c_prev, h_prev
    GRU  S = 5:  r, z, n (activated), hl = h_prev W_hn^T + b_hn, h_prev
(c_prev / h_prev: the state entering step t; for a frozen row, the carried state.)
Scratch allocated by the launchers per call: forward xg [T, B, G*H] (the input projection),
the state as two [B, H] buffers (ping-pong); backward dG [T, B, 4*H] in x's dtype, the
gradients of the gate pre-activations, LSTM [di, df, dg, do], GRU [dr, dz, dn, dn * r] (the
n slab twice: x side, h side), the carried gradients as two ping-pong pairs, and split-K
partials. State and gate math are fp32 (fp64 for fp64); fp32 uses TF32 tensor cores only when
torch.backends.cuda.matmul.allow_tf32 is True, like kernels/gemm.py; fp16 / bf16 GEMM operands
(h, dG, x, the weights) are fed to the tensor cores in that type, with fp32 accumulation.

Launch structure.
  forward:   1 GEMM launch  xg = x W_ih^T + b_ih (+ b_hh; GRU: only the r, z part), all steps;
             T step launches  _rnn_fwd_step_kernel: a program owns BLOCK_B rows x BLOCK_H hidden
               units j and computes h_prev @ W_hh^T for the G gate slabs of j (G accumulators,
               one K loop over h), then the gates, the state update, y, the next state, hn/cn
               at the last step and the ws slabs of its tile.
  backward:  T step launches  _rnn_bwd_step_kernel: ONE launch per step. The dh_prev GEMM
               of a step needs dG of all gates of all hidden units, so it is done at the
               start of the NEXT launch: step t's program computes its dh tile as
               gd + dG[t'] @ W_hh[:, J] (t' the step processed before, all of dG[t'] written by
               the previous launch), adds dy[t], forms the gate gradients of its tile,
               writes dG[t] and the carried gd (the non-GEMM part: 0 for LSTM, dh * z for GRU;
               all of dh for a frozen row) and dc;
             1 final launch (same kernel, FINAL): dh0 = gd + dG[t_first] @ W_hh, dc0;
             1 GEMM  dx = dG_x @ W_ih over all steps;
             1 GEMM  dW_ih = dG_x^T @ x (x read as 0 at frozen rows: padding may hold
               anything), 1 GEMM dW_hh = dG_h^T @ h_prev (GRU: 2 launches, its n rows come
               from the 4th dG slab), both split over the T*B reduction into fp32 partials
               summed by torch in a fixed order when there are few output tiles;
             1 reduction  column sums of dG -> db_ih, db_hh.
  The GEMM kernel (_rnn_gemm_kernel) addresses the T*B axis as (t, b) = (r // B, r % B)
  with separate strides, so x / dx may be any view (a transposed batch_first one included).
  No atomics anywhere: results are deterministic.

Why not a persistent kernel over time: step t+1 needs the h_t of all hidden units, i.e. a
grid-wide barrier between steps. Triton has no cooperative launch, so co-residency of all
programs is not guaranteed (a spin barrier can deadlock under MPS, MIG or a busy GPU), and the
interpreter runs programs one after the other (any barrier deadlocks), so the tested code
would not be the GPU code. The barrier-free persistent form (one program per batch block, all
H units) streams the whole W_hh through one SM per step with cdiv(B, BLOCK_B) programs: 1-4
SMs of 132 at B = 32 .. 64. So one launch per step: the grid (hidden blocks x batch blocks)
spreads W_hh over the SMs, read from L2 each step; the launch latency is the floor (a caller
can capture the loop in a CUDA graph after a warm-up call: autotuning cannot run in a
capture). Every step kernel is idempotent (reads and writes different buffers), which is
what makes autotuning it on a live call safe.

BLOCK_* come from autotuning over Hopper configs: step kernels keyed on (H, B rounded up to a
power of two) and pruned by H, B, shared memory and registers; GEMM configs as conv2d's,
pruned by the problem. The first tuning of a backward step runs on the first processed step,
which has no GEMM, so has_prev is in the key. Under the interpreter (TRITON_INTERPRET=1 at
import) one 16x16x16 step config and one 32x32x16 GEMM config are used, and bf16 tiles are
widened to fp32 before tl.dot (the interpreter's dot multiplies bf16 bit patterns).
GPU status: every kernel and every config left after pruning compiles for sm_90 (offline,
triton.compile with GPUTarget("cuda", 90, 64), Triton 3.9) with no register spills at the
anchor shapes; the register bounds in the prune functions come from those ptxas reports.
Not yet run or timed on a GPU.

Test (CPU, interpreter):  TRITON_INTERPRET=1 python -m pytest tests/test_rnn.py
Benchmark (GPU):          python -m pykernels bench rnn
"""

import torch
import triton
import triton.language as tl

from ._launch import INTERPRET as _INTERPRET
from ._launch import check_devices as _check_devices
from ._launch import split_reduction as _split_reduction
from .gemm import _input_precision, _sigmoid, _tanh

__all__ = ["rnn_workspace_elems", "rnn_forward", "rnn_backward"]


_KINDS = ("lstm", "gru")
_GATES = {"lstm": 4, "gru": 3}
_WS_SLABS = {"lstm": 6, "gru": 5}
_DG_SLABS = 4              # dG row: 4 slabs of H for both kinds (GRU: dr, dz, dn, dn * r)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_GRID_Y = 65535        # CUDA limit of grid axis 1
_SMEM_BYTES = 227 * 1024   # H100/H200 shared memory available to one block
# Split-K of the weight gradients / bias sums: at least this many (t, b) rows per split, and
# partial buffers of at most _MAX_PARTIAL_BYTES.
_MIN_SPLIT_ROWS = 16 if _INTERPRET else 512
_MAX_PARTIAL_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------

def _step_config(bb, bh, bk, stages, warps):
    return triton.Config({"BLOCK_B": bb, "BLOCK_H": bh, "BLOCK_K": bk}, num_stages=stages, num_warps=warps)


def _gemm_config(bm, bn, bk, stages, warps, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_stages=stages, num_warps=warps)


if _INTERPRET:
    # One config each, no tuning: small enough that odd test sizes span several tiles.
    _STEP_CONFIGS = [_step_config(16, 16, 16, 1, 4)]
    _STEP_FALLBACK = _STEP_CONFIGS[0]
    _GEMM_CONFIGS = [_gemm_config(32, 32, 16, 1, 4)]
    _COLSUM_BLOCKS = (16, 32)
else:
    # (BLOCK_B, BLOCK_H, BLOCK_K, stages, warps). A step is a skinny GEMM (B rows): small
    # batch blocks, hidden blocks of 16-64 so that even H = 256 gives 16+ column programs,
    # and long K blocks (the reduction is all of H).
    _STEP_CONFIGS = [_step_config(*c) for c in (
        (16, 16, 64, 3, 2), (16, 16, 128, 3, 4), (16, 32, 64, 3, 4), (16, 32, 128, 3, 4),
        (16, 64, 64, 3, 4), (32, 16, 64, 3, 4), (32, 32, 64, 3, 4), (32, 32, 128, 3, 4),
        (32, 64, 64, 3, 8), (64, 16, 64, 3, 4), (64, 32, 64, 3, 4), (64, 64, 64, 3, 8),
        (16, 16, 32, 3, 2), (32, 32, 32, 3, 4),   # fp32 / fp64 friendly (half the smem)
    )]
    _STEP_FALLBACK = _step_config(16, 16, 16, 2, 2)
    _GEMM_TILES = [
        (128, 256, 3, 8), (256, 128, 3, 8), (128, 128, 3, 8), (128, 128, 4, 4),
        (128, 64, 4, 4), (64, 128, 4, 4), (64, 64, 4, 4), (128, 32, 4, 4), (64, 32, 4, 2),
        (32, 64, 4, 2), (32, 32, 4, 2),
    ]
    _GEMM_CONFIGS = [_gemm_config(bm, bn, bk, st, wa) for bm, bn, st, wa in _GEMM_TILES for bk in (16, 32, 64)]
    _COLSUM_BLOCKS = (64, 64)


def _np2(n):
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def _prune_step(configs, named_args, kind):
    """Step configs whose blocks do not exceed the problem (H, B rounded up), whose pipelined
    tiles fit in shared memory and whose accumulator elements per thread stay under the
    bounds that compiled without spills for sm_90 (ptxas, Triton 3.9): forward G tiles
    <= 64 32-bit words per thread for 2-byte types, <= 32 for fp32 / fp64 (ieee fp32 and
    fp64 dots run on FMA with their operands in registers; there also BLOCK_K <= 64);
    backward one tile <= 16 words. Else the fallback."""
    if _INTERPRET:
        return configs
    H, b_key = named_args["H"], named_args["B_KEY"]
    G = 4 if named_args["IS_LSTM"] else 3
    elem = named_args["w_hh_ptr"].element_size()
    acc_w = 2 if named_args["ACC_FP64"] else 1
    hp = _np2(H)

    def fits(c):
        bb, bh, bk = c.kwargs["BLOCK_B"], c.kwargs["BLOCK_H"], c.kwargs["BLOCK_K"]
        per_thread = bb * bh * acc_w / (32 * c.num_warps)
        if elem >= 4 and bk > 64:
            return False
        if kind == "fwd":  # h tile (the fp32 / fp64 state) + G weight tiles per stage
            smem = c.num_stages * (bb * bk * 4 * acc_w + G * bk * bh * elem)
            ok_regs = G * per_thread <= (64 if elem == 2 else 32)
        else:              # G (dG tile + weight tile) per stage, one accumulator
            smem = c.num_stages * G * (bb * bk + bk * bh) * elem
            ok_regs = per_thread <= 16
        return smem <= _SMEM_BYTES and ok_regs

    keep = [c for c in configs
            if c.kwargs["BLOCK_B"] <= b_key and c.kwargs["BLOCK_H"] <= hp and c.kwargs["BLOCK_K"] <= hp
            and fits(c)]
    return keep or [_STEP_FALLBACK]


def _prune_fwd_step(configs, named_args, **kwargs):
    return _prune_step(configs, {**named_args, **kwargs}, "fwd")


def _prune_bwd_step(configs, named_args, **kwargs):
    return _prune_step(configs, {**named_args, **kwargs}, "bwd")


def _prune_gemm(configs, named_args, **kwargs):
    """As conv2d's: BLOCK_K = 64 for 2-byte types, 32 for fp32 / fp64 (smaller only when the
    reduction is); BLOCK_M, BLOCK_N not past the problem and not below 64 unless it is
    smaller; pipelined tiles that fit in shared memory; accumulator words per thread within
    what compiled without spills for sm_90 (64 with the rows on M, 128 with them on K).
    Else the smallest with 2 stages."""
    if _INTERPRET:
        return configs
    args = {**named_args, **kwargs}
    elem = args["a_ptr"].element_size()
    k = args["chunk"] if args["DEC_K"] else args["K"]
    mp, np_, kp = _np2(args["M"]), _np2(args["N"]), _np2(k)
    bk = min(kp, 64 if elem == 2 else 32)

    acc_w = 2 if args["ACC_FP64"] else 1
    max_words = 128 if args["DEC_K"] else 64  # the rows-on-M epilogue (decode, bias) costs more

    def fits(c):
        tile = (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * elem
        words = c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * acc_w / (32 * c.num_warps)
        return c.num_stages * tile <= _SMEM_BYTES and words <= max_words

    keep = [c for c in configs
            if c.kwargs["BLOCK_K"] == bk
            and min(mp, 64) <= c.kwargs["BLOCK_M"] <= max(mp, 32)
            and min(np_, 64) <= c.kwargs["BLOCK_N"] <= np_ and fits(c)]
    if keep:
        return keep
    same_k = [c for c in configs if c.kwargs["BLOCK_K"] == bk]
    small = min(same_k, key=lambda c: c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"])
    return [triton.Config(dict(small.kwargs), num_stages=2, num_warps=small.num_warps)]


# ----------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------

@triton.jit
def _mma(a, b, acc, INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """acc + a @ b in acc's dtype."""
    if DOT_IN_FP32:  # interpreter only: its tl.dot multiplies bf16 bit patterns as ints
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)


@triton.jit
def _n_active(bs_ptr, t, B, HAS_BS: tl.constexpr):
    """Rows updated at time t: batch_sizes[t], or all B."""
    if HAS_BS:
        n = tl.load(bs_ptr + t).to(tl.int32)
    else:
        n = B
    return n


# ----------------------------------------------------------------------------------------
# GEMM over all steps: input projection, dx, dW_ih, dW_hh
# ----------------------------------------------------------------------------------------

@triton.autotune(configs=_GEMM_CONFIGS, key=["M", "N", "K", "DEC_K"],
                 prune_configs_by={"early_config_prune": _prune_gemm})
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _rnn_gemm_kernel(
    a_ptr, b_ptr, c_ptr, bias1_ptr, bias2_ptr, bs_ptr,
    M, N, K, DB, chunk, NB2,
    stride_a0, stride_a1, stride_a2,
    stride_b0, stride_b1, stride_b2,
    stride_c0, stride_c1, stride_c2,
    stride_bias1, stride_bias2,
    DEC_K: tl.constexpr, HAS_BIAS1: tl.constexpr, HAS_BIAS2: tl.constexpr, MASK_ROWS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C[M, N] = A[M, K] @ B[K, N] where one axis runs over the T*B (t, b) rows, decoded as
    t = r // DB, b = r % DB with a stride for each:
      DEC_K = False (rows on M):  A(m, k) = a[t*a0 + b*a1 + k*a2],  B(k, n) = b[k*b0 + n*b1],
                                  C(m, n) = c[t*c0 + b*c1 + n*c2] (+ bias1[n] + bias2[n] if n < NB2)
      DEC_K = True  (rows on K):  A(m, k) = a[m*a0 + t*a1 + b*a2],  B(k, n) = b[t*b0 + b*b1 + n*b2]
                                  (0 where b >= bs[t] if MASK_ROWS), and split s of the reduction
                                  (rows [s*chunk, (s+1)*chunk), grid axis 1) writes
                                  C(m, n) = c[s*c0 + m*c1 + n*c2]."""
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32

    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_in_group = pid % num_pid_in_group
    pid_m = first_pid_m + pid_in_group % group_size_m
    pid_n = pid_in_group // group_size_m

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # [BLOCK_M]
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # [BLOCK_N]
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)                      # [BLOCK_K]
    rows = offs_m % M  # loads wrap past-the-edge rows/cols onto valid ones (never stored)
    cols = offs_n % N
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)  # [BLOCK_M, BLOCK_N]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    if DEC_K:
        a_m = rows * stride_a0  # [BLOCK_M]
        b_n = cols * stride_b2  # [BLOCK_N]
        k_lo = pid_s.to(tl.int64) * chunk
        k_hi = tl.minimum(k_lo + chunk, K)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            kk = k0 + offs_k                 # [BLOCK_K] (t, b) rows
            kt = kk // DB
            kb = kk - kt * DB
            k_ok = kk < k_hi
            a = tl.load(a_ptr + (a_m[:, None] + (kt * stride_a1 + kb * stride_a2)[None, :]),
                        mask=k_ok[None, :], other=0.0)                      # [BLOCK_M, BLOCK_K]
            if MASK_ROWS:  # rows frozen at their step: x there may hold anything
                n_act = tl.load(bs_ptr + kt, mask=k_ok, other=0)
                k_ok = k_ok & (kb < n_act)
            b = tl.load(b_ptr + ((kt * stride_b0 + kb * stride_b1)[:, None] + b_n[None, :]),
                        mask=k_ok[:, None], other=0.0)                      # [BLOCK_K, BLOCK_N]
            acc = _mma(a, b, acc, INPUT_PRECISION, DOT_IN_FP32)
        c_ptrs = c_ptr + pid_s.to(tl.int64) * stride_c0 + (offs_m[:, None] * stride_c1 + offs_n[None, :] * stride_c2)
    else:
        mt = rows // DB
        mb = rows - mt * DB
        # [BLOCK_M, BLOCK_K] and [BLOCK_K, BLOCK_N]
        a_ptrs = a_ptr + ((mt * stride_a0 + mb * stride_a1)[:, None] + offs_k[None, :] * stride_a2)
        b_ptrs = b_ptr + (offs_k[:, None] * stride_b0 + cols[None, :] * stride_b1)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                k_left = K - k0
                a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
                b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
            acc = _mma(a, b, acc, INPUT_PRECISION, DOT_IN_FP32)
            a_ptrs += BLOCK_K * stride_a2
            b_ptrs += BLOCK_K * stride_b0
        if HAS_BIAS1:
            acc += tl.load(bias1_ptr + cols * stride_bias1).to(acc_dtype)[None, :]
        if HAS_BIAS2:
            bias2 = tl.load(bias2_ptr + cols * stride_bias2, mask=cols < NB2, other=0.0)
            acc += bias2.to(acc_dtype)[None, :]
        ot = offs_m // DB
        ob = offs_m - ot * DB
        c_ptrs = c_ptr + ((ot * stride_c0 + ob * stride_c1)[:, None] + offs_n[None, :] * stride_c2)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rnn_colsum_kernel(
    src_ptr, out_ptr,
    R, N, chunk,
    stride_sr, stride_sn, stride_os, stride_on,
    ACC_FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """out[s, n] = sum of src[r, n] over the rows r of split s ([s*chunk, (s+1)*chunk) ∩ [0, R))."""
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)   # [BLOCK_N]
    arange_r = tl.arange(0, BLOCK_R).to(tl.int64)      # [BLOCK_R]
    n_ok = offs_n < N
    r_lo = pid_s.to(tl.int64) * chunk
    r_hi = tl.minimum(r_lo + chunk, R)
    acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=acc_dtype)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        rr = r0 + arange_r
        tile = tl.load(src_ptr + rr[:, None] * stride_sr + offs_n[None, :] * stride_sn,
                       mask=(rr < r_hi)[:, None] & n_ok[None, :], other=0.0)
        acc += tile.to(acc_dtype)
    total = tl.sum(acc, axis=0)  # [BLOCK_N]
    tl.store(out_ptr + pid_s.to(tl.int64) * stride_os + offs_n * stride_on,
             total.to(out_ptr.dtype.element_ty), mask=n_ok)


# ----------------------------------------------------------------------------------------
# Forward step
# ----------------------------------------------------------------------------------------

@triton.autotune(configs=_STEP_CONFIGS, key=["H", "B_KEY", "IS_LSTM"],
                 prune_configs_by={"early_config_prune": _prune_fwd_step})
@triton.heuristics({"EVEN_K": lambda args: args["H"] % args["BLOCK_K"] == 0})
@triton.jit(do_not_specialize=["t", "is_last"])
def _rnn_fwd_step_kernel(
    xg_ptr, w_hh_ptr, b_hh_ptr, bs_ptr,
    h_src_ptr, c_src_ptr, h_dst_ptr, c_dst_ptr,
    y_ptr, hn_ptr, cn_ptr, ws_ptr,
    t, is_last, B, H, B_KEY,
    stride_whh_r, stride_whh_c, stride_bhh,
    stride_y_t, stride_y_b, stride_y_h,
    stride_hn_b, stride_hn_h,
    stride_cn_b, stride_cn_h,
    IS_LSTM: tl.constexpr, HAS_BHH: tl.constexpr, HAS_BS: tl.constexpr, HAS_Y: tl.constexpr,
    HAS_HN: tl.constexpr, HAS_CN: tl.constexpr, HAS_WS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Step t for rows [pid_b*BLOCK_B, +BLOCK_B) and hidden units J = [pid_h*BLOCK_H, +BLOCK_H).
    Internal buffers are contiguous: xg [T, B, G*H], h/c src/dst [B, H], ws [T, B, S, H]."""
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    if IS_LSTM:
        GH = 4 * H
        SH = 6 * H
    else:
        GH = 3 * H
        SH = 5 * H

    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    offs_j = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H] hidden units
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B] batch rows
    offs_k = tl.arange(0, BLOCK_K)                    # [BLOCK_K]
    cols = offs_j % H                                 # loads wrap; stores are masked
    rows = (offs_b % B).to(tl.int64)
    n_act = _n_active(bs_ptr, t, B, HAS_BS)
    act = (offs_b < n_act)[:, None]                   # [BLOCK_B, 1] rows updated at t
    mask = (offs_b < B)[:, None] & (offs_j < H)[None, :]

    # Hidden GEMM: acc_g = h_prev[rows, :] @ W_hh[g*H + J, :]^T, skipped for frozen blocks.
    acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    k_hi = tl.where(pid_b * BLOCK_B < n_act, H, 0)
    h_ptrs = h_src_ptr + (rows[:, None] * H + offs_k[None, :])                            # [BLOCK_B, BLOCK_K]
    w_ptrs = w_hh_ptr + (cols[None, :] * stride_whh_r + offs_k[:, None] * stride_whh_c)  # [BLOCK_K, BLOCK_H]
    w_gate = H * stride_whh_r
    for k0 in range(0, k_hi, BLOCK_K):
        if EVEN_K:
            hk = tl.load(h_ptrs)
            w0 = tl.load(w_ptrs)
            w1 = tl.load(w_ptrs + w_gate)
            w2 = tl.load(w_ptrs + 2 * w_gate)
            if IS_LSTM:
                w3 = tl.load(w_ptrs + 3 * w_gate)
        else:
            k_ok = offs_k < H - k0
            hk = tl.load(h_ptrs, mask=k_ok[None, :], other=0.0)
            w0 = tl.load(w_ptrs, mask=k_ok[:, None], other=0.0)
            w1 = tl.load(w_ptrs + w_gate, mask=k_ok[:, None], other=0.0)
            w2 = tl.load(w_ptrs + 2 * w_gate, mask=k_ok[:, None], other=0.0)
            if IS_LSTM:
                w3 = tl.load(w_ptrs + 3 * w_gate, mask=k_ok[:, None], other=0.0)
        hk = hk.to(w_hh_ptr.dtype.element_ty)  # the fp32 state as the weights' type
        acc0 = _mma(hk, w0, acc0, INPUT_PRECISION, DOT_IN_FP32)
        acc1 = _mma(hk, w1, acc1, INPUT_PRECISION, DOT_IN_FP32)
        acc2 = _mma(hk, w2, acc2, INPUT_PRECISION, DOT_IN_FP32)
        if IS_LSTM:
            acc3 = _mma(hk, w3, acc3, INPUT_PRECISION, DOT_IN_FP32)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_whh_c

    # Epilogue: gates, state update, outputs.
    row_t = t.to(tl.int64) * B + rows                          # [BLOCK_B] (t, b) row index
    s_off = rows[:, None] * H + cols[None, :]                  # [BLOCK_B, BLOCK_H] in a [B, H] state
    xg = xg_ptr + (row_t[:, None] * GH + cols[None, :])        # gate 0 of the tile
    h_prev = tl.load(h_src_ptr + s_off).to(acc_dtype)
    if IS_LSTM:
        c_prev = tl.load(c_src_ptr + s_off).to(acc_dtype)
        gi = _sigmoid(acc0 + tl.load(xg))
        gf = _sigmoid(acc1 + tl.load(xg + H))
        gg = _tanh(acc2 + tl.load(xg + 2 * H))
        go = _sigmoid(acc3 + tl.load(xg + 3 * H))
        c_new = gf * c_prev + gi * gg
        h_new = go * _tanh(c_new)
        c_out = tl.where(act, c_new, c_prev)
        tl.store(c_dst_ptr + s_off, c_out, mask=mask)
    else:
        hl = acc2
        if HAS_BHH:
            hl += tl.load(b_hh_ptr + (2 * H + cols) * stride_bhh).to(acc_dtype)[None, :]
        gr = _sigmoid(acc0 + tl.load(xg))
        gz = _sigmoid(acc1 + tl.load(xg + H))
        gn = _tanh(tl.load(xg + 2 * H) + gr * hl)
        h_new = (1.0 - gz) * gn + gz * h_prev
    h_out = tl.where(act, h_new, h_prev)
    tl.store(h_dst_ptr + s_off, h_out, mask=mask)
    if HAS_Y:
        y_ptrs = y_ptr + t.to(tl.int64) * stride_y_t + (offs_b[:, None] * stride_y_b + offs_j[None, :] * stride_y_h)
        tl.store(y_ptrs, tl.where(act, h_new, 0.0).to(y_ptr.dtype.element_ty), mask=mask)
    if is_last != 0:
        if HAS_HN:
            tl.store(hn_ptr + (offs_b[:, None] * stride_hn_b + offs_j[None, :] * stride_hn_h),
                     h_out.to(hn_ptr.dtype.element_ty), mask=mask)
        if IS_LSTM:
            if HAS_CN:
                tl.store(cn_ptr + (offs_b[:, None] * stride_cn_b + offs_j[None, :] * stride_cn_h),
                         c_out.to(cn_ptr.dtype.element_ty), mask=mask)
    if HAS_WS:
        ws = ws_ptr + (row_t[:, None] * SH + cols[None, :])
        ws_ty = ws_ptr.dtype.element_ty
        if IS_LSTM:
            tl.store(ws, gi.to(ws_ty), mask=mask)
            tl.store(ws + H, gf.to(ws_ty), mask=mask)
            tl.store(ws + 2 * H, gg.to(ws_ty), mask=mask)
            tl.store(ws + 3 * H, go.to(ws_ty), mask=mask)
            tl.store(ws + 4 * H, c_prev.to(ws_ty), mask=mask)
            tl.store(ws + 5 * H, h_prev.to(ws_ty), mask=mask)
        else:
            tl.store(ws, gr.to(ws_ty), mask=mask)
            tl.store(ws + H, gz.to(ws_ty), mask=mask)
            tl.store(ws + 2 * H, gn.to(ws_ty), mask=mask)
            tl.store(ws + 3 * H, hl.to(ws_ty), mask=mask)
            tl.store(ws + 4 * H, h_prev.to(ws_ty), mask=mask)


# ----------------------------------------------------------------------------------------
# Backward step
# ----------------------------------------------------------------------------------------

@triton.autotune(configs=_STEP_CONFIGS, key=["H", "B_KEY", "IS_LSTM", "has_prev"],
                 prune_configs_by={"early_config_prune": _prune_bwd_step})
@triton.heuristics({"EVEN_K": lambda args: args["H"] % args["BLOCK_K"] == 0})
@triton.jit(do_not_specialize=["t", "t_prev", "has_prev"])
def _rnn_bwd_step_kernel(
    dg_ptr, w_hh_ptr, bs_ptr, ws_ptr, dy_ptr,
    gd_src_ptr, gd_dst_ptr, dc_src_ptr, dc_dst_ptr, dh0_ptr, dc0_ptr,
    t, t_prev, has_prev, B, H, B_KEY,
    stride_whh_r, stride_whh_c,
    stride_dy_t, stride_dy_b, stride_dy_h,
    stride_dh0_b, stride_dh0_h,
    stride_dc0_b, stride_dc0_h,
    IS_LSTM: tl.constexpr, FINAL: tl.constexpr, HAS_BS: tl.constexpr, HAS_DY: tl.constexpr,
    HAS_DH0: tl.constexpr, HAS_DC0: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward of step t (FINAL: the dh0 / dc0 epilogue) for a [BLOCK_B, BLOCK_H] tile.
    gh = gd_src + dG[t_prev] @ W_hh[:, J] (if has_prev) is dL/dh_t through the recurrence;
    then, for rows active at t: dh = gh + dy[t], the gate gradients -> dG[t] (0 for frozen
    rows), gd_dst = the direct part of dL/dh_{t-1} (LSTM 0, GRU dh * z; frozen: gh), dc_dst.
    Internal buffers contiguous: dG [T, B, 4H], gd / dc [B, H], ws [T, B, S, H]."""
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    if IS_LSTM:
        G: tl.constexpr = 4
        SH = 6 * H
    else:
        G: tl.constexpr = 3
        SH = 5 * H
    DH = 4 * H  # dG row length

    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    offs_j = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B]
    offs_k = tl.arange(0, BLOCK_K)                    # [BLOCK_K]
    cols = offs_j % H
    rows = (offs_b % B).to(tl.int64)
    mask = (offs_b < B)[:, None] & (offs_j < H)[None, :]

    # dh GEMM of the step processed before: dG[t_prev][rows, slab(g)] @ W_hh[g*H:(g+1)*H, J].
    # Rows frozen at t_prev have dG = 0 there, so their contribution is exactly 0.
    n_prev = _n_active(bs_ptr, t_prev, B, HAS_BS)
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    k_hi = tl.where((has_prev != 0) & (pid_b * BLOCK_B < n_prev), H, 0)
    a_ptrs = dg_ptr + ((t_prev.to(tl.int64) * B + rows)[:, None] * DH + offs_k[None, :])  # [BLOCK_B, BLOCK_K]
    w_ptrs = w_hh_ptr + (offs_k[:, None] * stride_whh_r + cols[None, :] * stride_whh_c)  # [BLOCK_K, BLOCK_H]
    for k0 in range(0, k_hi, BLOCK_K):
        k_ok = offs_k < H - k0
        for g in tl.static_range(G):
            if IS_LSTM:
                a_off = g * H
            else:
                a_off = (g + g // 2) * H  # GRU slabs 0, 1, 3: dr, dz, dn * r
            if EVEN_K:
                a = tl.load(a_ptrs + a_off)
                w = tl.load(w_ptrs + g * H * stride_whh_r)
            else:
                a = tl.load(a_ptrs + a_off, mask=k_ok[None, :], other=0.0)
                w = tl.load(w_ptrs + g * H * stride_whh_r, mask=k_ok[:, None], other=0.0)
            acc = _mma(a, w, acc, INPUT_PRECISION, DOT_IN_FP32)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_whh_r

    s_off = rows[:, None] * H + cols[None, :]  # [BLOCK_B, BLOCK_H] in a [B, H] state buffer
    gh = tl.load(gd_src_ptr + s_off).to(acc_dtype) + acc
    if FINAL:
        if HAS_DH0:
            tl.store(dh0_ptr + (offs_b[:, None] * stride_dh0_b + offs_j[None, :] * stride_dh0_h),
                     gh.to(dh0_ptr.dtype.element_ty), mask=mask)
        if IS_LSTM:
            if HAS_DC0:
                dc = tl.load(dc_src_ptr + s_off)
                tl.store(dc0_ptr + (offs_b[:, None] * stride_dc0_b + offs_j[None, :] * stride_dc0_h),
                         dc.to(dc0_ptr.dtype.element_ty), mask=mask)
    else:
        n_act = _n_active(bs_ptr, t, B, HAS_BS)
        act = (offs_b < n_act)[:, None]  # [BLOCK_B, 1]
        row_t = t.to(tl.int64) * B + rows
        dh = gh
        if HAS_DY:
            dy_ptrs = dy_ptr + t.to(tl.int64) * stride_dy_t + (rows[:, None] * stride_dy_b
                                                             + cols[None, :] * stride_dy_h)
            dh += tl.where(act, tl.load(dy_ptrs).to(acc_dtype), 0.0)
        ws = ws_ptr + (row_t[:, None] * SH + cols[None, :])
        dg = dg_ptr + (row_t[:, None] * DH + cols[None, :])
        dg_ty = dg_ptr.dtype.element_ty
        if IS_LSTM:
            gi = tl.load(ws).to(acc_dtype)
            gf = tl.load(ws + H).to(acc_dtype)
            gg = tl.load(ws + 2 * H).to(acc_dtype)
            go = tl.load(ws + 3 * H).to(acc_dtype)
            c_prev = tl.load(ws + 4 * H).to(acc_dtype)
            dc_in = tl.load(dc_src_ptr + s_off).to(acc_dtype)
            tc = _tanh(gf * c_prev + gi * gg)  # tanh(c_t), c_t recomputed from the saved gates
            dc = dc_in + dh * go * (1.0 - tc * tc)
            d_i = dc * gg * gi * (1.0 - gi)
            d_f = dc * c_prev * gf * (1.0 - gf)
            d_g = dc * gi * (1.0 - gg * gg)
            d_o = dh * tc * go * (1.0 - go)
            tl.store(dg, tl.where(act, d_i, 0.0).to(dg_ty), mask=mask)
            tl.store(dg + H, tl.where(act, d_f, 0.0).to(dg_ty), mask=mask)
            tl.store(dg + 2 * H, tl.where(act, d_g, 0.0).to(dg_ty), mask=mask)
            tl.store(dg + 3 * H, tl.where(act, d_o, 0.0).to(dg_ty), mask=mask)
            tl.store(dc_dst_ptr + s_off, tl.where(act, dc * gf, dc_in), mask=mask)
            tl.store(gd_dst_ptr + s_off, tl.where(act, 0.0, gh), mask=mask)
        else:
            gr = tl.load(ws).to(acc_dtype)
            gz = tl.load(ws + H).to(acc_dtype)
            gn = tl.load(ws + 2 * H).to(acc_dtype)
            hl = tl.load(ws + 3 * H).to(acc_dtype)
            h_prev = tl.load(ws + 4 * H).to(acc_dtype)
            d_n = dh * (1.0 - gz) * (1.0 - gn * gn)  # through tanh: the n pre-activation
            d_z = dh * (h_prev - gn) * gz * (1.0 - gz)
            d_r = d_n * hl * gr * (1.0 - gr)
            tl.store(dg, tl.where(act, d_r, 0.0).to(dg_ty), mask=mask)
            tl.store(dg + H, tl.where(act, d_z, 0.0).to(dg_ty), mask=mask)
            tl.store(dg + 2 * H, tl.where(act, d_n, 0.0).to(dg_ty), mask=mask)
            tl.store(dg + 3 * H, tl.where(act, d_n * gr, 0.0).to(dg_ty), mask=mask)
            tl.store(gd_dst_ptr + s_off, tl.where(act, dh * gz, gh), mask=mask)


# ----------------------------------------------------------------------------------------
# Host helpers
# ----------------------------------------------------------------------------------------

def _check_kind(kind):
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    return kind == "lstm"


def _check_tensor(name, t, shape, what, dtypes=_FLOAT_DTYPES):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be {what} = {list(shape)}, got {list(t.shape)}")


def _check_output(name, t):
    if any(st == 0 and s > 1 for s, st in zip(t.shape, t.stride())):
        raise ValueError(f"{name} is written and must not have zero strides, got stride {t.stride()}")


def _check_same_dtype(name, t, ref_name, ref):
    if t is not None and t.dtype != ref.dtype:
        raise TypeError(f"{name} must have {ref_name}'s dtype {ref.dtype}, got {t.dtype}")


def _check_common(is_lstm, x, w_ih, w_hh, b_ih, b_hh, h0, c0, ws, batch_sizes):
    """Shapes and dtypes shared by forward and backward; returns (T, B, I, H, G)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a [T, B, I] tensor, got "
                         f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    _check_tensor("x", x, x.shape, "[T, B, I]")
    T, B, I = x.shape
    G = 4 if is_lstm else 3
    if not isinstance(w_hh, torch.Tensor) or w_hh.dim() != 2:
        raise ValueError("w_hh must be a [G*H, H] tensor")
    H = w_hh.shape[1]
    _check_tensor("w_hh", w_hh, (G * H, H), f"[{G}*H, H]")
    _check_tensor("w_ih", w_ih, (G * H, I), f"[{G}*H, I]")
    for name, t in (("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
        _check_same_dtype(name, t, "x", x)
    for name, t in (("b_ih", b_ih), ("b_hh", b_hh)):
        if t is not None:
            _check_tensor(name, t, (G * H,), f"[{G}*H]")
    if h0 is not None:
        _check_tensor("h0", h0, (B, H), "[B, H]")
    if is_lstm and c0 is not None:
        _check_tensor("c0", c0, (B, H), "[B, H]")
    if ws is not None:
        _check_same_dtype("ws", ws, "x", x)
        need = rnn_workspace_elems("lstm" if is_lstm else "gru", T, B, H)
        if not ws.is_contiguous() or ws.numel() < need:
            raise ValueError(f"ws must be contiguous with >= rnn_workspace_elems(...) = {need} elements, "
                             f"got {ws.numel()} (contiguous: {ws.is_contiguous()})")
    if batch_sizes is not None:
        _check_tensor("batch_sizes", batch_sizes, (T,), "[T]", (torch.int64,))
    return T, B, I, H, G


def _batch_sizes_on(batch_sizes, device):
    """batch_sizes where the kernels read it (a PackedSequence keeps it on the CPU)."""
    if batch_sizes is None or batch_sizes.device == device:
        return batch_sizes
    return batch_sizes.to(device, non_blocking=True)


def _state_pair(B, H, dtype, device):
    """Two [B, H] contiguous buffers in one allocation, each 16-byte aligned (so that both get
    the same pointer specialization)."""
    n = B * H
    npad = triton.cdiv(n, 16) * 16
    buf = torch.empty(2 * npad, dtype=dtype, device=device)
    return buf[:n].view(B, H), buf[npad:npad + n].view(B, H)


def _fill(dst, src):
    if src is None:
        dst.zero_()
    else:
        dst.copy_(src)


def _splits(R, tiles, partial_elems, device, elem_bytes):
    """(splits, chunk) of a reduction over R (t, b) rows (_launch.split_reduction)."""
    return _split_reduction(R, tiles, partial_elems, device, elem_bytes, _MIN_SPLIT_ROWS,
                            _MAX_PARTIAL_BYTES, _MAX_GRID_Y)


def _meta(x):
    return dict(INPUT_PRECISION=_input_precision(x.dtype, x.device), ACC_FP64=x.dtype == torch.float64,
                DOT_IN_FP32=_INTERPRET and x.dtype == torch.bfloat16)


def _gemm_rows_m(x, a, a_strides, b, b_strides, c, c_strides, M, N, K, DB,
                 bias1=None, bias2=None, nb2=0):
    """C = A @ B (+ biases) with the (t, b) rows on M (see _rnn_gemm_kernel)."""
    def grid(m):
        return (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]), 1)

    _rnn_gemm_kernel[grid](
        a, b, c, bias1, bias2, None,
        M, N, K, DB, max(K, 1), nb2,
        *a_strides, *b_strides, 0, *c_strides,
        bias1.stride(0) if bias1 is not None else 0, bias2.stride(0) if bias2 is not None else 0,
        DEC_K=False, HAS_BIAS1=bias1 is not None, HAS_BIAS2=bias2 is not None, MASK_ROWS=False,
        **_meta(x),
    )


def _gemm_rows_k(x, a, a_strides, b, b_strides, out, M, N, R, DB, bs=None):
    """out[M, N] = A @ B with the (t, b) rows on K (the weight gradients), split over the
    reduction into fp32 (fp64) partials when there are too few output tiles."""
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    splits, chunk = _splits(R, triton.cdiv(M, 64) * triton.cdiv(N, 64), M * N, x.device,
                            acc_dtype.itemsize)
    if splits == 1:
        part, c_strides = out, (0, out.stride(0), out.stride(1))
    else:
        part = torch.empty((splits, M, N), dtype=acc_dtype, device=x.device)
        c_strides = part.stride()

    def grid(m):
        return (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]), splits)

    _rnn_gemm_kernel[grid](
        a, b, part, None, None, bs,
        M, N, R, DB, chunk, 0,
        *a_strides, *b_strides, *c_strides, 0, 0,
        DEC_K=True, HAS_BIAS1=False, HAS_BIAS2=False, MASK_ROWS=bs is not None,
        **_meta(x),
    )
    if splits > 1:
        out.copy_(part.sum(0))  # fixed-order reduction of the partials: deterministic


def _colsum(src, acc_dtype):
    """Column sums of a [R, N] tensor in acc_dtype (a new [N] tensor)."""
    R, N = src.shape
    block_r, block_n = _COLSUM_BLOCKS
    splits, chunk = _splits(R, triton.cdiv(N, block_n), N, src.device, acc_dtype.itemsize)
    part = torch.empty((splits, N), dtype=acc_dtype, device=src.device)
    _rnn_colsum_kernel[(triton.cdiv(N, block_n), splits)](
        src, part, R, N, chunk, src.stride(0), src.stride(1), part.stride(0), part.stride(1),
        ACC_FP64=acc_dtype == torch.float64, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=4,
    )
    return part.sum(0) if splits > 1 else part[0]


def _step_grid(B, H):
    def grid(m):
        return (triton.cdiv(H, m["BLOCK_H"]), triton.cdiv(B, m["BLOCK_B"]))
    return grid


def _strides(t, n):
    return t.stride() if t is not None else (0,) * n


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------

def rnn_workspace_elems(kind, T, B, H):
    """Elements of x's dtype the caller allocates for ws: T*B*6*H (LSTM), T*B*5*H (GRU)."""
    _check_kind(kind)
    return int(T) * int(B) * _WS_SLABS[kind] * int(H)


def rnn_forward(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, hn, cn, ws, *, reverse=False, batch_sizes=None):
    """One LSTM / GRU layer over a sequence: y, hn (, cn), and the workspace for the backward.

    Args:
        kind: "lstm" or "gru".
        x: [T, B, I] float16, bfloat16, float32 or float64, any strides (a transposed
            batch_first view runs without a copy).
        h0, c0: [B, H] (any float dtype, any strides) or None (zeros); c0 is ignored for GRU.
        w_ih: [G*H, I], w_hh: [G*H, H] (G = 4 LSTM, 3 GRU), x's dtype, any strides.
        b_ih, b_hh: [G*H] in x's dtype, or None (no bias).
        y: [T, B, H] or None; hn, cn: [B, H] or None (cn ignored for GRU). Preallocated, any
            float dtype (results cast), no zero strides; each one given is fully written
            (y = 0 at frozen rows).
        ws: None (inference: nothing saved), or a contiguous tensor of x's dtype with at
            least rnn_workspace_elems(kind, T, B, H) elements, written for rnn_backward.
        reverse: walk t = T-1 .. 0.
        batch_sizes: None or int64 [T] (any device; copied to x's if elsewhere): at time t
            only rows b < batch_sizes[t] are updated (PackedSequence semantics for sorted,
            non-increasing sizes; values are not checked, rows >= B never exist).

    Returns:
        (y, hn, cn).

    Raises:
        TypeError: non-tensors, wrong or mismatched dtypes. ValueError: an unknown kind,
        shapes that do not match, a too small or non-contiguous ws, an output with a zero
        stride, tensors on different devices.
        RuntimeError: CPU tensors without TRITON_INTERPRET=1 set at import.
    """
    is_lstm = _check_kind(kind)
    T, B, I, H, G = _check_common(is_lstm, x, w_ih, w_hh, b_ih, b_hh, h0, c0, ws, batch_sizes)
    for name, t, shape, what in (("y", y, (T, B, H), "[T, B, H]"), ("hn", hn, (B, H), "[B, H]"),
                                 ("cn", cn if is_lstm else None, (B, H), "[B, H]")):
        if t is not None:
            _check_tensor(name, t, shape, what)
            _check_output(name, t)
    if not is_lstm:
        c0 = cn = None
    _check_devices([("x", x), ("h0", h0), ("c0", c0), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih),
                    ("b_hh", b_hh), ("y", y), ("hn", hn), ("cn", cn), ("ws", ws)])
    dev = x.device
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if B == 0 or H == 0:
        return y, hn, cn
    if T == 0:
        for out, init in ((hn, h0), (cn, c0)):
            if out is not None:
                _fill(out, init)
        return y, hn, cn
    bs = _batch_sizes_on(batch_sizes, dev)

    # Input projection of all steps: xg[t, b, :] = x[t, b] @ w_ih^T + b_ih (+ b_hh).
    GH = G * H
    xg = torch.empty((T, B, GH), dtype=acc_dtype, device=dev)
    _gemm_rows_m(x, x, x.stride(), w_ih, (w_ih.stride(1), w_ih.stride(0)),
                 xg, xg.stride(), T * B, GH, I, B,
                 bias1=b_ih, bias2=b_hh, nb2=GH if is_lstm else 2 * H)

    hs = _state_pair(B, H, acc_dtype, dev)
    _fill(hs[0], h0)
    cs = None
    if is_lstm:
        cs = _state_pair(B, H, acc_dtype, dev)
        _fill(cs[0], c0)
    y_st, hn_st, cn_st = _strides(y, 3), _strides(hn, 2), _strides(cn, 2)
    meta = dict(IS_LSTM=is_lstm, HAS_BHH=b_hh is not None, HAS_BS=bs is not None, HAS_Y=y is not None,
                HAS_HN=hn is not None, HAS_CN=cn is not None, HAS_WS=ws is not None, **_meta(x))
    grid = _step_grid(B, H)
    for s in range(T):
        t = T - 1 - s if reverse else s
        src, dst = s % 2, 1 - s % 2
        _rnn_fwd_step_kernel[grid](
            xg, w_hh, b_hh, bs,
            hs[src], cs[src] if is_lstm else None, hs[dst], cs[dst] if is_lstm else None,
            y, hn, cn, ws,
            t, int(s == T - 1), B, H, _np2(B),
            w_hh.stride(0), w_hh.stride(1), b_hh.stride(0) if b_hh is not None else 0,
            *y_st, *hn_st, *cn_st,
            **meta,
        )
    return y, hn, cn


def rnn_backward(kind, x, h0, c0, w_ih, w_hh, b_hh, ws, dy, dhn, dcn, dx, dh0, dc0, dw_ih, dw_hh,
                 db_ih, db_hh, *, reverse=False, batch_sizes=None):
    """Gradients of rnn_forward through time, from its workspace.

    Args:
        kind, x, h0, c0, w_ih, w_hh, b_hh, reverse, batch_sizes: as given to rnn_forward
            (h0, c0 and b_hh are only checked: what the backward needs of them is in ws).
        ws: the workspace rnn_forward wrote (not modified here).
        dy: [T, B, H] or None (no gradient from y); dhn, dcn: [B, H] or None. Any float
            dtype, any strides. dcn is ignored for GRU.
        dx [T, B, I], dh0 [B, H], dc0 [B, H] (LSTM), dw_ih [G*H, I], dw_hh [G*H, H],
        db_ih [G*H], db_hh [G*H]: preallocated (any float dtype, results cast, no zero
            strides) or None (not wanted); each one given is fully written.

    Returns:
        (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh).

    Raises:
        TypeError / ValueError / RuntimeError: as rnn_forward; ws None also raises ValueError.
    """
    is_lstm = _check_kind(kind)
    if ws is None:
        raise ValueError("ws is required: the workspace written by rnn_forward")
    T, B, I, H, G = _check_common(is_lstm, x, w_ih, w_hh, None, b_hh, h0, c0, ws, batch_sizes)
    GH = G * H
    if not is_lstm:
        c0 = dcn = dc0 = None
    for name, t, shape, what in (("dy", dy, (T, B, H), "[T, B, H]"), ("dhn", dhn, (B, H), "[B, H]"),
                                 ("dcn", dcn, (B, H), "[B, H]")):
        if t is not None:
            _check_tensor(name, t, shape, what)
    outs = (("dx", dx, (T, B, I), "[T, B, I]"), ("dh0", dh0, (B, H), "[B, H]"), ("dc0", dc0, (B, H), "[B, H]"),
            ("dw_ih", dw_ih, (GH, I), f"[{G}*H, I]"), ("dw_hh", dw_hh, (GH, H), f"[{G}*H, H]"),
            ("db_ih", db_ih, (GH,), f"[{G}*H]"), ("db_hh", db_hh, (GH,), f"[{G}*H]"))
    for name, t, shape, what in outs:
        if t is not None:
            _check_tensor(name, t, shape, what)
            _check_output(name, t)
    _check_devices([("x", x), ("h0", h0), ("c0", c0), ("w_ih", w_ih), ("w_hh", w_hh), ("b_hh", b_hh),
                    ("ws", ws), ("dy", dy), ("dhn", dhn), ("dcn", dcn)] + [(n, t) for n, t, _, _ in outs])
    result = (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)
    dev = x.device
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if B == 0 or H == 0 or T == 0:
        # No step: dh0 = dhn, dc0 = dcn; every sum over steps / rows is empty.
        for out, init in ((dh0, dhn), (dc0, dcn)):
            if out is not None:
                _fill(out, init if T == 0 else None)
        for out in (dx, dw_ih, dw_hh, db_ih, db_hh):
            if out is not None:
                out.zero_()
        return result
    if all(t is None for t in result):
        return result
    bs = _batch_sizes_on(batch_sizes, dev)

    # Backprop through time: dG[t] for every step, one launch per step (+ the final one).
    dg = torch.empty((T, B, _DG_SLABS * H), dtype=x.dtype, device=dev)
    gds = _state_pair(B, H, acc_dtype, dev)
    _fill(gds[0], dhn)
    dcs = (None, None)
    if is_lstm:
        dcs = _state_pair(B, H, acc_dtype, dev)
        _fill(dcs[0], dcn)
    ws3 = ws.view(-1)[:T * B * _WS_SLABS[kind] * H]
    meta = dict(IS_LSTM=is_lstm, HAS_BS=bs is not None, HAS_DY=dy is not None,
                HAS_DH0=dh0 is not None, HAS_DC0=dc0 is not None, **_meta(x))
    head = (B, H, _np2(B), w_hh.stride(0), w_hh.stride(1), *_strides(dy, 3), *_strides(dh0, 2),
            *_strides(dc0, 2))
    grid = _step_grid(B, H)

    def order(s):  # forward processing step s -> time index
        return T - 1 - s if reverse else s

    n = 0
    for s in range(T - 1, -1, -1):
        src, dst = n % 2, 1 - n % 2
        t = order(s)
        has_prev = s < T - 1
        _rnn_bwd_step_kernel[grid](
            dg, w_hh, bs, ws3, dy,
            gds[src], gds[dst], dcs[src], dcs[dst], dh0, dc0,
            t, order(s + 1) if has_prev else t, int(has_prev), *head,
            FINAL=False, **meta,
        )
        n += 1
    if dh0 is not None or dc0 is not None:
        src = n % 2
        _rnn_bwd_step_kernel[grid](
            dg, w_hh, bs, ws3, dy,
            gds[src], gds[src], dcs[src], dcs[src], dh0, dc0,
            order(0), order(0), 1, *head,
            FINAL=True, **meta,
        )

    R = T * B
    DH = _DG_SLABS * H
    dg_rows = (B * DH, DH)  # (t, b) strides of dG
    if dx is not None:  # dx[t, b] = dG_x[t, b] @ w_ih  (dG_x = dG[..., :G*H])
        _gemm_rows_m(x, dg, (*dg_rows, 1), w_ih, w_ih.stride(), dx, dx.stride(), R, I, GH, B)
    if dw_ih is not None:  # dw_ih = dG_x^T @ x (frozen rows of x masked: they may hold anything)
        _gemm_rows_k(x, dg, (1, *dg_rows), x, x.stride(), dw_ih, GH, I, R, B, bs=bs)
    if dw_hh is not None:  # dw_hh = dG_h^T @ h_prev (h_prev = ws slab S-1)
        S = _WS_SLABS[kind]
        hp = ws3[(S - 1) * H:]
        hp_strides = (B * S * H, S * H, 1)
        if is_lstm:
            _gemm_rows_k(x, dg, (1, *dg_rows), hp, hp_strides, dw_hh, GH, H, R, B)
        else:  # rows r, z from dG slabs 0, 1; rows n from slab 3 (dn * r)
            _gemm_rows_k(x, dg, (1, *dg_rows), hp, hp_strides, dw_hh[:2 * H], 2 * H, H, R, B)
            _gemm_rows_k(x, dg[..., 3 * H:], (1, *dg_rows), hp, hp_strides, dw_hh[2 * H:], H, H, R, B)
    if db_ih is not None or db_hh is not None:
        sums = _colsum(dg.view(R, DH), acc_dtype)  # [4H]: the column sums of every dG slab
        if db_ih is not None:
            db_ih.copy_(sums[:GH])
        if db_hh is not None:
            if is_lstm:
                db_hh.copy_(sums)
            else:
                db_hh[:2 * H].copy_(sums[:2 * H])
                db_hh[2 * H:].copy_(sums[3 * H:])
    return result
