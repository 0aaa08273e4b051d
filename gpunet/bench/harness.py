"""Validate-then-time: the core of the benchmark.

A `Case` is one op (or training step) at one shape. It knows its FLOPs and
the fewest bytes it must move, makes NumPy inputs and weights
(`setup`), and builds a `Runner` for an implementation (`impls["gpunet"]`,
`impls["torch"]`). A `Target` is an implementation on a device at a dtype:
gpunet's cpu/sim/cupy/cuda backends, or PyTorch on cpu/cuda.

For every case `run_case`:
  1. runs the reference once (PyTorch in float64 when installed, else
     gpunet's cpu backend in float64) and keeps its outputs;
  2. for each target, runs one step and compares every output (forward
     result, input and parameter gradients, loss, updated weights) with the
     reference, normwise: max|a - r| / max|r| <= case.rtol. A target that
     fails is reported "invalid" and never timed;
  3. times every valid target in alternating rounds (the policy's: 2 on a
     GPU, 8 on the CPU, where a shared machine's speed drifts over seconds),
     each after a warm-up (at least `min_reps` repetitions each, until the
     time budget or `max_reps`), cycling through several copies of the inputs whose total
     exceeds the last-level cache, so no repetition reads inputs left in
     cache by the previous one (weights and optimizer state are not rotated:
     a real training step reads them from memory too);
  4. times each repetition with CUDA events on the GPU (cupy.cuda.Event for
     gpunet, torch.cuda.Event for PyTorch) and with the host clock on the CPU,
     where every call is synchronous, and reports median, min, max and the
     quartiles.
"""
from __future__ import annotations

import contextlib
import gc
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import dtypes
from . import gemm_ceiling


# ---------------------------------------------------------------- targets
class Target:
    """One implementation to validate and time: framework 'gpunet' (device =
    backend name cpu/sim/cupy/cuda) or 'torch' (device cpu/cuda)."""

    def __init__(self, framework: str, device: str, dtype=np.float32):
        self.framework = framework
        self.device = device
        self.dtype = dtypes.resolve(dtype)
        if framework == "gpunet":
            from ..backend import get_backend
            self.be = get_backend(device)
        else:
            import torch
            self.torch = torch
            self.tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[self.dtype]

    @property
    def name(self) -> str:
        name = self.device if self.framework == "gpunet" else f"torch-{self.device}"
        return name if self.dtype in (np.float32, np.float64) else f"{name}-{self.dtype.name}"

    def rtol(self, case_rtol: float) -> float:
        """The normwise tolerance of this target: the case's, or for a half
        dtype 8 eps(dtype) (inputs and outputs each rounded once, float32 compute)."""
        return max(case_rtol, 8 * dtypes.eps(self.dtype)) if dtypes.is_half(self.dtype) else case_rtol

    @property
    def on_gpu(self) -> bool:
        return self.device in ("cuda", "cupy")

    def array(self, a: np.ndarray):
        """A native array (NumPy/CuPy/torch tensor) holding `a`; floating
        arrays take the target's dtype, integer arrays keep theirs."""
        float_ = a.dtype.kind == "f"
        if self.framework == "gpunet":
            return self.be.asarray(a, dtype=self.dtype if float_ else None)
        t = self.torch.from_numpy(np.ascontiguousarray(a))
        return t.to(self.device, dtype=self.tdtype if float_ else None).contiguous()

    def host(self, x) -> np.ndarray:
        """A NumPy copy (never a view: the reference's outputs must not change
        when a later step writes into the arrays they came from)."""
        if self.framework == "torch":
            return np.array(x.detach().cpu().numpy())
        from ..backend import to_numpy
        return np.array(to_numpy(x))

    def sync(self):
        if self.framework == "gpunet":
            self.be.synchronize()
        elif self.device == "cuda":
            self.torch.cuda.synchronize()

    def event_pair(self):
        """(start, end) CUDA events on the current stream and a function giving
        the seconds between them once `end` has completed."""
        if self.framework == "torch":
            ev = self.torch.cuda.Event
            return ev(enable_timing=True), ev(enable_timing=True), lambda s, e: s.elapsed_time(e) / 1e3
        import cupy
        return cupy.cuda.Event(), cupy.cuda.Event(), lambda s, e: cupy.cuda.get_elapsed_time(s, e) / 1e3

    def free_memory(self):
        """Give cached device memory back between cases (the next case's
        copies should not compete with this one's leftovers). Host arrays go
        when their last reference does; a full gc.collect would cost a third
        of a second with PyTorch loaded, so only young generations are swept."""
        if not self.on_gpu:
            return
        gc.collect(1)
        if self.framework == "gpunet":
            self.be.xp.get_default_memory_pool().free_all_blocks()
        else:
            self.torch.cuda.empty_cache()


