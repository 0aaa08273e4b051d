"""Benchmarks of data-parallel training, run under mpiexec:

    mpiexec -n 2 python -m gpunet.distributed.bench allreduce [--device cpu|cuda] [--out F.json]
    mpiexec -n 1 python -m gpunet.distributed.bench scaling --out F.json     (then -n 2, same --out)

allreduce: the all-reduce (sum, float32) that DistributedDataParallel uses,
on host arrays over MPI (--device cpu) or GPU arrays over NCCL (--device
cuda), over message sizes from 8 B to 64 MB, as nccl-tests reports it: the
time per call (each rank's mean over the timed calls, the slowest rank's
taken), algbw = bytes / time and busbw = algbw * 2(n-1)/n, the bandwidth a
ring all-reduce needs per link, comparable across rank counts.

scaling: samples/s of the digits CNN training (gpunet.fit, distributed,
batch 32 per process, the digits training split), one line per process
count appended to --out, so runs with -n 1 and -n 2 land side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from . import group as groupmod


def _sizes(max_bytes: int):
    n = 8
    while n <= max_bytes:
        yield n
        n *= 4


def bench_allreduce(device: str, max_bytes: int, iters: int, warmup: int) -> list[dict]:
    g = groupmod._group
    gpu = device in ("cuda", "cupy")
    xp = np
    if gpu:
        import cupy as xp
    rows = []
    for nbytes in _sizes(max_bytes):
        x = xp.ones(nbytes // 4, np.float32)
        t = g.transport(x)
        reps = max(3, iters if nbytes < 2 ** 22 else iters // 4)
        for _ in range(warmup):
            t.all_reduce(x, "sum").wait()
        g.agree("barrier")
        if gpu:
            xp.cuda.get_current_stream().synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            t.all_reduce(x, "sum").wait()
        if gpu:
            xp.cuda.get_current_stream().synchronize()
        mine = np.array([(time.perf_counter() - start) / reps, _blocking_time(g, x, reps) if not gpu else 0.0])
        g.mpi.all_reduce(mine, "max").wait()
        seconds = float(mine[0])
        algbw = nbytes / seconds / 1e9
        rows.append({"bytes": nbytes, "count": nbytes // 4, "reps": reps, "time_us": seconds * 1e6,
                     "algbw_GBps": algbw, "busbw_GBps": algbw * 2 * (g.size - 1) / g.size})
        if not gpu:  # the same all-reduce as a plain blocking MPI_Allreduce: what the polling costs
            rows[-1]["blocking_time_us"] = float(mine[1]) * 1e6
    return rows


def _blocking_time(g, x, reps: int) -> float:
    MPI = g.mpi.MPI
    g.comm.Barrier()
    start = time.perf_counter()
    for _ in range(reps):
        g.comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
    return (time.perf_counter() - start) / reps


def bench_scaling(device: str, epochs: int) -> dict:
    from .. import fit, manual_seed, models, nn, optim
    from ..data import DataLoader, digits_splits
    from .sampler import DistributedSampler
    manual_seed(0)
    train, _, _ = digits_splits(val=0.1, test=0.2, seed=0)
    model = models.digits_cnn(in_channels=1, image_size=8, num_classes=10).to(device)
    loader = DataLoader(train, 32, sampler=DistributedSampler(train, seed=0), device=device)
    history = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=2e-3), loader,
                  epochs=epochs + 1, progress=False, distributed=True)
    rates = history["samples_per_s"][1:]  # the first epoch warms up
    return {"processes": groupmod._group.size, "batch_per_process": 32, "epochs_timed": epochs,
            "samples_per_s_median": float(np.median(rates)), "samples_per_s": rates}


def environment(device: str, threads: int) -> dict:
    from ..bench import environment as env
    from mpi4py import MPI
    info = {"device": device, "cpu": env.cpu_model(), "cpus": os.cpu_count(), "load_average": env.load_average(),
            "commit": env.git_commit(), "mpi": MPI.Get_library_version().splitlines()[0].strip(),
            "world_size": groupmod._group.size, "blas_threads_per_process": threads,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device in ("cuda", "cupy"):
        info["gpu"] = env.gpu_info()
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mpiexec -n N python -m gpunet.distributed.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("allreduce", "scaling"))
    ap.add_argument("--device", default="cpu", help="cpu (MPI, host arrays) or cuda (NCCL, one GPU per rank)")
    ap.add_argument("--max-bytes", type=int, default=64 * 2 ** 20)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="scaling: timed epochs (after one warm-up epoch)")
    ap.add_argument("--threads", type=int, help="BLAS threads per process (default: the cores over the "
                                                "processes of the node)")
    ap.add_argument("--out", help="JSON file: allreduce writes it, scaling appends its line")
    args = ap.parse_args(argv)
    groupmod.init_process_group(device=args.device if args.device in ("cuda", "cupy") else None)
    device = groupmod.local_device(args.device)
    from ..bench.environment import set_threads
    # the node's cores shared out: n processes with 1/n of the BLAS threads each
    threads = set_threads(args.threads or max(1, (os.cpu_count() or 1) // groupmod._group.local_size),
                          with_torch=False)
    lead = groupmod.get_rank() == 0
    if args.mode == "allreduce":
        rows = bench_allreduce(device, args.max_bytes, args.iters, args.warmup)
        if lead:
            print(f"all-reduce sum float32, {groupmod.get_world_size()} ranks, {device} "
                  f"({'NCCL' if device.startswith(('cuda', 'cupy')) else 'MPI'})")
            print(f"{'bytes':>10} {'time (us)':>11} {'algbw GB/s':>11} {'busbw GB/s':>11} {'blocking (us)':>14}")
            for r in rows:
                print(f"{r['bytes']:>10} {r['time_us']:>11.1f} {r['algbw_GBps']:>11.3f} {r['busbw_GBps']:>11.3f} "
                      f"{r.get('blocking_time_us', float('nan')):>14.1f}")
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"environment": environment(device, threads), "allreduce": rows}, f, indent=1)
    else:
        row = bench_scaling(device, args.epochs)
        if lead:
            print(f"digits CNN, {row['processes']} process(es) x {threads} BLAS thread(s), batch 32 each: "
                  f"{row['samples_per_s_median']:,.0f} samples/s (median of {args.epochs} epochs)")
            if args.out:
                old = json.load(open(args.out)) if os.path.exists(args.out) else {"runs": []}
                old["runs"].append({"environment": environment(device, threads), **row})
                with open(args.out, "w") as f:
                    json.dump(old, f, indent=1)
    groupmod.destroy_process_group()


if __name__ == "__main__":
    main()
