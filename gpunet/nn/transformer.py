"""Transformer layers as torch.nn's: TransformerEncoderLayer, TransformerEncoder,
TransformerDecoderLayer, TransformerDecoder and Transformer, with PyTorch's
arguments, defaults, submodule names (so state_dict keys match) and
arithmetic, built from MultiheadAttention, Linear, LayerNorm, Dropout and an
activation module. The hot paths are those modules' (the attention, layer
norm, bias and activation kernels on sim and cuda; GEMMs through BLAS or
cuBLAS). Backward is explicit: each layer's backward runs its submodules'
backwards in reverse order and adds the residual branches.

Masks follow torch.nn.MultiheadAttention: a True in a boolean mask removes
that position, a float mask is added to the scores. is_causal=True tells the
attention that the mask given is the causal one, which then runs as the
kernels' causal mode; the stacks detect a causal mask themselves when
is_causal is None, as torch's do. torch's nested-tensor fast path (eval mode,
enable_nested_tensor) is an inference optimisation that zeroes padded
positions; gpunet accepts the argument and always computes the plain path.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import checks
from .activation import ELU, GELU, ReLU, Sigmoid, SiLU, Tanh
from .attention import MultiheadAttention
from .container import ModuleList
from .dropout import Dropout
from .linear import Linear
from .module import Module
from .normalization import LayerNorm

_ACTIVATIONS = {"relu": ReLU, "gelu": GELU}


_BY_FUNCTION_NAME = {"relu": ReLU, "gelu": GELU, "silu": SiLU, "elu": ELU, "tanh": Tanh, "sigmoid": Sigmoid}


def _activation(activation) -> Module:
    """'relu', 'gelu', a gpunet Module (with a backward), or the relu/gelu/
    silu/elu/tanh/sigmoid function of gpunet's or torch's functional
    namespace (torch's default is its F.relu), as the module of that name."""
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected 'relu' or 'gelu' (or a module), got {activation!r}")
        return _ACTIVATIONS[activation]()
    if isinstance(activation, Module):
        return activation
    name, home = getattr(activation, "__name__", None), getattr(activation, "__module__", None) or ""
    if name in _BY_FUNCTION_NAME and home.split(".")[0] in ("gpunet", "torch"):
        return _BY_FUNCTION_NAME[name]()
    raise TypeError(f"activation: expected 'relu', 'gelu', a gpunet Module, or one of gpunet.nn.functional's "
                    f"relu/gelu/silu/elu/tanh/sigmoid (gpunet needs its explicit backward), got {activation!r}")


def generate_square_subsequent_mask(sz: int, device=None, dtype=None):
    """The (sz, sz) causal mask: 0 on and below the diagonal, -inf above it."""
    from ..backend import get_backend
    from .module import get_default_dtype
    sz = checks.positive_int(sz, "sz")
    mask = np.triu(np.full((sz, sz), -np.inf, dtype=dtype or get_default_dtype()), k=1)
    return mask if device is None else get_backend(device).asarray(mask)


def _is_causal(mask, is_causal, size: int) -> bool:
    """torch's _detect_is_causal_mask: is_causal when given, else whether
    `mask` is exactly the causal mask (float -inf above the diagonal, or
    boolean True above it)."""
    if is_causal is not None:
        return bool(is_causal)
    if mask is None or tuple(mask.shape) != (size, size):
        return False
    from ..backend import to_numpy
    m = to_numpy(mask)
    upper = np.triu(np.ones((size, size), dtype=bool), k=1)
    if m.dtype == bool:
        return bool((m == upper).all())
    return bool((np.isneginf(m) == upper).all() and (m[~upper] == 0).all())


class _Layer(Module):
    """What both layers share: the feed-forward block, its norms and dropouts."""

    def _build(self, d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
               norm_first, bias, cross: bool):
        """The submodules, in torch's order (state_dict keys and their order match)."""
        d_model = checks.positive_int(d_model, "d_model")
        dim_feedforward = checks.positive_int(dim_feedforward, "dim_feedforward")
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first)
        if cross:
            self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                                     batch_first=batch_first)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        blocks = 3 if cross else 2
        for i in range(1, blocks + 1):
            setattr(self, f"norm{i}", LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        for i in range(1, blocks + 1):
            setattr(self, f"dropout{i}", Dropout(dropout))
        self.activation = _activation(activation)
        self.norm_first, self.batch_first = bool(norm_first), bool(batch_first)

    def _ff(self, x, out_dropout):
        return out_dropout(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def _ff_backward(self, dy, out_dropout):
        return self.linear1.backward(self.activation.backward(self.dropout.backward(
            self.linear2.backward(out_dropout.backward(dy)))))

    def _sa(self, x, mask, key_padding_mask, is_causal):
        return self.dropout1(self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=key_padding_mask,
                                            need_weights=False, is_causal=is_causal)[0])

    def _sa_backward(self, dy):
        return sum(self.self_attn.backward(self.dropout1.backward(dy)))

    def _block(self, x, norm, fn):
        """The residual block x + fn(norm(x)) (norm_first) or norm(x + fn(x))."""
        return x + fn(norm(x)) if self.norm_first else norm(x + fn(x))

    def _block_backward(self, dy, norm, fn_backward):
        """The gradient of _block's input; fn_backward returns the gradient of fn's input."""
        if self.norm_first:
            return dy + norm.backward(fn_backward(dy))
        dh = norm.backward(dy)
        return dh + fn_backward(dh)

    def extra_repr(self):
        return f"norm_first={self.norm_first}"


class TransformerEncoderLayer(_Layer):
    """Self-attention then a feed-forward block, each in a residual block
    with LayerNorm after it (post-norm) or before it (norm_first=True), as
    torch.nn.TransformerEncoderLayer. forward(src, src_mask=None,
    src_key_padding_mask=None, is_causal=False) takes (S, N, E) ((N, S, E)
    with batch_first, (S, E) unbatched); backward(d_out) returns d_src."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self._build(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first,
                    bias, cross=False)
        self._place(device, dtype)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False):
        x = self._block(src, self.norm1, lambda h: self._sa(h, src_mask, src_key_padding_mask, is_causal))
        return self._block(x, self.norm2, lambda h: self._ff(h, self.dropout2))

    def backward(self, grad_output):
        dx = self._block_backward(grad_output, self.norm2, lambda d: self._ff_backward(d, self.dropout2))
        return self._block_backward(dx, self.norm1, self._sa_backward)


class TransformerDecoderLayer(_Layer):
    """Self-attention, attention over `memory`, then a feed-forward block,
    each in a residual block with LayerNorm after (or, norm_first, before) it,
    as torch.nn.TransformerDecoderLayer. forward(tgt, memory, tgt_mask=None,
    memory_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
    tgt_is_causal=False, memory_is_causal=False); backward(d_out) returns
    (d_tgt, d_memory)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self._build(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first,
                    bias, cross=True)
        self._place(device, dtype)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False, memory_is_causal: bool = False):
        x = self._block(tgt, self.norm1, lambda h: self._sa(h, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
        x = self._block(x, self.norm2, lambda h: self.dropout2(self.multihead_attn(
            h, memory, memory, attn_mask=memory_mask, key_padding_mask=memory_key_padding_mask,
            need_weights=False, is_causal=memory_is_causal)[0]))
        return self._block(x, self.norm3, lambda h: self._ff(h, self.dropout3))

    def backward(self, grad_output):
        d_memory = []

        def cross_backward(d):
            dq, dk, dv = self.multihead_attn.backward(self.dropout2.backward(d))
            d_memory.append(dk + dv)
            return dq

        dx = self._block_backward(grad_output, self.norm3, lambda d: self._ff_backward(d, self.dropout3))
        dx = self._block_backward(dx, self.norm2, cross_backward)
        return self._block_backward(dx, self.norm1, self._sa_backward), d_memory[0]


def _clones(layer: Module, num_layers: int) -> ModuleList:
    num_layers = checks.positive_int(num_layers, "num_layers")
    if not isinstance(layer, Module):
        raise TypeError(f"expected a gpunet layer Module to copy, got {type(layer).__name__}")
    return ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])