# ---------------------------------------------------------------- cases
@dataclass
class Spec:
    """A case's data as NumPy arrays holding float32-representable values
    (each target casts them to its dtype, so the float64 reference sees
    exactly the timed inputs): `state` (weights by PyTorch state_dict key, or
    anything the builders share) and `inputs` (what each step reads and what
    gets rotated: several copies cycle through the repetitions)."""
    state: dict
    inputs: dict


@dataclass
class Runner:
    """`step(i)` runs one iteration on input copy i % copies; `outputs()`
    returns native arrays from the latest step, by name, for validation;
    `info` says which variant ran where that varies (e.g. torch's fused Adam);
    `validated` names the reference outputs checked (None: all of them)."""
    step: Callable[[int], None]
    outputs: Callable[[], dict]
    info: dict = field(default_factory=dict)
    validated: tuple | None = None


@dataclass
class Case:
    op: str                 # family.op.pass, e.g. "conv.conv2d.fwdbwd"; what --ops matches
    shape: str              # the shape in words, e.g. "(64,3,32,32)->32 k3 p1"
    flops: float            # floating-point operations per step
    bytes: float            # fewest bytes a step must move to/from memory
    setup: Callable[[np.random.Generator], Spec]
    impls: dict             # "gpunet"/"torch" -> builder(target, state, copies) -> Runner
    rtol: float = 1e-4      # normwise tolerance against the float64 reference
    sweep: tuple | None = None   # (sweep name, x value) when the case is a point of a scaling sweep
    rotate: bool = True     # False when the step mutates its inputs (optimizer state)
    needs: Callable[[], str | None] = lambda: None   # reason the case cannot run here, or None
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.op} {self.shape}"


@dataclass
class Policy:
    """How long to warm up and how many repetitions to time."""
    min_reps: int
    max_reps: int
    budget_s: float          # stop timing after this much wall time (once min_reps are done)
    warmup_s: float
    min_warmup: int
    cache_bytes: int         # last-level cache: rotated inputs must exceed it
    memory_budget: int       # at most this many bytes of input copies
    rounds: int = 2          # alternating rounds the budget and repetitions are split into
    rewarm_s: float | None = None  # the warm-up of every round after the first (None: warmup_s)


@dataclass
class Platform:
    """Targets that run the same shapes against the same reference and share
    measured ceilings and one file set (e.g. gpunet cpu + torch cpu)."""
    label: str                  # "cpu", "sim", "gpu-nvidia-h100..." (file-name stem)
    size: str                   # shape set: "quick", "cpu" or "gpu"
    targets: list
    reference: Target
    policy: Policy
    ceilings: dict = field(default_factory=dict)


# ---------------------------------------------------------------- validation
def compare(outputs: dict, reference: dict, rtol: float) -> tuple[float, str | None]:
    """(worst normwise error, None if within rtol else a readable reason)."""
    worst, problem = 0.0, None
    for key, ref in reference.items():
        if key not in outputs:
            return math.inf, f"{key}: missing from the outputs"
        a = np.asarray(outputs[key], dtype=np.float64)
        r = np.asarray(ref, dtype=np.float64)
        if a.shape != r.shape:
            return math.inf, f"{key}: shape {a.shape}, expected {r.shape}"
        if not np.isfinite(a).all():
            return math.inf, f"{key}: {int((~np.isfinite(a)).sum())} non-finite values"
        if a.size == 0:
            continue
        diff = np.abs(a - r)
        scale = float(np.abs(r).max())
        err = float(diff.max()) / (scale if scale > 0 else 1.0)
        if err > worst:
            worst = err
            if err > rtol:
                i = np.unravel_index(int(diff.argmax()), a.shape)
                problem = (f"{key}: normwise error {err:.3g} > rtol {rtol:.3g}; worst at index "
                           f"{tuple(int(t) for t in i)}: got {a[i]:.6g}, expected {r[i]:.6g}")
    return worst, problem


def host_outputs(target: Target, runner: Runner) -> dict:
    return {k: target.host(v) for k, v in runner.outputs().items()}


