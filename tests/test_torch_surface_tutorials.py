"""What the PyTorch tutorial ports needed from gpunet, each against torch where
torch has it: device names (torch.device, torch.cuda, torch.accelerator and
the GPUNET_DEVICE stand-in), dtype names, the tensor functions (sin, cos,
tril, triu, topk, narrow, t, new_*, uniform_), Parameter.data's in-place
methods, whole modules in gpunet.save with torch's weights_only rules,
torch.nn.modules' layout, the vision and text stand-ins, the Tensor batches
of gpunet.utils.data, StepLR(step_size=1.0) and flatten_parameters."""
import os
import pickle

import numpy as np
import pytest

import gpunet
import gpunet.nn as nn
from gpunet import vision
from gpunet.text.data.utils import get_tokenizer
from gpunet.text.vocab import build_vocab_from_iterator

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------ devices and dtypes
def test_device_names(monkeypatch):
    monkeypatch.delenv("GPUNET_DEVICE", raising=False)
    d = gpunet.device("cuda:1")
    assert (d.type, d.index, str(d), repr(d)) == ("cuda", 1, "cuda:1", "device(type='cuda', index=1)")
    assert repr(gpunet.device("cpu")) == "device(type='cpu')" and gpunet.device("cpu") == "cpu"
    assert gpunet.device("cuda", 0) == "cuda:0" and gpunet.device(2) == "cuda:2"
    with pytest.raises(ValueError, match="'tpu'"):
        gpunet.device("tpu")
    with pytest.raises(ValueError, match="already has an index"):
        gpunet.device("cuda:0", 1)


def test_cuda_means_the_simulator_when_gpunet_device_says_so(monkeypatch):
    monkeypatch.setenv("GPUNET_DEVICE", "sim")
    assert gpunet.cuda.is_available() and gpunet.accelerator.is_available() and gpunet.cuda.device_count() == 1
    assert gpunet.device("cuda:0") == "sim:0" and gpunet.accelerator.current_accelerator() == "sim"
    assert gpunet.zeros(2, device="cuda").device == "sim" and gpunet.ones(1).cuda().device == "sim"
    monkeypatch.setenv("GPUNET_DEVICE", "cpu")  # not a GPU stand-in: "cuda" is the CUDA backend again
    assert gpunet.device("cuda").type == "cuda"
    assert gpunet.cuda.is_available() == gpunet.backends()["cuda"]["available"]
    assert gpunet.accelerator.current_accelerator() is (gpunet.device("cuda") if gpunet.cuda.is_available() else None)


@pytest.fixture
def default_device_restored():
    yield
    gpunet.set_default_device(None)


@pytest.mark.no_kernels("where tensors and parameters are made, no op")
@pytest.mark.parametrize("device", ["sim"])
def test_set_default_device_places_new_tensors_and_modules(device, default_device_restored):
    assert gpunet.get_default_device() == "cpu" and repr(gpunet.get_default_device()) == "device(type='cpu')"
    gpunet.set_default_device(device)
    assert gpunet.get_default_device() == device
    made = [gpunet.zeros(2), gpunet.randn(2, 3), gpunet.arange(3), gpunet.tensor([1.0]),
            gpunet.tensor(np.ones(2)), gpunet.as_tensor(np.ones(2))]
    assert [t.device for t in made] == [device] * len(made)
    assert gpunet.from_numpy(np.ones(2)).device == "cpu"  # torch's from_numpy shares host memory: always cpu
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4))
    assert model.device == device and {m.backend.name for m in model.modules()} == {device}
    assert {p.backend.name for p in model.parameters()} == {device}
    assert nn.Linear(2, 2, device="cpu").weight.backend.name == "cpu"  # a named device still wins
    assert gpunet.zeros(1, device="cpu").device == "cpu"
    gpunet.set_default_device(None)
    assert gpunet.zeros(1).device == "cpu" and nn.Linear(2, 2).weight.backend.name == "cpu"


@pytest.mark.no_kernels("where tensors are made, no op")
@pytest.mark.parametrize("device", ["sim"])
def test_device_as_a_context_sets_the_default_inside(device, default_device_restored):
    with gpunet.device(device) as d:
        assert d == device and gpunet.ones(1).device == device
        with gpunet.device("cpu"):
            assert gpunet.ones(1).device == "cpu"
        assert nn.Linear(1, 1).weight.backend.name == device
    assert gpunet.get_default_device() == "cpu"
    with pytest.raises(ValueError, match="'tpu'"):
        gpunet.set_default_device("tpu")  # checked when set, not at the first tensor
    assert gpunet.get_default_device() == "cpu"


