"""2-D transposed convolution (PyTorch's ConvTranspose2d), forward and
backward, as the adjoint of the convolution in gpunet/ops/conv.py.

A transposed convolution with weight w (Cin, Cout/groups, kh, kw) is the
data gradient of the convolution A that maps an (N, Cout, Hout, Wout) image
to (N, Cin, H, W) with the same weight, stride, padding and dilation (w is
A's (O, C/groups, kh, kw) weight with O = Cin, C = Cout). So, with conv.py's
column layout (row (c, i, j), column (n, y, x)):

    forward   y = A^T x:   cols_g = w_g^T @ x_g, then col2im       (GEMM + col2im)
    backward  dx = A dy:   cols = im2col(dy), dx_g = w_g @ cols_g  (im2col + GEMM)
              dw_g = x_g @ cols_g^T   (the same columns of dy)

and backward needs one im2col for both. Bias: per output channel, as conv.

Output size Hout = (H-1)s - 2p + d(k-1) + output_padding + 1 per axis. When
output_padding < s (always, unless dilation > stride), A on an Hout-row image
with padding p has exactly H output rows: A is conv.py's convolution as it
stands. Otherwise (on that axis) A is taken on the unpadded frame of
F = (H-1)s + d(k-1) + 1 rows with padding 0, whose row p + r is output row
r: forward crops the frame (zeros where the output reaches past it, rows
that no window touches) and backward places dy into it.

Paths: conv.py's. Kernel path (sim, cuda): the im2col/col2im kernels over
chunks of images in conv.py's reused workspace, GEMMs on be.xp.matmul, the
bias_add/bias_grad kernels. Array path: the whole batch at once with conv.py's
array im2col/col2im (col2im as one CuPy gather where the fusions run).
"""
from __future__ import annotations

import math

from .half import float32_compute
from . import conv
from .linear import bias_add, bias_grad, half_kernels, matmul, route_of


