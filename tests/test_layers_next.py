"""Conv1d, ConvTranspose2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d and
GroupNorm against PyTorch: constructor, parameter layout and state_dict keys;
forward, input gradient and every parameter gradient on each backend
(float64 on cpu, float32 on the kernel backends), with the kernels each
must run on sim; empty batches; bad input."""
import warnings

import numpy as np
import pytest

import gpunet
from gpunet import nn, testing
from gpunet.ops import conv as conv_ops

torch = pytest.importorskip("torch")

CONV = ("im2col", "col2im")
POOL = ("maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward")
LAYERNORM = ("layernorm_forward", "layernorm_backward")


def parity(ours, theirs, x, device, *, n=1, kernels=None, fallbacks=(), forward_kw=None, seed=1):
    """Run `ours` on `device` and `theirs` (float64) from the same weights on
    x; compare the output, the input gradient and every parameter gradient.
    On sim, `kernels` must all run and no op but `fallbacks` may leave them."""
    forward_kw = forward_kw or {}
    dtype = np.float64 if device == "cpu" else np.float32
    theirs.double()
    ours.to(device, dtype)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    tx = torch.from_numpy(x).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on padding='same' with even windows
        ty = theirs(tx, **forward_kw)
    g = np.random.default_rng(seed).standard_normal(tuple(ty.shape))
    ty.backward(torch.from_numpy(g))
    be = ours.backend
    with testing.expect_kernels(device, kernels, fallbacks):
        y = ours(be.asarray(x.astype(dtype)), **forward_kw)
        dx = ours.backward(be.asarray(g.astype(dtype)))
    testing.assert_close(y, ty.detach().numpy().astype(dtype), n=n, name="output")
    testing.assert_close(dx, tx.grad.numpy().astype(dtype), n=n, name="input gradient")
    for name, p in theirs.named_parameters():
        testing.assert_close(getattr(ours, name).grad, p.grad.numpy().astype(dtype), n=n * x.shape[0],
                             name=f"{name} gradient")
    return y


def same_layout(ours, theirs):
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (k, v), (_, tv) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert v.shape == tuple(tv.shape), k


def empty_batch(m, x_shape, device):
    """An empty batch: an empty output of PyTorch's shape, an empty input gradient, zero parameter gradients."""
    m.to(device)
    x = np.zeros(x_shape, np.float32)
    y = m(m.backend.asarray(x))
    y = y[0] if isinstance(y, tuple) else y
    dx = m.backward(m.backend.asarray(np.zeros(y.shape, np.float32)))
    assert dx.shape == x_shape
    for p in m.parameters():
        np.testing.assert_array_equal(gpunet.to_numpy(p.grad), 0)
    return y.shape


# ---------------------------------------------------------------- Conv1d
@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(dilation=2, groups=2, bias=False),
                                dict(padding="same", dilation=2), dict(kernel_size=4, padding="same"),
                                dict(padding="valid", stride=3), dict(padding=2, padding_mode="reflect"),
                                dict(padding=1, padding_mode="replicate", groups=2),
                                dict(padding="same", padding_mode="circular")], ids=str)
def test_conv1d_as_torch(kw, device, rng):
    kw = dict(kw)
    k = kw.pop("kernel_size", 3)
    x = rng.standard_normal((3, 4, 11))
    parity(nn.Conv1d(4, 6, k, **kw), torch.nn.Conv1d(4, 6, k, **kw), x, device, n=4 * k, kernels=CONV)


def test_conv1d_unbatched_and_layout(device, rng):
    t, m = torch.nn.Conv1d(4, 6, 3, padding=1), nn.Conv1d(4, 6, 3, padding=1)
    same_layout(m, t)
    assert (m.kernel_size, m.stride, m.padding, m.dilation) == (t.kernel_size, t.stride, t.padding, t.dilation)
    y = parity(m, t, rng.standard_normal((4, 9)), device, n=12, kernels=CONV)
    assert y.shape == (6, 9)


def test_conv1d_empty_batch(device):
    assert empty_batch(nn.Conv1d(2, 3, 3, stride=2), (0, 2, 9), device) == (0, 3, 4)


def test_conv1d_bad_input():
    m = nn.Conv1d(2, 3, 5)
    with pytest.raises(ValueError, match="input: expected 2 channels"):
        m(np.zeros((1, 3, 9), np.float32))
    with pytest.raises(ValueError, match="input: convolution window 5"):
        m(np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="input: expected a 2-D or 3-D array"):
        m(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="kernel_size: expected an int >= 1 or a 1-tuple"):
        nn.Conv1d(2, 3, (3, 3))
    with pytest.raises(ValueError, match="padding='same': only for stride 1"):
        nn.Conv1d(2, 3, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="out_channels: expected a multiple of groups=2"):
        nn.Conv1d(2, 3, 3, groups=2)


