"""Weight initialisation, as torch.nn.init, drawing from gpunet's seeded
generator (`gpunet.manual_seed`). Functions take a Parameter (or array) and
return a new NumPy array of its shape; `Module.to` moves it afterwards."""
from __future__ import annotations

import math
import os

import numpy as np

from ..random import generator


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
    return generator().uniform(low, high, size=_drawn(shape, dtype)).astype(dtype)


def normal(shape, mean: float = 0.0, std: float = 1.0, dtype=np.float32) -> np.ndarray:
    return generator().normal(mean, std, size=_drawn(shape, dtype)).astype(dtype)


def ones(shape, dtype=np.float32) -> np.ndarray:
    return np.ones(_fits(shape, np.dtype(dtype).itemsize), dtype)


def zeros(shape, dtype=np.float32) -> np.ndarray:
    return np.zeros(_fits(shape, np.dtype(dtype).itemsize), dtype)


def xavier_uniform(shape, gain: float = 1.0, dtype=np.float32) -> np.ndarray:
    fan_in, fan_out = _fans(shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(shape, -a, a, dtype)


def xavier_normal(shape, gain: float = 1.0, dtype=np.float32) -> np.ndarray:
    fan_in, fan_out = _fans(shape)
    return normal(shape, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), dtype)


def kaiming_uniform(shape, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    dtype=np.float32) -> np.ndarray:
    fan_in, fan_out = _fans(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform(shape, -bound, bound, dtype)


def kaiming_normal(shape, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                   dtype=np.float32) -> np.ndarray:
    fan_in, fan_out = _fans(shape)
    fan = fan_in if mode == "fan_in" else fan_out
    return normal(shape, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan), dtype)


def fan_in_uniform(shape, fan_in: int, dtype=np.float32) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for biases (and for
    RNN/LSTM weights with fan_in = hidden_size)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform(shape, -bound, bound, dtype)


def default_weight(shape, dtype=np.float32) -> np.ndarray:
    """PyTorch's Linear/Conv default: kaiming_uniform with a = sqrt(5), i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return kaiming_uniform(shape, a=math.sqrt(5), dtype=dtype)
