"""The cpu backend's compiled host loops (gpunet/_host/host_ops.c through
gpunet/hostlib.py) against float64 references and against the NumPy paths
they stand in for, and the loader's fallbacks to those paths."""
import functools
import os

import numpy as np
import pytest
import torch

from gpunet import hostlib
from gpunet.backend import get_backend
from gpunet.ops import activation as act, attention, embedding, host_threads, norm, optim, pool, rnn, softmax

F32 = np.finfo(np.float32)


def _spy_compiled(monkeypatch) -> list:
    """The names of the compiled loops host_threads.run_compiled runs from now on, once per part."""
    calls, run_compiled = [], host_threads.run_compiled

    def spy(fn, args, parts):
        calls.extend([fn.__name__] * len(parts))
        return run_compiled(fn, args, parts)
    monkeypatch.setattr(host_threads, "run_compiled", spy)
    return calls


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
    order (no FMA contraction): the same bits, NaN, inf, -0.0 and huge values
    too; three tensors (their own step counts) in one call whose two threads'
    element ranges split the third."""
    be = get_backend("cpu")
    sizes = [optim._BLOCK + 1001, 7, 70000]
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, F32.max, -F32.max, 1e30], np.float32)

    def state(n):
        p, g, m = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
        v = rng.random(n).astype(np.float32)
        g[:special.size] = special[:n]
        p[special.size:2 * special.size] = special[:max(0, n - special.size)]
        vmax = v + rng.random(n).astype(np.float32) * (rng.random(n) < 0.5)
        return p, g, m, v, vmax
    runs = []
    before = host_threads.get_num_threads()
    try:
        host_threads.set_num_threads(2)
        for numpy_only in (False, True):
            if numpy_only:
                monkeypatch.setattr(hostlib, "load", lambda: None)
            rng = np.random.default_rng(2)
            p, g, m, v, vmax = (list(a) for a in zip(*(state(n) for n in sizes)))
            with np.errstate(all="ignore"):
                optim.adam(be, p, g, m, v, [4, 1, 9], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                           weight_decay=weight_decay, decoupled=decoupled, max_exp_avg_sqs=vmax if amsgrad else None)
            runs.append(p + m + v + (vmax if amsgrad else []))
        assert len(host_threads.ranges(sum(sizes))) == 2
    finally:
        host_threads.set_num_threads(before)
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
            runs.append([softmax.softmax_rows_compiled(lib, x, b, log)[0] for b in (1.0, 3.0) for log in (False, True)])
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
            for views in optim._blocks(be, arrays)]
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
    assert max(done.values()) - total / 2 <= optim._BLOCK


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


# ---------------------------------------------------------------- batch norm
def _bn_run(be, x, w, b, dy, batch_stats=True):
    mean, var, _ = norm.batch_norm_stats(be, x) if batch_stats else (x.mean((0, 2, 3)), x.var((0, 2, 3)), 0)
    y, ctx = norm.batch_norm_forward(be, x, w, b, mean, var, 1e-5)
    return (mean, var, y, *norm.batch_norm_backward(be, ctx, dy, batch_stats))


@pytest.mark.parametrize("shape,affine", [((5, 7, 9, 11), True), ((1, 1, 33, 1), True), ((2, 3, 8, 8), False),
                                          ((3, 2, 3, 3), True)])  # the last: 9 per run, NumPy's path
def test_batch_norm2d_both_paths_against_torch_float64(shape, affine, host_path):
    be = get_backend("cpu")
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 2 + 5).astype(np.float32)  # a mean well away from 0
    dy = rng.standard_normal(shape).astype(np.float32)
    w, b = rng.standard_normal((2, shape[1])).astype(np.float32) if affine else (None, None)
    mean, var, y, dx, dw, db = _bn_run(be, x, w, b, dy)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt, bt = (None, None) if w is None else (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (w, b))
    yt = torch.nn.functional.batch_norm(xt, None, None, wt, bt, True, 0.1, 1e-5)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    x64 = x.astype(np.float64)
    assert y.dtype == dx.dtype == mean.dtype == var.dtype == np.float32
    # the compiled loops sum in double: each statistic within a rounding (the
    # NumPy path's per-image float32 sums: within 2 ulps)
    bound = 0.51 if host_path == "compiled" and shape[2] * shape[3] >= norm._BN_HOST_MIN_INNER else 2
    assert _ulps(mean, x64.mean((0, 2, 3))).max() <= bound and _ulps(var, x64.var((0, 2, 3))).max() <= bound
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    assert (dw is None) == (db is None) == (w is None)
    if w is not None:
        np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-5, atol=1e-5)


def _ulps(a, ref):
    return np.abs(a - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)


def test_batch_norm2d_compiled_close_to_the_numpy_path_and_nan_stays_in_its_channel(lib, monkeypatch):
    be = get_backend("cpu")
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((4, 5, 13, 17)) * 3 + 100).astype(np.float32)
    x[2, 1, 5, 7] = np.nan
    x[:, 3] = 2.5  # a constant channel: variance 0, y = b exactly
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal((2, 5)).astype(np.float32)
    runs = []
    for numpy_only in (False, True):
        if numpy_only:
            monkeypatch.setattr(hostlib, "load", lambda: None)
        with np.errstate(invalid="ignore"):
            runs.append(_bn_run(be, x, w, b, dy) + _bn_run(be, x[:, 2:], w[2:], b[2:], dy[:, 2:], False)[2:])
    for got, ref in zip(*runs):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-4)
    y, dx = runs[0][2], runs[0][3]
    assert np.isnan(y[:, 1]).all() and np.isfinite(np.delete(y, 1, axis=1)).all()
    assert np.isnan(dx[:, 1]).all() and np.isfinite(np.delete(dx, 1, axis=1)).all()
    np.testing.assert_array_equal(y[:, 3], b[3])


# ---------------------------------------------------------------- average pooling
_AVG_CASES = [((2, 3, 9, 11), 3, 2, 1, False, True), ((1, 1, 5, 5), (2, 3), (2, 1), 1, True, False),
              ((2, 2, 8, 8), 2, 2, 0, False, True), ((1, 2, 6, 7), (3, 2), 3, 1, True, True),
              ((3, 1, 7, 4), 3, 1, 1, False, False),
              # one window a row: global pooling, overlapping rows, padding left out of the divisor
              ((2, 3, 8, 8), 8, 8, 0, False, True), ((1, 2, 9, 3), 3, (2, 1), 0, False, True),
              ((1, 1, 5, 4), (3, 4), 1, (1, 0), False, False),
              # disjoint windows (backward writes each share once): a gap between them, a ceil_mode window
              # cut off by the input's edge
              ((2, 1, 9, 10), (2, 3), (4, 3), 0, False, False), ((1, 2, 7, 7), 2, 3, 0, True, True),
              # global pooling over 8 planes at a time and a remainder: over the whole plane, and over all
              # but its last row
              ((3, 5, 8, 8), 8, 8, 0, False, True), ((2, 5, 9, 6), (8, 6), 8, 0, False, True)]


def _avg_run(x, kernel, stride, padding, ceil_mode, include_pad, dy_fn):
    k, s, p = ((a, a) if isinstance(a, int) else a for a in (kernel, stride, padding))
    y, ctx = pool.avgpool2d_forward(get_backend("cpu"), x, k, s, p, ceil_mode, include_pad)
    return y, pool.avgpool2d_backward(get_backend("cpu"), ctx, dy_fn(y))


@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode,include_pad", _AVG_CASES)
def test_avg_pool_both_paths_against_torch_float64(shape, kernel, stride, padding, ceil_mode, include_pad,
                                                   host_path):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    args = (kernel, stride, padding, ceil_mode, include_pad)
    y, dx = _avg_run(x, *args, lambda y: np.cos(y).astype(np.float32))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(xt, *args)
    yt.backward(torch.cos(torch.tensor(y, dtype=torch.float64)))
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6, atol=1e-6)


def _avg_dy(y):
    """sin(y), 1 where y is NaN, and a -0 first (its share lands on zeros: +0)."""
    dy = np.where(np.isnan(y), np.float32(1), np.sin(y)).astype(np.float32)
    dy.reshape(-1)[0] = -0.0
    return dy


@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode,include_pad", _AVG_CASES)
def test_avg_pool_compiled_same_bits_as_the_numpy_path(shape, kernel, stride, padding, ceil_mode, include_pad,
                                                       lib, monkeypatch):
    """The same sums in the same order: equal bits, NaN and inf included."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    x[0, 0, 1, 1], x[-1, -1, -1, -1], x[0, -1, 0, -1] = np.nan, np.inf, -0.0
    runs = []
    for numpy_only in (False, True):
        if numpy_only:
            monkeypatch.setattr(hostlib, "load", lambda: None)
        with np.errstate(invalid="ignore"):
            runs.append(_avg_run(x, kernel, stride, padding, ceil_mode, include_pad, _avg_dy))
    for got, ref in zip(*runs):
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


