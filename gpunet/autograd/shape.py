"""Differentiable shapes, indexing and joining of Tensors, and the factories
(gpunet.zeros, gpunet.randn, ...).

Views: where NumPy/CuPy return a view (reshape of contiguous data, transpose,
permute, squeeze, unsqueeze, expand, basic indexing, split), the result
shares the storage *and the version counter* of its input, as in PyTorch, so
an in-place change through either is seen by the saved-tensor checks. A view
through which a gradient would flow cannot be modified in place (see ops.py).

Indexing: basic indices (ints, slices, None, ...) and integer or boolean
arrays (lists, NumPy/CuPy arrays, Tensors); the gradient of an advanced index
is scattered with accumulation (np.add.at, cupyx.scatter_add), so a repeated
index gets the sum of its gradients.
"""
from __future__ import annotations

import math
import weakref

import numpy as np

from ..backend import default_backend, get_backend
from ..nn.module import get_default_dtype
from ..random import rng_of
from . import engine
from .ops import _grad_for, _operands, _xp_of, grad_spec, inplace, result_dtype, unbroadcast
from .tensor import Tensor, record

__all__ = ["arange", "cat", "chunk", "clone", "concat", "empty", "empty_like", "expand", "eye", "flatten", "full",
           "full_like", "linspace", "ones", "ones_like", "permute", "rand", "rand_like", "randint", "randn", "randperm",
           "randn_like", "reshape", "split", "squeeze", "stack", "transpose", "unsqueeze", "zeros", "zeros_like"]

_views: dict = {}  # id -> weakref of each Tensor that is a view of another


def is_view(t: Tensor) -> bool:
    ref = _views.get(id(t))
    return ref is not None and ref() is t


def _share(out: Tensor, base: Tensor) -> Tensor:
    """Make `out` a view of `base` when its array is one: one version counter for both."""
    if not _xp_of(out._data).may_share_memory(out._data, base._data):
        return out
    out._vc = base._vc
    key = id(out)
    _views[key] = weakref.ref(out, lambda _, k=key: _views.pop(k, None))
    return out


def _view(name, a: Tensor, out, backward):
    return _share(record(name, backward, (a,), out), a)


