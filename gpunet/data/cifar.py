"""Reader for the CIFAR-10 binary batches (cifar-10-batches-bin).

Each record is 3073 bytes: the label (0..9), then 1024 red, 1024 green and
1024 blue bytes, each plane a 32x32 image in row-major order. A batch file
holds 10,000 records (data_batch_1..5.bin for training, test_batch.bin).
"""
from __future__ import annotations

import os

import numpy as np

RECORD = 1 + 3 * 32 * 32
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_cifar10_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) from one binary batch."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) == 0 or len(raw) % RECORD:
        raise ValueError(f"{path}: {len(raw)} bytes is not a whole number of CIFAR-10 records "
                         f"({RECORD} bytes each: 1 label byte + 3x32x32 pixels)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CLASSES):
        bad = int(np.argmax(labels >= len(CLASSES)))
        raise ValueError(f"{path}: record {bad} has label {labels[bad]}; CIFAR-10 labels are 0..9 "
                         "(is this a CIFAR-100 file?)")
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def write_cifar10_batch(path, images: np.ndarray, labels: np.ndarray):
    """Write uint8 images (N, 3, 32, 32) and labels (N,) in the binary batch format."""
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels)
    if images.shape[1:] != (3, 32, 32) or len(images) != len(labels):
        raise ValueError(f"images, labels: expected (N, 3, 32, 32) and (N,), got {images.shape} and {labels.shape}")
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    with open(path, "wb") as f:
        f.write(records.tobytes())


def load_cifar10(root, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from the extracted cifar-10-batches-bin directory (or its
    parent): float32 images (N, 3, 32, 32) in [0, 1] and int64 labels."""
    if os.path.isdir(os.path.join(root, "cifar-10-batches-bin")):
        root = os.path.join(root, "cifar-10-batches-bin")
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    missing = [n for n in names if not os.path.exists(os.path.join(root, n))]
    if missing:
        raise FileNotFoundError(f"{root}: missing {', '.join(missing)} (expected the CIFAR-10 binary version)")
    parts = [read_cifar10_batch(os.path.join(root, n)) for n in names]
    images = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    return images, np.concatenate([p[1] for p in parts])
