"""Backends: where arrays live and which code computes on them.

    cpu   NumPy arrays, NumPy algorithms (the reference)
    sim   NumPy arrays, the hand-written CUDA kernels compiled for the CPU
          (gpunet._C_sim); test-only: it is how kernels are checked without a GPU
    cuda  CuPy arrays, the hand-written CUDA kernels (gpunet._C), cuBLAS GEMMs
    cupy  CuPy arrays, the reference algorithms run by CuPy (no extension)

A Backend states what it can do, and gpunet.dispatch.path decides from that,
per op call, which code runs; ops never test a backend's name:

    kernels        the compiled kernel module (gpunet._C_sim on sim, gpunet._C
                   on cuda), None on cpu and cupy
    kernel_dtypes  the dtypes those kernels take (float32; the half types of
                   gpunet.dtypes compute through gpunet.ops.half)
    fused          whether CuPy fusions can run (cupy, cuda): the hot spots of
                   the array path (activation backward, LSTM cell,
                   cross-entropy, optimizer updates, col2im, embedding
                   backward) as one CuPy-compiled kernel each, beside their op

So sim and cuda run the same Python glue, and sim tests cover the GPU code path.
Where a kernel backend has no kernel for a call (a dtype other than float32,
a head dim above the attention kernel's, BatchNorm, RMSprop/Rprop) the call
runs what a backend without kernels on the same arrays runs: on cuda the CuPy
fusion where the op has one, else the array path on CuPy, on the same GPU (as
the cupy backend does); on sim the array path on NumPy (as cpu does).
`fallbacks()` counts each such (op, reason) and a DEBUG log line names it.
GPU memory comes from CuPy's memory pool on cuda and cupy alike.
"""
from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import os
from collections import Counter

import numpy as np

from . import dtypes, simbuild

log = logging.getLogger("gpunet")
simbuild.install()  # gpunet._C_sim and _C_simcheck compile on first import (gpunet/simbuild.py)

NAMES = ("cpu", "sim", "cuda", "cupy")
_cache: dict[tuple[str, int], "Backend"] = {}
_fallbacks: Counter = Counter()


