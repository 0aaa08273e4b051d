"""PyTorch's Module habits on gpunet modules, checked against torch.nn on
mirrored models: containers and their state-dict keys, Sequential(OrderedDict)
and slicing, apply/named_children/requires_grad_/register_parameter, forward
hooks with removable handles, dtype and device shorthands, and the error for a
forgotten super().__init__()."""
from collections import OrderedDict

import numpy as np
import pytest

import gpunet
from gpunet import nn

torch = pytest.importorskip("torch")


def _pair(lib):
    """The same model in gpunet (lib=nn) and torch (lib=torch.nn): every container."""

    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.blocks = lib.ModuleList([lib.Linear(4, 4), lib.Linear(4, 4)])
            self.heads = lib.ModuleDict({"a": lib.Linear(4, 2), "b": lib.Linear(4, 3)})
            self.seq = lib.Sequential(OrderedDict([("fc", lib.Linear(4, 4)), ("act", lib.ReLU())]))
            self.scales = lib.ParameterList([lib.Parameter(_t(lib, np.ones(4))) for _ in range(2)])
            self.extra = lib.ParameterDict({"shift": lib.Parameter(_t(lib, np.zeros(4)))})
            self.register_parameter("gain", lib.Parameter(_t(lib, np.full(2, 2.0))))
            self.register_parameter("absent", None)

    return Net()


def _t(lib, a):
    a = np.asarray(a, np.float32)
    return torch.from_numpy(a) if lib is torch.nn else a


def test_containers_register_like_torch():
    mine, theirs = _pair(nn), _pair(torch.nn)
    assert list(mine.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in mine.named_children()] == [n for n, _ in theirs.named_children()]
    assert [type(m).__name__ for m in mine.modules()] == [type(m).__name__ for m in theirs.modules()]
    mine.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    np.testing.assert_array_equal(mine.heads["b"].weight.data, theirs.heads["b"].weight.detach().numpy())
    assert mine.get_parameter("blocks.1.bias") is mine.blocks[1].bias
    assert mine.get_submodule("seq.fc") is mine.seq.fc


def test_module_list_and_dict_edit_like_lists_and_dicts():
    ml = nn.ModuleList([nn.ReLU(), nn.Tanh()])
    ml.insert(0, nn.Sigmoid())
    ml += [nn.GELU()]
    del ml[1]
    assert [type(m).__name__ for m in ml] == ["Sigmoid", "Tanh", "GELU"] and list(ml._modules) == ["0", "1", "2"]
    assert isinstance(ml[1:], nn.ModuleList) and len(ml[1:]) == 2 and ml[-1] is ml[2]
    md = nn.ModuleDict({"x": nn.ReLU()})
    md["y"] = nn.Tanh()
    assert list(md) == ["x", "y"] and "y" in md and isinstance(md.pop("x"), nn.ReLU) and list(md.keys()) == ["y"]
    with pytest.raises(TypeError, match="expected a Module"):
        ml.append(3)
    with pytest.raises(NotImplementedError, match="ModuleList has no forward"):
        ml(np.ones(2, np.float32))
    pl = nn.ParameterList([np.ones(3)])
    assert isinstance(pl[0], nn.Parameter) and pl[0].dtype == np.float32


def test_sequential_from_ordered_dict_and_slices(rng):
    layers = OrderedDict([("conv", nn.Linear(5, 4)), ("act", nn.ReLU()), ("out", nn.Linear(4, 2))])
    seq = nn.Sequential(layers).to("sim")
    assert list(seq.state_dict()) == ["conv.weight", "conv.bias", "out.weight", "out.bias"]
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and list(head._modules) == ["conv", "act"] and head.conv is seq.conv
    assert head.device == "sim"
    x = rng.standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(seq[2:](head(x)), seq(x))
    assert seq[-1] is seq.out
    with pytest.raises(IndexError, match="index 3 is out of range"):
        seq[3]


