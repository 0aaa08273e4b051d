"""Reliability of the compiled layer under hostile input and threads: the
simulator's launch pool at any worker count, arrays the bindings must refuse
(forged array interfaces, read-only outputs, overflowing strides), and host
threads launching at once (the bindings release the GIL). Crash-prone cases
run in a subprocess, so a regression fails the test instead of the run.
The launch-pool and thread tests are marked `sanitize`: tests/sanitize.sh
runs them under AddressSanitizer and ThreadSanitizer builds of the sim."""
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from gpunet import _C_sim as sim

KERNELS = ()
ROOT = Path(__file__).resolve().parents[1]  # the subprocess imports this checkout's gpunet
# tests/sanitize.sh runs the `sanitize` tests under ASan and TSan builds, where
# a launch costs 10 to 50 times more: GPUNET_STRESS_SCALE=0.1 there scales
# their rounds and array sizes down (each still at every worker count).
SCALE = float(os.environ.get("GPUNET_STRESS_SCALE", "1"))


def scaled(n: int, least: int) -> int:
    return max(least, int(n * SCALE))


def run_isolated(code: str, timeout: float = 120.0, env=None) -> str:
    """Runs `code` in a fresh interpreter; fails on a crash or a non-zero exit."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout / min(SCALE, 1.0), env=env, cwd=ROOT)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


# ---------------------------------------------------------------- the launch pool
POOL_STRESS = """
    import numpy as np
    from gpunet import _C_sim as sim
    rng = np.random.default_rng(0)
    xs = rng.standard_normal(7).astype(np.float32)         # one block: runs on the calling thread
    xm = rng.standard_normal(5000).astype(np.float32)      # a few blocks: a short pool launch
    x = rng.standard_normal({big}).astype(np.float32)    # many blocks (>= 20,000: 79 or more)
    dy = rng.standard_normal((6, 5)).astype(np.float32)    # bias_grad: one block per channel
    ys, ym, y, db = np.empty_like(xs), np.empty_like(xm), np.empty_like(x), np.zeros(5, np.float32)
    want_s, want_m, want, want_db = np.tanh(xs), np.maximum(xm, 0), np.maximum(x, 0), dy.sum(0)
    for workers in {workers}:
        sim.set_workers(workers)
        for i in range({rounds}):
            sim.act_forward("tanh", xs, ys, 0.0, 0.0, 0)
            ym[:] = np.nan
            sim.act_forward("relu", xm, ym, 0.0, 0.0, 0)
            assert np.allclose(ys, want_s, atol=1e-6) and np.array_equal(ym, want_m), (workers, i)
            if i % {every} == 0:
                y[:] = np.nan
                sim.act_forward("relu", x, y, 0.0, 0.0, 0)
                sim.bias_grad(dy, db, 1, 0)
                assert np.array_equal(y, want) and np.allclose(db, want_db, atol=1e-5), (workers, i)
    print("ok")
