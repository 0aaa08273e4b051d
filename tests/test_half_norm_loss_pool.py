"""Half precision (float16, bfloat16) for softmax, pooling and dropout.

Softmax/log-softmax run their kernels on half storage (float32 max, sum and
gradient, each output rounded once); the cpu reference computes the same in
NumPy (gpunet/ops/half.py), so sim matches cpu at the tolerance of one
rounding plus the reduction. Every result is also held to the float32
computation on the inputs' values with gpunet.testing.tolerances(dtype, n),
n the reduction length. Pooling and dropout compute half on cpu (float32,
one rounding); their kernels' half paths are tested in
tests/test_half_kernels_norm_loss.py.
"""
import numpy as np
import pytest

import gpunet
from gpunet import dtypes, nn, testing
from gpunet.ops import softmax as softmax_ops

KERNELS = ("softmax_forward", "softmax_backward")
HALF = {"bfloat16": dtypes.bfloat16, "float16": dtypes.float16}
SOFTMAX = [("softmax", lambda: nn.Softmax(dim=-1)), ("log_softmax", lambda: nn.LogSoftmax(dim=-1)),
           ("softmax_beta", lambda: nn.Softmax(dim=1, beta=-2.0))]


def forward_backward(make, device, dtype, x, dy):
    """Output and input gradient of a fresh module on `device` in `dtype`, as host arrays."""
    m = make().to(device, dtype)
    be = m.backend
    y = m(be.asarray(x))
    dx = m.backward(be.asarray(dy))
    return gpunet.to_numpy(y), gpunet.to_numpy(dx)


def float32_reference(make, x, dy):
    """The same module in float32 on the half inputs' values."""
    return forward_backward(make, "cpu", "float32", x.astype(np.float32), dy.astype(np.float32))


@pytest.mark.parametrize("cols", [100, 1500], ids=["warp_row", "block_row"])
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("kind, make", SOFTMAX, ids=[k for k, _ in SOFTMAX])
def test_bfloat16_float16_softmax_kernels_match_cpu_and_float32(kind, make, name, cols, rng, schedule):
    """A warp per row (100 columns) and a block per row (1500: the online max/sum)."""
    x = (rng.standard_normal((6, cols)) * 4).astype(HALF[name])
    dy = rng.standard_normal((6, cols)).astype(HALF[name])
    y_cpu, dx_cpu = forward_backward(make, "cpu", name, x, dy)
    be = gpunet.get_backend("sim")
    y_sim, dx_sim = forward_backward(make, "sim", name, x, dy)
    y32, dx32 = float32_reference(make, x, dy)
    for got, ref, ref32, what in ((y_sim, y_cpu, y32, "y"), (dx_sim, dx_cpu, dx32, "dx")):
        assert got.dtype == HALF[name] and ref.dtype == HALF[name]
        testing.assert_close(got, ref, n=cols, name=f"{what} sim vs cpu")
        # the backward reads the rounded y: its error is the forward's, scaled by the row's gradient
        scale = 1.0 if what == "y" else 1.0 + np.abs(dy.astype(np.float32)).sum(axis=1, keepdims=True).max()
        for dev, arr in (("sim", got), ("cpu", ref)):
            rtol, atol = testing.tolerances(HALF[name], cols)
            testing.assert_close(arr, ref32, n=cols, rtol=rtol * scale, atol=atol * scale,
                                 name=f"{what} {dev} vs float32")
    assert be.kernels.calls["softmax_forward"] and be.kernels.calls["softmax_backward"]


