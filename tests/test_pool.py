"""MaxPool2d and AvgPool2d: worked examples, a naive loop reference,
gradcheck, PyTorch, tie-breaking, bad input, and the kernels against the
CPU reference."""
import numpy as np
import pytest

import gpunet
from gpunet.nn import AvgPool2d, MaxPool2d
from gpunet import testing
from gpunet.testing import assert_close, compare_module

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward")


def naive_pool(x, kind, k, s, p, d=(1, 1), ceil_mode=False, count_include_pad=True):
    """One output at a time from the definition (PyTorch's window rules)."""
    n, c, h, w = x.shape

    def extent(size, k, s, p, d):
        room = size + 2 * p - d * (k - 1) - 1
        out = -(-room // s) + 1 if ceil_mode else room // s + 1
        if ceil_mode and (out - 1) * s >= size + p:
            out -= 1
        return out

    oh, ow = extent(h, k[0], s[0], p[0], d[0]), extent(w, k[1], s[1], p[1], d[1])
    y = np.zeros((n, c, oh, ow))
    for r in range(oh):
        for q in range(ow):
            rows = [r * s[0] - p[0] + i * d[0] for i in range(k[0])]
            cols = [q * s[1] - p[1] + j * d[1] for j in range(k[1])]
            inside = [(a, b) for a in rows for b in cols if 0 <= a < h and 0 <= b < w]
            vals = np.stack([x[:, :, a, b] for a, b in inside], axis=-1)
            if kind == "max":
                y[:, :, r, q] = vals.max(axis=-1)
            else:
                if count_include_pad:  # the window clipped to the padded input
                    hh = min(rows[-1] + 1, h + p[0]) - rows[0]
                    ww = min(cols[-1] + 1, w + p[1]) - cols[0]
                    div = hh * ww
                else:
                    div = len(inside)
                y[:, :, r, q] = vals.sum(axis=-1) / div
    return y


# (kernel, stride, padding, dilation, ceil_mode, input H x W)
MAX_CONFIGS = [
    (2, None, 0, 1, False, (6, 6)),
    (3, 2, 1, 1, False, (7, 8)),
    ((3, 2), (2, 1), (1, 0), 1, True, (6, 5)),
    (3, 2, 1, 2, True, (8, 7)),
    (2, 3, 0, 1, False, (7, 7)),   # stride > kernel: pixels no window reads
    (3, 1, 1, 1, False, (4, 5)),   # heavily overlapping windows
    (1, 1, 0, 1, False, (1, 1)),
]
# (kernel, stride, padding, ceil_mode, count_include_pad, input H x W)
AVG_CONFIGS = [
    (2, None, 0, False, True, (6, 6)),
    (3, 2, 1, False, True, (7, 8)),
    (3, 2, 1, False, False, (7, 8)),
    ((3, 2), (2, 1), (1, 1), True, True, (6, 5)),
    ((3, 2), (2, 1), (1, 1), True, False, (6, 5)),
    (2, 3, 0, True, True, (8, 7)),
    (1, 1, 0, False, True, (1, 1)),
]


def make_max(cfg):
    k, s, p, d, ceil, _ = cfg
    return MaxPool2d(k, stride=s, padding=p, dilation=d, ceil_mode=ceil)


def make_avg(cfg):
    k, s, p, ceil, cip, _ = cfg
    return AvgPool2d(k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip)


def shaped(cfg, rng, n=2, c=3, dtype=np.float32):
    return rng.standard_normal((n, c) + cfg[-1]).astype(dtype)


# ---------------------------------------------------------------- worked examples
GRID = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], dtype=np.float32).reshape(1, 1, 4, 4)


def test_max_pool_2x2_stride_2():
    pool = MaxPool2d(2)
    np.testing.assert_array_equal(pool(GRID)[0, 0], [[6, 8], [3, 4]])
    dx = pool.backward(np.array([[[[1, 2], [3, 4]]]], dtype=np.float32))
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0, 0], [0, 1, 0, 2], [3, 0, 0, 0], [0, 0, 0, 4]])


def test_avg_pool_2x2_stride_2():
    pool = AvgPool2d(2)
    np.testing.assert_array_equal(pool(GRID)[0, 0], [[3.25, 5.25], [2, 2]])
    dx = pool.backward(np.array([[[[4, 8], [-4, 0]]]], dtype=np.float32))
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [-1, -1, 0, 0], [-1, -1, 0, 0]])


def test_2x2_mean_filter_as_avg_pool():
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(AvgPool2d(2, stride=1)(x)[0, 0], [[3, 4], [6, 7]])


