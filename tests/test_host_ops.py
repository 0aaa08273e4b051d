"""The cpu backend's compiled host loops (gpunet/_host/host_ops.c through
gpunet/hostlib.py) against float64 references and against the NumPy paths
they stand in for, and the loader's fallbacks to those paths."""
import os

import numpy as np
import pytest
import torch

from gpunet import hostlib
from gpunet.backend import get_backend
from gpunet.ops import activation as act, attention, host_threads, norm, optim, softmax

F32 = np.finfo(np.float32)


@pytest.fixture(scope="module")
def lib():
    lib = hostlib.load()
    if lib is None:
        pytest.skip("no C compiler here: the compiled host loops are not built")
    return lib


def _exp(lib, x):
    x = np.ascontiguousarray(x, np.float32)
    y = np.empty_like(x)
    lib.gpunet_exp_f32(x.ctypes.data, y.ctypes.data, x.size)
    return y


def test_exp_within_2_ulps_over_a_dense_sweep_and_its_edges(lib):
    edges = np.array([88.72283, 88.72284, 89.0, 89.5, 1e30, np.inf, -87.33654, -87.33655, -103.27893, -103.9720,
                      -104.0, -104.5, -1e30, -np.inf, 0.0, -0.0, 1e-30, -1e-45], np.float32)
    x = np.concatenate([np.linspace(-105, 90, 2_000_003, dtype=np.float32), edges])
    y = _exp(lib, x)
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64))
        ref32 = ref.astype(np.float32)
    finite = np.isfinite(ref32)
    ulps = np.abs(y[finite] - ref[finite]) / np.spacing(ref32[finite]).astype(np.float64)
    assert ulps.max() <= 2
    np.testing.assert_array_equal(y[~finite], np.inf)  # overflow
    assert y[x == -np.inf].item() == 0 and np.all(y[x < -104] == 0)
    assert np.isnan(_exp(lib, [np.nan])).all() and np.isnan(_exp(lib, [-np.nan])).all()


def _gelu_both(monkeypatch, x):
    """(forward, derivative) compiled, then on the NumPy path."""
    out = []
    for numpy_only in (False, True):
        if numpy_only:
            monkeypatch.setattr(hostlib, "load", lambda: None)
        with np.errstate(all="ignore"):
            y = act.FORWARD["gelu"](np, x)
            out.append((y, act.DERIVATIVE["gelu"](np, x, y)))
    return out


def test_gelu_compiled_against_the_numpy_path_and_float64(lib, monkeypatch):
    rng = np.random.default_rng(0)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-38, -3e-39, F32.max, -F32.max,
                        19.99, 20.01, -19.99, -20.01, 5.4, -5.4, -13.2, -13.3], np.float32)
    x = np.concatenate([rng.standard_normal(100_000).astype(np.float32) * 4, special])
    (y, d), (y_np, d_np) = _gelu_both(monkeypatch, x)
    # the same float32 formula with another exp: a few ulps apart, the same
    # NaN/inf/zero pattern and signs
    np.testing.assert_allclose(y, y_np, rtol=4 * 2.0 ** -23, atol=64 * 2.0 ** -149)  # Phi subnormal below -13.2
    np.testing.assert_array_equal(np.signbit(y), np.signbit(y_np))
    np.testing.assert_array_equal(np.isnan(d), np.isnan(d_np))
    # the derivative Phi + x·phi crosses 0 near -0.75: apart relative to its terms' size
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        terms = act.normal_cdf(np, x64) + np.abs(x64) * np.exp(-0.5 * x64 * x64) / np.sqrt(2 * np.pi)
    fin = np.isfinite(x)
    # (+ 64 subnormal spacings: phi underflows below x = -13.2, each path rounding it once)
    assert np.all(np.abs(d[fin] - d_np[fin]) <= 8 * 2.0 ** -24 * terms[fin] + 64 * 2.0 ** -149)
    np.testing.assert_array_equal(d[~fin], d_np[~fin])
    with np.errstate(invalid="ignore"):
        ref = x64 * act.normal_cdf(np, x64)
    ok = np.isfinite(ref) & (np.abs(ref) > F32.tiny)
    np.testing.assert_allclose(y[ok], ref[ok], rtol=12 * 2.0 ** -24)


def _ln_case(rng, M, C, affine, bias, shift=3.0):
    x = (rng.standard_normal((M, C)) + shift).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32) if affine else None
    b = rng.standard_normal(C).astype(np.float32) if bias else None
    return x, w, b, rng.standard_normal((M, C)).astype(np.float32)


@pytest.mark.parametrize("M,C,affine,bias", [(37, 300, True, True), (1000, 517, True, False),
                                             (5, 3, False, False), (1, 1, True, True)])
