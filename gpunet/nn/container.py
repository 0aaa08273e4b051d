"""Containers: Sequential, ModuleList, ModuleDict, ParameterList, ParameterDict
and the residual (skip-connection) block."""
from collections import OrderedDict

import numpy as np

from .module import Module, Parameter, get_default_dtype


class Sequential(Module):
    """Applies its modules in order; backward walks them in reverse.
    Sequential(m0, m1, ...) names them "0", "1", ... (state-dict keys
    "0.weight", ...); Sequential(OrderedDict(name=module, ...)) uses the
    names, as torch.nn.Sequential. Indexing with a slice gives a Sequential
    of the same (shared) modules."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: argument {name} must be a Module, got {type(m).__name__}")
            self.add_module(str(name), m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _same_place(Sequential(OrderedDict(list(self._modules.items())[i])), self)
        return list(self._modules.values())[_index(i, len(self))]

    def __setitem__(self, i, m):
        if not isinstance(m, Module):
            raise TypeError(f"Sequential: expected a Module, got {type(m).__name__}")
        setattr(self, list(self._modules)[_index(i, len(self))], m)

    def __delitem__(self, i):
        names = list(self._modules)
        for name in (names[i] if isinstance(i, slice) else [names[_index(i, len(self))]]):
            delattr(self, name)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, m: Module):
        setattr(self, str(len(self)), m.to(self.backend, self.dtype))
        return self

    def forward(self, input):
        for m in self._modules.values():
            input = m(input)
        return input

    def backward(self, dy):
        modules = list(self._modules.values())
        for m in reversed(modules[1:]):
            dy = m.backward(dy)
        return modules[0].backward(dy, input_grad=self.needs_input_grad()) if modules else dy


def _index(i, n: int) -> int:
    """A list index in [-n, n) as a non-negative one (IndexError otherwise)."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"index: expected an int or a slice, got {type(i).__name__}")
    if not -n <= i < n:
        raise IndexError(f"index {i} is out of range for {n} entries")
    return int(i) % n


def _same_place(new: Module, old: Module) -> Module:
    """`new` (a container of `old`'s modules) reporting old's backend and dtype."""
    object.__setattr__(new, "backend", old.backend)
    object.__setattr__(new, "dtype", old.dtype)
    return new


class ModuleList(Module):
    """A list of modules, registered so their parameters belong to the parent
    (names "0", "1", ...), as torch.nn.ModuleList. It has no forward: the
    parent's forward (and backward) calls the modules it holds."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _check(self, m):
        if not isinstance(m, Module):
            raise TypeError(f"{type(self).__name__}: expected a Module, got {type(m).__name__}")
        return m

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _same_place(ModuleList(list(self._modules.values())[i]), self)
        return self._modules[str(_index(i, len(self)))]

    def __setitem__(self, i, m):
        setattr(self, str(_index(i, len(self))), self._check(m))

    def __delitem__(self, i):
        kept = list(self._modules.values())
        del kept[i if isinstance(i, slice) else _index(i, len(self))]
        self._renumber(kept)

    def _renumber(self, modules):
        for name in list(self._modules):
            delattr(self, name)
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def append(self, m):
        setattr(self, str(len(self)), self._check(m))
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, m):
        modules = list(self._modules.values())
        modules.insert(index, self._check(m))
        self._renumber(modules)

    def __iadd__(self, modules):
        return self.extend(modules)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList has no forward: call the modules it holds from the parent's forward")


class ModuleDict(Module):
    """Modules by name (insertion order), registered with the parent, as torch.nn.ModuleDict."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, m):
        if not isinstance(m, Module):
            raise TypeError(f"ModuleDict: expected a Module for key {key!r}, got {type(m).__name__}")
        self.add_module(key, m)

    def __delitem__(self, key):
        delattr(self, key)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def pop(self, key):
        m = self._modules[key]
        del self[key]
        return m

    def clear(self):
        for key in list(self._modules):
            del self[key]

    def update(self, modules):
        for key, m in (modules.items() if hasattr(modules, "items") else modules):
            self[key] = m

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleDict has no forward: call the modules it holds from the parent's forward")


def _as_parameter(value):
    """torch wraps plain tensors as Parameters; here arrays (or array-likes)."""
    return value if isinstance(value, Parameter) else Parameter(np.array(value, dtype=get_default_dtype()))


class ParameterList(Module):
    """Parameters in a list (names "0", "1", ...), registered with the parent,
    as torch.nn.ParameterList; arrays are wrapped as Parameters."""

    def __init__(self, values=None):
        super().__init__()
        if values is not None:
            self.extend(values)

    def __len__(self):
        return len(self._params)

    def __iter__(self):
        return iter(self._params.values())

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _same_place(ParameterList(list(self._params.values())[i]), self)
        return self._params[str(_index(i, len(self)))]

    def __setitem__(self, i, value):
        setattr(self, str(_index(i, len(self))), _as_parameter(value))

    def append(self, value):
        setattr(self, str(len(self)), _as_parameter(value))
        return self

    def extend(self, values):
        for v in values:
            self.append(v)
        return self


class ParameterDict(Module):
    """Parameters by name, registered with the parent, as torch.nn.ParameterDict."""

    def __init__(self, parameters=None):
        super().__init__()
        if parameters is not None:
            self.update(parameters)

    def __getitem__(self, key):
        return self._params[key]

    def __setitem__(self, key, value):
        self.register_parameter(key, _as_parameter(value))

    def __delitem__(self, key):
        delattr(self, key)

    def __len__(self):
        return len(self._params)

    def __iter__(self):
        return iter(self._params)

    def __contains__(self, key):
        return key in self._params

    def keys(self):
        return self._params.keys()

    def values(self):
        return self._params.values()

    def items(self):
        return self._params.items()

    def update(self, parameters):
        for key, value in (parameters.items() if hasattr(parameters, "items") else parameters):
            self[key] = value


class Residual(Module):
    """y = x + f(x) (ResNet's skip connection): the gradient reaches x both
    directly and through f, which counters vanishing gradients in deep stacks.
    f must map its input to an output of the same shape."""

    def __init__(self, fn: Module):
        super().__init__()
        self.fn = fn

    def forward(self, input):
        y = self.fn(input)
        if y.shape != input.shape:
            raise ValueError(f"Residual: f(x) must keep the input shape {tuple(input.shape)}, got {tuple(y.shape)}")
        return input + y

    def backward(self, dy):
        if not self.needs_input_grad():
            return self.fn.backward(dy, input_grad=False)
        return dy + self.fn.backward(dy)
