"""gpunet.amp.GradScaler: dynamic loss scaling for float16 training, with
torch.amp.GradScaler's API and state_dict.

float16 gradients underflow below 2^-24; the scaler multiplies the loss (or,
in the explicit style, the loss's gradient: `model.backward(scaler.scale(
crit.backward()))`) by a large factor, so the backward runs on scaled values,
then divides the gradients by it before the optimizer step. A step whose
gradients hold an inf or a NaN (the scale was too large) is skipped and the
scale shrinks (`backoff_factor`); after `growth_interval` steps without one
it grows (`growth_factor`).

Where the optimizer runs fused kernels (SGD, Adam/AdamW on sim or cuda:
Optimizer._takes_grad_scaling), `step` does as PyTorch's fused optimizers:
one launch checks every gradient for inf/NaN (read only) into a float32
flag on the device, and the optimizer's kernels take the flag and 1/scale:
with the flag set they return at once (parameters and state untouched),
else they read each gradient times 1/scale in registers. The gradients are
read once for the update and stay scaled (PyTorch's fused kernels write the
unscaled values back; nothing here does). `update` reads the flag (the
iteration's one host sync) and then undoes what a skipped step changed on
the host: Adam's step counts (which do not advance on a skipped step, as
PyTorch's fused Adam subtracts found_inf from its state_steps) and SGD's
momentum buffers created by it. After an explicit `unscale_` (to clip the
gradients) the gradients are unscaled in place, as PyTorch, and the fused
step takes the flag with inv_scale 1.

Elsewhere (cpu, the array-only optimizers) `unscale_` runs on the gradients'
own device: each gradient is scaled in place and folded into one found-inf
flag that stays on the device; `step` reads that flag once (the step's only
host sync) and skips the optimizer's step when it is set.
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes
from ..autograd.tensor import Tensor
from ..backend import backend_of
from ..ops import optim as optim_ops

_READY, _UNSCALED, _STEPPED = "ready", "unscaled", "stepped"


def _number(v, name: str, ok, expected: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) \
            or not ok(v):
        raise ValueError(f"{name}: expected {expected}, got {v!r}")
    return float(v)


def _times(a, factor: float):
    """a * factor computed in float32 (or a's wider dtype), rounded once to a's dtype."""
    with np.errstate(over="ignore"):  # an overflow is what the inf check is there to catch
        if dtypes.is_half(a.dtype):
            return (a.astype(np.float32) * np.float32(factor)).astype(a.dtype)
        return a * a.dtype.type(factor)


class GradScaler:
    def __init__(self, device="cuda", init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True):
        # device: torch's first argument, accepted; the gradients' own backend runs the checks
        self._scale = _number(init_scale, "init_scale", lambda v: v > 0, "a positive number")
        self._growth_factor = _number(growth_factor, "growth_factor", lambda v: v > 1, "a number > 1")
        self._backoff_factor = _number(backoff_factor, "backoff_factor", lambda v: 0 < v < 1,
                                       "a number between 0 and 1")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, (int, np.integer)) \
                or growth_interval < 1:
            raise ValueError(f"growth_interval: expected a positive integer, got {growth_interval!r}")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled: expected True or False, got {enabled!r}")
        self._growth_interval = int(growth_interval)
        self._enabled = enabled
        self._growth_tracker = 0
        self.skipped_steps = 0     # steps skipped for inf/NaN gradients, since construction
        self._per_optimizer = {}   # id(optimizer) -> {"stage", "found_inf" (a device flag)}

    # ------------------------------------------------------------ the loss
    def scale(self, outputs):
        """outputs (a loss Tensor, a gradient array, or a nest of them) times the scale."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, Tensor):
            return outputs * self._scale
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        if hasattr(outputs, "dtype") and hasattr(outputs, "astype") and dtypes.is_floating(outputs.dtype):
            return _times(outputs, self._scale)
        raise TypeError(f"outputs: expected a loss Tensor or a floating gradient array, got {type(outputs).__name__}")

    # ------------------------------------------------------------ the step
    def _state(self, optimizer):
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _READY, "found_inf": None, "fused": False,
                                                              "undo": ()})

    def unscale_(self, optimizer):
        """Divide the gradients of `optimizer`'s parameters by the scale, in
        place, and record whether any holds an inf or a NaN (on the device)."""
        if not self._enabled:
            return
        state = self._state(optimizer)
        if state["stage"] == _UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update()")
        if state["stage"] == _STEPPED:
            raise RuntimeError("unscale_() is being called after step()")
        inv = 1.0 / self._scale
        found = None
        for group in optimizer.param_groups:
            for p in group["params"]:
                g = p._grad
                if g is None:
                    continue
                xp = backend_of(g).xp
                g[...] = _times(g, inv)
                bad = xp.logical_not(xp.isfinite(g.astype(dtypes.compute_dtype(g.dtype), copy=False)).all())
                found = bad if found is None else xp.logical_or(found, bad)
        state["found_inf"] = found
        state["stage"] = _UNSCALED

    def step(self, optimizer, *args, **kwargs):
        """unscale_ (unless done), then optimizer.step(...) unless a gradient
        was inf/NaN: then the step is skipped (counted in skipped_steps) and
        None is returned. On fused kernels (see the module docstring) the
        kernels skip it instead, and step's result is returned either way."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs or (args and callable(args[0])):
            raise RuntimeError("GradScaler.step: a closure is not supported (as in PyTorch): run the forward and "
                               "backward before step")
        state = self._state(optimizer)
        if state["stage"] == _STEPPED:
            raise RuntimeError("step() has already been called since the last update()")
        be = optimizer._takes_grad_scaling()
        if be is not None:
            return self._fused_step(optimizer, state, be)
        if state["stage"] == _READY:
            self.unscale_(optimizer)
        state["stage"] = _STEPPED
        if state["found_inf"] is not None and bool(state["found_inf"]):  # the one host sync
            state["found_inf"] = True
            self.skipped_steps += 1
            return None
        state["found_inf"] = False
        return optimizer.step(*args, **kwargs)

    def _fused_step(self, optimizer, state, be):
        """The check launch (unless unscale_ already checked), then the fused
        step with the flag; the flag is read at update()."""
        flag = be.xp.zeros(1, np.float32)
        if state["stage"] == _READY:
            inv_scale = 1.0 / self._scale
            grads = [p._grad for group in optimizer.param_groups for p in group["params"] if p._grad is not None]
            optim_ops.nonfinite_check(be, grads, flag)
        else:  # unscale_ unscaled the gradients in place and checked them
            inv_scale = 1.0
            if state["found_inf"] is not None:
                flag[...] = state["found_inf"]
        state["stage"] = _STEPPED
        result, state["undo"] = optimizer._scaled_step(inv_scale, flag)
        state["found_inf"], state["fused"] = flag, True
        return result

    def update(self, new_scale=None):
        """Back off after a skipped step, grow after growth_interval good ones
        (or set `new_scale`); ready for the next iteration."""
        if not self._enabled:
            return
        states = [s for s in self._per_optimizer.values() if s["found_inf"] is not None]
        found = [bool(s["found_inf"]) for s in states]  # the iteration's host sync (of a fused step: only here)
        for s, bad in zip(states, found):
            if bad and s["fused"]:  # a step the kernels skipped: undo its host side, count it
                self.skipped_steps += 1
                for undo in s["undo"]:
                    undo()
        if new_scale is not None:
            self._scale = _number(float(new_scale), "new_scale", lambda v: v > 0, "a positive number")
        elif not states:
            raise RuntimeError("update(): no inf checks were recorded; call step(optimizer) (or unscale_) first")
        elif any(found):
            self._scale *= self._backoff_factor
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self._growth_interval:
                self._scale *= self._growth_factor
                self._growth_tracker = 0
        self._per_optimizer = {}

    # ------------------------------------------------------------ accessors and state
    def get_scale(self) -> float:
        return self._scale if self._enabled else 1.0

    def is_enabled(self) -> bool:
        return self._enabled

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def state_dict(self) -> dict:
        """torch's entries (scale, growth_factor, backoff_factor, growth_interval,
        _growth_tracker) and skipped_steps; {} when disabled, as torch."""
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor, "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval, "_growth_tracker": self._growth_tracker,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict):
        if not self._enabled:
            return
        if not isinstance(state_dict, dict) or "scale" not in state_dict:
            raise ValueError("state_dict: expected a GradScaler state_dict (a dict with 'scale'); "
                             "an empty one comes from a disabled scaler")
        self._scale = _number(float(state_dict["scale"]), "state_dict['scale']", lambda v: v > 0, "> 0")
        self._growth_factor = float(state_dict.get("growth_factor", self._growth_factor))
        self._backoff_factor = float(state_dict.get("backoff_factor", self._backoff_factor))
        self._growth_interval = int(state_dict.get("growth_interval", self._growth_interval))
        self._growth_tracker = int(state_dict.get("_growth_tracker", 0))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
