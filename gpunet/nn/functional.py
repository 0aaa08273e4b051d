"""torch.nn.functional's names, signatures and defaults over backend arrays:
`import gpunet.nn.functional as F`, then `F.relu(x)`, `F.cross_entropy(logits, y)`.

Each function is a thin call into its op family: the activations and softmax
are gpunet.functional's (under torch's parameter names); the layers without parameters (pooling,
dropout, the losses) run their gpunet.nn module once through `_run`, and
linear, conv2d, layer_norm and embedding call their ops with the arrays given.
On arrays a call is forward only: nothing is saved for a backward (train
with the modules, whose explicit backward these calls share). On gpunet
Tensors a call records one autograd node whose backward is the same op
family's backward, on the same kernels, so `loss.backward()` reaches
through it: the layers without parameters run their module through
gpunet/autograd/modules.py, linear, conv2d, layer_norm and embedding record
their ops with the weight Tensors as inputs. Like gpunet.functional, a call
runs on the natural backend of its input (cpu for NumPy arrays, cuda or cupy
for CuPy ones; a Tensor's own backend) in the input's floating dtype;
`device=` picks another backend for arrays (e.g. 'sim' to run NumPy arrays
through the kernels).
"""
from __future__ import annotations

import numpy as np

from .. import checks, dtypes
from ..autograd import modules as _graph
from ..autograd.tensor import Tensor, record
from ..backend import backend_of, get_backend
from .. import functional as _F
from ..functional import _activation, _backend, _finite
from ..ops import embedding as embedding_ops
from ..ops import linear as linear_ops
from ..ops import norm as norm_ops
from . import activation as _act, attention as _attention, dropout as _dropout, loss as _loss, pooling as _pooling
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


def _any_tensor(*args) -> bool:
    return any(isinstance(a, Tensor) for a in args)


def _record(module, *args, weights=None, **kwargs):
    """`module` placed on the first Tensor's backend and floating dtype and
    called on the Tensors: one autograd node (gpunet/autograd/modules.py)."""
    x = next(a for a in args if isinstance(a, Tensor))
    module.to(x.backend, x.dtype if dtypes.is_floating(x.dtype) else None)
    return _graph.call(module, args, kwargs, weights)


def _run(module, input, *args, device=None):
    """One forward of a parameterless module on input's backend (or `device`)
    and floating dtype, saving nothing for backward; on Tensors, one node."""
    if _any_tensor(input, *args):
        return _record(module, input, *args)
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
    if isinstance(input, Tensor):
        return _record(_act.ReLU(), input)
    return _F.relu(input, device=device)


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False, *, device=None):
    if isinstance(input, Tensor):
        return _record(_act.LeakyReLU(negative_slope), input)
    return _F.leaky_relu(input, negative_slope, device=device)


def gelu(input, approximate: str = "none", *, device=None):
    if isinstance(input, Tensor):
        return _record(_act.GELU(approximate), input)
    return _F.gelu(input, approximate, device=device)


def sigmoid(input, *, device=None):
    if isinstance(input, Tensor):
        return _record(_act.Sigmoid(), input)
    return _F.sigmoid(input, device=device)


def tanh(input, *, device=None):
    if isinstance(input, Tensor):
        return _record(_act.Tanh(), input)
    return _F.tanh(input, device=device)


def softsign(input, *, device=None):
    if isinstance(input, Tensor):
        return _record(_act.Softsign(), input)
    return _F.softsign(input, device=device)


def softplus(input, beta: float = 1.0, threshold: float = 20.0, *, device=None):
    if isinstance(input, Tensor):
        return _record(_act.Softplus(beta, threshold), input)
    return _F.softplus(input, beta, threshold, device=device)


def softmax(input, dim=None, _stacklevel: int = 3, dtype=None, *, device=None):
    if isinstance(input, Tensor):
        return _record(_act.Softmax(dim), input if dtype is None else input.to(dtype=dtype))
    return _F.softmax(input, dim, dtype=dtype, device=device)


def log_softmax(input, dim=None, _stacklevel: int = 3, dtype=None, *, device=None):
    if isinstance(input, Tensor):
        return _record(_act.LogSoftmax(dim), input if dtype is None else input.to(dtype=dtype))
    return _F.log_softmax(input, dim, dtype=dtype, device=device)


def silu(input, inplace: bool = False, *, device=None):
    if isinstance(input, Tensor):
        return _record(_act.SiLU(), input)
    return _activation("silu", input, device)


def elu(input, alpha: float = 1.0, inplace: bool = False, *, device=None):
    if isinstance(input, Tensor):
        return _record(_act.ELU(alpha), input)
    return _activation("elu", input, device, alpha=_finite(alpha, "alpha"))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale=None, enable_gqa: bool = False, *, device=None):
    if enable_gqa:
        raise NotImplementedError("enable_gqa=True (grouped-query attention) is not supported")
    if _any_tensor(query, key, value):
        mask = attn_mask._data if isinstance(attn_mask, Tensor) else attn_mask
        return _record(_attention.ScaledDotProductAttention(), query, key, value, attn_mask=mask,
                       dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    return _F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, device=device)


