"""Loss modules. `loss = crit(input, target)` returns a 0-d backend array (an
array shaped like the per-element loss for reduction='none'); `crit.backward(grad=1.0)`
returns d loss / d input. Targets get no gradient. Class weights and pos_weight
are buffers, so `crit.to(device)` moves them and state_dict has PyTorch's keys.
Arguments after the first PyTorch-positional ones are keyword-only, so code
written for PyTorch either means the same here or fails loudly."""
from __future__ import annotations

import warnings

import numpy as np

from .. import checks, dtypes
from ..backend import backend_of
from ..ops import loss as ops
from .module import Module


def _scan_values(be) -> bool:
    """Whether to check target values (class ranges, +-1 labels): always on host
    backends; on GPUs only with the finite checks on, since it syncs the device."""
    return checks.finite_checks_enabled(be)


def _broadcasts_to(shape, target) -> bool:
    try:
        return np.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except ValueError:
        return False



def _ignore_index(v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int, got {type(v).__name__}")
    if not -2**63 <= v < 2**63:  # the kernels compare it with int64 targets
        raise ValueError(f"ignore_index: expected a 64-bit integer, got {v}")
    return int(v)

class _Loss(Module):
    def __init__(self, reduction: str = "mean", size_average=None, reduce=None):
        super().__init__()
        for name, value in (("size_average", size_average), ("reduce", reduce)):
            if value is not None and not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name}: expected a bool or None (PyTorch's deprecated argument), got {value!r}; "
                                "pass reduction= by keyword")
        if size_average is not None or reduce is not None:
            # PyTorch's deprecated pair, mapped to a reduction as PyTorch maps it
            keep, average = reduce is None or bool(reduce), size_average is None or bool(size_average)
            reduction = "none" if not keep else "mean" if average else "sum"
        if reduction not in ops.REDUCTIONS:
            raise ValueError(f"reduction: expected one of {', '.join(map(repr, ops.REDUCTIONS))}, got {reduction!r}")
        self.reduction = reduction

    def _class_weight(self, weight, name: str):
        """Store an optional per-class weight vector as a buffer on this module's backend."""
        if weight is not None:
            weight = self.backend.asarray(weight, dtype=self.dtype)
            if weight.ndim != 1:
                raise ValueError(f"{name}: expected a 1-D array of per-class weights, got shape {tuple(weight.shape)}")
        self.register_buffer(name, weight)

    def _check_weight(self, c: int):
        if self.weight is not None and tuple(self.weight.shape) != (c,):
            raise ValueError(f"weight: expected shape ({c},) (one weight per class), got {tuple(self.weight.shape)}")

    def _check_classes(self, x, t, what: str):
        """(C,), (N, C) or (N, C, d1, ...) input of this module's dtype and integer
        class indices t of shape (), (N,) or (N, d1, ...) in [0, C) or ignore_index."""
        be = self.backend
        checks.array(be, x, "input", dtype=self.dtype)
        if x.ndim == 0:
            raise ValueError(f"input: expected (C,), (N, C) or (N, C, d1, ...) {what}, got a 0-D array")
        checks.array(be, t, "target", integer=True)
        expect = () if x.ndim == 1 else (x.shape[0],) + tuple(x.shape[2:])
        if tuple(t.shape) != expect:
            raise ValueError(f"target: expected shape {expect} (class indices) for input of shape "
                             f"{tuple(x.shape)}, got {tuple(t.shape)}")
        c = x.shape[0] if x.ndim == 1 else x.shape[1]
        self._check_weight(c)
        if _scan_values(be):
            bad = ((t < 0) | (t >= c)) & (t != self.ignore_index)
            if bool(bad.any()):
                raise ValueError(f"target: class indices must be in [0, {c}) or equal ignore_index="
                                 f"{self.ignore_index}, got {int(t[bad].reshape(-1)[0])}")

    def _check_pair(self, x, t):
        """input and a target of the same shape; returns the target in the input's
        dtype (an integer, bool or other floating target is cast, as PyTorch's
        type promotion does for integer targets)."""
        be = self.backend
        checks.array(be, x, "input", dtype=self.dtype)
        checks.array(be, t, "target", finite=False)
        if t.dtype != x.dtype and t.dtype.kind in "biuf":
            t = t.astype(x.dtype)
        checks.array(be, t, "target", dtype=self.dtype)
        checks.same_shape(x, t, "input", "target")
        return t

    def _check_signs(self, t):
        if _scan_values(self.backend) and not bool(((t == 1) | (t == -1)).all()):
            bad = float(t[(t != 1) & (t != -1)][0])
            raise ValueError(f"target: expected labels in {{-1, 1}}, got {bad!r}")

    def __call__(self, input, target, *args, **kwargs):
        self._follow(input)  # before the forward's call record exists: .to() would make it stale
        return super().__call__(input, target, *args, **kwargs)

    def forward(self, input, target):
        loss, ctx = self.compute(input, target)
        self.save(ctx, tuple(loss.shape))
        return loss

    def _follow(self, x):
        """A loss holds no trainable state, so (as in PyTorch) it needs no `.to`:
        it takes its input's floating dtype (float32/float64) and, given a GPU
        array while on the host or on another GPU, its input's backend (class
        weights move with it). NumPy input keeps the backend (cpu or sim both
        take NumPy arrays)."""
        dtype = getattr(x, "dtype", None)
        dtype = dtype if dtype in (np.float32, np.float64) and dtype != self.dtype else None
        device = None
        if not self.backend.owns(x) and not isinstance(x, np.ndarray) and hasattr(x, "__cuda_array_interface__"):
            device = backend_of(x)
        if dtype is not None or device is not None:
            self.to(device, dtype)

    def backward(self, grad=1.0):
        ctx, loss_shape = self.saved()
        return self.gradient(ctx, self._grad(grad, loss_shape))

    def _grad(self, grad, loss_shape):
        be = self.backend
        if self.reduction == "none":
            checks.array(be, grad, "grad", dtype=self.dtype, finite=False)
            if tuple(grad.shape) != loss_shape:
                raise ValueError(f"grad: expected the loss's shape {loss_shape} (reduction='none'), "
                                 f"got {tuple(grad.shape)}")
            return grad
        if be.owns(grad) and grad.ndim == 0:
            return grad.astype(self.dtype, copy=False)
        if np.ndim(grad) == 0 and isinstance(grad, (int, float, np.number, np.ndarray)) and not isinstance(grad, bool):
            return float(grad)
        raise TypeError(f"grad: expected a scalar (the gradient of the reduced loss), got {type(grad).__name__}"
                        f" of shape {np.shape(grad)}")

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """(input - target)^2 per element. half=True gives 1/2 (input - target)^2, the
    lecture notes' 1/2 ||t - z||^2 (with reduction='sum'), whose gradient is
    exactly z - t."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", *, half: bool = False):
        super().__init__(reduction, size_average, reduce)
        self.half = bool(half)

    def compute(self, x, t):
        t = self._check_pair(x, t)
        return ops.mse_forward(self.backend, x, t, self.reduction, self.half)

    def gradient(self, ctx, grad):
        if ctx[0].size == 0:  # an empty batch: nothing to differentiate, no mean to divide by
            return self.backend.xp.zeros_like(ctx[0])
        return ops.mse_backward(self.backend, ctx, grad)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy, as torch.nn.CrossEntropyLoss: input (C,), (N, C)
    or (N, C, d1, ...) logits; target either integer class indices of shape
    (), (N,) or (N, d1, ...) in [0, C) or ignore_index (fused with log-softmax),
    or class probabilities, a floating array of the input's shape (log-softmax,
    then array code; ignore_index does not apply and 'mean' divides by the
    number of rows; ignore_index must keep its default, as PyTorch requires).
    weight: per-class weights (C,); label_smoothing in [0, 1]
    mixes eps/C of the uniform distribution into the target."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__(reduction, size_average, reduce)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing!r}")
        self.ignore_index = _ignore_index(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self._class_weight(weight, "weight")

    def compute(self, x, t):
        be = self.backend
        if getattr(t, "dtype", None) is not None and dtypes.is_floating(t.dtype):  # (bfloat16 is kind "V")
            # class probabilities (PyTorch: a floating target of the input's shape); ignore_index does not apply
            checks.array(be, x, "input", dtype=self.dtype)
            checks.array(be, t, "target", dtype=self.dtype)
            if x.ndim == 0:
                raise ValueError("input: expected (C,), (N, C) or (N, C, d1, ...) logits, got a 0-D array")
            if tuple(t.shape) != tuple(x.shape):
                raise TypeError(f"target: expected integer class indices, or class probabilities of the input's "
                                f"shape {tuple(x.shape)}; got {t.dtype} of shape {tuple(t.shape)}")
            if self.ignore_index != -100:
                raise ValueError(f"ignore_index: not supported with class-probability targets (a floating target), "
                                 f"as in PyTorch; got ignore_index={self.ignore_index}")
            self._check_weight(x.shape[0] if x.ndim == 1 else x.shape[1])
            loss, ctx = ops.cross_entropy_probs_forward(be, x, t, self.reduction, self.weight, self.label_smoothing)
            return loss, (ops.cross_entropy_probs_backward, ctx)
        self._check_classes(x, t, "logits")
        loss, ctx = ops.cross_entropy_forward(be, x, t, self.reduction, self.weight, self.ignore_index,
                                              self.label_smoothing)
        return loss, (ops.cross_entropy_backward, ctx)

    def gradient(self, ctx, grad):
        backward, inner = ctx
        return backward(self.backend, inner, grad)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}")


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits: -w (p t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))),
    computed stably from x. weight broadcasts against the input; pos_weight (the
    weight p of positive examples, one per class) broadcasts along the last axis."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean", pos_weight=None):
        super().__init__(reduction, size_average, reduce)
        for name, value in (("weight", weight), ("pos_weight", pos_weight)):
            self.register_buffer(name, None if value is None else self.backend.asarray(value, dtype=self.dtype))

    def compute(self, x, t):
        t = self._check_pair(x, t)
        for name in ("weight", "pos_weight"):
            w = getattr(self, name)
            if w is not None and not _broadcasts_to(w.shape, x.shape):
                raise ValueError(f"{name}: shape {tuple(w.shape)} does not broadcast to the input's {tuple(x.shape)}")
        return ops.bce_with_logits_forward(self.backend, x, t, self.reduction, self.weight, self.pos_weight)

    def gradient(self, ctx, grad):
        return ops.bce_with_logits_backward(self.backend, ctx, grad)


class HingeLoss(_Loss):
    """Binary hinge [margin - t y]_+ with labels t in {-1, 1} (the SVM loss for
    margin=1). Input and target of the same shape."""

    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.margin = float(margin)

    def compute(self, x, t):
        t = self._check_pair(x, t)
        self._check_signs(t)
        return ops.hinge_forward(self.backend, x, t, self.reduction, self.margin)

    def gradient(self, ctx, grad):
        return ops.hinge_backward(self.backend, ctx, grad)


class PerceptronLoss(_Loss):
    """The perceptron criterion max(0, -t z) with labels t in {-1, 1}: zero for
    correctly classified points; gradient descent on it with reduction='sum' and
    one example at a time is Rosenblatt's rule w <- w + eta t x."""

    def compute(self, x, t):
        t = self._check_pair(x, t)
        self._check_signs(t)
        return ops.perceptron_forward(self.backend, x, t, self.reduction)

    def gradient(self, ctx, grad):
        return ops.perceptron_backward(self.backend, ctx, grad)


