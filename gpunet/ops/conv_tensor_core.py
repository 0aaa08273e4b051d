"""Conv2d of float16 / bfloat16 arrays on tensor cores (csrc/kernels/conv_tensor_core.cu):
the tensor-core branch of gpunet.ops.conv on kernel backends (sim, cuda).

Forward, input gradient and weight gradient are each one implicit GEMM
launch (no column matrix in memory) with fp32 accumulators; the forward adds
the bias in its epilogue and the bias gradient is a per-channel fp32 sum.
Every output is rounded once to the storage dtype, as the float32_compute
path on cpu rounds its float32 results.
"""
from __future__ import annotations

from .. import dtypes
from .half import kernel_view

# The kernels index each GEMM extent with int32; every extent is at most the
# largest of the three arrays' element counts.
_MAX_EXTENT = 2**31 - 1


def takes(be, x, w, out_size: int) -> bool:
    """Whether the tensor-core kernels run this call: half storage on a
    kernel backend that has them, every GEMM extent below 2^31."""
    return (be.kernels is not None and dtypes.is_half(x.dtype) and hasattr(be.kernels, "conv_tc_forward")
            and max(x.size, w.size, out_size) <= _MAX_EXTENT)


def _window(g):
    return g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups


def forward(be, x, w, b, g):
    """y (N, O, OH, OW) of x (N, C, H, W), w (O, C/groups, kh, kw), b (O,) or
    None; returns y and the backward's saved arrays."""
    xp = be.xp
    x, w = xp.ascontiguousarray(x), xp.ascontiguousarray(w)
    b = None if b is None else xp.ascontiguousarray(b)
    y = xp.empty((x.shape[0], w.shape[0], g.oh, g.ow), dtype=x.dtype)
    kv = lambda a: kernel_view(be, a)  # noqa: E731
    be.kernels.conv_tc_forward(kv(x), kv(w), None if b is None else kv(b), kv(y), *_window(g), be.stream())
    return y, (x, w, b is not None, g)


def backward(be, saved, dy, input_grad: bool = True):
    """dx (None without input_grad), dw and db (None without bias) for the output gradient dy."""
    x, w, has_bias, g = saved
    xp = be.xp
    dy = xp.ascontiguousarray(xp.asarray(dy, dtype=x.dtype))
    dx, dw = (xp.empty_like(x) if input_grad else None), xp.empty_like(w)
    kv = lambda a: kernel_view(be, a)  # noqa: E731
    if input_grad:
        be.kernels.conv_tc_dgrad(kv(dy), kv(w), kv(dx), *_window(g), be.stream())
    be.kernels.conv_tc_wgrad(kv(x), kv(dy), kv(dw), *_window(g), be.stream())
    db = None
    if has_bias:
        db = xp.empty(w.shape[0], dtype=x.dtype)
        be.kernels.conv_tc_bias_grad(kv(dy), kv(db), be.stream())
    return dx, dw, db