scaled_dot_product_attention.__doc__ = _F.scaled_dot_product_attention.__doc__


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


def _regression(module, input, target, device):
    """A loss of input - target: with a target that needs a gradient too (two
    networks' outputs compared), the loss of the difference against zeros,
    so the subtraction's node hands the gradient to both."""
    if isinstance(target, Tensor) and target.requires_grad:
        diff = input - target
        return _record(module, diff, diff.backend.xp.zeros(diff.shape, diff.dtype))
    return _run(module, input, target, device=device)


def mse_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", weight=None, *, device=None):
    _no_weight(weight)
    return _regression(_loss.MSELoss(size_average, reduce, reduction), input, target, device)


def l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", weight=None, *, device=None):
    _no_weight(weight)
    return _regression(_loss.L1Loss(size_average, reduce, reduction), input, target, device)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0, *,
                   device=None):
    return _regression(_loss.SmoothL1Loss(size_average, reduce, reduction, beta), input, target, device)


def huber_loss(input, target, reduction: str = "mean", delta: float = 1.0, weight=None, *, device=None):
    _no_weight(weight)
    return _regression(_loss.HuberLoss(reduction, delta), input, target, device)


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
    if _any_tensor(input, weight, bias):
        return _linear_node(input, weight, bias)
    be = _check_linear(input, weight, bias, device)
    return linear_ops.linear_forward(be, input, weight, bias)[0]


def _check_linear(input, weight, bias, device):
    be = _backend(input, device)
    checks.array(be, weight, "weight", ndim=2, dtype=input.dtype)
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"input: expected last dim {weight.shape[1]} (weight's in_features), "
                         f"got shape {tuple(input.shape)}")
    if bias is not None:
        _param(be, bias, "bias", input.dtype, (weight.shape[0],))
    return be


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1, *, device=None):
    """As torch.nn.functional.conv2d: weight (out, in/groups, kh, kw); padding
    an int, a pair, 'valid' or 'same'."""
    if _any_tensor(input, weight, bias):
        out_channels, per_group, kh, kw = weight.shape
        conv = Conv2d.with_parameters(weight._data, None if bias is None else bias._data, per_group * groups,
                                      (kh, kw), stride, padding, dilation, groups)
        return _record(conv, input, weights={"weight": weight, "bias": bias})
    be = _backend(input, device)
    checks.array(be, weight, "weight", ndim=4, dtype=input.dtype)
    out_channels, per_group, kh, kw = weight.shape
    if bias is not None:
        _param(be, bias, "bias", input.dtype, (out_channels,))
    conv = Conv2d.with_parameters(weight, bias, per_group * groups, (kh, kw), stride, padding, dilation, groups)
    return _run(conv.to(be), input, device=be)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5, *, device=None):
    if _any_tensor(input, weight, bias):
        return _layer_norm_node(input, normalized_shape, weight, bias, eps)
    be, shape = _check_layer_norm(input, normalized_shape, weight, bias, device)
    return norm_ops.layer_norm_forward(be, input, weight, bias, int(np.prod(shape)), checks.positive_float(eps, "eps"))[0]