def test_padding_semantics():
    """Max pads with -inf (a negative input stays the max); average divides by
    the padded window (count_include_pad) or by the real elements only."""
    x = -np.ones((1, 1, 2, 2), dtype=np.float32)
    np.testing.assert_array_equal(MaxPool2d(2, stride=2, padding=1)(x)[0, 0], -np.ones((2, 2)))
    np.testing.assert_array_equal(AvgPool2d(2, stride=2, padding=1)(x)[0, 0], -0.25 * np.ones((2, 2)))
    np.testing.assert_array_equal(AvgPool2d(2, stride=2, padding=1, count_include_pad=False)(x)[0, 0],
                                  -np.ones((2, 2)))


# ---------------------------------------------------------------- declared cases: every backend
def _naive(pool, x):
    """naive_pool with the module's own (normalised) arguments."""
    if isinstance(pool, MaxPool2d):
        return naive_pool(x, "max", pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
    return naive_pool(x, "avg", pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode,
                      count_include_pad=pool.count_include_pad)


def _case(kind, cfg):
    return testing.OpCase(f"{kind}{cfg}", (lambda: make_max(cfg)) if kind == "max" else (lambda: make_avg(cfg)),
                          lambda rng: (rng.standard_normal((2, 2) + cfg[-1]),),
                          kernels=(f"{kind}pool2d_forward", f"{kind}pool2d_backward"), reference=_naive)


CASES = [_case("max", cfg) for cfg in MAX_CONFIGS] + [_case("avg", cfg) for cfg in AVG_CONFIGS]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case, device):
    """cpu: the naive loops and gradcheck; sim (every schedule), cuda, cupy: parity with float64 cpu."""
    testing.check_op(case, device)


def test_max_ties_go_to_the_first_index_in_window_order():
    """Overlapping 2x2 windows over a constant plane: each window's gradient goes
    to its top-left element."""
    pool = MaxPool2d(2, stride=1)
    pool(np.zeros((1, 1, 3, 3), dtype=np.float32))
    dx = pool.backward(np.array([[[[1, 10], [100, 1000]]]], dtype=np.float32))
    np.testing.assert_array_equal(dx[0, 0], [[1, 10, 0], [100, 1000, 0], [0, 0, 0]])


def test_unbatched_input(rng):
    for pool in (MaxPool2d(3, 2, 1), AvgPool2d(3, 2, 1)):
        x = rng.standard_normal((2, 5, 6)).astype(np.float32)
        y = pool(x)
        dx = pool.backward(np.ones_like(y))
        np.testing.assert_array_equal(y, pool(x[None])[0])
        np.testing.assert_array_equal(dx, pool.backward(np.ones_like(y)[None])[0])


# ---------------------------------------------------------------- against PyTorch
@pytest.mark.parametrize("kind,cfg", [("max", c) for c in MAX_CONFIGS] + [("avg", c) for c in AVG_CONFIGS])
def test_matches_torch(kind, cfg, rng):
    torch = pytest.importorskip("torch")
    if kind == "max":
        k, s, p, d, ceil, _ = cfg
        ref, pool = torch.nn.MaxPool2d(k, s, p, d, ceil_mode=ceil), make_max(cfg)
    else:
        k, s, p, ceil, cip, _ = cfg
        ref, pool = torch.nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=cip), make_avg(cfg)
    x = shaped(cfg, rng, n=2, c=3)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    assert_close(pool(x), yt.detach().numpy(), name="output")
    assert_close(pool.backward(dy), xt.grad.numpy(), name="grad input")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,match", [
    (lambda: MaxPool2d(2, padding=2), "padding: expected at most half"),
    (lambda: AvgPool2d(3, padding=2), "padding: expected at most half"),
    (lambda: MaxPool2d(0), "kernel_size"),
    (lambda: MaxPool2d(2, stride=0), "stride"),
    (lambda: AvgPool2d(2, padding=-1), "padding"),
    (lambda: MaxPool2d(2, dilation=(1, 0)), "dilation"),
])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_bad_inputs(cls):
    pool = cls(3)
    with pytest.raises(ValueError, match=r"input: expected a 3-D or 4-D array, got shape \(4, 4\)"):
        pool(np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="expected dtype float32, got float64"):
        pool(np.zeros((1, 1, 4, 4)))
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.inf
    with pytest.raises(ValueError, match="NaN/Inf"):
        pool(x)
    with pytest.raises(ValueError, match="window 3 .* larger than the padded input width 2"):
        pool(np.zeros((1, 1, 4, 2), np.float32))
    pool(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"grad_output: expected the output's shape \(1, 2, 1, 1\)"):
        pool.backward(np.zeros((1, 2, 2, 1), np.float32))


