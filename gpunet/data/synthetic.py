"""Synthetic tasks with known answers, for runs without downloaded data.

synthetic_cifar: CIFAR-10-shaped images (N, 3, S, S) whose class is the
orientation (5 angles) and colour (2 palettes) of a noisy sinusoidal grating
with random frequency and phase. Orientation under a random phase is not a
linear function of the pixels, so it takes a convolutional network to learn,
yet it is learnable to near 100%: a stand-in for CIFAR-10, not a benchmark.

digit_sequences: random digit strings and their sorted or reversed copies,
the classic small sequence-to-sequence tasks for attention.
"""
from __future__ import annotations

import numpy as np

_PALETTES = np.array([[1.0, 0.55, 0.1], [0.1, 0.55, 1.0]], dtype=np.float32)


def synthetic_cifar(n: int, image_size: int = 32, noise: float = 0.15, seed: int = 0):
    """(images float32 (n, 3, S, S) in [0, 1], labels int64 (n,) in 0..9)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    angle = (labels % 5) * (np.pi / 5) + rng.normal(0, 0.05, n)
    freq = rng.uniform(0.08, 0.2, n)  # cycles per pixel
    phase = rng.uniform(0, 2 * np.pi, n)
    coords = np.arange(image_size, dtype=np.float64)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    wave = np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None])
    colour = _PALETTES[labels // 5][:, :, None, None]
    images = 0.5 + 0.35 * wave[:, None] * colour + rng.normal(0, noise, (n, 3, image_size, image_size))
    return np.clip(images, 0, 1).astype(np.float32), labels.astype(np.int64)


def digit_sequences(n: int, length: int, task: str = "sort", seed: int = 0, vocab: int = 10):
    """(inputs int64 (n, length), targets int64 (n, length)): random digits in
    [0, vocab) and, per task, their sorted ('sort') or reversed ('reverse') copies."""
    if task not in ("sort", "reverse"):
        raise ValueError(f"task: expected 'sort' or 'reverse', got {task!r}")
    x = np.random.default_rng(seed).integers(0, vocab, (n, length))
    y = np.sort(x, axis=1) if task == "sort" else x[:, ::-1]
    return x.astype(np.int64), np.ascontiguousarray(y, dtype=np.int64)
