"""Loss functions: forward to a per-element loss, a reduction, and the explicit
gradient with respect to the input (targets get none).

Reductions follow PyTorch: 'none' keeps the per-element losses, 'sum' adds
them, 'mean' divides the sum by the number of elements, except where noted
(cross-entropy: by the summed target-class weights of the non-ignored rows;
multi-margin: by the number of rows). `grad` in the backward functions is the
gradient of whatever consumed the loss: a scalar (or 0-d array) for 'sum' and
'mean', an array shaped like the loss for 'none'.

Cross-entropy is fused with log-softmax. The forward keeps only each row's
log-sum-exp, as the pair (m, l) = (row max, log sum exp(x - m)) whose sum it
is (in float32 an lse near 1e4 is only good to ~1e-3; (x - m) - l is exact to
rounding); the backward recomputes the probabilities exp((x - m) - l) from
the logits, so no (rows, classes) probability array is ever stored. On the
"kernel" dispatch path (sim, cuda; float32, and float16/bfloat16 logits read
in float32 with float32 lse, per-row losses and reduction, the loss and
dlogits rounded once) both run csrc/kernels/loss.cu; on
the "fused" path they are CuPy fusions of the same formulas (below). (N, C, d...)
inputs are brought to (N*d..., C) rows by moving the class axis last (one
transposing copy each way, none for (N, C)).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .. import dtypes, hostlib
from ..dispatch import path
from . import device_errors, host_threads
from .activation import sigmoid
from .cupy_kernels import cupy
from .half import float32_compute, kernel_view

REDUCTIONS = ("mean", "sum", "none")


def _reduce(xp, per_elem, reduction, denom):
    """The reduced loss as a 0-d array (or per_elem itself for 'none')."""
    if reduction == "none":
        return per_elem
    total = per_elem.sum()
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 = NaN when nothing counts, as in PyTorch
            total = total / denom
    return xp.asarray(total, dtype=per_elem.dtype)


def _scale(xp, reduction, grad, denom):
    """d loss / d per_elem: grad spread over the elements, divided for 'mean';
    a 'mean' over nothing (an empty batch, every row ignored: denom 0) spreads
    0, PyTorch's zero gradients, not grad/0."""
    if reduction != "mean":
        return grad
    if isinstance(denom, (int, float)):
        return grad / denom if denom else grad * 0.0
    return grad / xp.where(denom == 0, xp.inf, denom)


# ---------------------------------------------------------------- MSE
def mse_forward(be, x, t, reduction: str, half: bool):
    """(x - t)^2 per element, times 1/2 when `half` (the notes' 1/2 ||t - z||^2)."""
    d = x - t
    per = d * d
    if half:
        per *= 0.5
    return _reduce(be.xp, per, reduction, x.size), (d, reduction, half)


def mse_backward(be, ctx, grad):
    d, reduction, half = ctx
    return ((1.0 if half else 2.0) * _scale(be.xp, reduction, grad, d.size) * d).astype(d.dtype, copy=False)


# ---------------------------------------------------------------- BCE with logits
def bce_with_logits_forward(be, x, t, reduction: str, weight=None, pos_weight=None):
    """-(p t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))) * weight, with p = pos_weight
    (broadcast along the last axis). Written with softplus(-x) = -log sigmoid(x) =
    log1p(e^{-|x|}) + max(-x, 0), which never overflows."""
    xp = be.xp
    sp_neg = xp.log1p(xp.exp(-xp.abs(x))) + xp.maximum(-x, 0)
    sp_pos = sp_neg + x  # softplus(x) = softplus(-x) + x
    pt = t if pos_weight is None else pos_weight * t
    per = pt * sp_neg + (1 - t) * sp_pos
    if weight is not None:
        per = per * weight
    per = per.astype(x.dtype, copy=False)
    return _reduce(xp, per, reduction, x.size), (x, t, reduction, weight, pos_weight)


