"""Gradient clipping, as torch.nn.utils: both modify the gradients in place
and keep everything on the parameters' device."""
from __future__ import annotations

import math

import numpy as np

from ..backend import backend_of
from ..autograd.tensor import Tensor


def _grads(parameters) -> list:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = []
    for i, p in enumerate(parameters):
        if not isinstance(p, Tensor):
            raise TypeError(f"parameters: element {i}: expected a gpunet Parameter or Tensor, got {type(p).__name__}")
        if p._grad is not None:
            grads.append(p._grad)
    return grads


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False):
    """Scale all gradients together so that their joint norm (the norm of the
    vector of every gradient element) is at most `max_norm`: each gradient is
    multiplied by min(1, max_norm / (total_norm + 1e-6)). norm_type may be any
    p >= 1 or math.inf. Returns the total norm before clipping as a 0-d array on
    the gradients' device (no device-to-host sync unless error_if_nonfinite)."""
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not norm_type >= 1:
        raise ValueError(f"norm_type: expected a number >= 1 or math.inf, got {norm_type!r}")
    if max_norm < 0:
        raise ValueError(f"max_norm: expected a non-negative number, got {max_norm!r}")
    grads = _grads(parameters)
    if not grads:
        return np.zeros((), dtype=np.float32)
    xp = backend_of(grads[0]).xp
    norms = xp.stack([xp.linalg.norm(g.ravel(), ord=norm_type) for g in grads])
    total = xp.asarray(xp.linalg.norm(norms, ord=norm_type))  # 0-d array (NumPy would give a scalar)
    if error_if_nonfinite and not math.isfinite(float(total)):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
                           f"{float(total)}, so they cannot be clipped (error_if_nonfinite=True)")
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef.astype(g.dtype)
    return total


def clip_grad_value_(parameters, clip_value: float):
    """Clamp every gradient element into [-clip_value, clip_value], in place."""
    clip_value = float(clip_value)
    if clip_value < 0:
        raise ValueError(f"clip_value: expected a non-negative number, got {clip_value!r}")
    for g in _grads(parameters):
        backend_of(g).xp.clip(g, -clip_value, clip_value, out=g)
