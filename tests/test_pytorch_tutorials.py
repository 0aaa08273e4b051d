"""The PyTorch tutorials and examples in examples/pytorch/ (the originals with
torch's names pointed at gpunet, nothing else changed) run briefly on cpu and
sim, and their loss falls.

Each runs in this process, unchanged, from a temporary directory: sim through
GPUNET_DEVICE=sim (the scripts that pick a device ask for "cuda" when
gpunet.cuda.is_available(), and GPUNET_DEVICE makes the simulator stand in for
it) and gpunet.set_default_device("sim") (the scripts that never pick one make
their tensors and modules on the default device, as under torch's); short through the
stand-in datasets' GPUNET_SYNTHETIC_SAMPLES and the scripts' own arguments.
Where a script hard-codes its iteration counts (the char-RNN tutorial's
n_iters = 100000), the test lowers those module-level integer constants in
the parsed script before running it; the file on disk is not touched.
One BLAS thread: the scripts' matrices are small, and a shared machine makes
a multithreaded BLAS far slower on them."""
import ast
import contextlib
import io
import math
import random
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import gpunet

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")
threadpoolctl = pytest.importorskip("threadpoolctl")

PORTS = Path(__file__).resolve().parent.parent / "examples" / "pytorch"
# Whole training runs take many minutes under the race checker; the kernels they call have their own race tests.
SIM = pytest.param("sim", marks=pytest.mark.skipif(gpunet.backend.sim_module() == "gpunet._C_simcheck",
                                                   reason="tutorial runs are too long for the race checker"))


def run_port(rel, tmp_path, monkeypatch, device, argv=(), samples=None, consts=None):
    """Run examples/pytorch/<rel> as __main__; (its globals, its stdout)."""
    path = PORTS / rel
    gpunet.manual_seed(0)
    monkeypatch.chdir(tmp_path)
    if device == "sim":
        monkeypatch.setenv("GPUNET_DEVICE", "sim")
    else:
        monkeypatch.delenv("GPUNET_DEVICE", raising=False)
    if samples is not None:
        monkeypatch.setenv("GPUNET_SYNTHETIC_SAMPLES", samples)
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    monkeypatch.syspath_prepend(str(path.parent))
    with warnings.catch_warnings():  # the originals' docstrings hold escapes like "\\ " (theirs to keep)
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    lowered = set()
    for node in tree.body:  # module-level `name = <int>` only
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in (consts or {}) and isinstance(node.value, ast.Constant):
            node.value = ast.copy_location(ast.Constant(consts[node.targets[0].id]), node.value)
            lowered.add(node.targets[0].id)
    assert lowered == set(consts or {}), f"constants not found in {rel}: {set(consts) - lowered}"
    code = compile(tree, str(path), "exec")
    scope = {"__name__": "__main__", "__file__": str(path)}
    out = io.StringIO()
    own = ("data", "model")  # the word-language-model's modules, imported by their bare names
    saved = {m: sys.modules.pop(m) for m in own if m in sys.modules}
    if device == "sim":  # what a PyTorch user does to run a script that never picks a device on the GPU
        gpunet.set_default_device("sim")
    try:
        with contextlib.redirect_stdout(out), threadpoolctl.threadpool_limits(1):
            exec(code, scope)
    finally:
        gpunet.set_default_device(None)
        for m in own:
            sys.modules.pop(m, None)
        sys.modules.update(saved)
        plt.close("all")
    return scope, out.getvalue()


def numbers(pattern, text):
    return [float(x) for x in re.findall(pattern, text)]


@pytest.fixture(params=["cpu", SIM])
def device(request):
    return request.param


def test_neural_networks_tutorial(tmp_path, monkeypatch, device):
    """This page never picks a device: it runs on the default device."""
    g, out = run_port("neural_networks_tutorial.py", tmp_path, monkeypatch, device)
    assert "MSELossBackward" in out and "conv1.bias.grad after backward" in out
    net, loss = g["net"], g["loss"]
    assert net.conv1.weight.backend.name == device and g["input"].device == device
    with gpunet.no_grad():
        after = g["criterion"](net(g["input"]), g["target"]).item()
    assert after < loss.item()  # the one SGD step lowered the loss