"""


@pytest.mark.sanitize
def test_pool_grows_one_worker_at_a_time():
    """A worker added to the pool once launches have run must start at the
    current launch, not run the previous one's job (whose data is gone):
    set_workers(n) then bias_grad and act_forward used to crash."""
    out = run_isolated(POOL_STRESS.format(workers="range(1, 66)", rounds=2, every=1, big=scaled(100_000, 20_000)))
    assert out.strip() == "ok"


@pytest.mark.sanitize
def test_pool_stress_small_and_large_launches():
    """Thousands of launches back to back at 1, 2, 8, 16 and 64 workers and
    back down, each result checked."""
    out = run_isolated(POOL_STRESS.format(workers="[1, 2, 8, 16, 64, 2, 16, 1]", rounds=scaled(300, 60),
                                          every=scaled(60, 12), big=scaled(100_000, 20_000)))
    assert out.strip() == "ok"


@pytest.mark.slow
def test_pool_stress_long():
    out = run_isolated(POOL_STRESS.format(workers="[1, 2, 8, 16, 64] * 4", rounds=2500, every=10, big=100_000),
                       timeout=1800)
    assert out.strip() == "ok"


# ---------------------------------------------------------------- arrays the bindings must refuse
FORGED = """
    import numpy as np
    from gpunet import _C_sim as sim

    class Forged:  # an object carrying only an __array_interface__ dict
        def __init__(self, **iface):
            self.__array_interface__ = dict({"shape": (3,), "typestr": "<f4", "version": 3}, **iface)

    keep = np.zeros(3, np.float32)
    cases = {
        "null": {"data": (0, False)},
        "foreign": {"data": (16, False)},
        "too long": {"data": (keep.ctypes.data, False), "shape": (1 << 40,)},
        "bytearray": {"data": bytearray(12)},
        "read-only": {"data": (keep.ctypes.data, True)},
    }
    for case, iface in cases.items():
        for name, args in (("x", (Forged(**iface), keep)), ("y", (keep, Forged(**iface)))):
            try:
                sim.act_forward("relu", *args, 0.0, 0.0, 0)
            except TypeError as e:
                assert f"argument '{name}'" in str(e) and "cannot be verified" in str(e), (case, e)
            else:
                raise SystemExit(f"{case}: accepted as {name}")
    print("ok")
