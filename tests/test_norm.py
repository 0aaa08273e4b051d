"""LayerNorm, BatchNorm1d/2d: gradcheck (float64), PyTorch parity (outputs,
gradients, running statistics), kernel parity on sim/cuda, bad input."""
import copy

import numpy as np
import pytest

import gpunet
from gpunet import nn, testing
from gpunet.testing import assert_close

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("layernorm_forward", "layernorm_backward")


def _randomize(module, rng):
    """Random affine parameters, so that a wrong weight/bias gradient shows."""
    for p in module.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    return module


def _torch_randomize(tm):
    import torch
    torch.manual_seed(0)
    with torch.no_grad():
        for p in tm.parameters():
            p.normal_()
    return tm


def _load_from_torch(m, tm):
    # copies: the loaded arrays must not share memory with torch's buffers,
    # or both models would update the same running statistics
    m.load_state_dict({k: v.numpy().copy() for k, v in tm.state_dict().items()})
    return m


# ---------------------------------------------------------------- LayerNorm
LN_CASES = [  # input shape, normalized_shape, elementwise_affine, bias
    ((3, 5), 5, True, True),
    ((2, 3, 4), (3, 4), True, True),
    ((4, 6), 6, False, True),
    ((2, 1, 3), 3, True, False),
    ((3, 1), 1, True, True),
]


def _ln_case(shape, norm, affine=True, bias=True):
    width = int(np.prod(norm))
    return testing.OpCase(
        f"LayerNorm{shape}norm={norm}affine={affine}bias={bias}",
        lambda: _randomize(nn.LayerNorm(norm, elementwise_affine=affine, bias=bias), np.random.default_rng(7)),
        lambda rng: (rng.standard_normal(shape) * 2 + 1,), n=width, kernels=KERNELS)


# the module's shapes, then the kernels' regimes: width 1, odd widths, rows
# held in registers by the warp (up to 1024 floats, float4 or scalar loads)
# or re-read (longer), more rows than one block's chunk of dw/db
LN_OP_CASES = [_ln_case(*c) for c in LN_CASES] + [
    _ln_case((rows, width), width)
    for rows, width in [(3, 33), (2, 1000), (2, 1023), (2, 1024), (3, 1025), (70, 33), (5, 64)]]


@pytest.mark.parametrize("case", LN_OP_CASES, ids=str)
def test_layernorm_op(case, device):
    """cpu: gradcheck; sim (every schedule), cuda, cupy: parity with float64 cpu."""
    testing.check_op(case, device)


# Width 1 is left to gradcheck: the exact input gradient is 0, and torch's
# float32 rounding of x - mean, amplified by rstd = 1/sqrt(eps), gives ~1e-4.
@pytest.mark.parametrize("shape,norm,affine,bias", [c for c in LN_CASES if c[1] != 1])
def test_layernorm_vs_torch(shape, norm, affine, bias, rng):
    torch = pytest.importorskip("torch")
    tm = _torch_randomize(torch.nn.LayerNorm(norm, elementwise_affine=affine, bias=bias))
    m = _load_from_torch(nn.LayerNorm(norm, elementwise_affine=affine, bias=bias), tm)
    assert list(m.state_dict()) == list(tm.state_dict())
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = tm(xt)
    yt.backward(torch.tensor(dy))
    y = m(x)
    dx = m.backward(dy)
    assert_close(y, yt.detach().numpy(), n=64, name="output")
    assert_close(dx, xt.grad.numpy(), n=256, name="grad input")
    for n, p in m.named_parameters():
        assert_close(p.grad, dict(tm.named_parameters())[n].grad.numpy(), n=256, name=f"{n}.grad")


def test_layernorm_normalises(rng):
    """Without affine parameters each row has mean 0 and biased variance 1/(1 + eps/var)."""
    x = rng.standard_normal((4, 50)) * 5 + 3
    y = nn.LayerNorm(50, elementwise_affine=False).to(np.float64)(x)
    var = x.var(axis=1)
    assert_close(y.mean(axis=1), np.zeros(4), atol=1e-12)
    assert_close(y.var(axis=1), var / (var + 1e-5), rtol=1e-12)


