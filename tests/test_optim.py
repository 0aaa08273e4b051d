"""Optimizers, schedulers and gradient clipping against torch.optim on the same
parameters and gradients; the fused update kernels (sim/cuda) against cpu."""
import math

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.backend import CountingKernels
from gpunet.nn.module import Parameter
from gpunet.testing import assert_close, compare_training, tolerances

from conftest import FUSED_DTYPES, misaligned, needs_cupy

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("sgd_multi", "adam_multi")

SHAPES = [(3, 4), (5,), (1,), (2, 1, 3)]

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.05)),
    ("SGD", dict(lr=0.1, momentum=0.5, weight_decay=0.05, nesterov=True)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, betas=(0.85, 0.99))),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, momentum=0.9, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("Rprop", dict()),
    ("Rprop", dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.08))),
]


def _ids(config):
    name, kw = config
    return name + "(" + ",".join(f"{k}={v}" for k, v in kw.items()) + ")"


def _data(rng, dtype, steps, shapes=SHAPES):
    """Initial weights and a gradient sequence; some gradient entries are
    exactly 0 (Rprop's "product is 0" case) and signs flip often."""
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = []
    for _ in range(steps):
        step = []
        for s in shapes:
            g = rng.standard_normal(s)
            g[rng.random(s) < 0.15] = 0.0
            step.append(g.astype(dtype))
        grads.append(step)
    return init, grads


def _run_gpunet(name, kw, init, grads, device=None, groups=None):
    params = [Parameter(gpunet.asarray(w.copy(), device=device or "cpu")) for w in init]
    spec = params if groups is None else [dict(g, params=[params[i] for i in g["params"]]) for g in groups]
    opt = getattr(optim, name)(spec, **kw, device=device)
    history = []
    for step in grads:
        for p, g in zip(params, step):
            p.grad = None if g is None else gpunet.asarray(g.copy(), device=device or "cpu")
        opt.step()
        history.append([gpunet.to_numpy(p.data).copy() for p in params])
    return history


def _run_torch(torch, name, kw, init, grads, groups=None):
    params = [torch.tensor(w.copy(), requires_grad=True) for w in init]
    spec = params if groups is None else [dict(g, params=[params[i] for i in g["params"]]) for g in groups]
    opt = getattr(torch.optim, name)(spec, **kw)
    history = []
    for step in grads:
        for p, g in zip(params, step):
            p.grad = None if g is None else torch.tensor(g.copy())
        opt.step()
        history.append([p.detach().numpy().copy() for p in params])
    return history


def _compare(ours, theirs, dtype):
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for k, (a_step, b_step) in enumerate(zip(ours, theirs)):
        for i, (a, b) in enumerate(zip(a_step, b_step)):
            assert_close(a, b, rtol=rtol, atol=rtol, name=f"step {k + 1}, param {i}")


# ------------------------------------------------------------------ vs torch (cpu)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_matches_torch(config, dtype, rng):
    torch = pytest.importorskip("torch")
    name, kw = config
    init, grads = _data(rng, dtype, steps=6)
    _compare(_run_gpunet(name, kw, init, grads), _run_torch(torch, name, kw, init, grads), dtype)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Rprop"])
def test_skips_params_without_grad_like_torch(name, rng):
    torch = pytest.importorskip("torch")
    kw = dict(lr=0.1, momentum=0.9) if name in ("SGD", "RMSprop") else dict(lr=0.05)
    init, grads = _data(rng, np.float64, steps=5)
    grads[0][1] = None  # param 1 untouched on step 1 (so its Adam step count lags)
    grads[3][0] = None
    grads[3][2] = None
    ours = _run_gpunet(name, kw, init, grads)
    np.testing.assert_array_equal(ours[0][1], init[1])
    _compare(ours, _run_torch(torch, name, kw, init, grads), np.float64)


def test_param_groups_override_defaults_like_torch(rng):
    torch = pytest.importorskip("torch")
    init, grads = _data(rng, np.float64, steps=4)
    groups = [dict(params=[0, 2]), dict(params=[1, 3], lr=0.01, momentum=0.5)]
    kw = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    ours = _run_gpunet("SGD", kw, init, grads, groups=groups)
    _compare(ours, _run_torch(torch, "SGD", kw, init, grads, groups=groups), np.float64)


