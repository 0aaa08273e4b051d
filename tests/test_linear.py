"""Linear: gradcheck, a naive loop, PyTorch, kernel parity, bad input, and the bias
kernels through the binding."""
import contextlib

import numpy as np
import pytest

import gpunet
from gpunet import nn, testing

from conftest import close, f32, misaligned, put

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("bias_add", "bias_grad")


def naive_linear(m, x):
    """One output at a time: y[n, o] = b[o] + sum_i x[n, i] w[o, i]."""
    w, b = m.weight.data, m.bias.data
    x2 = x.reshape(-1, x.shape[-1])
    y = np.array([[b[o] + sum(float(v) * float(w[o, i]) for i, v in enumerate(row)) for o in range(w.shape[0])]
                  for row in x2])
    return y.reshape(x.shape[:-1] + (w.shape[0],))


def _case(shape, out):
    # the longest reductions: over the input features, and over the rows for dW and db
    return testing.OpCase(f"Linear{shape}->{out}", lambda: nn.Linear(shape[-1], out),
                          lambda rng: (rng.standard_normal(shape),), n=max(shape[-1], int(np.prod(shape[:-1]))),
                          kernels=KERNELS, reference=naive_linear)


CASES = [_case(shape, out) for shape, out in [((4, 3), 2), ((2, 3, 7), 4), ((1, 1), 9), ((33, 17), 9), ((2, 5, 3), 9)]]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_op(case, device):
    """cpu: the naive loop and gradcheck; sim (every schedule), cuda, cupy: parity with float64 cpu."""
    testing.check_op(case, device)


def test_gradcheck_without_bias(rng):
    """(Without a bias no kernel runs on sim: the GEMMs are BLAS's, so cpu's check covers it.)"""
    m = nn.Linear(5, 1, bias=False).to(np.float64)
    res = gpunet.gradcheck(m, rng.standard_normal((1, 5)))
    assert res.checked > 0 and res.max_error < 1e-7


def test_default_init_bounds_follow_pytorch():
    m = nn.Linear(100, 50)
    bound = 1 / np.sqrt(100)
    assert m.weight.shape == (50, 100) and m.bias.shape == (50,)
    assert np.abs(m.weight.data).max() <= bound and np.abs(m.weight.data).max() > 0.9 * bound
    assert np.abs(m.bias.data).max() <= bound


def check_against_torch(rng, lead, n_in, n_out, bias):
    """Linear(n_in, n_out) on x (*lead, n_in): output and gradients as PyTorch's."""
    torch = pytest.importorskip("torch")
    ref = torch.nn.Linear(n_in, n_out, bias=bias)
    m = nn.Linear(n_in, n_out, bias=bias)
    m.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = rng.standard_normal(lead + (n_in,)).astype(np.float32)
    dy = rng.standard_normal(lead + (n_out,)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    testing.assert_close(m(x), yt.detach().numpy(), name="output")
    testing.assert_close(m.backward(dy), xt.grad.numpy(), name="grad_input")
    testing.assert_close(m.weight.grad, ref.weight.grad.numpy(), name="weight.grad")
    if bias:
        testing.assert_close(m.bias.grad, ref.bias.grad.numpy(), name="bias.grad")


@pytest.mark.parametrize("bias", [True, False])
def test_against_torch(bias, rng):
    check_against_torch(rng, (4,), 6, 3, bias)


def test_bad_input(rng):
    m = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"input: expected last dimension in_features=3, got shape \(4, 5\)"):
        m(rng.standard_normal((4, 5)).astype(np.float32))
    with pytest.raises(TypeError, match="input: expected dtype float32, got float64"):
        m(rng.standard_normal((4, 3)))
    with pytest.raises(TypeError, match="input: expected a numpy.ndarray"):
        m([[1.0, 2.0, 3.0]])
    bad = np.ones((2, 3), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="input: contains 1 NaN/Inf"):
        m(bad)
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 2)
    with pytest.raises(RuntimeError, match="no forward to differentiate"):
        nn.Linear(3, 2).backward(np.ones((1, 2), np.float32))


# ---------------------------------------------------------------- the bias kernels through the binding
BIAS_SHAPES = ((1, 1, 1), (3, 5, 1), (2, 3, 7), (4, 6, 16), (2, 3, 1025), (0, 4, 3))


@pytest.mark.parametrize("aligned", [True, False], ids=["float4", "scalar"])
@pytest.mark.parametrize("n,c,inner", BIAS_SHAPES, ids=str)
def test_bias_add(kb, schedule, n, c, inner, aligned):
    rng = np.random.default_rng(n * 100 + c * 10 + inner)
    y = f32(rng, (n, c, inner))
    b = f32(rng, (c,))
    yd = put(kb, y) if aligned else misaligned(kb, y)
    kb.kernels.bias_add(yd, put(kb, b), inner, kb.stream())
    close(gpunet.to_numpy(yd), y.astype(np.float64) + b[None, :, None].astype(np.float64))


