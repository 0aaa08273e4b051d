"""Conv2d: worked examples, a naive loop reference, gradcheck, PyTorch, bad
input, and the kernel path (im2col/col2im + GEMM) against the CPU reference."""
import numpy as np
import pytest

import gpunet
from gpunet import testing
from gpunet.nn import Conv2d
from gpunet.ops import conv as conv_ops
from gpunet.testing import assert_close, compare_module

from conftest import FUSED_DTYPES, needs_cupy

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("im2col", "col2im")


def naive_conv2d(x, w, b, stride, padding, dilation, groups):
    """One output element at a time, straight from the definition."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=np.float64)
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    y = np.zeros((n, o, oh, ow))
    for img in range(n):
        for oc in range(o):
            g = oc // og
            for r in range(oh):
                for q in range(ow):
                    patch = xp[img, g * cg:(g + 1) * cg, r * sh:r * sh + dh * (kh - 1) + 1:dh,
                               q * sw:q * sw + dw * (kw - 1) + 1:dw]
                    y[img, oc, r, q] = np.sum(patch * w[oc]) + (0.0 if b is None else b[oc])
    return y


# (in, out, kernel, stride, padding, dilation, groups, bias, input H x W)
CONFIGS = [
    (3, 4, 3, 1, 1, 1, 1, True, (6, 5)),
    (2, 3, (3, 2), (2, 1), (1, 0), 1, 1, False, (7, 5)),
    (4, 6, 3, 2, 2, 2, 2, True, (9, 8)),
    (6, 3, (1, 3), 1, (0, 1), (1, 2), 3, True, (4, 7)),
    (2, 2, 2, 3, 0, 1, 2, False, (5, 5)),
    (1, 1, 1, 1, 0, 1, 1, True, (1, 1)),
]
IDS = [f"cfg{i}" for i in range(len(CONFIGS))]


def make_conv(cfg, dtype=np.float32):
    cin, cout, k, s, p, d, g, bias, _ = cfg
    return Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias).to(dtype)


def make_input(cfg, rng, n=2, dtype=np.float32):
    return rng.standard_normal((n, cfg[0]) + cfg[8]).astype(dtype)


# ---------------------------------------------------------------- worked examples
def test_1d_filter_over_length_7():
    """The filter (-1, 2, -1) over a length-7 signal gives 7 - (3 - 1) = 5 outputs."""
    conv = Conv2d(1, 1, (1, 3), bias=False)
    conv.load_state_dict({"weight": np.array([[[[-1.0, 2.0, -1.0]]]])})
    x = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.float32).reshape(1, 1, 1, 7)
    y = conv(x)
    assert y.shape == (1, 1, 1, 5)
    np.testing.assert_array_equal(y.reshape(-1), [-5, 6, -7, 0, 11])


def test_2x2_mean_filter():
    conv = Conv2d(1, 1, 2, bias=False)
    conv.load_state_dict({"weight": np.full((1, 1, 2, 2), 0.25)})
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(conv(x)[0, 0], [[3, 4], [6, 7]])


def test_rgb_image_with_six_5x5x3_filters():
    """A 32x32x3 image and six 5x5x3 filters give a 28x28x6 output."""
    rng = np.random.default_rng(0)
    conv = Conv2d(3, 6, 5)
    assert conv.weight.shape == (6, 3, 5, 5)
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    y = conv(x)
    assert y.shape == (1, 6, 28, 28)
    w, b = conv.weight.data.astype(np.float64), conv.bias.data.astype(np.float64)
    for f, r, q in [(0, 0, 0), (5, 27, 27), (3, 10, 17)]:
        expected = np.sum(x[0, :, r:r + 5, q:q + 5] * w[f]) + b[f]
        assert y[0, f, r, q] == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("size,kernel,pad,stride", [(32, 5, 0, 1), (7, 3, 0, 2), (7, 3, 1, 2), (5, 3, 1, 1),
                                                   (227, 11, 0, 4), (10, 4, 1, 3)])
def test_output_size_formula(size, kernel, pad, stride):
    """(W - F + 2P)/S + 1, rounded down when S does not divide W - F + 2P."""
    conv = Conv2d(1, 2, kernel, stride=stride, padding=pad)
    y = conv(np.zeros((1, 1, size, size), dtype=np.float32))
    expected = (size - kernel + 2 * pad) // stride + 1
    assert y.shape == (1, 2, expected, expected)


def test_default_init_and_state_dict():
    conv = Conv2d(4, 6, 3, groups=2)
    bound = 1 / np.sqrt(2 * 3 * 3)  # fan_in = in_channels/groups * kh * kw
    assert conv.weight.shape == (6, 2, 3, 3) and conv.bias.shape == (6,)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.bias.data).max() <= bound
    assert np.abs(conv.weight.data).max() > 0.5 * bound
    assert list(conv.state_dict()) == ["weight", "bias"]
    assert list(Conv2d(1, 1, 1, bias=False).state_dict()) == ["weight"]


# ---------------------------------------------------------------- reference correctness
def _naive(conv, x):
    b = None if conv.bias is None else conv.bias.data
    return naive_conv2d(x, conv.weight.data, b, conv.stride, conv.padding, conv.dilation, conv.groups)


def _case(name, make, shape):
    # the longest reductions: a weight gradient's, over every image and pixel
    return testing.OpCase(name, make, lambda rng: (rng.standard_normal(shape),), n=shape[0] * shape[2] * shape[3],
                          kernels=KERNELS, reference=_naive)


EDGES = [  # (input shape, Conv2d arguments)
    ((1, 1, 1, 1), dict(kernel_size=1)),                      # one element
    ((1, 2, 3, 4), dict(kernel_size=(3, 4))),                 # the window is the whole image: 1x1 output
    ((2, 1, 1, 5), dict(kernel_size=(1, 2), stride=3)),       # stride skips pixels no window reads
    ((1, 3, 5, 3), dict(kernel_size=3, padding=2, dilation=2, stride=2)),
]
CASES = [_case(f"cfg{i}", lambda cfg=cfg: make_conv(cfg), (2, cfg[0]) + cfg[8]) for i, cfg in enumerate(CONFIGS)] + [
    _case(f"edge{shape}{kw}", lambda shape=shape, kw=kw: Conv2d(shape[1], 2, **kw), shape) for shape, kw in EDGES]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case, device):
    """cpu: the naive loops and gradcheck; sim (every schedule), cuda, cupy: parity with float64 cpu."""
    testing.check_op(case, device)


def test_unbatched_input_matches_batched(rng):
    conv = Conv2d(3, 4, 3, padding=1)
    x = rng.standard_normal((3, 5, 6)).astype(np.float32)
    dy = rng.standard_normal((4, 5, 6)).astype(np.float32)
    y = conv(x)
    dx = conv.backward(dy)
    ref = Conv2d(3, 4, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    np.testing.assert_array_equal(y, ref(x[None])[0])
    np.testing.assert_array_equal(dx, ref.backward(dy[None])[0])
    assert y.shape == (4, 5, 6) and dx.shape == x.shape


def test_module_used_twice_sums_weight_gradients(rng):
    conv = Conv2d(2, 3, 3, padding=1)
    x1, x2 = (rng.standard_normal((2, 2, 5, 5)).astype(np.float32) for _ in range(2))
    d1, d2 = (rng.standard_normal((2, 3, 5, 5)).astype(np.float32) for _ in range(2))
    y1, y2 = conv(x1), conv(x2)
    dx1 = conv.backward(d1, output=y1)  # each backward names the forward it differentiates
    dx2 = conv.backward(d2, output=y2)
    both = conv.weight.grad.copy(), conv.bias.grad.copy()
    singles = []
    for x, d in ((x1, d1), (x2, d2)):
        conv.zero_grad()
        conv(x)
        singles.append((conv.backward(d), conv.weight.grad.copy(), conv.bias.grad.copy()))
    np.testing.assert_array_equal(dx1, singles[0][0])
    np.testing.assert_array_equal(dx2, singles[1][0])
    assert_close(both[0], singles[0][1] + singles[1][1])
    assert_close(both[1], singles[0][2] + singles[1][2])


# ---------------------------------------------------------------- against PyTorch
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matches_torch(cfg, rng):
    torch = pytest.importorskip("torch")
    cin, cout, k, s, p, d, g, bias, _ = cfg
    ref = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    conv = make_conv(cfg)
    conv.load_state_dict({key: v.detach().numpy() for key, v in ref.state_dict().items()})
    x = make_input(cfg, rng, n=3)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    y = conv(x)
    dx = conv.backward(dy)
    assert_close(y, yt.detach().numpy(), n=256, name="output")
    assert_close(dx, xt.grad.numpy(), n=256, name="grad input")
    assert_close(conv.weight.grad, ref.weight.grad.numpy(), n=256, name="grad weight")
    if bias:
        assert_close(conv.bias.grad, ref.bias.grad.numpy(), n=256, name="grad bias")


def test_stack_matches_torch(device, rng):
    """Conv layers of different sizes share the scratch workspaces: forward
    through all, then backward through all, must not mix their columns."""
    torch = pytest.importorskip("torch")
    from gpunet.nn import Sequential
    refs = [torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Conv2d(4, 8, 3, stride=2, groups=2),
            torch.nn.Conv2d(8, 3, 1)]
    model = Sequential(Conv2d(2, 4, 3, padding=1), Conv2d(4, 8, 3, stride=2, groups=2), Conv2d(8, 3, 1))
    model.load_state_dict({k: v.detach().numpy() for k, v in torch.nn.Sequential(*refs).state_dict().items()})
    be = gpunet.get_backend(device)
    model.to(be)
    x = rng.standard_normal((3, 2, 9, 8)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.nn.Sequential(*refs)(xt)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    assert_close(model(be.asarray(x)), yt.detach().numpy(), n=256, name="output")
    assert_close(model.backward(be.asarray(dy)), xt.grad.numpy(), n=256, name="grad input")
    for (name, p), ref in zip(model.named_parameters(), torch.nn.Sequential(*refs).parameters()):
        assert_close(p.grad, ref.grad.numpy(), n=256, name=name)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), "in_channels.*multiple of groups=2"),
    (dict(in_channels=4, out_channels=3, kernel_size=3, groups=2), "out_channels.*multiple of groups=2"),
    (dict(in_channels=0, out_channels=3, kernel_size=3), "in_channels"),
    (dict(in_channels=2, out_channels=3, kernel_size=0), "kernel_size"),
    (dict(in_channels=2, out_channels=3, kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(in_channels=2, out_channels=3, kernel_size=3, stride=0), "stride"),
    (dict(in_channels=2, out_channels=3, kernel_size=3, padding=-1), "padding"),
    (dict(in_channels=2, out_channels=3, kernel_size=3, dilation=0), "dilation"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Conv2d(**kwargs)


def test_bad_inputs():
    conv = Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"input: expected a 3-D or 4-D array, got shape \(3, 8\)"):
        conv(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match=r"expected 3 channels.*got 4"):
        conv(np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(TypeError, match="expected dtype float32, got float64"):
        conv(np.zeros((2, 3, 8, 8)))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        conv([[[[0.0]]]])
    x = np.zeros((2, 3, 8, 8), np.float32)
    x[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf"):
        conv(x)
    with pytest.raises(ValueError, match="larger than the padded input height 2"):
        conv(np.zeros((1, 3, 2, 8), np.float32))
    with pytest.raises(ValueError, match="dilation 2.*width"):
        Conv2d(3, 4, 3, dilation=2, padding=1)(np.zeros((1, 3, 8, 2), np.float32))


def test_bad_grad_output():
    conv = Conv2d(3, 4, 3)
    with pytest.raises(RuntimeError, match="no forward to differentiate"):
        conv.backward(np.zeros((1, 4, 6, 6), np.float32))
    conv(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"grad_output: expected the output's shape \(1, 4, 6, 6\)"):
        conv.backward(np.zeros((1, 4, 6, 5), np.float32))


# ---------------------------------------------------------------- kernel path against the reference
@pytest.mark.parametrize("limit", [1, 2000])
def test_kernel_parity_chunked(kernel_device, monkeypatch, limit, rng):
    """A workspace limit below one image's columns (limit=1) or a few images'
    forces the batch through several chunks; the weight gradient sums over them."""
    monkeypatch.setattr(conv_ops, "WORKSPACE_BYTES", limit)
    conv = Conv2d(4, 6, 3, padding=1, groups=2)
    x = rng.standard_normal((5, 4, 5, 6)).astype(np.float32)
    assert conv_ops._chunk(5, 4 * 9, 30, 4) < 5
    compare_module(conv, (x,), devices=("cpu", kernel_device), n=256)


def test_kernel_backward_is_deterministic(kernel_device, rng):
    dev = gpunet.get_backend(kernel_device)
    conv = Conv2d(3, 4, 3, padding=1, stride=2).to(dev)
    x = dev.asarray(rng.standard_normal((2, 3, 7, 6)).astype(np.float32))
    dy = dev.asarray(rng.standard_normal((2, 4, 4, 3)).astype(np.float32))
    runs = []
    for _ in range(2):
        conv.zero_grad()
        conv(x)
        runs.append([gpunet.to_numpy(a) for a in (conv.backward(dy), conv.weight.grad, conv.bias.grad)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.fallback("conv2d")
def test_float64_on_kernel_device_uses_the_array_path(kernel_device, rng):
    conv = Conv2d(2, 3, 3, padding=1).to(np.float64)
    x = rng.standard_normal((2, 2, 4, 5))
    compare_module(conv, (x,), devices=("cpu", kernel_device), fallbacks=("conv2d",))


# ---------------------------------------------------------------- bindings
@pytest.fixture
def kern(kernel_device):
    be = gpunet.get_backend(kernel_device)
    if be.kernels is None:
        pytest.skip(f"{kernel_device} runs no compiled kernels")
    return be


def test_im2col_col2im_adjoint(kern, rng):
    """<im2col(x), c> == <x, col2im(c)>: col2im is im2col's transpose."""
    xp = kern.xp
    x = xp.asarray(rng.standard_normal((2, 3, 5, 4)).astype(np.float32))
    args = (3, 2, 2, 1, 1, 0, 1, 2)  # kh kw sh sw ph pw dh dw
    oh, ow = (5 + 2 - 2 - 1) // 2 + 1, (4 - 2 - 1) // 1 + 1
    cols = xp.empty((3 * 3 * 2, 2 * oh * ow), dtype=np.float32)
    kern.kernels.im2col(x, cols, *args, kern.stream())
    c = xp.asarray(rng.standard_normal(cols.shape).astype(np.float32))
    dx = xp.empty(x.shape, dtype=np.float32)
    kern.kernels.col2im(c, dx, *args, kern.stream())
    lhs = float(gpunet.to_numpy(cols).astype(np.float64).ravel() @ gpunet.to_numpy(c).astype(np.float64).ravel())
    rhs = float(gpunet.to_numpy(x).astype(np.float64).ravel() @ gpunet.to_numpy(dx).astype(np.float64).ravel())
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_binding_rejects_bad_arguments(kern):
    xp, k, st = kern.xp, kern.kernels, kern.stream()
    args = (3, 3, 1, 1, 1, 1, 1, 1)
    x = xp.zeros((2, 3, 4, 4), dtype=np.float32)
    cols = xp.zeros((27, 32), dtype=np.float32)
    k.im2col(x, cols, *args, st)  # the valid call
    with pytest.raises(TypeError, match="'x'.*float32.*float64"):
        k.im2col(x.astype(np.float64), cols, *args, st)
    with pytest.raises(ValueError, match="'x'.*C-contiguous"):
        k.im2col(xp.zeros((2, 3, 4, 8), dtype=np.float32)[..., ::2], cols, *args, st)
    with pytest.raises(ValueError, match=r"'cols'.*expected shape \(27, 32\)"):
        k.im2col(x, xp.zeros((27, 31), dtype=np.float32), *args, st)
    with pytest.raises(ValueError, match="'x'.*4-d"):
        k.im2col(x[0], cols, *args, st)
    with pytest.raises(ValueError, match="'sh'.*>= 1"):
        k.im2col(x, cols, 3, 3, 0, 1, 1, 1, 1, 1, st)
    with pytest.raises(ValueError, match="does not fit"):
        k.im2col(x, cols, 7, 3, 1, 1, 1, 1, 1, 1, st)
    with pytest.raises(TypeError, match="'x'"):
        k.im2col(np.zeros((2, 3, 4, 4), np.float32) if kern.on_gpu else [1.0], cols, *args, st)
    with pytest.raises(ValueError, match="'dx'.*overlap"):
        buf = xp.zeros(27 * 32 + 2 * 3 * 16, dtype=np.float32)
        k.col2im(buf[:27 * 32].reshape(27, 32), buf[27 * 32 - 16:27 * 32 - 16 + 96].reshape(2, 3, 4, 4), *args, st)
    if not kern.on_gpu:  # NumPy can mark an array read-only
        ro = xp.zeros((2, 3, 4, 4), dtype=np.float32)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="'dx'.*read-only"):
            k.col2im(cols, ro, *args, st)