def test_mutating_group_lr_takes_effect(rng):
    p = Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.1)
    opt.param_groups[0]["lr"] = 0.5
    p.grad = np.full(3, 2.0)
    opt.step()
    np.testing.assert_array_equal(p.data, np.zeros(3))


def test_update_is_in_place_and_zero_grad(rng):
    p = Parameter(rng.standard_normal(4))
    data = p.data
    opt = optim.Adam([p], lr=0.1)
    p.grad = rng.standard_normal(4)
    opt.step()
    assert p.data is data, "the optimizer must update p.data in place, not rebind it"
    grad = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is grad and not grad.any()
    opt.zero_grad()
    assert p.grad is None


def test_heavy_ball_equals_sgd_momentum(rng):
    """w[k+1] = w[k] - lr * grad E(w[k]) + m (w[k] - w[k-1]) on a quadratic
    E(w) = 1/2 w^T A w - b^T w, against gpunet's SGD(momentum=m)."""
    A = np.diag([1.0, 3.0, 0.5])
    b = np.array([1.0, -2.0, 0.5])
    lr, m = 0.2, 0.7
    p = Parameter(np.array([2.0, 1.0, -1.0]))
    opt = optim.SGD([p], lr=lr, momentum=m)
    w_prev = w = p.data.copy()
    for _ in range(15):
        w_next = w - lr * (A @ w - b) + m * (w - w_prev)
        p.grad = A @ p.data - b
        opt.step()
        assert_close(p.data, w_next, rtol=1e-13, atol=1e-13, name="heavy ball")
        w_prev, w = w, w_next


def test_rprop_backtrack_reverts_the_last_step():
    """Rprop+ on one weight with a prescribed gradient sequence, by hand."""
    p = Parameter(np.array([0.0]))
    opt = optim.Rprop([p], lr=0.1, etas=(0.5, 1.2), step_sizes=(1e-6, 50), backtrack=True)
    expected = []
    w, step = 0.0, 0.1
    # step 1: product 0 -> keep step, move -sign(g)*step
    w -= step
    expected.append(w)
    # step 2: same sign -> grow
    step *= 1.2
    w -= step
    expected.append(w)
    last_delta = -step
    # step 3: sign flips -> shrink, undo the last change, gradient treated as 0
    step *= 0.5
    w -= last_delta
    expected.append(w)
    # step 4: product with the zeroed gradient is 0 -> keep step, move by the sign
    w += step
    expected.append(w)
    for g, want in zip([1.0, 2.0, -3.0, -1.0], expected):
        p.grad = np.array([g])
        opt.step()
        assert p.data[0] == pytest.approx(want, abs=1e-15)
    assert opt.state[p]["step_size"][0] == pytest.approx(step)


def test_rprop_default_does_not_revert():
    p = Parameter(np.array([0.0]))
    opt = optim.Rprop([p], lr=0.1)
    for g in [1.0, 2.0, -3.0]:
        p.grad = np.array([g])
        opt.step()
    assert p.data[0] == pytest.approx(-0.1 - 0.12)  # the flip step does not move the weight


# ------------------------------------------------------------------ gradient descent flavours
def _regression(rng, n=24):
    X = rng.standard_normal((n, 3))
    w_true = np.array([[1.5, -2.0, 0.5]])
    t = X @ w_true.T + 0.3
    return X, t


def _mse_grad(model, x, t):
    """Backward of the mean squared error 1/N sum (y - t)^2 through the model."""
    y = model(x)
    model.backward(2.0 * (y - t) / len(x))


@pytest.mark.parametrize("batch_size", [1, 6, 24], ids=["per-example", "mini-batch", "full-batch"])
def test_sgd_batch_sizes_fit_a_linear_model(batch_size, rng):
    X, t = _regression(rng)
    model = nn.Linear(3, 1).to(np.float64)
    opt = optim.SGD(model.parameters(), lr=0.05)
    for _ in range(200 if batch_size == 24 else 60):
        order = rng.permutation(len(X))
        for start in range(0, len(X), batch_size):  # disjoint batches: one epoch is one pass
            idx = order[start:start + batch_size]
            opt.zero_grad()
            _mse_grad(model, X[idx], t[idx])
            opt.step()
    np.testing.assert_allclose(model.weight.data, [[1.5, -2.0, 0.5]], atol=1e-3)
    np.testing.assert_allclose(model.bias.data, [0.3], atol=1e-3)


