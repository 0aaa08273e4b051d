"""The compiled extension itself: the binding convention (validation before
any launch, errors as Python exceptions), the activation and bias kernels
against float64 NumPy references, and the simulator's race detection.

Builds nothing: it imports gpunet._C_sim (built by `pip install -e .`) and,
where it was built and a GPU and CuPy are present, gpunet._C.
"""
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

sim = pytest.importorskip("gpunet._C_sim", reason="gpunet._C_sim is not built (pip install -e .)")

try:
    import gpunet._C as cuda_mod
except ImportError as e:
    cuda_mod = None
    CUDA_MISSING = f"gpunet._C not built ({e})"

KINDS = ("relu", "leaky_relu", "sigmoid", "tanh", "softsign", "gelu", "softplus")
# (alpha, beta) per kind: negative_slope; softplus beta and threshold (small
# enough that the random inputs cross it). The other kinds ignore both.
PARAMS = {"leaky_relu": (0.1, 0.0), "softplus": (1.5, 4.0)}
SHAPES = ((1,), (3,), (1023,), (4097,), (7, 33))
SCHEDULES = ("fwd", "rev", "random")
erf = np.vectorize(math.erf)


# ---------------------------------------------------------------- backends
class SimBackend:
    mod = sim

    def put(self, a):
        return np.array(a)  # a fresh (aligned) copy

    def get(self, a):
        return np.asarray(a)

    def stream(self):
        return 0


class CudaBackend:
    def __init__(self, mod, cupy):
        self.mod, self.cp = mod, cupy

    def put(self, a):
        return self.cp.asarray(a)

    def get(self, a):
        return self.cp.asnumpy(a)

    def stream(self):
        return self.cp.cuda.get_current_stream().ptr


def _cuda_backend():
    """(CudaBackend, "") when kernels can run on a GPU here, else (None, why not)."""
    if cuda_mod is None:
        return None, CUDA_MISSING
    if cuda_mod.device_count() == 0:
        return None, f"gpunet._C sees no GPU ({cuda_mod.device_error()})"
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed"
    return CudaBackend(cuda_mod, cupy), ""


CUDA, CUDA_WHY_NOT = _cuda_backend()
BACKENDS = [pytest.param(SimBackend(), id="sim")]
if CUDA is not None:
    BACKENDS.append(pytest.param(CUDA, id="cuda", marks=pytest.mark.gpu))


@pytest.fixture(params=BACKENDS)
def be(request):
    return request.param


@pytest.mark.gpu
def test_cuda_backend_runs_these_tests():
    """Every test taking `be` also runs on the GPU when there is one."""
    if CUDA is None:
        pytest.skip(f"kernel tests ran on sim only: {CUDA_WHY_NOT}")


@pytest.fixture(params=SCHEDULES)
def schedule(request, be):
    """Runs a test under each simulator schedule; on a GPU only once."""
    if be.mod is not sim:
        if request.param != "fwd":
            pytest.skip("thread schedules exist only in the simulator")
        yield request.param
        return
    previous = sim.schedule()
    sim.set_schedule(request.param, 7)
    yield request.param
    sim.set_schedule(previous)


# ---------------------------------------------------------------- float64 references
def ref_forward(kind, x, alpha, beta):
    if kind == "relu":
        return np.maximum(x, 0)
    if kind == "leaky_relu":
        return np.where(x > 0, x, alpha * x)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if kind == "tanh":
        return np.tanh(x)
    if kind == "softsign":
        return x / (1 + np.abs(x))
    if kind == "gelu":
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    return np.where(alpha * x > beta, x, np.log1p(np.exp(alpha * x)) / alpha)  # softplus


def ref_backward(kind, x, y, dy, alpha, beta):
    """dy * f'; relu/sigmoid/tanh from the output y, the others from x."""
    if kind == "relu":
        return np.where(y > 0, dy, 0)
    if kind == "leaky_relu":
        return np.where(x > 0, dy, alpha * dy)
    if kind == "sigmoid":
        return dy * y * (1 - y)
    if kind == "tanh":
        return dy * (1 - y * y)
    if kind == "softsign":
        return dy / (1 + np.abs(x)) ** 2
    if kind == "gelu":
        return dy * (0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi))
    return np.where(alpha * x > beta, dy, dy / (1 + np.exp(-alpha * x)))  # softplus


