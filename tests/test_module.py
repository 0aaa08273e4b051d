"""The Module API: registration, state_dict, to(), train/eval, the saved-context
stack (a module used twice), containers and backend selection."""
import numpy as np
import pytest

import gpunet
from gpunet import nn, testing


def test_named_parameters_and_state_dict_keys_follow_pytorch():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 2, bias=False)))
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.0.weight"]
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.0.weight"]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["0.bias"][:] = 7  # a copy: editing it leaves the model alone
    assert not np.any(model[0].bias.data == 7)


def test_load_state_dict_errors_name_the_key():
    m = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"'0.weight' expected shape \(3, 4\), got \(4, 3\)"):
        m.load_state_dict({"0.weight": np.zeros((4, 3)), "0.bias": np.zeros(3)})
    with pytest.raises(RuntimeError, match="missing keys \\['0.bias'\\]"):
        m.load_state_dict({"0.weight": np.zeros((3, 4))})
    missing, unexpected = m.load_state_dict({"0.weight": np.ones((3, 4)), "extra": np.zeros(1)}, strict=False)
    assert (missing, unexpected) == (["0.bias"], ["extra"])
    assert m[0].weight.data.dtype == np.float32 and m[0].weight.data.sum() == 12


def test_to_dtype_and_device():
    m = nn.Sequential(nn.Linear(2, 2)).to(np.float64)
    assert m[0].weight.dtype == np.float64 and m[0].dtype == np.float64
    m.to("cpu", np.float32)
    assert m[0].weight.dtype == np.float32 and m.device == "cpu"
    with pytest.raises(ValueError, match="device: expected one of"):
        m.to("tpu")
    with pytest.raises(ValueError, match="dtype: expected one of bfloat16, float16, float32, float64"):
        m.to(np.int32)


def test_module_used_twice_sums_both_gradient_contributions(rng):
    """f(f(x)) with one shared Linear: the weight gradient is the sum over both
    uses (seeds: shared parameters). Checked against finite differences."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Linear(3, 3)

        def forward(self, x):
            return self.f(self.f(x))

        def backward(self, dy):
            return self.f.backward(self.f.backward(dy))

    m = Twice().to(np.float64)
    res = gpunet.gradcheck(m, rng.standard_normal((2, 3)))
    assert res.checked == 2 * 3 + 9 + 3


def test_residual_adds_the_identity_path(rng):
    body = nn.Linear(4, 4).to(np.float64)
    r = nn.Residual(body)
    x = rng.standard_normal((3, 4))
    testing.assert_close(r(x), x + body(x))
    gpunet.gradcheck(r, x)
    with pytest.raises(ValueError, match="keep the input shape"):
        nn.Residual(nn.Linear(4, 2))(x.astype(np.float32))


def test_backends_report_reasons():
    status = gpunet.backends()
    assert set(status) == {"cpu", "sim", "cuda", "cupy"}
    assert status["cpu"]["available"]
    for name, info in status.items():
        assert isinstance(info["reason"], str) and info["reason"]


def test_sim_extension_is_built():
    """The sim build is part of every install: if it is missing, every kernel
    parity test would skip, so its absence is a failure, not a skip."""
    info = gpunet.backends()["sim"]
    assert info["available"], info["reason"]


def test_asarray_and_to_numpy_round_trip():
    x = gpunet.asarray([[1, 2], [3, 4]], device="cpu", dtype=np.float32)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert gpunet.to_numpy(x) is x
    assert gpunet.asarray(np.float32(3.0)).shape == ()


@pytest.mark.parametrize("make", [nn.CrossEntropyLoss, nn.MultiMarginLoss, nn.BCEWithLogitsLoss,
                                  lambda: nn.CrossEntropyLoss(weight=np.ones(3)),
                                  lambda: nn.BCEWithLogitsLoss(pos_weight=np.full(2, 3.0))])
def test_state_dict_round_trip_with_unset_buffers(make):
    """A buffer left None (a loss without class weights) has no key, in
    state_dict and in what load_state_dict expects, as in PyTorch."""
    m = make()
    sd = m.state_dict()
    assert all(v is not None for v in sd.values())
    assert m.load_state_dict(sd) == ([], [])
    assert make().load_state_dict(sd, strict=True) == ([], [])
