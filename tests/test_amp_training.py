"""Training in mixed precision: the digits CNN and transformer_sort examples
reach their float32 accuracy within 0.5 percentage points under bfloat16
autocast, and float16 autocast with a GradScaler (slow: each is a few quick
trainings); the console command's --dtype."""
import json

import pytest
from conftest import require
from test_examples import load_example

from gpunet.__main__ import main

EXAMPLES = {"digits_cnn": "test_accuracy", "transformer_sort": "token_accuracy"}
_float32 = {}  # (example, device) -> the float32 run's accuracy


def _accuracy(name, device, dtype):
    return load_example(name).main(device=device, quick=True, dtype=dtype)[EXAMPLES[name]]


@pytest.mark.slow
@pytest.mark.no_kernels("the kernels are checked by the examples' own tests; this compares accuracies")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_trains_in_bfloat16_float16_as_in_float32(name, device, dtype):
    require(device)
    if name == "digits_cnn":
        pytest.importorskip("sklearn")
    key = (name, device)
    if key not in _float32:
        _float32[key] = _accuracy(name, device, "float32")
    got = _accuracy(name, device, dtype)
    assert abs(got - _float32[key]) <= 0.005, (got, _float32[key])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_console_train_dtype_bfloat16_float16(dtype, tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    main(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--device", "cpu", "--dtype", dtype,
          "--out", str(out), "--quiet"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dtype"] == dtype and summary["test_accuracy"] > 0.5
