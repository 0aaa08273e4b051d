"""bfloat16 and float16 on the Python side: names, asarray, Module.to, init,
save/load, PyTorch's half state_dicts, and the CPU reference of the ops that
compute half inputs (gpunet/ops/half.py): float32 compute, outputs rounded
once, within gpunet.testing's half tolerance of a float64 reference."""
import ml_dtypes
import numpy as np
import pytest
import torch

import gpunet
from gpunet import dtypes, nn, testing

HALF = {"bfloat16": dtypes.bfloat16, "float16": dtypes.float16}


def bits(a):
    return np.asarray(gpunet.to_numpy(a)).view(np.uint16)


# ---------------------------------------------------------------- names
def test_bfloat16_float16_names_resolve():
    assert gpunet.bfloat16 == np.dtype(ml_dtypes.bfloat16) and gpunet.float16 == gpunet.half == np.float16
    assert gpunet.float32 == np.float32 and gpunet.float64 == np.float64
    for name, dt in [("bfloat16", gpunet.bfloat16), ("float16", np.float16), ("half", np.float16),
                     ("float32", np.float32), ("float", np.float32), ("float64", np.float64),
                     ("double", np.float64), (torch.bfloat16, gpunet.bfloat16), (torch.half, np.float16),
                     (ml_dtypes.bfloat16, gpunet.bfloat16), (np.float16, np.float16)]:
        assert dtypes.resolve(name) == dt, name
    assert dtypes.compute_dtype("bfloat16") == np.float32 and dtypes.compute_dtype(np.float64) == np.float64
    assert dtypes.eps("bfloat16") == 2.0 ** -7 and dtypes.eps("half") == 2.0 ** -10
    with pytest.raises(TypeError, match="dtype: unknown dtype 'bfloat8'"):
        dtypes.resolve("bfloat8")
    with pytest.raises(ValueError, match="dtype: expected one of bfloat16, float16, float32, float64, got int32"):
        dtypes.floating("int32")


@pytest.mark.no_kernels("conversions only")
@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_asarray_rounds_to_nearest_even(device, name):
    x = np.array([1.0, 1 + 2.0 ** -8 + 2.0 ** -30, 1 / 3, -2.5e-6, 70000.0], np.float64)
    with np.errstate(over="ignore"):  # 70000 is inf in float16
        got = gpunet.asarray(x, device, dtype=name)
        np.testing.assert_array_equal(bits(got), x.astype(HALF[name]).view(np.uint16))
    assert got.dtype == HALF[name]
    # PyTorch rounds float64 through float32 (1 + 2^-8 + 2^-30 ties to 1 there); from float32 all agree
    x32 = x.astype(np.float32)[:-1]
    torch_half = torch.tensor(x32).to(getattr(torch, name))
    np.testing.assert_array_equal(bits(gpunet.asarray(torch_half, device)), bits(gpunet.asarray(x32, device, name)))


