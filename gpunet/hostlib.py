"""The cpu backend's compiled helper: gpunet/_host/host_ops.c, float32 loops
NumPy cannot fuse (GELU, layer norm, Adam, softmax rows, batch norm, pooling,
ReLU forward and backward, the embedding backward, the LSTM's steps, the convolution's
im2col, col2im, direct forward and weight gradient, cross-entropy rows, the
inputs' NaN/inf scan: the list heads the C file) and the thread pool that
runs their ranges and OpenBLAS's threaded jobs (gpunet/ops/host_threads.py), compiled on first use with
the system C compiler (CC, else cc) into the per-user cache the sim backend
uses (gpunet.simbuild.cache_dir()) and loaded with ctypes.

`load()` returns the library, or None when GPUNET_HOST_KERNELS=0, when there
is no compiler or the compile fails: the NumPy array paths then run, as they
are the same computation (tests/test_host_ops.py holds both to the same
float64 references). The library is keyed by a hash of the source, the
compiler's version, the flags and the CPU's features (-march=native), so an
edit, another compiler or another CPU gets its own build; a file lock and a
write-then-rename make concurrent processes safe. The first compile prints
one line (about a second).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from . import simbuild

SOURCE = Path(__file__).resolve().parent / "_host" / "host_ops.c"
# no -ffast-math (it drops NaN/inf semantics); no contraction into FMAs, so
# every float32 operation rounds as NumPy's does. -fno-trapping-math changes
# no result (nothing here unmasks a floating-point exception): it lets GCC
# turn the clamps' selects into vector blends where the target has no mask
# registers; without it exp_f32's loops stay scalar on AVX2 (4x the time).
FLAGS = ["-std=c11", "-O3", "-march=native", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-fno-math-errno",
         "-fno-trapping-math"]

# pointers as plain addresses (c_void_p; None is NULL): a.ctypes.data once
# per array, offsets added as integers, is the cheapest way across
_F32P = _F64P = ctypes.c_void_p
_I64 = ctypes.c_int64
_F32 = ctypes.c_float
# the functions that return something (the rest: void)
_RESTYPES = {name: ctypes.c_int for name in ("gpunet_conv_direct_f32", "gpunet_gemm_f32", "gpunet_conv_direct_into_f32",
                                             "gpunet_conv_dw_pixels_f32",
                                             "gpunet_any_nonfinite_f32", "gpunet_any_nonfinite_f64", "gpunet_relu_f32",
                                             "gpunet_conv_dw_f32", "gpunet_pool_init", "gpunet_run_ranges",
                                             "gpunet_maxpool2d_forward_range_f32",
                                             "gpunet_maxpool2d_backward_range_f32", "gpunet_avgpool2d_range_f32",
                                             "gpunet_layer_norm_backward_range_f32", "gpunet_softmax_rows_f32",
                                             "gpunet_softmax_range_f32", "gpunet_layer_norm_forward_range_f32")}
_SIGNATURES = {
    "gpunet_exp_f32": [_F32P, _F32P, _I64],
    "gpunet_gelu_f32": [_F32P, _F32P, _F32P, _I64, _I64],
    "gpunet_gelu_derivative_f32": [_F32P, _F32P, _F32P, _F32P, _I64, _I64],
    # layer norm in the pool's call shape: rows [lo, hi) (eps's bits as int64); row blocks [lo, hi) of
    # `rows` rows, per-block partial sums (blocks, 2, c) in float64, returning 1 when out of memory
    "gpunet_layer_norm_forward_range_f32": [_F32P] * 6 + [_I64] * 4,
    "gpunet_layer_norm_backward_range_f32": [_F32P] * 6 + [_F64P] + [_I64] * 5,
    # Adam over tensors laid end to end: their table (int64), the shared and per-tensor coefficients,
    # the count, the mode, an element range
    "gpunet_adam_f32": [ctypes.c_void_p, _F32P, _F32P] + [_I64] * 4,
    "gpunet_softmax_rows_f32": [_F32P, _F32P, _I64, _I64, _F32, ctypes.c_int, ctypes.c_int, _I64, _I64],
    "gpunet_softmax_range_f32": [_F32P, _F32P] + [_I64] * 6,
    "gpunet_attention_ds_f32": [_F32P, _F32P, _F32P, _F32P, _I64, _I64, _I64, _F32],
    "gpunet_gelu_tanh_f32": [_F32P, _F32P, _I64, _I64],
    "gpunet_gelu_tanh_derivative_f32": [_F32P, _F32P, _F32P, _I64, _I64],
    "gpunet_batch_norm_stats_f32": [_F32P, _F32P, _F32P] + [_I64] * 5,
    "gpunet_batch_norm_forward_f32": [_F32P] * 5 + [_I64] * 5,
    "gpunet_batch_norm_backward_f32": [_F32P] * 6 + [_F64P] * 2 + [_I64] * 5,
    "gpunet_embedding_backward_f32": [ctypes.c_void_p] * 4 + [_I64] * 4,
    # gpunet/ops/linear.py's GEMM: A, B, bias or NULL, C, dims (M N K, A's, B's and C's strides, rows per
    # tile; int64 array), tile range; returns 1 when out of memory (_RESTYPES)
    "gpunet_gemm_f32": [_F32P] * 4 + [ctypes.c_void_p, _I64, _I64],
    # the LSTM's steps: the weights packed (forward: w_ih, w_hh, panels, H, I, R; backward: w_hh, panels, H;
    # then the block range), a step forward (g, x_t, h_prev, panels, b_ih + b_hh or NULL, c_prev, c, tanh_c,
    # h, dims: B H I R as int64) and backward (dg_next, panels, g, c_prev, tanh_c, dy, dc, dg, dc_prev, B, H),
    # each over a range of unit blocks
    "gpunet_lstm_pack_forward_f32": [_F32P] * 3 + [_I64] * 5,
    "gpunet_lstm_pack_backward_f32": [_F32P, _F32P] + [_I64] * 3,
    "gpunet_lstm_step_forward_f32": [_F32P] * 9 + [ctypes.c_void_p, _I64, _I64],
    "gpunet_lstm_step_backward_f32": [_F32P] * 9 + [_I64] * 4,
    # a whole layer without projection: the steps' arrays, dims (B H I H T), the parts' bounds, their count
    "gpunet_lstm_forward_f32": [_F32P] * 7 + [ctypes.c_void_p] * 2 + [_I64],
    "gpunet_lstm_backward_f32": [_F32P] * 9 + [ctypes.c_void_p] * 2 + [_I64],
    # the convolution's row-layout im2col/col2im: columns, geometry (int64 array), range
    "gpunet_im2col_rows_f32": [_F32P, _F32P, ctypes.c_void_p, _I64, _I64],
    "gpunet_col2im_rows_f32": [_F32P, _F32P, ctypes.c_void_p, _I64, _I64],
    # its direct forward: x, w, bias or NULL, y, geometry, range; returns 1
    # when its tile could not be allocated (_RESTYPES)
    "gpunet_conv_direct_f32": [_F32P, _F32P, _F32P, _F32P, ctypes.c_void_p, _I64, _I64],
    # the same into a strided output layout (int64: channel plane, row step, column step, offset), no bias
    "gpunet_conv_direct_into_f32": [_F32P, _F32P, _F32P, ctypes.c_void_p, ctypes.c_void_p, _I64, _I64],
    # pooling over planes [lo, hi): the arrays, the geometry's scalars (int64 array, host_ops.c's Q_ order);
    # 1 when a plane's scratch could not be allocated
    "gpunet_maxpool2d_forward_range_f32": [_F32P, _F32P, ctypes.c_void_p, ctypes.c_void_p, _I64, _I64],
    "gpunet_maxpool2d_backward_range_f32": [_F32P, ctypes.c_void_p, _F32P, ctypes.c_void_p, _I64, _I64],
    "gpunet_avgpool2d_range_f32": [_F32P, _F32P, ctypes.c_void_p, _I64, _I64],
    "gpunet_relu_f32": [_F32P, _F32P, _I64, _I64],
    "gpunet_relu_backward_f32": [_F32P, _F32P, _F32P, _I64, _I64],
    # gpunet/checks.py's NaN/inf scan of [lo, hi): 1 when one is found
    "gpunet_any_nonfinite_f32": [_F32P, _I64, _I64],
    "gpunet_any_nonfinite_f64": [_F64P, _I64, _I64],
    # the convolution's direct weight gradient: x in NHWC, dy, per-chunk partial sums, geometry, O, images per
    # chunk, whether x is zero-padded, chunk range; returns 1 when out of memory (_RESTYPES)
    "gpunet_conv_dw_f32": [_F32P, _F32P, _F32P, ctypes.c_void_p] + [_I64] * 5,
    "gpunet_conv_dw_pixels_f32": [_F32P, _F32P, _F32P, ctypes.c_void_p] + [_I64] * 4,
    # its channels-last, zero-padded x: x, xh, C, H, W, ph, pw, image range
    "gpunet_nchw_to_nhwc_f32": [_F32P, _F32P] + [_I64] * 7,
    # gpunet/ops/loss.py's cross-entropy rows [lo, hi): x, lse (m, 2), n, lo, hi; then the
    # gradient: x, lse, targets (int64), per-row a, ct, scale, dx, n, lo, hi
    "gpunet_cross_entropy_lse_f32": [_F32P, _F32P, _I64, _I64, _I64],
    "gpunet_cross_entropy_grad_f32": [_F32P, _F32P, ctypes.c_void_p] + [_F32P] * 4 + [_I64, _I64, _I64],
    # the thread pool (gpunet/ops/host_threads.py): its fork handler; a loop's ranges: fn, its int64
    # arguments, their count, the parts' bounds, their count, one int result per part; (OpenBLAS calls
    # run, workers started) into an int64 pair. gpunet_blas_run_jobs is OpenBLAS's callback.
    "gpunet_pool_init": [],
    "gpunet_run_ranges": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                          ctypes.c_void_p],
    "gpunet_pool_stats": [ctypes.c_void_p],
    "gpunet_pool_park": [],
}


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's feature flags where Linux lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_path(cc: str, version: str, environ=os.environ) -> Path:
    h = hashlib.sha256("\0".join([version, *FLAGS, _cpu_id()]).encode() + b"\0" + SOURCE.read_bytes())
    return simbuild.cache_dir(environ) / "host" / f"host_ops-{h.hexdigest()[:16]}.so"


def _compile(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with simbuild._locked(target.parent / "lock"):
        if target.exists():  # another process built it while this one waited
            return
        print(f"gpunet: compiling the cpu backend's host loops with {cc} into {target.parent} (about a second, once "
              "per source change)", file=sys.stderr, flush=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        try:
            done = subprocess.run([cc, *FLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True,
                                  timeout=120)
            if done.returncode != 0:
                raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def build(environ=os.environ):
    """Compile (when not cached) and load the library; None where it cannot be had."""
    if environ.get("GPUNET_HOST_KERNELS", "1") == "0":
        return None
    cc = shutil.which(environ.get("CC") or "cc", path=environ.get("PATH", os.defpath))
    if cc is None:
        return None
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        target = library_path(cc, cc + "\0" + (out.splitlines() or ["unknown"])[0], environ)
        if not target.exists():
            _compile(cc, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"gpunet: the cpu backend's host loops did not compile with {cc} ({e}); "
                      "using the NumPy paths", RuntimeWarning, stacklevel=2)
        return None
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, _RESTYPES.get(name)
    return lib


@functools.cache
def load():
    """The library of this process (built once), or None."""
    return build()


def for_float32(be, *arrays):
    """The library for an op of backend `be` on arrays that are all float32
    host arrays (None entries: absent operands), else None: where an op may
    take its compiled loop instead of its NumPy code (and an op's own
    conditions, a shape or an index range, come on top)."""
    if be.on_gpu or not all(a is None or getattr(a, "dtype", None) == "float32" for a in arrays):
        return None
    return load()


_BYTE = ctypes.c_char


def ptr(a) -> int | None:
    """The address of an array's first element (None for None). Through the
    buffer protocol for writable C-contiguous arrays (0.6 us; a.ctypes.data
    builds an object for 1.9 us, and a training step takes hundreds); others
    (read-only, strided, empty) through a.ctypes.data."""
    if a is None:
        return None
    try:
        return ctypes.addressof(_BYTE.from_buffer(a))
    except (TypeError, ValueError):
        return a.ctypes.data