def _ints(args):
    """A shape given as f(2, 3) or f((2, 3))."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


def _dim(d, ndim, name="dim"):
    if not -max(ndim, 1) <= d < max(ndim, 1):
        raise IndexError(f"{name}: {d} is out of range for a tensor of {ndim} dimensions")
    return d % max(ndim, 1)


# ------------------------------------------------------------ shapes
def reshape(a: Tensor, *shape):
    src = a.shape
    return _view("Reshape", a, a._data.reshape(_ints(shape)), lambda g: g.reshape(src))


def view_as(a: Tensor, other: Tensor):
    return reshape(a, other.shape)


def flatten(a: Tensor, start_dim: int = 0, end_dim: int = -1):
    if a.ndim == 0:
        return reshape(a, 1)
    s, e = _dim(start_dim, a.ndim, "start_dim"), _dim(end_dim, a.ndim, "end_dim")
    if s > e:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    return reshape(a, a.shape[:s] + (-1 if a.numel() else 0,) + a.shape[e + 1:]) if s < e else a


def permute(a: Tensor, *dims):
    dims = tuple(_dim(d, a.ndim) for d in _ints(dims))
    if sorted(dims) != list(range(a.ndim)):
        raise RuntimeError(f"permute: dims {dims} are not a permutation of the {a.ndim} dimensions")
    inv = tuple(int(i) for i in np.argsort(dims))
    return _view("Permute", a, a._data.transpose(dims), lambda g: g.transpose(inv))


def transpose(a: Tensor, dim0: int, dim1: int):
    if a.ndim == 0:
        return a
    d0, d1 = _dim(dim0, a.ndim, "dim0"), _dim(dim1, a.ndim, "dim1")
    return _view("Transpose", a, a._data.swapaxes(d0, d1), lambda g: g.swapaxes(d0, d1))


def squeeze(a: Tensor, dim=None):
    dims = range(a.ndim) if dim is None else (dim,) if isinstance(dim, int) else dim
    axes = tuple(d for d in (_dim(d, a.ndim) for d in dims) if a.ndim and a.shape[d] == 1)
    src = a.shape
    return _view("Squeeze", a, a._data.squeeze(axes), lambda g: g.reshape(src))


def unsqueeze(a: Tensor, dim: int):
    d = _dim(dim, a.ndim + 1)
    return _view("Unsqueeze", a, a.backend.xp.expand_dims(a._data, d), lambda g: g.squeeze(d))


def expand(a: Tensor, *sizes):
    sizes = _ints(sizes)
    if len(sizes) < a.ndim:
        raise RuntimeError(f"expand: the number of sizes ({len(sizes)}) must be at least the tensor's "
                           f"dimensions ({a.ndim})")
    lead = len(sizes) - a.ndim
    shape = tuple(a.shape[i - lead] if n == -1 and i >= lead else n for i, n in enumerate(sizes))
    for i in range(a.ndim):
        if a.shape[i] not in (1, shape[lead + i]):
            raise RuntimeError(f"expand: the size {a.shape[i]} of dimension {i} must match {shape[lead + i]} "
                               f"or be 1 (shape {list(a.shape)} to {list(sizes)})")
    src = a.shape
    return _view("Expand", a, a.backend.xp.broadcast_to(a._data, shape), lambda g: unbroadcast(g, src))


def expand_as(a: Tensor, other: Tensor):
    return expand(a, other.shape)


def clone(a: Tensor):
    return record("Clone", lambda g: g, (a,), a._data.copy())


def contiguous(a: Tensor):
    return a if a._data.flags.c_contiguous else clone(a)


# ------------------------------------------------------------ joining and splitting
def _tensor_list(name, tensors):
    if not isinstance(tensors, (tuple, list)) or not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError(f"{name}(): expected a non-empty sequence of Tensors")
    return list(tensors)


def cat(tensors, dim: int = 0):
    tensors = _tensor_list("cat", tensors)
    arrays = [x for _, x in _operands(*tensors)[0]]
    d = _dim(dim, tensors[0].ndim)
    out = tensors[0].backend.xp.concatenate(arrays, axis=d)
    cuts = np.cumsum([x.shape[d] for x in arrays])[:-1]

    specs = [grad_spec(t) for t in tensors]

    def backward(g):
        return tuple(_grad_for(s, p) for s, p in zip(specs, _xp_of(g).split(g, cuts, axis=d)))
    return record("Cat", backward, tuple(tensors), out)


concat = cat


def stack(tensors, dim: int = 0):
    tensors = _tensor_list("stack", tensors)
    if len({t.shape for t in tensors}) != 1:
        raise RuntimeError(f"stack expects each tensor to be equal size, got {[list(t.shape) for t in tensors]}")
    d = _dim(dim, tensors[0].ndim + 1)
    out = tensors[0].backend.xp.stack([x for _, x in _operands(*tensors)[0]], axis=d)
    specs = [grad_spec(t) for t in tensors]
    return record("Stack", lambda g: tuple(_grad_for(s, g.take(i, axis=d)) for i, s in enumerate(specs)),
                  tuple(tensors), out)


def split(a: Tensor, split_size_or_sections, dim: int = 0):
    """A tuple of views along `dim`: pieces of split_size (the last may be
    smaller) or of the listed sizes; one node with an output per piece."""
    d = _dim(dim, a.ndim)
    n = a.shape[d]
    if isinstance(split_size_or_sections, int):
        if split_size_or_sections <= 0 and n:
            raise ValueError(f"split_size: expected a positive int, got {split_size_or_sections}")
        sizes = [min(split_size_or_sections, n - s) for s in range(0, n, split_size_or_sections)] or [0]
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {n} (input tensor's size "
                               f"at dimension {d}), but got split_sizes={sizes}")
    ends = np.cumsum(sizes)
    pieces = tuple(a._data[(slice(None),) * d + (slice(e - s, e),)] for s, e in zip(sizes, ends))
    xp = a.backend.xp
    outs = record("Split", lambda *gs: xp.concatenate(gs, axis=d), (a,), pieces)
    return tuple(_share(t, a) for t in outs)


def chunk(a: Tensor, chunks: int, dim: int = 0):
    if chunks <= 0:
        raise ValueError(f"chunks: expected a positive int, got {chunks}")
    return split(a, max(1, math.ceil(a.shape[_dim(dim, a.ndim)] / chunks)), dim)


# ------------------------------------------------------------ indexing
def _index(idx, be):
    """The index as NumPy/CuPy take it, boolean arrays as their nonzero();
    and whether it is basic (gives a view, no repeats)."""
    items = idx if isinstance(idx, tuple) else (idx,)
    out, basic = [], True
    for i in items:
        if isinstance(i, Tensor):
            i = i._data
        elif isinstance(i, list):
            i = np.asarray(i)
        if isinstance(i, np.ndarray) or hasattr(i, "__cuda_array_interface__"):
            i = be.asarray(i)
            if i.dtype == bool:
                out.extend(i.nonzero())
            elif i.dtype.kind in "iu":
                out.append(i)
            else:
                raise IndexError(f"tensors used as indices must be long, int or bool tensors, got {i.dtype}")
            basic = False
        else:
            out.append(i)
    return tuple(out), basic


def getitem(a: Tensor, idx):
    index, basic = _index(idx, a.backend)
    xp, shape = a.backend.xp, a.shape

    def backward(g):
        gx = xp.zeros(shape, g.dtype)
        if basic:
            gx[index] = g
        elif xp is np:
            np.add.at(gx, index, g)
        else:
            import cupyx
            cupyx.scatter_add(gx, index, g)
        return gx
    out = record("Index", backward, (a,), a._data[index])
    return _share(out, a) if basic else out


def _index_put(s: Tensor, index, value):
    """s with s[index] = value (out of place)."""
    ((ts, x), (tv, v)), _ = _operands(s, value, dtype=s.dtype)
    out = x.copy()
    out[index] = v

    ss, sv = grad_spec(ts), grad_spec(tv)

    def backward(g):
        gs = gv = None
        if ss:
            gs = g.copy()
            gs[index] = 0
        if sv:
            gi = g[index]
            extra = len(sv[0]) - gi.ndim  # a value with more (leading 1) dims than the slice
            gv = _grad_for(sv, gi.reshape((1,) * extra + gi.shape) if extra > 0 else gi)
        return gs, gv
    return record("IndexPut", backward, (ts, tv), out)


def setitem(a: Tensor, idx, value):
    """a[idx] = value, in place (see ops.inplace)."""
    index, _ = _index(idx, a.backend)
    if engine.needs_grad((a, value)):
        inplace(a, _index_put, index, value)
        return
    a._data[index] = value._data if isinstance(value, Tensor) else value
    a._vc[0] += 1


# ------------------------------------------------------------ making tensors
def _new(arr, dtype, device, requires_grad) -> Tensor:
    be = default_backend() if device is None else get_backend(device)
    t = Tensor(be.asarray(arr, dtype=np.dtype(dtype)), be)
    t.requires_grad = requires_grad
    return t


def _float(dtype):
    return get_default_dtype() if dtype is None else dtype


def zeros(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _new(np.zeros(_ints(size)), _float(dtype), device, requires_grad)


def ones(*size, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _new(np.ones(_ints(size)), _float(dtype), device, requires_grad)


empty = zeros


def full(size, fill_value, *, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    if dtype is None:
        dtype = result_dtype(fill_value)
    return _new(np.full(_ints((size,)), fill_value), dtype, device, requires_grad)


def _like(fn):
    def like(t: Tensor, *args, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
        return fn(t.shape, *args, dtype=t.dtype if dtype is None else dtype,
                  device=t.device if device is None else device, requires_grad=requires_grad)
    like.__name__ = fn.__name__ + "_like"
    return like


def arange(start, end=None, step=1, *, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    if end is None:
        start, end = 0, start
    if dtype is None:
        dtype = result_dtype(start, end, step)
    return _new(np.arange(start, end, step, dtype=np.float64 if np.dtype(dtype).kind == "f" else None),
                dtype, device, requires_grad)


def linspace(start, end, steps: int, *, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _new(np.linspace(start, end, steps), _float(dtype), device, requires_grad)


def eye(n: int, m=None, *, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    return _new(np.eye(n, m), _float(dtype), device, requires_grad)


def randn(*size, generator=None, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples from `generator` (a gpunet.Generator), else
    gpunet's seeded generator (gpunet.manual_seed)."""
    return _new(rng_of(generator).standard_normal(_ints(size)), _float(dtype), device, requires_grad)


