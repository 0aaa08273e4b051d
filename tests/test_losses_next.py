"""The losses PyTorch users reach for next (L1Loss, SmoothL1Loss, HuberLoss,
BCELoss, NLLLoss, KLDivLoss) and CrossEntropyLoss with class-probability
targets: against PyTorch CPU (float64 to 1e-10 relative, every reduction,
weights and ignore_index where PyTorch has them, zero-size batches), float64
gradcheck, and float32 on every backend against the float64 result."""
import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.testing import assert_close as _assert_close

from test_loss import WithTarget


def assert_close(actual, expected, **kw):
    _assert_close(np.atleast_1d(gpunet.to_numpy(actual)), np.atleast_1d(gpunet.to_numpy(expected)), **kw)


def normal(shape, rng):
    return 1.5 * rng.standard_normal(shape)


def probs(shape, rng, axis=-1):
    """Rows of probabilities along `axis` (some exactly 0)."""
    p = rng.random(shape)
    p[p < 0.15] = 0.0
    return p / p.sum(axis=axis, keepdims=True)


def log_probs(shape, rng, axis=-1):
    z = rng.standard_normal(shape)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def unit(shape, rng):
    return rng.uniform(0.02, 0.98, shape)


def classes(c, ignore=None):
    def make(shape, rng):
        t = rng.integers(0, c, shape)
        if ignore is not None:
            t.reshape(-1)[::3] = ignore
        return t
    return make


W4 = np.array([0.5, 1.0, 2.0, 1.75])
# elementwise losses have one array path on every backend (gpunet.dispatch), so no kernel runs on sim
ARRAY_ONLY = pytest.mark.no_kernels("an elementwise loss: one array path on every backend")

