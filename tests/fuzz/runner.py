"""Runs drawn calls in worker subprocesses and classifies each outcome
(clear / unclear / silent / hang / crash, see tests/fuzz/__init__.py)."""
from __future__ import annotations

import collections
import json
import os
import pickle
import queue
import re
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed as hseed, settings, strategies as st

from . import cases

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("ok", "clear", "unclear", "silent", "hang", "crash")
EXPECTED = {"ValueError", "TypeError", "IndexError", "KeyError", "RuntimeError", "OverflowError", "OSError"}
# argument names a message may use besides the drawn keyword arguments
NAMES = {"functional": ["x", "input", "dim"], "module": ["input", "x", "grad_output", "dy", "idx", "indices"],
         "loss": ["input", "target", "weight"], "optimizer": ["params", "grad", "betas"], "scheduler": ["optimizer"],
         "serialization": ["path", "obj", "file", "checkpoint", "ck.gpunet"], "data": ["batch_size", "indices", "lengths", "dataset"],
         "binding": ["x", "y", "b", "db", "dy", "weight", "bias", "idx", "out", "flag", "logits", "target", "loss",
                     "lse", "q", "k", "v", "inner", "kind", "beta", "eps", "seed", "offset", "threshold", "scale",
                     "mean", "rstd", "arg", "cols", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "stream"]}


def draw_specs(n: int, seed: int, case_names) -> list[dict]:
    """n call specs over `case_names`, the same for the same seed."""
    specs: list[dict] = []
    strategy = st.sampled_from(sorted(case_names)).flatmap(lambda c: cases.STRATEGIES[c])
    while len(specs) < n:
        @hseed(seed + len(specs))
        @settings(max_examples=n - len(specs), database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(spec):
            specs.append(spec)
        collect()
    return specs[:n]


def classify(spec: dict, result: tuple) -> str:
    kind = result[0]
    if kind != "raised":
        return kind
    _, _, mro, msg = result
    names = set(NAMES[spec["case"]]) | set(spec.get("kw", {})) | {spec.get("name", "")} - {""}
    if "incompatible function arguments" in msg and spec["case"] != "binding":
        return "unclear"  # pybind11's own message: the public API let a bad value through to a binding
    named = any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", msg) for n in names)
    return "clear" if EXPECTED & set(mro) and (named or re.search(r"\b(expected|must|supported)\b|argument '", msg)) else "unclear"


class Worker:
    """One worker subprocess (tests/fuzz/worker.py), restarted after a crash or a hang."""

    def __init__(self, env=None):
        self.env = {**os.environ, "CUDASIM_QUIET": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.worker"], cwd=ROOT, env=self.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if self._receive(time.monotonic() + 300)[0] != "ready":
            raise RuntimeError(f"fuzz worker did not start (exit {self.proc.poll()})")

    def _receive(self, deadline: float):
        fd = self.proc.stdout.fileno()

        def read(n):
            buf = b""
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError
                chunk = os.read(fd, n - len(buf))
                if not chunk:
                    raise EOFError
                buf += chunk
            return buf

        (size,) = struct.unpack("<Q", read(8))
        return pickle.loads(read(size))

    def call(self, spec: dict, timeout: float) -> tuple:
        if self.proc is None:
            self._start()
        data = pickle.dumps(spec)
        try:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
            return self._receive(time.monotonic() + timeout)
        except TimeoutError:
            self.close()
            return ("hang", f"no answer in {timeout:.0f} s")
        except (EOFError, BrokenPipeError):
            code = self.proc.wait()
            self.proc = None
            return ("crash", f"worker exit {code}" + (f" (signal {-code})" if code < 0 else ""))

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def run(n: int, seed: int = 0, backends=("cpu", "sim"), workers: int = 2, timeout: float = 30.0,
        env=None, progress=None) -> dict:
    """n calls per backend (public API on each; the raw bindings on sim too),
    classified. Returns {"counts": {backend: {class: n}}, "findings": [...]}."""
    jobs: queue.Queue = queue.Queue()
    for backend in backends:
        names = cases.PUBLIC + (["binding"] if backend == "sim" else [])
        for i, spec in enumerate(draw_specs(n, seed, names)):
            jobs.put({**spec, "backend": backend, "seed": seed * 1_000_003 + i})
    counts = {b: dict.fromkeys(CLASSES, 0) for b in backends}
    findings, lock, done = [], threading.Lock(), [0]

    def serve():
        w = Worker(env)
        try:
            while True:
                try:
                    spec = jobs.get_nowait()
                except queue.Empty:
                    return
                result = w.call(spec, timeout)
                cls = classify(spec, result)
                with lock:
                    counts[spec["backend"]][cls] += 1
                    done[0] += 1
                    if cls not in ("ok", "clear"):
                        findings.append({"class": cls, "spec": repr(spec), "result": [str(r)[:500] for r in result]})
                    if progress:
                        progress(done[0], counts)
        finally:
            w.close()

    threads = [threading.Thread(target=serve) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"seed": seed, "calls_per_backend": n, "counts": counts, "findings": findings}


def summary(report: dict) -> str:
    lines = [f"{'backend':8}" + "".join(f"{c:>9}" for c in CLASSES) + f"{'calls':>9}"]
    for backend, c in report["counts"].items():
        lines.append(f"{backend:8}" + "".join(f"{c[k]:>9}" for k in CLASSES) + f"{sum(c.values()):>9}")
    return "\n".join(lines)


def write_json(report: dict, path) -> None:
    Path(path).write_text(json.dumps(report, indent=1))


def tally(report: dict) -> collections.Counter:
    return collections.Counter(f["class"] for f in report["findings"])
