"""The 8x8 handwritten digits bundled with scikit-learn (1,797 images, 10
classes, from the UCI optical-recognition set): a real image-classification
task that needs no download, small enough to train a CNN on a laptop CPU."""
from __future__ import annotations

import numpy as np

from .dataset import Subset, TensorDataset, random_split

INSTALL_HINT = "pip install scikit-learn  (or: pip install gpunet[examples])"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images, labels): float32 (1797, 1, 8, 8) scaled to [0, 1] (the raw
    pixels are counts 0..16) and int64 labels 0..9."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError(f"load_digits needs scikit-learn, which bundles the digits data: {INSTALL_HINT}") from e
    bunch = sk_load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images, labels


def digits_splits(val: float = 0.1, test: float = 0.2, seed: int = 0) -> tuple[Subset, Subset, Subset]:
    """Deterministic (train, val, test) splits of the digits as TensorDataset
    subsets; the same seed always gives the same split."""
    if not (0 <= val < 1 and 0 < test < 1 and val + test < 1):
        raise ValueError(f"val, test: expected fractions with val + test < 1, got val={val}, test={test}")
    images, labels = load_digits()
    return tuple(random_split(TensorDataset(images, labels), [1.0 - val - test, val, test], seed=seed))