# ---------------------------------------------------------------- embedding
def _emb_grad(flat, dy, V, padding_idx):
    return embedding.embedding_backward(get_backend("cpu"), flat, dy, V, padding_idx)


@pytest.mark.parametrize("V,D,n,padding_idx", [(50, 7, 300, 3), (1, 1, 1, None), (9, 5, 0, None),
                                               (3000, 40, 2000, None)])
def test_embedding_backward_both_paths_against_float64(V, D, n, padding_idx, host_path):
    rng = np.random.default_rng(V + n)
    flat = rng.integers(0, V, n).astype(np.int64)
    dy = rng.standard_normal((n, D)).astype(np.float32)
    dw = _emb_grad(flat, dy, V, padding_idx)
    ref = np.zeros((V, D))
    np.add.at(ref, flat, dy.astype(np.float64))
    if padding_idx is not None:
        ref[padding_idx] = 0
    assert dw.dtype == np.float32 and dw.shape == (V, D)
    np.testing.assert_allclose(dw, ref, rtol=1e-5, atol=1e-5)


def test_embedding_backward_compiled_same_bits_as_the_numpy_path(lib, monkeypatch):
    """Position order is the stable sort's order: equal bits (-0.0, NaN, inf
    included) where the NumPy path sums runs in order (up to _LEVELS long),
    rows never looked up 0; a negative index takes the NumPy path (it wraps
    there, as in the forward). Longer runs: within float32 rounding."""
    rng = np.random.default_rng(5)
    flat = rng.integers(0, 40, 3000).astype(np.int64)
    flat[:3] = 7  # row 7 starts from dy[0] = -0.0: copied, not added to a 0.0
    assert np.bincount(flat[:300]).max() <= embedding._LEVELS < np.bincount(flat).max()
    dy = rng.standard_normal((3000, 33)).astype(np.float32) * 1e3
    dy[0] = -0.0
    dy[5, 2], dy[6, 4] = np.nan, np.inf
    cases = [(flat[:300], None), (flat[:300], 7), (np.array([7, 7, 1], np.int64), None),
             (np.array([-1, 2], np.int64), None), (flat, None)]
    runs = []
    for numpy_only in (False, True):
        if numpy_only:
            monkeypatch.setattr(hostlib, "load", lambda: None)
        runs.append([_emb_grad(f, dy[:f.size], 40, p) for f, p in cases])
    for got, ref in zip(runs[0][:-1], runs[1][:-1]):
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
    np.testing.assert_allclose(runs[0][-1], runs[1][-1], rtol=1e-5, atol=1e-2)  # sums of ~75 values of 1e3
    assert not runs[0][2][[0, 2, 3]].any() and np.array_equal(runs[0][2][1], dy[2])
    assert np.array_equal(runs[0][3][39], dy[0])  # -1 wrapped to the last row


def test_embedding_backward_same_bits_on_1_2_3_threads(lib):
    from gpunet.ops import host_threads
    rng = np.random.default_rng(2)
    flat = rng.integers(0, 4096, 5000).astype(np.int64)
    dy = rng.standard_normal((5000, 64)).astype(np.float32)
    before = host_threads.get_num_threads()
    try:
        grads = []
        for threads in (1, 2, 3):
            host_threads.set_num_threads(threads)
            grads.append(_emb_grad(flat, dy, 4096, None))
        assert len(host_threads.ranges(4096, 64)) == 3
    finally:
        host_threads.set_num_threads(before)
    for g in grads[1:]:
        np.testing.assert_array_equal(g, grads[0])