def _parity(ref, x, dy, device, n=1, params=True):
    """ref: a float64 module on cpu; runs a float32 copy on `device` and
    compares output, input gradient and parameter gradients with ref's."""
    be = gpunet.get_backend(device)
    dev = copy.deepcopy(ref).to(be, np.float32)
    y64 = ref(x)
    dx64 = ref.backward(dy)
    y = dev(be.asarray(x, np.float32))
    dx = dev.backward(be.asarray(dy, np.float32))
    assert_close(y, y64, n=n, name=f"output on {device}")
    assert_close(dx, dx64, n=n, name=f"grad input on {device}")
    if params:
        for (name, p), (_, p64) in zip(dev.named_parameters(), ref.named_parameters()):
            assert_close(p.grad, p64.grad, n=n, name=f"{name}.grad on {device}")
    return dev


def _near_eps_rows(rng, rows: int, width: int, eps: float = 1e-5):
    """Rows whose variance makes eps matter: two constant rows (variance 0,
    rstd = 1/sqrt(eps)) and rows of variance eps/4 .. 4·eps, around mean 0 (a
    float32 mean of a large constant is off by an ulp, which rstd would
    amplify 300-fold into the outputs). Here 1/sqrt(var + eps) and
    look-alikes such as 1/(sqrt(var) + eps) differ by 30% and more. Values
    are float32-exact, so the float64 reference sees the same input."""
    x = rng.standard_normal((rows, width))
    x /= x.std(axis=-1, keepdims=True)
    x *= np.sqrt(eps * np.geomspace(0.25, 4.0, rows))[:, None]
    x[0] = 0.0
    x[1] = -2.0 ** -12
    return x.astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("width", [33, 1000])
def test_layernorm_kernel_parity_variance_near_eps(kernel_device, schedule, width, rng):
    ref = _randomize(nn.LayerNorm(width).to(np.float64), rng)
    _parity(ref, _near_eps_rows(rng, 6, width), rng.standard_normal((6, width)), kernel_device, n=width)


def test_layernorm_backward_deterministic(kernel_device, rng):
    be = gpunet.get_backend(kernel_device)
    m = _randomize(nn.LayerNorm(37), rng).to(be)
    x = be.asarray(rng.standard_normal((300, 37)), np.float32)
    dy = be.asarray(rng.standard_normal((300, 37)), np.float32)
    runs = []
    for _ in range(2):
        m.zero_grad()
        m(x)
        dx = m.backward(dy)
        runs.append([gpunet.to_numpy(a).copy() for a in (dx, m.weight.grad, m.bias.grad)])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_layernorm_bad_input():
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm(0)
    with pytest.raises(ValueError, match="eps"):
        nn.LayerNorm(4, eps=-1.0)
    m = nn.LayerNorm((3, 4))
    with pytest.raises(ValueError, match="input.*normalized_shape"):
        m(np.zeros((2, 4, 3), np.float32))
    with pytest.raises(TypeError, match="input.*float32"):
        m(np.zeros((2, 3, 4), np.float64))
    with pytest.raises(RuntimeError, match="no forward to differentiate"):
        m.backward(np.zeros((2, 3, 4), np.float32))
    m(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.zeros((3, 3, 4), np.float32))


def test_layernorm_binding_rejects_bad_shapes(kernel_device):
    be = gpunet.get_backend(kernel_device)
    if be.kernels is None:
        pytest.skip("no compiled kernels on this backend")
    xp = be.xp
    x = xp.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="weight"):
        be.kernels.layernorm_forward(x, xp.ones(4, np.float32), xp.zeros(5, np.float32), xp.empty_like(x),
                                  xp.empty(3, np.float32), xp.empty(3, np.float32), 1e-5, be.stream())
    with pytest.raises(TypeError, match="x"):
        be.kernels.layernorm_forward(x.astype(np.float64), xp.ones(5, np.float32), xp.zeros(5, np.float32),
                                  xp.empty_like(x), xp.empty(3, np.float32), xp.empty(3, np.float32), 1e-5,
                                  be.stream())


