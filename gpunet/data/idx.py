"""Readers for the IDX files of MNIST and Fashion-MNIST (gzipped or not).

IDX layout: two zero bytes, a type byte (0x08 = unsigned byte), a byte with
the number of dimensions, one big-endian uint32 per dimension, then the data
in C order. Images are 3-D (N, rows, cols) with magic 0x00000803; labels are
1-D (N,) with magic 0x00000801.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

_UBYTE = 0x08


def _read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        raw = gzip.decompress(raw)
    return raw


def read_idx(path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array of `ndim` dimensions, validated."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if raw[:2] != b"\0\0" or raw[2] != _UBYTE or raw[3] != ndim:
        raise ValueError(f"{path}: bad IDX magic number 0x{magic:08x}; expected 0x{(_UBYTE << 8) | ndim:08x} "
                         f"(unsigned bytes, {ndim} dimension(s))")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes with the header), "
                         f"file holds {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx_images(path) -> np.ndarray:
    """uint8 images (N, rows, cols) from an idx3-ubyte file."""
    return read_idx(path, 3)


def read_idx_labels(path) -> np.ndarray:
    """int64 labels (N,) from an idx1-ubyte file."""
    return read_idx(path, 1).astype(np.int64)


def write_idx(path, array: np.ndarray):
    """Write a uint8 array as an IDX file (gzipped when `path` ends in .gz)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    blob = bytes([0, 0, _UBYTE, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(blob) if str(path).endswith(".gz") else blob)


_PREFIX = {"train": "train", "test": "t10k"}


def load_mnist(root, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST or Fashion-MNIST from a directory holding the four standard files
    (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...):
    float32 images (N, 1, 28, 28) in [0, 1] and int64 labels."""
    if split not in _PREFIX:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        base = os.path.join(root, f"{_PREFIX[split]}-{kind}")
        found = next((p for p in (base, base + ".gz") if os.path.exists(p)), None)
        if found is None:
            raise FileNotFoundError(f"{base}[.gz] not found: put the MNIST/Fashion-MNIST IDX files in {root}")
        paths.append(found)
    images = read_idx_images(paths[0])
    labels = read_idx_labels(paths[1])
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels for split {split!r}")
    return (images.astype(np.float32) / 255.0)[:, None], labels