def f32(rng, shape, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def misaligned(be, a):
    """A C-contiguous view of a copy of `a` whose data pointer is 4 bytes
    past a 16-byte boundary: forces the scalar (non-float4) path."""
    buf = be.put(np.zeros(a.size + 1, np.float32))
    view = buf[1:].reshape(a.shape)
    view[...] = be.put(a)
    return view


def close(got, ref, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- activations
@pytest.mark.parametrize("aligned", [True, False], ids=["float4", "scalar"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_act_forward(be, schedule, kind, shape, aligned):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{shape}".encode()))
    alpha, beta = PARAMS.get(kind, (0.0, 0.0))
    x = f32(rng, shape)
    place = be.put if aligned else (lambda a: misaligned(be, a))
    xd, yd = place(x), place(np.full(shape, np.nan, np.float32))
    be.mod.act_forward(kind, xd, yd, alpha, beta, be.stream())
    close(be.get(yd), ref_forward(kind, x.astype(np.float64), alpha, beta))


@pytest.mark.parametrize("aligned", [True, False], ids=["float4", "scalar"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_act_backward(be, schedule, kind, shape, aligned):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{shape}bwd".encode()))
    alpha, beta = PARAMS.get(kind, (0.0, 0.0))
    x = f32(rng, shape)
    y = ref_forward(kind, x.astype(np.float64), alpha, beta).astype(np.float32)
    dy = f32(rng, shape, 1.0)
    place = be.put if aligned else (lambda a: misaligned(be, a))
    dxd = place(np.full(shape, np.nan, np.float32))
    be.mod.act_backward(kind, place(x), place(y), place(dy), dxd, alpha, beta, be.stream())
    x64, y64, dy64 = (a.astype(np.float64) for a in (x, y, dy))
    close(be.get(dxd), ref_backward(kind, x64, y64, dy64, alpha, beta))


@pytest.mark.parametrize("kind", KINDS)
def test_act_backward_ignores_the_unused_input(be, kind):
    """relu/sigmoid/tanh read y, the others x; the other one may be None."""
    uses = be.mod.act_backward_input(kind)
    assert uses == ("y" if kind in ("relu", "sigmoid", "tanh") else "x")
    rng = np.random.default_rng(3)
    alpha, beta = PARAMS.get(kind, (0.0, 0.0))
    x = f32(rng, (64,))
    y = ref_forward(kind, x.astype(np.float64), alpha, beta).astype(np.float32)
    dy = f32(rng, (64,), 1.0)
    dx = be.put(np.zeros(64, np.float32))
    args = (be.put(x), None) if uses == "x" else (None, be.put(y))
    be.mod.act_backward(kind, *args, be.put(dy), dx, alpha, beta, be.stream())
    close(be.get(dx), ref_backward(kind, x.astype(np.float64), y.astype(np.float64), dy.astype(np.float64), alpha, beta))


def test_act_forward_in_place(be):
    x = f32(np.random.default_rng(4), (1000,))
    xd = be.put(x)
    be.mod.act_forward("gelu", xd, xd, 0.0, 0.0, be.stream())
    close(be.get(xd), ref_forward("gelu", x.astype(np.float64), 0.0, 0.0))


def test_softplus_torch_defaults_and_extremes(be):
    """beta=1, threshold=20 as torch; large |x| neither overflows nor loses the linear branch."""
    x = np.array([-100, -30, -1, 0, 1, 19.9, 20.1, 30, 100], np.float32)
    y, dx = be.put(np.zeros_like(x)), be.put(np.zeros_like(x))
    be.mod.act_forward("softplus", be.put(x), y, 1.0, 20.0, be.stream())
    be.mod.act_backward("softplus", be.put(x), None, be.put(np.ones_like(x)), dx, 1.0, 20.0, be.stream())
    x64 = x.astype(np.float64)
    close(be.get(y), ref_forward("softplus", x64, 1.0, 20.0))
    close(be.get(dx), ref_backward("softplus", x64, None, np.ones_like(x64), 1.0, 20.0))


def test_relu_propagates_nan(be):
    y = be.put(np.zeros(4, np.float32))
    be.mod.act_forward("relu", be.put(np.array([np.nan, -1, 0, 2], np.float32)), y, 0.0, 0.0, be.stream())
    np.testing.assert_array_equal(be.get(y), [np.nan, 0, 0, 2])


# ---------------------------------------------------------------- bias
BIAS_SHAPES = ((1, 1, 1), (3, 5, 1), (2, 3, 7), (4, 6, 16), (2, 3, 1025), (0, 4, 3))


@pytest.mark.parametrize("aligned", [True, False], ids=["float4", "scalar"])
@pytest.mark.parametrize("n,c,inner", BIAS_SHAPES, ids=str)
def test_bias_add(be, schedule, n, c, inner, aligned):
    rng = np.random.default_rng(n * 100 + c * 10 + inner)
    y = f32(rng, (n, c, inner))
    b = f32(rng, (c,))
    yd = be.put(y) if aligned else misaligned(be, y)
    be.mod.bias_add(yd, be.put(b), inner, be.stream())
    close(be.get(yd), y.astype(np.float64) + b[None, :, None].astype(np.float64))


def test_bias_add_linear_and_conv_layouts(be):
    rng = np.random.default_rng(5)
    lin, conv, b = f32(rng, (8, 10)), f32(rng, (2, 10, 3, 5)), f32(rng, (10,))
    lin_d, conv_d = be.put(lin), be.put(conv)
    be.mod.bias_add(lin_d, be.put(b), 1, be.stream())
    be.mod.bias_add(conv_d, be.put(b), 15, be.stream())
    close(be.get(lin_d), lin.astype(np.float64) + b)
    close(be.get(conv_d), conv.astype(np.float64) + b[None, :, None, None])


@pytest.mark.parametrize("n,c,inner", BIAS_SHAPES + ((64, 3, 300),), ids=str)
def test_bias_grad(be, schedule, n, c, inner):
    rng = np.random.default_rng(n * 100 + c * 10 + inner + 1)
    dy = f32(rng, (n, c, inner))
    db = be.put(np.full(c, np.nan, np.float32))
    be.mod.bias_grad(be.put(dy), db, inner, be.stream())
    close(be.get(db), dy.astype(np.float64).sum(axis=(0, 2)), rtol=1e-5, atol=1e-4)


def test_bias_grad_is_bitwise_deterministic(be):
    """Same bits on every run and, in the simulator, under every schedule."""
    dy = be.put(f32(np.random.default_rng(6), (32, 5, 97)))
    results = []
    for s in (SCHEDULES if be.mod is sim else ("fwd",)) * 2:
        if be.mod is sim:
            sim.set_schedule(s, 11)
        db = be.put(np.zeros(5, np.float32))
        be.mod.bias_grad(dy, db, 97, be.stream())
        results.append(be.get(db).tobytes())
    if be.mod is sim:
        sim.set_schedule("fwd")
    assert len(set(results)) == 1


# ---------------------------------------------------------------- validation: errors, never crashes
def test_rejects_non_contiguous(be):
    x = be.put(np.zeros((4, 6), np.float32))[:, ::2]
    with pytest.raises(ValueError, match=r"argument 'x'.*C-contiguous"):
        be.mod.act_forward("relu", x, be.put(np.zeros((4, 3), np.float32)), 0.0, 0.0, be.stream())


def test_rejects_wrong_dtype_naming_the_argument(be):
    with pytest.raises(TypeError, match=r"argument 'x': expected dtype float32 but got float64"):
        be.mod.act_forward("relu", be.put(np.zeros(3)), be.put(np.zeros(3, np.float32)), 0.0, 0.0, be.stream())
    with pytest.raises(TypeError, match=r"argument 'dy': expected dtype float32 but got int32"):
        be.mod.bias_grad(be.put(np.zeros((2, 3), np.int32)), be.put(np.zeros(3, np.float32)), 1, be.stream())


def test_rejects_wrong_shape(be):
    x = be.put(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"argument 'y': expected the shape of 'x' \(2, 3\) but got \(3, 2\)"):
        be.mod.act_forward("tanh", x, be.put(np.zeros((3, 2), np.float32)), 0.0, 0.0, be.stream())
    with pytest.raises(ValueError, match=r"argument 'dx'"):
        be.mod.act_backward("gelu", x, None, x, be.put(np.zeros(6, np.float32)), 0.0, 0.0, be.stream())
    with pytest.raises(ValueError, match=r"argument 'y': expected \(N, C, inner\) elements"):
        be.mod.bias_add(be.put(np.zeros((2, 5), np.float32)), be.put(np.zeros(3, np.float32)), 1, be.stream())
    with pytest.raises(ValueError, match=r"argument 'b': expected a 1-d array"):
        be.mod.bias_add(x, be.put(np.zeros((1, 3), np.float32)), 1, be.stream())
    with pytest.raises(ValueError, match=r"argument 'inner': must be >= 1"):
        be.mod.bias_grad(x, be.put(np.zeros(3, np.float32)), 0, be.stream())
    with pytest.raises(ValueError, match=r"argument 'out': expected shape \(1,\) but got \(2,\)"):
        be.mod._block_sum(be.put(np.zeros(8, np.float32)), be.put(np.zeros(2, np.float32)), be.stream())


def test_rejects_non_arrays_and_read_only_outputs(be):
    y = be.put(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match=r"argument 'x': expected .* but got list"):
        be.mod.act_forward("relu", [1.0, 2.0, 3.0], y, 0.0, 0.0, be.stream())
    with pytest.raises(TypeError, match=r"argument 'x'"):
        be.mod.act_forward("relu", None, y, 0.0, 0.0, be.stream())
    if be.mod is sim:  # CuPy has no read-only arrays
        ro = np.zeros(3, np.float32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match=r"argument 'y': is an output but the array is read-only"):
            sim.act_forward("relu", np.zeros(3, np.float32), ro, 0.0, 0.0, 0)


def test_rejects_unknown_kind_listing_the_valid_ones(be):
    x = be.put(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="valid kinds: relu, leaky_relu, sigmoid, tanh, softsign, gelu, softplus"):
        be.mod.act_forward("swish", x, x, 0.0, 0.0, be.stream())
    with pytest.raises(ValueError, match="softplus: beta"):
        be.mod.act_forward("softplus", x, x, 0.0, 20.0, be.stream())


def test_validation_happens_before_any_launch(be):
    """A call that fails validation leaves every output untouched."""
    x = be.put(np.ones(8, np.float32))
    dx = be.put(np.full(8, 7.0, np.float32))
    with pytest.raises(TypeError):
        be.mod.act_backward("gelu", x, None, be.put(np.ones(8)), dx, 0.0, 0.0, be.stream())
    np.testing.assert_array_equal(be.get(dx), 7.0)


def test_launch_failure_raises_runtime_error_and_clears(be):
    with pytest.raises(RuntimeError, match=r"gpunet kernel _invalid_launch failed: cudaErrorInvalidConfiguration: "):
        be.mod._invalid_launch(be.stream())
    # the error was cleared: the next launch is fine
    x = be.put(np.ones(5, np.float32))
    out = be.put(np.zeros(1, np.float32))
    be.mod._block_sum(x, out, be.stream())
    assert be.get(out)[0] == 5.0


def test_empty_arrays_launch_nothing(be):
    e = be.put(np.zeros((0, 3), np.float32))
    be.mod.act_forward("sigmoid", e, e, 0.0, 0.0, be.stream())
    be.mod.act_backward("gelu", e, None, e, e, 0.0, 0.0, be.stream())
    be.mod.bias_add(e, be.put(np.zeros(3, np.float32)), 1, be.stream())
    db = be.put(np.ones(3, np.float32))
    be.mod.bias_grad(e, db, 1, be.stream())
    np.testing.assert_array_equal(be.get(db), 0.0)


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
