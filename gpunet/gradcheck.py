"""Finite-difference gradient checks.

gradcheck(fn, tensors) works as torch.autograd.gradcheck: `fn` is a function
of Tensors (the float64 ones with requires_grad are checked), and every entry
of the analytical Jacobian (one backward per output element) must match the
central-difference one within atol + rtol * |numerical|. Returns True, or
raises GradcheckError (returns False when raise_exception=False).

gradcheck(module, arrays) is the module mode, for explicit backward passes:
central differences in float64 along every element of every floating input
and parameter, compared with the module's backward on a random projection of
the output (loss = sum(r * y)). The error is Caffe's: |a - n| / max(|a|, |n|, 1).
Points at a kink (ReLU at 0, ties in max) are detected by the two one-sided
differences disagreeing, and skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backend import to_numpy
from .nn.module import no_grad


@dataclass
class GradcheckResult:
    max_error: float = 0.0
    worst: str = ""
    checked: int = 0
    skipped_kinks: int = 0
    failures: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures



def _plus_minus(flat, k: int, eps: float, f):
    """(f() with flat[k] raised by eps, f() with it lowered by eps); flat[k] restored."""
    orig = float(flat[k])
    flat[k] = orig + eps
    fp = f()
    flat[k] = orig - eps
    fm = f()
    flat[k] = orig
    return fp, fm

def _flatten(tree, out):
    if isinstance(tree, (tuple, list)):
        for t in tree:
            _flatten(t, out)
    elif tree is not None:
        out.append(tree)
    return out


def _like(tree, leaves):
    """Rebuild `tree`'s nesting with the next values from the iterator `leaves`."""
    if isinstance(tree, (tuple, list)):
        return type(tree)(_like(t, leaves) for t in tree)
    return None if tree is None else next(leaves)


def _is_float(a) -> bool:
    return hasattr(a, "dtype") and a.dtype.kind == "f"


class GradcheckError(RuntimeError):
    """A Jacobian mismatch found by gradcheck on a function of Tensors."""


def gradcheck(fn, inputs, *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True, **module_options):
    """torch.autograd.gradcheck on a function of Tensors (see the module's
    docstring), or `check_module(fn, inputs, eps=eps, **module_options)` when
    no input is a Tensor."""
    from .autograd import Tensor
    if any(isinstance(t, Tensor) for t in _flatten(inputs if isinstance(inputs, (tuple, list)) else (inputs,), [])):
        if module_options:
            raise TypeError(f"gradcheck: unexpected arguments for a function of Tensors: {sorted(module_options)}")
        return _check_function(fn, inputs, eps, atol, rtol, raise_exception)
    return check_module(fn, inputs, eps=eps, **module_options)


def _check_function(fn, inputs, eps, atol, rtol, raise_exception) -> bool:
    from .autograd import Tensor, backward
    from .nn.module import enable_grad
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    # fresh leaves holding copies: the perturbations and gradients never touch the caller's tensors
    leaves, args = [], []
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad:
            if t.dtype != np.float64:
                raise ValueError(f"gradcheck: input {i} is {t.dtype}; inputs that require grad must be float64 "
                                 f"(finite differences are meaningless in lower precision)")
            t = Tensor(t.backend.xp.array(t._data, copy=True), t._backend, requires_grad=True)
            leaves.append((i, t))
        args.append(t)
    if not leaves:
        raise ValueError("gradcheck expects at least one input tensor to require gradient")

    def outputs():
        out = fn(*args)
        outs = [o for o in _flatten(out, []) if isinstance(o, Tensor) and o.dtype.kind == "f"]
        if not outs:
            raise TypeError("gradcheck: fn returned no floating-point Tensor")
        return outs

    def values():
        with no_grad():
            return np.concatenate([to_numpy(o._data).ravel() for o in outputs()])

    # numerical Jacobians: one column per input element
    numerical = []
    for _, x in leaves:
        flat = x._data.reshape(-1)  # a view: x is contiguous
        cols = []
        for k in range(flat.size):
            fp, fm = _plus_minus(flat, k, eps, values)
            cols.append((fp - fm) / (2 * eps))
        numerical.append(np.stack(cols, axis=1) if cols else np.zeros((values().size, 0)))

    # analytical Jacobians: one backward per output element
    with enable_grad():
        outs = outputs()
    rows = [[] for _ in leaves]
    for o in outs:
        for j in range(o.numel()):
            for _, x in leaves:
                x.grad = None
            if o.requires_grad:
                onehot = np.zeros(o.numel())
                onehot[j] = 1
                backward(o, o.backend.asarray(onehot.reshape(o.shape), dtype=o.dtype), retain_graph=True)
            for r, (_, x) in zip(rows, leaves):
                r.append(np.zeros(x.numel()) if x.grad is None else to_numpy(x.grad._data).ravel())
    for (i, _), num, r in zip(leaves, numerical, rows):
        ana = np.stack(r) if r else np.zeros_like(num)
        bad = np.abs(ana - num) > atol + rtol * np.abs(num)
        if bad.any():
            j, k = np.argwhere(bad)[0]
            where = tuple(int(v) for v in np.unravel_index(k, inputs[i].shape))
            msg = (f"Jacobian mismatch for the outputs with respect to input {i} (shape {list(inputs[i].shape)}) "
                   f"at {int(bad.sum())} of {bad.size} entries; first at output element {j}, input element "
                   f"{where}: analytical {ana[j, k]:.10g}, numerical {num[j, k]:.10g} (atol {atol}, rtol {rtol})")
            if raise_exception:
                raise GradcheckError(msg)
            return False
    return True


