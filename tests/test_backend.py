"""Backend selection and device handling, with the machine faked: CuPy missing,
CuPy without a GPU, CuPy with n GPUs, the extension missing or seeing no GPU.
Checks the reasons `backends()` gives, what 'auto' picks and logs, the
GPUNET_DEVICE override, device indices, wrong-device errors, the NaN/Inf
input-scan switch, and the per-op fallback counter (on sim)."""
import logging
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import gpunet
from gpunet import backend as B
from gpunet import checks, nn
from gpunet.testing import compare_module

from conftest import require


class FakeCupyArray:
    """Stands in for a cupy.ndarray living on one GPU."""
    __module__ = "cupy"
    __cuda_array_interface__ = {}
    dtype, ndim = np.dtype(np.float32), 1

    def __init__(self, gpu: int):
        self.device = types.SimpleNamespace(id=gpu)


FakeCupyArray.__name__ = "ndarray"


def fake_cupy(gpus=1, error=None):
    """A module that imports like CuPy and reports `gpus` devices (or raises `error`)."""
    mod = types.ModuleType("cupy")
    mod.__version__ = "99.0"
    mod.ndarray = FakeCupyArray
    synced = []

    def count():
        if error is not None:
            raise error
        return gpus

    class Device:
        def __init__(self, i=0):
            self.id = i

        def __enter__(self):
            synced.append(("enter", self.id))
            return self

        def __exit__(self, *exc):
            return False

    mod.cuda = types.SimpleNamespace(
        Device=Device,
        runtime=types.SimpleNamespace(getDeviceCount=count, deviceSynchronize=lambda: synced.append("sync")))
    mod.synced = synced
    return mod


@pytest.fixture
def machine(monkeypatch, caplog):
    """machine(cupy=None | fake module, ext=None | GPU count the extension sees):
    fakes what is installed; backends are created afresh."""
    monkeypatch.setattr(B, "_cache", {})
    monkeypatch.delenv("GPUNET_DEVICE", raising=False)
    caplog.set_level(logging.INFO, logger="gpunet")
    real_import = B._import_kernels

    def setup(cupy=None, ext=None):
        monkeypatch.setitem(sys.modules, "cupy", cupy)  # None: `import cupy` raises ImportError

        def import_kernels(name):
            if name != "gpunet._C":
                return real_import(name)
            if ext is None:
                raise ImportError("No module named 'gpunet._C'")
            return types.SimpleNamespace(device_count=lambda: ext, device_error=lambda: "no CUDA-capable device")

        monkeypatch.setattr(B, "_import_kernels", import_kernels)
        return cupy

    return setup


# ---------------------------------------------------------------- reasons
def test_reasons_without_cupy(machine):
    machine(cupy=None)
    info = gpunet.backends()
    assert info["cpu"]["available"]
    assert not info["cupy"]["available"] and "CuPy is not installed" in info["cupy"]["reason"]
    assert "cuda13" in info["cupy"]["reason"]  # says how to get it
    assert not info["cuda"]["available"]
    assert "CuPy is not installed" in info["cuda"]["reason"]
    assert "extension gpunet._C not built" in info["cuda"]["reason"]


@pytest.mark.parametrize("cupy_args,detail", [
    (dict(error=RuntimeError("cudaErrorInsufficientDriver")), "cudaErrorInsufficientDriver"),
    (dict(gpus=0), "finds no GPU"),
])
def test_reasons_cupy_without_a_device(machine, cupy_args, detail):
    machine(cupy=fake_cupy(**cupy_args), ext=1)
    info = gpunet.backends()
    for name in ("cupy", "cuda"):
        assert not info[name]["available"]
        assert "CuPy 99.0 is installed but finds no GPU" in info[name]["reason"]
        assert detail in info[name]["reason"]


def test_reasons_extension_missing(machine):
    machine(cupy=fake_cupy(gpus=2), ext=None)
    info = gpunet.backends()
    assert info["cupy"] == {"available": True, "reason": "CuPy 99.0, 2 GPU(s)"}
    assert not info["cuda"]["available"]
    assert info["cuda"]["reason"].startswith("extension gpunet._C not built")


