"""2-D max and average pooling layers (see gpunet/ops/pool.py) and their
adaptive forms (gpunet/ops/adaptive_pool.py)."""
import numpy as np

from .. import checks
from ..ops import adaptive_pool as ops_a
from ..ops import pool as ops
from .conv import check_window
from .module import Module


class _Pool2d(Module):
    """Shared argument handling: (N, C, H, W) or unbatched (C, H, W) input,
    stride defaulting to the kernel size, padding at most half the window."""

    def __init__(self, kernel_size, stride, padding, dilation, ceil_mode):
        super().__init__()
        self.kernel_size = checks.pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else checks.pair(stride, "stride")
        self.padding = checks.pair(padding, "padding", minimum=0)
        self.dilation = checks.pair(dilation, "dilation")
        self.ceil_mode = bool(ceil_mode)
        for k, p, d in zip(self.kernel_size, self.padding, self.dilation):
            if p > (d * (k - 1) + 1) // 2:
                raise ValueError(f"padding: expected at most half the (dilated) kernel size {self.kernel_size}, "
                                 f"got {self.padding}")

    def _input(self, x):
        be = self.backend
        checks.array(be, x, "input", ndim=(3, 4), dtype=self.dtype)
        check_window(x.shape, self.kernel_size, self.stride, self.padding, self.dilation, "pooling")
        unbatched = x.ndim == 3
        return be.xp.ascontiguousarray(x[None] if unbatched else x), unbatched

    def _grad(self, dy, y_shape, unbatched):
        be = self.backend
        checks.array(be, dy, "grad_output", dtype=self.dtype, finite=False)
        want = y_shape[1:] if unbatched else y_shape
        if tuple(dy.shape) != tuple(want):
            raise ValueError(f"grad_output: expected the output's shape {tuple(want)}, got {tuple(dy.shape)}")
        return be.xp.ascontiguousarray(dy[None] if unbatched else dy)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Maximum over each (dilated) window, as torch.nn.MaxPool2d (padding counts
    as -inf). Backward routes each gradient to the window's arg-max; ties go to
    the first element in row-major window order. return_indices=True returns
    (output, indices) with PyTorch's indices (flat into each input plane, for
    MaxUnpool2d); backward still takes the output's gradient alone."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.return_indices = bool(return_indices)

    def forward(self, input):
        xb, unbatched = self._input(input)
        y, ctx = ops.maxpool2d_forward(self.backend, xb, self.kernel_size, self.stride, self.padding,
                                       self.dilation, self.ceil_mode)
        self.save(ctx, unbatched, y.shape)
        if not self.return_indices:
            return y[0] if unbatched else y
        idx = ops.maxpool2d_indices(self.backend, ctx)
        return (y[0], idx[0]) if unbatched else (y, idx)

    def backward(self, dy):
        ctx, unbatched, y_shape = self.saved()
        dx = ops.maxpool2d_backward(self.backend, ctx, self._grad(dy, y_shape, unbatched))
        return dx[0] if unbatched else dx

    def extra_repr(self):
        return super().extra_repr() + f", dilation={self.dilation}, ceil_mode={self.ceil_mode}"


