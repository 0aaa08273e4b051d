"""gpunet.distributed: the process group, DistributedDataParallel, the sampler.

The multi-process checks start this file as a script under `mpiexec -n 2`
(two processes, cpu and sim backends in one job, since each start costs
seconds); the script asserts on every rank and an assertion that fails on
one rank aborts the job, so a nonzero exit with the traceback in the output
is the failure. The NCCL transport is checked here against stand-ins for
CuPy and cupy.cuda.nccl (how it calls them, the unique-id broadcast, the
watchdog); it runs for real only where GPUs are lent.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gpunet
from gpunet import distributed as dist
import gpunet.nn.functional as F
from gpunet import nn, optim
from gpunet.data import DataLoader, TensorDataset
from gpunet.distributed import nccl as nccl_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
GLOBAL_BATCH = 16


# ---------------------------------------------------------------- launching
def _mpiexec():
    near = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return near if os.path.exists(near) else shutil.which("mpiexec")


def run_ranks(mode: str, out, *args, timeout: float = 120, ranks: int = 2):
    """Run this file's `mode` on `ranks` ranks; (return code, output, seconds)."""
    return launch([os.path.abspath(__file__), mode, str(out), *args], timeout, ranks)


def launch(argv, timeout: float, ranks: int = 2):
    """`mpiexec -n <ranks> python *argv` from the repository root; (return code, output, seconds)."""
    exe = _mpiexec()
    if exe is None:
        pytest.skip("no mpiexec next to the Python executable or on PATH (pip install mpi4py mpich)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    cmd = [exe, "-launcher", "fork", "-n", str(ranks), sys.executable, *argv]
    start = time.monotonic()
    # a session of its own: on a timeout the launcher and both ranks are killed together
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        pytest.fail(f"the 2-rank job {argv} did not end within {timeout} s:\n{text}")
    return proc.returncode, text, time.monotonic() - start


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The training job, twice (for the bitwise-repeat check)."""
    gpunet.get_backend("sim")  # a fresh checkout compiles the sim kernels here, once, not inside the timed job
    outs = []
    for k in range(2):
        out = tmp_path_factory.mktemp(f"run{k}")
        rc, text, _ = run_ranks("train", out)
        assert rc == 0, text
        outs.append(out)
    return outs


# ---------------------------------------------------------------- 2-process tests
def test_two_ranks_equal_one_process_on_the_global_batch(two_runs):
    """cpu and sim: after STEPS steps the 2-rank weights equal a 1-process run
    on the global batch (float32, 1e-6 relative); the worker checks it on rank
    0 and records the worst relative difference."""
    report = json.loads((two_runs[0] / "report.json").read_text())
    for device in ("cpu", "sim"):
        assert report[device]["max_rel_diff"] <= 1e-6, report
        assert report[device]["early_buckets"] > 0, report  # buckets started inside the backward
        for model in ("_TensorCnn", "_cnn"):  # trained through loss.backward()
            assert report[device][f"autograd_{model}_max_rel_diff"] <= 1e-6, report


def test_two_rank_runs_are_bitwise_identical(two_runs):
    for device in ("cpu", "sim"):
        a = np.load(two_runs[0] / f"{device}.npz")
        b = np.load(two_runs[1] / f"{device}.npz")
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            assert a[k].tobytes() == b[k].tobytes(), f"{device}: {k} differs between two identical 2-rank runs"


def test_checkpoint_resume_under_two_ranks_continues_exactly(two_runs):
    report = json.loads((two_runs[0] / "report.json").read_text())
    for device in ("cpu", "sim"):
        assert report[device]["resume_bitwise"], report


@pytest.mark.parametrize("how", ["raise", "hang"])
def test_planted_failure_on_rank_1_ends_the_job(tmp_path, how):
    """rank 1 raises (the job is aborted at once, long before the 60 s
    timeout) or never joins a collective (rank 0 times out after 2 s, then
    aborts): either way the job ends with the error."""
    rc, text, seconds = run_ranks("fail", tmp_path, how, timeout=50)
    assert rc != 0, text
    assert seconds < 20, (seconds, text)
    expected = "planted failure on rank 1" if how == "raise" else "did not complete within 2 s"
    assert expected in text, text
    assert "aborting the job" in text, text


def test_cli_trains_on_two_ranks_and_resumes(tmp_path):
    """python -m gpunet train --distributed: rank 0 alone prints and writes;
    rerun with more epochs, every rank resumes from the checkpoint."""
    base = ["-m", "gpunet", "train", "--distributed", "--device", "cpu", "--batch-size", "64", "--out", str(tmp_path)]
    rc, text, _ = launch(base + ["--epochs", "1"], 120)
    assert rc == 0, text
    assert text.count("epoch 1/1") == 1 and text.count("test accuracy") == 1, text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["test_accuracy"] > 0.2, summary
    rc, text, _ = launch(base + ["--epochs", "2"], 120)
    assert rc == 0, text
    assert text.count("resumed from") == 1 and "epoch 2/2" in text and "epoch 1/2" not in text, text


def test_digits_example_quick_on_two_ranks():
    """The README's command: the digits CNN on 2 processes reaches >= 90% test accuracy."""
    rc, text, _ = launch(["examples/digits_cnn.py", "--distributed", "--quick", "--device", "cpu"], 180)
    assert rc == 0, text
    assert text.count("test accuracy") == 1 and "2 processes" in text, text


def _gpus() -> int:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 -- no CuPy, no driver, no device: no GPU here
        return 0


@pytest.mark.gpu
def test_nccl_on_the_gpus(tmp_path):
    """Where GPUs are lent: collectives on CuPy arrays over NCCL, and the DDP
    checks on cuda, on one rank per GPU (at most 2; NCCL takes one GPU per rank)."""
    gpus = _gpus()
    if not gpus:
        pytest.skip("no CUDA GPU visible to CuPy: the NCCL path runs only where GPUs are lent")
    rc, text, _ = run_ranks("gpu", tmp_path, timeout=300, ranks=min(2, gpus))
    assert rc == 0, text
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cuda"]["max_rel_diff"] <= 1e-5, report  # cuBLAS may pick other GEMM kernels per batch size


# ---------------------------------------------------------------- in-process tests
def test_importing_gpunet_does_not_import_mpi4py():
    code = "import sys, gpunet, gpunet.distributed; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_without_mpi4py_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes `import mpi4py` fail
    for call in (dist.init_process_group, dist.get_rank, lambda: dist.all_reduce(np.zeros(2))):
        with pytest.raises(ImportError, match="pip install mpi4py mpich"):
            call()


def test_bad_arguments_are_refused_before_mpi_starts():
    with pytest.raises(ValueError, match="timeout"):
        dist.init_process_group(timeout=0)
    with pytest.raises(ValueError, match="backend"):
        dist.init_process_group(backend="gloo")
    with pytest.raises(ValueError, match="op"):
        dist.group._reduce_op("prod")
    assert dist.group._reduce_op("mean") is dist.ReduceOp.AVG is dist.ReduceOp.MEAN


def _torch_sampler_indices(n, replicas, rank, drop_last):
    torch_data = pytest.importorskip("torch.utils.data")
    return list(torch_data.DistributedSampler(range(n), replicas, rank, shuffle=False, drop_last=drop_last))


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (2, 3, False), (12, 4, False),
                                                  (12, 4, True), (7, 2, True)])