class Forged:
    """An array interface claiming `shape` over a real 64-byte buffer: only
    the shape matters, since a binding must refuse it before any launch."""

    def __init__(self, shape):
        self._buf = np.zeros(16, np.float32)
        self.__array_interface__ = {"data": (self._buf.ctypes.data, False), "shape": tuple(shape),
                                    "typestr": "<f4", "version": 3}


@pytest.mark.parametrize("binding, x_shape, cols_shape, k", [
    # the image's element count passes int64 (issue 21: this crashed in col2im)
    ("col2im", (2**30, 1, 2**30, 2**30), (0, 1), 1),
    ("im2col", (2**30, 1, 2**30, 2**30), (0, 1), 1),
    # the image fits, its column matrix (9 * 2^20 rows x 2^42 columns) does not
    ("im2col", (1, 2**20, 2**21, 2**21), (9 * 2**20, 2**42), 3),
    ("col2im", (1, 2**20, 2**21, 2**21), (9 * 2**20, 2**42), 3),
    # so large that the padding arithmetic itself would wrap
    ("col2im", (0, 1, 2**63 - 1, 1), (1, 0), 1),
])
def test_binding_refuses_sizes_whose_product_overflows(binding, x_shape, cols_shape, k):
    """Sizes whose products pass int64 never reach a launch (issue 21: this
    crashed in col2im). NumPy cannot even represent such arrays, so they come
    as bare __array_interface__ objects, which the sim bindings refuse as
    unverifiable (TypeError naming the argument); the cuda build reads such
    shapes from __cuda_array_interface__ and refuses them with ValueError
    (checked_product, tests/test_reliability.py)."""
    from gpunet import _C_sim
    img = Forged(x_shape)
    cols = Forged(cols_shape)
    args = (img, cols) if binding == "im2col" else (cols, img)
    with pytest.raises((TypeError, ValueError), match="argument '(x|dx|cols|dcols)'"):
        getattr(_C_sim, binding)(*args, k, k, 1, 1, k // 2, k // 2, 1, 1, 0)


def train_cnn(seed, device, steps=4):
    """A few SGD steps of a small CNN from seed-made weights and data; the
    final weights and the losses, as NumPy."""
    be = gpunet.get_backend(device)
    rng = np.random.default_rng(seed)
    model = gpunet.nn.Sequential(Conv2d(3, 8, 3, padding=1), gpunet.nn.ReLU(), Conv2d(8, 8, 3, stride=2),
                                 gpunet.nn.Flatten(), gpunet.nn.Linear(8 * 7 * 7, 5))
    model.load_state_dict({k: rng.standard_normal(v.shape).astype(np.float32) * 0.1
                           for k, v in model.state_dict().items()})
    model.to(be)
    crit = gpunet.nn.CrossEntropyLoss()
    opt = gpunet.optim.SGD(model.parameters(), lr=0.1)
    x = be.asarray(rng.standard_normal((6, 3, 16, 16)).astype(np.float32))
    y = be.asarray(rng.integers(0, 5, 6))
    losses = []
    for _ in range(steps):
        model.zero_grad()
        loss = crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        losses.append(float(loss))
    return losses, {k: gpunet.to_numpy(v) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_two_threads_training_two_cnns_match_sequential_runs(device):
    """Each thread has its own convolution workspaces (issue 21: a shared one
    let one thread's columns overwrite the other's between im2col and GEMM):
    two models trained at once end bit-identical to the same two trained one
    after the other."""
    import threading
    seeds = (1, 2)
    alone = [train_cnn(s, device) for s in seeds]
    for _ in range(3):
        got = [None, None]

        def run(i):
            got[i] = train_cnn(seeds[i], device)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (losses, state), (ref_losses, ref_state) in zip(got, alone):
            assert losses == ref_losses
            for k in ref_state:
                np.testing.assert_array_equal(state[k], ref_state[k], err_msg=k)


@pytest.mark.no_kernels("an empty batch has no columns to build")
def test_empty_batch(device):
    """A batch of zero images gives empty outputs and zero parameter gradients (as torch)."""
    be = gpunet.get_backend(device)
    conv = Conv2d(4, 6, 3, groups=2).to(be)
    y = conv(be.asarray(np.zeros((0, 4, 5, 5), np.float32)))
    assert y.shape == (0, 6, 3, 3)
    assert conv.backward(be.xp.zeros(y.shape, np.float32)).shape == (0, 4, 5, 5)
    assert not gpunet.to_numpy(conv.weight.grad).any() and not gpunet.to_numpy(conv.bias.grad).any()


# ---------------------------------------------------------------- the CuPy fusion of col2im
@needs_cupy
@pytest.mark.parametrize("dtype", FUSED_DTYPES)
@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), ((2, 1), (1, 2), (2, 1), 2), (3, 2, 2, 3),
])
def test_fused_conv2d(stride, padding, dilation, groups, dtype, rng):
    conv = Conv2d(6, 6, (3, 2), stride=stride, padding=padding, dilation=dilation, groups=groups).to(dtype)
    x = rng.standard_normal((2, 6, 9, 8)).astype(dtype)
    compare_module(conv, (x,), devices=("cpu", "cupy"), n=256)


