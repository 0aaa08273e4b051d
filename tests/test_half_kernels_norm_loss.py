"""Half precision (bfloat16, float16) on the kernels of the loss, norm,
dropout, embedding and pooling families.

Each module runs forward and backward in the half dtype on `sim` (its half
kernels, under the three schedules) and on `cpu` (float32 compute, one
rounding: gpunet/ops/half.py), and in float32 on the same (rounded) values.
sim is held to cpu at the tolerance of one rounding plus float32 sums of the
reduction length n, and both to float32 with gpunet.testing.tolerances(dtype,
n) (gradients relative to their largest value). Where the kernels sum in the
cpu's order (embedding, pooling, dropout) sim equals cpu bit for bit.
"""
import numpy as np
import pytest

import gpunet
from gpunet import dtypes, nn, testing
from gpunet.ops import dropout as dropout_ops
from gpunet.ops import pool as pool_ops

KERNELS = ("cross_entropy_forward", "cross_entropy_backward", "layernorm_forward", "layernorm_backward",
           "dropout_apply", "embedding_forward", "embedding_backward", "maxpool2d_forward", "maxpool2d_backward",
           "avgpool2d_forward", "avgpool2d_backward",
           "softmax_forward", "softmax_backward")  # (cross-entropy on class probabilities: float32 softmax)
HALF = {"bfloat16": dtypes.bfloat16, "float16": dtypes.float16}


def run(make, device, dtype, x, *, params=(), dy=None, target=None, train=True):
    """Output, input gradient and parameter gradients of a fresh module on
    `device` in `dtype`, its parameters set to `params`, as host arrays. With
    a target the module is a loss (backward of 1.0 unless dy is given)."""
    m = make().to(device, dtype)
    m.train(train)
    be = m.backend
    for p, v in zip(m.parameters(), params):
        p.data[...] = be.asarray(v.astype(p.data.dtype))
    xb = be.asarray(x)
    if target is None:
        y = m(xb)
        dx = m.backward(be.asarray(dy))
    else:
        y = m(xb, be.asarray(target))
        dx = m.backward() if dy is None else m.backward(be.asarray(dy))
    grads = [p.grad for p in m.parameters()]
    return [None if a is None else gpunet.to_numpy(a) for a in [y, dx] + grads]


def check(make, name, x, n, *, params=(), dy=None, target=None, train=True, exact=False):
    """sim vs cpu (both `name`) and each vs float32 on the same values; n: the
    reduction length behind each value. exact: sim and cpu bit for bit."""
    dt = HALF[name]
    as32 = (lambda a: a if a is None or a.dtype.kind == "i" else a.astype(np.float32))
    kw = dict(target=target, train=train)
    sim = run(make, "sim", name, x, params=params, dy=dy, **kw)
    cpu = run(make, "cpu", name, x, params=params, dy=dy, **kw)
    ref = run(make, "cpu", "float32", as32(x), params=[as32(p) for p in params], dy=as32(dy),
              **dict(kw, target=as32(target)))
    what = ["y", "dx"] + [f"grad{i}" for i in range(len(params))]
    for got, want, r32, w in zip(sim, cpu, ref, what):
        if got is None and r32 is None:  # (an embedding's integer input has no gradient)
            continue
        assert got.dtype == want.dtype == dt, f"{w}: {got.dtype}, {want.dtype}"
        if exact:
            np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16), err_msg=w)
        # a gradient's sums may cancel: its atol is relative to its largest value
        big = 1.0 if w == "y" else max(float(np.abs(r32).max(initial=0.0)), 1.0)
        rtol, atol = testing.tolerances(dt, n)
        testing.assert_close(got, want, rtol=rtol, atol=atol * big, name=f"{w} sim vs cpu")
        for dev, arr in (("sim", got), ("cpu", want)):
            testing.assert_close(arr, r32, rtol=rtol, atol=atol * big, name=f"{w} {dev} vs float32")
    return sim


def half(rng, shape, name, scale=1.0, offset=0.0):
    return (rng.standard_normal(shape) * scale + offset).astype(HALF[name])