def test_buildmodel_tutorial(tmp_path, monkeypatch, device):
    g, out = run_port("buildmodel_tutorial.py", tmp_path, monkeypatch, device)
    assert f"Using {'cuda' if device == 'sim' else 'cpu'} device" in out
    assert g["X"].device == device and next(g["model"].parameters()).backend.name == device
    assert g["y_pred"].shape == (1,) and 0 <= g["y_pred"].item() < 10
    probs = g["pred_probab"].detach().numpy()
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert "Layer: linear_relu_stack.0.weight | Size: (512, 784)" in out


def test_optimization_tutorial(tmp_path, monkeypatch, device):
    g, out = run_port("optimization_tutorial.py", tmp_path, monkeypatch, device,
                      samples="1500,300" if device == "cpu" else "400,100")
    losses = numbers(r"Avg loss: ([\d.]+)", out)  # SGD at lr 1e-3 is slow but steady: every epoch lowers it
    assert next(g["model"].parameters()).backend.name == device
    assert len(losses) == 10 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert "Done!" in out


def test_cifar10_tutorial(tmp_path, monkeypatch):
    g, out = run_port("cifar10_tutorial.py", tmp_path, monkeypatch, "cpu", samples="1200,200")
    assert "Finished Training" in out and (tmp_path / "cifar_net.pth").exists()
    crit, trained, fresh = g["criterion"], g["net"], g["Net"]()
    with gpunet.no_grad():
        def test_loss(net):
            return np.mean([crit(net(x), y).item() for x, y in g["testloader"]])
        assert test_loss(trained) < test_loss(fresh)
    assert re.search(r"Accuracy of the network on the 10000 test images: \d+ %", out)


def _same_run_on_sim(rel, tmp_path, monkeypatch, **kw):
    """(sim globals, cpu globals) of one short run of the port on each, from the same seeds.
    Learning takes more steps than a sim test can afford; the cpu test shows the full run
    learns, this shows sim computes the same run."""
    runs = {}
    for device in ("sim", "cpu"):
        (tmp_path / device).mkdir(exist_ok=True)
        random.seed(0)  # the char-RNN tutorial draws its examples with Python's random
        runs[device], _ = run_port(rel, tmp_path / device, monkeypatch, device, **kw)
    return runs["sim"], runs["cpu"]


