"""2-D max and average pooling, forward and backward, with PyTorch's semantics:
padding (at most half the window) pads with -inf for max and 0 for average,
ceil_mode adds a last partial window only when it starts inside the input or
the left padding, and the average divides by the window clipped to the padded
input (count_include_pad=True) or to the input itself (False).

Array path (cpu, cupy): a loop over the kh*kw window offsets, each a strided
slice of the padded input covering every output pixel. Max pooling keeps the
offset of the first maximum in row-major window order, so ties go to the
first index (a NaN window picks its last NaN, as the kernels do) and backward
routes each gradient to exactly one input. On the host the (image, channel)
planes are shared out over the host threads; float32 pooling there runs the
compiled loops of gpunet/hostlib.py (the same maxima, arg-max offsets, sums
and routed gradients in the same order: the same bits; max pooling's
offsets as int32 there).

Kernel path (sim, cuda; float32, and float16/bfloat16 storage computed in
float32, sums in cpu's order, each output rounded once): forward is one
thread per output pixel (max
saves the arg-max as an int32 index into the input plane); backward is one
thread per input pixel gathering from the windows that contain it, so it needs
no atomics and sums in a fixed order.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import dtypes, hostlib
from ..dispatch import path
from . import host_threads
from .half import float32_compute, kernel_view


class Window(NamedTuple):
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    oh: int
    ow: int


def pool_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    span = dilation * (kernel - 1) + 1
    room = size + 2 * padding - span
    out = (room + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the right padding
    return out


def window(x_shape, kernel, stride, padding, dilation, ceil_mode) -> Window:
    oh = pool_out_size(x_shape[2], kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = pool_out_size(x_shape[3], kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    return Window(kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], oh, ow)


def _padded_shape(x_shape, win: Window):
    """The shape of the input padded so that every window of every output pixel lies inside."""
    n, c, h, w = x_shape
    hp = max(h + 2 * win.ph, (win.oh - 1) * win.sh + win.dh * (win.kh - 1) + 1)
    wp = max(w + 2 * win.pw, (win.ow - 1) * win.sw + win.dw * (win.kw - 1) + 1)
    return n, c, hp, wp


def _padded(xp, x, win: Window, fill):
    """x padded by `fill` to _padded_shape."""
    n, c, h, w = x.shape
    shape = _padded_shape(x.shape, win)
    if shape == x.shape:
        return x
    out = xp.full(shape, fill, dtype=x.dtype)
    out[:, :, win.ph:win.ph + h, win.pw:win.pw + w] = x
    return out


def _taps(win: Window):
    """((i*kw + j), slices of the padded input) for each window offset (i, j), row-major."""
    for i in range(win.kh):
        for j in range(win.kw):
            r0, c0 = i * win.dh, j * win.dw
            yield i * win.kw + j, (slice(None), slice(None),
                                   slice(r0, r0 + win.sh * (win.oh - 1) + 1, win.sh),
                                   slice(c0, c0 + win.sw * (win.ow - 1) + 1, win.sw))


def _inside(count: int, start: int, stride: int, size: int):
    """Outputs o in [0, count) read input start + o*stride along one axis: the
    slice of those outputs whose input lies in [0, size), and of those inputs."""
    lo = max(0, (stride - 1 - start) // stride)
    hi = min(count, (size - 1 - start) // stride + 1)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo, hi), slice(start + lo * stride, start + (hi - 1) * stride + 1, stride)


def _taps_inside(win: Window, x_shape):
    """(i*kw + j, output slices, input slices) for each window offset (i, j),
    row-major, clipped to the outputs whose tap lies inside the unpadded input."""
    h, w = x_shape[2:]
    for i in range(win.kh):
        oi, xi = _inside(win.oh, i * win.dh - win.ph, win.sh, h)
        for j in range(win.kw):
            oj, xj = _inside(win.ow, j * win.dw - win.pw, win.sw, w)
            yield i * win.kw + j, (slice(None), slice(None), oi, oj), (slice(None), slice(None), xi, xj)


def _kernel_args(win: Window):
    return win.kh, win.kw, win.sh, win.sw, win.ph, win.pw, win.dh, win.dw


def _half_kernels(be, *args, **kwargs):
    """Every half pooling call runs on the kernels (float32 inside, one rounding)."""
    return True


def _on_kernels(be, x):
    """The kernels take this call: half storage (only a kernel backend passes it
    here) or the dispatch's kernel path."""
    return dtypes.is_half(x.dtype) or path(be, "pool2d", x.dtype) == "kernel"


