"""Datasets and the DataLoader.

A dataset maps an index to a sample (a tuple of arrays). Array-backed datasets
also answer `__getitems__(indices)` with whole stacked batches in one
vectorised gather, which is what the DataLoader asks for first: a batch of a
TensorDataset costs one fancy-index per field, not a Python loop per sample.

The DataLoader shuffles with a permutation drawn from (seed, epoch), so every
epoch sees a new order and any epoch's order can be reproduced (resuming a
run), fetches batches in worker threads when asked (num_workers), and moves
batches (nests of tuples, lists and dicts of arrays) to a device. On a GPU it
copies batch k+1 from pinned host memory on a side stream while batch k trains.
"""
from __future__ import annotations

import collections
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

import numpy as np

from .. import checks
from ..backend import Backend, get_backend
from ..random import rng_of
from .collate import default_collate


class Dataset:
    """Base class: implement `__len__` and `__getitem__(i)` returning a tuple
    of arrays (or one array). Override `__getitems__` for a vectorised batch."""

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} does not implement __len__")

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} does not implement __getitem__")

    def __getitems__(self, indices: np.ndarray):
        """A batch: the generic fallback fetches sample by sample and batches
        them with default_collate (tuples, dicts, lists of arrays and numbers)."""
        return default_collate([self[int(i)] for i in indices])


class IterableDataset(Dataset):
    """A dataset read by iterating it (torch.utils.data.IterableDataset):
    implement __iter__."""

    def __iter__(self):
        raise NotImplementedError(f"{type(self).__name__} does not implement __iter__")


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


