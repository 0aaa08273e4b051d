"""The process group: one per process, made from the MPI world by
`init_process_group()`, and the collectives on it.

Which transport carries a collective follows the array: NumPy arrays (cpu,
sim) go over MPI, CuPy arrays (cuda, cupy) over NCCL, whose communicator is
made on the first GPU collective (or at init with backend="nccl"). Every
public collective first all-gathers a 16-number signature of the call (which
collective, dtype, shape, op or root) over MPI, so ranks that disagree get a
ValueError naming each rank's call instead of a hang or garbage; the check is
one small message, cheap next to the data. DistributedDataParallel checks its
parameters once when it wraps a model and then skips it.

Failure: every collective has a timeout (DistributedTimeoutError), and an
exception that reaches the top of the program on any rank is printed and then
aborts the job (MPI_Abort), so the other ranks end too instead of waiting.
"""
from __future__ import annotations

import enum
import logging
import os
import sys

import numpy as np

from .mpi import MpiTransport, import_mpi

log = logging.getLogger("gpunet")
DEFAULT_TIMEOUT = 1800.0  # seconds, as PyTorch's default process group
_COLLECTIVES = ("barrier", "all_reduce", "broadcast", "all_gather", "reduce_scatter")
_SIGNATURE = 16  # numbers per call signature: collective, argument, dtype, ndim, up to 12 dims


class ReduceOp(enum.Enum):
    SUM = "sum"
    AVG = "avg"
    MAX = "max"
    MIN = "min"
    MEAN = "avg"  # an alias of AVG


def _reduce_op(op) -> ReduceOp:
    if isinstance(op, ReduceOp):
        return op
    if isinstance(op, str):
        key = op.lower()
        try:
            return ReduceOp("avg" if key == "mean" else key)
        except ValueError:
            pass
    raise ValueError(f"op: expected a ReduceOp or one of 'sum', 'mean', 'avg', 'max', 'min', got {op!r}")