def test_reasons_extension_sees_no_gpu(machine):
    machine(cupy=fake_cupy(gpus=1), ext=0)
    info = gpunet.backends()["cuda"]
    assert not info["available"] and "gpunet._C sees no GPU (no CUDA-capable device)" in info["reason"]


# ---------------------------------------------------------------- auto
@pytest.mark.parametrize("cupy_args,ext,picked,skipped", [
    (None, None, "cpu", {"cuda": "CuPy is not installed", "cupy": "CuPy is not installed"}),
    (dict(gpus=0), 1, "cpu", {"cuda": "finds no GPU", "cupy": "finds no GPU"}),
    (dict(gpus=1), None, "cupy", {"cuda": "extension gpunet._C not built"}),
    (dict(gpus=1), 1, "cuda", {}),
])
def test_auto_picks_cuda_then_cupy_then_cpu_and_says_why(machine, caplog, cupy_args, ext, picked, skipped):
    machine(cupy=None if cupy_args is None else fake_cupy(**cupy_args), ext=ext)
    be = gpunet.get_backend("auto")
    assert be.name == picked
    assert gpunet.get_backend(None) is be
    messages = [r.getMessage() for r in caplog.records if r.name == "gpunet"]
    assert any(m.startswith(f"gpunet: auto picked backend {picked!r}: ") for m in messages), messages
    for name, why in skipped.items():
        assert any(m.startswith(f"gpunet: auto skipped backend {name!r}: ") and why in m for m in messages), messages