# ---------------------------------------------------------------- norms
# rows held in registers (16: 16-byte Pack8 loads; 33: one value per lane) and
# longer rows re-read (1536: Pack8; 1100: one value per lane for half storage)
LAYER_NORMS = [("warp_rows", (4, 5, 16), 16), ("odd_rows", (7, 33), 33), ("long_rows", (3, 1100), 1100),
               ("long_vector_rows", (2, 1536), 1536)]


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("case, shape, cols", LAYER_NORMS, ids=[c for c, _, _ in LAYER_NORMS])
def test_bfloat16_float16_layer_norm_kernels(case, shape, cols, affine, name, rng, schedule):
    x = half(rng, shape, name, 3.0, offset=5.0)  # a mean away from 0: the two-pass variance
    params = [half(rng, cols, name), half(rng, cols, name)] if affine else []
    rows = x.size // cols  # (the parameter gradients sum over the rows)
    check(lambda: nn.LayerNorm(cols, elementwise_affine=affine), name, x, max(rows, cols), params=params,
          dy=half(rng, shape, name))


@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_layer_norm_tiny_variance(name, device, rng):
    """Values ~1e-3 about 1: the variance (~1e-6 near eps, whose squares
    underflow float16) is float32; the output is finite and matches float32."""
    x = (1 + rng.standard_normal((6, 64)) * 1e-2).astype(HALF[name])
    m = nn.LayerNorm(64, eps=1e-6).to(device, name)
    y = gpunet.to_numpy(m(m.backend.asarray(x)))
    y32 = nn.LayerNorm(64, eps=1e-6)(x.astype(np.float32))
    assert y.dtype == HALF[name] and np.isfinite(y.astype(np.float32)).all()
    testing.assert_close(y, y32, n=64)
    dx = gpunet.to_numpy(m.backward(m.backend.asarray(np.ones_like(x))))
    assert np.isfinite(dx.astype(np.float32)).all()


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_group_norm(name, rng, schedule):
    """Float32 inside (the float32 layer-norm kernels on sim), one rounding:
    on cpu too (its half path was an einsum over half arrays)."""
    x = half(rng, (3, 4, 5, 5), name, 2.0)
    check(lambda: nn.GroupNorm(2, 4), name, x, 50, params=[half(rng, 4, name), half(rng, 4, name)],
          dy=half(rng, x.shape, name))


@pytest.mark.fallback("batch_norm")  # array code on every backend
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_bfloat16_float16_batch_norm1d(train, name, rng, schedule):
    x = half(rng, (16, 6), name, 2.0)
    check(lambda: nn.BatchNorm1d(6), name, x, 16, params=[half(rng, 6, name), half(rng, 6, name)],
          dy=half(rng, x.shape, name), train=train)


# ---------------------------------------------------------------- losses
CROSS_ENTROPY = [
    ("plain", lambda w: nn.CrossEntropyLoss(), (8, 10)),
    ("smoothing", lambda w: nn.CrossEntropyLoss(label_smoothing=0.1), (8, 40)),
    ("ignore_weight", lambda w: nn.CrossEntropyLoss(weight=w, ignore_index=1), (8, 10)),
    ("sum_spatial", lambda w: nn.CrossEntropyLoss(reduction="sum"), (3, 5, 4)),
    ("none_block_rows", lambda w: nn.CrossEntropyLoss(reduction="none", label_smoothing=0.05), (4, 1500)),
]


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("case, make, shape", CROSS_ENTROPY, ids=[c for c, _, _ in CROSS_ENTROPY])
def test_bfloat16_float16_cross_entropy_kernels(case, make, shape, name, rng, schedule):
    """Warp rows (C <= 1024), block rows (1500), C < 32 (the elementwise
    backward) and >= 32 (a warp per row); per-row losses, lse and the
    reduction in float32, the loss rounded once."""
    c = shape[1]
    x = half(rng, shape, name, 3.0)
    t = rng.integers(0, c, (shape[0],) + shape[2:])
    t[0] = 1  # the ignored class, where ignore_index is set
    w = (rng.random(c) + 0.5).astype(HALF[name])
    dy = half(rng, t.shape, name) if "none" in case else None
    check(lambda: make(gpunet.to_numpy(w).astype(np.float32)), name, x, c, target=t, dy=dy)


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_cross_entropy_class_probabilities(name, rng, schedule):
    """Soft targets: array code around the softmax op, computed in float32 on
    every backend (the float32 softmax kernels on sim), loss and gradient
    rounded once."""
    x = half(rng, (6, 9), name, 3.0)
    t = rng.random((6, 9))
    t = (t / t.sum(axis=1, keepdims=True)).astype(HALF[name])
    check(lambda: nn.CrossEntropyLoss(label_smoothing=0.1), name, x, 9, target=t)


