"""Embedding lookup: out[n] = weight[idx[n]] and its deterministic backward.

The weight gradient sums the output gradients of every position that looked
up the same row. Float atomics would make that sum's order (and so its last
bits) vary run to run; instead the positions are sorted by row (a stable sort,
so positions of one row stay in input order) and each row sums its own
contiguous run in that fixed order: bit-identical gradients on every run.
On the host (float32) the compiled helper (gpunet/hostlib.py) adds each row's
positions in position order, which is that order with no sort (the kernels'
loop's; the NumPy path's too for runs up to _LEVELS long, whose longer runs
add their tail through add.reduceat), the rows of dw shared out over the
host threads.
The array path adds the runs level by level (_add_runs); the "kernel" path
(sim, cuda; half storage too, summed in float32 in the same order and rounded
once, so equal to cpu bit for bit) passes the sorted order and a CSR row
pointer to a kernel
(csrc/kernels/embedding.cu), and the "fused" path (CuPy) passes them to a
RawKernel doing the same sums (below: CuPy's reduceat subtracts prefix sums,
which is neither exact nor run-ordered, and the unique() the array path needs
would be a device sync).
"""
import numpy as np

from .. import dtypes, hostlib
from ..dispatch import path
from . import device_errors, host_threads
from .cupy_kernels import cupy, launch
from .half import float32_compute, kernel_view

# runs up to this long are summed level by level (one vectorised add per
# position in the run); the rest of a longer run goes through add.reduceat
_LEVELS = 16


def _half_kernels(be, *args, **kwargs):
    """Every half embedding call runs on the kernels (a gather; float32 sums)."""
    return True


@float32_compute("embedding", forward=True, half_kernels=_half_kernels)
def embedding_forward(be, weight, idx):
    """weight (V, D), idx integer array of any shape -> out idx.shape + (D,),
    and the flat int64 indices backward needs. The kernel path reports indices
    outside [0, V) through gpunet.ops.device_errors (the array path would
    raise IndexError or wrap negative ones: the module checks first there)."""
    xp = be.xp
    flat = xp.ascontiguousarray(idx.reshape(-1), dtype=xp.int64)
    D = weight.shape[1]
    if dtypes.is_half(weight.dtype) or path(be, "embedding", weight.dtype) == "kernel":  # half: a kernel backend's
        out = xp.empty((flat.size, D), dtype=weight.dtype)
        be.kernels.embedding_forward(kernel_view(be, xp.ascontiguousarray(weight)), flat, kernel_view(be, out),
                                     device_errors.flag(be), be.stream())
        device_errors.launched(be)
    else:
        out = xp.take(weight, flat, axis=0)
    return out.reshape(tuple(idx.shape) + (D,)), flat


@float32_compute("embedding", forward=False, half_kernels=_half_kernels)
def embedding_backward(be, flat, dy, num_embeddings, padding_idx=None):
    """d weight (V, D) from the flat indices and dy (..., D); the padding row
    (if any) gets zero."""
    xp = be.xp
    route = "kernel" if dtypes.is_half(dy.dtype) else path(be, "embedding", dy.dtype, fused=True)
    D = dy.shape[-1]
    dy2 = xp.ascontiguousarray(dy.reshape(-1, D))
    if route == "array" and (lib := _host_lib(be, dy2, flat, num_embeddings)) is not None:
        dw = np.empty((num_embeddings, D), np.float32)
        seen = np.zeros(num_embeddings, np.uint8)
        host_threads.run_compiled(lib.gpunet_embedding_backward_f32,
                                  (hostlib.ptr(flat), hostlib.ptr(dy2), hostlib.ptr(dw), hostlib.ptr(seen),
                                   flat.size, D),
                                  host_threads.ranges(num_embeddings, D))
        if padding_idx is not None:
            dw[padding_idx] = 0
        return dw
    order = xp.argsort(flat, kind="stable")
    rows = flat[order]
    if route == "array":
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
    if route == "kernel":
        be.kernels.embedding_backward(kernel_view(be, dy2), order.astype(xp.int64), row_ptr, kernel_view(be, dw), pad,
                                      be.stream())
    else:
        _fused_backward(dy2, order, row_ptr, dw, pad)
    return dw


def _host_lib(be, a, flat, num_embeddings: int):
    """The compiled host loops (gpunet/hostlib.py) for a float32 gradient `a`
    on the host whose indices all lie in [0, num_embeddings), else None (the
    NumPy path: negative indices wrap there, as in the forward's take). (The
    forward stays np.take: a compiled gather measured no faster.)"""
    if flat.dtype != np.int64 or not flat.flags.c_contiguous \
            or (flat.size and not 0 <= flat.min() <= flat.max() < num_embeddings):
        return None
    return hostlib.for_float32(be, a)


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


# dw[v, d] = sum of dy[order[k], d] for k in [row_ptr[v], row_ptr[v+1]), in
# order (the positions of row v, stably sorted); the padding row gets 0.
_BACKWARD_SOURCE = """
extern "C" __global__ void gpunet_embedding_backward(const T* dy, const long long* order, const long long* row_ptr,
                                                     T* dw, long long V, long long D, long long pad) {
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < V * D;
         idx += (long long)blockDim.x * gridDim.x) {
        const long long v = idx / D, d = idx % D;
        T acc = T(0);
        for (long long k = row_ptr[v]; k < row_ptr[v + 1]; ++k) acc += dy[order[k] * D + d];
        dw[idx] = v == pad ? T(0) : acc;
    }
}
"""


def _fused_backward(dy2, order, row_ptr, dw, pad: int):
    """Fill dw (V, D) from dy2 (n, D), the stable sort order of the flat indices
    and the CSR row pointer (V + 1) of the sorted rows (pad = -1 for none),
    one CuPy RawKernel thread per (row, feature) summing that row's run in order."""
    V, D = dw.shape
    launch("gpunet_embedding_backward", _BACKWARD_SOURCE, dw.dtype, V * D,
           (cupy().ascontiguousarray(dy2), order.astype(np.int64, copy=False), row_ptr.astype(np.int64, copy=False),
            dw, np.int64(V), np.int64(D), np.int64(pad)))
