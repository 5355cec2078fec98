"""Triton GEMM with a fused bias + activation epilogue, and that epilogue's backward.

Computes, for every batch index b (all tensors 3-D, any strides, no copies made):

    z[b]   = a[b] @ w[b] (+ out[b] if accumulate) (+ bias)     a [BT, M, K], w [BT, K, N]
    out[b] = act(z[b])                                          out [BT, M, N]
    preact[b] = z[b]                                            (optional, for the backward)

    act in {"none", "relu", "gelu" (exact: 0.5 z (1 + erf(z / sqrt 2))), "tanh", "sigmoid"}

and, on a 2-D [M, N] problem, the epilogue's backward

    dz = dy * act'(saved)      saved = y (output) for none/relu/tanh/sigmoid, = z for gelu
    dbias = sum_m dz[m, :]     (optional, one deterministic pass, no atomics)

Layout: every stride is passed to the kernel, so transposed views (a.mT, w.mT) and batch
broadcasts (batch stride 0) run without copies. Inputs fp16 / bf16 / fp32 / fp64 (a and w
the same dtype); the accumulator is fp32 (fp64 for fp64 inputs); the result is cast to
out's dtype. fp32 inputs use TF32 tensor cores only when
torch.backends.cuda.matmul.allow_tf32 is True (as torch does), otherwise IEEE fp32.

Blocking (forward): one program per BLOCK_M x BLOCK_N tile of out, looping over K in
BLOCK_K steps with tl.dot; tiles are visited in groups of GROUP_M tile-rows so that the
programs running together share A row-panels and W column-panels in L2. Batch is grid
axis 1. Rows/columns past the edge are wrapped (index % M) for the loads and masked at the
store, so the K loop masks only K (and not even that when K % BLOCK_K == 0).
BLOCK_* come from autotuning over Hopper configs keyed on (M, N, K, dtypes); under the
interpreter (TRITON_INTERPRET=1 at import) a single 64x64x32 config is used, and bf16 tiles
are widened to fp32 before tl.dot (the interpreter's dot multiplies bf16 bit patterns).
Backward: each program owns BLOCK_N columns; with dbias it walks all rows and keeps the
column sums in registers, without dbias the rows are also split over grid axis 1.

Test (CPU, interpreter):  TRITON_INTERPRET=1 python -m pytest tests/test_gemm.py
Benchmark (GPU):          python -m pykernels bench gemm
"""

import torch
import triton
import triton.language as tl

from ._launch import INTERPRET as _INTERPRET
from ._launch import check_devices as _check_devices

__all__ = ["gemm_forward", "gemm_backward", "ACTIVATIONS"]

ACTIVATIONS = ("none", "relu", "gelu", "tanh", "sigmoid")


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT32_MAX = 2**31 - 1
_MAX_GRID_Y = 65535  # CUDA limit of grid axis 1
_SMEM_BYTES = 227 * 1024  # H100/H200 shared memory available to one block


def _config(bm, bn, bk, stages, warps, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_stages=stages, num_warps=warps)


if _INTERPRET:
    # One config, no tuning. Interpreter time is ~5-10 ms of Python per program whatever the
    # tile, so 64x64 runs ~3.5x faster than 32x32 while odd shapes still span several tiles.
    _FWD_CONFIGS = [_config(64, 64, 32, 1, 4)]
else:
    _FWD_CONFIGS = [
        # large tiles for fp16/bf16 on Hopper (wgmma): 128x256 / 256x128 with 8 warps
        _config(128, 256, 64, 3, 8),
        _config(256, 128, 64, 3, 8),
        _config(128, 128, 64, 4, 8),
        _config(128, 128, 64, 3, 4),
        _config(128, 64, 64, 4, 4),
        _config(64, 128, 64, 4, 4),
        # BLOCK_K = 32: the fp32 / tf32 and fp64 friendly ones (half the shared memory)
        _config(128, 256, 32, 3, 8),
        _config(128, 128, 32, 4, 4),
        _config(64, 128, 32, 4, 4),
        _config(128, 64, 32, 4, 4),
        # small problems (few tiles): more programs in flight
        _config(64, 64, 32, 5, 4),
        _config(32, 64, 32, 5, 2),
    ]


