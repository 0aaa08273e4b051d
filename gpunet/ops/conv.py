"""2-D convolution as im2col + GEMM (Caffe's scheme), forward and backward.

Column layout, shared by the array path and the kernels: row r = (c, i, j)
(input channel, kernel row, kernel column; c outermost, so group g owns the
contiguous rows [g*Kg, (g+1)*Kg) with Kg = C/groups*kh*kw), column
q = (n, oh, ow). Then for every group

    y_g (Og, n*L)  = W_g (Og, Kg) @ cols_g (Kg, n*L)         forward
    dW_g           = dy_g (Og, n*L) @ cols_g^T               weight gradient
    dcols_g        = W_g^T @ dy_g                             -> col2im -> dx

one (batched-over-groups) GEMM over all images at once; only the (O, n, L)
-> (n, O, L) reordering of y and dy costs an extra pass.

Array path (cpu, cupy, and every dtype the kernels do not take): the whole batch at once; a row of ones is appended to
each group's columns and the bias to W, so the forward GEMM adds the bias and
the weight-gradient GEMM produces the bias gradient for free. im2col and
col2im loop over the kh*kw kernel offsets, each a strided slice copy/add over
every image and channel; where CuPy fusions run (gpunet.dispatch's "fused"
path), col2im is instead one gathering RawKernel (below). On the host a
stride-1 convolution uses columns over whole padded rows instead (see
_im2col_wide): one contiguous run per offset, channel and image.
The float32 host backward uses compiled row-layout columns instead (see
_backward_rows) or, mostly, a direct dx (stride 1, or class by class of
input pixels when strided) and a direct weight gradient (see _dx_direct,
_dx_strided, _weight_grad_direct, _weight_grad_pixels), and its forward,
except over the smallest planes, a direct convolution (see _forward_direct).

Kernel path (sim, cuda): im2col/col2im kernels over chunks of images into one
reused workspace, sized so a chunk's columns stay under WORKSPACE_BYTES; the
GEMMs go to be.xp.matmul (cuBLAS on cuda), the bias to the bias_add/bias_grad
kernels. Backward recomputes each chunk's columns instead of keeping them, so
memory stays at one workspace. Half storage (bfloat16, float16) there: the
same kernels on the half arrays (col2im sums in float32), the GEMMs through
linear.matmul (float32 accumulation, each product rounded once), the weight
gradient summed over chunks in float32 and rounded once.

Tensor-core path (sim, cuda; float16 and bfloat16): gpunet/ops/conv_tensor_core.py,
one implicit-GEMM launch per pass, no column matrix (csrc/kernels/conv_tensor_core.cu).

Workspaces are kept per (thread, device, stream): every use of one is queued
on one stream, which orders them, and no other thread touches it, so two
threads (or two streams) training two models never overwrite each other's
columns. A thread's workspaces are freed when the thread ends (a
threading.local); the main thread's live until the process ends.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from .. import dtypes, hostlib
from . import host_threads
from . import conv_tensor_core as conv_tc
from .half import float32_compute, kernel_view
from .cupy_kernels import cupy, launch
from .linear import bias_add, bias_grad, half_kernels, matmul, route_of

# Largest column matrix (bytes) the kernel path builds at once; the batch is
# split into chunks below it. Tests lower it to force chunking.
WORKSPACE_BYTES = 256 << 20

_local = threading.local()  # .workspaces: {(backend, device, stream, dtype, name): flat array}


class Geometry(NamedTuple):
    """Static shape facts of one convolution call."""
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    groups: int
    oh: int
    ow: int


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """floor((size + 2p - d(k-1) - 1)/s) + 1, i.e. (W - F + 2P)/S + 1 for d = 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def geometry(x_shape, w_shape, stride, padding, dilation, groups) -> Geometry:
    kh, kw = w_shape[2], w_shape[3]
    return Geometry(kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], groups,
                    out_size(x_shape[2], kh, stride[0], padding[0], dilation[0]),
                    out_size(x_shape[3], kw, stride[1], padding[1], dilation[1]))


def _tap(g: Geometry, i: int, j: int):
    """Slices of the padded input read by kernel offset (i, j) for every output pixel."""
    r0, c0 = i * g.dh, j * g.dw
    return (slice(r0, r0 + g.sh * (g.oh - 1) + 1, g.sh), slice(c0, c0 + g.sw * (g.ow - 1) + 1, g.sw))


# ---------------------------------------------------------------- scratch memory
def _workspace(be, name: str, elements: int, dtype):
    """A flat scratch array of at least `elements`, one per (calling thread,
    backend, device, current stream, dtype, name), reused across calls and
    grown when short. Reuse matters on the host too: a fresh multi-megabyte
    array costs a page fault per 4 KiB on first touch, which took longer than
    the GEMMs it fed."""
    spaces = getattr(_local, "workspaces", None)
    if spaces is None:
        spaces = _local.workspaces = {}
    key = (be.name, be.index, be.stream(), np.dtype(dtype), name)
    buf = spaces.get(key)
    if buf is None or buf.size < elements:
        with be.use_device():
            buf = be.xp.empty(elements, dtype=dtype)
        spaces[key] = buf
    return buf[:elements]


