"""PyTorch's constructor arguments on the modules gpunet shares with it: each
accepted at PyTorch's default, and those gpunet implements matching PyTorch
(forward, input and parameter gradients) on cpu (float64) and sim (float32).
The sim tests run several families' kernels, so no KERNELS list: any kernel
must run (conftest)."""
import inspect
import warnings

import numpy as np
import pytest

import gpunet
from gpunet import functional as F
from gpunet import nn
from gpunet.ops.pad import pad2d, pad2d_backward
from gpunet.testing import assert_close

torch = pytest.importorskip("torch")

# the required arguments of each shared module (PyTorch's signatures take *args for RNNs)
REQUIRED = {"Linear": (4, 3), "Conv2d": (2, 3, 3), "BatchNorm1d": (3,), "BatchNorm2d": (3,), "LayerNorm": (3,),
            "Embedding": (5, 3), "LSTM": (3, 4), "RNN": (3, 4), "LSTMCell": (3, 4), "RNNCell": (3, 4),
            "GRU": (3, 4), "GRUCell": (3, 4), "MultiheadAttention": (4, 2), "AvgPool2d": (2,), "MaxPool2d": (2,),
            "MaxUnpool2d": (2,), "Conv1d": (2, 3, 3), "ConvTranspose2d": (2, 3, 3), "AdaptiveAvgPool2d": (2,),
            "AdaptiveMaxPool2d": (2,), "GroupNorm": (2, 4), "TransformerEncoderLayer": (4, 2),
            "TransformerDecoderLayer": (4, 2), "TransformerEncoder": (nn.TransformerEncoderLayer(4, 2, 8), 1),
            "TransformerDecoder": (nn.TransformerDecoderLayer(4, 2, 8), 1)}
# PyTorch's RNN/LSTM defaults (hidden behind *args in their signatures)
RNN_DEFAULTS = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0, "bidirectional": False,
                "device": None, "dtype": None}
SHARED = sorted(n for n in dir(nn) if isinstance(getattr(nn, n), type) and issubclass(getattr(nn, n), nn.Module)
                and n != "Module" and isinstance(getattr(torch.nn, n, None), type))


def torch_defaults(name):
    if name in ("RNN", "LSTM", "GRU"):
        extra = {"LSTM": {"proj_size": 0}, "RNN": {"nonlinearity": "tanh"}, "GRU": {}}[name]
        return dict(RNN_DEFAULTS, **extra)
    sig = inspect.signature(getattr(torch.nn, name).__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and not k.startswith("_")}


@pytest.mark.parametrize("name", SHARED)
def test_every_pytorch_default_is_accepted(name):
    """Passing PyTorch's own defaults by keyword never raises (a TypeError for
    an unknown argument was the common failure)."""
    defaults = torch_defaults(name)
    if name in ("Softmax", "LogSoftmax"):
        defaults["dim"] = -1  # None is accepted too, with PyTorch's deprecation warning
    getattr(nn, name)(*REQUIRED.get(name, ()), **defaults)


@pytest.mark.parametrize("name", SHARED)
def test_forward_argument_names_are_pytorch_s(name):
    """m(input=x), m(query=..., key=...) work as in PyTorch: our forward's
    leading parameters carry PyTorch's names, in PyTorch's order."""
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    theirs = [k for k, p in inspect.signature(getattr(torch.nn, name).forward).parameters.items()
              if k != "self" and p.kind not in kinds]
    ours = [k for k in inspect.signature(getattr(nn, name).forward).parameters if k != "self"]
    assert ours[:len(theirs)] == theirs


def test_forward_by_keyword():
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(nn.ReLU()(input=x), x)
    assert nn.Linear(3, 4)(input=x).shape == (2, 4)


def test_shared_modules_are_all_checked():
    assert len(SHARED) >= 30 and {"LSTM", "Conv2d", "Embedding", "MultiheadAttention"} <= set(SHARED)