def bce_with_logits_backward(be, ctx, grad):
    x, t, reduction, weight, pos_weight = ctx
    xp = be.xp
    pt = t if pos_weight is None else pos_weight * t
    # d/dx [pt softplus(-x) + (1 - t) softplus(x)] = -pt sigmoid(-x) + (1 - t) sigmoid(x)
    g = (1 - t) * sigmoid(xp, x) - pt * sigmoid(xp, -x)
    if weight is not None:
        g = g * weight
    return (g * _scale(be.xp, reduction, grad, x.size)).astype(x.dtype, copy=False)


# ---------------------------------------------------------------- hinge, perceptron
def hinge_forward(be, x, t, reduction: str, margin: float = 1.0):
    """[margin - t x]_+ per element, t in {-1, 1} (the SVM loss for margin 1)."""
    h = margin - t * x
    per = be.xp.maximum(h, 0).astype(x.dtype, copy=False)
    return _reduce(be.xp, per, reduction, x.size), (h > 0, t, reduction)


def hinge_backward(be, ctx, grad):
    active, t, reduction = ctx
    return (-t * active * _scale(be.xp, reduction, grad, t.size)).astype(t.dtype, copy=False)


def perceptron_forward(be, x, t, reduction: str):
    """max(0, -t x): the perceptron criterion, zero for correctly classified points
    (a hinge with margin 0); its gradient step is Rosenblatt's rule."""
    return hinge_forward(be, x, t, reduction, margin=0.0)


perceptron_backward = hinge_backward


# ---------------------------------------------------------------- multi-class hinge
def multi_margin_forward(be, x, t, reduction: str, p: int = 1, margin: float = 1.0, weight=None):
    """PyTorch's MultiMarginLoss: for each row n with target y,
    sum_{i != y} w_y max(0, margin - x_y + x_i)^p / C ; 'mean' divides by the rows.
    x (N, C), t (N,) integer."""
    xp = be.xp
    n, c = x.shape
    xt = xp.take_along_axis(x, t[:, None], axis=1)
    h = margin - xt + x
    active = (h > 0) & (xp.arange(c)[None, :] != t[:, None])
    hp = xp.where(active, h, 0)
    terms = hp if p == 1 else hp * hp
    wy = 1.0 if weight is None else weight[t][:, None]
    per = (terms * wy).sum(axis=1) / c
    return _reduce(xp, per.astype(x.dtype, copy=False), reduction, n), (hp, t, wy, reduction, p)


def multi_margin_backward(be, ctx, grad):
    hp, t, wy, reduction, p = ctx
    xp = be.xp
    n, c = hp.shape
    scale = _scale(be.xp, reduction, grad, n)
    if reduction == "none":
        scale = scale[:, None]
    dterm = (hp > 0) * 1.0 if p == 1 else 2 * hp
    g = dterm * wy * scale / c
    # x_y enters every active term with a minus sign
    g[xp.arange(n), t] = -g.sum(axis=1)
    return g.astype(hp.dtype, copy=False)


# ---------------------------------------------------------------- cross-entropy
class _Rows(NamedTuple):
    """How logits map to their (rows, C): the logits' shape and, for host
    (N, C, d...) logits taken in memory order, the order of the axes
    (N, d...) the rows run in (None: that order)."""
    shape: tuple
    order: tuple | None = None


def _as_rows(xp, x, t):
    """(C,), (N, C) or (N, C, d...) logits and targets as (rows, C), (rows,)
    and the _Rows between them. Host logits that are a class-axis-second view
    of memory with the classes last (the sequence models' (T, N, C) seen as
    (N, C, T)) are taken as rows in memory order, no copy, and the targets
    follow (a copy of the (N, C, T) view's rows and of the gradient back
    took 3x the loss's time for the char-LSTM's logits)."""
    if x.ndim == 1:
        return x[None, :], t.reshape(1), _Rows(x.shape)
    if x.ndim == 2:
        return x, t, _Rows(x.shape)
    moved = xp.moveaxis(x, 1, -1)
    order = _memory_order(moved) if xp is np else None
    if order is not None:
        x2 = moved.transpose(*order, moved.ndim - 1).reshape(-1, x.shape[1])  # a view
        return x2, t.transpose(order).reshape(-1), _Rows(x.shape, order)
    return xp.ascontiguousarray(moved).reshape(-1, x.shape[1]), t.reshape(-1), _Rows(x.shape)