@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_cross_entropy_large_logits(name, device):
    """Logits at the dtype's largest finite value: the (max, log-sum) pair
    keeps every exponent <= 0 in float32, so the loss and gradient are
    finite and exact where they should be."""
    big = float(dtypes.finfo(HALF[name]).max)
    x = np.array([[big, 0.0, -big, big], [-big, -big, -big, -big]], HALF[name])
    m = nn.CrossEntropyLoss(reduction="none").to(device, name)
    with np.errstate(over="ignore"):  # cpu's x - max: -inf past float32's range (bfloat16): exp gives 0
        loss = gpunet.to_numpy(m(m.backend.asarray(x), m.backend.asarray(np.array([1, 2]))))
        dx = gpunet.to_numpy(m.backward(m.backend.asarray(np.ones(2, HALF[name])))).astype(np.float32)
    assert loss.dtype == HALF[name]
    ref = np.array([big + np.log(2), np.log(4)], np.float64)  # lse - x_t
    np.testing.assert_allclose(loss.astype(np.float64), ref, rtol=dtypes.eps(HALF[name]))
    np.testing.assert_array_equal(dx, [[0.5, -1, 0, 0.5], [0.25, 0.25, -0.75, 0.25]])


@pytest.mark.no_kernels("NLLLoss is array code (a gather) on every backend")
@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_nll_loss(name, rng):
    """Float32 compute (weights and the mean's denominator too), one rounding."""
    x = half(rng, (300, 7), name, 2.0)
    t = rng.integers(0, 7, 300)
    t[:2] = 3
    w = (rng.random(7) + 0.5).astype(HALF[name]).astype(np.float32)
    sim = check(lambda: nn.NLLLoss(weight=w, ignore_index=3), name, x, 300, target=t)
    assert sim[1][:2].astype(np.float32).tolist() == [[0.0] * 7] * 2  # ignored rows


# ---------------------------------------------------------------- dropout
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("make", [lambda: nn.Dropout(0.3), lambda: nn.Dropout2d(0.5)], ids=["dropout", "dropout2d"])
def test_bfloat16_float16_dropout_kernel_mask_and_scale(make, name, rng, schedule):
    """The counter-based mask of float32 (same seed) on every backend and
    storage type; kept values x * float32(1/(1-p)) rounded once, so sim and
    cpu agree bit for bit. 1001 elements: 16-byte vectors and a scalar tail."""
    shape = (10, 20, 3, 3) if isinstance(make(), nn.Dropout2d) else (7, 143)
    x = half(rng, shape, name, offset=0.5)
    dy = half(rng, shape, name)
    outs = {}
    for device, dt in (("sim", name), ("cpu", name), ("cpu", "float32")):
        gpunet.manual_seed(11)
        outs[device, dt] = run(make, device, dt, x if dt == name else x.astype(np.float32),
                               dy=dy if dt == name else dy.astype(np.float32))
    (y, dx), (y_cpu, dx_cpu), (y32, dx32) = outs["sim", name], outs["cpu", name], outs["cpu", "float32"]
    np.testing.assert_array_equal(y.view(np.uint16), y_cpu.view(np.uint16))
    np.testing.assert_array_equal(dx.view(np.uint16), dx_cpu.view(np.uint16))
    np.testing.assert_array_equal(y.astype(np.float32) == 0, y32 == 0)  # the same mask
    testing.assert_close(y, y32, name="y vs float32")
    testing.assert_close(dx, dx32, name="dx vs float32")
    kept = (y32 != 0).mean()
    assert abs(kept - (0.7 if y.ndim == 2 else 0.5)) < 0.1


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_dropout_kernel_misaligned_input(name, rng, schedule):
    """A view 2 bytes past a 16-byte boundary takes the scalar loop: the same
    values as the aligned (Pack8) call."""
    be = gpunet.get_backend("sim")
    base = be.asarray(half(rng, 1001, name))
    aligned, shifted = be.asarray(np.array(base[1:])), base[1:]
    assert shifted.ctypes.data % 16 and not aligned.ctypes.data % 16
    ys = [gpunet.to_numpy(dropout_ops.dropout_forward(be, a, 0.4, 5, 0)[0]) for a in (aligned, shifted)]
    np.testing.assert_array_equal(ys[0].view(np.uint16), ys[1].view(np.uint16))
    assert 0 < (ys[0].astype(np.float32) == 0).sum() < ys[0].size


