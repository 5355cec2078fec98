"""Float64 NumPy reference for 2-D convolution: the oracle the fast kernels are judged against.

Shapes: x [N, C_in, H, W] (or [C_in, H, W], treated as N = 1 and returned without the batch
dim), weight [C_out, C_in/G, KH, KW], bias [C_out] -> out [N, C_out, OH, OW]; G = groups,
Cig = C_in/G and Cog = C_out/G channels per group (depthwise: G = C_in). stride, padding,
dilation (and output_padding): an int or a pair (H, W). Written for the H axis (W is the same).

conv2d (a cross-correlation, as in torch):
    OH = floor((H + 2*pH - dH*(KH - 1) - 1) / sH) + 1
         (with top/bottom padding pT, pB: floor((H + pT + pB - dH*(KH - 1) - 1) / sH) + 1)
    xp = x zero-padded by pT rows above and pB below
    out[n, g*Cog + o, oh, ow] = bias[g*Cog + o]
        + sum over c < Cig, kh < KH, kw < KW of
              xp[n, g*Cig + c, oh*sH + kh*dH, ow*sW + kw*dW] * weight[g*Cog + o, c, kh, kw]
    (output channel block g reads input channel block g only.)
    padding="valid" is padding 0. padding="same" (stride 1 only) keeps OH = H: the total
    dH*(KH - 1) is split as pT = total // 2, pB = total - pT, i.e. torch's rule: an odd total
    (an even kernel at odd dilation) puts the extra row at the bottom and column at the right.

conv2d backward, with dy = dL/dout [N, C_out, OH, OW]: the gradient goes back through the
same taps that read xp:
    dxp[n, g*Cig + c, oh*sH + kh*dH, ow*sW + kw*dW] += sum_o dy[n, g*Cog + o, oh, ow]
                                                             * weight[g*Cog + o, c, kh, kw]
    dx = dxp with the padding cropped off (rows of x no tap reads get 0)
    dw[g*Cog + o, c, kh, kw] = sum over n, oh, ow of dy[n, g*Cog + o, oh, ow]
                                                   * xp[n, g*Cig + c, oh*sH + kh*dH, ow*sW + kw*dW]
    db[o] = sum over n, oh, ow of dy[n, o, oh, ow]

conv_transpose2d: x [N, C_in, H, W], weight [C_in, C_out/G, KH, KW], bias [C_out]
-> out [N, C_out, OH, OW], Cig = C_in/G, Cog = C_out/G:
    OH = (H - 1)*sH - 2*pH + dH*(KH - 1) + opH + 1,   output_padding 0 <= opH < max(sH, dH)
    It is conv2d's input gradient (the scatter above) with x in the role of dy:
    yp[n, g*Cog + o, h*sH + kh*dH, w*sW + kw*dW] += sum_c x[n, g*Cig + c, h, w]
                                                          * weight[g*Cig + c, o, kh, kw]
    yp has OH + 2*pH rows; out = yp[pH : pH + OH] + bias   (the output_padding rows lie past
    the reach of every tap when opH > pH: they get bias only)
conv_transpose2d backward, dy = dL/dout, dyp = dy zero-padded by pH rows on both sides:
    dx[n, g*Cig + c, h, w] = sum over o, kh, kw of dyp[n, g*Cog + o, h*sH + kh*dH, w*sW + kw*dW]
                                                     * weight[g*Cig + c, o, kh, kw]  (a conv2d)
    dw[g*Cig + c, o, kh, kw] = sum over n, h, w of x[n, g*Cig + c, h, w]
                                                   * dyp[n, g*Cog + o, h*sH + kh*dH, w*sW + kw*dW]
    db[o] = sum over n, h, w of dy[n, o, h, w]

Everything is computed in float64 whatever the input dtype; results are float64 arrays.
Bad arguments raise ValueError naming the argument.
Test: .venv/bin/python -m pytest tests/test_reference_conv2d.py -q
"""

import numpy as np

from ._args import pair as _pair

__all__ = [
    "conv2d_output_size",
    "conv_transpose2d_output_size",
    "conv2d_forward",
    "conv2d_backward",
    "conv_transpose2d_forward",
    "conv_transpose2d_backward",
]


# ---- arguments ------------------------------------------------------------------------------


def _stride_dilation(stride, dilation):
    s, d = _pair("stride", stride), _pair("dilation", dilation)
    if min(s) <= 0:
        raise ValueError(f"stride must be positive, got {s}")
    if min(d) <= 0:
        raise ValueError(f"dilation must be positive, got {d}")
    return s, d