# ---------------------------------------------------------------- array path (cpu, cupy)
def _im2col_array(be, x, g: Geometry, ones_row: bool):
    """(groups, Kg [+1 row of ones], N*L) columns of the whole batch, in the
    "cols" workspace."""
    xp = be.xp
    n, c = x.shape[:2]
    cg = c // g.groups
    if g.ph or g.pw:
        xpad = xp.zeros((n, c, x.shape[2] + 2 * g.ph, x.shape[3] + 2 * g.pw), dtype=x.dtype)
        xpad[:, :, g.ph:g.ph + x.shape[2], g.pw:g.pw + x.shape[3]] = x
    else:
        xpad = x
    kg = cg * g.kh * g.kw
    shape = (g.groups, kg + ones_row, n * g.oh * g.ow)
    cols = _workspace(be, "cols", shape[0] * shape[1] * shape[2], x.dtype).reshape(shape)
    # per-group view: with the ones row the groups' blocks are not adjacent
    taps = cols[:, :kg].reshape(g.groups, cg, g.kh, g.kw, n, g.oh, g.ow)
    xg = xpad.reshape(n, g.groups, cg, xpad.shape[2], xpad.shape[3])
    for i in range(g.kh):
        for j in range(g.kw):
            taps[:, :, i, j] = xg[(slice(None),) * 3 + _tap(g, i, j)].transpose(1, 2, 0, 3, 4)
    if ones_row:
        cols[:, kg] = 1
    return cols


def _col2im_array(xp, dcols, x_shape, g: Geometry):
    """Sum every column entry back onto the input pixel it was copied from."""
    n, c, h, w = x_shape
    # accumulate in (C, N, H, W) order, the order of the column rows, so each
    # kernel offset adds one contiguous block; reorder to NCHW once at the end
    acc = xp.zeros((c, n, h + 2 * g.ph, w + 2 * g.pw), dtype=dcols.dtype)
    taps = dcols.reshape(c, g.kh, g.kw, n, g.oh, g.ow)
    for i in range(g.kh):
        for j in range(g.kw):
            acc[(slice(None), slice(None)) + _tap(g, i, j)] += taps[:, i, j]
    return xp.ascontiguousarray(acc[:, :, g.ph:g.ph + h, g.pw:g.pw + w].transpose(1, 0, 2, 3))


# ---------------------------------------------------------------- host, stride 1: whole padded rows
# With stride 1 the columns can run over whole padded rows: column q = (n, oh, x)
# with x over the padded width Wp instead of the output width OW. Kernel offset
# (i, j) then reads, per channel and image, ONE contiguous run of OH*Wp
# elements of the padded plane, starting at i*dh*Wp + j*dw, instead of OH runs
# of OW (4 to 32 elements in the bench's networks, where NumPy's per-run cost
# dominated im2col and col2im). The GEMMs compute the Wp - OW extra columns of
# each row too (Wp/OW more work: 1.06x for 32x32 images, 1.5x for 4x4): the
# forward drops them; the backward gives them dy = 0, so they add nothing to
# dW, db or dx. A plane is followed by (kw-1)*dw zeros that the last extra
# columns read.
def _wide(be, g: Geometry) -> bool:
    return not be.on_gpu and g.sh == 1 and g.sw == 1


def _wide_dims(x_shape, g: Geometry):
    """(padded height, padded width, plane length with its tail, columns per image)."""
    hp, wp = x_shape[2] + 2 * g.ph, x_shape[3] + 2 * g.pw
    return hp, wp, hp * wp + (g.kw - 1) * g.dw, g.oh * wp


def _im2col_wide(be, x, g: Geometry, ones_row: bool):
    """(groups, Kg [+1 row of ones], N*OH*Wp) columns, in the "cols" workspace."""
    xp = be.xp
    n, c, h, w = x.shape
    hp, wp, plane_len, cols_per_image = _wide_dims(x.shape, g)
    plane = xp.zeros((c, n, plane_len), x.dtype)
    plane[:, :, :hp * wp].reshape(c, n, hp, wp)[:, :, g.ph:g.ph + h, g.pw:g.pw + w] = x.transpose(1, 0, 2, 3)
    cg = c // g.groups
    kg = cg * g.kh * g.kw
    shape = (g.groups, kg + ones_row, n * cols_per_image)
    cols = _workspace(be, "cols", shape[0] * shape[1] * shape[2], x.dtype).reshape(shape)
    taps = cols[:, :kg].reshape(g.groups, cg, g.kh, g.kw, n, cols_per_image)
    src = plane.reshape(g.groups, cg, n, plane_len)
    for i in range(g.kh):
        for j in range(g.kw):
            off = i * g.dh * wp + j * g.dw
            taps[:, :, i, j] = src[..., off:off + cols_per_image]
    if ones_row:
        cols[:, kg] = 1
    return cols


def _col2im_wide(xp, dcols, x_shape, g: Geometry):
    """_col2im_array for the whole-row columns: one contiguous add per offset, channel and image."""
    n, c, h, w = x_shape
    hp, wp, plane_len, cols_per_image = _wide_dims(x_shape, g)
    acc = xp.zeros((c, n, plane_len), dtype=dcols.dtype)
    taps = dcols.reshape(c, g.kh, g.kw, n, cols_per_image)
    for i in range(g.kh):
        for j in range(g.kw):
            off = i * g.dh * wp + j * g.dw
            acc[:, :, off:off + cols_per_image] += taps[:, i, j]
    inner = acc[:, :, :hp * wp].reshape(c, n, hp, wp)[:, :, g.ph:g.ph + h, g.pw:g.pw + w]
    return xp.ascontiguousarray(inner.transpose(1, 0, 2, 3))


