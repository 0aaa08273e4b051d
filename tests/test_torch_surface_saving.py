"""torch.save/torch.load habits on gpunet.save/gpunet.load: file objects,
map_location, weights_only; the tutorial's save-then-load round trip."""
import io

import numpy as np
import pytest

import gpunet
from gpunet import nn, optim


def _model():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_file_objects_round_trip(tmp_path):
    model = _model()
    opt = optim.Adam(model.parameters())
    model(np.ones((2, 3), np.float32))
    model.backward(np.ones((2, 2), np.float32))
    opt.step()
    checkpoint = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}
    buffer = io.BytesIO()
    gpunet.save(checkpoint, buffer)
    buffer.seek(0)
    loaded = gpunet.load(buffer, weights_only=True)
    assert loaded["epoch"] == 3 and list(loaded["model"]) == list(checkpoint["model"])
    with open(tmp_path / "ckpt.pt", "wb") as f:
        gpunet.save(checkpoint, f)
    with open(tmp_path / "ckpt.pt", "rb") as f:
        again = gpunet.load(f, weights_only=False)
    restored = _model()
    restored.load_state_dict(again["model"])
    for a, b in zip(restored.parameters(), model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_map_location_moves_arrays(tmp_path):
    path = tmp_path / "w.pt"
    gpunet.save(_model().state_dict(), path)
    for where in ("cpu", "sim", gpunet.get_backend("cpu")):
        state = gpunet.load(path, map_location=where)
        assert all(isinstance(v, np.ndarray) for v in state.values())
    if gpunet.backends()["cupy"]["available"]:
        state = gpunet.load(path, map_location="cupy")
        assert all(type(v).__module__.startswith("cupy") for v in state.values())


@pytest.mark.parametrize("kwargs,error,match", [
    ({"map_location": {"cuda:1": "cuda:0"}}, NotImplementedError, "map_location: .*record none"),
    ({"map_location": lambda storage, loc: storage}, NotImplementedError, "map_location"),
    ({"weights_only": "yes"}, TypeError, "weights_only: expected a bool"),
    ({"mmap": True}, NotImplementedError, "mmap: gpunet archives are not pickles"),
])
def test_load_arguments_refused_clearly(tmp_path, kwargs, error, match):
    path = tmp_path / "w.pt"
    gpunet.save({"a": np.ones(2)}, path)
    with pytest.raises(error, match=match):
        gpunet.load(path, **kwargs)


def test_damaged_file_object_is_named():
    with pytest.raises(ValueError, match="not a readable .npz archive"):
        gpunet.load(io.BytesIO(b"not an archive"))
