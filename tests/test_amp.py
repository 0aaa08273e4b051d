"""gpunet.amp: autocast's op lists and casts at the module boundary, gradient
dtypes, the float32 fallback, GradScaler, and fit(amp=, grad_scaler=)."""
import logging

import numpy as np
import pytest

import gpunet
from gpunet import amp, nn, optim
from gpunet.amp import lists
from gpunet.data import DataLoader, TensorDataset
from gpunet.train import fit

HALF = [pytest.param(gpunet.bfloat16, id="bfloat16"), pytest.param(gpunet.float16, id="float16")]


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _record(model):
    """(class name, input dtype the module computed in, output dtype) of every module call."""
    seen = []

    def hook(mod, args, out):
        seen.append((type(mod).__name__, out.dtype))
    for m in model.modules():
        m.register_forward_hook(hook)
    return seen


def _mlp():
    gpunet.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4), nn.LogSoftmax(dim=1))


@pytest.mark.parametrize("dtype", HALF)
def test_autocast_op_lists_bfloat16_float16(dtype):
    model = _mlp()
    seen = _record(model)
    with amp.autocast(dtype=dtype):
        y = model(_x(5, 6))
    # Linear lowers, ReLU follows its input, LogSoftmax runs in float32
    assert seen == [("Linear", dtype), ("ReLU", dtype), ("Linear", dtype), ("LogSoftmax", np.float32),
                    ("Sequential", np.float32)]
    assert y.dtype == np.float32
    assert all(p.data.dtype == np.float32 for p in model.parameters())  # weights are cast copies, not changed
    seen.clear()
    model(_x(5, 6))  # outside the region: float32 throughout
    assert {d for _, d in seen} == {np.dtype(np.float32)}


def test_autocast_lists_name_modules_bfloat16():
    assert lists.policy(nn.Linear(2, 2)) == lists.LOWER
    assert lists.policy(nn.MultiheadAttention(4, 2)) == lists.LOWER
    assert lists.policy(nn.LSTM(2, 3)) == lists.LOWER
    assert lists.policy(nn.LayerNorm(4)) == lists.FP32
    assert lists.policy(nn.CrossEntropyLoss()) == lists.FP32
    assert lists.policy(nn.ReLU()) == lists.PROMOTE
    assert lists.policy(nn.Sequential(nn.ReLU())) is None
    assert lists.policy(nn.Embedding(5, 3)) is None


@pytest.mark.parametrize("dtype", HALF)
def test_autocast_gradients_keep_their_dtypes_bfloat16_float16(dtype, device):
    model, crit = _mlp().to(device), nn.NLLLoss()
    x, t = gpunet.asarray(_x(8, 6), device), gpunet.asarray(np.arange(8) % 4, device)
    with amp.autocast(dtype=dtype):
        loss = crit(model(x), t)
    dx = model.backward(crit.backward())
    assert dx.dtype == np.float32  # the gradient of a float32 input comes back in float32
    assert all(p.grad.dtype == np.float32 for p in model.parameters())
    grads = [p.grad.copy() for p in model.parameters()]
    # the float32 reference: close within the half dtype's precision
    model.zero_grad()
    ref = crit(model(x), t)
    model.backward(crit.backward())
    tol = 8 * gpunet.dtypes.eps(dtype)
    loss, ref = float(gpunet.to_numpy(loss)), float(gpunet.to_numpy(ref))
    assert abs(loss - ref) < tol * max(1.0, abs(ref))
    for g, p in zip(grads, model.parameters()):
        g, r = gpunet.to_numpy(g), gpunet.to_numpy(p.grad)
        np.testing.assert_allclose(g, r, rtol=0, atol=tol * max(1.0, float(np.abs(r).max())))


def test_autocast_backward_after_the_region_uses_the_forward_copies_bfloat16():
    lin = nn.Linear(3, 2)
    with amp.autocast():
        y = lin(_x(4, 3))
    lin.weight.data[...] = 0  # the backward differentiates the forward's copy, cast when it ran
    dx = lin.backward(np.ones_like(y))
    assert dx.dtype == np.float32 and np.abs(dx).max() > 0


