"""Exchanging arrays with other frameworks without copying, through DLPack.

    x = gpunet.from_dlpack(t)       t: a PyTorch tensor, CuPy, JAX or NumPy array,
                                    or a DLPack capsule
    t = torch.from_dlpack(x)        gpunet arrays ARE NumPy (cpu, sim) or CuPy (cuda,
    y = jax.numpy.from_dlpack(x)    cupy) arrays and implement __dlpack__, so every
                                    DLPack consumer takes them directly
    c = gpunet.to_dlpack(x)         a capsule, for APIs that want one
                                    (torch.utils.dlpack.from_dlpack(c))

from_dlpack returns host memory as a NumPy array and GPU memory as a CuPy
array on the producer's GPU, sharing the producer's memory: writes through
one are seen by the other. `device=` then puts the result on that backend
(gpunet.asarray semantics: a copy only when the memory is elsewhere, e.g. a
GPU tensor asked for on 'cpu'). Streams follow the DLPack protocol: CuPy hands
its current stream to the producer, which orders its pending work before it.
A bare (legacy) capsule imported into host memory comes back read-only: that
is NumPy's rule, as such capsules carry no read-only flag; pass the producer
object itself (the tensor, not its capsule) for a writable view.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .backend import get_backend

# DLPack device types (dlpack.h DLDeviceType)
_HOST = {1: "CPU", 3: "CUDA host (pinned)"}
_GPU = {2: "CUDA", 13: "CUDA managed"}


def from_dlpack(x, device=None):
    """`x` (anything implementing __dlpack__, or a DLPack capsule) as a NumPy
    array (host memory) or CuPy array (GPU memory), without copying; with
    `device` given, moved onto that backend ('cpu', 'cuda:1', ...)."""
    arr = _import(x)
    return arr if device is None else get_backend(device).asarray(arr)


def to_dlpack(x, stream=None):
    """A DLPack capsule of the NumPy or CuPy array `x` (zero-copy; consumable
    once). `stream`: the consumer's CUDA stream, which CuPy makes wait for the
    array's pending work (None: the legacy default stream). Consumers that
    accept arrays (torch.from_dlpack, np.from_dlpack, ...) can take `x` itself."""
    if not _is_ours(x):
        raise TypeError(f"x: expected a numpy.ndarray or cupy.ndarray, got {_kind(x)}")
    return x.__dlpack__() if isinstance(x, np.ndarray) else x.__dlpack__(stream=stream)


def _import(x):
    if _is_ours(x):
        return x
    if type(x).__name__ == "PyCapsule":
        x = _Capsule(x)
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        dev_type, dev_id = (int(v) for v in x.__dlpack_device__())
        if dev_type in _HOST:
            return np.from_dlpack(x)
        if dev_type in _GPU:
            return _cupy(f"{_GPU[dev_type]} memory on GPU {dev_id}").from_dlpack(x)
        raise ValueError(f"x: DLPack device type {dev_type} (device {dev_id}) is neither host nor CUDA memory")
    if hasattr(x, "__cuda_array_interface__"):  # e.g. Numba device arrays
        return _cupy("a __cuda_array_interface__ array").asarray(x)
    raise TypeError(f"x: expected an array implementing DLPack (__dlpack__) or a DLPack capsule, got {_kind(x)}")


def _is_ours(x) -> bool:
    return isinstance(x, np.ndarray) or (type(x).__module__.startswith("cupy") and type(x).__name__ == "ndarray")


def _kind(x) -> str:
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def _cupy(what: str):
    try:
        import cupy
    except ImportError:
        raise RuntimeError(f"x: {what} needs CuPy to be imported into gpunet "
                           "(pip install gpunet[cuda12] or gpunet[cuda13])") from None
    return cupy


class _Capsule:
    """A bare DLPack capsule (e.g. torch.utils.dlpack.to_dlpack's) dressed as a
    producer, so np.from_dlpack / cupy.from_dlpack can take it. Its device is
    read from the DLManagedTensor[Versioned] struct the capsule points to."""

    _api = ctypes.pythonapi
    _api.PyCapsule_GetName.restype = ctypes.c_char_p
    _api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    _api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    _api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    # offset of DLTensor.device: after `void* data`, in a DLManagedTensor (the
    # DLTensor comes first) or a DLManagedTensorVersioned (after the version,
    # manager_ctx, deleter and flags: 4 x 8 bytes)
    _DEVICE_OFFSET = {b"dltensor": 8, b"dltensor_versioned": 32 + 8}

    def __init__(self, capsule):
        name = self._api.PyCapsule_GetName(capsule)
        if name not in self._DEVICE_OFFSET:
            used = name is not None and name.startswith(b"used_")
            raise ValueError("x: this DLPack capsule was already consumed (a capsule can be imported once)" if used
                             else f"x: expected a DLPack capsule ('dltensor'), got a capsule named {name!r}")
        base = self._api.PyCapsule_GetPointer(capsule, name)
        device = (ctypes.c_int32 * 2).from_address(base + self._DEVICE_OFFSET[name])
        self._device = (int(device[0]), int(device[1]))
        self._capsule = capsule

    def __dlpack_device__(self):
        return self._device

    def __dlpack__(self, *args, **kwargs):
        # the capsule is what it is: no stream hand-off or copy can be negotiated
        return self._capsule
