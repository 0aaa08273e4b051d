"""Parameter updates of the optimizers, one function per algorithm over a list
of tensors (a parameter group). Every array is updated IN PLACE.

cpu/cupy (be.kern is None), and float64 groups on any backend: array code on
be.xp, one tensor at a time, following PyTorch's single-tensor algorithms
operation by operation. sim/cuda with float32 parameters: SGD and Adam/AdamW
run as ONE fused kernel launch over all tensors of the group
(csrc/kernels/optim.cu, "multi-tensor apply": the binding writes a table of
pointers and sizes into a small device workspace and the kernel grid-strides
over the concatenated index space). RMSprop and Rprop use the array code on
every backend (on cuda, CuPy runs it). cupy: SGD and Adam/AdamW run one CuPy
ElementwiseKernel per tensor (ops/cupy_fused.py), the array code's formulas
in one pass over each parameter's arrays.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import fallback
from . import cupy_fused


def _fused(be, params) -> bool:
    if be.kern is None:
        return False
    if not all(p.dtype == np.float32 for p in params):
        fallback(be, "optimizer update", "float64 parameters (the fused kernels are float32)")
        return False
    return True


def _table(be, n: int):
    """Device workspace holding the kernel's per-tensor table (n entries)."""
    return be.xp.empty(n * be.kern.OPTIM_TABLE_ENTRY_BYTES, dtype=np.uint8)


def _contiguous(be, arrays):
    return [be.xp.ascontiguousarray(a) for a in arrays]


def sgd(be, params, grads, bufs, fresh, *, lr, momentum, dampening, weight_decay, nesterov):
    """p -= lr * d, d = g + wd*p, then with momentum: buf = d on a fresh buffer,
    else buf = momentum*buf + (1 - dampening)*d; d = d + momentum*buf (nesterov)
    or buf. `bufs` are the momentum buffers (ignored when momentum == 0) and
    `fresh[i]` says buffer i was just created (its first step copies d)."""
    if _fused(be, params):
        be.kern.sgd_multi(params, _contiguous(be, grads), bufs if momentum else [], list(fresh) if momentum else [],
                          _table(be, len(params)), lr, momentum, dampening, weight_decay, nesterov, be.stream())
        return
    if be.name == "cupy":
        cupy_fused.sgd(params, grads, bufs, fresh, lr=lr, momentum=momentum, dampening=dampening,
                       weight_decay=weight_decay, nesterov=nesterov)
        return
    for p, g, buf, new in zip(params, grads, bufs, fresh):
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            if new:
                buf[...] = g
            else:
                buf *= momentum
                buf += (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p -= lr * g


def adam_scalars(step: int, lr: float, beta1: float, beta2: float) -> tuple[float, float]:
    """(step_size, sqrt(bias_correction2)) after `step` updates, in double as PyTorch."""
    return lr / (1 - beta1 ** step), math.sqrt(1 - beta2 ** step)


def adam(be, params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay, decoupled):
    """Adam (decoupled=False: g += wd*p) or AdamW (decoupled=True: p *= 1 - lr*wd):
    m = b1*m + (1-b1)*g, v = b2*v + (1-b2)*g^2,
    p -= lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps).
    `steps[i]` is tensor i's step count t, already incremented for this update."""
    scalars = [adam_scalars(t, lr, beta1, beta2) for t in steps]
    if _fused(be, params):
        be.kern.adam_multi(params, _contiguous(be, grads), exp_avgs, exp_avg_sqs,
                           [s for s, _ in scalars], [c for _, c in scalars], _table(be, len(params)),
                           lr, beta1, beta2, eps, weight_decay, decoupled, be.stream())
        return
    if be.name == "cupy":
        cupy_fused.adam(params, grads, exp_avgs, exp_avg_sqs, scalars, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                        weight_decay=weight_decay, decoupled=decoupled)
        return
    for p, g, m, v, (step_size, bc2_sqrt) in zip(params, grads, exp_avgs, exp_avg_sqs, scalars):
        if weight_decay:
            if decoupled:
                p *= 1 - lr * weight_decay
            else:
                g = g + weight_decay * p
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * g * g
        p -= step_size * (m / (be.xp.sqrt(v) / bc2_sqrt + eps))


def rmsprop(be, params, grads, square_avgs, grad_avgs, bufs, *, lr, alpha, eps, weight_decay, momentum):
    """s = alpha*s + (1-alpha)*g^2; centered (grad_avgs given): a = alpha*a + (1-alpha)*g,
    denom = sqrt(s - a^2) + eps, else sqrt(s) + eps; with momentum buf = momentum*buf
    + g/denom and p -= lr*buf, else p -= lr*g/denom."""
    fallback(be, "rmsprop", "no fused kernel")
    xp = be.xp
    for i, (p, g, s) in enumerate(zip(params, grads, square_avgs)):
        if weight_decay:
            g = g + weight_decay * p
        s *= alpha
        s += (1 - alpha) * g * g
        if grad_avgs is not None:
            a = grad_avgs[i]
            a += (1 - alpha) * (g - a)
            denom = xp.sqrt(s - a * a) + eps
        else:
            denom = xp.sqrt(s) + eps
        if momentum:
            buf = bufs[i]
            buf *= momentum
            buf += g / denom
            p -= lr * buf
        else:
            p -= lr * (g / denom)


def rprop(be, params, grads, prevs, step_sizes, prev_deltas, *, etaminus, etaplus, step_min, step_max):
    """Per element: s = g * prev. s > 0: step *= eta+ (at most step_max); s < 0:
    step *= eta- (at least step_min) and the gradient counts as 0 (so the next
    step is neither grown nor shrunk); s == 0: step kept.
    Without backtracking (prev_deltas None, PyTorch's Rprop): p -= sign(g)*step
    with the zeroed g. With backtracking (Rprop+): where s < 0 the previous
    weight change is undone instead, elsewhere p += delta = -sign(g)*step, and
    delta is remembered."""
    fallback(be, "rprop", "no fused kernel")
    xp = be.xp
    for i, (p, g, prev, step) in enumerate(zip(params, grads, prevs, step_sizes)):
        prod = g * prev
        flipped = prod < 0
        step *= xp.where(prod > 0, etaplus, xp.where(flipped, etaminus, 1.0)).astype(step.dtype)
        xp.clip(step, step_min, step_max, out=step)
        g = xp.where(flipped, g.dtype.type(0), g)
        if prev_deltas is None:
            p -= xp.sign(g) * step
        else:
            delta = prev_deltas[i]
            p -= xp.where(flipped, delta, p.dtype.type(0))
            delta[...] = -xp.sign(g) * step
            p += delta
        prev[...] = g
