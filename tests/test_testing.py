"""gpunet.testing itself: the tolerance rule is as documented and tight enough
to fail, and the kernel-use check fails when the kernels did not run."""
import numpy as np
import pytest

import gpunet
from gpunet import testing
from gpunet.ops import activation, softmax

eps32 = float(np.finfo(np.float32).eps)


def rule(n):
    """The documented rule, written out: the tests below must not trust the code under test."""
    return 16 * eps32 * np.sqrt(max(n, 16))


def test_tolerance_rule():
    assert testing.tolerances(np.float32) == (64 * eps32, 64 * eps32)
    assert testing.tolerances(np.float32, n=16) == testing.tolerances(np.float32)
    assert testing.tolerances(np.float32, n=1024) == (16 * eps32 * 32, 16 * eps32 * 32)
    assert testing.tolerances(np.float64)[0] == 64 * float(np.finfo(np.float64).eps)


@pytest.mark.parametrize("n", [1, 1000])
def test_parity_fails_just_past_the_rule(n, rng):
    """An error of twice the rule's tolerance fails; half of it passes."""
    x = rng.uniform(0.5, 2.0, 50).astype(np.float32)
    tol = rule(n)
    ok = x.astype(np.float64) * (1 + 0.5 * tol)
    testing.assert_close(ok, x, n=n)
    with pytest.raises(AssertionError, match="1 of 50 elements differ"):
        bad = ok.copy()
        bad[7] = x[7] * (1 + 2 * tol) + 2 * tol
        testing.assert_close(bad, x, n=n)


def _off_by(rel):
    """A softmax whose sim result is off by `rel` (relative): a kernel bug the size of rounding."""
    def forward(be, x):
        y, ctx = softmax.softmax_forward(be, x, -1)
        if be.name == "sim":
            y = y * np.float32(1 + rel)
        return y, ctx
    return forward


def test_parity_helpers_catch_an_error_a_few_times_the_rule(rng):
    x = rng.standard_normal((4, 9)).astype(np.float32)
    tol = rule(9)
    testing.compare_function(_off_by(0.1 * tol), None, (x,), n=9)
    with pytest.raises(AssertionError, match="on sim vs cpu: output"):
        testing.compare_function(_off_by(8 * tol), None, (x,), n=9)


def test_kernel_use_check_fails_without_kernels(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    sim = gpunet.get_backend("sim")
    with testing.expect_kernels("sim", ["softmax_forward"]) as use:
        softmax.softmax_forward(sim, x, -1)
    assert use.calls == {"softmax_forward": 1} and not use.fallbacks
    with pytest.raises(AssertionError, match="no kernel was called"):
        with testing.expect_kernels("sim"):
            softmax.softmax_forward(gpunet.get_backend("cpu"), x, -1)  # an array path on sim's arrays
    with pytest.raises(AssertionError, match=r"kernels \['softmax_backward'\] were not called"):
        with testing.expect_kernels("sim", ["softmax_forward", "softmax_backward"]):
            softmax.softmax_forward(sim, x, -1)


def test_kernel_use_check_fails_on_an_undocumented_fallback(rng):
    x64 = rng.standard_normal((3, 5))
    sim = gpunet.get_backend("sim")
    with pytest.raises(AssertionError, match="'softmax', 'dtype float64"):
        with testing.expect_kernels("sim"):
            softmax.softmax_forward(sim, x64, -1)
    with testing.expect_kernels("sim", fallbacks=("gelu",)) as use:
        activation.act_forward(sim, "gelu", x64.astype(np.float32), approximate="tanh")
    assert list(use.fallbacks) == [("gelu", "no kernel for approximate='tanh'")]


def test_kernel_use_check_fails_for_a_kernel_backend_without_kernels(monkeypatch):
    monkeypatch.setattr(gpunet.get_backend("sim"), "kernels", None)
    with pytest.raises(AssertionError, match="'sim' has no kernel module"):
        with testing.expect_kernels("sim"):
            pass
