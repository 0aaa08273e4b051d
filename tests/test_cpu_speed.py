"""The cpu backend's fast float32 array paths (issue 20) against float64
references: GELU's vectorised Phi, measured in ulps over a dense sweep."""
import numpy as np
import pytest

from gpunet.ops import activation as act


def _ulps(got, ref):
    """|got - ref| in units of the float32 spacing at ref."""
    return np.abs(got.astype(np.float64) - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)


def test_float32_phi_within_a_few_ulps_over_a_dense_sweep():
    # -13.2 is about where Phi leaves float32's normal range
    x = np.linspace(-13.2, 14, 1_000_003, dtype=np.float32)
    cdf_ref = act.normal_cdf(np, x.astype(np.float64))
    cdf = np.concatenate([c.copy() for _, c in act._phi_blocks(x)])
    normal = cdf_ref > np.finfo(np.float32).tiny
    assert _ulps(cdf, cdf_ref)[normal].max() <= 9


def test_float32_gelu_and_derivative_match_float64(host_path):
    x = np.linspace(-13, 14, 200_001, dtype=np.float32)
    x64 = x.astype(np.float64)
    cdf = act.normal_cdf(np, x64)
    pdf = np.exp(-0.5 * x64 * x64) / np.sqrt(2 * np.pi)
    y = act.FORWARD["gelu"](np, x)
    d = act.DERIVATIVE["gelu"](np, x, y)
    assert y.dtype == d.dtype == np.float32
    y_ref = x64 * cdf
    big = np.abs(y_ref) > np.finfo(np.float32).tiny
    assert _ulps(y, y_ref)[big].max() <= 11
    # the derivative cdf + x·pdf crosses 0 near -0.75: error relative to its
    # terms' size, where y/x (its Phi) is still a normal float
    err = np.abs(d - (cdf + x64 * pdf)) / (cdf + np.abs(x64) * pdf)
    assert err[x > -12.5].max() <= 12 * 2.0 ** -24
    assert np.abs(d - (cdf + x64 * pdf)).max() <= 1e-37 + 12 * 2.0 ** -24 * np.abs(d).max()
    # without the forward's output (autograd keeps the input only) the same values
    np.testing.assert_array_equal(act.DERIVATIVE["gelu"](np, x, None), d)
    # tiny and subnormal x: Phi rounds to 0.5 (y/x would be inexact there)
    t = np.array([1e-45, -1e-45, 1e-39, -3e-39, 1e-30], np.float32)
    np.testing.assert_array_equal(act.DERIVATIVE["gelu"](np, t, act.FORWARD["gelu"](np, t)), 0.5)


@pytest.mark.parametrize("shape", [(), (0,), (5,), ((1 << 15) + 3,), (3, 40000)])
def test_float32_gelu_blocks_shapes_and_layouts(shape, host_path):
    rng = np.random.default_rng(0)
    x = np.asarray(rng.standard_normal(shape) * 3, np.float32)
    for xin in (x, np.asfortranarray(x), x.T):
        y = act.FORWARD["gelu"](np, xin)
        assert y.shape == xin.shape and y.dtype == np.float32
        ref = xin.astype(np.float64) * act.normal_cdf(np, xin.astype(np.float64))
        np.testing.assert_allclose(y, ref, rtol=2e-6, atol=1e-30)


def test_float32_gelu_special_values(host_path):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 40.0, -40.0], np.float32)
    with np.errstate(invalid="ignore"):
        y = act.FORWARD["gelu"](np, x)
        d = act.DERIVATIVE["gelu"](np, x, y)
    np.testing.assert_array_equal(y[[0, 3, 4, 5, 6]], [np.inf, 0, 0, 40, 0])
    assert np.isnan(y[2]) and np.isnan(d[2])
    np.testing.assert_array_equal(d[3:], [0.5, 0.5, 1, 0])


@pytest.mark.parametrize("amsgrad,weight_decay,decoupled", [(False, 0.0, False), (True, 0.1, False),
                                                            (False, 0.1, True)])