def _conv2d_padding(padding, kernel, stride, dilation):
    """((top, bottom), (left, right)) for conv2d's padding: int, pair, "valid" or "same"."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
        pads = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))  # odd total: extra at bottom/right
        return tuple(pads)
    p = _pair("padding", padding)
    if min(p) < 0:
        raise ValueError(f"padding must be non-negative, got {p}")
    return (p[0], p[0]), (p[1], p[1])


def _images(name, a):
    """float64 [N, C, H, W] view of a, and whether a was [C, H, W]."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim not in (3, 4):
        raise ValueError(f"{name} must be [N, C, H, W] or [C, H, W], got shape {a.shape}")
    return (a[None], True) if a.ndim == 3 else (a, False)


def _like_input(a, unbatched):
    return a[0] if unbatched else a


def _check_weight_groups(x, weight, groups, transposed):
    """weight as float64 [*, *, KH, KW]; checks channels against groups. Returns (weight, G)."""
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D, got shape {weight.shape}")
    if min(weight.shape[2:]) <= 0:
        raise ValueError(f"weight must have a non-empty kernel, got shape {weight.shape}")
    if int(groups) != groups or groups <= 0:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    G = int(groups)
    C_in = x.shape[1]
    if C_in % G:
        raise ValueError(f"input channels {C_in} (x.shape[1]) must be divisible by groups={G}")
    if transposed:   # weight [C_in, C_out/G, KH, KW]
        if weight.shape[0] != C_in:
            raise ValueError(f"weight must be [C_in={C_in}, C_out/groups, KH, KW], "
                             f"got shape {weight.shape}")
    else:            # weight [C_out, C_in/G, KH, KW]
        if weight.shape[0] % G:
            raise ValueError(f"output channels {weight.shape[0]} (weight.shape[0]) must be "
                             f"divisible by groups={G}")
        if weight.shape[1] != C_in // G:
            raise ValueError(f"weight must be [C_out, C_in/groups={C_in // G}, KH, KW], "
                             f"got shape {weight.shape}")
    return weight, G


def _check_bias(bias, C_out):
    if bias is None:
        return None
    bias = np.asarray(bias, dtype=np.float64)
    if bias.shape != (C_out,):
        raise ValueError(f"bias must be [C_out={C_out}], got shape {bias.shape}")
    return bias


def conv2d_output_size(size, kernel, stride=1, padding=0, dilation=1):
    """floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1 (padding: both sides)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose2d_output_size(size, kernel, stride=1, padding=0, output_padding=0,
                                 dilation=1):
    """(size - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _conv2d_setup(x, weight, groups, stride, padding, dilation):
    """Checked arguments of conv2d and its output size."""
    x, unbatched = _images("x", x)
    weight, G = _check_weight_groups(x, weight, groups, transposed=False)
    s, d = _stride_dilation(stride, dilation)
    KH, KW = weight.shape[2:]
    pad = _conv2d_padding(padding, (KH, KW), s, d)
    H, W = x.shape[2:]
    # OH = floor((H + pT + pB - dH*(KH - 1) - 1) / sH) + 1, and the same for OW
    OH = conv2d_output_size(H + pad[0][0] + pad[0][1], KH, s[0], 0, d[0])
    OW = conv2d_output_size(W + pad[1][0] + pad[1][1], KW, s[1], 0, d[1])
    if OH <= 0 or OW <= 0:
        raise ValueError(f"output size ({OH}, {OW}) is empty: x of size ({H}, {W}) padded by "
                         f"{pad} is smaller than the dilated kernel of weight {(KH, KW)} "
                         f"with dilation {d}")
    return x, unbatched, weight, G, s, pad, d, (OH, OW)


def _conv_transpose2d_setup(x, weight, groups, stride, padding, output_padding, dilation):
    """Checked arguments of conv_transpose2d and its output size."""
    x, unbatched = _images("x", x)
    weight, G = _check_weight_groups(x, weight, groups, transposed=True)
    s, d = _stride_dilation(stride, dilation)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a pair for conv_transpose2d, "
                         f"got {padding!r}")
    p = _pair("padding", padding)
    if min(p) < 0:
        raise ValueError(f"padding must be non-negative, got {p}")
    op = _pair("output_padding", output_padding)
    if min(op) < 0:
        raise ValueError(f"output_padding must be non-negative, got {op}")
    if op[0] >= max(s[0], d[0]) or op[1] >= max(s[1], d[1]):
        raise ValueError(f"output_padding {op} must be smaller than stride {s} "
                         f"or dilation {d} (per axis)")
    KH, KW = weight.shape[2:]
    H, W = x.shape[2:]
    OH = conv_transpose2d_output_size(H, KH, s[0], p[0], op[0], d[0])
    OW = conv_transpose2d_output_size(W, KW, s[1], p[1], op[1], d[1])
    if OH <= 0 or OW <= 0:
        raise ValueError(f"output size ({OH}, {OW}) is empty: padding {p} crops away the "
                         f"whole output of x of size ({H}, {W}) and weight {(KH, KW)}")
    C_out = weight.shape[1] * G
    return x, unbatched, weight, G, s, p, d, (OH, OW), C_out