def test_full_batch_step_is_the_gradient_formula(rng):
    X, t = _regression(rng)
    model = nn.Linear(3, 1).to(np.float64)
    w, b = model.weight.data.copy(), model.bias.data.copy()
    opt = optim.SGD(model.parameters(), lr=0.1)
    _mse_grad(model, X, t)
    opt.step()
    residual = X @ w.T + b - t  # (N, 1)
    assert_close(model.weight.data, w - 0.1 * 2 * residual.T @ X / len(X), name="weight")
    assert_close(model.bias.data, b - 0.1 * 2 * residual.sum(0) / len(X), name="bias")


# ------------------------------------------------------------------ state_dict
@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01)),
                                     ("AdamW", dict(lr=0.01)), ("RMSprop", dict(momentum=0.5, centered=True)),
                                     ("Rprop", dict(backtrack=True)), ("Adam", dict(lr=0.01, amsgrad=True)),
                                     ("NAdam", dict(lr=0.01)), ("Adadelta", dict()), ("Adagrad", dict(lr_decay=0.1))])
def test_resume_from_saved_state_is_bit_identical(name, kw, rng, tmp_path):
    init, grads = _data(rng, np.float32, steps=6)
    straight = _run_gpunet(name, kw, init, grads)

    params = [Parameter(w.copy()) for w in init]
    opt = getattr(optim, name)(params, **kw)
    for step in grads[:3]:
        for p, g in zip(params, step):
            p.grad = g.copy()
        opt.step()
    gpunet.save({"params": [p.data for p in params], "optimizer": opt.state_dict(), "step": 3}, tmp_path / "ckpt")

    ckpt = gpunet.load(tmp_path / "ckpt")
    assert ckpt["step"] == 3
    params = [Parameter(w.copy()) for w in ckpt["params"]]
    opt = getattr(optim, name)(params, **kw)
    opt.load_state_dict(ckpt["optimizer"])
    for step, want in zip(grads[3:], straight[3:]):
        for p, g in zip(params, step):
            p.grad = g.copy()
        opt.step()
        for p, w in zip(params, want):
            np.testing.assert_array_equal(p.data, w)


def test_state_dict_layout_matches_torch(rng):
    torch = pytest.importorskip("torch")
    init, grads = _data(rng, np.float64, steps=2)
    params = [Parameter(w.copy()) for w in init]
    groups = [dict(params=params[:1]), dict(params=params[1:], lr=0.5)]
    tparams = [torch.tensor(w.copy(), requires_grad=True) for w in init]
    tgroups = [dict(params=tparams[:1]), dict(params=tparams[1:], lr=0.5)]
    opt, topt = optim.Adam(groups, lr=0.01), torch.optim.Adam(tgroups, lr=0.01)
    for step in grads:
        for p, tp, g in zip(params, tparams, step):
            p.grad, tp.grad = g.copy(), torch.tensor(g)
        opt.step()
        topt.step()
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    assert set(ours["state"]) == set(theirs["state"])
    for idx, entry in theirs["state"].items():
        assert set(ours["state"][idx]) == set(entry)
        assert ours["state"][idx]["step"] == int(entry["step"])
        assert_close(ours["state"][idx]["exp_avg_sq"], entry["exp_avg_sq"].numpy(), rtol=1e-12, atol=1e-15)
    for g, tg in zip(ours["param_groups"], theirs["param_groups"]):
        for key in ("lr", "betas", "eps", "weight_decay"):
            assert g[key] == tg[key]


