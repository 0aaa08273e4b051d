"""torch.nn.functional's names, signatures and defaults over backend arrays:
`import gpunet.nn.functional as F`, then `F.relu(x)`, `F.cross_entropy(logits, y)`.

Each function is a thin call into its op family: the activations and softmax
are gpunet.functional's (under torch's parameter names); the layers without parameters (pooling,
dropout, the losses) run their gpunet.nn module once through `_run`, and
linear, conv2d, layer_norm and embedding call their ops with the arrays given.
Forward only: nothing is saved for a backward (train with the modules, whose
explicit backward these calls share). Like gpunet.functional, a call runs on
the natural backend of its input (cpu for NumPy arrays, cuda or cupy for CuPy
ones) in the input's floating dtype; `device=` picks another backend (e.g.
'sim' to run NumPy arrays through the kernels).
"""
from __future__ import annotations

import numpy as np

from .. import checks
from ..backend import backend_of, get_backend
from .. import functional as _F
from ..functional import _activation, _backend, _finite, scaled_dot_product_attention  # noqa: F401 (re-exported)
from ..ops import embedding as embedding_ops
from ..ops import linear as linear_ops
from ..ops import norm as norm_ops
from . import dropout as _dropout, loss as _loss, pooling as _pooling
from .conv import Conv2d
from .embedding import renorm_
from .module import no_grad

__all__ = [
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "conv2d", "cross_entropy", "dropout", "dropout1d", "dropout2d", "elu",
    "embedding", "gelu", "huber_loss", "kl_div", "l1_loss", "layer_norm", "leaky_relu", "linear", "log_softmax",
    "max_pool2d", "mse_loss", "nll_loss", "one_hot", "pad", "relu", "scaled_dot_product_attention", "sigmoid",
    "silu", "smooth_l1_loss", "softmax", "softplus", "softsign", "tanh",
]


def _run(module, input, *args, device=None):
    """One forward of a parameterless module on input's backend (or `device`)
    and floating dtype, saving nothing for backward."""
    be = backend_of(input) if device is None else get_backend(device)
    dtype = getattr(input, "dtype", None)
    floating = dtype is not None and dtype in (np.float32, np.float64)
    module.to(be, dtype if floating else None)  # otherwise the module's input check names the dtype
    with no_grad():
        return module(input, *args)


# ---------------------------------------------------------------- activations
# gpunet.functional's, under torch's parameter names; PyTorch's `inplace` is
# accepted as by the modules (a new array is written), `_stacklevel` ignored.
def relu(input, inplace: bool = False, *, device=None):
    return _F.relu(input, device=device)


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False, *, device=None):
    return _F.leaky_relu(input, negative_slope, device=device)


def gelu(input, approximate: str = "none", *, device=None):
    return _F.gelu(input, approximate, device=device)


def sigmoid(input, *, device=None):
    return _F.sigmoid(input, device=device)


def tanh(input, *, device=None):
    return _F.tanh(input, device=device)


def softsign(input, *, device=None):
    return _F.softsign(input, device=device)


def softplus(input, beta: float = 1.0, threshold: float = 20.0, *, device=None):
    return _F.softplus(input, beta, threshold, device=device)


def softmax(input, dim=None, _stacklevel: int = 3, dtype=None, *, device=None):
    return _F.softmax(input, dim, dtype=dtype, device=device)


def log_softmax(input, dim=None, _stacklevel: int = 3, dtype=None, *, device=None):
    return _F.log_softmax(input, dim, dtype=dtype, device=device)


def silu(input, inplace: bool = False, *, device=None):
    return _activation("silu", input, device)


def elu(input, alpha: float = 1.0, inplace: bool = False, *, device=None):
    return _activation("elu", input, device, alpha=_finite(alpha, "alpha"))


# ---------------------------------------------------------------- pooling
def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False, *, device=None):
    return _run(_pooling.MaxPool2d(kernel_size, stride, padding, dilation, return_indices, ceil_mode), input,
                device=device)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override=None, *, device=None):
    return _run(_pooling.AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override),
                input, device=device)


def adaptive_avg_pool2d(input, output_size, *, device=None):
    return _run(_pooling.AdaptiveAvgPool2d(output_size), input, device=device)


