"""Parameter updates of the optimizers, one function per algorithm over a list
of tensors (a parameter group). Every array is updated IN PLACE.

The "array" dispatch path: array code on be.xp, one tensor at a time,
following PyTorch's single-tensor algorithms operation by operation. The
"kernel" path (sim, cuda; float32 groups): SGD and Adam/AdamW run as ONE fused
kernel launch over all tensors of the group (csrc/kernels/optim.cu,
"multi-tensor apply": the binding writes a table of pointers and sizes into a
small device workspace and the kernel grid-strides over the concatenated index
space). The "fused" path (CuPy): SGD and Adam/AdamW run one ElementwiseKernel
per tensor (below), the array code's formulas in one pass over each
parameter's arrays (CuPy has no multi-tensor apply). RMSprop and Rprop use
the array code on every backend (on cuda, CuPy runs it).

GradScaler steps on the kernel path (gpunet/amp/grad_scaler.py): sgd and
adam take `scaling`, a pair (inv_scale, found_inf) with found_inf a float32
device flag of one element that `nonfinite_check` set before the update
(one launch over all gradients, read only): the update launch returns at
once when it is set, else reads each gradient times inv_scale in float32,
leaving the gradients as they were.

Half weights (gpunet/optim/optimizer.py's master weights) on the kernel
path: sgd and adam take `weights`, the half arrays whose float32 masters are
`params`, with the half gradients; the fused kernel reads those in float32,
updates the masters and writes each rounded once into its weight, in the
same launch.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .. import hostlib
from ..dispatch import path
from . import host_threads
from .cupy_kernels import cupy
from .half import kernel_view


def _route(be, params) -> str:
    """One path for the whole group: the multi-tensor kernels take float32 groups only."""
    dtype = params[0].dtype if all(p.dtype == params[0].dtype for p in params) else np.float64
    return path(be, "optimizer update", dtype, fused=True)


def takes_kernel(be, dtype) -> bool:
    """Whether sgd/adam on a group of `dtype` arrays run the fused kernels
    (asked before an update, so nothing is recorded here: _route's path()
    records any fallback of the update itself)."""
    return be.kernels is not None and np.dtype(dtype) in be.kernel_dtypes


def nonfinite_check(be, grads, found_inf):
    """found_inf (float32, one element, on `be`) set to 1 when any of `grads`
    (float32 or half, on a kernel backend) holds an inf or a NaN: one launch."""
    be.kernels.nonfinite_check(_contiguous(be, grads), found_inf, _table(be, len(grads)), be.stream())


def _scaling(scaling) -> dict:
    """The kernels' found_inf/inv_scale arguments for sgd/adam's `scaling`."""
    return {} if scaling is None else {"inv_scale": float(scaling[0]), "found_inf": scaling[1]}


def _table(be, n: int):
    """Device workspace holding the kernel's per-tensor table (n entries)."""
    return be.xp.empty(n * be.kernels.OPTIM_TABLE_ENTRY_BYTES, dtype=np.uint8)


def _contiguous(be, arrays):
    return [kernel_view(be, be.xp.ascontiguousarray(a)) for a in arrays]


def _weights(be, weights):
    """The kernels' `weights` argument: None, or the half weights as they take them."""
    return None if weights is None else [kernel_view(be, w) for w in weights]


