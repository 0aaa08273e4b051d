"""Learning-rate schedules, as torch.optim.lr_scheduler: create one after the
optimizer, call `scheduler.step()` once per epoch after `optimizer.step()`.

Each schedule here is a closed form of the epoch count and the group's
initial lr, so a schedule resumed from `state_dict` continues exactly. Where
PyTorch's own formula is closed (LambdaLR, OneCycleLR,
CosineAnnealingWarmRestarts) the values are PyTorch's bit for bit; where
PyTorch computes them recursively from the previous lr (StepLR, MultiStepLR,
ExponentialLR, LinearLR, CosineAnnealingLR, and SequentialLR through them)
they agree to rounding (a few units in the last place). ReduceLROnPlateau,
which depends on the metrics, is PyTorch's algorithm step by step.
"""
from __future__ import annotations

import bisect
import math
import numbers
import types

from .optimizer import Optimizer


class LRScheduler:
    """Base class: sets every group's 'lr' to `lr_at(initial_lr, last_epoch)`."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a gpunet.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for i, group in enumerate(optimizer.param_groups):
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(f"param_groups[{i}]: 'initial_lr' is not set, which resuming with "
                               f"last_epoch={last_epoch} needs (load the optimizer's state_dict first)")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, base_lr: float, epoch: int) -> float:
        raise NotImplementedError(f"{type(self).__name__} does not implement lr_at")

    def lrs_at(self, epoch: int) -> list[float]:
        """Every group's lr at `epoch` (lr_at of its initial lr, unless a schedule
        needs more of the group)."""
        return [self.lr_at(base, epoch) for base in self.base_lrs]

    def step(self):
        """Advance one epoch and set the groups' learning rates."""
        self.last_epoch += 1
        self._set(self.lrs_at(self.last_epoch))

    def _set(self, lrs):
        self._last_lr = list(lrs)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The learning rate of each group set by the latest step()."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Everything but the optimizer (plain numbers and lists)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict):
        unknown = set(state_dict) - set(self.__dict__)
        if unknown:
            raise ValueError(f"load_state_dict: keys {sorted(unknown)} do not belong to a {type(self).__name__}")
        self.__dict__.update(state_dict)


class StepLR(LRScheduler):
    """lr = initial_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        # a whole float (the transformer tutorial passes 1.0) counts as torch takes it
        if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or step_size <= 0 \
                or step_size != int(step_size):
            raise ValueError(f"step_size: expected a positive integer, got {step_size!r}")
        self.step_size, self.gamma = int(step_size), gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """lr = initial_lr * gamma ** (number of milestones <= epoch)."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        if isinstance(milestones, (str, bytes)) or any(
                isinstance(m, bool) or not isinstance(m, numbers.Integral) for m in milestones):
            raise TypeError(f"milestones: expected a sequence of integers, got {milestones!r}")
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ExponentialLR(LRScheduler):
    """lr = initial_lr * gamma ** epoch."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2:
    from initial_lr down to eta_min over T_max epochs (and back up after, with
    period 2*T_max, as PyTorch)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max <= 0:
            raise ValueError(f"T_max: expected a positive integer, got {T_max!r}")
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


def _check_optimizer(optimizer):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer: expected a gpunet.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


def _per_group(optimizer, name: str, value) -> list:
    """`value` for every parameter group: one value, or a list/tuple with one per group."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: expected one value per parameter group ({n}), got {len(value)}")
        return list(value)
    return [value] * n