# ---------------------------------------------------------------- ConvTranspose2d
@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1, output_padding=1),
                                dict(stride=(2, 3), output_padding=(1, 2), bias=False),
                                dict(groups=2, dilation=2, padding=2),
                                dict(kernel_size=(2, 4), stride=2, padding=(0, 1)),
                                # output_padding >= stride (allowed below the dilation): the unpadded frame
                                dict(dilation=3, output_padding=2, padding=1), dict(dilation=3, output_padding=2),
                                dict(dilation=(3, 1), stride=(1, 2), output_padding=(2, 1), padding=(3, 1))], ids=str)
def test_conv_transpose2d_as_torch(kw, device, rng):
    kw = dict(kw)
    k = kw.pop("kernel_size", 3)
    x = rng.standard_normal((2, 4, 5, 6))
    parity(nn.ConvTranspose2d(4, 6, k, **kw), torch.nn.ConvTranspose2d(4, 6, k, **kw), x, device, n=36,
           kernels=CONV)


def test_conv_transpose2d_output_size_unbatched_and_layout(device, rng):
    t, m = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    same_layout(m, t)
    assert m.weight.shape == (4, 3, 3, 3)
    y = parity(m, t, rng.standard_normal((4, 5, 6)), device, n=36, kernels=CONV, forward_kw={"output_size": (12, 14)})
    assert y.shape == (6, 12, 14)
    with pytest.raises(ValueError, match=r"output_size: expected each size in \[11, 12\]"):
        m(np.zeros((4, 5, 6), m.dtype), output_size=(13, 14))


def test_conv_transpose2d_chunked_kernel_path(monkeypatch, rng):
    """A workspace of a few images' columns: the kernel path runs in chunks, same result."""
    t = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
    monkeypatch.setattr(conv_ops, "WORKSPACE_BYTES", 4 * 4 * 9 * 36 * 2)  # two images' columns
    with testing.expect_kernels("sim", CONV) as use:
        parity(nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1), t, rng.standard_normal((5, 3, 6, 6)), "sim",
               n=36, kernels=CONV)
    assert use.calls["col2im"] == 3 and use.calls["im2col"] == 3


def test_conv_transpose2d_is_the_adjoint_of_conv2d(rng):
    """<conv(a), b> = <a, conv_transpose(b)> with the same weight."""
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2, bias=False).to(np.float64)
    tconv = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, dilation=2, output_padding=1, bias=False).to(np.float64)
    tconv.load_state_dict(conv.state_dict())
    a = rng.standard_normal((2, 3, 10, 9))
    ya = conv(a)
    b = rng.standard_normal(ya.shape)
    out = tconv(b, output_size=a.shape)
    assert out.shape == a.shape
    np.testing.assert_allclose((ya * b).sum(), (a * out).sum(), rtol=1e-12)


def test_conv_transpose2d_empty_batch(device):
    assert empty_batch(nn.ConvTranspose2d(2, 3, 3, stride=2), (0, 2, 4, 4), device) == (0, 3, 9, 9)


def test_conv_transpose2d_bad_arguments():
    with pytest.raises(ValueError, match="output_padding: expected each entry smaller than stride or dilation"):
        nn.ConvTranspose2d(2, 3, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="padding_mode: ConvTranspose2d supports only 'zeros'"):
        nn.ConvTranspose2d(2, 3, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="input: expected 2 channels"):
        nn.ConvTranspose2d(2, 3, 3)(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="giving a non-empty output"):
        nn.ConvTranspose2d(2, 3, 1, padding=1)(np.zeros((1, 2, 2, 2), np.float32))


# ---------------------------------------------------------------- adaptive pooling
# (input shape, output_size, whether the output divides the input); where it
# does not, the windows differ in size: the documented array fallback
ADAPTIVE = [((2, 3, 6, 8), (3, 4), True), ((2, 3, 7, 7), 1, True), ((3, 6, 9), (None, 3), True),
            ((2, 3, 5, 7), (3, 4), False), ((2, 3, 3, 3), 5, False), ((2, 2, 10, 4), (3, None), False)]
ADAPTIVE = [pytest.param(*case, id=str(case), marks=() if case[2] else pytest.mark.fallback("adaptive_pool2d"))
            for case in ADAPTIVE]


@pytest.mark.parametrize("shape,size,divides", ADAPTIVE)
@pytest.mark.parametrize("kind", ["Avg", "Max"])
def test_adaptive_pool_as_torch(kind, shape, size, divides, device, rng):
    name = f"Adaptive{kind}Pool2d"
    kw = {"return_indices": True} if kind == "Max" else {}
    x = rng.standard_normal(shape)
    t, m = getattr(torch.nn, name)(size, **kw), getattr(nn, name)(size, **kw)
    if kind == "Max":  # compare the indices too, then the rest without them
        with gpunet.no_grad():
            idx = m.to(device)(m.backend.asarray(x.astype(np.float32)))[1]
        np.testing.assert_array_equal(gpunet.to_numpy(idx), t(torch.from_numpy(x))[1].numpy())
        assert idx.dtype == np.int64
        t.return_indices = m.return_indices = False
    parity(m, t, x, device, n=16, kernels=None if not divides else
           POOL[:2] if kind == "Max" else POOL[2:], fallbacks=() if divides else ("adaptive_pool2d",))