def sgd(be, params, grads, bufs, fresh, *, lr, momentum, dampening, weight_decay, nesterov, weights=None,
        scaling=None):
    """p -= lr * d, d = g + wd*p, then with momentum: buf = d on a fresh buffer,
    else buf = momentum*buf + (1 - dampening)*d; d = d + momentum*buf (nesterov)
    or buf. `bufs` are the momentum buffers (ignored when momentum == 0) and
    `fresh[i]` says buffer i was just created (its first step copies d).
    weights: the half weights of float32 masters `params`; scaling: a
    GradScaler's (inv_scale, found_inf) (both kernel path only, see the module
    docstring)."""
    route = _route(be, params)
    assert (weights is None and scaling is None) or route == "kernel", "weights/scaling go to the fused kernels only"
    if route == "kernel":
        be.kernels.sgd_multi(params, _contiguous(be, grads), bufs if momentum else [], list(fresh) if momentum else [],
                             _table(be, len(params)), lr, momentum, dampening, weight_decay, nesterov, be.stream(),
                             weights=_weights(be, weights), **_scaling(scaling))
        return
    if route == "fused":
        _fused_sgd(params, grads, bufs, fresh, lr=lr, momentum=momentum, dampening=dampening,
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


def adam(be, params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay, decoupled,
         max_exp_avg_sqs=None, weights=None, scaling=None):
    """Adam (decoupled=False: g += wd*p) or AdamW (decoupled=True: p *= 1 - lr*wd):
    m = b1*m + (1-b1)*g, v = b2*v + (1-b2)*g^2,
    p -= lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps).
    `steps[i]` is tensor i's step count t, already incremented for this update.
    amsgrad (max_exp_avg_sqs given, updated in place): the denominator uses the
    running maximum of v; array code, as the fused kernels keep no maximum.
    weights, scaling: as in sgd."""
    scalars = [adam_scalars(t, lr, beta1, beta2) for t in steps]
    if max_exp_avg_sqs is None:
        route = _route(be, params)
    else:
        route = path(be, "adam amsgrad", params[0].dtype,
                     unsupported="amsgrad (the fused Adam kernel keeps no max_exp_avg_sq)")
    assert (weights is None and scaling is None) or route == "kernel", "weights/scaling go to the fused kernels only"
    if route == "kernel":
        be.kernels.adam_multi(params, _contiguous(be, grads), exp_avgs, exp_avg_sqs,
                              [s for s, _ in scalars], [c for _, c in scalars], _table(be, len(params)),
                              lr, beta1, beta2, eps, weight_decay, decoupled, be.stream(),
                              weights=_weights(be, weights), **_scaling(scaling))
        return
    if route == "fused":
        _fused_adam(params, grads, exp_avgs, exp_avg_sqs, scalars, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                    weight_decay=weight_decay, decoupled=decoupled)
        return
    xp = be.xp
    host = hostlib.for_float32(be, *params, *grads, *exp_avgs, *exp_avg_sqs, *(max_exp_avg_sqs or []))
    vmaxes = max_exp_avg_sqs or [None] * len(params)
    if host is not None and all(a is None or a.flags.c_contiguous
                                for a in (*params, *grads, *exp_avgs, *exp_avg_sqs, *vmaxes)):
        # the same operations in one compiled call for every tensor (gpunet/_host/host_ops.c), its
        # elements split over the compiled pool
        table = np.array([[hostlib.ptr(a) or 0 for a in arrays] + [arrays[0].size]
                          for arrays in zip(params, grads, exp_avgs, exp_avg_sqs, vmaxes)], np.int64)
        per = np.array([(bc2_sqrt, step_size) for step_size, bc2_sqrt in scalars], np.float32)
        coef = np.array([1 - lr * weight_decay, weight_decay, 1 - beta1, beta2, 1 - beta2, eps], np.float32)
        mode = 0 if not weight_decay else 1 if decoupled else 2
        host_threads.run_compiled(host.gpunet_adam_f32, (hostlib.ptr(table), hostlib.ptr(coef), hostlib.ptr(per),
                                                         len(params), mode),
                                  host_threads.ranges(int(table[:, 5].sum())))
        return
    work = []  # (block views, tensor's scalars) of every tensor: independent, so shared out over host threads
    for i, (p, g, m, v, sc) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, scalars)):
        arrays = (p, g, m, v) if max_exp_avg_sqs is None else (p, g, m, v, max_exp_avg_sqs[i])
        work += [(views, sc) for views in _blocks(be, arrays)]

    def update(views, step_size, bc2_sqrt):
        # the formulas above, operation by operation, through two temporaries
        pb, gb, mb, vb, *vmax = views
        gb = _decay(pb, gb, lr, weight_decay, decoupled)
        t = xp.subtract(gb, mb)
        t *= 1 - beta1
        mb += t
        vb *= beta2
        xp.multiply(gb, 1 - beta2, out=t)
        t *= gb
        vb += t
        if vmax:
            vb = xp.maximum(vmax[0], vb, out=vmax[0])
        xp.sqrt(vb, out=t)
        t /= bc2_sqrt
        t += eps
        xp.divide(mb, t, out=t)
        t *= step_size
        pb -= t
    _run_blocks(be, work, update)


def rmsprop(be, params, grads, square_avgs, grad_avgs, bufs, *, lr, alpha, eps, weight_decay, momentum):
    """s = alpha*s + (1-alpha)*g^2; centered (grad_avgs given): a = alpha*a + (1-alpha)*g,
    denom = sqrt(s - a^2) + eps, else sqrt(s) + eps; with momentum buf = momentum*buf
    + g/denom and p -= lr*buf, else p -= lr*g/denom."""
    path(be, "rmsprop", params[0].dtype, unsupported="no fused kernel")
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
    path(be, "rprop", params[0].dtype, unsupported="no fused kernel")
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


