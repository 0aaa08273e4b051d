"""Linear: gradcheck, a naive loop, PyTorch, kernel parity, bad input, and the bias
kernels through the binding."""
import contextlib

import numpy as np
import pytest

import gpunet
from gpunet import nn, testing

from conftest import close, f32, misaligned, put

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


# ---------------------------------------------------------------- the bias kernels through the binding
BIAS_SHAPES = ((1, 1, 1), (3, 5, 1), (2, 3, 7), (4, 6, 16), (2, 3, 1025), (0, 4, 3))


@pytest.mark.parametrize("aligned", [True, False], ids=["float4", "scalar"])
@pytest.mark.parametrize("n,c,inner", BIAS_SHAPES, ids=str)
def test_bias_add(kb, schedule, n, c, inner, aligned):
    rng = np.random.default_rng(n * 100 + c * 10 + inner)
    y = f32(rng, (n, c, inner))
    b = f32(rng, (c,))
    yd = put(kb, y) if aligned else misaligned(kb, y)
    kb.kernels.bias_add(yd, put(kb, b), inner, kb.stream())
    close(gpunet.to_numpy(yd), y.astype(np.float64) + b[None, :, None].astype(np.float64))


def test_bias_add_linear_and_conv_layouts(kb):
    rng = np.random.default_rng(5)
    lin, conv, b = f32(rng, (8, 10)), f32(rng, (2, 10, 3, 5)), f32(rng, (10,))
    lin_d, conv_d = put(kb, lin), put(kb, conv)
    kb.kernels.bias_add(lin_d, put(kb, b), 1, kb.stream())
    kb.kernels.bias_add(conv_d, put(kb, b), 15, kb.stream())
    close(gpunet.to_numpy(lin_d), lin.astype(np.float64) + b)
    close(gpunet.to_numpy(conv_d), conv.astype(np.float64) + b[None, :, None, None])


@pytest.mark.parametrize("n,c,inner", BIAS_SHAPES + ((64, 3, 300),), ids=str)
def test_bias_grad(kb, schedule, n, c, inner):
    rng = np.random.default_rng(n * 100 + c * 10 + inner + 1)
    dy = f32(rng, (n, c, inner))
    db = put(kb, np.full(c, np.nan, np.float32))
    kb.kernels.bias_grad(put(kb, dy), db, inner, kb.stream())
    close(gpunet.to_numpy(db), dy.astype(np.float64).sum(axis=(0, 2)), rtol=1e-5, atol=1e-4)


def test_bias_grad_is_bitwise_deterministic(kb):
    """Same bits on every run and, in the simulator, under every schedule."""
    dy = put(kb, f32(np.random.default_rng(6), (32, 5, 97)))
    results = []
    for order in (testing.SCHEDULES if kb.name == "sim" else (None,)) * 2:
        with testing.schedule(order) if order else contextlib.nullcontext():
            db = put(kb, np.zeros(5, np.float32))
            kb.kernels.bias_grad(dy, db, 97, kb.stream())
        results.append(gpunet.to_numpy(db).tobytes())
    assert len(set(results)) == 1
