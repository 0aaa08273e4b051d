"""Mixed precision: `autocast` (gpunet/amp/autocast_mode.py, op lists in
gpunet/amp/lists.py) and `GradScaler` (gpunet/amp/grad_scaler.py), with
PyTorch's torch.amp API."""
from .autocast_mode import autocast, get_autocast_dtype, is_autocast_enabled
from .grad_scaler import GradScaler
from .options import add_dtype_argument, autocast_dtype

__all__ = ["autocast", "GradScaler", "get_autocast_dtype", "is_autocast_enabled", "add_dtype_argument",
           "autocast_dtype"]