# ---------------------------------------------------------------- CuPy fusions
@functools.cache
def _fused_kernels():
    cp = cupy()
    sgd_plain = cp.ElementwiseKernel(
        "T g, T lr, T wd, bool decay", "T p",
        """
        const T d = decay ? g + wd * p : g;
        p = p - lr * d;""", "gpunet_sgd")
    sgd_momentum = cp.ElementwiseKernel(
        "T g, T lr, T wd, bool decay, T momentum, T damp1, bool nesterov, bool fresh", "T p, T buf",
        """
        T d = decay ? g + wd * p : g;
        buf = fresh ? d : buf * momentum + damp1 * d;
        d = nesterov ? d + momentum * buf : buf;
        p = p - lr * d;""", "gpunet_sgd_momentum")
    adam_one = cp.ElementwiseKernel(
        "T g, T shrink, T wd, int32 mode, T omb1, T b2, T omb2, T step_size, T bc2_sqrt, T eps", "T p, T m, T v",
        """
        T d = g;
        if (mode == 1) p = p * shrink;      // AdamW: decoupled decay
        else if (mode == 2) d = g + wd * p; // Adam: L2 term in the gradient
        m = m + omb1 * (d - m);
        v = v * b2 + omb2 * d * d;
        p = p - step_size * (m / (sqrt(v) / bc2_sqrt + eps));""", "gpunet_adam")
    return sgd_plain, sgd_momentum, adam_one


def _fused_sgd(params, grads, bufs, fresh, *, lr, momentum, dampening, weight_decay, nesterov):
    """sgd's array path, one launch per parameter."""
    plain, with_momentum, _ = _fused_kernels()
    decay = bool(weight_decay)
    for p, g, buf, new in zip(params, grads, bufs, fresh):
        if momentum:
            with_momentum(g, lr, weight_decay, decay, momentum, 1 - dampening, bool(nesterov), bool(new), p, buf)
        else:
            plain(g, lr, weight_decay, decay, p)


def _fused_adam(params, grads, exp_avgs, exp_avg_sqs, scalars, *, lr, beta1, beta2, eps, weight_decay, decoupled):
    """adam's array path, one launch per parameter; `scalars` are the
    (step_size, sqrt(bias_correction2)) pairs of adam_scalars."""
    kernel = _fused_kernels()[2]
    mode = 0 if not weight_decay else 1 if decoupled else 2
    for p, g, m, v, (step_size, bc2_sqrt) in zip(params, grads, exp_avgs, exp_avg_sqs, scalars):
        kernel(g, 1 - lr * weight_decay, weight_decay, mode, 1 - beta1, beta2, 1 - beta2, step_size, bc2_sqrt, eps,
               p, m, v)


# ---------------------------------------------------------------- array-only algorithms
# PyTorch's single-tensor algorithms, operation by operation, on be.xp. No
# kernel or fusion exists for them: on sim/cuda each call records its
# fallback (gpunet.backend.fallbacks()) with the reason.
def _array_only(be, op: str, params, why: str = "no fused kernel"):
    path(be, op, params[0].dtype, unsupported=why)
    return be.xp


# elements per block of a host update: its temporaries stay in the core's cache
_BLOCK = 1 << 16


def _blocks(be, arrays, block=_BLOCK):
    """Matching 1-d block views of same-shaped arrays, the updated ones written
    through. The whole arrays at once on a GPU (each block is a kernel launch)
    or when one is not C-contiguous (a flat view of it would be a copy)."""
    if be.on_gpu or not all(a.flags.c_contiguous for a in arrays):
        return [arrays]
    flats = [a.reshape(-1) for a in arrays]
    return [[f[s:s + block] for f in flats] for s in range(0, flats[0].size, block)]


def _run_blocks(be, work, update):
    """update(views, *scalars) for every (views, scalars) item; on the host
    the items are shared out over the host threads in contiguous runs of
    about equal element counts (split by item count, a model's large weights
    listed before its biases all went to the first thread)."""
    if be.on_gpu:
        for views, sc in work:
            update(views, *sc)
        return
    starts = np.cumsum([0] + [views[0].size for views, _ in work])
    parts = [(int(np.searchsorted(starts, lo)), int(np.searchsorted(starts, hi)))
             for lo, hi in host_threads.ranges(int(starts[-1]))]
    parts[-1] = (parts[-1][0], len(work))  # every item, whatever its size
    host_threads.run(lambda a, b: [update(views, *sc) for views, sc in work[a:b]], parts)