class MultiMarginLoss(_Loss):
    """Multi-class hinge as torch.nn.MultiMarginLoss: for input row x (C classes)
    and target y, sum_{i != y} w_y max(0, margin - x_y + x_i)^p / C; 'mean'
    averages over rows. Input (C,) or (N, C), target () or (N,) class indices; p in {1, 2}."""

    def __init__(self, p: int = 1, margin: float = 1.0, weight=None, size_average=None, reduce=None,
                 reduction: str = "mean"):
        super().__init__(reduction, size_average, reduce)
        if p not in (1, 2):
            raise ValueError(f"p: only 1 and 2 are supported, got {p!r}")
        self.p = int(p)
        self.margin = float(margin)
        self._class_weight(weight, "weight")

    def compute(self, x, t):
        be = self.backend
        checks.array(be, x, "input", ndim=(1, 2), dtype=self.dtype)
        checks.array(be, t, "target", integer=True)
        if tuple(t.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"target: expected shape {tuple(x.shape[:-1])} for input of shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")
        c = x.shape[-1]
        self._check_weight(c)
        if _scan_values(be) and bool(((t < 0) | (t >= c)).any()):
            raise ValueError(f"target: class indices must be in [0, {c}), got {int(t[(t < 0) | (t >= c)][0])}")
        loss, ctx = ops.multi_margin_forward(be, x.reshape(-1, c), t.reshape(-1).astype(np.int64, copy=False),
                                             self.reduction, self.p, self.margin, self.weight)
        return (loss.reshape(t.shape) if self.reduction == "none" else loss), (ctx, x.shape)

    def gradient(self, ctx, grad):
        inner, shape = ctx
        if self.reduction == "none":
            grad = grad.reshape(-1)
        return ops.multi_margin_backward(self.backend, inner, grad).reshape(shape)

    def extra_repr(self):
        return f"p={self.p}, margin={self.margin}, reduction={self.reduction!r}"


