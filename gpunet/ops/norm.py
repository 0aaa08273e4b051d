"""Normalisation: layer norm (per row) and batch norm (per channel).

Layer norm over the last C features of each of M rows:
    mean = sum(x)/C, var = sum((x - mean)^2)/C (biased, as PyTorch),
    rstd = 1/sqrt(var + eps), xhat = (x - mean)·rstd, y = xhat·w + b.
Backward, with g = dy·w:
    dx = rstd·(g - mean(g) - xhat·mean(g·xhat)),  dw = sum_rows(dy·xhat),  db = sum_rows(dy).
The forward saves mean and rstd (M floats each), never xhat.

On kernel backends (sim, cuda) float32 layer norm runs csrc/kernels/layernorm.cu;
float64 runs the array path. Batch norm is array-level on every backend
(its reductions are over all axes but the channel one: be.xp.sum does them;
on cuda that is CuPy's reduction kernels).
"""
from __future__ import annotations

import numpy as np

from ..backend import fallback

# the parameter-gradient kernel sums rows in at most this many chunks
# (deterministic two-pass reduction: chunk partials, then a fixed-order sum)
_LN_MAX_CHUNKS = 128
_LN_CHUNK_ROWS = 32


def _kernel_ok(be, x) -> bool:
    if be.kern is not None and x.dtype != np.float32:
        fallback(be, "layer_norm", f"dtype {x.dtype} (the kernels are float32)")
    return be.kern is not None and x.dtype == np.float32


# ---------------------------------------------------------------- layer norm
def layer_norm_forward(be, x, weight, bias, normalized_size: int, eps: float):
    """x (..., *normalized_shape) with prod(normalized_shape) = normalized_size.
    weight/bias: arrays of normalized_size elements, or None. Returns y and the
    ctx for layer_norm_backward."""
    xp = be.xp
    C = normalized_size
    x2 = xp.ascontiguousarray(x).reshape(-1, C)
    M = x2.shape[0]
    if _kernel_ok(be, x):
        w = xp.ones(C, x.dtype) if weight is None else weight.reshape(C)
        b = xp.zeros(C, x.dtype) if bias is None else bias.reshape(C)
        y = xp.empty_like(x2)
        mean = xp.empty(M, x.dtype)
        rstd = xp.empty(M, x.dtype)
        be.kern.layernorm_forward(x2, w, b, y, mean, rstd, float(eps), be.stream())
    else:
        mean = x2.mean(axis=1)
        xc = x2 - mean[:, None]
        rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=1) + eps)
        y = xc * rstd[:, None]
        if weight is not None:
            y *= weight.reshape(C)
        if bias is not None:
            y += bias.reshape(C)
    return y.reshape(x.shape), (x2, mean, rstd, weight, bias is not None)


def layer_norm_backward(be, ctx, dy):
    """Returns dx (shape of dy), dweight and dbias (flat, normalized_size
    elements; None when the layer has no weight/bias)."""
    x2, mean, rstd, weight, has_bias = ctx
    xp = be.xp
    M, C = x2.shape
    dy2 = xp.ascontiguousarray(dy).reshape(M, C)
    if _kernel_ok(be, x2):
        w = xp.ones(C, x2.dtype) if weight is None else weight.reshape(C)
        dx = xp.empty_like(x2)
        dw = xp.empty(C, x2.dtype)
        db = xp.empty(C, x2.dtype)
        chunks = min(_LN_MAX_CHUNKS, -(-M // _LN_CHUNK_ROWS))
        partial = xp.empty((2, chunks, C), x2.dtype)
        be.kern.layernorm_backward(x2, w, mean, rstd, dy2, dx, dw, db, partial, be.stream())
    else:
        xhat = (x2 - mean[:, None]) * rstd[:, None]
        g = dy2 * weight.reshape(C) if weight is not None else dy2
        dx = rstd[:, None] * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
        dw = (dy2 * xhat).sum(axis=0)
        db = dy2.sum(axis=0)
    return dx.reshape(dy.shape), (dw if weight is not None else None), (db if has_bias else None)


# ---------------------------------------------------------------- batch norm
def _channel_view(x):
    """(N, C, *spatial) -> (N, C, inner): statistics reduce over axes 0 and 2."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def batch_norm_stats(be, x):
    """Per-channel mean and biased variance of x (N, C, *) over N and the
    spatial axes, and the number of values per channel."""
    fallback(be, "batch_norm", "no kernel (batch norm is array code on every backend)")
    x3 = _channel_view(x)
    mean = x3.mean(axis=(0, 2))
    xc = x3 - mean[None, :, None]
    var = (xc * xc).mean(axis=(0, 2))
    return mean, var, x3.shape[0] * x3.shape[2]


def batch_norm_forward(be, x, weight, bias, mean, var, eps: float):
    """Normalise x (N, C, *) per channel with the given statistics (the batch's
    in training, the running ones in eval): y = (x - mean)·rstd·w + b."""
    xp = be.xp
    x3 = _channel_view(x)
    rstd = 1.0 / xp.sqrt(var + eps)
    xhat = (x3 - mean[None, :, None]) * rstd[None, :, None]
    y = xhat
    if weight is not None:
        y = y * weight[None, :, None]
    if bias is not None:
        y = y + bias[None, :, None]
    return y.reshape(x.shape), (xhat, rstd, weight, bias is not None)


def batch_norm_backward(be, ctx, dy, batch_stats: bool):
    """dx, dweight, dbias. batch_stats: the forward normalised with the batch's
    own statistics, so the gradient also flows through mean and variance:
        dx = rstd·(g - mean(g) - xhat·mean(g·xhat)),  g = dy·w, means over N and space;
    otherwise (running statistics) the forward was affine: dx = g·rstd."""
    xhat, rstd, weight, has_bias = ctx
    dy3 = _channel_view(dy)
    g = dy3 * weight[None, :, None] if weight is not None else dy3
    if batch_stats:
        g_mean = g.mean(axis=(0, 2), keepdims=True)
        gx_mean = (g * xhat).mean(axis=(0, 2), keepdims=True)
        dx = rstd[None, :, None] * (g - g_mean - xhat * gx_mean)
    else:
        dx = g * rstd[None, :, None]
    dw = (dy3 * xhat).sum(axis=(0, 2)) if weight is not None else None
    db = dy3.sum(axis=(0, 2)) if has_bias else None
    return dx.reshape(dy.shape), dw, db
