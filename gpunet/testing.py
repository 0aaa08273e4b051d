"""Cross-backend comparison: run a module, a function or a training step on
several backends and check they agree (CPU-vs-GPU parity), reporting the
worst element readably, and check that the kernel backends ran their kernels.

Tolerances: one rule, from the dtype's epsilon and the reduction length.
Two computations of a value that add its n terms in different orders (or
round a product differently) differ by about eps·sqrt(n) times the terms'
magnitude, a few eps for n = 1; so values are compared with

    rtol = atol = 16 · eps(dtype) · sqrt(max(n, 16))

where n is the length of the longest reduction behind a compared value and
dtype the coarser of the two (n = 1, the default: 64·eps, 7.6e-6 for float32
and 1.4e-14 for float64). atol is absolute: inputs of magnitude about 1 keep
it meaningful. Nothing else scales a tolerance. The half types (bfloat16,
float16) store what float32 computed, rounded once: their values get the
float32 rule plus one epsilon of the storage type,

    rtol = atol = 16 · eps(float32) · sqrt(max(n, 16)) + eps(dtype)

(n = 1: 7.8e-3 for bfloat16, 9.8e-4 for float16).

Kernel use: on sim, whose kernel module counts its calls, each parity helper
asserts that the kernels ran (those named in `kernels`, or at least one) and
that no op fell back to the array path unless the call names it in
`fallbacks` (a documented fallback: float64, BatchNorm, ...); on any kernel
backend the fallback check holds. `expect_kernels` is the same check for any
block of code.

Declared op tests: an `OpCase` states a module, its inputs, a reference and
the reduction length once; `check_op(case, device)` then runs the three
rings on that device (cpu: the reference and a float64 gradcheck; sim:
float32 parity with the float64 cpu run under each thread schedule, with
the kernel-use check; cuda/cupy: the same parity).
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import backend, dtypes
from .backend import get_backend, sim_module, to_numpy
from .gradcheck import gradcheck
from .nn.module import Module

KERNEL_BACKENDS = ("sim", "cuda")


def tolerances(dtype, n: int = 1) -> tuple[float, float]:
    """(rtol, atol) for values of `dtype` computed two ways, each from
    reductions of at most n terms (see the module docstring)."""
    dtype = np.dtype(dtype) if dtypes.is_floating(dtype) else np.dtype(np.float64)
    compute = dtypes.compute_dtype(dtype)
    tol = 16 * dtypes.eps(compute) * math.sqrt(max(n, 16))
    if compute != dtype:  # a half storage type: plus the one rounding of the result to it
        tol += dtypes.eps(dtype)
    return tol, tol


class KernelUse:
    """What `expect_kernels` saw: `calls` counts the kernel calls made in its
    block by name (None where the backend does not count them), `fallbacks`
    the (op, reason) fallbacks recorded in it."""

    def __init__(self):
        self.calls: Counter | None = None
        self.fallbacks: Counter = Counter()


@contextlib.contextmanager
def expect_kernels(device, kernels=None, fallbacks=()):
    """Assert that the block, run on `device`, ran its kernels: every kernel
    named in `kernels` was called (kernels=None: at least one, unless
    `fallbacks` is given) where the backend counts calls (sim), and no op but
    those named in `fallbacks` left the kernels (any kernel backend). Fails
    when a kernel backend has no kernel module. A no-op on cpu and cupy.
    Yields a KernelUse filled in when the block ends."""
    be = get_backend(device)
    use = KernelUse()
    if be.name in KERNEL_BACKENDS and be.kernels is None:
        raise AssertionError(f"backend {be.device!r} has no kernel module: every kernel call would be an array path")
    counter = getattr(be.kernels, "calls", None)
    calls_before = Counter(counter) if counter is not None else None
    fallbacks_before = backend.fallbacks()
    yield use
    use.fallbacks = backend.fallbacks() - fallbacks_before
    undocumented = {k: v for k, v in use.fallbacks.items() if k[0] not in fallbacks}
    if undocumented:
        raise AssertionError(f"on {be.device}: ops left the kernels without being expected to "
                             f"(pass fallbacks=... for a documented case): {undocumented}")
    if counter is None:
        return
    use.calls = counter - calls_before
    if kernels is None:
        if not use.calls and not fallbacks:
            raise AssertionError(f"on {be.device}: no kernel was called (did the op take an array path?)")
    else:
        missing = [k for k in kernels if not use.calls[k]]
        if missing:
            raise AssertionError(f"on {be.device}: kernels {missing} were not called; called: {dict(use.calls)}")


def assert_close(actual, expected, *, n: int = 1, rtol=None, atol=None, name: str = "value"):
    """Raise AssertionError unless |actual - expected| <= atol + rtol·|expected|
    elementwise, with the tolerances of the coarser dtype and reduction
    length n unless given; the message names the worst element, its index,
    both values and the relative error. Arrays of any backend; compared in
    float64."""
    a = np.array(to_numpy(actual), dtype=np.float64, ndmin=1)
    e = np.array(to_numpy(expected), dtype=np.float64, ndmin=1)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} differs from expected {e.shape}")
    floats = [np.dtype(d) for d in (getattr(actual, "dtype", None), getattr(expected, "dtype", None))
              if d is not None and dtypes.is_floating(d)]
    coarse = max(floats, key=dtypes.eps, default=np.dtype(np.float64))
    dr, da = tolerances(coarse, n)
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
                   n: int = 1, rtol=None, atol=None, kernels=None, fallbacks=()) -> dict:
    """Run `module` (copied, so the original is untouched) forward and backward
    on each device with the same inputs and output gradients, and assert that
    outputs, input gradients and parameter gradients agree with the first
    device's within tolerances(dtype, n) (or rtol/atol), and that each device
    ran its kernels (`kernels`, `fallbacks`: see expect_kernels). `inputs`
    is the tuple of forward arguments (may nest); integer arrays pass
    through. Returns {device: (output, input_grads, param_grads)}.
    """
    tol = dict(n=n, rtol=rtol, atol=atol)
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if grad_outputs is None:
        grad_outputs = _random_like(_to_host(_forward_only(module, devices[0], inputs)),
                                    np.random.default_rng(seed))
    results = {}
    for dev in devices:
        with expect_kernels(dev, kernels, fallbacks):
            out, grads, params, _ = _run_module(module, dev, inputs, grad_outputs)
        results[dev] = (out, grads, params)
    ref_dev = devices[0]
    first = results[ref_dev]
    for dev in devices[1:]:
        out, grads, params = results[dev]
        tag = f"{type(module).__name__} on {dev} vs {ref_dev}"
        for (path, r), (_, g) in zip(_leaves(first[0], "output", []), _leaves(out, "output", [])):
            assert_close(g, r, **tol, name=f"{tag}: {path}")
        ref_grads = first[1] if isinstance(first[1], (tuple, list)) else (first[1],)
        got_grads = grads if isinstance(grads, (tuple, list)) else (grads,)
        for (path, r), (_, g) in zip(_leaves(ref_grads, "grad_input", []), _leaves(got_grads, "grad_input", [])):
            assert_close(g, r, **tol, name=f"{tag}: {path}")
        if set(params) != set(first[2]):
            raise AssertionError(f"{tag}: parameters with gradients differ: {sorted(params)} vs {sorted(first[2])}")
        for name in first[2]:
            assert_close(params[name], first[2][name], **tol, name=f"{tag}: {name}.grad")
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
                     n: int = 1, rtol=None, atol=None, kernels=None, fallbacks=()) -> dict:
    """Like compare_module for a stateless pair: `forward(be, *inputs) -> (out, ctx)`
    and `backward(be, ctx, grad_out) -> grads` (e.g. an op from gpunet.ops)."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    tol = dict(n=n, rtol=rtol, atol=atol)
    results = {}
    ref = None
    for dev in devices:
        be = get_backend(dev)
        with expect_kernels(dev, kernels, fallbacks):
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
            assert_close(g, r, **tol, name=f"{tag}: {p}")
        for (p, r), (_, g) in zip(_leaves(ref[2], "grad", []), _leaves(grads, "grad", [])):
            assert_close(g, r, **tol, name=f"{tag}: {p}")
    return results


