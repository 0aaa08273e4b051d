"""Dropout: the counter-based generator, train/eval behaviour, scaling,
expectation, reproducibility from the seed, and identical masks on every backend."""
import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.ops import dropout as ops

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("dropout_apply",)

M64 = 2 ** 64


def _splitmix64(seed, n):
    """SplitMix64 as a sequential generator (Steele, Lea, Flood 2014): the oracle."""
    state, out = seed, []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) % M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M64
        out.append(z ^ (z >> 31))
    return out


def test_random_bits_are_splitmix64():
    # the published first outputs of SplitMix64 seeded with 1234567
    assert _splitmix64(1234567, 3) == [6457827717110365317, 3203168211198807973, 9817491932198370423]
    ref = [z >> 32 for z in _splitmix64(2 ** 63 + 12345, 40)]
    assert ops.random_bits(np, 2 ** 63 + 12345, 0, 40).tolist() == ref
    assert ops.random_bits(np, 2 ** 63 + 12345, 17, 23).tolist() == ref[17:]  # counter-based: any offset


def test_random_bits_are_uniform():
    bits = ops.random_bits(np, 7, 0, 1 << 16)
    counts = np.bincount((bits >> np.uint64(28)).astype(np.int64), minlength=16)
    expected = (1 << 16) / 16
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 37.7  # the 0.999 quantile of chi-square with 15 degrees of freedom


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_training_drops_and_scales(p, rng):
    x = rng.standard_normal((64, 257)).astype(np.float32) + 3
    drop = nn.Dropout(p)
    y = drop(x)
    kept = y != 0
    n = x.size
    assert abs(1 - kept.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    assert np.array_equal(y[kept], x[kept] * np.float32(1 / (1 - p)))
    # inverted dropout keeps the expectation: E[y] = E[x]
    assert abs(y.mean() - x.mean()) < 4 * x.std() * np.sqrt(p / (1 - p) / n) + 4 * 3 * np.sqrt(p / (1 - p) / n)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = drop.backward(dy)
    assert np.array_equal(dx, np.where(kept, dy * np.float32(1 / (1 - p)), 0))


def test_mask_is_a_function_of_seed_and_offset(rng):
    x = np.ones((5, 40), np.float32)
    drop = nn.Dropout(0.5)
    gpunet.manual_seed(11)
    a, b = drop(x), drop(x)
    gpunet.manual_seed(11)
    assert np.array_equal(drop(x), a) and np.array_equal(drop(x), b)
    assert not np.array_equal(a, b)  # the second call draws at the next offset
    assert np.array_equal(a != 0, ops.random_bits(np, 11, 0, 200).reshape(5, 40) >= ops.threshold(0.5))
    assert np.array_equal(b != 0, ops.random_bits(np, 11, 200, 200).reshape(5, 40) >= ops.threshold(0.5))
    gpunet.manual_seed(12)
    assert not np.array_equal(drop(x), a)


def test_eval_and_p_zero_are_identity(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for drop in (nn.Dropout(0.3).eval(), nn.Dropout(0.0)):
        assert np.array_equal(drop(x), x)
        assert np.array_equal(drop.backward(2 * x), 2 * x)


def test_p_one_gives_zeros(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    drop = nn.Dropout(1.0)
    assert not drop(x).any()
    assert not drop.backward(x).any()


def test_bad_arguments():
    for p in (-0.1, 1.5, "0.5", None, True):
        with pytest.raises(ValueError, match="p: dropout probability"):
            nn.Dropout(p)
    drop = nn.Dropout()
    with pytest.raises(TypeError, match="input.*float32"):
        drop(np.zeros(3, np.float64))
    drop(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="grad_output.*shape"):
        drop.backward(np.zeros(4, np.float32))


# ---------------------------------------------------------------- kernel parity (sim/cuda vs cpu)
@pytest.mark.parametrize("shape,p", [((1,), 0.5), ((7, 143), 0.25), ((2, 3, 5), 0.9)])  # tails, odd sizes
def test_masks_identical_on_every_backend(kernel_device, schedule, shape, p, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    out = {}
    for dev in ("cpu", kernel_device):
        be = gpunet.get_backend(dev)
        gpunet.manual_seed(2 ** 40 + 5)
        drop = nn.Dropout(p).to(dev)
        drop(be.asarray(x))  # a first call, so the compared one starts at a nonzero offset
        y = drop(be.asarray(x))
        out[dev] = (gpunet.to_numpy(y), gpunet.to_numpy(drop.backward(be.asarray(dy))))
    assert np.array_equal(out["cpu"][0], out[kernel_device][0]), "forward differs"
    assert np.array_equal(out["cpu"][1], out[kernel_device][1]), "backward differs"


def test_misaligned_input_on_kernel_backend(kernel_device, rng):
    """A view starting one float in takes the scalar path of the kernel: same mask."""
    be = gpunet.get_backend(kernel_device)
    base = rng.standard_normal(1001).astype(np.float32)
    ys = []
    for dev in ("cpu", kernel_device):
        gpunet.manual_seed(9)
        ys.append(gpunet.to_numpy(nn.Dropout(0.5).to(dev)(gpunet.get_backend(dev).asarray(base)[1:])))
    assert np.array_equal(ys[0], ys[1])
    if be.kernels is not None:
        with pytest.raises(ValueError, match="threshold"):
            be.kernels.dropout_apply(be.asarray(base), be.asarray(base), 0, 0, 2 ** 32 + 1, 1.0, be.stream())


@pytest.mark.parametrize("aligned", [True, False], ids=["float4", "scalar"])
@pytest.mark.parametrize("offset", [2 ** 31 - 5, 2 ** 32 - 5, 2 ** 63 - 5])
def test_kernel_counter_is_64_bit(kernel_device, offset, aligned):
    """The kernel forms each element's counter offset + k in 64 bits: across
    2^31, 2^32 and 2^63 its mask is still NumPy's, element for element (a
    32-bit counter would repeat or shift the draws past the wrap)."""
    be = gpunet.get_backend(kernel_device)
    if be.kernels is None:
        pytest.skip(f"{kernel_device} has no dropout kernel")
    n, seed, p = 37, 2 ** 40 + 3, 0.5
    x = np.arange(1, n + 1, dtype=np.float32)
    xd = be.asarray(x) if aligned else be.asarray(np.concatenate([[0], x]).astype(np.float32))[1:]
    y = be.xp.empty(n, np.float32)
    be.kernels.dropout_apply(xd, y, seed, offset, ops.threshold(p), 2.0, be.stream())
    keep = ops.random_bits(np, seed, offset, n) >= ops.threshold(p)
    assert np.array_equal(gpunet.to_numpy(y), np.where(keep, 2 * x, 0))
