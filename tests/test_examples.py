"""Every example in examples/ runs in quick mode and meets its quality bar
(each main(quick=True) asserts its own bar, e.g. >= 99% token accuracy for
the sorting transformer), on cpu and, unchanged, on sim. On sim the kernels
run on the CPU, so the quick runs of the larger examples take one to ten
minutes each: those are marked slow and left out of the default run
(`pytest -m slow` runs them)."""
import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import ALL_DEVICES, require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
NAMES = ["perceptron", "xor_mlp", "digits_cnn", "resnet_cifar", "char_lstm", "transformer_sort", "torch_import",
         "autograd_mlp"]
SLOW_ON_SIM = {"digits_cnn", "resnet_cifar", "char_lstm", "transformer_sort"}


def _marks(name, device):
    if device != "sim":
        return []
    if name == "perceptron":
        return [pytest.mark.no_kernels("the perceptron learning rule is array code")]
    return [pytest.mark.slow] if name in SLOW_ON_SIM else []


RUNS = [pytest.param(name, device, marks=_marks(name, device)) for device in ALL_DEVICES for name in NAMES]


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_listed():
    found = sorted(f[:-3] for f in os.listdir(EXAMPLES) if f.endswith(".py"))
    assert found == sorted(NAMES)


@pytest.mark.parametrize("name,dev", RUNS)
def test_example_quick(name, dev, capsys):
    require(dev)
    if name == "digits_cnn":
        pytest.importorskip("sklearn")
    result = load_example(name).main(device=dev, quick=True)
    out = capsys.readouterr().out
    assert out.strip(), "examples explain what they did"
    if name == "resnet_cifar":
        assert result["synthetic"] and "SYNTHETIC" in out
    if name == "torch_import" and result["skipped"]:
        assert "PyTorch is not installed" in out


HALF_NAMES = ["perceptron", "autograd_mlp", "torch_import"]  # --dtype added last; the others' runs are slow ones
HALF_RUNS = [pytest.param(name, device, dtype, marks=_marks(name, device))
             for device in ("cpu", "sim") for name in HALF_NAMES for dtype in ("bfloat16", "float16")]


@pytest.mark.parametrize("name,dev,dtype", HALF_RUNS)
def test_example_quick_bfloat16_float16(name, dev, dtype, capsys):
    """The small examples' --dtype: each meets its quick bar in the half dtype
    (torch_import: agreement with PyTorch's autocast to the dtype's rounding)."""
    require(dev)
    result = load_example(name).main(device=dev, quick=True, dtype=dtype)
    out = capsys.readouterr().out
    assert dtype in out, "the example says which dtype it ran"
    if name == "torch_import" and not result["skipped"]:
        assert f"agree to {dtype} rounding" in out


def test_example_runs_as_a_script():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "perceptron.py"), "--quick", "--device", "cpu",
                           "--dtype", "bfloat16"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "converged=True" in proc.stdout and "converged=False" in proc.stdout and "bfloat16" in proc.stdout