def compare_training(make_model, make_loss, make_optimizer, batches, devices=("cpu", "sim"), *,
                     n: int = 1, rtol=None, atol=None, kernels=None, fallbacks=()) -> dict:
    """Train the same model (same initial weights) for len(batches) optimizer
    steps on each device and assert that every step's loss and the final
    parameters agree with the first device's. `make_model()` builds the model
    (its weights are copied from the first build to all devices),
    `make_loss()` the criterion, `make_optimizer(params)` the optimizer;
    `batches` is a list of (input, target) NumPy pairs. Tolerances and
    kernel use as compare_module. Returns {device: (losses, state_dict)}."""
    tol = dict(n=n, rtol=rtol, atol=atol)
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
        with expect_kernels(dev, kernels, fallbacks):
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
        assert_close(results[dev][0], results[ref_dev][0], **tol, name=f"{tag}: losses per step")
        for k, v in results[ref_dev][1].items():
            if v.dtype.kind == "f":
                assert_close(results[dev][1][k], v, **tol, name=f"{tag}: {k}")
    return results


# ---------------------------------------------------------------- declared op tests
# Under the race checker (GPUNET_SIM_RACECHECK=1) one order is enough: it
# finds unordered accesses whatever order the threads run in.
SCHEDULES = ("fwd",) if sim_module() == "gpunet._C_simcheck" else ("fwd", "rev", "random")