@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_softmax_large_logits_and_float32_gradient(name, device):
    """Logits near the dtype's largest finite value: the max shift keeps every
    exponent <= 0, so no inf/inf; a float32 incoming gradient (a loss's, at
    the op level) is taken with the half output and gives a half gradient."""
    be = gpunet.get_backend(device)
    big = float(dtypes.finfo(HALF[name]).max)
    x = be.asarray(np.array([[big, big / 2, -big, 0.0], [-big, -big, -big, -big]], HALF[name]))
    y, _ = softmax_ops.softmax_forward(be, x, 1, log=True)
    y = gpunet.to_numpy(y).astype(np.float32)
    with np.errstate(over="ignore"):  # x - max: -inf past float32's range (bfloat16), or on rounding (float16)
        shifted = (gpunet.to_numpy(x)[0].astype(np.float32) - np.float32(big)).astype(HALF[name])
    np.testing.assert_array_equal(y[0], shifted.astype(np.float32))  # log(sum) = log(1 + 0) = 0
    np.testing.assert_allclose(y[1], np.log(0.25), rtol=dtypes.eps(HALF[name]))
    p, ctx = softmax_ops.softmax_forward(be, x, 1)
    np.testing.assert_array_equal(gpunet.to_numpy(p).astype(np.float32), [[1, 0, 0, 0], [0.25] * 4])
    dx = gpunet.to_numpy(softmax_ops.softmax_backward(be, ctx, be.asarray(np.arange(8, dtype=np.float32).reshape(2, 4))))
    assert dx.dtype == HALF[name]
    np.testing.assert_array_equal(dx.astype(np.float32), [[0, 0, 0, 0], [-0.375, -0.125, 0.125, 0.375]])


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_softmax_binding_checks_dtypes(name, schedule):
    k = gpunet.get_backend("sim").kernels
    x = np.zeros((2, 8), HALF[name])
    bits = x.view(np.int16) if name == "bfloat16" else x
    y = np.empty_like(bits)
    k.softmax_forward(bits, y, 1.0, False, 0)
    np.testing.assert_array_equal((y.view(HALF[name]) if name == "bfloat16" else y).astype(np.float32), 0.125)
    with pytest.raises(TypeError, match="argument 'y': expected the dtype of 'x'"):
        k.softmax_forward(bits, np.empty((2, 8), np.float32), 1.0, False, 0)
    with pytest.raises(TypeError, match="argument 'dy': expected the dtype of 'y'"):
        k.softmax_backward(bits, np.zeros((2, 8), np.float32), y, 1.0, False, 0)
    with pytest.raises(ValueError, match="argument 'x'"):
        k.softmax_forward(bits.reshape(-1), y.reshape(-1), 1.0, False, 0)


POOLS = [("max_pool2d", lambda: nn.MaxPool2d(3, stride=2, padding=1), 9),
         ("avg_pool2d", lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), 9),
         ("adaptive_avg_pool2d", lambda: nn.AdaptiveAvgPool2d((3, 2)), 12),
         ("adaptive_max_pool2d", lambda: nn.AdaptiveMaxPool2d(2), 9)]


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("kind, make, window", POOLS, ids=[k for k, _, _ in POOLS])
def test_bfloat16_float16_pooling_on_cpu_matches_float32(kind, make, window, name, rng):
    """float32 compute, one rounding: max pooling is exact, averages within one rounding."""
    x = (rng.standard_normal((2, 3, 7, 6)) * 3).astype(HALF[name])
    dy = rng.standard_normal(make()(x.astype(np.float32)).shape).astype(HALF[name])
    y, dx = forward_backward(make, "cpu", name, x, dy)
    y32, dx32 = float32_reference(make, x, dy)
    assert y.dtype == dx.dtype == HALF[name]
    np.testing.assert_array_equal(y.astype(np.float32), y32.astype(HALF[name]).astype(np.float32))
    np.testing.assert_array_equal(dx.astype(np.float32), dx32.astype(HALF[name]).astype(np.float32))
    testing.assert_close(dx, dx32, n=window)


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_dropout_on_cpu_keeps_the_float32_mask(name, rng):
    """The same mask as float32 (same seed), kept values scaled in float32 and rounded once."""
    x = rng.standard_normal((4, 50)).astype(HALF[name])
    dy = rng.standard_normal((4, 50)).astype(HALF[name])
    gpunet.manual_seed(7)
    y, dx = forward_backward(lambda: nn.Dropout(0.3), "cpu", name, x, dy)
    gpunet.manual_seed(7)
    y32, dx32 = float32_reference(lambda: nn.Dropout(0.3), x, dy)
    assert y.dtype == dx.dtype == HALF[name] and 0 < (y32 == 0).sum() < y.size
    np.testing.assert_array_equal(y.astype(np.float32), y32.astype(HALF[name]).astype(np.float32))
    np.testing.assert_array_equal(dx.astype(np.float32), dx32.astype(HALF[name]).astype(np.float32))


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_embedding_on_cpu_gathers_exactly_and_sums_in_float32(name, rng):
    """The gather copies half rows exactly; the backward scatter-add sums each
    row's gradients in float32 and rounds once (a row picked 300 times)."""
    w = rng.standard_normal((5, 8)).astype(HALF[name])
    idx = np.array([1] * 300 + [3, 0, 3])
    dy = rng.standard_normal((idx.size, 8)).astype(HALF[name])
    m = nn.Embedding(5, 8, padding_idx=4).to("cpu", name)
    m.weight.data[...] = w
    y = m(idx)
    m.backward(dy)
    np.testing.assert_array_equal(y.astype(np.float32), w[idx].astype(np.float32))
    ref = np.zeros((5, 8), np.float32)
    np.add.at(ref, idx, dy.astype(np.float32))
    assert m.weight.grad.dtype == HALF[name]
    np.testing.assert_array_equal(m.weight.grad.astype(np.float32), ref.astype(HALF[name]).astype(np.float32))


