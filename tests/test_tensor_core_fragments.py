"""The simulator's tensor-core primitives (csrc/common/mma.cuh on
csrc/sim/tensorcore.h) against NumPy: every register of ldmatrix x1/x2/x4,
plain and .trans, against the PTX ISA's fragment layout; mma.sync m16n8k16
for float16 and bfloat16 with its fragments built from the documented
layout, by ldmatrix on an n-major B and by ldmatrix.trans on a k-major B,
against a plain matrix product; cp.async landing at the wait that covers its
commit group (not at issue), zero-fill, uncommitted copies; and the race
checker seeing the copy's write at the wait. Kernels: csrc/kernels/testing.cu."""
import importlib

import ml_dtypes
import numpy as np
import pytest

from gpunet import testing

HALF = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@pytest.fixture
def sim():
    return importlib.import_module(testing.sim_module())


def expected_ldmatrix(src, rows, num, trans):
    """Registers (32, 4) of ldmatrix per the PTX ISA: lane i = 4g + t gets,
    from matrix j (the rows named by lanes 8j..8j+7), row g columns 2t, 2t+1
    (trans: column g rows 2t, 2t+1), the first in the low 16 bits."""
    bits = src.view(np.uint16).astype(np.uint32)
    out = np.zeros((32, 4), np.uint32)
    for lane in range(32):
        g, t = divmod(lane, 4)
        for j in range(num):
            m = bits[rows[8 * j:8 * j + 8]]  # matrix j, 8x8
            lo, hi = (m[2 * t, g], m[2 * t + 1, g]) if trans else (m[g, 2 * t], m[g, 2 * t + 1])
            out[lane, j] = lo | hi << 16
    return out


@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
def test_tensor_core_ldmatrix_layout(sim, schedule, num, trans):
    rng = np.random.default_rng(num + 10 * trans)
    src = rng.integers(-2 ** 15, 2 ** 15, size=(32, 8), dtype=np.int16)
    rows = rng.permutation(32).astype(np.int32)  # each lane names some row: addressing is per lane
    out = np.zeros((32, 4), np.int32)
    sim._tc_ldmatrix(src, rows, out, num, trans, 0)
    np.testing.assert_array_equal(out.view(np.uint32), expected_ldmatrix(src, rows, num, trans))


@pytest.mark.parametrize("dtype", sorted(HALF))
@pytest.mark.parametrize("mode", ["direct", "ldmatrix", "ldmatrix_trans"])
def test_tensor_core_mma_matches_matmul(sim, schedule, dtype, mode):
    rng = np.random.default_rng(7)
    t = HALF[dtype]
    a = rng.standard_normal((16, 16)).astype(t)
    b = rng.standard_normal((16, 8)).astype(t)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    d = np.full((16, 8), np.nan, np.float32)
    bits = (lambda x: x.view(np.int16)) if dtype == "bfloat16" else (lambda x: x)
    b_arg = np.ascontiguousarray(b.T) if mode == "ldmatrix" else b
    sim._tc_mma(bits(a), bits(b_arg), c, d, mode, 0)
    ref = a.astype(np.float64) @ b.astype(np.float64) + c
    # exact products, 16 float32 adds (a GPU's order and internal precision differ: same bound)
    rtol, atol = testing.tolerances(np.float32, n=17)
    np.testing.assert_allclose(d, ref, rtol=rtol, atol=atol)


def test_tensor_core_mma_accumulates_in_float32(sim):
    """Products of halves are exact and summed in float32: sixteen 2^-16
    terms survive next to 1 (a half accumulator would round each away)."""
    a = np.full((16, 16), 2.0 ** -8, np.float16)
    b = np.full((16, 8), 2.0 ** -8, np.float16)
    c = np.ones((16, 8), np.float32)
    d = np.zeros((16, 8), np.float32)
    sim._tc_mma(a, b, c, d, "direct", 0)
    np.testing.assert_array_equal(d, np.float32(1 + 2.0 ** -12))


def cp_async_expected(src):
    """Snapshots (4, 3, 32, 4) of the three slots per thread: before any
    wait nothing has landed; wait<1> lands group 0; wait<0> group 1 (odd
    threads zero-filled) but not the uncommitted third copy; commit + wait<0>
    lands it."""
    old = np.full((3, 32, 4), -1, np.float32)
    group1 = src[1].copy()
    group1[1::2] = 0
    snaps = np.stack([old.copy() for _ in range(4)])
    snaps[1:, 0] = src[0]
    snaps[2:, 1] = group1
    snaps[3, 2] = src[2]
    return snaps


def test_tensor_core_cp_async_lands_at_wait(sim, schedule):
    src = np.random.default_rng(3).standard_normal((3, 32, 4)).astype(np.float32)
    out = np.zeros((4, 3, 32, 4), np.float32)
    sim._tc_cp_async(src, out, False, 0)
    np.testing.assert_array_equal(out, cp_async_expected(src))


def test_tensor_core_cp_async_write_is_at_the_wait(simcheck, monkeypatch):
    """Under the race checker, reading a cp.async destination before the wait
    is a read of shared memory nothing has written (the copy writes at the
    wait); with the slots written first, the same program is clean."""
    src = np.ones((3, 32, 4), np.float32)
    out = np.zeros((4, 3, 32, 4), np.float32)
    simcheck._tc_cp_async(src, out, False, 0)
    np.testing.assert_array_equal(out, cp_async_expected(src))
    monkeypatch.setenv("CUDASIM_QUIET", "1")
    with pytest.raises(RuntimeError, match="read of uninitialized shared memory"):
        simcheck._tc_cp_async(src, out, True, 0)


def test_tensor_core_bad_arguments(sim):
    with pytest.raises(ValueError, match="argument 'num'"):
        sim._tc_ldmatrix(np.zeros((32, 8), np.int16), np.zeros(32, np.int32), np.zeros((32, 4), np.int32), 3, False, 0)
    with pytest.raises(ValueError, match="argument 'mode'"):
        sim._tc_mma(np.zeros((16, 16), np.float16), np.zeros((16, 8), np.float16), np.zeros((16, 8), np.float32),
                    np.zeros((16, 8), np.float32), "sideways", 0)
    with pytest.raises(TypeError, match="argument 'b'"):
        sim._tc_mma(np.zeros((16, 16), np.float16), np.zeros((16, 8), np.int16), np.zeros((16, 8), np.float32),
                    np.zeros((16, 8), np.float32), "direct", 0)
