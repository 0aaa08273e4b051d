"""Softmax and log-softmax with inverse temperature beta:

    softmax(z)_i = e^{beta z_i} / sum_j e^{beta z_j}
    log_softmax(z)_i = beta z_i - log sum_j e^{beta z_j}

Stability: the row is shifted by its max before exponentiating, and the shift
is taken on z itself, not on beta*z: beta*(z_i - max z) <= 0 cannot overflow
for any beta >= 0, however large beta or the logits are (for beta < 0 the min
of z plays the max's role). So 1e4 logits at beta = 1e4 give exact one-hot
rows, never inf/inf = NaN.

Backward (y the output, g the incoming gradient, sums along `dim`):
    softmax:      dz = beta * y * (g - sum(g * y))
    log_softmax:  dz = beta * (g - e^y * sum(g))

Kernel backends (sim, cuda; float32) run csrc/kernels/softmax.cu along the
last axis. Softmax along another axis there is computed by moving that axis
last (one transposing copy in, one out); the saved output stays in that
moved layout so backward transposes only the incoming gradient.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..dispatch import path
from .half import float32_compute


def resolve_dim(dim, ndim: int) -> int:
    """`dim` checked against an ndim-D input (a 0-d input counts as one row,
    dims -1 and 0), as a non-negative axis. dim=None is PyTorch's deprecated
    implicit choice, with its warning: 0 for 0-, 1- and 3-D inputs, else 1."""
    if dim is None:
        dim = 0 if ndim in (0, 1, 3) else 1
        warnings.warn(f"softmax: implicit dimension choice (dim={dim} for a {ndim}-D input) is deprecated in "
                      "PyTorch; pass dim= explicitly", UserWarning, stacklevel=3)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim: expected an int or None, got {type(dim).__name__}")
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise ValueError(f"dim: expected a dimension of the {ndim}-D input (in [{-rank}, {rank - 1}]), got {dim}")
    return int(dim) % rank


def _shifted(xp, x, dim, beta):
    """beta * (x - shift) <= 0, the shift being the max (beta >= 0) or min of x,
    as a new array (callers work in it in place)."""
    shift = x.max(axis=dim, keepdims=True) if beta >= 0 else x.min(axis=dim, keepdims=True)
    z = x - shift
    if beta != 1:
        z *= beta
    return z


def _to_last(xp, a, dim):
    """`a` with axis `dim` moved last, as a contiguous array."""
    return xp.ascontiguousarray(xp.moveaxis(a, dim, -1))


def _from_last(xp, a, dim):
    """Inverse of _to_last (contiguous, so the next layer's kernels can take it)."""
    return xp.ascontiguousarray(xp.moveaxis(a, -1, dim))


@float32_compute("softmax", forward=True)
def softmax_forward(be, x, dim: int, beta: float = 1.0, log: bool = False):
    """(log-)softmax of x along `dim`. Returns (y, ctx)."""
    xp = be.xp
    if x.ndim == 0:  # a row of one
        y, ctx = softmax_forward(be, x.reshape(1), 0, beta, log)
        return y.reshape(()), ctx
    dim = dim % x.ndim
    if x.size == 0:  # nothing to normalise (a zero-length row has no max to shift by)
        y = xp.empty_like(x)
        return y, (y, dim, beta, log)
    if path(be, "softmax", x.dtype) == "kernel":
        xl = _to_last(xp, x, dim)
        yl = xp.empty_like(xl)
        cols = xl.shape[-1]
        be.kernels.softmax_forward(xl.reshape(-1, cols), yl.reshape(-1, cols), float(beta), bool(log), be.stream())
        return _from_last(xp, yl, dim), (yl, dim, beta, log)
    y = _shifted(xp, x, dim, beta)
    if log:
        y -= xp.log(xp.exp(y).sum(axis=dim, keepdims=True))
    else:
        xp.exp(y, out=y)
        y /= y.sum(axis=dim, keepdims=True)
    return y, (y, dim, beta, log)


@float32_compute("softmax", forward=False)
def softmax_backward(be, ctx, dy):
    """Gradient of the (log-)softmax input given the output gradient dy."""
    y, dim, beta, log = ctx
    xp = be.xp
    if dy.ndim == 0:
        return softmax_backward(be, ctx, dy.reshape(1)).reshape(())
    if y.size == 0:
        return xp.empty_like(dy)
    if path(be, "softmax", y.dtype) == "kernel":
        dyl = _to_last(xp, dy, dim)
        dxl = xp.empty_like(dyl)
        cols = y.shape[-1]
        be.kernels.softmax_backward(y.reshape(-1, cols), dyl.reshape(-1, cols), dxl.reshape(-1, cols),
                                 float(beta), bool(log), be.stream())
        return _from_last(xp, dxl, dim)
    # one temporary, reused in place
    if log:
        dx = xp.exp(y)
        dx *= dy.sum(axis=dim, keepdims=True)
        xp.subtract(dy, dx, out=dx)
    else:
        dx = dy * y
        xp.subtract(dy, dx.sum(axis=dim, keepdims=True), out=dx)
        dx *= y
    if beta != 1:
        dx *= beta
    return dx
