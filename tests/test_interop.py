"""gpunet.from_dlpack / to_dlpack: zero-copy exchange with NumPy, PyTorch (CPU
tensors here; CUDA tensors when a GPU and CuPy are present) and DLPack
capsules; clear errors for everything else."""
import sys

import numpy as np
import pytest

import gpunet
from gpunet import nn


def test_numpy_round_trip_through_a_capsule_shares_memory():
    x = np.arange(12.0).reshape(3, 4)
    assert gpunet.from_dlpack(x) is x  # already a cpu array: nothing to do
    y = gpunet.from_dlpack(gpunet.to_dlpack(x))
    assert isinstance(y, np.ndarray) and y.shape == x.shape and np.shares_memory(x, y)
    x[2, 3] = -7.0
    assert y[2, 3] == -7.0


def test_numpy_consumers_take_gpunet_arrays_directly():
    x = np.linspace(0, 1, 5, dtype=np.float32)
    y = np.from_dlpack(gpunet.asarray(x, device="cpu"))
    assert np.shares_memory(x, y)


def test_device_argument_moves_or_keeps():
    x = np.arange(4.0)
    assert np.shares_memory(gpunet.from_dlpack(x, device="cpu"), x)
    with pytest.raises(ValueError, match="device"):
        gpunet.from_dlpack(x, device="tpu")


def test_rejects_non_arrays():
    with pytest.raises(TypeError, match="x: expected an array implementing DLPack.*got list"):
        gpunet.from_dlpack([1.0, 2.0])
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray or cupy.ndarray, got list"):
        gpunet.to_dlpack([1.0, 2.0])


class _FakeGpuTensor:
    """A producer claiming CUDA memory on GPU 0 (never actually read)."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, **kwargs):
        raise AssertionError("must not be consumed without CuPy")


def test_gpu_memory_without_cupy_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` fails
    with pytest.raises(RuntimeError, match="CUDA memory on GPU 0 needs CuPy"):
        gpunet.from_dlpack(_FakeGpuTensor())


def test_unknown_device_type():
    class Vulkan(_FakeGpuTensor):
        def __dlpack_device__(self):
            return (7, 0)
    with pytest.raises(ValueError, match="device type 7"):
        gpunet.from_dlpack(Vulkan())


# ---------------------------------------------------------------- PyTorch
def test_torch_cpu_tensor_in_and_out_share_memory():
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    a = gpunet.from_dlpack(t)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (2, 3)
    a[0, 1] = 42.0  # gpunet -> torch
    assert t[0, 1].item() == 42.0
    t[1, 2] = -5.0  # torch -> gpunet
    assert a[1, 2] == -5.0
    back = torch.from_dlpack(a)  # the array itself is a DLPack producer
    back[1, 0] = 9.0
    assert t[1, 0].item() == 9.0
    via_capsule = torch.utils.dlpack.from_dlpack(gpunet.to_dlpack(a))
    via_capsule[0, 0] = 3.0
    assert a[0, 0] == 3.0


def test_torch_strided_tensor_keeps_its_strides():
    torch = pytest.importorskip("torch")
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    a = gpunet.from_dlpack(t.T)
    np.testing.assert_array_equal(a, t.T.numpy())
    t[2, 1] = 100.0
    assert a[1, 2] == 100.0


def test_torch_capsule_is_imported_once():
    torch = pytest.importorskip("torch")
    t = torch.ones(3, dtype=torch.float32)
    cap = torch.utils.dlpack.to_dlpack(t)
    a = gpunet.from_dlpack(cap)
    t[1] = 2.0
    assert a[1] == 2.0  # shared (read-only on the NumPy side: a legacy capsule has no read-only flag)
    with pytest.raises(ValueError, match="already consumed"):
        gpunet.from_dlpack(cap)


def test_torch_tensor_feeds_a_module():
    torch = pytest.importorskip("torch")
    lin = nn.Linear(4, 3)
    ref = torch.nn.Linear(4, 3)
    lin.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    x = torch.randn(5, 4)
    y = lin(gpunet.from_dlpack(x))
    with torch.no_grad():
        np.testing.assert_allclose(y, ref(x).numpy(), rtol=1e-6, atol=1e-6)


def test_torch_cuda_tensor_becomes_cupy_without_copy():
    torch = pytest.importorskip("torch")
    status = gpunet.backends()["cupy"]
    if not status["available"] or not torch.cuda.is_available():
        pytest.skip(f"needs PyTorch with CUDA and CuPy with a GPU (cupy: {status['reason']})")
    t = torch.arange(8, dtype=torch.float32, device="cuda")
    a = gpunet.from_dlpack(t)
    assert type(a).__module__.startswith("cupy") and a.data.ptr == t.data_ptr()
    back = torch.from_dlpack(a)
    assert back.data_ptr() == t.data_ptr()
    host = gpunet.from_dlpack(t, device="cpu")
    np.testing.assert_array_equal(host, np.arange(8, dtype=np.float32))
