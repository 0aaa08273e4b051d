"""The functional forms on Tensors (torch.nn.functional's names): each runs
the module of the same op on the Tensors' backend and dtype, so it records
one node whose backward is that module's explicit backward, on the same
kernels. Weights passed as Tensors become the module's parameters for the
call (sharing storage) and get their gradients through the node."""
from __future__ import annotations


from .. import nn
from . import modules
from .tensor import Tensor


def _run(module, *args, weights=None, **kwargs):
    """`module` placed on the first Tensor argument's backend and dtype, then called."""
    x = next(a for a in args if isinstance(a, Tensor))
    floating = x.dtype.kind == "f"
    object.__setattr__(module, "backend", x.backend)
    if floating:
        object.__setattr__(module, "dtype", x.dtype)
    return modules.call(module, args, kwargs, weights)


def _array(a):
    return a._data if isinstance(a, Tensor) else a


# ------------------------------------------------------------ activations and softmax
def relu(input, inplace: bool = False):
    return _run(nn.ReLU(), input)


def gelu(input, approximate: str = "none"):
    return _run(nn.GELU(approximate), input)


def sigmoid(input):
    return _run(nn.Sigmoid(), input)


def tanh(input):
    return _run(nn.Tanh(), input)


def softmax(input, dim=None, _stacklevel: int = 3, dtype=None):
    return _run(nn.Softmax(dim), input if dtype is None else input.to(dtype=dtype))


def log_softmax(input, dim=None, _stacklevel: int = 3, dtype=None):
    return _run(nn.LogSoftmax(dim), input if dtype is None else input.to(dtype=dtype))


# ------------------------------------------------------------ losses
def cross_entropy(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0):
    loss = nn.CrossEntropyLoss(_array(weight), size_average, ignore_index, reduce, reduction, label_smoothing)
    return _run(loss, input, target)


def nll_loss(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
             reduction: str = "mean"):
    return _run(nn.NLLLoss(_array(weight), size_average, ignore_index, reduce, reduction), input, target)


def mse_loss(input, target, size_average=None, reduce=None, reduction: str = "mean"):
    if isinstance(target, Tensor) and target.requires_grad:
        # the module differentiates its input only; with a target that needs a gradient too
        # (two networks' outputs compared) the Tensor operations give both
        loss_fn = nn.MSELoss(size_average, reduce, reduction)
        sq = (input - target) ** 2
        return sq if loss_fn.reduction == "none" else sq.sum() if loss_fn.reduction == "sum" else sq.mean()
    return _run(nn.MSELoss(size_average, reduce, reduction), input, target)


# ------------------------------------------------------------ layers with weights
def linear(input, weight, bias=None):
    out_features, in_features = weight.shape
    return _run(nn.Linear(in_features, out_features, bias=bias is not None), input,
                weights={"weight": weight, "bias": bias})


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1):
    out_channels, in_per_group, kh, kw = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_channels, (kh, kw), stride, padding, dilation, groups,
                     bias=bias is not None)
    return _run(conv, input, weights={"weight": weight, "bias": bias})


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    ln = nn.LayerNorm(normalized_shape, eps, elementwise_affine=weight is not None, bias=bias is not None)
    return _run(ln, input, weights={"weight": weight, "bias": bias})


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False):
    num, dim = weight.shape
    emb = nn.Embedding(num, dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
    emb.to(weight.backend, weight.dtype)
    return modules.call(emb, (input,), {}, {"weight": weight})


# ------------------------------------------------------------ pooling, dropout, attention
def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    return _run(nn.MaxPool2d(kernel_size, stride, padding, dilation, return_indices, ceil_mode), input)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override=None):
    return _run(nn.AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override), input)


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    drop = nn.Dropout(p)
    drop.train(training)
    return _run(drop, input)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale=None, enable_gqa: bool = False):
    if enable_gqa:
        raise NotImplementedError("enable_gqa=True (grouped-query attention) is not supported")
    return _run(nn.ScaledDotProductAttention(), query, key, value, attn_mask=_array(attn_mask),
                dropout_p=dropout_p, is_causal=is_causal, scale=scale)


__all__ = ["avg_pool2d", "conv2d", "cross_entropy", "dropout", "embedding", "gelu", "layer_norm", "linear",
           "log_softmax", "max_pool2d", "mse_loss", "nll_loss", "relu", "scaled_dot_product_attention", "sigmoid",
           "softmax", "tanh"]