# ---------------------------------------------------------------- LSTM steps
def _lstm_cell(lib, g):
    """One compiled forward step with no inputs (I = R = 0), so its
    pre-activations are the bias alone: g (1, 4H), which gets the activated
    gates; c_prev = 0. Returns c, tanh_c, h."""
    H = g.shape[1] // 4
    b, dims, unused = g[0].copy(), np.array([1, H, 0, 0], np.int64), np.zeros(1, np.float32)
    c_prev = np.zeros((1, H), np.float32)
    c, tanh_c, h = (np.empty((1, H), np.float32) for _ in range(3))
    lib.gpunet_lstm_step_forward_f32(*(a.ctypes.data for a in (g, unused, unused, unused, b, c_prev, c, tanh_c, h,
                                                               dims)), 0, -(-H // 16))
    return c, tanh_c, h


def test_lstm_cell_sigmoid_and_tanh_within_4_ulps_over_a_dense_sweep(lib):
    """With no inputs and c_prev = 0 the cell's gates are sigmoid(x) (blocks
    i, f, o) and tanh(x) (block g) of its bias, and tanh_c = tanh(i·g)."""
    edges = [0.0, -0.0, 1e-30, -1e-45, 0.5499, 0.55, 0.5501, 8.0, 9.1, 17.0, 88.0, 89.0, 104.0, 1e30, np.inf,
             -np.inf, -8.0, -17.0, -88.0, -104.0, -105.0, -1e30]
    # and densely where e^x leaves the normal floats (sigmoid's result a subnormal, tanh's 2/(e^2x + 1))
    x = np.concatenate([np.linspace(-30, 30, 400_003, dtype=np.float32), np.linspace(40, 46, 20_001, dtype=np.float32),
                        np.linspace(85, 92, 20_001, dtype=np.float32), np.array(edges, np.float32)])
    x = np.concatenate([x, -x])
    H = x.size
    g = np.tile(x, 4)[None]
    c, tanh_c, h = _lstm_cell(lib, g)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        sig_ref, tanh_ref = 1 / (1 + np.exp(-x64)), np.tanh(x64)

    def ulps(a, ref):  # (a sigmoid below e^-88.7, a subnormal, comes out 0: within the smallest normal)
        return np.maximum(np.abs(a - ref) - F32.tiny, 0) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    for block in (0, 1, 3):
        assert ulps(g[0, block * H:(block + 1) * H], sig_ref).max() <= 4
    got_tanh = g[0, 2 * H:3 * H]
    assert ulps(got_tanh, tanh_ref).max() <= 4
    np.testing.assert_array_equal(np.signbit(got_tanh), np.signbit(x + np.float32(0)))  # odd (0 + b: -0.0 is +0.0)
    assert np.all(np.abs(got_tanh) <= 1) and np.all(g[0, :H] >= 0) and np.all(g[0, :H] <= 1)
    np.testing.assert_array_equal(c, g[:, :H] * got_tanh[None])  # c = f·0 + i·g
    assert ulps(tanh_c[0], np.tanh(c[0].astype(np.float64))).max() <= 4
    nan = np.full((1, 4), np.nan, np.float32)
    assert np.isnan(_lstm_cell(lib, nan)[2]).all() and np.isnan(nan).all()


def _lstm_case(rng, T, B, I, H):
    s = 1 / np.sqrt(H)
    w_ih, w_hh = (rng.uniform(-s, s, (4 * H, n)).astype(np.float32) for n in (I, H))
    b_ih, b_hh = rng.uniform(-s, s, (2, 4 * H)).astype(np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, c0, dh_n, dc_n = (rng.standard_normal((B, H)).astype(np.float32) for _ in range(4))
    return x, w_ih, w_hh, b_ih, b_hh, h0, c0, rng.standard_normal((T, B, H)).astype(np.float32), dh_n, dc_n


# (5, 9, 7, 70): a 3-row tile after the 6-row one, 16-unit blocks of the forward ending on 6 units and 64-unit
# blocks of the backward on 6
@pytest.mark.parametrize("T,B,I,H,grads", [(7, 5, 6, 37, "all"), (3, 1, 2, 1, "out"), (4, 3, 5, 8, "states"),
                                           (5, 9, 7, 70, "all")])
def test_lstm_both_paths_against_torch_float64(T, B, I, H, grads, host_path):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, dout, dh_n, dc_n = _lstm_case(np.random.default_rng(T * B), T, B, I, H)
    dout = None if grads == "states" else dout
    dh_n, dc_n = (None, None) if grads == "out" else (dh_n, dc_n)
    be = get_backend("cpu")
    out, hn, cn, ctx = rnn.lstm_forward(be, x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    dx, dh0, dc0, dw_ih, dw_hh, db, _ = rnn.lstm_backward(be, ctx, w_ih, w_hh, dout, dh_n, dc_n)
    m = torch.nn.LSTM(I, H).double()
    with torch.no_grad():
        for name, a in [("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)]:
            getattr(m, name).copy_(torch.tensor(a, dtype=torch.float64))
    xt, h0t, c0t = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, h0, c0))
    yt, (hnt, cnt) = m(xt, (h0t[None], c0t[None]))
    terms = [(yt, dout), (hnt[0], dh_n), (cnt[0], dc_n)]
    sum((t * torch.tensor(g, dtype=torch.float64)).sum() for t, g in terms if g is not None).backward()
    for got, ref in [(out, yt), (hn, hnt[0]), (cn, cnt[0]), (dx, xt.grad), (dh0, h0t.grad), (dc0, c0t.grad),
                     (dw_ih, m.weight_ih_l0.grad), (dw_hh, m.weight_hh_l0.grad), (db, m.bias_ih_l0.grad)]:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref.detach().numpy(), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("layer", ["lstm", "gru", "rnn"])
def test_recurrent_backward_without_state_grad(layer, host_path):
    """state_grad=False (no initial state was given): the initial state's
    gradients are None, every other gradient has the bits of a full backward
    (only the last step's recurrent product, which feeds dh0 alone, is left
    out); the full backward is held to PyTorch's in float64 above and in
    tests/test_rnn.py and tests/test_gru.py."""
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, dout, dh_n, dc_n = _lstm_case(np.random.default_rng(3), 6, 5, 4, 70)
    be = get_backend("cpu")
    if layer == "lstm":
        *_, ctx = rnn.lstm_forward(be, x, w_ih, w_hh, b_ih, b_hh, h0, c0)
        full, part = (rnn.lstm_backward(be, ctx, w_ih, w_hh, dout, dh_n, dc_n, state_grad=s) for s in (True, False))
        states = [1, 2]
    else:
        G = 3 if layer == "gru" else 1
        w_ih, w_hh, b_ih, b_hh = w_ih[:G * 70], w_hh[:G * 70], b_ih[:G * 70], b_hh[:G * 70]
        forward, backward = (rnn.gru_forward, rnn.gru_backward) if layer == "gru" else (rnn.rnn_forward,
                                                                                        rnn.rnn_backward)
        *_, ctx = forward(be, x, w_ih, w_hh, b_ih, b_hh, h0, *(("tanh",) if layer == "rnn" else ()))
        full, part = (backward(be, ctx, w_ih, w_hh, dout, dh_n, state_grad=s) for s in (True, False))
        states = [1]
    for i, (a, b) in enumerate(zip(full, part)):
        if i in states:
            assert a is not None and b is None
        elif a is not None:
            np.testing.assert_array_equal(a, b)


def test_lstm_backward_step_cell_same_bits_as_the_numpy_cell(lib):
    """Without its product (dg_next NULL) the compiled backward step is the
    NumPy cell's float32 operations in its order: the same bits, NaN
    included, with and without an incoming dc."""
    rng = np.random.default_rng(4)
    B, H = 9, 70
    g = np.concatenate([rng.uniform(0, 1, (B, 2 * H)), rng.uniform(-1, 1, (B, H)), rng.uniform(0, 1, (B, H))], 1)
    g = g.astype(np.float32)
    c_prev, dy, dc = (rng.standard_normal((B, H)).astype(np.float32) for _ in range(3))
    tanh_c = np.tanh(rng.standard_normal((B, H))).astype(np.float32)
    dy[2, 3] = np.nan
    for dc_in in (dc, None):
        dg_ref = np.empty_like(g)
        with np.errstate(invalid="ignore"):
            dc_ref = rnn._lstm_cell_backward_xp(np, g, c_prev, tanh_c, dy, None, dc_in, dg_ref)
        dg, dc_prev = np.full_like(g, 7.0), np.full_like(dc, 7.0)
        lib.gpunet_lstm_step_backward_f32(None, None, *(hostlib.ptr(a) for a in (g, c_prev, tanh_c, dy, dc_in, dg,
                                                                                  dc_prev)), B, H, 0, -(-H // 64))
        for got, ref in ((dg, dg_ref), (dc_prev, dc_ref)):
            np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_lstm_same_bits_on_1_2_3_threads(lib):
    """Every hidden unit's gates, state and gradients are computed alike
    whichever thread owns its block: results do not depend on the split."""
    from gpunet.ops import host_threads
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, dout, dh_n, dc_n = _lstm_case(np.random.default_rng(6), 3, 8, 5, 300)
    be = get_backend("cpu")
    before = host_threads.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            host_threads.set_num_threads(threads)
            *fwd, ctx = rnn.lstm_forward(be, x, w_ih, w_hh, b_ih, b_hh, h0, c0)
            runs.append([a.copy() for a in fwd] + list(rnn.lstm_backward(be, ctx, w_ih, w_hh, dout, dh_n, dc_n)[:6]))
        assert len(host_threads.ranges(-(-300 // 16), 8 * (4 * 300 + 80), host_threads.MIN_PER_EXP_THREAD)) == 3
    finally:
        host_threads.set_num_threads(before)
    for run in runs[1:]:
        for got, ref in zip(run, runs[0]):
            np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------- convolution backward (row-layout columns)
CONV_GEOMETRIES = [  # (x shape, out channels, kernel, stride, padding, dilation, groups, bias)
    ((2, 3, 7, 6), 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    ((3, 4, 9, 8), 6, (3, 2), (2, 1), (1, 0), (1, 1), 2, False),
    ((1, 6, 5, 7), 3, (2, 2), (1, 1), (0, 2), (2, 1), 3, True),
    ((2, 4, 6, 6), 8, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),
    ((2, 2, 11, 10), 4, (5, 3), (3, 2), (2, 3), (2, 2), 2, True),
    ((1, 1, 3, 3), 2, (3, 3), (1, 1), (2, 2), (1, 1), 1, True),  # more padding than image
    ((2, 3, 5, 19), 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # 16+ wide: im2col through its tile
    ((1, 4, 4, 37), 6, (2, 3), (1, 2), (0, 1), (1, 2), 2, False),
    # 16 channels per group: dW from the zero-padded channels-last x read in place, at any stride (64
    # pixels a line: blocks of 4 of the 6 lines)
    ((1, 16, 11, 128), 6, (3, 3), (2, 2), (1, 1), (1, 1), 1, True),
    ((2, 32, 11, 9), 8, (3, 2), (2, 3), (1, 2), (2, 1), 2, False),
]


def _conv_grads(x, w, b, dy, stride, padding, dilation, groups):
    from gpunet.ops import conv
    be = get_backend("cpu")
    y, ctx = conv.conv2d_forward(be, x, w, b, stride, padding, dilation, groups)
    return conv.conv2d_backward(be, ctx, dy)


def _conv_case_and_torch_grads(geometry, seed):
    """Seeded float32 x, w, b (or None), dy of a conv geometry and PyTorch's float64 dx, dw[, db]."""
    shape, o, k, stride, padding, dilation, groups, bias = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((o, shape[1] // groups, *k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    tx, tw = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w))
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True) if bias else None
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    dy = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.tensor(dy, dtype=torch.float64))
    return x, w, b, dy, [tx.grad, tw.grad] + ([tb.grad] if bias else [])


@pytest.mark.parametrize("direct", [False, True], ids=["columns", "direct"])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=str)
def test_conv_backward_both_paths_against_torch_float64(host_path, geometry, direct, monkeypatch):
    """dx, dw, db of both host paths; the compiled one also in chunks of one
    image, with the columns or (direct) the direct weight gradient and dx."""
    from gpunet.ops import conv
    if direct and host_path != "compiled":
        pytest.skip("the direct loops are compiled")
    for gate in ("DIRECT_BACKWARD_MIN_CHANNELS", "DX_DIRECT_MIN_CHANNELS"):
        monkeypatch.setattr(conv, gate, 1 if direct else 1 << 30)
    shape, o, k, stride, padding, dilation, groups, bias = geometry
    x, w, b, dy, refs = _conv_case_and_torch_grads(geometry, seed=5)
    for chunk in (conv.ROWS_CHUNK_BYTES, 1):
        monkeypatch.setattr(conv, "ROWS_CHUNK_BYTES", chunk)
        dx, dw, db = _conv_grads(x, w, b, dy, stride, padding, dilation, groups)
        assert db is None if not bias else db.dtype == np.float32
        for got, ref in zip([dx, dw, db], refs):
            assert got.dtype == np.float32 and got.shape == ref.shape
            np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_conv_backward_compiled_is_bit_identical_across_host_thread_counts(lib):
    from gpunet.ops import host_threads
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 16, 12, 20)).astype(np.float32)
    w = rng.standard_normal((24, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    dy = rng.standard_normal((64, 24, 12, 20)).astype(np.float32)
    before = host_threads.get_num_threads()
    try:
        out = []
        for threads in (1, 2, 3):
            host_threads.set_num_threads(threads)
            out.append(_conv_grads(x, w, b, dy, (1, 1), (1, 1), (1, 1), 2))
    finally:
        host_threads.set_num_threads(before)
    for other in out[1:]:
        for a, c in zip(out[0], other):
            np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------- max pooling
# (shape, kernel, stride, padding, dilation, ceil_mode): tiling, overlapping,
# padded, dilated and ceil_mode windows
_MAX_CASES = [((2, 2, 8, 8), 2, 2, 0, 1, False), ((2, 3, 9, 11), 3, 2, 1, 1, False),
              ((1, 1, 5, 5), 3, 1, 1, 1, False), ((1, 2, 7, 8), (2, 3), (1, 2), 1, (2, 1), True),
              ((3, 2, 6, 7), (3, 2), 3, (1, 0), 1, True), ((2, 1, 4, 1), (3, 1), 1, (1, 0), 1, False),
              ((1, 2, 6, 40), (2, 3), (1, 2), 1, (2, 1), True),  # (rows of 16 or more outputs)
              ((3, 5, 7, 9), 2, (2, 1), 0, 1, False)]  # (unpadded short rows: 64 outputs across planes)


def _max_run(x, kernel, stride, padding, dilation, ceil_mode, dy_fn):
    k, s, p, d = ((a, a) if isinstance(a, int) else a for a in (kernel, stride, padding, dilation))
    be = get_backend("cpu")
    y, ctx = pool.maxpool2d_forward(be, x, k, s, p, d, ceil_mode)
    return y, pool.maxpool2d_indices(be, ctx), pool.maxpool2d_backward(be, ctx, dy_fn(y))


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,ceil_mode", _MAX_CASES)
def test_max_pool_both_paths_against_torch_float64(shape, kernel, stride, padding, dilation, ceil_mode, host_path):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    args = (kernel, stride, padding, dilation, ceil_mode)
    y, idx, dx = _max_run(x, *args, lambda y: np.cos(y).astype(np.float32))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt, it = torch.nn.functional.max_pool2d(xt, *args, return_indices=True)
    yt.backward(torch.cos(torch.tensor(y, dtype=torch.float64)))
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6, atol=1e-6)


def _max_special(shape, seed):
    """Small integers (ties), ±0, ±inf, NaN (some windows with two) and a
    first plane's top three rows of -inf (windows whose maximum is -inf,
    padding taps included)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, shape).astype(np.float32)
    x[rng.random(shape) < 0.1] = -0.0
    x[rng.random(shape) < 0.05] = np.inf
    x[rng.random(shape) < 0.05] = -np.inf
    x[rng.random(shape) < 0.05] = np.nan
    x[0, 0, :3, :] = -np.inf
    x[-1, -1, -2:, -1] = np.nan
    return x


def _max_dy(y):
    """A gradient with -0.0, inf and NaN among ordinary values."""
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    flat = dy.reshape(-1)
    flat[::7], flat[1::11], flat[2::13] = -0.0, np.inf, np.nan
    return dy


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,ceil_mode", _MAX_CASES)
def test_max_pool_compiled_same_bits_as_the_numpy_path(shape, kernel, stride, padding, dilation, ceil_mode,
                                                       lib, monkeypatch):
    """Same maxima (±0's and NaN's bits included), same arg-max (first
    maximum, a NaN window's last NaN), same routed gradients, as bits."""
    x = _max_special(shape, sum(shape))
    runs = []
    for numpy_only in (False, True):
        if numpy_only:
            monkeypatch.setattr(hostlib, "load", lambda: None)
        with np.errstate(invalid="ignore"):
            runs.append(_max_run(x, kernel, stride, padding, dilation, ceil_mode, _max_dy))
    assert np.isnan(runs[1][0]).any() and np.isneginf(runs[1][0]).any()
    for got, ref in zip(*runs):
        np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), ref.view(f"u{ref.itemsize}"))


@pytest.mark.parametrize("shape,window", [((6, 32, 32, 33), (3, 2, 1, 1, True)), ((96, 32, 8, 8), (2, 2, 0, 1, False))])
def test_max_pool_compiled_same_bits_on_1_2_3_threads(lib, shape, window):
    x = _max_special(shape, 4)
    before = host_threads.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            host_threads.set_num_threads(threads)
            runs.append(_max_run(x, *window, _max_dy))
            assert len(host_threads.ranges(shape[0] * shape[1], shape[2] * shape[3])) == threads
    finally:
        host_threads.set_num_threads(before)
    for run in runs[1:]:
        for got, ref in zip(run, runs[0]):
            np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), ref.view(f"u{ref.itemsize}"))


# ---------------------------------------------------------------- ReLU
@pytest.mark.parametrize("shape", [(3, 70001), (), (0, 4), (5,)])
def test_relu_forward_over_host_threads_same_bits_as_numpy(shape, host_path):
    """ReLU's forward split over 1-3 host threads, compiled and NumPy: np.maximum(x, 0)'s
    bits (a NaN kept with its sign, -0 as NumPy gives it)."""
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    x.reshape(-1)[:7] = [0.0, -0.0, np.nan, np.inf, -np.inf, -1e-45, -np.nan][:x.size]
    be = get_backend("cpu")
    before = host_threads.get_num_threads()
    try:
        for threads in (1, 2, 3):
            host_threads.set_num_threads(threads)
            y, _ = act.act_forward(be, "relu", x)
            assert y.shape == x.shape and y.dtype == np.float32
            np.testing.assert_array_equal(y.view(np.uint32), np.maximum(x, 0).view(np.uint32))
        assert len(host_threads.ranges(x.size)) == (3 if x.size > 200000 else 1)
    finally:
        host_threads.set_num_threads(before)


def test_relu_backward_compiled_same_bits_as_the_numpy_path(lib, monkeypatch):
    """dx = dy where x > 0, else +0 (a NaN or inf dy included), as bits, on 1 and 2 threads."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 70001)).astype(np.float32)
    x.reshape(-1)[:6] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dy.reshape(-1)[::5], dy.reshape(-1)[1::7], dy.reshape(-1)[2::9] = np.nan, -0.0, -np.inf
    be = get_backend("cpu")
    _, ctx = act.act_forward(be, "relu", x)
    before = host_threads.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            host_threads.set_num_threads(threads)
            runs.append(act.act_backward(be, ctx, dy))
        assert len(host_threads.ranges(x.size)) == 2
    finally:
        host_threads.set_num_threads(before)
    monkeypatch.setattr(hostlib, "load", lambda: None)
    ref = act.act_backward(be, ctx, dy)
    assert ref.dtype == np.float32 and not np.isnan(ref[x <= 0]).any()
    for got in runs:
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


# ---------------------------------------------------------------- convolution forward (direct)
DIRECT_GEOMETRIES = CONV_GEOMETRIES + [
    ((1, 3, 17, 23), 11, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # batch 1, odd sizes, 8 + 2 + 1 channels
    ((2, 6, 10, 12), 6, (3, 3), (1, 1), (1, 1), (1, 1), 6, False),  # depthwise
    ((2, 16, 9, 300), 9, (1, 1), (2, 1), (0, 0), (1, 1), 1, True),  # 1x1, a row wider than the tile
    # output channels in the vector lanes (16k per group): 7x5 = 35 pixels (a short block of 6), 4 + 1
    # vectors, two groups of 16 at stride 2, dilation with stride (2, 1), 1 input channel
    ((2, 5, 7, 5), 80, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    ((3, 4, 9, 11), 32, (3, 3), (2, 2), (1, 1), (1, 1), 2, False),
    ((2, 3, 13, 10), 48, (3, 2), (2, 1), (2, 0), (2, 3), 1, True),
    ((2, 1, 7, 8), 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, False),
    ((1, 2, 20, 21), 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # 12 of 20 lines a unit: border rows rewritten
    # 16k channels but few taps over large planes: the pixel-vector loops (3x3 of 3 channels over 33x32,
    # 3x3 of 1 channel over 8x8, 1x1 of 5)
    ((2, 3, 33, 32), 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    ((2, 1, 8, 8), 48, (3, 3), (1, 1), (1, 1), (1, 1), 1, False),
    ((1, 5, 32, 33), 16, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),
]


def _conv_forward(x, w, b, stride, padding, dilation, groups):
    from gpunet.ops import conv
    return conv.conv2d_forward(get_backend("cpu"), x, w, b, stride, padding, dilation, groups)[0]


@pytest.mark.parametrize("geometry", DIRECT_GEOMETRIES, ids=str)
def test_conv_forward_both_paths_against_torch_float64(host_path, geometry, monkeypatch):
    """y of both host paths, every geometry through the direct loop where it is compiled."""
    from gpunet.ops import conv
    monkeypatch.setattr(conv, "DIRECT_MIN_PIXELS", 0)
    shape, o, k, stride, padding, dilation, groups, bias = geometry
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((o, shape[1] // groups, *k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    ref = torch.nn.functional.conv2d(*(None if a is None else torch.tensor(a, dtype=torch.float64) for a in (x, w, b)),
                                     stride, padding, dilation, groups).numpy()
    calls, real = [], conv._forward_direct
    monkeypatch.setattr(conv, "_forward_direct", lambda *a: calls.append(1) or real(*a))
    before = host_threads.get_num_threads()
    try:  # one thread too: every unit of pixel lines through one call's rows (buffers reused)
        for threads in (1, before):
            host_threads.set_num_threads(threads)
            calls.clear()
            y = _conv_forward(x, w, b, stride, padding, dilation, groups)
            assert len(calls) == (host_path == "compiled")
            assert y.dtype == np.float32 and y.shape == ref.shape
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    finally:
        host_threads.set_num_threads(before)


def test_conv_forward_takes_the_direct_loop_over_planes_of_64_pixels_and_more(lib, monkeypatch):
    from gpunet.ops import conv
    calls, real = [], conv._forward_direct
    monkeypatch.setattr(conv, "_forward_direct", lambda *a: calls.append(a[3].shape) or real(*a))
    rng = np.random.default_rng(8)
    for side, c in [(8, 1), (4, 1), (16, 64), (16, 65)]:  # 64 and 16 output pixels; Kg 576 and 585
        x = rng.standard_normal((2, c, side, side)).astype(np.float32)
        _conv_forward(x, rng.standard_normal((4, c, 3, 3)).astype(np.float32), None, (1, 1), (1, 1), (1, 1), 1)
    assert calls == [(4, 1, 3, 3), (4, 64, 3, 3)]


def test_conv_forward_direct_is_bit_identical_across_host_thread_counts(lib):
    from gpunet.ops import host_threads
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 3, 40, 36)).astype(np.float32)
    w = rng.standard_normal((20, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    before = host_threads.get_num_threads()
    try:
        out = []
        for threads in (1, 2, 3):
            host_threads.set_num_threads(threads)
            out.append(_conv_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1))
    finally:
        host_threads.set_num_threads(before)
    for other in out[1:]:
        np.testing.assert_array_equal(out[0], other)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_finite_scan_compiled_finds_every_nan_and_inf_wherever_it_sits(lib, dtype, threads, monkeypatch):
    from gpunet import checks
    name = f"gpunet_any_nonfinite_f{np.dtype(dtype).itemsize * 8}"
    calls = _spy_compiled(monkeypatch)
    be = get_backend("cpu")
    x = np.random.default_rng(0).uniform(-1, 1, (5, 65537)).astype(dtype) * np.finfo(dtype).max
    before = host_threads.get_num_threads()
    host_threads.set_num_threads(threads)
    try:
        checks.array(be, x, "input")  # the largest finite values pass, through the compiled scan
        assert calls == [name] * threads
        edges = [i for lo, hi in host_threads.ranges(x.size) for i in (lo, lo + 4095, lo + 4096, hi - 1)]
        for pos in edges:  # the threads' and their blocks' first and last elements
            for bad in (np.nan, np.inf, -np.inf):
                y = x.copy()
                y.flat[pos] = bad
                with pytest.raises(ValueError, match=r"input: contains 1 NaN/Inf value\(s\) of 327685"):
                    checks.array(be, y, "input")
        calls.clear()
        with pytest.raises(ValueError, match="contains 1 NaN"):  # not contiguous: NumPy's scan
            checks.array(be, np.asfortranarray(y), "input")
        assert not calls
    finally:
        host_threads.set_num_threads(before)


def _raises_from_the_rows_alone(m, x, calls, loop: str):
    """m(x) with one NaN, +inf or -inf in the first, a middle or the last row
    (the threads' edges), at either end or the middle of the row: the error
    names the input and counts the one bad value, and only the compiled rows
    `loop` ran (no scan pass of their own)."""
    for row in (0, x.shape[0] // 2, x.shape[0] - 1):
        for col in (0, x.shape[1] // 2, x.shape[1] - 1):
            for bad in (np.nan, np.inf, -np.inf):
                y = x.copy()
                y[row, col] = bad
                calls.clear()
                with pytest.raises(ValueError, match=rf"input: contains 1 NaN/Inf value\(s\) of {x.size}"):
                    m(y)
                assert set(calls) == {loop}


@pytest.mark.parametrize("module", ["Softmax", "LogSoftmax"])
def test_softmax_module_scans_its_input_in_the_compiled_rows(lib, module, monkeypatch):
    """nn.Softmax's NaN/Inf check rides the rows' first read (no scan pass of
    its own) and still names the input before returning; along another axis
    (NumPy path) the scan runs first, as it does with the checks off for no
    error at all."""
    import gpunet.nn as gnn
    from gpunet import checks
    calls = _spy_compiled(monkeypatch)
    x = np.random.default_rng(0).standard_normal((300, 257)).astype(np.float32)
    m = getattr(gnn, module)(dim=-1)
    ref = m(x)
    assert calls == ["gpunet_softmax_range_f32"] * len(calls) and calls
    _raises_from_the_rows_alone(m, x, calls, "gpunet_softmax_range_f32")
    y = x.copy()
    y[5, 7] = np.nan
    with pytest.raises(ValueError, match=r"input: contains 1 NaN/Inf"):
        getattr(gnn, module)(dim=0)(y)
    checks.set_finite_checks(host=False)
    try:
        assert np.isnan(m(y)[5]).all() and np.array_equal(m(x), ref)
    finally:
        checks.set_finite_checks(host=True)


@pytest.mark.parametrize("threads", [1, 2])
def test_relu_module_scans_its_input_in_the_compiled_loop(lib, threads, monkeypatch):
    """nn.ReLU's NaN/Inf check rides its compiled loop's read of x (no scan
    pass): a NaN or an infinity at either end of each thread's range or in
    between raises naming the input; the largest finite values pass; other
    activations, and ReLU with the checks off, keep their behaviour."""
    import gpunet.nn as gnn
    from gpunet import checks
    calls = _spy_compiled(monkeypatch)
    x = np.random.default_rng(3).standard_normal((5, 65537)).astype(np.float32)
    x[0, 0], x[4, 65536] = np.finfo(np.float32).max, -np.finfo(np.float32).max
    before = host_threads.get_num_threads()
    host_threads.set_num_threads(threads)
    try:
        m = gnn.ReLU()
        np.testing.assert_array_equal(m(x), np.maximum(x, 0))
        assert calls == ["gpunet_relu_f32"] * threads
        for pos in [i for lo, hi in host_threads.ranges(x.size) for i in (lo, (lo + hi) // 2, hi - 1)]:
            for bad in (np.nan, np.inf, -np.inf):
                y = x.copy()
                y.flat[pos] = bad
                calls.clear()
                with pytest.raises(ValueError, match=rf"input: contains 1 NaN/Inf value\(s\) of {x.size}"):
                    m(y)
                assert set(calls) == {"gpunet_relu_f32"}
        with pytest.raises(ValueError, match=r"input: contains 1 NaN/Inf"):
            gnn.Tanh()(y)
        checks.set_finite_checks(host=False)
        try:
            assert np.isneginf(y.flat[pos]) and m(y).flat[pos] == 0
        finally:
            checks.set_finite_checks(host=True)
    finally:
        host_threads.set_num_threads(before)


def test_layer_norm_module_scans_its_input_in_the_compiled_rows(lib, monkeypatch):
    """nn.LayerNorm's NaN/Inf check is the compiled rows' own sums (a row
    holds one exactly when its sum in double is not finite; no scan pass),
    the error naming the input before it returns; the largest finite values
    pass; float64 (NumPy path) scans first."""
    import gpunet.nn as gnn
    calls = _spy_compiled(monkeypatch)
    x = np.random.default_rng(1).standard_normal((300, 257)).astype(np.float32)
    m = gnn.LayerNorm(257)
    m(x)
    assert calls == ["gpunet_layer_norm_forward_range_f32"] * len(calls) and calls
    big = np.full((4, 257), np.finfo(np.float32).max, np.float32)
    big[1] *= -1
    m(big)
    _raises_from_the_rows_alone(m, x, calls, "gpunet_layer_norm_forward_range_f32")
    y = x.copy()
    y[299, 256] = -np.inf
    m64 = gnn.LayerNorm(257).to(dtype=np.float64)
    with pytest.raises(ValueError, match=r"input: contains 1 NaN/Inf"):
        m64(y.astype(np.float64))


def test_batch_norm_module_scans_its_input_through_its_statistics(lib, monkeypatch):
    """nn.BatchNorm2d in training scans its input only where a channel's
    mean or variance is not finite (a NaN or an infinity makes one so): no
    scan pass for finite input, the error naming the input before the
    running statistics move, and finite values whose variance overflows
    float32 pass; in eval (running statistics) the scan runs first."""
    import gpunet.nn as gnn
    calls = _spy_compiled(monkeypatch)
    x = np.random.default_rng(2).standard_normal((8, 3, 64, 64)).astype(np.float32)
    m = gnn.BatchNorm2d(3)
    m(x)
    assert "gpunet_any_nonfinite_f32" not in calls and "gpunet_batch_norm_stats_f32" in calls
    for bad in (np.nan, np.inf, -np.inf):
        for where in ((0, 0, 0, 0), (3, 1, 40, 7), (7, 2, 63, 63)):
            y = x.copy()
            y[where] = bad
            before = m.running_mean.copy()
            with pytest.raises(ValueError, match=rf"input: contains 1 NaN/Inf value\(s\) of {x.size}"):
                m(y)
            np.testing.assert_array_equal(m.running_mean, before)
    calls.clear()
    gnn.BatchNorm2d(3)(x * np.float32(1e20))  # variances past float32's range: the scan runs and finds nothing
    assert "gpunet_any_nonfinite_f32" in calls
    calls.clear()
    m.eval()
    m(x)
    assert calls[0] == "gpunet_any_nonfinite_f32"


def test_softmax_rows_report_nonfinite_rows(lib):
    """gpunet_softmax_rows_f32's return: 1 when a (kept) key is NaN or
    infinite; a causal row's skipped keys are not read."""
    x = np.zeros((4, 6), np.float32)
    y = np.empty_like(x)

    def rows(causal=0):
        return lib.gpunet_softmax_rows_f32(x.ctypes.data, y.ctypes.data, 4, 6, 1.0, 0, 1, causal, 0)
    assert rows() == 0
    x[3, 5] = -np.inf
    assert rows() == 1 and rows(causal=4) == 0  # row 3 keeps keys 0..3
    x[3, 5] = np.finfo(np.float32).max
    assert rows() == 0


# ---------------------------------------------------------------- convolution backward: direct dx and dW
DX_DIRECT_GEOMETRIES = [  # stride 1; (x shape, out channels, kernel, stride, padding, dilation, groups, bias)
    ((2, 3, 7, 6), 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    ((1, 6, 9, 11), 9, (3, 2), (1, 1), (2, 0), (2, 3), 3, False),  # dilated, asymmetric, p' = (2, 3)
    ((3, 4, 6, 5), 8, (1, 1), (1, 1), (0, 0), (1, 1), 2, True),  # 1x1
    ((2, 5, 8, 13), 11, (5, 3), (1, 1), (0, 1), (1, 1), 1, True),  # unpadded: p' = k - 1; 8 + 2 + 1 channels
    ((1, 2, 3, 3), 2, (3, 3), (1, 1), (2, 2), (1, 1), 1, True),  # padding = the kernel's extent: p' = 0
    ((2, 20, 17, 19), 18, (3, 3), (1, 1), (1, 1), (1, 1), 2, False),  # 17 pixel rows per tile block, odd sizes
    ((9, 4, 6, 7), 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # 9 images: 5 chunks of 2 and 1; 37 of 48 taps
    # 16 channels per group and more: dW from the zero-padded channels-last x in place
    ((2, 16, 9, 7), 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
    ((3, 32, 6, 5), 6, (3, 2), (1, 1), (2, 1), (2, 1), 2, True),  # p' = (2, 0)
    ((2, 48, 5, 5), 4, (1, 1), (1, 1), (0, 0), (1, 1), 1, False),
]


@pytest.mark.parametrize("geometry", DX_DIRECT_GEOMETRIES, ids=str)
def test_conv_backward_dx_direct_against_torch_float64(lib, geometry, monkeypatch):
    """Every stride-1 geometry with dx through the direct forward of dy and the
    direct weight gradient (register blocks of 4, 2 and 1 channels, 4 to 1
    vectors of taps), in the default chunks and in one."""
    from gpunet.ops import conv
    monkeypatch.setattr(conv, "DIRECT_MIN_PIXELS", 0)
    monkeypatch.setattr(conv, "DX_DIRECT_MIN_CHANNELS", 1)
    shape, o, k, stride, padding, dilation, groups, bias = geometry
    x, w, b, dy, refs = _conv_case_and_torch_grads(geometry, seed=11)
    calls, real = [], conv._forward_direct
    monkeypatch.setattr(conv, "_forward_direct", lambda *a: calls.append(a[3].shape) or real(*a))
    for chunks in (conv.DW_CHUNKS, 1):
        monkeypatch.setattr(conv, "DW_CHUNKS", chunks)
        calls.clear()
        dx, dw, db = _conv_grads(x, w, b, dy, stride, padding, dilation, groups)
        assert calls == [w.shape, (shape[1], o // groups, *k)]  # the forward's, then dx's flipped weights
        for got, ref in zip([dx, dw, db], refs):
            assert got.dtype == np.float32 and got.shape == ref.shape
            # (sums of up to 650 float32 products: an absolute error relative to the largest)
            np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=2e-6 * ref.abs().max().item())


def test_conv_backward_direct_loops_where_they_pay(lib, monkeypatch):
    """dx direct for stride 1, p <= d*(k-1), 3 or more input channels per
    group, over 64 or more pixels (16 where dy has 8 channels per group or
    more), and class by class for strides over 1 with 16k channels per group
    where no class reads above dy's first row; else dx through the column
    gradient and col2im. dW direct from 8 channels per group on, over pixel
    vectors below that at stride 1, else (strided, few channels) from the
    columns col2im's dx is built from."""
    from gpunet.ops import conv
    calls = []
    for name in ("_col2im_rows", "_dx_strided", "_weight_grad_direct", "_weight_grad_pixels"):
        monkeypatch.setattr(conv, name, lambda *a, real=getattr(conv, name), name=name: calls.append(name) or real(*a))
    rng = np.random.default_rng(12)
    col, strided, direct, pixels = "_col2im_rows", "_dx_strided", "_weight_grad_direct", "_weight_grad_pixels"
    cases = [  # (x shape, stride, padding, groups, the loops expected)
        ((2, 8, 8, 8), 1, 1, 1, [direct]), ((2, 16, 8, 8), 1, 1, 2, [direct]), ((2, 8, 8, 8), 1, 2, 1, [direct]),
        ((2, 16, 8, 8), 1, 3, 1, [col, direct]), ((2, 16, 8, 8), 2, 1, 1, [strided, direct]),
        ((2, 16, 8, 8), 2, 2, 1, [col, direct]), ((2, 8, 8, 8), 2, 1, 1, [col, direct]),
        ((2, 8, 4, 4), 1, 1, 1, [direct]), ((2, 16, 4, 4), 1, 1, 2, [col, direct]),
        ((2, 8, 2, 2), 1, 1, 1, [col, direct]), ((2, 3, 8, 8), 1, 1, 1, [pixels]), ((2, 6, 8, 8), 1, 1, 2, [pixels]),
        ((2, 2, 8, 8), 1, 1, 1, [col, pixels]), ((2, 7, 8, 8), 2, 1, 1, [col]), ((2, 16, 8, 8), 1, 1, 8, [col, pixels])]
    for shape, stride, padding, groups, expected in cases:
        calls.clear()
        x = rng.standard_normal(shape).astype(np.float32)
        w = rng.standard_normal((8, shape[1] // groups, 3, 3)).astype(np.float32)
        y, ctx = conv.conv2d_forward(get_backend("cpu"), x, w, None, (stride,) * 2, (padding,) * 2, (1, 1), groups)
        conv.conv2d_backward(get_backend("cpu"), ctx, np.ones_like(y))
        assert calls == expected, (shape, stride, padding, groups)


# strided dx class by class (16k channels per group): (x shape, out channels, kernel, stride, padding, dilation,
# groups, bias)
DX_STRIDED_GEOMETRIES = [
    ((3, 16, 9, 8), 8, (3, 3), (2, 2), (1, 1), (1, 1), 1, False),  # the small ResNet's: odd and even sizes
    ((2, 32, 7, 11), 6, (3, 2), (2, 3), (1, 0), (1, 1), 2, True),  # 16 channels per group, strides (2, 3)
    ((2, 16, 9, 9), 5, (1, 1), (2, 2), (0, 0), (1, 1), 1, False),  # 1x1: 3 of the 4 classes get no tap (0)
    ((2, 16, 11, 10), 4, (3, 3), (2, 2), (2, 2), (2, 2), 1, True),  # dilation 2 = stride: a class takes 4 taps
    ((1, 16, 13, 12), 5, (3, 3), (2, 2), (3, 3), (3, 3), 1, True),  # dilation 3: a class's taps 3 rows apart
    ((1, 16, 12, 5), 3, (4, 2), (3, 1), (0, 1), (1, 1), 1, False),  # stride 3 along h only
    ((1, 16, 20, 600), 16, (3, 3), (2, 2), (1, 1), (1, 1), 1, False),  # class rows of 300: a line per unit
]


@pytest.mark.parametrize("geometry", DX_STRIDED_GEOMETRIES, ids=str)
def test_conv_backward_dx_strided_against_torch_float64(lib, geometry, monkeypatch):
    from gpunet.ops import conv
    calls, real = [], conv._dx_strided
    monkeypatch.setattr(conv, "_dx_strided", lambda *a: calls.append(1) or real(*a))
    shape, o, k, stride, padding, dilation, groups, bias = geometry
    x, w, b, dy, refs = _conv_case_and_torch_grads(geometry, seed=13)
    dx, dw, db = _conv_grads(x, w, b, dy, stride, padding, dilation, groups)
    assert calls == [1]
    for got, ref in zip([dx, dw, db], refs):
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=2e-6 * ref.abs().max().item())


# stride 1, fewer than 8 input channels per group: (x shape, out, kernel, padding, dilation, groups)
PIXEL_DW_GEOMETRIES = [
    ((64, 3, 32, 32), 16, (3, 3), (1, 1), (1, 1), 1),  # the small ResNet's stem: 8 x 3 blocks, 27 taps
    ((9, 1, 8, 8), 5, (3, 2), (1, 0), (1, 1), 1),  # 4 + 1 channels, 6 taps, a last chunk of 1 image
    ((3, 4, 9, 7), 6, (2, 2), (2, 1), (2, 3), 2),  # groups of 2 channels: 8 taps (3 + 3 + 2), dilated
    ((2, 7, 5, 6), 11, (1, 3), (0, 2), (1, 1), 1),  # 7 channels, 21 taps, outputs wider than the input
]


@pytest.mark.parametrize("geometry", PIXEL_DW_GEOMETRIES, ids=str)
def test_conv_weight_grad_over_pixel_vectors_against_torch_float64(lib, geometry, monkeypatch):
    """dW and db over vectors of output pixels (few input channels, stride
    1) against float64, the route taken, the same bits over 1-3 threads."""
    from gpunet.ops import conv
    shape, o, k, padding, dilation, groups = geometry
    rng = np.random.default_rng(16)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((o, shape[1] // groups, *k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    be = get_backend("cpu")
    y, ctx = conv.conv2d_forward(be, x, w, b, (1, 1), padding, dilation, groups)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    calls = []
    real = conv._weight_grad_pixels
    monkeypatch.setattr(conv, "_weight_grad_pixels", lambda *a: calls.append(1) or real(*a))
    before = host_threads.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            host_threads.set_num_threads(threads)
            runs.append(conv.conv2d_backward(be, ctx, dy))
    finally:
        host_threads.set_num_threads(before)
    assert calls == [1, 1, 1]
    for other in runs[1:]:
        for a, c in zip(runs[0][1:], other[1:]):
            np.testing.assert_array_equal(a, c)
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    torch.nn.functional.conv2d(xt, wt, bt, 1, padding, dilation, groups).backward(torch.tensor(dy, dtype=torch.float64))
    _, dw, db = runs[0]
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-5, atol=1e-4 * np.abs(wt.grad.numpy()).max())
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-5, atol=1e-4 * np.abs(bt.grad.numpy()).max())


def test_conv_backward_direct_is_bit_identical_across_host_thread_counts(lib):
    """The direct dx and dW (both the rows' and the padded channels-last form) over 1-3 threads."""
    from gpunet.ops import host_threads
    rng = np.random.default_rng(13)
    before = host_threads.get_num_threads()
    try:
        for c, groups in [(32, 1), (24, 3)]:
            x = rng.standard_normal((20, c, 10, 12)).astype(np.float32)
            w = rng.standard_normal((24, c // groups, 3, 3)).astype(np.float32)
            b = rng.standard_normal(24).astype(np.float32)
            dy = rng.standard_normal((20, 24, 10, 12)).astype(np.float32)
            out = []
            for threads in (1, 2, 3):
                host_threads.set_num_threads(threads)
                out.append(_conv_grads(x, w, b, dy, (1, 1), (1, 1), (1, 1), groups))
            for other in out[1:]:
                for a, r in zip(out[0], other):
                    np.testing.assert_array_equal(a, r)
    finally:
        host_threads.set_num_threads(before)


@pytest.mark.parametrize("stride,bias", [(1, True), (2, False), (2, True)])
def test_conv_forward_output_channel_vectors_same_bits_as_pixel_vectors(lib, stride, bias):
    """The loop with output channels in its vector lanes (16k channels per
    group) sums each output in the pixel-vector loops' order: computed in
    slices of 8 output channels (which those take), the same bits."""
    rng = np.random.default_rng(15)
    o = 64 if stride == 1 else 32
    x = rng.standard_normal((3, 24, 9, 10)).astype(np.float32)
    w = rng.standard_normal((o, 24, 3, 3)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    conv = functools.partial(_conv_forward, stride=(stride,) * 2, padding=(1, 1), dilation=(1, 1), groups=1)
    whole = conv(x, w, b)
    sliced = np.concatenate([conv(x, w[i:i + 8], None if b is None else b[i:i + 8]) for i in range(0, o, 8)], axis=1)
    np.testing.assert_array_equal(whole.view(np.uint32), sliced.view(np.uint32))


def test_conv_forward_direct_over_16_pixels_with_8_channels_at_stride_1(lib, monkeypatch):
    """The padded-row form of the direct loop (stride 1, 8+ channels per group)
    takes outputs of 16 pixels and more; the tile's keeps its 64."""
    from gpunet.ops import conv
    calls, real = [], conv._forward_direct
    monkeypatch.setattr(conv, "_forward_direct", lambda *a: calls.append(a[3].shape) or real(*a))
    rng = np.random.default_rng(14)
    for side, c, stride in [(4, 8, 1), (4, 7, 1), (3, 8, 1), (8, 8, 2), (16, 8, 2)]:  # 16, 16, 9, 16, 64 pixels
        x = rng.standard_normal((2, c, side, side)).astype(np.float32)
        _conv_forward(x, rng.standard_normal((4, c, 3, 3)).astype(np.float32), None, (stride,) * 2, (1, 1), (1, 1), 1)
    assert calls == [(4, 8, 3, 3), (4, 8, 3, 3)]


# ---------------------------------------------------------------- cross-entropy rows
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reduction,weighted", [("mean", False), ("sum", True), ("none", False)])
def test_cross_entropy_compiled_against_float64_and_numpy(lib, reduction, weighted, threads, monkeypatch):
    """The compiled rows (max and log-sum-exp in one read, the gradient in one
    pass) against the float64 loss and gradient, close to the NumPy path they
    replace and bit-identical across host thread counts; ignored rows give 0."""
    from gpunet import nn
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4000, 37)) * 4).astype(np.float32)  # two threads' worth
    t = rng.integers(0, 37, 4000)
    t[::7] = -100
    w = rng.uniform(0.5, 2, 37).astype(np.float32) if weighted else None

    def run(x, w):
        crit = nn.CrossEntropyLoss(weight=w, reduction=reduction).to(x.dtype)
        loss = crit(x, t)
        return np.asarray(loss, np.float64), crit.backward(np.ones_like(loss))
    calls = _spy_compiled(monkeypatch)
    before = host_threads.get_num_threads()
    host_threads.set_num_threads(threads)
    try:
        loss, dx = run(x, w)
    finally:
        host_threads.set_num_threads(before)
    calls = [c for c in calls if c.startswith("gpunet_cross_entropy")]  # (not the input scans)
    assert sorted(set(calls)) == ["gpunet_cross_entropy_grad_f32", "gpunet_cross_entropy_lse_f32"]
    assert len(calls) == 2 * threads
    ref_loss, ref_dx = run(x.astype(np.float64), None if w is None else w.astype(np.float64))
    scale = np.abs(ref_dx).max()
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(dx, ref_dx, rtol=0, atol=2e-6 * scale)
    assert not dx[::7].any()
    monkeypatch.setattr(hostlib, "load", lambda: None)  # the NumPy path
    np_loss, np_dx = run(x, w)
    np.testing.assert_allclose(loss, np_loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(dx, np_dx, rtol=0, atol=2e-6 * scale)
    if threads == 2:
        monkeypatch.undo()
        host_threads.set_num_threads(1)
        try:
            one = run(x, w)
        finally:
            host_threads.set_num_threads(before)
        np.testing.assert_array_equal(one[1], dx)


def test_cross_entropy_compiled_lse_of_nan_and_extreme_rows(lib):
    x = np.array([[0, 1, 2, 3], [np.nan, 0, 0, 0], [-1e30, 1e30, 0, 0], [88, 88, -104, 0]], np.float32)
    lse = np.empty((4, 2), np.float32)
    lib.gpunet_cross_entropy_lse_f32(x.ctypes.data, lse.ctypes.data, 4, 0, 4)
    assert np.isnan(lse[1]).all() or np.isnan(lse[1, 0])
    x64 = x.astype(np.float64)[[0, 2, 3]]
    m = x64.max(axis=1)
    np.testing.assert_allclose(lse[[0, 2, 3], 0], m)
    np.testing.assert_allclose(lse[[0, 2, 3], 1], np.log(np.exp(x64 - m[:, None]).sum(axis=1)), rtol=1e-6, atol=1e-7)
