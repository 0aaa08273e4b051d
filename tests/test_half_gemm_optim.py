"""Optimizers on half parameters (bfloat16, float16): float32 master weights
and float32 state, the float32 update, the master rounded once back into the
parameter (gpunet/optim/optimizer.py). On sim the float32 update is the
fused kernels' (sgd_multi, adam_multi); the rest are array code there, as
for float32 groups (recorded fallbacks)."""
import numpy as np
import pytest

import gpunet
from gpunet import dtypes, optim
from gpunet.nn import Parameter

KERNELS = ("sgd_multi", "adam_multi")
HALF = {"bfloat16": dtypes.bfloat16, "float16": dtypes.float16}
FUSED = [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True)),
         ("Adam", dict(lr=0.01, weight_decay=0.1)),
         ("AdamW", dict(lr=0.01, betas=(0.8, 0.99)))]
ARRAY_ONLY = [("RMSprop", dict(lr=0.01, momentum=0.5), "rmsprop"),
              ("Rprop", dict(), "rprop"), ("Adagrad", dict(lr=0.1), "adagrad"),
              ("Adamax", dict(), "adamax"), ("NAdam", dict(), "nadam"), ("RAdam", dict(), "radam")]
SHAPES = [(5, 7), (13,)]
STEPS = 3


def _params(device, dtype, init):
    return [Parameter(gpunet.asarray(w.astype(dtype), device=device)) for w in init]


def _run(name, kw, device, dtype, init, grads):
    """STEPS updates of parameters `init` (cast to dtype) with the gradients
    `grads[step][i]` (cast to dtype); the parameters after each step, and the optimizer."""
    be = gpunet.get_backend(device)
    params = _params(device, dtype, init)
    opt = getattr(optim, name)(params, device=device, **kw)
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = be.asarray(g.astype(dtype))
        opt.step()
        history.append([gpunet.to_numpy(p.data).copy() for p in params])
    return history, opt, params


def _case(rng, half):
    """Initial weights and gradients exactly representable in `half`, so the
    float32 run sees the same inputs as the half run."""
    init = [rng.standard_normal(s).astype(half).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(half).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    return init, grads


def _check_against_float32(name, kw, device, half_name, rng):
    """Every step's half parameters are the float32 run's parameters rounded
    once: the same float32 update on the same backend, bit for bit."""
    half = HALF[half_name]
    init, grads = _case(rng, half)
    got, opt, params = _run(name, kw, device, half, init, grads)
    ref, *_ = _run(name, kw, device, np.float32, init, grads)
    for step, (g_step, r_step) in enumerate(zip(got, ref)):
        for i, (g, r) in enumerate(zip(g_step, r_step)):
            assert g.dtype == half, (step, i)
            np.testing.assert_array_equal(g.view(np.uint16), r.astype(half).view(np.uint16),
                                          err_msg=f"step {step}, parameter {i}")
    for p, r in zip(params, ref[-1]):  # master weights and state are float32
        for key, v in opt.state[p].items():
            if hasattr(v, "dtype"):
                assert v.dtype == np.float32, key
        np.testing.assert_array_equal(gpunet.to_numpy(opt.master_weights[p]), r)


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("name,kw", FUSED, ids=[c[0] for c in FUSED])
@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_bfloat16_float16_fused_optimizers_update_float32_masters(name, kw, device, half_name, rng, schedule):
    _check_against_float32(name, kw, device, half_name, rng)


@pytest.mark.fallback(*sorted({c[2] for c in ARRAY_ONLY}))
@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("name,kw,op", ARRAY_ONLY, ids=[c[0] for c in ARRAY_ONLY])
@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_bfloat16_float16_array_optimizers_update_float32_masters(name, kw, op, device, half_name, rng):
    _check_against_float32(name, kw, device, half_name, rng)


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_bfloat16_float16_small_steps_accumulate_in_the_master(device, half_name):
    """lr * grad = 1e-3 is below half an ulp of 1.0 in either type (2**-8 in
    bfloat16, 2**-11 in float16): updating the half weights themselves would
    never move them; the master accumulates the steps."""
    half = HALF[half_name]
    be = gpunet.get_backend(device)
    p = Parameter(gpunet.asarray(np.ones(8, half), device=device))
    opt = optim.SGD([p], lr=1e-3, device=device)
    for _ in range(10):
        p.grad = be.asarray(np.ones(8, half))
        opt.step()
    master = np.float32(1.0)
    for _ in range(10):
        master = np.float32(master - np.float32(1e-3))
    np.testing.assert_array_equal(gpunet.to_numpy(p.data), np.full(8, master).astype(half))
    assert gpunet.to_numpy(p.data)[0] < 1.0


@pytest.mark.parametrize("half_name", HALF)
def test_bfloat16_float16_master_follows_a_weight_written_elsewhere(half_name):
    """A parameter overwritten outside the optimizer (a loaded checkpoint, an
    init) no longer holds its master's rounding: the master is taken anew."""
    half = HALF[half_name]
    p = Parameter(np.ones(4, half))
    opt = optim.SGD([p], lr=0.5)
    p.grad = np.ones(4, half)
    opt.step()
    np.testing.assert_array_equal(p.data.astype(np.float32), 0.5)
    p.data[...] = np.full(4, 3.0, half)
    opt.step()
    np.testing.assert_array_equal(p.data.astype(np.float32), 2.5)
    np.testing.assert_array_equal(opt.master_weights[p], 2.5)


@pytest.mark.parametrize("half_name", HALF)
def test_bfloat16_float16_optimizer_state_dict_keeps_float32_masters(half_name, rng):
    """state_dict holds the float32 masters and moments; loading it into a
    fresh optimizer over the same half weights continues the run exactly."""
    half = HALF[half_name]
    init, grads = _case(rng, half)
    whole, *_ = _run("Adam", dict(lr=0.01), "cpu", half, init, grads)
    first, opt, params = _run("Adam", dict(lr=0.01), "cpu", half, init, grads[:1])
    saved = opt.state_dict()
    for entry in saved["state"].values():
        assert {k: v.dtype for k, v in entry.items() if hasattr(v, "dtype")} == \
            dict.fromkeys(("exp_avg", "exp_avg_sq", "master_weight"), np.float32)
    fresh = optim.Adam(params, lr=0.01)
    fresh.load_state_dict(saved)
    assert all(fresh.master_weights[p].dtype == np.float32 for p in params)
    for step_grads in grads[1:]:
        for p, g in zip(params, step_grads):
            p.grad = g.astype(half)
        fresh.step()
    for p, w in zip(params, whole[-1]):
        np.testing.assert_array_equal(p.data.view(np.uint16), w.view(np.uint16))
