"""The activation kernels on float16 and bfloat16 storage (float32 compute,
one rounding; half2/bfloat162 vectors where aligned) against the cpu
reference, which computes the same in NumPy (gpunet/ops/half.py)."""
import numpy as np
import pytest

import gpunet
from gpunet import dtypes, nn, testing

KERNELS = ("act_forward", "act_backward")
HALF = {"bfloat16": dtypes.bfloat16, "float16": dtypes.float16}
MODULES = [("relu", nn.ReLU), ("leaky_relu", lambda: nn.LeakyReLU(0.2)), ("sigmoid", nn.Sigmoid),
           ("tanh", nn.Tanh), ("softsign", nn.Softsign), ("gelu", nn.GELU), ("softplus", lambda: nn.Softplus(2.0, 3.0))]


def forward_backward(make, name, device, x, dy):
    m = make().to(device, name)
    be = m.backend
    y = m(be.asarray(x))
    dx = m.backward(be.asarray(dy))
    return gpunet.to_numpy(y), gpunet.to_numpy(dx)


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("kind, make", MODULES, ids=[k for k, _ in MODULES])
def test_bfloat16_float16_activation_kernels_match_cpu(kind, make, name, offset, rng, schedule):
    """1003 elements: the 8-wide vector loop and a 3-element tail (aligned),
    or the scalar loop over a view that starts one element in (misaligned)."""
    n = 1003
    x = (rng.standard_normal(n + offset) * 3).astype(HALF[name])[offset:]
    dy = rng.standard_normal(n + offset).astype(HALF[name])[offset:]
    assert (x.ctypes.data % 16 == 0) == (offset == 0)
    y_cpu, dx_cpu = forward_backward(make, name, "cpu", x, dy)
    be = gpunet.get_backend("sim")
    xs = np.zeros(n + offset, HALF[name])[offset:]  # the same alignment on sim
    xs[...] = x
    y_sim, dx_sim = forward_backward(make, name, "sim", xs, dy)
    for got, ref in ((y_sim, y_cpu), (dx_sim, dx_cpu)):
        assert got.dtype == HALF[name]
        testing.assert_close(got, ref)
    assert be.kernels.calls["act_forward"] and be.kernels.calls["act_backward"]


@pytest.mark.fallback("gelu")  # approximate="tanh" has no kernel: array code, as for float32
@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_activation_without_kernel_computes_as_cpu_on_sim(name, rng):
    x = (rng.standard_normal(64) * 3).astype(HALF[name])
    dy = rng.standard_normal(64).astype(HALF[name])
    make = lambda: nn.GELU(approximate="tanh")  # noqa: E731
    for got, want in zip(forward_backward(make, name, "sim", x, dy), forward_backward(make, name, "cpu", x, dy)):
        assert got.dtype == want.dtype == HALF[name]
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_activation_binding_checks_dtypes(name, schedule):
    k = gpunet.get_backend("sim").kernels
    x = np.ones(8, HALF[name])
    bits = x.view(np.int16) if name == "bfloat16" else x
    k.act_forward("relu", bits, bits, 0.0, 0.0, 0)  # in place, as the float32 kernels allow
    with pytest.raises(TypeError, match="argument 'y': expected the dtype of 'x'"):
        k.act_forward("relu", bits, np.empty(8, np.float32), 0.0, 0.0, 0)
    with pytest.raises(TypeError, match="argument 'x': expected dtype float32, float16 or bfloat16"):
        k.act_forward("relu", np.ones(8, np.int32), np.ones(8, np.int32), 0.0, 0.0, 0)