def _over_planes(xp, fn, *arrays):
    """fn(*parts) over (N*C, 1, H, W) views of the (N, C, H, W) `arrays`, the
    planes shared out over the host threads on the host (each plane is pooled
    on its own, so the split does not change a bit) and all at once elsewhere.
    Returns the views."""
    planes = [a.reshape((-1, 1) + a.shape[2:]) for a in arrays]
    count, size = planes[0].shape[0], planes[0][:1].size
    parts = host_threads.ranges(count, size) if xp is np else [(0, count)]
    host_threads.run(lambda lo, hi: fn(*(p[lo:hi] for p in planes)), parts)
    return planes


def _host_planes(fn, x_shape, win: Window, arrays, extra) -> None:
    """fn(*addresses, q, lo, hi), a compiled pooling loop (host_ops.c's *_range
    forms), over the planes of the C-contiguous host `arrays` shared out over
    the host threads; q: the geometry's scalars, then `extra`."""
    n, c, h, w = x_shape
    q = np.array([h, w, win.oh, win.ow, *_padded_shape(x_shape, win)[2:], *_kernel_args(win)[:6], *extra], np.int64)
    failed = host_threads.run_compiled(fn, [hostlib.ptr(a) for a in arrays] + [hostlib.ptr(q)],
                                       host_threads.ranges(n * c, h * w))
    if any(failed):
        raise MemoryError("pooling: no memory for a plane's scratch")


# ---------------------------------------------------------------- max pooling
@float32_compute("max_pool2d", forward=True, half_kernels=_half_kernels)
def maxpool2d_forward(be, x, kernel, stride, padding, dilation=(1, 1), ceil_mode=False):
    """x (N, C, H, W) -> y (N, C, OH, OW) and the backward context."""
    xp = be.xp
    win = window(x.shape, kernel, stride, padding, dilation, ceil_mode)
    if _on_kernels(be, x):
        y = xp.empty(x.shape[:2] + (win.oh, win.ow), dtype=x.dtype)
        arg = xp.empty(y.shape, dtype=np.int32)
        be.kernels.maxpool2d_forward(kernel_view(be, xp.ascontiguousarray(x)), kernel_view(be, y), arg,
                                     *_kernel_args(win), be.stream())
        return y, (True, arg, x.shape, win)
    y = xp.empty(x.shape[:2] + (win.oh, win.ow), dtype=x.dtype)
    hp, wp = _padded_shape(x.shape, win)[2:]
    if 64 * hp * wp < 2 ** 31 and (lib := hostlib.for_float32(be, x)) is not None:  # (the loops' int32 offsets)
        arg = np.empty(y.shape, dtype=np.int32)
        _host_planes(lib.gpunet_maxpool2d_forward_range_f32, x.shape, win, (np.ascontiguousarray(x), y, arg),
                     (win.dh, win.dw))
        return y, (False, arg, x.shape, win)
    arg = xp.empty(y.shape, dtype=np.int16 if win.kh * win.kw < 2 ** 15 else np.int32)
    _over_planes(xp, lambda xs, ys, args: _maxpool_planes(xp, xs, win, ys, args), x, y, arg)
    return y, (False, arg, x.shape, win)


def _maxpool_planes(xp, x, win: Window, y, arg):
    """The array path's max pooling of x into y and its window offsets into arg."""
    xpad = _padded(xp, x, win, -np.inf)
    taps = list(_taps(win))
    # the maximum first (np.maximum propagates NaN, PyTorch's rule), then the
    # arg-max: each tap adds its index where it equals the maximum and no
    # earlier tap did (ties go to the first index). Arithmetic on masks, as
    # masked writes (copyto where=) are branchy and ~10x slower
    y[...] = xpad[taps[0][1]]
    for _, sl in taps[1:]:
        xp.maximum(y, xpad[sl], out=y)
    arg[...] = 0
    found = xp.zeros(y.shape, dtype=bool)
    hit = xp.empty(y.shape, dtype=bool)
    first = xp.empty(y.shape, dtype=bool)
    picked = xp.empty_like(arg)
    for k, sl in taps:
        xp.equal(xpad[sl], y, out=hit)
        xp.greater(hit, found, out=first)  # hit and not found
        xp.multiply(first, k, out=picked)
        arg += picked
        found |= hit
    # (on a GPU, asking whether any NaN exists would cost a device sync: the
    # pass below is cheaper than that, so it always runs there)
    if xp is not np or xp.isnan(y).any():
        # a NaN equals nothing: like the kernels ('v > best || isnan(v)'),
        # the last NaN in window order is the one picked
        for k, sl in taps:
            xp.isnan(xpad[sl], out=hit)
            xp.copyto(arg, k, where=hit)


