"""Input validation shared by every op: each failure names the argument, what
was expected and what was received, and happens before any work is done."""
from __future__ import annotations

import numpy as np

from . import dtypes, hostlib
from .ops import host_threads

# NaN/Inf scans cost a pass over the data and, on a GPU, a device->host sync;
# they are on by default on host backends and opt-in on GPU ones.
_finite = {"host": True, "gpu": False}


def set_finite_checks(host: bool | None = None, gpu: bool | None = None):
    """Turn the NaN/Inf input scan on or off for host (cpu/sim) and GPU backends."""
    if host is not None:
        _finite["host"] = bool(host)
    if gpu is not None:
        _finite["gpu"] = bool(gpu)


def finite_checks_enabled(be) -> bool:
    """Whether data-dependent input scans (NaN/Inf, index ranges) run on `be`:
    they cost a device sync on a GPU, so there they are opt-in."""
    return _finite["gpu" if be.on_gpu else "host"]


def _kind(x) -> str:
    t = type(x)
    return f"{t.__module__}.{t.__name__}" if t.__module__ not in ("builtins",) else t.__name__


def array(be, x, name: str, *, ndim=None, dtype=None, finite: bool = True, integer: bool = False):
    """Check that `x` is an array of backend `be` with the given rank and dtype.

    ndim: an int or a tuple of allowed ints. dtype: the required floating dtype
    (usually the module's). integer=True instead requires an integer dtype.
    """
    if not be.owns(x):
        want = "numpy.ndarray" if be.xp is np else f"cupy.ndarray on GPU {be.index}"
        where = ""
        if hasattr(x, "__cuda_array_interface__"):
            dev = getattr(x, "device", None)  # CuPy: device.id; PyTorch: device.index
            where = f" on GPU {getattr(dev, 'id', getattr(dev, 'index', '?'))}"
        raise TypeError(f"{name}: expected a {want} for backend {be.device!r}, got {_kind(x)}{where}"
                        " (move it with gpunet.asarray(x, device=...))")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            shape = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name}: expected a {shape} array, got shape {tuple(x.shape)}")
    if integer:
        if x.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected an integer array (class indices), got dtype {x.dtype}")
        return x
    if dtype is not None and x.dtype != dtype:
        # suggest converting the module only to a dtype modules take
        hint = f" or the module with .to({x.dtype.name})" if x.dtype in (np.float32, np.float64) else ""
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {x.dtype} "
                        f"(convert it with .astype({np.dtype(dtype).name}){hint})")
    if finite:
        finite_values(be, x, name)
    return x


def finite_values(be, x, name: str):
    """The NaN/Inf scan of array(finite=True), where `be` runs its checks. An
    op whose compiled loop reads every input element anyway may instead scan
    as it reads (finite=False here) and call nonfinite_error when it found
    one, before it returns or writes anything but its fresh output."""
    if dtypes.is_floating(x.dtype) and finite_checks_enabled(be) and _any_nonfinite(be, x):  # (bfloat16's kind is "V")
        nonfinite_error(be, x, name)


def nonfinite_error(be, x, name: str):
    """Raise the error for a NaN or an infinity in `x`, counting them."""
    bad = int((~be.xp.isfinite(x)).sum())
    raise ValueError(f"{name}: contains {bad} NaN/Inf value(s) of {x.size}")


# below this many elements NumPy's scan is the quicker (no foreign call, no split)
SCAN_MIN_SIZE = 1 << 15


def _any_nonfinite(be, x) -> bool:
    """Whether x holds a NaN or an infinity: on the host, a contiguous float32
    or float64 array in the compiled read-only scan split over the host
    threads (NumPy's isfinite(x).all() writes and rereads a bool array on one
    core: 3x the time on a (2048, 3072) input); anything else through NumPy/CuPy."""
    scan = None
    if not be.on_gpu and x.size >= SCAN_MIN_SIZE and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous:
        lib = hostlib.load()
        scan = lib and (lib.gpunet_any_nonfinite_f32 if x.dtype == np.float32 else lib.gpunet_any_nonfinite_f64)
    if not scan:
        return not bool(be.xp.isfinite(x).all())
    return any(host_threads.run_compiled(scan, (hostlib.ptr(x),), host_threads.ranges(x.size)))


def same_shape(a, b, name_a: str, name_b: str):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_b}: expected the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")


def positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return int(v)


def positive_float(v, name: str) -> float:
    """A finite real number > 0 (NaN and inf refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not 0 < v < float("inf"):
        raise ValueError(f"{name}: expected a positive finite number, got {v!r}")
    return float(v)


def pair(v, name: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a 2-tuple of ints, each >= minimum, as a 2-tuple."""
    vals = (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else tuple(v) if isinstance(v, (tuple, list)) else None
    if vals is None or len(vals) != 2 or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a >= minimum for a in vals):
        raise ValueError(f"{name}: expected an int >= {minimum} or a pair of them, got {v!r}")
    return int(vals[0]), int(vals[1])