class L1Loss(_Loss):
    """|input - target| per element, as torch.nn.L1Loss."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(reduction, size_average, reduce)

    def compute(self, x, t):
        t = self._check_pair(x, t)
        return ops.l1_forward(self.backend, x, t, self.reduction)

    def gradient(self, ctx, grad):
        return ops.l1_backward(self.backend, ctx, grad)


class _Huber(_Loss):
    """Huber and smooth L1: quadratic near 0, linear beyond a width (delta, beta)."""

    _smooth_l1 = False

    def compute(self, x, t):
        t = self._check_pair(x, t)
        width = self.beta if self._smooth_l1 else self.delta
        return ops.huber_forward(self.backend, x, t, self.reduction, width, self._smooth_l1)

    def gradient(self, ctx, grad):
        return ops.huber_backward(self.backend, ctx, grad)


class HuberLoss(_Huber):
    """As torch.nn.HuberLoss: 1/2 d^2 where |d| < delta, else delta (|d| - delta/2),
    d = input - target."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0):
        super().__init__(reduction)
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0:
            raise ValueError(f"delta: expected a number > 0, got {delta!r}")
        self.delta = float(delta)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, delta={self.delta}"


class SmoothL1Loss(_Huber):
    """As torch.nn.SmoothL1Loss: HuberLoss(delta=beta) / beta, i.e. 1/2 d^2 / beta
    where |d| < beta, else |d| - beta/2; beta = 0 is the L1 loss."""

    _smooth_l1 = True

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0):
        super().__init__(reduction, size_average, reduce)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            raise ValueError(f"beta: expected a non-negative number, got {beta!r}")
        self.beta = float(beta)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, beta={self.beta}"


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities, as torch.nn.BCELoss:
    -w (t log x + (1 - t) log(1 - x)) with each log clamped at -100. Input in
    [0, 1] (checked where target values are scanned); weight broadcasts
    against the input. On logits, BCEWithLogitsLoss is the stable choice."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(reduction, size_average, reduce)
        self.register_buffer("weight", None if weight is None else self.backend.asarray(weight, dtype=self.dtype))

    def compute(self, x, t):
        t = self._check_pair(x, t)
        if self.weight is not None and not _broadcasts_to(self.weight.shape, x.shape):
            raise ValueError(f"weight: shape {tuple(self.weight.shape)} does not broadcast to the input's "
                             f"{tuple(x.shape)}")
        if _scan_values(self.backend) and bool(((x < 0) | (x > 1)).any()):
            bad = float(x[(x < 0) | (x > 1)].reshape(-1)[0])
            raise ValueError(f"input: expected probabilities in [0, 1], got {bad!r} "
                             "(for logits use BCEWithLogitsLoss)")
        return ops.bce_forward(self.backend, x, t, self.reduction, self.weight)

    def gradient(self, ctx, grad):
        return ops.bce_backward(self.backend, ctx, grad)