def test_float16_round_to_matches_numpy_cast_bit_for_bit():
    """dtypes.round_to's own path for results below float16's normal range
    (NumPy's cast is slow there) against astype: every float16 value, the
    float32 values either side of each and the midpoints between neighbours
    (ties to even), signed zeros, subnormal float32, inf and NaN."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    f = h.astype(np.float32)
    f = f[np.isfinite(f)]
    up, down = np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))
    mids = (f[:-1].astype(np.float64) / 2 + f[1:].astype(np.float64) / 2).astype(np.float32)
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, 2.0 ** -25, -(2.0 ** -25), 2.0 ** -24 * 1.5,
                        np.inf, -np.inf, np.nan, 1e38, 65520.0], np.float32)
    x = np.concatenate([f, up, down, mids, special])
    got, want = dtypes.round_to(x, np.float16), x.astype(np.float16)
    assert got.dtype == np.float16 and got.shape == x.shape
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    grid = x.reshape(-1)[: (x.size // 6) * 6].reshape(6, -1)[:, ::3]  # a strided view
    np.testing.assert_array_equal(dtypes.round_to(grid, "float16").view(np.uint16),
                                  grid.astype(np.float16).view(np.uint16))


# ---------------------------------------------------------------- modules, init, checkpoints
@pytest.mark.no_kernels("dtype conversion only")
@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_module_to(name):
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    w32 = m[0].weight.data.copy()
    m.to(dtype=name)
    assert m[0].weight.dtype == HALF[name] and m[1].running_mean.dtype == HALF[name] and m[0].dtype == HALF[name]
    assert m[1].num_batches_tracked.dtype.kind == "i"  # integer buffers keep their dtype
    np.testing.assert_array_equal(bits(m[0].weight.data), bits(w32.astype(HALF[name])))
    assert m.to("float32")[0].weight.dtype == np.float32
    assert m.to("sim", name)[0].weight.dtype == HALF[name] and m.device == "sim"
    assert nn.Linear(2, 2, dtype=name).weight.dtype == HALF[name]
    assert nn.init.xavier_normal((3, 4), dtype=name).dtype == HALF[name]


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_checkpoint_round_trip_keeps_dtype_and_bits(tmp_path, name):
    m = nn.Sequential(nn.Linear(5, 3), nn.LayerNorm(3)).to(dtype=name)
    path = tmp_path / "ckpt.npz"
    gpunet.save({"model": m.state_dict(), "scalar": np.array(1.5, HALF[name])[()]}, path)
    back = gpunet.load(path)
    for key, value in m.state_dict().items():
        assert back["model"][key].dtype == HALF[name], key
        np.testing.assert_array_equal(bits(back["model"][key]), bits(value))
    assert back["scalar"].dtype == HALF[name] and float(back["scalar"]) == 1.5
    with np.load(path) as raw:  # readable without gpunet: bfloat16 as its bits
        assert raw["model/0.weight"].dtype == (np.uint16 if name == "bfloat16" else np.float16)


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_torch_state_dict_loads_without_float32(name):
    """PyTorch's half tensors load bit for bit into a half model, and exactly
    into a float32 one."""
    torch.manual_seed(0)
    ref = torch.nn.Linear(6, 4).to(getattr(torch, name))
    state = ref.state_dict()
    half_model = nn.Linear(6, 4, dtype=name)
    half_model.load_state_dict(state)
    for key, t in state.items():
        want = t.view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(bits(getattr(half_model, key.split(".")[-1]).data), want)
    f32 = nn.Linear(6, 4)
    f32.load_state_dict(state)
    np.testing.assert_array_equal(f32.weight.data, state["weight"].float().numpy())


# ---------------------------------------------------------------- the CPU reference (Part 4)
def cases():
    """(name, make module, input shape, target maker or None, reduction length)."""
    acts = [("relu", nn.ReLU), ("leaky_relu", lambda: nn.LeakyReLU(0.1)), ("sigmoid", nn.Sigmoid),
            ("tanh", nn.Tanh), ("softsign", nn.Softsign), ("gelu", nn.GELU), ("gelu_tanh", lambda: nn.GELU("tanh")),
            ("softplus", nn.Softplus)]
    out = [(n, make, (4, 33), None, 1) for n, make in acts]
    out += [("softmax", lambda: nn.Softmax(dim=-1), (6, 40), None, 40),
            ("log_softmax", lambda: nn.LogSoftmax(dim=1), (6, 40, 2), None, 40),
            ("linear", lambda: nn.Linear(48, 24), (5, 48), None, 48),
            ("layer_norm", lambda: nn.LayerNorm(64), (7, 64), None, 64),
            ("cross_entropy", nn.CrossEntropyLoss, (9, 12), lambda rng: rng.integers(0, 12, 9), 12 * 9),
            ("cross_entropy_probs", lambda: nn.CrossEntropyLoss(label_smoothing=0.1), (9, 12),
             lambda rng: rng.dirichlet(np.ones(12), 9), 12 * 9)]
    return out


# Backwards that read the forward's output read the rounded one (as the
# kernels must): their float64 reference starts from that output, since
# 1 - y^2 near y = 1 amplifies y's rounding beyond any fixed tolerance.
FROM_OUTPUT = {
    "sigmoid": lambda y, dy: dy * y * (1 - y),
    "tanh": lambda y, dy: dy * (1 - y * y),
    "softmax": lambda y, dy: y * (dy - (dy * y).sum(axis=-1, keepdims=True)),
    "log_softmax": lambda y, dy: dy - np.exp(y) * dy.sum(axis=1, keepdims=True),
}


def run(module, x, target, dy):
    """Forward and backward on the CPU; returns y, dx and the parameter gradients."""
    if target is None:
        y = module(x)
        dx = module.backward(dy.astype(y.dtype))
    else:
        y = module(x, target)
        dx = module.backward()
    return [y, dx] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_bfloat16_float16_cpu_computes_in_float32_and_rounds_once(case, name, rng):
    """Half inputs and weights: the output is the float32 computation on the
    same values rounded once (bit for bit), and it and every gradient are
    within the half tolerance (gpunet.testing.tolerances) of the float64
    computation (from the rounded output where the backward reads it:
    FROM_OUTPUT)."""
    _, make, shape, make_target, n = case
    gpunet.manual_seed(0)
    half = make().to(dtype=name)
    x = (rng.standard_normal(shape) * 2).astype(HALF[name])
    target = make_target(rng) if make_target else None
    if target is not None and target.dtype.kind == "f":  # class probabilities
        target = target.astype(HALF[name])
    dy = None if make_target else rng.standard_normal(half(x).shape).astype(HALF[name])
    results = {}
    for dt in (HALF[name], np.float32, np.float64):
        m = make().to(dtype=dt)
        m.load_state_dict(half.state_dict())
        t = target if target is None or target.dtype.kind in "iu" else target.astype(dt)
        results[dt] = run(m, x.astype(dt), t, None if dy is None else dy.astype(dt))
    y, y32 = results[HALF[name]][0], results[np.float32][0]
    np.testing.assert_array_equal(bits(y), bits(np.asarray(y32).astype(HALF[name])))
    reference = results[np.float64]
    if case[0] in FROM_OUTPUT:
        reference[1] = FROM_OUTPUT[case[0]](y.astype(np.float64), dy.astype(np.float64))
    for got, f64 in zip(results[HALF[name]], reference):
        assert got.dtype == HALF[name]
        testing.assert_close(got, f64, n=n)


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_large_logits_and_tiny_variance(name):
    """float32 compute: logits near the half range's top give finite,
    one-hot softmax and an exact cross-entropy; LayerNorm of rows whose
    spread is a few half ulps still normalises them."""
    big = float(dtypes.finfo(name).max) / 2
    x = np.array([[big, 0.0, -big], [0.0, big, big]], HALF[name])
    y = nn.Softmax(dim=-1).to(dtype=name)(x)
    np.testing.assert_array_equal(y.astype(np.float64), [[1, 0, 0], [0, 0.5, 0.5]])
    loss = nn.CrossEntropyLoss(reduction="none").to(dtype=name)(x, np.array([0, 1]))
    assert np.isfinite(loss.astype(np.float64)).all() and float(loss[0]) == 0
    rows = (1 + np.array([[0, 1, 2, 3], [4, 3, 2, 1]]) * float(dtypes.eps(name))).astype(HALF[name])
    ln = nn.LayerNorm(4, elementwise_affine=False).to(dtype=name)(rows)
    ref = nn.LayerNorm(4, elementwise_affine=False).to(dtype=np.float64)(rows.astype(np.float64))
    testing.assert_close(ln, ref, n=4)


@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_inputs_are_scanned_for_nan(name):
    x = np.array([[1.0, np.nan]], HALF[name])
    with pytest.raises(ValueError, match=r"input: contains 1 NaN/Inf value\(s\) of 2"):
        nn.Linear(2, 2, dtype=name)(x)


@pytest.mark.no_kernels("half input is refused before any kernel runs")
@pytest.mark.parametrize("name", HALF)
def test_bfloat16_float16_refused_clearly_where_no_half_path(name):
    """Every module has a half path now; the two refusals stay for ops that get none: an op
    outside ops.half (dispatch.path) and a decorated op whose kernels decline the call."""
    from gpunet import dispatch
    from gpunet.ops.half import float32_compute
    sim = gpunet.get_backend("sim")
    with pytest.raises(NotImplementedError, match=f"newop: no {name} path yet"):
        dispatch.path(sim, "newop", HALF[name])

    @float32_compute("newop", forward=True, half_kernels=lambda be, x: False)
    def newop(be, x):
        raise AssertionError("must not run")
    with pytest.raises(NotImplementedError, match=f"newop: the sim backend has no {name} kernels"):
        newop(sim, np.ones(2, HALF[name]))
    y, _ = float32_compute("newop", forward=True, half_kernels=lambda be, x: "array")(
        lambda be, x: (x * 2, ()))(sim, np.ones(2, HALF[name]))  # "array": float32 array code, rounded once
    assert y.dtype == HALF[name] and y.tolist() == [2, 2]

def test_bfloat16_float16_tensor_type_promotion_as_torch():
    """Tensor arithmetic promotes as PyTorch does with the half types too
    (bfloat16's NumPy kind is 'V', not 'f': it once failed to promote)."""
    names = ["bfloat16", "float16", "float32"]
    for a in names:
        for b in names:
            x = gpunet.ones(3, dtype=getattr(gpunet, a)) + gpunet.ones(3, dtype=getattr(gpunet, b))
            ref = torch.ones(3, dtype=getattr(torch, a)) + torch.ones(3, dtype=getattr(torch, b))
            assert np.dtype(x.dtype).name == str(ref.dtype).replace("torch.", ""), (a, b)
        assert (gpunet.ones(2, dtype=getattr(gpunet, a)) * 1.5).dtype == getattr(gpunet, a)