def _prune_fwd_configs(configs, named_args, **kwargs):
    """Drop configs whose pipelined A/W tiles cannot fit in shared memory for this dtype."""
    named_args = {**named_args, **kwargs}  # keyword (constexpr) arguments arrive in kwargs
    elem = named_args["a_ptr"].element_size()
    fits = [c for c in configs
            if c.num_stages * (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * elem
            <= _SMEM_BYTES]
    if fits:
        return fits
    smallest = min(configs, key=lambda c: (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"])
    return [triton.Config(dict(smallest.kwargs), num_stages=2, num_warps=smallest.num_warps)]


# ----------------------------------------------------------------------------------------
# Elementwise epilogue helpers (jit functions, importable by other kernels)
# ----------------------------------------------------------------------------------------

@triton.jit
def _tanh(z):
    # tanh(|z|) = (1 - t) / (1 + t), t = exp(-2|z|): never overflows, but loses relative
    # accuracy near 0, where the odd Taylor series (error < 2e-17 relative for |z| < 1/16)
    # is used instead. (No tanh in tl.math that also runs in the interpreter.) Constants are
    # built with tl.full in z's dtype: a bare float literal is rounded to fp32 first.
    az = tl.abs(z)
    t = tl.exp(-2.0 * az)
    far = (1.0 - t) / (1.0 + t)
    far = tl.where(z < 0, -far, far)
    z2 = z * z
    p = tl.full([], -1382.0 / 155925.0, z.dtype)
    p = p * z2 + tl.full([], 62.0 / 2835.0, z.dtype)
    p = p * z2 + tl.full([], -17.0 / 315.0, z.dtype)
    p = p * z2 + tl.full([], 2.0 / 15.0, z.dtype)
    p = p * z2 + tl.full([], -1.0 / 3.0, z.dtype)
    near = z + z * (z2 * p)
    return tl.where(az < 0.0625, near, far)


@triton.jit
def _sigmoid(z):
    # e = exp(-|z|) <= 1 never overflows: sigmoid = 1 / (1 + e) for z >= 0, e / (1 + e) below.
    e = tl.exp(-tl.abs(z))
    r = 1.0 / (1.0 + e)
    return tl.where(z >= 0, r, e * r)


@triton.jit
def _activation(z, ACTIVATION: tl.constexpr):
    """y = act(z), computed in z's dtype."""
    if ACTIVATION == "relu":
        y = tl.where(z > 0, z, 0.0)
    elif ACTIVATION == "gelu":
        y = 0.5 * z * (1.0 + tl.math.erf(z * tl.full([], 0.7071067811865476, z.dtype)))
    elif ACTIVATION == "tanh":
        y = _tanh(z)
    elif ACTIVATION == "sigmoid":
        y = _sigmoid(z)
    else:
        y = z
    return y


@triton.jit
def _activation_grad(dy, s, ACTIVATION: tl.constexpr):
    """dz = dy * act'(.), where s is the output y (relu, tanh, sigmoid) or the input z (gelu)."""
    if ACTIVATION == "relu":
        dz = tl.where(s > 0, dy, 0.0)
    elif ACTIVATION == "gelu":
        cdf = 0.5 * (1.0 + tl.math.erf(s * tl.full([], 0.7071067811865476, s.dtype)))
        pdf = tl.exp(-0.5 * s * s) * tl.full([], 0.3989422804014327, s.dtype)  # 1/sqrt(2 pi)
        dz = dy * (cdf + s * pdf)
    elif ACTIVATION == "tanh":
        dz = dy * (1.0 - s * s)
    elif ACTIVATION == "sigmoid":
        dz = dy * (s * (1.0 - s))
    else:
        dz = dy
    return dz


# ----------------------------------------------------------------------------------------
# Forward kernel
# ----------------------------------------------------------------------------------------

@triton.autotune(configs=_FWD_CONFIGS, key=["M", "N", "K"],
                 prune_configs_by={"early_config_prune": _prune_fwd_configs},
                 restore_value=["out_ptr"])  # benchmarking must not compound ACCUMULATE
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _gemm_fwd_kernel(
    a_ptr, b_ptr, out_ptr, bias_ptr, preact_ptr,
    M, N, K,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_ob, stride_om, stride_on,
    stride_biasn,
    stride_pb, stride_pm, stride_pn,
    HAS_BIAS: tl.constexpr, HAS_PREACT: tl.constexpr, ACCUMULATE: tl.constexpr,
    ACTIVATION: tl.constexpr, INPUT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr,
    INT64_OFFSETS: tl.constexpr, DOT_IN_FP32: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32

    # Grouped tile order: GROUP_M tile-rows are swept column by column, so concurrently
    # running programs reuse the same A rows and W columns from L2.
    pid = tl.program_id(0)
    pid_batch = tl.program_id(1)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M  # (not tl.cdiv: nested jit calls are slow in the interpreter)
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_in_group = pid % num_pid_in_group
    pid_m = first_pid_m + pid_in_group % group_size_m
    pid_n = pid_in_group // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_k = tl.arange(0, BLOCK_K)                    # [BLOCK_K]
    if INT64_OFFSETS:
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
        k_step = tl.full([], BLOCK_K, tl.int64)  # so BLOCK_K * stride is formed in int64 too
    else:
        k_step = BLOCK_K
    # Loads wrap past-the-edge rows/cols onto valid ones; those results are never stored.
    rows = offs_m % M
    cols = offs_n % N

    batch = pid_batch.to(tl.int64)
    a_ptrs = a_ptr + batch * stride_ab + (rows[:, None] * stride_am + offs_k[None, :] * stride_ak)  # [BLOCK_M, BLOCK_K]
    b_ptrs = b_ptr + batch * stride_bb + (offs_k[:, None] * stride_bk + cols[None, :] * stride_bn)  # [BLOCK_K, BLOCK_N]

    a_step = k_step * stride_ak
    b_step = k_step * stride_bk
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, acc_dtype)  # [BLOCK_M, BLOCK_N]
    for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if DOT_IN_FP32:  # interpreter only: its tl.dot multiplies bf16 bit patterns as ints
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc_dtype)
        a_ptrs += a_step
        b_ptrs += b_step

    # Epilogue: z = acc (+ out) (+ bias); preact <- z; out <- act(z).
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)  # [BLOCK_M, BLOCK_N]
    out_ptrs = out_ptr + batch * stride_ob + (offs_m[:, None] * stride_om + offs_n[None, :] * stride_on)
    z = acc
    if ACCUMULATE:
        z += tl.load(out_ptrs, mask=mask, other=0.0).to(acc_dtype)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols * stride_biasn).to(acc_dtype)  # [BLOCK_N]
        z += bias[None, :]
    if HAS_PREACT:
        p_ptrs = preact_ptr + batch * stride_pb + (offs_m[:, None] * stride_pm + offs_n[None, :] * stride_pn)
        tl.store(p_ptrs, z.to(preact_ptr.dtype.element_ty), mask=mask)
    y = _activation(z, ACTIVATION)
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------
# Backward (epilogue) kernel
# ----------------------------------------------------------------------------------------

