"""Conv2d forward+backward on the CPU: gpunet's NumPy backend against PyTorch CPU.

The issue's shape: (64, 3, 32, 32) -> 32 channels, 3x3, padding 1. PyTorch runs
with as many threads as NumPy's BLAS (OpenBLAS/MKL) uses, so both get the same
cores; the outputs and all gradients are checked against PyTorch before timing.

    python bench/bench_conv_cpu.py [--reps 20] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import gpunet
from gpunet.nn import Conv2d
from gpunet.testing import assert_close


def blas_threads() -> int:
    """Threads NumPy's BLAS uses: threadpoolctl when present, else the usual env vars, else all cores."""
    try:
        from threadpoolctl import threadpool_info
        n = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
        if n:
            return max(n)
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count() or 1


def median_ms(fns, reps: int) -> list[float]:
    """Median wall time of each function; the functions alternate within every
    rep so that a change in machine load affects them alike."""
    for fn in fns:
        fn()  # warm up (allocator, BLAS thread pool)
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [float(np.median(t)) * 1e3 for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: NumPy's BLAS threads)")
    ap.add_argument("--shape", type=int, nargs=4, default=(64, 3, 32, 32), metavar=("N", "C", "H", "W"))
    ap.add_argument("--out-channels", type=int, default=32)
    args = ap.parse_args()
    import torch

    threads = args.threads or blas_threads()
    torch.set_num_threads(threads)
    n, c, h, w = args.shape
    gpunet.manual_seed(0)
    conv = Conv2d(c, args.out_channels, 3, padding=1)
    ref = torch.nn.Conv2d(c, args.out_channels, 3, padding=1)
    conv.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    dy = rng.standard_normal((n, args.out_channels, h, w), dtype=np.float32)
    xt, dyt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)

    def step_gpunet():
        conv.zero_grad()
        conv(x)
        return conv.backward(dy)

    def step_torch():
        xt.grad = None
        ref.zero_grad()
        ref(xt).backward(dyt)

    conv.zero_grad()
    y = conv(x)
    dx = conv.backward(dy)
    yt = ref(xt)
    yt.backward(dyt)
    assert_close(y, yt.detach().numpy(), tol_scale=4, name="output")
    assert_close(dx, xt.grad.numpy(), tol_scale=4, name="grad input")
    # the weight and bias gradients each sum N*H*W products with cancellation:
    # float32 rounding (PyTorch's more than ours) grows with the largest entry
    for name, ours, theirs in (("weight", conv.weight.grad, ref.weight.grad), ("bias", conv.bias.grad, ref.bias.grad)):
        theirs = theirs.numpy()
        assert_close(ours, theirs, atol=1e-5 * float(np.abs(theirs).max()), name=f"grad {name}")

    t_ours, t_torch = median_ms([step_gpunet, step_torch], args.reps)
    print(f"Conv2d({c}, {args.out_channels}, 3, padding=1) fwd+bwd on {tuple(args.shape)} float32, "
          f"{threads} thread(s), median of {args.reps}")
    print(f"  gpunet cpu : {t_ours:8.3f} ms")
    print(f"  torch cpu  : {t_torch:8.3f} ms   (torch {torch.__version__})")
    print(f"  ratio gpunet/torch: {t_ours / t_torch:.2f}x")


if __name__ == "__main__":
    main()
