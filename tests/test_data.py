"""gpunet.data: datasets, splits, the DataLoader, and the file readers (each
fed a tiny file written in the exact on-disk format)."""
import gzip

import numpy as np
import pytest

import gpunet
from gpunet.data import (CharDataset, DataLoader, Dataset, TensorDataset, digits_splits, load_cifar10,
                         load_digits, load_mnist, random_split, read_cifar10_batch, read_idx_images,
                         read_idx_labels)


# ------------------------------------------------------------------ datasets and splits
def test_tensor_dataset_indexing_and_mismatch():
    x = np.arange(12.0).reshape(6, 2)
    y = np.arange(6)
    ds = TensorDataset(x, y)
    assert len(ds) == 6
    xi, yi = ds[4]
    np.testing.assert_array_equal(xi, [8.0, 9.0])
    assert yi == 4
    xb, yb = ds.__getitems__(np.array([5, 0]))
    np.testing.assert_array_equal(xb, x[[5, 0]])
    np.testing.assert_array_equal(yb, [5, 0])
    with pytest.raises(ValueError, match="array 1 has 5 samples"):
        TensorDataset(x, np.arange(5))


def test_random_split_disjoint_deterministic_and_fractions():
    ds = TensorDataset(np.arange(10))
    a, b, c = random_split(ds, [6, 3, 1], seed=7)
    idx = np.concatenate([a.indices, b.indices, c.indices])
    assert sorted(idx.tolist()) == list(range(10))
    again = random_split(ds, [6, 3, 1], seed=7)
    np.testing.assert_array_equal(again[0].indices, a.indices)
    other = random_split(ds, [6, 3, 1], seed=8)
    assert not np.array_equal(other[0].indices, a.indices)
    assert [len(s) for s in random_split(ds, [0.5, 0.25, 0.25])] == [6, 2, 2]  # remainder goes first
    # a subset of a subset maps indices through both
    np.testing.assert_array_equal(a.__getitems__(np.array([0, 1]))[0], a.indices[:2])
    with pytest.raises(ValueError, match="sum to 9"):
        random_split(ds, [6, 3])


class Squares(Dataset):
    """A map-style dataset without a vectorised __getitems__."""

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return np.array([i, i * i], dtype=np.float32), i


def test_dataloader_batches_every_sample_once():
    ds = TensorDataset(np.arange(10, dtype=np.float32)[:, None], np.arange(10))
    dl = DataLoader(ds, batch_size=4)
    batches = list(dl)
    assert [b[0].shape for b in batches] == [(4, 1), (4, 1), (2, 1)] and len(dl) == 3
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), np.arange(10))
    assert len(list(DataLoader(ds, batch_size=4, drop_last=True))) == len(DataLoader(ds, 4, drop_last=True)) == 2


def test_dataloader_generic_dataset_stacks_samples():
    x, y = next(iter(DataLoader(Squares(), batch_size=3)))
    np.testing.assert_array_equal(x, [[0, 0], [1, 1], [2, 4]])
    np.testing.assert_array_equal(y, [0, 1, 2])


def test_dataloader_shuffle_is_seeded_and_new_each_epoch():
    ds = TensorDataset(np.arange(50))
    dl = DataLoader(ds, batch_size=50, shuffle=True, seed=3)
    e0 = next(iter(dl))[0]
    e1 = next(iter(dl))[0]
    assert sorted(e0.tolist()) == list(range(50))
    assert not np.array_equal(e0, e1)
    # a fresh loader with the same seed replays the same epochs; epochs can be replayed out of order
    dl2 = DataLoader(ds, batch_size=50, shuffle=True, seed=3)
    np.testing.assert_array_equal(next(dl2.iter_epoch(1))[0], e1)
    np.testing.assert_array_equal(next(iter(dl2))[0], e0)
    assert not np.array_equal(next(iter(DataLoader(ds, 50, shuffle=True, seed=4)))[0], e0)
    # without an explicit seed, gpunet.manual_seed makes shuffling reproducible
    gpunet.manual_seed(11)
    a = next(iter(DataLoader(ds, 50, shuffle=True)))[0]
    gpunet.manual_seed(11)
    np.testing.assert_array_equal(next(iter(DataLoader(ds, 50, shuffle=True)))[0], a)


@pytest.mark.no_kernels("moving batches computes nothing")
def test_dataloader_moves_batches_to_device(device, rng):
    """Batches arrive on the device with the right contents, also while the
    previous batch is still being computed on (the GPU prefetch overlaps them)."""
    be = gpunet.get_backend(device)
    x = rng.standard_normal((37, 3, 4)).astype(np.float32)
    y = np.arange(37)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, seed=0, device=device)
    for epoch in range(2):
        host = list(loader.host_batches(epoch))
        for (xb, yb), (hx, hy) in zip(loader.iter_epoch(epoch), host):
            assert be.owns(xb) and be.owns(yb)
            assert xb.dtype == np.float32 and yb.dtype == np.int64
            busy = be.xp.matmul(xb, be.xp.swapaxes(xb, 1, 2)).sum()  # queue work that reads the batch
            np.testing.assert_array_equal(gpunet.to_numpy(xb), hx)
            np.testing.assert_array_equal(gpunet.to_numpy(yb), hy)
            assert np.isfinite(float(gpunet.to_numpy(busy)))
        got = np.concatenate([hy for _, hy in host])
        np.testing.assert_array_equal(np.sort(got), y)


