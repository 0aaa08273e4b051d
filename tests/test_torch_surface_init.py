"""torch.nn.init's in-place functions on gpunet Parameters: torch's
signatures, the distributions torch's formulas give (bounds and spreads from
the same fans and gains), in place on the parameter's device and dtype."""
import inspect
import math

import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.nn import init

torch = pytest.importorskip("torch")

IN_PLACE = ["uniform_", "normal_", "zeros_", "ones_", "constant_", "xavier_uniform_", "xavier_normal_",
            "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "orthogonal_"]


@pytest.mark.parametrize("name", IN_PLACE)
def test_signature_is_torchs(name):
    mine = inspect.signature(getattr(init, name)).parameters
    theirs = inspect.signature(getattr(torch.nn.init, name)).parameters
    assert list(mine) == list(theirs)
    assert [p.default for p in mine.values()] == [p.default for p in theirs.values()]


def _torch_like(shape, fn, *args, **kwargs):
    t = torch.empty(shape, dtype=torch.float64)
    getattr(torch.nn.init, fn)(t, *args, **kwargs)
    return t.numpy()


@pytest.mark.parametrize("fn,args,kwargs", [
    ("uniform_", (-0.5, 2.0), {}),
    ("normal_", (1.0, 0.3), {}),
    ("xavier_uniform_", (), {"gain": 2.0}),
    ("xavier_normal_", (), {}),
    ("kaiming_uniform_", (), {"a": math.sqrt(5)}),
    ("kaiming_normal_", (), {"mode": "fan_out", "nonlinearity": "relu"}),
    ("trunc_normal_", (0.5, 1.0, -1.0, 1.5), {}),
])
def test_distribution_matches_torchs(fn, args, kwargs):
    shape = (300, 40, 3)
    p = nn.Parameter(np.empty(shape, np.float64))
    assert getattr(init, fn)(p, *args, **kwargs) is p
    ref = _torch_like(shape, fn, *args, **kwargs)
    got = p.data
    if "uniform" in fn or fn == "trunc_normal_":  # bounded: the same support
        assert abs(got.min() - ref.min()) < 0.01 * (ref.max() - ref.min())
        assert abs(got.max() - ref.max()) < 0.01 * (ref.max() - ref.min())
    assert abs(got.mean() - ref.mean()) < 0.02 * ref.std() + 0.01
    assert abs(got.std() - ref.std()) < 0.02 * ref.std()


def test_constants_orthogonal_and_in_place_on_device():
    lin = nn.Linear(6, 4).to("sim", np.float64)
    before = lin.weight.data
    init.ones_(lin.weight)
    init.zeros_(lin.bias)
    assert lin.weight.data is before and (before == 1).all() and (lin.bias.data == 0).all()
    assert init.constant_(lin.weight, 0.25).data.dtype == np.float64 and (lin.weight.data == 0.25).all()
    for shape in ((4, 6), (6, 4), (3, 2, 2)):
        p = nn.Parameter(np.empty(shape, np.float32))
        q = init.orthogonal_(p, gain=2.0).data.reshape(shape[0], -1)
        small = min(q.shape)
        gram = q @ q.T if q.shape[0] == small else q.T @ q
        np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-5)
    a = init.normal_(np.empty(5, np.float32), generator=gpunet.Generator().manual_seed(1))
    b = init.normal_(np.empty(5, np.float32), generator=gpunet.Generator().manual_seed(1))
    np.testing.assert_array_equal(a, b)


def test_apply_initialisation_like_the_tutorials():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def init_weights(m):
        if isinstance(m, nn.Linear):
            init.xavier_uniform_(m.weight)
            init.constant_(m.bias, 0.01)

    model.apply(init_weights)
    bound = math.sqrt(6.0 / (8 + 16))
    assert np.abs(model[0].weight.data).max() <= bound and (model[2].bias.data == np.float32(0.01)).all()


@pytest.mark.parametrize("call,error,match", [
    (lambda: init.kaiming_uniform_(np.empty((3, 3)), mode="fan_avg"), ValueError, "mode: expected 'fan_in'"),
    (lambda: init.xavier_uniform_(np.empty(3)), ValueError, "at least 2 dims"),
    (lambda: init.uniform_(np.empty(3, np.int64)), TypeError, "floating-point array"),
    (lambda: init.trunc_normal_(np.empty(3), a=1.0, b=0.0), ValueError, "a < b"),
    (lambda: init.normal_(np.empty(3), generator=3), TypeError, "generator: expected a gpunet.Generator"),
])
def test_bad_arguments_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
