"""Fully connected layer y = x W^T + b (PyTorch layout: W is (out, in)).
The GEMMs go to cuBLAS (CuPy) on the GPU; on the host a 2-D float32 product
goes to host_ops.c's GEMM (below), others to BLAS (NumPy). The bias add and
the bias gradient reduction are kernels on the "kernel" dispatch path (sim,
cuda; float32), array code otherwise (where the host GEMM adds the bias as
it starts each sum).

Half storage (bfloat16, float16) on kernel backends: `matmul` below takes
the half arrays, accumulates in float32 and rounds the product once (cuBLAS
with fp32 compute on cuda; sim computes it in float32, as cpu does), and the
bias kernels run on the half arrays (the sum in float32, rounded once). The
forward's bias is so added to the rounded product, as a GEMM then a bias
kernel do on the GPU: each output is within one rounding of cpu's (which
rounds the biased float32 sum once); outputs without bias agree bit for bit."""
import numpy as np

from .. import dtypes, hostlib
from ..dispatch import path
from . import host_threads
from .half import float32_compute, kernel_view

# Products of fewer multiply-adds go to NumPy's BLAS: the compiled call's
# hand-off (about 10 us) would cost more than its faster blocks save
HOST_GEMM_MIN_MACS = 1 << 20
# and below this many per thread the product stays on one
HOST_GEMM_MACS_PER_THREAD = 1 << 19
# A operands of more elements go to BLAS too: the host GEMM streams A once per
# 64-column panel (a transposed A, a weight gradient's dY^T, once per 4), where
# OpenBLAS keeps blocks of it in cache; at (6400, 2048) @ (2048, 512) it ran at
# 160-180 GFLOP/s here, OpenBLAS at 205
HOST_GEMM_MAX_A = 1 << 21
_PANEL, _ROWS = 64, 6  # host_ops.c's panel width and block height (PANEL_LANES, PANEL_ROWS)


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


def matmul(be, a, b, out=None, out_dtype=None, bias=None):
    """a @ b (be.xp.matmul broadcasting), plus `bias` on every row (not for
    half arrays). Half arrays: float32 accumulation, the product rounded
    once to their dtype, or left in float32 with out_dtype=float32 (a sum
    over chunks rounds once at the end)."""
    xp = be.xp
    if bias is not None and dtypes.is_half(a.dtype):
        raise ValueError("matmul: bias is added to float32 and float64 products only (half: add it after)")
    if not dtypes.is_half(a.dtype):
        if xp is np and (lib := _host_gemm_lib(be, a, b, out, bias)) is not None:
            return _host_gemm(lib, a, b, out, bias)
        y = xp.matmul(a, b, out=out)
        if bias is not None:
            y += bias
        return y
    if xp is np:  # sim: the float32 product of the half values
        y = xp.matmul(a.astype(np.float32), b.astype(np.float32))
    else:  # cuda: cuBLAS on the half arrays, fp32 compute
        y = xp.matmul(a, b)
    y = y.astype(out_dtype or a.dtype, copy=False)
    if out is None:
        return y
    out[...] = y
    return out


def _host_gemm_lib(be, a, b, out, bias):
    """The compiled library where the host GEMM takes a @ b: 2-D float32
    operands at element strides, an output (if any) with unit column stride
    that overlaps neither, and enough work. OpenBLAS ran the transformer's
    and char LSTM's products (M 512-1600, K 256-1600) at 183-206 GFLOP/s on
    2 cores here, the host GEMM at 202-220."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == 2 and b.ndim == 2):
        return None
    (m, k), n = a.shape, b.shape[1]
    if m * n * k < HOST_GEMM_MIN_MACS or m * k > HOST_GEMM_MAX_A or any(s % 4 for s in a.strides + b.strides):
        return None
    if bias is not None and (not isinstance(bias, np.ndarray) or bias.shape != (n,) or not bias.flags.c_contiguous):
        return None
    if out is not None and (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.strides[1] != 4
                            or out.strides[0] % 4 or out.strides[0] < 4 * n or np.may_share_memory(out, a)
                            or np.may_share_memory(out, b)):
        return None
    return hostlib.for_float32(be, a, b, out, bias)


def _host_gemm(lib, a, b, out, bias):
    """a @ b (+ bias) on host_ops.c's GEMM, its 64-column panels shared out
    over the threads where each gets 4 or more (or there are too few rows to
    share), else its rows (each thread then packs every panel, and reads
    only its rows of A: at N = 256 on 2 threads 200-205 GFLOP/s against
    185-190 with 2 panels each)."""
    (m, k), n = a.shape, b.shape[1]
    if out is None:
        out = np.empty((m, n), np.float32)
    panels = -(-n // _PANEL)
    threads = min(host_threads.get_num_threads(), max(1, m * n * k // HOST_GEMM_MACS_PER_THREAD))
    if threads == 1:
        mc, parts = m, [(0, panels)]
    elif panels % threads == 0 and (panels >= 4 * threads or m < 16 * _ROWS * threads):
        mc, step = m, panels // threads
        parts = [(lo, lo + step) for lo in range(0, panels, step)]
    else:
        mc = -(-m // threads // _ROWS) * _ROWS if m > threads * _ROWS else _ROWS
        parts = [(q * panels, (q + 1) * panels) for q in range(-(-m // mc))]
    dims = np.array([m, n, k, a.strides[0] // 4, a.strides[1] // 4, b.strides[0] // 4, b.strides[1] // 4,
                     out.strides[0] // 4, mc], np.int64)
    if any(host_threads.run_compiled(lib.gpunet_gemm_f32, (a.ctypes.data, b.ctypes.data, hostlib.ptr(bias),
                                                           hostlib.ptr(out), hostlib.ptr(dims)), parts)):
        raise MemoryError("matmul: no memory for the host GEMM's panel")
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
    route = route_of(be, "linear", x.dtype)
    y = matmul(be, x2, w.T, bias=b if route == "array" else None)
    if b is not None and route != "array":
        bias_add(be, y, b, route)
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
