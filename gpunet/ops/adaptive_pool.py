"""Adaptive 2-D average and max pooling (PyTorch's AdaptiveAvgPool2d and
AdaptiveMaxPool2d), forward and backward.

Output (i, j) of an (H, W) plane pooled to (OH, OW) covers the rows
[floor(i·H/OH), ceil((i+1)·H/OH)) and likewise the columns, as PyTorch.

Where OH divides H and OW divides W those windows are plain pooling with
kernel = stride = (H/OH, W/OW): gpunet/ops/pool.py runs it (its kernels on
sim and cuda). Otherwise the windows differ in size and may overlap, which
the pooling kernels cannot express: array code on every backend, recorded as
a fallback ("adaptive_pool2d") where kernels exist:
  average  y = A_h·x·A_wᵀ with A (OH, H) holding 1/len over each window (two
           batched GEMMs); backward dx = A_hᵀ·dy·A_w.
  max      a loop over the offsets (a, b) of the largest window, each a gather
           of row start_i + a, column start_j + b for every output, masked where
           a window is shorter; the first maximum in row-major window order
           wins and a NaN beats everything (the last NaN), as PyTorch. The
           arg-max is the flat index h·W + w into the plane (PyTorch's
           indices); backward adds each gradient there (windows overlap: one
           bincount).
"""
from __future__ import annotations

import numpy as np

from ..dispatch import path
from . import pool
from .half import float32_compute

_FALLBACK = "the output size does not divide the input size (windows of different sizes)"


def bounds(size: int, out: int):
    """Window starts and ends (NumPy int64 arrays of `out`) along one axis."""
    i = np.arange(out, dtype=np.int64)
    return (i * size) // out, -((-(i + 1) * size) // out)


def _kernel(x_shape, out_size):
    """kernel = stride of the plain pooling equal to these windows, or None."""
    if any(s % o for s, o in zip(x_shape[2:], out_size)):
        return None
    return tuple(s // o for s, o in zip(x_shape[2:], out_size))


def _averaging(xp, size: int, out: int, dtype):
    """(out, size): row i holds 1/len on window i's positions."""
    start, end = bounds(size, out)
    pos = np.arange(size)
    inside = (pos >= start[:, None]) & (pos < end[:, None])
    return xp.asarray(inside / (end - start)[:, None], dtype=dtype)


def _pooled_forward(be, x, out_size):
    """A half call goes to the pooling kernels where the windows are plain
    pooling, else to the array code in float32 (as float32 calls do)."""
    return True if _kernel(x.shape, out_size) is not None else "array"


def _pooled_backward(be, ctx, dy):
    return True if ctx[0] else "array"


# ---------------------------------------------------------------- average
@float32_compute("adaptive_avg_pool2d", forward=True, half_kernels=_pooled_forward)
def adaptive_avg_pool2d_forward(be, x, out_size):
    """x (N, C, H, W) -> y (N, C, OH, OW) and the backward context."""
    k = _kernel(x.shape, out_size)
    if k is not None:
        y, ctx = pool.avgpool2d_forward(be, x, k, k, (0, 0))
        return y, (True, ctx)
    path(be, "adaptive_pool2d", x.dtype, unsupported=_FALLBACK)
    ah = _averaging(be.xp, x.shape[2], out_size[0], x.dtype)
    aw = _averaging(be.xp, x.shape[3], out_size[1], x.dtype)
    return ah @ x @ aw.T, (False, (ah, aw))


@float32_compute("adaptive_avg_pool2d", forward=False, half_kernels=_pooled_backward)
def adaptive_avg_pool2d_backward(be, ctx, dy):
    pooled, saved = ctx
    if pooled:
        return pool.avgpool2d_backward(be, saved, dy)
    ah, aw = saved
    return be.xp.ascontiguousarray(ah.T @ dy @ aw)


# ---------------------------------------------------------------- max
@float32_compute("adaptive_max_pool2d", forward=True, half_kernels=_pooled_forward)
def adaptive_max_pool2d_forward(be, x, out_size):
    """x (N, C, H, W) -> y (N, C, OH, OW) and the backward context (indices
    come from adaptive_max_pool2d_indices)."""
    k = _kernel(x.shape, out_size)
    if k is not None:
        y, ctx = pool.maxpool2d_forward(be, x, k, k, (0, 0))
        return y, (True, ctx, x.shape)
    path(be, "adaptive_pool2d", x.dtype, unsupported=_FALLBACK)
    xp = be.xp
    (rs, re), (cs, ce) = bounds(x.shape[2], out_size[0]), bounds(x.shape[3], out_size[1])
    y = arg = None
    for a in range(int((re - rs).max())):
        rows = np.minimum(rs + a, re - 1)  # clamped: the mask drops the repeats
        for b in range(int((ce - cs).max())):
            cols = np.minimum(cs + b, ce - 1)
            v = x[:, :, xp.asarray(rows)[:, None], xp.asarray(cols)[None, :]]
            idx = xp.asarray(rows[:, None] * x.shape[3] + cols[None, :])
            if y is None:  # offset (0, 0) lies in every window
                y, arg = v, xp.broadcast_to(idx, v.shape)
                continue
            valid = xp.asarray((rs + a < re)[:, None] & (cs + b < ce)[None, :])
            take = ((v > y) | xp.isnan(v)) & valid
            y, arg = xp.where(take, v, y), xp.where(take, idx, arg)
    return y, (False, xp.ascontiguousarray(arg), x.shape)


@float32_compute("adaptive_max_pool2d", forward=False, half_kernels=_pooled_backward)
def adaptive_max_pool2d_backward(be, ctx, dy):
    pooled, saved, x_shape = ctx
    if pooled:
        return pool.maxpool2d_backward(be, saved, dy)
    xp = be.xp
    planes, area = x_shape[0] * x_shape[1], x_shape[2] * x_shape[3]
    outputs = saved.shape[2] * saved.shape[3]
    flat = (xp.arange(planes, dtype=np.int64)[:, None] * area + saved.reshape(planes, outputs)).ravel()
    dx = xp.bincount(flat, weights=dy.ravel(), minlength=planes * area)
    return dx.astype(dy.dtype).reshape(x_shape)


def adaptive_max_pool2d_indices(be, ctx):
    """PyTorch's indices: the flat h·W + w of each window's arg-max, int64."""
    pooled, saved, _ = ctx
    return pool.maxpool2d_indices(be, saved) if pooled else saved.astype(np.int64)
