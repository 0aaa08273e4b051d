"""Finite-difference gradient check for modules with explicit backward passes.

Central differences in float64 along every element of every floating input
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


def gradcheck(module, inputs, *, eps: float = 1e-6, tol: float = 1e-6, seed: int = 0,
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
            orig = float(flat[idx])
            flat[idx] = orig + eps
            fp = objective()
            flat[idx] = orig - eps
            fm = objective()
            flat[idx] = orig
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
