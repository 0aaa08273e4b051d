"""Datasets and the DataLoader.

A dataset maps an index to a sample (a tuple of arrays). Array-backed datasets
also answer `__getitems__(indices)` with whole stacked batches in one
vectorised gather, which is what the DataLoader asks for first: a batch of a
TensorDataset costs one fancy-index per field, not a Python loop per sample.

The DataLoader shuffles with a permutation drawn from (seed, epoch), so every
epoch sees a new order and any epoch's order can be reproduced (resuming a
run), and moves batches to a device. On a GPU it copies batch k+1 from pinned
host memory on a side stream while batch k trains.
"""
from __future__ import annotations

import math

import numpy as np

from .. import checks
from ..backend import Backend, get_backend
from ..random import generator


class Dataset:
    """Base class: implement `__len__` and `__getitem__(i)` returning a tuple
    of arrays (or one array). Override `__getitems__` for a vectorised batch."""

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} does not implement __len__")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} does not implement __getitem__")

    def __getitems__(self, indices: np.ndarray) -> tuple:
        """A stacked batch: the generic fallback fetches sample by sample."""
        samples = [self[int(i)] for i in indices]
        if not isinstance(samples[0], tuple):
            return (np.stack([np.asarray(s) for s in samples]),)
        return tuple(np.stack([np.asarray(s[k]) for s in samples]) for k in range(len(samples[0])))


class TensorDataset(Dataset):
    """Samples are rows of arrays that share their first dimension,
    e.g. TensorDataset(images, labels). Arrays may be NumPy or CuPy."""

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset: expected at least one array")
        arrays = tuple(a if hasattr(a, "shape") and hasattr(a, "dtype") else np.asarray(a) for a in arrays)
        for i, a in enumerate(arrays):
            if a.ndim == 0:
                raise ValueError(f"TensorDataset: array {i} is 0-d; every array needs a first (sample) dimension")
            if a.shape[0] != arrays[0].shape[0]:
                raise ValueError(f"TensorDataset: array {i} has {a.shape[0]} samples, "
                                 f"array 0 has {arrays[0].shape[0]} (first dimensions must match)")
        self.tensors = arrays

    def __len__(self):
        return int(self.tensors[0].shape[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.tensors)

    def __getitems__(self, indices):
        return tuple(a[indices] for a in self.tensors)


class Subset(Dataset):
    """The samples of `dataset` at `indices` (what random_split returns)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"indices: expected a 1-D sequence of integers, got {idx.dtype} of shape {idx.shape}")
        n = len(dataset)
        outside = idx[(idx < -n) | (idx >= n)] if idx.size else idx
        if outside.size:
            raise IndexError(f"indices: expected integers in [-{n}, {n}) for a dataset of {n} samples, "
                             f"got {int(outside[0])}")
        self.indices = idx.astype(np.int64)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[int(self.indices[index])]

    def __getitems__(self, indices):
        mapped = self.indices[np.asarray(indices)]
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is not None:
            return getitems(mapped)
        return Dataset.__getitems__(self.dataset, mapped)


def random_split(dataset, lengths, seed: int = 0) -> list[Subset]:
    """Split `dataset` into disjoint random subsets, e.g. train/validation/test.

    lengths: sizes summing to len(dataset), or fractions summing to 1 (then
    the floor of each is taken and the remainder handed out one by one from
    the first subset on, as torch.utils.data.random_split does). The same
    seed always gives the same split.
    """
    n = len(dataset)
    lengths = list(lengths)
    if not lengths:
        raise ValueError("lengths: expected at least one length")
    if all(isinstance(v, float) for v in lengths) and math.isclose(sum(lengths), 1.0, abs_tol=1e-6):
        if any(v < 0 for v in lengths):
            raise ValueError(f"lengths: fractions must be non-negative, got {lengths}")
        sizes = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(sizes)):
            sizes[i % len(sizes)] += 1
    else:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in lengths):
            raise ValueError(f"lengths: expected non-negative integers or fractions summing to 1, got {lengths}")
        sizes = [int(v) for v in lengths]
        if sum(sizes) != n:
            raise ValueError(f"lengths: sizes {sizes} sum to {sum(sizes)}, but the dataset has {n} samples")
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0] + sizes)
    return [Subset(dataset, perm[bounds[i]:bounds[i + 1]]) for i in range(len(sizes))]


class DataLoader:
    """Batches of `dataset` as tuples of backend arrays.

    batch_size, shuffle, drop_last: as torch.utils.data.DataLoader.
    seed: the shuffling seed; epoch e uses the permutation drawn from
      (seed, e). None draws a seed from gpunet's generator (gpunet.manual_seed).
    device: where batches go ('cpu', 'cuda', ...; None leaves them as the
      dataset stores them).
    Iterating starts the next epoch; `iter_epoch(e, device)` replays epoch e.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, drop_last: bool = False,
                 seed: int | None = None, device=None):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"dataset: expected a Dataset (with __len__ and __getitem__), got {type(dataset).__name__}")
        self.dataset = dataset
        self.batch_size = checks.positive_int(batch_size, "batch_size")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if seed is None:
            seed = int(generator().integers(2 ** 31))
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer or None, got {seed!r}")
        self.seed = int(seed)
        self.device = None if device is None else get_backend(device).device
        self.epoch = 0

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int):
        """The epoch the next `iter(loader)` plays (resuming a run)."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of an epoch."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.seed, int(epoch))).permutation(n)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self.iter_epoch(epoch, self.device)

    def host_batches(self, epoch: int):
        """The batches of an epoch as the dataset returns them (no device move)."""
        order = self.order(epoch)
        stop = len(self) * self.batch_size
        getitems = getattr(self.dataset, "__getitems__", None)
        for start in range(0, min(stop, len(order)), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield getitems(idx) if getitems is not None else Dataset.__getitems__(self.dataset, idx)

    def iter_epoch(self, epoch: int, device=None):
        """Epoch `epoch`'s batches on `device` (default: the loader's device)."""
        device = device if device is not None else self.device
        batches = self.host_batches(epoch)
        if device is None:
            yield from batches
            return
        be = device if isinstance(device, Backend) else get_backend(device)
        if not be.on_gpu:
            # Host backends: the "copy" is at most a dtype-preserving contiguity fix.
            for batch in batches:
                yield tuple(be.asarray(a) for a in batch)
            return
        yield from _prefetch_to_gpu(be, batches)


def _prefetch_to_gpu(be: Backend, batches):
    """Yield each batch on the GPU with the next one's copy already queued on
    a side stream, so the copy overlaps the current batch's compute."""
    with be.use_device():
        copier = _SideStreamCopier(be)
        it = iter(batches)
        nxt = next(it, None)
        pending = copier.start(nxt) if nxt is not None else None
        while pending is not None:
            nxt = next(it, None)
            current = copier.finish(pending)
            # Queue batch k+1's copy before handing out batch k.
            pending = copier.start(nxt) if nxt is not None else None
            yield current


