"""Convolution layers: Conv2d and Conv1d (im2col + GEMM, see
gpunet/ops/conv.py) and ConvTranspose2d (its adjoint, gpunet/ops/conv_transpose.py)."""
import numpy as np

from .. import checks
from ..ops import conv as ops
from ..ops import conv_transpose as ops_t
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


def _resolve_padding(padding, padding_mode, kernel, stride, dilation, per_axis):
    """PyTorch's padding and padding_mode for len(kernel) spatial axes:
    ((before, after) per axis, the `padding` attribute). per_axis reads an int
    or a tuple as one value per axis."""
    if padding_mode not in pad_ops.MODES:
        raise ValueError(f"padding_mode: expected one of {', '.join(map(repr, pad_ops.MODES))}, got {padding_mode!r}")
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same': only for stride 1 (the output keeps the input's size), "
                             f"got stride={stride}")
        # an odd total pads one more at the end (bottom/right), as PyTorch
        return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)], "same"
    p = (0,) * len(kernel) if padding == "valid" else per_axis(padding, "padding", minimum=0)
    return [(v, v) for v in p], tuple(p)


# ---------------------------------------------------------------- shared by the convolution layers
def _single(v, name: str, minimum: int = 1) -> int:
    """An int or a 1-tuple of one, >= minimum (PyTorch's 1-d `_single`)."""
    vals = (v,) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else ()
    if len(vals) != 1 or isinstance(vals[0], bool) or not isinstance(vals[0], (int, np.integer)) or vals[0] < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum} or a 1-tuple of one, got {v!r}")
    return int(vals[0])


def _channels(in_channels, out_channels, groups):
    """(in_channels, out_channels, groups), both channel counts multiples of groups."""
    groups = checks.positive_int(groups, "groups")
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        if checks.positive_int(v, name) % groups:
            raise ValueError(f"{name}: expected a multiple of groups={groups}, got {v}")
    return int(in_channels), int(out_channels), groups


def _check_grad(be, dy, shape, dtype):
    checks.array(be, dy, "grad_output", dtype=dtype, finite=False)
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"grad_output: expected the output's shape {tuple(shape)}, got {tuple(dy.shape)}")


class _Conv(Module):
    """What Conv1d and Conv2d share: PyTorch's arguments for `rank` spatial
    axes (read per axis by `per_axis`), and the convolution itself, run as a
    2-D one on (N, C, H, W) arrays (a 1-D input has H = 1)."""

    def _setup(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
               device, dtype, per_axis, parameters=None):
        self.in_channels, self.out_channels, self.groups = _channels(in_channels, out_channels, groups)
        self.kernel_size = per_axis(kernel_size, "kernel_size", minimum=1)
        self.stride = per_axis(stride, "stride", minimum=1)
        self.dilation = per_axis(dilation, "dilation", minimum=1)
        sides, self.padding = _resolve_padding(padding, padding_mode, self.kernel_size, self.stride, self.dilation,
                                               per_axis)
        self.padding_mode = padding_mode
        lift = (lambda t, one: t) if len(self.kernel_size) == 2 else (lambda t, one: (one,) + t)
        self._kernel2, self._stride2, self._dilation2 = (lift(t, 1) for t in (self.kernel_size, self.stride,
                                                                               self.dilation))
        self._pads = sum(lift(tuple(sides), (0, 0)), ())  # (top, bottom, left, right)
        # the kernels pad with zeros, evenly; anything else is padded explicitly first
        self._explicit = padding_mode != "zeros" or self._pads[0] != self._pads[1] or self._pads[2] != self._pads[3]
        shape = (out_channels, in_channels // groups) + self.kernel_size
        fan_in = int(np.prod(shape[1:]))
        if parameters is None:
            self.weight = Parameter(init.default_weight(shape, self.dtype))
            self.bias = Parameter(init.fan_in_uniform((out_channels,), fan_in, self.dtype)) if bias else None
        else:  # given arrays (with_parameters): no random draw
            self.weight = Parameter(parameters[0])
            self.bias = None if parameters[1] is None else Parameter(parameters[1])
        self._place(device, dtype)

    def _conv(self, xb):
        """y (N, O, OH, OW) of a contiguous (N, C, H, W) input; saves the ctx."""
        be = self.backend
        padding = (self._pads[0], self._pads[2])
        if self._explicit:
            xb, padding = pad_ops.pad2d(be, xb, self._pads, self.padding_mode), (0, 0)
        check_window(xb.shape, self._kernel2, self._stride2, padding, self._dilation2, "convolution")
        w = self.weight.data.reshape((self.out_channels, -1) + self._kernel2)
        y, ctx = ops.conv2d_forward(be, xb, w, None if self.bias is None else self.bias.data,
                                    self._stride2, padding, self._dilation2, self.groups)
        return y, ctx

    def _conv_backward(self, ctx, dyb):
        """dx (N, C, H, W) from the output gradient (N, O, OH, OW); accumulates dw, db."""
        be = self.backend
        dx, dw, db = ops.conv2d_backward(be, ctx, be.xp.ascontiguousarray(dyb), self.needs_input_grad())
        self.weight.accumulate(dw.reshape(self.weight.shape))
        if self.bias is not None:
            self.bias.accumulate(db)
        if dx is None:
            return None
        if self._explicit:
            dx = pad_ops.pad2d_backward(be, dx, self._pads, self.padding_mode)
        return dx

    def _input(self, x, layout: str):
        """x checked: (N, C, *spatial) or unbatched (C, *spatial); returns (x batched, unbatched)."""
        rank = len(self.kernel_size)
        checks.array(self.backend, x, "input", ndim=(rank + 1, rank + 2), dtype=self.dtype)
        if x.shape[-rank - 1] != self.in_channels:
            raise ValueError(f"input: expected {self.in_channels} channels (in_channels) in dim {x.ndim - rank - 1} "
                             f"of {layout}, got {x.shape[-rank - 1]} (shape {tuple(x.shape)})")
        unbatched = x.ndim == rank + 1
        return (x[None] if unbatched else x), unbatched

    def extra_repr(self):
        zeros, ones = (0,) * len(self.kernel_size), (1,) * len(self.kernel_size)
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != zeros:
            s += f", padding={self.padding!r}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.dilation != ones:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")


