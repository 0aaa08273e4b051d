"""The MPI transport: collectives on host arrays (cpu, sim) through mpi4py.

Each collective starts nonblocking (MPI_Iallreduce, MPI_Ibcast, ...) and is
completed by polling MPI_Test against a deadline: a rank whose peer died, hangs
or called another collective raises DistributedTimeoutError instead of waiting
forever. MPI moves data only inside its calls, so polling spins for the first
millisecond, then yields the CPU between polls (other processes, the peer
among them on a shared machine, run; the transfer keeps going), and after
0.1 s of waiting (a peer still computing) sleeps 1 ms between polls.

MPI cannot cancel a started collective, so after a timeout the communicator is
unusable: the process-group layer ends the job (MPI_Abort) when the error
reaches the top of the program.
"""
from __future__ import annotations

import time

INSTALL_HINT = ("gpunet.distributed needs MPI through mpi4py: pip install mpi4py mpich "
                "(both are in gpunet's test extra), then start the processes with "
                "mpiexec -n N python script.py")


class DistributedTimeoutError(TimeoutError):
    """A collective did not complete within the process group's timeout."""


def import_mpi():
    """mpi4py's MPI module, or an ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return MPI


def wait_for(test, timeout: float, what: str, rank: int):
    """Call `test()` until it returns True; DistributedTimeoutError after `timeout` seconds."""
    start = time.monotonic()
    while not test():
        waited = time.monotonic() - start
        if waited > timeout:
            raise DistributedTimeoutError(
                f"{what} on rank {rank} did not complete within {timeout:g} s: another rank failed, hangs, or "
                "called a different collective (every rank must call the same collectives in the same order)")
        if waited > 0.1:
            time.sleep(1e-3)  # a long wait (a peer still computing): leave the CPU to it
        elif waited > 1e-3:
            time.sleep(0)  # yield, but keep polling: MPI moves the data only inside MPI_Test


class Work:
    """A started collective. `wait()` completes it (or times out), then runs
    `then` (e.g. the division of a mean) once; `is_completed()` does not block."""

    def __init__(self, test, what: str, timeout: float, rank: int, then=None, keep=()):
        self._test = test
        self._what = what
        self._timeout = timeout
        self._rank = rank
        self._then = then
        self._keep = keep  # the buffers MPI reads/writes, alive until completion
        self._done = False

    def is_completed(self) -> bool:
        if not self._done and self._test():
            self._finish()
        return self._done

    def wait(self):
        if not self._done:
            wait_for(self._test, self._timeout, self._what, self._rank)
            self._finish()

    def _finish(self):
        self._done = True
        self._keep = ()
        then, self._then = self._then, None
        if then is not None:
            then()


class MpiTransport:
    """Nonblocking MPI collectives on C-contiguous NumPy arrays."""

    name = "mpi"

    def __init__(self, comm, timeout: float):
        self.MPI = import_mpi()
        self.comm = comm
        self.rank = comm.Get_rank()
        self.timeout = float(timeout)
        self._ops = {"sum": self.MPI.SUM, "max": self.MPI.MAX, "min": self.MPI.MIN}

    def _work(self, request, what, keep, then=None) -> Work:
        return Work(request.Test, what, self.timeout, self.rank, then, keep)

    def all_reduce(self, x, op: str, then=None) -> Work:
        """In place: every rank's `x` becomes the element-wise reduction."""
        return self._work(self.comm.Iallreduce(self.MPI.IN_PLACE, x, op=self._ops[op]), "all_reduce", (x,), then)

    def broadcast(self, x, src: int) -> Work:
        return self._work(self.comm.Ibcast(x, root=src), "broadcast", (x,))

    def all_gather(self, x, out, what: str = "all_gather") -> Work:
        """out[r] = rank r's x."""
        return self._work(self.comm.Iallgather(x, out), what, (x, out))

    def reduce_scatter(self, x, out, op: str, then=None) -> Work:
        """out = block `rank` of the reduction of x over ranks (x's first axis split in world-size blocks)."""
        return self._work(self.comm.Ireduce_scatter_block(x, out, op=self._ops[op]), "reduce_scatter",
                          (x, out), then)
