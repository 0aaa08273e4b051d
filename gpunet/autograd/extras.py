"""The rest of the tensor surface the PyTorch tutorials use: sin, cos, tril,
triu, topk (differentiable), t, narrow, the new_* factories and the in-place
random fills uniform_/normal_ (gpunet.sin, Tensor.topk, w.data.uniform_(...))."""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..random import rng_of
from .ops import _float_input, _unary, inplace
from .shape import _dim, _ints, _new, getitem, transpose
from .tensor import Tensor, record

__all__ = ["cos", "narrow", "sin", "topk", "tril", "triu"]

_ret_topk = namedtuple("topk", ["values", "indices"])  # torch.return_types.topk


def sin(a: Tensor):
    a = _float_input("sin", a)
    return _unary("Sin", a, a.backend.xp.sin, lambda x, o: a.backend.xp.cos(x))


def cos(a: Tensor):
    a = _float_input("cos", a)
    return _unary("Cos", a, a.backend.xp.cos, lambda x, o: -a.backend.xp.sin(x))


def _triangle(name, keep):
    def fn(a: Tensor, diagonal: int = 0):
        if not isinstance(a, Tensor) or a.ndim < 2:
            raise ValueError(f"{name}: input must be a Tensor of at least 2 dimensions")
        f = getattr(a.backend.xp, keep)
        return record(name.capitalize(), lambda g: f(g, diagonal), (a,), f(a._data, diagonal))
    fn.__name__ = name
    fn.__doc__ = f"torch.{name}: the {'lower' if name == 'tril' else 'upper'} triangle (from `diagonal`), zeros elsewhere."
    return fn


tril = _triangle("tril", "tril")
triu = _triangle("triu", "triu")


def topk(a: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):  # noqa: A002 (torch's name)
    """(values, indices) of the k largest (smallest) entries along dim, in
    descending (ascending) order; the gradient flows to the chosen entries."""
    if not isinstance(a, Tensor):
        raise TypeError(f"topk(): argument 'input' must be a Tensor, got {type(a).__name__}")
    axis = _dim(dim, max(a.ndim, 1))
    x = a._data if a.ndim else a._data.reshape(1)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= x.shape[axis]:
        raise ValueError(f"topk: k must be an integer in [0, {x.shape[axis]}] (the size of dim {dim}), got {k!r}")
    xp = a.backend.xp
    order = xp.argsort(-x if largest else x, axis=axis, kind="stable")
    idx = xp.take(order, xp.arange(k), axis=axis)
    values = xp.take_along_axis(x, idx, axis=axis)

    def backward(g):
        full = xp.zeros(x.shape, dtype=g.dtype)
        where = list(xp.indices(idx.shape, sparse=True))
        where[axis] = idx
        full[tuple(where)] = g
        return full.reshape(a.shape)
    vals = record("Topk", backward, (a,), values)
    return _ret_topk(vals, Tensor(idx.astype(np.int64), a._backend))


def narrow(a: Tensor, dim: int, start: int, length: int):
    """The view a[..., start:start + length, ...] along dim."""
    axis = _dim(dim, a.ndim)
    size = a.shape[axis]
    start = int(start) + (size if start < 0 else 0)
    if not (0 <= start and length >= 0 and start + length <= size):
        raise IndexError(f"narrow: start {start} + length {length} exceeds dimension {dim} of size {size}")
    return getitem(a, (slice(None),) * axis + (slice(start, start + length),))


def t(a: Tensor):
    """Transpose of a tensor of at most 2 dimensions (torch.t)."""
    if a.ndim > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {a.ndim}D")
    return a if a.ndim < 2 else transpose(a, 0, 1)


def _new_factory(fill):
    def new(self: Tensor, *size, dtype=None, device=None, requires_grad: bool = False):
        shape = _ints(size)
        data = np.full(shape, fill) if fill is not None else np.zeros(shape)
        return _new(data, self.dtype if dtype is None else dtype, self.device if device is None else device,
                    requires_grad)
    return new


def _new_full(self: Tensor, size, fill_value, *, dtype=None, device=None, requires_grad: bool = False):
    return _new(np.full(_ints((size,)), fill_value), self.dtype if dtype is None else dtype,
                self.device if device is None else device, requires_grad)


def _new_tensor(self: Tensor, data, *, dtype=None, device=None, requires_grad: bool = False):
    return _new(np.asarray(data), self.dtype if dtype is None else dtype, self.device if device is None else device,
                requires_grad)


def _random_fill(draw):
    def fill(self: Tensor, a=0.0, b=1.0, *, generator=None):
        sample = draw(rng_of(generator), float(a), float(b), self.shape)
        return inplace(self, lambda s: Tensor(s.backend.asarray(sample, dtype=s.dtype), s._backend))
    return fill


def _register():
    T = Tensor
    for fn in (sin, cos, tril, triu, topk, narrow, t):
        setattr(T, fn.__name__, fn)
    T.new_zeros, T.new_ones, T.new_empty = _new_factory(None), _new_factory(1), _new_factory(None)
    T.new_full, T.new_tensor = _new_full, _new_tensor
    T.uniform_ = _random_fill(lambda g, lo, hi, shape: g.uniform(lo, hi, shape))
    T.normal_ = _random_fill(lambda g, mean, std, shape: g.normal(mean, std, shape))


_register()