class Backend:
    """One backend on one device. Use `get_backend(device)`, not the constructor."""

    def __init__(self, name: str, index: int = 0):
        self.name = name
        self.index = index
        self.xp = np
        self.kernels = None
        self.kernel_dtypes = frozenset()
        self.fused = False
        if name == "sim":
            self.kernels = CountingKernels(_import_kernels(sim_module()))
        elif name in ("cuda", "cupy"):
            import cupy
            self.xp = cupy
            self.fused = True
            if name == "cuda":
                self.kernels = _import_kernels("gpunet._C")
        if self.kernels is not None:
            self.kernel_dtypes = frozenset({np.dtype(np.float32)})

    @property
    def device(self) -> str:
        return self.name if self.index == 0 or self.name in ("cpu", "sim") else f"{self.name}:{self.index}"

    @property
    def on_gpu(self) -> bool:
        return self.name in ("cuda", "cupy")

    def __repr__(self):
        return f"Backend({self.device!r})"

    # A Backend is a process-wide singleton holding modules: copies of a model
    # share it rather than trying to copy it.
    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return get_backend, (self.device,)

    def stream(self) -> int:
        """Pointer of the stream kernels launch on: CuPy's current stream (0 on sim)."""
        if self.on_gpu:
            return self.xp.cuda.get_current_stream().ptr
        return 0

    def use_device(self):
        """Context manager making this backend's GPU the current one (no-op on the host)."""
        if self.on_gpu:
            return self.xp.cuda.Device(self.index)
        return _NullContext()

    def synchronize(self):
        """Wait for all work queued on this backend's GPU, on every stream (as torch.cuda.synchronize);
        then raise any bad input a kernel reported meanwhile (gpunet.ops.device_errors)."""
        if self.on_gpu:
            with self.xp.cuda.Device(self.index):
                self.xp.cuda.runtime.deviceSynchronize()
        from .ops import device_errors
        device_errors.check(self)

    def owns(self, x) -> bool:
        """True when `x` is an array of this backend's kind (and device)."""
        if self.xp is np:
            return isinstance(x, np.ndarray)
        return isinstance(x, self.xp.ndarray) and x.device.id == self.index

    def asarray(self, x, dtype=None):
        """Move/convert `x` onto this backend (copies only when needed). `dtype`:
        anything gpunet.dtypes.resolve takes ("bfloat16", "half", np.float32, ...)."""
        dtype = None if dtype is None else dtypes.resolve(dtype)
        if _is_torch(x) and (self.xp is np or x.device.type == "cpu"):
            x = _torch_to_numpy(x)
        if self.xp is np:
            if not isinstance(x, np.ndarray) and hasattr(x, "get") and type(x).__module__.startswith("cupy"):
                x = x.get()
            return np.asarray(x, dtype=dtype, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        with self.xp.cuda.Device(self.index):
            if isinstance(x, self.xp.ndarray) and x.device.id != self.index:
                x = x.copy()  # CuPy's copy lands on the current device; asarray would keep it where it is
            return self.xp.asarray(x, dtype=dtype, order="C")


class CountingKernels:
    """The sim backend's kernel module behind a per-name call counter, so a
    test can tell that the kernels ran rather than an array path computing
    the same numbers (sim is test-only: the cuda backend calls gpunet._C
    directly)."""

    # the runtime's controls, not kernels: they must not count as kernel calls
    UNCOUNTED = frozenset({"schedule", "set_schedule", "set_workers", "device_count", "device_error", "reset_error"})

    def __init__(self, module):
        self._module = module
        self.calls: Counter = Counter()

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if not callable(attr) or name in self.UNCOUNTED:
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)
        setattr(self, name, counted)  # later look-ups skip __getattr__
        return counted


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _import_kernels(modname: str):
    return importlib.import_module(modname)


def sim_module() -> str:
    """The extension behind the sim backend: gpunet._C_sim, or with
    GPUNET_SIM_RACECHECK=1 gpunet._C_simcheck, the same kernels under the race
    and memory checker (csrc/sim/racecheck.cpp), where a hazard fails the launch."""
    return "gpunet._C_simcheck" if os.environ.get("GPUNET_SIM_RACECHECK", "0") not in ("", "0") else "gpunet._C_sim"


def _probe(name: str) -> tuple[bool, str]:
    """(available, reason) for one backend, without raising."""
    if name == "cpu":
        return True, f"NumPy {np.__version__}"
    if name == "sim":  # without compiling the module (that waits for its first use)
        ok, how = simbuild.probe(sim_module())
        if not ok:
            return False, f"extension {sim_module()} not built ({how})"
        return True, "CUDA kernels on the CPU through the bundled runtime (for tests)" + (
            "" if how == "built" else f"; {how}")
    ok, why, ndev = _probe_cupy()
    if name == "cupy":
        return ok, why
    try:
        kern = _import_kernels("gpunet._C")
    except ImportError as e:
        missing = f"extension gpunet._C not built (was nvcc on PATH at install time?) ({e})"
        return False, missing if ok else f"{why}; {missing}"
    if not ok:
        return False, why
    if kern.device_count() == 0:
        return False, f"gpunet._C sees no GPU ({kern.device_error()})"
    return True, f"gpunet._C kernels, {ndev} GPU(s)"


