"""gpunet.amp.autocast: mixed precision at the module boundary.

Inside `with autocast(dtype):` (per thread) every module call is cast once,
where it enters, by the policy of gpunet.amp.lists:

  lower    its floating inputs and its float parameters (a half copy of each,
           made once per autocast region: torch's weight cast cache) in `dtype`
  float32  its floating inputs and parameters in float32
  promote  its floating inputs in the widest of their dtypes
  None     (containers, Embedding...) as called: their submodules decide

The module computes in that dtype (its `dtype` reads it for the call). Its
backward, which may run after the region ends, gets the same copies again,
receives its gradient in the dtype its output had and returns each input
gradient in the dtype that input had; its parameters' gradients are added
to `.grad` in the parameters' own dtype (float32 for float32 weights).

A module whose op has no half path on the backend (NotImplementedError
before any work, gpunet.ops.half) runs in float32 instead, logged once per
module class and backend at INFO: slower, never silently wrong.

Every module forward and backward passes through `forward` / `backward`
below (gpunet.nn.module wraps them), so no op family casts on its own.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import threading
import weakref

import numpy as np

from .. import dtypes
from . import lists

log = logging.getLogger("gpunet.amp")


class _State(threading.local):
    def __init__(self):
        self.dtype = None     # the lower-precision dtype while autocast is on, else None
        self.cache = None     # id(param) -> (param array, its cast copy) for this region
        self.inside = 0       # > 0 while a cast module runs (its submodules run as it does)


_tls = _State()
_calls = weakref.WeakKeyDictionary()  # forward Call -> _Cast, for the backward of that call
_reported: set = set()


def is_autocast_enabled() -> bool:
    return _tls.dtype is not None


def get_autocast_dtype():
    """The dtype autocast lowers to in this thread, or None when it is off."""
    return _tls.dtype


class autocast:
    """`with gpunet.amp.autocast(dtype=gpunet.bfloat16):` or `@autocast(...)`.
    torch's signature: autocast(device_type, dtype=None, enabled=True,
    cache_enabled=True); device_type is accepted and not needed (the module's
    backend decides where it runs). dtype: bfloat16 (default) or float16."""

    def __init__(self, device_type=None, dtype=None, enabled: bool = True, cache_enabled: bool = True):
        if device_type is not None and not isinstance(device_type, str):
            if dtype is not None:
                raise TypeError(f"device_type: expected a device name such as 'cuda', got {device_type!r}")
            device_type, dtype = None, device_type  # autocast(gpunet.bfloat16)
        if device_type is not None and device_type in dtypes.NAMES:
            device_type, dtype = None, device_type  # autocast("bfloat16")
        dt = dtypes.bfloat16 if dtype is None else dtypes.floating(dtype, "dtype")
        if not dtypes.is_half(dt):
            raise ValueError(f"dtype: autocast lowers to bfloat16 or float16, got {dt}")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled: expected True or False, got {enabled!r}")
        self.dtype, self.enabled, self.cache_enabled = dt, enabled, bool(cache_enabled)
        self._saved = []

    def __enter__(self):
        self._saved.append((_tls.dtype, _tls.cache))
        if self.enabled:
            fresh = _tls.dtype != self.dtype or _tls.cache is None
            _tls.dtype = self.dtype
            _tls.cache = {} if fresh or not self.cache_enabled else _tls.cache
        else:
            _tls.dtype, _tls.cache = None, None
        return self

    def __exit__(self, *exc):
        _tls.dtype, _tls.cache = self._saved.pop()
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with autocast(dtype=self.dtype, enabled=self.enabled, cache_enabled=self.cache_enabled):
                return fn(*args, **kwargs)
        return run


# ------------------------------------------------------------ the module boundary
def _floating(a) -> bool:
    return hasattr(a, "dtype") and hasattr(a, "astype") and dtypes.is_floating(a.dtype)


def _map(tree, fn):
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    if isinstance(tree, tuple):
        items = [_map(t, fn) for t in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    if isinstance(tree, list):
        return [_map(t, fn) for t in tree]
    return fn(tree)


def _dtypes_of(tree):
    return _map(tree, lambda a: a.dtype if _floating(a) else None)


def _cast(tree, dtype):
    return _map(tree, lambda a: a.astype(dtype) if _floating(a) and a.dtype != dtype else a)


def _cast_like(tree, like):
    """Each floating array of `tree` cast to the dtype at the same place of `like` (a _dtypes_of)."""
    if isinstance(tree, (tuple, list)) and isinstance(like, (tuple, list)):
        items = [_cast_like(t, k) for t, k in zip(tree, like)] + list(tree[len(like):])
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    if isinstance(like, np.dtype) and _floating(tree) and tree.dtype != like:
        return tree.astype(like)
    return tree


def _widest(dts):
    dts = {d for d in dts if d is not None}
    if not dts:
        return None
    if len(dts) == 1:
        return dts.pop()
    return max(dts - set(dtypes.HALF), key=lambda d: d.itemsize, default=dtypes.float32)


def _flat_dtypes(tree, out):
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (tuple, list)):
        for t in tree:
            _flat_dtypes(t, out)
    elif tree is not None:
        out.append(tree)
    return out


class _Cast:
    """One module call's cast: the compute dtype, the parameters' copies in
    it, the dtypes its inputs had."""

    def __init__(self, module, dtype, in_dtypes):
        self.dtype, self.in_dtypes = dtype, in_dtypes
        self.params = [p for p in module.parameters() if _floating(p.data) and p.data.dtype != dtype]
        self.copies = [self._copy(p) for p in self.params]
        self.modules = list(module.modules())

    def _copy(self, p):
        cache = _tls.cache
        if cache is None:
            return p.data.astype(self.dtype)
        hit = cache.get(id(p))
        if hit is None or hit[0] is not p.data or hit[1].dtype != self.dtype:
            hit = cache[id(p)] = (p.data, p.data.astype(self.dtype))
        return hit[1]

    def run(self, fn, *args, backward=False, **kwargs):
        """fn(*args) with the parameters' data swapped for the copies and every
        module of the subtree reading `dtype`; parameters' gradients are added
        to their own .grad in their own dtype."""
        originals = [p.data for p in self.params]
        grads = [p.grad for p in self.params] if backward else None
        mod_dtypes = [m.dtype for m in self.modules]
        try:
            for p, c in zip(self.params, self.copies):
                p._data = c
                if backward:
                    p._grad = None
            for m in self.modules:
                object.__setattr__(m, "dtype", self.dtype)
            _tls.inside += 1
            if not backward:
                return fn(*args, **kwargs)
            with _hook_skipping(self.params):
                return fn(*args, **kwargs)
        finally:
            _tls.inside -= 1
            for m, d in zip(self.modules, mod_dtypes):
                object.__setattr__(m, "dtype", d)
            for i, (p, a) in enumerate(zip(self.params, originals)):
                p._data = a
                if backward:
                    g, p._grad = p._grad, grads[i]
                    if g is not None:
                        p.accumulate(g.astype(a.dtype))


def _hook_skipping(params):
    """The gradient hook (DistributedDataParallel's) left out for `params`: their
    cast gradients are partial until added to .grad, which tells the hook then."""
    from ..nn import module as nn_module
    hook = nn_module._grad_hook.fn
    if hook is None or not params:
        return contextlib.nullcontext()
    skip = {id(p) for p in params}
    return nn_module.grad_hook(lambda p: None if id(p) in skip else hook(p))


def _plan(module, args, kwargs):
    """The dtype `module` computes in for this call under autocast, or None (as called)."""
    if _tls.inside:
        return None
    kind = lists.policy(module)
    if kind == lists.LOWER:
        return _tls.dtype
    if kind == lists.FP32:
        return dtypes.float32
    if kind == lists.PROMOTE:
        dts = _flat_dtypes(_dtypes_of((args, kwargs)), [])
        target = _widest(dts)
        return target if target is not None and (target != module.dtype or len(set(dts)) > 1) else None
    return None


def _fallback(module, dtype, err):
    key = (type(module).__name__, module.backend.name, dtype.name)
    if key not in _reported:
        _reported.add(key)
        log.info("autocast: %s has no %s path on %s (%s); it runs in float32", key[0], dtype.name, key[1], err)


def forward(module, fn, run, args, kwargs):
    """A module's forward `fn` run through gpunet.nn.calls' `run` with autocast's cast."""
    if _tls.dtype is None:  # outside autocast: straight through
        return run(module, fn, args, kwargs)
    from ..nn import calls
    forwards = calls._tls.forwards
    # not cast: a super().forward() inside the same call, or a module autocast leaves alone
    target = None if forwards and forwards[-1].module is module else _plan(module, args, kwargs)
    if target is None:
        return run(module, fn, args, kwargs)
    in_dtypes = _dtypes_of((args, kwargs))

    def cast_fn(mod, *a, **kw):
        for dt in ([target, dtypes.float32] if dtypes.is_half(target) else [target]):
            cast = _Cast(mod, dt, in_dtypes)
            a2, kw2 = _cast((a, kw), dt)
            forwards = calls._tls.forwards
            call = forwards[-1] if forwards and forwards[-1].module is mod else None
            try:
                out = cast.run(fn, mod, *a2, **kw2)
            except NotImplementedError as err:
                if dt == dtypes.float32:
                    raise
                _fallback(mod, dt, err)
                if call is not None:
                    call.children.clear()
                continue
            if call is not None:
                _calls[call] = cast
            return out

    return run(module, cast_fn, args, kwargs)


def backward(module, fn, run, args, kwargs):
    """A module's backward through `run`: as its forward was cast, if it was."""
    from ..nn import calls
    if not _calls:
        return run(module, fn, args, kwargs)

    def cast_fn(mod, *a, **kw):
        backwards = calls._tls.backwards
        cast = _calls.pop(backwards[-1], None) if backwards and backwards[-1].module is mod else None
        if cast is None:
            return fn(mod, *a, **kw)
        grads_in = _cast(a, cast.dtype)  # the gradient of an output it computed in that dtype
        dx = cast.run(fn, mod, *grads_in, backward=True, **kw)
        args_dtypes = cast.in_dtypes[0]
        return _cast_like(dx, args_dtypes[0] if not isinstance(dx, tuple) else args_dtypes)

    return run(module, cast_fn, args, kwargs)
