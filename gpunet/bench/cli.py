"""Command line: which devices, which cases, where the results go."""
from __future__ import annotations

import argparse
import fnmatch
import re
import sys
import time
from pathlib import Path

from . import environment as envmod
from .harness import Platform, Policy, Target

GPU_NAMES = ("cuda", "cupy")
DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m gpunet.bench",
        description="Validate, then time, gpunet's ops and training steps on every backend against PyTorch; "
                    "write a table, JSON, Markdown and plots.")
    ap.add_argument("--device", nargs="+", metavar="DEV",
                    help="cpu, sim, cupy and/or cuda (space- or comma-separated); default: every available one "
                         "except sim. PyTorch runs beside them (CPU, and CUDA when a GPU backend is chosen)")
    ap.add_argument("--ops", nargs="+", metavar="PATTERN",
                    help="only cases whose name contains one of these, or matches it as a glob "
                         "(e.g. conv2d norm 'train.*')")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few repetitions: a smoke test in seconds")
    ap.add_argument("--out", default="bench/results", help="directory for the result files (default: %(default)s)")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out (no ratios; gpunet cpu is the "
                                                            "float64 reference)")
    ap.add_argument("--threads", type=int, help="threads for NumPy's BLAS and PyTorch alike (default: the BLAS "
                                                "pool's size)")
    ap.add_argument("--time-limit", type=float, metavar="S",
                    help="start no new case after S seconds (the rest is reported as skipped)")
    ap.add_argument("--dtypes", nargs="+", metavar="DT", default=list(DTYPES), choices=DTYPES,
                    help="gpunet's rows: %(choices)s (default: all three; PyTorch's row is float32)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                    help="compare two result JSON files instead of running: per-case time ratios, slowdowns "
                         "above the noise band flagged (exit status 1 when there is one)")
    ap.add_argument("--noise", type=float, default=0.05,
                    help="with --compare: the smallest noise band, as a fraction (default: %(default)s)")
    return ap.parse_args(argv)


def selected(patterns, name: str, op: str) -> bool:
    if not patterns:
        return True
    low = name.lower()
    return any(p.lower() in low or fnmatch.fnmatch(low, p.lower()) or fnmatch.fnmatch(op, p) for p in patterns)


def choose_devices(requested) -> tuple[list[str], list[str]]:
    """(devices to run, messages about requested ones that cannot run)."""
    from ..backend import backends
    avail = backends()
    if not requested:
        return [d for d in ("cpu", "cupy", "cuda") if avail[d]["available"]], []
    names = [d for item in requested for d in item.split(",") if d]
    run, msgs = [], []
    for d in names:
        if d not in avail:
            raise SystemExit(f"--device: unknown device {d!r}; expected cpu, sim, cupy or cuda")
        if avail[d]["available"]:
            if d not in run:
                run.append(d)
        else:
            msgs.append(f"{d}: not available ({avail[d]['reason']})")
    return run, msgs


