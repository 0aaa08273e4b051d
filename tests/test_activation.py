"""Activations: naive-loop forward, float64 gradcheck, PyTorch parity, the
perceptron's step functions, bad input, and the elementwise kernels on the
kernel backends (sim/cuda) against the float64 reference, through the modules
and through the binding (float4 and scalar paths, argument checks)."""
import itertools
import math
import zlib

import numpy as np
import pytest

import gpunet
from gpunet import functional as F
from gpunet import nn, testing
from gpunet.ops.activation import NoGradientError
from gpunet.testing import assert_close, compare_module

from conftest import FUSED_DTYPES, close, f32, misaligned, needs_cupy, put

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("act_forward", "act_backward")

SQRT_2_OVER_PI = math.sqrt(2 / math.pi)

# (id, module factory, scalar reference f(v), torch module factory)
ACTIVATIONS = [
    ("relu", nn.ReLU, lambda v: max(v, 0.0), lambda t: t.nn.ReLU()),
    ("leaky_relu", lambda: nn.LeakyReLU(0.2), lambda v: v if v > 0 else 0.2 * v, lambda t: t.nn.LeakyReLU(0.2)),
    ("sigmoid", nn.Sigmoid, lambda v: 1 / (1 + math.exp(-v)), lambda t: t.nn.Sigmoid()),
    ("tanh", nn.Tanh, math.tanh, lambda t: t.nn.Tanh()),
    ("softsign", nn.Softsign, lambda v: v / (1 + abs(v)), lambda t: t.nn.Softsign()),
    ("gelu", nn.GELU, lambda v: v * 0.5 * (1 + math.erf(v / math.sqrt(2))), lambda t: t.nn.GELU()),
    ("gelu_tanh", lambda: nn.GELU("tanh"),
     lambda v: 0.5 * v * (1 + math.tanh(SQRT_2_OVER_PI * (v + 0.044715 * v ** 3))),
     lambda t: t.nn.GELU(approximate="tanh")),
    ("softplus", lambda: nn.Softplus(beta=2.0, threshold=5.0),
     lambda v: v if 2 * v > 5 else math.log1p(math.exp(2 * v)) / 2, lambda t: t.nn.Softplus(beta=2.0, threshold=5.0)),
]
IDS = [a[0] for a in ACTIVATIONS]
STEP = [("heaviside", nn.Heaviside, lambda v: 0.0 if v < 0 else 1.0),
        ("sign", nn.Sign, lambda v: float((v > 0) - (v < 0)))]


def make(factory, dtype=np.float64, device="cpu"):
    return factory().to(device, dtype)


def sample(shape, rng, dtype=np.float64, scale=3):
    """Normal values spread to cover softplus's threshold, plus exact zeros."""
    x = scale * rng.standard_normal(shape)
    x.reshape(-1)[::7] = 0.0
    return x.astype(dtype)


def _case(name, factory, ref):
    kernel = name != "gelu_tanh"  # tanh-GELU has no kernel
    return testing.OpCase(name, factory, lambda rng: (sample((5, 7), rng, scale=2),),
                          kernels=KERNELS if kernel else (), fallbacks=() if kernel else ("gelu",),
                          reference=lambda m, x: np.vectorize(ref, otypes=[float])(x))


CASES = [_case(name, factory, ref) for name, factory, ref, _ in ACTIVATIONS]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case, device):
    """cpu: the scalar reference and gradcheck; sim (every schedule), cuda, cupy: parity with float64 cpu."""
    testing.check_op(case, device)


@pytest.mark.parametrize("name,factory,ref", STEP, ids=[s[0] for s in STEP])
def test_step_forward_matches_naive_loop(name, factory, ref, rng):
    x = sample((3, 5), rng)
    y = make(factory)(x)
    expected = np.array([ref(float(v)) for v in x.reshape(-1)]).reshape(x.shape)
    np.testing.assert_array_equal(y, expected)
    assert y.dtype == np.float64 and y.shape == x.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,factory,ref,torch_factory", ACTIVATIONS, ids=IDS)
