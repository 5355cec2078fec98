"""Float64 NumPy reference for fused softmax attention: the oracle the fast kernels are judged against.

Shapes: q [B, H, N, D], k [B, H, S, D], v [B, H, S, Dv] -> out [B, H, N, Dv], lse [B, H, N]
(3-D inputs [B, N, D] are treated as H = 1 and results returned without the head dim).
mask: None or an additive float64 array broadcastable to [B, H, N, S] (a bool mask is converted
by the caller: True -> 0, False -> -inf). keep: None or a bool array broadcastable to
[B, H, N, S] (dropout's kept elements, see dropout_keep), p: dropout probability in [0, 1).

forward, per (b, h), with the whole N x S score matrix materialized (this is the oracle):
    s_ij   = scale * sum_d q_id k_jd + mask_ij          (-inf where causal and j > i: top-left
                                                        aligned, also when N != S)
    lse_i  = log(sum_j exp(s_ij))                       (as m_i + log(sum_j exp(s_ij - m_i)),
                                                        m_i = max_j s_ij; -inf for a row with no
                                                        finite score: a fully masked row)
    P_ij   = exp(s_ij - lse_i)                          (0 in a fully masked row)
    Pd_ij  = P_ij * keep_ij / (1 - p)                   (P when there is no dropout)
    out_ie = sum_j Pd_ij v_je                           (0 in a fully masked row)

backward, with dout = dL/dout [B, H, N, Dv] (the softmax Jacobian, written out):
    dv_je  = sum_i Pd_ij dout_ie
    dPd_ij = sum_e dout_ie v_je
    dP_ij  = dPd_ij * keep_ij / (1 - p)
    dS_ij  = P_ij * (dP_ij - sum_j' P_ij' dP_ij')       (= P * (dP - Delta),
                                                        Delta_i = dout_i . out_i)
    dq_id  = scale * sum_j dS_ij k_jd
    dk_jd  = scale * sum_i dS_ij q_id
    dmask  = dS, a full [B, H, N, S] array (the caller sums it over the mask's broadcast dims)
A fully masked row has P = 0, so it contributes nothing to any gradient.

dropout_keep(B, H, N, S, seed, p): the keep mask every backend computes bit for bit.
    element (b, h, i, j) has the counter idx = ((b*H + h)*N + i)*S + j; Philox4x32-10 (Random123)
    with counter (idx & 0xffffffff, idx >> 32, 0, 0) and key (seed & 0xffffffff,
    (seed >> 32) & 0xffffffff); r = the first output word;
    keep = r >= thresh, thresh = min(floor(p * 2**32), 2**32 - 1)   (unsigned compare)

Everything is computed in float64 whatever the input dtype; results are float64 arrays.
Bad arguments raise ValueError naming the argument.
Test: TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_attention.py -q -p no:logging
"""

import numpy as np

__all__ = [
    "attention_forward",
    "attention_backward",
    "dropout_keep",
    "dropout_threshold",
    "philox4x32_10",
]


# ---- arguments ------------------------------------------------------------------------------


def _qkv(q, k, v):
    """float64 4-D q, k, v and whether they were 3-D; checks the shapes agree."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    if not (q.ndim == k.ndim == v.ndim and q.ndim in (3, 4)):
        raise ValueError(f"q, k, v must all be [B, H, N, D] or all [B, N, D], got shapes "
                         f"q {q.shape}, k {k.shape}, v {v.shape}")
    three = q.ndim == 3
    if three:
        q, k, v = q[:, None], k[:, None], v[:, None]
    if k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"B, H of k {k.shape} and v {v.shape} must equal those of q {q.shape}")
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"k must have D = {q.shape[3]} (q's last dim), got shape {k.shape}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"v must have S = {k.shape[2]} (k's dim -2), got shape {v.shape}")
    return q, k, v, three


def _broadcast(name, a, shape, three, dtype):
    """a broadcast to the 4-D score shape [B, H, N, S] (a was given for [B, N, S] if three)."""
    if a is None:
        return None
    a = np.asarray(a, dtype=dtype)
    if three:  # [.., N, S] against [B, N, S]: insert the head dim after B
        a = a.reshape((1,) * (3 - a.ndim) + a.shape) if a.ndim < 3 else a
        a = a[:, None]
    try:
        return np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {np.shape(a)} is not broadcastable to the score shape "
                         f"{shape} [B, H, N, S]") from None


def _scores(q, k, mask, causal, scale, three):
    """s [B, H, N, S] = scale * q @ k^T + mask, -inf where causal and j > i."""
    B, H, N, _ = q.shape
    S = k.shape[2]
    s = scale * np.einsum("bhnd,bhsd->bhns", q, k)              # [B, H, N, S]
    m = _broadcast("mask", mask, (B, H, N, S), three, np.float64)
    if m is not None:
        s = s + m
    if causal:
        i = np.arange(N)[:, None]
        j = np.arange(S)[None, :]
        s = np.where(j <= i, s, -np.inf)                       # top-left aligned
    return s


def _softmax(s):
    """(P, lse) of score rows s [B, H, N, S]; a row with no finite score gets P = 0, lse = -inf."""
    m = s.max(axis=-1, keepdims=True) if s.shape[-1] else np.full(s.shape[:-1] + (1,), -np.inf)
    live = np.isfinite(m)                                      # [B, H, N, 1]
    m_safe = np.where(live, m, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.where(live, np.exp(s - m_safe), 0.0)            # exp(-inf) = 0 for masked keys
    total = e.sum(axis=-1, keepdims=True)                      # >= 1 in a live row
    lse = np.where(live, m_safe + np.log(np.where(live, total, 1.0)), -np.inf)
    P = np.where(live, e / np.where(live, total, 1.0), 0.0)
    return P, lse[..., 0]


def _dropped(P, keep, p, three):
    """Pd = P * keep / (1 - p) (P itself without dropout)."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    if keep is None:
        if p != 0.0:
            raise ValueError(f"dropout p = {p} needs the keep mask (see dropout_keep)")
        return P, None
    kf = _broadcast("keep", np.asarray(keep, dtype=bool), P.shape, three, np.float64)
    return P * kf / (1.0 - p), kf


