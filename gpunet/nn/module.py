"""Module and Parameter: the stateful layer API with explicit backward passes.

A forward saves what its backward needs (`self.save(...)`) in the record of
that one call, which lives as long as the call's output does; `backward(dy)`
finds the call that `dy` differentiates by identity (gpunet/nn/calls.py), so
an extra forward between a forward and its backward, a module used twice, or
two losses backpropagated in either order give the right gradients or a clear
error, never another forward's. `gpunet.no_grad()` saves nothing at all.
"""
from __future__ import annotations

import functools
import itertools
import threading
import weakref
from collections import OrderedDict, namedtuple
from contextlib import contextmanager

import numpy as np

from .. import dtypes
from ..amp import autocast_mode as amp_autocast
from ..autograd import modules as autograd_modules
from ..autograd.tensor import Tensor
from ..backend import Backend, default_backend, get_backend, to_numpy
from . import calls
from .calls import enable_grad, is_grad_enabled, no_grad  # noqa: F401 (re-exported)

_default_dtype = [np.dtype(np.float32)]


def get_default_dtype() -> np.dtype:
    return _default_dtype[0]


def set_default_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected float32 or float64, got {dtype}")
    _default_dtype[0] = dtype

from .param_array import ParamArray, param_view  # noqa: E402

