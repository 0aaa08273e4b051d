"""Flatten: merge a range of dimensions into one (a reshape; no data moves)."""
from __future__ import annotations

import math

from .. import checks
from .module import Module


class Flatten(Module):
    """Merge dimensions start_dim..end_dim (inclusive, negative counts from the
    end) into one, as torch.nn.Flatten: (N, C, H, W) -> (N, C*H*W) by default.
    Backward reshapes the gradient back to the input's shape."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)

    def forward(self, input):
        be = self.backend
        checks.array(be, input, "input", finite=False)
        nd = max(input.ndim, 1)
        start, end = self.start_dim, self.end_dim
        if not (-nd <= start < nd and -nd <= end < nd) or start % nd > end % nd:
            raise ValueError(f"start_dim, end_dim: expected dimensions of the {input.ndim}-D input with "
                             f"start_dim <= end_dim, got start_dim={start}, end_dim={end}")
        start, end = start % nd, end % nd
        shape = tuple(input.shape)
        out_shape = (1,) if input.ndim == 0 else shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:]
        self.save(shape, out_shape)
        return be.xp.ascontiguousarray(input).reshape(out_shape)

    def backward(self, dy):
        shape, out_shape = self.saved()
        checks.array(self.backend, dy, "grad_output", finite=False)
        if tuple(dy.shape) != out_shape:
            raise ValueError(f"grad_output: expected the output's shape {out_shape}, got {tuple(dy.shape)}")
        return dy.reshape(shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
