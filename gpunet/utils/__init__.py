"""torch.utils's names: gpunet.utils.data."""
from . import data  # noqa: F401
