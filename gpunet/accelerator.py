"""torch.accelerator: the GPU, or the backend standing in for it (see gpunet.devices)."""
from .devices import device, gpu_available as is_available, gpu_count as device_count

__all__ = ["current_accelerator", "device_count", "is_available"]


def current_accelerator(check_available: bool = False):
    """device("cuda") (resolved to the backend that runs) when one is available, else None."""
    return device("cuda") if is_available() else None
