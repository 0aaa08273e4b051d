"""gpunet.nn.functional against torch.nn.functional: each function called with
the same arguments in both (the call below is written once and run on both
modules), on cpu (float64) and sim (float32, through the kernels where the
op has them)."""
import functools
import inspect

import numpy as np
import pytest

import gpunet.nn.functional as F
from gpunet.testing import assert_close

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def _f(*shape):
    return lambda rng: rng.standard_normal(shape)


def _int(high, *shape):
    return lambda rng: rng.integers(0, high, size=shape)


def _logp(*shape):  # log-probabilities along dim 1
    def make(rng):
        x = rng.standard_normal(shape)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return make


no_kernels = pytest.mark.no_kernels("array code on every backend")
# (id, input makers, call written once for both namespaces, marks)
CASES = [
    ("relu", [_f(3, 7)], lambda F, x: F.relu(x), ()),
    ("relu_inplace_arg", [_f(3, 7)], lambda F, x: F.relu(x, inplace=False), ()),
    ("leaky_relu", [_f(3, 7)], lambda F, x: F.leaky_relu(x, 0.2), ()),
    ("gelu", [_f(3, 7)], lambda F, x: F.gelu(x), ()),
    ("gelu_tanh", [_f(3, 7)], lambda F, x: F.gelu(x, approximate="tanh"), (pytest.mark.fallback("gelu"),)),
    ("silu", [_f(3, 7)], lambda F, x: F.silu(x), (pytest.mark.fallback("silu"),)),
    ("elu", [_f(3, 7)], lambda F, x: F.elu(x, 0.5), (pytest.mark.fallback("elu"),)),
    ("tanh", [_f(3, 7)], lambda F, x: F.tanh(x), ()),
    ("sigmoid", [_f(3, 7)], lambda F, x: F.sigmoid(x), ()),
    ("softmax", [_f(3, 7)], lambda F, x: F.softmax(x, dim=1), ()),
    ("log_softmax", [_f(3, 4, 5)], lambda F, x: F.log_softmax(x, dim=-1), ()),
    ("max_pool2d", [_f(2, 3, 7, 6)], lambda F, x: F.max_pool2d(x, 3, 2, 1), ()),
    ("max_pool2d_ceil", [_f(2, 3, 7, 6)], lambda F, x: F.max_pool2d(x, 2, ceil_mode=True), ()),
    ("avg_pool2d", [_f(2, 3, 7, 6)], lambda F, x: F.avg_pool2d(x, 2, padding=1, count_include_pad=False), ()),
    ("adaptive_avg_pool2d", [_f(2, 3, 6, 6)], lambda F, x: F.adaptive_avg_pool2d(x, (2, 3)), ()),
    ("dropout_eval", [_f(3, 7)], lambda F, x: F.dropout(x, 0.4, training=False), (no_kernels,)),
    ("dropout_p0", [_f(3, 7)], lambda F, x: F.dropout(x, 0.0), (no_kernels,)),
    ("cross_entropy", [_f(6, 5), _int(5, 6)], lambda F, x, y: F.cross_entropy(x, y), ()),
    ("cross_entropy_opts", [_f(6, 5), _int(5, 6)],
     lambda F, x, y: F.cross_entropy(x, y, reduction="sum", label_smoothing=0.1, ignore_index=2), ()),
    ("nll_loss", [_logp(6, 5), _int(5, 6)], lambda F, x, y: F.nll_loss(x, y), (no_kernels,)),
    ("mse_loss", [_f(4, 3), _f(4, 3)], lambda F, x, t: F.mse_loss(x, t), (no_kernels,)),
    ("l1_loss", [_f(4, 3), _f(4, 3)], lambda F, x, t: F.l1_loss(x, t, reduction="sum"), (no_kernels,)),
    ("smooth_l1_loss", [_f(4, 3), _f(4, 3)], lambda F, x, t: F.smooth_l1_loss(x, t, beta=0.5), (no_kernels,)),
    ("linear", [_f(4, 5), _f(3, 5), _f(3)], lambda F, x, w, b: F.linear(x, w, b), ()),
    ("linear_3d_nobias", [_f(2, 4, 5), _f(3, 5)], lambda F, x, w: F.linear(x, w), (no_kernels,)),
    ("conv2d", [_f(2, 4, 6, 5), _f(3, 4, 3, 3), _f(3)], lambda F, x, w, b: F.conv2d(x, w, b, padding=1), ()),
    ("conv2d_groups_same", [_f(2, 4, 6, 5), _f(6, 2, 2, 3)],
     lambda F, x, w: F.conv2d(x, w, padding="same", groups=2), ()),
    ("conv2d_stride", [_f(1, 2, 9, 8), _f(4, 2, 3, 3)],
     lambda F, x, w: F.conv2d(x, w, None, stride=2, dilation=(1, 2)), ()),
    ("layer_norm", [_f(3, 4, 6), _f(6), _f(6)], lambda F, x, w, b: F.layer_norm(x, (6,), w, b, eps=1e-3), ()),
    ("layer_norm_plain", [_f(3, 4, 6)], lambda F, x: F.layer_norm(x, [4, 6]), ()),
    ("embedding", [_int(7, 3, 4), _f(7, 5)], lambda F, i, w: F.embedding(i, w), ()),
    ("embedding_max_norm", [_int(7, 3, 4), _f(7, 5)], lambda F, i, w: F.embedding(i, w, max_norm=1.0), ()),
    ("sdpa_causal", [_f(2, 2, 5, 4), _f(2, 2, 5, 4), _f(2, 2, 5, 4)],
     lambda F, q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), ()),
    ("pad_constant", [_f(2, 3, 4)], lambda F, x: F.pad(x, (1, 2, 0, 1)), (no_kernels,)),
    ("pad_value_crop", [_f(2, 3, 4)], lambda F, x: F.pad(x, (-1, 2), value=1.5), (no_kernels,)),
    ("pad_reflect", [_f(1, 2, 4, 5)], lambda F, x: F.pad(x, (2, 1, 3, 0), mode="reflect"), (no_kernels,)),
    ("pad_replicate", [_f(1, 2, 4, 5)], lambda F, x: F.pad(x, (2, 1, 1, 2), mode="replicate"), (no_kernels,)),
    ("pad_circular", [_f(1, 2, 4, 5)], lambda F, x: F.pad(x, (2, 1, 1, 2), mode="circular"), (no_kernels,)),
    ("one_hot", [_int(5, 3, 4)], lambda F, y: F.one_hot(y, 6), (no_kernels,)),
    ("one_hot_auto", [_int(5, 7)], lambda F, y: F.one_hot(y), (no_kernels,)),
]


