"""Dropout: zero each element with probability p while training."""
import numpy as np

from .. import checks
from ..ops import dropout as ops
from ..random import next_philox_offset
from .module import Module


class Dropout(Module):
    """Training: each element is zeroed with probability p and the kept ones
    are scaled by 1/(1-p), so the expectation is unchanged; p = 1 gives zeros.
    Eval (and p = 0): the identity. The mask is a pure function of
    (gpunet.manual_seed, how many numbers earlier dropout calls drew, element
    index), identical on every backend (see gpunet.ops.dropout). `inplace` is
    accepted for PyTorch compatibility; gpunet always writes a new array."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p: dropout probability has to be between 0 and 1, got {p!r}")
        self.p = float(p)
        self.inplace = bool(inplace)

    def forward(self, input):
        be = self.backend
        checks.array(be, input, "input", dtype=self.dtype)
        if not self.training or self.p == 0.0:
            self.save(None, input.shape)
            return input
        seed, offset = next_philox_offset(input.size)
        y, ctx = ops.dropout_forward(be, input, self.p, seed, offset)
        self.save(ctx, input.shape)
        return y

    def backward(self, grad_output):
        ctx, shape = self.saved()
        checks.array(self.backend, grad_output, "grad_output", dtype=self.dtype, finite=False)
        if tuple(grad_output.shape) != tuple(shape):
            raise ValueError(f"grad_output: expected shape {tuple(shape)} (the output's), "
                             f"got {tuple(grad_output.shape)}")
        if ctx is None:
            return grad_output
        return ops.dropout_backward(self.backend, ctx, grad_output)

    def extra_repr(self):
        return f"p={self.p}"
