"""The roofline: what each op must compute and move, and what the machine can
do, measured on the spot.

FLOP and byte models count float32 (4-byte) elements. "Bytes" is the fewest a
step must move between the processor and memory: every input read once, every
output written once, intermediates that the backward pass must read (saved
statistics, indices) counted once each way; caches are assumed to hold
nothing between kernels. A step's floor is max(FLOPs / peak FLOP rate,
bytes / memory bandwidth); results are reported as floor / measured time.

Ceilings:
  host  float32 GEMM (NumPy's BLAS; PyTorch's BLAS and oneDNN when installed:
        the largest) with the benchmark's thread count, and multi-threaded
        copies and in-place scalings of a buffer far larger than the
        last-level cache (bandwidth = 2 x size / time: one read, one write;
        the largest);
  GPU   CuPy float32 GEMM (cuBLAS, TF32 off) and a device-to-device copy of a
        large buffer, both timed with CUDA events.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

F32 = 4


# ---------------------------------------------------------------- op models
def linear_flops(m: int, k: int, n: int) -> float:
    """y = x W^T + b: (m, k) x (k, n)."""
    return 2.0 * m * k * n + m * n


def conv_out(size: int, k: int, stride: int = 1, pad: int = 0) -> int:
    return (size + 2 * pad - k) // stride + 1


def conv_flops(n, ci, co, ho, wo, kh, kw) -> float:
    """Direct convolution forward: one multiply-add per weight per output pixel."""
    return 2.0 * n * co * ho * wo * ci * kh * kw


def attention_flops(b, h, l, s, d, causal: bool, backward: bool) -> float:
    """QK^T and PV forward (4 b h l s d); backward dV, dP, dQ, dK (8 b h l s d)
    without recomputing the scores. Causal keeps the (l + 1) / 2l of the
    pairs on or below the diagonal (for l == s)."""
    pairs = b * h * l * s * ((l + 1) / (2 * l) if causal else 1.0)
    return pairs * d * (12 if backward else 4) + pairs * 5


def lstm_flops(t, n, i, h, backward: bool, gates: int = 4) -> float:
    """Input and recurrent GEMMs (2·gates·h (i + h) per row per step: 4 gates
    for the LSTM, 3 for the GRU) plus about 30 elementwise ops per hidden unit
    per step; backward twice the GEMMs."""
    gemm = 2.0 * t * n * gates * h * (i + h)
    cell = 30.0 * t * n * h
    return gemm * (3 if backward else 1) + cell * (2 if backward else 1)


def adam_bytes(params: int) -> float:
    """Read p, g, m, v; write p, m, v."""
    return 7.0 * F32 * params


ADAM_FLOPS_PER_PARAM = 12.0


# ---------------------------------------------------------------- ceilings
def _best(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def host_ceilings(threads: int, quick: bool, torch=None) -> dict:
    """Float32 GEMM rate and copy bandwidth with `threads` threads, best of a
    few: NumPy's (BLAS; a threaded copy), gpunet's host GEMM (with the
    compiled host loops) and, when given, PyTorch's (its BLAS, and oneDNN
    through a 1x1 convolution: either may use wider vector units than NumPy's
    BLAS), the largest of each."""
    n = 512 if quick else 2048
    reps = 2 if quick else 8
    size = (16 if quick else 512) * 2 ** 20
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    src = np.ones(size // F32, np.float32)
    dst = np.empty_like(src)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    parts = list(zip(bounds[:-1], bounds[1:]))
    with ThreadPoolExecutor(threads) as pool:  # NumPy releases the GIL in these loops
        copy_s = {"numpy copy": _best(lambda: list(pool.map(lambda p: np.copyto(dst[p[0]:p[1]], src[p[0]:p[1]]),
                                                            parts)), reps),
                  # in place: each line is read then written, so unlike a copy to
                  # fresh lines there is no hidden read-for-ownership of the target
                  "numpy in-place scale": _best(lambda: list(pool.map(
                      lambda p: np.multiply(src[p[0]:p[1]], 1.0, out=src[p[0]:p[1]]), parts)), reps)}
    flops = {"numpy": 2.0 * n ** 3 / _best(lambda: a @ a, reps)}
    from .. import hostlib
    from ..ops import linear
    if (lib := hostlib.load()) is not None:  # the cpu backend's own GEMM for its 2-D products
        y = np.empty_like(a)
        flops["gpunet"] = 2.0 * n ** 3 / _best(lambda: linear._host_gemm(lib, a, a, y, None), reps)
    if torch is not None:
        ta, tsrc, tdst = torch.from_numpy(a), torch.from_numpy(src), torch.from_numpy(dst)
        flops["torch"] = 2.0 * n ** 3 / _best(lambda: ta @ ta, reps)
        copy_s["torch copy"] = _best(lambda: tdst.copy_(tsrc), reps)
        # a 1x1 convolution is a GEMM that PyTorch hands to oneDNN, whose JIT
        # kernels may use wider vector units than either BLAS
        c, hw = n // 2, 16
        x = torch.from_numpy(rng.standard_normal((8, c, hw, hw), dtype=np.float32))
        w = torch.from_numpy(rng.standard_normal((c, c, 1, 1), dtype=np.float32))
        with torch.no_grad():
            flops["torch 1x1 conv"] = 2.0 * 8 * hw * hw * c * c / _best(lambda: torch.nn.functional.conv2d(x, w),
                                                                        reps)
    bandwidth = {k: 2.0 * size / t for k, t in copy_s.items()}
    return {"flops": max(flops.values()), "bandwidth": max(bandwidth.values()), "flops_by": flops,
            "bandwidth_by": bandwidth,
            "how": f"float32 {n}x{n}x{n} GEMM (NumPy, gpunet's host GEMM, PyTorch) and 1x1 convolution of "
                   f"(8, {n // 2}, 16, 16) (PyTorch/oneDNN); copy and in-place scale of {size >> 20} MiB (bandwidth = 2 x size / time); "
                   f"{threads} thread(s), best of {reps}; the largest of each"}


def _gpu_best(fn, reps: int) -> float:
    """Best time of `fn` in seconds, with CUDA events on the current stream."""
    import cupy
    fn()
    best = float("inf")
    for _ in range(reps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return best


def _gpu_gemm_rate(n: int, reps: int) -> float:
    import cupy
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    c = cupy.empty_like(a)
    return 2.0 * n ** 3 / _gpu_best(lambda: cupy.matmul(a, a, out=c), reps)


def _gpu_copy_bandwidth(size: int, reps: int) -> float:
    import cupy
    src = cupy.ones(size // F32, cupy.float32)
    dst = cupy.empty_like(src)
    rt = cupy.cuda.runtime
    return 2.0 * size / _gpu_best(lambda: rt.memcpyAsync(dst.data.ptr, src.data.ptr, size, rt.memcpyDeviceToDevice,
                                                         cupy.cuda.get_current_stream().ptr), reps)


def gpu_ceilings(quick: bool) -> dict:
    """cuBLAS float32 GEMM rate (TF32 off) and device-to-device copy bandwidth,
    timed with CUDA events (best of a few)."""
    import cupy
    n = 1024 if quick else 8192
    size = (64 if quick else 2048) * 2 ** 20
    reps = 3 if quick else 10
    flops, bandwidth = _gpu_gemm_rate(n, reps), _gpu_copy_bandwidth(size, reps)
    cupy.get_default_memory_pool().free_all_blocks()
    return {"flops": flops, "bandwidth": bandwidth,
            "how": f"cuBLAS float32 {n}x{n} GEMM via cupy.matmul (TF32 off); device-to-device memcpy of "
                   f"{size >> 20} MiB (2 x size / time); CUDA events, best of {reps}"}