class ProcessGroup:
    """The ranks of the MPI world, this process's place among them, and the transports."""

    def __init__(self, MPI, timeout: float):
        self.comm = MPI.COMM_WORLD.Dup()  # a communicator of its own: user MPI traffic never mixes in
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # the ranks on this node
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.timeout = timeout
        self.mpi = MpiTransport(self.comm, timeout)
        self.nccl = None
        self.device = None

    def transport(self, x):
        if isinstance(x, np.ndarray):
            return self.mpi
        if self.nccl is None:
            from .nccl import NcclTransport
            with x.device:  # the communicator and its stream belong to the GPU of the arrays
                self.nccl = NcclTransport(self.mpi, self.size, self.timeout, self.abort)
        return self.nccl

    def agree(self, what: str, x=None, arg: int = 0):
        """All-gather this call's signature; ValueError on every rank when they differ."""
        mine = np.zeros(_SIGNATURE, np.int64)
        mine[0], mine[1] = _COLLECTIVES.index(what), arg
        if x is not None:
            mine[2], mine[3] = ord(x.dtype.char), x.ndim
            dims = tuple(x.shape)[:_SIGNATURE - 4]
            mine[4:4 + len(dims)] = dims
        table = np.empty((self.size, _SIGNATURE), np.int64)
        self.mpi.all_gather(mine, table, f"{what} (the check that every rank makes the same call)").wait()
        if (table == table[0]).all():
            return
        calls = ", ".join(f"rank {r} {_describe(row)}" for r, row in enumerate(table))
        raise ValueError(f"{what}: the ranks disagree: {calls}; every rank must make the same collective call "
                         "with the same shape, dtype and arguments")

    def abort(self, message: str):
        print(f"gpunet.distributed: rank {self.rank}: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(1)


def _describe(row) -> str:
    what = _COLLECTIVES[int(row[0])]
    if what == "barrier":
        return "barrier()"
    shape = tuple(int(d) for d in row[4:4 + int(row[3])])
    arg = {"all_reduce": f", op {list(ReduceOp)[int(row[1])].name}", "broadcast": f", src {int(row[1])}",
           "reduce_scatter": f", op {list(ReduceOp)[int(row[1])].name}"}.get(what, "")
    return f"{what}({np.dtype(chr(int(row[2]))).name} {shape}{arg})"


# ---------------------------------------------------------------- the process's group
_group: ProcessGroup | None = None
_previous_excepthook = None


def init_process_group(backend: str | None = None, timeout: float = DEFAULT_TIMEOUT, device=None):
    """Join the MPI world started by `mpiexec -n N python script.py` (a plain
    `python script.py` is a world of one).

    backend: None or "mpi": host arrays over MPI, GPU arrays over NCCL from
      their first collective on; "nccl": also make the NCCL communicator now.
    timeout: seconds any collective may take before DistributedTimeoutError
      (NCCL: before the job is aborted).
    device: this rank's device, as `local_device(device)` picks it ("cuda":
      GPU `local_rank` of the node, made CuPy's current device);
      `local_device()` then names it for `.to()`.
    """
    global _group, _previous_excepthook
    if _group is not None:
        raise RuntimeError("init_process_group: the process group is already initialized "
                           "(destroy_process_group() first)")
    if backend not in (None, "mpi", "nccl"):
        raise ValueError(f"backend: expected None, 'mpi' or 'nccl', got {backend!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    group = ProcessGroup(import_mpi(), float(timeout))
    _share_cores(group.local_size)
    _group = group
    try:
        if device is not None or backend == "nccl":
            group.device = local_device(device or "cuda")
        if backend == "nccl":
            import cupy
            group.transport(cupy.empty(0))
    except BaseException:
        _group = None
        raise
    _previous_excepthook = sys.excepthook
    sys.excepthook = _abort_on_uncaught


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _share_cores(local_size: int):
    """N processes on a node get cores/N BLAS threads each (torchrun's habit),
    unless a thread count was set in the environment: two processes each
    running as many BLAS threads as there are cores trained the digits CNN 14
    times slower on 2 cores than with one thread each."""
    if local_size < 2 or any(v in os.environ for v in THREAD_VARIABLES):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("gpunet.distributed: %d processes share this node's %d cores; set OMP_NUM_THREADS=%d "
                    "(or pip install threadpoolctl) so their BLAS threads do not oversubscribe them",
                    local_size, cores, max(1, cores // local_size))
        return
    threadpool_limits(max(1, cores // local_size), user_api="blas")


def _abort_on_uncaught(exc_type, exc, tb):
    """An exception that ends one rank ends the job: print it, then MPI_Abort
    (the other ranks may be waiting in a collective this rank never joins)."""
    group = _group
    (_previous_excepthook or sys.__excepthook__)(exc_type, exc, tb)
    sys.stdout.flush()
    sys.stderr.flush()
    if group is not None and group.size > 1:
        group.abort(f"aborting the job after {exc_type.__name__} on this rank")


def destroy_process_group():
    """Leave the process group (MPI itself is finalized at interpreter exit)."""
    global _group
    group = _require("destroy_process_group")
    _group = None
    if sys.excepthook is _abort_on_uncaught:
        sys.excepthook = _previous_excepthook
    if group.nccl is not None:
        group.nccl.comm.destroy()
    group.comm.Free()


def is_available() -> bool:
    """Whether mpi4py (and so an MPI library) can be imported."""
    import importlib.util
    return importlib.util.find_spec("mpi4py") is not None


def is_initialized() -> bool:
    return _group is not None


def _require(what: str) -> ProcessGroup:
    if _group is None:
        import_mpi()  # without mpi4py, say how to install it first
        raise RuntimeError(f"{what}: the process group is not initialized; call "
                           "gpunet.distributed.init_process_group() first (and start with mpiexec -n N)")
    return _group


def get_rank() -> int:
    return _require("get_rank").rank


def get_world_size() -> int:
    return _require("get_world_size").size


def get_local_rank() -> int:
    """This process's rank among the ranks on its node (which GPU it takes)."""
    return _require("get_local_rank").local_rank


def local_device(device=None) -> str:
    """The device this rank trains on: `device` resolved ('auto' picks a
    backend) with a GPU backend given no index taking GPU `local_rank` (modulo
    the GPUs present), which becomes CuPy's current device (NCCL and the
    streams work there): 'cuda' -> 'cuda:1' on local rank 1. Without
    `device`, the one given to init_process_group (else 'cpu')."""
    group = _require("local_device")
    if device is None:
        return group.device or "cpu"
    from ..backend import get_backend
    be = get_backend(device)
    if be.on_gpu and isinstance(device, str) and ":" not in device:
        be = get_backend(f"{be.name}:{group.local_rank % _gpu_count()}")
    if be.on_gpu:
        be.xp.cuda.Device(be.index).use()
    return be.device


def _gpu_count() -> int:
    import cupy
    return cupy.cuda.runtime.getDeviceCount()


# ---------------------------------------------------------------- collectives
def _check_array(x, what: str):
    if not (isinstance(x, np.ndarray) or hasattr(type(x), "__cuda_array_interface__")):
        raise TypeError(f"{what}: x: expected a NumPy or CuPy array, got {type(x).__name__}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: x: expected a C-contiguous array (collectives work in place), "
                         f"got strides {x.strides} for shape {tuple(x.shape)}")


def _empty(x, shape):
    """An uninitialised array beside `x` (NumPy or CuPy)."""
    if isinstance(x, np.ndarray):
        return np.empty(shape, x.dtype)
    import cupy
    return cupy.empty(shape, x.dtype)


def _mean_after(x, op: ReduceOp, size: int, what: str):
    """(the op the transport runs, what to do after): a mean is a sum divided by the world size."""
    if op is not ReduceOp.AVG:
        return op.value, None
    if x.dtype.kind not in "fc":
        raise TypeError(f"{what}: op AVG needs a floating-point array, got {x.dtype}")

    def divide():
        x[...] /= size
    return "sum", divide


def _finish(work, async_op: bool):
    if async_op:
        return work
    work.wait()
    return None


def all_reduce(x, op=ReduceOp.SUM, async_op: bool = False):
    """Reduce `x` element-wise over all ranks, in place (sum, mean, max, min).
    With async_op=True returns a Work: `work.wait()` before using `x`."""
    group = _require("all_reduce")
    op = _reduce_op(op)
    _check_array(x, "all_reduce")
    how, then = _mean_after(x, op, group.size, "all_reduce")
    group.agree("all_reduce", x, list(ReduceOp).index(op))
    return _finish(group.transport(x).all_reduce(x, how, then), async_op)


def broadcast(x, src: int = 0, async_op: bool = False):
    """Copy rank `src`'s `x` into every rank's `x` (in place)."""
    group = _require("broadcast")
    _check_array(x, "broadcast")
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < group.size:
        raise ValueError(f"broadcast: src: expected a rank in [0, {group.size}), got {src!r}")
    group.agree("broadcast", x, int(src))
    return _finish(group.transport(x).broadcast(x, int(src)), async_op)


def all_gather(x):
    """Every rank's `x`, stacked: an array of shape (world_size, *x.shape)."""
    group = _require("all_gather")
    _check_array(x, "all_gather")
    group.agree("all_gather", x)
    out = _empty(x, (group.size,) + tuple(x.shape))
    group.transport(x).all_gather(x, out).wait()
    return out


def reduce_scatter(x, op=ReduceOp.SUM):
    """Reduce `x` over ranks and give rank r block r of it: `x`'s first axis is
    split into world_size equal blocks; returns shape (x.shape[0] // world_size, ...)."""
    group = _require("reduce_scatter")
    op = _reduce_op(op)
    _check_array(x, "reduce_scatter")
    if x.ndim == 0 or x.shape[0] % group.size:
        raise ValueError(f"reduce_scatter: x: the first axis must split into {group.size} equal blocks "
                         f"(one per rank), got shape {tuple(x.shape)}")
    group.agree("reduce_scatter", x, list(ReduceOp).index(op))
    shape = (x.shape[0] // group.size,) + tuple(x.shape[1:])
    out = _empty(x, shape)
    how, then = _mean_after(out, op, group.size, "reduce_scatter")
    group.transport(x).reduce_scatter(x, out, how, then).wait()
    return out


def barrier():
    """Wait until every rank has called barrier() (within the timeout)."""
    _require("barrier").agree("barrier")