@pytest.mark.parametrize("make,argument", [
    (lambda: nn.Embedding(5, 3, sparse=True), "sparse"),
])
def test_unsupported_values_name_the_argument(make, argument):
    with pytest.raises(NotImplementedError, match=argument):
        make()


@pytest.mark.parametrize("name", ["Linear", "Conv2d", "LayerNorm", "Embedding", "LSTM", "LSTMCell",
                                  "MultiheadAttention", "BatchNorm2d"])
def test_device_and_dtype_arguments(name):
    m = getattr(nn, name)(*REQUIRED[name], device="sim", dtype=np.float64)
    assert m.device == "sim" and all(p.data.dtype == np.float64 for p in m.parameters())


def test_loss_legacy_reduction_arguments():
    x, t = np.arange(4.0).reshape(2, 2), np.zeros((2, 2))
    for kw, reduction in [({"size_average": False}, "sum"), ({"reduce": False}, "none"),
                          ({"size_average": True, "reduce": True}, "mean")]:
        assert nn.MSELoss(**kw).reduction == torch.nn.MSELoss(**kw).reduction == reduction
        np.testing.assert_allclose(nn.MSELoss(**kw).to(np.float64)(x, t), torch.nn.MSELoss(**kw)(
            torch.from_numpy(x), torch.from_numpy(t)).numpy())
    with pytest.raises(TypeError, match="size_average.*reduction= by keyword"):
        nn.MSELoss("sum")  # PyTorch would silently take "sum" as size_average=True


# ---------------------------------------------------------------- parity against PyTorch
def _parity(ours, theirs, x, device, grads=("weight",)):
    """forward, input gradient and parameter gradients of `ours` on `device` against torch."""
    dtype = np.float64 if device == "cpu" else np.float32
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    ours.to(device, dtype)
    theirs.double()
    tx = torch.from_numpy(x).requires_grad_()
    ty = theirs(tx)
    g = np.random.default_rng(1).standard_normal(tuple(ty.shape))
    ty.backward(torch.from_numpy(g))
    y = ours(ours.backend.asarray(x.astype(dtype)))
    dx = ours.backward(ours.backend.asarray(g.astype(dtype)))
    assert_close(gpunet.to_numpy(y), ty.detach().numpy().astype(dtype))
    assert_close(gpunet.to_numpy(dx), tx.grad.numpy().astype(dtype))
    for name in grads:
        assert_close(gpunet.to_numpy(getattr(ours, name).grad), getattr(theirs, name).grad.numpy().astype(dtype))


@pytest.mark.parametrize("kw", [dict(padding="same"), dict(padding="same", dilation=2),
                                dict(kernel_size=(2, 4), padding="same"), dict(padding="valid"),
                                dict(padding=2, padding_mode="reflect"), dict(padding=(1, 2), padding_mode="replicate"),
                                dict(padding=1, padding_mode="circular", stride=2),
                                dict(kernel_size=4, padding="same", padding_mode="reflect")], ids=str)