def _check_layer_norm(input, normalized_shape, weight, bias, device):
    be = _backend(input, device)
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    if tuple(input.shape[input.ndim - len(shape):]) != shape or len(shape) > input.ndim:
        raise ValueError(f"input: expected trailing dims {shape} (normalized_shape), got shape {tuple(input.shape)}")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None:
            _param(be, a, name, input.dtype, shape)
    return be, shape


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False, *, device=None):
    """Rows of weight (V, D) at the integer indices `input`; max_norm renormalises
    the rows looked up in place first, as torch. padding_idx and
    scale_grad_by_freq only concern the gradient, which these calls do not keep."""
    if _any_tensor(input, weight):
        return _embedding_node(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
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


# ---------------------------------------------------------------- the same layers on Tensors
def _arrays(*ts):
    return tuple(None if t is None else t._data if isinstance(t, Tensor) else t for t in ts)


def _linear_node(input, weight, bias):
    x, w, b = _arrays(input, weight, bias)
    be = input.backend if isinstance(input, Tensor) else weight.backend
    _check_linear(x, w, b, be)
    y, x2 = linear_ops.linear_forward(be, x, w, b)

    def backward(g):
        return linear_ops.linear_backward(be, x2, w, b is not None, g)
    return record("Linear", backward, (input, weight, bias), y, saved=_saved(input, weight), backend=be)


def _saved(*ts):
    return tuple(t for t in ts if isinstance(t, Tensor))


def _layer_norm_node(input, normalized_shape, weight, bias, eps):
    x, w, b = _arrays(input, weight, bias)
    be = input.backend
    be, shape = _check_layer_norm(x, normalized_shape, w, b, be)
    size = int(np.prod(shape))
    y, ctx = norm_ops.layer_norm_forward(be, x, w, b, size, checks.positive_float(eps, "eps"))

    def backward(g):
        dx, dw, db = norm_ops.layer_norm_backward(be, ctx, g)
        return dx, None if dw is None else dw.reshape(shape), None if db is None else db.reshape(shape)
    return record("LayerNorm", backward, (input, weight, bias), y, saved=_saved(input, weight), backend=be)


def _embedding_node(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse):
    idx, w = _arrays(input, weight)
    be = weight.backend
    num = w.shape[0]
    if padding_idx is not None and padding_idx < 0:
        padding_idx += num
    out = embedding(idx, w, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, device=be)
    flat = be.xp.ascontiguousarray(idx.reshape(-1), dtype=be.xp.int64)

    def backward(g):
        dw = embedding_ops.embedding_backward(be, flat, g, num, padding_idx)
        if scale_grad_by_freq:
            counts = be.xp.bincount(flat, minlength=num)
            dw /= be.xp.maximum(counts, 1).astype(dw.dtype)[:, None]
        return None, dw
    return record("Embedding", backward, (input, weight), out, backend=be)


# ---------------------------------------------------------------- array utilities
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad(input, pad, mode: str = "constant", value=None):
    """Pad the last len(pad)//2 dims, pad = (last_before, last_after,
    second_last_before, ...) as torch; value fills mode='constant' (0 by
    default). Negative pads crop, as torch's. Differentiable on Tensors."""
    width, crop = _pad_plan(input.shape, pad, mode, value)
    if isinstance(input, Tensor):
        return _pad_node(input, width, crop, mode, value)
    xp = backend_of(input).xp
    kw = {"constant_values": 0 if value is None else value} if mode == "constant" else {}
    return xp.ascontiguousarray(xp.pad(input[crop], width, mode=_PAD_MODES[mode], **kw))


def _pad_plan(shape, pad, mode, value):
    """(np.pad widths, crop slices) of a torch-style pad, checked."""
    ndim = len(shape)
    if mode not in _PAD_MODES:
        raise ValueError(f"mode: expected one of {', '.join(map(repr, _PAD_MODES))}, got {mode!r}")
    pad = tuple(pad)
    if len(pad) % 2 or len(pad) // 2 > ndim or \
            not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in pad):
        raise ValueError(f"pad: expected an even number of ints, at most 2 per dim of the {ndim}-D input, "
                         f"got {pad!r}")
    if mode != "constant" and value is not None:
        raise ValueError(f"value: only for mode='constant', got mode={mode!r}")
    width = [(0, 0)] * ndim
    crop = [slice(None)] * ndim
    for i in range(len(pad) // 2):
        before, after = int(pad[2 * i]), int(pad[2 * i + 1])
        axis = ndim - 1 - i
        width[axis] = (max(before, 0), max(after, 0))
        crop[axis] = slice(max(-before, 0), shape[axis] - max(-after, 0))
        size = shape[axis]
        if mode == "reflect" and max(before, after) >= size:
            raise ValueError(f"pad: reflect padding of {max(before, after)} needs dim {axis} of at least "
                             f"{max(before, after) + 1}, got input shape {tuple(shape)}")
        if mode == "circular" and max(before, after) > size:
            raise ValueError(f"pad: circular padding of {max(before, after)} needs dim {axis} of at least "
                             f"{max(before, after)}, got input shape {tuple(shape)}")
    return width, tuple(crop)


def _pad_node(input, width, crop, mode, value):
    """Constant padding records a node whose backward cuts the gradient out;
    the other modes gather through an index per axis, so repeated source
    elements (reflections, wraps) get their gradients added by indexing's backward."""
    xp = input.backend.xp
    cropped = input[crop]
    if mode != "constant":
        index = [xp.pad(xp.arange(n), w, mode=_PAD_MODES[mode]) for n, w in zip(cropped.shape, width)]
        return cropped[xp.ix_(*index)]
    out = xp.pad(cropped._data, width, mode="constant", constant_values=0 if value is None else value)
    inner = tuple(slice(b, b + n) for (b, _), n in zip(width, cropped.shape))
    return record("ConstantPad", lambda g: g[inner], (cropped,), xp.ascontiguousarray(out))


def one_hot(tensor, num_classes: int = -1):
    """int64 (..., num_classes) with a 1 at each index; num_classes=-1 takes
    the largest index + 1."""
    if isinstance(tensor, Tensor):
        return Tensor(one_hot(tensor._data, num_classes), tensor._backend)
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
