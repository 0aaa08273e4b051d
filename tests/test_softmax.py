"""Softmax / LogSoftmax with inverse temperature beta: naive loops, gradcheck,
PyTorch parity, the seeds' facts (K = 2 closed form, winner takes all),
stability for huge logits and beta, and the softmax kernels (warp-per-row and
online block-per-row) on the kernel backends against the float64 reference."""
import math

import numpy as np
import pytest

import gpunet
from gpunet import functional as F
from gpunet import nn, testing
from gpunet.backend import sim_module
from gpunet.testing import assert_close

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("softmax_forward", "softmax_backward")


def module(cls, dim=-1, beta=1.0, dtype=np.float64, device="cpu"):
    return cls(dim=dim, beta=beta).to(device, dtype)


def naive_softmax(x, dim, beta, log):
    """One row at a time with Python floats, along `dim`."""
    moved = np.moveaxis(x, dim, -1)
    out = np.empty_like(moved)
    for idx in np.ndindex(moved.shape[:-1]):
        row = [beta * float(v) for v in moved[idx]]
        m = max(row)
        total = sum(math.exp(v - m) for v in row)
        out[idx] = [v - m - math.log(total) if log else math.exp(v - m) / total for v in row]
    return np.moveaxis(out, -1, dim)


CASES = [((3, 5), -1, 1.0), ((2, 3, 4), 1, 2.5), ((4, 3), 0, -0.7), ((2, 6), 1, 40.0)]


def _case(cls, shape, dim, beta):
    log = cls is nn.LogSoftmax
    return testing.OpCase(
        f"{cls.__name__}{shape}dim={dim}beta={beta}", lambda: cls(dim=dim, beta=beta),
        # large beta: keep some probability mass off the max (and beta·x about 1)
        lambda rng: (rng.standard_normal(shape) * (0.1 if abs(beta) > 10 else 1.0),),
        n=shape[dim], kernels=KERNELS, reference=lambda m, x: naive_softmax(x, dim, beta, log))


OP_CASES = [_case(cls, *c) for cls in (nn.Softmax, nn.LogSoftmax) for c in CASES]


@pytest.mark.parametrize("case", OP_CASES, ids=str)
def test_op(case, device):
    """cpu: the naive loop and gradcheck; sim (every schedule), cuda, cupy: parity with float64 cpu."""
    testing.check_op(case, device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,torch_fn", [(nn.Softmax, "softmax"), (nn.LogSoftmax, "log_softmax")])
@pytest.mark.parametrize("shape,dim,beta", CASES)
def test_against_torch(cls, torch_fn, shape, dim, beta, dtype, rng):
    torch = pytest.importorskip("torch")
    # torch rounds beta·x, an error |beta·x|·eps in the exponent: keep |beta·x| about 1
    x = (rng.standard_normal(shape) / max(1.0, abs(beta))).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    m = module(cls, dim, beta, dtype)
    y = m(x)
    dx = m.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch, torch_fn)(beta * xt, dim=dim)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), n=shape[dim], name="forward")
    assert_close(dx, xt.grad.numpy(), n=shape[dim], name="backward")


# ---------------------------------------------------------------- the seeds' facts
@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0, -2.0])
def test_two_classes_is_a_logistic(beta, rng):
    z = rng.standard_normal((6, 2))
    y = module(nn.Softmax, beta=beta)(z)
    np.testing.assert_allclose(y[:, 0], 1 / (1 + np.exp(beta * (z[:, 1] - z[:, 0]))), rtol=1e-14)


