"""Float64 NumPy reference for 2-D pooling: the oracle the fast kernels are judged against.

Shapes: x [N, C, H, W] (or [C, H, W], treated as N = 1 and returned without the batch dim)
-> out [N, C, OH, OW]. Per-axis parameters are an int or a pair (H, W); stride=None means
stride = kernel_size. Written for one axis (the other is the same with W for H):

    OH = floor((H + 2*pH - dH*(kH - 1) - 1 + (sH - 1 if ceil_mode else 0)) / sH) + 1
         and, with ceil_mode, OH -= 1 if (OH - 1)*sH >= H + pH
         (the last window must start inside the input or the left padding)
    window of output row oh:  rows h = oh*sH - pH + kh*dH,  kh = 0 .. kH-1,
                              only rows with 0 <= h < H take part (padding is never read)

max_pool2d (torch's rule, in row-major window order: kh outer, kw inner):
    m = -inf; idx = first in-range position of the window (h*W + w)
    for each in-range (h, w):  if x[h, w] > m or isnan(x[h, w]):  m, idx = x[h, w], h*W + w
    -> ties keep the FIRST maximum; a NaN always wins, so with several NaN the LAST one is
       reported (exactly what torch 2.x does on CPU and CUDA); an all -inf window gives -inf
       and its first in-range position. indices: int64, flat into the H*W input plane.
    backward: grad_in[n, c].flat[idx] += grad_out[n, c, oh, ow]    (windows may overlap)

avg_pool2d (no dilation):
    hstart = oh*sH - pH;  hend = min(hstart + kH, H + pH)      (clipped to the padded input)
    h0, h1 = max(hstart, 0), min(hend, H)                      (clipped to the input)
    out = sum(x[h0:h1, w0:w1]) / divisor, divisor =
        divisor_override                          if given, else
        (hend - hstart) * (wend - wstart)         if count_include_pad (padding counts,
                                                  the ceil_mode overhang past H + pH does not)
        (h1 - h0) * (w1 - w0)                     otherwise
    backward: grad_in[h0:h1, w0:w1] += grad_out[oh, ow] / divisor

adaptive_avg_pool2d / adaptive_max_pool2d (output_size = OH or (OH, OW); None keeps the size):
    window of output row i: rows floor(i*H/OH) .. ceil((i+1)*H/OH) - 1
    avg: the window's mean; max: as max_pool2d over the window (same NaN and tie rules).
    backward: avg spreads grad_out / window size over the window; max scatters via indices.

Everything is computed in float64 whatever the input dtype; results are float64 arrays
(indices int64). Bad arguments raise ValueError naming the argument.
Test: .venv/bin/python -m pytest tests/test_pool2d.py -q
"""

import numpy as np

from ._args import pair as _pair

__all__ = [
    "pool2d_output_size",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "adaptive_avg_pool2d_forward",
    "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d_forward",
    "adaptive_max_pool2d_backward",
]


# ---- arguments ------------------------------------------------------------------------------


def _params(kernel_size, stride, padding, dilation):
    k = _pair("kernel_size", kernel_size)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) \
        else _pair("stride", stride)
    p = _pair("padding", padding)
    d = _pair("dilation", dilation)
    if min(k) <= 0:
        raise ValueError(f"kernel_size must be positive, got {k}")
    if min(s) <= 0:
        raise ValueError(f"stride must be positive, got {s}")
    if min(d) <= 0:
        raise ValueError(f"dilation must be positive, got {d}")
    if min(p) < 0:
        raise ValueError(f"padding must be non-negative, got {p}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding {p} must be at most half of kernel_size {k}")
    return k, s, p, d


