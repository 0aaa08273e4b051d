"""The simulator's memory-access profile (csrc/sim/profile.cpp, in
gpunet._C_simcheck): the probe kernels of csrc/kernels/profile.cu give
Nsight Compute's figures exactly, and `python -m gpunet.bench profile`
writes a record for them and for every kernel family."""
import json
import subprocess
import sys

from gpunet.bench import profile

EXACT = {  # per warp-level request
    "probe_copy_coalesced": {"load_sectors_per_request": 4, "store_sectors_per_request": 4},
    "probe_copy_stride32": {"load_sectors_per_request": 32, "store_sectors_per_request": 4},
    "probe_copy_float4": {"load_sectors_per_request": 16, "store_sectors_per_request": 16},
    "probe_smem_conflict32": {"smem_load_wavefronts_per_request": 32, "smem_store_wavefronts_per_request": 32},
    "probe_smem_padded": {"smem_load_wavefronts_per_request": 1, "smem_store_wavefronts_per_request": 1},
}


def probe_records(module):
    module._profile(True)
    try:
        profile.run_probes(module)
        raw = module._profile_records()
    finally:
        module._profile(False)
    return {r["kernel"]: r for r in profile.summarize([{**r, "family": "profile", "case": "probes"}
                                                      for r in raw], None)}


def test_probes_give_the_exact_figures(simcheck):
    got = probe_records(simcheck)
    assert set(got) == set(EXACT) == set(simcheck._profile_probes)
    for name, figures in EXACT.items():
        for field, value in figures.items():
            assert got[name][field] == value, (name, field, got[name])
        assert got[name]["active_lanes_per_request"] == 32


def test_profile_is_off_unless_asked(simcheck):
    simcheck._profile(False)
    profile.run_probes(simcheck)
    assert simcheck._profile_records() == []


def test_ptxas_report_and_occupancy():
    log = ("ptxas info    : Compiling entry function '_ZN6gpunet12_GLOBAL__N_114softmax_kernelILb1EEEvPKfPfl' "
           "for 'sm_90'\nptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem, 384 bytes cmem[0]\n"
           "ptxas info    : Compiling entry function '_ZN6gpunet12_GLOBAL__N_114softmax_kernelILb1EEEvPKfPfl' "
           "for 'sm_80'\nptxas info    : Used 99 registers, 384 bytes cmem[0]\n")
    assert profile.ptxas_resources(log) == {"softmax_kernel": {"registers": 40, "smem_bytes": 256}}
    assert profile.kernel_base("softmax_kernel<kLog>") == "softmax_kernel"
    # 256 threads at 40 registers: 8 warps x 1280 registers -> 6 blocks (register-bound) of 64 warps
    assert profile.occupancy(256, 40, 256) == 6 * 8 / 64
    assert profile.occupancy(1024, 16, 0) == 1.0  # two 32-warp blocks fill the SM
    assert profile.occupancy(32, 32, 64 * 1024) == 3 * 1 / 64  # shared-memory bound


def test_profile_command_writes_every_family(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gpunet.bench", "profile", "--device", "sim", "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "sim-profile.json").read_text())
    assert data["modelled"] is True
    records = data["records"]
    by_kernel = {r["kernel"]: r for r in records if r["family"] == "profile"}
    for name, figures in EXACT.items():
        for field, value in figures.items():
            assert by_kernel[name][field] == value
    families = {r["family"] for r in records}
    assert families >= {"activation", "attention", "conv", "dropout", "embedding", "linear", "loss", "norm",
                        "optim", "pool", "rnn", "softmax"}
    for r in records:
        for field in ("load_sectors_per_request", "store_sectors_per_request", "smem_wavefronts_per_request",
                      "registers", "smem_bytes", "occupancy", "modelled_h200_us"):
            assert field in r
    assert "MODELLED" in (tmp_path / "sim-profile.md").read_text()


def test_compare_sets_two_runs_side_by_side():
    def rec(kernel, us, ld, case="c"):
        return {"family": "f", "case": case, "kernel": kernel, "modelled_h200_us": us,
                "load_sectors_per_request": ld, "store_sectors_per_request": 4.0, "sector_efficiency": 1.0,
                "registers": 32, "occupancy": 1.0}
    before = {"records": [rec("k<A>", 2.0, 32.0), rec("k<A>", 1.0, 16.0), rec("gone", 1.0, 4.0)]}
    after = {"records": [rec("k<B>", 0.5, 4.0), rec("k<B>", 0.25, 4.0), rec("new", 3.0, 4.0)]}
    table = profile.compare(before, after, "abc1234", "def5678")
    assert "MODELLED" in table and "Before: abc1234. After: def5678." in table
    rows = [line for line in table.splitlines() if line.startswith("| f |")]
    # launch shapes of one kernel pair up in order; template arguments do not matter
    assert rows[0].startswith("| f | c | `k` | 2.0 | 0.5 | 32.0 | 4.0 |")
    assert rows[1].startswith("| f | c | `k` | 1.0 | 0.25 | 16.0 | 4.0 |")
    assert rows[2].startswith("| f | c | `gone` | 1.0 | - | 4.0 | - |")
    assert rows[3].startswith("| f | c | `new` | - | 3.0 | - | 4.0 |")
