"""Losses follow their input's dtype (float64 logits need no .to) and take
integer targets where PyTorch promotes them, matching torch's values and
gradients; a wrong target dtype gets a hint that works."""
import numpy as np
import pytest

from gpunet import nn
from gpunet.testing import assert_close

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_follows_the_input_dtype(dtype, rng):
    crit = nn.CrossEntropyLoss(weight=np.array([1.0, 2.0, 0.5]))  # a float32 buffer until it follows
    x = rng.standard_normal((4, 3)).astype(dtype)
    y = np.array([0, 2, 1, 2])
    loss = crit(x, y)
    dx = crit.backward()
    assert loss.dtype == dtype and dx.dtype == dtype and crit.weight.dtype == dtype
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5], dtype=xt.dtype))(xt, torch.tensor(y))
    lt.backward()
    assert_close(loss, lt.detach().numpy())
    assert_close(dx, xt.grad.numpy())


@pytest.mark.parametrize("cls", ["MSELoss", "L1Loss", "SmoothL1Loss"])
def test_integer_targets_are_promoted_as_torch_does(cls, rng):
    x = rng.standard_normal((3, 4))
    t = rng.integers(-2, 3, size=(3, 4))
    crit = getattr(nn, cls)()
    loss = crit(x, t)
    dx = crit.backward()
    xt = torch.tensor(x, requires_grad=True)
    lt = getattr(torch.nn, cls)()(xt, torch.tensor(t))
    lt.backward()
    assert loss.dtype == np.float64
    assert_close(loss, lt.detach().numpy())
    assert_close(dx, xt.grad.numpy())


def test_a_target_dtype_no_module_takes_gets_a_working_hint():
    with pytest.raises(TypeError) as info:
        nn.MSELoss()(np.zeros(3, np.float32), np.zeros(3, np.complex64))
    message = str(info.value)
    assert ".astype(float32)" in message and ".to(" not in message
