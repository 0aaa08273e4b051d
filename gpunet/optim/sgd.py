"""Stochastic gradient descent with momentum, as torch.optim.SGD."""
from __future__ import annotations

from ..ops import optim as ops
from .optimizer import Optimizer


class SGD(Optimizer):
    """p -= lr * d with d = grad + weight_decay * p and, when momentum > 0,
    buf = momentum * buf + (1 - dampening) * d (buf = d on the first step),
    d = buf, or d + momentum * buf with nesterov=True.

    Plain use covers every flavour of gradient descent: per-example (batch of
    1), mini-batch and full-batch, depending on what the backward pass summed.
    With dampening 0 the momentum form is the heavy ball
    w[k+1] = w[k] - lr * grad E(w[k]) + momentum * (w[k] - w[k-1]).
    weight_decay is the L2 penalty (weight_decay/2)*||w||^2 added to the loss.
    maximize=True ascends (grad negated first, as PyTorch; the fused kernels
    take the negated gradient). `device`: see gpunet.optim.Optimizer;
    foreach/fused/differentiable: see Optimizer._implementation.
    """

    _state_keys = frozenset({"momentum_buffer"})

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False, foreach=None,
                 differentiable: bool = False, fused=None, device=None):
        self._implementation(foreach, fused, False, differentiable)
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, maximize=bool(maximize)), device)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        self._nonnegative(group, where, "momentum", "dampening", "weight_decay")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{where}: nesterov momentum requires momentum > 0 and dampening == 0, "
                             f"got momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _update(self, group, params, be):
        bufs, fresh = [], []
        for p in params:
            state = self.state.setdefault(p, {})
            if group["momentum"] and "momentum_buffer" not in state:
                state["momentum_buffer"] = be.xp.zeros_like(p._data)
                # a skipped first step leaves the buffer unset: the next step must copy d into it again
                self._undo_if_skipped(lambda state=state: state.pop("momentum_buffer"))
                fresh.append(True)
            else:
                fresh.append(False)
            bufs.append(state.get("momentum_buffer"))
        ops.sgd(be, [p._data for p in params], self._signed(group, [p._grad for p in params]), bufs, fresh,
                lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                weight_decay=group["weight_decay"], nesterov=group["nesterov"], weights=self._half_weights(),
                scaling=self._grad_scaling)

    def _fused(self, group):
        return True
