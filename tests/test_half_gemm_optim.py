"""Optimizers on half parameters (bfloat16, float16): float32 master weights
and float32 state, the float32 update, the master rounded once back into the
parameter (gpunet/optim/optimizer.py). On sim the float32 update is the
fused kernels' (sgd_multi, adam_multi); the rest are array code there, as
for float32 groups (recorded fallbacks)."""
import numpy as np
import pytest

import gpunet
from gpunet import dtypes, nn, optim, testing
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


# ---------------------------------------------------------------- convolutions (cpu reference)
CONVS = [("Conv1d", lambda: nn.Conv1d(3, 4, 3, padding=1), (2, 3, 9)),
         ("Conv2d", lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1), (2, 3, 7, 6)),
         ("Conv2d_groups", lambda: nn.Conv2d(4, 6, (2, 3), dilation=(2, 1), groups=2), (2, 4, 7, 6)),
         ("ConvTranspose2d", lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1), (2, 3, 4, 5))]


def _module_run(make, dtype, params, x, dy):
    m = make()
    for (_, p), w in zip(m.named_parameters(), params):
        p.data[...] = w
    m = m.to("cpu", dtype)
    y = m(x.astype(dtype))
    dx = m.backward(dy.astype(dtype))
    return [y, dx] + [p.grad for _, p in m.named_parameters()]


@pytest.mark.parametrize("half_name", HALF)
@pytest.mark.parametrize("name,make,shape", CONVS, ids=[c[0] for c in CONVS])
def test_bfloat16_float16_convolutions_round_the_float32_result_once(name, make, shape, half_name, rng):
    """Half inputs read in float32, the float32 convolution (its GEMM and
    im2col/col2im), each output and gradient rounded once: bit for bit the
    float32 module's results on the same (half-representable) values, rounded."""
    half = HALF[half_name]
    params = [gpunet.to_numpy(p.data).astype(half).astype(np.float32) for _, p in make().named_parameters()]
    x = rng.standard_normal(shape).astype(half).astype(np.float32)
    y_shape = make()(x).shape
    dy = rng.standard_normal(y_shape).astype(half).astype(np.float32)
    got = _module_run(make, half, params, x, dy)
    ref = _module_run(make, np.float32, params, x, dy)
    assert len(got) == 4  # y, dx, dw, db
    for what, g, r in zip(("y", "dx", "dw", "db"), got, ref):
        assert g.dtype == half, what
        np.testing.assert_array_equal(g.view(np.uint16), r.astype(half).view(np.uint16), err_msg=what)
        testing.assert_close(g, r, n=int(np.prod(shape[1:])), name=what)


@pytest.mark.no_kernels("refused before any kernel")
@pytest.mark.parametrize("half_name", HALF)
def test_bfloat16_float16_convolution_without_half_kernels_is_refused_on_sim(half_name):
    m = nn.Conv2d(2, 3, 3).to("sim", half_name)
    with pytest.raises(NotImplementedError, match=f"conv2d: the sim backend has no {half_name} kernels"):
        m(np.ones((1, 2, 5, 5), HALF[half_name]))
