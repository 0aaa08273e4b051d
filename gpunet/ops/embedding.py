"""Embedding lookup: out[n] = weight[idx[n]] and its deterministic backward.

The weight gradient sums the output gradients of every position that looked
up the same row. Float atomics would make that sum's order (and so its last
bits) vary run to run; instead the positions are sorted by row (a stable sort,
so positions of one row stay in input order) and each row sums its own
contiguous run in that fixed order: bit-identical gradients on every run.
cpu adds the runs level by level (_run_sums); sim/cuda pass the sorted order and a
CSR row pointer to a kernel (csrc/kernels/embedding.cu), and cupy passes them
to a CuPy RawKernel doing the same sums (ops/cupy_fused.py: CuPy's reduceat
subtracts prefix sums, which is neither exact nor run-ordered, and the unique()
the NumPy path needs would be a device sync).
"""
from ..backend import array_backend
from . import cupy_fused

# runs up to this long are summed level by level (one vectorised add per
# position in the run); the rest of a longer run goes through add.reduceat
_LEVELS = 16


def embedding_forward(be, weight, idx):
    """weight (V, D), idx integer array of any shape (already range-checked)
    -> out idx.shape + (D,), and the flat int64 indices backward needs."""
    be = array_backend(be, "embedding", weight.dtype)
    xp = be.xp
    flat = xp.ascontiguousarray(idx.reshape(-1), dtype=xp.int64)
    D = weight.shape[1]
    if be.kern is None:
        out = xp.take(weight, flat, axis=0)
    else:
        out = xp.empty((flat.size, D), dtype=weight.dtype)
        be.kern.embedding_forward(weight, flat, out, be.stream())
    return out.reshape(tuple(idx.shape) + (D,)), flat


def embedding_backward(be, flat, dy, num_embeddings, padding_idx=None):
    """d weight (V, D) from the flat indices and dy (..., D); the padding row
    (if any) gets zero."""
    be = array_backend(be, "embedding", dy.dtype)
    xp = be.xp
    D = dy.shape[-1]
    dy2 = xp.ascontiguousarray(dy.reshape(-1, D))
    order = xp.argsort(flat, kind="stable")
    rows = flat[order]
    if be.kern is None and be.name != "cupy":
        dw = xp.zeros((num_embeddings, D), dtype=dy.dtype)
        if flat.size:
            uniq, starts = xp.unique(rows, return_index=True)
            _add_runs(xp, dw, uniq, dy2, order, starts)
        if padding_idx is not None:
            dw[padding_idx] = 0
        return dw
    row_ptr = xp.searchsorted(rows, xp.arange(num_embeddings + 1, dtype=xp.int64)).astype(xp.int64)
    dw = xp.empty((num_embeddings, D), dtype=dy.dtype)
    pad = -1 if padding_idx is None else padding_idx
    if be.kern is None:
        cupy_fused.embedding_backward(dy2, order, row_ptr, dw, pad)
    else:
        be.kern.embedding_backward(dy2, order.astype(xp.int64), row_ptr, dw, pad, be.stream())
    return dw



def _add_runs(xp, dw, uniq, dy2, order, starts):
    """dw[uniq[r]] = sum of the dy2 rows order[starts[r]:starts[r+1]] (the last
    run ends at len(order)), added in that order like the kernel's loop. Level
    k adds the k-th row of every run that long in one vectorised step, reading
    dy2 in place (runs are mostly short, and add.reduceat along axis 0 is ~40x
    slower per row); rows past _LEVELS in a run go through add.reduceat."""
    lengths = xp.diff(starts, append=len(order))
    dw[uniq] = xp.take(dy2, order[starts], axis=0)
    live = xp.nonzero(lengths > 1)[0]
    for k in range(1, _LEVELS):
        live = live[lengths[live] > k]
        if not live.size:
            return
        dw[uniq[live]] += xp.take(dy2, order[starts[live] + k], axis=0)
    long = live[lengths[live] > _LEVELS]
    if long.size:
        tail = lengths[long] - _LEVELS
        offsets = xp.cumsum(tail) - tail
        rows = xp.repeat(starts[long] + _LEVELS - offsets, tail) + xp.arange(int(tail.sum()))
        dw[uniq[long]] += xp.add.reduceat(xp.take(dy2, order[rows], axis=0), offsets, axis=0)
