"""Adam and AdamW, as torch.optim.Adam / torch.optim.AdamW (without amsgrad)."""
from __future__ import annotations

from ..ops import optim as ops
from .optimizer import Optimizer


class Adam(Optimizer):
    """Adam (Kingma & Ba): with g = grad (+ weight_decay * p, an L2 penalty),
    m = beta1*m + (1-beta1)*g, v = beta2*v + (1-beta2)*g^2,
    p -= lr * m_hat / (sqrt(v_hat) + eps), m_hat = m/(1-beta1^t), v_hat = v/(1-beta2^t).
    State per parameter: 'step' (int), 'exp_avg', 'exp_avg_sq'.
    `device`: see gpunet.optim.Optimizer."""

    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, *, device=None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay), device)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        betas = group["betas"]
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"{where}: betas: expected two numbers in [0, 1), got {betas!r}")
        for key in ("eps", "weight_decay"):
            if not isinstance(group[key], (int, float)) or group[key] < 0:
                raise ValueError(f"{where}: {key}: expected a non-negative number, got {group[key]!r}")

    def _update(self, group, params, be):
        steps = []
        for p in params:
            state = self.state.setdefault(p, {})
            if not state:
                state.update(step=0, exp_avg=be.xp.zeros_like(p.data), exp_avg_sq=be.xp.zeros_like(p.data))
            state["step"] += 1
            steps.append(state["step"])
        beta1, beta2 = group["betas"]
        ops.adam(be, [p.data for p in params], [p.grad for p in params],
                 [self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params], steps,
                 lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                 weight_decay=group["weight_decay"], decoupled=self._decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): before the Adam
    step, p *= 1 - lr * weight_decay; the gradient itself is not changed."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, device=None):
        super().__init__(params, lr, betas, eps, weight_decay, device=device)
