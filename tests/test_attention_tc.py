"""FlashAttention-2 on tensor cores (csrc/kernels/attention_tc.cu, the
attention_tc family; test names contain tensor_core) through
gpunet's attention API: float16/bfloat16 q, k, v with a head dim that is a
multiple of 8 up to 128 and no additive mask take it on the kernel backends
(instances 16, 32, 64, 128; 8 and 40 run zero-padded in the 16 and 64 ones).
Forward and backward against
the float32 cpu reference on the same (rounded) inputs, causal or not, ragged
lengths (not multiples of the 64-row tiles), several batch entries and heads,
under the three thread schedules; the race checker runs the same tests
(GPUNET_SIM_RACECHECK=1); the sequence-4,096 test measures what the forward
and backward allocate; examples/transformer_sort.py's --quick model (head dim
8) in bfloat16 on sim trains through these kernels."""
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import gpunet
from conftest import require
from gpunet import dtypes, nn, testing
from test_examples import load_example

KERNELS = ("attention_tc_forward", "attention_tc_backward")
HALF = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


@pytest.fixture(params=["sim", "cuda"])
def device(request):
    """The kernel backends ("sim" in the ids: the race checker's run selects
    these tests with -k sim); cuda is skipped where there is no GPU."""
    require(request.param)
    return request.param


def tolerance(dtype, n):
    """testing.tolerances for reductions of n terms, plus two roundings to the
    storage type inside the kernels: P (forward, and dV) and dS (dQ, dK) enter
    their products as 16-bit values, as in FlashAttention."""
    return testing.tolerances(dtype, n)[0] + 2 * dtypes.eps(dtype)


def sdpa(device, dtype, q, k, v, dout, causal):
    """(out, dq, dk, dv) of ScaledDotProductAttention on `device` in `dtype`."""
    m = nn.ScaledDotProductAttention().to(device).to(dtype)
    out = m(*(m.backend.asarray(a.astype(dtype)) for a in (q, k, v)), is_causal=causal)
    grads = m.backward(m.backend.asarray(dout.astype(dtype)))
    return [gpunet.to_numpy(a).astype(np.float64) for a in (out, *grads)]


def check(device, dtype, shape_q, S, causal, seed=0):
    rng = np.random.default_rng(seed)
    *batch, L, D = shape_q
    t = HALF[dtype]
    # rounded to the half type first: both sides see the same inputs
    q, k, v = (rng.standard_normal(tuple(batch) + (n, D)).astype(t) for n in (L, S, S))
    dout = rng.standard_normal(tuple(batch) + (L, D)).astype(t)
    got = sdpa(device, dtype, q, k, v, dout, causal)
    ref = sdpa("cpu", np.float32, q, k, v, dout, causal)
    tol = tolerance(t, max(L, S, D))
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * np.abs(r).max(), err_msg=f"{name} ({dtype}, D={D})")


