"""gpunet.utils.data under torch.utils.data's names: default_collate against
torch's, the DataLoader's torch arguments (collate_fn, worker threads,
generator, the refused ones), random_split(generator=), the samplers."""
import threading
import time
from collections import OrderedDict, namedtuple

import numpy as np
import pytest

import gpunet
from gpunet.utils import data as gdata

torch = pytest.importorskip("torch")
tdata = torch.utils.data

Pair = namedtuple("Pair", ["x", "y"])


class Dicts(gdata.Dataset):
    """Samples as dicts of an array, a float, an int and a string."""

    def __init__(self, n=10):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": np.full((2, 3), i, np.float32), "weight": 0.5 * i, "label": i, "name": f"s{i}"}


def _plain(batch):
    """A collated batch as plain Python/NumPy values (torch's tensors to arrays, tuples to lists)."""
    if isinstance(batch, dict):
        return {k: _plain(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return [_plain(v) for v in batch]
    if isinstance(batch, torch.Tensor):
        return batch.numpy()
    return batch


def _assert_same(got, want):
    got, want = _plain(got), _plain(want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _assert_same(got[k], want[k])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
    else:
        assert isinstance(got, np.ndarray) == isinstance(want, np.ndarray), (got, want)
        np.testing.assert_array_equal(got, want)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.dtype != object


@pytest.mark.parametrize("samples", [
    [Dicts()[i] for i in range(3)],
    [(np.arange(3.0) + i, i) for i in range(4)],
    [[np.float32(i), True, {"k": np.ones(2, np.int32) * i}] for i in range(2)],
    [OrderedDict(a=i, b=[i, 2 * i]) for i in range(3)],
])
def test_default_collate_matches_torch(samples):
    torch_samples = [_to_torch(s) for s in samples]
    _assert_same(gdata.default_collate(samples), tdata.default_collate(torch_samples))


def _to_torch(s):
    if isinstance(s, dict):
        return type(s)((k, _to_torch(v)) for k, v in s.items())
    if isinstance(s, (tuple, list)):
        return type(s)(_to_torch(v) for v in s)
    if isinstance(s, np.ndarray):
        return torch.from_numpy(s)
    return s


def test_default_collate_keeps_namedtuples_and_refuses_object_arrays():
    batch = gdata.default_collate([Pair(np.ones(2), 1), Pair(np.zeros(2), 2)])
    assert isinstance(batch, Pair) and batch.x.shape == (2, 2) and batch.y.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"sample\[0\] have different shapes"):
        gdata.default_collate([(np.ones(2),), (np.ones(3),)])
    with pytest.raises(TypeError, match="cannot batch a builtins.object"):
        gdata.default_collate([object()])
    with pytest.raises(TypeError, match="keys"):
        gdata.default_collate([{"a": 1}, {"b": 1}])


def test_dataloader_batches_dicts_and_moves_them(rng):
    batches = list(gdata.DataLoader(Dicts(), batch_size=4, device="sim"))
    assert [b["image"].shape for b in batches] == [(4, 2, 3), (4, 2, 3), (2, 2, 3)]
    assert batches[0]["label"].dtype == np.int64 and batches[0]["weight"].dtype == np.float64
    assert batches[-1]["name"] == ["s8", "s9"]


def test_dataloader_collate_fn_receives_the_samples():
    seen = []

    def collate(samples):
        seen.append(len(samples))
        return sum(s["label"] for s in samples)

    assert list(gdata.DataLoader(Dicts(), batch_size=4, collate_fn=collate)) == [6, 22, 17]
    assert seen == [4, 4, 2]
    # also over an array-backed dataset, which would otherwise gather whole batches
    ds = gdata.TensorDataset(np.arange(6))
    assert [list(b) for b in gdata.DataLoader(ds, 4, collate_fn=lambda s: [int(t[0]) for t in s])] == \
        [[0, 1, 2, 3], [4, 5]]


class Slow(gdata.Dataset):
    """Records which threads fetched; each fetch sleeps a little (a file read)."""

    def __init__(self, n=24, delay=0.002):
        self.n, self.delay, self.threads = n, delay, set()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return np.array([i], np.float32), i


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_are_threads_giving_the_same_batches_in_order(persistent):
    ds = Slow()
    ids = []
    serial = list(gdata.DataLoader(ds, 5, shuffle=True, seed=4))
    loader = gdata.DataLoader(ds, 5, shuffle=True, seed=4, num_workers=3, prefetch_factor=1,
                              persistent_workers=persistent, worker_init_fn=ids.append)
    ds.threads.clear()
    for epoch in range(2):
        loader.set_epoch(0)
        got = list(loader)
        for (x, y), (sx, sy) in zip(got, serial, strict=True):
            np.testing.assert_array_equal(x, sx)
            np.testing.assert_array_equal(y, sy)
    assert ds.threads and all(t.startswith("gpunet-loader") for t in ds.threads)
    # worker ids count from 0 in each pool: one pool for both epochs, or one per epoch
    assert ids.count(0) == (1 if persistent else 2) and set(ids) <= {0, 1, 2}


def test_worker_timeout_raises():
    loader = gdata.DataLoader(Slow(4, delay=0.5), 2, num_workers=1, timeout=0.05)
    with pytest.raises(RuntimeError, match="timed out after 0.05 seconds"):
        next(iter(loader))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"prefetch_factor": 2}, ValueError, "prefetch_factor: only with worker threads"),
    ({"persistent_workers": True}, ValueError, "persistent_workers: only with worker threads"),
    ({"num_workers": -1}, ValueError, "num_workers: expected a non-negative integer"),
    ({"timeout": -1}, ValueError, "timeout: expected a non-negative number"),
    ({"collate_fn": 3}, TypeError, "collate_fn: expected a callable"),
    ({"multiprocessing_context": "spawn"}, NotImplementedError, "multiprocessing_context='spawn'"),
    ({"in_order": False}, NotImplementedError, "in_order=False"),
    ({"pin_memory_device": "cuda"}, NotImplementedError, "pin_memory_device='cuda'"),
    ({"seed": 1, "generator": gpunet.Generator()}, ValueError, "seed, generator: pass one of them"),
    ({"generator": np.random.default_rng()}, TypeError, "generator: expected a gpunet.Generator"),
])
def test_dataloader_arguments_refused_clearly(kwargs, error, match):
    with pytest.raises(error, match=match):
        gdata.DataLoader(Dicts(), **kwargs)


