"""Normalisation: layer norm (per row) and batch norm (per channel).

Layer norm over the last C features of each of M rows:
    mean = sum(x)/C, var = sum((x - mean)^2)/C (biased, as PyTorch),
    rstd = 1/sqrt(var + eps), xhat = (x - mean)·rstd, y = xhat·w + b.
Backward, with g = dy·w:
    dx = rstd·(g - mean(g) - xhat·mean(g·xhat)),  dw = sum_rows(dy·xhat),  db = sum_rows(dy).
The forward saves mean and rstd (M floats each), never xhat.

On the "kernel" dispatch path (sim, cuda; float32, and float16/bfloat16
storage computed in float32 with float32 mean and rstd, each output rounded
once, as the cpu reference does through gpunet.ops.half) layer norm runs
csrc/kernels/norm.cu; other dtypes run the array path. Batch norm is array-level on every backend
(its reductions are over all axes but the channel one: be.xp.sum does them;
on cuda that is CuPy's reduction kernels); on the host, float32 batch norm
runs the compiled loops of gpunet/hostlib.py, a channel per call.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import checks, dtypes, hostlib
from ..dispatch import path
from . import host_threads
from .half import float32_compute, kernel_view

# the parameter-gradient kernel sums rows in at most this many chunks
# (deterministic two-pass reduction: chunk partials, then a fixed-order sum)
_LN_MAX_CHUNKS = 128
_LN_CHUNK_ROWS = 32


def _row_blocks(be, M: int, C: int):
    """Row slices the array path works through one at a time. On the host,
    blocks of about 1 MiB keep each block's temporaries in cache and reuse
    their memory (whole-array temporaries cost a page fault per 4 KiB on
    every call); on a GPU one block, as each slice is a kernel launch."""
    rows = M if be.on_gpu else max(1, (1 << 18) // max(C, 1))
    return [slice(s, min(s + rows, M)) for s in range(0, M, rows)]


def _each_block(be, M: int, C: int, fn) -> list:
    """fn(rows) for every row block, in order; on the host the blocks are
    shared out over the host threads (each block's work is the same either
    way, so the results do not depend on the thread count)."""
    blocks = _row_blocks(be, M, C)
    if be.on_gpu:
        return [fn(rows) for rows in blocks]
    return host_threads.map_chunks(fn, blocks, (blocks[0].stop - blocks[0].start) * C if blocks else 1)


# ---------------------------------------------------------------- layer norm
def _host_param(a, C: int):
    return None if a is None else np.ascontiguousarray(a.reshape(C))


def _half_kernels(be, *args, **kwargs):
    """Every half layer norm call runs on the kernels (float32 inside)."""
    return True


@float32_compute("layer_norm", forward=True, half_kernels=_half_kernels)
def layer_norm_forward(be, x, weight, bias, normalized_size: int, eps: float, check: str | None = None):
    """x (..., *normalized_shape) with prod(normalized_shape) = normalized_size.
    weight/bias: arrays of normalized_size elements, or None. Returns y and the
    ctx for layer_norm_backward. check: x's argument name when its NaN/Inf
    scan (gpunet.checks) is left to this op: the compiled rows see it in
    their sums, the other paths scan before they start."""
    xp = be.xp
    C = normalized_size
    x2 = xp.ascontiguousarray(x).reshape(-1, C)
    M = x2.shape[0]
    on_kernels = dtypes.is_half(x.dtype) or path(be, "layer_norm", x.dtype) == "kernel"
    lib = None if on_kernels else hostlib.for_float32(be, x2, weight, bias)
    if check is not None and lib is None:
        checks.finite_values(be, x, check)
    if on_kernels:  # half: a kernel backend's
        w = xp.ones(C, x.dtype) if weight is None else weight.reshape(C)
        b = xp.zeros(C, x.dtype) if bias is None else bias.reshape(C)
        y = xp.empty_like(x2)
        mean = xp.empty(M, np.float32)  # float32 statistics whatever the storage
        rstd = xp.empty(M, np.float32)
        be.kernels.layernorm_forward(*(kernel_view(be, a) for a in (x2, w, b, y)), mean, rstd, float(eps),
                                     be.stream())
    elif lib is not None:
        y, mean, rstd = np.empty_like(x2), np.empty(M, np.float32), np.empty(M, np.float32)
        w, b = _host_param(weight, C), _host_param(bias, C)
        eps_bits = int(np.array(eps, np.float64).view(np.int64))
        nonfinite = host_threads.run_compiled(lib.gpunet_layer_norm_forward_range_f32,
                                              (hostlib.ptr(x2), hostlib.ptr(w), hostlib.ptr(b), hostlib.ptr(y),
                                               hostlib.ptr(mean), hostlib.ptr(rstd), C, eps_bits),
                                              host_threads.ranges(M, C))
        if check is not None and any(nonfinite) and checks.finite_checks_enabled(be):
            checks.nonfinite_error(be, x, check)
    else:
        # row sums as a matrix-vector product (BLAS) and sums of squares with
        # einsum: no squared temporary; y's own memory holds x - mean
        ones = xp.ones(C, x2.dtype)
        y = xp.empty_like(x2)
        mean = xp.empty(M, x2.dtype)
        rstd = xp.empty(M, x2.dtype)

        def block(rows):
            yb = y[rows]
            mean[rows] = (x2[rows] @ ones) / C
            xp.subtract(x2[rows], mean[rows, None], out=yb)
            rstd[rows] = 1.0 / xp.sqrt(xp.einsum("ij,ij->i", yb, yb) / C + eps)
            yb *= rstd[rows, None]
            if weight is not None:
                yb *= weight.reshape(C)
            if bias is not None:
                yb += bias.reshape(C)
        _each_block(be, M, C, block)
    return y.reshape(x.shape), (x2, mean, rstd, weight, bias is not None)


@float32_compute("layer_norm", forward=False, half_kernels=_half_kernels)
def layer_norm_backward(be, ctx, dy):
    """Returns dx (shape of dy), dweight and dbias (flat, normalized_size
    elements; None when the layer has no weight/bias)."""
    x2, mean, rstd, weight, has_bias = ctx
    xp = be.xp
    M, C = x2.shape
    dy2 = xp.ascontiguousarray(dy).reshape(M, C)
    if M == 0:  # an empty batch: no rows to launch over, and zero parameter gradients
        zeros = xp.zeros(C, x2.dtype)
        return dy2.reshape(dy.shape).copy(), (zeros if weight is not None else None), \
            (zeros.copy() if has_bias else None)
    if dtypes.is_half(x2.dtype) or path(be, "layer_norm", x2.dtype) == "kernel":
        w = xp.ones(C, x2.dtype) if weight is None else weight.reshape(C)
        dy2 = dy2.astype(x2.dtype, copy=False)  # (a float32 gradient given to a half layer: rounded to it)
        dx = xp.empty_like(x2)
        dw = xp.empty(C, x2.dtype)
        db = xp.empty(C, x2.dtype)
        chunks = min(_LN_MAX_CHUNKS, -(-M // _LN_CHUNK_ROWS))
        partial = xp.empty((2, chunks, C), mean.dtype)
        kv = functools.partial(kernel_view, be)
        be.kernels.layernorm_backward(kv(x2), kv(w), mean, rstd, kv(dy2), kv(dx), kv(dw), kv(db), partial,
                                      be.stream())
    elif (lib := hostlib.for_float32(be, x2, weight, dy2)) is not None:
        dx = np.empty_like(x2)
        w = np.ones(C, np.float32) if weight is None else _host_param(weight, C)  # (dy·1 = dy exactly)
        blocks = _row_blocks(be, M, C)
        rows = blocks[0].stop
        # per block: dw's and db's partial sums (float64), added below in block order
        parts = np.zeros((len(blocks), 2, C), np.float64)
        failed = host_threads.run_compiled(lib.gpunet_layer_norm_backward_range_f32,
                                           (hostlib.ptr(x2), hostlib.ptr(w), hostlib.ptr(mean), hostlib.ptr(rstd),
                                            hostlib.ptr(dy2), hostlib.ptr(dx), hostlib.ptr(parts), M, C, rows),
                                           host_threads.ranges(len(blocks), rows * C))
        if any(failed):
            raise MemoryError("layer_norm: no memory for a block's scratch")
        dw, db = parts.sum(axis=0).astype(np.float32)
    else:
        ones = xp.ones(C, x2.dtype)
        dx = xp.empty_like(x2)
        dw = xp.zeros(C, x2.dtype)
        db = xp.ones(M, dy2.dtype) @ dy2 if has_bias else None

        def block(rows):
            xhat = x2[rows] - mean[rows, None]
            xhat *= rstd[rows, None]
            dw_part = xp.einsum("ij,ij->j", dy2[rows], xhat) if weight is not None else None
            # g = dy·w goes into dx's block; then in place
            # dx = rstd·g - (rstd·mean(g·xhat))·xhat - rstd·mean(g)
            g = dx[rows]
            if weight is not None:
                xp.multiply(dy2[rows], weight.reshape(C), out=g)
            else:
                g[...] = dy2[rows]
            r = rstd[rows]
            g_mean = (g @ ones) / C
            gx_mean = xp.einsum("ij,ij->i", g, xhat) / C
            g *= r[:, None]
            xhat *= (r * gx_mean)[:, None]
            g -= xhat
            g -= (r * g_mean)[:, None]
            return dw_part
        for part in _each_block(be, M, C, block):  # in row order, whatever the thread count
            if part is not None:
                dw += part
    return dx.reshape(dy.shape), (dw if weight is not None else None), (db if has_bias else None)


# ---------------------------------------------------------------- batch norm
def _channel_view(x):
    """(N, C, *spatial) -> (N, C, inner): statistics reduce over axes 0 and 2."""
    inner = 1
    for n in x.shape[2:]:
        inner *= n
    return x.reshape(x.shape[0], x.shape[1], inner)  # not -1: an empty batch has no size to infer


def _per_images(be, n: int, per_image: int, fn) -> list:
    """fn(images) for slices of the N images, in order: on the host chunks of
    about 1 MiB (their temporaries stay in cache) shared out over the host
    threads; on a GPU one slice of all of them."""
    if be.on_gpu:
        return [fn(slice(0, n))]
    step = max(1, (1 << 18) // max(per_image, 1))
    chunks = [slice(s, min(s + step, n)) for s in range(0, n, step)]
    return host_threads.map_chunks(fn, chunks, step * per_image)


# the compiled loops take a channel's n runs of `inner` values; shorter runs
# (BatchNorm1d's (N, C): one value) read a cache line per value there, so
# those stay on NumPy's strided reductions
_BN_HOST_MIN_INNER = 32


def _bn_host_lib(be, x3, *arrays):
    """The compiled host loops (gpunet/hostlib.py) for a float32 batch norm on
    the host with runs of at least _BN_HOST_MIN_INNER values per (image,
    channel) and float32 parameters, else None (NumPy code)."""
    if x3.shape[2] < _BN_HOST_MIN_INNER or x3.shape[0] == 0:
        return None
    return hostlib.for_float32(be, x3, *arrays)


def _over_channels(x3, fn, *args) -> None:
    """fn(*args, lo, hi), a compiled loop, over channel ranges shared out
    over the host threads: each channel is done whole by one call, so the
    split changes no bit."""
    n, c, inner = x3.shape
    host_threads.run_compiled(fn, args, host_threads.ranges(c, n * inner))


def _channel_totals(xp, parts, count: int, dtype):
    """Per-channel means of (images, C) partial sums: summed over the images
    in float64 (PyTorch's CPU batch norm accumulates in double), so a float32
    result is within an ulp or so and does not depend on the chunking."""
    return (xp.concatenate(parts).sum(axis=0, dtype=np.float64) / count).astype(dtype)


def batch_norm_stats(be, x):
    """Per-channel mean and biased variance of x (N, C, *) over N and the
    spatial axes, and the number of values per channel. An empty input has
    none: mean 0 and variance 1 then, so that its (empty) output is finite.
    A half x gets float32 statistics (batch_norm_forward reads them as they are)."""
    if dtypes.is_half(x.dtype):
        return batch_norm_stats(be, x.astype(np.float32))
    path(be, "batch_norm", x.dtype, unsupported="no kernel (batch norm is array code on every backend)")
    xp = be.xp
    x3 = _channel_view(x)
    n, c, inner = x3.shape
    count = n * inner
    if count == 0:
        return xp.zeros(c, x.dtype), xp.ones(c, x.dtype), 0
    if (lib := _bn_host_lib(be, x3)) is not None:
        x3 = np.ascontiguousarray(x3)
        mean, var = np.empty(c, np.float32), np.empty(c, np.float32)
        _over_channels(x3, lib.gpunet_batch_norm_stats_f32, hostlib.ptr(x3), hostlib.ptr(mean), hostlib.ptr(var),
                       *x3.shape)
        return mean, var, count
    # per (image, channel) sums first (short runs: BLAS dot products), then
    # across images in float64. (A ReLU after the norm turns an ulp of error
    # into the other branch for values within an ulp of 0: whole gradients.)
    ones = xp.ones(inner, x.dtype)
    mean = _channel_totals(xp, _per_images(be, n, c * inner, lambda i: x3[i] @ ones), count, x.dtype)

    def squares(i):
        xc = x3[i] - mean[None, :, None]
        return xp.einsum("nci,nci->nc", xc, xc)
    var = _channel_totals(xp, _per_images(be, n, c * inner, squares), count, x.dtype)
    return mean, var, count


@float32_compute("batch_norm", forward=True, array_code=True)
def batch_norm_forward(be, x, weight, bias, mean, var, eps: float):
    """Normalise x (N, C, *) per channel with the given statistics (the batch's
    in training, the running ones in eval): y = (x - mean)·rstd·w + b."""
    xp = be.xp
    x3 = _channel_view(x)
    rstd = 1.0 / xp.sqrt(var + eps)
    scale = rstd if weight is None else weight * rstd
    y = xp.empty(x3.shape, x3.dtype)
    if (lib := _bn_host_lib(be, x3, mean, scale, bias)) is not None:
        x3 = np.ascontiguousarray(x3)
        m, s, b = (None if a is None else np.ascontiguousarray(a) for a in (mean, scale, bias))
        _over_channels(x3, lib.gpunet_batch_norm_forward_f32, hostlib.ptr(x3), hostlib.ptr(y), hostlib.ptr(m),
                       hostlib.ptr(s), hostlib.ptr(b), *x3.shape)
        return y.reshape(x.shape), (x3, mean.copy(), rstd, weight, bias is not None)

    def normalise(i):
        xp.subtract(x3[i], mean[None, :, None], out=y[i])
        y[i] *= scale[None, :, None]
        if bias is not None:
            y[i] += bias[None, :, None]
    _per_images(be, x3.shape[0], x3.shape[1] * x3.shape[2], normalise)
    # x, not xhat, is saved (as layer norm does): no second full-size array;
    # the statistics are copied, as running ones change in place
    return y.reshape(x.shape), (x3, mean.copy(), rstd, weight, bias is not None)


@float32_compute("batch_norm", forward=False, array_code=True)
def batch_norm_backward(be, ctx, dy, batch_stats: bool):
    """dx, dweight, dbias. batch_stats: the forward normalised with the batch's
    own statistics, so the gradient also flows through mean and variance:
        dx = rstd·(g - mean(g) - xhat·mean(g·xhat)),  g = dy·w, means over N and space;
    otherwise (running statistics) the forward was affine: dx = g·rstd.
    With w per channel, mean(g) = w·mean(dy) and mean(g·xhat) = w·mean(dy·xhat):
    the sums that give db and dw, so g itself is never formed."""
    x3, mean, rstd, weight, has_bias = ctx
    xp = be.xp
    dy3 = _channel_view(dy)
    n, c, inner = dy3.shape
    if n * inner == 0:  # an empty batch: zero parameter gradients, without reducing over nothing
        return (xp.empty(dy.shape, dy.dtype), None if weight is None else xp.zeros(c, dy.dtype),
                xp.zeros(c, dy.dtype) if has_bias else None)
    count = n * inner
    w_rstd = rstd if weight is None else weight * rstd
    if batch_stats and (lib := _bn_host_lib(be, x3, dy3, mean, w_rstd)) is not None:
        dy3 = np.ascontiguousarray(dy3)
        dx = np.empty(dy3.shape, np.float32)
        sums = np.empty((2, c), np.float64)  # per channel: sum(dy), sum(dy·xhat)
        m, r, wr = (np.ascontiguousarray(a) for a in (mean, rstd, w_rstd))
        _over_channels(x3, lib.gpunet_batch_norm_backward_f32, hostlib.ptr(x3), hostlib.ptr(dy3), hostlib.ptr(dx),
                       hostlib.ptr(m), hostlib.ptr(r), hostlib.ptr(wr), hostlib.ptr(sums[0]), hostlib.ptr(sums[1]),
                       n, c, inner)
        dy_sum, dyx_sum = sums.astype(np.float32)
        return dx.reshape(dy.shape), (dyx_sum if weight is not None else None), (dy_sum if has_bias else None)
    ones = xp.ones(inner, dy3.dtype)
    dx = xp.empty(dy3.shape, dy3.dtype)

    def sums(i):
        # xhat is rebuilt in what becomes dx's memory
        xp.subtract(x3[i], mean[None, :, None], out=dx[i])
        dx[i] *= rstd[None, :, None]
        return dy3[i] @ ones, xp.einsum("nci,nci->nc", dy3[i], dx[i])
    parts = _per_images(be, n, c * inner, sums)
    # totals, not means (count 1): dy_sum gives db, dyx_sum dw
    dy_sum = _channel_totals(xp, [p[0] for p in parts], 1, dy3.dtype)
    dyx_sum = _channel_totals(xp, [p[1] for p in parts], 1, dy3.dtype)

    def gradient(i):
        if batch_stats:
            # dx = w·rstd·(dy - mean(dy) - xhat·mean(dy·xhat))
            dx[i] *= (dyx_sum / count)[None, :, None]
            xp.subtract(dy3[i], dx[i], out=dx[i])
            dx[i] -= (dy_sum / count)[None, :, None]
            dx[i] *= w_rstd[None, :, None]
        else:
            xp.multiply(dy3[i], w_rstd[None, :, None], out=dx[i])
    _per_images(be, n, c * inner, gradient)
    dw = dyx_sum if weight is not None else None
    db = dy_sum if has_bias else None
    return dx.reshape(dy.shape), dw, db