@pytest.mark.parametrize("dtype", HALF)
def test_autocast_under_autograd_tensors_bfloat16_float16(dtype):
    model, crit = _mlp(), nn.NLLLoss()
    with amp.autocast(dtype=dtype):
        loss = crit(model(gpunet.Tensor(_x(8, 6))), np.arange(8) % 4)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == np.float32 for p in model.parameters())


def test_autocast_weight_cache_casts_once_per_region_bfloat16():
    lin = nn.Linear(3, 3)
    with gpunet.no_grad(), amp.autocast():
        lin(_x(2, 3))
        first = amp.autocast_mode._tls.cache[id(lin.weight)][1]
        lin(_x(2, 3))
        assert amp.autocast_mode._tls.cache[id(lin.weight)][1] is first
    assert amp.autocast_mode._tls.cache is None


def test_autocast_falls_back_to_float32_and_says_so_bfloat16(caplog, monkeypatch):
    class NoHalf(nn.Linear):
        def forward(self, input):
            if gpunet.dtypes.is_half(input.dtype):
                raise NotImplementedError("no half path here")
            return super().forward(input)
    monkeypatch.setattr(amp.autocast_mode, "_reported", set())
    m = NoHalf(3, 2)
    with caplog.at_level(logging.INFO, logger="gpunet.amp"), amp.autocast():
        y1, y2 = m(_x(2, 3)), m(_x(2, 3))
    assert y1.dtype == y2.dtype == np.float32
    said = [r for r in caplog.records if "NoHalf has no bfloat16 path" in r.getMessage()]
    assert len(said) == 1  # once per module class and backend


def test_autocast_arguments_bfloat16():
    assert amp.autocast("cuda", dtype=gpunet.bfloat16).dtype == gpunet.bfloat16
    assert amp.autocast(device_type="cpu", dtype="float16", cache_enabled=False).dtype == gpunet.float16
    with pytest.raises(ValueError, match="dtype"):
        amp.autocast(dtype=np.float32)
    with pytest.raises(TypeError, match="enabled"):
        amp.autocast(enabled="yes")
    with amp.autocast(enabled=False):
        assert not amp.is_autocast_enabled()

    @amp.autocast(dtype=gpunet.float16)
    def inside():
        return amp.get_autocast_dtype()
    assert inside() == gpunet.float16 and amp.get_autocast_dtype() is None


# ---------------------------------------------------------------- GradScaler
def _one_param(grad):
    p = nn.Parameter(np.ones(3, np.float32))
    p.grad = np.asarray(grad, np.float32)
    return p, optim.SGD([p], lr=1.0)


def test_grad_scaler_unscales_and_steps_float16():
    scaler = amp.GradScaler(init_scale=4.0)
    p, opt = _one_param([4.0, 8.0, -4.0])
    assert float(scaler.scale(np.float32(2.0))) == 8.0
    scaler.step(opt)
    scaler.update()
    np.testing.assert_array_equal(p.data, [0.0, -1.0, 2.0])
    assert scaler.skipped_steps == 0 and scaler.get_scale() == 4.0


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_grad_scaler_skips_on_inf_and_backs_off_float16(bad):
    scaler = amp.GradScaler(init_scale=8.0, backoff_factor=0.25)
    p, opt = _one_param([1.0, bad, 1.0])
    assert scaler.step(opt) is None
    scaler.update()
    np.testing.assert_array_equal(p.data, [1.0, 1.0, 1.0])  # the step was skipped
    assert scaler.skipped_steps == 1 and scaler.get_scale() == 2.0


def test_grad_scaler_grows_after_growth_interval_float16():
    scaler = amp.GradScaler(init_scale=2.0, growth_factor=3.0, growth_interval=2)
    p, opt = _one_param([0.0, 0.0, 0.0])
    scales = []
    for _ in range(4):
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    assert scales == [2.0, 6.0, 6.0, 18.0]


