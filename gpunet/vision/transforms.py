"""torchvision.transforms' basic image transforms. An image is what the
gpunet.vision datasets return in place of a PIL image: a uint8 NumPy array,
(H, W) or (H, W, C)."""
from __future__ import annotations

import numpy as np

from ..autograd.tensor import Tensor, tensor

__all__ = ["Compose", "Lambda", "Normalize", "ToTensor"]


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self):
        return "Compose(" + "".join(f"\n    {t!r}" for t in self.transforms) + "\n)"


class ToTensor:
    """(H, W[, C]) uint8 in 0..255 -> float32 Tensor (C, H, W) in [0, 1];
    float images are only moved channel-first (as torchvision)."""

    def __call__(self, pic):
        a = np.asarray(pic)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise ValueError(f"ToTensor: expected an image of shape (H, W) or (H, W, C), got shape {a.shape}")
        a = a.transpose(2, 0, 1)
        a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        return tensor(np.ascontiguousarray(a))

    def __repr__(self):
        return "ToTensor()"


class Normalize:
    """(x - mean[c]) / std[c] per channel of a (..., C, H, W) Tensor."""

    def __init__(self, mean, std, inplace: bool = False):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(self.mean) != len(self.std):
            raise ValueError(f"Normalize: mean and std need one value per channel, got {len(self.mean)} "
                             f"and {len(self.std)}")
        if any(s == 0 for s in self.std):
            raise ValueError(f"Normalize: std must be non-zero, got {self.std}")

    def __call__(self, t):
        if not isinstance(t, Tensor) or t.ndim < 3:
            raise TypeError(f"Normalize: expected a Tensor of shape (..., C, H, W) (apply ToTensor first), "
                            f"got {type(t).__name__}")
        c = t.shape[-3]
        if len(self.mean) not in (1, c):
            raise ValueError(f"Normalize: {len(self.mean)} means for an image with {c} channels")
        shape = (-1, 1, 1)
        mean = np.asarray(self.mean, dtype=t.dtype).reshape(shape)
        std = np.asarray(self.std, dtype=t.dtype).reshape(shape)
        return (t - tensor(mean, device=t.device)) / tensor(std, device=t.device)

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


class Lambda:
    def __init__(self, lambd):
        if not callable(lambd):
            raise TypeError(f"Lambda: expected a callable, got {type(lambd).__name__}")
        self.lambd = lambd

    def __call__(self, img):
        return self.lambd(img)
