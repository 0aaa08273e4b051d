"""Conv2d of float16 / bfloat16 on tensor cores (csrc/kernels/conv_tensor_core.cu):
forward, input gradient, weight gradient and bias gradient on the kernel
backends against the float32 reference (cpu, on the same rounded inputs),
with stride, padding, dilation, groups (depthwise too), sizes that are not
tile multiples, both cp.async and gathered operand loads; bad input."""
import numpy as np
import pytest

import gpunet
from gpunet import dtypes, testing
from gpunet.nn import Conv2d
from gpunet.ops import conv as conv_ops

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("conv_tc_forward", "conv_tc_dgrad", "conv_tc_wgrad")

HALF = [np.float16, dtypes.bfloat16]

# (N, C, H, W, O, kh, kw, stride, padding, dilation, groups, bias)
CASES = [
    # odd sizes, K = 27 (gathered weights, a partial k tile), bias
    (2, 3, 7, 9, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1, True),
    # stride 2 and uneven padding, groups: dgrad's stride predicates
    (1, 4, 9, 8, 6, 3, 3, (2, 2), (1, 0), (1, 1), 2, False),
    # depthwise, dilation (2, 1), strides (1, 2)
    (1, 6, 8, 7, 6, 3, 3, (1, 2), (2, 2), (2, 1), 6, True),
    # 1x1 with K = 16 and OH*OW = 16: cp.async for the forward's weights and wgrad's dy;
    # O = 72 and N*OH*OW = 80: two (partial) tiles of C each way, wgrad reduces over 3 k tiles
    (5, 16, 4, 4, 72, 1, 1, (1, 1), (0, 0), (1, 1), 1, True),
    # K = 48 over two k tiles (cp.async weights), a 3x2 kernel, stride and dilation together
    (1, 8, 11, 10, 10, 3, 2, (2, 1), (2, 1), (2, 2), 1, False),
]


def _case_id(c):
    n, ch, h, w, o, kh, kw, s, p, d, g, b = c
    return f"n{n}c{ch}x{h}x{w}o{o}k{kh}x{kw}s{s[0]}{s[1]}p{p[0]}{p[1]}d{d[0]}{d[1]}g{g}{'b' if b else ''}"


