"""Linear: gradcheck, a naive loop, PyTorch, kernel parity, bad input."""
import numpy as np
import pytest

import gpunet
from gpunet import nn, testing

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("bias_add", "bias_grad")


@pytest.mark.parametrize("shape,inf,outf,bias", [((4, 3), 3, 2, True), ((1, 5), 5, 1, False),
                                                 ((2, 3, 7), 7, 4, True)])
def test_gradcheck(shape, inf, outf, bias, rng):
    m = nn.Linear(inf, outf, bias=bias).to(np.float64)
    res = gpunet.gradcheck(m, rng.standard_normal(shape))
    assert res.checked > 0 and res.max_error < 1e-7


def test_forward_matches_naive_loop(rng):
    m = nn.Linear(3, 4)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    w, b = m.weight.data, m.bias.data
    ref = np.zeros((5, 4))
    for n in range(5):
        for o in range(4):
            ref[n, o] = b[o] + sum(float(x[n, i]) * float(w[o, i]) for i in range(3))
    testing.assert_close(m(x), ref)


def test_default_init_bounds_follow_pytorch():
    m = nn.Linear(100, 50)
    bound = 1 / np.sqrt(100)
    assert m.weight.shape == (50, 100) and m.bias.shape == (50,)
    assert np.abs(m.weight.data).max() <= bound and np.abs(m.weight.data).max() > 0.9 * bound
    assert np.abs(m.bias.data).max() <= bound


@pytest.mark.parametrize("bias", [True, False])
def test_against_torch(bias, rng):
    torch = pytest.importorskip("torch")
    ref = torch.nn.Linear(6, 3, bias=bias)
    m = nn.Linear(6, 3, bias=bias)
    m.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = rng.standard_normal((4, 6)).astype(np.float32)
    dy = rng.standard_normal((4, 3)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    testing.assert_close(m(x), yt.detach().numpy(), name="output")
    testing.assert_close(m.backward(dy), xt.grad.numpy(), name="grad_input")
    testing.assert_close(m.weight.grad, ref.weight.grad.numpy(), name="weight.grad")
    if bias:
        testing.assert_close(m.bias.grad, ref.bias.grad.numpy(), name="bias.grad")


@pytest.mark.parametrize("shape", [(1, 1), (33, 17), (2, 5, 3)])
def test_kernel_parity(kernel_device, schedule, shape, rng):
    testing.compare_module(nn.Linear(shape[-1], 9), (rng.standard_normal(shape).astype(np.float32),),
                           devices=("cpu", kernel_device))


def test_bad_input(rng):
    m = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"input: expected last dimension in_features=3, got shape \(4, 5\)"):
        m(rng.standard_normal((4, 5)).astype(np.float32))
    with pytest.raises(TypeError, match="input: expected dtype float32, got float64"):
        m(rng.standard_normal((4, 3)))
    with pytest.raises(TypeError, match="input: expected a numpy.ndarray"):
        m([[1.0, 2.0, 3.0]])
    bad = np.ones((2, 3), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="input: contains 1 NaN/Inf"):
        m(bad)
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 2)
    with pytest.raises(RuntimeError, match="no forward to differentiate"):
        nn.Linear(3, 2).backward(np.ones((1, 2), np.float32))
