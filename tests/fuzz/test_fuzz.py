"""The fuzz suite in the default run: a seeded, bounded sample (100 calls per
backend, GPUNET_FUZZ_CALLS to change it; every call in a worker subprocess)
must give no crash, no hang, no silent wrong result and under 1% unclear
errors. `python -m tests.fuzz --calls N` runs it at length. The classifier
and the worker are tested on calls whose class is known."""
import json
import os

import pytest

from . import cases, runner

pytestmark = pytest.mark.no_kernels("the calls run in worker subprocesses")


CALLS = int(os.environ.get("GPUNET_FUZZ_CALLS", "100"))  # per backend; `python -m tests.fuzz` for long runs


def test_seeded_sample_is_clean(tmp_path):
    report = runner.run(CALLS, seed=0, backends=("cpu", "sim"), workers=2)
    runner.write_json(report, tmp_path / "fuzz.json")
    print(runner.summary(report))
    assert json.loads((tmp_path / "fuzz.json").read_text())["counts"] == report["counts"]
    for backend, c in report["counts"].items():
        assert sum(c.values()) == CALLS and c["ok"] > CALLS // 3, (backend, c)  # most calls get past the argument checks
        bad = [f for f in report["findings"] if f["class"] in ("silent", "hang", "crash") or c["unclear"] > 0]
        assert c["silent"] == c["hang"] == c["crash"] == 0 and c["unclear"] * 100 < sum(c.values()), bad[:5]


def test_draws_are_seeded():
    assert runner.draw_specs(30, 5, cases.PUBLIC) == runner.draw_specs(30, 5, cases.PUBLIC)
    assert runner.draw_specs(30, 5, cases.PUBLIC) != runner.draw_specs(30, 6, cases.PUBLIC)


@pytest.mark.parametrize("result, want", [
    (("ok",), "ok"),
    (("silent", "wrong"), "silent"),
    (("raised", "ValueError", ["ValueError", "Exception"], "lr: expected a finite number, got nan"), "clear"),
    (("raised", "TypeError", ["TypeError", "Exception"], "argument 'x': wrong dtype"), "clear"),
    (("raised", "ZeroDivisionError", ["ZeroDivisionError", "Exception"], "lr: expected"), "unclear"),
    (("raised", "TypeError", ["TypeError", "Exception"], "'float' object is not iterable"), "unclear"),
    (("raised", "TypeError", ["TypeError"], "f(): incompatible function arguments. x: int"), "unclear"),
])
def test_classification(result, want):
    assert runner.classify({"case": "optimizer", "kw": {"lr": 1.0}}, result) == want


def test_worker_reports_crashes_and_hangs_then_restarts():
    """A call that kills its worker is a crash, one that never answers a
    hang; either way the next call gets a fresh worker."""
    w = runner.Worker()
    try:
        assert w.call({"case": "__exec__", "code": "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"},
                      30)[0] == "crash"
        assert w.call({"case": "__exec__", "code": "import time; time.sleep(60)"}, 2)[0] == "hang"
        assert w.call({"case": "__exec__", "code": "raise ValueError('x: expected 1')"}, 30)[0] == "raised"
    finally:
        w.close()