def test_dtype_names_and_legacy_constructors():
    for name in ("float32", "float", "float64", "double", "float16", "half", "int64", "long", "int32", "int",
                 "int16", "int8", "uint8", "bool"):
        assert np.dtype(getattr(gpunet, name)) == np.dtype(str(getattr(torch, name)).split(".")[1]), name
    x = gpunet.tensor([1, 2]) == gpunet.tensor([1, 3])
    assert x.type(gpunet.float).dtype == np.float32 and x.type(gpunet.float).tolist() == [1.0, 0.0]
    assert gpunet.LongTensor(3).shape == (3,) and gpunet.LongTensor(3).dtype == np.int64
    assert gpunet.LongTensor([4, 5]).tolist() == [4, 5] and gpunet.FloatTensor(2, 3).dtype == np.float32


# ------------------------------------------------------------------ tensor functions
def _both(x):
    return gpunet.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)


@pytest.mark.parametrize("fn", ["sin", "cos", "tril", "triu"])
def test_elementwise_and_triangles_against_torch(fn, rng):
    x = rng.standard_normal((4, 5))
    g, t = _both(x)
    (getattr(gpunet, fn)(g) * gpunet.tensor(np.arange(20.0).reshape(4, 5))).sum().backward()
    (getattr(torch, fn)(t) * torch.arange(20.0, dtype=torch.float64).reshape(4, 5)).sum().backward()
    np.testing.assert_allclose(getattr(g, fn)().detach().numpy(), getattr(t, fn)().detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g.grad), t.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("largest", [True, False])
def test_topk_against_torch(largest, rng):
    x = rng.permutation(24).reshape(4, 6).astype(np.float64)  # distinct values: one right answer
    g, t = _both(x)
    gv, gi = g.topk(3, 1, largest)
    tv, ti = t.topk(3, 1, largest)
    assert gi.tolist() == ti.tolist() and gv.tolist() == tv.tolist() and gi.dtype == np.int64
    (gv * gpunet.tensor(np.arange(12.0).reshape(4, 3))).sum().backward()
    (tv * torch.arange(12.0, dtype=torch.float64).reshape(4, 3)).sum().backward()
    np.testing.assert_array_equal(np.asarray(g.grad), t.grad.numpy())
    assert gpunet.topk(gpunet.tensor(x), 2, dim=0).indices.tolist() == torch.topk(torch.tensor(x), 2, dim=0).indices.tolist()
    with pytest.raises(ValueError, match="k must be"):
        g.topk(7)


def test_narrow_t_and_new_factories(rng):
    x = rng.standard_normal((5, 6))
    g, t = gpunet.tensor(x), torch.tensor(x)
    np.testing.assert_array_equal(g.narrow(1, 2, 3).numpy(), t.narrow(1, 2, 3).numpy())
    np.testing.assert_array_equal(g.narrow(0, -2, 2).numpy(), t.narrow(0, -2, 2).numpy())
    np.testing.assert_array_equal(g.t().numpy(), t.t().numpy())
    with pytest.raises(IndexError, match="narrow"):
        g.narrow(0, 4, 2)
    with pytest.raises(RuntimeError, match="<= 2 dimensions"):
        gpunet.zeros(2, 2, 2).t()
    z = g.new_zeros(2, 3)
    assert z.shape == (2, 3) and z.dtype == g.dtype and not z.numpy().any()
    assert g.new_ones((2,)).tolist() == [1.0, 1.0] and g.new_full((2,), 7).tolist() == [7.0, 7.0]
    u = gpunet.empty(1000).uniform_(-0.5, 0.25)
    assert -0.5 <= u.min().item() and u.max().item() < 0.25 and u.std().item() > 0.1


