"""Float64 NumPy reference for LSTM and GRU: the oracle the fast kernels are judged against.

One layer, one direction, exactly torch.nn.LSTM / torch.nn.GRU. Shapes: x [T, B, I],
h0 (and c0) [B, H] (None = zeros) -> y [T, B, H] (h after every step), hn (and cn) [B, H].
w_ih [G*H, I], w_hh [G*H, H], b_ih, b_hh [G*H] (None = zeros), G = 4 (LSTM) or 3 (GRU);
the row blocks of the weights are the gates in torch's order.

LSTM, gates [i, f, g, o]:
    A = x_t W_ih^T + b_ih + h W_hh^T + b_hh                    # [B, 4H]
    i = sigmoid(A_i), f = sigmoid(A_f), g = tanh(A_g), o = sigmoid(A_o)
    c' = f * c + i * g
    h' = o * tanh(c')
GRU, gates [r, z, n] (b_hn stays inside r * (...), as torch computes it):
    a = x_t W_ih^T + b_ih,  b = h W_hh^T + b_hh                # [B, 3H] each
    r = sigmoid(a_r + b_r), z = sigmoid(a_z + b_z)
    n = tanh(a_n + r * b_n)
    h' = (1 - z) * n + z * h

Time order: t = 0 .. T-1, or t = T-1 .. 0 when reverse (the backward direction of a
bidirectional layer, walking the same x; y[t] is still the output at input step t).
batch_sizes: None, or ints [T], non-increasing, each in [0, B] (a PackedSequence's): at step t only
rows b < batch_sizes[t] are updated; the other rows keep their h (and c) unchanged and get
y[t, b] = 0. With sorted lengths this is torch's PackedSequence semantics in both directions (in
reverse a row enters at its own last step, from h0).

Backprop through time, with dy = dL/dy [T, B, H], dhn = dL/dhn, dcn = dL/dcn (each None = 0):
the steps are walked in the opposite order, carrying dh (and dc) [B, H], starting from dhn (dcn);
at a step with active rows b < n (n = batch_sizes[t], or B):
    dh[:n] += dy[t, :n]
  LSTM (tc = tanh(c')):
    do = dh * tc
    dc = dc + dh * o * (1 - tc^2)
    di = dc * g,  dg = dc * i,  df = dc * c,  dc_prev = dc * f
    dA = [di * i(1-i), df * f(1-f), dg * (1-g^2), do * o(1-o)]          # [n, 4H]
    dx[t] = dA W_ih,  dh_prev = dA W_hh
    dW_ih += dA^T x_t,  dW_hh += dA^T h,  db_ih += sum_b dA,  db_hh += sum_b dA
  GRU:
    dn = dh * (1 - z),  dz = dh * (h - n)
    dan = dn * (1 - n^2),  dr = dan * b_n
    da = [dr * r(1-r), dz * z(1-z), dan]                                  # [n, 3H]
    db = [dr * r(1-r), dz * z(1-z), dan * r]
    dx[t] = da W_ih,  dh_prev = dh * z + db W_hh
    dW_ih += da^T x_t,  dW_hh += db^T h,  db_ih += sum_b da,  db_hh += sum_b db
Rows not active at step t pass dh (and dc) through unchanged and get dx[t, b] = 0; after the
last step walked, dh0 = dh (dc0 = dc).

Gradients of arguments given as None are returned as None (h0, c0, b_ih, b_hh).
Everything is computed in float64 whatever the input dtype; results are float64 arrays.
Bad arguments raise ValueError naming the argument.
Test: TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_rnn.py -q -p no:logging
"""

import numpy as np

__all__ = [
    "lstm_forward",
    "lstm_backward",
    "gru_forward",
    "gru_backward",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "gru_cell_forward",
    "gru_cell_backward",
]