def test_conv2d_padding_modes_as_torch(kw, device, rng):
    kw = dict(kw)
    k = kw.pop("kernel_size", 3)
    x = rng.standard_normal((2, 2, 7, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on even windows with padding='same'
        _parity(nn.Conv2d(2, 3, k, **kw), torch.nn.Conv2d(2, 3, k, **kw), x, device, ("weight", "bias"))


def test_conv2d_padding_errors():
    with pytest.raises(ValueError, match="padding='same'.*stride 1"):
        nn.Conv2d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(1, 1, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="reflect padding of 3 needs an input height of at least 4"):
        nn.Conv2d(1, 1, 3, padding=3, padding_mode="reflect")(np.zeros((1, 1, 3, 8), np.float32))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_pad2d_backward_is_the_adjoint(mode, rng):
    """<pad(x), g> = <x, pad_backward(g)> for every mode and uneven pads."""
    be = gpunet.get_backend("cpu")
    x = rng.standard_normal((2, 3, 5, 6))
    y = pad2d(be, x, (2, 1, 3, 0), mode)
    g = rng.standard_normal(y.shape)
    assert y.shape == (2, 3, 8, 9)
    assert np.isclose((y * g).sum(), (x * pad2d_backward(be, g, (2, 1, 3, 0), mode)).sum(), rtol=1e-13)


@pytest.mark.parametrize("kw", [dict(max_norm=1.0), dict(max_norm=0.5, norm_type=1.0), dict(scale_grad_by_freq=True),
                                dict(padding_idx=1, scale_grad_by_freq=True, max_norm=1.5)], ids=str)
def test_embedding_options_as_torch(kw, device):
    t = torch.nn.Embedding(6, 4, **kw).double()
    m = nn.Embedding(6, 4, _weight=t.weight.detach().numpy().copy(), **kw)
    dtype = np.float64 if device == "cpu" else np.float32
    m.to(device, dtype)
    idx = np.array([[0, 1, 1], [5, 1, 3]])
    g = np.random.default_rng(0).standard_normal((2, 3, 4))
    ty = t(torch.from_numpy(idx))
    ty.backward(torch.from_numpy(g))
    y = m(idx)
    m.backward(m.backend.asarray(g.astype(dtype)))
    assert_close(gpunet.to_numpy(y), ty.detach().numpy().astype(dtype))
    assert_close(gpunet.to_numpy(m.weight.grad), t.weight.grad.numpy().astype(dtype))
    assert_close(gpunet.to_numpy(m.weight.data), t.weight.detach().numpy().astype(dtype))  # max_norm renormed in place


def test_embedding_frozen_weight():
    m = nn.Embedding(3, 2, _weight=np.eye(3, 2), _freeze=True)
    m(np.array([0, 2]))
    m.backward(np.ones((2, 2), np.float32))
    assert m.weight.grad is None


@pytest.mark.parametrize("cls", [nn.LSTM, nn.RNN])
def test_recurrent_dropout_between_layers(cls, device, rng):
    """num_layers=2, dropout=p is layer 0, Dropout(p), layer 1: the same masks
    (one seeded stream), the same outputs and gradients; no dropout in eval."""
    dtype = np.float64 if device == "cpu" else np.float32
    stacked = cls(3, 4, num_layers=2, dropout=0.5).to(device, dtype)
    first, second, drop = cls(3, 4).to(device, dtype), cls(4, 4).to(device, dtype), nn.Dropout(0.5).to(device, dtype)
    sd = stacked.state_dict()
    first.load_state_dict({k.replace("_l0", "_l0"): v for k, v in sd.items() if k.endswith("_l0")})
    second.load_state_dict({k.replace("_l1", "_l0"): v for k, v in sd.items() if k.endswith("_l1")})
    x = stacked.backend.asarray(rng.standard_normal((5, 2, 3)).astype(dtype))
    g = stacked.backend.asarray(rng.standard_normal((5, 2, 4)).astype(dtype))
    gpunet.manual_seed(3)
    y = stacked(x)[0]
    dx = stacked.backward(g)
    gpunet.manual_seed(3)
    y_ref = second(drop(first(x)[0]))[0]
    dx_ref = first.backward(drop.backward(second.backward(g)))
    np.testing.assert_array_equal(gpunet.to_numpy(y), gpunet.to_numpy(y_ref))
    np.testing.assert_array_equal(gpunet.to_numpy(dx), gpunet.to_numpy(dx_ref))
    np.testing.assert_array_equal(gpunet.to_numpy(stacked.weight_ih_l0.grad), gpunet.to_numpy(first.weight_ih_l0.grad))
    stacked.eval()
    assert not np.array_equal(gpunet.to_numpy(stacked(x)[0]), gpunet.to_numpy(y))


@pytest.mark.parametrize("shape,expected_dim", [((), 0), ((4,), 0), ((2, 4), 1), ((2, 3, 4), 0), ((2, 3, 4, 5), 1)])
def test_softmax_implicit_dim_as_torch(shape, expected_dim, rng):
    x = rng.standard_normal(shape)
    with pytest.warns(UserWarning, match="implicit dimension"):
        ours = nn.Softmax().to(np.float64)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.nn.Softmax()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-14)
    np.testing.assert_allclose(ours, F.softmax(x, expected_dim) if shape else 1.0, rtol=1e-14)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
def test_functional_softmax_dtype_and_zero_dim(fn, device):
    x = np.arange(6.0, dtype=np.float64).reshape(2, 3)
    y = getattr(F, fn)(x, 1, dtype=np.float32, device=device)
    assert y.dtype == np.float32
    np.testing.assert_allclose(gpunet.to_numpy(y), getattr(torch.nn.functional, fn)(
        torch.from_numpy(x), 1, dtype=torch.float32).numpy(), rtol=1e-6)
    z = getattr(F, fn)(np.array(2.5, np.float32), -1, device=device)
    assert z.shape == () and float(z) == (1.0 if fn == "softmax" else 0.0)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                                dict(kernel_size=(2, 3), stride=1)], ids=str)
