"""Flatten: shapes as torch.nn.Flatten, gradient reshaped back, bad dims."""
import numpy as np
import pytest

import gpunet
from gpunet import nn


@pytest.mark.parametrize("shape,start,end,expected", [
    ((2, 3, 4, 5), 1, -1, (2, 60)),
    ((2, 3, 4, 5), 0, -1, (120,)),
    ((2, 3, 4, 5), 1, 2, (2, 12, 5)),
    ((2, 3, 4, 5), -2, -1, (2, 3, 20)),
    ((2, 3), 1, 1, (2, 3)),
    ((0, 3, 2), 1, -1, (0, 6)),
])
@pytest.mark.no_kernels("flatten is a reshape")
def test_shapes_and_gradient(shape, start, end, expected, device, rng):
    be = gpunet.get_backend(device)
    x = be.asarray(rng.standard_normal(shape))
    m = nn.Flatten(start, end).to(device, np.float64)
    y = m(x)
    assert tuple(y.shape) == expected
    np.testing.assert_array_equal(gpunet.to_numpy(y).reshape(-1), gpunet.to_numpy(x).reshape(-1))
    dy = be.asarray(rng.standard_normal(expected))
    dx = m.backward(dy)
    assert tuple(dx.shape) == shape
    np.testing.assert_array_equal(gpunet.to_numpy(dx).reshape(-1), gpunet.to_numpy(dy).reshape(-1))


def test_against_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 4, 5))
    for start, end in [(1, -1), (0, 2), (2, 3)]:
        expected = torch.nn.Flatten(start, end)(torch.tensor(x)).numpy()
        np.testing.assert_array_equal(nn.Flatten(start, end).to(np.float64)(x), expected)


def test_non_contiguous_input(rng):
    x = rng.standard_normal((3, 4, 2)).transpose(0, 2, 1)
    np.testing.assert_array_equal(nn.Flatten()(x), x.reshape(3, 8))


def test_gradcheck(rng):
    gpunet.gradcheck(nn.Flatten().to(np.float64), (rng.standard_normal((2, 3, 2)),))


def test_bad_dims():
    with pytest.raises(ValueError, match="start_dim"):
        nn.Flatten(2, 1)(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="start_dim"):
        nn.Flatten(1, 3)(np.zeros((2, 3)))
    m = nn.Flatten()
    m(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.zeros((2, 11)))