def test_bias_add_linear_and_conv_layouts(kb):
    rng = np.random.default_rng(5)
    lin, conv, b = f32(rng, (8, 10)), f32(rng, (2, 10, 3, 5)), f32(rng, (10,))
    lin_d, conv_d = put(kb, lin), put(kb, conv)
    kb.kernels.bias_add(lin_d, put(kb, b), 1, kb.stream())
    kb.kernels.bias_add(conv_d, put(kb, b), 15, kb.stream())
    close(gpunet.to_numpy(lin_d), lin.astype(np.float64) + b)
    close(gpunet.to_numpy(conv_d), conv.astype(np.float64) + b[None, :, None, None])


# bias_grad's column kernel (inner <= 32: 32 / inner whole channels per block,
# the last block owning fewer; more rows than its 32 warps) and its
# per-channel kernel (inner > 32)
BIAS_GRAD_SHAPES = BIAS_SHAPES + ((64, 3, 300), (70, 45, 1), (33, 7, 5), (40, 3, 32), (5, 2, 33))


@pytest.mark.parametrize("n,c,inner", BIAS_GRAD_SHAPES, ids=str)
def test_bias_grad(kb, schedule, n, c, inner):
    rng = np.random.default_rng(n * 100 + c * 10 + inner + 1)
    dy = f32(rng, (n, c, inner))
    db = put(kb, np.full(c, np.nan, np.float32))
    kb.kernels.bias_grad(put(kb, dy), db, inner, kb.stream())
    close(gpunet.to_numpy(db), dy.astype(np.float64).sum(axis=(0, 2)), n=n * inner)


@pytest.mark.parametrize("inner", [1, 97])
def test_bias_grad_is_bitwise_deterministic(kb, inner):
    """Same bits on every run and, in the simulator, under every schedule."""
    dy = put(kb, f32(np.random.default_rng(6), (70, 5, inner)))
    results = []
    for order in (testing.SCHEDULES if kb.name == "sim" else (None,)) * 2:
        with testing.schedule(order) if order else contextlib.nullcontext():
            db = put(kb, np.zeros(5, np.float32))
            kb.kernels.bias_grad(dy, db, inner, kb.stream())
        results.append(gpunet.to_numpy(db).tobytes())
    assert len(set(results)) == 1


# ------------------------------------------------------------ the host GEMM (gpunet/ops/linear.py, host_ops.c)
@pytest.fixture
def host_gemm(monkeypatch):
    """Every 2-D float32 host product through the host GEMM, split over
    threads whatever its size; yields the list of (m, k, n) it ran."""
    from gpunet.ops import linear
    monkeypatch.setattr(linear, "HOST_GEMM_MIN_MACS", 0)
    monkeypatch.setattr(linear, "HOST_GEMM_MACS_PER_THREAD", 1)
    ran, run = [], linear._host_gemm

    def counted(lib, a, b, out, bias):
        ran.append((a.shape[0], a.shape[1], b.shape[1]))
        return run(lib, a, b, out, bias)
    monkeypatch.setattr(linear, "_host_gemm", counted)
    if gpunet.hostlib.load() is None:
        pytest.skip("no C compiler for the host loops")
    yield ran


def _operands(rng, m, k, n, a_transposed, b_transposed):
    """a (m, k) and b (k, n) in float32, each a transposed view where asked."""
    a = rng.standard_normal((k, m) if a_transposed else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if b_transposed else (k, n)).astype(np.float32)
    return a.T if a_transposed else a, b.T if b_transposed else b


