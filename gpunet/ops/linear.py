"""Fully connected layer y = x W^T + b (PyTorch layout: W is (out, in)).
The GEMMs go to BLAS (NumPy) or cuBLAS (CuPy); the bias add and the bias
gradient reduction are kernels on the "kernel" dispatch path (sim, cuda;
float32), array code otherwise."""
from ..dispatch import path
from .half import float32_compute


def bias_add(be, y, b, route: str, inner: int = 1):
    """y (N, C, inner...) += b[C] broadcast over N and inner, in place;
    `route` is the calling op's dispatch path."""
    if route == "kernel":
        be.kernels.bias_add(y, b, inner, be.stream())
    else:
        shape = (1, -1) + (1,) * (y.ndim - 2)
        y += b.reshape(shape)
    return y


def bias_grad(be, dy, channels: int, route: str, inner: int = 1):
    """db[c] = sum of dy over every axis but the channel axis (axis 1)."""
    if route != "kernel":
        axes = (0,) + tuple(range(2, dy.ndim))
        return dy.sum(axis=axes)
    db = be.xp.empty(channels, dtype=dy.dtype)
    be.kernels.bias_grad(be.xp.ascontiguousarray(dy), db, inner, be.stream())
    return db


@float32_compute("linear", forward=True)
def linear_forward(be, x, w, b):
    """x (..., in) -> y (..., out). Leading axes are flattened into one GEMM."""
    x2 = x.reshape(-1, x.shape[-1])
    y = be.xp.matmul(x2, w.T)
    if b is not None:
        bias_add(be, y, b, path(be, "linear", x.dtype))
    return y.reshape(x.shape[:-1] + (w.shape[0],)), x2


@float32_compute("linear", forward=False)
def linear_backward(be, x2, w, has_bias: bool, dy):
    """Returns dx (shaped like dy with in features), dw, db (None without bias)."""
    dy2 = be.xp.ascontiguousarray(dy.reshape(-1, dy.shape[-1]))
    dx = be.xp.matmul(dy2, w).reshape(dy.shape[:-1] + (w.shape[1],))
    dw = be.xp.matmul(dy2.T, x2)
    db = bias_grad(be, dy2, w.shape[0], path(be, "linear", dy.dtype)) if has_bias else None
    return dx, dw, db
