"""Adagrad and Adadelta, as torch.optim.Adagrad and torch.optim.Adadelta
(array code on every backend: no fused kernel)."""
from __future__ import annotations

from ..ops import optim as ops
from .optimizer import Optimizer


class Adagrad(Optimizer):
    """Per-element steps shrinking with the summed squared gradients:
    s += g^2, p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps), g
    including weight_decay * p. State: 'step', 'sum' (starting at
    initial_accumulator_value). maximize=True ascends."""

    _state_keys = frozenset({"step", "sum"})

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach=None, *, maximize: bool = False,
                 differentiable: bool = False, fused=None, device=None):
        self._implementation(foreach, fused, False, differentiable)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=bool(maximize)), device)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        self._nonnegative(group, where, "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def _update(self, group, params, be):
        for p in params:
            state = self.state.setdefault(p, {})
            if not state:
                state.update(step=0, sum=be.xp.full_like(p._data, group["initial_accumulator_value"]))
            state["step"] += 1
        states = [self.state[p] for p in params]
        ops.adagrad(be, [p._data for p in params], self._signed(group, [p._grad for p in params]),
                    [s["sum"] for s in states], [s["step"] for s in states], lr=group["lr"],
                    lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"])


class Adadelta(Optimizer):
    """Zeiler's Adadelta: v = rho v + (1 - rho) g^2, d = sqrt(u + eps) /
    sqrt(v + eps) * g, u = rho u + (1 - rho) d^2, p -= lr * d (g including
    weight_decay * p). State: 'step', 'square_avg', 'acc_delta'. maximize=True
    ascends."""

    _state_keys = frozenset({"step", "square_avg", "acc_delta"})

    def __init__(self, params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0,
                 foreach=None, *, capturable: bool = False, maximize: bool = False, differentiable: bool = False,
                 device=None):
        self._implementation(foreach, None, capturable, differentiable)
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=bool(maximize)), device)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        self._nonnegative(group, where, "eps", "weight_decay")
        if not 0 <= group["rho"] <= 1:
            raise ValueError(f"{where}: rho: expected a number in [0, 1], got {group['rho']!r}")

    def _update(self, group, params, be):
        zeros = be.xp.zeros_like
        for p in params:
            state = self.state.setdefault(p, {})
            if not state:
                state.update(step=0, square_avg=zeros(p._data), acc_delta=zeros(p._data))
            state["step"] += 1
        states = [self.state[p] for p in params]
        ops.adadelta(be, [p._data for p in params], self._signed(group, [p._grad for p in params]),
                     [s["square_avg"] for s in states], [s["acc_delta"] for s in states], lr=group["lr"],
                     rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"])