def _memory_order(moved):
    """The order of moved's leading axes in which moved is C-contiguous, where
    that is not their own order; else None."""
    lead = moved.ndim - 1
    if moved.flags.c_contiguous or moved.strides[-1] != moved.itemsize:
        return None
    order = tuple(sorted(range(lead), key=lambda a: -moved.strides[a]))
    return order if moved.transpose(*order, lead).flags.c_contiguous else None


def _targets_shaped(per, t_shape, rows: _Rows):
    """Per-row values (rows,) in the targets' shape."""
    if rows.order is None:
        return per.reshape(t_shape)
    return per.reshape([t_shape[a] for a in rows.order]).transpose(np.argsort(rows.order))


def _rows_ordered(a, rows: _Rows):
    """Values in the targets' shape as (rows,), in the rows' order."""
    return a.reshape(-1) if rows.order is None else a.transpose(rows.order).reshape(-1)


def _from_rows(be, d2, rows: _Rows):
    """(rows, C) gradients in the logits' shape. On the host a view of the
    rows (NumPy takes any strides, and a class-axis-second consumer such as
    the sequence models reads them back without a copy); the kernels get
    contiguous memory."""
    shape = rows.shape
    if len(shape) <= 2:
        return d2.reshape(shape)
    moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    if rows.order is None:
        d = d2.reshape(moved)
    else:
        d = d2.reshape([moved[a] for a in rows.order] + [moved[-1]]).transpose(*np.argsort(rows.order), len(moved) - 1)
    dx = be.xp.moveaxis(d, -1, 1)
    return dx if be.xp is np and be.kernels is None else be.xp.ascontiguousarray(dx)


def _all_half(be, *args, **kwargs):
    """Every half cross-entropy call on class indices runs on the kernels."""
    return True


@float32_compute("cross_entropy", forward=True, half_kernels=_all_half)
def cross_entropy_forward(be, x, t, reduction: str, weight=None, ignore_index: int = -100,
                          label_smoothing: float = 0.0):
    """Cross-entropy of softmax(x) along the class axis (axis 1; axis 0 for a single
    (C,) row) against class indices t, as torch.nn.CrossEntropyLoss. With smoothing
    eps the target distribution is (1 - eps) onehot(t) + eps / C, and with class
    weights w each row's loss is sum_c a_c (lse - x_c) with a_c = (1 - eps) w_t [c = t]
    + eps / C * w_c. Rows whose target is ignore_index contribute 0 and do not count
    in the mean (all rows ignored: NaN, as in PyTorch). Half logits (a kernel
    backend's: cpu gets them in float32) keep float32 per-row losses, weights,
    lse and reduction; only the reduced loss is rounded to their dtype."""
    xp = be.xp
    x2, t1, layout = _as_rows(xp, x, t)
    rows, c = x2.shape
    half = dtypes.is_half(x.dtype)
    fdt = np.dtype(np.float32) if half else x.dtype  # the dtype of everything but logits and dlogits
    if half and weight is not None:
        weight = weight.astype(np.float32)
    valid = t1 != ignore_index
    ts = xp.where(valid, t1, 0).astype(np.int64, copy=False)
    # (clipped: an out-of-range target, refused by the module's check on the host
    # and reported by the kernel on a GPU, must not index past the weights here)
    wt = valid.astype(fdt) if weight is None else weight[xp.clip(ts, 0, c - 1)] * valid
    route = "kernel" if half else path(be, "cross_entropy", x2.dtype, fused=True)
    if route == "kernel":
        x2 = xp.ascontiguousarray(x2)
        per = xp.empty(rows, dtype=fdt)
        lse = xp.empty((rows, 2), dtype=fdt)
        be.kernels.cross_entropy_forward(kernel_view(be, x2), xp.ascontiguousarray(t1, dtype=np.int64),
                                         _weight_arg(xp, weight),
                                         per, lse, int(ignore_index), float(label_smoothing),
                                         device_errors.flag(be), be.stream())
        device_errors.launched(be)
    elif route == "fused":
        per, lse = _fused_forward(x2, ts, wt, valid, weight, label_smoothing)
        per = per.astype(x.dtype, copy=False)
    else:
        lse = _host_lse(be, x2)
        if lse is None:
            m = x2.max(axis=1, keepdims=True)
            e = x2 - m
            xp.exp(e, out=e)
            lse = xp.concatenate([m, xp.log(e.sum(axis=1, keepdims=True))], axis=1)
        m = lse[:, :1]
        # lse - x, as (m - x) + l: at the targets only, unless smoothing needs every class
        x_t = xp.take_along_axis(x2, ts[:, None], axis=1)
        per = wt * ((m - x_t) + lse[:, 1:])[:, 0]
        if label_smoothing:
            neg_logp = (m - x2) + lse[:, 1:]
            w_row = 1.0 if weight is None else weight[None, :]
            smooth = (neg_logp * w_row).sum(axis=1) * valid
            per = (1 - label_smoothing) * per + (label_smoothing / c) * smooth
        per = per.astype(x.dtype, copy=False)
    denom = wt.sum()
    loss = _reduce(xp, per, reduction, denom)
    if reduction == "none":
        loss = _targets_shaped(loss, t.shape, layout)
    if half:
        loss = loss.astype(x.dtype)
    return loss, (route, x2, ts, valid, wt, lse, denom, t1, layout, reduction, weight, ignore_index,
                  label_smoothing)