# ---------------------------------------------------------------- BatchNorm
BN_CASES = [  # class, input shape
    (nn.BatchNorm1d, (6, 3)),
    (nn.BatchNorm1d, (4, 3, 5)),
    (nn.BatchNorm2d, (3, 2, 4, 3)),
]


def _torch_bn(cls, **kw):
    import torch
    return {nn.BatchNorm1d: torch.nn.BatchNorm1d, nn.BatchNorm2d: torch.nn.BatchNorm2d}[cls](**kw)


@pytest.mark.parametrize("cls,shape", BN_CASES)
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradcheck(cls, shape, training, rng):
    m = _randomize(cls(shape[1]).to(np.float64), rng)
    m(rng.standard_normal(shape) * 2 + 1)  # move the running statistics away from 0/1
    m.train(training)
    gpunet.gradcheck(m, (rng.standard_normal(shape) * 2 + 1,))


@pytest.mark.parametrize("cls,shape", BN_CASES)
@pytest.mark.parametrize("kw", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
                                {"momentum": 0.3, "eps": 1e-3}])
def test_batchnorm_vs_torch(cls, shape, kw, rng):
    torch = pytest.importorskip("torch")
    C = shape[1]
    tm = _torch_randomize(_torch_bn(cls, num_features=C, **kw))
    m = _load_from_torch(cls(C, **kw), tm)
    assert list(m.state_dict()) == list(tm.state_dict())
    tparams = dict(tm.named_parameters())

    def step(tag):
        x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        tm.zero_grad()
        m.zero_grad()
        yt = tm(xt)
        yt.backward(torch.tensor(dy))
        assert_close(m(x), yt.detach().numpy(), n=64, name=f"{tag} output")
        assert_close(m.backward(dy), xt.grad.numpy(), n=1024, name=f"{tag} grad input")
        for n, p in m.named_parameters():
            assert_close(p.grad, tparams[n].grad.numpy(), n=1024, name=f"{tag} {n}.grad")

    for i in range(3):
        step(f"train step {i}")
    tstate = tm.state_dict()
    for k, v in m.state_dict().items():
        t = tstate[k].numpy()
        assert (v.dtype, v.shape) == (t.dtype, t.shape), k
        if v.dtype.kind == "f":
            assert_close(v, t, n=64, name=k)
        else:
            assert np.array_equal(v, t), k
    m.eval()
    tm.eval()
    step("eval")
    if m.track_running_stats:
        assert int(m.num_batches_tracked) == 3


def test_batchnorm_eval_uses_running_stats(rng):
    m = nn.BatchNorm1d(2).to(np.float64)
    m.running_mean[...] = [1.0, -2.0]
    m.running_var[...] = [4.0, 0.25]
    m.eval()
    x = rng.standard_normal((5, 2))
    expected = (x - m.running_mean) / np.sqrt(m.running_var + 1e-5)
    assert_close(m(x), expected, rtol=1e-12, atol=1e-12)
    assert int(m.num_batches_tracked) == 0


def test_batchnorm_running_stats_update(rng):
    """One training step: running = 0.9·old + 0.1·batch, with the unbiased variance."""
    m = nn.BatchNorm2d(3).to(np.float64)
    x = rng.standard_normal((4, 3, 2, 5)) * 2 + 1
    m(x)
    flat = x.transpose(1, 0, 2, 3).reshape(3, -1)
    assert_close(m.running_mean, 0.1 * flat.mean(axis=1), rtol=1e-12, atol=1e-15)
    assert_close(m.running_var, 0.9 + 0.1 * flat.var(axis=1, ddof=1), rtol=1e-12, atol=1e-15)
    assert m.num_batches_tracked.dtype == np.int64 and int(m.num_batches_tracked) == 1


