"""Misuse of the public API that used to give a silent wrong result, an
unclear error or a hang (issue: reliability under bad input): each now fails
with a clear error naming the argument, or does what PyTorch does."""
import math
import os
import time

import numpy as np
import pytest

import gpunet
import gpunet.functional as F
from gpunet import nn, optim
from gpunet.data import Subset, TensorDataset

KERNELS = ()


def _params():
    return nn.Linear(3, 2).parameters()


# ---------------------------------------------------------------- optimizers
@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=math.nan),
    lambda p: optim.SGD(p, lr=0.1, momentum=math.inf),
    lambda p: optim.Adam(p, lr=math.nan),
    lambda p: optim.Adam(p, eps=math.nan),
    lambda p: optim.RMSprop(p, lr=math.nan),
    lambda p: optim.RMSprop(p, alpha=math.nan),
    lambda p: optim.Rprop(p, lr=math.nan),
    lambda p: optim.Rprop(p, step_sizes=(math.nan, 1.0)),
], ids=["sgd-lr", "sgd-momentum", "adam-lr", "adam-eps", "rmsprop-lr", "rmsprop-alpha", "rprop-lr", "rprop-step"])
@pytest.mark.no_kernels("checked in the constructor")
def test_non_finite_hyperparameters_are_refused(make):
    with pytest.raises(ValueError, match=r"(lr|eps|momentum|alpha|step_sizes).*(finite|got nan|got inf)"):
        make(_params())


@pytest.mark.no_kernels("checked in the constructor")
def test_pairs_that_are_not_pairs():
    with pytest.raises(ValueError, match=r"betas: expected a pair of finite numbers, got 0.9"):
        optim.Adam(_params(), betas=0.9)
    with pytest.raises(ValueError, match=r"etas: expected a pair"):
        optim.Rprop(_params(), etas=1.2)


@pytest.mark.no_kernels("state dicts only")
def test_state_dict_of_another_optimizer_type_is_refused():
    model = nn.Linear(3, 2)
    adam = optim.Adam(model.parameters())
    model(np.ones((4, 3), np.float32))
    model.backward(np.ones((4, 2), np.float32))
    adam.step()
    for other in (optim.SGD(model.parameters(), lr=0.1), optim.RMSprop(model.parameters())):
        with pytest.raises(ValueError, match=r"another optimizer type"):
            other.load_state_dict(adam.state_dict())
    sd = adam.state_dict()
    sd["param_groups"][0]["lr"] = math.nan
    with pytest.raises(ValueError, match=r"lr: expected a finite number"):
        optim.Adam(model.parameters()).load_state_dict(sd)
    optim.Adam(model.parameters()).load_state_dict(adam.state_dict())  # same type still loads


# ---------------------------------------------------------------- functional forms
@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.no_kernels("refused before any launch")
def test_functional_rejects_integer_inputs_and_bogus_options(device):
    with pytest.raises(TypeError, match=r"x: expected a floating-point array, got dtype uint8"):
        F.softsign(np.arange(4, dtype=np.uint8), device=device)
    with pytest.raises(TypeError, match=r"x: expected a floating-point array, got dtype int64"):
        F.tanh(np.arange(4), device=device)
    with pytest.raises(ValueError, match=r"approximate: expected 'none' or 'tanh', got 'bogus'"):
        F.gelu(np.ones(4, np.float32), approximate="bogus", device=device)
    with pytest.raises(TypeError, match=r"dim: expected an int or None, got float"):
        F.softmax(np.ones((2, 3), np.float32), dim=1.5, device=device)
    with pytest.raises(ValueError, match=r"beta: expected a finite number, got nan"):
        F.softplus(np.ones(4, np.float32), beta=math.nan, device=device)


@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_relu_backward_of_a_nan_gradient_matches_pytorch(device):
    """ReLU's gradient is a select (PyTorch's threshold_backward): NaN where
    x > 0, 0 where x <= 0, on every backend."""
    relu = nn.ReLU().to(device)
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    relu(x)
    dx = gpunet.to_numpy(relu.backward(np.full(3, np.nan, np.float32)))
    assert dx[0] == 0 and dx[1] == 0 and np.isnan(dx[2])


# ---------------------------------------------------------------- modules
@pytest.mark.no_kernels("shape checks")
def test_wrong_shaped_gradients_are_refused():
    lin = nn.Linear(3, 2)
    lin(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"grad_output: expected the output's shape \(4, 2\), got \(2, 4\)"):
        lin.backward(np.ones((2, 4), np.float32))
    flat = nn.Flatten()
    flat(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"grad_output: expected the output's shape \(2, 12\), got \(4, 6\)"):
        flat.backward(np.ones((4, 6), np.float32))


@pytest.mark.no_kernels("argument checks")
def test_module_to_with_a_non_device_non_dtype():
    with pytest.raises(TypeError, match=r"to: expected a device .* or a dtype .*got 3"):
        nn.Linear(2, 2).to(3)


@pytest.mark.no_kernels("empty batch")
def test_mse_backward_of_an_empty_batch():
    crit = nn.MSELoss()
    x = np.zeros((0, 3), np.float32)
    crit(x, x)
    assert crit.backward().shape == (0, 3)