def test_layer_norm_both_paths_against_torch_float64(M, C, affine, bias, host_path):
    be = get_backend("cpu")
    x, w, b, dy = _ln_case(np.random.default_rng(M), M, C, affine, bias)
    y, ctx = norm.layer_norm_forward(be, x, w, b, C, 1e-5)
    dx, dw, db = norm.layer_norm_backward(be, ctx, dy)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = None if w is None else torch.tensor(w, dtype=torch.float64, requires_grad=True)
    bt = None if b is None else torch.tensor(b, dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.layer_norm(xt, (C,), wt, bt, 1e-5)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    assert (dw is None) == (w is None) and (db is None) == (b is None)
    if w is not None:
        np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-4, atol=1e-3)
    if b is not None:
        np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-5, atol=1e-4)


def test_layer_norm_compiled_close_to_the_numpy_path_and_nan_stays_in_its_row(lib, monkeypatch):
    be = get_backend("cpu")
    x, w, b, dy = _ln_case(np.random.default_rng(7), 300, 768, True, True, shift=100.0)
    x[5, 17] = np.nan
    x[6, :] = 2.5  # a constant row: variance 0, rstd = 1/sqrt(eps)
    runs = []
    for numpy_only in (False, True):
        if numpy_only:
            monkeypatch.setattr(hostlib, "load", lambda: None)
        y, ctx = norm.layer_norm_forward(be, x, w, b, 768, 1e-5)
        runs.append((y, ctx[1], ctx[2], norm.layer_norm_backward(be, ctx, dy)[0]))
    for got, ref in zip(*runs):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-4)
    y = runs[0][0]
    assert np.isnan(y[5]).all() and np.isfinite(np.delete(y, 5, axis=0)).all()
    np.testing.assert_array_equal(y[6], b)  # (x - mean) = 0 exactly


@pytest.mark.parametrize("amsgrad,weight_decay,decoupled", [(False, 0.0, False), (True, 0.1, False),
                                                            (False, 0.1, True), (True, 0.01, True)])
def test_adam_compiled_same_bits_as_the_numpy_path(lib, monkeypatch, amsgrad, weight_decay, decoupled):
    """The compiled update does the NumPy path's float32 operations in its
    order (no FMA contraction): the same bits, NaN, inf, -0.0 and huge values too."""
    be = get_backend("cpu")
    rng = np.random.default_rng(2)
    n = optim._BLOCK + 1001
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, F32.max, -F32.max, 1e30], np.float32)

    def state():
        p, g, m = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
        v = rng.random(n).astype(np.float32)
        g[:special.size] = special
        p[special.size:2 * special.size] = special
        vmax = [v + rng.random(n).astype(np.float32) * (rng.random(n) < 0.5)] if amsgrad else None
        return [p], [g], [m], [v], vmax
    runs = []
    for numpy_only in (False, True):
        if numpy_only:
            monkeypatch.setattr(hostlib, "load", lambda: None)
        rng = np.random.default_rng(2)
        p, g, m, v, vmax = state()
        with np.errstate(all="ignore"):
            optim.adam(be, p, g, m, v, [4], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay,
                       decoupled=decoupled, max_exp_avg_sqs=vmax)
        runs.append(p + m + v + (vmax or []))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the loader
