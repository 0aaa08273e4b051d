"""The one dispatch policy: which code runs an op call.

A Backend states what it can do (gpunet.backend: `kernels`, `kernel_dtypes`,
`fused`); an op states what it has (a kernel, unless it says why not for
this call; a CuPy fusion or not) and asks `path`, once per call, which of
three paths runs:

    "kernel"  the hand-written kernels, be.kernels (sim, cuda)
    "fused"   the op's CuPy fusion of its array algorithm (cupy; cuda where
              its kernels cannot take the call)
    "array"   the op's array algorithm on be.xp (everything else)

A backend with kernels that runs anything else records the fallback in
gpunet.backend.fallbacks(). Ops with one path only (the elementwise losses,
flatten) do not ask. Half precision will be decided here too: the autocast
policy (the dtype an op computes in) belongs at the top of `path`, so that
each op call is cast once, not per module.
"""
from __future__ import annotations

import numpy as np

from . import dtypes
from .backend import Backend, fallback


def path(be: Backend, op: str, dtype, *, fused: bool = False, unsupported: str | None = None) -> str:
    """"kernel", "fused" or "array" for one call of `op` on `be` with arrays
    of `dtype`. `fused`: the op has a CuPy fusion; `unsupported`: why the op's
    kernels cannot take this call (a shape limit, a mode, no kernel at all),
    None when they can. Half dtypes never get here from an op that computes
    them (gpunet.ops.half reads them in float32 first): any other op refuses
    them, on every backend, rather than compute in 16 bits."""
    if dtypes.is_half(dtype):
        raise NotImplementedError(f"{op}: no {np.dtype(dtype).name} path yet (half precision runs activations, "
                                  "softmax, linear, convolutions, the optimizers, layer_norm, group_norm, batch "
                                  "norm, cross_entropy, nll_loss, pooling, dropout, embedding, RNN/LSTM/GRU and "
                                  "attention so far); convert to float32")
    if be.kernels is not None:
        dtype = np.dtype(dtype)
        if unsupported is None and dtype in be.kernel_dtypes:
            return "kernel"
        if unsupported is None:
            kinds = "/".join(sorted(d.name for d in be.kernel_dtypes))
            unsupported = f"dtype {dtype} (the kernels are {kinds})"
        fallback(be, op, unsupported)
    return "fused" if fused and be.fused else "array"