def out_size(size: int, kernel: int, stride: int, padding: int, output_padding: int, dilation: int) -> int:
    """(H - 1)s - 2p + d(k - 1) + output_padding + 1."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _frame(out_shape, in_shape, kernel, stride, padding, output_padding, dilation):
    """(frame size, frame padding, offset of output row 0 in the frame) per
    axis (see the module docstring)."""
    size, pad, offset = [], [], []
    for o, h, k, s, p, op, d in zip(out_shape, in_shape, kernel, stride, padding, output_padding, dilation):
        direct = op < s
        size.append(o if direct else (h - 1) * s + d * (k - 1) + 1)
        pad.append(p if direct else 0)
        offset.append(0 if direct else p)
    return tuple(size), tuple(pad), tuple(offset)


def _shifted(xp, a, start, size):
    """b (..., size[0], size[1]) with b[..., i, j] = a[..., start[0] + i, start[1] + j],
    zero where that lies outside a; a itself when that is all of a."""
    if tuple(start) == (0, 0) and tuple(size) == a.shape[2:]:
        return a
    b = xp.zeros(a.shape[:2] + tuple(size), dtype=a.dtype)
    src, dst = [], []
    for axis in (0, 1):
        lo, hi = max(start[axis], 0), min(start[axis] + size[axis], a.shape[2 + axis])
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - start[axis], max(lo, hi) - start[axis]))
    b[(slice(None), slice(None)) + tuple(dst)] = a[(slice(None), slice(None)) + tuple(src)]
    return b


def _by_group(xp, a, groups: int):
    """(n, groups*m, *spatial) -> contiguous (groups, m, n*spatial): the GEMM operand of a batch."""
    n, c = a.shape[:2]
    spatial = math.prod(a.shape[2:])  # not -1: an empty batch has no size to infer
    a4 = a.reshape(n, groups, c // groups, spatial)
    return xp.ascontiguousarray(a4.transpose(1, 2, 0, 3)).reshape(groups, c // groups, n * spatial)


def _from_groups(xp, a, out):
    """(groups, m, n*spatial) -> out (n, groups*m, *spatial), written in place."""
    n, c = out.shape[:2]
    spatial = math.prod(out.shape[2:])
    out.reshape(n, c, spatial)[...] = a.reshape(c, n, spatial).transpose(1, 0, 2)
    return out


@float32_compute("conv_transpose2d", forward=True, half_kernels=half_kernels)
def conv_transpose2d_forward(be, x, w, b, stride, padding, output_padding, dilation, groups):
    """x (N, Cin, H, W), w (Cin, Cout/groups, kh, kw), b (Cout,) or None; the
    others (h, w) pairs. Returns y (N, Cout, Hout, Wout) and the backward context."""
    xp = be.xp
    n, _, h, wd = x.shape
    cout = w.shape[1] * groups
    full = tuple(out_size(s, k, st, p, op, d) for s, k, st, p, op, d in
                 zip((h, wd), w.shape[2:], stride, padding, output_padding, dilation))
    size, pad, offset = _frame(full, (h, wd), w.shape[2:], stride, padding, output_padding, dilation)
    g = conv.geometry((n, cout) + size, w.shape, stride, pad, dilation, groups)  # g.oh, g.ow = h, wd
    route = route_of(be, "conv_transpose2d", x.dtype, fused=True)  # the fusion is col2im
    if route == "kernel":
        y = _forward_kernels(be, x, w, g, (n, cout) + size)
    else:
        y = _forward_array(be, x, w, g, (n, cout) + size, fused=route == "fused")
    y = _shifted(xp, y, offset, full)
    if b is not None:
        bias_add(be, y, b, "kernel" if route == "kernel" else "array", full[0] * full[1])
    return y, (route, x, w, b is not None, g, size, offset)


def _forward_array(be, x, w, g, y_shape, fused: bool):
    xp = be.xp
    wt = w.reshape(g.groups, w.shape[0] // g.groups, -1).transpose(0, 2, 1)  # (groups, Kg, Cin/groups)
    cols = xp.matmul(wt, _by_group(xp, x, g.groups))  # (groups, Kg, N*H*W)
    return conv._col2im_fused(cols, y_shape, g) if fused else conv._col2im_array(xp, cols, y_shape, g)


def _forward_kernels(be, x, w, g, y_shape):
    xp = be.xp
    y = xp.empty(y_shape, dtype=x.dtype)
    n, spatial = x.shape[0], g.oh * g.ow
    wt = w.reshape(g.groups, w.shape[0] // g.groups, -1).transpose(0, 2, 1)
    k = wt.shape[1] * g.groups
    step = conv._chunk(n, k, spatial, x.dtype.itemsize)
    for n0 in range(0, n, step):
        nb = min(step, n - n0)
        cols = conv._workspace(be, "cols", k * nb * spatial, x.dtype).reshape(g.groups, k // g.groups, nb * spatial)
        matmul(be, wt, _by_group(xp, x[n0:n0 + nb], g.groups), out=cols)
        conv.col2im_kernel(be, cols.reshape(k, nb * spatial), y[n0:n0 + nb], g)
    return y


@float32_compute("conv_transpose2d", forward=False, half_kernels=half_kernels)
def conv_transpose2d_backward(be, ctx, dy):
    """Returns dx (like x), dw (like w) and db ((Cout,), None without bias)."""
    route, x, w, has_bias, g, size, offset = ctx
    xp = be.xp
    dy = xp.ascontiguousarray(dy)
    dframe = _shifted(xp, dy, (-offset[0], -offset[1]), size)
    dx, dw = (_backward_kernels if route == "kernel" else _backward_array)(be, x, w, g, dframe)
    inner = dy.shape[2] * dy.shape[3]
    db = bias_grad(be, dy, dy.shape[1], "kernel" if route == "kernel" else "array", inner) if has_bias else None
    return dx, dw, db


def _backward_array(be, x, w, g, dy):
    xp = be.xp
    wg = w.reshape(g.groups, w.shape[0] // g.groups, -1)  # (groups, Cin/groups, Kg)
    cols = conv._im2col_array(be, dy, g, ones_row=False)  # (groups, Kg, N*H*W)
    xg = _by_group(xp, x, g.groups)
    dw = xp.matmul(xg, cols.transpose(0, 2, 1)).reshape(w.shape)
    dx = _from_groups(xp, xp.matmul(wg, cols), xp.empty_like(x))
    return dx, dw


def _backward_kernels(be, x, w, g, dy):
    xp = be.xp
    n, spatial = x.shape[0], g.oh * g.ow
    wg = w.reshape(g.groups, w.shape[0] // g.groups, -1)
    kg = wg.shape[2]
    k = kg * g.groups
    dx = xp.empty_like(x)
    dw = conv.accumulator(xp, wg.shape, x.dtype)
    step = conv._chunk(n, k, spatial, x.dtype.itemsize)
    for n0 in range(0, n, step):
        nb = min(step, n - n0)
        cols = conv._workspace(be, "cols", k * nb * spatial, x.dtype).reshape(g.groups, kg, nb * spatial)
        conv.im2col_kernel(be, dy[n0:n0 + nb], cols.reshape(k, nb * spatial), g)
        xg = _by_group(xp, x[n0:n0 + nb], g.groups)
        dw += matmul(be, xg, cols.transpose(0, 2, 1), out_dtype=dw.dtype)
        _from_groups(xp, matmul(be, wg, cols), dx[n0:n0 + nb])
    return dx, dw.reshape(w.shape).astype(x.dtype, copy=False)
