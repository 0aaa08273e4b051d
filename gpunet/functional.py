"""Functional forms: `gpunet.functional.softmax(x, dim=-1)` and friends, as
torch.nn.functional. On arrays they are forward only (no state, nothing saved
for backward) and run on the natural backend of `x` (cpu for NumPy arrays;
cuda, else cupy, for CuPy arrays); pass `device=` to pick another (e.g. 'sim'
for NumPy arrays through the kernels). On gpunet Tensors they record an
autograd node through the module of the same op (gpunet/nn/functional.py), so
`loss.backward()` reaches through them. The layer forms (conv2d,
cross_entropy, ...) are gpunet.nn.functional's, re-exported at the end."""
from __future__ import annotations

import math

import numpy as np

from .autograd.tensor import Tensor
from . import dtypes
from .backend import backend_of, get_backend
from .ops import activation as _act
from .ops import softmax as _softmax


def _backend(x, device):
    """The backend running the call; x must be its floating-point array (an
    integer input would be truncated or read as garbage by the kernels)."""
    be = backend_of(x) if device is None else get_backend(device)
    if not be.owns(x):
        raise TypeError(f"x: expected an array of backend {be.device!r}, got {type(x).__module__}.{type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"x: expected a floating-point array, got dtype {x.dtype}")
    return be


def _finite(v, name: str) -> float:
    """A real number option (beta, negative_slope, threshold) as a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    return float(v)


# ---------------------------------------------------------------- softmax
def _softmax_call(x, dim, beta, dtype, device, log):
    if isinstance(x, Tensor):
        from .nn import activation, functional as nn_functional
        module = (activation.LogSoftmax if log else activation.Softmax)(dim, _finite(beta, "beta"))
        return nn_functional._record(module, x if dtype is None else x.to(dtype=dtype))
    be = _backend(x, device)
    dim = _softmax.resolve_dim(dim, x.ndim)
    if dtype is not None:  # PyTorch's dtype=: the input is cast first
        x = x.astype(dtype)
    return _softmax.softmax_forward(be, x, dim, _finite(beta, "beta"), log=log)[0]


def softmax(x, dim=None, beta: float = 1.0, *, dtype=None, device=None):
    """e^{beta x_i} / sum_j e^{beta x_j} along `dim` (stable for any beta);
    dim=None is PyTorch's implicit (deprecated) choice."""
    return _softmax_call(x, dim, beta, dtype, device, log=False)


def log_softmax(x, dim=None, beta: float = 1.0, *, dtype=None, device=None):
    """beta x_i - log sum_j e^{beta x_j} along `dim`."""
    return _softmax_call(x, dim, beta, dtype, device, log=True)


# ---------------------------------------------------------------- activations
_MODULES = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "sigmoid": "Sigmoid", "tanh": "Tanh", "softsign": "Softsign",
            "gelu": "GELU", "softplus": "Softplus", "heaviside": "Heaviside", "sign": "Sign", "silu": "SiLU",
            "elu": "ELU"}


def _activation(kind, x, device, **params):
    if isinstance(x, Tensor):  # the activation's module, recorded as one autograd node
        from .nn import activation, functional as nn_functional
        return nn_functional._record(getattr(activation, _MODULES[kind])(**params), x)
    return _act.act_forward(_backend(x, device), kind, x, **params)[0]


def relu(x, *, device=None):
    return _activation("relu", x, device)


def leaky_relu(x, negative_slope: float = 0.01, *, device=None):
    return _activation("leaky_relu", x, device, negative_slope=_finite(negative_slope, "negative_slope"))


def sigmoid(x, *, device=None):
    return _activation("sigmoid", x, device)


def tanh(x, *, device=None):
    return _activation("tanh", x, device)


def softsign(x, *, device=None):
    return _activation("softsign", x, device)


def gelu(x, approximate: str = "none", *, device=None):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    return _activation("gelu", x, device, approximate=approximate)


def softplus(x, beta: float = 1.0, threshold: float = 20.0, *, device=None):
    return _activation("softplus", x, device, beta=_finite(beta, "beta"),
                       threshold=_finite(threshold, "threshold"))


def heaviside(x, *, device=None):
    """H(x) = 0 for x < 0, 1 for x >= 0."""
    return _activation("heaviside", x, device)


def sign(x, *, device=None):
    """-1, 0, +1 for x < 0, x = 0, x > 0."""
    return _activation("sign", x, device)


# ---------------------------------------------------------------- attention
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale=None, *, device=None):
    """softmax(query keyᵀ·scale + mask) value, as
    torch.nn.functional.scaled_dot_product_attention (same argument order).
    query (..., L, E), key (..., S, E), value (..., S, Ev) with broadcastable
    batch dims; attn_mask bool (True = take part) or additive float,
    broadcastable to (..., L, S); scale defaults to 1/sqrt(E); dropout_p > 0
    drops probabilities (always, as torch's functional). Forward only: for the
    backward use gpunet.nn.ScaledDotProductAttention, whose backward(dout)
    returns (dq, dk, dv)."""
    from .nn.attention import ScaledDotProductAttention
    from .nn.module import no_grad
    if any(isinstance(a, Tensor) for a in (query, key, value)):
        from .nn import functional as nn_functional
        return nn_functional.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale)
    be = backend_of(query) if device is None else get_backend(device)
    op = ScaledDotProductAttention().to(be)
    dtype = getattr(query, "dtype", None)
    if dtype is not None and dtypes.is_floating(dtype):
        op.to(dtype)  # (half types included) else the input check names query's dtype
    with no_grad():
        return op(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)


# the layer forms, under torch.nn.functional's names (arrays or Tensors), looked
# up on first use: gpunet.nn.functional itself imports this module
_LAYER_FORMS = frozenset({"avg_pool2d", "conv2d", "cross_entropy", "dropout", "embedding", "layer_norm", "linear",
                          "max_pool2d", "mse_loss", "nll_loss", "one_hot", "pad"})


def __getattr__(name):
    if name in _LAYER_FORMS:
        from .nn import functional
        return getattr(functional, name)
    raise AttributeError(f"module 'gpunet.functional' has no attribute {name!r}")