def _forward_array(be, x, w, b, g: Geometry):
    lib = _rows_lib(be, x, w)
    if lib is not None and _direct(g, w.shape[1], g.kh * g.kw):
        return _forward_direct(be, lib, x, w, b, g), x
    xp = be.xp
    n, o = x.shape[0], w.shape[0]
    og = o // g.groups
    wide = _wide(be, g)
    # row width of the GEMM's output: the padded width for whole-row columns
    row = _wide_dims(x.shape, g)[1] if wide else g.ow
    cols = (_im2col_wide if wide else _im2col_array)(be, x, g, ones_row=b is not None)
    wg = w.reshape(g.groups, og, -1)
    if b is not None:
        wg = xp.concatenate([wg, b.reshape(g.groups, og, 1)], axis=2)
    y = _workspace(be, "gemm", o * n * g.oh * row, x.dtype).reshape(g.groups, og, n * g.oh * row)
    xp.matmul(wg, cols, out=y)  # (groups, Og, N*OH*row) = (O, N, OH, row)
    out = xp.empty((n, o, g.oh, g.ow), dtype=x.dtype)
    out[...] = y.reshape(o, n, g.oh, row)[..., :g.ow].transpose(1, 0, 2, 3)
    return out, x


def _backward_array(be, ctx, dy, input_grad: bool, fused: bool):
    lib = _rows_lib(be, dy, ctx[0], ctx[1])
    if lib is not None:
        return _backward_rows(be, lib, ctx, np.ascontiguousarray(dy), input_grad)
    xp = be.xp
    x, w, has_bias, x_shape, g = ctx
    n, o = dy.shape[:2]
    og = o // g.groups
    kg = w.shape[1] * g.kh * g.kw
    wide = _wide(be, g)
    row = _wide_dims(x_shape, g)[1] if wide else g.ow
    # recomputed: cheaper than keeping them
    cols = (_im2col_wide if wide else _im2col_array)(be, x, g, ones_row=has_bias)
    dyg = _workspace(be, "gemm", o * n * g.oh * row, dy.dtype).reshape(o, n, g.oh, row)
    dyg[..., :g.ow] = dy.transpose(1, 0, 2, 3)
    dyg[..., g.ow:] = 0  # the extra columns of whole-row columns contribute nothing
    dyg = dyg.reshape(g.groups, og, n * g.oh * row)
    dwx = xp.matmul(dyg, cols.transpose(0, 2, 1))  # (groups, Og, Kg [+1: the bias gradient])
    dw = dwx[:, :, :kg].reshape(w.shape)
    db = dwx[:, :, kg].reshape(o) if has_bias else None
    if not input_grad:
        return None, dw, db
    # the column gradient overwrites the columns, which are no longer needed
    dcols = _workspace(be, "cols", g.groups * kg * n * g.oh * row, dy.dtype).reshape(g.groups, kg, n * g.oh * row)
    xp.matmul(w.reshape(g.groups, og, kg).transpose(0, 2, 1), dyg, out=dcols)
    if wide:
        return _col2im_wide(xp, dcols, x_shape, g), dw, db
    # On CuPy one gathering kernel replaces the kernel-offset loop's kh*kw passes.
    dx = _col2im_fused(dcols, x_shape, g) if fused else _col2im_array(xp, dcols, x_shape, g)
    return dx, dw, db


# ---------------------------------------------------------------- host float32 backward: row-layout columns
# The backward of a float32 host call works on the columns transposed: one row
# of Kg taps (+ a 1 for the bias) per output pixel, built and gathered back by
# gpunet/_host/host_ops.c (im2col; col2im as a sum per input pixel). Per group
#     [dW_g | db_g] = (dy^T)^T @ cols               weight and bias gradient
#     dcols         = dy^T (R, Og) @ W_g (Og, Kg)   -> col2im -> dx
# With 16-64 output channels OpenBLAS runs these (long side R in the rows)
# faster than the column-major form, and the compiled col2im replaces the
# kh*kw strided NumPy adds, the backward's largest cost. (A row-layout
# forward, its im2col, GEMM and transpose back to NCHW, measured 0.7x the
# NumPy columns' speed; the forward is direct instead, below.) The batch
# goes in chunks of whole images, dW summed over the chunks in float32, to
# bound the workspace (ROWS_CHUNK_BYTES). Smaller
# chunks keep the columns nearer the cache, but every chunk hands work
# between the host threads and BLAS's twice each, which costs milliseconds on
# a busy machine: on the 2-core machine at load 6-8, resnet_small's layers
# with 2 threads ran up to 2x slower with 4 MiB chunks than with 16-64 MiB,
# and with 1 thread 16 MiB was as fast as 4 MiB and faster than 64 MiB.
# The chunk size does not depend on the thread count, and the C loops give
# every element to one thread, so results do not either.
# Most calls take direct loops instead: a stride-1 dx (_dx_direct) and dW
# (_weight_grad_direct, from DIRECT_BACKWARD_MIN_CHANNELS input channels per
# group or with a direct dx; _weight_grad_pixels below that at stride 1); the
# rest of this is what remains.
ROWS_CHUNK_BYTES = 16 << 20


def _rows_lib(be, *arrays):
    """The compiled host library when a call on these (non-empty) arrays takes
    the row-layout backward or the direct forward, else None."""
    return hostlib.for_float32(be, *arrays) if all(a.size for a in arrays) else None


def _rows_geometry(x_shape, g: Geometry, images: int, ld: int):
    """host_ops.c's geo array of a chunk of `images` images and row length ld."""
    return np.array([images, *x_shape[1:], g.groups, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.oh, g.ow, ld],
                    np.int64)