class Conv2d(_Conv):
    """Cross-correlation of an (N, C, H, W) or unbatched (C, H, W) input with
    `out_channels` filters of shape (in_channels/groups, kh, kw), as
    torch.nn.Conv2d: output size floor((H + 2p - d(k-1) - 1)/s) + 1 per axis.
    weight (out_channels, in_channels/groups, kh, kw), bias (out_channels,)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
                    device, dtype, checks.pair)

    @classmethod
    def with_parameters(cls, weight, bias, in_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1):
        """A Conv2d holding the given arrays (of one backend) as weight and bias,
        drawing no random initialisation: gpunet.nn.functional's conv2d."""
        conv = cls.__new__(cls)
        Module.__init__(conv)
        conv._setup(in_channels, weight.shape[0], kernel_size, stride, padding, dilation, groups, bias is not None,
                    "zeros", None, None, checks.pair, parameters=(weight, bias))
        return conv

    def forward(self, input):
        xb, unbatched = self._input(input, "(N, C, H, W) or (C, H, W)")
        y, ctx = self._conv(self.backend.xp.ascontiguousarray(xb))
        self.save(ctx, unbatched, y.shape)
        return y[0] if unbatched else y

    def backward(self, dy):
        ctx, unbatched, y_shape = self.saved()
        _check_grad(self.backend, dy, y_shape[1:] if unbatched else y_shape, self.dtype)
        dx = self._conv_backward(ctx, dy[None] if unbatched else dy)
        return dx[0] if unbatched else dx


