"""DistributedDataParallel: the same model on every rank, gradients averaged.

Wrapping broadcasts rank 0's parameters and buffers to every rank (after
checking that every rank has the same parameter layout). Gradients are
reduced in buckets of about `bucket_cap_mb` (25 MB, as PyTorch), filled in
reverse parameter order because the backward produces gradients roughly last
layer first. The explicit backward tells when a gradient may be final through
`gpunet.nn.module.grad_hook` (called after each contribution
`Parameter.accumulate` adds). A parameter used several times gets several
contributions, so the first backward only counts them and reduces every
bucket at its end; later backwards start a bucket's mean (all-reduce sum,
then divide by the world size) as soon as each of its parameters has had its
count, while the rest of the backward runs (on GPU on NCCL's stream). A
contribution that arrives after its bucket started (the graph changed)
marks the bucket, which is then reduced again from the complete gradients,
so the result is always right. `backward` waits for every bucket before it
returns, so the optimizer step sees the averaged gradients. A model written
with Tensor operations (no explicit backward) gets the same through
autograd: its output passes a node that arms the buckets when
`loss.backward()` reaches it, and the pass's end waits for them.

Buffers (BatchNorm's running statistics): rank 0's are broadcast to every
rank at the end of each backward (PyTorch broadcasts them at the start of
each training forward; after the backward every rank holds the same ones
between steps too), so every rank evaluates and checkpoints with the same
statistics, those of rank 0's batches. There is no SyncBatchNorm: the batch
statistics inside a forward are each rank's own.

`state_dict()`, `load_state_dict()` and `named_parameters()` are the wrapped
model's, with its keys (no "module." prefix), so checkpoints load into the
model with or without the wrapper.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager

import numpy as np

from ..autograd.engine import queue_callback
from ..autograd.grad_mode import is_grad_enabled
from ..autograd.tensor import Tensor, record
from ..nn.module import Module, grad_hook
from . import group as _group_mod


class _Bucket:
    __slots__ = ("params", "offsets", "size", "dtype", "flat", "waiting", "work", "late")

    def __init__(self, params):
        self.params = params
        self.offsets = np.cumsum([0] + [p.numel() for p in params]).tolist()
        self.size = self.offsets[-1]
        self.dtype = params[0].dtype
        self.flat = None
        self.waiting = 0
        self.work = None
        self.late = False


class DistributedDataParallel(Module):
    """Data-parallel wrapper: `ddp(x)` runs the model, `ddp.backward(dy)` runs
    its backward and leaves every parameter's gradient averaged over ranks.

    bucket_cap_mb: the size of a gradient bucket (one all-reduce each).
    broadcast_buffers: send rank 0's buffers to all ranks after each backward.
    """

    def __init__(self, module: Module, bucket_cap_mb: float = 25.0, broadcast_buffers: bool = True):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"module: expected a gpunet.nn.Module, got {type(module).__name__}")
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb: expected a positive number, got {bucket_cap_mb!r}")
        self.group = _group_mod._require("DistributedDataParallel")
        self.module = module
        object.__setattr__(self, "backend", module.backend)
        object.__setattr__(self, "dtype", module.dtype)
        self.bucket_cap_bytes = int(bucket_cap_mb * 2 ** 20)
        self.broadcast_buffers = bool(broadcast_buffers)
        self.require_sync = True
        self._layout = None  # (key, buckets, bucket of each parameter id)
        self._expected = None  # contributions per parameter id seen in the last synced backward
        self._seen = {}
        self._inflight = []  # buckets started in this backward and not yet seen complete
        self.buckets_started_early = 0  # buckets whose reduction began inside the last backward
        self._check_same_model()
        for x in self._arrays():
            self.group.transport(x).broadcast(x, 0).wait()

    # ------------------------------------------------------------ the wrapped model's face
    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        if isinstance(out, Tensor) and self.require_sync and is_grad_enabled():
            # a model without explicit backward (its forward made of Tensor
            # operations): the reduction rides on the autograd pass instead
            out = record("DistributedDataParallel", self._autograd_begin, (out,), out._data, force=True)
        return out

    def _autograd_begin(self, g):
        """First node of the backward through the model: watch the gradients
        the rest of the pass adds, and finish the buckets when it ends."""
        buckets, owner = self._buckets()
        expected = self._start(buckets)
        watching = grad_hook(lambda p: self._on_grad(p, owner, expected))
        watching.__enter__()

        def end():
            watching.__exit__(None, None, None)
            self._end(buckets)
            self._broadcast_buffers()
        queue_callback(end)
        return g

    def backward(self, *grads):
        dx = self._backward(*grads)
        self._broadcast_buffers()
        return dx

    def _broadcast_buffers(self):
        if self.broadcast_buffers and self.group.size > 1:
            for _, buf in self.module.named_buffers():
                self.group.transport(buf).broadcast(buf, 0).wait()

    def _backward(self, *grads):
        input_grad = self.needs_input_grad()
        if not self.require_sync:
            return self.module.backward(*grads, input_grad=input_grad)
        buckets, owner = self._buckets()
        expected = self._start(buckets)
        with grad_hook(lambda p: self._on_grad(p, owner, expected)):
            dx = self.module.backward(*grads, input_grad=input_grad)
        self._end(buckets)
        return dx

    def _start(self, buckets):
        """Arm the buckets for a backward; returns the contributions expected per parameter."""
        expected = self._expected or {}
        for b in buckets:
            b.work, b.late = None, False
            b.waiting = sum(1 for p in b.params if expected.get(id(p), 0) > 0)
        self._seen, self._inflight = {}, []
        return expected

    def _end(self, buckets):
        self.buckets_started_early = sum(b.work is not None for b in buckets)
        self._finish(buckets)
        self._expected = self._seen

    @contextmanager
    def no_sync(self):
        """Backwards inside this block only accumulate local gradients (gradient
        accumulation); the first backward after it reduces the accumulated sum."""
        prev, self.require_sync = self.require_sync, False
        try:
            yield
        finally:
            self.require_sync = prev

    def named_parameters(self, prefix: str = ""):
        return self.module.named_parameters(prefix)

    def named_buffers(self, prefix: str = ""):
        return self.module.named_buffers(prefix)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state_dict, strict: bool = True):
        return self.module.load_state_dict(state_dict, strict)

    def extra_repr(self) -> str:
        return f"world_size={self.group.size}, bucket_cap_mb={self.bucket_cap_bytes / 2 ** 20:g}"

    # ------------------------------------------------------------ setup
    def _arrays(self):
        return [p.data for p in self.module.parameters()] + [b for _, b in self.module.named_buffers()]

    def _check_same_model(self):
        """Every rank must wrap the same architecture: compare a digest of the
        names, shapes and dtypes of all parameters and buffers."""
        layout = [(n, tuple(p.shape), p.dtype.str) for n, p in self.module.named_parameters()]
        layout += [(n, tuple(b.shape), b.dtype.str) for n, b in self.module.named_buffers()]
        mine = np.array([len(layout), sum(int(np.prod(s)) for _, s, _ in layout),
                         zlib.crc32(repr(layout).encode())], np.int64)
        table = np.empty((self.group.size, 3), np.int64)
        self.group.mpi.all_gather(mine, table).wait()
        if not (table == table[0]).all():
            ranks = "; ".join(f"rank {r}: {n} arrays, {v} values, layout digest {d:08x}"
                              for r, (n, v, d) in enumerate(table.tolist()))
            raise ValueError("DistributedDataParallel: the model differs across ranks (parameter and buffer "
                             f"names, shapes or dtypes): {ranks}")

    def _buckets(self):
        """Buckets of trainable parameters in reverse order, split by dtype and
        at bucket_cap_bytes; rebuilt when parameters change dtype or device."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        key = tuple((id(p), p.dtype, type(p.data)) for p in params)
        if self._layout is None or self._layout[0] != key:
            buckets, current, nbytes = [], [], 0
            for p in reversed(params):
                if current and (p.dtype != current[0].dtype or nbytes + p.data.nbytes > self.bucket_cap_bytes):
                    buckets.append(_Bucket(current))
                    current, nbytes = [], 0
                current.append(p)
                nbytes += p.data.nbytes
            if current:
                buckets.append(_Bucket(current))
            owner = {id(p): b for b in buckets for p in b.params}
            self._layout = (key, buckets, owner)
        return self._layout[1], self._layout[2]

    # ------------------------------------------------------------ the reduction
    def _on_grad(self, p, owner, expected):
        b = owner.get(id(p))
        if b is None:
            return  # a parameter of another model
        n = self._seen[id(p)] = self._seen.get(id(p), 0) + 1
        if b.work is not None:
            b.late = True  # more contributions than last time: reduce this bucket again at the end
        elif n == expected.get(id(p), 0):
            b.waiting -= 1
            if b.waiting == 0:
                self._launch(b)
        # MPI moves a nonblocking collective's data only inside MPI calls: polling
        # the started buckets here lets them advance while the backward runs
        self._inflight = [other for other in self._inflight if not other.work.is_completed()]

    def _launch(self, b: _Bucket):
        """Copy the bucket's gradients into its flat buffer and start summing it over ranks."""
        xp = self.module.backend.xp
        if b.flat is None or type(b.flat) is not type(b.params[0].data):
            b.flat = xp.empty(b.size, b.dtype)
        for p, lo, hi in zip(b.params, b.offsets, b.offsets[1:]):
            if p.grad is None:
                b.flat[lo:hi] = 0  # unused on this rank: contributes nothing
            else:
                b.flat[lo:hi] = p.grad.reshape(-1)
        b.work = self.group.transport(b.flat).all_reduce(b.flat, "sum")
        self._inflight.append(b)

    def _finish(self, buckets):
        for b in buckets:
            if b.work is None:
                self._launch(b)
        for b in buckets:
            b.work.wait()
            if b.late:
                self._launch(b)
                b.work.wait()
            b.flat /= self.group.size  # the mean, as all_reduce(op=AVG)
            for p, lo, hi in zip(b.params, b.offsets, b.offsets[1:]):
                avg = b.flat[lo:hi].reshape(p.shape)
                if p.grad is None:
                    p.grad = avg.copy()
                else:
                    p.grad[...] = avg
