"""gpunet.save / gpunet.load: round trips, atomic writes, clear errors on
damaged or mismatched files."""
import json
import os
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim


def _model():
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


def _assert_same_tree(a, b, path="<root>"):
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            _assert_same_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{path}/{i}")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), path
    else:
        assert a == b, path


def test_round_trip_of_a_training_checkpoint(tmp_path, rng):
    model = _model()
    opt = optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    sched = optim.lr_scheduler.StepLR(opt, step_size=2)
    model(rng.standard_normal((5, 4)).astype(np.float32))
    model.backward(np.ones((5, 2), np.float32))
    opt.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "epoch": 7, "best": 0.25, "name": "run/1 %x", "done": False, "note": None, "nan": float("nan"),
            "history": [1.0, 0.5], "seed": np.int64(3), "loss": np.float64(0.125), "mask": np.array([True, False]),
            "ints": np.arange(6, dtype=np.int32).reshape(2, 3), "odd/key%": {1: np.zeros(0), "1x": (2, 3.5)}}
    gpunet.save(ckpt, tmp_path / "ckpt.npz")
    back = gpunet.load(tmp_path / "ckpt.npz")
    _assert_same_tree(ckpt, back)
    assert isinstance(back["model"], OrderedDict)
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    assert list(back["optimizer"]["state"]) == [0, 1, 2, 3]  # int keys stay ints


def test_file_is_a_plain_npz_with_a_json_manifest(tmp_path):
    model = _model()
    gpunet.save({"model": model.state_dict(), "epoch": 2}, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert set(z.files) == {"__manifest__", "model/0.weight", "model/0.bias", "model/1.weight", "model/1.bias"}
        np.testing.assert_array_equal(z["model/1.weight"], model[1].weight.data)
        manifest = json.loads(z["__manifest__"].tobytes())
    assert manifest["format"] == "gpunet.save" and manifest["version"] == 1
    assert manifest["tree"]["items"][1] == ["epoch", {"t": "value", "v": 2}]


def test_loaded_state_restores_a_model(tmp_path, rng):
    model, other = _model(), _model()
    gpunet.save(model.state_dict(), tmp_path / "w.npz")
    other.load_state_dict(gpunet.load(tmp_path / "w.npz"))
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(model(x), other(x))


def test_loading_into_a_different_architecture_names_the_key(tmp_path):
    gpunet.save(_model().state_dict(), tmp_path / "w.npz")
    wrong = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"key '0.weight' expected shape \(5, 4\), got \(3, 4\)"):
        wrong.load_state_dict(gpunet.load(tmp_path / "w.npz"))


def test_unsupported_objects_are_named(tmp_path):
    with pytest.raises(TypeError, match=r"cannot save a builtins.object at 'net'"):
        gpunet.save({"net": object()}, tmp_path / "x.npz")  # (whole modules can be saved: test_torch_surface_tutorials)
    with pytest.raises(TypeError, match=r"dict key \(1, 2\) at 'a' is a tuple"):
        gpunet.save({"a": {(1, 2): 3}}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="'a/0' has dtype object"):
        gpunet.save({"a": [np.array([None, 1])]}, tmp_path / "x.npz")
    with pytest.raises(ValueError, match="entry name '1'"):
        gpunet.save({1: np.zeros(1), "1": np.zeros(1)}, tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ atomicity
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    gpunet.save({"epoch": 1, "w": np.ones(3)}, path)
    before = path.read_bytes()
    real_savez = np.savez

    def savez_then_fail(f, **arrays):
        real_savez(f, **arrays)  # the archive is fully written to the temporary file ...
        f.truncate(f.tell() // 2)  # ... then half of it is lost, and the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(OSError, match="No space left"):
        gpunet.save({"epoch": 2, "w": np.zeros(1000)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    monkeypatch.undo()
    assert gpunet.load(path)["epoch"] == 1


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    gpunet.save({"epoch": 1}, path)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gpunet.save({"epoch": 2}, path)
    monkeypatch.undo()
    assert gpunet.load(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_save_replaces_and_keeps_the_exact_path(tmp_path):
    path = tmp_path / "ckpt.pt"  # no .npz appended, unlike np.savez(filename)
    gpunet.save({"epoch": 1}, path)
    gpunet.save({"epoch": 2}, str(path))
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert gpunet.load(path) == {"epoch": 2}


# ------------------------------------------------------------------ damaged files
@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "good.npz"
    gpunet.save({"model": {"w": np.full(64, 7.0)}, "epoch": 3}, path)
    return path


def test_truncated_file(saved, tmp_path):
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated.npz' is not a readable .npz archive"):
        gpunet.load(bad)


@pytest.mark.parametrize("content", [b"", b"hello, not an archive\n", b"\x80\x04\x95pickle-ish"],
                         ids=["empty", "text", "pickle"])
def test_not_an_npz(content, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="is not a readable .npz archive"):
        gpunet.load(bad)


def test_single_npy_file(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        gpunet.load(tmp_path / "a.npy")


def test_missing_manifest(tmp_path):
    np.savez(tmp_path / "plain.npz", w=np.zeros(3))
    with pytest.raises(ValueError, match=r"has no '__manifest__' entry.*\['w'\]"):
        gpunet.load(tmp_path / "plain.npz")


def test_corrupted_entry_is_named(saved):
    data = bytearray(saved.read_bytes())
    at = data.find(np.full(64, 7.0).tobytes())
    data[at + 100] ^= 0xFF  # one flipped byte inside the array's data
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"entry 'model/w' is damaged"):
        gpunet.load(saved)


def _rewrite(path, manifest=None, drop=None, replace=None):
    """Copy of the archive at `path` with the manifest replaced or an entry dropped/replaced."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != drop}
    if manifest is not None:
        arrays["__manifest__"] = np.frombuffer(manifest, dtype=np.uint8)
    arrays.update(replace or {})
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_manifest_refers_to_a_missing_entry(saved):
    _rewrite(saved, drop="model/w")
    with pytest.raises(ValueError, match=r"refers to entry 'model/w', which the archive does not contain"):
        gpunet.load(saved)


def test_entry_disagrees_with_the_manifest(saved):
    _rewrite(saved, replace={"model/w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"entry 'model/w' holds <f4 \[3\], but the manifest says <f8 \[64\]"):
        gpunet.load(saved)


@pytest.mark.parametrize("manifest,match", [
    (b"{not json", "is not valid JSON"),
    (b'{"format": "other", "tree": {}}', "is not a gpunet.save manifest"),
    (b'{"format": "gpunet.save", "version": 99, "tree": {}}', "format version 99"),
    (b'{"format": "gpunet.save", "version": 1, "tree": {"t": "dict", "items": [["a", {"t": "blob"}]]}}',
     "unknown node at '/a'"),
])
def test_bad_manifest(saved, manifest, match):
    _rewrite(saved, manifest=manifest)
    with pytest.raises(ValueError, match=match):
        gpunet.load(saved)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        gpunet.load(tmp_path / "nope.npz")


def test_zip_with_a_pickled_entry_is_refused(tmp_path):
    path = tmp_path / "p.npz"
    gpunet.save({"w": np.zeros(2)}, path)
    with zipfile.ZipFile(path, "a") as z:
        with z.open("evil.npy", "w") as f:
            np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="entry 'evil' is damaged.*allow_pickle"):
        gpunet.load(path)