@pytest.mark.parametrize("divisor", [1, 5])
def test_avgpool_divisor_override_as_torch(kw, divisor, device, rng):
    x = rng.standard_normal((2, 3, 7, 8))
    _parity(nn.AvgPool2d(divisor_override=divisor, **kw), torch.nn.AvgPool2d(divisor_override=divisor, **kw),
            x, device, grads=())


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)], ids=str)
def test_maxpool_indices_and_unpool_as_torch(kw, device, rng):
    """return_indices gives PyTorch's indices; MaxUnpool2d of them matches
    PyTorch forward and backward (also batched-less (C, H, W) input)."""
    dtype = np.float64 if device == "cpu" else np.float32
    for shape in [(2, 3, 9, 8), (3, 9, 8)]:
        x = rng.standard_normal(shape)
        pool = nn.MaxPool2d(return_indices=True, **kw).to(device, dtype)
        y, idx = pool(pool.backend.asarray(x.astype(dtype)))
        ty, tidx = torch.nn.MaxPool2d(return_indices=True, **kw)(torch.from_numpy(x))
        np.testing.assert_array_equal(gpunet.to_numpy(idx), tidx.numpy())
        assert_close(gpunet.to_numpy(y), ty.numpy().astype(dtype))
        pool.backward(pool.backend.asarray(np.ones(y.shape, dtype)))  # the pooling's own backward still pairs
        if "dilation" in kw:
            continue  # PyTorch's unpooling takes no dilation (nor this output size)
        unkw = {k: v for k, v in kw.items() if k in ("kernel_size", "stride", "padding")}
        unpool = nn.MaxUnpool2d(**unkw).to(device, dtype)
        tin = ty.detach().clone().requires_grad_()
        tout = torch.nn.MaxUnpool2d(**unkw)(tin, tidx, output_size=shape[-2:])
        out = unpool(y, idx, output_size=shape[-2:])
        assert_close(gpunet.to_numpy(out), tout.detach().numpy().astype(dtype))
        g = rng.standard_normal(tuple(tout.shape))
        tout.backward(torch.from_numpy(g))
        assert_close(gpunet.to_numpy(unpool.backward(unpool.backend.asarray(g.astype(dtype)))),
                     tin.grad.numpy().astype(dtype))


def test_maxunpool_rejects_out_of_range_indices():
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 16\)"):
        nn.MaxUnpool2d(2)(np.ones((1, 1, 2, 2), np.float32), np.full((1, 1, 2, 2), 16))


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN", "LSTM-proj", "LSTM-proj-unidirectional"])
@pytest.mark.parametrize("layers,batch_first,state,batched", [(1, False, True, True), (2, True, False, True),
                                                              (2, False, True, False)])