@float32_compute("max_pool2d", forward=False, half_kernels=_half_kernels)
def maxpool2d_backward(be, ctx, dy):
    """Each output gradient goes to the input element its forward picked."""
    xp = be.xp
    kernels, arg, x_shape, win = ctx
    if kernels:
        dx = xp.empty(x_shape, dtype=dy.dtype)
        be.kernels.maxpool2d_backward(kernel_view(be, xp.ascontiguousarray(dy)), arg, kernel_view(be, dx),
                                      *_kernel_args(win), be.stream())
        return dx
    dx = xp.empty(x_shape, dtype=dy.dtype)
    if arg.dtype == np.int32 and (lib := hostlib.for_float32(be, dy)) is not None:
        _host_planes(lib.gpunet_maxpool2d_backward_range_f32, x_shape, win, (np.ascontiguousarray(dy), arg, dx),
                     (win.dh, win.dw, int(_tiles(win, x_shape))))
        return dx
    _over_planes(xp, lambda dys, args, dxs: _maxpool_backward_planes(xp, dys, args, win, dxs),
                 xp.ascontiguousarray(dy), arg, dx)
    return dx


def _maxpool_backward_planes(xp, dy, arg, win: Window, dx):
    # taps in the padding are skipped: their gradient would be cut off anyway
    hit = xp.empty(dy.shape, dtype=bool)
    # dy where this tap was picked, else 0: multiplying dy's bits (as unsigned
    # integers) by the 0/1 mask is exact for any dy (a float multiply would
    # spread a non-finite dy as inf·0 = NaN) and branch-free
    bits = np.dtype(f"u{dy.dtype.itemsize}")
    dy_bits = dy.view(bits)
    if _tiles(win, dx.shape):
        # every input element lies in exactly one window: each tap writes its
        # elements of dx directly, no zeroed dx to add into
        for k, _, x_sl in _taps_inside(win, dx.shape):
            xp.equal(arg, k, out=hit)
            xp.multiply(dy_bits, hit, out=dx.view(bits)[x_sl])
        return
    dx[...] = 0
    routed = xp.empty(dy.shape, dtype=dy.dtype)
    routed_bits = routed.view(bits)
    for k, out_sl, x_sl in _taps_inside(win, dx.shape):
        xp.equal(arg, k, out=hit)
        xp.multiply(dy_bits, hit, out=routed_bits)
        dx[x_sl] += routed[out_sl]


def _tiles(win: Window, x_shape) -> bool:
    """The windows tile the input: stride = kernel, no dilation or padding,
    and the outputs cover every row and column."""
    return (win.sh, win.sw, win.dh, win.dw, win.ph, win.pw) == (win.kh, win.kw, 1, 1, 0, 0) \
        and (win.oh * win.kh, win.ow * win.kw) == tuple(x_shape[2:])


# ---------------------------------------------------------------- average pooling
def _divisor(xp, x_shape, win: Window, count_include_pad: bool, dtype):
    """(OH, OW) window sizes PyTorch divides by: the window clipped to the padded
    input, and further to the input itself when padding is not counted. Built
    with `xp` so that a GPU run makes no host-to-device copy per call."""
    def axis(size, out, k, s, p):
        start = xp.arange(out) * s - p
        end = xp.minimum(start + k, size + p)
        if not count_include_pad:
            start, end = xp.maximum(start, 0), xp.minimum(end, size)
        return end - start
    d = xp.outer(axis(x_shape[2], win.oh, win.kh, win.sh, win.ph), axis(x_shape[3], win.ow, win.kw, win.sw, win.pw))
    return d.astype(dtype)