def _probe_cupy() -> tuple[bool, str, int]:
    """(usable, reason, GPU count) for CuPy, without raising."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install gpunet[cuda12] or gpunet[cuda13])", 0
    try:
        ndev = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CuPy imports without a GPU but cannot talk to one
        return False, f"CuPy {cupy.__version__} is installed but finds no GPU ({type(e).__name__}: {e})", 0
    if ndev == 0:
        return False, f"CuPy {cupy.__version__} is installed but finds no GPU", 0
    return True, f"CuPy {cupy.__version__}, {ndev} GPU(s)", ndev


def backends() -> dict[str, dict]:
    """Every backend with whether it is available here and why (not)."""
    out = {}
    for name in NAMES:
        ok, why = _probe(name)
        out[name] = {"available": ok, "reason": why}
    return out


def cuda_name() -> str:
    """The backend PyTorch's device name "cuda" means: the one GPUNET_DEVICE names
    when that is sim or cupy (the unchanged CUDA script then trains on the
    simulator or through CuPy), else cuda."""
    forced = os.environ.get("GPUNET_DEVICE", "").partition(":")[0]
    return forced if forced in ("sim", "cupy") else "cuda"


def _parse(device) -> tuple[str, int]:
    if isinstance(device, Backend):
        return device.name, device.index
    if not isinstance(device, str):
        raise TypeError(f"device: expected a string such as 'cpu', 'cuda' or 'cuda:1', got {type(device).__name__}")
    name, _, idx = device.partition(":")
    if name == "cuda":
        name = cuda_name()
    if name not in NAMES + ("auto",):
        raise ValueError(f"device: expected one of {', '.join(NAMES + ('auto',))} (optionally ':<index>'), got {device!r}")
    if idx and not idx.isdigit():
        raise ValueError(f"device: index after ':' must be a non-negative integer, got {device!r}")
    return name, int(idx or 0)


# glibc's mallopt parameters (malloc.h) and the values set: free memory kept at the top of the heap, and the
# size from which an allocation gets its own mapping (32 MiB: glibc's largest dynamic threshold on 64 bits)
_M_TOP_PAD, HEAP_TOP_PAD = -2, 64 << 20
_M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 32 << 20


@functools.cache
def _keep_freed_memory() -> bool:
    """Have glibc keep the memory of freed arrays for the next ones (once, at
    the first host backend). Without it glibc hands a step's freed arrays
    back to the system and the next step faults them back in page by page:
    4,400 minor faults per step of the bench's transformer, whose step took
    24 ms with them and 19.8 ms without (2 threads). So HEAP_TOP_PAD bytes
    stay at the top of the heap. Setting that turns glibc's dynamic mmap
    threshold off (mallopt(3)), which left every array from 128 KiB up in a
    mapping of its own, zeroed by the kernel when first written and unmapped
    when freed: the threshold is set to MMAP_THRESHOLD too (measured, 2
    threads: a 512x1024 softmax 784 -> 199 us; 40 small-ResNet steps, whole
    process, 0.85x the wall time, system time 1.06 -> 0.18 s). A process that
    sets MALLOC_TOP_PAD_ or MALLOC_MMAP_THRESHOLD_ itself keeps its own
    choice; other C libraries are left alone. Returns whether both were set."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL(None)
        padded = "MALLOC_TOP_PAD_" not in os.environ and bool(libc.mallopt(_M_TOP_PAD, HEAP_TOP_PAD))
        mapped = "MALLOC_MMAP_THRESHOLD_" not in os.environ and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
        return padded and mapped
    except (ValueError, OSError, AttributeError):  # no such confstr name, no libc handle, no mallopt
        return False


