"""bench/gpu_check.sh and its pytest plugin (gpunet.bench.gpucheck): the
per-family counting that makes the GPU check fail closed, the dry run on
this machine, and the fast exit where no GPU is visible."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpunet.bench import gpucheck

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def script_env(tmp_path, **extra):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, **extra}
    env.pop("GPUNET_SIM_RACECHECK", None)
    return env


def test_families_are_the_kernel_families():
    """A new csrc/kernels family must be counted (and required) by the check."""
    kernels = {p.stem for p in (ROOT / "csrc" / "kernels").glob("*.cu")
               if "TEST-ONLY" not in p.read_text().splitlines()[0]}
    assert set(gpucheck.FAMILIES) == kernels


@pytest.mark.parametrize("params, backend", [
    ({"device": "cuda"}, "cuda"), ({"kb": "cuda"}, "cuda"), ({"device": "cuda:1", "n": 3}, "cuda"),
    ({"a": "cpu", "b": "cupy"}, "cupy"), ({"device": "cpu"}, "cpu"), ({"mode": "fwd"}, "-"), ({}, "-")])
def test_backend_of_a_test(params, backend):
    assert gpucheck.backend_of(params) == backend


def test_family_of_a_module():
    assert gpucheck.family_of("test_conv") == "conv"
    assert gpucheck.family_of("tests.test_loss") == "loss"
    assert gpucheck.family_of("test_model_parity") == "other"


def test_every_family_needs_a_passing_test():
    ok = {"passed": 1, "failed": 0, "skipped": 3}
    counts = {f: {"cuda": dict(ok)} for f in gpucheck.FAMILIES}
    assert gpucheck.missing(counts, ["cuda"]) == []
    counts["rnn"]["cuda"] = {"passed": 0, "failed": 0, "skipped": 4}  # every cuda test skipped
    del counts["dropout"]
    assert gpucheck.missing(counts, ["cuda"]) == ["rnn on cuda", "dropout on cuda"]
    assert gpucheck.missing(counts, ["cuda", "cupy"])[-1] == "linear on cupy"
    text = gpucheck.table(counts)
    assert "rnn         cuda        0      0      0       4" in text and "no test ran or skipped for: dropout" in text


def test_plugin_fails_a_run_whose_gpu_tests_all_skip(tmp_path):
    """The failure gpu_check.sh guards against: every cuda test skips, pytest
    alone would exit 0."""
    for family in gpucheck.FAMILIES:
        (tmp_path / f"test_{family}.py").write_text(
            "import pytest\n"
            "@pytest.mark.parametrize('device', ['cpu', 'cuda'])\n"
            "def test_op(device):\n"
            f"    if device == 'cuda' and {family!r} != 'conv':\n"
            "        pytest.skip('no GPU')\n")
    report = tmp_path / "families.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "gpunet.bench.gpucheck", "-p", "no:cacheprovider",
           "--rootdir", str(tmp_path), "--families-require", "cuda", "--families-json", str(report), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "FAILED: no passing test for pool on cuda" in proc.stdout
    data = json.loads(report.read_text())
    assert data["counts"]["conv"]["cuda"] == {"passed": 1, "failed": 0, "skipped": 0}
    assert data["counts"]["pool"] == {"cpu": {"passed": 1, "failed": 0, "skipped": 0},
                                      "cuda": {"passed": 0, "failed": 0, "skipped": 1}}
    assert "conv on cuda" not in data["missing"] and len(data["missing"]) == len(gpucheck.FAMILIES) - 1


def test_gpu_check_without_a_gpu_exits_at_once(tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], env=script_env(tmp_path, CUDA_VISIBLE_DEVICES=""),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "no GPU visible" in proc.stderr and "--dry-run" in proc.stderr
    assert time.monotonic() - t0 < 10
    assert not list(tmp_path.iterdir())  # nothing built, run or written


def test_gpu_check_rejects_unknown_arguments(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--dryrun"], env=script_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument --dryrun" in proc.stderr


def test_gpu_check_dry_run_quick(tmp_path):
    """Every stage that can run without a GPU, on sim: a few parity tests per
    family (each family passing), the quick benchmark, the summary."""
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--quick"], env=script_env(tmp_path),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "RESULT: all stages passed" in out
    (parity,) = tmp_path.glob("dryrun-sim-drivernone-cuda*-parity.json")
    counts = json.loads(parity.read_text())["counts"]
    for family in gpucheck.FAMILIES:
        assert counts[family]["sim"]["passed"] >= 1, family
        assert f"\n{family:<11} sim " in out, family
    assert list(tmp_path.glob("dryrun-*-bench/sim-*.json")) and list(tmp_path.glob("dryrun-*-summary.md"))
    stages = (next(tmp_path.glob("dryrun-*-stages.tsv"))).read_text()
    assert "build-sim\t0\t" in stages and "sanitizer\t-\t" in stages  # said, not silently left out
