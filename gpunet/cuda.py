"""torch.cuda's everyday names. "cuda" is the backend gpunet.backend.cuda_name()
picks: the CUDA kernels, or the simulator/CuPy when GPUNET_DEVICE says so."""
from . import backend as _backend
from .devices import gpu_available as is_available, gpu_count as device_count
from .random import manual_seed, manual_seed as manual_seed_all

__all__ = ["current_device", "device_count", "is_available", "manual_seed", "manual_seed_all", "synchronize"]


def current_device() -> int:
    return 0


def synchronize(device=None):
    """Wait for the GPU's queued work (torch.cuda.synchronize)."""
    _backend.synchronize("cuda" if device is None else device)
