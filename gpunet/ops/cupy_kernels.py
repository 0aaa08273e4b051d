"""Helpers shared by the CuPy fusions that sit beside their ops (the `fused`
dispatch path: cupy, and cuda where its kernels cannot take a call).

Each fusion computes what the array path of its op computes, from the same
formulas (the array path is the documentation); only rounding may differ:
multiply-adds the compiler contracts, and the order in which sums add their
terms. T is the arrays' dtype, so float32 and float64 both run. Kernels are
built on first use: importing an op imports neither CuPy nor compiles
anything, and CuPy caches the compiled binaries (per device, and on disk).
Every kernel launches on CuPy's current stream and allocates from its
memory pool.
"""
from __future__ import annotations

import functools

import numpy as np

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_BLOCK = 256
_MAX_GRID = 1 << 16  # the raw kernels' loops stride over the rest


@functools.cache
def cupy():
    import cupy
    return cupy


def lit(v: float) -> str:
    """A Python float as an exact C double literal, cast to T where it is used."""
    return f"T({float(v)!r})"


@functools.cache
def _raw_kernel(name: str, source: str, dtype):
    return cupy().RawKernel(f"typedef {_CTYPES[np.dtype(dtype)]} T;\n" + source, name)


def launch(name: str, source: str, dtype, n: int, args):
    """Run the grid-stride RawKernel `name` of `source` (T = dtype) over n items."""
    if n:
        grid = min(-(-n // _BLOCK), _MAX_GRID)
        _raw_kernel(name, source, dtype)((grid,), (_BLOCK,), args)