def adaptive_max_pool2d(input, output_size, return_indices: bool = False, *, device=None):
    return _run(_pooling.AdaptiveMaxPool2d(output_size, return_indices), input, device=device)


# ---------------------------------------------------------------- dropout
def _drop(cls, input, p, training, device):
    module = cls(p)  # checks p
    if not training:
        return input
    return _run(module, input, device=device)


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False, *, device=None):
    """As torch: drops while training=True (the default, unlike the module's
    train/eval switch); the identity otherwise. A new array either way but
    the identity, which returns input itself."""
    return _drop(_dropout.Dropout, input, p, training, device)


def dropout1d(input, p: float = 0.5, training: bool = True, inplace: bool = False, *, device=None):
    return _drop(_dropout.Dropout1d, input, p, training, device)


def dropout2d(input, p: float = 0.5, training: bool = True, inplace: bool = False, *, device=None):
    return _drop(_dropout.Dropout2d, input, p, training, device)


# ---------------------------------------------------------------- losses
def _no_weight(weight):
    if weight is not None:
        raise NotImplementedError("weight: per-element weights of the regression losses are not supported; "
                                  "multiply the reduction='none' loss by them")


def cross_entropy(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0, *, device=None):
    return _run(_loss.CrossEntropyLoss(weight, size_average, ignore_index, reduce, reduction, label_smoothing),
                input, target, device=device)


def nll_loss(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
             reduction: str = "mean", *, device=None):
    return _run(_loss.NLLLoss(weight, size_average, ignore_index, reduce, reduction), input, target, device=device)


def mse_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", weight=None, *, device=None):
    _no_weight(weight)
    return _run(_loss.MSELoss(size_average, reduce, reduction), input, target, device=device)


def l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", weight=None, *, device=None):
    _no_weight(weight)
    return _run(_loss.L1Loss(size_average, reduce, reduction), input, target, device=device)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0, *,
                   device=None):
    return _run(_loss.SmoothL1Loss(size_average, reduce, reduction, beta), input, target, device=device)


def huber_loss(input, target, reduction: str = "mean", delta: float = 1.0, weight=None, *, device=None):
    _no_weight(weight)
    return _run(_loss.HuberLoss(reduction, delta), input, target, device=device)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None, reduction: str = "mean", *,
                         device=None):
    return _run(_loss.BCELoss(weight, size_average, reduce, reduction), input, target, device=device)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction: str = "mean", pos_weight=None, *, device=None):
    return _run(_loss.BCEWithLogitsLoss(weight, size_average, reduce, reduction, pos_weight), input, target,
                device=device)


def kl_div(input, target, size_average=None, reduce=None, reduction: str = "mean", log_target: bool = False, *,
           device=None):
    return _run(_loss.KLDivLoss(size_average, reduce, reduction, log_target), input, target, device=device)


# ---------------------------------------------------------------- layers over given parameters
def _param(be, a, name: str, dtype, shape):
    checks.array(be, a, name, dtype=dtype)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    return a