class LambdaLR(LRScheduler):
    """lr = initial_lr * lr_lambda(epoch): one function for every group, or a
    list with one per group. state_dict saves a callable object's attributes
    (None for a plain function), as PyTorch."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        self.lr_lambdas = _per_group(_check_optimizer(optimizer), "lr_lambda", lr_lambda)
        for i, fn in enumerate(self.lr_lambdas):
            if not callable(fn):
                raise TypeError(f"lr_lambda[{i}]: expected a callable of the epoch, got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, epoch):
        return [base * fn(epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else dict(fn.__dict__)
                               for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        saved = state.pop("lr_lambdas", [None] * len(self.lr_lambdas))
        super().load_state_dict(state)
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(attrs)


class LinearLR(LRScheduler):
    """lr = initial_lr * (start_factor + (end_factor - start_factor) *
    min(epoch, total_iters) / total_iters): a linear ramp (a warm-up when
    start_factor < 1), then constant."""

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5,
                 last_epoch: int = -1):
        if not 0 < start_factor <= 1:
            raise ValueError(f"start_factor: expected a number in (0, 1], got {start_factor!r}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"end_factor: expected a number in [0, 1], got {end_factor!r}")
        if isinstance(total_iters, bool) or not isinstance(total_iters, int) or total_iters <= 0:
            raise ValueError(f"total_iters: expected a positive integer, got {total_iters!r}")
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                          * min(self.total_iters, epoch) / self.total_iters)


class SequentialLR(LRScheduler):
    """schedulers[i] from epoch milestones[i-1] on (counting its own epochs from
    0 there): e.g. cosine with warm-up is SequentialLR(opt, [LinearLR(opt, 0.1,
    total_iters=w), CosineAnnealingLR(opt, T_max=n - w)], milestones=[w])."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch: int = -1):
        _check_optimizer(optimizer)
        schedulers, milestones = list(schedulers), list(milestones)
        if not schedulers:
            raise ValueError("schedulers: expected at least one scheduler, got none")
        for i, sched in enumerate(schedulers):
            if not isinstance(sched, LRScheduler):
                raise TypeError(f"schedulers[{i}]: expected an epoch-driven scheduler (LRScheduler), got "
                                f"{type(sched).__name__}")
            if sched.optimizer is not optimizer:
                raise ValueError(f"schedulers[{i}]: belongs to another optimizer (all must share this one)")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"milestones: expected {len(schedulers) - 1} (one fewer than the schedulers), "
                             f"got {len(milestones)}")
        if any(isinstance(m, bool) or not isinstance(m, int) for m in milestones) or milestones != sorted(milestones):
            raise ValueError(f"milestones: expected increasing integers, got {milestones!r}")
        self._schedulers, self._milestones = schedulers, milestones
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, epoch):
        i = bisect.bisect_right(self._milestones, epoch)
        return self._schedulers[i].lrs_at(epoch - (self._milestones[i - 1] if i else 0))

    def state_dict(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        saved = state.pop("_schedulers")
        if len(saved) != len(self._schedulers):
            raise ValueError(f"load_state_dict: {len(saved)} schedulers saved, this SequentialLR has "
                             f"{len(self._schedulers)}")
        super().load_state_dict(state)
        for sched, sub in zip(self._schedulers, saved):
            sched.load_state_dict(sub)


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR (Loshchilov & Hutter): cosine from initial_lr to eta_min over T_i
    epochs, then a restart; T_0 epochs in the first cycle, each next cycle
    T_mult times longer. step(epoch) also takes a fractional epoch (per-batch
    updates, `step(epoch + i / iters)`), as PyTorch."""

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1):
        if isinstance(T_0, bool) or not isinstance(T_0, int) or T_0 <= 0:
            raise ValueError(f"T_0: expected a positive integer, got {T_0!r}")
        if isinstance(T_mult, bool) or not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"T_mult: expected an integer >= 1, got {T_mult!r}")
        if isinstance(eta_min, bool) or not isinstance(eta_min, (int, float)):
            raise ValueError(f"eta_min: expected a number, got {eta_min!r}")
        self.T_0, self.T_mult, self.eta_min = T_0, T_mult, eta_min
        super().__init__(optimizer, last_epoch)

    def _cycle(self, epoch):
        """(T_cur, T_i): the position in the current cycle and its length."""
        if isinstance(epoch, int):  # PyTorch's step-by-step recurrence, in closed form
            if self.T_mult == 1:
                return epoch % self.T_0, self.T_0
            t_cur, t_i = epoch, self.T_0
            while t_cur >= t_i:
                t_cur, t_i = t_cur - t_i, t_i * self.T_mult
            return t_cur, t_i
        if epoch < self.T_0:  # a fractional epoch: PyTorch's formula for step(epoch)
            return epoch, self.T_0
        if self.T_mult == 1:
            return epoch % self.T_0, self.T_0
        n = int(math.log((epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult))
        return epoch - self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1), self.T_0 * self.T_mult ** n

    def lr_at(self, base_lr, epoch):
        t_cur, t_i = self._cycle(epoch)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2

    def step(self, epoch=None):
        """Advance one epoch, or go to `epoch` (a number >= 0, possibly fractional)."""
        if epoch is None:
            return super().step()
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or epoch < 0:
            raise ValueError(f"epoch: expected a non-negative number, got {epoch!r}")
        self.last_epoch = math.floor(epoch)
        self._set(self.lrs_at(epoch))


class OneCycleLR(LRScheduler):
    """Smith's 1cycle policy, as PyTorch: per step (not per epoch), lr rises
    from max_lr/div_factor to max_lr over the first pct_start of total_steps,
    then falls to initial_lr/final_div_factor (three_phase: back to the
    initial lr first, then down), by cosine or linear annealing; with
    cycle_momentum the momentum (or Adam's beta1) moves the opposite way
    between max_momentum and base_momentum. Stepping past total_steps raises."""

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True, base_momentum=0.85, max_momentum=0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1):
        _check_optimizer(optimizer)
        positive = lambda v: not isinstance(v, bool) and isinstance(v, int) and v > 0  # noqa: E731
        if total_steps is not None:
            if not positive(total_steps):
                raise ValueError(f"total_steps: expected a positive integer, got {total_steps!r}")
        elif epochs is not None and steps_per_epoch is not None:
            for name, v in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
                if not positive(v):
                    raise ValueError(f"{name}: expected a positive integer, got {v!r}")
            total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("total_steps: give total_steps, or epochs and steps_per_epoch")
        if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
            raise ValueError(f"pct_start: expected a float in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy: expected 'cos' or 'linear', got {anneal_strategy!r}")
        self.total_steps, self.anneal_strategy, self.cycle_momentum = total_steps, anneal_strategy, cycle_momentum
        up = float(pct_start * total_steps) - 1
        # (end step, start lr, end lr, start momentum, end momentum), each value a key of the group
        self._phases = ([(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                         (float(2 * pct_start * total_steps) - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                         (total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")] if three_phase else
                        [(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                         (total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")])
        groups = optimizer.param_groups
        if last_epoch == -1:
            for group, top in zip(groups, _per_group(optimizer, "max_lr", max_lr)):
                group.update(initial_lr=top / div_factor, max_lr=top, min_lr=top / div_factor / final_div_factor)
        if cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError("cycle_momentum: the optimizer has no momentum or betas to cycle "
                                 "(pass cycle_momentum=False)")
            self.use_beta1 = "betas" in optimizer.defaults
            if last_epoch == -1:
                tops = _per_group(optimizer, "max_momentum", max_momentum)
                bases = _per_group(optimizer, "base_momentum", base_momentum)
                for group, top, base in zip(groups, tops, bases):
                    group.update(max_momentum=top, base_momentum=base)
                    self._set_momentum(group, top)
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group, value):
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _at(self, group, step):
        """(lr, momentum) of `group` at `step`, PyTorch's phase arithmetic."""
        start = 0.0
        for i, (end, lr0, lr1, m0, m1) in enumerate(self._phases):
            if step <= end or i == len(self._phases) - 1:
                pct = (step - start) / (end - start)
                momentum = self._anneal(group[m0], group[m1], pct) if self.cycle_momentum else None
                return self._anneal(group[lr0], group[lr1], pct), momentum
            start = end

    def lrs_at(self, epoch):
        return [self._at(group, epoch)[0] for group in self.optimizer.param_groups]

    def step(self):
        """Advance one step: set every group's lr (and momentum)."""
        if self.last_epoch + 1 > self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {self.last_epoch + 1} times, past total_steps={self.total_steps}")
        self.last_epoch += 1
        lrs = []
        for group in self.optimizer.param_groups:
            lr, momentum = self._at(group, self.last_epoch)
            lrs.append(lr)
            if self.cycle_momentum:
                self._set_momentum(group, momentum)
        self._set(lrs)


class ReduceLROnPlateau:
    """Divide the lr by 1/factor when a metric has stopped improving for more
    than `patience` epochs, as torch.optim.lr_scheduler.ReduceLROnPlateau:
    `scheduler.step(val_loss)` once per epoch. mode 'min' (a loss) or 'max'
    (an accuracy); an improvement beats the best by `threshold` (relative or
    absolute, threshold_mode); after a reduction, `cooldown` epochs count no
    bad epochs; the lr never goes below min_lr (one, or one per group), and
    changes smaller than eps are skipped."""

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr=0,
                 eps: float = 1e-8):
        self.optimizer = _check_optimizer(optimizer)
        if not factor < 1.0:
            raise ValueError(f"factor: expected a number < 1, got {factor!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode: expected 'rel' or 'abs', got {threshold_mode!r}")
        self.factor, self.patience, self.cooldown, self.eps = factor, patience, cooldown, eps
        self.mode, self.threshold, self.threshold_mode = mode, threshold, threshold_mode
        self.default_min_lr = None if isinstance(min_lr, (list, tuple)) else min_lr
        self.min_lrs = _per_group(optimizer, "min_lr", min_lr)
        self.last_epoch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]
        self.best = math.inf if mode == "min" else -math.inf
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def _is_better(self, a: float) -> bool:
        if self.mode == "min":
            return a < (self.best * (1.0 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold)
        return a > (self.best * (self.threshold + 1.0) if self.threshold_mode == "rel" else self.best + self.threshold)

    def step(self, metrics):
        """One epoch's value of the monitored metric (a number, or a 0-d array)."""
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _reduce_lr(self):
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(f"ReduceLROnPlateau: the optimizer has {len(groups)} parameter groups, min_lr "
                                   f"has {len(self.min_lrs)} values (set min_lrs to one per group)")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old = float(group["lr"])
            new = max(old * self.factor, min_lr)
            if old - new > self.eps:
                group["lr"] = new

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    state_dict = LRScheduler.state_dict
    load_state_dict = LRScheduler.load_state_dict