def _rows_chunks(be, x_shape, g: Geometry, ld: int):
    """(first image, images) of each chunk and the column workspace of the largest."""
    n = x_shape[0]
    per_image = g.groups * g.oh * g.ow * ld
    images = max(1, min(n, ROWS_CHUNK_BYTES // (4 * per_image)))
    cols = _workspace(be, "rows", images * per_image, np.float32)
    return [(n0, min(images, n - n0)) for n0 in range(0, n, images)], cols


def _rows_call(fn, src, dst, geo, count: int, unit: int):
    """fn(src, dst, geo, lo, hi) over [0, count) split across the host threads."""
    host_threads.run_compiled(fn, (hostlib.ptr(src), hostlib.ptr(dst), hostlib.ptr(geo)),
                              host_threads.ranges(count, unit))


def _im2col_rows(lib, x, cols, geo):
    """Columns of x (a chunk of images) in row layout; split over output lines (n, oh)."""
    n, c, h, w, groups, kh, kw, *_, oh, ow, ld = geo.tolist()
    _rows_call(lib.gpunet_im2col_rows_f32, x, cols, geo, n * oh, groups * ow * ld)


def _col2im_rows(lib, dcols, dx, geo):
    """dx of a chunk of images from its row-layout column gradient; split over input planes (n, c)."""
    n, c, h, w, groups, kh, kw, *_ = geo.tolist()
    _rows_call(lib.gpunet_col2im_rows_f32, dcols, dx, geo, n * c, h * w * kh * kw)


def _backward_rows(be, lib, ctx, dy, input_grad: bool):
    x, w, has_bias, x_shape, g = ctx
    x = np.ascontiguousarray(x)
    pixels = g.sh == g.sw == 1 and w.shape[1] < DIRECT_BACKWARD_MIN_CHANNELS  # dW over pixel vectors
    direct = pixels or w.shape[1] >= DIRECT_BACKWARD_MIN_CHANNELS  # dW without columns
    gt = _dx_direct(x_shape, w, g) if w.shape[1] >= DX_DIRECT_MIN_CHANNELS else None
    classes = _dx_classes(x_shape, w, g) if gt is None else None
    dx = None
    if gt is not None:  # then no columns at all
        direct = True
        if input_grad:
            dx = _forward_direct(be, lib, dy, _flipped_transposed(w, g), None, gt)
    elif classes is not None:
        direct = True
        if input_grad:
            dx = _dx_strided(lib, np.ascontiguousarray(dy), w, g, x_shape, classes)
    elif input_grad or not direct:
        dx, dwx = _col2im_backward(be, lib, x, w, has_bias, g, dy, weights=not direct, dx_wanted=input_grad)
    if direct:
        dw_fn = _weight_grad_pixels if pixels else _weight_grad_direct
        return (dx, *dw_fn(be, lib, x, w, has_bias, g, dy))
    kg = w[0].size
    return dx, dwx[:, :, :kg].reshape(w.shape), dwx[:, :, kg].reshape(-1) if has_bias else None


def _col2im_backward(be, lib, x, w, has_bias, g: Geometry, dy, weights: bool, dx_wanted: bool = True):
    """dx through the column gradient and col2im, in chunks; with `weights`
    also [dW | db] (groups, O/groups, Kg [+1]) from the row-layout columns
    (without dx_wanted only those: dx is None)."""
    x_shape = x.shape
    o, ll = w.shape[0], g.oh * g.ow
    og = o // g.groups
    kg = w.shape[1] * g.kh * g.kw
    ld = kg + has_bias if weights else kg
    wg = w.reshape(g.groups, og, kg)
    dwx = np.zeros((g.groups, og, ld), np.float32) if weights else None
    dx = np.empty(x_shape, np.float32) if dx_wanted else None
    chunks, cols = _rows_chunks(be, x_shape, g, ld)
    dyt = _workspace(be, "rows_out", g.groups * chunks[0][1] * ll * og, np.float32)
    for n0, m in chunks:
        dv = dyt[:g.groups * m * ll * og].reshape(g.groups, m * ll, og)
        if g.groups == 1:  # channels last: the compiled copy (NumPy's strided one took 5% of a digits CNN step)
            _channels_last(lib, dy[n0:n0 + m], dv, 0, 0)
        else:
            dv.reshape(g.groups, m, ll, og)[...] = dy[n0:n0 + m].reshape(m, g.groups, og, ll).transpose(1, 0, 3, 2)
        if weights:
            cv = cols[:g.groups * m * ll * ld].reshape(g.groups, m * ll, ld)
            _im2col_rows(lib, x[n0:n0 + m], cv, _rows_geometry(x_shape, g, m, ld))  # recomputed: cheaper than kept
            dwx += np.matmul(dv.transpose(0, 2, 1), cv)
        if not dx_wanted:
            continue
        # the column gradient overwrites the columns, which are no longer needed
        dcols = cols[:g.groups * m * ll * kg].reshape(g.groups, m * ll, kg)
        np.matmul(dv, wg, out=dcols)
        _col2im_rows(lib, dcols, dx[n0:n0 + m], _rows_geometry(x_shape, g, m, kg))
    return dx, dwx


# The direct weight gradient: no column matrix, no GEMM. gpunet_conv_dw_f32
# builds each block of ~256 output pixels' rows of taps in an L2-sized buffer
# from a channels-last copy of x (taps in (i, j, c) order: one contiguous run
# of C/groups channels per kernel offset, no transpose) and sums dy x taps in
# registers; dW is reordered to (c, i, j) at the end (O*Kg floats). With
# C/groups a multiple of 16 it builds no rows either: every 16 taps of a
# pixel are 16 channels of one pixel of the image, copied zero-padded and
# channels-last into the loop's own buffer one image at a time, read in
# place (at stride 2 too: the small ResNet's 16 -> 32 and 32 -> 64 dW,
# 2 threads, in turn in one process, 2.22 -> 2.04 and 1.82 -> 1.78 ms; the
# copy per image instead of the whole batch's through memory: host_ops.c).
# Measured (1 thread, 3x3, batch 32-256) against the row-layout columns, dy's
# transpose and the OpenBLAS GEMM (these skinny O = 16-64 by Kg products ran
# at 80-150 GFLOP/s): the whole backward 0.38-0.63x the time with 8-64
# channels at stride 1 (with the direct dx, before the in-place reads, which
# took the 16- and 32-channel dW from 4.55 to 2.03 and 3.31 to 1.68 ms), 0.8x
# at stride 2 with 16 and 32 channels, but 1.03-1.15x with 1 or 3 channels
# where dx goes through col2im (runs of 1-3 floats per kernel offset): below
# DIRECT_BACKWARD_MIN_CHANNELS dW goes over vectors of output pixels instead
# at stride 1 (_weight_grad_pixels: 0.25-0.4x the time of this loop or of
# the columns' GEMM with 1-3 channels), and from the columns otherwise.
# The batch goes in DW_CHUNKS chunks of whole images, each summed in order
# into its own float32 partial, the partials added in order in float64:
# results depend on N, not on the thread count; 8 chunks keep 2-8 threads
# busy.
DIRECT_BACKWARD_MIN_CHANNELS = 8
DW_CHUNKS = 8


def _channels_last(lib, x, out, ph: int, pw: int):
    """x (N, C, H, W) into out as (N, H + 2 ph, W + 2 pw, C), the border zeroed, split over the images."""
    n, c, h, w = x.shape
    host_threads.run_compiled(lib.gpunet_nchw_to_nhwc_f32, (hostlib.ptr(x), hostlib.ptr(out), c, h, w, ph, pw),
                              host_threads.ranges(n, c * h * w))


def _weight_grad_direct(be, lib, x, w, has_bias, g: Geometry, dy):
    """dW and db (or None) through gpunet_conv_dw_f32 (x channels-last: copied here, or image by image there)."""
    n, c, h, wd = x.shape
    o, kg = w.shape[0], w[0].size
    ld = kg + has_bias
    ldp = -(-ld // 16) * 16
    # whole vectors of channels: each image zero-padded channels-last in the loop's own buffer, read in place
    padded = w.shape[1] % 16 == 0
    if padded:
        xh = x
    else:
        xh = _workspace(be, "rows_hwc", n * h * wd * c, np.float32)
        _channels_last(lib, x, xh, 0, 0)
    per = -(-n // DW_CHUNKS)
    chunks = -(-n // per)
    part = _workspace(be, "dw_part", chunks * o * ldp, np.float32).reshape(chunks, o, ldp)
    geo = _rows_geometry(x.shape, g, n, ld)
    at = (hostlib.ptr(xh), hostlib.ptr(dy), hostlib.ptr(part), hostlib.ptr(geo), o, per, int(padded))
    failed = host_threads.run_compiled(lib.gpunet_conv_dw_f32, at, host_threads.ranges(chunks, per * o * g.oh * g.ow * ld))
    if any(failed):
        raise MemoryError("conv2d: no memory for the weight gradient's rows")
    return _dw_from_parts(part, w, kg, has_bias)


def _dw_from_parts(part, w, kg: int, has_bias: bool):
    """dW (taps reordered from (i, j, c) to (c, i, j)) and db from the
    chunks' partial sums, added in order in float64."""
    o, c, kh, kw = w.shape
    dwx = part.sum(0, dtype=np.float64)
    dw = dwx[:, :kg].reshape(o, kh, kw, c).transpose(0, 3, 1, 2).astype(np.float32)
    db = dwx[:, kg].astype(np.float32) if has_bias else None
    return dw, db


def _weight_grad_pixels(be, lib, x, w, has_bias, g: Geometry, dy):
    """dW and db (or None) through gpunet_conv_dw_pixels_f32 (stride 1, few
    input channels: vectors of output pixels), in DW_CHUNKS chunks as above."""
    n = x.shape[0]
    o, kg = w.shape[0], w[0].size
    ldp = -(-(kg + has_bias) // 16) * 16
    per = -(-n // DW_CHUNKS)
    chunks = -(-n // per)
    part = _workspace(be, "dw_part", chunks * o * ldp, np.float32).reshape(chunks, o, ldp)
    geo = _rows_geometry(x.shape, g, n, kg + has_bias)
    at = (hostlib.ptr(x), hostlib.ptr(dy), hostlib.ptr(part), hostlib.ptr(geo), o, per)
    failed = host_threads.run_compiled(lib.gpunet_conv_dw_pixels_f32, at,
                                       host_threads.ranges(chunks, per * o * g.oh * g.ow * kg))
    if any(failed):
        raise MemoryError("conv2d: no memory for the weight gradient's padded images")
    return _dw_from_parts(part, w, kg, has_bias)


# dx of a stride-1 convolution is itself a stride-1 convolution: input pixel
# h receives dy[h + p - i*d] * w[i] for every tap i, i.e. with i' = k-1-i it
# reads dy[h - p' + i'*d], p' = d*(k-1) - p. So dx = conv(dy, w flipped in both
# kernel axes and with O and C/groups swapped per group, padding p', same
# dilation and groups), whose output is H x W, through the direct forward:
# no column gradient, no col2im. Taken where that forward's own conditions
# hold (its Kg is O/groups*kh*kw) and p <= d*(k-1) (p' >= 0), with
# DX_DIRECT_MIN_CHANNELS or more channels per group in dx: one channel
# leaves the loop's register blocks of up to 8 channels 1/8 full (measured,
# 1 thread, 3x3, direct dx and dW against the columns: 1.1-1.7x the time with
# 1 channel over 8x8, batch 32 and 256; 0.75x with 3 channels over 32x32).
DX_DIRECT_MIN_CHANNELS = 3


def _dx_direct(x_shape, w, g: Geometry):
    """The geometry of dx as a direct convolution of dy, or None where the backward keeps col2im."""
    pht, pwt = g.dh * (g.kh - 1) - g.ph, g.dw * (g.kw - 1) - g.pw
    if g.sh != 1 or g.sw != 1 or pht < 0 or pwt < 0:
        return None
    gt = Geometry(g.kh, g.kw, 1, 1, pht, pwt, g.dh, g.dw, g.groups, x_shape[2], x_shape[3])
    return gt if _direct(gt, w.shape[0] // g.groups, g.kh * g.kw) else None


# dx of a strided convolution, class by class of input pixels: pixel
# h = rh + sh*a (rh = h % sh) receives dy[a + (rh + ph - i*dh)/sh] * w[i]
# from the taps i where rh + ph - i*dh is a multiple of sh (likewise along
# w). So each of the sh*sw classes is a stride-1 convolution of dy with its
# taps (in reverse order; their offsets dh/gcd(sh, dh) apart), which the
# direct loop writes straight into the class's pixels of dx (its output
# layout): no column gradient, no col2im. Taken where dx has 16k channels per
# group (the loop that puts output channels in its vector lanes) and no
# class reads dy above its first row. Measured against the column gradient
# and col2im (2 threads, 3x3 stride 2, batch 64, in turn in one process): the
# small ResNet's 16 -> 32 channels over 32x32 2.24 -> 1.40 ms, 32 -> 64 over
# 16x16 1.31 -> 1.18 ms.
def _dx_classes(x_shape, w, g: Geometry):
    """[(rh, rw, taps along h, taps along w)] of a strided convolution's dx
    classes, taps in increasing offset order, or None where _dx_strided is
    not taken."""
    cg = w.shape[1]
    if (g.sh == 1 and g.sw == 1) or cg % 16:
        return None
    classes = []
    for rh in range(min(g.sh, x_shape[2])):
        for rw in range(min(g.sw, x_shape[3])):
            ti = [i for i in reversed(range(g.kh)) if (rh + g.ph - i * g.dh) % g.sh == 0]
            tj = [j for j in reversed(range(g.kw)) if (rw + g.pw - j * g.dw) % g.sw == 0]
            if ti and tj and ((rh + g.ph - ti[0] * g.dh) > 0 or (rw + g.pw - tj[0] * g.dw) > 0):
                return None  # the class would read dy below a negative padding
            if (w.shape[0] // g.groups) * len(ti) * len(tj) > DIRECT_MAX_TAPS:
                return None
            classes.append((rh, rw, ti, tj))
    return classes


def _dx_strided(lib, dy, w, g: Geometry, x_shape, classes):
    """dx of a strided convolution through the direct loop, class by class (above)."""
    n, c, h, wd = x_shape
    empty = any(not ti or not tj for _, _, ti, tj in classes)  # pixels no tap reaches: 0
    dx = np.zeros(x_shape, np.float32) if empty else np.empty(x_shape, np.float32)
    og, cg = w.shape[0] // g.groups, c // g.groups
    for rh, rw, ti, tj in classes:
        ha, wb = -(-(h - rh) // g.sh), -(-(wd - rw) // g.sw)
        if not ti or not tj:
            continue
        ws = w[:, :, ti][:, :, :, tj].reshape(g.groups, og, cg, len(ti), len(tj))
        ws = np.ascontiguousarray(ws.transpose(0, 2, 1, 3, 4))  # per group (C/groups, O/groups) swapped
        step_h = (ti[0] - ti[1]) * g.dh // g.sh if len(ti) > 1 else 1
        step_w = (tj[0] - tj[1]) * g.dw // g.sw if len(tj) > 1 else 1
        gt = Geometry(len(ti), len(tj), 1, 1, -((rh + g.ph - ti[0] * g.dh) // g.sh),
                      -((rw + g.pw - tj[0] * g.dw) // g.sw), step_h, step_w, g.groups, ha, wb)
        geo = _rows_geometry(dy.shape, gt, n, c)  # its last entry: dx's channels, the loop's outputs
        ylay = np.array([h * wd, g.sh * wd, g.sw, rh * wd + rw], np.int64)
        lines = 1 if wb >= 256 else min(256 // wb, ha)  # host_ops.c's pixel blocks (DIRECT_TILE)
        failed = host_threads.run_compiled(lib.gpunet_conv_direct_into_f32,
                                           (hostlib.ptr(dy), hostlib.ptr(ws), hostlib.ptr(dx), hostlib.ptr(geo),
                                            hostlib.ptr(ylay)),
                                           host_threads.ranges(n * -(-ha // lines), c * lines * wb * ws[0].size))
        if any(failed):
            raise MemoryError("conv2d: no memory for the direct convolution's rows")
    return dx


def _flipped_transposed(w, g: Geometry):
    """(C, O/groups, kh, kw) weights of dx's convolution: per group O and C/groups swapped, kernel flipped."""
    o, cg = w.shape[:2]
    wg = w.reshape(g.groups, o // g.groups, cg, g.kh, g.kw)[..., ::-1, ::-1]
    return np.ascontiguousarray(wg.transpose(0, 2, 1, 3, 4)).reshape(g.groups * cg, o // g.groups, g.kh, g.kw)


# ---------------------------------------------------------------- host float32 forward: direct
# The float32 host forward sums every output's Kg = C/groups*kh*kw products
# straight from a small tile of taps (gpunet_conv_direct_f32, host_ops.c) and
# writes NCHW with the bias: no column matrix, no transpose. Measured against
# the columns + GEMM above (same process, 1 thread, batch 32-64, 3x3 kernels):
# 2.5-2.7x faster for the (3, 32x32) first layers, 1.4-2.6x for Kg 144-576
# over 16x16 and 32x32 outputs, 1.1-2.6x over 8x8 (Kg 576 to 9), but
# 0.7-0.9x over 4x4 outputs, whose 16-pixel blocks fill half of the loop's
# 32-wide registers: those keep the GEMM. Beyond Kg = 576 (64 channels 3x3,
# the largest measured) the tile outgrows the L2 cache: the GEMM keeps those
# too. Stride 1 with DIRECT_WIDE_MIN_CHANNELS or more channels per group
# reads padded input rows instead of a tile (host_ops.c's direct_wide): that
# pays over 4x4 outputs too (32-64 channels, batch 32-256: 0.66-0.79x the
# GEMM's time), not over 2x2 (1.6x). With a multiple of 16 output channels
# per group the loop puts output channels in its vector lanes instead of
# pixels (host_ops.c's direct_oc: same bits, no lanes lost to small planes),
# unless each output has few taps over a large plane (the first layers).
DIRECT_MIN_PIXELS = 64
DIRECT_WIDE_MIN_PIXELS = 16
DIRECT_WIDE_MIN_CHANNELS = 8  # host_ops.c's
DIRECT_MAX_TAPS = 576


def _direct(g: Geometry, channels: int, kernel: int) -> bool:
    """Whether the direct loop takes a convolution with `channels` input
    channels per group and a kernel of `kernel` taps."""
    wide = g.sh == g.sw == 1 and channels >= DIRECT_WIDE_MIN_CHANNELS
    pixels = DIRECT_WIDE_MIN_PIXELS if wide else DIRECT_MIN_PIXELS
    return g.oh * g.ow >= pixels and channels * kernel <= DIRECT_MAX_TAPS


def _forward_direct(be, lib, x, w, b, g: Geometry):
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    b = None if b is None else np.ascontiguousarray(b, np.float32)
    n, o = x.shape[0], w.shape[0]
    y = np.empty((n, o, g.oh, g.ow), np.float32)
    if y.size == 0:
        return y
    geo = _rows_geometry(x.shape, g, n, o)  # its last entry: O instead of the row length
    lines = 1 if g.ow >= 256 else min(256 // g.ow, g.oh)  # host_ops.c's pixel blocks (DIRECT_TILE)
    blocks = -(-g.oh // lines)
    at = (hostlib.ptr(x), hostlib.ptr(w), hostlib.ptr(b), hostlib.ptr(y), hostlib.ptr(geo))
    failed = host_threads.run_compiled(lib.gpunet_conv_direct_f32, at,
                                       host_threads.ranges(n * blocks, o * lines * g.ow * w[0].size))
    if any(failed):
        raise MemoryError("conv2d: no memory for the direct convolution's tile")
    return y


# dcols (C*kh*kw, N*OH*OW): row (c, i, j), column (n, oy, ox), as the column
# layout above. Input pixel (n, c, h, w) was copied to column (oy, ox) of row
# (c, i, j) iff h + ph = oy*sh + i*dh and w + pw = ox*sw + j*dw; the thread
# sums those entries in (i, j) row-major order, as _col2im_array.
_COL2IM_SOURCE = """
extern "C" __global__ void gpunet_col2im(const T* dcols, T* dx, long long total, int N, int C, int H, int W,
                                         int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                                         int OH, int OW) {
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const int w = (int)(idx % W);
        long long rest = idx / W;
        const int h = (int)(rest % H);
        rest /= H;
        const int c = (int)(rest % C);
        const int n = (int)(rest / C);
        T acc = T(0);
        for (int i = 0; i < kh; ++i) {
            const int hh = h + ph - i * dh;
            if (hh < 0 || hh % sh != 0 || hh / sh >= OH) continue;
            const int oy = hh / sh;
            for (int j = 0; j < kw; ++j) {
                const int ww = w + pw - j * dw;
                if (ww < 0 || ww % sw != 0 || ww / sw >= OW) continue;
                const long long row = ((long long)c * kh + i) * kw + j;
                acc += dcols[(row * N + n) * ((long long)OH * OW) + (long long)oy * OW + ww / sw];
            }
        }
        dx[idx] = acc;
    }
}
"""


def _col2im_fused(dcols, x_shape, g: Geometry):
    """_col2im_array as one CuPy RawKernel gather, one thread per input pixel
    (no atomics, fixed summation order): dcols (groups, Kg, N*L) -> dx (N, C, H, W)."""
    cp = cupy()
    n, c, h, w = x_shape
    dcols = cp.ascontiguousarray(dcols)
    dx = cp.empty(x_shape, dtype=dcols.dtype)
    i32 = np.int32
    launch("gpunet_col2im", _COL2IM_SOURCE, dx.dtype, dx.size,
           (dcols, dx, np.int64(dx.size), i32(n), i32(c), i32(h), i32(w), i32(g.kh), i32(g.kw), i32(g.sh),
            i32(g.sw), i32(g.ph), i32(g.pw), i32(g.dh), i32(g.dw), i32(g.oh), i32(g.ow)))
    return dx


# ---------------------------------------------------------------- kernel path (sim, cuda)
def _chunk(n: int, k: int, spatial: int, itemsize: int) -> int:
    """Images per chunk so the (k, chunk*spatial) columns fit WORKSPACE_BYTES (at least 1)."""
    return max(1, min(n, WORKSPACE_BYTES // max(1, k * spatial * itemsize)))


def _kernel_args(g: Geometry):
    return g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw


def im2col_kernel(be, x, cols, g: Geometry):
    be.kernels.im2col(kernel_view(be, x), kernel_view(be, cols), *_kernel_args(g), be.stream())


def col2im_kernel(be, dcols, dx, g: Geometry):
    be.kernels.col2im(kernel_view(be, dcols), kernel_view(be, dx), *_kernel_args(g), be.stream())


def accumulator(xp, shape, dtype):
    """Zeros to sum GEMM products over chunks into: float32 for half storage
    (rounded once at the end, see linear.matmul's out_dtype)."""
    return xp.zeros(shape, dtype=np.float32 if dtypes.is_half(dtype) else dtype)


def _forward_kernels(be, x, w, b, g: Geometry):
    xp = be.xp
    n, o = x.shape[0], w.shape[0]
    og, k, spatial = o // g.groups, w[0].size * g.groups, g.oh * g.ow
    kg = k // g.groups
    wg = w.reshape(g.groups, og, kg)
    y = xp.empty((n, o, g.oh, g.ow), dtype=x.dtype)
    step = _chunk(n, k, spatial, x.dtype.itemsize)
    for n0 in range(0, n, step):
        nb = min(step, n - n0)
        cols = _workspace(be, "cols", k * nb * spatial, x.dtype).reshape(k, nb * spatial)
        im2col_kernel(be, x[n0:n0 + nb], cols, g)
        yc = matmul(be, wg, cols.reshape(g.groups, kg, nb * spatial))  # (O, nb, L)
        y[n0:n0 + nb].reshape(nb, o, spatial)[...] = yc.reshape(o, nb, spatial).transpose(1, 0, 2)
    if b is not None:
        bias_add(be, y, b, "kernel", spatial)
    return y, x


def _backward_kernels(be, ctx, dy, input_grad: bool):
    xp = be.xp
    x, w, has_bias, _, g = ctx
    n, o = dy.shape[:2]
    og, k, spatial = o // g.groups, w[0].size * g.groups, g.oh * g.ow
    kg = k // g.groups
    wt = w.reshape(g.groups, og, kg).transpose(0, 2, 1)
    dy = xp.ascontiguousarray(dy)
    dx = xp.empty(x.shape, dtype=x.dtype) if input_grad else None
    dw = accumulator(xp, (g.groups, og, kg), x.dtype)
    step = _chunk(n, k, spatial, x.dtype.itemsize)
    for n0 in range(0, n, step):
        nb = min(step, n - n0)
        cols = _workspace(be, "cols", k * nb * spatial, x.dtype).reshape(g.groups, kg, nb * spatial)
        im2col_kernel(be, x[n0:n0 + nb], cols.reshape(k, nb * spatial), g)
        dyg = xp.ascontiguousarray(dy[n0:n0 + nb].reshape(nb, g.groups, og, spatial).transpose(1, 2, 0, 3))
        dyg = dyg.reshape(g.groups, og, nb * spatial)
        dw += matmul(be, dyg, cols.transpose(0, 2, 1), out_dtype=dw.dtype)
        if input_grad:
            matmul(be, wt, dyg, out=cols)  # dcols overwrites the columns (no longer needed)
            col2im_kernel(be, cols.reshape(k, nb * spatial), dx[n0:n0 + nb], g)
    db = bias_grad(be, dy, o, "kernel", spatial) if has_bias else None
    return dx, dw.reshape(w.shape).astype(x.dtype, copy=False), db


# ---------------------------------------------------------------- entry points
def _tensor_core(be, x, w, stride, padding, dilation, groups):
    """Whether a half call goes to the tensor-core kernels (gpunet/ops/conv_tensor_core.py)."""
    g = geometry(x.shape, w.shape, stride, padding, dilation, groups)
    return conv_tc.takes(be, x, w, x.shape[0] * w.shape[0] * g.oh * g.ow)


@float32_compute("conv2d", forward=True, half_kernels=half_kernels)
def conv2d_forward(be, x, w, b, stride, padding, dilation, groups):
    """x (N, C, H, W), w (O, C/groups, kh, kw), b (O,) or None; stride, padding,
    dilation are (h, w) pairs. Returns y (N, O, OH, OW) and the backward context."""
    g = geometry(x.shape, w.shape, stride, padding, dilation, groups)
    if _tensor_core(be, x, w, stride, padding, dilation, groups):
        y, saved = conv_tc.forward(be, x, w, b, g)
        return y, ("tensor_core", saved)
    route = route_of(be, "conv2d", x.dtype, fused=True)  # the fusion is backward's col2im
    y, saved = (_forward_kernels if route == "kernel" else _forward_array)(be, x, w, b, g)
    return y, (route, saved, w, b is not None, tuple(x.shape), g)


@float32_compute("conv2d", forward=False, half_kernels=half_kernels)
def conv2d_backward(be, ctx, dy, input_grad: bool = True):
    """Returns dx (like x; None without input_grad, which skips its
    computation), dw (like w) and db ((O,), None without bias)."""
    route, *rest = ctx
    if route == "tensor_core":
        return conv_tc.backward(be, rest[0], dy, input_grad)
    if route == "kernel":
        return _backward_kernels(be, rest, dy, input_grad)
    return _backward_array(be, rest, dy, input_grad, fused=route == "fused")