def _check_scale(scale):
    scale = float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


# ---- forward and backward -------------------------------------------------------------------
def attention_forward(q, k, v, mask=None, causal=False, scale=None, keep=None, p=0.0):
    """(out [B, H, N, Dv], lse [B, H, N]) float64; scale None -> 1/sqrt(D)."""
    q, k, v, three = _qkv(q, k, v)
    scale = 1.0 / np.sqrt(q.shape[3]) if scale is None else _check_scale(scale)
    s = _scores(q, k, mask, bool(causal), scale, three)        # [B, H, N, S]
    P, lse = _softmax(s)                                       # [B, H, N, S], [B, H, N]
    Pd, _ = _dropped(P, keep, p, three)
    out = np.einsum("bhns,bhse->bhne", Pd, v)                  # [B, H, N, Dv]
    if three:
        return out[:, 0], lse[:, 0]
    return out, lse


def attention_backward(dout, q, k, v, mask=None, causal=False, scale=None, keep=None, p=0.0):
    """(dq [B, H, N, D], dk [B, H, S, D], dv [B, H, S, Dv], dmask [B, H, N, S]) float64.

    dmask is dS at the full score shape ([B, N, S] for 3-D inputs), whatever mask's own shape
    (None when mask is None); summing it over the mask's broadcast dims is the caller's job.
    """
    q, k, v, three = _qkv(q, k, v)
    scale = 1.0 / np.sqrt(q.shape[3]) if scale is None else _check_scale(scale)
    B, H, N, _ = q.shape
    Dv = v.shape[3]
    dout = np.asarray(dout, dtype=np.float64)
    if three:
        dout = dout[:, None]
    if dout.shape != (B, H, N, Dv):
        raise ValueError(f"dout must have shape {(B, N, Dv) if three else (B, H, N, Dv)}, "
                         f"got {np.shape(dout)}")
    s = _scores(q, k, mask, bool(causal), scale, three)        # [B, H, N, S]
    P, _ = _softmax(s)
    Pd, kf = _dropped(P, keep, p, three)
    dv = np.einsum("bhns,bhne->bhse", Pd, dout)                # [B, H, S, Dv]
    dPd = np.einsum("bhne,bhse->bhns", dout, v)                # [B, H, N, S]
    dP = dPd if kf is None else dPd * kf / (1.0 - float(p))
    dS = P * (dP - (P * dP).sum(axis=-1, keepdims=True))       # softmax Jacobian, row by row
    dq = scale * np.einsum("bhns,bhsd->bhnd", dS, k)           # [B, H, N, D]
    dk = scale * np.einsum("bhns,bhnd->bhsd", dS, q)           # [B, H, S, D]
    dmask = None if mask is None else dS
    if three:
        dq, dk, dv = dq[:, 0], dk[:, 0], dv[:, 0]
        dmask = None if dmask is None else dmask[:, 0]
    return dq, dk, dv, dmask


# ---- dropout: Philox4x32-10 -----------------------------------------------------------------
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_LO = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Random123's Philox4x32-10 on uint32 words held in uint64 arrays (broadcast together).

    Returns the four output words (uint64 arrays with values < 2**32). Each round:
        hi0, lo0 = mulhilo(M0, c0);  hi1, lo1 = mulhilo(M1, c2)
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);  k0 += W0;  k1 += W1
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _LO for c in (c0, c1, c2, c3))
    k0, k1 = int(k0) & 0xFFFFFFFF, int(k1) & 0xFFFFFFFF
    for _ in range(10):
        p0 = _M0 * c0                       # < 2**64: exact in uint64
        p1 = _M1 * c2
        hi0, lo0 = p0 >> _32, p0 & _LO
        hi1, lo1 = p1 >> _32, p1 & _LO
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
        k0 = (k0 + _W0) & 0xFFFFFFFF
        k1 = (k1 + _W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def dropout_threshold(p):
    """min(floor(p * 2**32), 2**32 - 1): an element is kept when its random word is >= this."""
    return min(int(float(p) * 4294967296.0), 4294967295)


def dropout_keep(B, H, N, S, seed, p):
    """bool [B, H, N, S]: which elements of the score matrix dropout keeps for this seed and p."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    idx = np.arange(B * H * N * S, dtype=np.uint64)             # ((b*H + h)*N + i)*S + j
    zero = np.zeros((), dtype=np.uint64)
    r, _, _, _ = philox4x32_10(idx & _LO, idx >> _32, zero, zero, seed & 0xFFFFFFFF,
                               (seed >> 32) & 0xFFFFFFFF)
    keep = r >= np.uint64(dropout_threshold(p))
    return keep.reshape(B, H, N, S)
