"""Data-parallel training across processes on MPI (host arrays) and NCCL (GPU arrays).

    mpiexec -n 2 python examples/digits_cnn.py --distributed

    from gpunet import distributed as dist
    dist.init_process_group()
    model = dist.DistributedDataParallel(model)      # parameters broadcast from rank 0
    loader = DataLoader(data, 32, sampler=dist.DistributedSampler(data, seed=0))

Importing gpunet never imports mpi4py; calling the API without it raises an
ImportError saying `pip install mpi4py mpich`.
"""
from .ddp import DistributedDataParallel
from .group import (DEFAULT_TIMEOUT, ReduceOp, all_gather, all_reduce, barrier, broadcast, destroy_process_group,
                    get_local_rank, get_rank, get_world_size, init_process_group, is_available, is_initialized,
                    local_device, reduce_scatter)
from .mpi import DistributedTimeoutError
from .sampler import DistributedSampler

__all__ = ["DEFAULT_TIMEOUT", "DistributedDataParallel", "DistributedSampler", "DistributedTimeoutError",
           "ReduceOp", "all_gather", "all_reduce", "barrier", "broadcast", "destroy_process_group",
           "get_local_rank", "get_rank", "get_world_size", "init_process_group", "is_available",
           "is_initialized", "local_device", "reduce_scatter"]