# (id, gpunet factory(nn), torch factory(torch), input maker, input shape, target maker(shape, rng), target shape)
CASES = [
    ("l1", lambda: nn.L1Loss(), lambda t: t.nn.L1Loss(), normal, (3, 4), normal, None),
    ("l1_sum", lambda: nn.L1Loss(reduction="sum"), lambda t: t.nn.L1Loss(reduction="sum"), normal, (5,), normal, None),
    ("l1_none", lambda: nn.L1Loss(reduction="none"), lambda t: t.nn.L1Loss(reduction="none"), normal, (2, 3, 2),
     normal, None),
    ("smooth_l1", lambda: nn.SmoothL1Loss(), lambda t: t.nn.SmoothL1Loss(), normal, (4, 5), normal, None),
    ("smooth_l1_beta_none", lambda: nn.SmoothL1Loss(reduction="none", beta=0.5),
     lambda t: t.nn.SmoothL1Loss(reduction="none", beta=0.5), normal, (3, 4), normal, None),
    ("smooth_l1_beta0_sum", lambda: nn.SmoothL1Loss(reduction="sum", beta=0.0),
     lambda t: t.nn.SmoothL1Loss(reduction="sum", beta=0.0), normal, (3, 4), normal, None),
    ("huber", lambda: nn.HuberLoss(), lambda t: t.nn.HuberLoss(), normal, (4, 5), normal, None),
    ("huber_delta_none", lambda: nn.HuberLoss(reduction="none", delta=0.7),
     lambda t: t.nn.HuberLoss(reduction="none", delta=0.7), normal, (3, 4), normal, None),
    ("huber_delta_sum", lambda: nn.HuberLoss(reduction="sum", delta=2.5),
     lambda t: t.nn.HuberLoss(reduction="sum", delta=2.5), normal, (6,), normal, None),
    ("bce", lambda: nn.BCELoss(), lambda t: t.nn.BCELoss(), unit, (3, 4), unit, None),
    ("bce_weight_none", lambda: nn.BCELoss(W4, reduction="none"), lambda t: t.nn.BCELoss(t.tensor(W4), reduction="none"),
     unit, (3, 4), lambda s, r: r.random(s).round(), None),
    ("bce_weight_sum", lambda: nn.BCELoss(W4[:, None], reduction="sum"),
     lambda t: t.nn.BCELoss(t.tensor(W4[:, None]), reduction="sum"), unit, (4, 3), unit, None),
    ("kl", lambda: nn.KLDivLoss(), lambda t: t.nn.KLDivLoss(), log_probs, (3, 4), probs, None),
    ("kl_batchmean", lambda: nn.KLDivLoss(reduction="batchmean"), lambda t: t.nn.KLDivLoss(reduction="batchmean"),
     log_probs, (3, 5), probs, None),
    ("kl_sum", lambda: nn.KLDivLoss(reduction="sum"), lambda t: t.nn.KLDivLoss(reduction="sum"), log_probs, (2, 4),
     probs, None),
    ("kl_log_target_none", lambda: nn.KLDivLoss(reduction="none", log_target=True),
     lambda t: t.nn.KLDivLoss(reduction="none", log_target=True), log_probs, (3, 4), log_probs, None),
    ("kl_log_target_batchmean", lambda: nn.KLDivLoss(reduction="batchmean", log_target=True),
     lambda t: t.nn.KLDivLoss(reduction="batchmean", log_target=True), log_probs, (2, 3, 4), log_probs, None),
    ("nll", lambda: nn.NLLLoss(), lambda t: t.nn.NLLLoss(), log_probs, (5, 4), classes(4), (5,)),
    ("nll_weight_ignore", lambda: nn.NLLLoss(W4, ignore_index=1), lambda t: t.nn.NLLLoss(t.tensor(W4), ignore_index=1),
     log_probs, (7, 4), classes(4, ignore=1), (7,)),
    ("nll_spatial_none", lambda: nn.NLLLoss(reduction="none", ignore_index=-1),
     lambda t: t.nn.NLLLoss(reduction="none", ignore_index=-1), normal, (2, 4, 3, 2), classes(4, ignore=-1), (2, 3, 2)),
    ("nll_spatial_weight_sum", lambda: nn.NLLLoss(W4, reduction="sum"),
     lambda t: t.nn.NLLLoss(t.tensor(W4), reduction="sum"), normal, (2, 4, 5), classes(4), (2, 5)),
    ("nll_single_row", lambda: nn.NLLLoss(W4), lambda t: t.nn.NLLLoss(t.tensor(W4)), normal, (4,),
     lambda s, r: np.array(2), ()),
]
# CrossEntropyLoss with class-probability targets: run the log-softmax kernels on sim
CE_CASES = [
    ("ce_probs", lambda: nn.CrossEntropyLoss(), lambda t: t.nn.CrossEntropyLoss(), normal, (5, 4),
     lambda s, r: probs(s, r), None),
    ("ce_probs_weight_smooth", lambda: nn.CrossEntropyLoss(W4, label_smoothing=0.2),
     lambda t: t.nn.CrossEntropyLoss(t.tensor(W4), label_smoothing=0.2), normal, (6, 4), lambda s, r: probs(s, r), None),
    ("ce_probs_unnormalised_sum", lambda: nn.CrossEntropyLoss(reduction="sum"),
     lambda t: t.nn.CrossEntropyLoss(reduction="sum"), normal, (3, 4), unit, None),
    ("ce_probs_spatial_none", lambda: nn.CrossEntropyLoss(W4, reduction="none", label_smoothing=0.1),
     lambda t: t.nn.CrossEntropyLoss(t.tensor(W4), reduction="none", label_smoothing=0.1), normal, (2, 4, 3, 2),
     lambda s, r: probs(s, r, axis=1), None),
    ("ce_probs_spatial_mean", lambda: nn.CrossEntropyLoss(label_smoothing=0.3),
     lambda t: t.nn.CrossEntropyLoss(label_smoothing=0.3), normal, (3, 4, 5), lambda s, r: probs(s, r, axis=1), None),
    ("ce_probs_single_row", lambda: nn.CrossEntropyLoss(W4, label_smoothing=0.1),
     lambda t: t.nn.CrossEntropyLoss(t.tensor(W4), label_smoothing=0.1), normal, (4,), lambda s, r: probs(s, r), None),
]
ALL = [pytest.param(*c, id=c[0], marks=ARRAY_ONLY) for c in CASES] + [pytest.param(*c, id=c[0]) for c in CE_CASES]
SIGNATURE = "name,factory,torch_factory,make_input,shape,make_target,target_shape"


def _data(make_input, shape, make_target, target_shape, rng):
    x = make_input(shape, rng)
    t = make_target(shape if target_shape is None else target_shape, rng)
    return x, t


def _torch_run(torch, torch_factory, x, t, grad):
    fn = torch_factory(torch).to(torch.float64)
    xt = torch.tensor(x, requires_grad=True)
    lt = fn(xt, torch.tensor(t))
    lt.backward(torch.tensor(grad, dtype=lt.dtype))
    return lt.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize(SIGNATURE, ALL)
def test_float64_matches_torch(name, factory, torch_factory, make_input, shape, make_target, target_shape, rng):
    torch = pytest.importorskip("torch")
    x, t = _data(make_input, shape, make_target, target_shape, rng)
    crit = factory().to(np.float64)
    loss = crit(x, t)
    grad = rng.standard_normal(loss.shape) if loss.ndim else 1.7
    dx = crit.backward(grad)
    ref_loss, ref_dx = _torch_run(torch, torch_factory, x, t, grad)
    assert loss.shape == ref_loss.shape and loss.dtype == np.float64 and dx.shape == x.shape
    assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12, name=f"{name} loss")
    assert_close(dx, ref_dx, rtol=1e-10, atol=1e-12, name=f"{name} grad")


