"""The GEMM share of a cpu case, measured: the limit gpunet's GEMMs set.

The cpu backend runs its 2-D float32 products on its own host GEMM
(gpunet/ops/linear.py, host_ops.c) and the rest (batched, float64, small)
on NumPy's BLAS (OpenBLAS in the wheels); PyTorch's CPU build has its own
(MKL, oneDNN). Where those run the same shapes faster, no work outside the
GEMMs brings gpunet to PyTorch's time. This module measures that limit case
by case rather than from one large square GEMM:

1. `recording()` wraps numpy.matmul (the ops call it as np.matmul or
   be.xp.matmul, looked up at call time; the `@` of adaptive pooling's small
   averaging matrices is not seen) and the host GEMM while gpunet runs one
   step of the case, and keeps each float32 product's path, operand shapes
   and layouts (a transposed view of the last two axes stays one, as BLAS
   is told);
2. `measure()` replays each distinct product on the path gpunet took and in
   torch.matmul (same shapes, layouts and thread count; operands in cache,
   best of a few runs: both sides at their fastest) and sums them per step.

`floor_ratio()` turns that into the lowest gpunet/PyTorch ratio the case can
reach with these GEMMs: gpunet's products at their measured time, everything
else taking what PyTorch's step takes outside the same products,
    floor = max(G_gpunet, T_torch - G_torch + G_gpunet) / T_torch,
(where PyTorch does not run these products, as in its direct convolutions,
T_torch - G_torch can be small: then G_gpunet / T_torch bounds it). The bench
reports it beside every cpu float32 case whose gpunet step runs GEMMs (those
it ran on several host threads at once apart: `Products`).
"""
from __future__ import annotations

import contextlib
import time
from collections import Counter

import numpy as np

REPLAY_REPS = 5
IDLE_S = 0.3  # for the other framework's spinning worker threads to go to sleep


def _layout(a) -> str:
    """'T' when the last two axes are a transposed contiguous block (BLAS is
    told to transpose), 'N' otherwise (contiguous, or copied by NumPy)."""
    if a.ndim >= 2 and a.strides[-2] == a.itemsize and a.shape[-2] > 1 and a.shape[-1] > 1:
        return "T"
    return "N"


class Products(Counter):
    """(path, a shape, a layout, b shape, b layout) -> calls, path "host"
    (gpunet's host GEMM) or "blas" (NumPy's), for the products run one at a
    time; `side_by_side` counts those gpunet ran on several host threads at
    once with BLAS held to one thread each (attention's blocks,
    gpunet.ops.host_threads.blas_held()): one-at-a-time replays do not model
    them, so they are left out of the share and the floor (they count as the
    rest of the step)."""
    side_by_side = 0


@contextlib.contextmanager
def recording():
    """numpy.matmul and the host GEMM counting their float32 products: yields Products."""
    from ..ops import host_threads, linear
    products = Products()
    real, host = np.matmul, linear._host_gemm

    def matmul(a, b, *args, **kwargs):
        if getattr(a, "dtype", None) == np.float32 and getattr(b, "dtype", None) == np.float32 \
                and a.ndim >= 2 and b.ndim >= 2:
            if host_threads.blas_held():
                products.side_by_side += 1
            else:
                products[("blas", a.shape, _layout(a), b.shape, _layout(b))] += 1
        return real(a, b, *args, **kwargs)

    def host_gemm(lib, a, b, out, bias):
        products[("host", a.shape, _layout(a), b.shape, _layout(b))] += 1
        return host(lib, a, b, out, bias)
    np.matmul, linear._host_gemm = matmul, host_gemm
    try:
        yield products
    finally:
        np.matmul, linear._host_gemm = real, host


def _operand(shape, layout, rng):
    """A float32 array of `shape` in `layout` (T: a transposed view)."""
    if layout == "T":
        return np.swapaxes(rng.standard_normal(shape[:-2] + shape[-2:][::-1], dtype=np.float32), -1, -2)
    return rng.standard_normal(shape, dtype=np.float32)


def _best_each(fns) -> list[float]:
    """The best of REPLAY_REPS timed runs of each function, after a pause and
    one run of all: a framework's runs together, so its worker threads are the
    ones awake (OpenBLAS's and OpenMP's spin for up to a tenth of a second
    after each job, and would take the cores from the other's)."""
    time.sleep(IDLE_S)
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(REPLAY_REPS):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def measure(products: Products, torch) -> dict:
    """Per step: the products' count (and how many ran on the host GEMM),
    FLOPs and time on gpunet's paths and through torch.matmul (seconds), each
    product timed on its own (into a preallocated output on both sides) and
    weighted by its calls."""
    from .. import hostlib
    from ..ops import linear
    rng = np.random.default_rng(0)
    calls, flops, gpunet_runs, torch_runs = [], 0.0, [], []
    for (path, sa, la, sb, lb), n in products.items():
        a, b = _operand(sa, la, rng), _operand(sb, lb, rng)
        ta, tb = (torch.from_numpy(np.swapaxes(v, -1, -2)).transpose(-1, -2) if lay == "T" else torch.from_numpy(v)
                  for v, lay in ((a, la), (b, lb)))
        batch = np.broadcast_shapes(sa[:-2], sb[:-2])
        y = np.empty(batch + (sa[-2], sb[-1]), np.float32)
        ty = torch.from_numpy(np.empty_like(y))
        calls.append(n)
        flops += n * 2.0 * int(np.prod(batch, dtype=np.int64)) * sa[-2] * sa[-1] * sb[-1]
        if path == "host":
            gpunet_runs.append(lambda a=a, b=b, y=y, lib=hostlib.load(): linear._host_gemm(lib, a, b, y, None))
        else:
            gpunet_runs.append(lambda a=a, b=b, y=y: np.matmul(a, b, out=y))
        torch_runs.append(lambda a=ta, b=tb, y=ty: torch.matmul(a, b, out=y))
    gpunet_s = sum(n * t for n, t in zip(calls, _best_each(gpunet_runs)))
    torch_s = sum(n * t for n, t in zip(calls, _best_each(torch_runs)))
    host = sum(n for key, n in products.items() if key[0] == "host")
    return {"count": sum(calls), "host_count": host, "flops": flops, "gpunet_s": gpunet_s, "torch_s": torch_s,
            "side_by_side": products.side_by_side}


def floor_ratio(gemm: dict, torch_s: float) -> float | None:
    """The lowest gpunet/PyTorch time ratio with these GEMMs at gpunet's speed
    (module docstring); None without any run one at a time (Products)."""
    if not gemm["count"]:
        return None
    return max(gemm["gpunet_s"], torch_s - gemm["torch_s"] + gemm["gpunet_s"]) / torch_s
