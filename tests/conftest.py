"""Shared fixtures. `device` runs a test on every backend, skipping the ones
this machine lacks with the reason (sim compiles on first use wherever the
sources are: its absence fails); `schedule` runs a sim test under the three
thread orders of the CPU CUDA runtime (fwd, rev, random) to expose races.

Every test that runs on sim must run kernels there, not an array path: at
least one of the test module's KERNELS (its family's kernel names) when the
module lists them, else any kernel; and no op may fall back from its kernels
unless the test is marked `fallback(op, ...)` or its `case` (a
testing.OpCase) lists the op (a documented fallback), or it is marked
`no_kernels(why)` (it checks something before any kernel could run)."""
import importlib

import numpy as np
import pytest

import gpunet
from gpunet import testing

ALL_DEVICES = ("cpu", "sim", "cuda", "cupy")
_status = gpunet.backends()
# the CuPy fusions (the "fused" dispatch path) are tested against cpu where CuPy has a GPU
needs_cupy = pytest.mark.skipif(not _status["cupy"]["available"],
                                reason=f"backend 'cupy' unavailable: {_status['cupy']['reason']}")
FUSED_DTYPES = [np.float32, np.float64]


def require(device: str):
    name = device.split(":")[0]
    info = _status[name]
    if not info["available"]:
        if name == "sim":
            pytest.fail(f"backend 'sim' must be available (compiled on first use), but: {info['reason']}")
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


@pytest.fixture(params=["sim", "cuda"])
def kb(request):
    """A backend with compiled kernels (sim, cuda), for tests that call a
    binding directly through kb.kernels."""
    require(request.param)
    return gpunet.get_backend(request.param)


def put(be, a):
    """A fresh copy of host array `a` on backend `be` (a new, aligned allocation)."""
    return be.asarray(np.array(a))


def misaligned(be, a):
    """A C-contiguous copy of `a` on `be` whose data pointer is 4 bytes past a
    16-byte boundary: forces a kernel's scalar (non-float4) path."""
    view = put(be, np.zeros(a.size + 1, np.float32))[1:].reshape(a.shape)
    view[...] = put(be, a)
    return view


def f32(rng, shape, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(got, ref, n=1):
    """A kernel's float32 result against a float64 reference, within the
    tolerance rule for reductions of n terms."""
    testing.assert_close(gpunet.to_numpy(got).astype(np.float32), ref, n=n)


@pytest.fixture(params=testing.SCHEDULES)
def schedule(request):
    """For sim tests: run under each thread schedule (no-op elsewhere)."""
    with testing.schedule(request.param):
        yield request.param


@pytest.fixture(scope="session")
def simcheck():
    """gpunet._C_simcheck: the kernels under the race checker and the access
    profile. It compiles on first use (gpunet/simbuild.py), so its absence fails."""
    try:
        return importlib.import_module("gpunet._C_simcheck")
    except ImportError as e:
        pytest.fail(f"gpunet._C_simcheck must be available (compiled on first use), but: {e}")


@pytest.fixture(autouse=True)
def _seed():
    gpunet.manual_seed(0)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _on_sim(item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(isinstance(v, str) and v == "sim" for v in callspec.params.values())


@pytest.fixture(autouse=True)
def _sim_ran_kernels(request):
    if not _on_sim(request.node) or request.node.get_closest_marker("no_kernels"):
        yield
        return
    marker = request.node.get_closest_marker("fallback")
    allowed = marker.args if marker else ()
    case = request.node.callspec.params.get("case")
    if isinstance(case, testing.OpCase):  # a declared op test documents its own fallbacks
        allowed += case.fallbacks
    with testing.expect_kernels("sim", None, allowed) as use:
        yield
    family = getattr(request.module, "KERNELS", ())
    if family and not allowed and not any(use.calls[k] for k in family):
        pytest.fail(f"no kernel of this family {family} ran on sim; called: {dict(use.calls)}")


@pytest.fixture(params=["compiled", "numpy"])
def host_path(request, monkeypatch):
    """Runs a cpu test on the compiled host loops (gpunet/hostlib.py) and on
    the NumPy array code they stand in for."""
    from gpunet import hostlib
    if request.param == "numpy":
        monkeypatch.setattr(hostlib, "load", lambda: None)
    elif hostlib.load() is None:
        pytest.skip("no C compiler here: the compiled host loops are not built")
    return request.param
