"""Linear (fully connected) layer."""
from .. import checks
from ..ops import linear as ops
from . import init
from .module import Module, Parameter


class Linear(Module):
    """y = x W^T + b, W of shape (out_features, in_features) as in PyTorch.
    Input (..., in_features); output (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features = checks.positive_int(in_features, "in_features")
        self.out_features = checks.positive_int(out_features, "out_features")
        self.weight = Parameter(init.default_weight((out_features, in_features), self.dtype))
        self.bias = Parameter(init.fan_in_uniform((out_features,), in_features, self.dtype)) if bias else None
        self._place(device, dtype)

    def forward(self, input):
        be = self.backend
        checks.array(be, input, "input", dtype=self.dtype)
        if input.ndim == 0 or input.shape[-1] != self.in_features:
            raise ValueError(f"input: expected last dimension in_features={self.in_features}, got shape {tuple(input.shape)}")
        y, x2 = ops.linear_forward(be, input, self.weight.data, None if self.bias is None else self.bias.data)
        self.save(x2, tuple(y.shape))
        return y

    def backward(self, dy):
        x2, out_shape = self.saved()
        checks.array(self.backend, dy, "grad_output", dtype=self.dtype, finite=False)
        if tuple(dy.shape) != out_shape:
            raise ValueError(f"grad_output: expected the output's shape {out_shape}, got {tuple(dy.shape)}")
        dx, dw, db = ops.linear_backward(self.backend, x2, self.weight.data, self.bias is not None, dy,
                                         self.needs_input_grad())
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
