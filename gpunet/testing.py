"""Cross-backend comparison: run a module, a function or a training step on
several backends and check they agree (CPU-vs-GPU parity), reporting the
worst element readably.

Tolerances come from the dtype: a float32 kernel that reorders a sum of n
terms differs from a float64 reference by a few ulps times sqrt(n), so the
defaults are rtol = atol = 64·eps(float32) ≈ 7.6e-6 scaled by `tol_scale`
(kernels with long reductions pass a larger scale) and 1e-12 for float64.
"""
from __future__ import annotations

import copy

import numpy as np

from .backend import get_backend, to_numpy
from .nn.module import Module

_BASE = {np.dtype(np.float32): 64 * float(np.finfo(np.float32).eps),
         np.dtype(np.float64): 1e-12}


def tolerances(dtype, tol_scale: float = 1.0) -> tuple[float, float]:
    """(rtol, atol) for comparing arrays of `dtype` computed two ways."""
    base = _BASE.get(np.dtype(dtype), 64 * float(np.finfo(np.float32).eps))
    return base * tol_scale, base * tol_scale


def assert_close(actual, expected, *, rtol=None, atol=None, tol_scale: float = 1.0, name: str = "value"):
    """Raise AssertionError unless |actual - expected| <= atol + rtol·|expected|
    elementwise; the message names the worst element, its index, both values
    and the relative error. Arrays of any backend; compared in float64."""
    a = np.array(to_numpy(actual), dtype=np.float64, ndmin=1)
    e = np.array(to_numpy(expected), dtype=np.float64, ndmin=1)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} differs from expected {e.shape}")
    dt = np.result_type(getattr(actual, "dtype", np.float64), getattr(expected, "dtype", np.float64))
    if dt.kind != "f":
        dt = np.dtype(np.float64)
    dr, da = tolerances(np.float32 if np.float32 in (getattr(actual, "dtype", None), getattr(expected, "dtype", None)) else dt, tol_scale)
    rtol = dr if rtol is None else rtol
    atol = da if atol is None else atol
    if a.size == 0:
        return
    nan_mismatch = np.isnan(a) != np.isnan(e)
    diff = np.abs(a - e)
    diff[np.isnan(a) & np.isnan(e)] = 0.0
    diff[nan_mismatch] = np.inf
    excess = diff - (atol + rtol * np.abs(e))
    if not (excess > 0).any():
        return
    i = np.unravel_index(int(np.nanargmax(excess)), a.shape)
    rel = diff[i] / max(abs(e[i]), np.finfo(np.float64).tiny)
    nbad = int((excess > 0).sum())
    raise AssertionError(f"{name}: {nbad} of {a.size} elements differ beyond atol={atol:.3g} rtol={rtol:.3g}; "
                         f"worst at index {tuple(int(t) for t in i)}: got {a[i]!r}, expected {e[i]!r}, "
                         f"abs error {diff[i]:.3g}, rel error {rel:.3g}")


def _tree_map(fn, tree):
    if isinstance(tree, (tuple, list)):
        return type(tree)(_tree_map(fn, t) for t in tree)
    return None if tree is None else fn(tree)


def _leaves(tree, prefix, out):
    if isinstance(tree, (tuple, list)):
        for i, t in enumerate(tree):
            _leaves(t, f"{prefix}[{i}]", out)
    elif tree is not None:
        out.append((prefix, tree))
    return out


def _move(tree, be):
    def mv(x):
        if hasattr(x, "dtype") and hasattr(x, "shape"):
            return be.asarray(to_numpy(x))
        return x
    return _tree_map(mv, tree)


def _random_like(tree, rng):
    def rnd(x):
        if np.ndim(x) == 0:
            return float(rng.standard_normal())
        return rng.standard_normal(np.shape(x)).astype(x.dtype)
    return _tree_map(rnd, tree)


def _run_module(module: Module, device, inputs, grad_outputs):
    be = get_backend(device)
    m = copy.deepcopy(module).to(be)
    m.zero_grad()
    out = m(*_move(inputs, be))
    gout = _move(grad_outputs, be)
    if isinstance(out, (tuple, list)):
        grads = m.backward(*gout)
    else:
        grads = m.backward(gout)
    params = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    return out, grads, params, m