def get_backend(device="auto") -> Backend:
    """The Backend for a device string ('cpu', 'sim', 'cuda', 'cuda:1', 'cupy', 'auto').

    'auto' (and None) honour the GPUNET_DEVICE environment variable, then pick
    cuda, cupy, cpu in that order and log the choice and the reason.
    """
    if device is None:
        device = "auto"
    name, index = _parse(device)
    if name == "auto":
        forced = os.environ.get("GPUNET_DEVICE")
        if forced and forced != "auto":
            log.info("gpunet: GPUNET_DEVICE=%s forces the backend", forced)
            return get_backend(forced)
        for cand in ("cuda", "cupy", "cpu"):
            ok, why = _probe(cand)
            if ok:
                log.info("gpunet: auto picked backend %r: %s", cand, why)
                return get_backend(cand)
            log.info("gpunet: auto skipped backend %r: %s", cand, why)
    key = (name, index)
    if key not in _cache:
        ok, why = _probe(name)
        if not ok:
            raise RuntimeError(f"backend {name!r} is not available: {why}")
        be = Backend(name, index)
        if not be.on_gpu:
            _keep_freed_memory()
            from .ops import host_threads  # not at the top: gpunet.ops imports this module
            host_threads.adopt_blas_jobs()
        if be.on_gpu and index >= be.xp.cuda.runtime.getDeviceCount():
            raise ValueError(f"device: {device!r} asks for GPU {index}, but only "
                             f"{be.xp.cuda.runtime.getDeviceCount()} GPU(s) are present")
        _cache[key] = be
    return _cache[key]


_default: Backend | None = None  # torch.set_default_device's device; None: cpu


def set_default_device(device):
    """torch.set_default_device: where tensors made without a device
    (gpunet.tensor, zeros, randn, ...) and the parameters of modules
    constructed without one go. None restores cpu. The device must be
    available (checked here, not at the first tensor)."""
    global _default
    _default = None if device is None else get_backend(device)


def default_backend() -> Backend:
    """The Backend set_default_device named (cpu unless set)."""
    return _default if _default is not None else get_backend("cpu")


def backend_of(x) -> Backend:
    """The natural backend of an array: cpu for NumPy, cuda (else cupy) for CuPy."""
    if isinstance(x, np.ndarray):
        return get_backend("cpu")
    mod = type(x).__module__
    if mod.startswith("cupy"):
        name = "cuda" if _probe("cuda")[0] else "cupy"
        return get_backend(f"{name}:{x.device.id}")
    raise TypeError(f"expected a numpy.ndarray or cupy.ndarray, got {type(x).__module__}.{type(x).__name__}")


def asarray(x, device="cpu", dtype=None):
    """`x` (list, NumPy, CuPy, a PyTorch tensor, anything array-like) as an
    array of `device`'s backend, of `dtype` if given (a name such as
    "bfloat16", "float16"/"half", "float32", or a dtype: gpunet.bfloat16, np.float32)."""
    return get_backend(device).asarray(x, dtype=dtype)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _torch_to_numpy(t) -> np.ndarray:
    """A PyTorch tensor as a NumPy array of the same dtype; bfloat16 (which
    NumPy has only through ml_dtypes) through its bits, not through float32."""
    t = t.detach().cpu()
    if str(t.dtype) == "torch.bfloat16":
        import torch
        return t.view(torch.int16).numpy().view(dtypes.bfloat16)
    return t.numpy()


def to_numpy(x) -> np.ndarray:
    """A NumPy copy (or view, for NumPy input) of any backend array or scalar,
    or of a PyTorch tensor (bfloat16 kept: see _torch_to_numpy)."""
    if isinstance(x, np.ndarray):
        return x
    if _is_torch(x):
        return _torch_to_numpy(x)
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        out = x.get()
        from .ops import device_errors  # the copy synchronised: report bad input kernels found
        device_errors.check_gpu(x.device.id)
        return out
    return np.asarray(x)


def synchronize(device="auto"):
    """Wait for all work queued on `device`'s GPU (every stream); a no-op on the host backends."""
    get_backend(device).synchronize()


def fallback(be: Backend, op: str, reason: str):
    """Record that `op` on a kernel backend (sim, cuda) ran something other
    than its kernels, and log it at DEBUG. gpunet.dispatch.path calls this
    for every such decision, so no fallback is silent."""
    if be.kernels is None:
        return
    _fallbacks[(op, reason)] += 1
    log.debug("gpunet: %s op %s fell back to the array path: %s", be.name, op, reason)


def fallbacks() -> Counter:
    """How often each (op, reason) fell back from the kernels to the array path."""
    return Counter(_fallbacks)


def reset_fallbacks():
    _fallbacks.clear()