def test_distributed_sampler_matches_pytorch(n, replicas, drop_last):
    data = TensorDataset(np.arange(n))
    for rank in range(replicas):
        ours = dist.DistributedSampler(data, replicas, rank, shuffle=False, drop_last=drop_last)
        assert list(ours) == _torch_sampler_indices(n, replicas, rank, drop_last)
        assert len(ours) == len(list(ours))


def test_distributed_sampler_shuffles_per_epoch_and_shares_it():
    data = TensorDataset(np.arange(11))
    samplers = [dist.DistributedSampler(data, 2, r, seed=5) for r in range(2)]
    epochs = []
    for epoch in range(2):
        for s in samplers:
            s.set_epoch(epoch)
        parts = [s.indices() for s in samplers]
        assert len(parts[0]) == len(parts[1]) == 6  # 11 padded to 12
        assert set(np.concatenate(parts)) == set(range(11))
        epochs.append(np.concatenate(parts))
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    again = dist.DistributedSampler(data, 2, 0, seed=5)
    again.set_epoch(1)
    assert np.array_equal(again.indices(), samplers[0].indices())  # a pure function of (seed, epoch)
    with pytest.raises(ValueError, match="rank"):
        dist.DistributedSampler(data, 2, 2)


def test_data_loader_reads_through_a_sampler():
    data = TensorDataset(np.arange(10), np.arange(10) * 2)
    sampler = dist.DistributedSampler(data, 2, 1, seed=3)
    loader = DataLoader(data, 2, sampler=sampler)
    assert len(loader) == 3
    for epoch in range(2):
        got = np.concatenate([x for x, _ in loader.iter_epoch(epoch)])
        sampler.set_epoch(epoch)
        assert np.array_equal(got, sampler.indices())
    with pytest.raises(ValueError, match="sampler"):
        DataLoader(data, 2, shuffle=True, sampler=sampler)