def test_winner_takes_all_as_beta_grows():
    z = np.array([[0.3, 1.2, 1.1, -0.4]])
    top = [module(nn.Softmax, beta=b)(z)[0, 1] for b in (0.0, 1.0, 10.0, 100.0, 1e4)]
    assert top[0] == 0.25  # beta = 0: uniform
    assert all(a < b for a, b in zip(top, top[1:-1]))
    np.testing.assert_array_equal(module(nn.Softmax, beta=1e4)(z), [[0, 1, 0, 0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [1.0, 1e4, -1e4])
def test_huge_logits_and_beta_stay_finite(beta, dtype):
    z = np.array([[1e4, -1e4, 9999.0, 0.0], [-3e4, -3e4, -3e4, -3e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = module(nn.Softmax, beta=beta, dtype=dtype)(z)
        lp = module(nn.LogSoftmax, beta=beta, dtype=dtype)(z)
    assert np.isfinite(p).all() and np.isfinite(lp).all()
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(p, naive_softmax(z64, -1, beta, log=False), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(lp, naive_softmax(z64, -1, beta, log=True), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(p[1], [0.25] * 4)


def test_functional_forms(rng):
    x = rng.standard_normal((3, 4, 5))
    np.testing.assert_array_equal(F.softmax(x, 1, beta=2.0), module(nn.Softmax, 1, 2.0)(x))
    np.testing.assert_array_equal(F.log_softmax(x, -1), module(nn.LogSoftmax)(x))
    with pytest.raises(ValueError, match="dim"):
        F.softmax(x, 3)


def test_bad_inputs(rng):
    m = module(nn.Softmax, dim=2)
    with pytest.raises(ValueError, match="dim"):
        m(rng.standard_normal((3, 4)))
    with pytest.raises(TypeError, match="dim"):
        nn.Softmax(dim=1.0)
    with pytest.raises(ValueError, match="input.*NaN"):
        module(nn.Softmax)(np.array([[0.0, np.nan]]))
    with pytest.raises(TypeError, match="input"):
        module(nn.Softmax)(np.zeros((2, 2), np.float32))
    m = module(nn.LogSoftmax)
    m(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.zeros((3, 2)))


# ---------------------------------------------------------------- kernels
@pytest.mark.parametrize("cols", [1, 31, 33, 1000, 1024, 1025, 3000])
@pytest.mark.parametrize("cls", [nn.Softmax, nn.LogSoftmax])
def test_kernel_rows(cls, cols, kernel_device, schedule, rng):
    """Warp-per-row (cols <= 1024) and online block-per-row kernels, several rows,
    beta != 1, against the float64 reference."""
    rows = 3 if cols > 1024 else 5
    x = (4 * rng.standard_normal((rows, cols))).astype(np.float32)
    x[1] += 50.0  # a row with a large common offset
    dy = rng.standard_normal((rows, cols)).astype(np.float32)
    for beta in (1.0, 2.5, -0.75):
        check_kernel(cls, x, dy, -1, beta, kernel_device)


@pytest.mark.skipif(sim_module() == "gpunet._C_simcheck",
                    reason="16,385 blocks take minutes under the race checker (a CI run that only race-checks "
                           "the sim kernels); the row indexing is the plain run's subject, and these kernels "
                           "are race-checked on the smaller shapes")
def test_kernel_more_rows_than_65535(kernel_device, rng):
    """Row counts past 65,535 (the grid's y/z limit, and the block-per-row
    kernels' block cap) in the warp-per-row kernels."""
    x = rng.standard_normal((65_537, 2)).astype(np.float32)
    dy = rng.standard_normal((65_537, 2)).astype(np.float32)
    check_kernel(nn.LogSoftmax, x, dy, -1, 1.0, kernel_device)


@pytest.mark.parametrize("cls", [nn.Softmax, nn.LogSoftmax])
@pytest.mark.parametrize("cols", [40, 1500])
def test_kernel_large_logits_and_beta(cls, cols, kernel_device, schedule, rng):
    # integers: float32 holds them and their differences exactly, so no input
    # rounding is amplified by beta·|x| (a tolerance scaled to that could not fail)
    x = np.round(1e4 * rng.standard_normal((2, cols))).astype(np.float32)
    x[1] = 1e4
    x[1, 7] = 1e4 + 1
    dy = rng.standard_normal((2, cols)).astype(np.float32)
    for beta in (1.0, 1e3):
        y = check_kernel(cls, x, dy, -1, beta, kernel_device)
        assert np.isfinite(gpunet.to_numpy(y)).all()


@pytest.mark.parametrize("cls", [nn.Softmax, nn.LogSoftmax])
@pytest.mark.parametrize("dim", [0, 1])
def test_kernel_non_last_dim(cls, dim, kernel_device, schedule, rng):
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    dy = rng.standard_normal((3, 5, 7)).astype(np.float32)
    check_kernel(cls, x, dy, dim, 1.5, kernel_device)


def check_kernel(cls, x, dy, dim, beta, device):
    be = gpunet.get_backend(device)
    m = module(cls, dim, beta, np.float32, device)
    y = m(be.asarray(x))
    dx = m.backward(be.asarray(dy))
    ref = module(cls, dim, beta)
    y_ref = ref(x.astype(np.float64))
    dx_ref = ref.backward(dy.astype(np.float64))
    n = x.shape[dim]
    assert_close(y, y_ref, n=n, name=f"{cls.__name__} forward beta={beta} on {device}")
    assert_close(dx, dx_ref, n=n, name=f"{cls.__name__} backward beta={beta} on {device}")
    assert y.dtype == np.float32 and y.shape == x.shape and be.owns(y)
    return y


@pytest.mark.no_kernels("a zero-size input has nothing to launch over")
@pytest.mark.parametrize("cls", [nn.Softmax, nn.LogSoftmax])
@pytest.mark.parametrize("shape,dim", [((0, 5), -1), ((3, 0), -1), ((3, 0), 0), ((2, 0, 4), 1)])
def test_zero_size_input(cls, shape, dim, device):
    """Empty in, empty out, in both directions (PyTorch's behaviour); the
    functional forms too."""
    m = module(cls, dim=dim, dtype=np.float32, device=device)
    x = m.backend.asarray(np.zeros(shape, np.float32))
    assert m(x).shape == shape and m.backward(m.backend.asarray(np.zeros(shape, np.float32))).shape == shape
    fn = F.softmax if cls is nn.Softmax else F.log_softmax
    assert fn(x, dim=dim).shape == shape
