"""The benchmark suite: the --quick smoke run writes its reports, and the
harness refuses to time an implementation that fails validation."""
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpunet.bench import cli, harness, models, ops

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"linear", "conv", "pool", "softmax", "loss", "rnn", "attention", "norm", "activation", "embedding",
            "optim", "train"}


def quick_policy():
    return harness.Policy(min_reps=3, max_reps=3, budget_s=0.0, warmup_s=0.0, min_warmup=1,
                          cache_bytes=1 << 16, memory_budget=1 << 24)


def cpu_platform():
    """gpunet cpu, checked against gpunet cpu in float64 (no torch needed)."""
    return harness.Platform("cpu", "quick", [harness.Target("gpunet", "cpu")],
                            harness.Target("gpunet", "cpu", np.float64), quick_policy(),
                            {"flops": 1e10, "bandwidth": 1e10})


def linear_case():
    return ops.linear_cases("quick")[0]


def test_quick_smoke_run_writes_reports(tmp_path):
    """`python -m gpunet.bench --quick` on the CPU: every case validated and
    timed (gpunet and PyTorch when installed), JSON/Markdown (and PNGs with
    matplotlib) written with the environment."""
    cmd = [sys.executable, "-m", "gpunet.bench", "--quick", "--device", "cpu", "--threads", "1",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (js,) = tmp_path.glob("cpu-*-quick.json")
    report = json.loads(js.read_text())
    assert js.with_suffix(".md").exists()
    env = report["environment"]
    for key in ("date", "numpy", "cpu", "threads", "commit", "math_mode"):
        assert key in env
    assert env["threads"] == 1
    assert env["host_array_threads"] == 1  # gpunet's elementwise paths follow --threads too
    assert report["ceilings"]["flops"] > 0 and report["ceilings"]["bandwidth"] > 0
    results = report["results"]
    assert {r["op"].split(".")[0] for r in results} == FAMILIES
    half = {"cpu-bfloat16", "cpu-float16"}
    assert {r["target"] for r in results} >= {"cpu"} | half  # the half rows next to float32
    assert any(r["target"] in half and r["status"] == "ok" for r in results)
    for r in results:
        if r["target"] in half and r["status"] == "no half path":
            assert "NotImplementedError" in r["reason"]
            continue
        assert r["status"] == "ok", r
        assert r["reps"] >= 3 and r["min_s"] <= r["median_s"] <= r["max_s"]
        assert 0 < r["roofline_fraction"] and r["err"] <= r["rtol"]
    torch_ok = any(r["target"] == "torch-cpu" for r in results)
    if torch_ok:
        assert all("ratio_to_torch" in r for r in results if r["target"] == "cpu")
        gemm = {r["op"]: r["gemm"] for r in results if r["target"] == "cpu" and "gemm" in r}
        assert {"linear.fwdbwd", "rnn.lstm.fwdbwd", "train.transformer"} <= set(gemm)  # their products recorded
        assert "activation.gelu.fwdbwd" not in gemm  # no product, no row
        for g in gemm.values():
            assert g["count"] > 0 and g["flops"] > 0 and g["gpunet_s"] > 0 and g["torch_s"] > 0 and g["floor_ratio"] > 0
        assert "## GEMM share and GEMM floor" in js.with_suffix(".md").read_text()
    assert {r["sweep"][0] for r in results if r["sweep"]} == {
        "softmax row length", "conv2d batch size", "attention sequence length", "LSTM sequence length"}
    pytest.importorskip("matplotlib")
    for kind in ("ratio", "roofline", "scaling") if torch_ok else ("roofline", "scaling"):
        assert (tmp_path / f"{js.stem}-{kind}.png").stat().st_size > 0


def test_run_py_lists_cases():
    proc = subprocess.run([sys.executable, "bench/run.py", "--list", "--quick", "--no-torch", "--device", "cpu",
                           "--ops", "conv2d.fwd"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("[cpu] conv.conv2d.fwd") for line in lines)


def test_wrong_implementation_is_not_timed():
    """A Linear whose float32 output is off by 1% fails validation against the
    float64 reference: reported invalid, with the worst element named, and
    its step never runs past validation."""
    case = linear_case()
    right = case.impls["gpunet"]
    calls = []

    def wrong(target, state, copies):
        runner = right(target, state, copies)
        if target.dtype == np.float64:  # the float64 run is the reference
            return runner

        def step(i):
            calls.append(i)
            runner.step(i)

        def outputs():
            out = runner.outputs()
            out["out"] = out["out"] * 1.01
            return out
        return harness.Runner(step, outputs)
    case.impls = {"gpunet": wrong}
    (r,) = harness.run_case(case, cpu_platform())
    assert r["status"] == "invalid"
    assert "validation failed" in r["reason"] and "out:" in r["reason"] and "worst at index" in r["reason"]
    assert "median_s" not in r and "ratio_to_torch" not in r
    assert calls == [0]


def test_correct_implementation_is_timed():
    (r,) = harness.run_case(linear_case(), cpu_platform())
    assert r["status"] == "ok"
    assert r["err"] < 1e-5 and r["reps"] == 3 and r["copies"] >= 2
    assert r["floor_s"] == pytest.approx(max(r["flops"], r["bytes"]) / 1e10)
    assert r["roofline_fraction"] == pytest.approx(r["floor_s"] / r["median_s"])


def test_raising_implementation_is_reported_not_raised():
    case = linear_case()

    def broken(target, state, copies):
        raise RuntimeError("kernel launch failed")
    case.impls = {"gpunet": broken}
    (r,) = harness.run_case(case, cpu_platform())
    assert r["status"] == "error" and "kernel launch failed" in r["reason"]


def test_cli_exit_status_and_report_show_failure(tmp_path, monkeypatch):
    case = linear_case()
    right = case.impls["gpunet"]

    def forgets_bias_grad(target, state, copies):
        runner = right(target, state, copies)
        if target.dtype == np.float64:
            return runner
        return harness.Runner(runner.step, lambda: {k: v for k, v in runner.outputs().items() if k != "grad.bias"})
    case.impls = {"gpunet": forgets_bias_grad}
    monkeypatch.setattr(cli, "cases", lambda size: [case])
    code = cli.main(["--quick", "--device", "cpu", "--no-torch", "--no-plots", "--out", str(tmp_path)])
    assert code == 1
    (js,) = tmp_path.glob("cpu-*-quick.json")
    rows = json.loads(js.read_text())["results"]
    assert [r["target"] for r in rows] == ["cpu", "cpu-bfloat16", "cpu-float16"]
    for r in rows:
        assert r["status"] == "invalid" and "grad.bias: missing" in r["reason"]
    assert "INVALID" in js.with_suffix(".md").read_text()


def test_compare_is_normwise_and_strict_about_shape_and_nan():
    ref = {"y": np.array([1000.0, 1.0])}
    # error 1e-3 on the small entry is tiny against the largest (normwise)
    assert harness.compare({"y": np.array([1000.0, 1.001])}, ref, 1e-5)[1] is None
    err, why = harness.compare({"y": np.array([1001.0, 1.0])}, ref, 1e-4)
    assert err == pytest.approx(1e-3) and "worst at index (0,)" in why
    assert harness.compare({"y": np.array([1000.0])}, ref, 1.0)[0] == math.inf
    assert "non-finite" in harness.compare({"y": np.array([np.nan, 1.0])}, ref, 1.0)[1]


def test_case_filter():
    assert cli.selected(None, "conv.conv2d.fwd (1,2)", "conv.conv2d.fwd")
    assert cli.selected(["CONV2D"], "conv.conv2d.fwd (1,2)", "conv.conv2d.fwd")
    assert cli.selected(["norm.*"], "norm.layer_norm.fwdbwd 4x8", "norm.layer_norm.fwdbwd")
    assert cli.selected(["train.*"], "train.char_lstm batch 2", "train.char_lstm")
    assert not cli.selected(["lstm"], "conv.conv2d.fwd (1,2)", "conv.conv2d.fwd")


@pytest.mark.parametrize("size", ["quick", "cpu", "gpu"])
def test_case_names_start_with_their_family(size):
    """A case is named family.op.pass after the family's files: its kernels
    (where it has any), its ops module and its test file; training steps are
    train.<model> (gpunet/train.py)."""
    from gpunet.bench import models
    for case in ops.op_cases(size) + models.model_cases(size):
        family = case.op.split(".")[0]
        if family == "train":
            assert (ROOT / "gpunet" / "train.py").is_file()
            continue
        assert (ROOT / "gpunet" / "ops" / f"{family}.py").is_file(), case.op
        assert (ROOT / "tests" / f"test_{family}.py").is_file(), case.op


@pytest.mark.parametrize("case", models.model_cases("quick"), ids=lambda c: c.op)
def test_training_step_mirrors_are_the_same_networks(case):
    """Each training step's PyTorch mirror computes gpunet's network: in
    float64 both agree to rounding (a mirror with another GELU form was 1e-4
    off, and the bench timed two different networks against each other)."""
    pytest.importorskip("torch")
    plat = cpu_platform()
    plat.targets, plat.reference = [harness.Target("gpunet", "cpu", np.float64)], harness.Target("torch", "cpu",
                                                                                                   np.float64)
    (result,) = harness.run_case(case, plat)
    assert result["status"] == "ok", result
    assert result["err"] < 1e-10, result["err"]


def test_each_target_gets_its_own_copy_of_the_weights():
    """A builder that updates its weights in place (as an optimizer does) must
    not change what the reference or the next target starts from."""
    def setup(rng):
        return harness.Spec({"w": np.arange(3, dtype=np.float32)}, {})

    def build(target, state, copies):
        w = state["w"]

        def step(i):
            w[...] += 1  # in place, like an optimizer step
        return harness.Runner(step, lambda: {"w": w})
    case = harness.Case("inplace.step", "3", 3.0, 24.0, setup, {"gpunet": build}, rotate=False)
    plat = cpu_platform()
    plat.targets = [harness.Target("gpunet", "cpu"), harness.Target("gpunet", "cpu")]
    assert [r["status"] for r in harness.run_case(case, plat)] == ["ok", "ok"]


class _FakeEvent:
    def record(self):
        import time
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _EventTarget(harness.Target):
    """The cpu backend timed through the GPU code path (event pairs, one wait
    per block), with host-clock events standing in for CUDA events."""
    on_gpu = True
    synced = 0

    def event_pair(self):
        return _FakeEvent(), _FakeEvent(), lambda s, e: e.t - s.t

    def sync(self):
        self.synced += 1

    def free_memory(self):
        pass


def test_gpu_timing_path_records_an_event_pair_per_repetition():
    policy = harness.Policy(min_reps=5, max_reps=9, budget_s=0.0, warmup_s=0.0, min_warmup=2,
                            cache_bytes=1 << 16, memory_budget=1 << 24)
    target = _EventTarget("gpunet", "cpu")
    steps = []
    timed = harness.Timed(target, steps.append)
    harness.time_interleaved([timed], policy)
    # two rounds, each a 2-step warm-up then blocks of 1, 2, 4... until the
    # round's minimum (3, then 5 in all): 1 + 2, then 1 + 2 more
    assert len(timed.times) == 6 and all(t >= 0 for t in timed.times)
    assert steps == list(range(1, 6 + 2 * 2 + 1))
    assert target.synced == 2


def test_cpu_timing_alternates_the_policys_rounds():
    """Each round times every implementation in turn, the repetitions spread
    over the rounds; only the first warm-up takes warmup_s (here: its cap of
    1000 steps), the later ones rewarm_s (here: the minimum, 1 step)."""
    policy = harness.Policy(min_reps=3, max_reps=3, budget_s=0.0, warmup_s=60.0, min_warmup=1,
                            cache_bytes=1 << 16, memory_budget=1 << 24, rounds=3, rewarm_s=0.0)
    log = []
    timed = [harness.Timed(harness.Target("gpunet", "cpu"), lambda i, n=n: log.append(n)) for n in "ab"]
    harness.time_interleaved(timed, policy)
    runs = [(k, len(list(g))) for k, g in itertools.groupby(log)]
    assert [k for k, _ in runs] == list("ababab")
    assert [n for _, n in runs] == [1001, 1001, 2, 2, 2, 2]  # warm-up + 1 timed a round
    assert [len(t.times) for t in timed] == [3, 3]


def test_sim_device_runs_the_kernel_path(tmp_path):
    """--device sim: the CUDA kernels on the CPU simulator, validated like any
    backend; no roofline (the simulator's speed means nothing)."""
    import gpunet
    if not gpunet.backends()["sim"]["available"]:
        pytest.skip(gpunet.backends()["sim"]["reason"])
    code = cli.main(["--quick", "--device", "sim", "--no-torch", "--no-plots", "--ops", "softmax.fwd 4x33",
                     "layer_norm", "--out", str(tmp_path)])
    assert code == 0
    (js,) = tmp_path.glob("sim-*-quick.json")
    report = json.loads(js.read_text())
    assert report["ceilings"] == {} and report["targets"] == ["sim", "sim-bfloat16", "sim-float16"]
    assert [r["status"] for r in report["results"] if r["target"] == "sim"] == ["ok", "ok"]
    assert {r["status"] for r in report["results"]} <= {"ok", "no half path"}
    assert all("roofline_fraction" not in r for r in report["results"])


def test_compare_flags_slowdowns_above_the_noise_band(tmp_path, capsys):
    def row(name, target, median, spread=0.0, vs=None):
        return {"name": name, "target": target, "status": "ok", "median_s": median,
                "p25_s": median * (1 - spread / 2), "p75_s": median * (1 + spread / 2), "ratio_to_torch": vs}
    old = {"environment": {"commit": "a" * 40}, "results": [
        row("gelu.fwdbwd 8", "cpu", 1.0, vs=2.0), row("gelu.fwdbwd 8", "torch-cpu", 0.5),
        row("noisy", "cpu", 1.0, spread=0.2), row("steady", "cpu", 1.0), row("gone", "cpu", 1.0)]}
    new = {"environment": {"commit": "b" * 40}, "results": [
        row("activation.gelu.fwdbwd 8", "cpu", 0.5, vs=1.0), row("activation.gelu.fwdbwd 8", "torch-cpu", 0.5),
        row("noisy", "cpu", 1.15, spread=0.2), row("steady", "cpu", 1.15), row("added", "cpu", 1.0)]}
    paths = []
    for name, run in (("old.json", old), ("new.json", new)):
        (tmp_path / name).write_text(json.dumps(run))
        paths.append(str(tmp_path / name))
    assert cli.main(["--compare", *paths]) == 1
    out = capsys.readouterr().out
    lines = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")
             and " | cpu | " in line}
    assert "faster" in lines["gelu.fwdbwd 8"] and "2.00 -> 1.00" in lines["gelu.fwdbwd 8"]
    assert "within noise" in lines["noisy"]           # 15% slower inside a 40% spread
    assert "SLOWER" in lines["steady"] and "1.15" in lines["steady"]
    assert "only in the old run: gone" in out and "only in the new run: added" in out
    assert "1 slowdown(s)" in out
    assert cli.main(["--compare", paths[0], paths[0]]) == 0
    new["environment"]["commit"] = None  # a run outside a git checkout
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert cli.main(["--compare", *paths]) == 1 and "new.json (?)" in capsys.readouterr().out


def test_report_states_the_gemm_ceiling():
    from gpunet.bench import report
    ceil = {"measured": [{"flops_by": {"numpy": 250e9, "gpunet": 300e9, "torch 1x1 conv": 400e9}},
                         {"flops_by": {"numpy": 200e9, "gpunet": 250e9, "torch 1x1 conv": 500e9}}]}
    line = report.gemm_ceiling_line(ceil, {"blas": [{"internal_api": "openblas", "architecture": "Haswell"}]})
    assert "host GEMM (2-D products): 300.0 GFLOP/s" in line and "openblas Haswell): 250.0 GFLOP/s" in line
    assert "the best measured: torch 1x1 conv, 500.0" in line and "1.67x" in line
    del ceil["measured"][0]["flops_by"]["gpunet"], ceil["measured"][1]["flops_by"]["gpunet"]  # no compiler
    assert "host GEMM" not in report.gemm_ceiling_line(ceil, {}) and "2.00x" in report.gemm_ceiling_line(ceil, {})
    assert report.gemm_ceiling_line({"measured": [{"flops_by": {"numpy": 1e9, "gpunet": 2e9}}]}, {}) is None


def test_gemm_recording_keeps_shapes_layouts_and_counts_and_the_floor_formula():
    from gpunet.bench import gemm_ceiling
    import gpunet.nn as gnn
    lin = gnn.Linear(5, 3)
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    with gemm_ceiling.recording() as products:
        for _ in range(2):
            lin.backward(np.ones_like(lin(x)))
        np.matmul(x.astype(np.float64), x.T.astype(np.float64))  # not float32: not counted
    assert np.matmul is not products and np.matmul.__class__ is np.ufunc  # put back
    # y = x W^T (W^T a transposed view), dx = dy W, dW = dy^T x (dy^T a transposed view)
    assert products == {("blas", (4, 5), "N", (5, 3), "T"): 2, ("blas", (4, 3), "N", (3, 5), "N"): 2,
                        ("blas", (3, 4), "T", (4, 5), "N"): 2}
    torch = pytest.importorskip("torch")
    g = gemm_ceiling.measure(products, torch)
    assert g["count"] == 6 and g["host_count"] == 0 and g["flops"] == 2 * 3 * (2 * 4 * 5 * 3)
    assert g["gpunet_s"] > 0 and g["torch_s"] > 0
    # everything else as fast as torch's: 10 ms step, torch's GEMMs 6 of it, gpunet's 9 -> 13 ms, 1.3x
    assert gemm_ceiling.floor_ratio({"count": 3, "gpunet_s": 9e-3, "torch_s": 6e-3}, 10e-3) == pytest.approx(1.3)
    # torch runs no such products (a direct convolution): gpunet's GEMMs alone bound it
    assert gemm_ceiling.floor_ratio({"count": 3, "gpunet_s": 4e-3, "torch_s": 12e-3}, 5e-3) == pytest.approx(0.8)
    assert products.side_by_side == 0 and g["side_by_side"] == 0
    # attention's blocks on two host threads, BLAS held to one each: counted apart, not replayed
    import gpunet
    from gpunet.ops import attention, host_threads
    pytest.importorskip("threadpoolctl")
    q = np.random.default_rng(1).standard_normal((2, 4, 256, 64)).astype(np.float32)
    before = host_threads.get_num_threads()
    host_threads.set_num_threads(2)
    try:
        with gemm_ceiling.recording() as products:
            attention.sdpa_forward(gpunet.get_backend("cpu"), q, q, q)
    finally:
        host_threads.set_num_threads(before)
    assert products.side_by_side >= 2 and not products
    assert gemm_ceiling.floor_ratio({"count": 0, "gpunet_s": 0.0, "torch_s": 0.0, "side_by_side": 8}, 1e-3) is None


def test_gemm_recording_sees_the_host_gemm(monkeypatch):
    """Products on gpunet's host GEMM are recorded on their path and replayed there."""
    import gpunet
    import gpunet.nn as gnn
    from gpunet.bench import gemm_ceiling
    from gpunet.ops import linear
    if gpunet.hostlib.load() is None:
        pytest.skip("no C compiler for the host loops")
    monkeypatch.setattr(linear, "HOST_GEMM_MIN_MACS", 0)
    lin = gnn.Linear(5, 3)
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    with gemm_ceiling.recording() as products:
        lin.backward(np.ones_like(lin(x)))
    assert linear._host_gemm.__name__ == "_host_gemm"  # put back
    assert products == {("host", (4, 5), "N", (5, 3), "T"): 1, ("host", (4, 3), "N", (3, 5), "N"): 1,
                        ("host", (3, 4), "T", (4, 5), "N"): 1}
    torch = pytest.importorskip("torch")
    g = gemm_ceiling.measure(products, torch)
    assert g["count"] == g["host_count"] == 3 and g["gpunet_s"] > 0