# ---------------------------------------------------------------- timing
def copies_for(spec: Spec, case: Case, policy: Policy) -> int:
    """How many input copies to cycle so their total exceeds the cache three
    times over (at least 2, at most 16, within the memory budget)."""
    if not case.rotate:
        return 1
    size = sum(a.size * 4 if a.dtype.kind == "f" else a.nbytes for a in spec.inputs.values())  # timed in float32
    if size == 0:
        return 1
    n = min(16, max(2, math.ceil(3 * policy.cache_bytes / size)))
    while n > 1 and n * size > policy.memory_budget:
        n -= 1
    return n


class Timed:
    """One validated implementation being timed: its step, the next input
    copy index and the repetition times so far (seconds)."""

    def __init__(self, target: Target, step: Callable[[int], None]):
        self.target, self.step, self.i, self.times = target, step, 1, []  # step(0) was the validation run

    def warm_up(self, policy: Policy, first: bool = True):
        t0 = time.perf_counter()
        n = 0
        seconds = policy.warmup_s if first or policy.rewarm_s is None else policy.rewarm_s
        while n < policy.min_warmup or (time.perf_counter() - t0 < seconds and n < 1000):
            self.step(self.i)
            self.i += 1
            n += 1
        self.target.sync()

    def block(self, reps: int):
        """Time `reps` repetitions: on the GPU with an event pair around each and
        one wait at the end of the block (no host sync between repetitions); on
        the CPU, where every step is synchronous, with the host clock."""
        if self.target.on_gpu:
            pairs = []
            for _ in range(reps):
                start, end, elapsed = self.target.event_pair()
                start.record()
                self.step(self.i)
                end.record()
                pairs.append((start, end))
                self.i += 1
            pairs[-1][1].synchronize()
            self.times += [elapsed(a, b) for a, b in pairs]
        else:
            for _ in range(reps):
                t0 = time.perf_counter()
                self.step(self.i)
                self.times.append(time.perf_counter() - t0)
                self.i += 1

    def run_for(self, seconds: float, min_total: int, max_total: int):
        """Time repetitions until `seconds` have passed and `min_total` are
        recorded, or `max_total` are (GPU blocks grow 1, 2, 4, ... 32)."""
        t0 = time.perf_counter()
        batch = 1
        while len(self.times) < max_total:
            self.block(min(batch, max_total - len(self.times)))
            if len(self.times) >= min_total and time.perf_counter() - t0 > seconds:
                return
            if self.target.on_gpu:
                batch = min(2 * batch, 32)


def time_interleaved(timed: list[Timed], policy: Policy):
    """Time every implementation in the policy's alternating rounds, so a
    slow spell on a shared machine is less likely to fall on one of them
    alone. Each round starts with a warm-up, which also lets the previous
    framework's idle worker threads (OpenBLAS, OpenMP spin for a while after
    their last job) stop competing for the cores; after the first, caches
    and allocations are warm, so that one may be shorter (rewarm_s)."""
    rounds = policy.rounds
    for k in range(1, rounds + 1):
        for t in timed:
            t.warm_up(policy, first=k == 1)
            t.run_for(policy.budget_s / rounds, math.ceil(policy.min_reps * k / rounds),
                      math.ceil(policy.max_reps * k / rounds))


def summary(times: np.ndarray) -> dict:
    p25, med, p75 = np.percentile(times, [25, 50, 75])
    return {"reps": int(times.size), "median_s": float(med), "min_s": float(times.min()),
            "max_s": float(times.max()), "p25_s": float(p25), "p75_s": float(p75)}


# ---------------------------------------------------------------- one case
def _error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def _prepare(target: Target, case: Case, spec: Spec, n: int) -> Runner:
    builder = case.impls.get(target.framework)
    if builder is None:
        raise LookupError(f"no {target.framework} implementation")
    copies = [{k: target.array(a) for k, a in spec.inputs.items()} for _ in range(n)]
    # each target its own copy of the weights: a builder may hand them to code
    # that keeps the arrays and updates them in place (an optimizer step)
    state = {k: np.array(v) for k, v in spec.state.items()}
    return builder(target, state, copies)