def test_parameter_data_has_torchs_inplace_methods():
    lin = nn.Linear(4, 3)
    w = lin.weight.data
    assert lin.weight.data is w and isinstance(w, np.ndarray)
    assert lin.weight.data.uniform_(-0.1, 0.1) is w and np.abs(np.asarray(lin.weight.data)).max() <= 0.1
    lin.bias.data.zero_()
    assert not np.asarray(lin.bias.data).any()
    before = np.array(w)
    g = np.ones_like(before)
    lin.weight.data.add_(g, alpha=-0.5)
    np.testing.assert_array_equal(np.asarray(lin.weight.data), before - 0.5)
    assert type(w * 2) is np.ndarray and type(w.sum()) is not type(w)  # the view does not spread
    assert lin.weight.data.data is w  # torch: x.data.data is x's storage


# ------------------------------------------------------------------ whole modules in gpunet.save
class Mine(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x):
        return self.body(x)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_whole_module_round_trip_and_weights_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = Mine()
    x = gpunet.randn(5, 3)
    gpunet.save(m, "m.pth")
    with pytest.raises(pickle.UnpicklingError, match=r"refuses .*Mine: allow it with gpunet.serialization.safe_globals"):
        gpunet.load("m.pth")
    with gpunet.serialization.safe_globals([Mine]):
        back = gpunet.load("m.pth")
    np.testing.assert_array_equal(back(x).detach().numpy(), m(x).detach().numpy())
    assert gpunet.load("m.pth", weights_only=False).body[0].weight.shape == (4, 3)
    gpunet.save(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)), "seq.pth")  # gpunet's own classes: allowed
    assert isinstance(gpunet.load("seq.pth")[1], nn.Dropout)
    bad = nn.Sequential(nn.Linear(2, 2))
    bad.payload = Evil()
    gpunet.save(bad, "evil.pth")
    with pytest.raises(pickle.UnpicklingError, match="refuses posix.system"):
        gpunet.load("evil.pth")
    assert not (tmp_path / "pwned.txt").exists()
    arrays = np.load("m.pth")  # the weights stay .npy entries, readable without pickle
    assert any(arrays[k].shape == (4, 3) for k in arrays.files if k != "__manifest__")


def test_torch_nn_modules_layout():
    from gpunet.nn import modules
    assert modules.linear.Linear is nn.Linear and modules.sparse.Embedding is nn.Embedding
    assert modules.activation.MultiheadAttention is nn.MultiheadAttention and modules.rnn.LSTM is nn.LSTM
    assert issubclass(modules.linear.NonDynamicallyQuantizableLinear, nn.Linear)
    assert modules.transformer.TransformerEncoderLayer is nn.TransformerEncoderLayer


def test_steplr_takes_a_whole_float_and_rnns_flatten_parameters():
    opt = gpunet.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = gpunet.optim.lr_scheduler.StepLR(opt, 1.0, gamma=0.5)
    opt.step()
    sched.step()
    assert sched.get_last_lr() == [0.5]
    with pytest.raises(ValueError, match="step_size"):
        gpunet.optim.lr_scheduler.StepLR(opt, 1.5)
    assert nn.LSTM(2, 3).flatten_parameters() is None


def test_onnx_export_says_it_cannot():
    with pytest.raises(NotImplementedError, match="onnx.export"):
        gpunet.onnx.export(nn.Linear(2, 2), gpunet.zeros(1, 2), "m.onnx")


# ------------------------------------------------------------------ vision and text stand-ins
def test_vision_datasets_fall_back_to_announced_synthetic_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPUNET_SYNTHETIC_SAMPLES", "12,5")
    monkeypatch.setattr(vision.datasets, "_announced", set())
    train = vision.datasets.CIFAR10(tmp_path, train=True, download=True)
    assert "CIFAR10: no local copy" in capsys.readouterr().err and "SYNTHETIC" in str(train) + "SYNTHETIC"
    img, label = train[0]
    assert len(train) == 12 and img.shape == (32, 32, 3) and img.dtype == np.uint8 and isinstance(label, int)
    test = vision.datasets.FashionMNIST(tmp_path, train=False, transform=vision.transforms.ToTensor())
    x, _ = test[0]
    assert len(test) == 5 and x.shape == (1, 28, 28) and x.dtype == np.float32 and 0 <= x.min().item()
    monkeypatch.setenv("GPUNET_SYNTHETIC_SAMPLES", "many")
    with pytest.raises(ValueError, match="GPUNET_SYNTHETIC_SAMPLES"):
        vision.datasets.MNIST(tmp_path)


