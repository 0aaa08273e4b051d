"""2-D convolution layer (im2col + GEMM, see gpunet/ops/conv.py)."""
from .. import checks
from ..ops import conv as ops
from ..ops import pad as pad_ops
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
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        self.in_channels = checks.positive_int(in_channels, "in_channels")
        self.out_channels = checks.positive_int(out_channels, "out_channels")
        self.groups = checks.positive_int(groups, "groups")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if v % groups:
                raise ValueError(f"{name}: expected a multiple of groups={groups}, got {v}")
        self.kernel_size = checks.pair(kernel_size, "kernel_size")
        self.stride = checks.pair(stride, "stride")
        self.dilation = checks.pair(dilation, "dilation")
        if padding_mode not in pad_ops.MODES:
            raise ValueError(f"padding_mode: expected one of {', '.join(map(repr, pad_ops.MODES))}, "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        if padding == "valid":
            padding = 0
        if padding == "same":
            if self.stride != (1, 1):
                raise ValueError(f"padding='same': only for stride 1 (the output keeps the input's size), "
                                 f"got stride={self.stride}")
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            # an odd total puts the extra row/column at the bottom/right, as PyTorch
            self._pads = (totals[0] // 2, totals[0] - totals[0] // 2, totals[1] // 2, totals[1] - totals[1] // 2)
        else:
            p = checks.pair(padding, "padding", minimum=0)
            self._pads = (p[0], p[0], p[1], p[1])
        self.padding = "same" if padding == "same" else (self._pads[0], self._pads[2])
        # the kernels pad with zeros, evenly; anything else is padded explicitly first
        self._explicit = padding_mode != "zeros" or self._pads[0] != self._pads[1] or self._pads[2] != self._pads[3]
        shape = (out_channels, in_channels // groups) + self.kernel_size
        fan_in = shape[1] * shape[2] * shape[3]
        self.weight = Parameter(init.default_weight(shape, self.dtype))
        self.bias = Parameter(init.fan_in_uniform((out_channels,), fan_in, self.dtype)) if bias else None
        self._place(device, dtype)

    def forward(self, x):
        be = self.backend
        checks.array(be, x, "input", ndim=(3, 4), dtype=self.dtype)
        if x.shape[-3] != self.in_channels:
            raise ValueError(f"input: expected {self.in_channels} channels (in_channels) in dim {x.ndim - 3} "
                             f"of (N, C, H, W) or (C, H, W), got {x.shape[-3]} (shape {tuple(x.shape)})")
        unbatched = x.ndim == 3
        xb = be.xp.ascontiguousarray(x[None] if unbatched else x)
        padding = (self._pads[0], self._pads[2])
        if self._explicit:
            xb, padding = pad_ops.pad2d(be, xb, self._pads, self.padding_mode), (0, 0)
        check_window(xb.shape, self.kernel_size, self.stride, padding, self.dilation, "convolution")
        y, ctx = ops.conv2d_forward(be, xb, self.weight.data, None if self.bias is None else self.bias.data,
                                    self.stride, padding, self.dilation, self.groups)
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
        if self._explicit:
            dx = pad_ops.pad2d_backward(be, dx, self._pads, self.padding_mode)
        return dx[0] if unbatched else dx

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")
