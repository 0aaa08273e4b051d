"""The NCCL transport: collectives on GPU arrays (cuda, cupy) through CuPy's
`cupy.cuda.nccl`.

The communicator is built from a unique id that rank 0 draws and broadcasts
over MPI. Every collective runs on the transport's own stream after that
stream waits for the work already queued on the caller's current stream, so
DistributedDataParallel's bucket reductions overlap the rest of the backward;
`Work.wait()` makes the current stream wait for the collective (the host does
not block). A watchdog thread checks the queued collectives: one not finished
within the timeout aborts the NCCL communicator and ends the job, since a
stream-ordered collective cannot raise in the caller's thread.
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np

# ncclDataType_t and ncclRedOp_t values, from nccl.h (stable across NCCL 2.x)
NCCL_DTYPES = {"int8": 0, "uint8": 1, "int32": 2, "uint32": 3, "int64": 4, "uint64": 5,
               "float16": 6, "float32": 7, "float64": 8, "bfloat16": 9}
NCCL_OPS = {"sum": 0, "max": 2, "min": 3}
UNIQUE_ID_BYTES = 128


def import_nccl():
    """(cupy, cupy.cuda.nccl), or an ImportError saying what is missing."""
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError as e:
        raise ImportError("collectives on GPU arrays need CuPy with NCCL: pip install gpunet[cuda12] "
                          "(or gpunet[cuda13]); NCCL comes with the CuPy wheel's dependencies "
                          "(pip install nvidia-nccl-cu12 if it is missing)") from e
    return cupy, nccl


def nccl_dtype(dtype) -> int:
    name = np.dtype(dtype).name
    if name not in NCCL_DTYPES:
        raise TypeError(f"NCCL collectives take {sorted(NCCL_DTYPES)}, got {name}")
    return NCCL_DTYPES[name]


class GpuWork:
    """A collective queued on the transport's stream; `wait()` orders the
    caller's current stream after it, then runs `then` (a mean's division) there."""

    def __init__(self, cupy, event, then=None, keep=()):
        self._cp = cupy
        self._event = event
        self._then = then
        self._keep = keep  # the arrays NCCL reads/writes, alive until the caller's stream waits
        self._waited = False

    def is_completed(self) -> bool:
        return bool(self._event.done)

    def wait(self):
        if self._waited:
            return
        self._cp.cuda.get_current_stream().wait_event(self._event)
        self._waited = True
        self._keep = ()
        then, self._then = self._then, None
        if then is not None:
            then()


class Watchdog:
    """Ends the job (`on_timeout(message)`, after aborting the NCCL communicator)
    when a queued collective is not done within `timeout` seconds. Collectives
    run in order on one stream, so the oldest pending one is the one to watch."""

    def __init__(self, comm, timeout: float, on_timeout, period: float = 0.1):
        self.comm = comm
        self.timeout = float(timeout)
        self.on_timeout = on_timeout
        self.period = period
        self.pending = collections.deque()
        self.lock = threading.Lock()
        self.thread = None

    def watch(self, event, what: str):
        with self.lock:
            self.pending.append((event, time.monotonic() + self.timeout, what))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="gpunet-nccl-watchdog", daemon=True)
                self.thread.start()

    def _run(self):
        while not self.check():
            time.sleep(self.period)

    def check(self) -> bool:
        """Drop finished collectives; True (after aborting) when the oldest is overdue."""
        with self.lock:
            while self.pending and self.pending[0][0].done:
                self.pending.popleft()
            if not self.pending or time.monotonic() <= self.pending[0][1]:
                return False
            what = self.pending[0][2]
        self.comm.abort()
        self.on_timeout(f"{what} on NCCL did not complete within {self.timeout:g} s: another rank failed, "
                        "hangs, or called a different collective; the NCCL communicator was aborted")
        return True


class NcclTransport:
    """Stream-ordered NCCL collectives on C-contiguous CuPy arrays of the current device."""

    name = "nccl"

    def __init__(self, mpi, size: int, timeout: float, on_timeout, modules=None):
        self.cp, self.nccl = modules if modules is not None else import_nccl()
        rank = mpi.rank
        uid = np.zeros(UNIQUE_ID_BYTES, np.int16)  # ncclUniqueId: 128 chars (CuPy gives them as ints)
        if rank == 0:
            uid[:] = self.nccl.get_unique_id()
        mpi.broadcast(uid, 0).wait()
        self.unique_id = tuple(int(v) for v in uid)
        self.comm = self.nccl.NcclCommunicator(size, self.unique_id, rank)
        self.stream = self.cp.cuda.Stream(non_blocking=True)
        self.watchdog = Watchdog(self.comm, timeout, on_timeout)

    def _launch(self, what: str, arrays: tuple, enqueue, then=None) -> GpuWork:
        self.stream.wait_event(self.cp.cuda.get_current_stream().record())
        enqueue(self.stream.ptr)
        done = self.stream.record()
        self.watchdog.watch(done, what)
        return GpuWork(self.cp, done, then, arrays)

    def all_reduce(self, x, op: str, then=None) -> GpuWork:
        p = x.data.ptr
        return self._launch("all_reduce", (x,), lambda s: self.comm.allReduce(
            p, p, x.size, nccl_dtype(x.dtype), NCCL_OPS[op], s), then)

    def broadcast(self, x, src: int) -> GpuWork:
        p = x.data.ptr
        return self._launch("broadcast", (x,), lambda s: self.comm.broadcast(
            p, p, x.size, nccl_dtype(x.dtype), src, s))

    def all_gather(self, x, out) -> GpuWork:
        return self._launch("all_gather", (x, out), lambda s: self.comm.allGather(
            x.data.ptr, out.data.ptr, x.size, nccl_dtype(x.dtype), s))

    def reduce_scatter(self, x, out, op: str, then=None) -> GpuWork:
        return self._launch("reduce_scatter", (x, out), lambda s: self.comm.reduceScatter(
            x.data.ptr, out.data.ptr, out.size, nccl_dtype(x.dtype), NCCL_OPS[op], s), then)