# ---- the three sums over kernel taps, in conv2d's roles ----------------------------------------
# xp [N, C_in, Hp, Wp] (padded), w [C_out, C_in/G, KH, KW], y [N, C_out, OH, OW];
# tap (kh, kw) pairs y[.., oh, ow] with xp[.., oh*sH + kh*dH, ow*sW + kw*dW].
def _taps(KH, KW, OH, OW, s, d):
    """For each kernel tap: (kh, kw, rows, cols), the slices of xp it reads for all oh, ow."""
    for kh in range(KH):
        for kw in range(KW):
            rows = slice(kh * d[0], kh * d[0] + (OH - 1) * s[0] + 1, s[0])  # oh*sH + kh*dH
            cols = slice(kw * d[1], kw * d[1] + (OW - 1) * s[1] + 1, s[1])  # ow*sW + kw*dW
            yield kh, kw, rows, cols


def _correlate(xp, w, G, s, d, OH, OW):
    """y[n, g*Cog + o, oh, ow] = sum_{c, kh, kw} xp[n, g*Cig + c, oh*sH + kh*dH, ow*sW + kw*dW]
                                                * w[g*Cog + o, c, kh, kw]"""
    N, C_in, Hp, Wp = xp.shape
    C_out, Cig, KH, KW = w.shape
    xg = xp.reshape(N, G, Cig, Hp, Wp)                 # [N, G, Cig, Hp, Wp]
    wg = w.reshape(G, C_out // G, Cig, KH, KW)         # [G, Cog, Cig, KH, KW]
    y = np.zeros((N, G, C_out // G, OH, OW))           # [N, G, Cog, OH, OW]
    for kh, kw, rows, cols in _taps(KH, KW, OH, OW, s, d):
        y += np.einsum("ngchw,goc->ngohw", xg[:, :, :, rows, cols], wg[:, :, :, kh, kw])
    return y.reshape(N, C_out, OH, OW)


def _scatter(y, w, G, s, d, Hp, Wp):
    """xp [N, C_in, Hp, Wp] with xp[n, g*Cig + c, oh*sH + kh*dH, ow*sW + kw*dW]
                                  += sum_o y[n, g*Cog + o, oh, ow] * w[g*Cog + o, c, kh, kw]"""
    N, C_out, OH, OW = y.shape
    _, Cig, KH, KW = w.shape
    yg = y.reshape(N, G, C_out // G, OH, OW)           # [N, G, Cog, OH, OW]
    wg = w.reshape(G, C_out // G, Cig, KH, KW)         # [G, Cog, Cig, KH, KW]
    xp = np.zeros((N, G, Cig, Hp, Wp))                 # [N, G, Cig, Hp, Wp]
    for kh, kw, rows, cols in _taps(KH, KW, OH, OW, s, d):
        xp[:, :, :, rows, cols] += np.einsum("ngohw,goc->ngchw", yg, wg[:, :, :, kh, kw])
    return xp.reshape(N, G * Cig, Hp, Wp)


def _weight_grad(y, xp, G, s, d, KH, KW):
    """w [C_out, C_in/G, KH, KW] with w[g*Cog + o, c, kh, kw] = sum over n, oh, ow of
                       y[n, g*Cog + o, oh, ow] * xp[n, g*Cig + c, oh*sH + kh*dH, ow*sW + kw*dW]"""
    N, C_out, OH, OW = y.shape
    _, C_in, Hp, Wp = xp.shape
    yg = y.reshape(N, G, C_out // G, OH, OW)           # [N, G, Cog, OH, OW]
    xg = xp.reshape(N, G, C_in // G, Hp, Wp)           # [N, G, Cig, Hp, Wp]
    w = np.zeros((G, C_out // G, C_in // G, KH, KW))   # [G, Cog, Cig, KH, KW]
    for kh, kw, rows, cols in _taps(KH, KW, OH, OW, s, d):
        w[:, :, :, kh, kw] = np.einsum("ngohw,ngchw->goc", yg, xg[:, :, :, rows, cols])
    return w.reshape(C_out, C_in // G, KH, KW)


def _pad(x, pad):
    """x [N, C, H, W] zero-padded by pad = ((top, bottom), (left, right))."""
    return np.pad(x, ((0, 0), (0, 0), pad[0], pad[1]))


def _crop(xp, pad, H, W):
    """The [H, W] interior of a padded xp."""
    return xp[:, :, pad[0][0]:pad[0][0] + H, pad[1][0]:pad[1][0] + W]


def _grad_out(grad_out, unbatched, expected):
    g = np.asarray(grad_out, dtype=np.float64)
    g = g[None] if unbatched else g
    if g.shape != expected:
        raise ValueError(f"grad_out must have shape {expected[1:] if unbatched else expected}, "
                         f"got {np.shape(grad_out)}")
    return g


# ---- conv2d ---------------------------------------------------------------------------------
def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """out [N, C_out, OH, OW] float64; x [N, C_in, H, W], weight [C_out, C_in/groups, KH, KW]."""
    x, unbatched, weight, G, s, pad, d, (OH, OW) = _conv2d_setup(
        x, weight, groups, stride, padding, dilation)
    bias = _check_bias(bias, weight.shape[0])
    out = _correlate(_pad(x, pad), weight, G, s, d, OH, OW)   # [N, C_out, OH, OW]
    if bias is not None:
        out = out + bias[None, :, None, None]
    return _like_input(out, unbatched)


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    has_bias=True):
    """(dx [N, C_in, H, W], dw [C_out, C_in/groups, KH, KW], db [C_out] or None)."""
    x, unbatched, weight, G, s, pad, d, (OH, OW) = _conv2d_setup(
        x, weight, groups, stride, padding, dilation)
    N, _, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    dy = _grad_out(grad_out, unbatched, (N, C_out, OH, OW))
    xp = _pad(x, pad)                                          # [N, C_in, Hp, Wp]
    dxp = _scatter(dy, weight, G, s, d, *xp.shape[2:])         # [N, C_in, Hp, Wp]
    dx = _crop(dxp, pad, H, W)                                 # [N, C_in, H, W]
    dw = _weight_grad(dy, xp, G, s, d, KH, KW)                 # [C_out, C_in/G, KH, KW]
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None          # [C_out]
    return _like_input(dx, unbatched), dw, db


# ---- conv_transpose2d -----------------------------------------------------------------------
def conv_transpose2d_forward(x, weight, bias=None, stride=1, padding=0, output_padding=0,
                             groups=1, dilation=1):
    """out [N, C_out, OH, OW] float64; x [N, C_in, H, W], weight [C_in, C_out/groups, KH, KW]."""
    x, unbatched, weight, G, s, p, d, (OH, OW), C_out = _conv_transpose2d_setup(
        x, weight, groups, stride, padding, output_padding, dilation)
    bias = _check_bias(bias, C_out)
    pad = ((p[0], p[0]), (p[1], p[1]))
    # conv2d's input gradient: x plays dy, weight [C_in, C_out/G] plays [C_out', C_in'/G]
    yp = _scatter(x, weight, G, s, d, OH + 2 * p[0], OW + 2 * p[1])  # [N, C_out, OH+2pH, OW+2pW]
    out = _crop(yp, pad, OH, OW)                                      # [N, C_out, OH, OW]
    if bias is not None:
        out = out + bias[None, :, None, None]
    return _like_input(out, unbatched)


def conv_transpose2d_backward(grad_out, x, weight, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, has_bias=True):
    """(dx [N, C_in, H, W], dw [C_in, C_out/groups, KH, KW], db [C_out] or None)."""
    x, unbatched, weight, G, s, p, d, (OH, OW), C_out = _conv_transpose2d_setup(
        x, weight, groups, stride, padding, output_padding, dilation)
    N, _, H, W = x.shape
    KH, KW = weight.shape[2:]
    dy = _grad_out(grad_out, unbatched, (N, C_out, OH, OW))
    dyp = _pad(dy, ((p[0], p[0]), (p[1], p[1])))               # [N, C_out, OH+2pH, OW+2pW]
    dx = _correlate(dyp, weight, G, s, d, H, W)                # [N, C_in, H, W]
    dw = _weight_grad(x, dyp, G, s, d, KH, KW)                 # [C_in, C_out/G, KH, KW]
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None          # [C_out]
    return _like_input(dx, unbatched), dw, db