# ---- arguments ------------------------------------------------------------------------------


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _args(gates, x, states, w_ih, w_hh, b_ih, b_hh, batch_sizes):
    """float64 arrays, checked; states: dict name -> array or None ([B, H], None = zeros).

    Returns x, {name: state (zeros if None)}, w_ih, w_hh, b_ih, b_hh, steps' active rows [T].
    """
    x, w_ih, w_hh, b_ih, b_hh = (_f64(a) for a in (x, w_ih, w_hh, b_ih, b_hh))
    if x.ndim != 3:
        raise ValueError(f"x must be [T, B, I] (3-D), got shape {x.shape}")
    T, B, I = x.shape
    if w_hh.ndim != 2:
        raise ValueError(f"w_hh must be [{gates}*H, H] (2-D), got shape {w_hh.shape}")
    H = w_hh.shape[1]
    if w_hh.shape != (gates * H, H):
        raise ValueError(f"w_hh must be [{gates}*H, H] = {(gates * H, H)}, got shape {w_hh.shape}")
    if w_ih.ndim != 2 or w_ih.shape[0] != gates * H:
        raise ValueError(f"w_ih must have {gates}*H = {gates * H} rows ([{gates}*H, I]), "
                         f"got shape {w_ih.shape}")
    if w_ih.shape[1] != I:
        raise ValueError(f"w_ih must be [{gates}*H, I] with I = {I} (x's last dim), "
                         f"got shape {w_ih.shape}")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None and b.shape != (gates * H,):
            raise ValueError(f"{name} must be [{gates}*H] = {(gates * H,)}, got shape {b.shape}")
    out = {}
    for name, s in states.items():
        s = _f64(s)
        if s is None:
            s = np.zeros((B, H))
        elif s.shape != (B, H):
            raise ValueError(f"{name} must be [B, H] = {(B, H)}, got shape {s.shape}")
        out[name] = s
    if batch_sizes is None:
        active = np.full(T, B, dtype=np.int64)
    else:
        active = np.asarray(batch_sizes)
        if active.shape != (T,):
            raise ValueError(f"batch_sizes must be [T] = {(T,)}, got shape {active.shape}")
        if active.dtype.kind not in "iu":
            raise ValueError(f"batch_sizes must hold integers, got dtype {active.dtype}")
        active = active.astype(np.int64)
        if T and (active.min() < 0 or active.max() > B):
            raise ValueError(f"batch_sizes must lie in [0, B = {B}], got {active.tolist()}")
        if np.any(np.diff(active) > 0):
            raise ValueError(f"batch_sizes must be non-increasing, got {active.tolist()}")
    zb = np.zeros(gates * H)
    return (x, out, w_ih, w_hh, zb if b_ih is None else b_ih, zb if b_hh is None else b_hh,
            active)