# what load_state_dict returns, under PyTorch's field names
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Parameter(Tensor):
    """A trainable leaf Tensor. Its `data` and `grad` are the backend arrays
    themselves (None until a backward pass adds to it): the explicit backward
    passes accumulate into `grad` and optimizers update `data` in place, and a
    Tensor expression using the parameter reaches the same arrays, so both
    styles fill one gradient. `backend` is set by `Module.to` (NumPy arrays
    alone cannot tell cpu from sim; the optimizer runs its update there)."""

    __slots__ = ()

    def __init__(self, data=None, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data._data
        super().__init__(data)
        self._requires_grad = bool(requires_grad)

    @property
    def data(self):
        # the array itself, which on host backends also has torch's in-place methods
        # (nn/param_array.py); kept as that view so `p.data is p.data`
        d = self._data
        if type(d) is not ParamArray:
            d = self._data = param_view(d)
        return d

    @data.setter
    def data(self, value):
        self._data = value._data if isinstance(value, Tensor) else value

    @property
    def grad(self):
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad = value._data if isinstance(value, Tensor) else value

    @property
    def backend(self) -> Backend:
        return Tensor.backend.fget(self)

    @backend.setter
    def backend(self, be):
        self._backend = be

    def accumulate(self, g):
        """Add `g` into `grad` (the gradient of a parameter used several times is the sum)."""
        if not self._requires_grad:
            return
        if self._grad is None:
            self._grad = g.copy() if g.base is not None or g is self._data else g
        else:
            self._grad += g
        self._after_grad()

    def _accumulate(self, g):
        """A gradient from the autograd engine (a Tensor expression using this parameter)."""
        super()._accumulate(g)
        self._after_grad()

    def _after_grad(self):
        """Tell a gradient hook (DistributedDataParallel's bucketing) that this gradient grew."""
        hook = _grad_hook.fn
        if hook is not None:
            hook(self)

    def __repr__(self):
        return f"Parameter(shape={tuple(self.shape)}, dtype={self.dtype})"


class _GradHook(threading.local):
    fn = None


_grad_hook = _GradHook()


@contextmanager
def grad_hook(fn):
    """Within this block (in this thread) `fn(param)` runs after each gradient
    contribution a backward adds to a parameter: DistributedDataParallel learns
    from it when a gradient is final and starts reducing it during the backward."""
    prev = _grad_hook.fn
    _grad_hook.fn = fn
    try:
        yield
    finally:
        _grad_hook.fn = prev


class Module:
    """Base class. Subclasses implement `forward(*inputs)` and `backward(*grads)`,
    calling `self.save(...)` in forward and `self.saved()` in backward.
    `backward(*grads, output=y)` names the forward to differentiate when
    several are pending (see gpunet/nn/calls.py for how it is found otherwise)."""

    def __init_subclass__(cls, **kwargs):
        # every forward and backward a subclass defines runs as one call of the
        # module, however it is invoked (m(x), m.forward(x), super().forward(x))
        super().__init_subclass__(**kwargs)
        for name, run in (("forward", calls.run_forward), ("backward", calls.run_backward)):
            fn = cls.__dict__.get(name)
            if fn is not None and not hasattr(fn, "__gpunet_call__"):
                setattr(cls, name, _as_call(fn, run))

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_calls", weakref.WeakSet())  # this module's top-level forward calls
        object.__setattr__(self, "_latest", None)  # the latest of them, kept while its output may be dropped
        object.__setattr__(self, "_epoch", 0)  # bumped by .to(): older calls' saved state is stale
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "backend", default_backend())
        object.__setattr__(self, "dtype", get_default_dtype())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    def _place(self, device, dtype):
        """PyTorch's factory arguments of the constructors (device=, dtype=):
        the parameters are made on the CPU in the default dtype, then moved
        (to the default device when no device is named: set_default_device)."""
        if device is None and self.backend.name != "cpu":
            device = self.backend
        if device is not None or dtype is not None:
            self.to(device, dtype)

    # ------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(_no_init(self, f"cannot assign {type(value).__name__} {name!r}"))
            object.__setattr__(self, name, value)
            return
        if isinstance(value, Parameter):
            self._params[name] = value
            self._modules.pop(name, None)
        elif isinstance(value, Module):
            self._modules[name] = value
            self._params.pop(name, None)
        elif name in self._params:
            if value is not None:
                raise TypeError(f"{name}: assign a Parameter (or None), got {type(value).__name__}")
            self._params[name] = None
        elif name in self._modules:
            if value is not None:
                raise TypeError(f"{name}: assign a Module (or None), got {type(value).__name__}")
            self._modules[name] = None
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # reached only when normal lookup fails: name the forgotten super().__init__()
        if name.startswith("_") and "_params" not in self.__dict__:
            raise AttributeError(_no_init(self, f"{type(self).__name__} has no {name!r}"))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for table in ("_params", "_modules", "_buffers"):
            self.__dict__.get(table, {}).pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value, persistent: bool = True):
        """A non-trainable array moved with the module (e.g. BatchNorm's running
        mean), saved in state_dict unless persistent=False (a causal mask)."""
        _check_name(self, name, "buffer")
        self._buffers[name] = bool(persistent)
        object.__setattr__(self, name, value)

    def register_parameter(self, name: str, param):
        """Add a Parameter (or None: a declared, absent one) under `name`, as torch."""
        _check_name(self, name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"param: expected a gpunet Parameter or None, got {type(param).__name__}")
        self._params[name] = param
        self._modules.pop(name, None)
        object.__setattr__(self, name, param)

    def add_module(self, name: str, module):
        """Add a child Module (or None) under `name`, as torch."""
        _check_name(self, name, "module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"module: expected a gpunet Module or None, got {type(module).__name__}")
        self._modules[name] = module
        self._params.pop(name, None)
        object.__setattr__(self, name, module)

    register_module = add_module

    def get_submodule(self, target: str) -> "Module":
        """The submodule at a dotted path ("encoder.layers.0"); "" is self."""
        m = self
        for part in target.split(".") if target else ():
            child = m._modules.get(part)
            if child is None:
                raise AttributeError(f"get_submodule: {type(m).__name__} has no submodule {part!r} (in {target!r})")
            m = child
        return m

    def get_parameter(self, target: str) -> Parameter:
        mod, _, name = target.rpartition(".")
        p = self.get_submodule(mod)._params.get(name)
        if p is None:
            raise AttributeError(f"get_parameter: no parameter {target!r}")
        return p

    # ------------------------------------------------------------ hooks
    def register_forward_pre_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False):
        """hook(module, args) (with_kwargs: hook(module, args, kwargs)) runs before
        each m(...) call; a non-None result replaces the arguments (a tuple, or
        one value; with_kwargs: an (args, kwargs) pair). Returns a handle
        whose remove() unregisters it."""
        return _add_hook(self._forward_pre_hooks, hook, with_kwargs, prepend)

    def register_forward_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False,
                              always_call: bool = False):
        """hook(module, args, output) (with_kwargs: hook(module, args, kwargs,
        output)) runs after each m(...) call; a non-None result replaces the
        output. Returns a handle whose remove() unregisters it."""
        if always_call:
            raise NotImplementedError("always_call=True: gpunet runs forward hooks only after a forward that returned")
        return _add_hook(self._forward_hooks, hook, with_kwargs, prepend)

    # ------------------------------------------------------------ forward/backward
    def __call__(self, *args, **kwargs):
        pre, post = self.__dict__.get("_forward_pre_hooks"), self.__dict__.get("_forward_hooks")
        if not (pre or post or kwargs) and len(args) == 1 and type(args[0]) is np.ndarray:
            return self.forward(args[0])  # most calls: one host array, no hooks
        for hook, with_kwargs in (pre or {}).values():
            if with_kwargs:
                result = hook(self, args, kwargs)
                if result is not None:
                    args, kwargs = result
            else:
                result = hook(self, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        if autograd_modules.has_tensor(args, kwargs):
            output = autograd_modules.call(self, args, kwargs)
        else:
            output = self.forward(*args, **kwargs)
        for hook, with_kwargs in (post or {}).values():
            result = hook(self, args, kwargs, output) if with_kwargs else hook(self, args, output)
            if result is not None:
                output = result
        return output

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, *grads):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def save(self, *ctx):
        """Keep what backward needs, in the record of the forward call now running
        (nothing under gpunet.no_grad())."""
        if calls.is_grad_enabled():
            calls.current_forward(self).ctx = ctx

    def needs_input_grad(self) -> bool:
        """Inside this module's backward: whether its caller wants the
        gradients of the inputs. `m.backward(dy, input_grad=False)` says it
        does not (a training step's first module, whose input is data, as
        PyTorch computes no gradient for an input that does not require one):
        m.backward then returns None and its parameters' gradients alone, and
        a module may skip computing the input's (Conv2d, Linear, Sequential
        and Residual do)."""
        return calls.current_backward(self).input_grad

    def saved(self):
        """What the forward being differentiated saved."""
        ctx = calls.current_backward(self).ctx
        if ctx is None:
            raise RuntimeError(f"{type(self).__name__}.backward: its forward saved nothing for backward")
        return ctx if len(ctx) != 1 else ctx[0]

    # A copy or pickle of a module carries no forward calls: their saved state
    # belongs to the original's outputs.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_calls"] = state["_latest"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__["_calls"] = weakref.WeakSet()

    # ------------------------------------------------------------ traversal
    def children(self):
        return (m for m in self._modules.values() if m is not None)

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self.named_children():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def apply(self, fn):
        """fn(m) for every submodule, children first, then self (as torch: e.g.
        model.apply(init_weights)). Returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def requires_grad_(self, requires_grad: bool = True):
        """Whether the parameters collect gradients (False freezes them). Returns self."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def named_parameters(self, prefix: str = ""):
        """(name, Parameter) pairs, PyTorch's names; a parameter shared by two
        submodules is listed once."""
        seen = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in m._params.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = ""):
        for mname, m in self.named_modules(prefix):
            for bname in m._buffers:
                buf = getattr(m, bname)
                if buf is not None:
                    yield (f"{mname}.{bname}" if mname else bname), buf

    def zero_grad(self, set_to_none: bool = True):
        """Clear every parameter's gradient (drop it, or fill it with zeros in
        place), as in PyTorch; what pending forwards saved is kept."""
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    # ------------------------------------------------------------ device/dtype
    def to(self, device=None, dtype=None):
        """Move parameters and buffers to a device ('cpu', 'sim', 'cuda:0', a
        Backend) and/or cast floating arrays to a dtype (bfloat16, float16,
        float32, float64, as dtypes or names: gpunet.dtypes.resolve);
        `m.to(np.float64)` and `m.to("bfloat16")` work too. Returns self."""
        if device is not None and (not isinstance(device, (str, Backend)) or device in dtypes.NAMES):
            device, dtype = None, device  # m.to(np.float64), m.to("bfloat16")
        be = get_backend(device) if device is not None else None
        if dtype is not None:
            try:
                dtype = dtypes.resolve(dtype)
            except TypeError:
                raise TypeError(f"to: expected a device ('cpu', 'sim', 'cuda:0', a Backend) or a dtype "
                                f"(bfloat16, float16, float32, float64), got {dtype!r}") from None
            dtype = dtypes.floating(dtype)
        for m in self.modules():
            target = be or m.backend
            for p in m._params.values():
                if p is not None:
                    p.data = _convert(p.data, target, dtype)
                    p.backend = target
                    p.grad = None if p.grad is None else _convert(p.grad, target, dtype)
            for bname in m._buffers:
                buf = getattr(m, bname)
                if buf is not None:
                    object.__setattr__(m, bname, _convert(buf, target, dtype, cast=dtypes.is_floating(buf.dtype)))
            object.__setattr__(m, "backend", target)
            if dtype is not None:
                object.__setattr__(m, "dtype", dtype)
            object.__setattr__(m, "_epoch", m._epoch + 1)
            object.__setattr__(m, "_latest", None)
        return self

    @property
    def device(self) -> str:
        return self.backend.device

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    def half(self):
        return self.to(dtype=np.float16)

    def bfloat16(self):
        return self.to(dtype="bfloat16")

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=None):
        """To the GPU `device` (an index, 'cuda:1'; default GPU 0)."""
        if device is None:
            return self.to("cuda")
        return self.to(device if isinstance(device, str) else f"cuda:{int(device)}")

    # ------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """NumPy copies of every parameter and buffer under PyTorch's keys."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            for pname, p in m._params.items():
                if p is not None:
                    out[f"{mname}.{pname}" if mname else pname] = np.array(to_numpy(p.data))
            for bname, persistent in m._buffers.items():
                buf = getattr(m, bname)
                if buf is not None and persistent:
                    out[f"{mname}.{bname}" if mname else bname] = np.array(to_numpy(buf))
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays (NumPy, CuPy or anything np.asarray takes) into parameters
        and buffers, converting to this module's device and dtype. Shapes must
        match; with strict=True the key sets must match too (RuntimeError).
        Returns (missing_keys, unexpected_keys), as PyTorch."""
        own = {}
        for mname, m in self.named_modules():
            for pname, p in m._params.items():
                if p is not None:
                    own[f"{mname}.{pname}" if mname else pname] = (m, pname, True)
            for bname, persistent in m._buffers.items():
                # as state_dict: an unset buffer (a loss's weight=None) or a non-persistent one has no key
                if getattr(m, bname) is not None and persistent:
                    own[f"{mname}.{bname}" if mname else bname] = (m, bname, False)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise RuntimeError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                               f"unexpected keys {unexpected}")
        for key, (m, name, is_param) in own.items():
            if key not in state_dict:
                continue
            value = np.array(to_numpy(state_dict[key]))  # a copy: training must not write into the caller's dict
            current = m._params[name].data if is_param else getattr(m, name)
            if current is not None and tuple(value.shape) != tuple(current.shape):
                raise ValueError(f"load_state_dict: key {key!r} expected shape {tuple(current.shape)}, "
                                 f"got {tuple(value.shape)}")
            dtype = current.dtype if current is not None else None
            arr = m.backend.asarray(value, dtype=dtype)
            if is_param:
                m._params[name].data = arr
                m._params[name].grad = None
            else:
                object.__setattr__(m, name, arr)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def _as_call(fn, run):
    # through gpunet.amp's module boundary, which casts the call under autocast
    if run is calls.run_forward:
        @functools.wraps(fn)
        def method(self, *args, **kwargs):
            if not amp_autocast.is_autocast_enabled():  # nothing to cast: one call fewer on every forward
                return run(self, fn, args, kwargs)
            return amp_autocast.forward(self, fn, run, args, kwargs)
    else:
        @functools.wraps(fn)
        def method(self, *args, **kwargs):
            return amp_autocast.backward(self, fn, run, args, kwargs)
    method.__gpunet_call__ = True
    return method


def _convert(x, be: Backend, dtype, cast: bool = True):
    if dtype is not None and cast:
        return be.asarray(x, dtype=dtype)
    if be.owns(x):
        return x
    return be.asarray(x)


def _no_init(module, what: str) -> str:
    return (f"{what}: Module.__init__() has not run; call super().__init__() first in "
            f"{type(module).__name__}.__init__")


def _check_name(module, name, what: str):
    if "_params" not in module.__dict__:
        raise AttributeError(_no_init(module, f"cannot register {what} {name!r}"))
    if not isinstance(name, str) or not name or "." in name:
        raise KeyError(f"{what} name: expected a non-empty str without '.', got {name!r}")
    if hasattr(module, name) and name not in module._params and name not in module._modules \
            and name not in module._buffers:
        raise KeyError(f"{what} name {name!r}: the module already has an attribute of that name")


class RemovableHandle:
    """What register_forward_hook returns: remove() unregisters the hook; also
    a context manager that removes it on exit."""

    def __init__(self, table: OrderedDict, key: int):
        self._table, self.id = table, key

    def remove(self):
        self._table.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


_hook_ids = itertools.count()


def _add_hook(table: OrderedDict, hook, with_kwargs: bool, prepend: bool) -> RemovableHandle:
    if not callable(hook):
        raise TypeError(f"hook: expected a callable, got {type(hook).__name__}")
    key = next(_hook_ids)
    table[key] = (hook, bool(with_kwargs))
    if prepend:
        table.move_to_end(key, last=False)
    return RemovableHandle(table, key)