def test_fit_distributed_needs_a_sharded_loader():
    data = TensorDataset(np.zeros((4, 2), np.float32), np.zeros(4, np.int64))
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="DistributedSampler"):
        gpunet.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), DataLoader(data, 2),
                   epochs=1, distributed=True)


# ---------------------------------------------------------------- NCCL against stand-ins
class _FakeEvent:
    def __init__(self, done=True):
        self.done = done


class _FakeStream:
    def __init__(self, log, name, ptr):
        self.log, self.name, self.ptr = log, name, ptr

    def record(self):
        ev = _FakeEvent()
        self.log.append((self.name, "record", ev))
        return ev

    def wait_event(self, ev):
        self.log.append((self.name, "wait", ev))


class _FakeCupy:
    def __init__(self, log):
        current = _FakeStream(log, "current", 11)
        self.cuda = type("cuda", (), {"get_current_stream": staticmethod(lambda: current),
                                      "Stream": staticmethod(lambda non_blocking: _FakeStream(log, "side", 22))})


class _FakeComm:
    def __init__(self, log, size, uid, rank):
        self.log = log
        log.append(("comm", "init", size, uid, rank))

    def __getattr__(self, name):  # allReduce, broadcast, allGather, reduceScatter, abort
        return lambda *args: self.log.append(("comm", name) + args)


class _FakeNccl:
    def __init__(self, log):
        self.log = log

    def get_unique_id(self):
        return tuple(range(-64, 64))

    def NcclCommunicator(self, size, uid, rank):  # noqa: N802 (CuPy's name)
        return _FakeComm(self.log, size, uid, rank)


class _FakeArray:
    def __init__(self, ptr, n, dtype=np.float32):
        self.data = type("mem", (), {"ptr": ptr})()
        self.size = n
        self.dtype = np.dtype(dtype)


class _FakeMpi:
    rank = 0

    def broadcast(self, x, src):
        return type("work", (), {"wait": lambda self: None})()


def _transport(log, timeout=5.0, on_timeout=None):
    return nccl_mod.NcclTransport(_FakeMpi(), 2, timeout, on_timeout or log.append,
                                  modules=(_FakeCupy(log), _FakeNccl(log)))


def test_nccl_collectives_are_ordered_after_the_current_stream():
    log = []
    t = _transport(log)
    assert log[0] == ("comm", "init", 2, tuple(range(-64, 64)), 0)
    x, out = _FakeArray(1000, 6), _FakeArray(2000, 3)
    del log[:]
    then = []
    work = t.all_reduce(x, "sum", then=lambda: then.append("divided"))
    # the side stream waits for the caller's queued work, runs the collective, records its end
    assert [e[:2] for e in log] == [("current", "record"), ("side", "wait"), ("comm", "allReduce"),
                                    ("side", "record")]
    assert log[1][2] is log[0][2]
    assert log[2][2:] == (1000, 1000, 6, nccl_mod.NCCL_DTYPES["float32"], nccl_mod.NCCL_OPS["sum"], 22)
    assert not then
    work.wait()
    assert log[-1] == ("current", "wait", log[3][2]) and then == ["divided"]  # the caller's stream waits, no host block
    del log[:]
    t.reduce_scatter(_FakeArray(3000, 6, np.float64), out, "max")
    assert log[2][1:] == ("reduceScatter", 3000, 2000, 3, nccl_mod.NCCL_DTYPES["float64"], nccl_mod.NCCL_OPS["max"], 22)
    del log[:]
    t.broadcast(x, 1)
    t.all_gather(out, x)
    assert log[2][1:] == ("broadcast", 1000, 1000, 6, 7, 1, 22)
    assert log[6][1:] == ("allGather", 2000, 1000, 3, 7, 22)
    with pytest.raises(TypeError, match="NCCL collectives take"):
        nccl_mod.nccl_dtype(np.complex64)