class Conv1d(_Conv):
    """Cross-correlation of an (N, C, L) or unbatched (C, L) input with
    `out_channels` filters of shape (in_channels/groups, kernel_size), as
    torch.nn.Conv1d: output length floor((L + 2p - d(k-1) - 1)/s) + 1;
    padding 'same' (stride 1) and 'valid', every padding_mode, as Conv2d.
    weight (out_channels, in_channels/groups, kernel_size), bias (out_channels,).
    Runs Conv2d's path (the im2col/col2im kernels on sim and cuda) on the
    input viewed as (N, C, 1, L) and the weight as (out, in/groups, 1, k)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
                    device, dtype, lambda v, name, minimum: (_single(v, name, minimum),))

    def forward(self, input):
        xb, unbatched = self._input(input, "(N, C, L) or (C, L)")
        y, ctx = self._conv(self.backend.xp.ascontiguousarray(xb[:, :, None, :]))
        y = y[:, :, 0]
        self.save(ctx, unbatched, y.shape)
        return y[0] if unbatched else y

    def backward(self, grad_output):
        ctx, unbatched, y_shape = self.saved()
        _check_grad(self.backend, grad_output, y_shape[1:] if unbatched else y_shape, self.dtype)
        dy = grad_output[None] if unbatched else grad_output
        dx = self._conv_backward(ctx, dy[:, :, None, :])
        return dx[0, :, 0] if unbatched else dx[:, :, 0]


class ConvTranspose2d(Module):
    """The transposed convolution of an (N, Cin, H, W) or unbatched (Cin, H, W)
    input, as torch.nn.ConvTranspose2d: the gradient of a Conv2d with respect
    to its input, output size (H-1)s - 2p + d(k-1) + output_padding + 1 per
    axis (or forward's `output_size`). weight (in_channels,
    out_channels/groups, kh, kw), bias (out_channels,). Only
    padding_mode='zeros' (PyTorch has no other for it). On sim and cuda
    forward is GEMM + the col2im kernel, backward the im2col kernel + GEMMs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = _channels(in_channels, out_channels, groups)
        self.kernel_size = checks.pair(kernel_size, "kernel_size")
        self.stride = checks.pair(stride, "stride")
        self.padding = checks.pair(padding, "padding", minimum=0)
        self.output_padding = checks.pair(output_padding, "output_padding", minimum=0)
        self.dilation = checks.pair(dilation, "dilation")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode: ConvTranspose2d supports only 'zeros' (as PyTorch), got {padding_mode!r}")
        self.padding_mode = padding_mode
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(f"output_padding: expected each entry smaller than stride or dilation, "
                                 f"got output_padding={self.output_padding}, stride={self.stride}, "
                                 f"dilation={self.dilation}")
        shape = (in_channels, out_channels // groups) + self.kernel_size
        self.weight = Parameter(init.default_weight(shape, self.dtype))
        fan_in = shape[1] * shape[2] * shape[3]  # PyTorch's: weight.size(1) * kh * kw
        self.bias = Parameter(init.fan_in_uniform((out_channels,), fan_in, self.dtype)) if bias else None
        self._place(device, dtype)

    def _output_padding(self, x_shape, output_size):
        """output_padding, or the one that gives `output_size` ((H, W), or with the
        leading (N, C)/(C) dims of the output), as PyTorch."""
        if output_size is None:
            return self.output_padding
        size = tuple(int(v) for v in output_size)
        if len(size) == len(x_shape):
            size = size[-2:]
        if len(size) != 2:
            raise ValueError(f"output_size: expected 2 (or {len(x_shape)}) entries, got {tuple(output_size)}")
        pads = []
        for axis, want in enumerate(size):
            low = ops_t.out_size(x_shape[-2 + axis], self.kernel_size[axis], self.stride[axis], self.padding[axis],
                                 0, self.dilation[axis])
            if not low <= want < low + self.stride[axis]:
                raise ValueError(f"output_size: expected each size in [{low}, {low + self.stride[axis] - 1}] for "
                                 f"input shape {tuple(x_shape)}, got {size}")
            pads.append(want - low)
        return tuple(pads)

    def forward(self, input, output_size=None):
        be = self.backend
        checks.array(be, input, "input", ndim=(3, 4), dtype=self.dtype)
        if input.shape[-3] != self.in_channels:
            raise ValueError(f"input: expected {self.in_channels} channels (in_channels) in dim {input.ndim - 3} "
                             f"of (N, C, H, W) or (C, H, W), got {input.shape[-3]} (shape {tuple(input.shape)})")
        output_padding = self._output_padding(input.shape, output_size)
        out = [ops_t.out_size(input.shape[-2 + a], self.kernel_size[a], self.stride[a], self.padding[a],
                              output_padding[a], self.dilation[a]) for a in (0, 1)]
        if min(out) < 1 or min(input.shape[-2:]) < 1:
            raise ValueError(f"input: expected a non-empty image giving a non-empty output, got input shape "
                             f"{tuple(input.shape)} and output size {tuple(out)}")
        unbatched = input.ndim == 3
        x = be.xp.ascontiguousarray(input[None] if unbatched else input)
        y, ctx = ops_t.conv_transpose2d_forward(be, x, self.weight.data, None if self.bias is None else self.bias.data,
                                                self.stride, self.padding, output_padding, self.dilation, self.groups)
        self.save(ctx, unbatched, y.shape)
        return y[0] if unbatched else y

    def backward(self, grad_output):
        ctx, unbatched, y_shape = self.saved()
        be = self.backend
        _check_grad(be, grad_output, y_shape[1:] if unbatched else y_shape, self.dtype)
        dx, dw, db = ops_t.conv_transpose2d_backward(be, ctx, grad_output[None] if unbatched else grad_output)
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx[0] if unbatched else dx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")