@float32_compute("cross_entropy", forward=False, half_kernels=_all_half)
def cross_entropy_backward(be, ctx, grad):
    route, x2, ts, valid, wt, lse, denom, t1, layout, reduction, weight, ignore_index, eps = ctx
    xp = be.xp
    rows, c = x2.shape
    if dtypes.is_half(getattr(grad, "dtype", np.float32)):  # the kernels take dloss in float32
        grad = grad.astype(np.float32)
    scale = _scale(be.xp, reduction, grad, denom)
    if route == "fused":
        return _from_rows(be, _fused_backward(x2, lse, ts, wt, valid, weight, eps, scale), layout)
    scale = (_rows_ordered(scale, layout) if reduction == "none"
             else xp.broadcast_to(xp.asarray(scale, dtype=lse.dtype), (rows,)))
    if route == "kernel":
        dx2 = xp.empty_like(x2)
        weight_sum = _weight_arg(xp, None if weight is None else weight.sum(keepdims=True))
        be.kernels.cross_entropy_backward(kernel_view(be, x2), xp.ascontiguousarray(t1, dtype=np.int64),
                                          _weight_arg(xp, weight), weight_sum, lse,
                                          xp.ascontiguousarray(scale, dtype=lse.dtype), kernel_view(be, dx2),
                                          int(ignore_index), float(eps), be.stream())
        return _from_rows(be, dx2, layout)
    # d/dx_c sum_k a_k (lse - x_k) = (sum_k a_k) p_c - a_c
    lib = _host_rows_lib(be, x2)
    if lib is not None and not eps:  # a = ct = wt without smoothing
        return _from_rows(be, _host_grad(lib, x2, lse, ts, wt, scale), layout)
    # p = softmax(x), built in dx2's memory; every later step is in place
    dx2 = x2 - lse[:, :1]
    dx2 -= lse[:, 1:]
    xp.exp(dx2, out=dx2)
    w_row = xp.ones((1, c), dtype=x2.dtype) if weight is None else weight[None, :]
    a_sum = (1 - eps) * wt + (eps / c) * w_row.sum() * valid
    dx2 *= a_sum[:, None]
    if eps:
        dx2 -= (eps / c) * w_row * valid[:, None]
    dx2[xp.arange(rows), ts] -= (1 - eps) * wt
    dx2 *= scale[:, None]
    return _from_rows(be, dx2, layout)


def _host_rows_lib(be, x2):
    """The compiled host loops for float32 rows x2 in C order, else None."""
    lib = hostlib.for_float32(be, x2)
    return lib if lib is not None and x2.flags.c_contiguous and x2.size else None


