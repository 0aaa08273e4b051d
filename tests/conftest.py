"""Shared fixtures. `device` runs a test on every backend, skipping the ones
this machine lacks with the reason; `schedule` runs a sim test under the three
thread orders of the CPU CUDA runtime (fwd, rev, random) to expose races."""
import numpy as np
import pytest

import gpunet

ALL_DEVICES = ("cpu", "sim", "cuda", "cupy")
_status = gpunet.backends()


def require(device: str):
    info = _status[device.split(":")[0]]
    if not info["available"]:
        pytest.skip(f"backend {device!r} unavailable: {info['reason']}")


@pytest.fixture(params=ALL_DEVICES)
def device(request):
    require(request.param)
    return request.param


@pytest.fixture(params=[d for d in ALL_DEVICES if d != "cpu"])
def kernel_device(request):
    """The backends that run hand-written kernels or CuPy (compared against cpu)."""
    require(request.param)
    return request.param


@pytest.fixture(params=["fwd", "rev", "random"])
def schedule(request):
    """For sim tests: run under each thread schedule (no-op elsewhere)."""
    if _status["sim"]["available"]:
        from gpunet import _C_sim
        _C_sim.set_schedule(request.param, 12345)
        yield request.param
        _C_sim.set_schedule("fwd", 12345)
    else:
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    gpunet.manual_seed(0)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