class NLLLoss(_Loss):
    """Negative log-likelihood of log-probabilities, as torch.nn.NLLLoss:
    -weight[t] input[t] per row, for input (C,), (N, C) or (N, C, d1, ...)
    (e.g. LogSoftmax(dim=1)'s output) and integer class indices t of shape (),
    (N,) or (N, d1, ...); rows whose target is ignore_index give 0 and do not
    count; 'mean' divides by the summed weights of the counted rows."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean"):
        super().__init__(reduction, size_average, reduce)
        self.ignore_index = _ignore_index(ignore_index)
        self._class_weight(weight, "weight")

    def compute(self, x, t):
        self._check_classes(x, t, "log-probabilities")
        return ops.nll_forward(self.backend, x, t, self.reduction, self.weight, self.ignore_index)

    def gradient(self, ctx, grad):
        return ops.nll_backward(self.backend, ctx, grad)

    def extra_repr(self):
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class KLDivLoss(_Loss):
    """Kullback-Leibler divergence, as torch.nn.KLDivLoss: input log-probabilities
    x, target probabilities t (log-probabilities with log_target=True), loss
    t (log t - x) per element. reduction='batchmean' divides the sum by the
    batch size (the KL divergence per example); 'mean' averages over every
    element, as PyTorch (which warns that it is not the KL divergence)."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", log_target: bool = False):
        # 'batchmean' is KLDivLoss's own; the deprecated pair, when given, decides as for every loss
        batchmean = reduction == "batchmean" and size_average is None and reduce is None
        super().__init__("mean" if batchmean else reduction, size_average, reduce)
        if batchmean:
            self.reduction = "batchmean"
        self.log_target = bool(log_target)

    def compute(self, x, t):
        t = self._check_pair(x, t)
        if self.reduction == "mean":
            warnings.warn("KLDivLoss: reduction='mean' divides the total loss by both the batch size and the support "
                          "size; 'batchmean' divides only by the batch size, as the KL divergence does (PyTorch's "
                          "warning)", UserWarning, stacklevel=5)
        return ops.kl_div_forward(self.backend, x, t, self.reduction, self.log_target)

    def gradient(self, ctx, grad):
        return ops.kl_div_backward(self.backend, ctx, grad)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, log_target={self.log_target}"
