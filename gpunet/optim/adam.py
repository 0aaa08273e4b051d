"""The Adam family, as torch.optim.Adam, AdamW, Adamax, NAdam and RAdam."""
from __future__ import annotations

from ..ops import optim as ops
from .optimizer import Optimizer, as_pair


def _check_betas(group, where):
    betas = group["betas"]
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ValueError(f"{where}: betas: expected two numbers in [0, 1), got {betas!r}")


class _AdamLike(Optimizer):
    """State per parameter 'step' (int) plus the arrays named in `_moments`,
    zeros at the first step; `maximize` as PyTorch (descends along -grad)."""

    _moments = ("exp_avg", "exp_avg_sq")
    _state_keys = frozenset({"step", "exp_avg", "exp_avg_sq"})

    def _check_group(self, group, where):
        super()._check_group(group, where)
        _check_betas(group, where)
        self._nonnegative(group, where, "eps", "weight_decay")

    def _states(self, group, params, be):
        states = []
        for p in params:
            state = self.state.setdefault(p, {})
            if not state:
                state["step"] = 0
                state.update({k: be.xp.zeros_like(p._data) for k in self._moments})
            state["step"] += 1
            self._undo_if_skipped(lambda state=state: state.__setitem__("step", state["step"] - 1))
            states.append(state)
        return states


class Adam(_AdamLike):
    """Adam (Kingma & Ba): with g = grad (+ weight_decay * p, an L2 penalty),
    m = beta1*m + (1-beta1)*g, v = beta2*v + (1-beta2)*g^2,
    p -= lr * m_hat / (sqrt(v_hat) + eps), m_hat = m/(1-beta1^t), v_hat = v/(1-beta2^t).
    amsgrad=True divides by the running maximum of v_hat instead (state
    'max_exp_avg_sq'); decoupled_weight_decay=True is AdamW. maximize=True
    ascends. State per parameter: 'step' (int), 'exp_avg', 'exp_avg_sq'.
    The fused kernels (sim, cuda; float32) run every option but amsgrad, which
    runs the array code there (a recorded fallback); maximize hands them a
    negated copy of the gradients (one extra pass over each). `device`: see
    gpunet.optim.Optimizer; foreach/fused/capturable/differentiable: see
    Optimizer._implementation."""

    _state_keys = _AdamLike._state_keys | {"max_exp_avg_sq"}  # with amsgrad

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, foreach=None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, fused=None,
                 decoupled_weight_decay: bool = False, device=None):
        self._implementation(foreach, fused, capturable, differentiable)
        super().__init__(params, dict(lr=lr, betas=as_pair(betas, "betas"), eps=eps, weight_decay=weight_decay,
                                      amsgrad=bool(amsgrad), maximize=bool(maximize),
                                      decoupled_weight_decay=bool(decoupled_weight_decay)), device)

    def _update(self, group, params, be):
        states = self._states(group, params, be)
        if group["amsgrad"]:
            for p, state in zip(params, states):
                state.setdefault("max_exp_avg_sq", be.xp.zeros_like(p._data))
        beta1, beta2 = group["betas"]
        ops.adam(be, [p._data for p in params], self._signed(group, [p._grad for p in params]),
                 [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
                 lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                 decoupled=group["decoupled_weight_decay"],
                 max_exp_avg_sqs=[s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else None,
                 weights=self._half_weights(), scaling=self._grad_scaling)

    def _fused(self, group):
        return not group["amsgrad"]  # the fused kernel keeps no max_exp_avg_sq


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): before the Adam
    step, p *= 1 - lr * weight_decay; the gradient itself is not changed."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False, foreach=None,
                 capturable: bool = False, differentiable: bool = False, fused=None, device=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, device=device)


class Adamax(_AdamLike):
    """Adamax (Adam in the infinity norm): m = beta1*m + (1-beta1)*g,
    u = max(beta2*u, |g| + eps), p -= lr/(1 - beta1^t) * m/u. State: 'step',
    'exp_avg', 'exp_inf'. Array code on every backend."""

    _moments = ("exp_avg", "exp_inf")
    _state_keys = frozenset({"step", "exp_avg", "exp_inf"})

    def __init__(self, params, lr: float = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 foreach=None, *, maximize: bool = False, differentiable: bool = False, capturable: bool = False,
                 device=None):
        self._implementation(foreach, None, capturable, differentiable)
        super().__init__(params, dict(lr=lr, betas=as_pair(betas, "betas"), eps=eps, weight_decay=weight_decay,
                                      maximize=bool(maximize)), device)

    def _update(self, group, params, be):
        states = self._states(group, params, be)
        beta1, beta2 = group["betas"]
        ops.adamax(be, [p._data for p in params], self._signed(group, [p._grad for p in params]),
                   [s["exp_avg"] for s in states], [s["exp_inf"] for s in states], [s["step"] for s in states],
                   lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])


class NAdam(_AdamLike):
    """Adam with Nesterov momentum (Dozat), as PyTorch: the momentum coefficient
    follows mu_t = beta1 (1 - 0.96^(t momentum_decay) / 2). State: 'step',
    'mu_product' (a float), 'exp_avg', 'exp_avg_sq'. decoupled_weight_decay=True
    decays as AdamW. Array code on every backend."""

    _state_keys = _AdamLike._state_keys | {"mu_product"}

    def __init__(self, params, lr: float = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *, foreach=None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False, device=None):
        self._implementation(foreach, None, capturable, differentiable)
        super().__init__(params, dict(lr=lr, betas=as_pair(betas, "betas"), eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=bool(decoupled_weight_decay),
                                      maximize=bool(maximize)), device)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        self._nonnegative(group, where, "momentum_decay")

    def _update(self, group, params, be):
        states = self._states(group, params, be)
        for state in states:
            state.setdefault("mu_product", 1.0)
        beta1, beta2 = group["betas"]
        products = ops.nadam(be, [p._data for p in params], self._signed(group, [p._grad for p in params]),
                             [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                             [s["mu_product"] for s in states], [s["step"] for s in states],
                             lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                             weight_decay=group["weight_decay"], momentum_decay=group["momentum_decay"],
                             decoupled=group["decoupled_weight_decay"])
        for state, product in zip(states, products):
            state["mu_product"] = product


class RAdam(_AdamLike):
    """Rectified Adam (Liu et al.), as PyTorch: bias-corrected momentum steps
    while the variance estimate is unreliable (rho_t <= 5), then Adam steps
    scaled by the rectification term. State: 'step', 'exp_avg', 'exp_avg_sq'.
    decoupled_weight_decay=True decays as AdamW. Array code on every backend."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 decoupled_weight_decay: bool = False, *, foreach=None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, device=None):
        self._implementation(foreach, None, capturable, differentiable)
        super().__init__(params, dict(lr=lr, betas=as_pair(betas, "betas"), eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=bool(decoupled_weight_decay),
                                      maximize=bool(maximize)), device)

    def _update(self, group, params, be):
        states = self._states(group, params, be)
        beta1, beta2 = group["betas"]
        ops.radam(be, [p._data for p in params], self._signed(group, [p._grad for p in params]),
                  [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
                  lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                  decoupled=group["decoupled_weight_decay"])
