"""Regularisation terms for E(w) = sum_n L(t_n, y(x_n; w)) + lambda * Omega(w).

    l2_penalty: Omega = 1/2 ||w||_2^2  (weight decay; gradient lambda * w)
    l1_penalty: Omega = ||w||_1        (sparsity; gradient lambda * sign(w), 0 at w = 0)

Each returns `(value, backward)`: `value` is a 0-d array on the parameters'
backend (add it to the data loss), and `backward(grad=1.0)` adds
grad * d(lambda Omega)/dw into every parameter's `.grad`, as a loss module's
backward would. Call it after the model's backward (or before; gradients add):

    penalty, penalty_backward = l2_penalty(model.parameters(), 1e-4)
    total = loss + penalty
    model.backward(crit.backward()); penalty_backward()

Optimizers' `weight_decay` is the other way to get the L2 term: there the
decay is applied inside the update and not reported as part of the loss.
"""
from __future__ import annotations

from .backend import backend_of
from .nn.module import Parameter


def _collect(params) -> list:
    params = list(params.parameters() if hasattr(params, "parameters") else params)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"params: expected Parameters (e.g. model.parameters()), item {i} is {type(p).__name__}")
    return [p for p in params if p.requires_grad]


def _lam(lam) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
        raise ValueError(f"lam: expected a non-negative number, got {lam!r}")
    return float(lam)


def _penalty(params, lam, omega, derivative):
    params, lam = _collect(params), _lam(lam)
    if not params:
        raise ValueError("params: no trainable parameters to regularise")
    xp = backend_of(params[0].data).xp
    total = sum((omega(xp, p.data) for p in params[1:]), omega(xp, params[0].data))
    value = xp.asarray(lam * total, dtype=params[0].dtype)

    def backward(grad=1.0):
        for p in params:
            p.accumulate((grad * lam * derivative(xp, p.data)).astype(p.dtype, copy=False))

    return value, backward


def l2_penalty(params, lam: float):
    """(lam * 1/2 sum w^2 over all params, backward adding lam * w to each p.grad)."""
    return _penalty(params, lam, lambda xp, w: 0.5 * (w * w).sum(), lambda xp, w: w)


def l1_penalty(params, lam: float):
    """(lam * sum |w| over all params, backward adding lam * sign(w) to each p.grad;
    the subgradient 0 is used at w = 0)."""
    return _penalty(params, lam, lambda xp, w: xp.abs(w).sum(), lambda xp, w: xp.sign(w))