def test_the_cifar_tutorial_loader_line_runs():
    ds = gdata.TensorDataset(np.zeros((8, 3, 4, 4), np.float32), np.arange(8))
    loader = gdata.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, pin_memory=True)
    assert sorted(np.concatenate([y for _, y in loader]).tolist()) == list(range(8))


def test_generator_decides_shuffling_and_random_split():
    ds = gdata.TensorDataset(np.arange(20))
    order = [next(iter(gdata.DataLoader(ds, 20, shuffle=True, generator=gpunet.Generator().manual_seed(7))))[0]
             for _ in range(2)]
    np.testing.assert_array_equal(order[0], order[1])
    g = gpunet.Generator().manual_seed(3)
    first = [s.indices for s in gdata.random_split(ds, [0.5, 0.5], generator=g)]
    second = [s.indices for s in gdata.random_split(ds, [0.5, 0.5], generator=g)]  # advanced: another split
    again = [s.indices for s in gdata.random_split(ds, [0.5, 0.5], generator=gpunet.Generator().manual_seed(3))]
    assert not np.array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[0], again[0])
    assert sorted(np.concatenate(first).tolist()) == list(range(20))
    assert g.initial_seed() == 3


def test_samplers_match_torchs_contract():
    data = list(range(10))
    assert list(gdata.SequentialSampler(data)) == list(tdata.SequentialSampler(data))
    g = gpunet.Generator().manual_seed(0)
    assert sorted(gdata.RandomSampler(data, generator=g)) == data
    assert len(list(gdata.RandomSampler(data, num_samples=25))) == len(gdata.RandomSampler(data, num_samples=25)) == 25
    drawn = list(gdata.RandomSampler(data, replacement=True, num_samples=50, generator=g))
    assert len(drawn) == 50 and set(drawn) <= set(data)
    assert sorted(gdata.SubsetRandomSampler([3, 5, 7])) == [3, 5, 7]
    for drop_last in (False, True):
        mine = gdata.BatchSampler(gdata.SequentialSampler(data), 4, drop_last)
        theirs = tdata.BatchSampler(tdata.SequentialSampler(data), 4, drop_last)
        assert list(mine) == list(theirs) and len(mine) == len(theirs)
    assert {n for n in gdata.__all__} <= set(dir(tdata))  # every name is torch's
