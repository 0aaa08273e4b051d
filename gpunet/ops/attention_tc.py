"""FlashAttention-2 on tensor cores (csrc/kernels/attention_tc.cu) for
gpunet.ops.attention: float16/bfloat16 q, k, v with one head dim, a multiple
of 8 up to 128, and no additive mask (causal is fine), on the kernel backends
(sim, cuda). The kernels are compiled for head dims 16, 32, 64 and 128; a
smaller multiple of 8 runs in the next one up with zero-padded columns in
shared memory (8 in 16, 24 in 32, 40..56 in 64, 72..120 in 128).
fp32 accumulation and softmax; the forward saves the per-row log-sum-exp in
float32; the backward recomputes P tile by tile and adds dq up with float
atomics (not bitwise reproducible) in an O(L·d) float32 workspace."""
from __future__ import annotations

import functools

import numpy as np

from .. import dtypes
from .half import kernel_view

HEAD_DIMS = tuple(range(8, 129, 8))  # what the binding accepts


def eligible(be, q, k, v, bias) -> bool:
    """Whether these kernels take the call."""
    return (be.kernels is not None and dtypes.is_half(q.dtype) and q.dtype == k.dtype == v.dtype
            and q.shape[-1] == v.shape[-1] and q.shape[-1] in HEAD_DIMS and bias is None)


def _flat(be, a):
    """(batch..., n, d) -> contiguous (B, n, d)."""
    return be.xp.ascontiguousarray(a).reshape((-1,) + tuple(a.shape[-2:]))


def forward(be, q, k, v, causal, scale):
    """(out, lse): out of q's shape and dtype, lse (batch..., L) float32."""
    xp = be.xp
    q3, k3, v3 = (_flat(be, a) for a in (q, k, v))
    out = xp.empty(q3.shape, q.dtype)
    lse = xp.empty(q3.shape[:2], np.float32)
    be.kernels.attention_tc_forward(*(kernel_view(be, a) for a in (q3, k3, v3)), bool(causal), scale,
                                    kernel_view(be, out), lse, be.stream())
    return out.reshape(q.shape), lse.reshape(q.shape[:-1])


def backward(be, ctx, dout):
    """(dq, dk, dv) from an attention context of `forward`. Workspaces: delta
    (B, L) and dq_accum (B, L, d) in float32, O(L·d) memory (no L×S matrix)."""
    xp = be.xp
    q3, k3, v3, o3, do3 = (_flat(be, a) for a in (ctx.q, ctx.k, ctx.v, ctx.out, dout.astype(ctx.q.dtype, copy=False)))
    dq, dk, dv = xp.empty_like(q3), xp.empty_like(k3), xp.empty_like(v3)
    delta = xp.empty(q3.shape[:2], np.float32)
    dq_accum = xp.empty(q3.shape, np.float32)
    kv = functools.partial(kernel_view, be)
    be.kernels.attention_tc_backward(kv(q3), kv(k3), kv(v3), kv(o3), kv(do3), ctx.lse.reshape(q3.shape[:2]),
                                     bool(ctx.causal), ctx.scale, kv(dq), kv(dk), kv(dv), delta, dq_accum,
                                     be.stream())
    return dq.reshape(ctx.q.shape), dk.reshape(ctx.k.shape), dv.reshape(ctx.v.shape)