# row counts around the 6-row blocks, column counts around the 64-column panels and their 16-lane vectors,
# sums of 0, 1 and around the 256-term chunks; a transposed A is packed 96 rows at a time for groups of up to 4
# panels: (203, 300, 330) has two whole packs and an 11-row one, a group of 4 panels and one of 2
GEMM_SHAPES = [(1, 7, 1), (5, 1, 17), (6, 256, 64), (7, 257, 63), (13, 600, 65), (64, 255, 130), (100, 0, 16),
               (37, 513, 200), (203, 300, 330)]


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
@pytest.mark.parametrize("a_t,b_t", [(False, False), (False, True), (True, False), (True, True)])
def test_host_gemm_against_float64(host_gemm, rng, m, k, n, a_t, b_t):
    """Each element within its sum's rounding of the float64 product: about
    256 + K/256 roundings in sequence (chunks of 256 terms added in order),
    bounded by eps * sum |a b| each."""
    from gpunet.ops import linear
    a, b = _operands(rng, m, k, n, a_t, b_t)
    bias = rng.standard_normal(n).astype(np.float32) if (m + n) % 2 else None
    y = linear.matmul(gpunet.get_backend("cpu"), a, b, bias=bias)
    assert host_gemm == [(m, k, n)] and y.dtype == np.float32 and y.shape == (m, n)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    extra = 0 if bias is None else bias.astype(np.float64)
    bound = (min(k, 256) + k // 256 + 2) * np.finfo(np.float32).eps * (np.abs(a64) @ np.abs(b64) + np.abs(extra))
    assert (np.abs(y - (a64 @ b64 + extra)) <= bound).all()


def test_host_gemm_does_not_depend_on_the_thread_count(host_gemm, rng):
    """Every element is one tile's sum in a fixed order: the same bits on 1,
    2 and 3 threads (panels split, rows split)."""
    from gpunet.ops import host_threads, linear
    be = gpunet.get_backend("cpu")
    for m, k, n, a_t in [(50, 300, 256, False), (50, 300, 200, False), (7, 40, 9, False), (203, 300, 330, True)]:
        a, b = _operands(rng, m, k, n, a_t, True)
        runs, before = [], host_threads.get_num_threads()
        try:
            for threads in (1, 2, 3):
                host_threads.set_num_threads(threads)
                runs.append(linear.matmul(be, a, b))
        finally:
            host_threads.set_num_threads(before)
        assert all(np.array_equal(runs[0], r) for r in runs[1:]), (m, k, n)


def test_host_gemm_strided_a(host_gemm, rng):
    """An A strided both ways (every other row, every third column) is packed
    like a transposed one: within the float64 product's bound, and the same
    bits as its contiguous copy's product (the sums' order does not depend
    on the layout)."""
    from gpunet.ops import linear
    be = gpunet.get_backend("cpu")
    a = rng.standard_normal((2 * 101, 3 * 270)).astype(np.float32)[::2, ::3]
    b = rng.standard_normal((270, 70)).astype(np.float32)
    y = linear.matmul(be, a, b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    bound = (256 + 270 // 256 + 2) * np.finfo(np.float32).eps * (np.abs(a64) @ np.abs(b64))
    assert (np.abs(y - a64 @ b64) <= bound).all()
    np.testing.assert_array_equal(y, linear.matmul(be, np.ascontiguousarray(a), b))
    assert host_gemm == [(101, 270, 70)] * 2


def test_host_gemm_transposed_a_with_a_long_sum(host_gemm, rng):
    """K = 100000: the packed panels of a transposed A's group of 4 would
    pass 16 MiB, so fewer share a packed block; within the float64 bound."""
    from gpunet.ops import linear
    m, k, n = 7, 100_000, 200
    a, b = _operands(rng, m, k, n, True, False)
    y = linear.matmul(gpunet.get_backend("cpu"), a, b)
    assert host_gemm == [(m, k, n)]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    bound = (256 + k // 256 + 2) * np.finfo(np.float32).eps * (np.abs(a64) @ np.abs(b64))
    assert (np.abs(y - a64 @ b64) <= bound).all()


def test_host_gemm_writes_only_its_output(host_gemm, rng):
    """out= a column slice of a wider array: the product lands there and its
    neighbours keep their values."""
    from gpunet.ops import linear
    a, b = _operands(rng, 20, 300, 70, False, False)
    wide = np.full((20, 100), 7.0, np.float32)
    y = linear.matmul(gpunet.get_backend("cpu"), a, b, out=wide[:, 10:80])
    assert host_gemm == [(20, 300, 70)] and y.base is wide
    np.testing.assert_allclose(wide[:, 10:80], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    assert (wide[:, :10] == 7).all() and (wide[:, 80:] == 7).all()


def test_host_gemm_leaves_other_products_to_numpy(host_gemm, rng):
    """float64, batched (3-D) operands, an output that overlaps an operand:
    NumPy's matmul, with its answers."""
    from gpunet.ops import linear
    be = gpunet.get_backend("cpu")
    a, b = rng.standard_normal((8, 9)), rng.standard_normal((9, 4))
    np.testing.assert_array_equal(linear.matmul(be, a, b), a @ b)
    a3, b3 = (rng.standard_normal(s).astype(np.float32) for s in ((2, 8, 9), (2, 9, 4)))
    np.testing.assert_array_equal(linear.matmul(be, a3, b3), a3 @ b3)
    buf = rng.standard_normal((9, 9)).astype(np.float32)
    expected = buf[:, :4] @ buf[:4, :4]
    np.testing.assert_array_equal(linear.matmul(be, buf[:, :4], buf[:4, :4], out=buf[:, 5:9]), expected)
    assert host_gemm == []


@pytest.mark.parametrize("bias", [True, False])
def test_against_torch_through_the_host_gemm(host_gemm, bias, rng):
    """Linear's forward (the bias added as each sum starts) and backward
    (dx, dW) on the host GEMM, against PyTorch."""
    check_against_torch(rng, (3, 11), 70, 130, bias)
    assert host_gemm == [(33, 70, 130), (33, 130, 70), (130, 33, 70)]  # forward, dx, dW