def _inputs(rng, case, dtype):
    n, c, h, w, o, kh, kw, _, _, _, groups, bias = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((o, c // groups, kh, kw)) / np.sqrt(c // groups * kh * kw)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if bias else None
    return x, wt, b


def _up(a):
    return None if a is None else np.asarray(a, dtype=np.float32)


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_conv_tensor_core_matches_float32_reference(kb, schedule, rng, case, dtype):
    x, w, b = _inputs(rng, case, dtype)
    stride, padding, dilation, groups = case[7:11]
    geo = (stride, padding, dilation, groups)
    y, ctx = conv_ops.conv2d_forward(kb, kb.asarray(x), kb.asarray(w), None if b is None else kb.asarray(b), *geo)
    assert ctx[0] == "tensor_core"
    assert y.dtype == np.dtype(dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = conv_ops.conv2d_backward(kb, ctx, kb.asarray(dy))

    cpu = gpunet.get_backend("cpu")  # the float32 reference on the same (rounded) inputs
    y_ref, ctx_ref = conv_ops.conv2d_forward(cpu, _up(x), _up(w), _up(b), *geo)
    dx_ref, dw_ref, db_ref = conv_ops.conv2d_backward(cpu, ctx_ref, _up(dy))

    n, c, _, _, o, kh, kw = case[:7]
    k_fwd = c // groups * kh * kw
    for name, got, ref, k in (("y", y, y_ref, k_fwd + 1), ("dx", dx, dx_ref, o // groups * kh * kw),
                              ("dw", dw, dw_ref, n * y.shape[2] * y.shape[3]),
                              ("db", db, db_ref, n * y.shape[2] * y.shape[3])):
        if ref is None:
            assert got is None, name
            continue
        assert got.dtype == np.dtype(dtype) and got.shape == ref.shape, name
        testing.assert_close(got, ref, n=k, name=name)  # tolerances of the half dtype for k-term sums


def test_conv2d_module_bfloat16_runs_tensor_cores(rng):
    """nn.Conv2d in bfloat16 on sim: forward and backward go through the
    tensor-core kernels and match the module in float32 on cpu."""
    conv = Conv2d(4, 6, 3, stride=2, padding=1, groups=2, device="sim", dtype=dtypes.bfloat16)
    ref = Conv2d(4, 6, 3, stride=2, padding=1, groups=2, device="cpu", dtype=np.float32)
    ref.weight.data[...] = np.asarray(gpunet.to_numpy(conv.weight.data), np.float32)
    ref.bias.data[...] = np.asarray(gpunet.to_numpy(conv.bias.data), np.float32)
    x = rng.standard_normal((2, 4, 7, 6)).astype(dtypes.bfloat16)
    with testing.expect_kernels("sim", list(KERNELS) + ["conv_tc_bias_grad"]):
        y = conv(gpunet.asarray(x, "sim"))
        dy = np.ones(y.shape, dtypes.bfloat16)
        dx = conv.backward(gpunet.asarray(dy, "sim"))
    y_ref = ref(np.asarray(x, np.float32))
    dx_ref = ref.backward(np.ones(y_ref.shape, np.float32))
    for got, want, n in ((y, y_ref, 19), (dx, dx_ref, 9 * 3), (conv.weight.grad, ref.weight.grad, 2 * 16),
                         (conv.bias.grad, ref.bias.grad, 2 * 16)):
        assert got.dtype == dtypes.bfloat16
        testing.assert_close(got, want, n=n)


@pytest.mark.no_kernels("bad input is refused before any launch")
def test_conv_tensor_core_bad_input(kb):
    k = kb.kernels
    x = kb.asarray(np.zeros((1, 4, 5, 5), np.float16))
    w = kb.asarray(np.zeros((6, 2, 3, 3), np.float16))
    y = kb.asarray(np.zeros((1, 6, 3, 3), np.float16))
    s = kb.stream()
    z = lambda *shape: kb.asarray(np.zeros(shape, np.float16))  # noqa: E731
    with pytest.raises(TypeError, match="'x'.*float16 or bfloat16"):
        k.conv_tc_forward(x.astype(np.float32), w.astype(np.float32), None, y.astype(np.float32),
                          1, 1, 0, 0, 1, 1, 2, s)
    with pytest.raises(TypeError, match="'w'"):
        k.conv_tc_forward(x, w.view(np.int16), None, y, 1, 1, 0, 0, 1, 1, 2, s)
    with pytest.raises(ValueError, match="'groups'"):
        k.conv_tc_forward(x, w, None, y, 1, 1, 0, 0, 1, 1, 3, s)
    with pytest.raises(ValueError, match="'w'.*expected shape"):
        k.conv_tc_forward(x, w, None, y, 1, 1, 0, 0, 1, 1, 1, s)
    with pytest.raises(ValueError, match="'y'.*expected shape"):
        k.conv_tc_forward(x, w, None, z(1, 6, 2, 3), 1, 1, 0, 0, 1, 1, 2, s)
    with pytest.raises(ValueError, match="'b'.*expected shape"):
        k.conv_tc_forward(x, w, z(5), y, 1, 1, 0, 0, 1, 1, 2, s)
    with pytest.raises(ValueError, match="'sh'"):
        k.conv_tc_forward(x, w, None, y, 0, 1, 0, 0, 1, 1, 2, s)
    with pytest.raises(ValueError, match="'y'.*overlap"):
        k.conv_tc_forward(x, w, None, x.reshape(-1)[:54].reshape(1, 6, 3, 3), 1, 1, 0, 0, 1, 1, 2, s)
    with pytest.raises(ValueError, match="'dy'.*expected shape"):
        k.conv_tc_dgrad(z(1, 3, 3, 3), w, x, 1, 1, 0, 0, 1, 1, 2, s)
    with pytest.raises(ValueError, match="'dweight'.*expected shape"):
        k.conv_tc_wgrad(x, y, z(6, 1, 3, 3), 1, 1, 0, 0, 1, 1, 2, s)
    with pytest.raises(ValueError, match="'db'.*expected shape"):
        k.conv_tc_bias_grad(y, z(5), s)


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=_case_id)
def test_conv_tensor_core_shared_memory_has_no_bank_conflicts(simcheck, rng, case):
    """The sim access profile: every shared-memory access of the three GEMM
    kernels (16-byte tile stores, cp.async landings, ldmatrix rows) is a full
    warp's 16-byte access, and each takes the conflict-free minimum of 4
    wavefronts (one per quarter-warp phase) with the padded 80-byte rows."""
    x, w, _ = _inputs(rng, case, np.float16)
    n, c, h, wd, o, kh, kw, (sh, sw), (ph, pw), (dh, dw), groups, _ = case
    oh, ow = conv_ops.out_size(h, kh, sh, ph, dh), conv_ops.out_size(wd, kw, sw, pw, dw)
    y = np.zeros((n, o, oh, ow), np.float16)
    win = (sh, sw, ph, pw, dh, dw, groups, 0)
    simcheck._profile(True)
    try:
        simcheck.conv_tc_forward(x, w, None, y, *win)
        simcheck.conv_tc_dgrad(y, w, np.empty_like(x), *win)
        simcheck.conv_tc_wgrad(x, y, np.empty_like(w), *win)
        records = simcheck._profile_records()
    finally:
        simcheck._profile(False)
    gemms = [r for r in records if r["kernel"].startswith("conv_tc_kernel")]
    assert len(gemms) == 3
    for cnt in gemms:
        for kind in ("load", "store"):
            requests = cnt[f"shared_{kind}_requests"]
            assert requests > 0 and cnt[f"shared_{kind}_wavefronts"] == 4 * requests, (kind, cnt)