@pytest.mark.parametrize(SIGNATURE, ALL)
def test_gradcheck(name, factory, torch_factory, make_input, shape, make_target, target_shape, rng):
    x, t = _data(make_input, shape, make_target, target_shape, rng)
    res = gpunet.gradcheck(WithTarget(factory().to(np.float64), t), (x,))
    assert res.checked >= x.size - 2


@pytest.mark.parametrize(SIGNATURE, ALL)
def test_float32_on_every_backend(name, factory, torch_factory, make_input, shape, make_target, target_shape,
                                  device, rng):
    """float32 on `device` against float64 cpu on the same (float32-rounded) inputs."""
    x, t = _data(make_input, shape, make_target, target_shape, rng)
    if t.dtype.kind == "f":
        t = t.astype(np.float32)
    x = x.astype(np.float32)
    be = gpunet.get_backend(device)
    crit = factory().to(device).to(np.float32)
    loss = crit(be.asarray(x), be.asarray(t))
    grad = np.linspace(0.5, 1.5, loss.size).reshape(loss.shape).astype(np.float32) if loss.ndim else 1.3
    dx = crit.backward(be.asarray(grad) if loss.ndim else grad)
    ref = factory().to(np.float64)
    ref_loss = ref(x.astype(np.float64), t.astype(np.float64) if t.dtype.kind == "f" else t)
    ref_dx = ref.backward(grad.astype(np.float64) if loss.ndim else grad)
    assert be.owns(dx) and dx.dtype == np.float32 and loss.dtype == np.float32
    assert_close(loss, ref_loss, n=x.size, name=f"{name} loss on {device}")
    assert_close(dx, ref_dx, n=x.size, name=f"{name} grad on {device}")


# ---------------------------------------------------------------- zero-size batches, as PyTorch
EMPTY = [
    ("l1", lambda m, r: m.L1Loss(reduction=r), (0, 3), "float"),
    ("smooth_l1", lambda m, r: m.SmoothL1Loss(reduction=r), (0, 3), "float"),
    ("huber", lambda m, r: m.HuberLoss(reduction=r), (0, 3), "float"),
    ("bce", lambda m, r: m.BCELoss(reduction=r), (0, 3), "float"),
    ("kl", lambda m, r: m.KLDivLoss(reduction=r), (0, 3), "float"),
    ("nll", lambda m, r: m.NLLLoss(reduction=r), (0, 3), "index"),
    ("nll_spatial", lambda m, r: m.NLLLoss(reduction=r), (2, 3, 0), "index"),
    ("ce_probs", lambda m, r: m.CrossEntropyLoss(reduction=r), (0, 3), "float"),
    ("ce_probs_spatial", lambda m, r: m.CrossEntropyLoss(reduction=r, label_smoothing=0.1), (2, 3, 0), "float"),
    ("mse", lambda m, r: m.MSELoss(reduction=r), (0, 3), "float"),
    ("bce_logits", lambda m, r: m.BCEWithLogitsLoss(reduction=r), (0, 3), "float"),
    ("ce_index", lambda m, r: m.CrossEntropyLoss(reduction=r), (0, 3), "index"),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,make,shape,target", EMPTY, ids=[e[0] for e in EMPTY])
def test_zero_size_batch_like_torch(name, make, shape, target, reduction):
    torch = pytest.importorskip("torch")
    x = np.zeros(shape)
    t = np.zeros(shape) if target == "float" else np.zeros((shape[0],) + shape[2:], np.int64)
    crit = make(nn, reduction).to(np.float64)
    loss = crit(x, t)
    dx = crit.backward(np.zeros(loss.shape) if loss.ndim else 1.0)
    ref_loss, ref_dx = _torch_run(torch, lambda tt: make(tt.nn, reduction), x, t,
                                  np.zeros(loss.shape) if loss.ndim else 1.0)
    assert loss.shape == ref_loss.shape and dx.shape == ref_dx.shape == x.shape
    np.testing.assert_array_equal(loss, ref_loss)  # NaN for 'mean' (0/0) where PyTorch gives NaN


def test_nll_every_row_ignored_like_torch():
    torch = pytest.importorskip("torch")
    x, t = np.zeros((2, 3)), np.array([1, 1])
    for reduction in ("mean", "sum"):
        crit = nn.NLLLoss(ignore_index=1, reduction=reduction).to(np.float64)
        loss, dx = crit(x, t), crit.backward()
        ref_loss, ref_dx = _torch_run(torch, lambda tt: tt.nn.NLLLoss(ignore_index=1, reduction=reduction), x, t, 1.0)
        np.testing.assert_array_equal(loss, ref_loss)  # NaN for 'mean', 0 for 'sum'
        np.testing.assert_array_equal(dx, ref_dx)  # zeros, not NaN


def test_bce_at_zero_and_one_is_finite_like_torch():
    torch = pytest.importorskip("torch")
    x = np.array([0.0, 1.0, 0.0, 1.0, 0.5])
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.3])
    crit = nn.BCELoss(reduction="none").to(np.float64)
    loss = crit(x, t)
    dx = crit.backward(np.ones(5))
    ref_loss, ref_dx = _torch_run(torch, lambda tt: tt.nn.BCELoss(reduction="none"), x, t, np.ones(5))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-14)
    assert loss[0] == 100.0  # the log clamped at -100
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-14)