@pytest.mark.no_kernels("argument checks")
def test_cross_entropy_ignore_index_beyond_int64():
    with pytest.raises(ValueError, match=r"ignore_index: expected a 64-bit integer"):
        nn.CrossEntropyLoss(ignore_index=2**70)


@pytest.mark.no_kernels("argument checks")
def test_rnn_with_absurd_depth_refuses_at_once():
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"num_layers=1099511627776: the parameters would take"):
        nn.RNN(4, 3, num_layers=2**40)
    assert time.monotonic() - start < 1.0


@pytest.mark.no_kernels("data only")
def test_subset_float_indices_are_refused():
    ds = TensorDataset(np.arange(4, dtype=np.float32))
    with pytest.raises(TypeError, match=r"indices: expected a 1-D sequence of integers, got float64"):
        Subset(ds, [0.5, 1.7])
    assert len(Subset(ds, [])) == 0 and len(Subset(ds, np.array([3, 1]))) == 2


# ---------------------------------------------------------------- checkpoints
@pytest.mark.no_kernels("files only")
def test_save_and_load_take_bytes_paths(tmp_path):
    path = os.fsencode(tmp_path / "b.npz")
    gpunet.save({"a": np.arange(3)}, path)
    assert gpunet.load(path)["a"].tolist() == [0, 1, 2]


@pytest.mark.no_kernels("files only")
def test_saving_to_a_directory_leaves_nothing(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a directory"):
        gpunet.save({"a": 1}, tmp_path)
    with pytest.raises(IsADirectoryError, match=r"is a directory"):
        gpunet.save({"a": 1}, str(tmp_path) + os.sep)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match=r"is a directory"):
        gpunet.load(tmp_path)


@pytest.mark.no_kernels("files only")
def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    path = tmp_path / "ckpt.npz"
    dead = 2**22 + 12345  # above the default pid_max of 2**22: no such process
    stale = tmp_path / f".ckpt.npz.{dead}.abc123.tmp"
    live = tmp_path / f".ckpt.npz.{os.getpid()}.def456.tmp"  # a writer still running
    other = tmp_path / f".other.npz.{dead}.ghi789.tmp"       # another target's
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    gpunet.save({"a": 1}, path)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "ckpt.npz"])
    stale.write_bytes(b"partial")
    gpunet.load(path)
    assert not stale.exists() and live.exists()


@pytest.mark.no_kernels("files only")
def test_any_damage_is_a_value_error_naming_the_file(tmp_path):
    """A flipped bit in a zip header's compression method used to escape as
    NotImplementedError."""
    path = tmp_path / "ckpt.npz"
    gpunet.save({"w": np.arange(100.0)}, path)
    data = bytearray(path.read_bytes())
    header = data.find(b"PK\x03\x04")
    data[header + 8] = 99  # compression method 99: not supported by zipfile
    central = data.rfind(b"PK\x01\x02")
    data[central + 10] = 99
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"ckpt.npz"):
        gpunet.load(path)


# ---------------------------------------------------------------- found by the fuzz suite (tests/fuzz)
@pytest.mark.no_kernels("refused before any allocation")
@pytest.mark.parametrize("make", [lambda: nn.Linear(2**40, 3), lambda: nn.Conv1d(1, 2**40, 4),
                                  lambda: nn.Embedding(2**62, 4), lambda: nn.LayerNorm(2**40),
                                  lambda: nn.BatchNorm1d(2**40), lambda: nn.Conv2d(1, 4, 2**40)],
                         ids=["Linear", "Conv1d", "Embedding", "LayerNorm", "BatchNorm1d", "Conv2d-kernel"])
def test_parameters_larger_than_memory_are_refused_by_shape(make):
    """NumPy's MemoryError ("Unable to allocate 32 TiB") or "array is too
    big" named no argument."""
    with pytest.raises(ValueError, match=r"a parameter of shape \(.*\) would take .* GiB .* expected smaller sizes"):
        make()


@pytest.mark.no_kernels("argument checks")
def test_layernorm_normalized_shape_none():
    with pytest.raises(ValueError, match=r"normalized_shape: expected a positive int or a non-empty tuple"):
        nn.LayerNorm(None)


@pytest.mark.no_kernels("argument checks")
def test_nll_ignore_index_beyond_int64():
    """Only CrossEntropyLoss checked the range; NLLLoss reached the binding
    ("Overflow when unpacking long long")."""
    with pytest.raises(ValueError, match=r"ignore_index: expected a 64-bit integer"):
        nn.NLLLoss(ignore_index=2**70)


@pytest.mark.no_kernels("data only")
def test_subset_indices_outside_the_dataset():
    ds = TensorDataset(np.arange(7, dtype=np.float32))
    for bad in ([7], [0, -8]):
        with pytest.raises(IndexError, match=r"indices: expected integers in \[-7, 7\) for a dataset of 7 samples"):
            Subset(ds, bad)
    assert [int(Subset(ds, [-1, 0])[i][0]) for i in range(2)] == [6, 0]


@pytest.mark.no_kernels("optimizer only")
def test_multistep_milestones_must_be_integers():
    """milestones="1" was read as [1]; PyTorch's Counter("1") never fires."""
    for bad in ("1", [1.5], [True]):
        with pytest.raises(TypeError, match=r"milestones: expected a sequence of integers"):
            optim.lr_scheduler.MultiStepLR(optim.SGD(_params(), lr=0.1), bad)