@triton.jit
def _gemm_bwd_kernel(
    dy_ptr, saved_ptr, dz_ptr, dbias_ptr,
    M, N,
    stride_dym, stride_dyn,
    stride_sm, stride_sn,
    stride_dzm, stride_dzn,
    stride_dbn,
    HAS_SAVED: tl.constexpr, HAS_DBIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_FP64: tl.constexpr, INT64_OFFSETS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32

    # Program (pid_n, pid_m) owns columns [pid_n*BLOCK_N, +BLOCK_N) and the row tiles
    # pid_m, pid_m + grid_m, ...; with dbias grid_m == 1, so one program sums whole columns.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    grid_m = tl.num_programs(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    arange_m = tl.arange(0, BLOCK_M)                  # [BLOCK_M]
    if INT64_OFFSETS:
        offs_n = offs_n.to(tl.int64)
        arange_m = arange_m.to(tl.int64)
    mask_n = offs_n < N

    col_sum = tl.full((BLOCK_N,), 0.0, acc_dtype)  # [BLOCK_N]
    for m0 in range(pid_m * BLOCK_M, M, grid_m * BLOCK_M):
        offs_m = m0 + arange_m
        mask = (offs_m[:, None] < M) & mask_n[None, :]  # [BLOCK_M, BLOCK_N]
        dy = tl.load(dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :] * stride_dyn,
                     mask=mask, other=0.0).to(acc_dtype)
        if HAS_SAVED:
            s = tl.load(saved_ptr + offs_m[:, None] * stride_sm + offs_n[None, :] * stride_sn,
                        mask=mask, other=0.0).to(acc_dtype)
        else:
            s = dy
        dz = _activation_grad(dy, s, ACTIVATION)  # [BLOCK_M, BLOCK_N]
        tl.store(dz_ptr + offs_m[:, None] * stride_dzm + offs_n[None, :] * stride_dzn,
                 dz.to(dz_ptr.dtype.element_ty), mask=mask)
        if HAS_DBIAS:
            col_sum += tl.sum(tl.where(mask, dz, 0.0), axis=0)
    if HAS_DBIAS:
        tl.store(dbias_ptr + offs_n * stride_dbn, col_sum.to(dbias_ptr.dtype.element_ty), mask=mask_n)


