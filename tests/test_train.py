"""gpunet.train (fit, evaluate, checkpoints, early stopping) and the console
command, on small seeded problems."""
import json

import numpy as np
import pytest

import gpunet
from gpunet import models, nn, optim
from gpunet.__main__ import main
from gpunet.data import DataLoader, TensorDataset
from gpunet.train import History, evaluate, fit


def blobs(n=240, seed=0, classes=3, flip=False):
    """Gaussian blobs in 2-D, one per class; flip=True permutes the labels
    (a validation set that gets worse as the model learns the real ones)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])[:classes]
    x = (centres[y] + 0.5 * rng.standard_normal((n, 2))).astype(np.float32)
    if flip:
        y = (y + 1) % classes
    return TensorDataset(x, y.astype(np.int64))


def small_model(dropout=0.0):
    layers = [nn.Linear(2, 16), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(16, 3))


def test_fit_learns_and_records_history(capsys):
    model = small_model()
    opt = optim.Adam(model.parameters(), lr=0.03)
    train, val = DataLoader(blobs(), 32, shuffle=True, seed=0), DataLoader(blobs(seed=1), 100)
    hist = fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=6)
    assert isinstance(hist, History) and hist.epochs == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_s"):
        assert len(hist[key]) == 6, key
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["val_accuracy"][-1] > 0.95
    out = capsys.readouterr().out  # not a terminal: one plain line per epoch
    assert out.count("epoch ") == 6 and "samples/s" in out and "val_accuracy" in out
    # evaluate agrees with the last validation numbers (same weights, same data)
    res = evaluate(model, nn.CrossEntropyLoss(), val)
    assert res["loss"] == pytest.approx(hist["val_loss"][-1], rel=1e-6)
    assert res["accuracy"] == pytest.approx(hist["val_accuracy"][-1])


def test_evaluate_saves_nothing_and_restores_mode():
    model = small_model(dropout=0.5)
    data = DataLoader(blobs(64), 16)
    model.train()
    a = evaluate(model, nn.CrossEntropyLoss(), data)
    b = evaluate(model, nn.CrossEntropyLoss(), data)
    assert a == b  # eval mode: dropout is off, so two passes agree exactly
    assert model.training
    with pytest.raises(RuntimeError, match="no_grad"):  # evaluate ran under no_grad: nothing to differentiate
        model.backward(np.ones((16, 3), dtype=np.float32))


def test_accuracy_counts_every_position_of_sequences():
    class Echo(nn.Module):
        """Predicts the input token at every position, through logits (N, V, T)."""

        def forward(self, tokens):
            onehot = np.eye(4, dtype=np.float32)[tokens]  # (N, T, V)
            return np.ascontiguousarray(onehot.transpose(0, 2, 1))

    x = np.array([[0, 1, 2], [3, 3, 3]], dtype=np.int64)
    y = np.array([[0, 1, 0], [3, 0, 3]], dtype=np.int64)  # 4 of 6 positions match
    res = evaluate(Echo(), nn.CrossEntropyLoss(), DataLoader(TensorDataset(x, y), 2))
    assert res["accuracy"] == pytest.approx(4 / 6)


def test_early_stopping_restores_best_weights(capsys):
    model = small_model()
    opt = optim.Adam(model.parameters(), lr=0.05)
    # validation labels are permuted: its loss is lowest after the first epoch and then rises
    val = DataLoader(blobs(120, seed=2, flip=True), 120)
    hist = fit(model, nn.CrossEntropyLoss(), opt, DataLoader(blobs(), 16, shuffle=True, seed=0), val,
               epochs=30, early_stopping_patience=3)
    assert hist.stopped_early and hist.best_epoch == 1
    assert len(hist.epochs) == 1 + 3
    assert evaluate(model, nn.CrossEntropyLoss(), val)["loss"] == pytest.approx(hist["val_loss"][0], rel=1e-6)
    assert "restored the weights of epoch 1" in capsys.readouterr().out


def _run(tmp_path, epochs, name="ckpt.npz"):
    gpunet.manual_seed(5)
    model = small_model(dropout=0.2)
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    hist = fit(model, nn.CrossEntropyLoss(), opt, DataLoader(blobs(), 32, shuffle=True, seed=9),
               DataLoader(blobs(seed=1), 50), epochs=epochs, checkpoint_path=tmp_path / name,
               scheduler=sched, progress=False)
    return model, hist


def test_checkpoint_resume_is_bit_identical(tmp_path):
    straight, hist_a = _run(tmp_path, 3, "a.npz")
    _run(tmp_path, 1, "b.npz")  # "interrupted" after one epoch
    resumed, hist_b = _run(tmp_path, 3, "b.npz")  # fresh objects, same command: continues at epoch 2
    for k, v in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)
    assert hist_b.epochs == [1, 2, 3]
    assert hist_b["loss"] == hist_a["loss"]
    assert hist_a["lr"] == [0.01, 0.005, 0.0025]  # the scheduler state travelled too
    saved = gpunet.load(tmp_path / "b.npz")
    assert saved["epoch"] == 3 and set(saved["model"]) == set(straight.state_dict())
    assert {"state", "param_groups"} <= set(saved["optimizer"])
    assert not [p for p in tmp_path.iterdir() if p.name not in ("a.npz", "b.npz")]  # no temporary files left


def test_resume_false_starts_over(tmp_path):
    _run(tmp_path, 2)
    gpunet.manual_seed(5)
    model = small_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    hist = fit(model, nn.CrossEntropyLoss(), opt, DataLoader(blobs(), 32), epochs=1,
               checkpoint_path=tmp_path / "ckpt.npz", resume=False, progress=False)
    assert hist.epochs == [1] and gpunet.load(tmp_path / "ckpt.npz")["epoch"] == 1


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    model = small_model()
    path = tmp_path / "curves" / "c.png"
    fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01), DataLoader(blobs(), 64),
        DataLoader(blobs(seed=1), 64), epochs=2, plot_path=path, progress=False)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clip_grad_norm_bounds_each_step():
    model = small_model()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    opt = optim.SGD(model.parameters(), lr=1.0)
    fit(model, nn.CrossEntropyLoss(), opt, DataLoader(blobs(32), 32), epochs=1, clip_grad_norm=1e-3,
        progress=False)
    step = np.sqrt(sum(((model.state_dict()[k] - v).astype(np.float64) ** 2).sum() for k, v in before.items()))
    assert 0 < step <= 1e-3 * (1 + 1e-4)


def test_fit_rejects_bad_arguments():
    model = small_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(blobs(16), 8)
    with pytest.raises(ValueError, match="val_loader"):
        fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=1, early_stopping_patience=2)
    with pytest.raises(ValueError, match="metrics"):
        fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=1, metrics=("f1",))
    with pytest.raises(ValueError, match="epochs"):
        fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=-1)


def test_training_agrees_across_devices(kernel_device):
    """The same seeded run on cpu and on a kernel backend: per-epoch losses agree."""
    results = {}
    for dev in ("cpu", kernel_device):
        gpunet.manual_seed(3)
        model = small_model().to(dev)
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, device=dev)
        hist = fit(model, nn.CrossEntropyLoss(), opt, DataLoader(blobs(96), 32, shuffle=True, seed=1, device=dev),
                   epochs=3, device=dev, progress=False)
        results[dev] = hist["loss"]
    np.testing.assert_allclose(results[kernel_device], results["cpu"], rtol=1e-4)


def test_models_forward_backward_shapes():
    tokens = np.array([[1, 2, 3, 0], [0, 0, 1, 2]], dtype=np.int64)
    for model in (models.CharLSTM(5, embed_dim=4, hidden_size=6), models.Transformer(5, max_len=4, dim=8,
                                                                                     num_heads=2, num_layers=1)):
        logits = model(tokens)
        assert logits.shape == (2, 5, 4)
        assert model.backward(np.ones_like(logits)) is None
        assert all(p.grad is not None for p in model.parameters())
    images = np.zeros((2, 3, 8, 8), np.float32)
    assert models.resnet_small(3, 8, 10, width=4)(images).shape == (2, 10)
    assert models.digits_cnn(3, 8, 7, width=4)(images).shape == (2, 7)
    with pytest.raises(ValueError, match="unknown 'vgg'"):
        models.create("vgg")


def test_transformer_block_gradcheck():
    """The hand-written backward of the residual/attention wiring, in float64."""
    block = models.TransformerBlock(4, 2).to(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    gpunet.gradcheck(block, (x,), tol=1e-5)


def test_learned_positions_gradcheck():
    pos = models.LearnedPositions(5, 3).to(np.float64)
    gpunet.gradcheck(pos, (np.random.default_rng(0).standard_normal((2, 4, 3)),))


def test_char_lstm_learns_hello():
    from gpunet.data import CharDataset
    ds = CharDataset("hello", 4)
    model = models.CharLSTM(ds.vocab_size, embed_dim=8, hidden_size=16)
    hist = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.05), DataLoader(ds, 1),
               epochs=60, progress=False)
    assert hist["accuracy"][-1] == 1.0
    assert ds.decode(model.sample(ds.encode("h"), 4, temperature=0.01)) == "ello"


# ------------------------------------------------------------------ console command
def test_console_backends(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("cpu") and "yes" in out.splitlines()[0]
    assert all(name in out for name in ("sim", "cuda", "cupy"))


def test_console_train_digits_and_resume(tmp_path, capsys):
    pytest.importorskip("sklearn")
    out_dir = tmp_path / "digits"
    args = ["train", "--model", "mlp", "--dataset", "digits", "--device", "cpu", "--epochs", "2",
            "--batch-size", "64", "--lr", "0.01", "--out", str(out_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and f"checkpoint: {out_dir / 'checkpoint.npz'}" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["test_accuracy"] > 0.8
    assert main(args[1:]) == 0  # rerun, as `gpunet-train --model ...`: all in the checkpoint, nothing to train
    out = capsys.readouterr().out
    assert "resumed" in out and "epoch 1/2" not in out
    assert json.loads((out_dir / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]


def test_console_rejects_mismatched_model_and_data(tmp_path):
    with pytest.raises(SystemExit, match="token dataset"):
        main(["train", "--model", "char_lstm", "--dataset", "cifar10", "--epochs", "0", "--device", "cpu",
              "--out", str(tmp_path)])
