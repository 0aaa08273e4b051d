"""Whole-model parity and determinism.

The same model from the same initial weights trains for 5 optimizer steps on
cpu and on each kernel backend: losses and final parameters must agree. And
a run that is saved, reloaded and continued must be bit-identical to one that
never stopped."""
import numpy as np
import pytest

import gpunet
from gpunet import models, nn, optim, testing


def _digit_batches(rng, steps=5, n=6):
    return [(rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, n)) for _ in range(steps)]


def _sort_batches(rng, steps=5, n=3, length=5, vocab=7):
    out = []
    for _ in range(steps):
        x = rng.integers(0, vocab, (n, length))
        out.append((x, np.sort(x, axis=1)))
    return out


def test_small_cnn_trains_identically(kernel_device, rng):
    testing.compare_training(
        lambda: models.digits_cnn(width=4),
        nn.CrossEntropyLoss,
        lambda params: optim.SGD(params, lr=0.1, momentum=0.9),
        # the longest reductions: the conv weight gradients, over 6 images x 8x8 pixels
        _digit_batches(rng), devices=("cpu", kernel_device), n=6 * 8 * 8)


@pytest.mark.fallback("gelu")
def test_small_transformer_trains_identically(kernel_device, rng):
    testing.compare_training(
        lambda: models.Transformer(vocab_size=7, max_len=5, dim=32, num_heads=2, num_layers=1),
        nn.CrossEntropyLoss,
        # SGD, not Adam: the key bias has an exactly-zero true gradient (softmax
        # ignores a shift shared by all keys), and Adam would blow its rounding
        # noise up to full-size steps that differ between any two backends.
        lambda params: optim.SGD(params, lr=0.1, momentum=0.9),
        # the longest reduction: the MLP's 128 hidden features; its tanh-GELU has no kernel
        _sort_batches(rng), devices=("cpu", kernel_device), n=128, fallbacks=("gelu",))


def test_parity_check_catches_a_wrong_kernel(monkeypatch, rng):
    """compare_training must fail when one backend computes something else."""
    calls = []

    class Leaky(nn.ReLU):  # a "kernel" that leaks on sim only
        def forward(self, x):
            y = super().forward(x)
            if self.backend.name == "sim":
                calls.append(1)
                y = y + 0.01 * x
            return y

    with pytest.raises(AssertionError, match="sim vs cpu"):
        testing.compare_training(
            lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), Leaky(), nn.Linear(16, 10)),
            nn.CrossEntropyLoss, lambda params: optim.SGD(params, lr=0.1),
            _digit_batches(rng), devices=("cpu", "sim"))
    assert calls


@pytest.mark.parametrize("dev", ["cpu", "sim"])
def test_save_reload_continue_is_bit_identical(dev, tmp_path, rng):
    testing_dev = gpunet.backends()[dev]
    if not testing_dev["available"]:
        pytest.skip(testing_dev["reason"])
    batches = _digit_batches(rng, steps=6)

    def run(model, opt, crit, chunk):
        for x, t in chunk:
            model.zero_grad()
            loss = crit(model(gpunet.asarray(x, device=dev)), gpunet.asarray(t, device=dev))
            model.backward(crit.backward())
            opt.step()
        return float(loss)

    gpunet.manual_seed(3)
    straight = models.digits_cnn(width=4).to(dev)
    opt = optim.Adam(straight.parameters(), lr=1e-2)
    run(straight, opt, nn.CrossEntropyLoss(), batches)

    gpunet.manual_seed(3)
    first = models.digits_cnn(width=4).to(dev)
    opt1 = optim.Adam(first.parameters(), lr=1e-2)
    run(first, opt1, nn.CrossEntropyLoss(), batches[:3])
    gpunet.save({"model": first.state_dict(), "optimizer": opt1.state_dict()}, tmp_path / "ckpt.npz")

    gpunet.manual_seed(99)  # different init: everything must come from the file
    resumed = models.digits_cnn(width=4).to(dev)
    opt2 = optim.Adam(resumed.parameters(), lr=1e-2)
    state = gpunet.load(tmp_path / "ckpt.npz")
    resumed.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    run(resumed, opt2, nn.CrossEntropyLoss(), batches[3:])

    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert np.array_equal(a, b), f"{k} differs after save/reload/continue"
