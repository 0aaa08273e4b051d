"""Weight initialisation, as torch.nn.init, drawing from gpunet's seeded
generator (`gpunet.manual_seed`) or from a `generator=` (gpunet.Generator).

Two forms:
  - torch's in-place ones, `uniform_(p, a, b)`, `xavier_uniform_(p)`, ... take
    a Parameter (or a NumPy/CuPy array), fill it in place on its device and
    dtype, and return it: `model.apply(lambda m: ...)` initialisation;
  - the layers' own, `uniform(shape, low, high)`, `xavier_uniform(shape)`, ...
    take a *shape* and return a new NumPy array of it (the layers build their
    parameters on the host, and `Module.to` moves them afterwards).
`dtype`: any floating dtype or name gpunet.dtypes takes ("bfloat16",
"float16"/"half", ...); draws are made in float64 and rounded once."""
from __future__ import annotations

import math
import os

import numpy as np

from .. import dtypes
from ..backend import backend_of
from ..random import generator, rng_of
from .module import Parameter


def _fans(shape) -> tuple[int, int]:
    if len(shape) < 2:
        raise ValueError(f"fan-in/fan-out need an array of at least 2 dims, got shape {tuple(shape)}")
    receptive = math.prod(shape[2:])  # exact: np.prod wraps around int64 (kernel_size=2**40 gave fan 0)
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    if nonlinearity in ("linear", "conv2d", "sigmoid", "identity"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"nonlinearity: unsupported {nonlinearity!r}")


def _fits(shape, bytes_per_element: int) -> tuple:
    """shape, refused with a clear error when it cannot fit in memory:
    Linear(2**40, 3) names its shape instead of NumPy's MemoryError (and
    Linear(2**31, 1) on a small machine fails at once instead of swapping)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    need = math.prod(shape) * bytes_per_element
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return shape
    if need > physical:
        raise ValueError(f"a parameter of shape {tuple(shape)} would take {need / 2**30:.3g} GiB to initialise, "
                         f"more than this machine's {physical / 2**30:.3g} GiB of memory: expected smaller sizes")
    return shape


def _drawn(shape, dtype) -> tuple:
    return _fits(shape, 8 + np.dtype(dtype).itemsize)  # the float64 draw and its cast


def uniform(shape, low: float, high: float, dtype=np.float32) -> np.ndarray:
    dtype = dtypes.floating(dtype)
    return generator().uniform(low, high, size=_drawn(shape, dtype)).astype(dtype)


def normal(shape, mean: float = 0.0, std: float = 1.0, dtype=np.float32) -> np.ndarray:
    dtype = dtypes.floating(dtype)
    return generator().normal(mean, std, size=_drawn(shape, dtype)).astype(dtype)


def ones(shape, dtype=np.float32) -> np.ndarray:
    dtype = dtypes.floating(dtype)
    return np.ones(_fits(shape, dtype.itemsize), dtype)


def zeros(shape, dtype=np.float32) -> np.ndarray:
    dtype = dtypes.floating(dtype)
    return np.zeros(_fits(shape, dtype.itemsize), dtype)


def xavier_uniform(shape, gain: float = 1.0, dtype=np.float32) -> np.ndarray:
    a = math.sqrt(3.0) * _xavier_std(shape, gain)
    return uniform(shape, -a, a, dtype)


def xavier_normal(shape, gain: float = 1.0, dtype=np.float32) -> np.ndarray:
    return normal(shape, 0.0, _xavier_std(shape, gain), dtype)


def _kaiming_std(shape, a, mode, nonlinearity) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode: expected 'fan_in' or 'fan_out', got {mode!r}")
    fan = _fans(shape)[0 if mode == "fan_in" else 1]
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def _xavier_std(shape, gain) -> float:
    fan_in, fan_out = _fans(shape)
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def kaiming_uniform(shape, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    dtype=np.float32) -> np.ndarray:
    bound = math.sqrt(3.0) * _kaiming_std(shape, a, mode, nonlinearity)
    return uniform(shape, -bound, bound, dtype)


def kaiming_normal(shape, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                   dtype=np.float32) -> np.ndarray:
    return normal(shape, 0.0, _kaiming_std(shape, a, mode, nonlinearity), dtype)


def fan_in_uniform(shape, fan_in: int, dtype=np.float32) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for biases (and for
    RNN/LSTM weights with fan_in = hidden_size)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform(shape, -bound, bound, dtype)


def default_weight(shape, dtype=np.float32) -> np.ndarray:
    """PyTorch's Linear/Conv default: kaiming_uniform with a = sqrt(5), i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return kaiming_uniform(shape, a=math.sqrt(5), dtype=dtype)


# ---------------------------------------------------------------- torch's in-place forms
def _target(tensor):
    """The array a Parameter (or an array itself) holds."""
    data = tensor.data if isinstance(tensor, Parameter) else tensor
    if not hasattr(data, "shape") or not hasattr(data, "dtype") or data.dtype.kind != "f":
        raise TypeError(f"tensor: expected a Parameter or a floating-point array, got {type(tensor).__name__}")
    return data


def _fill(tensor, values):
    """Write host `values` into the tensor in place, on its device and dtype; returns tensor."""
    data = _target(tensor)
    data[...] = backend_of(data).xp.asarray(np.asarray(values), dtype=data.dtype)
    return tensor


def _shape(tensor):
    return tuple(_target(tensor).shape)


def uniform_(tensor, a: float = 0.0, b: float = 1.0, generator=None):
    return _fill(tensor, rng_of(generator).uniform(a, b, size=_shape(tensor)))


def normal_(tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    return _fill(tensor, rng_of(generator).normal(mean, std, size=_shape(tensor)))


def constant_(tensor, val: float):
    return _fill(tensor, np.full(_shape(tensor), val))


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain: float = 1.0, generator=None):
    a = math.sqrt(3.0) * _xavier_std(_shape(tensor), gain)
    return uniform_(tensor, -a, a, generator)


def xavier_normal_(tensor, gain: float = 1.0, generator=None):
    return normal_(tensor, 0.0, _xavier_std(_shape(tensor), gain), generator)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator=None):
    bound = math.sqrt(3.0) * _kaiming_std(_shape(tensor), a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator=None):
    return normal_(tensor, 0.0, _kaiming_std(_shape(tensor), a, mode, nonlinearity), generator)


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0, generator=None):
    """N(mean, std) restricted to [a, b]: out-of-range draws are drawn again."""
    if not a < b:
        raise ValueError(f"a, b: expected a < b, got a={a!r}, b={b!r}")
    rng, shape = rng_of(generator), _shape(tensor)
    values = rng.normal(mean, std, size=shape)
    bad = (values < a) | (values > b)
    while bad.any():
        values[bad] = rng.normal(mean, std, size=int(bad.sum()))
        bad = (values < a) | (values > b)
    return _fill(tensor, values)


def orthogonal_(tensor, gain: float = 1.0, generator=None):
    """A (semi-)orthogonal matrix over the tensor flattened to (shape[0], rest),
    as torch: the Q of a QR of a normal draw, signs fixed by R's diagonal."""
    shape = _shape(tensor)
    if len(shape) < 2:
        raise ValueError(f"tensor: orthogonal_ needs at least 2 dims, got shape {shape}")
    rows, cols = shape[0], int(np.prod(shape[1:]))
    flat = rng_of(generator).normal(0.0, 1.0, size=(rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, gain * q.reshape(shape))