def test_environment_variable_forces_a_backend(machine, monkeypatch, caplog):
    machine(cupy=fake_cupy(gpus=2), ext=2)
    monkeypatch.setenv("GPUNET_DEVICE", "cpu")
    assert gpunet.get_backend("auto").name == "cpu"
    assert any("GPUNET_DEVICE=cpu forces the backend" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("GPUNET_DEVICE", "cupy:1")
    assert gpunet.get_backend().device == "cupy:1"
    monkeypatch.setenv("GPUNET_DEVICE", "auto")
    assert gpunet.get_backend().name == "cuda"
    monkeypatch.setenv("GPUNET_DEVICE", "tpu")
    with pytest.raises(ValueError, match="'tpu'"):
        gpunet.get_backend()


def test_environment_variable_picks_the_backend_of_a_fresh_process():
    """The real switch, read where a program starts: no faked machine."""
    env = dict(os.environ, GPUNET_DEVICE="sim")
    code = "import gpunet; print(gpunet.get_backend().name, gpunet.get_backend('auto').name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["sim", "sim"]


def test_environment_cannot_conjure_a_missing_backend(machine, monkeypatch):
    machine(cupy=None)
    monkeypatch.setenv("GPUNET_DEVICE", "cupy")
    with pytest.raises(RuntimeError, match="backend 'cupy' is not available: CuPy is not installed"):
        gpunet.get_backend()


def test_argument_forces_a_backend(machine):
    machine(cupy=fake_cupy(gpus=1), ext=1)
    assert gpunet.get_backend("cupy").name == "cupy"
    assert gpunet.get_backend("cpu").name == "cpu"
    machine(cupy=None)
    B._cache.clear()
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available: CuPy is not installed"):
        gpunet.get_backend("cuda")


@pytest.mark.parametrize("device,error,match", [
    ("cuda:x", ValueError, "non-negative integer"),
    ("gpu", ValueError, "expected one of cpu, sim, cuda, cupy"),
    (3, TypeError, "got int"),
])
def test_bad_device_strings(device, error, match):
    with pytest.raises(error, match=match):
        gpunet.get_backend(device)


# ---------------------------------------------------------------- device indices
def test_device_index_beyond_the_gpus_present(machine):
    machine(cupy=fake_cupy(gpus=1), ext=1)
    for device in ("cupy:1", "cuda:1"):
        with pytest.raises(ValueError, match=f"'{device}' asks for GPU 1, but only 1 GPU"):
            gpunet.get_backend(device)
        with pytest.raises(ValueError, match="asks for GPU 1"):
            nn.Linear(2, 2).to(device)
    assert gpunet.get_backend("cupy:0").device == "cupy"  # index 0 is the plain name


def test_wrong_device_error_names_both(machine):
    machine(cupy=fake_cupy(gpus=2), ext=None)
    gpu1 = gpunet.get_backend("cupy:1")
    with pytest.raises(TypeError, match=r"input: expected a cupy.ndarray on GPU 1 for backend 'cupy:1', "
                                        r"got cupy.ndarray on GPU 0 \(move it with gpunet.asarray"):
        checks.array(gpu1, FakeCupyArray(0), "input")
    assert checks.array(gpu1, FakeCupyArray(1), "input") is not None
    with pytest.raises(TypeError, match="expected a cupy.ndarray on GPU 1 .* got numpy.ndarray"):
        checks.array(gpu1, np.zeros(3), "input")
    with pytest.raises(TypeError, match="expected a numpy.ndarray for backend 'cpu', got cupy.ndarray on GPU 1"):
        checks.array(gpunet.get_backend("cpu"), FakeCupyArray(1), "input")


def test_wrong_device_error_for_a_foreign_gpu_tensor():
    class TorchLike:  # a CUDA tensor of another framework: device.index, not device.id
        __cuda_array_interface__ = {}
        device = types.SimpleNamespace(index=3)
    with pytest.raises(TypeError, match="got .*TorchLike on GPU 3"):
        checks.array(gpunet.get_backend("cpu"), TorchLike(), "input")


def test_synchronize_waits_for_the_whole_device(machine):
    cupy = machine(cupy=fake_cupy(gpus=2), ext=None)
    gpunet.synchronize("cpu")  # host backends: nothing to wait for
    gpunet.synchronize("cupy:1")
    assert cupy.synced == [("enter", 1), "sync"]


# ---------------------------------------------------------------- fallback counter
def test_fallbacks_are_counted_and_logged(caplog, rng):
    from gpunet.ops import attention
    caplog.set_level(logging.DEBUG, logger="gpunet")
    B.reset_fallbacks()
    sim, cpu = gpunet.get_backend("sim"), gpunet.get_backend("cpu")
    x64 = rng.standard_normal((2, 5))
    gpunet.functional.softmax(x64, -1, device="sim")
    q = rng.standard_normal((1, 3, 130)).astype(np.float32)
    attention.sdpa_forward(sim, q, q, q)
    nn.BatchNorm1d(5).to("sim")(x64.astype(np.float32))
    gpunet.functional.softmax(x64, -1, device="cpu")  # the array path is cpu's own: no fallback
    attention.sdpa_forward(cpu, q, q, q)
    counts = B.fallbacks()
    assert counts == {
        ("softmax", "dtype float64 (the kernels are float32)"): 1,
        ("attention", "head dim 130 > 128"): 1,
        ("batch_norm", "no kernel (batch norm is array code on every backend)"): 1,
    }
    assert "gpunet: sim op attention fell back to the array path: head dim 130 > 128" in caplog.messages
    B.reset_fallbacks()
    assert not B.fallbacks()


@pytest.mark.fallback("lstm", "rnn", "linear", "embedding")
@pytest.mark.parametrize("device", ["sim", "cuda"])
@pytest.mark.parametrize("op,make,x", [
    ("lstm", lambda: nn.LSTM(3, 4, num_layers=2), np.linspace(-1, 1, 12).reshape(2, 2, 3)),
    ("rnn", lambda: nn.RNNCell(3, 4), np.linspace(-1, 1, 6).reshape(2, 3)),
    ("linear", lambda: nn.Linear(3, 4), np.linspace(-1, 1, 6).reshape(2, 3)),
    ("embedding", lambda: nn.Embedding(5, 3, padding_idx=1), np.array([1, 2, 2, 4])),
])
def test_float64_runs_the_array_path_on_kernel_backends(device, op, make, x):
    """The kernels are float32: a float64 model on sim/cuda runs what cpu (on
    sim) or cupy (on cuda: its fusions, else array code) runs, instead of
    failing, and says so."""
    require(device)
    B.reset_fallbacks()
    compare_module(make().to(np.float64), (x,), devices=("cpu", device), fallbacks=(op,))
    assert B.fallbacks()[(op, "dtype float64 (the kernels are float32)")]


# ---------------------------------------------------------------- NaN/Inf input scans
def test_finite_checks_switch(monkeypatch):
    """On by default on the host, off on GPUs; set_finite_checks flips each."""
    monkeypatch.setattr(checks, "_finite", dict(checks._finite))  # restored after the test
    x = np.array([[0.0, np.nan]], dtype=np.float32)
    lin = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="input: contains 1 NaN/Inf"):
        lin(x)
    gpu = types.SimpleNamespace(on_gpu=True)
    assert not checks.finite_checks_enabled(gpu)
    gpunet.set_finite_checks(host=False)
    assert np.isnan(lin(x)).all()  # no scan: the NaN flows through
    assert not checks.finite_checks_enabled(gpunet.get_backend("cpu"))
    gpunet.set_finite_checks(gpu=True)
    assert checks.finite_checks_enabled(gpu) and not checks.finite_checks_enabled(gpunet.get_backend("cpu"))
    gpunet.set_finite_checks(host=True, gpu=False)
    with pytest.raises(ValueError, match="NaN/Inf"):
        lin(x)
    assert not checks.finite_checks_enabled(gpu)


