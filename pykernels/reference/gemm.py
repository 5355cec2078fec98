"""Float64 NumPy reference for GEMM: the oracle the fast kernels are judged against.

    linear:  y = act(z),  z = x @ w.T + b      x [..., K], w [N, K], b [N]   -> y [..., N]
    matmul:  c = a @ b                         a [..., M, K], b [..., K, N]  -> c [..., M, N]
             (batch dims broadcast exactly like torch.matmul / np.matmul for >= 2-D inputs)

Backward, with dy = dL/dy the upstream gradient:

    linear:  dz = dy * act'(z)
             dx = dz @ w              [..., K]
             dw = sum over rows of dz^T x   [N, K]
             db = sum over rows of dz        [N]
    matmul:  da = dc @ b^T,  db = a^T @ dc,  each summed over the batch dims that were broadcast

Activations (act, act'):
    None     z                          1
    relu     max(z, 0)                  1 if z > 0 else 0
    gelu     z * Phi(z)                 Phi(z) + z * phi(z)      (exact erf form, torch's default)
    tanh     tanh(z)                    1 - tanh(z)^2
    sigmoid  s = 1 / (1 + exp(-z))      s * (1 - s)

Everything is computed in float64 whatever the input dtype; results are float64 arrays.
Test: .venv/bin/python -m pytest tests/test_gemm.py -q
"""

import math

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "activation_forward",
    "activation_derivative",
    "linear_forward",
    "linear_backward",
    "matmul_forward",
    "matmul_backward",
]

ACTIVATIONS = (None, "relu", "gelu", "tanh", "sigmoid")

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _f64(t):
    return np.asarray(t, dtype=np.float64)


def _normal_cdf(z):
    """Phi(z) = (1 + erf(z / sqrt(2))) / 2."""
    return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))


def _normal_pdf(z):
    """phi(z) = exp(-z^2 / 2) / sqrt(2 pi)."""
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def activation_forward(z, activation):
    """act(z), elementwise."""
    _check_activation(activation)
    z = _f64(z)
    if activation is None:
        return z.copy()
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "gelu":
        return z * _normal_cdf(z)
    if activation == "tanh":
        return np.tanh(z)
    # sigmoid
    return 1.0 / (1.0 + np.exp(-z))


def activation_derivative(z, activation):
    """act'(z), elementwise (relu' taken as 0 at z == 0, like torch)."""
    _check_activation(activation)
    z = _f64(z)
    if activation is None:
        return np.ones_like(z)
    if activation == "relu":
        return (z > 0.0).astype(np.float64)
    if activation == "gelu":
        return _normal_cdf(z) + z * _normal_pdf(z)
    if activation == "tanh":
        t = np.tanh(z)
        return 1.0 - t * t
    # sigmoid
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 - s)


def _linear_preactivation(x, w, b):
    """z = x @ w.T + b   [..., N]"""
    z = _f64(x) @ _f64(w).T
    if b is not None:
        z = z + _f64(b)
    return z


def linear_forward(x, w, b=None, activation=None):
    """y = act(x @ w.T + b);  x [..., K], w [N, K], b [N] or None  ->  y [..., N]."""
    return activation_forward(_linear_preactivation(x, w, b), activation)


def linear_backward(dy, x, w, b=None, activation=None):
    """Gradients of linear_forward: (dx [..., K], dw [N, K], db [N] or None)."""
    x, w, dy = _f64(x), _f64(w), _f64(dy)
    z = _linear_preactivation(x, w, b)                   # [..., N]
    dz = dy * activation_derivative(z, activation)       # [..., N]
    dx = dz @ w                                          # [..., N] @ [N, K] -> [..., K]
    R = int(np.prod(x.shape[:-1]))                       # rows: product of the batch dims
    rows_dz = dz.reshape(R, w.shape[0])                  # [R, N]
    rows_x = x.reshape(R, w.shape[1])                    # [R, K]
    dw = rows_dz.T @ rows_x                              # [N, R] @ [R, K] -> [N, K]
    db = rows_dz.sum(axis=0) if b is not None else None  # [N]
    return dx, dw, db


def matmul_forward(a, b):
    """c = a @ b with torch.matmul broadcasting;  a [..., M, K], b [..., K, N] -> c [..., M, N]."""
    a, b = _f64(a), _f64(b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul reference needs >= 2-D inputs, got a {a.shape}, b {b.shape}")
    return a @ b


def _sum_to_shape(g, shape):
    """Sum g over the leading batch dims that broadcasting added or expanded from 1 to reach `shape`."""
    extra = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(extra))) if extra > 0 else g
    expanded = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=expanded, keepdims=True) if expanded else g


def matmul_backward(dc, a, b):
    """Gradients of matmul_forward: (da shaped like a, db shaped like b).

    da = dc @ b^T   [..., M, N] @ [..., N, K] -> [..., M, K]
    db = a^T @ dc   [..., K, M] @ [..., M, N] -> [..., K, N]
    then each is summed over the batch dims that were broadcast in the forward.
    """
    dc, a, b = _f64(dc), _f64(a), _f64(b)
    da = dc @ np.swapaxes(b, -1, -2)
    db = np.swapaxes(a, -1, -2) @ dc
    return _sum_to_shape(da, a.shape), _sum_to_shape(db, b.shape)