def rand(*size, generator=None, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """Uniform samples on [0, 1) from `generator`, else gpunet's seeded generator."""
    return _new(rng_of(generator).random(_ints(size)), _float(dtype), device, requires_grad)


def randint(low, high=None, size=None, *, generator=None, dtype=None, device=None,
            requires_grad: bool = False) -> Tensor:
    """randint(high, size) or randint(low, high, size): integers in [low, high), int64 by default."""
    if size is None:
        low, high, size = 0, low, high
    if size is None:
        raise TypeError("randint(): missing the size argument")
    return _new(rng_of(generator).integers(low, high, _ints((size,))), np.int64 if dtype is None else dtype,
                device, requires_grad)


def randperm(n: int, *, generator=None, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A random permutation of 0..n-1 (int64 by default), from `generator` or gpunet's seeded generator."""
    return _new(rng_of(generator).permutation(int(n)), np.int64 if dtype is None else dtype, device, requires_grad)


zeros_like, ones_like, empty_like, full_like = _like(zeros), _like(ones), _like(empty), _like(full)
randn_like, rand_like = _like(randn), _like(rand)


def _register():
    T = Tensor
    for fn in (reshape, view_as, flatten, permute, transpose, squeeze, unsqueeze, expand, expand_as, clone,
               contiguous, split, chunk):
        setattr(T, fn.__name__, fn)
    T.view = reshape
    T.T = property(lambda s: permute(s, tuple(reversed(range(s.ndim)))))
    T.__getitem__ = getitem
    T.__setitem__ = setitem


_register()
