"""Losses and regularisers: naive-loop forward, float64 gradcheck, PyTorch
parity for every loss, the lecture notes' formulas, bad input, and the fused
softmax cross-entropy kernels on the kernel backends."""
import math

import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.regularization import l1_penalty, l2_penalty
from gpunet.testing import assert_close as _assert_close, compare_module

from conftest import FUSED_DTYPES, needs_cupy

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("cross_entropy_forward", "cross_entropy_backward")


def assert_close(actual, expected, **kw):
    """gpunet.testing.assert_close for 0-d losses too (compared as 1-element arrays)."""
    _assert_close(np.atleast_1d(gpunet.to_numpy(actual)), np.atleast_1d(gpunet.to_numpy(expected)), **kw)


class WithTarget:
    """A loss with its target fixed, as a one-input function for gradcheck."""

    def __init__(self, crit, target):
        self.crit, self.target = crit, target

    def __call__(self, x):
        return self.crit(x, self.target)

    def backward(self, grad):
        return self.crit.backward(grad)


def f64(crit):
    return crit.to(np.float64)


def signs(shape, rng):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def classes(shape, c, rng, ignore=None):
    t = rng.integers(0, c, shape)
    if ignore is not None:
        t.reshape(-1)[::3] = ignore
    return t


# Each case: (id, loss factory, input shape, target maker(shape, rng), torch factory or None)
W5 = np.array([0.5, 1.0, 2.0, 0.25, 1.75])  # exact in float32 (modules store weights in their dtype)
CASES = [
    ("mse_mean", lambda: nn.MSELoss(), (3, 4), lambda s, r: r.standard_normal(s), lambda t: t.nn.MSELoss()),
    ("mse_sum_half", lambda: nn.MSELoss(reduction="sum", half=True), (3, 4), lambda s, r: r.standard_normal(s), None),
    ("mse_none", lambda: nn.MSELoss(reduction="none"), (2, 3), lambda s, r: r.standard_normal(s),
     lambda t: t.nn.MSELoss(reduction="none")),
    ("ce", lambda: nn.CrossEntropyLoss(), (4, 5), lambda s, r: classes(4, 5, r), lambda t: t.nn.CrossEntropyLoss()),
    ("ce_weight_smooth_ignore", lambda: nn.CrossEntropyLoss(W5, ignore_index=-1, label_smoothing=0.2), (6, 5),
     lambda s, r: classes(6, 5, r, ignore=-1),
     lambda t: t.nn.CrossEntropyLoss(t.tensor(W5), ignore_index=-1, label_smoothing=0.2)),
    ("ce_spatial_none", lambda: nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1, ignore_index=2),
     (2, 3, 2, 2), lambda s, r: classes((2, 2, 2), 3, r),
     lambda t: t.nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1, ignore_index=2)),
    ("ce_spatial_weight_sum", lambda: nn.CrossEntropyLoss(W5[:3], reduction="sum"), (2, 3, 4),
     lambda s, r: classes((2, 4), 3, r), lambda t: t.nn.CrossEntropyLoss(t.tensor(W5[:3]), reduction="sum")),
    ("ce_single_row", lambda: nn.CrossEntropyLoss(label_smoothing=0.3), (5,), lambda s, r: np.array(3),
     lambda t: t.nn.CrossEntropyLoss(label_smoothing=0.3)),
    ("bce", lambda: nn.BCEWithLogitsLoss(), (3, 4), lambda s, r: r.random(s), lambda t: t.nn.BCEWithLogitsLoss()),
    ("bce_weights_none", lambda: nn.BCEWithLogitsLoss(W5[:4], reduction="none", pos_weight=W5[1:]), (3, 4),
     lambda s, r: r.random(s).round(),
     lambda t: t.nn.BCEWithLogitsLoss(t.tensor(W5[:4]), reduction="none", pos_weight=t.tensor(W5[1:]))),
    ("bce_pos_weight_sum", lambda: nn.BCEWithLogitsLoss(reduction="sum", pos_weight=W5[:4]), (3, 4),
     lambda s, r: r.random(s), lambda t: t.nn.BCEWithLogitsLoss(reduction="sum", pos_weight=t.tensor(W5[:4]))),
    ("hinge", lambda: nn.HingeLoss(), (3, 4), signs, None),
    ("hinge_none_margin", lambda: nn.HingeLoss(margin=0.5, reduction="none"), (5,), signs, None),
    ("perceptron_sum", lambda: nn.PerceptronLoss(reduction="sum"), (3, 4), signs, None),
    ("multimargin", lambda: nn.MultiMarginLoss(), (4, 5), lambda s, r: classes(4, 5, r),
     lambda t: t.nn.MultiMarginLoss()),
    ("multimargin_p2_weight_none", lambda: nn.MultiMarginLoss(p=2, margin=0.7, weight=W5, reduction="none"), (4, 5),
     lambda s, r: classes(4, 5, r),
     lambda t: t.nn.MultiMarginLoss(p=2, margin=0.7, weight=t.tensor(W5), reduction="none")),
    ("multimargin_single_sum", lambda: nn.MultiMarginLoss(reduction="sum"), (5,), lambda s, r: np.array(1),
     lambda t: t.nn.MultiMarginLoss(reduction="sum")),
]
IDS = [c[0] for c in CASES]