def test_loader_falls_back_without_a_compiler_or_when_disabled(tmp_path):
    env = {"GPUNET_CACHE_DIR": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    assert hostlib.build({**env, "GPUNET_HOST_KERNELS": "0"}) is None
    assert hostlib.build({**env, "CC": "no-such-compiler-here"}) is None
    assert hostlib.build({"GPUNET_CACHE_DIR": str(tmp_path), "PATH": str(tmp_path)}) is None  # no cc on PATH
    assert not (tmp_path / "host").exists()


def test_loader_warns_and_falls_back_when_the_compile_fails(tmp_path):
    fails = tmp_path / "fails-cc"
    fails.write_text("#!/bin/sh\necho 'cc: broken' >&2\nexit 1\n")
    fails.chmod(0o755)
    with pytest.warns(RuntimeWarning, match="did not compile"):
        assert hostlib.build({"GPUNET_CACHE_DIR": str(tmp_path), "CC": str(fails), "PATH": ""}) is None
    assert not any(p.suffix in (".so", ".tmp") for p in (tmp_path / "host").iterdir())


def test_loader_compiles_once_into_the_cache(tmp_path, capfd, lib):
    env = {"GPUNET_CACHE_DIR": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    first = hostlib.build(env)
    assert "compiling the cpu backend's host loops" in capfd.readouterr().err
    (built,) = (tmp_path / "host").glob("host_ops-*.so")
    second = hostlib.build(env)
    assert capfd.readouterr().err == "" and second is not None and first is not None
    assert list((tmp_path / "host").glob("host_ops-*.so")) == [built]


def test_gelu_backward_both_paths_against_torch_float64(host_path):
    """act_backward's dy·GELU'(x), in the derivative's pass when compiled."""
    be = get_backend("cpu")
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((300, 77)) * 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, ctx = act.act_forward(be, "gelu", x)
    dx = act.act_backward(be, ctx, dy)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.gelu(xt).backward(torch.tensor(dy, dtype=torch.float64))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    # a gradient of another dtype or shape takes the product route
    dx64 = act.act_backward(be, ctx, dy.astype(np.float64))
    np.testing.assert_allclose(dx64, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- softmax rows
def _softmax64(x, beta, log):
    """float64 reference with NumPy's IEEE rules for the special rows."""
    z = x.astype(np.float64)
    with np.errstate(all="ignore"):
        s = z.max(axis=-1, keepdims=True) if beta >= 0 else z.min(axis=-1, keepdims=True)
        z = beta * (z - s)
        total = np.exp(z).sum(axis=-1, keepdims=True)
        return z - np.log(total) if log else np.exp(z) / total


def _special_rows(n):
    rng = np.random.default_rng(n)
    rows = [rng.standard_normal(n) * 5, np.full(n, 2.5), rng.standard_normal(n) * 1e30,
            rng.standard_normal(n) * 1e-30, np.linspace(-200, 0, n)]
    for v in (np.nan, np.inf, -np.inf):
        rows += [np.where(np.arange(n) == n // 2, v, rows[0]), np.full(n, v)]
    return np.array(rows, np.float32)


@pytest.mark.parametrize("n", [1, 3, 64, 100, 1027])
@pytest.mark.parametrize("beta", [1.0, 0.5, -2.0])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_compiled_against_float64_on_special_rows(lib, n, beta, log, host_path):
    x = _special_rows(n)
    with np.errstate(all="ignore"):
        y, _ = softmax.softmax_forward(get_backend("cpu"), x, -1, beta, log)
    ref = _softmax64(x, beta, log)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))  # NaN/inf rows as NumPy's IEEE rules make them
    if log:
        np.testing.assert_allclose(y, ref, rtol=4e-6, atol=1e-5)
    else:
        np.testing.assert_allclose(y, ref, rtol=4e-6, atol=1e-37)
        np.testing.assert_allclose(y[np.isfinite(ref).all(axis=1)].sum(axis=1), 1, rtol=n * 2e-7)


def test_softmax_compiled_same_bits_for_any_thread_count(lib):
    x = np.random.default_rng(1).standard_normal((700, 300)).astype(np.float32) * 4
    before = host_threads.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            host_threads.set_num_threads(threads)
            runs.append([softmax.softmax_rows_compiled(lib, x, b, log) for b in (1.0, 3.0) for log in (False, True)])
    finally:
        host_threads.set_num_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


def test_attention_probs_compiled_rule_for_masked_rows(lib, host_path):
    """A fully masked query row gives zeros, a partly masked one a softmax
    over its kept keys, on both paths."""
    s = np.random.default_rng(2).standard_normal((2, 5, 7)).astype(np.float32)
    s[0, 1] = -np.inf
    s[1, 2, 3:] = -np.inf
    p = attention._probs_from_scores(get_backend("cpu"), s.copy())
    np.testing.assert_array_equal(p[0, 1], 0)
    np.testing.assert_array_equal(p[1, 2, 3:], 0)
    keep = np.isfinite(s).any(axis=-1)
    np.testing.assert_allclose(p[keep], _softmax64(s[keep], 1.0, False), rtol=4e-6, atol=1e-37)


@pytest.mark.parametrize("L,S", [(300, 257), (7, 40)])
def test_attention_causal_probs_compiled_without_a_mask_array(lib, monkeypatch, L, S):
    """The compiled loop skips keys j > i itself (rows split over 3 threads:
    each part knows its first row's query index) as the masked array path."""
    s = np.random.default_rng(3).standard_normal((1, 5, L, S)).astype(np.float32) * 3
    before = host_threads.get_num_threads()
    host_threads.set_num_threads(3)
    try:
        p = attention._probs_from_scores(get_backend("cpu"), s.copy(), causal=True)
    finally:
        host_threads.set_num_threads(before)
    monkeypatch.setattr(hostlib, "load", lambda: None)
    ref = attention._probs_from_scores(get_backend("cpu"), s.copy(), causal=True)
    np.testing.assert_array_equal(p == 0, ref == 0)
    np.testing.assert_allclose(p, ref, rtol=4e-6, atol=1e-37)


@pytest.mark.parametrize("scale", [None, -0.5, 0.0])
@pytest.mark.parametrize("causal,bias", [(False, False), (True, False), (False, True)])
def test_attention_both_paths_against_torch_float64(scale, causal, bias, host_path):
    """sdpa forward and backward, float32: the compiled softmax (the scale as
    its beta when there is no bias) and score gradient, and the array code."""
    if causal and scale is not None and scale <= 0:
        pytest.skip("torch masks before scaling: its causal -inf times a scale <= 0 is +inf or NaN")
    rng = np.random.default_rng(4)
    q, k, v, dout = (rng.standard_normal((2, 3, n, 16)).astype(np.float32) for n in (9, 11, 11, 9))
    b = np.where(rng.random((9, 11)) < 0.3, -np.inf, rng.standard_normal((9, 11))).astype(np.float32)
    b[2] = -np.inf  # a query row with every key masked
    out, ctx = attention.sdpa_forward(get_backend("cpu"), q, k, v, b if bias else None, causal, scale)
    grads = attention.sdpa_backward(get_backend("cpu"), ctx, dout)
    qt, kt, vt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (q, k, v))
    mask = torch.tensor(b, dtype=torch.float64) if bias else None
    ot = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, mask, is_causal=causal, scale=scale)
    ot = torch.nan_to_num(ot)  # torch's all-masked row is NaN; gpunet's gives 0 (module docstring)
    ot.backward(torch.tensor(dout, dtype=torch.float64))
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-5, atol=1e-5)
    for got, t in zip(grads, (qt, kt, vt)):
        np.testing.assert_allclose(got, torch.nan_to_num(t.grad).numpy(), rtol=1e-4, atol=1e-5)