def run_case(case: Case, platform: Platform, seed: int = 0, log=print) -> list[dict]:
    """Validate and time `case` on every target of `platform`; one result
    dict per target (status ok / invalid / error / skipped)."""
    base = {"op": case.op, "shape": case.shape, "name": case.name, "flops": case.flops, "bytes": case.bytes,
            "sweep": list(case.sweep) if case.sweep else None, "rtol": case.rtol, "note": case.note}
    results = [dict(base, target=t.name, status="skipped") for t in platform.targets]
    reason = case.needs()
    if reason:
        for r in results:
            r["reason"] = reason
        return results
    spec = case.setup(np.random.default_rng(seed))
    ref = platform.reference
    try:
        runner = _prepare(ref, case, spec, 1)
        runner.step(0)
        reference = host_outputs(ref, runner)
        del runner
    except Exception as e:  # noqa: BLE001 - reported, not raised: one broken op must not stop the suite
        for r in results:
            r.update(status="error", reason=f"reference ({ref.name} float64) failed: {_error(e)}")
        log(f"  reference {ref.name} failed on {case.name}:\n{traceback.format_exc()}")
        return results
    finally:
        ref.free_memory()
    n = copies_for(spec, case, platform.policy)
    timed, timed_results, gemms = [], [], []
    torch_cpu = next((t.torch for t in platform.targets if t.framework == "torch" and t.device == "cpu"), None)
    for target, r in zip(platform.targets, results):
        r["copies"] = n
        r["rtol"] = target.rtol(case.rtol)
        if case.impls.get(target.framework) is None:
            r["reason"] = f"no {target.framework} implementation"
            continue
        try:
            runner = _prepare(target, case, spec, n)
            record = torch_cpu is not None and target.framework == "gpunet" and target.device == "cpu" \
                and target.dtype == np.float32
            with gemm_ceiling.recording() if record else contextlib.nullcontext() as products:
                runner.step(0)
            if products:
                gemms.append((r, products))
            checked = reference if runner.validated is None else {k: reference[k] for k in runner.validated}
            err, problem = compare(host_outputs(target, runner), checked, target.rtol(case.rtol))
            r["err"] = err if math.isfinite(err) else None
            if runner.info:
                r["info"] = runner.info
            if problem:
                r.update(status="invalid", reason=f"validation failed, not timed: {problem}")
            else:
                timed.append(Timed(target, runner.step))
                timed_results.append(r)
        except NotImplementedError as e:
            if not dtypes.is_half(target.dtype):
                r.update(status="error", reason=_error(e))
            else:  # said, not hidden: the op has no half path on this backend yet
                r.update(status="no half path", reason=_error(e))
        except Exception as e:  # noqa: BLE001
            r.update(status="error", reason=_error(e))
        finally:
            runner = None
    try:
        time_interleaved(timed, platform.policy)
        for t, r in zip(timed, timed_results):
            r.update(status="ok", **summary(np.asarray(t.times)))
    except Exception as e:  # noqa: BLE001
        for r in timed_results:
            r.update(status="error", reason=f"while timing: {_error(e)}")
    finally:
        timed = None
        for target in platform.targets:
            target.free_memory()
    for r, products in gemms:  # after the timing, which they must not disturb
        if r["status"] == "ok":
            try:
                r["gemm"] = gemm_ceiling.measure(products, torch_cpu)
            except Exception as e:  # noqa: BLE001 - the timing stands without it
                r["gemm_error"] = _error(e)
    derive(results, platform.ceilings)
    return results


def derive(results: list[dict], ceilings: dict):
    """For one case's results: roofline floor, fraction of it, achieved rates
    and the ratio to PyTorch."""
    peak, bw = ceilings.get("flops"), ceilings.get("bandwidth")
    torch_time = next((r["median_s"] for r in results if r["target"].startswith("torch") and r["status"] == "ok"),
                      None)
    for r in results:
        if r["status"] != "ok":
            continue
        t = r["median_s"]
        r["gflops"] = r["flops"] / t / 1e9
        r["gbps"] = r["bytes"] / t / 1e9
        if peak and bw:
            r["floor_s"] = max(r["flops"] / peak, r["bytes"] / bw)
            r["roofline_fraction"] = r["floor_s"] / t
            r["bound"] = "compute" if r["flops"] / peak >= r["bytes"] / bw else "memory"
        if torch_time and not r["target"].startswith("torch"):
            r["ratio_to_torch"] = t / torch_time
            if "gemm" in r:
                r["gemm"]["floor_ratio"] = gemm_ceiling.floor_ratio(r["gemm"], torch_time)