def torch_hinge(t, margin, reduction):
    def loss(x, target):
        per = t.clamp(margin - target * x, min=0)
        return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    return loss


TORCH_EXTRA = {  # losses PyTorch has no module for, written with torch ops
    "mse_sum_half": lambda t: (lambda x, y: 0.5 * t.nn.functional.mse_loss(x, y, reduction="sum")),
    "hinge": lambda t: torch_hinge(t, 1.0, "mean"),
    "hinge_none_margin": lambda t: torch_hinge(t, 0.5, "none"),
    "perceptron_sum": lambda t: torch_hinge(t, 0.0, "sum"),
}


@pytest.mark.parametrize("name,factory,shape,target,_", CASES, ids=IDS)
def test_gradcheck(name, factory, shape, target, _, rng):
    x = rng.standard_normal(shape)
    res = gpunet.gradcheck(WithTarget(f64(factory()), target(shape, rng)), (x,))
    assert res.checked >= x.size - 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,factory,shape,target,torch_factory", CASES, ids=IDS)
def test_against_torch(name, factory, shape, target, torch_factory, dtype, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(dtype)
    t = target(shape, rng)
    t = t.astype(dtype) if t.dtype.kind == "f" else t
    crit = factory().to(dtype)
    loss = crit(x, t)
    grad = rng.standard_normal(loss.shape).astype(dtype) if loss.ndim else 1.7
    dx = crit.backward(grad)
    fn = torch_factory(torch) if torch_factory else TORCH_EXTRA[name](torch)
    if hasattr(fn, "to"):
        fn = fn.to(torch.float64 if dtype == np.float64 else torch.float32)
    xt = torch.tensor(x, requires_grad=True)
    lt = fn(xt, torch.tensor(t))
    lt.backward(torch.tensor(grad, dtype=lt.dtype))
    tol = {} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    assert loss.shape == tuple(lt.shape) and loss.dtype == dtype
    assert_close(loss, lt.detach().numpy(), name=f"{name} loss", **tol)
    assert_close(dx, xt.grad.numpy(), name=f"{name} grad", **tol)


def test_cross_entropy_all_ignored_is_nan_like_torch():
    torch = pytest.importorskip("torch")
    x = np.zeros((2, 3))
    t = np.array([-100, -100])
    assert np.isnan(f64(nn.CrossEntropyLoss())(x, t))
    assert torch.isnan(torch.nn.CrossEntropyLoss()(torch.tensor(x), torch.tensor(t)))
    assert f64(nn.CrossEntropyLoss(reduction="sum"))(x, t) == 0


# ---------------------------------------------------------------- naive loops and the notes' formulas
def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def test_forward_matches_naive_loops(rng):
    z = rng.standard_normal((3, 4))
    y = rng.standard_normal((3, 4))
    t = signs((3, 4), rng)
    p = rng.random((3, 4))
    k = rng.integers(0, 4, 3)
    pairs = [(a, b) for a, b in zip(z.reshape(-1), y.reshape(-1))]
    assert f64(nn.MSELoss())(z, y) == pytest.approx(sum((a - b) ** 2 for a, b in pairs) / 12, rel=1e-14)
    # the notes' 1/2 ||t - z||^2 summed over outputs
    assert f64(nn.MSELoss(reduction="sum", half=True))(z, y) == pytest.approx(0.5 * sum((a - b) ** 2 for a, b in pairs), rel=1e-14)
    bce = [-(q * math.log(sigmoid(a)) + (1 - q) * math.log(1 - sigmoid(a))) for a, q in zip(z.reshape(-1), p.reshape(-1))]
    assert f64(nn.BCEWithLogitsLoss())(z, p) == pytest.approx(sum(bce) / 12, rel=1e-13)
    hinge = [max(0.0, 1 - s * a) for a, s in zip(z.reshape(-1), t.reshape(-1))]
    assert f64(nn.HingeLoss())(z, t) == pytest.approx(sum(hinge) / 12, rel=1e-14)
    perc = [max(0.0, -s * a) for a, s in zip(z.reshape(-1), t.reshape(-1))]
    assert f64(nn.PerceptronLoss())(z, t) == pytest.approx(sum(perc) / 12, rel=1e-14)
    # multi-class cross-entropy -sum_k I(t = k) ln softmax(y)_k
    ce = [-math.log(math.exp(z[n, k[n]]) / sum(math.exp(v) for v in z[n])) for n in range(3)]
    assert f64(nn.CrossEntropyLoss())(z, k) == pytest.approx(sum(ce) / 3, rel=1e-13)
    mm = [sum(max(0.0, 1 - z[n, k[n]] + z[n, i]) for i in range(4) if i != k[n]) / 4 for n in range(3)]
    assert f64(nn.MultiMarginLoss())(z, k) == pytest.approx(sum(mm) / 3, rel=1e-14)


def test_half_squared_error_gradient_is_z_minus_t(rng):
    z, t = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    crit = f64(nn.MSELoss(reduction="sum", half=True))
    crit(z, t)
    np.testing.assert_allclose(crit.backward(), z - t, rtol=1e-15)


def test_perceptron_loss_step_is_rosenblatt_rule():
    """SGD on max(0, -t z) with z = w.x + b moves a misclassified point by
    w <- w + eta t x, b <- b + eta t, and leaves a correct one alone."""
    lin = nn.Linear(3, 1).to(np.float64)
    w0, b0 = np.array([[0.2, -0.5, 0.1]]), np.array([0.3])
    lin.load_state_dict({"weight": w0, "bias": b0})
    crit = f64(nn.PerceptronLoss(reduction="sum"))
    eta = 0.5
    x, t = np.array([[1.0, 2.0, -1.0]]), np.array([[1.0]])  # z = -0.6: misclassified
    assert crit(lin(x), t) == pytest.approx(0.6)
    lin.backward(crit.backward())
    np.testing.assert_allclose(w0 - eta * lin.weight.grad, w0 + eta * t * x)
    np.testing.assert_allclose(b0 - eta * lin.bias.grad, b0 + eta * t[0])
    lin.zero_grad()
    assert crit(lin(x), -t) == 0  # correct with label -1
    lin.backward(crit.backward())
    np.testing.assert_array_equal(lin.weight.grad, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_stay_finite(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ce = nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1).to(dtype)
        per = ce(x, np.array([1, 0]))
        dx = ce.backward(np.ones(2, dtype))
        bce = nn.BCEWithLogitsLoss(reduction="none").to(dtype)
        b = bce(x, np.ones_like(x))
        db = bce.backward(np.ones_like(x))
    assert np.isfinite(per).all() and np.isfinite(dx).all() and np.isfinite(b).all() and np.isfinite(db).all()
    assert per[0] == pytest.approx(2e4 * (0.9 + 0.1 / 3) + 1e4 * 0.1 / 3, rel=1e-6)
    np.testing.assert_allclose(b[0], [0, 1e4, math.log(2)], rtol=1e-6)


# ---------------------------------------------------------------- bad input
def test_cross_entropy_bad_inputs():
    crit = f64(nn.CrossEntropyLoss())
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"target.*\[0, 4\).*got 4"):
        crit(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="target.*got -3"):
        crit(x, np.array([0, -3, 1]))
    with pytest.raises(TypeError, match="target.*integer"):
        crit(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"target.*shape \(3,\)"):
        crit(x, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"target.*shape \(3, 5\)"):
        crit(np.zeros((3, 4, 5)), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="input.*NaN"):
        crit(np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(TypeError, match="input.*dtype"):  # a float32/float64 input is followed (Module._follow)
        crit(x.astype(np.float16), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="weight.*shape"):
        f64(nn.CrossEntropyLoss(np.ones(3)))(x, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        nn.CrossEntropyLoss(reduction="avg")


def test_other_losses_bad_inputs():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="target.*shape"):
        f64(nn.MSELoss())(x, np.zeros((3, 2)))
    with pytest.raises(TypeError, match="target.*dtype"):  # integer targets are cast, as PyTorch promotes them
        f64(nn.MSELoss())(x, np.zeros((2, 3), np.complex128))
    with pytest.raises(ValueError, match="target.*NaN"):
        f64(nn.BCEWithLogitsLoss())(x, np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="pos_weight"):
        f64(nn.BCEWithLogitsLoss(pos_weight=np.ones(2)))(x, x)
    with pytest.raises(ValueError, match=r"target.*\{-1, 1\}.*0\.0"):
        f64(nn.HingeLoss())(x, x)
    with pytest.raises(ValueError, match=r"target.*\{-1, 1\}"):
        f64(nn.PerceptronLoss())(x, np.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="target.*got 3"):
        f64(nn.MultiMarginLoss())(x, np.array([0, 3]))
    with pytest.raises(ValueError, match="p:"):
        nn.MultiMarginLoss(p=3)


def test_backward_grad_checks():
    crit = f64(nn.MSELoss(reduction="none"))
    crit(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="grad.*shape"):
        crit.backward(np.ones(3))
    crit = f64(nn.MSELoss())
    crit(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(TypeError, match="grad.*scalar"):
        crit.backward(np.ones(3))
    crit(np.zeros((2, 3)), np.ones((2, 3)))
    np.testing.assert_allclose(crit.backward(np.array(2.0)), np.full((2, 3), -4 / 6))
    with pytest.raises(RuntimeError, match="no forward to differentiate"):
        crit.backward()


def test_weights_are_buffers_with_torch_keys():
    crit = nn.CrossEntropyLoss(W5)
    assert list(crit.state_dict()) == ["weight"]
    assert list(nn.BCEWithLogitsLoss(pos_weight=W5).state_dict()) == ["pos_weight"]


# ---------------------------------------------------------------- regularisation
def test_l2_and_l1_penalties(rng):
    lin = nn.Linear(3, 2).to(np.float64)
    lin.weight.data[0, 0] = 0.0
    w, b = lin.weight.data.copy(), lin.bias.data.copy()
    value, backward = l2_penalty(lin.parameters(), 0.1)
    assert value == pytest.approx(0.1 * 0.5 * (np.sum(w ** 2) + np.sum(b ** 2)), rel=1e-14)
    lin.weight.grad = np.ones_like(w)
    backward()
    np.testing.assert_allclose(lin.weight.grad, 1 + 0.1 * w)  # adds into existing gradients
    np.testing.assert_allclose(lin.bias.grad, 0.1 * b)
    lin.zero_grad()
    value, backward = l1_penalty(lin, 0.3)
    assert value == pytest.approx(0.3 * (np.abs(w).sum() + np.abs(b).sum()), rel=1e-14)
    backward(2.0)
    np.testing.assert_allclose(lin.weight.grad, 0.6 * np.sign(w))
    assert lin.weight.grad[0, 0] == 0  # subgradient 0 at w = 0


def test_penalty_gradient_matches_finite_differences(rng):
    lin = nn.Linear(2, 2).to(np.float64)
    for penalty in (l2_penalty, l1_penalty):
        lin.zero_grad()
        penalty(lin.parameters(), 0.7)[1]()
        w = lin.weight.data
        eps = 1e-6
        for idx in np.ndindex(w.shape):
            w[idx] += eps
            up = float(penalty(lin.parameters(), 0.7)[0])
            w[idx] -= 2 * eps
            down = float(penalty(lin.parameters(), 0.7)[0])
            w[idx] += eps
            assert lin.weight.grad[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-6)


def test_penalty_bad_inputs():
    with pytest.raises(ValueError, match="lam"):
        l2_penalty(nn.Linear(2, 2).parameters(), -1.0)
    with pytest.raises(TypeError, match="params"):
        l1_penalty([np.zeros(3)], 0.1)


# ---------------------------------------------------------------- kernels
@pytest.mark.parametrize("cols", [1, 31, 33, 1000, 1024, 1025, 3000])
def test_cross_entropy_kernels(cols, kernel_device, schedule, rng):
    """Fused softmax cross-entropy (warp-per-row and block-per-row) on float32
    against the float64 reference: rows with ignore_index, label smoothing,
    class weights, each reduction."""
    rows = 3 if cols > 1024 else 6
    x = (3 * rng.standard_normal((rows, cols))).astype(np.float32)
    x[1] += 40.0  # a large common offset
    t = rng.integers(0, cols, rows)
    t[2] = -100
    w = (0.5 + rng.random(cols)).astype(np.float32)
    configs = [dict(), dict(label_smoothing=0.1), dict(weight=w, label_smoothing=0.2, reduction="sum"),
               dict(weight=w, reduction="none")]
    for kw in configs:
        check_cross_entropy(x, t, kw, kernel_device)


@pytest.mark.parametrize("cols", [7, 1500])  # the warp-per-row and block-per-row kernels
def test_cross_entropy_kernel_reports_bad_targets_in_the_flag(cols, kb, rng):
    """An out-of-range target counts 0 in the loss and the gradient (no NaN,
    no read past the row) and the kernel records it in the error flag:
    (kind 1, the target, C, ignore_index). The first report stays."""
    xp = kb.xp
    x = xp.asarray(rng.standard_normal((4, cols)).astype(np.float32))
    t = xp.asarray(np.array([0, cols, -100, 1]))
    w = xp.empty(0, dtype=np.float32)
    per, lse = xp.empty(4, np.float32), xp.empty((4, 2), np.float32)
    flag = xp.zeros(4, np.int64)
    kb.kernels.cross_entropy_forward(x, t, w, per, lse, -100, 0.1, flag, kb.stream())
    assert gpunet.to_numpy(flag).tolist() == [1, cols, cols, -100]
    got = gpunet.to_numpy(per)
    assert got[1] == 0 and got[2] == 0 and np.isfinite(got).all() and (got[[0, 3]] > 0).all()
    dx = xp.empty_like(x)
    kb.kernels.cross_entropy_backward(x, t, w, w, lse, xp.ones(4, np.float32), dx, -100, 0.1, kb.stream())
    dx = gpunet.to_numpy(dx)
    assert not dx[1].any() and not dx[2].any() and dx[[0, 3]].any()
    # a later bad target leaves the first report
    kb.kernels.cross_entropy_forward(x, xp.asarray(np.array([-7, 0, 0, 0])), w, per, lse, -100, 0.0, flag,
                                     kb.stream())
    assert gpunet.to_numpy(flag).tolist() == [1, cols, cols, -100]
    with pytest.raises(ValueError, match=r"argument 'flag'.*shape \(4,\)"):
        kb.kernels.cross_entropy_forward(x, t, w, per, lse, -100, 0.0, flag[:3], kb.stream())


@pytest.mark.parametrize("weighted", [False, True])
def test_bad_target_found_by_the_kernel_raises_the_cpu_error(kb, weighted, monkeypatch, rng):
    """With the host-side range scan off (as on a GPU by default), the kernel's
    flag raises the cpu backend's error, type and message: on sim in the call
    itself, on cuda at the next synchronisation, before an optimizer step
    changes any weight. The flag is reset: the next good call passes."""
    x = rng.standard_normal((3, 4)).astype(np.float32)
    t = np.array([0, 4, -1])
    weight = (1 + rng.random(4)).astype(np.float32) if weighted else None
    with pytest.raises(ValueError) as cpu_error:
        nn.CrossEntropyLoss(weight, ignore_index=-1)(x, t)
    monkeypatch.setitem(gpunet.checks._finite, "host", False)
    lin = nn.Linear(4, 4).to(kb)
    opt = gpunet.optim.SGD(lin.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss(weight, ignore_index=-1).to(kb)
    before = gpunet.to_numpy(lin.weight.data).copy()
    with pytest.raises(ValueError) as err:
        loss = crit(lin(kb.asarray(x)), kb.asarray(t))
        assert kb.on_gpu, "on sim the call that launched the kernel raises"
        lin.backward(crit.backward())
        opt.step()
    assert type(err.value) is type(cpu_error.value) and str(err.value) == str(cpu_error.value)
    np.testing.assert_array_equal(gpunet.to_numpy(lin.weight.data), before)
    loss = crit(lin(kb.asarray(x)), kb.asarray(np.array([0, 3, -1])))
    kb.synchronize()
    assert np.isfinite(float(loss))


def test_flag_left_unread_raises_at_the_next_sync_point(rng):
    """The GPU's deferred check, on sim: a flag a kernel set and nobody read
    raises at the optimizer step (before any update) or at synchronize()."""
    from gpunet.ops import device_errors
    be = gpunet.get_backend("sim")
    lin = nn.Linear(3, 2).to(be)
    lin(be.asarray(rng.standard_normal((2, 3)).astype(np.float32)))
    lin.backward(be.asarray(np.ones((2, 2), np.float32)))
    opt = gpunet.optim.SGD(lin.parameters(), lr=0.1)
    before = lin.weight.data.copy()
    for sync in (opt.step, be.synchronize):
        x = rng.standard_normal((2, 3)).astype(np.float32)
        flag = device_errors.flag(be)
        be.kernels.cross_entropy_forward(x, np.array([0, 5]), np.empty(0, np.float32), np.empty(2, np.float32),
                                         np.empty((2, 2), np.float32), -100, 0.0, flag, be.stream())
        device_errors._unread.add(device_errors._key(be))  # what launched() records, without its sim-only check
        with pytest.raises(ValueError, match=r"target: class indices must be in \[0, 3\) or equal "
                                             r"ignore_index=-100, got 5"):
            sync()
        np.testing.assert_array_equal(lin.weight.data, before)
    opt.step()  # read and reset: nothing left to raise
    assert not np.array_equal(lin.weight.data, before)


def test_ignore_index_beyond_int64_is_refused():
    with pytest.raises(ValueError, match="ignore_index.*64-bit"):
        nn.CrossEntropyLoss(ignore_index=2**70)


@pytest.mark.parametrize("cols", [20, 1500])
def test_cross_entropy_kernels_large_logits(cols, kernel_device, schedule, rng):
    # integers: float32 holds them and their differences exactly (see test_softmax)
    x = np.round(1e4 * rng.standard_normal((3, cols))).astype(np.float32)
    x[0] = 1e4
    x[0, 3] = 1e4 + 2
    t = np.array([3, 0, 1])
    check_cross_entropy(x, t, dict(label_smoothing=0.05, reduction="none"), kernel_device)


def test_cross_entropy_kernels_spatial(kernel_device, schedule, rng):
    x = rng.standard_normal((2, 5, 3, 2)).astype(np.float32)
    t = rng.integers(0, 5, (2, 3, 2))
    t[0, 1, 1] = 4
    check_cross_entropy(x, t, dict(ignore_index=4, label_smoothing=0.1), kernel_device)


def check_cross_entropy(x, t, kw, device):
    be = gpunet.get_backend(device)
    crit = nn.CrossEntropyLoss(**kw).to(device)
    loss = crit(be.asarray(x), be.asarray(t))
    grad = np.linspace(0.5, 1.5, loss.size).reshape(loss.shape).astype(np.float32) if loss.ndim else 1.3
    dx = crit.backward(be.asarray(grad) if loss.ndim else grad)
    ref = nn.CrossEntropyLoss(**kw).to(np.float64)
    loss_ref = ref(x.astype(np.float64), t)
    dx_ref = ref.backward(grad.astype(np.float64) if loss.ndim else grad)
    n = max(x.shape[1], x.size // x.shape[1])  # the longest sums: over the classes, over the rows
    assert_close(loss, loss_ref, n=n, name=f"cross-entropy {kw} on {device}")
    assert_close(dx, dx_ref, n=n, name=f"cross-entropy grad {kw} on {device}")
    assert be.owns(dx) and dx.dtype == np.float32 and dx.shape == x.shape


@pytest.mark.no_kernels("a loss made without .to() stays on cpu, and sim arrays are NumPy arrays")
def test_loss_follows_a_gpu_input_without_to(kernel_device, rng):
    """Like PyTorch's, a loss created without .to() works on GPU arrays (it moves
    itself); on sim it stays where it is, NumPy being the input either way."""
    x = gpunet.asarray(rng.standard_normal((4, 5)).astype(np.float32), device=kernel_device)
    t = gpunet.asarray(rng.integers(0, 5, 4), device=kernel_device)
    crit = nn.CrossEntropyLoss(weight=np.arange(1, 6, dtype=np.float32))
    loss = crit(x, t)
    ref = nn.CrossEntropyLoss(weight=np.arange(1, 6, dtype=np.float32))(gpunet.to_numpy(x), gpunet.to_numpy(t))
    _assert_close(loss, ref)
    assert crit.backend.owns(crit.backward())


# ---------------------------------------------------------------- the CuPy fusions of cross-entropy
@needs_cupy
@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted,smoothing,spatial", [
    (False, 0.0, False), (True, 0.0, False), (False, 0.2, False), (True, 0.1, True),
])
def test_fused_cross_entropy(weighted, smoothing, spatial, reduction, dtype, rng):
    c = 11
    shape = (6, c, 2, 3) if spatial else (9, c)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    t = rng.integers(0, c, (shape[0],) + shape[2:])
    t.reshape(-1)[::4] = -100  # ignored rows
    weight = rng.uniform(0.5, 2.0, c) if weighted else None
    crit = nn.CrossEntropyLoss(weight=weight, reduction=reduction, label_smoothing=smoothing).to(dtype)
    compare_module(crit, (x, t), devices=("cpu", "cupy"), n=256)


def test_cross_entropy_class_axis_second_view_needs_no_copy(rng):
    """The sequence models' logits are a (N, V, T) view of (N, T, V) memory:
    the host loss reads them as rows and returns its gradient as the same kind
    of view (no copy either way), with the values of contiguous input."""
    import torch
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)  # (N, T, V) memory
    t = rng.integers(0, 7, (3, 5))
    crit = nn.CrossEntropyLoss()
    loss = crit(x.transpose(0, 2, 1), t)
    dx = crit.backward()
    assert dx.shape == (3, 7, 5) and dx.transpose(0, 2, 1).flags.c_contiguous
    xt = torch.tensor(np.ascontiguousarray(x.transpose(0, 2, 1)), dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(xt, torch.tensor(t))
    ref.backward()
    assert_close(loss, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert_close(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction,weighted,smoothing", [("mean", False, 0.0), ("none", True, 0.0),
                                                          ("sum", True, 0.1), ("none", False, 0.2)])
@pytest.mark.parametrize("memory,axes", [((5, 3, 7), (1, 2, 0)),  # (T, N, V) memory seen as (N, V, T): CharLSTM's
                                         ((4, 2, 3, 6), (1, 3, 0, 2))])  # (H, N, W, C) memory seen as (N, C, H, W)
def test_losses_take_rows_in_memory_order(memory, axes, reduction, weighted, smoothing, rng):
    """Logits whose class axis is second in a view of memory with the
    classes last in another order of the other axes: the rows are read in
    memory order with the targets following (no copy), and the losses (per
    element in the targets' shape with reduction='none') and the gradients
    (a view of the rows' memory) are PyTorch's."""
    import torch
    mem = rng.standard_normal(memory).astype(np.float32)
    x = mem.transpose(axes)
    c = x.shape[1]
    t = rng.integers(0, c, (x.shape[0],) + x.shape[2:])
    t.flat[::5] = -100  # ignored
    w = rng.random(c).astype(np.float32) + 0.5 if weighted else None
    grad = rng.standard_normal(t.shape).astype(np.float32) if reduction == "none" else np.float32(1.5)
    xt = torch.tensor(np.ascontiguousarray(x), dtype=torch.float64, requires_grad=True)
    wt = None if w is None else torch.tensor(w, dtype=torch.float64)
    for crit, ref in [(nn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=smoothing),
                       lambda: torch.nn.functional.cross_entropy(xt, torch.tensor(t), weight=wt, reduction=reduction,
                                                                 label_smoothing=smoothing)),
                      (nn.NLLLoss(weight=w, reduction=reduction),
                       lambda: torch.nn.functional.nll_loss(xt, torch.tensor(t), weight=wt, reduction=reduction))]:
        xt.grad = None
        loss = crit(x, t)
        dx = crit.backward(grad)
        r = ref()
        r.backward(torch.tensor(grad, dtype=torch.float64))
        assert loss.shape == tuple(r.shape) and dx.shape == x.shape
        assert dx.transpose(np.argsort(axes)).flags.c_contiguous  # laid out as the logits' memory: rows in its order
        assert_close(loss, r.detach().numpy(), rtol=1e-5, atol=1e-6)
        assert_close(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