def _same_weights(sim_net, cpu_net):
    sim, cpu = sim_net.state_dict(), cpu_net.state_dict()
    assert next(sim_net.parameters()).backend.name == "sim" and next(cpu_net.parameters()).backend.name == "cpu"
    for k in cpu:
        np.testing.assert_allclose(sim[k], cpu[k], rtol=1e-3, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("device", [SIM])
def test_cifar10_tutorial_sim(tmp_path, monkeypatch, device):
    sim, cpu = _same_run_on_sim("cifar10_tutorial.py", tmp_path, monkeypatch, samples="200,20")
    _same_weights(sim["net"], cpu["net"])
    assert sim["correct"] == cpu["correct"]


@pytest.mark.fallback("adadelta")  # Adadelta has no fused kernel: its update runs as array ops on sim
def test_mnist_example(tmp_path, monkeypatch, device):
    argv = ["--epochs", "2", "--log-interval", "5", "--test-batch-size", "200"]
    g, out = run_port("mnist/main.py", tmp_path, monkeypatch, device, argv=argv,
                      samples="640,200" if device == "cpu" else "96,48")
    losses = numbers(r"Test set: Average loss: ([\d.]+)", out)
    assert len(losses) == 2 and losses[1] < losses[0], out


def _names(tmp_path):
    from gpunet.text.names import write_names
    write_names(tmp_path / "data" / "names", n=60)


@pytest.mark.filterwarnings("ignore:set_ticklabels:UserWarning")  # the original's matplotlib call
def test_char_rnn_classification_tutorial(tmp_path, monkeypatch):
    _names(tmp_path)
    random.seed(0)  # the tutorial draws its examples with Python's random
    consts = {"n_iters": 1200, "print_every": 400, "plot_every": 150, "n_confusion": 100}
    g, out = run_port("char_rnn_classification_tutorial.py", tmp_path, monkeypatch, "cpu", consts=consts)
    losses = g["all_losses"]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1, losses
    assert g["n_categories"] == 18 and "> Dovesky" in out


@pytest.mark.filterwarnings("ignore:set_ticklabels:UserWarning")
@pytest.mark.parametrize("device", [SIM])
def test_char_rnn_classification_tutorial_sim(tmp_path, monkeypatch, device):
    for d in ("sim", "cpu"):
        _names(tmp_path / d)
    consts = {"n_iters": 200, "print_every": 100, "plot_every": 50, "n_confusion": 10}
    sim, cpu = _same_run_on_sim("char_rnn_classification_tutorial.py", tmp_path, monkeypatch, consts=consts)
    _same_weights(sim["rnn"], cpu["rnn"])
    np.testing.assert_allclose(sim["all_losses"], cpu["all_losses"], rtol=1e-4)


def _corpus(root, lines):
    from gpunet.text.datasets import synthetic_corpus
    root.mkdir()
    for seed, (split, n) in enumerate(zip(("train", "valid", "test"), lines)):
        (root / f"{split}.txt").write_text("".join(synthetic_corpus(n, seed=seed)))
    return str(root)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log")  # its mask is log(tril(ones)): -inf above
@pytest.mark.parametrize("model, device", [("LSTM", "cpu"), pytest.param("LSTM", *SIM.values, marks=SIM.marks), ("Transformer", "cpu")])
def test_word_language_model(tmp_path, monkeypatch, model, device):
    data = _corpus(tmp_path / "corpus", (300, 40, 40))
    argv = ["--data", data, "--model", model, "--epochs", "3", "--emsize", "32", "--nhid", "32", "--bptt", "20",
            "--log-interval", "1000"] + (["--accel"] if device == "sim" else []) \
        + (["--lr", "5"] if model == "Transformer" else [])  # the example's README trains its Transformer at lr 5
    g, out = run_port("word_language_model/main.py", tmp_path, monkeypatch, device, argv=argv)
    assert f"Using device: {device}" in out
    valid = numbers(r"valid loss\s+([\d.]+)", out)
    assert len(valid) == 3 and valid[-1] < valid[0], out
    (test_loss,) = numbers(r"End of training \| test loss\s+([\d.]+)", out)
    assert test_loss < math.log(g["ntokens"])  # better than guessing uniformly
    assert type(g["model"]).__name__ == ("RNNModel" if model == "LSTM" else "TransformerModel")


@pytest.mark.fallback("attention backward")  # dropout on the attention weights: gpunet's documented array path
def test_transformer_tutorial(tmp_path, monkeypatch, device):
    g, out = run_port("transformer_tutorial.py", tmp_path, monkeypatch, device,
                      samples="600,60" if device == "cpu" else "50,15")
    valid = numbers(r"valid loss\s+([\d.]+)", out)
    assert len(valid) == 3 and min(valid[1:]) < valid[0], out
    assert g["train_data"].device == device and "End of training" in out


@pytest.mark.no_kernels("the tutorial saves and loads a model; it runs no op")
def test_saveloadrun_tutorial(tmp_path, monkeypatch, device):
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        g, out = run_port("saveloadrun_tutorial.py", tmp_path, monkeypatch, device)
    model = g["model"]  # loaded whole from model.pth (weights_only, as torch's default)
    assert next(model.parameters()).backend.name == device
    assert type(model).__name__ == "VGG" and not model.training
    saved = gpunet.load(tmp_path / "model_weights.pth")
    state = model.state_dict()
    assert list(state) == list(saved) and all(np.array_equal(state[k], saved[k]) for k in saved)
    assert list(state)[:2] == ["features.0.weight", "features.0.bias"] and list(state)[-1] == "classifier.6.bias"
    assert sum(p.numel() for p in model.parameters()) == 138357544  # torchvision's VGG-16