def test_blockwise_adam_equals_the_whole_array_formula(amsgrad, weight_decay, decoupled, host_path):
    """The host Adam update works through cache-sized blocks; a tensor spanning
    several blocks (and a transposed gradient, updated whole) must get exactly
    the per-tensor formula's result."""
    from gpunet.backend import get_backend
    from gpunet.ops import optim
    be = get_backend("cpu")
    rng = np.random.default_rng(1)
    shapes = [(3, optim._BLOCK + 7), (5,), (40, 30)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads[2] = np.ascontiguousarray(grads[2].T).T  # not C-contiguous
    m = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    v = [rng.random(s).astype(np.float32) for s in shapes]
    vmax = [a + rng.random(a.shape).astype(np.float32) * (i % 2) for i, a in enumerate(v)] if amsgrad else None
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay, decoupled=decoupled)
    expect = []
    for i, (p, g, mi, vi) in enumerate(zip(params, grads, m, v)):
        p, mi, vi = p.copy(), mi.copy(), vi.copy()
        step_size, bc2 = optim.adam_scalars(3, kw["lr"], kw["beta1"], kw["beta2"])
        if decoupled:
            p *= 1 - kw["lr"] * weight_decay
        elif weight_decay:
            g = g + weight_decay * p
        mi += (1 - kw["beta1"]) * (g - mi)
        vi *= kw["beta2"]
        vi += (1 - kw["beta2"]) * g * g
        if amsgrad:
            vi = np.maximum(vmax[i], vi)
        p -= step_size * (mi / (np.sqrt(vi) / bc2 + kw["eps"]))
        expect.append((p, mi, vi))
    optim.adam(be, params, grads, m, v, [3] * 3, max_exp_avg_sqs=vmax, **kw)
    for i, (p, mi, vi) in enumerate(expect):
        np.testing.assert_array_equal(params[i], p)
        np.testing.assert_array_equal(m[i], mi)
        np.testing.assert_array_equal(vmax[i] if amsgrad else v[i], vi)


# ---------------------------------------------------------------- host threads
@pytest.fixture
def host_threads():
    from gpunet.ops import host_threads as ht
    before = ht.get_num_threads()
    yield ht
    ht.set_num_threads(before)


def test_host_thread_ranges_cover_once_and_errors_surface(host_threads):
    host_threads.set_num_threads(3)
    for n, unit in [(0, 1), (1, 1), (10, 1 << 16), (7, 1 << 20), (1 << 20, 1)]:
        parts = host_threads.ranges(n, unit)
        assert parts[0][0] == 0 and parts[-1][1] == n and len(parts) <= 3
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert len(host_threads.ranges(3, 1 << 20)) == 3
    assert host_threads.run(lambda lo, hi: (lo, hi), [(0, 2), (2, 5), (5, 6)]) == [(0, 2), (2, 5), (5, 6)]
    assert host_threads.map_chunks(lambda c: 2 * c, list(range(7)), 1 << 20) == list(range(0, 14, 2))

    def boom(lo, hi):
        if lo:
            raise KeyError("part")
    with pytest.raises(KeyError, match="part"):
        host_threads.run(boom, [(0, 1), (1, 2)])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n: expected an int >= 1"):
            host_threads.set_num_threads(bad)