def _host_lse(be, x2):
    """The (rows, 2) pairs (max, log sum e^(x - max)) of float32 rows in one
    compiled read of each row (gpunet_cross_entropy_lse_f32), the rows split
    over the host threads; None where the NumPy code runs."""
    lib = _host_rows_lib(be, x2)
    if lib is None:
        return None
    rows, c = x2.shape
    lse = np.empty((rows, 2), np.float32)
    host_threads.run_compiled(lib.gpunet_cross_entropy_lse_f32, (hostlib.ptr(x2), hostlib.ptr(lse), c),
                              host_threads.ranges(rows, c, host_threads.MIN_PER_EXP_THREAD))
    return lse


def _host_grad(lib, x2, lse, ts, wt, scale):
    """cross_entropy_backward's dx without label smoothing in one compiled
    pass over float32 rows (gpunet_cross_entropy_grad_f32: the NumPy code's
    operations in its order), the rows split over the host threads."""
    rows, c = x2.shape
    dx2 = np.empty_like(x2)
    wt = np.ascontiguousarray(wt, np.float32)
    scale = np.ascontiguousarray(scale, np.float32)
    ts = np.ascontiguousarray(ts, np.int64)
    xa, la, ta, wa, sa, da = (hostlib.ptr(a) for a in (x2, lse, ts, wt, scale, dx2))
    host_threads.run_compiled(lib.gpunet_cross_entropy_grad_f32, (xa, la, ta, wa, wa, sa, da, c),
                              host_threads.ranges(rows, c, host_threads.MIN_PER_EXP_THREAD))
    return dx2


def _weight_arg(xp, weight):
    """The kernels' optional class weights: an empty array stands for 'none'."""
    return xp.empty(0, dtype=np.float32) if weight is None else xp.ascontiguousarray(weight, dtype=np.float32)


# ---------------------------------------------------------------- CuPy fusions of cross-entropy
@functools.cache
def _fused_kernels():
    cp = cupy()
    lse = cp.ReductionKernel("T x, T m", "T l", "exp(x - m)", "a + b", "l = log(a)", "0", "gpunet_ce_lse")
    smooth = cp.ReductionKernel("T x, T m, T l, T w", "T s", "((m - x) + l) * w", "a + b", "s = a", "0",
                                "gpunet_ce_smooth")
    backward = cp.ElementwiseKernel(
        "T x, T m, T l, T a, T w, bool valid, int64 t, T ct, T s, T e, int64 C", "T dx",
        """
        // d/dx_c sum_k a_k (lse - x_k) = (sum_k a_k) p_c - a_c
        T d = a * exp((x - m) - l) - (e * w) * (valid ? T(1) : T(0));
        if (i % C == t) d -= ct;
        dx = d * s;""", "gpunet_ce_backward")
    return lse, smooth, backward


def _fused_forward(x2, ts, wt, valid, weight, label_smoothing: float):
    """Per-row losses and the (m, l) log-sum-exp pairs of cross_entropy_forward
    for rows x2 (rows, C), without its (rows, C) temporaries: the row max, one
    fused exp-sum-log pass (a ReductionKernel), a gather of the target logits
    (and one fused pass for the smoothing term)."""
    cp = cupy()
    lse_kernel, smooth_kernel, _ = _fused_kernels()
    m = x2.max(axis=1, keepdims=True)
    l = lse_kernel(x2, m, axis=1, keepdims=True)
    xt = cp.take_along_axis(x2, ts[:, None], axis=1)
    per = wt * ((m - xt) + l)[:, 0]
    if label_smoothing:
        w_row = 1.0 if weight is None else weight[None, :]
        smooth = smooth_kernel(x2, m, l, w_row, axis=1) * valid
        c = x2.shape[1]
        per = (1 - label_smoothing) * per + (label_smoothing / c) * smooth
    return per, cp.concatenate([m, l], axis=1)


def _fused_backward(x2, lse, ts, wt, valid, weight, eps: float, scale):
    """d loss / d x2 of cross_entropy_backward in one ElementwiseKernel pass over
    (rows, C), recomputing the probabilities. `scale` (the incoming gradient,
    divided for 'mean') is a number, a 0-d array or one value per row."""
    cp = cupy()
    rows, c = x2.shape
    w_row = cp.ones((1, c), dtype=x2.dtype) if weight is None else weight[None, :]
    a_sum = (1 - eps) * wt + (eps / c) * w_row.sum() * valid
    ct = (1 - eps) * wt
    if hasattr(scale, "shape"):
        scale = scale.astype(x2.dtype, copy=False)
        scale = scale.reshape(rows, 1) if scale.ndim else scale
    dx2 = cp.empty_like(x2)
    _fused_kernels()[2](x2, lse[:, :1], lse[:, 1:], a_sum.astype(x2.dtype, copy=False)[:, None], w_row,
                        valid[:, None], ts[:, None], ct.astype(x2.dtype, copy=False)[:, None], scale, eps / c, c, dx2)
    return dx2