def test_load_state_dict_rejects_mismatches(rng):
    p, q = Parameter(np.zeros((2, 3))), Parameter(np.zeros(4))
    opt = optim.Adam([p, q])
    p.grad, q.grad = np.ones((2, 3)), np.ones(4)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match=r"1 parameter group\(s\), this optimizer has 2"):
        optim.Adam([dict(params=[p]), dict(params=[q])]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"param_groups\[0\] has 2 parameter\(s\) in the state dict, 1"):
        optim.Adam([p]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] has shape \(2, 3\), but "
                                         r"param_groups\[0\]\['params'\]\[0\] has shape \(3, 2\)"):
        optim.Adam([Parameter(np.zeros((3, 2))), Parameter(np.zeros(4))]).load_state_dict(sd)
    with pytest.raises(ValueError, match="expected a dict with keys 'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})


def test_constructor_validation():
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="single Parameter"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[1\]: expected a gpunet Parameter"):
        optim.SGD([p, np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([dict(params=[p]), dict(params=[p])], lr=0.1)
    with pytest.raises(ValueError, match="nesterov momentum requires"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        optim.RMSprop([p], lr=-1.0)
    with pytest.raises(ValueError, match="etas"):
        optim.Rprop([p], etas=(1.5, 1.2))


def test_step_rejects_bad_gradients():
    p = Parameter(np.zeros((2, 2)))
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.zeros(4)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\]\.grad: expected shape \(2, 2\)"):
        opt.step()
    p.grad = [[0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(TypeError, match=r"\.grad: expected an array of backend 'cpu', got list"):
        opt.step()


# ------------------------------------------------------------------ schedulers
SCHEDULERS = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 6], gamma=0.1)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=5, eta_min=0.01)),
]


@pytest.mark.parametrize("name,kw", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_scheduler_matches_torch(name, kw):
    torch = pytest.importorskip("torch")
    p = Parameter(np.zeros(1))
    opt = optim.SGD([dict(params=[p]), dict(params=[Parameter(np.zeros(1))], lr=0.3)], lr=0.1)
    sched = getattr(optim.lr_scheduler, name)(opt, **kw)
    topt = torch.optim.SGD([dict(params=[torch.zeros(1, requires_grad=True)]),
                            dict(params=[torch.zeros(1, requires_grad=True)], lr=0.3)], lr=0.1)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    for epoch in range(13):
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, atol=1e-15,
                                   err_msg=f"epoch {epoch}")
        assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()
        p.grad = np.zeros(1)
        opt.step()
        topt.step()
        sched.step()
        tsched.step()


def test_scheduler_resumes_from_state_dict(tmp_path):
    def make():
        opt = optim.SGD([Parameter(np.zeros(1))], lr=0.2)
        return opt, optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7, eta_min=0.001)

    opt, sched = make()
    straight = []
    for _ in range(10):
        sched.step()
        straight.append(sched.get_last_lr())
    opt, sched = make()
    for _ in range(4):
        sched.step()
    gpunet.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp_path / "s.npz")
    ckpt = gpunet.load(tmp_path / "s.npz")
    opt, sched = make()
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    for want in straight[4:]:
        sched.step()
        assert sched.get_last_lr() == want
        assert opt.param_groups[0]["lr"] == want[0]


# ------------------------------------------------------------------ clipping
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, dtype, rng):
    torch = pytest.importorskip("torch")
    grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    params = [Parameter(np.zeros(s, dtype)) for s in SHAPES] + [Parameter(np.zeros(2, dtype))]  # last: no grad
    for p, g in zip(params, grads):
        p.grad = g.copy()
    tparams = [torch.zeros(s, dtype=torch.float64 if dtype == np.float64 else torch.float32, requires_grad=True)
               for s in SHAPES]
    for p, g in zip(tparams, grads):
        p.grad = torch.tensor(g.copy())
    total = nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type)
    assert isinstance(total, np.ndarray) and total.shape == () and total.dtype == dtype
    assert_close(total.reshape(1), ttotal.numpy().reshape(1), name="total norm")
    for p, tp in zip(params, tparams):
        assert_close(p.grad, tp.grad.numpy(), name="clipped grad")
    clipped = nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    assert float(clipped) <= max_norm * (1 + 1e-5)


def test_clip_grad_value_and_errors(rng):
    p = Parameter(np.zeros(5))
    p.grad = np.array([-3.0, -0.5, 0.0, 0.7, 9.0])
    nn.utils.clip_grad_value_([p], 1.0)
    np.testing.assert_array_equal(p.grad, [-1.0, -0.5, 0.0, 0.7, 1.0])
    p.grad = np.array([np.inf, 1.0, 0.0, 0.0, 0.0])
    with pytest.raises(RuntimeError, match="error_if_nonfinite"):
        nn.utils.clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="norm_type"):
        nn.utils.clip_grad_norm_(p, 1.0, norm_type=0.5)