def assert_matches_float32(got, ref32, dtype, n, name):
    """One rounding to `dtype` plus float32 sums of n terms (gpunet.testing.tolerances)."""
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}"
    testing.assert_close(got, ref32, n=n, name=name)


@pytest.mark.fallback("batch_norm")  # array code on every backend
@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("scale", [1.0, 1e-3], ids=["unit", "tiny_variance"])
def test_bfloat16_float16_batch_norm_float32_statistics(scale, name, device, rng):
    """Training (batch statistics, gradient through them) and eval (running
    statistics), against float32 on the same values. tiny_variance: values
    ~1e-3, variance ~1e-6, near eps: in 16 bits its square terms (~1e-6 to
    1e-12) would lose everything below float16's subnormals."""
    x = (rng.standard_normal((4, 3, 5, 5)) * scale).astype(HALF[name])
    dy = rng.standard_normal(x.shape).astype(HALF[name])
    count = 4 * 25
    m = nn.BatchNorm2d(3).to(device, name)
    m32 = nn.BatchNorm2d(3)
    for train in (True, False):
        m.train(train)
        m32.train(train)
        y, dx = (gpunet.to_numpy(a) for a in (m(m.backend.asarray(x)), m.backward(m.backend.asarray(dy))))
        y32, dx32 = m32(x.astype(np.float32)), m32.backward(dy.astype(np.float32))
        assert np.isfinite(y.astype(np.float32)).all()
        # the backward's sums of n terms are scaled by rstd: relative to the gradient's size
        big = np.abs(dx32).max()
        assert_matches_float32(y, y32, HALF[name], count, f"y train={train}")
        rtol, atol = testing.tolerances(HALF[name], count)
        testing.assert_close(dx, dx32, rtol=rtol, atol=atol * max(big, 1.0), name=f"dx train={train}")
        assert dx.dtype == HALF[name]
    assert m.running_var.dtype == HALF[name]
    testing.assert_close(m.running_var, m32.running_var, name="running_var")
    for p, p32 in ((m.weight, m32.weight), (m.bias, m32.bias)):
        assert p.grad.dtype == HALF[name]
        testing.assert_close(gpunet.to_numpy(p.grad), p32.grad, n=count,
                             atol=testing.tolerances(HALF[name], count)[1] * max(np.abs(p32.grad).max(), 1.0))