class _SideStreamCopier:
    """Host -> device copies on a non-blocking stream through pinned buffers.

    Ordering rules (the hazards of overlapping copies with compute):
    - destinations are allocated on the compute stream's pool, and the side
      stream first waits for everything already queued on the compute stream,
      so a copy never overwrites memory a queued kernel still reads;
    - the compute stream waits on the copy's event before the batch is used;
    - a pinned staging buffer is released only after its copy has finished.
    """

    def __init__(self, be: Backend):
        self.cp = be.xp
        self.be = be
        self.stream = self.cp.cuda.Stream(non_blocking=True)
        self.staged = None  # (event, pinned buffers) of the copy in flight

    def _pinned_copy(self, a: np.ndarray) -> np.ndarray:
        mem = self.cp.cuda.alloc_pinned_memory(max(a.nbytes, 1))
        buf = np.frombuffer(mem, a.dtype, a.size).reshape(a.shape)
        buf[...] = a
        return buf

    def start(self, host_batch):
        compute = self.cp.cuda.get_current_stream()
        if self.staged is not None:
            self.staged[0].synchronize()
            self.staged = None
        self.stream.wait_event(compute.record())
        out, pinned = [], []
        for a in host_batch:
            if self.be.owns(a):
                out.append(a)
                continue
            a = np.ascontiguousarray(a)
            buf = self._pinned_copy(a)
            dev = self.cp.empty(a.shape, a.dtype)
            dev.set(buf, stream=self.stream)
            out.append(dev)
            pinned.append(buf)
        done = self.stream.record()
        self.staged = (done, pinned)
        return tuple(out), done

    def finish(self, pending):
        batch, done = pending
        self.cp.cuda.get_current_stream().wait_event(done)
        return batch