def linear(input, weight, bias=None, *, device=None):
    """input (..., in) @ weight(out, in)ᵀ + bias(out)."""
    be = _backend(input, device)
    checks.array(be, weight, "weight", ndim=2, dtype=input.dtype)
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"input: expected last dim {weight.shape[1]} (weight's in_features), "
                         f"got shape {tuple(input.shape)}")
    if bias is not None:
        _param(be, bias, "bias", input.dtype, (weight.shape[0],))
    return linear_ops.linear_forward(be, input, weight, bias)[0]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1, *, device=None):
    """As torch.nn.functional.conv2d: weight (out, in/groups, kh, kw); padding
    an int, a pair, 'valid' or 'same'."""
    be = _backend(input, device)
    checks.array(be, weight, "weight", ndim=4, dtype=input.dtype)
    out_channels, per_group, kh, kw = weight.shape
    if bias is not None:
        _param(be, bias, "bias", input.dtype, (out_channels,))
    conv = Conv2d.with_parameters(weight, bias, per_group * groups, (kh, kw), stride, padding, dilation, groups)
    return _run(conv.to(be), input, device=be)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5, *, device=None):
    be = _backend(input, device)
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    if tuple(input.shape[input.ndim - len(shape):]) != shape or len(shape) > input.ndim:
        raise ValueError(f"input: expected trailing dims {shape} (normalized_shape), got shape {tuple(input.shape)}")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None:
            _param(be, a, name, input.dtype, shape)
    return norm_ops.layer_norm_forward(be, input, weight, bias, int(np.prod(shape)), checks.positive_float(eps, "eps"))[0]


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False, *, device=None):
    """Rows of weight (V, D) at the integer indices `input`; max_norm renormalises
    the rows looked up in place first, as torch. padding_idx and
    scale_grad_by_freq only concern the gradient, which these calls do not keep."""
    be = backend_of(weight) if device is None else get_backend(device)
    checks.array(be, weight, "weight", ndim=2)
    checks.array(be, input, "input", integer=True)
    if sparse:
        raise NotImplementedError("sparse=True: gpunet has no sparse gradients; only sparse=False is supported")
    V = weight.shape[0]
    if input.size and checks.finite_checks_enabled(be) and (int(input.min()) < 0 or int(input.max()) >= V):
        raise ValueError(f"input: indices must lie in [0, {V}) (weight's rows)")
    if max_norm is not None:
        renorm_(be.xp, weight, input, checks.positive_float(max_norm, "max_norm"),
                checks.positive_float(norm_type, "norm_type"))
    return embedding_ops.embedding_forward(be, weight, input)[0]


# ---------------------------------------------------------------- array utilities
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad(input, pad, mode: str = "constant", value=None):
    """Pad the last len(pad)//2 dims, pad = (last_before, last_after,
    second_last_before, ...) as torch; value fills mode='constant' (0 by
    default). Negative pads crop, as torch's."""
    be = backend_of(input)
    xp = be.xp
    if mode not in _PAD_MODES:
        raise ValueError(f"mode: expected one of {', '.join(map(repr, _PAD_MODES))}, got {mode!r}")
    pad = tuple(pad)
    if len(pad) % 2 or len(pad) // 2 > input.ndim or \
            not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in pad):
        raise ValueError(f"pad: expected an even number of ints, at most 2 per dim of the {input.ndim}-D input, "
                         f"got {pad!r}")
    if mode != "constant" and value is not None:
        raise ValueError(f"value: only for mode='constant', got mode={mode!r}")
    width = [(0, 0)] * input.ndim
    crop = [slice(None)] * input.ndim
    for i in range(len(pad) // 2):
        before, after = int(pad[2 * i]), int(pad[2 * i + 1])
        axis = input.ndim - 1 - i
        width[axis] = (max(before, 0), max(after, 0))
        crop[axis] = slice(max(-before, 0), input.shape[axis] - max(-after, 0))
        size = input.shape[axis]
        if mode == "reflect" and max(before, after) >= size:
            raise ValueError(f"pad: reflect padding of {max(before, after)} needs dim {axis} of at least "
                             f"{max(before, after) + 1}, got input shape {tuple(input.shape)}")
        if mode == "circular" and max(before, after) > size:
            raise ValueError(f"pad: circular padding of {max(before, after)} needs dim {axis} of at least "
                             f"{max(before, after)}, got input shape {tuple(input.shape)}")
    x = input[tuple(crop)]
    kw = {"constant_values": 0 if value is None else value} if mode == "constant" else {}
    return xp.ascontiguousarray(xp.pad(x, width, mode=_PAD_MODES[mode], **kw))


def one_hot(tensor, num_classes: int = -1):
    """int64 (..., num_classes) with a 1 at each index; num_classes=-1 takes
    the largest index + 1."""
    be = backend_of(tensor)
    checks.array(be, tensor, "tensor", integer=True)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or \
            (num_classes < 1 and num_classes != -1):
        raise ValueError(f"num_classes: expected a positive int or -1, got {num_classes!r}")
    if num_classes == -1:
        num_classes = int(tensor.max()) + 1 if tensor.size else 0
    if tensor.size and (int(tensor.min()) < 0 or int(tensor.max()) >= num_classes):
        raise ValueError(f"tensor: class values must lie in [0, {num_classes}) (num_classes)")
    return (tensor[..., None] == be.xp.arange(num_classes)).astype(np.int64)
