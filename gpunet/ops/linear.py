"""Fully connected layer y = x W^T + b (PyTorch layout: W is (out, in)).
The GEMMs go to BLAS (NumPy) or cuBLAS (CuPy); the bias add and the bias
gradient reduction are kernels on the "kernel" dispatch path (sim, cuda;
float32), array code otherwise.

Half storage (bfloat16, float16) on kernel backends: `matmul` below takes
the half arrays, accumulates in float32 and rounds the product once (cuBLAS
with fp32 compute on cuda; sim computes it in float32, as cpu does), and the
bias kernels run on the half arrays (the sum in float32, rounded once). The
forward's bias is so added to the rounded product, as a GEMM then a bias
kernel do on the GPU: each output is within one rounding of cpu's (which
rounds the biased float32 sum once); outputs without bias agree bit for bit."""
import numpy as np

from .. import dtypes
from ..dispatch import path
from .half import float32_compute, kernel_view


def half_kernels(be, *args, **kwargs):
    """float32_compute's predicate: every half call of the GEMM layers runs on
    the kernel backends' half kernels."""
    return True


def route_of(be, op: str, dtype, **kwargs) -> str:
    """The dispatch path of a layer call; half arrays: the kernels where the
    backend has them (inside float32_compute only kernel backends see half
    arrays; a module's own glue, MultiheadAttention's, sees them on cpu too)."""
    if dtypes.is_half(dtype):
        return "kernel" if be.kernels is not None else "array"
    return path(be, op, dtype, **kwargs)


def matmul(be, a, b, out=None, out_dtype=None):
    """a @ b (be.xp.matmul broadcasting). Half arrays: float32 accumulation,
    the product rounded once to their dtype, or left in float32 with
    out_dtype=float32 (a sum over chunks rounds once at the end)."""
    xp = be.xp
    if not dtypes.is_half(a.dtype):
        return xp.matmul(a, b, out=out)
    if xp is np:  # sim: the float32 product of the half values
        y = xp.matmul(a.astype(np.float32), b.astype(np.float32))
    else:  # cuda: cuBLAS on the half arrays, fp32 compute
        y = xp.matmul(a, b)
    y = y.astype(out_dtype or a.dtype, copy=False)
    if out is None:
        return y
    out[...] = y
    return out


def bias_add(be, y, b, route: str, inner: int = 1):
    """y (N, C, inner...) += b[C] broadcast over N and inner, in place;
    `route` is the calling op's dispatch path."""
    if route == "kernel":
        be.kernels.bias_add(kernel_view(be, y), kernel_view(be, b), inner, be.stream())
    else:
        shape = (1, -1) + (1,) * (y.ndim - 2)
        y += b.reshape(shape)
    return y


def bias_grad(be, dy, channels: int, route: str, inner: int = 1):
    """db[c] = sum of dy over every axis but the channel axis (axis 1)."""
    if route != "kernel":
        if dtypes.is_half(dy.dtype):  # summed in float32, rounded once
            return bias_grad(be, dy.astype(np.float32), channels, route, inner).astype(dy.dtype)
        axes = (0,) + tuple(range(2, dy.ndim))
        return dy.sum(axis=axes)
    db = be.xp.empty(channels, dtype=dy.dtype)
    be.kernels.bias_grad(kernel_view(be, be.xp.ascontiguousarray(dy)), kernel_view(be, db), inner, be.stream())
    return db


@float32_compute("linear", forward=True, half_kernels=half_kernels)
def linear_forward(be, x, w, b):
    """x (..., in) -> y (..., out). Leading axes are flattened into one GEMM."""
    x2 = x.reshape(-1, x.shape[-1])
    y = matmul(be, x2, w.T)
    if b is not None:
        bias_add(be, y, b, route_of(be, "linear", x.dtype))
    return y.reshape(x.shape[:-1] + (w.shape[0],)), x2


@float32_compute("linear", forward=False, half_kernels=half_kernels)
def linear_backward(be, x2, w, has_bias: bool, dy, input_grad: bool = True):
    """Returns dx (shaped like dy with in features; None without
    input_grad), dw, db (None without bias)."""
    dy2 = be.xp.ascontiguousarray(dy.reshape(-1, dy.shape[-1]))
    dx = matmul(be, dy2, w).reshape(dy.shape[:-1] + (w.shape[1],)) if input_grad else None
    dw = matmul(be, dy2.T, x2)
    db = bias_grad(be, dy2, w.shape[0], route_of(be, "linear", dy.dtype)) if has_bias else None
    return dx, dw, db