def test_vision_datasets_read_local_files(tmp_path):
    from gpunet.data.cifar import write_cifar10_batch
    from gpunet.data.idx import write_idx
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (3, 3, 32, 32)), np.array([1, 2, 3])
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    write_cifar10_batch(d / "test_batch.bin", imgs, labels)
    ds = vision.datasets.CIFAR10(tmp_path, train=False)
    assert not ds.synthetic and ds.targets == [1, 2, 3]
    np.testing.assert_array_equal(ds[1][0], imgs[1].transpose(1, 2, 0))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    digits = rng.integers(0, 256, (4, 28, 28))
    write_idx(raw / "t10k-images-idx3-ubyte", digits)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([7, 1, 0, 4]))
    mn = vision.datasets.MNIST(tmp_path, train=False)
    assert not mn.synthetic and mn.targets == [7, 1, 0, 4] and np.array_equal(mn[2][0], digits[2])


def test_transforms_and_make_grid():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # H, W, C
    t = vision.transforms.Compose([vision.transforms.ToTensor(), vision.transforms.Normalize((0.5,) * 3, (0.5,) * 3),
                                   vision.transforms.Lambda(lambda x: x * 2)])(img)
    want = (torch.tensor(img).permute(2, 0, 1).float() / 255 - 0.5) / 0.5 * 2
    np.testing.assert_allclose(t.numpy(), want.numpy(), rtol=1e-6)
    with pytest.raises(TypeError, match="apply ToTensor first"):
        vision.transforms.Normalize((0.5,), (0.5,))(img)
    grid = vision.utils.make_grid(gpunet.ones(5, 3, 4, 4), nrow=2, padding=1)
    assert grid.shape == (3, 3 * 5 + 1, 2 * 5 + 1)  # torchvision's layout: rows of nrow, padding around each
    assert grid.numpy()[:, 1:5, 1:5].min() == 1 and grid.numpy()[:, 0].max() == 0


def test_vgg16_refuses_unknown_weights():  # (its layout is checked by the save-and-load tutorial's test)
    with pytest.raises(ValueError, match="weights"):
        vision.models.vgg16(weights="IMAGENET9K")


def test_text_tokenizer_vocab_and_corpus(monkeypatch):
    tok = get_tokenizer("basic_english")
    assert tok("Hello, World! It's (good).") == ["hello", ",", "world", "!", "it", "'", "s", "(", "good", ")", "."]
    assert get_tokenizer(None)("a  b") == ["a", "b"]
    v = build_vocab_from_iterator([["b", "a", "b"], ["c", "a", "b"]], specials=["<unk>"])
    assert v.get_itos() == ["<unk>", "b", "a", "c"] and v(["a", "c"]) == [2, 3] and len(v) == 4
    with pytest.raises(RuntimeError, match="default index"):
        v["zzz"]
    v.set_default_index(v["<unk>"])
    assert v["zzz"] == 0
    monkeypatch.setenv("GPUNET_SYNTHETIC_SAMPLES", "50,7")
    train, valid, test = gpunet.text.datasets.WikiText2(root="/nonexistent")
    assert (len(train), len(valid), len(test)) == (50, 7, 7) and all(isinstance(s, str) for s in train)


def test_synthetic_names():
    from gpunet.text.names import LANGUAGES, synthetic_names
    names = synthetic_names("Italian", 40)
    assert len(set(names)) == 40 and names == synthetic_names("Italian", 40) and len(LANGUAGES) == 18
    assert all(n.isalpha() and n[0].isupper() for n in names)


# ------------------------------------------------------------------ data loading
def test_utils_dataloader_yields_tensors_and_collates_tensors():
    from gpunet.utils.data import DataLoader, TensorDataset
    ds = TensorDataset(np.arange(12.0).reshape(6, 2), np.arange(6))
    x, y = next(iter(DataLoader(ds, batch_size=4)))
    assert isinstance(x, gpunet.Tensor) and isinstance(y, gpunet.Tensor) and y.size(0) == 4
    x, y = next(iter(gpunet.data.DataLoader(ds, batch_size=4)))
    assert isinstance(x, np.ndarray)  # gpunet's own loader keeps arrays
    xs = gpunet.data.collate.default_collate([gpunet.ones(2), gpunet.zeros(2)])
    assert isinstance(xs, gpunet.Tensor) and xs.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=lambda s: len(s))))
    assert batch == 2  # a collate_fn's result is left as it is