def test_bidirectional_and_projection_as_torch(cls, layers, batch_first, state, batched, device, rng):
    """bidirectional=True and LSTM proj_size: PyTorch's *_reverse and
    weight_hr parameters, outputs (forward and reverse halves), final states
    and every gradient."""
    dtype = np.float64 if device == "cpu" else np.float32
    kw = dict(num_layers=layers, batch_first=batch_first, bidirectional=not cls.endswith("unidirectional"))
    if "proj" in cls:
        cls, kw["proj_size"] = "LSTM", 3
    theirs = getattr(torch.nn, cls)(3, 4, **kw).double()
    ours = getattr(nn, cls)(3, 4, **kw)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    ours.to(device, dtype)
    shape = ((2, 5, 3) if batch_first else (5, 2, 3)) if batched else (5, 3)
    D = 2 if kw["bidirectional"] else 1
    sizes = [kw.get("proj_size", 4), 4] if cls == "LSTM" else [4]
    x = rng.standard_normal(shape)
    states = [rng.standard_normal((D * layers, 2, n) if batched else (D * layers, n)) for n in sizes]
    tx = torch.from_numpy(x).requires_grad_()
    tstates = [torch.from_numpy(s).requires_grad_() for s in states]
    arr = lambda a: ours.backend.asarray(a.astype(dtype))
    hx = None if not state else (tuple(arr(s) for s in states) if cls == "LSTM" else arr(states[0]))
    thx = None if not state else (tuple(tstates) if cls == "LSTM" else tstates[0])
    out, fin = ours(arr(x), hx)
    tout, tfin = theirs(tx, thx)
    fins, tfins = (list(fin), list(tfin)) if cls == "LSTM" else ([fin], [tfin])
    for a, b in zip([out] + fins, [tout] + tfins):
        assert_close(gpunet.to_numpy(a), b.detach().numpy().astype(dtype))
    gs = [rng.standard_normal(tuple(t.shape)) for t in [tout] + tfins]
    torch.autograd.backward([tout] + tfins, [torch.from_numpy(g) for g in gs])
    gfin = tuple(arr(g) for g in gs[1:]) if cls == "LSTM" else arr(gs[1])
    grads = ours.backward(arr(gs[0]), gfin)
    dx = grads[0] if state else grads
    assert_close(gpunet.to_numpy(dx), tx.grad.numpy().astype(dtype), n=1600)
    if state:
        dstates = list(grads[1]) if cls == "LSTM" else [grads[1]]
        for a, t in zip(dstates, tstates):
            assert_close(gpunet.to_numpy(a), t.grad.numpy().astype(dtype), n=1600)
    tp = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        assert_close(gpunet.to_numpy(p.grad), tp[n].grad.numpy().astype(dtype), n=1600, name=n)


@pytest.mark.fallback("attention backward")  # a gradient into the attention weights runs array code
@pytest.mark.parametrize("kw", [dict(add_bias_kv=True), dict(add_zero_attn=True),
                                dict(add_bias_kv=True, add_zero_attn=True, kdim=3, vdim=5)], ids=str)
@pytest.mark.parametrize("masks", [False, True])
def test_mha_extra_keys_as_torch(kw, masks, device, rng):
    """add_bias_kv / add_zero_attn: outputs, attention weights and every gradient
    (query, key, value, bias_k, bias_v and the projections) as PyTorch."""
    dtype = np.float64 if device == "cpu" else np.float32
    E, H, N, L, S = 8, 2, 3, 4, 5
    theirs = torch.nn.MultiheadAttention(E, H, **kw).double()
    ours = nn.MultiheadAttention(E, H, **kw)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    ours.to(device, dtype)
    q, k, v = (rng.standard_normal((L, N, E)), rng.standard_normal((S, N, kw.get("kdim", E))),
               rng.standard_normal((S, N, kw.get("vdim", E))))
    pad = np.zeros((N, S), bool)
    pad[0, -2:] = True
    am = np.triu(np.ones((L, S), bool), 2)
    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    tkw = dict(key_padding_mask=torch.from_numpy(pad), attn_mask=torch.from_numpy(am)) if masks else {}
    tout, tw = theirs(tq, tk, tv, **tkw)
    arr = lambda a: ours.backend.asarray(a.astype(dtype))
    okw = dict(key_padding_mask=ours.backend.asarray(pad), attn_mask=ours.backend.asarray(am)) if masks else {}
    out, w = ours(arr(q), arr(k), arr(v), **okw)
    assert_close(gpunet.to_numpy(out), tout.detach().numpy().astype(dtype))
    assert_close(gpunet.to_numpy(w), tw.detach().numpy().astype(dtype))
    g, gw = rng.standard_normal(tuple(tout.shape)), rng.standard_normal(tuple(tw.shape))
    torch.autograd.backward([tout, tw], [torch.from_numpy(g), torch.from_numpy(gw)])
    grads = ours.backward(arr(g), arr(gw))
    for a, t in zip(grads, (tq, tk, tv)):
        assert_close(gpunet.to_numpy(a), t.grad.numpy().astype(dtype), n=1600)
    tp = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        assert_close(gpunet.to_numpy(p.grad), tp[n].grad.numpy().astype(dtype), n=1600, name=n)