# ---------------------------------------------------------------- shared by the losses below
# ---------------------------------------------------------------- L1, smooth L1, Huber
def l1_forward(be, x, t, reduction: str):
    """|x - t| per element; its gradient at x = t is 0, as PyTorch's."""
    d = x - t
    return _reduce(be.xp, be.xp.abs(d), reduction, x.size), (d, reduction)


def l1_backward(be, ctx, grad):
    d, reduction = ctx
    return (be.xp.sign(d) * _scale(be.xp, reduction, grad, d.size)).astype(d.dtype, copy=False)


def huber_forward(be, x, t, reduction: str, delta: float, smooth_l1: bool = False):
    """Huber: 1/2 d^2 where |d| < delta, delta (|d| - delta/2) elsewhere. With
    smooth_l1 (delta being PyTorch's beta) the same divided by delta, which
    for delta = 0 is |d| (PyTorch's SmoothL1Loss)."""
    xp = be.xp
    d = x - t
    z = xp.abs(d)
    if smooth_l1 and delta == 0:
        per = z
    else:
        per = xp.where(z < delta, 0.5 * d * d, delta * (z - 0.5 * delta))
        if smooth_l1:
            per = per / delta
    return _reduce(xp, per.astype(x.dtype, copy=False), reduction, x.size), (d, delta, smooth_l1, reduction)


def huber_backward(be, ctx, grad):
    d, delta, smooth_l1, reduction = ctx
    xp = be.xp
    # d clipped to [-delta, delta]; divided by delta for smooth L1 (sign(d) when delta = 0)
    if smooth_l1 and delta == 0:
        g = xp.sign(d)
    else:
        g = xp.clip(d, -delta, delta)
        if smooth_l1:
            g = g / delta
    return (g * _scale(be.xp, reduction, grad, d.size)).astype(d.dtype, copy=False)


# ---------------------------------------------------------------- BCE on probabilities
def bce_forward(be, x, t, reduction: str, weight=None):
    """-w (t log x + (1 - t) log(1 - x)) for probabilities x in [0, 1], each log
    clamped at -100 as PyTorch (so x = 0 or 1 gives a finite loss)."""
    xp = be.xp
    with np.errstate(divide="ignore"):
        log_x = xp.maximum(xp.log(x), -100.0)
        log_1mx = xp.maximum(xp.log1p(-x), -100.0)
    per = -(t * log_x + (1 - t) * log_1mx)
    if weight is not None:
        per = per * weight
    return _reduce(xp, per.astype(x.dtype, copy=False), reduction, x.size), (x, t, reduction, weight)


def bce_backward(be, ctx, grad):
    """w (x - t) / max(x (1 - x), 1e-12), PyTorch's gradient (its epsilon keeps
    x = 0 or 1 finite; PyTorch's is 1e-12 rounded to float32, so is this one)."""
    x, t, reduction, weight = ctx
    g = (x - t) / be.xp.maximum(x * (1 - x), float(np.float32(1e-12)))
    if weight is not None:
        g = g * weight
    return (g * _scale(be.xp, reduction, grad, x.size)).astype(x.dtype, copy=False)


# ---------------------------------------------------------------- NLL
@float32_compute("nll_loss", forward=True, array_code=True)
def nll_forward(be, x, t, reduction: str, weight=None, ignore_index: int = -100):
    """-w_t x[t] per row for log-probabilities x ((C,), (N, C) or (N, C, d...)) and
    class indices t; ignored rows give 0 and do not count, and 'mean' divides
    by the summed weights of the counted rows, as PyTorch (0/0 = NaN)."""
    xp = be.xp
    x2, t1, layout = _as_rows(xp, x, t)
    valid = t1 != ignore_index
    ts = xp.where(valid, t1, 0).astype(np.int64, copy=False)
    wt = (valid if weight is None else weight[ts] * valid).astype(x.dtype, copy=False)
    per = -wt * xp.take_along_axis(x2, ts[:, None], axis=1)[:, 0]
    denom = wt.sum()
    loss = _reduce(xp, per.astype(x.dtype, copy=False), reduction, denom)
    if reduction == "none":
        loss = _targets_shaped(loss, t.shape, layout)
    return loss, (x2.shape, ts, wt, denom, layout, reduction)