@float32_compute("avg_pool2d", forward=True, half_kernels=_half_kernels)
def avgpool2d_forward(be, x, kernel, stride, padding, ceil_mode=False, count_include_pad=True):
    xp = be.xp
    win = window(x.shape, kernel, stride, padding, (1, 1), ceil_mode)
    if _on_kernels(be, x):
        y = xp.empty(x.shape[:2] + (win.oh, win.ow), dtype=x.dtype)
        be.kernels.avgpool2d_forward(kernel_view(be, xp.ascontiguousarray(x)), kernel_view(be, y),
                                     *_kernel_args(win)[:6], bool(count_include_pad), be.stream())
        return y, (True, x.shape, win, count_include_pad)
    y = xp.empty(x.shape[:2] + (win.oh, win.ow), dtype=x.dtype)
    if (lib := hostlib.for_float32(be, x)) is not None:
        _host_planes(lib.gpunet_avgpool2d_range_f32, x.shape, win, (np.ascontiguousarray(x), y),
                     (int(bool(count_include_pad)), 0))
        return y, (False, x.shape, win, count_include_pad)
    divisor = _divisor(xp, x.shape, win, count_include_pad, x.dtype)

    def planes(xs, ys):
        xpad = _padded(xp, xs, win, 0)
        taps = _taps(win)
        ys[...] = xpad[next(taps)[1]]
        for _, sl in taps:
            ys += xpad[sl]
        ys /= divisor
    _over_planes(xp, planes, x, y)
    return y, (False, x.shape, win, count_include_pad)


@float32_compute("avg_pool2d", forward=False, half_kernels=_half_kernels)
def avgpool2d_backward(be, ctx, dy):
    """Each input element receives dy/divisor from every window that contains it."""
    xp = be.xp
    kernels, x_shape, win, count_include_pad = ctx
    if kernels:
        dx = xp.empty(x_shape, dtype=dy.dtype)
        be.kernels.avgpool2d_backward(kernel_view(be, xp.ascontiguousarray(dy)), kernel_view(be, dx),
                                      *_kernel_args(win)[:6], bool(count_include_pad), be.stream())
        return dx
    dx = xp.empty(x_shape, dtype=dy.dtype)
    if (lib := hostlib.for_float32(be, dy)) is not None:
        _host_planes(lib.gpunet_avgpool2d_range_f32, x_shape, win, (np.ascontiguousarray(dy), dx),
                     (int(bool(count_include_pad)), 1))
        return dx
    divisor = _divisor(xp, x_shape, win, count_include_pad, dy.dtype)

    def planes(dys, dxs):
        share = dys / divisor
        dpad = _padded(xp, xp.zeros(dxs.shape, dtype=dy.dtype), win, 0)
        for _, sl in _taps(win):
            dpad[sl] += share
        dxs[...] = dpad[:, :, win.ph:win.ph + dxs.shape[2], win.pw:win.pw + dxs.shape[3]]
    _over_planes(xp, planes, dy, dx)
    return dx


# ---------------------------------------------------------------- PyTorch's extra outputs and options
def maxpool2d_indices(be, ctx):
    """The arg-max of each window as PyTorch's return_indices gives it: the
    flat index h*W + w into the input's (H, W) plane, int64. The kernels
    record that index already; the array path records the window offset."""
    xp = be.xp
    kernels, arg, x_shape, win = ctx
    arg = arg.astype(np.int64)
    if kernels:
        return arg
    i, j = arg // win.kw, arg % win.kw
    h = xp.arange(win.oh, dtype=np.int64)[:, None] * win.sh - win.ph + i * win.dh
    w = xp.arange(win.ow, dtype=np.int64)[None, :] * win.sw - win.pw + j * win.dw
    return h * x_shape[3] + w


def _override_scale(be, x_shape, win, count_include_pad, divisor_override, dtype):
    """(OH, OW) factors turning each window's mean into its sum / divisor_override."""
    return _divisor(be.xp, x_shape, win, count_include_pad, dtype) / dtype.type(divisor_override)


def avgpool2d_override_forward(be, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """AvgPool2d with divisor_override: each window's mean times divisor /
    divisor_override, computed in float32 for half inputs (the mean and the
    product as the float32 path computes them) and rounded once to x's dtype,
    rather than a rounded mean times a rounded scale."""
    cdt = dtypes.compute_dtype(x.dtype)
    y, ctx = avgpool2d_forward(be, x if x.dtype == cdt else x.astype(cdt), kernel, stride, padding, ceil_mode,
                               count_include_pad)
    scale = _override_scale(be, x.shape, ctx[2], count_include_pad, divisor_override, cdt)
    y *= scale
    return y.astype(x.dtype, copy=False), (ctx, scale, x.dtype)


def avgpool2d_override_backward(be, ctx, dy):
    """The gradient of avgpool2d_override_forward, in the same float32 then rounded once."""
    ctx, scale, dtype = ctx
    return avgpool2d_backward(be, ctx, dy.astype(scale.dtype) * scale).astype(dtype, copy=False)
