"""2-D convolution layer (im2col + GEMM, see gpunet/ops/conv.py)."""
from .. import checks
from ..ops import conv as ops
from . import init
from .module import Module, Parameter


def check_window(x_shape, kernel, stride, padding, dilation, what: str):
    """The (dilated) window must fit the padded input; returns the output (OH, OW)."""
    out = []
    for axis, name in ((0, "height"), (1, "width")):
        size = x_shape[-2 + axis]
        span = dilation[axis] * (kernel[axis] - 1) + 1
        if span > size + 2 * padding[axis]:
            raise ValueError(f"input: {what} window {span} (kernel_size {kernel[axis]}, dilation {dilation[axis]}) "
                             f"is larger than the padded input {name} {size} + 2*{padding[axis]}; "
                             f"got input shape {tuple(x_shape)}")
        out.append(ops.out_size(size, kernel[axis], stride[axis], padding[axis], dilation[axis]))
    return tuple(out)


class Conv2d(Module):
    """Cross-correlation of an (N, C, H, W) or unbatched (C, H, W) input with
    `out_channels` filters of shape (in_channels/groups, kh, kw), as
    torch.nn.Conv2d: output size floor((H + 2p - d(k-1) - 1)/s) + 1 per axis.
    weight (out_channels, in_channels/groups, kh, kw), bias (out_channels,)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        self.in_channels = checks.positive_int(in_channels, "in_channels")
        self.out_channels = checks.positive_int(out_channels, "out_channels")
        self.groups = checks.positive_int(groups, "groups")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if v % groups:
                raise ValueError(f"{name}: expected a multiple of groups={groups}, got {v}")
        self.kernel_size = checks.pair(kernel_size, "kernel_size")
        self.stride = checks.pair(stride, "stride")
        self.padding = checks.pair(padding, "padding", minimum=0)
        self.dilation = checks.pair(dilation, "dilation")
        shape = (out_channels, in_channels // groups) + self.kernel_size
        fan_in = shape[1] * shape[2] * shape[3]
        self.weight = Parameter(init.default_weight(shape, self.dtype))
        self.bias = Parameter(init.fan_in_uniform((out_channels,), fan_in, self.dtype)) if bias else None

    def forward(self, x):
        be = self.backend
        checks.array(be, x, "input", ndim=(3, 4), dtype=self.dtype)
        if x.shape[-3] != self.in_channels:
            raise ValueError(f"input: expected {self.in_channels} channels (in_channels) in dim {x.ndim - 3} "
                             f"of (N, C, H, W) or (C, H, W), got {x.shape[-3]} (shape {tuple(x.shape)})")
        check_window(x.shape, self.kernel_size, self.stride, self.padding, self.dilation, "convolution")
        unbatched = x.ndim == 3
        xb = be.xp.ascontiguousarray(x[None] if unbatched else x)
        y, ctx = ops.conv2d_forward(be, xb, self.weight.data, None if self.bias is None else self.bias.data,
                                    self.stride, self.padding, self.dilation, self.groups)
        self.save(ctx, unbatched, y.shape)
        return y[0] if unbatched else y

    def backward(self, dy):
        ctx, unbatched, y_shape = self.saved()
        be = self.backend
        checks.array(be, dy, "grad_output", dtype=self.dtype, finite=False)
        want = y_shape[1:] if unbatched else y_shape
        if tuple(dy.shape) != tuple(want):
            raise ValueError(f"grad_output: expected the output's shape {tuple(want)}, got {tuple(dy.shape)}")
        dyb = dy[None] if unbatched else dy
        dx, dw, db = ops.conv2d_backward(be, ctx, be.xp.ascontiguousarray(dyb))
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx[0] if unbatched else dx

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")