@float32_compute("nll_loss", forward=False, array_code=True)
def nll_backward(be, ctx, grad):
    rows_shape, ts, wt, denom, layout, reduction = ctx
    xp = be.xp
    scale = _scale(be.xp, reduction, grad, denom)
    if reduction == "none":
        scale = _rows_ordered(scale, layout)
    dx2 = xp.zeros(rows_shape, dtype=wt.dtype)
    dx2[xp.arange(rows_shape[0]), ts] = -wt * scale
    return _from_rows(be, dx2, layout)


# ---------------------------------------------------------------- KL divergence
def kl_div_forward(be, x, t, reduction: str, log_target: bool = False):
    """t (log t - x) per element for log-probabilities x (0 log 0 = 0), or
    e^t (t - x) with log_target; 'batchmean' divides the sum by the batch size
    x.shape[0] (the true KL divergence per example), 'mean' by every element."""
    xp = be.xp
    if log_target:
        pt = xp.exp(t)
        per = pt * (t - x)
    else:
        pt = t
        with np.errstate(divide="ignore", invalid="ignore"):  # xlogy(t, t) - t x, as PyTorch (0 log 0 = 0)
            per = xp.where(t == 0, 0, t * xp.log(t)) - t * x
    reduce_as, denom = ("mean", x.shape[0] if x.ndim else 1) if reduction == "batchmean" else (reduction, x.size)
    return _reduce(xp, per.astype(x.dtype, copy=False), reduce_as, denom), (pt, reduce_as, denom)


def kl_div_backward(be, ctx, grad):
    pt, reduction, denom = ctx
    return (-pt * _scale(be.xp, reduction, grad, denom)).astype(pt.dtype, copy=False)


# ---------------------------------------------------------------- cross-entropy on class probabilities
# array code around ops.softmax on every backend: a half call computes it in
# float32 there (the float32 softmax kernels on sim/cuda), one rounding
@float32_compute("cross_entropy", forward=True, array_code=True)
def cross_entropy_probs_forward(be, x, t, reduction: str, weight=None, label_smoothing: float = 0.0):
    """Cross-entropy against class probabilities t (the input's shape), as
    PyTorch: per row -sum_c w_c q_c log softmax(x)_c with q = (1 - eps) t + eps/C;
    'mean' divides by the number of rows (N d1 ...), not by weights. The
    log-softmax is ops.softmax's (its kernels on sim/cuda), the rest array code."""
    from .softmax import softmax_forward
    xp = be.xp
    dim = 0 if x.ndim == 1 else 1
    c = x.shape[dim]
    logp, sm_ctx = softmax_forward(be, x, dim, log=True)
    q = t
    if label_smoothing:  # one new array for q, then in place
        q = t * (1 - label_smoothing)
        q += label_smoothing / c
    if weight is not None:
        w = weight.reshape((c,) + (1,) * (x.ndim - dim - 1))
        q = q * w if q is t else xp.multiply(q, w, out=q)
    per = -(q * logp).sum(axis=dim)
    return _reduce(xp, per.astype(x.dtype, copy=False), reduction, per.size), (sm_ctx, q, dim, reduction, per.size)


@float32_compute("cross_entropy", forward=False, array_code=True)
def cross_entropy_probs_backward(be, ctx, grad):
    from .softmax import softmax_backward
    sm_ctx, q, dim, reduction, rows = ctx
    scale = _scale(be.xp, reduction, grad, rows)
    if reduction == "none":
        scale = be.xp.expand_dims(scale, dim)
    return softmax_backward(be, sm_ctx, (-q * scale).astype(q.dtype, copy=False))