def test_adam_host_blocks_shared_by_element_count():
    """A model's large weights listed before its small biases: every host
    thread gets about the same number of elements (within a block), not the
    same number of blocks."""
    import collections
    import threading
    be = get_backend("cpu")
    shapes = [(512, 512)] * 6 + [(512,)] * 6
    work = [(views, ()) for arrays in zip(*([np.zeros(s, np.float32) for s in shapes] for _ in range(4)))
            for views in optim._blocks(be, arrays, optim._HOST_BLOCK)]
    done = collections.Counter()
    lock = threading.Lock()

    def update(views):
        with lock:
            done[threading.get_ident()] += views[0].size
    before = host_threads.get_num_threads()
    host_threads.set_num_threads(2)
    try:
        optim._run_blocks(be, work, update)
    finally:
        host_threads.set_num_threads(before)
    total = sum(int(np.prod(s)) for s in shapes)
    assert sum(done.values()) == total and len(done) == 2
    assert max(done.values()) - total / 2 <= optim._HOST_BLOCK


def test_gelu_tanh_both_paths_against_float64(host_path):
    """The tanh form, forward and backward: the compiled x·sigmoid(2u) and the
    array code's 0.5·x·(1 + tanh u) against float64, NaN/inf as the array code."""
    be = get_backend("cpu")
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(20_000) * 4, np.linspace(-9, 9, 1001), [0.0, -0.0, 1e-30, -1e-30]])
    x = x.astype(np.float32)
    dy = rng.standard_normal(x.size).astype(np.float32)
    y = act.FORWARD["gelu"](np, x, approximate="tanh")
    dx = act.act_backward(be, ("gelu", {"approximate": "tanh"}, x, y), dy)
    x64 = x.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)
    with np.errstate(over="ignore"):  # (1 + tanh u)/2 = sigmoid(2u), no cancellation in the reference either
        s, sm = 1 / (1 + np.exp(-2 * u)), 1 / (1 + np.exp(2 * u))
    ref_y = x64 * s
    slope = 2 * x64 * s * sm * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x64 ** 2)
    assert y.dtype == dx.dtype == np.float32
    # the array code's 1 + tanh(u) cancels where x is well below 0: an absolute
    # error of a few float32 ulps of 1 there, which the compiled form does not have
    atol = 1e-37 if host_path == "compiled" else 8e-6
    # (relative: u's float32 rounding, up to 2e-5 of e^-2|u| in the far tails)
    np.testing.assert_allclose(y, ref_y, rtol=2e-5, atol=atol)
    # the derivative s + slope crosses 0 near x = -0.75: apart relative to its terms' size
    assert np.all(np.abs(dx - dy * (s + slope)) <= 4e-5 * np.abs(dy) * (s + np.abs(slope)) + atol)
    special = np.array([np.nan, np.inf, -np.inf, 1e20, -1e20, F32.max], np.float32)
    with np.errstate(all="ignore"):
        ys = act.FORWARD["gelu"](np, special, approximate="tanh")
    np.testing.assert_array_equal(ys, special.clip(max=np.inf) * [1, 1, np.nan, 1, -0.0, 1])
    assert np.signbit(ys[4])