def test_nccl_watchdog_aborts_an_overdue_collective():
    log = []
    messages = []
    comm = _FakeComm(log, 2, (), 0)
    dog = nccl_mod.Watchdog(comm, timeout=0.05, on_timeout=messages.append)
    finished, stuck = _FakeEvent(True), _FakeEvent(False)
    dog.pending.extend([(finished, time.monotonic() - 1, "all_reduce"), (stuck, time.monotonic() + 60, "broadcast")])
    assert not dog.check() and len(dog.pending) == 1  # the finished one dropped, the other not yet due
    dog.pending[0] = (stuck, time.monotonic() - 1, "broadcast")
    assert dog.check()
    assert ("comm", "abort") in log and "broadcast on NCCL did not complete" in messages[0]


def test_the_transport_follows_the_array():
    """Host arrays go over MPI; anything with __cuda_array_interface__ over NCCL
    (made on first use); the transport is chosen without touching MPI."""
    group = dist.group.ProcessGroup.__new__(dist.group.ProcessGroup)
    group.mpi, group.nccl = "mpi-transport", "nccl-transport"
    assert group.transport(np.zeros(2)) == "mpi-transport"
    gpu_like = type("GpuArray", (), {"__cuda_array_interface__": {}})()
    assert group.transport(gpu_like) == "nccl-transport"


# ---------------------------------------------------------------- the worker (under mpiexec)
def _cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 5))


class _Repeat(nn.Module):
    """One Linear applied `repeats` times: its parameters get that many gradient contributions."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        self.repeats = 2

    def forward(self, x):
        for _ in range(self.repeats):
            x = self.lin(x)
        return self.head(x)

    def backward(self, dy):
        dy = self.head.backward(dy)
        for _ in range(self.repeats):
            dy = self.lin.backward(dy)
        return dy


class _TensorCnn(nn.Module):
    """_cnn written with gpunet.nn.functional on Tensors: no explicit backward (autograd)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(x.reshape(x.shape[0], -1))