def test_grad_scaler_misuse_and_arguments_float16():
    for kw in ({"init_scale": 0}, {"growth_factor": 1.0}, {"backoff_factor": 1.5}, {"growth_interval": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            amp.GradScaler(**kw)
    scaler = amp.GradScaler()
    _, opt = _one_param([1.0, 1.0, 1.0])
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="unscale_"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="update"):
        amp.GradScaler().update()
    with pytest.raises(TypeError, match="outputs"):
        scaler.scale("loss")
    off = amp.GradScaler(enabled=False)
    assert off.scale(np.float32(3.0)) == 3.0 and off.get_scale() == 1.0 and off.state_dict() == {}


def test_grad_scaler_state_round_trip_float16():
    a = amp.GradScaler(init_scale=16.0, growth_interval=3)
    _, opt = _one_param([np.inf, 0, 0])
    a.step(opt)
    a.update()
    b = amp.GradScaler()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() == {"scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                 "growth_interval": 3, "_growth_tracker": 0, "skipped_steps": 1}


def test_grad_scaler_scales_half_gradients_in_float32_float16():
    g = np.array([1e-3, 2.0], np.float16)
    out = amp.GradScaler(init_scale=2.0 ** 16).scale(g)
    assert out.dtype == np.float16 and out[0] == np.float16(np.float32(g[0]) * 65536) and np.isinf(out[1])


# ---------------------------------------------------------------- fit
def _blobs(n=192, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return TensorDataset((centres[y] + 0.5 * rng.standard_normal((n, 2))).astype(np.float32), y.astype(np.int64))


def _fit(dtype, **kw):
    gpunet.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = optim.Adam(model.parameters(), lr=0.03)
    hist = fit(model, nn.CrossEntropyLoss(), opt, DataLoader(_blobs(), 32, shuffle=True, seed=0),
               DataLoader(_blobs(seed=1), 96), epochs=4, progress=False, amp=dtype, **kw)
    return hist, model


@pytest.mark.parametrize("dtype", HALF)
def test_fit_amp_learns_as_float32_does_bfloat16_float16(dtype):
    ref, _ = _fit(None)
    hist, model = _fit(dtype)
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    assert abs(hist.history["val_accuracy"][-1] - ref.history["val_accuracy"][-1]) <= 0.02


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflowing float16 backward
def test_fit_grad_scaler_in_checkpoint_float16(tmp_path):
    path = tmp_path / "ck.npz"
    scaler = amp.GradScaler(init_scale=2.0 ** 40, growth_interval=1000)  # overflows float16: backs off
    hist, _ = _fit(gpunet.float16, grad_scaler=scaler, checkpoint_path=str(path))
    assert scaler.skipped_steps > 0 and scaler.get_scale() < 2.0 ** 40
    assert sum(hist.history["skipped_steps"]) == scaler.skipped_steps  # reported per epoch
    saved = gpunet.load(str(path))["grad_scaler"]
    assert saved["scale"] == scaler.get_scale() and saved["skipped_steps"] == scaler.skipped_steps
    again = amp.GradScaler()
    _fit(gpunet.float16, grad_scaler=again, checkpoint_path=str(path))  # resumes after the last epoch
    assert again.state_dict() == scaler.state_dict()


def test_fit_amp_arguments_bfloat16():
    with pytest.raises(ValueError, match="amp"):
        _fit(np.float32)
    with pytest.raises(TypeError, match="grad_scaler"):
        _fit(gpunet.bfloat16, grad_scaler=object())


@pytest.mark.parametrize("dtype", HALF)
def test_pure_half_model_trains_with_master_weights_bfloat16_float16(dtype):
    ref, _ = _fit(None)
    gpunet.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3)).to(dtype=dtype)
    opt = optim.Adam(model.parameters(), lr=0.03)
    hist = fit(model, nn.CrossEntropyLoss(), opt, DataLoader(_blobs(), 32, shuffle=True, seed=0),
               DataLoader(_blobs(seed=1), 96), epochs=4, progress=False, amp=dtype)
    assert all(p.data.dtype == dtype for p in model.parameters())
    assert all(opt.master_weights[p].dtype == np.float32 for p in model.parameters())
    assert abs(hist.history["val_accuracy"][-1] - ref.history["val_accuracy"][-1]) <= 0.05


def test_autocast_grad_hook_sees_only_final_float32_gradients_bfloat16():
    from gpunet.nn.module import grad_hook
    model, crit = _mlp(), nn.NLLLoss()
    with amp.autocast():
        crit(model(_x(4, 6)), np.arange(4) % 4)
    seen = []
    with grad_hook(lambda p: seen.append(p.grad.dtype)):
        model.backward(crit.backward())
    assert seen == [np.float32] * 4  # once per parameter, with its float32 gradient
