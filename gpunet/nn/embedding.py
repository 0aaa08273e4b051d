"""Embedding: a lookup table of learnable vectors indexed by integer ids."""
import numpy as np

from .. import checks
from ..ops import embedding as ops
from . import init
from .module import Module, Parameter


class Embedding(Module):
    """weight (num_embeddings, embedding_dim), initialised N(0, 1) as in PyTorch.
    forward(input: integer array of any shape) -> input.shape + (embedding_dim,).
    padding_idx (may be negative, counted from the end): that row starts at zero
    and never receives a gradient. backward(d_output) accumulates the weight
    gradient (deterministically, see gpunet.ops.embedding) and returns None:
    integer indices have no gradient."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None):
        super().__init__()
        self.num_embeddings = checks.positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = checks.positive_int(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)) or \
                    not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx: expected an int in [-{num_embeddings}, {num_embeddings}), "
                                 f"got {padding_idx!r}")
            padding_idx = int(padding_idx) % num_embeddings
        self.padding_idx = padding_idx
        weight = init.normal((num_embeddings, embedding_dim), dtype=self.dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.weight = Parameter(weight)

    def forward(self, input):
        be = self.backend
        checks.array(be, input, "input", integer=True)
        # The range scan syncs a GPU, so there it follows the finite-check switch;
        # the kernels themselves never read out of bounds (such rows come out NaN).
        if input.size and checks.finite_checks_enabled(be):
            lo, hi = int(input.min()), int(input.max())
            if lo < 0 or hi >= self.num_embeddings:
                bad = lo if lo < 0 else hi
                raise ValueError(f"input: indices must lie in [0, {self.num_embeddings}) "
                                 f"(num_embeddings), got {bad}")
        out, flat = ops.embedding_forward(be, self.weight.data, input)
        self.save(flat, out.shape)
        return out

    def backward(self, grad_output):
        flat, shape = self.saved()
        checks.array(self.backend, grad_output, "grad_output", dtype=self.dtype, finite=False)
        if tuple(grad_output.shape) != tuple(shape):
            raise ValueError(f"grad_output: expected shape {tuple(shape)} (the output's), "
                             f"got {tuple(grad_output.shape)}")
        self.weight.accumulate(ops.embedding_backward(self.backend, flat, grad_output, self.num_embeddings,
                                                      self.padding_idx))
        return None

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")