def test_adaptive_max_pool_ties_and_nan_as_torch():
    """Ties go to the first element in row-major window order; a NaN wins (the last one)."""
    x = np.ones((1, 1, 3, 3))
    for size in (2, (2, 3), 3):
        ours = nn.AdaptiveMaxPool2d(size, return_indices=True).to(np.float64)(x)[1]
        np.testing.assert_array_equal(ours, torch.nn.AdaptiveMaxPool2d(size, True)(torch.from_numpy(x))[1].numpy())
    x = np.random.default_rng(0).standard_normal((1, 1, 5, 5))
    x[0, 0, 1, 1] = x[0, 0, 2, 1] = np.nan
    gpunet.set_finite_checks(host=False)
    try:
        ours = nn.AdaptiveMaxPool2d(3, return_indices=True).to(np.float64)(x)
    finally:
        gpunet.set_finite_checks(host=True)
    theirs = torch.nn.AdaptiveMaxPool2d(3, True)(torch.from_numpy(x))
    np.testing.assert_array_equal(ours[1], theirs[1].numpy())
    np.testing.assert_array_equal(ours[0], theirs[0].numpy())


def test_adaptive_pool_overlapping_windows_accumulate():
    """Windows overlap when the output does not divide the input: an input
    picked by two windows gets both gradients."""
    m = nn.AdaptiveMaxPool2d((2, 1)).to(np.float64)
    x = np.array([[[[0.0], [5.0], [1.0]]]])  # windows rows [0, 2) and [1, 3): both pick row 1
    np.testing.assert_array_equal(m(x), [[[[5.0], [5.0]]]])
    np.testing.assert_array_equal(m.backward(np.array([[[[2.0], [3.0]]]])), [[[[0.0], [5.0], [0.0]]]])


@pytest.mark.parametrize("cls", [nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d])
def test_adaptive_pool_empty_batch(cls, device):
    assert empty_batch(cls(3), (0, 2, 6, 6), device) == (0, 2, 3, 3)


@pytest.mark.no_kernels("the arguments are checked before any kernel")
def test_adaptive_pool_bad_arguments():
    for bad in (0, (2, 0), (2, 3, 4), "3", (2.0, 3)):
        with pytest.raises(ValueError, match="output_size: expected a positive int"):
            nn.AdaptiveAvgPool2d(bad)
    with pytest.raises(ValueError, match="input: expected non-zero sizes"):
        nn.AdaptiveMaxPool2d(2)(np.zeros((1, 2, 0, 4), np.float32))
    m = nn.AdaptiveAvgPool2d(2)
    m(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="grad_output: expected the output's shape"):
        m.backward(np.zeros((1, 2, 3, 3), np.float32))


# ---------------------------------------------------------------- GroupNorm
@pytest.mark.parametrize("groups,channels,shape,kw", [(2, 4, (3, 4, 5, 6), {}), (1, 4, (3, 4, 7), {"bias": False}),
                                                      (2, 4, (3, 4), {"affine": False}), (3, 6, (2, 6, 3, 2, 2), {})],
                         ids=str)
def test_groupnorm_as_torch(groups, channels, shape, kw, device, rng):
    t = torch.nn.GroupNorm(groups, channels, **kw)
    with torch.no_grad():
        for p in t.parameters():
            p.normal_()
    x = rng.standard_normal(shape) * 2 + 1
    row = channels // groups * int(np.prod(shape[2:]))
    parity(nn.GroupNorm(groups, channels, **kw), t, x, device, n=row, kernels=LAYERNORM)


def test_groupnorm_layout():
    same_layout(nn.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4))
    same_layout(nn.GroupNorm(2, 4, bias=False), torch.nn.GroupNorm(2, 4, bias=False))
    assert nn.GroupNorm(2, 4, affine=False).state_dict() == {}


@pytest.mark.no_kernels("an empty input has no row to normalise: no kernel runs")
@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 4, 0)])
def test_groupnorm_empty(shape, device):
    assert empty_batch(nn.GroupNorm(2, 4), shape, device) == shape


def test_groupnorm_bad_arguments():
    with pytest.raises(ValueError, match="num_channels: expected a multiple of num_groups=3"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match=r"input: expected \(N, 4, \*\)"):
        nn.GroupNorm(2, 4)(np.zeros((2, 6, 3), np.float32))
    with pytest.raises(ValueError, match=r"input: expected \(N, 4, \*\)"):
        nn.GroupNorm(2, 4)(np.zeros(4, np.float32))
