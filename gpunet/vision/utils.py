"""torchvision.utils.make_grid."""
from __future__ import annotations

import math

import numpy as np

from ..autograd.tensor import Tensor, tensor
from ..backend import to_numpy

__all__ = ["make_grid"]


def make_grid(tensor_or_list, nrow: int = 8, padding: int = 2, normalize: bool = False, value_range=None,
              scale_each: bool = False, pad_value: float = 0.0) -> Tensor:
    """A (C, H', W') image of the (B, C, H, W) images laid out `nrow` per row,
    `padding` pixels of `pad_value` around each (torchvision's layout)."""
    if isinstance(tensor_or_list, (list, tuple)):
        x = np.stack([to_numpy(t.detach()._data if isinstance(t, Tensor) else t) for t in tensor_or_list])
    else:
        t = tensor_or_list
        x = to_numpy(t.detach()._data) if isinstance(t, Tensor) else np.asarray(t)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[None] if x.shape[0] in (1, 3) else x[:, None]
    if x.ndim != 4:
        raise ValueError(f"make_grid: expected images (B, C, H, W), got shape {x.shape}")
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    x = x.astype(np.float32)
    if normalize:
        lo, hi = (x.min(), x.max()) if value_range is None else value_range
        x = (np.clip(x, lo, hi) - lo) / max(hi - lo, 1e-5)
    b, c, h, w = x.shape
    cols = min(nrow, b)
    rows = math.ceil(b / cols)
    hp, wp = h + padding, w + padding
    grid = np.full((c, rows * hp + padding, cols * wp + padding), pad_value, dtype=np.float32)
    for k in range(b):
        r, q = divmod(k, cols)
        grid[:, r * hp + padding:r * hp + padding + h, q * wp + padding:q * wp + padding + w] = x[k]
    return tensor(grid)