@pytest.mark.parametrize("dtype", sorted(HALF))
@pytest.mark.parametrize("D", [8, 16, 32, 40, 64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_tensor_core_attention_matches_float32(device, schedule, dtype, D, causal):
    # L, S not multiples of 64; S spans several key tiles, L several backward query tiles
    check(device, dtype, (2, 1, 45, D), 150 if not causal else 45, causal)


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_tensor_core_attention_causal_rectangular(device, schedule, dtype):
    """Causal with L != S (torch's top-left tril) and a batch of 2 x 3 heads;
    with L > S the last queries see every key, with L < S keys past L are
    never seen (their dK, dV are 0)."""
    check(device, dtype, (2, 3, 70, 64), 20, True, seed=1)
    check(device, dtype, (1, 2, 20, 64), 90, True, seed=2)


def test_tensor_core_attention_functional_bfloat16(device):
    """F.scaled_dot_product_attention on bf16 arrays runs the kernel."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((2, 33, 64)).astype(ml_dtypes.bfloat16) for _ in range(3))
    with testing.expect_kernels(device, ("attention_tc_forward",)):
        out = gpunet.functional.scaled_dot_product_attention(q, k, v, is_causal=True, device=device)
    assert out.dtype == HALF["bfloat16"]
    ref = gpunet.functional.scaled_dot_product_attention(*(a.astype(np.float32) for a in (q, k, v)), is_causal=True)
    tol = tolerance(HALF["bfloat16"], 64)
    np.testing.assert_allclose(gpunet.to_numpy(out).astype(np.float32), ref, rtol=tol, atol=tol)


@pytest.mark.no_kernels("the bindings refuse before any launch")
def test_tensor_core_attention_bad_arguments(device):
    kernels = gpunet.get_backend(device).kernels
    q = np.zeros((1, 8, 64), np.float16)
    lse = np.zeros((1, 8), np.float32)
    for d in (12, 136):
        with pytest.raises(ValueError, match=f"head dim must be a multiple of 8 from 8 to 128, got {d}"):
            qd = np.zeros((1, 8, d), np.float16)
            kernels.attention_tc_forward(qd, qd, qd, False, 1.0, qd.copy(), lse, 0)
    with pytest.raises(TypeError, match="argument 'k'"):
        kernels.attention_tc_forward(q, q.view(np.int16), q, False, 1.0, q.copy(), lse, 0)
    with pytest.raises(ValueError, match="argument 'k': .*16-byte aligned"):
        offset = np.zeros(8 * 64 + 1, np.float16)[1:].reshape(1, 8, 64)
        kernels.attention_tc_forward(q, offset, q, False, 1.0, q.copy(), lse, 0)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        f = np.zeros((1, 8, 64), np.float32)
        kernels.attention_tc_forward(f, f, f, False, 1.0, f.copy(), lse, 0)


@pytest.mark.slow  # about 100 s in the simulator
@pytest.mark.parametrize("device", ["sim"])  # tracemalloc sees host (NumPy) memory only
def test_tensor_core_attention_memory_is_linear_in_sequence(device):
    """Sequence 4,096, head dim 64, bf16, causal, one batch entry and head:
    everything forward and backward allocate (measured by tracemalloc: NumPy
    reports its buffers) stays within a small multiple of seq·d·4 bytes,
    while one seq × seq float32 matrix alone would be 64 MiB."""
    n, d = 4096, 64
    rng = np.random.default_rng(4)
    q, k, v, dout = (rng.standard_normal((1, n, d)).astype(ml_dtypes.bfloat16) for _ in range(4))
    m = nn.ScaledDotProductAttention().to(device).to("bfloat16")
    tracemalloc.start()
    try:
        out = m(q, k, v, is_causal=True)
        dq, dk, dv = m.backward(dout)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 16 * n * d * 4, f"peak {peak} B, more than 16·seq·d·4 = {16 * n * d * 4} B"
    assert peak < n * n * 4 // 16
    for a in (out, dq, dk, dv):
        assert np.isfinite(gpunet.to_numpy(a).astype(np.float32)).all()


@pytest.mark.parametrize("D", [8, 16, 32, 64, 128])
def test_tensor_core_attention_forward_has_no_bank_conflicts(simcheck, D):
    """The access profile of the forward kernel: its shared loads are all
    ldmatrix rows and its shared stores all cp.async chunks, 16 bytes a lane,
    so a conflict-free request takes exactly 4 wavefronts (one per
    quarter-warp phase); the padded row stride and the cp.async lane mapping
    must give exactly that at every instance (8: the zero-filled columns of
    the 16 instance are stored too)."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 100, D)).astype(np.float16) for _ in range(3))
    out, lse = np.zeros_like(q), np.zeros((1, 100), np.float32)
    simcheck._profile(True)
    try:
        simcheck.attention_tc_forward(q, k, v, True, D ** -0.5, out, lse, 0)
    finally:
        records = simcheck._profile_records()
        simcheck._profile(False)
    (r,) = [r for r in records if "attn_tc_forward_kernel" in r["kernel"]]
    assert r["shared_load_requests"] > 0 and r["shared_store_requests"] > 0
    assert r["shared_load_wavefronts"] == 4 * r["shared_load_requests"]
    assert r["shared_store_wavefronts"] == 4 * r["shared_store_requests"]


def test_tensor_core_attention_runs_transformer_sort_bfloat16(monkeypatch):
    """examples/transformer_sort.py --dtype bfloat16 --device sim --quick runs its
    attention on these kernels: its main with the --quick model (6 digits, dim
    32, 4 heads: head dim 8, no mask) trained one step on 16 sequences under
    bf16 autocast (the --quick data sizes would take minutes on sim). Not a
    "sim"-parametrised test, so the race checker's run (-k sim) leaves it out:
    the kernels it reaches are race-checked by the parity tests above, and the
    whole model under the checker takes over a minute. The model's
    GELU(approximate="tanh") runs as float32 array code in half (documented)."""
    device = "sim"
    require(device)
    example = load_example("transformer_sort")
    sequences = example.digit_sequences
    monkeypatch.setattr(example, "digit_sequences", lambda n, *args, **kw: sequences(min(n, 16), *args, **kw))
    with testing.expect_kernels(device, KERNELS, fallbacks=("gelu",)) as use:
        result = example.main(device, length=6, train_size=64, epochs=1, dim=32, heads=4, dtype="bfloat16")
    assert use.calls["attention_tc_forward"] >= 2 * 2 and use.calls["attention_tc_backward"] >= 2
    assert 0 <= result["token_accuracy"] <= 1