# ---------------------------------------------------------------- embedding
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("dim", [16, 5], ids=["vector_rows", "scalar_rows"])
def test_bfloat16_float16_embedding_kernels(dim, name, rng, schedule):
    """The gather copies rows exactly (16-byte vectors where a row is whole
    ones); the weight gradient sums each row's positions in float32 in
    input order and rounds once: sim equals cpu bit for bit. A row picked
    300 times; the padding row gets none."""
    idx = np.concatenate([np.full(300, 4), rng.integers(0, 10, 40), [2, 2]]).reshape(2, -1)
    w = half(rng, (10, dim), name)
    check(lambda: nn.Embedding(10, dim, padding_idx=2), name, idx, 300, params=[w],
          dy=half(rng, idx.shape + (dim,), name), exact=True)


# ---------------------------------------------------------------- pooling
POOLS = [("max", lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 3, 9, 8), 9),
         ("max_dilated_ceil", lambda: nn.MaxPool2d(2, stride=2, dilation=2, ceil_mode=True), (2, 2, 9, 9), 4),
         ("max_large_window", lambda: nn.MaxPool2d(56, stride=1), (1, 1, 64, 64), 1),  # the direct kernel
         ("avg", lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 3, 9, 8), 9),
         ("avg_include_pad", lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 3, 9, 8), 9),
         ("adaptive_avg", lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 6, 6), 6),
         ("adaptive_max", lambda: nn.AdaptiveMaxPool2d(2), (2, 3, 6, 6), 9)]


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("kind, make, shape, window", POOLS, ids=[k for k, _, _, _ in POOLS])
def test_bfloat16_float16_pooling_kernels(kind, make, shape, window, name, rng, schedule):
    """Window sums and gradient sums in float32 in row-major window order,
    rounded once: sim equals cpu bit for bit; max pooling equals float32's
    rounding of the same values."""
    x = half(rng, shape, name, 3.0)
    dy = half(rng, make()(x.astype(np.float32)).shape, name)
    check(make, name, x, window, dy=dy, exact=True)


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_bfloat16_float16_avg_pool_divisor_override_rounds_once(device, name, rng, schedule):
    """divisor_override in half: the float32 module's result on the same
    values (mean times divisor/override, in float32) rounded once, forward
    and backward, bit for bit; not a rounded mean times a rounded scale
    (which was an ulp off for about half of these outputs)."""
    def make():
        return nn.AvgPool2d(3, stride=2, padding=1, divisor_override=7)
    x = half(rng, (2, 3, 9, 9), name, 10.0)
    m = make().to(device, HALF[name])
    y = m(m.backend.asarray(x))
    dy = half(rng, y.shape, name, 10.0)
    dx = m.backward(m.backend.asarray(dy))
    ref = make()
    y32, dx32 = ref(x.astype(np.float32)), ref.backward(dy.astype(np.float32))
    for got, want in ((y, y32), (dx, dx32)):
        got = gpunet.to_numpy(got)
        assert got.dtype == HALF[name]
        np.testing.assert_array_equal(got.view(np.uint16), want.astype(HALF[name]).view(np.uint16))