# ----------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------

def _check_activation(activation):
    if activation is None:
        return "none"
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS} (or None), got {activation!r}")
    return activation


def _check_tensor(name, t, ndim):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def _needs_int64(*tensors, skip_batch):
    """True when an element offset inside one matrix may not fit in int32. The kernels
    form (batch index) * (batch stride) in int64 always, the in-matrix offsets in int32
    unless this says otherwise; the slack covers tile offsets past a small edge."""
    worst = 0
    for t in tensors:
        if t is None:
            continue
        shape, stride = (t.shape[1:], t.stride()[1:]) if skip_batch and t.dim() == 3 else (t.shape, t.stride())
        extent = sum((s - 1) * st for s, st in zip(shape, stride) if s > 0)
        worst = max(worst, extent + 256 * max(stride, default=0))
    return worst > _INT32_MAX


def _input_precision(dtype, device):
    """tl.dot input_precision: fp32 follows torch's TF32 switch, fp64 is IEEE, half types
    use Triton's default (their products are exact in the fp32 accumulator anyway)."""
    if _INTERPRET or dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        return "tf32" if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return None


def gemm_forward(a, b, out, bias=None, activation="none", preact=None, accumulate=False):
    """out[i] = act(a[i] @ b[i] (+ out[i] if accumulate) + bias), batched over i.

    Args:
        a: [BT, M, K] (or [1, M, K], broadcast over the batch), any strides.
        b: [BT, K, N] (or [1, K, N]), any strides, same dtype as a
           (float16, bfloat16, float32 or float64).
        out: [BT, M, N] preallocated, any float dtype; written (result cast to its dtype).
            Must not overlap a or b.
        bias: None or [N], added before the activation.
        activation: "none" (or None), "relu", "gelu" (exact erf form), "tanh", "sigmoid".
        preact: None or [BT, M, N] preallocated; receives z = a @ b + bias before the
            activation (what gemm_backward needs for gelu).
        accumulate: add out's current value to a @ b before the epilogue (out += a @ b).

    Returns:
        out.

    Raises:
        TypeError: a non-tensor argument, a and b of different or non-float dtypes.
        ValueError: shapes that do not match, tensors on different devices, an unknown
            activation.
        RuntimeError: CPU tensors without TRITON_INTERPRET=1 set at import.
    """
    activation = _check_activation(activation)
    _check_tensor("a", a, 3)
    _check_tensor("b", b, 3)
    _check_tensor("out", out, 3)
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must have the same dtype, got a {a.dtype} and b {b.dtype}")
    BT, M, N = out.shape
    K = a.shape[2]
    if a.shape[0] not in (BT, 1) or a.shape[1] != M:
        raise ValueError(f"a must be [{BT}, {M}, K] (or [1, {M}, K]) to match out {tuple(out.shape)}, "
                         f"got {tuple(a.shape)}")
    if b.shape[0] not in (BT, 1) or tuple(b.shape[1:]) != (K, N):
        raise ValueError(f"b must be [{BT}, {K}, {N}] (or [1, {K}, {N}]) to match a {tuple(a.shape)} "
                         f"and out {tuple(out.shape)}, got {tuple(b.shape)}")
    if bias is not None:
        _check_tensor("bias", bias, 1)
        if bias.shape[0] != N:
            raise ValueError(f"bias must be [{N}], got {tuple(bias.shape)}")
    if preact is not None:
        _check_tensor("preact", preact, 3)
        if preact.shape != out.shape:
            raise ValueError(f"preact must be {list(out.shape)} like out, got {tuple(preact.shape)}")
    _check_devices([("a", a), ("b", b), ("out", out), ("bias", bias), ("preact", preact)])

    if BT == 0 or M == 0 or N == 0:
        return out
    stride_ab = a.stride(0) if a.shape[0] == BT else 0
    stride_bb = b.stride(0) if b.shape[0] == BT else 0
    p_strides = preact.stride() if preact is not None else (0, 0, 0)
    int64 = _needs_int64(a, b, out, bias, preact, skip_batch=True)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), nb)

    for b0 in range(0, BT, _MAX_GRID_Y):  # grid axis 1 holds at most 65535 batch entries
        nb = min(_MAX_GRID_Y, BT - b0)
        _gemm_fwd_kernel[grid](
            a[b0:b0 + nb] if stride_ab else a, b[b0:b0 + nb] if stride_bb else b, out[b0:b0 + nb],
            bias, preact[b0:b0 + nb] if preact is not None else None,
            M, N, K,
            stride_ab, a.stride(1), a.stride(2),
            stride_bb, b.stride(1), b.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            bias.stride(0) if bias is not None else 0,
            p_strides[0], p_strides[1], p_strides[2],
            HAS_BIAS=bias is not None, HAS_PREACT=preact is not None, ACCUMULATE=bool(accumulate),
            ACTIVATION=activation, INPUT_PRECISION=_input_precision(a.dtype, a.device),
            ACC_FP64=a.dtype == torch.float64, INT64_OFFSETS=int64,
            DOT_IN_FP32=_INTERPRET and a.dtype == torch.bfloat16,
        )
    return out