def test_host_thread_count_changes_no_bit(host_threads, host_path):
    """GELU, softmax, layer and batch norm, max and average pooling give the
    same bits on 1, 2 and 3 threads (layer norm's rows are 5 blocks: its
    weight gradient sums them in order)."""
    from gpunet.backend import get_backend
    from gpunet.ops import norm, pool, softmax
    be = get_backend("cpu")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2100, 517), dtype=np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    w, b = rng.standard_normal((2, 517), dtype=np.float32)

    xb = rng.standard_normal((160, 8, 32, 32), dtype=np.float32)  # 5 chunks of images
    dyb = rng.standard_normal(xb.shape, dtype=np.float32)

    xp_ = np.round(rng.standard_normal((8, 16, 40, 40), dtype=np.float32) * 4) / 4  # ties
    xp_[0, 0, :3, :3] = np.nan

    def pools():
        out = []
        for k, s, p in [(3, 2, 1), (2, 2, 0)]:
            for fwd, bwd in [(pool.maxpool2d_forward, pool.maxpool2d_backward),
                             (pool.avgpool2d_forward, pool.avgpool2d_backward)]:
                y, ctx = fwd(be, xp_, (k, k), (s, s), (p, p))
                out += [y, bwd(be, ctx, np.cos(y))]
        return out

    def run():
        y = act.FORWARD["gelu"](np, x)
        ln, ctx = norm.layer_norm_forward(be, x, w, b, 517, 1e-5)
        mean, var, _ = norm.batch_norm_stats(be, xb)
        bn, bctx = norm.batch_norm_forward(be, xb, w[:8], b[:8], mean, var, 1e-5)
        return [y, act.DERIVATIVE["gelu"](np, x, y), softmax.softmax_forward(be, x, 1, 0.7)[0],
                softmax.softmax_forward(be, x, -1)[0], ln, *norm.layer_norm_backward(be, ctx, dy),
                mean, var, bn, *norm.batch_norm_backward(be, bctx, dyb, True), *pools()]
    host_threads.set_num_threads(1)
    one = run()
    for threads in (2, 3):
        host_threads.set_num_threads(threads)
        for a, c in zip(one, run()):
            np.testing.assert_array_equal(a, c)
    assert len(host_threads.ranges(xp_.shape[0] * xp_.shape[1], 40 * 40)) == 3
    # and the threaded softmax is still softmax (float64 reference)
    x64 = x.astype(np.float64) * 0.7
    ref = np.exp(x64 - x64.max(1, keepdims=True))
    np.testing.assert_allclose(one[2], ref / ref.sum(1, keepdims=True), rtol=1e-5)


def test_batch_norm_statistics_within_an_ulp():
    """float32 batch statistics come out within an ulp of the float64 ones
    (summed across images in float64), also for a mean far from 0."""
    from gpunet.backend import get_backend
    from gpunet.ops import norm
    x = (np.random.default_rng(0).standard_normal((256, 4, 32, 32)) * 0.5 + 3).astype(np.float32)
    mean, var, n = norm.batch_norm_stats(get_backend("cpu"), x)
    x64 = x.astype(np.float64)
    assert n == 256 * 32 * 32 and mean.dtype == var.dtype == np.float32
    assert _ulps(mean, x64.mean(axis=(0, 2, 3))).max() <= 1
    assert _ulps(var, x64.var(axis=(0, 2, 3))).max() <= 1


