"""Every example in examples/ runs in quick mode and meets its quality bar
(each main(quick=True) asserts its own bar, e.g. >= 99% token accuracy for
the sorting transformer)."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
NAMES = ["perceptron", "xor_mlp", "digits_cnn", "resnet_cifar", "char_lstm", "transformer_sort", "torch_import"]


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_listed():
    found = sorted(f[:-3] for f in os.listdir(EXAMPLES) if f.endswith(".py"))
    assert found == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_example_quick(name, capsys):
    if name == "digits_cnn":
        pytest.importorskip("sklearn")
    result = load_example(name).main(device="cpu", quick=True)
    out = capsys.readouterr().out
    assert out.strip(), "examples explain what they did"
    if name == "resnet_cifar":
        assert result["synthetic"] and "SYNTHETIC" in out
    if name == "torch_import" and result["skipped"]:
        assert "PyTorch is not installed" in out


def test_example_on_every_backend(device):
    """The same example code runs unchanged on each backend."""
    result = load_example("xor_mlp").main(device=device, quick=True)
    assert result["solved"] >= 1


def test_example_runs_as_a_script():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "perceptron.py"), "--quick", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "converged=True" in proc.stdout and "converged=False" in proc.stdout