def test_dataloader_bad_arguments():
    ds = TensorDataset(np.arange(3))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="seed"):
        DataLoader(ds, seed=-1)
    with pytest.raises(TypeError, match="dataset"):
        DataLoader(42)
    with pytest.raises(ValueError, match="device"):
        DataLoader(ds, device="tpu")


# ------------------------------------------------------------------ digits
def test_load_digits_shapes_and_split():
    pytest.importorskip("sklearn")
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0 and set(y.tolist()) == set(range(10))
    tr, va, te = digits_splits(val=0.1, test=0.2, seed=0)
    assert len(tr) + len(va) + len(te) == 1797 and len(te) == 359  # floor(0.2 * 1797)
    tr2, _, _ = digits_splits(val=0.1, test=0.2, seed=0)
    np.testing.assert_array_equal(tr.indices, tr2.indices)


def test_load_digits_without_sklearn_names_the_install(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install scikit-learn.*gpunet\[examples\]"):
        load_digits()


# ------------------------------------------------------------------ IDX (MNIST / Fashion-MNIST)
def _idx_bytes(magic: int, dims, payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz, rng):
    images = rng.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    # written by hand in the documented byte layout, not by gpunet's own writer
    img_blob = _idx_bytes(0x00000803, images.shape, images.tobytes())
    lab_blob = _idx_bytes(0x00000801, labels.shape, labels.tobytes())
    suffix = ".gz" if gz else ""
    (tmp_path / f"train-images-idx3-ubyte{suffix}").write_bytes(gzip.compress(img_blob) if gz else img_blob)
    (tmp_path / f"train-labels-idx1-ubyte{suffix}").write_bytes(gzip.compress(lab_blob) if gz else lab_blob)
    got = read_idx_images(tmp_path / f"train-images-idx3-ubyte{suffix}")
    np.testing.assert_array_equal(got, images)
    got_labels = read_idx_labels(tmp_path / f"train-labels-idx1-ubyte{suffix}")
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, [7, 0, 9])
    x, y = load_mnist(tmp_path, "train")
    assert x.shape == (3, 1, 4, 5) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, "test")


def test_idx_rejects_bad_magic_and_size(tmp_path):
    labels = np.arange(4, dtype=np.uint8)
    p = tmp_path / "labels"
    p.write_bytes(_idx_bytes(0x00000801, (4,), labels.tobytes()))
    with pytest.raises(ValueError, match="bad IDX magic number 0x00000801; expected 0x00000803"):
        read_idx_images(p)
    p.write_bytes(_idx_bytes(0x00000801, (5,), labels.tobytes()))
    with pytest.raises(ValueError, match=r"shape \(5,\).*holds 12 bytes"):
        read_idx_labels(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="too short"):
        read_idx_labels(p)


# ------------------------------------------------------------------ CIFAR-10
def test_cifar10_batch_round_trip(tmp_path, rng):
    n = 4
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = np.array([3, 9, 0, 1], dtype=np.uint8)
    # record = label byte, then the R, G, B planes, each 32x32 row-major
    blob = b"".join(bytes([labels[i]]) + images[i, 0].tobytes() + images[i, 1].tobytes() + images[i, 2].tobytes()
                    for i in range(n))
    (tmp_path / "test_batch.bin").write_bytes(blob)
    x, y = read_cifar10_batch(tmp_path / "test_batch.bin")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, [3, 9, 0, 1])
    assert x[2, 1, 31, 0] == images[2, 1, 31, 0]
    xf, yf = load_cifar10(tmp_path, train=False)
    assert xf.dtype == np.float32 and xf.shape == (n, 3, 32, 32) and xf.max() <= 1.0
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_cifar10(tmp_path, train=True)


def test_cifar10_rejects_bad_files(tmp_path):
    p = tmp_path / "b.bin"
    p.write_bytes(bytes(3073 + 5))
    with pytest.raises(ValueError, match="not a whole number of CIFAR-10 records"):
        read_cifar10_batch(p)
    p.write_bytes(bytes([42]) + bytes(3072))
    with pytest.raises(ValueError, match="label 42"):
        read_cifar10_batch(p)


# ------------------------------------------------------------------ text
def test_char_dataset_hello():
    ds = CharDataset("hello", seq_len=4)
    assert ds.vocab == ["e", "h", "l", "o"] and ds.vocab_size == 4
    assert len(ds) == 1
    x, t = ds[0]
    assert ds.decode(x) == "hell" and ds.decode(t) == "ello"
    np.testing.assert_array_equal(ds.encode("hello"), [1, 0, 2, 2, 3])
    with pytest.raises(ValueError, match="'z'"):
        ds.encode("hez")


def test_char_dataset_batches_match_samples(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 3
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    ds = CharDataset.from_file(path, seq_len=7)
    assert len(ds) == len(text) - 7
    idx = np.array([0, 5, len(ds) - 1])
    xb, tb = ds.__getitems__(idx)
    assert xb.shape == tb.shape == (3, 7) and xb.dtype == np.int64
    for row, i in enumerate(idx):
        assert ds.decode(xb[row]) == text[i:i + 7]
        assert ds.decode(tb[row]) == text[i + 1:i + 8]
    x_last, t_last = ds[-1]
    assert ds.decode(t_last) == text[-7:]
    with pytest.raises(ValueError, match="at least seq_len"):
        CharDataset("abc", seq_len=3)