"""


def test_forged_array_interface_is_refused():
    """Only the buffer protocol's exporter can vouch for a host array's
    memory; a bare __array_interface__ (null, foreign or too short pointer,
    a bytearray as data, a read-only flag) is refused before any launch."""
    assert run_isolated(FORGED).strip() == "ok"


def test_read_only_outputs_and_foreign_buffers():
    x = np.ones(3, np.float32)
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"argument 'y': is an output but the array is read-only"):
        sim.act_forward("relu", x, ro, 0.0, 0.0, 0)
    with pytest.raises(ValueError, match=r"argument 'y': is an output but the array is read-only"):
        sim.act_forward("relu", x, memoryview(bytes(12)).cast("f"), 0.0, 0.0, 0)
    with pytest.raises(TypeError, match=r"argument 'x': expected dtype float32.* but got uint8"):
        sim.act_forward("relu", bytearray(12), np.zeros(12, np.float32), 0.0, 0.0, 0)
    # any exporter of a float32 buffer is an array: its memory is known
    y = bytearray(12)
    sim.act_forward("relu", np.array([-1, 2, 3], np.float32), memoryview(y).cast("f"), 0.0, 0.0, 0)
    assert np.frombuffer(y, np.float32).tolist() == [0, 2, 3]


@pytest.mark.parametrize("call", [
    lambda x, y: sim.act_forward("relu", x, y, 0.0, 0.0, 0),
    lambda x, y: sim.dropout_apply(x, y, 1, 0, 2 ** 31, 2.0, 0),
    lambda x, y: sim.softmax_forward(x.reshape(2, 5), y.reshape(2, 5), 1.0, False, 0),
], ids=["activation", "dropout", "softmax"])
def test_partially_overlapping_arguments_are_refused(call):
    """Two arguments of one call either share no memory or are the same array:
    an output overlapping an input by part (y = x shifted by 3 elements) would
    read what another thread already wrote. Nothing is launched."""
    buf = np.arange(13, dtype=np.float32)
    before = buf.copy()
    with pytest.raises(ValueError, match=r"argument 'y': shares memory with 'x' without being the same array"):
        call(buf[:10], buf[3:13])
    np.testing.assert_array_equal(buf, before)
    call(buf[:10], np.empty(10, np.float32))  # separate arrays are fine


def _attention(x, out):
    sim.attention_forward(x, x, x, None, 0, 0, 0, 1, False, 1.0, out, np.zeros(x.shape[:2], np.float32), 0)


def _cross_entropy_backward(x, dx):
    rows = x.shape[0]
    sim.cross_entropy_backward(x, np.zeros(rows, np.int64), np.zeros(0, np.float32), np.ones(1, np.float32),
                               np.zeros((rows, 2), np.float32), np.ones(rows, np.float32), dx, -100, 0.0, 0)


def _embedding_forward(weight, out):
    sim.embedding_forward(weight, np.array([3, 0, 1, 1], np.int64), out, np.zeros(4, np.int64), 0)


@pytest.mark.parametrize("call, shape, out, inp", [
    (_attention, (1, 4, 8), "out", "q"),
    (_cross_entropy_backward, (4, 8), "dlogits", "logits"),
    (_embedding_forward, (4, 8), "out", "weight"),
], ids=["attention", "cross_entropy", "embedding"])
def test_gathering_kernels_refuse_any_shared_output(call, shape, out, inp):
    """Attention, cross-entropy and embedding read rows other threads write
    (a key row, a whole logits row, a gathered weight row): their outputs may
    share no memory with an input, neither by part nor as the same array
    (which vouch() lets through for the elementwise kernels). Nothing runs."""
    n = int(np.prod(shape))
    buf = np.random.default_rng(0).standard_normal(n + 8).astype(np.float32)
    before = buf.copy()
    for x, y in ((buf[:n], buf[8:]), (buf[:n], buf[:n])):  # by part, and the same array
        with pytest.raises(ValueError, match=rf"argument '{out}': must not overlap '{inp}' in memory"):
            call(x.reshape(shape), y.reshape(shape))
        np.testing.assert_array_equal(buf, before)
    call(buf[:n].reshape(shape), np.zeros(shape, np.float32))  # separate arrays are fine


def test_elementwise_kernels_run_in_place():
    x = np.array([-2, -1, 0, 1, 2], np.float32)
    sim.act_forward("relu", x, x, 0.0, 0.0, 0)
    np.testing.assert_array_equal(x, [0, 0, 0, 1, 2])


def test_attention_mask_strides_cannot_overflow():
    """The range check of the mask's strides used to wrap around int64 and
    let the kernel read out of bounds (2**62 + 2**40) or garbage (2**62 + 1)."""
    q = np.zeros((2, 4, 8), np.float32)
    out, lse = np.zeros((2, 4, 8), np.float32), np.zeros((2, 4), np.float32)
    bias = np.zeros((4, 4), np.float32)
    for stride in (2**62 + 2**40, 2**62 + 1, 2**63 - 1):
        with pytest.raises(ValueError, match=r"argument 'bias'"):
            sim.attention_forward(q, q, q, bias, stride, 0, 4, 1, False, 1.0, out, lse, 0)
        with pytest.raises(ValueError, match=r"argument 'bias'"):
            sim.attention_forward(q, q, q, bias, 0, 0, stride, 1, False, 1.0, out, lse, 0)
    sim.attention_forward(q, q, q, bias, 0, 0, 4, 1, False, 1.0, out, lse, 0)  # the broadcast mask fits


def test_size_products_cannot_overflow():
    y = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"argument 'inner': channels \* inner overflows int64"):
        sim.bias_add(y, np.zeros(3, np.float32), 2**62, 0)


# ---------------------------------------------------------------- host threads launching at once
@pytest.mark.sanitize
def test_threads_launch_concurrently_on_shared_inputs():
    """Both threads pass the same input array: each call registers it for its
    own launch, so one call finishing must not unregister it under the other
    (the bindings release the GIL, so the launches overlap)."""
    x = np.random.default_rng(3).standard_normal(scaled(50_000, 10_000)).astype(np.float32)
    want = np.maximum(x, 0)
    errors = []

    def worker():
        y = np.empty_like(x)
        try:
            for _ in range(scaled(150, 15)):
                y[:] = np.nan
                sim.act_forward("relu", x, y, 0.0, 0.0, 0)
                assert np.array_equal(y, want)
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.sanitize
def test_launch_errors_stay_on_their_thread():
    """A failed launch reports on the thread that made it: another thread's
    next launch does not inherit the error (cudaGetLastError is per thread)."""
    errors, ok = [], []

    def failing():
        for _ in range(100):
            try:
                sim._invalid_launch(0)
            except RuntimeError:
                pass
            else:
                errors.append("no error")

    def healthy():
        x, y = np.ones(1000, np.float32), np.empty(1000, np.float32)
        for _ in range(100):
            try:
                sim.act_forward("relu", x, y, 0.0, 0.0, 0)
                ok.append(1)
            except RuntimeError as e:
                errors.append(e)

    ts = [threading.Thread(target=failing), threading.Thread(target=healthy)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and len(ok) == 100


# ---------------------------------------------------------------- two models trained in two threads
def _train(seed, device, barrier=None):
    """Seeds this thread, builds a model with dropout and fits it with
    validation (no_grad inside fit) for two epochs; returns its weights."""
    import gpunet
    from gpunet import nn, optim
    from gpunet.data import DataLoader, TensorDataset
    from gpunet.train import fit

    gpunet.manual_seed(seed)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 96)
    x = (np.eye(3, 4)[y] * 2 + 0.5 * rng.standard_normal((96, 4))).astype(np.float32)
    data = TensorDataset(x, y.astype(np.int64))
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 3)).to(device)
    opt = optim.Adam(model.parameters(), lr=0.02)
    if barrier is not None:
        barrier.wait()  # both threads train at the same time
    fit(model, nn.CrossEntropyLoss(), opt, DataLoader(data, 16, shuffle=True, seed=seed),
        DataLoader(data, 48), epochs=2, progress=False)
    return [gpunet.to_numpy(p.data).copy() for p in model.parameters()]


@pytest.mark.sanitize
@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_two_threads_train_like_one_after_the_other(device):
    """Grad mode, the random streams (dropout, shuffling, initialisation) and
    the kernels' state are per thread: two threads each fitting a model with
    validation give bit for bit the weights of the two runs made in turn."""
    sequential = [_train(seed, device) for seed in (1, 2)]
    barrier, results, errors = threading.Barrier(2), {}, []

    def run(seed):
        try:
            results[seed] = _train(seed, device, barrier)
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for seed, want in zip((1, 2), sequential):
        for got, ref in zip(results[seed], want):
            np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------- __cuda_array_interface__ (cuda build)
try:
    import gpunet._C as cuda_mod
except ImportError:
    cuda_mod = None


@pytest.mark.skipif(cuda_mod is None, reason="gpunet._C not built")
@pytest.mark.parametrize("iface, match", [
    ({"mask": (0, False)}, r"masked arrays .* are not supported"),
    ({"data": 7}, r"'data' must be a tuple \(pointer: int, read_only: bool\)"),
    ({"data": (None, False)}, r"'data' must be a tuple"),
    ({"shape": [3]}, r"'shape' must be a tuple of ints"),
    ({"strides": (4.0,)}, r"'strides' must be a tuple of ints"),
    ({"stream": 0}, r"'stream' 0 is disallowed"),
    ({"stream": "s"}, r"'stream' must be an int or None"),
], ids=["mask", "data-int", "data-none", "shape-list", "strides-float", "stream-0", "stream-str"])
def test_cuda_array_interface_is_validated(iface, match):
    """Checked before any CUDA call, so this runs on machines without a GPU."""
    class DeviceArray:
        __cuda_array_interface__ = dict({"shape": (3,), "typestr": "<f4", "data": (1 << 20, False), "version": 3},
                                        **iface)

    with pytest.raises(TypeError, match=r"argument 'x': (malformed __cuda_array_interface__: )?" + match):
        cuda_mod.act_forward("relu", DeviceArray(), DeviceArray(), 0.0, 0.0, 0)