@needs_cupy
@pytest.mark.parametrize("geometry", [
    dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1),
    dict(stride=(2, 3), padding=(2, 1), dilation=(1, 2), groups=2),
])
def test_col2im_sums_in_the_array_path_order(geometry, rng):
    """The gather adds the same terms in the same order as conv._col2im_array: bit-identical."""
    x_shape, w_shape = (3, 4, 7, 9), (6, 4 // geometry["groups"], 3, 3)
    g = conv_ops.geometry(x_shape, w_shape, geometry["stride"], geometry["padding"], geometry["dilation"],
                          geometry["groups"])
    kg = w_shape[1] * g.kh * g.kw
    dcols = rng.standard_normal((g.groups, kg, x_shape[0] * g.oh * g.ow)).astype(np.float32)
    ref = conv_ops._col2im_array(np, dcols, x_shape, g)
    got = conv_ops._col2im_fused(gpunet.asarray(dcols, device="cupy"), x_shape, g)
    np.testing.assert_array_equal(gpunet.to_numpy(got), ref)


# Shapes that take each route of the backward: on cpu a direct dx and dW
# (16 channels), dW over pixel vectors with dx through col2im (1 channel) and
# dW from the columns (stride 2, 3 channels); on sim the kernels, whatever
# the shape. float64 takes the NumPy path (cpu only: sim's kernels are float32).
INPUT_GRAD_CASES = [((2, 16, 6, 6), 16, 1), ((2, 1, 6, 6), 8, 1), ((2, 3, 7, 7), 8, 2)]
# the functions that compute dx on one route or another (the direct forward computes a stride-1 dx)
DX_PRODUCERS = ("_forward_direct", "col2im_kernel", "_col2im_array", "_col2im_wide", "_col2im_fused")


def _check_backward_without_input_grad(device, shape, out, stride, dtype, monkeypatch, rng):
    m = Conv2d(shape[1], out, 3, stride=stride, padding=1).to(device, dtype)
    be = m.backend
    x = be.asarray(rng.standard_normal(shape).astype(dtype))
    dy = be.asarray(rng.standard_normal(m(x).shape).astype(dtype))
    m.backward(dy)
    full = [gpunet.to_numpy(p.grad).copy() for p in m.parameters()]
    m.zero_grad()
    m(x)
    calls = []
    for name in DX_PRODUCERS:
        real = getattr(conv_ops, name)
        monkeypatch.setattr(conv_ops, name,
                            lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    rows = conv_ops._col2im_backward
    monkeypatch.setattr(conv_ops, "_col2im_backward",
                        lambda *a, **k: (calls.append(("col2im_backward", k.get("dx_wanted", True))), rows(*a, **k))[1])
    assert m.backward(dy, input_grad=False) is None
    assert not [c for c in calls if c != ("col2im_backward", False)]
    for p, g in zip(m.parameters(), full):
        np.testing.assert_array_equal(gpunet.to_numpy(p.grad), g)
    torch = pytest.importorskip("torch")  # and PyTorch's weight and bias gradients, in float64
    f64 = lambda a: torch.tensor(gpunet.to_numpy(a), dtype=torch.float64)  # noqa: E731
    tw, tb = f64(m.weight.data).requires_grad_(), f64(m.bias.data).requires_grad_()
    torch.nn.functional.conv2d(f64(x), tw, tb, stride=stride, padding=1).backward(f64(dy))
    assert_close(m.weight.grad, tw.grad.numpy(), n=shape[0] * dy.shape[2] * dy.shape[3], name="weight.grad")
    assert_close(m.bias.grad, tb.grad.numpy(), n=shape[0] * dy.shape[2] * dy.shape[3], name="bias.grad")


@pytest.mark.parametrize("shape, out, stride", INPUT_GRAD_CASES)
def test_backward_without_input_grad_skips_dx_and_keeps_the_weight_gradients(device, shape, out, stride,
                                                                             monkeypatch, rng):
    """backward(dy, input_grad=False), a training step's first layer: None
    for dx, which no route computes, and the same dW and db bit for bit."""
    _check_backward_without_input_grad(device, shape, out, stride, np.float32, monkeypatch, rng)


def test_backward_without_input_grad_on_the_numpy_path(monkeypatch, rng):
    _check_backward_without_input_grad("cpu", (2, 3, 6, 6), 4, 1, np.float64, monkeypatch, rng)