# ---------------------------------------------------------------- kernels against the reference
def test_max_kernel_ties_match_the_reference(kernel_device):
    """Integer-valued input full of ties: the kernel must pick the same element."""
    x = np.random.default_rng(5).integers(0, 3, size=(2, 2, 7, 6)).astype(np.float32)
    compare_module(MaxPool2d(3, stride=1, padding=1), (x,), devices=("cpu", kernel_device))
    compare_module(MaxPool2d(3, stride=2, ceil_mode=True), (x,), devices=("cpu", kernel_device))


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
def test_kernel_one_element_edges(kernel_device, cls, rng):
    for shape, k in [((1, 1, 1, 1), 1), ((1, 1, 3, 4), (3, 4)), ((3, 1, 1, 5), (1, 2))]:
        x = rng.standard_normal(shape).astype(np.float32)
        compare_module(cls(k), (x,), devices=("cpu", kernel_device))


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("shape, kwargs", [
    # tiled forward: 32 x 8 output tiles, partial in both directions (38 x 20 outputs)
    ((2, 3, 40, 75), dict(kernel_size=3, stride=2, padding=1)),
    # tiled, one output column: 1 x 7 tiles
    ((2, 2, 9, 1), dict(kernel_size=(3, 1), stride=1)),
    # direct forward: the 256 x 64 input tile of 8x8/8 windows passes 16 KiB
    ((1, 2, 70, 300), dict(kernel_size=8, stride=8, ceil_mode=True)),
])
def test_kernel_forward_tiles(kernel_device, cls, shape, kwargs, rng):
    """The forward's shared-memory tiles (several per plane, partial at the
    edges, one column wide) and its direct kernel for large windows."""
    x = rng.standard_normal(shape).astype(np.float32)
    compare_module(cls(**kwargs), (x,), devices=("cpu", kernel_device))


def test_kernel_forward_tiles_with_dilation(kernel_device, rng):
    x = rng.standard_normal((2, 2, 21, 40)).astype(np.float32)
    compare_module(MaxPool2d(3, stride=(1, 2), padding=1, dilation=(3, 2)), (x,), devices=("cpu", kernel_device))


# ---------------------------------------------------------------- bindings
@pytest.fixture
def kern(kernel_device):
    be = gpunet.get_backend(kernel_device)
    if be.kernels is None:
        pytest.skip(f"{kernel_device} runs no compiled kernels")
    return be


def test_binding_rejects_bad_arguments(kern):
    xp, k, st = kern.xp, kern.kernels, kern.stream()
    win = (2, 2, 2, 2, 0, 0, 1, 1)  # kh kw sh sw ph pw dh dw
    x = xp.zeros((2, 3, 4, 4), dtype=np.float32)
    y = xp.zeros((2, 3, 2, 2), dtype=np.float32)
    arg = xp.zeros((2, 3, 2, 2), dtype=np.int32)
    k.maxpool2d_forward(x, y, arg, *win, st)  # the valid call
    with pytest.raises(TypeError, match="'arg'.*int32.*int64"):
        k.maxpool2d_forward(x, y, arg.astype(np.int64), *win, st)
    with pytest.raises(TypeError, match="'x'.*float32.*float64"):
        k.avgpool2d_forward(x.astype(np.float64), y, *win[:6], True, st)
    with pytest.raises(ValueError, match="'x'.*C-contiguous"):
        k.avgpool2d_forward(xp.zeros((2, 3, 4, 8), dtype=np.float32)[..., ::2], y, *win[:6], True, st)
    with pytest.raises(ValueError, match="'y'.*output height 3 does not match"):
        k.avgpool2d_forward(x, xp.zeros((2, 3, 3, 2), dtype=np.float32), *win[:6], True, st)
    with pytest.raises(ValueError, match="'y'.*batch and channel"):
        k.avgpool2d_forward(x, xp.zeros((2, 4, 2, 2), dtype=np.float32), *win[:6], True, st)
    with pytest.raises(ValueError, match=r"'arg'.*shape of 'dy'"):
        k.maxpool2d_backward(y, arg[:1], x, *win, st)
    with pytest.raises(ValueError, match="padding .* at most half"):
        k.maxpool2d_forward(x, y, arg, 2, 2, 2, 2, 2, 0, 1, 1, st)
    with pytest.raises(ValueError, match="larger than the padded input"):
        k.avgpool2d_backward(y, xp.zeros((2, 3, 1, 4), dtype=np.float32), *win[:6], True, st)
    with pytest.raises(ValueError, match="'y'.*overlap"):
        k.avgpool2d_forward(x, x.reshape(-1)[:24].reshape(2, 3, 2, 2), *win[:6], True, st)