@pytest.mark.fallback("batch_norm")
@pytest.mark.parametrize("cls,shape", BN_CASES)
def test_batchnorm_device_parity(device, cls, shape, rng):
    ref = _randomize(cls(shape[1]).to(np.float64), rng)
    dev = _parity(ref, rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape), device, n=64)
    assert_close(dev.running_var, ref.running_var, name="running_var")


@pytest.mark.fallback("batch_norm")
def test_batchnorm_device_parity_variance_near_eps(device, rng):
    """Channels with variance 0 and near eps (as _near_eps_rows) reach the eps term."""
    n, c, h, w = 4, 5, 3, 3
    x = _near_eps_rows(rng, c, n * h * w).reshape(c, n, h, w).transpose(1, 0, 2, 3)
    ref = _randomize(nn.BatchNorm2d(c).to(np.float64), rng)
    _parity(ref, x, rng.standard_normal(x.shape), device, n=n * h * w)


def test_batchnorm_bad_input():
    with pytest.raises(ValueError, match="num_features"):
        nn.BatchNorm1d(0)
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm2d(3, momentum=2.0)
    m = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="input.*3 channels"):
        m(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="input.*2-D or 3-D"):
        m(np.zeros((4, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="input.*4-D"):
        nn.BatchNorm2d(3)(np.zeros((4, 3, 2), np.float32))
    m(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.ones((2, 4), np.float32))


def test_batchnorm_without_running_stats_has_no_buffers():
    m = nn.BatchNorm1d(3, track_running_stats=False)
    assert list(m.state_dict()) == ["weight", "bias"]
    m.eval()  # still normalises with the batch statistics
    y = m(np.arange(12, dtype=np.float32).reshape(4, 3))
    assert_close(y.mean(axis=0), np.zeros(3), atol=1e-6)


@pytest.mark.fallback("batch_norm")
@pytest.mark.no_kernels("batch norm is array code; an empty batch has nothing to launch")
@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm1d, (0, 3)), (nn.BatchNorm1d, (0, 3, 5)),
                                       (nn.BatchNorm2d, (0, 3, 4, 4)), (nn.BatchNorm2d, (2, 3, 0, 4))])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_empty_batch_as_torch(device, cls, shape, training):
    """An empty batch gives an empty output, an empty input gradient, zero
    parameter gradients, and counts as a batch without moving the running
    statistics (PyTorch's behaviour, checked against it)."""
    torch = pytest.importorskip("torch")
    m = cls(3).to(device).train(training)
    tm = getattr(torch.nn, cls.__name__)(3).train(training)
    x = np.zeros(shape, np.float32)
    y = m(m.backend.asarray(x))
    dx = m.backward(m.backend.asarray(np.ones(shape, np.float32)))
    tx = torch.zeros(shape, requires_grad=True)
    tm(tx).sum().backward()
    assert y.shape == shape and dx.shape == shape
    for ours, theirs in [(m.weight.grad, tm.weight.grad), (m.bias.grad, tm.bias.grad),
                         (m.running_mean, tm.running_mean), (m.running_var, tm.running_var),
                         (m.num_batches_tracked, tm.num_batches_tracked)]:
        np.testing.assert_array_equal(gpunet.to_numpy(ours), theirs.numpy())


@pytest.mark.no_kernels("an empty batch has no rows to launch over")
def test_layernorm_empty_batch(device):
    m = nn.LayerNorm(5).to(device)
    y = m(m.backend.asarray(np.zeros((2, 0, 5), np.float32)))
    dx = m.backward(m.backend.asarray(np.zeros((2, 0, 5), np.float32)))
    assert y.shape == dx.shape == (2, 0, 5)
    np.testing.assert_array_equal(gpunet.to_numpy(m.weight.grad), np.zeros(5))
    np.testing.assert_array_equal(gpunet.to_numpy(m.bias.grad), np.zeros(5))
