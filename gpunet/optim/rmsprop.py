"""RMSprop, as torch.optim.RMSprop."""
from __future__ import annotations

from ..ops import optim as ops
from .optimizer import Optimizer


class RMSprop(Optimizer):
    """s = alpha*s + (1-alpha)*g^2, p -= lr * g / (sqrt(s) + eps) (g includes
    weight_decay * p). centered=True divides by sqrt(s - a^2) + eps with
    a the running mean of g; momentum > 0 accumulates buf = momentum*buf +
    g/denom and steps by lr*buf. State: 'step', 'square_avg' (+ 'grad_avg',
    'momentum_buffer'). maximize=True ascends. `device`: see
    gpunet.optim.Optimizer; capturable/foreach/differentiable: see
    Optimizer._implementation."""

    _state_keys = frozenset({"step", "square_avg", "grad_avg", "momentum_buffer"})

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, capturable: bool = False,
                 foreach=None, maximize: bool = False, differentiable: bool = False, *, device=None):
        self._implementation(foreach, None, capturable, differentiable)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=bool(maximize)), device)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        self._nonnegative(group, where, "alpha", "eps", "weight_decay", "momentum")

    def _update(self, group, params, be):
        zeros = be.xp.zeros_like
        for p in params:
            state = self.state.setdefault(p, {})
            if not state:
                state.update(step=0, square_avg=zeros(p._data))
            if group["centered"] and "grad_avg" not in state:
                state["grad_avg"] = zeros(p._data)
            if group["momentum"] and "momentum_buffer" not in state:
                state["momentum_buffer"] = zeros(p._data)
            state["step"] += 1
        states = [self.state[p] for p in params]
        ops.rmsprop(be, [p._data for p in params], self._signed(group, [p._grad for p in params]), [s["square_avg"] for s in states],
                    [s["grad_avg"] for s in states] if group["centered"] else None,
                    [s.get("momentum_buffer") for s in states],
                    lr=group["lr"], alpha=group["alpha"], eps=group["eps"],
                    weight_decay=group["weight_decay"], momentum=group["momentum"])