_FAULTS_PER_STEP = """
import resource, numpy as np, gpunet
from gpunet.models import digits_cnn
rng = np.random.default_rng(0)
model = digits_cnn(width=32)
x, t = rng.standard_normal((64, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 64)
crit, opt = gpunet.nn.CrossEntropyLoss(), gpunet.optim.Adam(model.parameters(), lr=1e-3)
def step():
    model.zero_grad(); crit(model(x), t); model.backward(crit.backward()); opt.step()
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10): step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                    reason="glibc's heap top pad")
def test_host_backend_keeps_freed_heap_top_no_page_faults_per_training_step():
    """A cpu training loop does not fault its arrays back in every step (the
    heap's top pad, gpunet.backend._keep_freed_memory); a process's own
    MALLOC_TOP_PAD_ (here 0) is left as it is, and the faults come back."""
    def faults(env):
        out = subprocess.run([sys.executable, "-c", _FAULTS_PER_STEP], capture_output=True, text=True, timeout=120,
                             env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        return float(out.stdout.split()[-1])
    own = {k: v for k, v in os.environ.items() if k != "MALLOC_TOP_PAD_"}
    padded, unpadded = faults(own), faults(dict(own, MALLOC_TOP_PAD_="0"))
    assert padded < 20 and unpadded > 10 * max(padded, 10), (padded, unpadded)


# Where an 8 MiB array's data lies: in the heap (brk), or in a mapping of its
# own. Read from the process's memory map, so that no other thread's
# allocations can blur it. argv[1] says whether to start the host backend.
_ARRAY_IN_HEAP = """
import sys, numpy as np
if sys.argv[1] == "1":
    import gpunet
    gpunet.get_backend("cpu")
a = np.ones(2 << 20, np.float32)
addr = a.ctypes.data
for line in open("/proc/self/maps"):
    span, *rest = line.split(None, 5)
    lo, hi = (int(v, 16) for v in span.split("-"))
    if lo <= addr < hi:
        print(int(rest[-1].strip() == "[heap]") if len(rest) == 5 else 0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                    reason="glibc's mmap threshold")
def test_host_backend_takes_arrays_up_to_32_mib_from_the_heap():
    """An 8 MiB array comes from the heap, not a mapping of its own (zeroed
    by the kernel on first write, unmapped when freed: glibc's threshold
    stays at 128 KiB once the top pad is set); a process's own
    MALLOC_MMAP_THRESHOLD_ is left as it is. That one sets no top pad either:
    glibc carves a request from the heap's free top, whatever its size,
    before it looks at the threshold, so with gpunet's pad an 8 MiB array
    may come from the heap under any threshold."""
    def in_heap(env, backend):
        out = subprocess.run([sys.executable, "-c", _ARRAY_IN_HEAP, str(int(backend))], capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()[-1] == "1"
    own = {k: v for k, v in os.environ.items() if k not in ("MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")}
    low = dict(own, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TOP_PAD_="0")
    if in_heap(low, backend=False):
        pytest.skip("this process's malloc does not follow MALLOC_MMAP_THRESHOLD_ "
                    f"(GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')!r}, "
                    f"LD_PRELOAD={os.environ.get('LD_PRELOAD')!r})")
    assert in_heap(own, backend=True)
    assert not in_heap(low, backend=True)