def check_module(module, inputs, *, eps: float = 1e-6, tol: float = 1e-6, seed: int = 0,
                 params: bool = True, raise_on_failure: bool = True) -> GradcheckResult:
    """Check `module.backward` against central differences.

    module: a float64 Module (call `.to(np.float64)` first), or any object with
      `__call__(*inputs)` and `backward(*grads)`.
    inputs: the forward's positional arguments (tuples nest, e.g. `(x, (h0, c0))`);
      integer arrays (indices, targets) are passed through and not checked.
    Returns a GradcheckResult; raises AssertionError with the worst element when
    `raise_on_failure` and some error exceeds `tol`.
    """
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    for a in _flatten(inputs, []):
        if _is_float(a) and a.dtype != np.float64:
            raise ValueError(f"gradcheck: inputs must be float64 (finite differences are meaningless in "
                             f"float32), got {a.dtype}")
    plist = [(n, p) for n, p in module.named_parameters()] if params and hasattr(module, "named_parameters") else []
    for n, p in plist:
        if p.dtype != np.float64:
            raise ValueError(f"gradcheck: parameter {n!r} is {p.dtype}; call module.to(np.float64) first")

    rng = np.random.default_rng(seed)
    if hasattr(module, "zero_grad"):
        module.zero_grad()
    out = module(*inputs)
    outs = _flatten(out, [])
    projections = [rng.standard_normal(np.shape(o)) for o in outs]
    for o in outs:
        if not _is_float(o) and not np.isscalar(o):
            raise TypeError(f"gradcheck: forward returned a non-floating output of type {type(o).__name__}")

    def as_backend(r, like):
        if isinstance(like, np.ndarray) or np.isscalar(like) or isinstance(like, float):
            return np.asarray(r, dtype=np.float64) if np.ndim(like) else float(r)
        import cupy
        return cupy.asarray(r)

    grads_out = [as_backend(r, o) for r, o in zip(projections, outs)]
    analytic = module.backward(*(_like(out, iter(grads_out)) if isinstance(out, (tuple, list)) else (grads_out[0],)))
    if len(inputs) == 1:
        analytic = (analytic,)
    analytic_leaves = _pad(analytic, inputs)

    def objective() -> float:
        with no_grad():
            o = module(*inputs)
        return float(sum(np.sum(to_numpy(a) * r) for a, r in zip(_flatten(o, []), projections)))

    result = GradcheckResult()
    targets = []
    for i, (a, g) in enumerate(zip(_flatten(inputs, []), analytic_leaves)):
        if _is_float(a):
            if g is None:
                raise AssertionError(f"gradcheck: backward returned no gradient for floating input #{i}")
            targets.append((f"input[{i}]", a, to_numpy(g)))
    for n, p in plist:
        if p.requires_grad:
            g = p.grad if p.grad is not None else np.zeros(p.shape)
            targets.append((n, p.data, to_numpy(g)))

    for name, arr, ana in targets:
        if tuple(ana.shape) != tuple(arr.shape):
            raise AssertionError(f"gradcheck: gradient of {name} has shape {tuple(ana.shape)}, expected {tuple(arr.shape)}")
        flat = arr.reshape(-1)
        for idx in range(flat.size):
            fp, fm = _plus_minus(flat, idx, eps, objective)
            f0 = objective()
            fwd, bwd = (fp - f0) / eps, (f0 - fm) / eps
            if abs(fwd - bwd) > 1e-3 * max(1.0, abs(fwd), abs(bwd)):
                result.skipped_kinks += 1  # not differentiable here
                continue
            num = (fp - fm) / (2 * eps)
            a = float(ana.reshape(-1)[idx])
            err = abs(a - num) / max(abs(a), abs(num), 1.0)
            result.checked += 1
            where = f"{name}{np.unravel_index(idx, arr.shape)}: analytic {a:.10g}, numeric {num:.10g}"
            if err > result.max_error:
                result.max_error, result.worst = err, where
            if err > tol:
                result.failures.append(where + f", error {err:.3g}")
    if raise_on_failure and result.failures:
        raise AssertionError(f"gradcheck failed at {len(result.failures)} of {result.checked} points "
                             f"(tol {tol}); worst: {result.worst} (error {result.max_error:.3g}); "
                             f"first: {result.failures[0]}")
    return result


def _pad(analytic, inputs):
    """Flatten backward's result aligned with the flattened inputs (None for
    inputs that got no gradient, e.g. integer targets)."""
    out = []
    for a, x in zip(analytic, inputs):
        if isinstance(x, (tuple, list)):
            sub = a if isinstance(a, (tuple, list)) else (None,) * len(x)
            out.extend(_pad(sub, x))
        elif x is not None:
            out.append(a)
    return out