# ------------------------------------------------------------------ fused kernels (sim/cuda) vs cpu
KERNEL_SHAPES = [(1,), (3,), (1025,), (17, 5), (256,), (2, 3, 4), (0,), (300,)]
KERNEL_CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.05)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("config", KERNEL_CONFIGS, ids=_ids)
def test_fused_update_matches_cpu(config, kernel_device, schedule, rng):
    name, kw = config
    init, grads = _data(rng, np.float32, steps=3, shapes=KERNEL_SHAPES)
    grads[1][2] = None  # a tensor skipped for a step: its own step count / fresh buffer later
    ours = _run_gpunet(name, kw, init, grads, device=kernel_device)
    ref = _run_gpunet(name, kw, init, grads)
    for k, (a_step, b_step) in enumerate(zip(ours, ref)):
        for i, (a, b) in enumerate(zip(a_step, b_step)):
            assert_close(a, b, name=f"{kernel_device} step {k + 1}, param {i} {KERNEL_SHAPES[i]}")


# A group past one sweep of the grid (on sim 1056 blocks x 256 threads, each
# thread a quad of 4 elements: 1,081,344 elements), so each block walks
# several tiles, and the tiles one block walks lie in different tensors: a
# block that reused its shared tile slot before all its threads had read it
# would search the wrong tensors.
BIG_SHAPES = [(1000,), (1_200_000,), (7,), (3, 70_000)]


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_fused_update_of_a_group_past_one_grid_sweep(name, kernel_device, schedule, rng):
    init, grads = _data(rng, np.float32, steps=1, shapes=BIG_SHAPES)
    kw = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.01)
    ours = _run_gpunet(name, kw, init, grads, device=kernel_device)[0]
    ref = _run_gpunet(name, kw, init, grads)[0]
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert_close(a, b, name=f"{kernel_device} param {i} {BIG_SHAPES[i]}")


@pytest.mark.parametrize("config", KERNEL_CONFIGS, ids=_ids)
def test_fused_update_of_misaligned_tensors(config, kernel_device, rng):
    """Parameters and gradients 4 bytes past a 16-byte boundary take the
    kernel's element-by-element path (the float4 one needs every array of a
    tensor aligned); aligned tensors of the same group keep the float4 path."""
    be = gpunet.get_backend(kernel_device)
    name, kw = config
    shapes = [(9,), (4, 5), (64,)]
    init, grads = _data(rng, np.float32, steps=2, shapes=shapes)
    params = [Parameter(misaligned(be, w) if i < 2 else be.asarray(w.copy())) for i, w in enumerate(init)]
    opt = getattr(optim, name)(params, **kw, device=kernel_device)
    ref = _run_gpunet(name, kw, init, grads)
    for k, step in enumerate(grads):
        for i, (p, g) in enumerate(zip(params, step)):
            p.grad = misaligned(be, g) if i == 0 else be.asarray(g.copy())
        opt.step()
        for i, p in enumerate(params):
            assert_close(gpunet.to_numpy(p.data), ref[k][i], name=f"{kernel_device} step {k + 1}, param {i}")


@pytest.mark.parametrize("name,kernel", [("SGD", "sgd_multi"), ("Adam", "adam_multi"), ("AdamW", "adam_multi")])
def test_one_launch_per_group(name, kernel, kernel_device, monkeypatch, rng):
    be = gpunet.get_backend(kernel_device)
    if be.kernels is None:
        pytest.skip(f"{kernel_device} runs the array code, not the kernels")
    proxy = CountingKernels(be.kernels)
    monkeypatch.setattr(be, "kernels", proxy)
    params = [Parameter(gpunet.asarray(rng.standard_normal(s).astype(np.float32), device=kernel_device))
              for s in [(7,), (3, 3), (1,)]]
    opt = getattr(optim, name)([dict(params=params[:2]), dict(params=params[2:], lr=0.5)], lr=0.1,
                               **(dict(momentum=0.9) if name == "SGD" else {}), device=kernel_device)
    for _ in range(3):
        for p in params:
            p.grad = be.xp.ones_like(p.data)
        opt.step()
    assert proxy.calls == {kernel: 6}


