"""Scaled dot-product attention: out = softmax(q kᵀ·scale + bias) v.

Shapes: q (..., L, E), k (..., S, E), v (..., S, Ev) with the same leading
(batch) axes; out (..., L, Ev). `bias` is an additive float mask broadcastable
to (..., L, S) (-inf removes a key); `causal` keeps key j for query i only when
j <= i (PyTorch's top-left aligned tril(ones(L, S))). A query row whose keys are
all removed gets output 0 and zero gradients (as torch's
scaled_dot_product_attention; its MultiheadAttention slow path gives NaN).

Backward, with P the attention probabilities and dO the output gradient:
    dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP - rowsum(dO ∘ O)),
    dQ = dS K·scale,  dK = dSᵀ Q·scale.
(rowsum(dP ∘ P) = rowsum(dO ∘ O), which lets the kernels skip P.)

Array path (cpu, cupy, float64 anywhere, head dims above 128): the L×S
probabilities are materialised and saved for backward. On the host in
float32 (q, k and v of one batch shape) the work runs in blocks of heads, or
of query rows when one head's scores exceed BLOCK_BYTES, spread over the host
threads: per block the scores' GEMM, their softmax (the causal mask and,
without a bias, the scale included) in a compiled row loop
(gpunet/_host/host_ops.c) and the GEMM with v, and backward's GEMMs and dS
likewise, each block's scores read back while they are in the core's cache
(the whole-array sweeps went through memory three times per step).
Kernel path (sim, cuda; float32, head dims up to 128): flash attention
(csrc/kernels/attention.cu) -- tiles of queries and keys with an online
softmax; the forward saves only the per-row log-sum-exp (B·L floats) and the
backward recomputes the scores tile by tile, without float atomics, so two
backward runs give bit-identical gradients. Every mask kind (boolean, additive,
key padding, causal) runs in the kernels: the additive bias is read through
broadcast strides, never expanded over the heads.

Half storage (bfloat16, float16): q, k, v and the bias read in float32, the
attention computed in float32 (running max, sums and products), the output,
the probabilities handed out and every gradient rounded once (`half_forward`
below). On the kernel backends the same kernels run on the half arrays (head
dims up to 128; lse, delta and the bias stay float32); on cpu, array code in
float32, the context keeping the rounded output read in float32, as the
kernels do.

Tensor-core path (sim, cuda; float16/bfloat16 q, k, v with a head dim that
is a multiple of 8 up to 128, causal or no mask): FlashAttention-2 on mma.sync (csrc/kernels/
attention_tc.cu), fp32 accumulation and softmax, lse saved in float32; the
backward adds dq up with float atomics (not bitwise reproducible) in an
O(L·d) float32 workspace.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .. import dtypes, hostlib
from ..dispatch import path
from . import attention_tc
from . import dropout as dropout_ops
from . import host_threads
from . import softmax as softmax_ops
from .half import _up, float32_compute, kernel_view

KERNEL_MAX_HEAD_DIM = 128


class AttentionContext:
    """What backward needs. `probs` is set on the array path; `lse` (per-row
    log-sum-exp of the scaled, masked scores) on the kernel path."""

    __slots__ = ("q", "k", "v", "bias", "causal", "scale", "out", "lse", "probs", "bias_layout", "storage")

    def __init__(self, q, k, v, bias, causal, scale, out, lse=None, probs=None, bias_layout=None):
        self.q, self.k, self.v, self.bias, self.causal, self.scale = q, k, v, bias, causal, scale
        self.out, self.lse, self.probs, self.bias_layout = out, lse, probs, bias_layout
        self.storage = None  # the half dtype of a half call (computed in float32), else None


# ---------------------------------------------------------------- half storage
def _half_kernels(be, q, k, v, *args, **kwargs):
    """float32_compute's predicate of sdpa_forward: the kernels' head dims."""
    return _head_dim_limit(q, v) is None


def half_forward(fn):
    """sdpa_forward for half inputs too: float32_compute, and the context
    marked with the storage dtype (so what is derived from it later, the
    probabilities and the dropout path's output, is rounded to it); on the
    array path it holds the rounded output read in float32, as the kernels
    keep the rounded output itself."""
    computed = float32_compute("attention", forward=True, half_kernels=_half_kernels)(fn)

    @functools.wraps(fn)
    def run(be, q, k, v, *args, **kwargs):
        out, ctx = computed(be, q, k, v, *args, **kwargs)
        if dtypes.is_half(q.dtype):
            ctx.storage = np.dtype(q.dtype)
            if ctx.lse is None:
                ctx.out = out.astype(np.float32)
        return out, ctx
    return run


def _route(be, op: str, dtype, unsupported=None) -> str:
    """dispatch.path, and for half arrays (only kernel backends see them
    here, or a kernel forward's context): the kernels unless `unsupported`
    says why not, else the array code in float32."""
    if dtypes.is_half(dtype):
        return "kernel" if be.kernels is not None and unsupported is None else "array"
    return path(be, op, dtype, unsupported=unsupported)


def _rounded(ctx, a):
    """`a` (float32) rounded to the context's half storage, or as it is."""
    return a if ctx.storage is None else a.astype(ctx.storage)


# ---------------------------------------------------------------- validation and masks
def check_inputs(q, k, v, name_q="query", name_k="key", name_v="value"):
    """Shape checks shared by the functional API and the modules (dtype and
    device are checked by the caller with gpunet.checks)."""
    if q.ndim < 2:
        raise ValueError(f"{name_q}: expected (..., L, E) with at least 2 dims, got shape {tuple(q.shape)}")
    for name, a in ((name_k, k), (name_v, v)):
        if a.ndim < 2 or broadcast_batch(q, a) is None:
            raise ValueError(f"{name}: expected batch dims broadcastable with {name_q}'s {tuple(q.shape[:-2])} "
                             f"followed by (S, features), got shape {tuple(a.shape)}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{name_k}: expected last dim E={q.shape[-1]} (the {name_q} feature size), "
                         f"got shape {tuple(k.shape)}")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"{name_v}: expected S={k.shape[-2]} rows (the {name_k} sequence length), "
                         f"got shape {tuple(v.shape)}")
    if 0 in q.shape or 0 in k.shape or 0 in v.shape:
        raise ValueError(f"{name_q}/{name_k}/{name_v}: empty arrays are not supported, got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


def broadcast_batch(*arrays):
    """The broadcast of the arrays' batch dims (all but the last two), or None."""
    try:
        return tuple(np.broadcast_shapes(*(tuple(a.shape[:-2]) for a in arrays)))
    except ValueError:
        return None


def expand_batch(be, batch, a):
    """`a` with its batch dims broadcast to `batch`, contiguous (the kernels
    index one batch of q, k and v alike)."""
    if tuple(a.shape[:-2]) == batch:
        return a
    return be.xp.ascontiguousarray(be.xp.broadcast_to(a, batch + tuple(a.shape[-2:])))


def reduce_batch(g, shape):
    """expand_batch's adjoint: the gradient `g` summed back to `shape`."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape[:-2]) if n == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes).reshape(shape) if axes else g


def additive_mask(be, mask, dtype, name: str, true_means_keep: bool = True):
    """A boolean or float mask as an additive float mask of `dtype`.
    Boolean: torch's scaled_dot_product_attention keeps True positions
    (true_means_keep=True); its MultiheadAttention masks True positions out
    (true_means_keep=False)."""
    xp = be.xp
    if mask.dtype == np.bool_:
        keep = mask if true_means_keep else ~mask
        return xp.where(keep, 0.0, -np.inf).astype(dtype)
    if mask.dtype.kind == "f" or dtypes.is_half(mask.dtype):  # bfloat16's kind is "V"
        return mask.astype(dtype, copy=False)
    raise TypeError(f"{name}: expected a bool or floating mask, got dtype {mask.dtype}")


def check_broadcast(mask_shape, target_shape, name: str):
    """Raise unless an array of mask_shape broadcasts to exactly target_shape."""
    ok = len(mask_shape) <= len(target_shape) and all(
        m in (1, t) for m, t in zip(mask_shape[::-1], target_shape[::-1]))
    if not ok:
        raise ValueError(f"{name}: shape {tuple(mask_shape)} does not broadcast to the attention scores' shape "
                         f"{tuple(target_shape)} (batch..., L, S)")


# ---------------------------------------------------------------- forward
def _head_dim_limit(q, v):
    """Why the kernels cannot take these head dims (None: they can)."""
    d = max(q.shape[-1], v.shape[-1])
    return f"head dim {d} > {KERNEL_MAX_HEAD_DIM}" if d > KERNEL_MAX_HEAD_DIM else None


@half_forward
def sdpa_forward(be, q, k, v, bias=None, causal: bool = False, scale=None):
    """Returns (out, ctx). `bias`: additive mask broadcastable to (..., L, S),
    in q's dtype, or None. `scale` defaults to 1/sqrt(E)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if attention_tc.eligible(be, q, k, v, bias):
        out, lse = attention_tc.forward(be, q, k, v, causal, scale)
        return out, AttentionContext(q, k, v, bias, causal, scale, out, lse=lse)
    if _route(be, "attention", q.dtype, _head_dim_limit(q, v)) == "kernel":
        layout = _bias_layout(be, bias, q.shape[:-2], q.shape[-2], k.shape[-2]) if bias is not None else None
        out, lse = _kernel_forward(be, q, k, v, layout, causal, scale)
        return out, AttentionContext(q, k, v, bias, causal, scale, out, lse=lse, bias_layout=layout)
    if (lib := hostlib.for_float32(be, q, k, v, bias)) is not None and _blockable(q, k, v):
        out, p = _host_forward(lib, q, k, v, bias, causal, scale)
        return out, AttentionContext(q, k, v, bias, causal, scale, out, probs=p)
    # without a bias the compiled loop takes a positive scale as its softmax's beta
    beta = scale if bias is None and scale > 0 and hostlib.for_float32(be, q) is not None else 1.0
    p = _probs_from_scores(be, _scores(be, q, k, bias, False, scale / beta), causal, beta)
    out = be.xp.matmul(p, v)
    return out, AttentionContext(q, k, v, bias, causal, scale, out, probs=p)


def _scores(be, q, k, bias, causal, scale):
    """q kᵀ·scale + bias, with causal positions set to -inf: (..., L, S)."""
    xp = be.xp
    s = xp.matmul(q, xp.swapaxes(k, -1, -2))
    if scale != 1:
        s *= scale
    if bias is not None:
        s = xp.add(s, bias, out=s if np.broadcast_shapes(s.shape, bias.shape) == s.shape else None)
    return _causal_masked(xp, s) if causal else s


def _causal_masked(xp, s):
    L, S = s.shape[-2:]
    return xp.where(xp.tril(xp.ones((L, S), dtype=bool)), s, -np.inf)


def _probs_from_scores(be, s, causal=False, beta=1.0):
    """Row softmax of beta·s (beta > 0), causal positions (when asked) masked;
    rows that are -inf everywhere give all zeros. float32 on the host: one
    fused pass per row in the compiled loop (softmax.py's
    softmax_rows_compiled, masked, the causal keys skipped there); else array
    code, where scores all within ±60 skip the max shift (exp of the exact
    scores, no row-wise max)."""
    xp = be.xp
    if (lib := hostlib.for_float32(be, s)) is not None:
        return softmax_ops.softmax_rows_compiled(lib, s, beta, masked=True, causal=causal)[0]
    if beta != 1:
        s = s * beta
    if causal:
        s = _causal_masked(xp, s)
    if xp is np and s.size and -softmax_ops.NO_SHIFT_BOUND <= s.min() and s.max() <= softmax_ops.NO_SHIFT_BOUND:
        p = xp.exp(s)
    else:
        m = s.max(axis=-1, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0.0)
        p = s - m
        xp.exp(p, out=p)
    total = p.sum(axis=-1, keepdims=True)
    p /= xp.where(total > 0, total, 1.0)
    return p


def attention_probs(be, ctx):
    """The attention probabilities P (..., L, S) of a forward pass: saved on the
    array path, recomputed from the log-sum-exp on the kernel path (only when
    asked for, e.g. MultiheadAttention(need_weights=True)); rounded to a half
    call's storage."""
    return _rounded(ctx, _probs(be, ctx))


def _probs(be, ctx):
    """attention_probs in the compute dtype."""
    if ctx.probs is not None:
        return ctx.probs
    xp = be.xp
    s = _scores(be, _up(ctx.q), _up(ctx.k), _up(ctx.bias), ctx.causal, ctx.scale)
    lse = ctx.lse.reshape(s.shape[:-1] + (1,))
    return xp.where(xp.isfinite(lse), xp.exp(s - xp.where(xp.isfinite(lse), lse, 0.0)), 0.0).astype(s.dtype)


# ---------------------------------------------------------------- backward
@float32_compute("attention", forward=False, half_kernels=lambda be, ctx, *args, **kwargs: ctx.lse is not None)
def sdpa_backward(be, ctx: AttentionContext, dout, dprobs=None):
    """(dq, dk, dv). `dprobs`: an extra gradient flowing into P (..., L, S),
    e.g. from MultiheadAttention's returned attention weights; it takes the
    array path (P is materialised anyway in that case)."""
    if ctx.lse is not None and dprobs is None and attention_tc.eligible(be, ctx.q, ctx.k, ctx.v, ctx.bias):
        return attention_tc.backward(be, ctx, dout)
    if ctx.lse is not None:  # the forward ran the kernels, which never form P
        why = None if dprobs is None else "a gradient flows into the attention probabilities (weights or dropout)"
        if _route(be, "attention backward", ctx.q.dtype, why) == "kernel":
            return _kernel_backward(be, ctx, dout)
    xp = be.xp
    p = _probs(be, ctx)
    q, k, v, out, dout, dprobs = (_up(a) for a in (ctx.q, ctx.k, ctx.v, ctx.out, dout, dprobs))  # half: float32
    if dprobs is None and (lib := hostlib.for_float32(be, p, q, k, v, out, dout)) is not None \
            and _blockable(q, k, v):
        return tuple(_rounded(ctx, g) for g in _host_backward(lib, p, q, k, v, out, dout, ctx.scale))
    dv = xp.matmul(xp.swapaxes(p, -1, -2), dout)
    dp = xp.matmul(dout, xp.swapaxes(v, -1, -2))
    if dprobs is None:  # rowsum(dP ∘ P) = rowsum(dO ∘ O): L·Ev work instead of L·S
        dp -= (dout * out).sum(axis=-1, keepdims=True)
    else:
        dp += dprobs
        dp -= (dp * p).sum(axis=-1, keepdims=True)
    ds = dp
    ds *= p
    dq = xp.matmul(ds, k)
    dq *= ctx.scale
    dk = xp.matmul(xp.swapaxes(ds, -1, -2), q)
    dk *= ctx.scale
    return _rounded(ctx, dq), _rounded(ctx, dk), _rounded(ctx, dv)


# ---------------------------------------------------------------- host path in blocks
# bytes of one block's scores (float32): a block's scores stay in the core's
# L2 cache between the GEMM that writes them and the softmax or dS that reads
# them, instead of a (..., L, S) sweep through memory per step
BLOCK_BYTES = 1 << 20


def _blockable(q, k, v):
    """The blocked host path takes q, k and v with one batch shape, none of
    them empty (broadcast batches and an empty batch, which MultiheadAttention
    passes on, take the whole-array code)."""
    return q.shape[:-2] == k.shape[:-2] == v.shape[:-2] and q.size > 0 and k.size > 0 and v.size > 0


def _units(outer, inner, L, S):
    """The blocked host path's work: units of (b0, b1, r0, r1) blocks (batch
    rows b0:b1 of the flattened batch, query rows r0:r1), each unit one thread's.
    A head whose L·S scores fit BLOCK_BYTES goes in a group of heads (within
    one `outer` index, so a bias block is a view; the groups' size only
    changes how many heads one batched GEMM takes, which gives every head the
    same result); a larger one is split into query-row blocks, one unit per
    head so its dK and dV are summed over the blocks in one order whatever
    the thread count."""
    per_head = 4 * L * S
    if per_head > BLOCK_BYTES:
        r = max(1, BLOCK_BYTES // (4 * S))
        return [[(b, b + 1, r0, min(r0 + r, L)) for r0 in range(0, L, r)] for b in range(outer * inner)]
    g = max(1, min(BLOCK_BYTES // per_head, -(-outer * inner // host_threads.get_num_threads())))
    return [[(o * inner + h, o * inner + min(h + g, inner), 0, L)] for o in range(outer) for h in range(0, inner, g)]


def _run_units(fn, units, elements):
    """fn(lo, hi) over the units split across the host threads, each running
    its own small GEMMs with BLAS held to one thread (twice as fast as BLAS's
    threads on one block at a time, and host threads next to BLAS's
    busy-waiting ones would fight over the cores; host_threads.run_one_blas_each)."""
    host_threads.run_one_blas_each(fn, host_threads.ranges(len(units), elements // len(units)))


def _scratch(units, L, S):
    """One thread's buffer for the largest block's (rows, S) scores."""
    heads = max(b1 - b0 for unit in units for b0, b1, _, _ in unit)
    rows = max(r1 - r0 for unit in units for _, _, r0, r1 in unit)
    return np.empty(heads * rows * S, np.float32)


def _flat(a):
    """`a` (..., n, m) as a contiguous float32 (batch, n, m) array."""
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1, *a.shape[-2:])


def _host_forward(lib, q, k, v, bias, causal, scale):
    """sdpa_forward on float32 host arrays, block by block (_units): per
    block the scores' GEMM, the compiled softmax (gpunet_softmax_rows_f32,
    the causal keys skipped there) into the saved probabilities P and P's
    GEMM with v, while the block's scores are in cache. Returns (out, P)."""
    batch, (L, S), ev = q.shape[:-2], (q.shape[-2], k.shape[-2]), v.shape[-1]
    q3, k3, v3 = _flat(q), _flat(k), _flat(v)
    p = np.empty((q3.shape[0], L, S), np.float32)
    out = np.empty((q3.shape[0], L, ev), np.float32)
    # without a bias the compiled loop takes a positive scale as its softmax's beta
    beta = scale if bias is None and scale > 0 else 1.0
    inner = batch[-1] if bias is not None and batch else q3.shape[0]
    if bias is not None:
        bias = np.broadcast_to(bias, (batch or (1,)) + (L, S))
    units = _units(q3.shape[0] // inner, inner, L, S)
    causal_rows = L if causal else 0

    def part(lo, hi):
        buf = _scratch(units, L, S)
        for unit in units[lo:hi]:
            for b0, b1, r0, r1 in unit:
                s = buf[:(b1 - b0) * (r1 - r0) * S].reshape(b1 - b0, r1 - r0, S)
                np.matmul(q3[b0:b1, r0:r1], k3[b0:b1].transpose(0, 2, 1), out=s)
                if beta != scale:
                    s *= scale
                if bias is not None:  # heads h:h + b1 - b0 of one outer batch index
                    h = b0 % inner
                    s += bias[np.unravel_index(b0 // inner, bias.shape[:-3])][h:h + b1 - b0, r0:r1]
                pb = p[b0:b1, r0:r1]
                lib.gpunet_softmax_rows_f32(hostlib.ptr(s), hostlib.ptr(pb), s.size // S, S, beta, 0, 1, causal_rows,
                                            r0)
                np.matmul(pb, v3[b0:b1], out=out[b0:b1, r0:r1])
    _run_units(part, units, p.size)
    return out.reshape(batch + (L, ev)), p.reshape(batch + (L, S))


def _host_backward(lib, p, q, k, v, out, dout, scale):
    """sdpa_backward on float32 host arrays in _host_forward's blocks: per
    block dV += Pᵀ dO, dP = dO Vᵀ, dS·scale in dP's memory (the compiled
    gpunet_attention_ds_f32), dQ = dS K, dK += dSᵀ Q, while the block's dP is
    in cache. Returns (dq, dk, dv)."""
    L, S, ev = q.shape[-2], k.shape[-2], v.shape[-1]
    p3, q3, k3, v3, o3, do3 = (_flat(a) for a in (p, q, k, v, out, dout))
    dq, dk, dv = np.empty_like(q3), np.empty_like(k3), np.empty_like(v3)
    units = _units(1, q3.shape[0], L, S)

    def part(lo, hi):
        buf = _scratch(units, L, S)
        dk_part, dv_part = np.empty(k3.shape[1:], np.float32), np.empty(v3.shape[1:], np.float32)
        for unit in units[lo:hi]:
            for b0, b1, r0, r1 in unit:
                pb, dob, qb = p3[b0:b1, r0:r1], do3[b0:b1, r0:r1], q3[b0:b1, r0:r1]
                ds = buf[:(b1 - b0) * (r1 - r0) * S].reshape(b1 - b0, r1 - r0, S)
                np.matmul(dob, v3[b0:b1].transpose(0, 2, 1), out=ds)
                lib.gpunet_attention_ds_f32(hostlib.ptr(pb), hostlib.ptr(ds), hostlib.ptr(dob),
                                            o3[b0:b1, r0:r1].ctypes.data, ds.size // S, S, ev, scale)
                np.matmul(ds, k3[b0:b1], out=dq[b0:b1, r0:r1])
                if r0 == 0:
                    np.matmul(pb.transpose(0, 2, 1), dob, out=dv[b0:b1])
                    np.matmul(ds.transpose(0, 2, 1), qb, out=dk[b0:b1])
                else:  # a later query-row block of one head (b1 = b0 + 1)
                    dv[b0] += np.matmul(pb[0].T, dob[0], out=dv_part)
                    dk[b0] += np.matmul(ds[0].T, qb[0], out=dk_part)
    _run_units(part, units, p3.size)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


# ---------------------------------------------------------------- dropout on the probabilities
def dropout_forward(be, ctx, p: float, seed: int, offset: int):
    """dropout(P) v, PyTorch's attention dropout, from a forward's context:
    P is formed (recomputed on the kernel path), dropped, then multiplied.
    Returns (out, drop) with drop = (dropout(P), its mask context); a half
    call's out and dropout(P) rounded to its storage (the saved one too, as
    the weights MultiheadAttention returns are that array)."""
    pd, mask = dropout_ops.dropout_forward(be, _probs(be, ctx), p, seed, offset)
    pd = _rounded(ctx, pd)
    return _rounded(ctx, be.xp.matmul(_up(pd), _up(ctx.v))), (pd, mask)


def dropout_backward(be, ctx, drop, dout, dprobs=None):
    """(dq, dk, dv) of dropout(P) v; dprobs: a gradient into dropout(P) itself
    (the attention weights MultiheadAttention returns)."""
    xp = be.xp
    pd, mask = drop
    pd, dout, dprobs = _up(pd), _up(dout), _up(dprobs)
    dv = xp.matmul(xp.swapaxes(pd, -1, -2), dout)
    dpd = xp.matmul(dout, xp.swapaxes(_up(ctx.v), -1, -2))
    if dprobs is not None:
        dpd += dprobs
    dq, dk, _ = sdpa_backward(be, ctx, xp.zeros_like(dout), dropout_ops.dropout_backward(be, mask, dpd))
    return _rounded(ctx, dq), _rounded(ctx, dk), _rounded(ctx, dv)


# ---------------------------------------------------------------- kernel glue
def _batch(q):
    """Leading axes of q collapsed to (outer, inner): the bias strides are
    given per level, so a mask broadcast over heads (inner) or batch (outer)
    is read in place."""
    batch = tuple(q.shape[:-2])
    inner = batch[-1] if batch else 1
    outer = int(np.prod(batch[:-1])) if len(batch) > 1 else 1
    return batch, outer, inner


def _bias_layout(be, bias, batch, L, S):
    batch = tuple(batch)
    """(array, stride_outer, stride_inner, stride_row) in elements such that
    bias[o, h, i, j] is array.flat[o·so + h·si + i·sr + j]."""
    xp = be.xp
    nb = len(batch)
    b = bias.reshape((1,) * (nb + 2 - bias.ndim) + tuple(bias.shape))
    if b.shape[-1] != S:
        b = xp.broadcast_to(b, b.shape[:-1] + (S,))
    outer_shape = b.shape[:max(nb - 1, 0)]
    if any(d == 1 for d in outer_shape) and any(d != 1 for d in outer_shape):
        # mixed broadcast over several outer axes: one stride cannot walk it
        b = xp.broadcast_to(b, tuple(batch[:-1]) + b.shape[nb - 1:])
        outer_shape = tuple(batch[:-1])
    b = xp.ascontiguousarray(b, dtype=np.float32)
    strides = [int(np.prod(b.shape[d + 1:])) for d in range(b.ndim)]
    sr = 0 if b.shape[-2] == 1 else S
    si = 0 if nb == 0 or b.shape[nb - 1] == 1 else strides[nb - 1]
    so = 0 if nb < 2 or all(d == 1 for d in outer_shape) else strides[nb - 2]
    return b, so, si, sr


def _kernel_forward(be, q, k, v, layout, causal, scale):
    xp = be.xp
    batch, outer, inner = _batch(q)
    L, E = q.shape[-2:]
    S, Ev = v.shape[-2:]
    B = outer * inner
    q3 = xp.ascontiguousarray(q).reshape(B, L, E)
    k3 = xp.ascontiguousarray(k).reshape(B, S, E)
    v3 = xp.ascontiguousarray(v).reshape(B, S, Ev)
    out = xp.empty((B, L, Ev), q.dtype)
    lse = xp.empty((B, L), np.float32)  # float32 whatever the storage
    b, so, si, sr = layout if layout is not None else (None, 0, 0, 0)
    q3, k3, v3, out_k = (kernel_view(be, a) for a in (q3, k3, v3, out))
    be.kernels.attention_forward(q3, k3, v3, b, so, si, sr, inner, bool(causal), scale, out_k, lse, be.stream())
    return out.reshape(batch + (L, Ev)), lse.reshape(batch + (L,))


def _kernel_backward(be, ctx, dout):
    xp = be.xp
    q, k, v = ctx.q, ctx.k, ctx.v
    batch, outer, inner = _batch(q)
    L, E = q.shape[-2:]
    S, Ev = v.shape[-2:]
    B = outer * inner
    q3 = xp.ascontiguousarray(q).reshape(B, L, E)
    k3 = xp.ascontiguousarray(k).reshape(B, S, E)
    v3 = xp.ascontiguousarray(v).reshape(B, S, Ev)
    o3 = ctx.out.reshape(B, L, Ev)
    do3 = xp.ascontiguousarray(dout).reshape(B, L, Ev)
    lse = ctx.lse.reshape(B, L)
    b, so, si, sr = ctx.bias_layout if ctx.bias_layout is not None else (None, 0, 0, 0)
    dq = xp.empty_like(q3)
    dk = xp.empty_like(k3)
    dv = xp.empty_like(v3)
    delta = xp.empty((B, L), np.float32)  # float32 whatever the storage
    q3, k3, v3, o3, do3, dq_k, dk_k, dv_k = (kernel_view(be, a) for a in (q3, k3, v3, o3, do3, dq, dk, dv))
    be.kernels.attention_backward(q3, k3, v3, o3, do3, lse, b, so, si, sr, inner, bool(ctx.causal), ctx.scale,
                                  dq_k, dk_k, dv_k, delta, be.stream())
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)