def _decay(p, g, lr, weight_decay, decoupled=False):
    """Weight decay as PyTorch applies it: decoupled, p *= 1 - lr*wd (in place);
    else the L2 term, g + wd*p (returned, g untouched)."""
    if weight_decay and decoupled:
        p *= 1 - lr * weight_decay
    elif weight_decay:
        g = g + weight_decay * p
    return g


def adagrad(be, params, grads, sums, steps, *, lr, lr_decay, weight_decay, eps):
    """s += g^2; p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)."""
    xp = _array_only(be, "adagrad", params)
    for p, g, s, t in zip(params, grads, sums, steps):
        g = _decay(p, g, lr, weight_decay)
        clr = lr / (1 + (t - 1) * lr_decay)
        s += g * g
        p -= clr * (g / (xp.sqrt(s) + eps))


def adadelta(be, params, grads, square_avgs, acc_deltas, *, lr, rho, eps, weight_decay):
    """v = rho v + (1 - rho) g^2; d = sqrt(u + eps) / sqrt(v + eps) g;
    u = rho u + (1 - rho) d^2; p -= lr d."""
    xp = _array_only(be, "adadelta", params)
    for p, g, v, u in zip(params, grads, square_avgs, acc_deltas):
        g = _decay(p, g, lr, weight_decay)
        v *= rho
        v += (1 - rho) * g * g
        delta = xp.sqrt(u + eps) / xp.sqrt(v + eps) * g
        u *= rho
        u += (1 - rho) * delta * delta
        p -= lr * delta


def adamax(be, params, grads, exp_avgs, exp_infs, steps, *, lr, beta1, beta2, eps, weight_decay):
    """m = b1 m + (1 - b1) g; u = max(b2 u, |g| + eps); p -= lr / (1 - b1^t) m / u."""
    xp = _array_only(be, "adamax", params)
    for p, g, m, u, t in zip(params, grads, exp_avgs, exp_infs, steps):
        g = _decay(p, g, lr, weight_decay)
        m += (1 - beta1) * (g - m)
        u *= beta2
        xp.maximum(u, xp.abs(g) + eps, out=u)
        p -= lr / (1 - beta1 ** t) * (m / u)


def nadam(be, params, grads, exp_avgs, exp_avg_sqs, mu_products, steps, *, lr, beta1, beta2, eps, weight_decay,
          momentum_decay, decoupled):
    """Adam with Nesterov momentum (Dozat), PyTorch's form with the momentum
    schedule mu_t = b1 (1 - 0.96^(t psi) / 2). `mu_products[i]` is the
    product of mu_1..mu_(t-1) (a float); the new products are returned."""
    xp = _array_only(be, "nadam", params)
    out = []
    for p, g, m, v, mu_product, t in zip(params, grads, exp_avgs, exp_avg_sqs, mu_products, steps):
        g = _decay(p, g, lr, weight_decay, decoupled)
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        # PyTorch keeps mu_product in float32 (its default scalar dtype), so does this
        mu_product = float(np.float32(mu_product) * np.float32(mu))
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * g * g
        denom = xp.sqrt(v / (1 - beta2 ** t)) + eps
        p += (-lr * (1.0 - mu) / (1.0 - mu_product)) * (g / denom)
        p += (-lr * mu_next / (1.0 - mu_product * mu_next)) * (m / denom)
        out.append(mu_product)
    return out


def radam(be, params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay, decoupled):
    """Rectified Adam (Liu et al.): Adam's step scaled by the variance
    rectification r_t while the approximated SMA length rho_t > 5, plain
    bias-corrected momentum before that."""
    xp = _array_only(be, "radam", params)
    rho_inf = 2 / (1 - beta2) - 1
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        g = _decay(p, g, lr, weight_decay, decoupled)
        m += (1 - beta1) * (g - m)
        v *= beta2
        v += (1 - beta2) * g * g
        bias_correction2 = 1 - beta2 ** t
        m_hat = m / (1 - beta1 ** t)
        rho_t = rho_inf - 2 * t * beta2 ** t / bias_correction2
        if rho_t > 5.0:
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
            p -= m_hat * lr * (bias_correction2 ** 0.5 / (xp.sqrt(v) + eps)) * rect
        else:
            p -= m_hat * lr