class AvgPool2d(_Pool2d):
    """Mean over each window, as torch.nn.AvgPool2d: the divisor is the window
    clipped to the padded input, or to the input alone with
    count_include_pad=False; divisor_override replaces that divisor everywhere
    (the mean kernels' output rescaled by divisor/divisor_override)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override=None):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = None if divisor_override is None else \
            checks.positive_int(divisor_override, "divisor_override")

    def forward(self, input):
        xb, unbatched = self._input(input)
        args = (self.backend, xb, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
        if self.divisor_override is None:
            y, ctx = ops.avgpool2d_forward(*args)
        else:
            y, ctx = ops.avgpool2d_override_forward(*args, self.divisor_override)
        self.save(ctx, unbatched, y.shape)
        return y[0] if unbatched else y

    def backward(self, dy):
        ctx, unbatched, y_shape = self.saved()
        dy = self._grad(dy, y_shape, unbatched)
        backward = ops.avgpool2d_backward if self.divisor_override is None else ops.avgpool2d_override_backward
        dx = backward(self.backend, ctx, dy)
        return dx[0] if unbatched else dx

    def extra_repr(self):
        return super().extra_repr() + f", ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}"


class MaxUnpool2d(Module):
    """The partial inverse of MaxPool2d, as torch.nn.MaxUnpool2d: each input
    value goes to the position its `indices` entry names (flat in each output
    plane), every other position is zero. Output size (H-1)*stride - 2*padding
    + kernel_size per axis, or `output_size` (its last two entries)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = checks.pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else checks.pair(stride, "stride")
        self.padding = checks.pair(padding, "padding", minimum=0)

    def forward(self, input, indices, output_size=None):
        be = self.backend
        checks.array(be, input, "input", ndim=(3, 4), dtype=self.dtype)
        checks.array(be, indices, "indices", integer=True)
        checks.same_shape(input, indices, "input", "indices")
        if output_size is None:
            size = tuple((n - 1) * s - 2 * p + k for n, s, p, k in
                         zip(input.shape[-2:], self.stride, self.padding, self.kernel_size))
        else:
            size = tuple(int(n) for n in tuple(output_size)[-2:])
        planes = int(np.prod(input.shape[:-2], dtype=np.int64))
        area = size[0] * size[1]
        flat = indices.reshape(planes, -1).astype(np.int64)
        if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= area):
            raise ValueError(f"indices: expected values in [0, {area}) for an output of size {size}, "
                             f"got {int(flat.min()) if int(flat.min()) < 0 else int(flat.max())}")
        out = be.xp.zeros((planes, area), dtype=self.dtype)
        out[be.xp.arange(planes)[:, None], flat] = input.reshape(planes, -1)
        self.save(flat, input.shape)
        return out.reshape(tuple(input.shape[:-2]) + size)

    def backward(self, grad_output):
        flat, shape = self.saved()
        checks.array(self.backend, grad_output, "grad_output", dtype=self.dtype, finite=False)
        g = grad_output.reshape(flat.shape[0], -1)
        return self.backend.xp.take_along_axis(g, flat, axis=1).reshape(shape)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class _AdaptivePool2d(Module):
    """Shared by the adaptive pools: output_size an int, or a pair whose
    entries may be None (that axis keeps the input's size); (N, C, H, W) or
    unbatched (C, H, W) input with H, W > 0."""

    def __init__(self, output_size):
        super().__init__()
        pair = (output_size, output_size) if not isinstance(output_size, (tuple, list)) else tuple(output_size)
        if len(pair) != 2 or not all(v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                   and v > 0) for v in pair):
            raise ValueError(f"output_size: expected a positive int or a pair of positive ints or None, "
                             f"got {output_size!r}")
        self.output_size = output_size if isinstance(output_size, (int, np.integer)) else pair

    def _input(self, x):
        be = self.backend
        checks.array(be, x, "input", ndim=(3, 4), dtype=self.dtype)
        if 0 in x.shape[-3:]:
            raise ValueError(f"input: expected non-zero sizes in every dimension but the batch, "
                             f"got shape {tuple(x.shape)}")
        unbatched = x.ndim == 3
        xb = be.xp.ascontiguousarray(x[None] if unbatched else x)
        sizes = (self.output_size,) * 2 if isinstance(self.output_size, (int, np.integer)) else self.output_size
        return xb, unbatched, tuple(int(x.shape[-2 + a] if s is None else s) for a, s in enumerate(sizes))

    _grad = _Pool2d._grad  # the same grad_output check

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Mean over PyTorch's adaptive windows (rows [floor(i*H/OH),
    ceil((i+1)*H/OH)), columns alike), as torch.nn.AdaptiveAvgPool2d. Where the
    output size divides the input's, AvgPool2d's path with kernel = stride =
    input/output (its kernels on sim and cuda); otherwise array code on every
    backend (two small GEMMs), a recorded fallback ('adaptive_pool2d')."""

    def forward(self, input):
        xb, unbatched, out = self._input(input)
        y, ctx = ops_a.adaptive_avg_pool2d_forward(self.backend, xb, out)
        self.save(ctx, unbatched, y.shape)
        return y[0] if unbatched else y

    def backward(self, grad_output):
        ctx, unbatched, y_shape = self.saved()
        dx = ops_a.adaptive_avg_pool2d_backward(self.backend, ctx, self._grad(grad_output, y_shape, unbatched))
        return dx[0] if unbatched else dx


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Maximum over PyTorch's adaptive windows, as torch.nn.AdaptiveMaxPool2d;
    ties go to the first element in row-major window order. return_indices=True
    returns (output, indices), indices flat into each input plane as PyTorch's;
    backward takes the output's gradient alone. Where the output size divides
    the input's, MaxPool2d's path (its kernels on sim and cuda); otherwise array
    code on every backend, a recorded fallback ('adaptive_pool2d')."""

    def __init__(self, output_size, return_indices: bool = False):
        super().__init__(output_size)
        self.return_indices = bool(return_indices)

    def forward(self, input):
        xb, unbatched, out = self._input(input)
        y, ctx = ops_a.adaptive_max_pool2d_forward(self.backend, xb, out)
        self.save(ctx, unbatched, y.shape)
        if not self.return_indices:
            return y[0] if unbatched else y
        idx = ops_a.adaptive_max_pool2d_indices(self.backend, ctx)
        return (y[0], idx[0]) if unbatched else (y, idx)

    def backward(self, grad_output):
        ctx, unbatched, y_shape = self.saved()
        dx = ops_a.adaptive_max_pool2d_backward(self.backend, ctx, self._grad(grad_output, y_shape, unbatched))
        return dx[0] if unbatched else dx