def test_threaded_adam_same_bits_as_one_thread(host_threads, host_path):
    """The host Adam update shares its blocks (of every tensor) out over the
    threads: the same bits as on one thread."""
    from gpunet.backend import get_backend
    from gpunet.ops import optim
    rng = np.random.default_rng(5)
    shapes = [(700, 300), (17,), (3, 1 << 16)]

    def step():
        params = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
        grads, m, v = ([rng.standard_normal(s, dtype=np.float32) for s in shapes] for _ in range(3))
        v = [np.abs(a) for a in v]
        optim.adam(get_backend("cpu"), params, grads, m, v, [3] * len(shapes), lr=1e-2, beta1=0.9, beta2=0.999,
                   eps=1e-8, weight_decay=0.1, decoupled=True)
        return params + m + v
    host_threads.set_num_threads(1)
    rng = np.random.default_rng(5)
    one = step()
    host_threads.set_num_threads(3)
    rng = np.random.default_rng(5)
    for a, b in zip(one, step()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape,k", [((3, 4, 8, 6), (2, 2)), ((2, 3, 9, 4), (3, 1)), ((2, 2, 7, 7), (2, 2))])
def test_tiling_maxpool_backward_writes_what_the_general_path_adds(monkeypatch, shape, k):
    """Windows that tile the input (stride = kernel) write dx directly; the
    same values as the zero-and-add path, non-finite gradients and ties too
    ((2, 2) on 7x7 leaves a row and column out: the general path)."""
    from gpunet.backend import get_backend
    from gpunet.ops import pool
    be = get_backend("cpu")
    rng = np.random.default_rng(7)
    x = np.round(rng.standard_normal(shape) * 2).astype(np.float32)  # ties
    y, ctx = pool.maxpool2d_forward(be, x, k, k, (0, 0))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy.reshape(-1)[:3] = [np.inf, np.nan, -np.inf]
    fast = pool.maxpool2d_backward(be, ctx, dy)
    assert pool._tiles(ctx[3], shape) == (shape[2] % k[0] == 0 and shape[3] % k[1] == 0)
    monkeypatch.setattr(pool, "_tiles", lambda win, x_shape: False)
    np.testing.assert_array_equal(fast, pool.maxpool2d_backward(be, ctx, dy))


def _gelu_host(x):
    return act.FORWARD["gelu"](np, x)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_host_threads_work_in_a_forked_child(host_threads):
    """A child forked after the pool started (a data-loader worker) gets a
    fresh pool instead of waiting on the parent's threads."""
    import multiprocessing as mp
    host_threads.set_num_threads(2)
    x = np.linspace(-4, 4, 1 << 18, dtype=np.float32)
    expected = act.FORWARD["gelu"](np, x)  # starts the pool here
    with mp.get_context("fork").Pool(1) as p:
        got = p.apply_async(_gelu_host, (x,)).get(timeout=30)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("beta", [1.0, 0.5, -2.0])
def test_host_softmax_with_and_without_the_shift(beta):
    """With beta = 1 row blocks within |x| <= 60 skip the max shift, the others
    keep it (e^x would overflow or underflow there); beta != 1 always shifts:
    all agree with float64, a NaN row stays NaN and its neighbours are
    untouched."""
    from gpunet.ops import softmax
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3000, 100)) * 8).astype(np.float32)
    x[2900, 7] = 300.0 / abs(beta)   # one row block needs the shift
    x[2950, :] -= 500.0 / abs(beta)  # every e^{beta·x} of this row underflows without it
    x[10, 3] = np.nan
    got = softmax._softmax_rows_host(x, beta)
    z = x.astype(np.float64) * beta
    ref = np.exp(z - np.nanmax(z, axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    assert np.isnan(got[10]).all() and not np.isnan(np.delete(got, 10, axis=0)).any()
    np.testing.assert_allclose(np.delete(got, 10, axis=0), np.delete(ref, 10, axis=0), rtol=1e-6, atol=1e-9)


def _blas_pool():
    """gpunet.ops.host_threads after the first host backend adopted OpenBLAS's jobs (skips where it cannot)."""
    import gpunet
    from gpunet.ops import host_threads
    gpunet.backend.get_backend("cpu")
    if not host_threads.adopt_blas_jobs():
        pytest.skip("NumPy's BLAS is not an OpenBLAS with its own threads and the jobs callback (0.3.27+), "
                    "or the host loops are not compiled")
    return host_threads


def test_blas_jobs_run_on_the_pool_which_does_not_spin_after_a_call():
    """OpenBLAS's own threads busy-wait about 0.1 s of a core after each call;
    the pool's workers sleep after 2 ms. (Raising OpenBLAS's thread count
    starts threads of its own, which spin once before they sleep for good:
    the first sleep lets them.)"""
    import time
    from threadpoolctl import threadpool_limits
    ht = _blas_pool()
    a = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    with threadpool_limits(2, user_api="blas"):
        time.sleep(0.2)
        calls = ht.pool_stats()[0]
        got = a @ a
        assert ht.pool_stats()[0] > calls  # the threaded GEMM ran its jobs on the pool
        assert ht.pool_stats()[1] >= 1
        busy = time.process_time()
        time.sleep(0.3)
        busy = time.process_time() - busy
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(got, a64 @ a64, rtol=0, atol=1e-4 * np.abs(a64 @ a64).max())
    assert busy < 0.03, f"{busy * 1e3:.1f} ms of CPU while the process slept after a GEMM"


def test_python_thread_parts_park_the_pools_spinning_workers():
    """host_threads.run hands parts to Python threads only after telling the
    compiled pool's workers, which spin 2 ms after a call, to sleep: they
    are asleep well within 1 ms (without the parking, 2 ms after their job).
    Three tries, so one stall of a busy machine does not fail it; without
    the parking every try fails."""
    import time
    from gpunet import hostlib
    from gpunet.ops import host_threads
    if host_threads.get_num_threads() < 2 or not host_threads.pool_ready():
        pytest.skip("needs the compiled pool and 2 host threads")
    x = np.ones(1 << 18, np.float32)
    y = np.empty_like(x)
    lib = hostlib.load()
    host_threads.run(lambda lo, hi: None, [(0, 1), (1, 2)])  # the Python threads' pool started
    tries = []
    for _ in range(3):
        for _ in range(5):  # the compiled pool's workers started, and just back from a call: spinning
            host_threads.run_compiled(lib.gpunet_relu_f32, [hostlib.ptr(x), hostlib.ptr(y)],
                                      host_threads.ranges(x.size))
        t0 = time.perf_counter()
        host_threads.run(lambda lo, hi: None, [(0, 1), (1, 2)])
        while host_threads.pool_stats()[2] < host_threads.pool_stats()[1] and time.perf_counter() - t0 < 1e-3:
            pass
        _, workers, asleep = host_threads.pool_stats()
        tries.append((workers, asleep))
        if asleep == workers >= 1:
            return
    pytest.fail(f"(workers, asleep) 1 ms after each try's parking: {tries}")


def _gemm_sum(seed):
    a = np.random.default_rng(seed).standard_normal((384, 384)).astype(np.float32)
    return float((a @ a).astype(np.float64).sum())


def test_blas_pool_with_several_callers_and_in_a_forked_child():
    """GEMMs from several threads at once (one pool call at a time) and in a
    forked child (no workers of the parent there) give the one-thread results."""
    import multiprocessing as mp
    from concurrent.futures import ThreadPoolExecutor
    from threadpoolctl import threadpool_limits
    _blas_pool()
    with threadpool_limits(1, user_api="blas"):
        expected = [_gemm_sum(s) for s in range(8)]
    with threadpool_limits(2, user_api="blas"):
        with ThreadPoolExecutor(4) as ex:
            assert list(ex.map(_gemm_sum, range(8))) == pytest.approx(expected, rel=1e-6)
        with mp.get_context("fork").Pool(1) as p:
            assert p.map(_gemm_sum, range(3), chunksize=1) == pytest.approx(expected[:3], rel=1e-6)


def test_compiled_loops_without_the_pool_give_the_same_bits(host_threads, monkeypatch):
    """Softmax rows split in 3 on the compiled pool, on run_compiled's
    fallback (no pool: the parts on the Python threads), and in float64."""
    from gpunet import hostlib
    from gpunet.ops import softmax
    ht, lib = host_threads, hostlib.load()
    if lib is None:
        pytest.skip("no C compiler here: the compiled host loops are not built")
    ht.set_num_threads(3)
    x = np.random.default_rng(3).standard_normal((600, 1000)).astype(np.float32)
    assert len(ht.ranges(600, 1000, ht.MIN_PER_EXP_THREAD)) == 3
    on_pool = softmax.softmax_rows_compiled(lib, x)[0]
    monkeypatch.setattr(ht, "_compiled_pool", lambda: None)
    np.testing.assert_array_equal(softmax.softmax_rows_compiled(lib, x)[0].view(np.uint32), on_pool.view(np.uint32))
    x64 = x.astype(np.float64)
    ref = np.exp(x64 - x64.max(1, keepdims=True))
    np.testing.assert_allclose(on_pool, ref / ref.sum(1, keepdims=True), rtol=2e-6, atol=1e-12)


def test_compiled_pool_calls_report_each_part(host_threads):
    """run_compiled's packed arguments, bounds and results: each part's own
    result, in order, for more parts than its per-thread buffer holds too,
    and the same from a thread of its own."""
    from concurrent.futures import ThreadPoolExecutor
    from gpunet import hostlib
    ht, lib = host_threads, hostlib.load()
    if lib is None:
        pytest.skip("no C compiler here: the compiled host loops are not built")
    for rows in (5, 300):
        x = np.ones((rows, 4), np.float32)
        bad = [1, rows - 2, rows - 1]
        x[bad, 2] = np.nan
        y = np.empty_like(x)
        args = (hostlib.ptr(x), hostlib.ptr(y), 4, 0x3F800000, 0, 0)
        parts = [(i, i + 1) for i in range(rows)]
        expected = [int(i in bad) for i in range(rows)]
        assert ht.run_compiled(lib.gpunet_softmax_range_f32, args, parts) == expected
        with ThreadPoolExecutor(1) as ex:
            assert ex.submit(ht.run_compiled, lib.gpunet_softmax_range_f32, args, parts).result() == expected
