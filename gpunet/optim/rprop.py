"""Resilient backpropagation, as torch.optim.Rprop, plus the backtracking variant."""
from __future__ import annotations

from ..ops import optim as ops
from .optimizer import Optimizer, as_pair


class Rprop(Optimizer):
    """Each weight has its own step size (starting at lr) and moves by it
    against the sign of its gradient, ignoring the gradient's magnitude. While
    the gradient keeps its sign the step grows by etas[1] (up to step_sizes[1]);
    when the sign flips it shrinks by etas[0] (down to step_sizes[0]) and that
    gradient is treated as 0, so the next step neither grows nor shrinks it;
    when the product of the two gradients is 0 the step is kept.

    backtrack=False (default) is PyTorch's Rprop: on a flip the weight does not
    move. backtrack=True is Rprop+ (Riedmiller & Braun, 1993), the variant the
    lecture notes describe: on a flip the previous weight change is undone
    ("revert the last step"). State: 'step', 'prev', 'step_size'
    (+ 'prev_delta' with backtrack). maximize=True ascends. `device`: see
    gpunet.optim.Optimizer; capturable/foreach/differentiable: see
    Optimizer._implementation."""

    _state_keys = frozenset({"step", "prev", "step_size", "prev_delta"})

    def __init__(self, params, lr: float = 1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50),
                 *, capturable: bool = False, foreach=None, maximize: bool = False, differentiable: bool = False,
                 backtrack: bool = False, device=None):
        self._implementation(foreach, None, capturable, differentiable)
        super().__init__(params, dict(lr=lr, etas=as_pair(etas, "etas"), step_sizes=as_pair(step_sizes, "step_sizes"),
                                      maximize=bool(maximize), backtrack=bool(backtrack)), device)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        etas, sizes = group["etas"], group["step_sizes"]
        if len(etas) != 2 or not 0 < etas[0] < 1 < etas[1]:
            raise ValueError(f"{where}: etas: expected (etaminus, etaplus) with 0 < etaminus < 1 < etaplus, got {etas!r}")
        if len(sizes) != 2 or not 0 <= sizes[0] <= sizes[1]:
            raise ValueError(f"{where}: step_sizes: expected (min, max) with 0 <= min <= max, got {sizes!r}")

    def _update(self, group, params, be):
        xp = be.xp
        for p in params:
            state = self.state.setdefault(p, {})
            if not state:
                state.update(step=0, prev=xp.zeros_like(p._data), step_size=xp.full_like(p._data, group["lr"]))
            if group["backtrack"] and "prev_delta" not in state:
                state["prev_delta"] = xp.zeros_like(p._data)
            state["step"] += 1
        states = [self.state[p] for p in params]
        (etaminus, etaplus), (step_min, step_max) = group["etas"], group["step_sizes"]
        ops.rprop(be, [p._data for p in params], self._signed(group, [p._grad for p in params]), [s["prev"] for s in states],
                  [s["step_size"] for s in states],
                  [s["prev_delta"] for s in states] if group["backtrack"] else None,
                  etaminus=etaminus, etaplus=etaplus, step_min=step_min, step_max=step_max)