def test_sdpa_broadcast_batch_dims_as_torch(device, rng):
    """key/value batch dims broadcast against the query's (e.g. one key set
    shared by every head); gradients come back in each input's own shape."""
    dtype = np.float64 if device == "cpu" else np.float32
    shapes = [(2, 3, 4, 8), (1, 3, 5, 8), (2, 1, 5, 6)]
    arrays = [rng.standard_normal(s) for s in shapes]
    mask = rng.random((4, 5)) > 0.3
    mask[:, 0] = True
    ts = [torch.from_numpy(a).requires_grad_() for a in arrays]
    tout = torch.nn.functional.scaled_dot_product_attention(*ts, attn_mask=torch.from_numpy(mask))
    m = nn.ScaledDotProductAttention().to(device, dtype)
    out = m(*(m.backend.asarray(a.astype(dtype)) for a in arrays), attn_mask=m.backend.asarray(mask))
    assert_close(gpunet.to_numpy(out), tout.detach().numpy().astype(dtype))
    g = rng.standard_normal(tuple(tout.shape))
    tout.backward(torch.from_numpy(g))
    for ours, t in zip(m.backward(m.backend.asarray(g.astype(dtype))), ts):
        assert ours.shape == tuple(t.shape)
        assert_close(gpunet.to_numpy(ours), t.grad.numpy().astype(dtype), n=1600)


