"""Half precision (bfloat16, float16) for ops written for float32/float64.

An op's forward and backward decorated with `float32_compute` take half
arrays as the kernels will: the inputs are read in float32, the op computes
in float32 (accumulations and statistics included), and each output is
rounded once to the storage dtype. The forward's ctx keeps the float32
inputs and, where it holds the output (softmax, sigmoid), the rounded output
read in float32, as the kernels keep it. A ctx tuple also keeps the storage
dtype (`HalfCtx`), so the backward knows what to round its gradients to even
when the incoming gradient is a Python float (a loss's); a backward whose ctx
is a bare array (linear's) has a half gradient to tell it.

On kernel backends (sim, cuda) a half call goes to the op's own half kernels
where it has them (`half_kernels` says which calls: the activations',
softmax's, layer norm's, cross-entropy's on class indices, dropout's,
embedding's and pooling's, adaptive pooling where its windows are plain
pooling), and
raises NotImplementedError naming the op and the dtype, before any work,
where it has none; ops without the decorator refuse half inputs on every
backend at gpunet.dispatch.path.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np

from .. import dtypes


class HalfCtx(tuple):
    """A forward's ctx tuple, computed in float32 for the half dtype `storage`.
    A tuple itself, so modules index and unpack it as they do the plain one."""

    def __new__(cls, storage: np.dtype, ctx: tuple):
        self = super().__new__(cls, ctx)
        self.storage = storage
        return self


def _storage(*groups):
    """The half dtype of the first half array (or HalfCtx) among the values of `groups`, or None."""
    for v in itertools.chain(*groups):
        if isinstance(v, HalfCtx):
            return v.storage
        dt = getattr(v, "dtype", None)
        if dt is not None and dtypes.is_half(dt):
            return np.dtype(dt)
    return None


def _up(v):
    """Half arrays read in float32; anything else as is."""
    dt = getattr(v, "dtype", None)
    if dt is not None and dtypes.is_half(dt) and hasattr(v, "astype"):
        return v.astype(np.float32)
    return v


def _round(v, storage):
    """Float32 arrays (and tuples of them) rounded to `storage`; None and the rest as they are."""
    if isinstance(v, tuple):
        return tuple(_round(u, storage) for u in v)
    if getattr(v, "dtype", None) == np.float32 and hasattr(v, "astype"):
        return dtypes.round_to(v, storage)
    return v


def float32_compute(op: str, forward: bool, half_kernels=None, array_code: bool = False):
    """Decorator of an op function `fn(be, *args, **kwargs)` (see the module
    docstring). forward=True: fn returns (y, ctx), y is rounded and a tuple
    ctx becomes a HalfCtx; forward=False: every returned array is a gradient,
    all rounded. half_kernels(be, *args, **kwargs): True when the op's kernels
    take this half call on a kernel backend (fn then gets the half arrays),
    "array" when the op computes this call with array code on kernel backends
    too (in float32, as cpu does; the op records its fallback).
    array_code: the op is array code on every backend (it has no kernel), so
    kernel backends compute half calls as cpu does."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(be, *args, **kwargs):
            storage = _storage(args, kwargs.values())
            if storage is None:
                return fn(be, *args, **kwargs)
            route = half_kernels(be, *args, **kwargs) if half_kernels is not None and be.kernels is not None \
                and not array_code else "array"
            if route != "array":
                if route:
                    return fn(be, *args, **kwargs)
                raise NotImplementedError(
                    f"{op}: the {be.name} backend has no {storage.name} kernels for it yet; run half precision "
                    f"on 'cpu' (float32 compute, outputs rounded to {storage.name}) or convert to float32")
            out = fn(be, *(_up(a) for a in args), **{k: _up(v) for k, v in kwargs.items()})
            if forward:
                y, ctx = out
                y_half = _round(y, storage)
                if not isinstance(ctx, tuple):
                    return y_half, ctx
                # the kernels keep only the rounded output: a ctx holding y reads it as they will
                y_read = _up(y_half)
                return y_half, HalfCtx(storage, tuple(y_read if c is y else c for c in ctx))
            return _round(out, storage)
        return run
    return wrap


def kernel_view(be, a):
    """A half array as the kernels take it: float16 as is, bfloat16 as an
    int16 view of its bits (NumPy's buffer protocol cannot export ml_dtypes'
    bfloat16, and the bindings name dtypes by their array-interface type)."""
    return a.view(be.xp.int16) if a.dtype == dtypes.bfloat16 else a