@contextlib.contextmanager
def schedule(name: str, seed: int = 12345):
    """Run the block with the sim runtime's threads in order `name` (fwd, rev
    or random): a kernel whose result depends on the order has a race."""
    kernels = get_backend("sim").kernels
    kernels.set_schedule(name, seed)
    try:
        yield
    finally:
        kernels.set_schedule("fwd", seed)


@dataclass(frozen=True)
class OpCase:
    """One op test, declared once. `make()` builds the module, `inputs(rng)`
    its forward arguments as float64 arrays (integer arrays pass through),
    `n` is the longest reduction behind an output (the tolerance rule),
    `kernels` the kernels sim must call and `fallbacks` the ops documented
    to leave them; `reference(module, *inputs)`, if given, is a plain float64
    implementation the cpu output must match (it reads the float64 module's
    parameters and settings); `gradcheck=False` skips the finite-difference
    check (an op with kinks everywhere)."""
    name: str
    make: Callable
    inputs: Callable
    n: int = 1
    kernels: tuple = ()
    fallbacks: tuple = ()
    reference: Callable | None = None
    gradcheck: bool = True

    def __str__(self):
        return self.name


def _cast(tree, dtype):
    return _tree_map(lambda a: a.astype(dtype) if getattr(a, "dtype", np.dtype(int)).kind == "f" else a, tree)


def check_op(case: OpCase, device, seed: int = 0):
    """The checks of `case` on `device` (see the module docstring). Inputs
    are rounded to float32 first, so the float64 reference sees exactly the
    float32 run's inputs."""
    inputs = _cast(_cast(case.inputs(np.random.default_rng(seed)), np.float32), np.float64)
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    module = case.make().to(np.float64)
    grad_outputs = _random_like(_to_host(_forward_only(module, "cpu", inputs)), np.random.default_rng(seed + 1))
    if get_backend(device).name == "cpu":
        if case.reference is not None:
            out = _forward_only(module, "cpu", inputs)
            for (p, r), (_, g) in zip(_leaves(case.reference(module, *inputs), "output", []), _leaves(out, "output", [])):
                assert_close(g, r, n=case.n, name=f"{case}: {p} vs the reference")
        if case.gradcheck:
            gradcheck(copy.deepcopy(module), inputs)
        return
    ref = _run_module(module, "cpu", inputs, grad_outputs)[:3]
    m32 = copy.deepcopy(module).to(np.float32)
    orders = SCHEDULES if get_backend(device).name == "sim" else (None,)
    for order in orders:
        with schedule(order) if order else contextlib.nullcontext():
            with expect_kernels(device, case.kernels or None, case.fallbacks):
                got = _run_module(m32, device, _cast(inputs, np.float32), _cast(grad_outputs, np.float32))[:3]
        tag = f"{case} on {device}" + (f" ({order} schedule)" if order else "") + " vs float64 cpu"
        for what, r, g in (("output", ref[0], got[0]), ("grad_input", ref[1], got[1])):
            for (p, a), (_, b) in zip(_leaves(r, what, []), _leaves(g, what, [])):
                assert_close(b, a, n=case.n, name=f"{tag}: {p}")
        for name in ref[2]:
            assert_close(got[2][name], ref[2][name], n=case.n, name=f"{tag}: {name}.grad")