def policy(size: str, gpu: bool) -> Policy:
    if gpu:
        from ..backend import get_backend
        xp = get_backend("cupy").xp
        cache = int(xp.cuda.runtime.getDeviceProperties(0).get("l2CacheSize", 50 * 2 ** 20))
        budget = min(xp.cuda.runtime.memGetInfo()[0] // 4, 4 * 2 ** 30)
    else:
        cache = envmod.last_level_cache()
        budget = min(envmod.available_memory() // 4, 2 * 2 ** 30)
    if size == "quick":
        return Policy(min_reps=3, max_reps=5, budget_s=0.0, warmup_s=0.0, min_warmup=1, cache_bytes=cache,
                      memory_budget=budget)
    if gpu:
        return Policy(min_reps=10, max_reps=200, budget_s=0.5, warmup_s=0.1, min_warmup=3, cache_bytes=cache,
                      memory_budget=budget)
    # CPU: steps of a second or more get 8 repetitions (one a round; the 10-minute budget on 2 cores), fast ones
    # many. The rounds: a shared 2-core machine's speed drifts by up to 1.5x over seconds, so 8 of a quarter
    # second each give both frameworks the same spells more nearly than 2 of a second (a training step's ratio
    # moved by 0.1 between runs of the same commit with 2)
    return Policy(min_reps=5, max_reps=50, budget_s=2.0, warmup_s=0.2, min_warmup=1, cache_bytes=cache,
                  memory_budget=budget, rounds=8, rewarm_s=0.05)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def platforms(devices, torch, quick: bool, dtypes=DTYPES) -> list[Platform]:
    """Group targets that share shapes, reference, ceilings and a file set;
    gpunet's rows in each of `dtypes` (in DTYPES' order)."""
    def gpunet_rows(device: str) -> list[Target]:
        return [Target("gpunet", device, dt) for dt in DTYPES if dt in dtypes]
    out = []
    torch_gpu = torch is not None and torch.cuda.is_available()
    if "cpu" in devices:
        targets = gpunet_rows("cpu") + ([Target("torch", "cpu")] if torch is not None else [])
        ref = Target("torch" if torch is not None else "gpunet", "cpu", "float64")
        out.append(Platform("cpu", "quick" if quick else "cpu", targets, ref, policy("quick" if quick else "cpu",
                                                                                   False)))
    if "sim" in devices:  # test-only backend: CUDA kernels run by a CPU thread simulator, tiny shapes only
        ref = Target("torch" if torch is not None else "gpunet", "cpu", "float64")
        out.append(Platform("sim", "quick", gpunet_rows("sim"), ref, policy("quick", False)))
    gpu = [d for d in GPU_NAMES if d in devices]
    if gpu:
        targets = [t for d in gpu for t in gpunet_rows(d)] + ([Target("torch", "cuda")] if torch_gpu else [])
        ref = Target("torch", "cuda", "float64") if torch_gpu else Target("gpunet", "cupy", "float64")
        size = "quick" if quick else "gpu"
        out.append(Platform("gpu-" + slug(envmod.gpu_info()["gpu"]), size, targets, ref, policy(size, True)))
    return out


def cases(size: str):
    from .models import model_cases
    from .ops import op_cases
    return op_cases(size) + model_cases(size)


def run_platform(plat: Platform, args, threads: int, deadline: float | None) -> tuple[dict, bool]:
    """Validate and time every selected case on one platform. The JSON and
    Markdown are rewritten after every case, so a run cut short (a hard time
    limit, a crash) still leaves what it measured."""
    from . import roofline
    from .harness import derive, run_case
    from .report import progress_line, table, write_all
    gpu = plat.label.startswith("gpu")
    mode = envmod.math_mode(not args.no_torch)
    env = envmod.environment(threads, gpu, mode, not args.no_torch)
    quick = plat.size == "quick"

    def measure_ceilings():
        if plat.label == "sim":  # the simulator has no meaningful roofline
            return
        torch = None if args.no_torch else envmod.torch_module()
        found = roofline.gpu_ceilings(quick) if gpu else roofline.host_ceilings(threads, quick, torch)
        for key in ("flops", "bandwidth"):  # keep the best: other load on the machine only lowers them
            plat.ceilings[key] = max(plat.ceilings.get(key, 0.0), found[key])
        plat.ceilings.setdefault("measured", []).append({k: v for k, v in found.items() if k != "how"})
        plat.ceilings["how"] = found["how"] + "; the better of the measurements before and after the cases"
        print(f"[{plat.label}] ceilings: {plat.ceilings['flops'] / 1e9:.1f} GFLOP/s, "
              f"{plat.ceilings['bandwidth'] / 1e9:.1f} GB/s ({found['how']})", flush=True)
    measure_ceilings()
    timer = ("CUDA events (cupy.cuda.Event for gpunet, torch.cuda.Event for PyTorch), synchronised once per "
             "batch of repetitions" if gpu else "Host clock (time.perf_counter) around each synchronous step")
    results = []
    report = {"label": plat.label, "size": plat.size, "environment": env, "ceilings": plat.ceilings,
              "policy": vars(plat.policy), "reference": f"{plat.reference.name} in float64", "timer": timer,
              "targets": [t.name for t in plat.targets], "results": results}
    for case in cases(plat.size):
        if not selected(args.ops, case.name, case.op):
            continue
        if deadline is not None and time.monotonic() > deadline:
            results += [{"op": case.op, "shape": case.shape, "name": case.name, "target": t.name,
                         "status": "skipped", "reason": "--time-limit reached", "flops": case.flops,
                         "bytes": case.bytes, "sweep": list(case.sweep) if case.sweep else None}
                        for t in plat.targets]
            continue
        rs = run_case(case, plat, seed=args.seed)
        print(progress_line(plat.label, rs), flush=True)
        results += rs
        write_all(report, Path(args.out), with_plots=False)
    measure_ceilings()
    env["load_average_at_end"] = envmod.load_average()
    for name in dict.fromkeys(r["name"] for r in results):
        derive([r for r in results if r["name"] == name], plat.ceilings)
    print(f"\n== {plat.label} ({plat.size} shapes, {threads} threads) ==\n{table(results)}\n", flush=True)
    failed = any(r["status"] in ("invalid", "error") for r in results)
    return report, failed


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["profile"]:  # the simulator's access profile (gpunet/bench/profile.py)
        from .profile import main as profile_main
        return profile_main(argv[1:])
    args = parse_args(argv)
    if args.compare:
        from .compare import main as compare_main
        return compare_main(args.compare, args.noise)
    envmod.disable_tf32()  # before CuPy creates a cuBLAS handle
    threads = envmod.set_threads(args.threads, not args.no_torch)
    devices, msgs = choose_devices(args.device)
    for m in msgs:
        print(f"skipping {m}", file=sys.stderr)
    if not devices:
        print("no requested device is available", file=sys.stderr)
        return 2
    torch = None if args.no_torch else envmod.torch_module()
    plats = platforms(devices, torch, args.quick, args.dtypes)
    if args.list:
        for plat in plats:
            for case in cases(plat.size):
                if selected(args.ops, case.name, case.op):
                    print(f"[{plat.label}] {case.name}" + (f"  (sweep: {case.sweep[0]})" if case.sweep else ""))
        return 0
    from .report import write_all
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    any_failed = False
    for plat in plats:
        report, failed = run_platform(plat, args, threads, deadline)
        any_failed |= failed
        for path in write_all(report, Path(args.out), with_plots=not args.no_plots):
            print(f"wrote {path}")
    if any_failed:
        print("some cases failed validation or raised (see the status column)", file=sys.stderr)
    return 1 if any_failed else 0
