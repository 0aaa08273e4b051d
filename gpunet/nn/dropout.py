"""Dropout: zero each element with probability p while training."""
import warnings

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


class _ChannelDropout(Dropout):
    """Zero whole channels: each (sample, channel) pair is dropped with
    probability p and kept ones scaled by 1/(1-p), one draw per channel
    (gpunet.ops.dropout's stream over an (N, C) array of ones, broadcast over
    the channel's positions). `ndims`: the accepted input ranks, of which
    `unbatched` is read as (C, ...)."""

    ndims, unbatched = (2, 3), 2

    def forward(self, input):
        be = self.backend
        checks.array(be, input, "input", ndim=self.ndims, dtype=self.dtype)
        if not self.training or self.p == 0.0:
            self.save(None, input.shape)
            return input
        lead = input.shape[:1] if input.ndim == self.unbatched else input.shape[:2]
        ones = be.xp.ones(lead + (1,) * (input.ndim - len(lead)), dtype=input.dtype)
        seed, offset = next_philox_offset(ones.size)
        mask = ops.dropout_forward(be, ones, self.p, seed, offset)[0]
        self.save(mask, input.shape)
        return input * mask

    def backward(self, grad_output):
        mask, shape = self.saved()
        checks.array(self.backend, grad_output, "grad_output", dtype=self.dtype, finite=False)
        if tuple(grad_output.shape) != tuple(shape):
            raise ValueError(f"grad_output: expected shape {tuple(shape)} (the output's), "
                             f"got {tuple(grad_output.shape)}")
        return grad_output if mask is None else grad_output * mask


class Dropout1d(_ChannelDropout):
    """Channel dropout of (N, C, L) or unbatched (C, L) input, as torch.nn.Dropout1d."""


class Dropout2d(_ChannelDropout):
    """Channel dropout of (N, C, H, W) input, as torch.nn.Dropout2d; a 3-D input
    is read as (N, C, L), as torch does (with torch's warning)."""

    ndims, unbatched = (3, 4), None

    def forward(self, input):
        if getattr(input, "ndim", None) == 3:
            warnings.warn("Dropout2d: a 3-D input is read as (N, C, L) and gets 1-D channel-wise dropout "
                          "(torch's behaviour); use Dropout1d for that, or pass (N, C, H, W)", UserWarning,
                          stacklevel=5)  # the caller of m(x): through __call__ and the call record
        return super().forward(input)
