"""Whole modules in gpunet.save archives (torch.save(model, f)), and the
allow-list that guards loading them (torch.serialization.safe_globals).

A module is saved as the manifest node {"t": "module", "key": K, "class": C}:
entry K holds a pickle of the module's structure in which every array is a
reference to its own .npy entry (K/0, K/1, ...), so the weights stay
readable without pickle. Loading unpickles the structure, as torch's
weights_only rules say (default True, as torch since 2.6): a class or function
the pickle names must be a gpunet module or tensor class, one of a few harmless
reconstruction helpers, or on the allow-list (add_safe_globals, or the
safe_globals context manager); anything else is refused with its name, before
any of it runs. weights_only=False unpickles anything: only for trusted files.
"""
from __future__ import annotations

import contextlib
import io
import pickle
import threading

import numpy as np

from .backend import to_numpy

__all__ = ["add_safe_globals", "clear_safe_globals", "get_safe_globals", "safe_globals"]

_safe: list = []
_local = threading.local()

# Reconstruction helpers a module's pickle names, none of which can run arbitrary code.
_HELPERS = {
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
    ("builtins", "complex"), ("builtins", "getattr"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    ("numpy", "dtype"), ("gpunet.backend", "get_backend"), ("gpunet.devices", "device"),
    ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
}


def add_safe_globals(objs):
    """Allow these classes/functions in every later weights_only load (torch's name)."""
    _safe.extend(objs)


def clear_safe_globals():
    _safe.clear()


def get_safe_globals() -> list:
    return list(_safe) + list(getattr(_local, "extra", ()))


@contextlib.contextmanager
def safe_globals(objs):
    """Allow these classes/functions in weights_only loads inside the block (torch's name)."""
    previous = getattr(_local, "extra", ())
    _local.extra = tuple(previous) + tuple(objs)
    try:
        yield
    finally:
        _local.extra = previous


def _allowed(module: str, name: str, obj) -> bool:
    from .autograd.tensor import Tensor
    from .nn.module import Module
    if (module, name) in _HELPERS or any(obj is s for s in get_safe_globals()):
        return True
    if module.startswith("numpy.dtypes") or module == "numpy" and isinstance(obj, type) and \
            issubclass(obj, np.generic):
        return True
    return module.startswith("gpunet.") and isinstance(obj, type) and issubclass(obj, (Module, Tensor))


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("cupy") and hasattr(x, "__cuda_array_interface__")


class _Pickler(pickle.Pickler):
    def __init__(self, file, key: str, arrays: dict):
        super().__init__(file, protocol=4)
        self.key, self.arrays, self.count = key, arrays, 0

    def persistent_id(self, obj):
        if not _is_array(obj):
            return None
        entry = f"{self.key}/{self.count}"
        self.count += 1
        arr = np.array(to_numpy(obj))  # a copy: a view's whole base must not be written
        if arr.dtype.hasobject:
            raise TypeError(f"save: an array of the module at {self.key!r} has dtype object")
        self.arrays[entry] = arr
        return ("array", entry, None if isinstance(obj, np.ndarray) else int(obj.device.id))


def encode_module(module, key: str, arrays: dict) -> dict:
    buf = io.BytesIO()
    try:
        _Pickler(buf, key, arrays).dump(module)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise TypeError(f"save: the module at {key!r} ({type(module).__qualname__}) cannot be saved whole: {e}; "
                        "save its state_dict() instead") from e
    arrays[key] = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    cls = type(module)
    return {"t": "module", "key": key, "class": f"{cls.__module__}.{cls.__qualname__}"}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, arrays: dict, weights_only: bool, place):
        super().__init__(file)
        self.arrays, self.weights_only, self.place = arrays, weights_only, place

    def find_class(self, module, name):
        obj = super().find_class(module, name)
        if self.weights_only and not _allowed(module, name, obj):
            raise pickle.UnpicklingError(
                f"weights_only load refuses {module}.{name}: allow it with gpunet.serialization.safe_globals("
                f"[{name}]) (or add_safe_globals) if you trust this file, or pass weights_only=False")
        return obj

    def persistent_load(self, pid):
        kind, entry, gpu = pid
        if kind != "array" or entry not in self.arrays:
            raise pickle.UnpicklingError(f"the module refers to entry {entry!r}, which the archive does not contain")
        return self.place(self.arrays[entry], gpu)


def decode_module(node: dict, arrays: dict, weights_only: bool, moved: bool):
    """The module of a "module" node; arrays go back to the GPU they came from unless map_location moved them."""
    def place(arr, gpu):
        if gpu is None or moved:
            return arr
        from .backend import get_backend
        return get_backend(f"cuda:{gpu}").asarray(arr)
    raw = arrays[node["key"]]
    try:
        return _Unpickler(io.BytesIO(raw.tobytes()), arrays, weights_only, place).load()
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"{node['class']}: {e}") from None