@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_float16_max_pool_of_infinities_and_largest_finite(device, schedule):
    """±inf and ±65504 (float16's largest finite value) pass max pooling
    unchanged, forward and backward (the op: the modules refuse non-finite
    input); -inf everywhere gives -inf, its gradient going to the first."""
    be = gpunet.get_backend(device)
    big = float(dtypes.finfo(np.float16).max)
    x = np.array([[[[np.inf, big, -big, 1], [0, -np.inf, big, -big],
                    [-np.inf, -np.inf, -big, -big], [-np.inf, -np.inf, -big, 2]]]], np.float16)
    y, ctx = pool_ops.maxpool2d_forward(be, be.asarray(x), (2, 2), (2, 2), (0, 0))
    dx = gpunet.to_numpy(pool_ops.maxpool2d_backward(be, ctx, be.asarray(np.full((1, 1, 2, 2), big, np.float16))))
    assert y.dtype == dx.dtype == np.float16
    np.testing.assert_array_equal(gpunet.to_numpy(y)[0, 0].astype(np.float32), [[np.inf, big], [-np.inf, 2]])
    want = np.zeros((4, 4), np.float32)
    want[0, 0] = want[1, 2] = want[2, 0] = want[3, 3] = big
    np.testing.assert_array_equal(dx[0, 0].astype(np.float32), want)


# ---------------------------------------------------------------- bindings and refusals
@pytest.mark.no_kernels("refused before any kernel")
@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_bindings_refuse_mixed_storage(name):
    """A half array next to a float32 one is refused by name, before any launch."""
    k = gpunet.get_backend("sim").kernels
    h = np.zeros((4, 8), HALF[name])
    h = h.view(np.int16) if name == "bfloat16" else h
    f = np.zeros((4, 8), np.float32)
    with pytest.raises(TypeError, match="argument 'y': expected the dtype of 'x'"):
        k.dropout_apply(h, f, 0, 0, 0, 1.0, 0)
    with pytest.raises(TypeError, match="argument 'out': expected the dtype of 'weight'"):
        k.embedding_forward(h, np.zeros(4, np.int64), f[:, :8], np.zeros(4, np.int64), 0)
    with pytest.raises(TypeError, match="argument 'bias': expected the dtype of 'x'"):
        k.layernorm_forward(h, h[0], f[0], h, f[:, 0].copy(), f[:, 0].copy(), 1e-5, 0)
    with pytest.raises(TypeError, match="argument 'dlogits': expected the dtype of 'logits'"):
        k.cross_entropy_backward(h, np.zeros(4, np.int64), np.zeros(0, np.float32), np.zeros(1, np.float32),
                                 np.zeros((4, 2), np.float32), np.zeros(4, np.float32), f, -100, 0.0, 0)
    with pytest.raises(TypeError, match="argument 'y': expected the dtype of 'x'"):
        k.avgpool2d_forward(h.reshape(1, 1, 4, 8), f.reshape(4, 1, 1, 8)[:1].reshape(1, 1, 2, 4).copy(),
                            2, 2, 2, 2, 0, 0, True, 0)
    with pytest.raises(TypeError, match="argument 'x': expected dtype float32, float16 or bfloat16"):
        k.dropout_apply(np.zeros(4, np.float64), np.zeros(4, np.float64), 0, 0, 0, 1.0, 0)


@pytest.mark.fallback("adaptive_pool2d")  # windows of different sizes: array code, as for float32
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("make", [lambda: nn.AdaptiveAvgPool2d(4), lambda: nn.AdaptiveMaxPool2d(4)], ids=["avg", "max"])
def test_bfloat16_float16_adaptive_pool_uneven_windows(make, name, rng, schedule):
    """sim computes uneven windows as cpu does (float32 array code, rounded once): bit for bit."""
    x = half(rng, (2, 3, 7, 7), name, 3.0)
    check(make, name, x, 4, dy=half(rng, (2, 3, 4, 4), name), exact=True)