def random_split(dataset, lengths, generator=None, *, seed: int = 0) -> list[Subset]:
    """Split `dataset` into disjoint random subsets, e.g. train/validation/test.

    lengths: sizes summing to len(dataset), or fractions summing to 1 (then
    the floor of each is taken and the remainder handed out one by one from
    the first subset on, as torch.utils.data.random_split does). The
    permutation comes from `generator` (a gpunet.Generator, which it
    advances, as torch's) or else from `seed`: the same seed always gives the
    same split.
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
    perm = (np.random.default_rng(seed) if generator is None else rng_of(generator)).permutation(n)
    bounds = np.cumsum([0] + sizes)
    return [Subset(dataset, perm[bounds[i]:bounds[i + 1]]) for i in range(len(sizes))]


class DataLoader:
    """Batches of `dataset`, as torch.utils.data.DataLoader.

    batch_size, shuffle, drop_last: as torch's.
    seed: the shuffling seed; epoch e uses the permutation drawn from
      (seed, e). None draws a seed from `generator` (a gpunet.Generator) or,
      without one, from gpunet's generator (gpunet.manual_seed).
    device: where batches go ('cpu', 'cuda', ...; None leaves them as the
      dataset stores them). On a GPU the copies go through pinned host memory
      on a side stream, batch k+1's while batch k trains, whatever
      pin_memory says (pin_memory=True is accepted; there is nothing more to
      pin). Host backends need no pinning.
    collate_fn: turns a list of samples into a batch. Without it, datasets
      with a vectorised `__getitems__` (TensorDataset, Subset of one) gather
      a whole batch at once, and others' samples are batched by
      default_collate (arrays stacked; dicts, tuples, lists recursively).
    num_workers > 0: batches are fetched by that many worker *threads*
      (not processes: NumPy gathers and file reads release the GIL, and
      nothing is pickled), up to prefetch_factor (default 2) batches per
      worker ahead of the consumer, delivered in order. The dataset must
      tolerate concurrent __getitem__ calls. worker_init_fn(worker_id) runs
      in each thread as it starts; persistent_workers keeps the threads from
      one epoch to the next; timeout > 0 bounds the wait for a batch
      (RuntimeError after it, as torch).
    sampler: the sample indices of an epoch instead of the loader's own order
      (e.g. gpunet.distributed.DistributedSampler); excludes shuffle=True. A
      sampler with set_epoch is told each epoch's number before it is read.
    Iterating starts the next epoch; `iter_epoch(e, device)` replays epoch e.
    multiprocessing_context, pin_memory_device and in_order=False have no
    meaning for thread workers: NotImplementedError.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool | None = False, drop_last: bool = False,
                 seed: int | None = None, device=None, *, num_workers: int = 0, collate_fn=None,
                 pin_memory: bool = False, timeout: float = 0, worker_init_fn=None, multiprocessing_context=None,
                 generator=None, prefetch_factor: int | None = None, persistent_workers: bool = False,
                 pin_memory_device: str = "", in_order: bool = True, sampler=None):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"dataset: expected a Dataset (with __len__ and __getitem__), got {type(dataset).__name__}")
        self.dataset = dataset
        self.batch_size = checks.positive_int(batch_size, "batch_size")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if seed is None:
            seed = int(rng_of(generator).integers(2 ** 31))
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer or None, got {seed!r}")
        elif generator is not None:
            raise ValueError("seed, generator: pass one of them (both decide the shuffling)")
        self.seed = int(seed)
        self.generator = generator
        self.device = None if device is None else get_backend(device).device
        if sampler is not None and (self.shuffle or not (hasattr(sampler, "__iter__") and hasattr(sampler, "__len__"))):
            raise ValueError("sampler: expected an iterable of indices with __len__, and shuffle=False (the sampler "
                             f"decides the order); got {type(sampler).__name__} with shuffle={self.shuffle}")
        self.sampler = sampler
        self.epoch = 0
        self._workers(num_workers, collate_fn, timeout, worker_init_fn, prefetch_factor, persistent_workers)
        self.pin_memory = bool(pin_memory)
        for name, value, default in (("multiprocessing_context", multiprocessing_context, None),
                                     ("pin_memory_device", pin_memory_device, ""), ("in_order", in_order, True)):
            if value != default:
                raise NotImplementedError(f"{name}={value!r}: gpunet's DataLoader workers are threads that deliver "
                                          f"batches in order; leave {name} at {default!r}")

    def _workers(self, num_workers, collate_fn, timeout, worker_init_fn, prefetch_factor, persistent_workers):
        if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ValueError(f"num_workers: expected a non-negative integer, got {num_workers!r}")
        self.num_workers = int(num_workers)
        for name, fn in (("collate_fn", collate_fn), ("worker_init_fn", worker_init_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name}: expected a callable or None, got {type(fn).__name__}")
        self.collate_fn, self.worker_init_fn = collate_fn, worker_init_fn
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < math.inf:
            raise ValueError(f"timeout: expected a non-negative number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        if self.num_workers == 0 and (prefetch_factor is not None or persistent_workers):
            name = "prefetch_factor" if prefetch_factor is not None else "persistent_workers"
            raise ValueError(f"{name}: only with worker threads; pass num_workers > 0 (as torch requires)")
        self.prefetch_factor = 2 if prefetch_factor is None else checks.positive_int(prefetch_factor, "prefetch_factor")
        self.persistent_workers = bool(persistent_workers)
        self._pool = None

    def __len__(self):
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int):
        """The epoch the next `iter(loader)` plays (resuming a run)."""
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of an epoch."""
        if self.sampler is not None:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            return np.fromiter(self.sampler, np.int64, len(self.sampler))
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.seed, int(epoch))).permutation(n)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self.iter_epoch(epoch, self.device)

    def _fetch(self, idx):
        """One host batch of the samples at `idx`."""
        if self.collate_fn is not None:
            return self.collate_fn([self.dataset[int(i)] for i in idx])
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(idx) if getitems is not None else Dataset.__getitems__(self.dataset, idx)

    def host_batches(self, epoch: int):
        """The batches of an epoch as the dataset (or collate_fn) returns them (no device move)."""
        order = self.order(epoch)
        stop = min(len(self) * self.batch_size, len(order))
        indices = (order[start:start + self.batch_size] for start in range(0, stop, self.batch_size))
        if self.num_workers == 0:
            yield from map(self._fetch, indices)
        else:
            yield from self._in_workers(indices)

    def _in_workers(self, indices):
        """_fetch of each index batch in the worker threads, in order, with at
        most prefetch_factor * num_workers batches in flight."""
        pool = self._pool or ThreadPoolExecutor(self.num_workers, thread_name_prefix="gpunet-loader",
                                                initializer=self._start_worker, initargs=(itertools.count(),))
        if self.persistent_workers:
            self._pool = pool
        pending = collections.deque()
        try:
            for idx in indices:
                pending.append(pool.submit(self._fetch, idx))
                if len(pending) >= self.prefetch_factor * self.num_workers:
                    yield self._wait(pending.popleft())
            while pending:
                yield self._wait(pending.popleft())
        finally:
            for f in pending:
                f.cancel()
            if not self.persistent_workers:
                pool.shutdown(wait=False, cancel_futures=True)

    def _start_worker(self, ids):
        if self.worker_init_fn is not None:
            self.worker_init_fn(next(ids))  # itertools.count is atomic under the GIL

    def _wait(self, future):
        try:
            return future.result(timeout=self.timeout or None)
        except FuturesTimeout:
            raise RuntimeError(f"DataLoader timed out after {self.timeout:g} seconds waiting for a batch "
                               "(timeout=)") from None

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
                yield map_arrays(be.asarray, batch)
            return
        yield from _prefetch_to_gpu(be, batches)


def map_arrays(fn, batch):
    """`batch` with fn applied to each array in its nest of tuples, lists and
    dicts (strings and other leaves are kept)."""
    if isinstance(batch, dict):
        return type(batch)((k, map_arrays(fn, v)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(map_arrays(fn, v) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_arrays(fn, v) for v in batch)
    if hasattr(batch, "__array_interface__") or hasattr(batch, "__cuda_array_interface__"):
        return fn(batch)
    return batch


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
        pinned = []

        def copy(a):
            if self.be.owns(a):
                return a
            a = np.ascontiguousarray(a)
            buf = self._pinned_copy(a)
            dev = self.cp.empty(a.shape, a.dtype)
            dev.set(buf, stream=self.stream)
            pinned.append(buf)
            return dev

        out = map_arrays(copy, host_batch)
        done = self.stream.record()
        self.staged = (done, pinned)
        return out, done

    def finish(self, pending):
        batch, done = pending
        self.cp.cuda.get_current_stream().wait_event(done)
        return batch