@pytest.mark.fallback("optimizer update")
def test_float64_on_kernel_backend_uses_array_code(kernel_device, rng):
    init, grads = _data(rng, np.float64, steps=2)
    ours = _run_gpunet("Adam", dict(lr=0.01), init, grads, device=kernel_device)
    ref = _run_gpunet("Adam", dict(lr=0.01), init, grads)
    for a_step, b_step in zip(ours, ref):
        for a, b in zip(a_step, b_step):
            assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_binding_validates_arguments(kernel_device):
    be = gpunet.get_backend(kernel_device)
    if be.kernels is None:
        pytest.skip(f"{kernel_device} has no kernel module")
    xp, k = be.xp, be.kernels
    p, g = xp.zeros(5, xp.float32), xp.ones(5, xp.float32)
    table = xp.empty(4 * k.OPTIM_TABLE_ENTRY_BYTES, xp.uint8)
    sgd = dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, stream=be.stream())
    with pytest.raises(ValueError, match="'grads': expected 1 entries"):
        k.sgd_multi([p], [g, g], [], [], table, **sgd)
    with pytest.raises(TypeError, match=r"'grads\[0\]': expected dtype float32 but got float64"):
        k.sgd_multi([p], [g.astype(xp.float64)], [], [], table, **sgd)
    with pytest.raises(ValueError, match=r"'grads\[0\]': expected the shape of params\[0\] \(5,\)"):
        k.sgd_multi([p], [xp.ones(4, xp.float32)], [], [], table, **sgd)
    with pytest.raises(ValueError, match=r"'params\[0\]': must be C-contiguous"):
        k.sgd_multi([xp.zeros(10, xp.float32)[::2]], [g], [], [], table, **sgd)
    with pytest.raises(ValueError, match="'table': expected at least"):
        k.sgd_multi([p], [g], [], [], table[:10], **sgd)
    with pytest.raises(ValueError, match=r"'grads\[0\]': its memory overlaps that of 'params\[0\]'"):
        k.sgd_multi([p], [p], [], [], table, **sgd)
    with pytest.raises(ValueError, match="must be empty lists when momentum == 0"):
        k.sgd_multi([p], [g], [xp.zeros(5, xp.float32)], [True], table, **sgd)
    with pytest.raises(TypeError, match=r"'fresh\[0\]': expected a bool"):
        k.sgd_multi([p], [g], [xp.zeros(5, xp.float32)], [1], table, **dict(sgd, momentum=0.9))
    with pytest.raises(ValueError, match="'lr': expected a finite number"):
        k.sgd_multi([p], [g], [], [], table, **dict(sgd, lr=float("nan")))
    m, v = xp.zeros(5, xp.float32), xp.zeros(5, xp.float32)
    adam = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, stream=be.stream())
    with pytest.raises(ValueError, match=r"'bias_correction2_sqrts\[0\]': expected a finite number > 0"):
        k.adam_multi([p], [g], [m], [v], [0.1], [0.0], table, **adam)
    with pytest.raises(ValueError, match=r"'exp_avg_sqs\[0\]': its memory overlaps that of 'exp_avgs\[0\]'"):
        k.adam_multi([p], [g], [m], [m], [0.1], [0.5], table, **adam)
    with pytest.raises(ValueError, match="'beta2'"):
        k.adam_multi([p], [g], [m], [v], [0.1], [0.5], table, **dict(adam, beta2=1.0))
    assert not p.any(), "a rejected call must not have touched the parameters"


# ---------------------------------------------------------------- the CuPy fusions of SGD and Adam
def _train_fused(make_optimizer, dtype, rng):
    batches = [(rng.standard_normal((8, 5)), rng.integers(0, 3, 8)) for _ in range(4)]
    batches = [(x.astype(dtype), t) for x, t in batches]
    make_model = lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)  # noqa: E731
    # explicit tolerances: the losses come back as Python floats, which would get float64's
    rtol, atol = tolerances(dtype, n=4096)
    compare_training(make_model, lambda: nn.CrossEntropyLoss().to(dtype), make_optimizer, batches,
                     devices=("cpu", "cupy"), rtol=rtol, atol=atol)


FUSED_OPTIMIZERS = {
    "sgd": lambda p: optim.SGD(p, lr=0.1),
    "sgd_decay": lambda p: optim.SGD(p, lr=0.1, weight_decay=0.01),
    "momentum": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "nesterov": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: optim.Adam(p, lr=0.01),
    "adam_l2": lambda p: optim.Adam(p, lr=0.01, weight_decay=0.1),
    "adamw": lambda p: optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


@needs_cupy
@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("name", list(FUSED_OPTIMIZERS))
def test_fused_optimizer_updates(name, dtype, rng):
    _train_fused(FUSED_OPTIMIZERS[name], dtype, rng)