def test_apply_requires_grad_and_named_children():
    visited = []
    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
    tmodel = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(3, 1)))
    tvisited = []
    assert model.apply(lambda m: visited.append(type(m).__name__)) is model
    tmodel.apply(lambda m: tvisited.append(type(m).__name__))
    assert visited == tvisited

    def init(m):
        if isinstance(m, nn.Linear):
            m.weight.data[...] = 0.5
    model.apply(init)
    assert all((m.weight.data == 0.5).all() for m in model.modules() if isinstance(m, nn.Linear))
    assert model.requires_grad_(False) is model
    model(np.ones((2, 2), np.float32))
    model.backward(np.ones((2, 1), np.float32))
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_()
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_forward_hooks_match_torch(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    mine, theirs = nn.Linear(3, 2), torch.nn.Linear(3, 2)
    mine.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    outs = {}
    for name, m, wrap in (("mine", mine, np.asarray), ("theirs", theirs, torch.from_numpy)):
        calls = []
        h1 = m.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
        h2 = m.register_forward_hook(lambda mod, args, out: out + 1)
        # prepended: runs before h2, so it sees the output before h2 adds 1
        h3 = m.register_forward_hook(lambda mod, args, out: calls.append(round(float(out.sum()), 3)), prepend=True)
        h4 = m.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(len(args)), with_kwargs=True)
        y = m(wrap(x))
        for h in (h1, h2, h3, h4):
            h.remove()
        with m.register_forward_hook(lambda mod, args, out: out * 0):
            zero = m(wrap(x))
        plain = m(wrap(x))
        outs[name] = [np.asarray(a.detach() if hasattr(a, "detach") else a) for a in (y, zero, plain)] + [calls]
    for a, b in zip(outs["mine"][:3], outs["theirs"][:3]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert outs["mine"][3] == outs["theirs"][3]
    assert outs["mine"][3][1] == round(float((outs["mine"][0] - 1).sum()), 3)


def test_dtype_and_device_shorthands():
    m = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    assert m.double() is m and all(p.dtype == np.float64 for p in m.parameters()) and m[1].dtype == np.float64
    assert m.float() is m and all(p.dtype == np.float32 for p in m.parameters())
    assert m.half() is m and all(p.dtype == np.float16 for p in m.parameters())
    assert m.bfloat16() is m and all(p.dtype == gpunet.bfloat16 for p in m.parameters())
    m.float()
    assert m.to("sim").device == "sim" and m.cpu().device == "cpu" and m[0].weight.backend.device == "cpu"
    if not gpunet.backends()["cuda"]["available"]:
        with pytest.raises(Exception, match="cuda"):
            m.cuda()


def test_zero_grad_set_to_none_and_zeros():
    m = nn.Linear(2, 2)
    m(np.ones((1, 2), np.float32))
    m.backward(np.ones((1, 2), np.float32))
    m.zero_grad(set_to_none=False)
    assert (m.weight.grad == 0).all()
    m.zero_grad()
    assert m.weight.grad is None


def test_load_state_dict_not_strict_reports_keys_like_torch():
    mine, theirs = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), torch.nn.Sequential(torch.nn.Linear(2, 2))
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    state["extra"] = np.zeros(1)
    result = mine.load_state_dict(state, strict=False)
    tresult = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)).load_state_dict(
        {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=False)
    assert result.missing_keys == tresult.missing_keys and result.unexpected_keys == tresult.unexpected_keys
    missing, unexpected = result
    assert missing == ["1.weight", "1.bias"] and unexpected == ["extra"]


def test_forgotten_super_init_is_named():
    class NoInit(nn.Module):
        def __init__(self):
            self.size = 3  # plain attributes are fine, as in torch
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first in NoInit.__init__"):
        NoInit()

    class NoInitForward(nn.Module):
        def __init__(self):
            self.size = 3

        def forward(self, x):
            return x

    m = NoInitForward()
    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first"):
        m(np.ones(2))
    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first"):
        m.register_parameter("w", None)


def test_register_parameter_checks_its_arguments():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="param: expected a gpunet Parameter"):
        m.register_parameter("w", np.ones(2))
    with pytest.raises(KeyError, match="without '.'"):
        m.register_parameter("a.b", None)
    with pytest.raises(KeyError, match="already has an attribute"):
        m.register_parameter("forward", None)


def test_a_submodule_set_to_none_leaves_the_model_as_in_torch():
    mine, theirs = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), torch.nn.Sequential(
        torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    mine.add_module("extra", nn.Linear(2, 1))
    theirs.add_module("extra", torch.nn.Linear(2, 1))
    mine.extra, theirs.extra = None, None
    assert list(mine.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in mine.named_children()] == [n for n, _ in theirs.named_children()]
    with pytest.raises(TypeError, match="extra: assign a Module"):
        mine.extra = 3


def _with_mask(lib):
    class WithMask(lib.Module):
        def __init__(self):
            super().__init__()
            self.fc = lib.Linear(2, 2)
            self.register_buffer("mask", _t(lib, np.triu(np.ones((3, 3)), 1)), persistent=False)
            self.register_buffer("scale", _t(lib, np.ones(2)))

    return WithMask()


def test_non_persistent_buffers_move_but_are_not_saved():
    mine, theirs = _with_mask(nn), _with_mask(torch.nn)
    assert list(mine.state_dict()) == list(theirs.state_dict()) == ["scale", "fc.weight", "fc.bias"]
    assert [n for n, _ in mine.named_buffers()] == [n for n, _ in theirs.named_buffers()] == ["mask", "scale"]
    mine.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})  # strict: the mask is not expected
    assert mine.double().mask.dtype == np.float64