def _order(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _grad_in(d, shape, name):
    """an upstream gradient as float64 of `shape` (None = zeros)."""
    if d is None:
        return np.zeros(shape)
    d = np.asarray(d, dtype=np.float64)
    if d.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {d.shape}")
    return d


# ---- LSTM -----------------------------------------------------------------------------------


def _lstm_steps(x, h, c, w_ih, w_hh, b_ih, b_hh, active, reverse):
    """Forward over time; returns y, hn, cn and the per-step saved values (for the backward)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    h, c = h.copy(), c.copy()
    y = np.zeros((T, B, H))
    saved = {}
    for t in _order(T, reverse):
        n = int(active[t])
        hp, cp = h[:n].copy(), c[:n].copy()                            # [n, H]
        A = x[t, :n] @ w_ih.T + b_ih + hp @ w_hh.T + b_hh              # [n, 4H]
        i = _sigmoid(A[:, 0 * H:1 * H])
        f = _sigmoid(A[:, 1 * H:2 * H])
        g = np.tanh(A[:, 2 * H:3 * H])
        o = _sigmoid(A[:, 3 * H:4 * H])
        cn = f * cp + i * g
        hn = o * np.tanh(cn)
        h[:n], c[:n] = hn, cn
        y[t, :n] = hn
        saved[t] = (n, hp, cp, i, f, g, o, cn)
    return y, h, c, saved


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None):
    """(y [T, B, H], hn [B, H], cn [B, H]) float64."""
    x, s, w_ih, w_hh, b_ih, b_hh, active = _args(4, x, {"h0": h0, "c0": c0}, w_ih, w_hh,
                                                  b_ih, b_hh, batch_sizes)
    y, hn, cn, _ = _lstm_steps(x, s["h0"], s["c0"], w_ih, w_hh, b_ih, b_hh, active, reverse)
    return y, hn, cn


def lstm_backward(dy, dhn, dcn, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False,
                  batch_sizes=None):
    """(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) float64; None for arguments given as None."""
    has = [a is not None for a in (h0, c0, b_ih, b_hh)]
    x, s, w_ih, w_hh, b_ih, b_hh, active = _args(4, x, {"h0": h0, "c0": c0}, w_ih, w_hh,
                                                  b_ih, b_hh, batch_sizes)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    _, _, _, saved = _lstm_steps(x, s["h0"], s["c0"], w_ih, w_hh, b_ih, b_hh, active, reverse)
    dy = _grad_in(dy, (T, B, H), "dy")
    dh = _grad_in(dhn, (B, H), "dhn").copy()
    dc = _grad_in(dcn, (B, H), "dcn").copy()
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db = np.zeros(4 * H)
    for t in reversed(list(_order(T, reverse))):
        n, hp, cp, i, f, g, o, cn = saved[t]
        dh_t = dh[:n] + dy[t, :n]
        tc = np.tanh(cn)
        do = dh_t * tc
        dc_t = dc[:n] + dh_t * o * (1.0 - tc * tc)
        di, dg, df = dc_t * g, dc_t * i, dc_t * cp
        dA = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g * g),
                             do * o * (1.0 - o)], axis=1)              # [n, 4H]
        dx[t, :n] = dA @ w_ih
        dw_ih += dA.T @ x[t, :n]
        dw_hh += dA.T @ hp
        db += dA.sum(axis=0)
        dh[:n] = dA @ w_hh
        dc[:n] = dc_t * f
    return (dx, dh if has[0] else None, dc if has[1] else None, dw_ih, dw_hh,
            db if has[2] else None, db.copy() if has[3] else None)


# ---- GRU ------------------------------------------------------------------------------------


def _gru_steps(x, h, w_ih, w_hh, b_ih, b_hh, active, reverse):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    h = h.copy()
    y = np.zeros((T, B, H))
    saved = {}
    for t in _order(T, reverse):
        n = int(active[t])
        hp = h[:n].copy()                                              # [n, H]
        a = x[t, :n] @ w_ih.T + b_ih                                   # [n, 3H]
        b = hp @ w_hh.T + b_hh                                         # [n, 3H]
        r = _sigmoid(a[:, 0 * H:1 * H] + b[:, 0 * H:1 * H])
        z = _sigmoid(a[:, 1 * H:2 * H] + b[:, 1 * H:2 * H])
        bn = b[:, 2 * H:3 * H]
        nn = np.tanh(a[:, 2 * H:3 * H] + r * bn)
        hn = (1.0 - z) * nn + z * hp
        h[:n] = hn
        y[t, :n] = hn
        saved[t] = (n, hp, r, z, nn, bn)
    return y, h, saved


def gru_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None):
    """(y [T, B, H], hn [B, H]) float64."""
    x, s, w_ih, w_hh, b_ih, b_hh, active = _args(3, x, {"h0": h0}, w_ih, w_hh, b_ih, b_hh,
                                                  batch_sizes)
    y, hn, _ = _gru_steps(x, s["h0"], w_ih, w_hh, b_ih, b_hh, active, reverse)
    return y, hn


def gru_backward(dy, dhn, x, h0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False,
                 batch_sizes=None):
    """(dx, dh0, dw_ih, dw_hh, db_ih, db_hh) float64; None for arguments given as None."""
    has = [a is not None for a in (h0, b_ih, b_hh)]
    x, s, w_ih, w_hh, b_ih, b_hh, active = _args(3, x, {"h0": h0}, w_ih, w_hh, b_ih, b_hh,
                                                  batch_sizes)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    _, _, saved = _gru_steps(x, s["h0"], w_ih, w_hh, b_ih, b_hh, active, reverse)
    dy = _grad_in(dy, (T, B, H), "dy")
    dh = _grad_in(dhn, (B, H), "dhn").copy()
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db_ih, db_hh = np.zeros(3 * H), np.zeros(3 * H)
    for t in reversed(list(_order(T, reverse))):
        n, hp, r, z, nn, bn = saved[t]
        dh_t = dh[:n] + dy[t, :n]
        dnn = dh_t * (1.0 - z)
        dz = dh_t * (hp - nn)
        dan = dnn * (1.0 - nn * nn)
        dar = dan * bn * r * (1.0 - r)
        daz = dz * z * (1.0 - z)
        da = np.concatenate([dar, daz, dan], axis=1)                  # [n, 3H]
        db = np.concatenate([dar, daz, dan * r], axis=1)              # [n, 3H]
        dx[t, :n] = da @ w_ih
        dw_ih += da.T @ x[t, :n]
        dw_hh += db.T @ hp
        db_ih += da.sum(axis=0)
        db_hh += db.sum(axis=0)
        dh[:n] = dh_t * z + db @ w_hh
    return (dx, dh if has[0] else None, dw_ih, dw_hh,
            db_ih if has[1] else None, db_hh if has[2] else None)


# ---- cells: the sequence ops with T = 1 -----------------------------------------------------


def _cell_x(x):
    x = _f64(x)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be [B, I] or [I], got shape {x.shape}")
    return x


def _batched(a, unbatched):
    a = _f64(a)
    return None if a is None else (a[None] if unbatched else a)


def lstm_cell_forward(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """(h' [B, H], c' [B, H]) float64; x [B, I] or [I] (then h, c are [H] and so are h', c')."""
    x = _cell_x(x)
    u = x.ndim == 1
    _, hn, cn = lstm_forward(_batched(x, u)[None], _batched(h, u), _batched(c, u), w_ih, w_hh,
                             b_ih, b_hh)
    return (hn[0], cn[0]) if u else (hn, cn)


def lstm_cell_backward(dh, dc, x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """(dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh) float64 of the cell (None for None arguments)."""
    x = _cell_x(x)
    u = x.ndim == 1
    g = lstm_backward(None, _batched(dh, u), _batched(dc, u), _batched(x, u)[None],
                      _batched(h, u), _batched(c, u), w_ih, w_hh, b_ih, b_hh)
    dx, dh0, dc0 = g[0][0], g[1], g[2]
    if u:
        dx = dx[0]
        dh0 = None if dh0 is None else dh0[0]
        dc0 = None if dc0 is None else dc0[0]
    return (dx, dh0, dc0) + tuple(g[3:])


def gru_cell_forward(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """h' [B, H] float64; x [B, I] or [I] (then h is [H] and so is h')."""
    x = _cell_x(x)
    u = x.ndim == 1
    _, hn = gru_forward(_batched(x, u)[None], _batched(h, u), w_ih, w_hh, b_ih, b_hh)
    return hn[0] if u else hn


def gru_cell_backward(dh, x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """(dx, dh, dw_ih, dw_hh, db_ih, db_hh) float64 of the cell (None for None arguments)."""
    x = _cell_x(x)
    u = x.ndim == 1
    g = gru_backward(None, _batched(dh, u), _batched(x, u)[None], _batched(h, u), w_ih, w_hh,
                     b_ih, b_hh)
    dx, dh0 = g[0][0], g[1]
    if u:
        dx = dx[0]
        dh0 = None if dh0 is None else dh0[0]
    return (dx, dh0) + tuple(g[2:])