class _Reseeded(nn.Module):
    """`inner` with gpunet's generator reseeded before each forward: the same
    dropout masks on every call, so finite differences see one function."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        gpunet.manual_seed(7)
        return self.inner(*args)

    def backward(self, *grads):
        return self.inner.backward(*grads)


def test_sdpa_dropout_drops_the_probabilities(device, rng):
    """functional dropout_p: dropout(P) v with gpunet's dropout stream (the same
    mask as nn.Dropout drawing next), on cpu and sim alike."""
    dtype = np.float64 if device == "cpu" else np.float32
    be = gpunet.get_backend(device)
    q, k, v = (be.asarray(rng.standard_normal(s).astype(dtype)) for s in [(2, 4, 8), (2, 5, 8), (2, 5, 6)])
    gpunet.manual_seed(3)
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=0.4)
    p = gpunet.to_numpy(F.softmax(q @ np.swapaxes(k, -1, -2) / dtype(np.sqrt(8)), -1, device=device))
    gpunet.manual_seed(3)
    pd = gpunet.to_numpy(nn.Dropout(0.4).to(device, dtype)(be.asarray(p.astype(dtype))))
    assert 0 < (pd == 0).mean() < 0.8
    assert_close(gpunet.to_numpy(y), pd @ gpunet.to_numpy(v), n=64)


@pytest.mark.parametrize("make,inputs", [
    (lambda: nn.ScaledDotProductAttention(), lambda r: (r.standard_normal((2, 3, 4)), r.standard_normal((2, 5, 4)),
                                                       r.standard_normal((2, 5, 3)), None, 0.3)),
    (lambda: nn.MultiheadAttention(4, 2, dropout=0.3), lambda r: tuple(r.standard_normal((3, 2, 4)) for _ in range(3))),
], ids=["sdpa", "mha"])
def test_attention_dropout_gradcheck(make, inputs, rng):
    gpunet.gradcheck(_Reseeded(make().to(np.float64)), inputs(rng))


def test_mha_dropout_only_while_training(rng):
    q = rng.standard_normal((3, 2, 4)).astype(np.float32)
    plain, dropped = nn.MultiheadAttention(4, 2), nn.MultiheadAttention(4, 2, dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    assert not np.array_equal(dropped(q, q, q)[0], plain(q, q, q)[0])
    dropped.eval()
    np.testing.assert_array_equal(dropped(q, q, q)[0], plain(q, q, q)[0])


# ---------------------------------------------------------------- empty batches, as PyTorch
EMPTY = {
    "Linear": (lambda m: m.Linear(3, 4), (0, 3)),
    "Conv2d": (lambda m: m.Conv2d(2, 3, 3, padding=1), (0, 2, 5, 5)),
    "Conv1d": (lambda m: m.Conv1d(2, 3, 3, padding=1), (0, 2, 5)),
    "ConvTranspose2d": (lambda m: m.ConvTranspose2d(2, 3, 3), (0, 2, 5, 5)),
    "MaxPool2d": (lambda m: m.MaxPool2d(2), (0, 2, 4, 4)),
    "AvgPool2d": (lambda m: m.AvgPool2d(2), (0, 2, 4, 4)),
    "AdaptiveAvgPool2d": (lambda m: m.AdaptiveAvgPool2d(2), (0, 2, 4, 4)),
    "AdaptiveMaxPool2d": (lambda m: m.AdaptiveMaxPool2d(2), (0, 2, 4, 4)),
    "LayerNorm": (lambda m: m.LayerNorm(3), (0, 3)),
    "GroupNorm": (lambda m: m.GroupNorm(1, 2), (0, 2, 3)),
    "BatchNorm2d": (lambda m: m.BatchNorm2d(2), (0, 2, 3, 3)),
    "Dropout": (lambda m: m.Dropout(0.5), (0, 3)),
    "GELU": (lambda m: m.GELU(), (0, 3)),
    "LogSoftmax": (lambda m: m.LogSoftmax(-1), (0, 3)),
    "Flatten": (lambda m: m.Flatten(), (0, 3, 2)),
    "LSTM": (lambda m: m.LSTM(3, 4, num_layers=2, bidirectional=True), (5, 0, 3)),
    "GRU": (lambda m: m.GRU(3, 4), (5, 0, 3)),
    "RNN": (lambda m: m.RNN(3, 4), (5, 0, 3)),
    "LSTMCell": (lambda m: m.LSTMCell(3, 4), (0, 3)),
    "GRUCell": (lambda m: m.GRUCell(3, 4), (0, 3)),
    "MultiheadAttention": (lambda m: m.MultiheadAttention(4, 2), (3, 0, 4)),
}


def _first(y):
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.no_kernels("an empty batch has nothing to launch over")
@pytest.mark.fallback("batch_norm")
@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_batch_as_torch(name, device):
    """An empty batch: PyTorch's output shape, an input gradient of the input's
    shape, and zero parameter gradients."""
    make, shape = EMPTY[name]
    args = (lambda a: (a, a, a)) if name == "MultiheadAttention" else (lambda a: (a,))
    tm = make(torch.nn)
    tx = torch.zeros(shape, requires_grad=True)
    ty = _first(tm(*args(tx)))
    ty.sum().backward()
    m = make(nn).to(device)
    x = m.backend.asarray(np.zeros(shape, np.float32))
    y = _first(m(*args(x)))
    assert tuple(y.shape) == tuple(ty.shape)
    dx = _first(m.backward(m.backend.asarray(np.zeros(y.shape, np.float32))))
    assert tuple(dx.shape) == shape
    tp = dict(tm.named_parameters())
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(gpunet.to_numpy(p.grad), tp[n].grad.numpy(), err_msg=n)
