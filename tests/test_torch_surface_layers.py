"""The small layers the tutorials use that were missing: SiLU and ELU (against
torch forward and backward, and central differences), Dropout1d/Dropout2d
(whole channels, the expectation kept, backward through the same mask)."""
import contextlib

import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.testing import assert_close

torch = pytest.importorskip("torch")


@pytest.mark.fallback("silu", "elu")  # no kernels: array code on every backend
@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("make", [lambda lib: lib.SiLU(), lambda lib: lib.ELU(), lambda lib: lib.ELU(alpha=0.3)],
                         ids=["silu", "elu", "elu_alpha"])
def test_activation_matches_torch(device, make, rng):
    dtype = np.float64 if device == "cpu" else np.float32
    x = (rng.standard_normal((4, 9)) * 3).astype(dtype)
    x[0, :3] = 0.0  # the kink of ELU
    m = make(nn).to(device, dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = make(torch.nn)(xt)
    dy = rng.standard_normal(x.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    assert_close(m(x), yt.detach().numpy())
    assert_close(m.backward(dy), xt.grad.numpy())


@pytest.mark.parametrize("make", [nn.SiLU, lambda: nn.ELU(1.5)])
def test_activation_gradcheck(make, rng):
    gpunet.gradcheck(make().to(np.float64), rng.standard_normal((3, 5)) + 0.05)


@pytest.mark.parametrize("cls,shape,lead", [
    (nn.Dropout2d, (6, 30, 4, 5), 2), (nn.Dropout2d, (6, 30, 7), 2),  # 3-D read as (N, C, L), as torch
    (nn.Dropout1d, (6, 30, 7), 2), (nn.Dropout1d, (30, 7), 1)])       # 2-D is unbatched (C, L)
@pytest.mark.filterwarnings("ignore:Dropout2d. a 3-D input")  # asserted once, below
def test_channel_dropout_drops_whole_channels(cls, shape, lead):
    m = cls(0.4)
    x = np.ones(shape, np.float32)
    with pytest.warns(UserWarning, match="3-D input") if cls is nn.Dropout2d and len(shape) == 3 else contextlib.nullcontext():
        y = m(x)
    per_channel = y.reshape(shape[:lead] + (-1,))
    assert (per_channel == per_channel[..., :1]).all()
    kept = per_channel[..., 0]
    assert set(np.unique(kept)) <= {0.0, np.float32(1 / 0.6)} and 0.2 < (kept == 0).mean() < 0.6
    dy = np.full(shape, 2.0, np.float32)
    np.testing.assert_array_equal(m.backward(dy), 2.0 * y)
    m.eval()
    assert m(x) is not None and (m(x) == x).all()


def test_channel_dropout_matches_torch_in_distribution():
    """Both keep each channel with probability 1-p and scale it by 1/(1-p)."""
    x = np.ones((200, 50, 2, 2), np.float32)
    ours = nn.Dropout2d(0.3)(x)[:, :, 0, 0]
    theirs = torch.nn.Dropout2d(0.3)(torch.tensor(x)).numpy()[:, :, 0, 0]
    assert abs((ours == 0).mean() - (theirs == 0).mean()) < 0.02
    assert ours.max() == pytest.approx(theirs.max())


def test_channel_dropout_checks_its_input():
    with pytest.raises(ValueError, match="input: expected a 3-D or 4-D array"):
        nn.Dropout2d()(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="p: dropout probability"):
        nn.Dropout1d(1.5)