class TransformerEncoder(Module):
    """num_layers copies of encoder_layer (as torch: deep copies, so each has
    its own parameters, "layers.0. ..." in state_dict) and an optional final
    norm. forward(src, mask=None, src_key_padding_mask=None, is_causal=None);
    backward(d_out) returns d_src. enable_nested_tensor and mask_check are
    accepted (see the module docstring)."""

    def __init__(self, encoder_layer, num_layers: int, norm=None, enable_nested_tensor: bool = True,
                 mask_check: bool = True):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = len(self.layers)
        self.norm = norm
        self.enable_nested_tensor, self.mask_check = bool(enable_nested_tensor), bool(mask_check)
        _same_place(self, encoder_layer)

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        seq_axis = 1 if self.layers[0].batch_first and src.ndim == 3 else 0
        causal = _is_causal(mask, is_causal, src.shape[seq_axis])
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=causal)
        return x if self.norm is None else self.norm(x)

    def backward(self, grad_output):
        dy = grad_output if self.norm is None else self.norm.backward(grad_output)
        for layer in reversed(list(self.layers)):
            dy = layer.backward(dy)
        return dy


class TransformerDecoder(Module):
    """num_layers copies of decoder_layer and an optional final norm, as
    torch.nn.TransformerDecoder. forward(tgt, memory, tgt_mask=None,
    memory_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
    tgt_is_causal=None, memory_is_causal=False); backward(d_out) returns
    (d_tgt, d_memory), d_memory summed over the layers."""

    def __init__(self, decoder_layer, num_layers: int, norm=None):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = len(self.layers)
        self.norm = norm
        _same_place(self, decoder_layer)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal: bool = False):
        seq_axis = 1 if self.layers[0].batch_first and tgt.ndim == 3 else 0
        causal = _is_causal(tgt_mask, tgt_is_causal, tgt.shape[seq_axis])
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=causal, memory_is_causal=memory_is_causal)
        return x if self.norm is None else self.norm(x)

    def backward(self, grad_output):
        dy = grad_output if self.norm is None else self.norm.backward(grad_output)
        d_memory = None
        for layer in reversed(list(self.layers)):
            dy, dm = layer.backward(dy)
            d_memory = dm if d_memory is None else d_memory + dm
        return dy, d_memory


