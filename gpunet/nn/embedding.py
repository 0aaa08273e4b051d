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
    integer indices have no gradient.
    max_norm: each row looked up whose norm_type-norm exceeds max_norm is
    rescaled to max_norm in place first (PyTorch's renorm, no gradient through
    it); scale_grad_by_freq divides each row's gradient by how often the batch
    used it; _weight gives the initial table, _freeze=True leaves it untrained.
    sparse=True is not supported (the gradient is always dense)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None, max_norm=None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False, _weight=None,
                 _freeze: bool = False, device=None, dtype=None):
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
        if sparse:
            raise NotImplementedError("sparse=True: gpunet has no sparse gradients; only sparse=False is supported")
        self.sparse = False
        self.max_norm = None if max_norm is None else checks.positive_float(max_norm, "max_norm")
        self.norm_type = checks.positive_float(norm_type, "norm_type")
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
        if _weight is None:
            weight = init.normal((num_embeddings, embedding_dim), dtype=self.dtype)
            if padding_idx is not None:
                weight[padding_idx] = 0
        else:
            weight = np.array(_weight, dtype=self.dtype)
            if weight.shape != (num_embeddings, embedding_dim):
                raise ValueError(f"_weight: expected shape {(num_embeddings, embedding_dim)}, got {weight.shape}")
        self.weight = Parameter(weight, requires_grad=not _freeze)
        self._place(device, dtype)

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
        if self.max_norm is not None:
            renorm_(self.backend.xp, self.weight.data, input, self.max_norm, self.norm_type)
        out, flat = ops.embedding_forward(be, self.weight.data, input)
        self.save(flat, out.shape)
        return out

    def backward(self, grad_output):
        flat, shape = self.saved()
        checks.array(self.backend, grad_output, "grad_output", dtype=self.dtype, finite=False)
        if tuple(grad_output.shape) != tuple(shape):
            raise ValueError(f"grad_output: expected shape {tuple(shape)} (the output's), "
                             f"got {tuple(grad_output.shape)}")
        grad = ops.embedding_backward(self.backend, flat, grad_output, self.num_embeddings, self.padding_idx)
        if self.scale_grad_by_freq:
            counts = self.backend.xp.bincount(flat, minlength=self.num_embeddings)
            grad /= self.backend.xp.maximum(counts, 1).astype(grad.dtype)[:, None]
        self.weight.accumulate(grad)
        return None

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


def renorm_(xp, w, input, max_norm: float, norm_type: float):
    """Rows of w used by `input` with norm above max_norm scaled down to it, in
    place, as torch.embedding_renorm_ (same 1e-7 guard)."""
    rows = xp.unique(input.reshape(-1))
    norms = (xp.abs(w[rows]) ** norm_type).sum(axis=1) ** (1.0 / norm_type)
    scale = xp.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0).astype(w.dtype)
    w[rows] *= scale[:, None]
