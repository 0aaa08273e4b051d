"""LayerNorm, GroupNorm, BatchNorm1d and BatchNorm2d (PyTorch's arguments, parameters and buffers)."""
from __future__ import annotations

import numpy as np

from .. import checks, dtypes
from ..ops import norm as ops
from . import init
from .module import Module, Parameter


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a non-negative number, got {eps!r}")
    return float(eps)


def _check_grad(be, dy, shape, dtype):
    checks.array(be, dy, "grad_output", dtype=dtype, finite=False)
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"grad_output: expected the forward output's shape {tuple(shape)}, got {tuple(dy.shape)}")


class LayerNorm(Module):
    """Normalises each sample over its last len(normalized_shape) axes:
    y = (x - mean)/sqrt(var + eps)·weight + bias, var biased as in PyTorch.
    weight/bias have shape normalized_shape (ones/zeros initially)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else (
            tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else ())
        if not shape or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"normalized_shape: expected a positive int or a non-empty tuple of them, "
                             f"got {normalized_shape!r}")
        self.normalized_shape = tuple(int(s) for s in shape)
        self.eps = _check_eps(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = Parameter(init.ones(self.normalized_shape, self.dtype)) if elementwise_affine else None
        self.bias = Parameter(init.zeros(self.normalized_shape, self.dtype)) if elementwise_affine and bias else None
        self._place(device, dtype)

    def forward(self, input):
        be = self.backend
        checks.array(be, input, "input", dtype=self.dtype, finite=False)  # the op scans as it reads
        nd = len(self.normalized_shape)
        if input.ndim < nd or tuple(input.shape[input.ndim - nd:]) != self.normalized_shape:
            raise ValueError(f"input: expected trailing dimensions normalized_shape={self.normalized_shape}, "
                             f"got shape {tuple(input.shape)}")
        y, ctx = ops.layer_norm_forward(be, input, None if self.weight is None else self.weight.data,
                                        None if self.bias is None else self.bias.data,
                                        int(np.prod(self.normalized_shape)), self.eps, check="input")
        self.save(ctx, input.shape)
        return y

    def backward(self, dy):
        ctx, shape = self.saved()
        _check_grad(self.backend, dy, shape, self.dtype)
        dx, dw, db = ops.layer_norm_backward(self.backend, ctx, dy)
        if self.weight is not None:
            self.weight.accumulate(dw.reshape(self.normalized_shape))
        if self.bias is not None:
            self.bias.accumulate(db.reshape(self.normalized_shape))
        return dx

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class _BatchNorm(Module):
    """Per-channel normalisation of (N, C, *) input. Training: batch statistics
    (biased variance), and running_mean/running_var move towards the batch's
    mean and *unbiased* variance by `momentum` (momentum=None: cumulative
    average over num_batches_tracked batches), as PyTorch. Eval: running
    statistics. Without track_running_stats the batch statistics are used in
    both modes and there are no buffers."""

    _ndims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, bias: bool = True):
        super().__init__()
        self.num_features = checks.positive_int(num_features, "num_features")
        self.eps = _check_eps(eps)
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
                                     or not 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum: expected a number in [0, 1] or None, got {momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        C = self.num_features
        self.weight = Parameter(init.ones(C, self.dtype)) if affine else None
        self.bias = Parameter(init.zeros(C, self.dtype)) if affine and bias else None
        if track_running_stats:
            self.register_buffer("running_mean", init.zeros(C, self.dtype))
            self.register_buffer("running_var", init.ones(C, self.dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:  # plain attributes: no buffers, so no state_dict keys (as torch)
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._place(device, dtype)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def forward(self, input):
        be = self.backend
        checks.array(be, input, "input", ndim=self._ndims, dtype=self.dtype, finite=False)  # scanned below
        if input.shape[1] != self.num_features:
            raise ValueError(f"input: expected {self.num_features} channels (num_features) on axis 1, "
                             f"got shape {tuple(input.shape)}")
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            with np.errstate(invalid="ignore", over="ignore"):  # NumPy's path on bad input: the error follows
                mean, var, n = ops.batch_norm_stats(be, input)
            # A NaN or an infinity in the input makes its channel's mean or variance one too, so the
            # input's scan rides the statistics: it runs only where one is not finite (which finite
            # values whose variance overflows float32 also cause), before any state changes.
            if checks.finite_checks_enabled(be) and not (be.xp.isfinite(mean).all() and be.xp.isfinite(var).all()):
                checks.finite_values(be, input, "input")
            if n == 1 and self.training:
                raise ValueError(f"input: expected more than 1 value per channel when training, "
                                 f"got shape {tuple(input.shape)}")
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, n)
        else:
            checks.finite_values(be, input, "input")
            mean, var = self.running_mean, self.running_var
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        y, ctx = ops.batch_norm_forward(be, input, w, b, mean, var, self.eps)
        self.save(ctx, use_batch, input.shape)
        return y

    def _update_running_stats(self, mean, var, n: int):
        self.num_batches_tracked += 1
        if n == 0:  # an empty batch counts as a batch but moves no statistic, as in PyTorch
            return
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (n / (n - 1))
        self.running_mean *= 1.0 - factor
        self.running_mean += factor * mean
        self.running_var *= 1.0 - factor
        self.running_var += factor * unbiased

    def backward(self, dy):
        ctx, use_batch, shape = self.saved()
        _check_grad(self.backend, dy, shape, self.dtype)
        dx, dw, db = ops.batch_norm_backward(self.backend, ctx, dy, use_batch)
        if self.weight is not None:
            self.weight.accumulate(dw)
            if self.bias is not None:
                self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input."""
    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input."""
    _ndims = (4,)


class GroupNorm(Module):
    """Normalises each sample's channels in num_groups groups, as
    torch.nn.GroupNorm: for (N, C, *) input, the C/G channels of a group and
    all their positions share one mean and (biased) variance; then the
    per-channel affine y = xhat·weight[c] + bias[c] (ones/zeros initially;
    no bias with bias=False, none of them with affine=False).
    Each group of each sample is one row of a layer norm without affine, so
    the layer-norm kernels (sim, cuda; float32) normalise the (N·G, C/G·spatial)
    rows and their backward takes g = dy·weight[c]; the affine and its
    gradients are array code (per-channel sums). A bfloat16/float16 layer
    computes all of it in float32 (the float32 layer-norm kernels on sim and
    cuda) and rounds the output and each gradient once to its dtype."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None,
                 dtype=None, *, bias: bool = True):
        super().__init__()
        self.num_groups = checks.positive_int(num_groups, "num_groups")
        self.num_channels = checks.positive_int(num_channels, "num_channels")
        if num_channels % num_groups:
            raise ValueError(f"num_channels: expected a multiple of num_groups={num_groups}, got {num_channels}")
        self.eps = _check_eps(eps)
        self.affine = bool(affine)
        self.weight = Parameter(init.ones(num_channels, self.dtype)) if affine else None
        self.bias = Parameter(init.zeros(num_channels, self.dtype)) if affine and bias else None
        self._place(device, dtype)

    def forward(self, input):
        be = self.backend
        checks.array(be, input, "input", dtype=self.dtype)
        if input.ndim < 2 or input.shape[1] != self.num_channels:
            raise ValueError(f"input: expected (N, {self.num_channels}, *) with num_channels={self.num_channels} "
                             f"on axis 1, got shape {tuple(input.shape)}")
        n, c = input.shape[:2]
        spatial = int(np.prod(input.shape[2:], dtype=np.int64))
        if input.size == 0:  # nothing to normalise (and no row to launch over)
            self.save(None, None, input.shape)
            return be.xp.zeros(input.shape, self.dtype)
        f32 = self._float32
        rows = be.xp.ascontiguousarray(f32(input)).reshape(n * self.num_groups, c // self.num_groups * spatial)
        xhat, ctx = ops.layer_norm_forward(be, rows, None, None, rows.shape[1], self.eps)
        xhat = xhat.reshape(n, c, spatial)
        y = xhat
        if self.affine:
            y = xhat * f32(self.weight.data)[:, None]
            if self.bias is not None:
                y += f32(self.bias.data)[:, None]
        self.save(ctx, xhat if self.affine else None, input.shape)
        return y.reshape(input.shape).astype(self.dtype, copy=False)

    def _float32(self, a):
        """`a` as the layer computes with it: float32 for a half layer."""
        return a.astype(np.float32) if dtypes.is_half(self.dtype) else a

    def backward(self, grad_output):
        ctx, xhat, shape = self.saved()
        be = self.backend
        _check_grad(be, grad_output, shape, self.dtype)
        n, c = shape[:2]
        if ctx is None:  # an empty input: empty input gradient, zero parameter gradients
            dx = be.xp.zeros(shape, self.dtype)
            dw, db = be.xp.zeros(c, self.dtype), be.xp.zeros(c, self.dtype)
        else:
            dy = be.xp.ascontiguousarray(self._float32(grad_output)).reshape(n, c, -1)
            g = dy
            if self.affine:
                g = dy * self._float32(self.weight.data)[:, None]
                dw, db = be.xp.einsum("ncs,ncs->c", dy, xhat), dy.sum(axis=(0, 2))
                dw, db = dw.astype(self.dtype, copy=False), db.astype(self.dtype, copy=False)
            dx, _, _ = ops.layer_norm_backward(be, ctx, g.reshape(n * self.num_groups, -1))
            dx = dx.reshape(shape).astype(self.dtype, copy=False)
        if self.affine:
            self.weight.accumulate(dw)
            if self.bias is not None:
                self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