def _same_place(stack: Module, layer: Module):
    """A stack reports its layers' backend and dtype (they keep theirs)."""
    object.__setattr__(stack, "backend", layer.backend)
    object.__setattr__(stack, "dtype", layer.dtype)


class Transformer(Module):
    """The encoder-decoder model of torch.nn.Transformer: an encoder stack and
    a decoder stack, each with a final LayerNorm, parameters of more than one
    dim xavier-uniform initialised, as torch's. forward(src, tgt, src_mask,
    tgt_mask, memory_mask, src_key_padding_mask, tgt_key_padding_mask,
    memory_key_padding_mask, src_is_causal=None, tgt_is_causal=None,
    memory_is_causal=False); backward(d_out) returns (d_src, d_tgt)."""

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", custom_encoder=None, custom_decoder=None, layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True, device=None, dtype=None):
        super().__init__()
        layer_args = (d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
                      norm_first, bias)
        self.encoder = custom_encoder if custom_encoder is not None else TransformerEncoder(
            TransformerEncoderLayer(*layer_args), num_encoder_layers, LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        self.decoder = custom_decoder if custom_decoder is not None else TransformerDecoder(
            TransformerDecoderLayer(*layer_args), num_decoder_layers, LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        from . import init
        for p in self.parameters():
            if p.data.ndim > 1:
                init.xavier_uniform_(p)
        self.d_model, self.nhead, self.batch_first = d_model, nhead, bool(batch_first)
        self._place(device, dtype)

    generate_square_subsequent_mask = staticmethod(generate_square_subsequent_mask)

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                memory_is_causal: bool = False):
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                            memory_is_causal=memory_is_causal)

    def backward(self, grad_output):
        d_tgt, d_memory = self.decoder.backward(grad_output)
        return self.encoder.backward(d_memory), d_tgt
