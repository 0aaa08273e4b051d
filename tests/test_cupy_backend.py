"""The cupy backend as a whole: importing gpunet builds no CuPy fusion, and
work runs on CuPy's current stream and on the chosen GPU. Each fusion is
tested against cpu beside its op family (tests/test_<family>.py).

Everything but the first test needs CuPy with a GPU and skips with the reason
otherwise. (The rest of the suite runs on cupy too, through the `device` and
`kernel_device` fixtures.)"""
import subprocess
import sys

import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.testing import assert_close

from conftest import needs_cupy


def test_import_compiles_nothing():
    """Kernels are built on first use: importing gpunet (and the fusions) must
    neither import CuPy nor build a kernel, so machines without a GPU pay nothing."""
    code = ("import sys\n"
            "class NoCupy:  # any attempt to import CuPy fails loudly, installed or not\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        assert name.split('.')[0] not in ('cupy', 'cupyx'), 'importing gpunet imports ' + name\n"
            "sys.meta_path.insert(0, NoCupy())\n"
            "import gpunet\n"
            "from gpunet.ops import activation, cupy_kernels, loss, optim, rnn\n"
            "built = [k.__name__ for k in (activation._fused_backward_kernel, rnn._fused_cell_kernels, "
            "loss._fused_kernels, optim._fused_kernels, cupy_kernels._raw_kernel) if k.cache_info().currsize]\n"
            "assert not built, built\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- streams and devices
@needs_cupy
def test_runs_on_the_current_stream(rng):
    import cupy
    be = gpunet.get_backend("cupy")
    lstm = nn.LSTM(3, 4)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    ref = lstm(x)[0]
    gpu = lstm.to("cupy")
    with cupy.cuda.Stream(non_blocking=True) as s:
        assert be.stream() == s.ptr
        out = gpu(be.asarray(x))[0]
    gpunet.synchronize("cupy")
    assert_close(out, ref, n=256, name="LSTM output computed on a side stream")


@needs_cupy
def test_second_gpu(rng):
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    lin = nn.Linear(3, 2).to("cupy:1")
    assert lin.weight.data.device.id == 1
    x0 = gpunet.asarray(rng.standard_normal((4, 3)).astype(np.float32), device="cupy:0")
    with pytest.raises(TypeError, match="GPU 1.*GPU 0"):
        lin(x0)
    x1 = gpunet.asarray(x0, device="cupy:1")
    assert x1.device.id == 1
    with gpunet.get_backend("cupy:1").use_device():  # CuPy launches on the current device
        y = lin(x1)
    assert_close(y, gpunet.to_numpy(x0) @ lin.state_dict()["weight"].T + lin.state_dict()["bias"])