def compare_module(module: Module, inputs, devices=("cpu", "sim"), *, grad_outputs=None, seed: int = 0,
                   rtol=None, atol=None, tol_scale: float = 1.0) -> dict:
    """Run `module` (copied, so the original is untouched) forward and backward
    on each device with the same inputs and output gradients, and assert that
    outputs, input gradients and parameter gradients agree with the first
    device's. `inputs` is the tuple of forward arguments (may nest); integer
    arrays pass through. Returns {device: (output, input_grads, param_grads)}.
    """
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if grad_outputs is None:
        grad_outputs = _random_like(_to_host(_forward_only(module, devices[0], inputs)),
                                    np.random.default_rng(seed))
    results = {}
    for dev in devices:
        out, grads, params, _ = _run_module(module, dev, inputs, grad_outputs)
        results[dev] = (out, grads, params)
    ref_dev = devices[0]
    first = results[ref_dev]
    for dev in devices[1:]:
        out, grads, params = results[dev]
        tag = f"{type(module).__name__} on {dev} vs {ref_dev}"
        for (path, r), (_, g) in zip(_leaves(first[0], "output", []), _leaves(out, "output", [])):
            assert_close(g, r, rtol=rtol, atol=atol, tol_scale=tol_scale, name=f"{tag}: {path}")
        ref_grads = first[1] if isinstance(first[1], (tuple, list)) else (first[1],)
        got_grads = grads if isinstance(grads, (tuple, list)) else (grads,)
        for (path, r), (_, g) in zip(_leaves(ref_grads, "grad_input", []), _leaves(got_grads, "grad_input", [])):
            assert_close(g, r, rtol=rtol, atol=atol, tol_scale=tol_scale, name=f"{tag}: {path}")
        if set(params) != set(first[2]):
            raise AssertionError(f"{tag}: parameters with gradients differ: {sorted(params)} vs {sorted(first[2])}")
        for n in first[2]:
            assert_close(params[n], first[2][n], rtol=rtol, atol=atol, tol_scale=tol_scale, name=f"{tag}: {n}.grad")
    return results


def _forward_only(module, dev, inputs):
    """One forward pass, saving nothing: tells the output structure."""
    from .nn.module import no_grad
    m = copy.deepcopy(module).to(get_backend(dev))
    with no_grad():
        return m(*_move(inputs, get_backend(dev)))


def _to_host(tree):
    return _tree_map(lambda x: np.asarray(to_numpy(x)), tree)


def compare_function(forward, backward, inputs, devices=("cpu", "sim"), *, grad_outputs=None, seed: int = 0,
                     rtol=None, atol=None, tol_scale: float = 1.0) -> dict:
    """Like compare_module for a stateless pair: `forward(be, *inputs) -> (out, ctx)`
    and `backward(be, ctx, grad_out) -> grads` (e.g. an op from gpunet.ops)."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    results = {}
    ref = None
    for dev in devices:
        be = get_backend(dev)
        out, ctx = forward(be, *_move(inputs, be))
        if grad_outputs is None:
            grad_outputs = _random_like(_to_host(out), np.random.default_rng(seed))
        grads = backward(be, ctx, _move(grad_outputs, be)) if backward is not None else None
        results[dev] = (out, grads)
        if ref is None:
            ref = (dev, out, grads)
            continue
        tag = f"on {dev} vs {ref[0]}"
        for (p, r), (_, g) in zip(_leaves(ref[1], "output", []), _leaves(out, "output", [])):
            assert_close(g, r, rtol=rtol, atol=atol, tol_scale=tol_scale, name=f"{tag}: {p}")
        for (p, r), (_, g) in zip(_leaves(ref[2], "grad", []), _leaves(grads, "grad", [])):
            assert_close(g, r, rtol=rtol, atol=atol, tol_scale=tol_scale, name=f"{tag}: {p}")
    return results


def compare_training(make_model, make_loss, make_optimizer, batches, devices=("cpu", "sim"), *,
                     rtol=None, atol=None, tol_scale: float = 1.0) -> dict:
    """Train the same model (same initial weights) for len(batches) optimizer
    steps on each device and assert that every step's loss and the final
    parameters agree with the first device's. `make_model()` builds the model
    (its weights are copied from the first build to all devices),
    `make_loss()` the criterion, `make_optimizer(params)` the optimizer;
    `batches` is a list of (input, target) NumPy pairs. Returns
    {device: (losses, state_dict)}."""
    proto = make_model()
    state = proto.state_dict()
    results = {}
    for dev in devices:
        be = get_backend(dev)
        model = copy.deepcopy(proto).to(be)
        model.load_state_dict(state)
        crit = make_loss()
        if isinstance(crit, Module):
            crit.to(be)
        opt = make_optimizer(model.parameters())
        losses = []
        for x, t in batches:
            model.zero_grad()
            out = model(be.asarray(x))
            loss = crit(out, be.asarray(t))
            model.backward(crit.backward())
            opt.step()
            losses.append(float(to_numpy(loss)))
        results[dev] = (np.array(losses, dtype=model.dtype), model.state_dict())
    ref_dev = devices[0]
    for dev in devices[1:]:
        tag = f"training on {dev} vs {ref_dev}"
        assert_close(results[dev][0], results[ref_dev][0], rtol=rtol, atol=atol, tol_scale=tol_scale,
                     name=f"{tag}: losses per step")
        for k, v in results[ref_dev][1].items():
            if v.dtype.kind == "f":
                assert_close(results[dev][1][k], v, rtol=rtol, atol=atol, tol_scale=tol_scale, name=f"{tag}: {k}")
    return results