def test_against_torch(name, factory, ref, torch_factory, dtype, rng):
    torch = pytest.importorskip("torch")
    x = sample((4, 9), rng, dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    m = make(factory, dtype)
    y = m(x)
    dx = m.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_factory(torch)(xt)
    yt.backward(torch.tensor(dy))
    tol = {} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    assert_close(y, yt.detach().numpy(), name=f"{name} forward", **tol)
    assert_close(dx, xt.grad.numpy(), name=f"{name} backward", **tol)
    assert y.dtype == dtype and dx.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_softplus_gelu_stable_at_extremes(dtype):
    x = np.array([-1e4, -800.0, -30.0, 0.0, 30.0, 800.0, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = make(nn.Sigmoid, dtype)(x)
        sp = make(nn.Softplus, dtype)(x)
        g = make(nn.GELU, dtype)(x)
    np.testing.assert_array_equal(s[[0, 1, 5, 6]], [0, 0, 1, 1])
    assert s[3] == 0.5
    np.testing.assert_allclose(sp[4:], x[4:])
    assert (sp[:2] >= 0).all() and sp[0] == 0
    np.testing.assert_allclose(g, np.where(x > 0, x, 0), atol=1e-6)


def test_gelu_tail_is_accurate():
    # Phi(-10) = 7.62e-24: the lower tail must come from erfc, not from 1 - erf
    y = make(nn.GELU)(np.array([-10.0, -5.0]))
    np.testing.assert_allclose(y, [-10 * 0.5 * math.erfc(10 / math.sqrt(2)), -5 * 0.5 * math.erfc(5 / math.sqrt(2))],
                               rtol=1e-12)


# ---------------------------------------------------------------- perceptron step functions
def test_step_functions_document_their_value_at_zero():
    x = np.array([-2.0, -0.0, 0.0, 1e-30, 3.0])
    np.testing.assert_array_equal(make(nn.Heaviside)(x), [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(make(nn.Sign)(x), [-1, 0, 0, 1, 1])


@pytest.mark.parametrize("factory", [nn.Heaviside, nn.Sign])
def test_step_functions_refuse_backward(factory):
    m = make(factory)
    m(np.zeros(3))
    with pytest.raises(NoGradientError, match="no useful gradient"):
        m.backward(np.ones(3))


@pytest.mark.parametrize("w,b,expected", [((1.0, 0.0, 1.0), -1.0, 1.0),    # H(0) = 1
                                           ((1.0, 0.5, -1.0), 0.0, 0.0)])  # H(-0.5) = 0
def test_perceptron_worked_examples(w, b, expected):
    lin = nn.Linear(3, 1).to(np.float64)
    lin.load_state_dict({"weight": np.array([w]), "bias": np.array([b])})
    net = nn.Sequential(lin, nn.Heaviside().to(np.float64))
    assert net(np.array([[0.0, 1.0, 1.0]]))[0, 0] == expected


def test_identity_passes_through():
    m = nn.Identity(3, unused=True)
    x = np.arange(4.0)
    y = m(x)
    dx = m.backward(x)
    # fresh views of the same data: outputs and gradients are registered for backward pairing
    assert np.shares_memory(y, x) and np.shares_memory(dx, x)
    np.testing.assert_array_equal(y, x)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_are_named():
    m = make(nn.Tanh)
    with pytest.raises(TypeError, match="input.*float64.*float32"):
        m(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="input.*NaN"):
        m(np.array([0.0, np.nan]))
    with pytest.raises(RuntimeError, match="no forward to differentiate"):
        m.backward(np.zeros(3))
    m(np.zeros(3))
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.zeros(4))
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")
    with pytest.raises(ValueError, match="beta"):
        nn.Softplus(beta=0)


def test_functional_matches_modules(rng):
    x = sample((3, 4), rng)
    np.testing.assert_array_equal(F.relu(x), make(nn.ReLU)(x))
    np.testing.assert_array_equal(F.leaky_relu(x, 0.2), make(ACTIVATIONS[1][1])(x))
    np.testing.assert_array_equal(F.sigmoid(x), make(nn.Sigmoid)(x))
    np.testing.assert_array_equal(F.tanh(x), make(nn.Tanh)(x))
    np.testing.assert_array_equal(F.softsign(x), make(nn.Softsign)(x))
    np.testing.assert_array_equal(F.gelu(x, "tanh"), make(ACTIVATIONS[6][1])(x))
    np.testing.assert_array_equal(F.softplus(x, 2.0, 5.0), make(ACTIVATIONS[7][1])(x))
    np.testing.assert_array_equal(F.heaviside(x), make(nn.Heaviside)(x))
    np.testing.assert_array_equal(F.sign(x), make(nn.Sign)(x))


# ---------------------------------------------------------------- kernels
KERNEL_ACTS = [a for a in ACTIVATIONS if a[0] != "gelu_tanh"]  # tanh-GELU has no kernel


@pytest.mark.parametrize("n", [1, 7, 33, 1001])
@pytest.mark.parametrize("name,factory,ref,_", KERNEL_ACTS, ids=[a[0] for a in KERNEL_ACTS])
def test_kernel_matches_reference(name, factory, ref, _, n, kernel_device, schedule, rng):
    """float32 kernels (odd lengths, and a misaligned view for the scalar path)
    against the float64 reference, forward and backward."""
    x64 = sample((n + 1,), rng)
    dy64 = rng.standard_normal(n + 1)
    be = gpunet.get_backend(kernel_device)
    m = make(factory, np.float32, kernel_device)
    for sl in (slice(0, n), slice(1, n + 1)):  # x[1:] starts 4 bytes past a 16-byte boundary
        x = be.asarray(x64.astype(np.float32))[sl]
        y = m(x)
        dx = m.backward(be.asarray(dy64[sl].astype(np.float32)))
        ref_m = make(factory)
        y_ref = ref_m(x64[sl].astype(np.float32).astype(np.float64))
        dx_ref = ref_m.backward(dy64[sl].astype(np.float32).astype(np.float64))
        assert_close(y, y_ref, name=f"{name} forward on {kernel_device}")
        assert_close(dx, dx_ref, name=f"{name} backward on {kernel_device}")


def test_normal_cdf_without_scipy_matches_scipy(monkeypatch):
    """The series/continued-fraction fallback (used when SciPy is absent) agrees
    with SciPy's erfc to float64 rounding over both tails."""
    special = pytest.importorskip("scipy.special")
    from gpunet.ops import activation as act
    x = np.linspace(-30, 30, 2001)
    monkeypatch.setattr(act, "_scipy_erfc", lambda: None)
    ours = act.normal_cdf(np, x)
    ref = 0.5 * special.erfc(-x / np.sqrt(2))
    np.testing.assert_allclose(ours, ref, rtol=2e-12, atol=1e-300)


# ---------------------------------------------------------------- the kernels through the binding
KINDS = ("relu", "leaky_relu", "sigmoid", "tanh", "softsign", "gelu", "softplus")
# (alpha, beta) per kind: negative_slope; softplus beta and threshold (small
# enough that the random inputs cross it). The other kinds ignore both.
PARAMS = {"leaky_relu": (0.1, 0.0), "softplus": (1.5, 4.0)}
SHAPES = ((1,), (3,), (1023,), (4097,), (7, 33))
erf = np.vectorize(math.erf)


def ref_forward(kind, x, alpha, beta):
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "leaky_relu":
        return np.where(x > 0, x, alpha * x)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if kind == "tanh":
        return np.tanh(x)
    if kind == "softsign":
        return x / (1 + np.abs(x))
    if kind == "gelu":
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    return np.where(alpha * x > beta, x, np.log1p(np.exp(alpha * x)) / alpha)  # softplus


def ref_backward(kind, x, y, dy, alpha, beta):
    """dy * f'; relu/sigmoid/tanh from the output y, the others from x."""
    if kind == "relu":
        return np.where(y > 0, dy, 0)
    if kind == "leaky_relu":
        return np.where(x > 0, dy, alpha * dy)
    if kind == "sigmoid":
        return dy * y * (1 - y)
    if kind == "tanh":
        return dy * (1 - y * y)
    if kind == "softsign":
        return dy / (1 + np.abs(x)) ** 2
    if kind == "gelu":
        return dy * (0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi))
    return np.where(alpha * x > beta, dy, dy / (1 + np.exp(-alpha * x)))  # softplus


# every kind x every shape x aligned (the float4 path) or 4 bytes past (the scalar path)
BINDING_GRID = pytest.mark.parametrize("kind,shape,aligned", list(itertools.product(KINDS, SHAPES, (True, False))))


def _placer(kb, aligned):
    return (lambda a: put(kb, a)) if aligned else (lambda a: misaligned(kb, a))


@BINDING_GRID
def test_act_forward(kb, schedule, kind, shape, aligned):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{shape}".encode()))
    alpha, beta = PARAMS.get(kind, (0.0, 0.0))
    x = f32(rng, shape)
    place = _placer(kb, aligned)
    xd, yd = place(x), place(np.full(shape, np.nan, np.float32))
    kb.kernels.act_forward(kind, xd, yd, alpha, beta, kb.stream())
    close(gpunet.to_numpy(yd), ref_forward(kind, x.astype(np.float64), alpha, beta))


@BINDING_GRID
def test_act_backward(kb, schedule, kind, shape, aligned):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{shape}bwd".encode()))
    alpha, beta = PARAMS.get(kind, (0.0, 0.0))
    x = f32(rng, shape)
    y = ref_forward(kind, x.astype(np.float64), alpha, beta).astype(np.float32)
    dy = f32(rng, shape, 1.0)
    place = _placer(kb, aligned)
    dxd = place(np.full(shape, np.nan, np.float32))
    kb.kernels.act_backward(kind, place(x), place(y), place(dy), dxd, alpha, beta, kb.stream())
    x64, y64, dy64 = (a.astype(np.float64) for a in (x, y, dy))
    close(gpunet.to_numpy(dxd), ref_backward(kind, x64, y64, dy64, alpha, beta))


@pytest.mark.parametrize("kind", KINDS)
def test_act_backward_ignores_the_unused_input(kb, kind):
    """relu/sigmoid/tanh read y, the others x; the other one may be None."""
    uses = kb.kernels.act_backward_input(kind)
    assert uses == ("y" if kind in ("relu", "sigmoid", "tanh") else "x")
    rng = np.random.default_rng(3)
    alpha, beta = PARAMS.get(kind, (0.0, 0.0))
    x = f32(rng, (64,))
    y = ref_forward(kind, x.astype(np.float64), alpha, beta).astype(np.float32)
    dy = f32(rng, (64,), 1.0)
    dx = put(kb, np.zeros(64, np.float32))
    args = (put(kb, x), None) if uses == "x" else (None, put(kb, y))
    kb.kernels.act_backward(kind, *args, put(kb, dy), dx, alpha, beta, kb.stream())
    close(gpunet.to_numpy(dx), ref_backward(kind, x.astype(np.float64), y.astype(np.float64), dy.astype(np.float64), alpha, beta))


def test_act_forward_in_place(kb):
    x = f32(np.random.default_rng(4), (1000,))
    xd = put(kb, x)
    kb.kernels.act_forward("gelu", xd, xd, 0.0, 0.0, kb.stream())
    close(gpunet.to_numpy(xd), ref_forward("gelu", x.astype(np.float64), 0.0, 0.0))


def test_softplus_torch_defaults_and_extremes(kb):
    """beta=1, threshold=20 as torch; large |x| neither overflows nor loses the linear branch."""
    x = np.array([-100, -30, -1, 0, 1, 19.9, 20.1, 30, 100], np.float32)
    y, dx = put(kb, np.zeros_like(x)), put(kb, np.zeros_like(x))
    kb.kernels.act_forward("softplus", put(kb, x), y, 1.0, 20.0, kb.stream())
    kb.kernels.act_backward("softplus", put(kb, x), None, put(kb, np.ones_like(x)), dx, 1.0, 20.0, kb.stream())
    x64 = x.astype(np.float64)
    close(gpunet.to_numpy(y), ref_forward("softplus", x64, 1.0, 20.0))
    close(gpunet.to_numpy(dx), ref_backward("softplus", x64, None, np.ones_like(x64), 1.0, 20.0))


def test_relu_propagates_nan(kb):
    y = put(kb, np.zeros(4, np.float32))
    kb.kernels.act_forward("relu", put(kb, np.array([np.nan, -1, 0, 2], np.float32)), y, 0.0, 0.0, kb.stream())
    np.testing.assert_array_equal(gpunet.to_numpy(y), [np.nan, 0, 0, 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_and_dropout_backward_select_not_multiply(dtype):
    """cpu: a NaN or inf gradient where ReLU is flat (x <= 0) or dropout
    dropped gives 0, as PyTorch's select does (a product would give NaN); -0.0
    passes through where kept. The host select works on the values' bits."""
    torch = pytest.importorskip("torch")
    x = np.array([[-1.0, 0.0, 2.0, -3.0, 4.0, 5.0], [1.0, -1.0, -2.0, 3.0, 0.5, -0.5]], dtype)
    dy = np.array([[np.nan, np.inf, -0.0, -np.inf, np.nan, 1.5], [2.0, np.nan, 7.0, -np.inf, 3.0, 1.0]], dtype)
    relu = nn.ReLU().to(dtype=dtype)
    relu(x)
    tx = torch.tensor(x, requires_grad=True)
    torch.relu(tx).backward(torch.tensor(dy))
    got = relu.backward(dy)
    np.testing.assert_array_equal(got, tx.grad.numpy())
    np.testing.assert_array_equal(np.signbit(got), np.signbit(tx.grad.numpy()))
    drop = nn.Dropout(0.5).to(dtype=dtype)
    gpunet.manual_seed(0)
    kept = drop(np.ones_like(x)) != 0
    assert kept.any() and not kept.all()
    np.testing.assert_array_equal(drop.backward(dy), np.where(kept, dy * 2, 0))


def test_rejects_unknown_kind_listing_the_valid_ones(kb):
    x = put(kb, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="valid kinds: relu, leaky_relu, sigmoid, tanh, softsign, gelu, softplus"):
        kb.kernels.act_forward("swish", x, x, 0.0, 0.0, kb.stream())
    with pytest.raises(ValueError, match="softplus: beta"):
        kb.kernels.act_forward("softplus", x, x, 0.0, 20.0, kb.stream())


# ---------------------------------------------------------------- the CuPy fusion of the backward
FUSED_ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.3), "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
    "softsign": nn.Softsign, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU("tanh"),
    "softplus": lambda: nn.Softplus(beta=2.0, threshold=3.0),
}


@needs_cupy
@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("name", list(FUSED_ACTIVATIONS))
def test_fused_backward(name, dtype, rng):
    x = (rng.standard_normal((7, 33)) * 3).astype(dtype)
    x[0, :3] = 0.0  # the kinks
    compare_module(FUSED_ACTIVATIONS[name]().to(dtype), (x,), devices=("cpu", "cupy"), n=64)


@needs_cupy
def test_fused_backward_strided_gradient(rng):
    """The fused kernel takes dy through its strides (a transposed view)."""
    from gpunet.ops.activation import act_backward, act_forward
    be = gpunet.get_backend("cupy")
    x = rng.standard_normal((6, 5)).astype(np.float32)
    dy = rng.standard_normal((5, 6)).astype(np.float32).T
    y, ctx = act_forward(be, "softsign", be.asarray(x))
    dx = act_backward(be, ctx, be.asarray(np.ascontiguousarray(dy.T)).T)
    assert_close(dx, dy / (1 + np.abs(x)) ** 2, name="softsign dx")


@pytest.mark.parametrize("name,factory,ref,_", KERNEL_ACTS, ids=[a[0] for a in KERNEL_ACTS])
def test_zero_dim_input_keeps_its_shape(name, factory, ref, _, device):
    """A 0-d input gives a 0-d output and gradient, as on cpu and in PyTorch
    (the kernel path once returned shape (1,))."""
    m = make(factory, np.float32, device)
    x = np.float32(0.75)
    y = m(m.backend.asarray(x))
    dx = m.backward(m.backend.asarray(np.float32(2.0)))
    assert y.shape == () and dx.shape == ()
    cpu = make(factory, np.float32)
    assert_close(gpunet.to_numpy(y), cpu(np.asarray(x)))
    assert_close(gpunet.to_numpy(dx), cpu.backward(np.asarray(np.float32(2.0))))