def gemm_backward(dy, saved, activation, dz, dbias=None):
    """dz = dy * act'(saved) and, optionally, dbias = dz.sum(0), for a 2-D [M, N] problem.

    Args:
        dy: [M, N] gradient of the output y, any strides (stride 0 broadcasts work).
        saved: [M, N]; the forward output y for "relu", "tanh", "sigmoid" (and "none", where
            it is not read and may be None), the pre-activation z for "gelu".
        activation: "none" (or None), "relu", "gelu", "tanh", "sigmoid".
        dz: [M, N] preallocated, written (may alias dy).
        dbias: None or [N] preallocated; receives the column sums of dz, accumulated in
            fp32 (fp64 if any operand is fp64) in one deterministic pass.

    Returns:
        (dz, dbias).

    Raises:
        TypeError: non-float tensors. ValueError: shapes that do not match, mixed devices,
        an unknown activation, saved None for an activation that needs it.
        RuntimeError: CPU tensors without TRITON_INTERPRET=1 set at import.
    """
    activation = _check_activation(activation)
    _check_tensor("dy", dy, 2)
    _check_tensor("dz", dz, 2)
    M, N = dy.shape
    if dz.shape != dy.shape:
        raise ValueError(f"dz must be [{M}, {N}] like dy, got {tuple(dz.shape)}")
    if saved is None:
        if activation != "none":
            raise ValueError(f"saved is required for activation {activation!r}")
    else:
        _check_tensor("saved", saved, 2)
        if saved.shape != dy.shape:
            raise ValueError(f"saved must be [{M}, {N}] like dy, got {tuple(saved.shape)}")
    if dbias is not None:
        _check_tensor("dbias", dbias, 1)
        if dbias.shape[0] != N:
            raise ValueError(f"dbias must be [{N}], got {tuple(dbias.shape)}")
    _check_devices([("dy", dy), ("saved", saved), ("dz", dz), ("dbias", dbias)])

    if N == 0:
        return dz, dbias
    if M == 0:
        if dbias is not None:
            dbias.zero_()
        return dz, dbias
    has_saved = saved is not None and activation != "none"
    acc_fp64 = any(t is not None and t.dtype == torch.float64 for t in (dy, saved, dz, dbias))
    if _INTERPRET:
        block_m, block_n, warps = 64, 64, 4
    else:
        block_m, block_n, warps = 64, (32 if dbias is not None else 64), 4
    grid_n = triton.cdiv(N, block_n)
    grid_m = 1 if dbias is not None else min(triton.cdiv(M, block_m), _MAX_GRID_Y)
    s = saved if has_saved else dy
    _gemm_bwd_kernel[(grid_n, grid_m)](
        dy, s, dz, dbias,
        M, N,
        dy.stride(0), dy.stride(1),
        s.stride(0), s.stride(1),
        dz.stride(0), dz.stride(1),
        dbias.stride(0) if dbias is not None else 0,
        HAS_SAVED=has_saved, HAS_DBIAS=dbias is not None, ACTIVATION=activation,
        ACC_FP64=acc_fp64, INT64_OFFSETS=_needs_int64(dy, s, dz, dbias, skip_batch=False),
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
    )
    return dz, dbias
