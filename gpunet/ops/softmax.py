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

On the host (cpu) a float32 (log-)softmax along the last axis runs in one
compiled pass per row (gpunet/_host/host_ops.c through gpunet/hostlib.py),
the rows split over the host threads; other axes, float64 and hosts without
a C compiler take the NumPy code below.

Kernel backends (sim, cuda; float32, and float16/bfloat16 storage computed
in float32 with each output rounded once, as the cpu reference does through
gpunet.ops.half) run csrc/kernels/softmax.cu along the last axis. Softmax along another axis there is computed by moving that axis
last (one transposing copy in, one out); the saved output stays in that
moved layout so backward transposes only the incoming gradient.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import checks, dtypes, hostlib
from ..dispatch import path
from . import host_threads
from .half import float32_compute, kernel_view


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


def _half_kernels(be, *args, **kwargs):
    """Every half softmax call runs on the kernels (float32 inside)."""
    return True


def _kernel(be, name, *arrays, beta, log):
    """be.kernels.<name> over 2-D (rows, last axis) views of `arrays` (the
    last one written), bfloat16 passed as its bits."""
    cols = arrays[0].shape[-1]
    getattr(be.kernels, name)(*(kernel_view(be, a.reshape(-1, cols)) for a in arrays), float(beta), bool(log),
                              be.stream())


@float32_compute("softmax", forward=True, half_kernels=_half_kernels)
def softmax_forward(be, x, dim: int, beta: float = 1.0, log: bool = False, check: str | None = None):
    """(log-)softmax of x along `dim`. Returns (y, ctx). check: x's argument
    name when its NaN/Inf scan (gpunet.checks) is left to this op: the
    compiled rows do it in their first read of each row (the row's max), the
    other paths before they start."""
    xp = be.xp
    if x.ndim == 0:  # a row of one
        y, ctx = softmax_forward(be, x.reshape(1), 0, beta, log, check)
        return y.reshape(()), ctx
    dim = dim % x.ndim
    if x.size == 0:  # nothing to normalise (a zero-length row has no max to shift by)
        y = xp.empty_like(x)
        return y, (y, dim, beta, log)
    on_kernels = dtypes.is_half(x.dtype) or path(be, "softmax", x.dtype) == "kernel"  # half: only kernel backends
    lib = hostlib.for_float32(be, x) if not on_kernels and dim == x.ndim - 1 else None
    if check is not None and lib is None:
        checks.finite_values(be, x, check)
    if on_kernels:
        xl = _to_last(xp, x, dim)
        yl = xp.empty_like(xl)
        _kernel(be, "softmax_forward", xl, yl, beta=beta, log=log)
        return _from_last(xp, yl, dim), (yl, dim, beta, log)
    if lib is not None:
        y, nonfinite = softmax_rows_compiled(lib, x, beta, log)
        if check is not None and nonfinite and checks.finite_checks_enabled(be):
            checks.nonfinite_error(be, x, check)
        return y, (y, dim, beta, log)
    if not be.on_gpu and not log and dim == x.ndim - 1:
        y = _softmax_rows_host(x, beta)
        return y, (y, dim, beta, log)
    y = _shifted(xp, x, dim, beta)
    if log:
        y -= xp.log(xp.exp(y).sum(axis=dim, keepdims=True))
    else:
        xp.exp(y, out=y)
        y /= y.sum(axis=dim, keepdims=True)
    return y, (y, dim, beta, log)


def softmax_rows_compiled(lib, x, beta=1.0, log=False, masked=False, causal=False):
    """(log-)softmax of float32 x along its last axis in the compiled host
    loop (gpunet_softmax_rows_f32: the NumPy path's shift and exp, the sum in
    float lanes over blocks of terms and the blocks in double, the product
    with 1/sum, all while the row is in cache), the rows split over the host
    threads. masked: attention's rule for scores (a row of
    -inf gives zeros); causal: x is (..., L, S) scores and query i keeps keys
    j <= i (the rest read as -inf, no mask written). Returns (y, whether a
    row held a NaN or an infinity among the keys it kept)."""
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    y = np.empty_like(x2)
    n = x2.shape[1]
    # beta's float32 bits (1.0's written out: through NumPy they cost 1 us a call)
    beta_bits = 0x3F800000 if beta == 1.0 else int(np.array(beta, np.float32).view(np.uint32))
    nonfinite = host_threads.run_compiled(lib.gpunet_softmax_range_f32,
                                          (hostlib.ptr(x2), hostlib.ptr(y), n, beta_bits, int(log) | int(masked) << 1,
                                           x.shape[-2] if causal else 0),
                                          host_threads.ranges(x2.shape[0], n, host_threads.MIN_PER_EXP_THREAD))
    return y.reshape(x.shape), any(nonfinite)


# elements per row block of the host path: the block's passes stay in the core's cache
_HOST_BLOCK = 1 << 16
# |x| bound of a block whose rows need no shift (beta = 1): e^±60 and every
# row's sum (below 2^87 · 2^40 elements) are normal float32 numbers
NO_SHIFT_BOUND = 60.0


def _softmax_rows_host(x, beta):
    """softmax along the last axis, on the host without the compiled loops
    (or in float64): the rows split over the host
    threads, each thread working through blocks of rows whose shift, exp, sum
    and division run while the block is in cache. With beta = 1 a block whose
    |x| stays within NO_SHIFT_BOUND (typical logits) skips the shift: exp(x)
    neither overflows nor leaves the normal range there, and exp of the exact
    input is at least as accurate as exp of the rounded x - max; NumPy's
    row-wise max, slow on short rows, is not needed. (With beta != 1, beta·x
    is rounded: its error, relative to |beta·x| rather than to the distance
    from the max, would grow the largest probabilities' error.)"""
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    y = np.empty_like(x2)
    rows = max(1, _HOST_BLOCK // x2.shape[1])

    def part(lo, hi):
        for r in range(lo, hi, rows):
            xb, yb = x2[r:min(r + rows, hi)], y[r:min(r + rows, hi)]
            if beta == 1 and -NO_SHIFT_BOUND <= xb.min() and xb.max() <= NO_SHIFT_BOUND:  # False for a NaN
                np.exp(xb, out=yb)
            else:
                shift = xb.max(axis=1, keepdims=True) if beta >= 0 else xb.min(axis=1, keepdims=True)
                np.subtract(xb, shift, out=yb)
                if beta != 1:
                    yb *= beta
                np.exp(yb, out=yb)
            yb /= yb.sum(axis=1, keepdims=True)
    host_threads.run(part, host_threads.ranges(x2.shape[0], x2.shape[1]))
    return y.reshape(x.shape)


@float32_compute("softmax", forward=False, half_kernels=_half_kernels)
def softmax_backward(be, ctx, dy):
    """Gradient of the (log-)softmax input given the output gradient dy."""
    y, dim, beta, log = ctx
    xp = be.xp
    if dy.ndim == 0:
        return softmax_backward(be, ctx, dy.reshape(1)).reshape(())
    if y.size == 0:
        return xp.empty_like(dy)
    if dtypes.is_half(y.dtype) or path(be, "softmax", y.dtype) == "kernel":  # half y: a kernel backend's
        dyl = _to_last(xp, xp.asarray(dy, dtype=y.dtype), dim)  # a float32 gradient (a loss's) rounded to y's
        dxl = xp.empty_like(dyl)
        _kernel(be, "softmax_backward", y, dyl, dxl, beta=beta, log=log)
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