def test_smooth_l1_is_huber_over_beta(rng):
    x, t = normal((4, 5), rng), normal((4, 5), rng)
    huber = nn.HuberLoss(reduction="none", delta=0.6).to(np.float64)
    smooth = nn.SmoothL1Loss(reduction="none", beta=0.6).to(np.float64)
    np.testing.assert_allclose(smooth(x, t), huber(x, t) / 0.6, rtol=1e-14)
    np.testing.assert_allclose(smooth.backward(np.ones((4, 5))), huber.backward(np.ones((4, 5))) / 0.6, rtol=1e-14)
    assert smooth.beta == 0.6


def test_kl_mean_warns_like_torch(rng):
    with pytest.warns(UserWarning, match="batchmean"):
        nn.KLDivLoss().to(np.float64)(log_probs((2, 3), rng), probs((2, 3), rng))
    # the deprecated pair decides over 'batchmean', as in PyTorch
    assert nn.KLDivLoss(size_average=False, reduction="batchmean").reduction == "sum"


def test_cross_entropy_probability_targets_equal_one_hot_indices(rng):
    """One-hot probabilities give the class-index loss (weights change the mean's divisor, as PyTorch)."""
    x, k = normal((5, 4), rng), rng.integers(0, 4, 5)
    onehot = np.eye(4)[k]
    for kw in (dict(), dict(label_smoothing=0.2), dict(reduction="sum", weight=W4)):
        a, b = nn.CrossEntropyLoss(**kw).to(np.float64), nn.CrossEntropyLoss(**kw).to(np.float64)
        np.testing.assert_allclose(a(x, onehot), b(x, k), rtol=1e-13)
        np.testing.assert_allclose(a.backward(), b.backward(), rtol=1e-13, atol=1e-16)


def test_weights_are_buffers_with_torch_keys():
    assert list(nn.NLLLoss(W4).state_dict()) == ["weight"]
    assert list(nn.BCELoss(W4).state_dict()) == ["weight"]
    for crit in (nn.NLLLoss(), nn.BCELoss(), nn.L1Loss(), nn.KLDivLoss()):
        crit.load_state_dict(crit.state_dict())  # strict, without a weight


def test_bad_inputs():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="ignore_index: not supported with class-probability targets"):
        nn.CrossEntropyLoss(ignore_index=0).to(np.float64)(x, np.full((3, 4), 0.25))
    with pytest.raises(TypeError, match=r"target: expected integer class indices, or class probabilities of the "
                                        r"input's shape \(3, 4\); got float64 of shape \(3, 5\)"):
        nn.CrossEntropyLoss().to(np.float64)(x, np.full((3, 5), 0.2))
    with pytest.raises(TypeError, match="target: expected dtype float64"):
        nn.CrossEntropyLoss().to(np.float64)(x, np.full((3, 4), 0.25, np.float32))
    with pytest.raises(ValueError, match=r"weight: expected shape \(4,\)"):
        nn.CrossEntropyLoss(np.ones(3)).to(np.float64)(x, np.full((3, 4), 0.25))
    with pytest.raises(ValueError, match=r"input: expected probabilities in \[0, 1\], got 1.5"):
        nn.BCELoss().to(np.float64)(np.full((3, 4), 1.5), x)
    with pytest.raises(ValueError, match="weight: shape"):
        nn.BCELoss(np.ones(3)).to(np.float64)(x, x)
    with pytest.raises(ValueError, match=r"target.*\[0, 4\).*got 4"):
        nn.NLLLoss().to(np.float64)(x, np.array([0, 4, 1]))
    with pytest.raises(TypeError, match="target.*integer"):
        nn.NLLLoss().to(np.float64)(x, np.zeros(3))
    with pytest.raises(ValueError, match=r"target.*shape \(3,\)"):
        nn.NLLLoss().to(np.float64)(x, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"target: expected the shape of input"):
        nn.L1Loss().to(np.float64)(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="delta: expected a number > 0"):
        nn.HuberLoss(delta=0)
    with pytest.raises(ValueError, match="beta: expected a non-negative number"):
        nn.SmoothL1Loss(beta=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        nn.KLDivLoss(reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        nn.L1Loss(reduction="batchmean")
