"""Optimizer base class: parameter groups, per-parameter state, zero_grad and
state_dict with PyTorch's structure and semantics.

An optimizer updates `p._data` IN PLACE (never rebinding it), so a module, its
optimizer and anything else holding the array keep seeing the same buffer, and
the fused CUDA update (one kernel launch per group on sim/cuda) and the array
code (cpu/cupy) write the same memory.

Which backend runs the update: `device=` if given, else the backend the
parameters were moved to with `Module.to` (Parameter.backend), else the one the
arrays belong to (NumPy -> 'cpu', CuPy -> 'cuda' when gpunet._C is built,
else 'cupy').

Half parameters (bfloat16, float16) are updated through float32 master
weights: the optimizer keeps a float32 copy of each (`master_weights`, saved
as the parameter's state entry 'master_weight'; taken from the parameter on
its first step and again whenever the parameter no longer holds the master's
rounding, i.e. something else wrote it), runs the float32 update on it with
the gradient read in float32 and float32 state (momentum, moments), and
writes the master rounded once (to nearest even) back into the parameter's
own buffer. Steps too small for the half type accumulate in the master
instead of being rounded away. On kernel backends (sim, cuda), a group of
half parameters of one dtype whose optimizer has fused kernels for it
(`_fused_half`: SGD, Adam/AdamW without amsgrad) runs all of that in one
launch: the kernel reads the half gradients, updates the masters and writes
the rounded weights (`_half_weights` hands them to the update).

Under a GradScaler on a kernel backend (`_takes_grad_scaling`: every group
runs a fused kernel) the scaler's step is `_scaled_step`: the fused kernels
take its inv_scale and device found-inf flag (`_grad_scaling`), return at
once when the flag is set and otherwise unscale each gradient as they read
it. Whether the step was skipped is known only when the scaler reads the
flag at update(); what the step changed on the host (a step count, a new
momentum buffer) is registered with `_undo_if_skipped` and undone then.
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes
from ..backend import Backend, backend_of, get_backend, to_numpy
from ..autograd.tensor import Tensor
from ..ops import device_errors


def _kind(x) -> str:
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def check_number(group: dict, key: str, where: str, lo: float = 0.0):
    """group[key] must be a finite real number >= lo (NaN and inf would turn
    every weight NaN without an error)."""
    v = group[key]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) \
            or v < lo:
        raise ValueError(f"{where}: {key}: expected a finite number >= {lo:g}, got {v!r}")


def as_pair(v, name: str) -> tuple:
    """Hyperparameters such as betas=(0.9, 0.999): a sequence of two numbers."""
    try:
        pair = tuple(v)
    except TypeError:
        pair = None
    if pair is None or len(pair) != 2 or not all(
            isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)
            for x in pair):
        raise ValueError(f"{name}: expected a pair of finite numbers, got {v!r}")
    return pair


class Optimizer:
    """Base class. Subclasses pass their hyperparameter defaults, validate a
    group in `_check_group`, update one group's parameters in `_update` and
    name the per-parameter state entries they keep in `_state_keys` (a state
    dict of another optimizer type is refused by `load_state_dict`)."""

    _state_keys: frozenset = frozenset()
    _grad_scaling = None  # a GradScaler's (inv_scale, found_inf) during _scaled_step

    def __init__(self, params, defaults: dict, device=None):
        self.defaults = dict(defaults)
        self.device = None if device is None else get_backend(device)
        self.state: dict[Tensor, dict] = {}
        self.master_weights: dict[Tensor, object] = {}  # half parameters' float32 copies
        self.param_groups: list[dict] = []
        if isinstance(params, Tensor):
            raise TypeError("params: expected an iterable of Parameters or of dicts (parameter groups), "
                            f"got a single {type(params).__name__} (wrap it in a list)")
        if isinstance(params, dict):
            raise TypeError("params: expected an iterable of Parameters or of dicts, got a dict "
                            "(pass a list of parameter groups: [{'params': ...}])")
        groups = list(params)
        if not groups:
            raise ValueError("params: the optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------ groups
    def add_param_group(self, group: dict):
        """Add a group: a dict with 'params' and optional hyperparameter overrides."""
        gi = len(self.param_groups)
        if not isinstance(group, dict):
            raise TypeError(f"param_groups[{gi}]: expected a dict with a 'params' entry, got {_kind(group)}")
        if "params" not in group:
            raise ValueError(f"param_groups[{gi}]: the dict has no 'params' entry (keys: {sorted(group)})")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor) or not p.is_leaf:
                raise TypeError(f"param_groups[{gi}]['params'][{i}]: expected a gpunet Parameter "
                                f"(model.parameters()) or a leaf Tensor, got {_kind(p)}"
                                + ("" if not isinstance(p, Tensor) else " that is not a leaf (it has a grad_fn)"))
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"param_groups[{gi}]: a parameter appears twice in the group")
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in taken for p in params):
            raise ValueError(f"param_groups[{gi}]: some parameters appear in more than one parameter group")
        group = dict(group, params=params)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group, f"param_groups[{gi}]")
        self.param_groups.append(group)

    def _check_group(self, group: dict, where: str):
        self._nonnegative(group, where, "lr")

    @staticmethod
    def _nonnegative(group: dict, where: str, *keys):
        for key in keys:
            check_number(group, key, where)

    @staticmethod
    def _implementation(foreach=None, fused=None, capturable: bool = False, differentiable: bool = False):
        """PyTorch's implementation switches. foreach and fused choose among
        PyTorch's own implementations of the same update; here the dispatch
        policy (gpunet.dispatch) chooses, so any value is accepted and changes
        nothing. capturable (CUDA-graph capture) and differentiable (autograd
        through step) have no counterpart: True raises NotImplementedError."""
        for name, value in (("foreach", foreach), ("fused", fused)):
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"{name}: expected a bool or None, got {value!r}")
        for name, value in (("capturable", capturable), ("differentiable", differentiable)):
            if value:
                raise NotImplementedError(f"{name}=True is not supported by gpunet optimizers "
                                          f"(only PyTorch's default, {name}=False)")

    @staticmethod
    def _signed(group: dict, grads: list) -> list:
        """The gradients the update descends along: negated with maximize=True
        (as PyTorch, before weight decay is added), so kernels and array code
        maximize unchanged."""
        return [-g for g in grads] if group.get("maximize") else grads

    # ------------------------------------------------------------ stepping
    def zero_grad(self, set_to_none: bool = True):
        """Clear every parameter's gradient (drop it, or fill it with zeros in place)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p._grad is None:
                    continue
                if set_to_none:
                    p._grad = None
                else:
                    p._grad[...] = 0

    def step(self, closure=None):
        """One update of every parameter that has a gradient (those whose grad is
        None are skipped, as in PyTorch). `closure`, if given, is called first
        (it should run forward and backward) and its result is returned."""
        loss = closure() if closure is not None else None
        work = []
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p._grad is not None]
            if params:
                work.append((group, params, self._backend_for(group, params, gi)))
        # bad targets or indices a kernel reported since the last sync raise
        # before any weight changes (gpunet.ops.device_errors)
        for be in {be for *_, be in work}:
            device_errors.check(be)
        for group, params, be in work:
            halves = [p for p in params if dtypes.is_half(p._data.dtype)]
            if halves:
                self._update_through_masters(group, params, halves, be)
            else:
                self._update(group, params, be)
            for p in params:  # updated in place: a graph that saved the old values must not use them
                p._vc[0] += 1
        return loss

    def _fused(self, group: dict) -> bool:
        """Whether this group's update has fused multi-tensor kernels (float32
        groups, and half weights through their masters)."""
        return False

    def _takes_grad_scaling(self):
        """The one kernel backend that runs every group with gradients through
        fused kernels on float32 data (half parameters' float32 masters
        included), so that a GradScaler's flag and inv_scale can go to the
        kernels; None otherwise (the scaler then unscales the gradients itself)."""
        from ..ops.optim import takes_kernel
        found = None
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p._grad is not None]
            if not params:
                continue
            be = self._backend_for(group, params, gi)
            if (found not in (None, be) or not self._fused(group)
                    or not all(dtypes.is_half(p._data.dtype) or takes_kernel(be, p._data.dtype) for p in params)
                    or not takes_kernel(be, np.float32)):
                return None
            found = be
        return found

    def _scaled_step(self, inv_scale: float, found_inf):
        """step() with the fused kernels skipping on found_inf and reading the
        gradients times inv_scale; returns step's result and the undo actions
        registered for a skipped step (see the module docstring)."""
        self._grad_scaling, self._skip_undo = (inv_scale, found_inf), []
        try:
            return self.step(), self._skip_undo
        finally:
            self._grad_scaling = None

    def _undo_if_skipped(self, undo):
        """Under _scaled_step: `undo()` restores host state this step changed,
        should the scaler find it skipped; nothing otherwise."""
        if self._grad_scaling is not None:
            self._skip_undo.append(undo)

    def _update_through_masters(self, group: dict, params: list, halves: list, be: Backend):
        """`_update` with each half parameter's data swapped for its float32
        master for its duration (the subclasses read p._data, p._grad and size
        their state from p._data), then the rounded masters written back: by
        the fused kernels themselves when they take the group (its half
        gradients then stay as they are), else here (gradients read in float32)."""
        fused = (be.kernels is not None and len(halves) == len(params)
                 and len({p._data.dtype for p in halves}) == 1 and self._fused(group))
        saved = []
        for p in halves:
            master = self.master_weights.get(p)
            if master is None or not self._holds_rounding(p._data, master):
                master = self.master_weights[p] = p._data.astype(np.float32)
            saved.append((p._data, p._grad))
            p._data, p._grad = master, (p._grad if fused else p._grad.astype(np.float32))
        self._weights = [data for data, _ in saved] if fused else None
        try:
            self._update(group, params, be)
        finally:
            self._weights = None
            for p, (data, grad) in zip(halves, saved):
                master = p._data
                p._data, p._grad = data, grad
                if not fused:
                    data[...] = master.astype(data.dtype)

    def _half_weights(self):
        """For a fused `_update`: the half weights of the group's masters, in
        the order of its params (None when the group is not fused-half)."""
        return getattr(self, "_weights", None)

    @staticmethod
    def _holds_rounding(half, master) -> bool:
        """Whether the half array is bit for bit the master rounded to its dtype."""
        bits = np.dtype(f"u{half.dtype.itemsize}")
        return bool((master.astype(half.dtype).view(bits) == half.view(bits)).all())

    def _update(self, group: dict, params: list, be: Backend):
        raise NotImplementedError(f"{type(self).__name__} does not implement _update")

    def _backend_for(self, group: dict, params: list, gi: int) -> Backend:
        """The backend running this group's update; checks every parameter and
        gradient lives there and that gradients match their parameters."""
        be = self._backend_of(params[0])
        index = {id(p): i for i, p in enumerate(group["params"])}
        for p in params:
            where = f"param_groups[{gi}]['params'][{index[id(p)]}]"
            for what, x in (("data", p._data), ("grad", p._grad)):
                if not be.owns(x):
                    raise TypeError(f"{where}.{what}: expected an array of backend {be.device!r}, got {_kind(x)} "
                                    "(move the model before creating the optimizer, or pass device=...)")
            if tuple(p._grad.shape) != tuple(p._data.shape) or p._grad.dtype != p._data.dtype:
                raise ValueError(f"{where}.grad: expected shape {tuple(p._data.shape)} and dtype {p._data.dtype} "
                                 f"(those of the parameter), got {tuple(p._grad.shape)} {p._grad.dtype}")
        return be

    def _backend_of(self, p: Tensor) -> Backend:
        return self.device or p.backend

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """{'state': {index: {name: value}}, 'param_groups': [{hyperparameters...,
        'params': [index, ...]}]}: parameters are numbered across groups in order,
        arrays are NumPy copies. `gpunet.save` writes it to disk."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                entry = dict(self.state.get(p, {}))
                if p in self.master_weights:
                    entry["master_weight"] = self.master_weights[p]
                if entry:  # no entry for a parameter without state, as PyTorch
                    state[index[id(p)]] = {k: np.array(to_numpy(v)) if hasattr(v, "shape") else v
                                           for k, v in entry.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict):
        """Restore hyperparameters and state saved by `state_dict` (possibly from
        another backend): arrays are moved to each parameter's backend and dtype.
        Group count, group sizes and state shapes must match this optimizer."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            got = sorted(state_dict) if isinstance(state_dict, dict) else _kind(state_dict)
            raise ValueError(f"load_state_dict: expected a dict with keys 'state' and 'param_groups', got {got}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: the state dict has {len(saved_groups)} parameter group(s), "
                             f"this optimizer has {len(self.param_groups)}")
        by_index = {}
        for gi, (mine, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, dict) or set(saved) != set(mine):
                got = sorted(saved) if isinstance(saved, dict) else _kind(saved)
                raise ValueError(f"load_state_dict: param_groups[{gi}] has keys {got}, {type(self).__name__} "
                                 f"expects {sorted(mine)}: a state dict of another optimizer type?")
            self._check_group(dict(saved, params=mine["params"]), f"load_state_dict: param_groups[{gi}]")
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(f"load_state_dict: param_groups[{gi}] has {len(saved['params'])} parameter(s) "
                                 f"in the state dict, {len(mine['params'])} in this optimizer")
            for j, (idx, p) in enumerate(zip(saved["params"], mine["params"])):
                by_index[idx] = (p, f"param_groups[{gi}]['params'][{j}]")
        new_state, new_masters = {}, {}
        for idx, entry in state_dict["state"].items():
            if idx not in by_index:
                raise ValueError(f"load_state_dict: state[{idx!r}] belongs to no parameter of any group")
            p, where = by_index[idx]
            foreign = set(entry) - self._state_keys - {"master_weight"}
            if foreign:
                raise ValueError(f"load_state_dict: state[{idx}] has entries {sorted(foreign)} that "
                                 f"{type(self).__name__} does not keep: a state dict of another optimizer type?")
            be = self._backend_of(p)
            # a half parameter's master weight and state are float32
            state_dtype = np.float32 if dtypes.is_half(p._data.dtype) else p._data.dtype
            restored = {}
            for key, value in entry.items():
                if hasattr(value, "shape"):
                    if tuple(value.shape) != tuple(p._data.shape):
                        raise ValueError(f"load_state_dict: state[{idx}][{key!r}] has shape {tuple(value.shape)}, "
                                         f"but {where} has shape {tuple(p._data.shape)}")
                    value = be.asarray(to_numpy(value), dtype=state_dtype)
                restored[key] = value
            if "master_weight" in restored:
                new_masters[p] = restored.pop("master_weight")
            if restored:
                new_state[p] = restored
        for mine, saved in zip(self.param_groups, saved_groups):
            mine.update({k: v for k, v in saved.items() if k != "params"})
        self.state, self.master_weights = new_state, new_masters

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        return "\n".join(lines) + "\n)"
