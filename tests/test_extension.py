"""The compiled extension itself: the binding convention (validation before
any launch, errors as Python exceptions, nothing launched for empty arrays),
the module attributes, and the simulator's schedules and race detection.
Each kernel family's own binding tests live in its tests/test_<family>.py.

Builds nothing: it imports gpunet._C_sim (built by `pip install -e .`, so its
absence fails) and, where it was built, gpunet._C.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import gpunet
from gpunet import _C_sim as sim
from gpunet.testing import SCHEDULES

from conftest import put

try:
    import gpunet._C as cuda_mod
except ImportError:
    cuda_mod = None


# ---------------------------------------------------------------- validation: errors, never crashes
def test_rejects_non_contiguous(kb):
    x = put(kb, np.zeros((4, 6), np.float32))[:, ::2]
    with pytest.raises(ValueError, match=r"argument 'x'.*C-contiguous"):
        kb.kernels.act_forward("relu", x, put(kb, np.zeros((4, 3), np.float32)), 0.0, 0.0, kb.stream())


def test_rejects_wrong_dtype_naming_the_argument(kb):
    with pytest.raises(TypeError, match=r"argument 'x': expected dtype float32.* but got float64"):
        kb.kernels.act_forward("relu", put(kb, np.zeros(3)), put(kb, np.zeros(3, np.float32)), 0.0, 0.0, kb.stream())
    with pytest.raises(TypeError, match=r"argument 'dy': expected dtype float32.* but got int32"):
        kb.kernels.bias_grad(put(kb, np.zeros((2, 3), np.int32)), put(kb, np.zeros(3, np.float32)), 1, kb.stream())


def test_rejects_wrong_shape(kb):
    x = put(kb, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"argument 'y': expected the shape of 'x' \(2, 3\) but got \(3, 2\)"):
        kb.kernels.act_forward("tanh", x, put(kb, np.zeros((3, 2), np.float32)), 0.0, 0.0, kb.stream())
    with pytest.raises(ValueError, match=r"argument 'dx'"):
        kb.kernels.act_backward("gelu", x, None, x, put(kb, np.zeros(6, np.float32)), 0.0, 0.0, kb.stream())
    with pytest.raises(ValueError, match=r"argument 'y': expected \(N, C, inner\) elements"):
        kb.kernels.bias_add(put(kb, np.zeros((2, 5), np.float32)), put(kb, np.zeros(3, np.float32)), 1, kb.stream())
    with pytest.raises(ValueError, match=r"argument 'b': expected a 1-d array"):
        kb.kernels.bias_add(x, put(kb, np.zeros((1, 3), np.float32)), 1, kb.stream())
    with pytest.raises(ValueError, match=r"argument 'inner': must be >= 1"):
        kb.kernels.bias_grad(x, put(kb, np.zeros(3, np.float32)), 0, kb.stream())
    with pytest.raises(ValueError, match=r"argument 'out': expected shape \(1,\) but got \(2,\)"):
        kb.kernels._block_sum(put(kb, np.zeros(8, np.float32)), put(kb, np.zeros(2, np.float32)), kb.stream())


def test_rejects_non_arrays_and_read_only_outputs(kb):
    y = put(kb, np.zeros(3, np.float32))
    with pytest.raises(TypeError, match=r"argument 'x': expected .* but got list"):
        kb.kernels.act_forward("relu", [1.0, 2.0, 3.0], y, 0.0, 0.0, kb.stream())
    with pytest.raises(TypeError, match=r"argument 'x'"):
        kb.kernels.act_forward("relu", None, y, 0.0, 0.0, kb.stream())
    if kb.name == "sim":  # CuPy has no read-only arrays
        ro = np.zeros(3, np.float32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match=r"argument 'y': is an output but the array is read-only"):
            sim.act_forward("relu", np.zeros(3, np.float32), ro, 0.0, 0.0, 0)


def test_validation_happens_before_any_launch(kb):
    """A call that fails validation leaves every output untouched."""
    x = put(kb, np.ones(8, np.float32))
    dx = put(kb, np.full(8, 7.0, np.float32))
    with pytest.raises(TypeError):
        kb.kernels.act_backward("gelu", x, None, put(kb, np.ones(8)), dx, 0.0, 0.0, kb.stream())
    np.testing.assert_array_equal(gpunet.to_numpy(dx), 7.0)


def test_launch_failure_raises_runtime_error_and_clears(kb):
    with pytest.raises(RuntimeError, match=r"gpunet kernel _invalid_launch failed: cudaErrorInvalidConfiguration: "):
        kb.kernels._invalid_launch(kb.stream())
    # the error was cleared: the next launch is fine
    x = put(kb, np.ones(5, np.float32))
    out = put(kb, np.zeros(1, np.float32))
    kb.kernels._block_sum(x, out, kb.stream())
    assert gpunet.to_numpy(out)[0] == 5.0


def test_empty_arrays_launch_nothing(kb):
    e = put(kb, np.zeros((0, 3), np.float32))
    kb.kernels.act_forward("sigmoid", e, e, 0.0, 0.0, kb.stream())
    kb.kernels.act_backward("gelu", e, None, e, e, 0.0, 0.0, kb.stream())
    kb.kernels.bias_add(e, put(kb, np.zeros(3, np.float32)), 1, kb.stream())
    db = put(kb, np.ones(3, np.float32))
    kb.kernels.bias_grad(e, db, 1, kb.stream())
    np.testing.assert_array_equal(gpunet.to_numpy(db), 0.0)


# ---------------------------------------------------------------- module attributes
def test_sim_module_attributes():
    assert sim.backend == "cudasim"
    assert sim.device_count() == 1 and sim.device_error() == ""
    with pytest.raises(ValueError, match="valid: fwd, rev, random"):
        sim.set_schedule("backwards")
    with pytest.raises(ValueError, match="must be >= 1"):
        sim.set_workers(0)


@pytest.mark.skipif(cuda_mod is None, reason="gpunet._C not built")
def test_cuda_module_without_or_with_a_gpu():
    """Runs on machines without a GPU too: the module imports, reports why
    there is no device, and rejects host arrays before touching CUDA."""
    assert cuda_mod.backend == "cuda"
    n = cuda_mod.device_count()
    assert isinstance(n, int) and n >= 0
    assert (cuda_mod.device_error() == "") == (n > 0)
    with pytest.raises(TypeError, match=r"argument 'x': expected a CUDA device array \(e\.g\. cupy\.ndarray\) "
                                        r"but got numpy\.ndarray \(host memory\)"):
        cuda_mod.act_forward("relu", np.zeros(3, np.float32), np.zeros(3, np.float32), 0.0, 0.0, 0)


def test_sim_rejects_device_arrays_by_name():
    class FakeDeviceArray:
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match=r"argument 'x': expected a host array .* \(device memory\)"):
        sim.act_forward("relu", FakeDeviceArray(), np.zeros(3, np.float32), 0.0, 0.0, 0)


def test_schedule_is_read_from_the_environment():
    code = "import gpunet._C_sim as m; print(m.schedule())"
    env = dict(os.environ, CUDASIM_SCHEDULE="rev")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "rev"


# ---------------------------------------------------------------- the random schedule finds races
def test_block_sum_is_right_under_every_schedule():
    rng = np.random.default_rng(8)
    try:
        for s in SCHEDULES:
            for seed in range(3):
                sim.set_schedule(s, seed)
                x = (rng.random(3000) + 1).astype(np.float32)
                out = np.zeros(1, np.float32)
                sim._block_sum(x, out, 0)
                assert out[0] == pytest.approx(x.sum(dtype=np.float64), rel=1e-5), (s, seed)
    finally:
        sim.set_schedule("fwd")


def test_random_schedule_exposes_a_missing_syncthreads():
    """_racy_block_sum lacks one barrier; some random order must read a
    partial sum before it is written. Fresh data for every launch, because a
    stale shared-memory value from the previous launch could be the right one."""
    rng = np.random.default_rng(9)
    wrong = 0
    try:
        for seed in range(8):
            sim.set_schedule("random", seed)
            x = (rng.random(3000) + 1).astype(np.float32)
            out = np.zeros(1, np.float32)
            sim._racy_block_sum(x, out, 0)
            wrong += out[0] != pytest.approx(x.sum(dtype=np.float64), rel=1e-5)
    finally:
        sim.set_schedule("fwd")
    assert wrong > 0
