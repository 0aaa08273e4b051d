"""The simulator's race checker (gpunet._C_simcheck, csrc/sim/racecheck.cpp):
every planted hazard of csrc/kernels/racecheck.cu is reported with its kind,
its source line and the threads involved, and raises in the caller; the fixed
twins report nothing. The simcheck module is built by every install (like
_C_sim), so its absence fails. The whole kernel suite runs under the checker
with GPUNET_SIM_RACECHECK=1 (see .ci/run)."""
import re

import numpy as np
import pytest

KERNEL_FILE = "csrc/kernels/racecheck.cu"
PROBES = {  # probe -> (what the report must say, the source line of the planted access)
    "missing_barrier": (r"(read-after-write|write-after-read) race on shared memory", "if (t == 0) out[0] = partial[kThreads - 1];"),
    "reused_scratch": (r"(write-after-read|read-after-write) race on shared memory", "sums[warp] = v;"),
    "shared_counter": ("write-after-write race on global memory", "out[0] = x[threadIdx.x];"),
    "warp_handoff": ("read-after-write race on shared memory", "out[0] = slot[0] + (float)lane;"),
    "cross_block": ("read-after-write race on global memory", "out[2 + blockIdx.x] = out[kRacy ? 0 : blockIdx.x];"),
    "uninit_shared": ("read of uninitialized shared memory", "out[0] = cache[kThreads - 1];"),
    "past_the_end": ("out-of-bounds access on (global|shared) memory", "out[kRacy ? n_out : n_out - 1]"),
}


def line_of(text: str) -> int:
    with open(KERNEL_FILE) as f:
        for number, line in enumerate(f, 1):
            if text in line:
                return number
    raise AssertionError(f"{text!r} not in {KERNEL_FILE}")


def run(module, probe, racy):
    x = np.arange(128, dtype=np.float32)
    backing = np.zeros(8, dtype=np.float32)  # past_the_end writes out[4]: keep it inside real memory
    module._race_probe(probe, racy, x, backing[:4], 0)
    return backing


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_planted_hazard_is_reported(simcheck, probe, monkeypatch):
    monkeypatch.setenv("CUDASIM_QUIET", "1")
    kind, source = PROBES[probe]
    with pytest.raises(RuntimeError) as err:
        run(simcheck, probe, racy=True)
    report = str(err.value)
    assert re.search(kind, report), report
    assert f"{KERNEL_FILE}:{line_of(source)}" in report, report
    assert re.search(r"block \(\d+,0,0\) thread \(\d+,0,0\)", report), report
    assert "hazard(s) found by the race checker" in report


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_fixed_twin_is_clean(simcheck, probe):
    run(simcheck, probe, racy=False)  # raises if the checker reports anything


def test_checker_runs_the_same_kernels(simcheck):
    """The simcheck module computes what the plain one does."""
    from gpunet import _C_sim
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    a, b = np.zeros(1, np.float32), np.zeros(1, np.float32)
    _C_sim._block_sum(x, a, 0)
    simcheck._block_sum(x, b, 0)
    np.testing.assert_array_equal(a, b)


def test_unknown_probe_is_named(simcheck):
    with pytest.raises(ValueError, match="argument 'probe': expected one of missing_barrier"):
        simcheck._race_probe("nope", True, np.zeros(128, np.float32), np.zeros(4, np.float32), 0)