class _On:
    """gpunet.nn.functional with device= given to every function that takes it."""

    def __init__(self, device):
        self.device = device

    def __getattr__(self, name):
        fn = getattr(F, name)
        if "device" in inspect.signature(fn).parameters:
            return functools.partial(fn, device=self.device)
        return fn


@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("makers,call", [pytest.param(m, c, id=i, marks=k) for i, m, c, k in CASES])
@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_matches_torch(device, makers, call, rng):
    dtype = np.float64 if device == "cpu" else np.float32
    arrays = [m(rng) for m in makers]
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    want = call(TF, *(torch.from_numpy(a.copy()) for a in arrays))
    got = call(_On(device), *arrays)
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.numpy().dtype, (got.dtype, want.dtype)
    assert_close(got, want.numpy(), n=16)


def test_embedding_max_norm_renormalises_the_table_in_place(rng):
    w = rng.standard_normal((6, 4)) * 3
    wt = torch.from_numpy(w.copy())
    idx = np.array([[0, 2], [2, 5]])
    F.embedding(idx, w, max_norm=1.5)
    TF.embedding(torch.from_numpy(idx), wt, max_norm=1.5)
    assert_close(w, wt.numpy())
    assert np.allclose(np.linalg.norm(w[[0, 2, 5]], axis=1), 1.5, rtol=1e-6)


def test_dropout_trains_by_default_and_keeps_the_expectation():
    x = np.ones((200, 50), np.float32)
    y = F.dropout(x, 0.3)
    assert 0.25 < (y == 0).mean() < 0.35
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.7)}
    y2 = F.dropout2d(np.ones((8, 40, 3, 3), np.float32), 0.5)
    per_channel = y2.reshape(8, 40, 9)
    assert (per_channel == per_channel[..., :1]).all()  # whole channels kept or dropped


def test_functional_follows_the_input_dtype():
    x = np.random.default_rng(0).standard_normal((4, 5))
    y = np.array([0, 1, 2, 4])
    assert F.cross_entropy(x, y).dtype == np.float64
    assert F.cross_entropy(x.astype(np.float32), y).dtype == np.float32
    assert F.max_pool2d(x.reshape(1, 1, 4, 5), 2).dtype == np.float64


@pytest.mark.parametrize("call,match", [
    (lambda: F.linear(np.ones((2, 3)), np.ones((4, 5))), "input: expected last dim 5"),
    (lambda: F.linear(np.ones((2, 5)), np.ones((4, 5)), np.ones(3)), "bias: expected shape"),
    (lambda: F.conv2d(np.ones((1, 3, 5, 5)), np.ones((2, 2, 3, 3))), "input: expected 2 channels"),
    (lambda: F.conv2d(np.ones((1, 3, 5, 5), np.float32), np.ones((2, 3, 3, 3))), "weight: expected dtype float32"),
    (lambda: F.pad(np.ones((2, 3)), (1, 1, 1)), "pad: expected an even number"),
    (lambda: F.pad(np.ones((2, 3)), (1, 1), mode="bogus"), "mode: expected one of"),
    (lambda: F.pad(np.ones((2, 3)), (3, 0), mode="reflect"), "reflect padding of 3"),
    (lambda: F.one_hot(np.array([0, 5]), 3), r"tensor: class values must lie in \[0, 3\)"),
    (lambda: F.one_hot(np.array([0.0])), "tensor: expected an integer array"),
    (lambda: F.layer_norm(np.ones((2, 3)), (4,)), "trailing dims"),
    (lambda: F.embedding(np.array([9]), np.ones((3, 2))), r"indices must lie in \[0, 3\)"),
    (lambda: F.dropout(np.ones(3), 1.5), "p: dropout probability"),
    (lambda: F.cross_entropy(np.ones((2, 3)), np.array([0.5, 1.0])), "target"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.parametrize("name", F.__all__)
def test_parameter_names_are_torchs(name):
    """F.softmax(input=x, dim=1) and friends work as in torch: the leading
    parameters carry torch's names in torch's order (builtins without a
    Python signature are skipped)."""
    try:
        theirs = inspect.signature(getattr(TF, name)).parameters
    except ValueError:
        pytest.skip(f"torch.nn.functional.{name} is a builtin without a signature")
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    theirs = [k for k, p in theirs.items() if p.kind not in kinds]
    ours = [k for k in inspect.signature(getattr(F, name)).parameters if k != "device"]
    assert ours[:len(theirs)] == theirs


def test_regression_loss_weight_is_refused_by_name():
    with pytest.raises(NotImplementedError, match="weight: per-element weights"):
        F.mse_loss(np.ones(2), np.ones(2), weight=np.ones(2))