def _images(x):
    """float64 [N, C, H, W] view of x, and whether x was [C, H, W]."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (3, 4):
        raise ValueError(f"x must be [N, C, H, W] or [C, H, W], got shape {x.shape}")
    return (x[None], True) if x.ndim == 3 else (x, False)


def _like_input(a, unbatched):
    return a[0] if unbatched else a


def _input_shape(input_shape):
    """[N, C, H, W] for a 4- or 3-element input shape, and whether it was unbatched."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return (1,) + shape, True
    if len(shape) != 4:
        raise ValueError(f"input_shape must have 3 or 4 entries, got {shape}")
    return shape, False


def _batched(g, unbatched):
    g = np.asarray(g, dtype=np.float64)
    return g[None] if unbatched else g


def pool2d_output_size(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """Output length along one axis (torch's pooling_output_shape)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1  # floor division, also for a negative span
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _output_hw(H, W, k, s, p, d, ceil_mode):
    OH = pool2d_output_size(H, k[0], s[0], p[0], d[0], ceil_mode)
    OW = pool2d_output_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    if OH <= 0 or OW <= 0:
        raise ValueError(f"output size ({OH}, {OW}) is empty for input ({H}, {W}), "
                         f"kernel_size {k}, stride {s}, padding {p}, dilation {d}")
    return OH, OW


# ---- max: the running-maximum rule shared by max_pool2d and adaptive_max_pool2d -------------
def _window_max(x, taps):
    """Running maximum over every output's window, torch's rule.

    x [N, C, H, W]; taps = (first_h, first_w, steps): the first in-range position of each window
    ([OH, OW] each, the index reported when nothing beats -inf) and, one per window position in
    row-major window order, (h, w, valid) arrays [OH, OW].
    Returns (max [N, C, OH, OW], index [N, C, OH, OW] flat into H*W)."""
    N, C, H, W = x.shape
    first_h, first_w, steps = taps
    OH, OW = first_h.shape
    m = np.full((N, C, OH, OW), -np.inf)
    idx = np.broadcast_to(first_h * W + first_w, (N, C, OH, OW)).astype(np.int64)
    for h, w, valid in steps:                            # row-major window order
        val = x[:, :, np.clip(h, 0, H - 1), np.clip(w, 0, W - 1)]  # [N, C, OH, OW]
        take = valid & ((val > m) | np.isnan(val))       # torch: val > max || isnan(val)
        m = np.where(take, val, m)
        idx = np.where(take, h * W + w, idx)
    return m, idx


def _scatter_add(grad_out, indices, shape):
    """grad_in [N, C, H, W] with grad_in[n, c].flat[indices[n, c, i, j]] += grad_out[n, c, i, j].
    Indices outside the plane (a window lying wholly in the padding) receive nothing."""
    N, C, H, W = shape
    g = np.asarray(grad_out, dtype=np.float64)
    g = g.reshape(N * C, g.shape[2] * g.shape[3])                  # [planes, OH*OW]
    ix = np.asarray(indices, dtype=np.int64).reshape(g.shape)
    rows = np.broadcast_to(np.arange(N * C)[:, None], ix.shape)
    keep = (ix >= 0) & (ix < H * W)
    grad_in = np.zeros((N * C, H * W))
    np.add.at(grad_in, (rows[keep], ix[keep]), g[keep])
    return grad_in.reshape(N, C, H, W)


# ---- max_pool2d -----------------------------------------------------------------------------
def _max_pool_taps(H, W, OH, OW, k, s, p, d):
    oh, ow = np.arange(OH)[:, None], np.arange(OW)[None, :]
    h0, w0 = oh * s[0] - p[0], ow * s[1] - p[1]          # window origin, may lie in the padding
    # first in-range row/column of the window (torch: while (h0 < 0) h0 += dH)
    first_h = np.where(h0 < 0, h0 + -(h0 // d[0]) * d[0], h0)
    first_w = np.where(w0 < 0, w0 + -(w0 // d[1]) * d[1], w0)
    first_h, first_w = np.broadcast_arrays(first_h, first_w)
    steps = []
    for kh in range(k[0]):
        for kw in range(k[1]):
            h, w = np.broadcast_arrays(h0 + kh * d[0], w0 + kw * d[1])  # [OH, OW]
            steps.append((h, w, (h >= 0) & (h < H) & (w >= 0) & (w < W)))
    return first_h, first_w, steps


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(out [N, C, OH, OW] float64, indices [N, C, OH, OW] int64 flat into H*W)."""
    x, unbatched = _images(x)
    k, s, p, d = _params(kernel_size, stride, padding, dilation)
    H, W = x.shape[2:]
    OH, OW = _output_hw(H, W, k, s, p, d, ceil_mode)
    out, idx = _window_max(x, _max_pool_taps(H, W, OH, OW, k, s, p, d))
    return _like_input(out, unbatched), _like_input(idx, unbatched)


def max_pool2d_backward(grad_out, indices, input_shape):
    """grad_in [input_shape]: each grad_out element added where its maximum came from."""
    shape, unbatched = _input_shape(input_shape)
    g = _batched(grad_out, unbatched)
    ix = np.asarray(indices)[None] if unbatched else np.asarray(indices)
    return _like_input(_scatter_add(g, ix, shape), unbatched)


# ---- avg_pool2d -----------------------------------------------------------------------------
def _avg_windows(H, W, OH, OW, k, s, p, count_include_pad, divisor_override):
    """Per output row and column: (start, end) clipped to the input, and the divisor [OH, OW]."""
    def axis(size, n_out, kk, ss, pp):
        start = np.arange(n_out) * ss - pp
        end = np.minimum(start + kk, size + pp)           # the padded input's end
        padded_len = end - start                          # padding counts, overhang does not
        lo, hi = np.maximum(start, 0), np.minimum(end, size)
        return lo, hi, padded_len, hi - lo

    h_lo, h_hi, h_pad, h_in = axis(H, OH, k[0], s[0], p[0])
    w_lo, w_hi, w_pad, w_in = axis(W, OW, k[1], s[1], p[1])
    if divisor_override is not None:
        divisor = np.full((OH, OW), float(divisor_override))
    elif count_include_pad:
        divisor = (h_pad[:, None] * w_pad[None, :]).astype(np.float64)
    else:
        divisor = (h_in[:, None] * w_in[None, :]).astype(np.float64)
    return h_lo, h_hi, w_lo, w_hi, divisor


def _avg_setup(H, W, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    k, s, p, _ = _params(kernel_size, stride, padding, 1)
    if divisor_override is not None and int(divisor_override) == 0:
        raise ValueError("divisor_override must be non-zero")
    OH, OW = _output_hw(H, W, k, s, p, (1, 1), ceil_mode)
    return OH, OW, _avg_windows(H, W, OH, OW, k, s, p, count_include_pad, divisor_override)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=None):
    """out [N, C, OH, OW] float64: window sums divided by torch's divisor (module header)."""
    x, unbatched = _images(x)
    N, C, H, W = x.shape
    OH, OW, (h_lo, h_hi, w_lo, w_hi, divisor) = _avg_setup(
        H, W, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    out = np.zeros((N, C, OH, OW))
    with np.errstate(invalid="ignore"):  # inf + -inf -> NaN, as in torch
        for i in range(OH):
            for j in range(OW):
                window = x[:, :, h_lo[i]:h_hi[i], w_lo[j]:w_hi[j]]  # [N, C, h, w]
                out[:, :, i, j] = window.sum(axis=(2, 3)) / divisor[i, j]
    return _like_input(out, unbatched)


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    """grad_in [input_shape]: each grad_out element / divisor added over its window."""
    shape, unbatched = _input_shape(input_shape)
    g = _batched(grad_out, unbatched)
    N, C, H, W = shape
    OH, OW, (h_lo, h_hi, w_lo, w_hi, divisor) = _avg_setup(
        H, W, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    if g.shape != (N, C, OH, OW):
        raise ValueError(f"grad_out has shape {g.shape}, expected {(N, C, OH, OW)}")
    grad_in = np.zeros(shape)
    for i in range(OH):
        for j in range(OW):
            grad_in[:, :, h_lo[i]:h_hi[i], w_lo[j]:w_hi[j]] += \
                (g[:, :, i, j] / divisor[i, j])[:, :, None, None]
    return _like_input(grad_in, unbatched)


# ---- adaptive pools ---------------------------------------------------------------------------
def _adaptive_size(output_size, H, W):
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair, got {output_size!r}")
        oh, ow = output_size
    else:
        oh = ow = output_size
    OH = H if oh is None else int(oh)
    OW = W if ow is None else int(ow)
    if OH <= 0 or OW <= 0:
        raise ValueError(f"output_size must be positive, got {(OH, OW)}")
    return OH, OW


def _adaptive_bounds(size, n_out):
    """Window i along one axis: [floor(i*size/n_out), ceil((i+1)*size/n_out))."""
    return [(i * size // n_out, -(-(i + 1) * size // n_out)) for i in range(n_out)]


def adaptive_avg_pool2d_forward(x, output_size):
    """out [N, C, OH, OW] float64: the mean of each adaptive window."""
    x, unbatched = _images(x)
    N, C, H, W = x.shape
    OH, OW = _adaptive_size(output_size, H, W)
    out = np.zeros((N, C, OH, OW))
    with np.errstate(invalid="ignore"):  # inf + -inf -> NaN, as in torch
        for i, (h0, h1) in enumerate(_adaptive_bounds(H, OH)):
            for j, (w0, w1) in enumerate(_adaptive_bounds(W, OW)):
                out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return _like_input(out, unbatched)


def adaptive_avg_pool2d_backward(grad_out, input_shape):
    """grad_in [input_shape]: each grad_out element / window size spread over its window."""
    shape, unbatched = _input_shape(input_shape)
    g = _batched(grad_out, unbatched)
    N, C, H, W = shape
    OH, OW = g.shape[2:]
    grad_in = np.zeros(shape)
    for i, (h0, h1) in enumerate(_adaptive_bounds(H, OH)):
        for j, (w0, w1) in enumerate(_adaptive_bounds(W, OW)):
            count = (h1 - h0) * (w1 - w0)
            grad_in[:, :, h0:h1, w0:w1] += (g[:, :, i, j] / count)[:, :, None, None]
    return _like_input(grad_in, unbatched)


def adaptive_max_pool2d_forward(x, output_size):
    """(out [N, C, OH, OW] float64, indices int64 flat into H*W): max_pool2d's rule per window."""
    x, unbatched = _images(x)
    N, C, H, W = x.shape
    OH, OW = _adaptive_size(output_size, H, W)
    out = np.zeros((N, C, OH, OW))
    idx = np.zeros((N, C, OH, OW), dtype=np.int64)
    for i, (h0, h1) in enumerate(_adaptive_bounds(H, OH)):
        for j, (w0, w1) in enumerate(_adaptive_bounds(W, OW)):
            m = np.full((N, C), -np.inf)
            ix = np.full((N, C), h0 * W + w0, dtype=np.int64)
            for h in range(h0, h1):                       # row-major window order
                for w in range(w0, w1):
                    val = x[:, :, h, w]
                    take = (val > m) | np.isnan(val)      # torch: val > max || isnan(val)
                    m = np.where(take, val, m)
                    ix = np.where(take, h * W + w, ix)
            out[:, :, i, j], idx[:, :, i, j] = m, ix
    return _like_input(out, unbatched), _like_input(idx, unbatched)


def adaptive_max_pool2d_backward(grad_out, indices, input_shape):
    """grad_in [input_shape]: the same scatter through the indices as max_pool2d_backward."""
    return max_pool2d_backward(grad_out, indices, input_shape)
