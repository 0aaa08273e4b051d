"""The pieces of bench/gpu_check.sh that are easier in Python than in bash.

As a pytest plugin (`python -m pytest -p gpunet.bench.gpucheck ...`) it
counts each kernel family's tests per backend (the family is the test
module's name, tests/test_<family>.py; the backend is the test's device
parameter), prints the table, writes it as JSON, and fails the run unless
every family had a passing test on each backend named by --families-require.
So a GPU run where every cuda test skipped cannot pass.

    --families-json PATH        write the counts
    --families-require B[,B]    every family needs >= 1 passed test on each B
    --families-quick N          keep only the first N tests of each family and
                                backend (the --quick check, the sanitizer runs)
    --families-backends B[,B]   with --families-quick: the backends to keep
    --families-no-pool          CuPy's memory pools off, so that
                                compute-sanitizer sees every allocation's bounds

As a command, `python -m gpunet.bench.gpucheck summary DIR TAG` prints the
one-screen summary of a check whose files are DIR/TAG-* and writes it to
DIR/TAG-summary.md.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

# Every kernel family of csrc/kernels (its TEST-ONLY families aside); the
# test suite checks that this list and the sources agree.
FAMILIES = ("conv", "pool", "softmax", "loss", "activation", "optim", "rnn", "attention", "attention_tc", "conv_tensor_core",
            "norm", "embedding", "dropout", "linear")
BACKENDS = ("cpu", "sim", "cuda", "cupy")
OUTCOMES = ("passed", "failed", "skipped")


def family_of(module_name: str) -> str:
    """'test_conv' -> 'conv'; a test outside the families -> 'other'."""
    name = module_name.rsplit(".", 1)[-1].rsplit("/", 1)[-1].removesuffix(".py").removeprefix("test_")
    return name if name in FAMILIES else "other"


def backend_of(params: dict) -> str:
    """The backend a parametrized test runs on: the non-cpu one when it
    compares two (a device string like 'cuda:1' counts as 'cuda'); '-' when
    no parameter names one."""
    found = {v.split(":")[0] for v in params.values() if isinstance(v, str) and v.split(":")[0] in BACKENDS}
    others = sorted(found - {"cpu"}, key=BACKENDS.index)
    return others[0] if others else ("cpu" if found else "-")


def missing(counts: dict, required) -> list[str]:
    """'family on backend' for each required pair without a passing test."""
    return [f"{f} on {b}" for b in required for f in FAMILIES if counts.get(f, {}).get(b, {}).get("passed", 0) < 1]


def table(counts: dict) -> str:
    rows = [(f, b, c) for f in (*FAMILIES, "other") for b, c in sorted(counts.get(f, {}).items())]
    lines = [f"{'family':<11} {'backend':<7} {'ran':>5} {'passed':>6} {'failed':>6} {'skipped':>7}"]
    for f, b, c in rows:
        ran = c.get("passed", 0) + c.get("failed", 0)
        lines.append(f"{f:<11} {b:<7} {ran:>5} {c.get('passed', 0):>6} {c.get('failed', 0):>6} "
                     f"{c.get('skipped', 0):>7}")
    absent = [f for f in FAMILIES if f not in counts]
    if absent:
        lines.append("no test ran or skipped for: " + ", ".join(absent))
    return "\n".join(lines)


def _split(value) -> list[str]:
    return [v for item in (value or "").split(",") for v in [item.strip()] if v]


# ---------------------------------------------------------------- the pytest plugin
def pytest_addoption(parser):
    group = parser.getgroup("gpunet families", "per-kernel-family counts (gpunet.bench.gpucheck)")
    group.addoption("--families-json", metavar="PATH", help="write the per-family counts as JSON")
    group.addoption("--families-require", metavar="B[,B]",
                    help="fail unless every kernel family passed >= 1 test on each of these backends")
    group.addoption("--families-quick", type=int, metavar="N",
                    help="run only the first N tests of each family and backend")
    group.addoption("--families-backends", metavar="B[,B]", help="with --families-quick: the backends to keep")
    group.addoption("--families-no-pool", action="store_true",
                    help="turn CuPy's memory pools off (for compute-sanitizer)")


class _Recorder:
    def __init__(self, config):
        self.config = config
        self.outcome: dict[str, str] = {}
        self.where: dict[str, tuple[str, str]] = {}

    def pytest_collection_modifyitems(self, config, items):
        for item in items:
            callspec = getattr(item, "callspec", None)
            module = getattr(item, "module", None)
            self.where[item.nodeid] = (family_of(module.__name__) if module else "other",
                                       backend_of(callspec.params if callspec else {}))
        quick = config.getoption("families_quick")
        if quick is None:
            return
        keep_backends = set(_split(config.getoption("families_backends"))) or set(BACKENDS)
        # tests that stop before any kernel runs (bad-input checks) say so with no_kernels: run kernels first
        ordered = sorted(items, key=lambda it: it.get_closest_marker("no_kernels") is not None)
        taken: Counter = Counter()
        kept = set()
        for item in ordered:
            family, backend = self.where[item.nodeid]
            if family != "other" and backend in keep_backends and taken[family, backend] < quick:
                taken[family, backend] += 1
                kept.add(item.nodeid)
        deselected = [it for it in items if it.nodeid not in kept]
        items[:] = [it for it in items if it.nodeid in kept]
        config.hook.pytest_deselected(items=deselected)

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.outcome[report.nodeid] = "failed"
        elif report.skipped and self.outcome.get(report.nodeid) != "failed":
            self.outcome[report.nodeid] = "skipped"
        elif report.when == "call" and report.passed:
            self.outcome.setdefault(report.nodeid, "passed")

    def counts(self) -> dict:
        out: dict = {}
        for nodeid, outcome in self.outcome.items():
            family, backend = self.where.get(nodeid, ("other", "-"))
            cell = out.setdefault(family, {}).setdefault(backend, dict.fromkeys(OUTCOMES, 0))
            cell[outcome] += 1
        return out

    def pytest_terminal_summary(self, terminalreporter):
        counts = self.counts()
        terminalreporter.section("kernel families (gpunet.bench.gpucheck)")
        terminalreporter.write_line(table(counts))
        gaps = missing(counts, _split(self.config.getoption("families_require")))
        if gaps:
            terminalreporter.write_line("FAILED: no passing test for " + ", ".join(gaps), red=True)

    def pytest_sessionfinish(self, session, exitstatus):
        import pytest
        counts = self.counts()
        required = _split(self.config.getoption("families_require"))
        gaps = missing(counts, required)
        if gaps and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        path = self.config.getoption("families_json")
        if path:
            Path(path).write_text(json.dumps({"families": list(FAMILIES), "required": required, "missing": gaps,
                                              "counts": counts}, indent=1) + "\n")


def pytest_configure(config):
    if config.getoption("families_no_pool"):
        try:
            import cupy
        except ImportError:
            pass
        else:
            cupy.cuda.set_allocator(None)
            cupy.cuda.set_pinned_memory_allocator(None)
    config.pluginmanager.register(_Recorder(config), "gpunet-families")


# ---------------------------------------------------------------- the summary
def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _bench_lines(bench_dir: Path) -> list[str]:
    lines = []
    for path in sorted(bench_dir.glob("*.json")):
        report = _read_json(path)
        if not report:
            continue
        res = report.get("results", [])
        status = Counter(r.get("status") for r in res)
        ceil = report.get("ceilings", {})
        mode = report.get("environment", {}).get("math_mode", {})
        tf32 = mode.get("torch_cuda_matmul_allow_tf32", mode.get("torch_float32_matmul_precision"))
        lines.append(f"{path.name}: {dict(status)}")
        if ceil.get("flops"):
            lines.append(f"  ceilings measured in the run: {ceil['flops'] / 1e9:.0f} GFLOP/s GEMM, "
                         f"{ceil.get('bandwidth', 0) / 1e9:.0f} GB/s copy")
        lines.append(f"  PyTorch TF32 for matmul: {tf32}; CUPY_TF32={mode.get('CUPY_TF32')}")
        ratios = [r for r in res if r.get("status") == "ok" and r.get("ratio_to_torch") is not None
                  and not str(r.get("target")).startswith("torch")]
        for r in sorted(ratios, key=lambda r: -r["ratio_to_torch"])[:5]:
            lines.append(f"  slowest vs PyTorch: {r['name']} [{r['target']}] {r['ratio_to_torch']:.2f}x")
    return lines or ["no benchmark results"]


def summary(out_dir: Path, tag: str) -> str:
    """The summary of the check whose files are out_dir/tag-*: each stage's
    exit status, the per-family tables, the sanitizer counts, the benchmark."""
    lines = [f"== gpu_check summary: {tag}"]
    env = out_dir / f"{tag}-env.log"
    if env.is_file():
        lines += [ln for ln in env.read_text().splitlines() if ln.startswith(("commit:", "gpu:", "python ", "cupy", "torch"))]
    lines.append("")
    stages = out_dir / f"{tag}-stages.tsv"
    failed = []
    for row in (stages.read_text().splitlines() if stages.is_file() else []):
        name, rc, secs, note = (row.split("\t") + ["", "", ""])[:4]
        verdict = "ok" if rc == "0" else ("skipped" if rc == "-" else f"FAILED (exit {rc})")
        if verdict.startswith("FAILED"):
            failed.append(name)
        lines.append(f"{name:<18} {verdict:<18} {secs:>5}s  {note}")
    for part in ("parity", "sanitizer-memcheck", "sanitizer-racecheck"):
        data = _read_json(out_dir / f"{tag}-{part}.json")
        if data:
            lines += ["", f"-- {part}: kernel families", table(data["counts"])]
            if data.get("missing"):
                lines.append("no passing test for: " + ", ".join(data["missing"]))
    lines += ["", "-- benchmark", *_bench_lines(out_dir / f"{tag}-bench")]
    lines += ["", "RESULT: " + (f"FAILED ({', '.join(failed)})" if failed else "all stages passed"),
              f"files: {out_dir}/{tag}-*"]
    text = "\n".join(lines)
    (out_dir / f"{tag}-summary.md").write_text("```\n" + text + "\n```\n")
    return text


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "summary":
        print("usage: python -m gpunet.bench.gpucheck summary DIR TAG", file=sys.stderr)
        return 2
    print(summary(Path(argv[1]), argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