def _train_autograd(model, x, y, steps=STEPS):
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = gpunet.tensor(x, device=model.device), gpunet.tensor(y, device=model.device)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((GLOBAL_BATCH, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, GLOBAL_BATCH)


def _train(model, x, y, steps=STEPS, on_step=None):
    loss_fn = nn.CrossEntropyLoss().to(model.backend)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        model.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        if on_step is not None:
            on_step(step)
    return model


def _same_on_all_ranks(a) -> bool:
    got = dist.all_gather(np.ascontiguousarray(gpunet.to_numpy(a)))
    return all(np.array_equal(got[0], g) for g in got[1:])


def _check_collectives(rank, size):
    x = np.full(3, rank + 1.0, np.float32)
    dist.all_reduce(x)
    assert np.array_equal(x, np.full(3, 3.0))
    x = np.full(3, rank + 1.0, np.float32)
    dist.all_reduce(x, dist.ReduceOp.AVG)
    assert np.array_equal(x, np.full(3, 1.5))
    x = np.array([rank, -rank], np.int64)
    dist.all_reduce(x, "max")
    assert x.tolist() == [1, 0]
    x = np.arange(4.0) * (rank + 1)
    dist.broadcast(x, src=1)
    assert x.tolist() == [0, 2, 4, 6]
    assert dist.all_gather(np.array([rank, 10 * rank])).tolist() == [[0, 0], [1, 10]]
    got = dist.reduce_scatter(np.arange(4.0).reshape(4, 1) * (rank + 1), "mean")
    assert got.ravel().tolist() == ([0.0, 1.5] if rank == 0 else [3.0, 4.5])
    dist.barrier()
    try:
        dist.all_reduce(np.zeros(3 + rank, np.float32))
        raise AssertionError("mismatched shapes were not refused")
    except ValueError as e:
        assert "rank 0 all_reduce(float32 (3,), op SUM), rank 1 all_reduce(float32 (4,), op SUM)" in str(e), e
    try:
        dist.broadcast(np.zeros(2), 0) if rank == 0 else dist.all_reduce(np.zeros(2))
        raise AssertionError("different collectives were not refused")
    except ValueError as e:
        assert "rank 0 broadcast(float64 (2,), src 0), rank 1 all_reduce" in str(e), e
    try:
        dist.DistributedDataParallel(nn.Linear(3, 2 + rank))
        raise AssertionError("different models were not refused")
    except ValueError as e:
        assert "the model differs across ranks" in str(e), e
    # the NCCL communicator's unique id: rank 0 draws it, every rank builds from it
    log = []
    fake = _FakeNccl(log)
    if rank:
        fake.get_unique_id = None  # only rank 0 may draw the id
    nccl_mod.NcclTransport(dist.group._group.mpi, size, 5.0, print, modules=(_FakeCupy(log), fake))
    assert log[0] == ("comm", "init", size, tuple(range(-64, 64)), rank), log[0]


def _check_ddp(device, rank, size, out, report):
    x, y = (gpunet.asarray(a, device=device) for a in _batch())
    share = slice(rank * GLOBAL_BATCH // size, (rank + 1) * GLOBAL_BATCH // size)
    gpunet.manual_seed(rank)  # different initial weights: wrapping must broadcast rank 0's
    model = _cnn().to(device)
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=1e-3)  # 1 kB buckets: several, one per layer or less
    assert len(ddp._buckets()[0]) > 1 and list(ddp.state_dict()) == list(model.state_dict())
    early = []
    _train(ddp, x[share], y[share], on_step=lambda step: early.append(ddp.buckets_started_early))
    for name, w in model.state_dict().items():
        assert _same_on_all_ranks(w), f"{device}: {name} differs across ranks"
    result = {"early_buckets": int(min(early[1:]))}
    if rank == 0:
        gpunet.manual_seed(0)
        ref = _train(_cnn().to(device), x, y).state_dict()
        got = model.state_dict()
        result["max_rel_diff"] = max(float(np.abs(got[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in ref)
        np.savez(os.path.join(out, f"{device}.npz"), **got)
    report[device] = result

    # autograd: a model written with Tensor operations (DDP's node arms the
    # buckets when loss.backward() reaches it) and an explicit model called on
    # Tensors (one node whose backward is DDP's) train as the 1-process run
    for make in (_TensorCnn, _cnn):
        gpunet.manual_seed(rank)
        tensor_model = make().to(device)
        _train_autograd(dist.DistributedDataParallel(tensor_model, bucket_cap_mb=1e-3), x[share], y[share])
        for name, w in tensor_model.state_dict().items():
            assert _same_on_all_ranks(w), f"{device}: {make.__name__} {name} differs across ranks"
        if rank == 0:
            gpunet.manual_seed(0)
            ref = _train_autograd(make().to(device), x, y).state_dict()
            got = tensor_model.state_dict()
            result[f"autograd_{make.__name__}_max_rel_diff"] = max(
                float(np.abs(got[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in ref)

    # no_sync: local accumulation, then one reduction of the accumulated sum
    loss_fn = nn.CrossEntropyLoss().to(device)
    plain = _cnn().to(device)
    plain.load_state_dict(model.state_dict())
    ddp.zero_grad()
    for k, part in enumerate((slice(share.start, share.start + 4), slice(share.start + 4, share.stop))):
        for m in (ddp, plain):
            loss_fn(m(x[part]), y[part])
            if m is ddp and k == 0:
                with ddp.no_sync():
                    m.backward(loss_fn.backward())
            else:
                m.backward(loss_fn.backward())
        if k == 0:  # not reduced yet: each rank holds its own gradient
            for p, q in zip(ddp.parameters(), plain.parameters()):
                assert np.array_equal(gpunet.to_numpy(p.grad), gpunet.to_numpy(q.grad))
    for (name, p), q in zip(ddp.named_parameters(), plain.parameters()):
        local = np.ascontiguousarray(gpunet.to_numpy(q.grad))
        dist.all_reduce(local, "mean")
        np.testing.assert_allclose(gpunet.to_numpy(p.grad), local, rtol=1e-6, atol=1e-7, err_msg=name)

    # several contributions per gradient, and their number changing (more: a
    # bucket started too early is reduced again; fewer: reduced at the end)
    gpunet.manual_seed(0)
    rep_ddp = dist.DistributedDataParallel(_Repeat().to(device), bucket_cap_mb=1e-4)
    plain = _Repeat().to(device)
    plain.load_state_dict(rep_ddp.state_dict())
    xs = gpunet.asarray(np.random.default_rng(rank).standard_normal((4, 8)), device=device, dtype=np.float32)
    for repeats in (2, 2, 3, 1):
        for outer, m in ((rep_ddp, rep_ddp.module), (plain, plain)):
            m.repeats = repeats
            m.zero_grad()
            out = outer(xs)
            outer.backward(out * 0 + 1)
        for (name, p), q in zip(rep_ddp.named_parameters(), plain.parameters()):
            local = np.ascontiguousarray(gpunet.to_numpy(q.grad))
            dist.all_reduce(local, "mean")
            np.testing.assert_allclose(gpunet.to_numpy(p.grad), local, rtol=1e-6, atol=1e-6,
                                       err_msg=f"{device}: {name}.grad with {repeats} uses")

    # BatchNorm running statistics: rank 0's everywhere after each backward
    gpunet.manual_seed(0)
    bn = dist.DistributedDataParallel(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 5)).to(device))
    _train(bn, x[share], y[share], steps=2)
    for name, buf in bn.named_buffers():
        assert _same_on_all_ranks(buf), f"{device}: buffer {name} differs across ranks"


def _check_resume(device, rank, out, report):
    """fit for 3 epochs == fit for 2, stop, rerun with the same checkpoint for 3 (bitwise, every rank)."""
    rng = np.random.default_rng(1)
    data = TensorDataset(rng.standard_normal((40, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, 40))
    runs = {}
    for tag, epochs in (("whole", (3,)), ("resumed", (2, 3))):
        path = os.path.join(out, f"{device}-{tag}.npz")
        for n in epochs:  # each fit as a fresh process would start: new model, optimizer and loader
            gpunet.manual_seed(0)
            model = _cnn().to(device)
            opt = optim.Adam(model.parameters(), lr=1e-2)
            loader = DataLoader(data, 4, sampler=dist.DistributedSampler(data, seed=7), device=device)
            history = gpunet.fit(model, nn.CrossEntropyLoss(), opt, loader, loader, epochs=n, checkpoint_path=path,
                                 progress=False, distributed=True)
        assert _same_on_all_ranks(np.array(history["val_loss"])), "reduced metrics differ across ranks"
        runs[tag] = model.state_dict()
    report[device]["resume_bitwise"] = all(runs["whole"][k].tobytes() == runs["resumed"][k].tobytes()
                                           for k in runs["whole"])


def _worker_train(out):
    dist.init_process_group(timeout=60)
    rank, size = dist.get_rank(), dist.get_world_size()
    assert size == 2, size
    if not any(v in os.environ for v in dist.group.THREAD_VARIABLES):  # the cores shared out between the ranks
        from threadpoolctl import threadpool_info
        cores = len(os.sched_getaffinity(0))
        assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} <= {max(1, cores // 2)}
    _check_collectives(rank, size)
    report = {}
    for device in ("cpu", "sim"):
        _check_ddp(device, rank, size, out, report)
        _check_resume(device, rank, out, report)
    if rank == 0:
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


def _worker_gpu(out):
    import cupy
    dist.init_process_group(device="cuda", timeout=120)
    rank, size = dist.get_rank(), dist.get_world_size()
    device = dist.local_device("cuda")
    x = cupy.full(3, rank + 1.0, cupy.float32)
    dist.all_reduce(x)
    assert cupy.asnumpy(x).tolist() == [size * (size + 1) / 2] * 3
    dist.all_reduce(x, "mean")
    assert cupy.asnumpy(x).tolist() == [size * (size + 1) / 2] * 3
    x = cupy.arange(4.0) * (rank + 1)
    dist.broadcast(x, src=size - 1)
    assert cupy.asnumpy(x).tolist() == [0.0, size, 2.0 * size, 3.0 * size]
    assert cupy.asnumpy(dist.all_gather(cupy.array([rank], cupy.int64))).ravel().tolist() == list(range(size))
    got = dist.reduce_scatter(cupy.ones((2 * size, 3), cupy.float32), "sum")
    assert got.shape == (2, 3) and bool((got == size).all())
    report = {}
    _check_ddp(device, rank, size, out, report)
    _check_resume(device, rank, out, report)
    if rank == 0:
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


def _worker_fail(out, how):
    dist.init_process_group(timeout=2 if how == "hang" else 60)
    x, y = _batch()
    model = dist.DistributedDataParallel(_cnn())

    def plant(step):
        if dist.get_rank() == 1 and step == 1:
            if how == "raise":
                raise RuntimeError("planted failure on rank 1")
            time.sleep(60)  # never joins the next collective
    _train(model, x[:8], y[:8], on_step=plant)
    print("a rank finished although its peer failed", flush=True)


if __name__ == "__main__":
    mode, out_dir, *rest = sys.argv[1:]
    {"train": _worker_train, "fail": _worker_fail, "gpu": _worker_gpu}[mode](out_dir, *rest)
