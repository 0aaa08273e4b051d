"""Threads for the host array paths.

NumPy's elementwise ufuncs and reductions run on one core, while PyTorch's
CPU ops (and OpenBLAS's GEMMs) use every thread they are given. NumPy
releases the GIL inside a ufunc loop, so the cpu backend's elementwise ops
split their rows over a small pool of threads and get the same cores.

Work is split on element (or row) boundaries into contiguous ranges, one per
thread; every element is computed by the same operations whatever the split,
so results do not depend on the thread count. Reductions across the ranges
(a parameter gradient's sum over rows) are done by the caller in a fixed order.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

# below this many elements per thread the hand-off costs more than it saves
MIN_PER_THREAD = 1 << 16
# the same for a compiled loop on the compiled pool (run_compiled: ~8 us a hand-off, not ~50) that spends an
# exp or more per element (about 1 ns): softmax and cross-entropy rows, GELU
MIN_PER_EXP_THREAD = 1 << 14

_lock = threading.Lock()
_state = {"threads": None, "pool": None, "default": None}


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API on this platform
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """Threads the host array paths use (default: the CPUs this process may
    run on, read at the first call, as PyTorch reads its count once: the
    system call cost about 1 us of every host loop's call)."""
    n = _state["threads"]
    if n is None:
        n = _state["default"]
        if n is None:
            n = _state["default"] = _default_threads()
    return n


def set_num_threads(n: int) -> None:
    """Use `n` threads (>= 1) for the host array paths, as torch.set_num_threads does for PyTorch's."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    with _lock:
        _state["threads"] = n
        if _state["pool"] is not None and _state["pool"]._max_workers != n - 1:
            _state["pool"].shutdown(wait=False)
            _state["pool"] = None


def _forget_pool():
    """In a forked child: the parent's pool threads do not exist there, and its CPUs may not be the child's."""
    _state["pool"] = _state["default"] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _pool(workers: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _state["pool"]
        if pool is None:
            pool = _state["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpunet-host")
        return pool


def ranges(n: int, unit: int = 1, min_per_thread: int = MIN_PER_THREAD) -> list[tuple[int, int]]:
    """[0, n) as contiguous (lo, hi) ranges, one per thread that gets at least
    `min_per_thread` elements, where each index stands for `unit` elements."""
    if n * unit < 2 * min_per_thread:  # one range whatever the thread count (most small calls)
        return [(0, n)]
    k = max(1, min(get_num_threads(), (n * unit) // max(min_per_thread, 1)))
    step = -(-n // k) if n else 1
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)] or [(0, 0)]


def run(fn, parts: list[tuple[int, int]]) -> list:
    """fn(lo, hi) for every part, the first in the calling thread and the rest
    in the pool; their results in order. An exception in any part is raised."""
    if len(parts) == 1:
        return [fn(*parts[0])]
    if (lib := _compiled_pool()) is not None:  # its workers, spinning after a call, would hold cores these need
        lib.gpunet_pool_park()
    futures = [_pool(get_num_threads() - 1).submit(fn, lo, hi) for lo, hi in parts[1:]]
    try:
        first = fn(*parts[0])
    finally:
        rest = [f.result() for f in futures]  # wait for every part even if the first raised
    return [first] + rest


@functools.cache
def _blas_controller():
    """threadpoolctl's handle on the BLAS libraries, or None without it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


@functools.cache
def _compiled_pool():
    """The compiled host library with its thread pool ready (host_ops.c, at
    its end), or None: no compiler, or no fork handler could be registered."""
    from .. import hostlib
    lib = hostlib.load()
    return lib if lib is not None and lib.gpunet_pool_init() == 0 else None


# Each calling thread's scratch for run_compiled: the loop's arguments, the
# parts' bounds and their int results, packed in one go (three fresh ctypes
# arrays and a cast of the function pointer took about 5 us of every call)
_SCRATCH_WORDS = 256
_scratch = threading.local()
_addresses: dict = {}


def pool_ready() -> bool:
    """Whether the compiled pool can take parts (a compiled loop that hands
    its own parts to it, as the LSTM's sequences do)."""
    return _compiled_pool() is not None


def run_compiled(fn, args, parts: list[tuple[int, int]]) -> list[int]:
    """fn(*args, lo, hi) for every part, fn a compiled host loop (hostlib)
    whose parameters are all pointers or int64 (addresses as ints, None for
    NULL): the parts in one foreign call on the compiled pool, the first on
    the calling thread. Returns each part's int result (meaningless where fn
    returns void). Without the pool: run() on the Python threads."""
    if len(parts) == 1:
        return [fn(*args, *parts[0])]
    lib = _compiled_pool()
    if lib is None:
        return run(lambda lo, hi: fn(*args, lo, hi), parts)
    known = _addresses.get(id(fn))  # (fn, its address): ctypes functions are not hashable
    if known is None or known[0] is not fn:
        known = _addresses[id(fn)] = (fn, ctypes.cast(fn, ctypes.c_void_p).value)
    address = known[1]
    nargs, nparts = len(args), len(parts)
    words = nargs + nparts + 1  # the arguments, then the bounds, then the results (an int in each word)
    # taken out while in use: a call made meanwhile on this thread (a finalizer's) gets a buffer of its own
    buf = _scratch.__dict__.pop("buf", None)
    if buf is None or len(buf) < words + nparts:
        buf = (ctypes.c_int64 * max(words + nparts, _SCRATCH_WORDS))()
    struct.pack_into(f"{words}q", buf, 0, *(0 if a is None else a for a in args), *(lo for lo, _ in parts),
                     parts[-1][1])
    base = ctypes.addressof(buf)
    failed = lib.gpunet_run_ranges(address, base, nargs, base + 8 * nargs, nparts, base + 8 * words)
    results = list(struct.unpack_from(f"{nparts}i", buf, 8 * words))
    _scratch.buf = buf
    if failed:
        raise ValueError(f"{fn.__name__}: {nargs} arguments before its range, more than the pool's calls take")
    return results


# OpenBLAS's callback for its parallel jobs; its symbol carries the build's affixes (NumPy's wheels:
# scipy_openblas_set_threads_callback_function64_)
_CALLBACK_SETTER = "openblas_set_threads_callback_function"
_AFFIXES = [(p, s) for p in ("", "scipy_") for s in ("", "64_", "_64")]


@functools.cache
def adopt_blas_jobs() -> bool:
    """Have OpenBLAS run its parallel jobs on gpunet's compiled pool
    (host_ops.c's gpunet_blas_run_jobs) instead of its own threads, which
    busy-wait about 0.1 s after every call, on the cores the host threads
    need next (2 threads on 2 cores, three runs each: the digits CNN's step
    10.1-13.7 ms against 14.7-19.3, the small ResNet's 90-120 against
    123-129; the char LSTM's and transformer's within the noise). Once per
    process, at the first host backend; needs an OpenBLAS with its own
    threads (not OpenMP) and the callback (0.3.27+), and the compiled host
    loops. Returns whether the pool took the jobs."""
    ctl, lib = _blas_controller(), _compiled_pool()
    if ctl is None or lib is None:
        return False
    adopted = False
    for blas in ctl.lib_controllers:
        if blas.internal_api != "openblas" or getattr(blas, "threading_layer", None) != "pthreads":
            continue
        setter = next((getattr(blas.dynlib, f"{p}{_CALLBACK_SETTER}{s}") for p, s in _AFFIXES
                       if hasattr(blas.dynlib, f"{p}{_CALLBACK_SETTER}{s}")), None)
        if setter is None:
            continue
        setter.argtypes, setter.restype = [ctypes.c_void_p], None
        setter(ctypes.cast(lib.gpunet_blas_run_jobs, ctypes.c_void_p))
        adopted = True
    return adopted


def pool_stats() -> tuple[int, int, int]:
    """(OpenBLAS calls the compiled pool ran, its worker threads, those asleep), for the tests."""
    out = (ctypes.c_int64 * 3)()
    _compiled_pool().gpunet_pool_stats(out)
    return out[0], out[1], out[2]


_blas_hold = {"depth": 0, "limiter": None}
_blas_lock = threading.Lock()


@contextlib.contextmanager
def _one_blas_thread(ctl):
    """BLAS held to one thread while any caller is inside (calls from several
    user threads at once: the first in limits it, the last out restores what
    it was, so overlapping calls cannot leave it at one)."""
    with _blas_lock:
        if _blas_hold["depth"] == 0:
            _blas_hold["limiter"] = ctl.limit(limits=1)
        _blas_hold["depth"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_hold["depth"] -= 1
            if _blas_hold["depth"] == 0:
                _blas_hold["limiter"].restore_original_limits()


def blas_held() -> bool:
    """Whether parts now run side by side with BLAS held to one thread
    (run_one_blas_each; gpunet.bench.gemm_ceiling tells their GEMMs apart)."""
    return _blas_hold["depth"] > 0


def run_one_blas_each(fn, parts: list[tuple[int, int]]) -> None:
    """run(fn, parts) for parts that call BLAS themselves, with BLAS held to
    one thread meanwhile (its own threads, busy-waiting between calls, would
    fight the host threads for the cores). A single part, or no threadpoolctl
    to hold BLAS: fn over the whole range on this thread, BLAS keeping its
    threads."""
    if len(parts) == 1 or (ctl := _blas_controller()) is None:
        fn(parts[0][0], parts[-1][1])
        return
    with _one_blas_thread(ctl):
        run(fn, parts)


def map_chunks(fn, chunks: list, unit: int) -> list:
    """[fn(c) for c in chunks], the chunks (each standing for about `unit`
    elements) shared out over the threads in contiguous runs; results in order."""
    done = run(lambda lo, hi: [fn(c) for c in chunks[lo:hi]], ranges(len(chunks), unit))
    return [r for part in done for r in part]
