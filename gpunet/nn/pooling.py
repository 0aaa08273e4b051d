"""2-D max and average pooling layers (see gpunet/ops/pool.py)."""
from .. import checks
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
    the first element in row-major window order."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)

    def forward(self, x):
        xb, unbatched = self._input(x)
        y, ctx = ops.maxpool2d_forward(self.backend, xb, self.kernel_size, self.stride, self.padding,
                                       self.dilation, self.ceil_mode)
        self.save(ctx, unbatched, y.shape)
        return y[0] if unbatched else y

    def backward(self, dy):
        ctx, unbatched, y_shape = self.saved()
        dx = ops.maxpool2d_backward(self.backend, ctx, self._grad(dy, y_shape, unbatched))
        return dx[0] if unbatched else dx

    def extra_repr(self):
        return super().extra_repr() + f", dilation={self.dilation}, ceil_mode={self.ceil_mode}"


class AvgPool2d(_Pool2d):
    """Mean over each window, as torch.nn.AvgPool2d: the divisor is the window
    clipped to the padded input, or to the input alone with
    count_include_pad=False."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        xb, unbatched = self._input(x)
        y, ctx = ops.avgpool2d_forward(self.backend, xb, self.kernel_size, self.stride, self.padding,
                                       self.ceil_mode, self.count_include_pad)
        self.save(ctx, unbatched, y.shape)
        return y[0] if unbatched else y

    def backward(self, dy):
        ctx, unbatched, y_shape = self.saved()
        dx = ops.avgpool2d_backward(self.backend, ctx, self._grad(dy, y_shape, unbatched))
        return dx[0] if unbatched else dx

    def extra_repr(self):
        return super().extra_repr() + f", ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}"
