"""Attention layers: ScaledDotProductAttention (the op as a module, so it has
a backward) and MultiheadAttention (PyTorch's parameters, masks and outputs)."""
from __future__ import annotations

import math

import numpy as np

from .. import checks
from ..ops import attention as ops
from ..ops import linear as linear_ops
from . import init
from .linear import Linear
from ..random import next_philox_offset
from .module import Module, Parameter


def sdpa_bias(be, q, k, v, attn_mask, is_causal, dtype):
    """Validate scaled_dot_product_attention's arguments; returns the additive
    bias (or None). Boolean masks keep True positions, as in torch."""
    for name, a in (("query", q), ("key", k), ("value", v)):
        checks.array(be, a, name, dtype=dtype)
    ops.check_inputs(q, k, v)
    if attn_mask is None:
        return None
    if is_causal:
        raise ValueError("attn_mask: must be None when is_causal=True (as torch: the causal mask is implied)")
    checks.array(be, attn_mask, "attn_mask", finite=False)
    ops.check_broadcast(attn_mask.shape, ops.broadcast_batch(q, k, v) + (q.shape[-2], k.shape[-2]), "attn_mask")
    return ops.additive_mask(be, attn_mask, dtype, "attn_mask", true_means_keep=True)


def _check_scale(scale):
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating))
                              or not math.isfinite(scale)):
        raise ValueError(f"scale: expected a finite number or None, got {scale!r}")


class ScaledDotProductAttention(Module):
    """softmax(q kᵀ·scale + mask) v over (..., L, E), (..., S, E), (..., S, Ev)
    arrays with broadcastable batch dims (torch.nn.functional.
    scaled_dot_product_attention as a module: forward caches, backward(dout)
    returns (dq, dk, dv), each of its input's shape).

    attn_mask: bool (True = the key takes part, as torch) or additive float,
    broadcastable to (..., L, S). is_causal: query i sees keys j <= i.
    scale: default 1/sqrt(E). A query whose keys are all masked outputs 0.
    dropout_p: dropout on the probabilities, applied whenever it is > 0 (as
    torch's functional; the probabilities are then formed, array code)."""

    def forward(self, query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                scale=None):
        be = self.backend
        _check_scale(scale)
        if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p <= 1.0:
            raise ValueError(f"dropout_p: expected a probability in [0, 1], got {dropout_p!r}")
        bias = sdpa_bias(be, query, key, value, attn_mask, is_causal, self.dtype)
        batch = ops.broadcast_batch(query, key, value)
        shapes = tuple(tuple(a.shape) for a in (query, key, value))
        q, k, v = (ops.expand_batch(be, batch, a) for a in (query, key, value))
        out, ctx = ops.sdpa_forward(be, q, k, v, bias, bool(is_causal), scale)
        drop = None
        if dropout_p > 0.0:
            seed, offset = next_philox_offset(int(np.prod(batch, dtype=np.int64)) * q.shape[-2] * k.shape[-2])
            out, drop = ops.dropout_forward(be, ctx, float(dropout_p), seed, offset)
        self.save(ctx, drop, shapes, out.shape)
        return out

    def backward(self, grad_output):
        ctx, drop, shapes, out_shape = self.saved()
        checks.array(self.backend, grad_output, "grad_output", dtype=self.dtype, finite=False)
        if tuple(grad_output.shape) != tuple(out_shape):
            raise ValueError(f"grad_output: expected the output's shape {tuple(out_shape)}, "
                             f"got {tuple(grad_output.shape)}")
        grads = ops.sdpa_backward(self.backend, ctx, grad_output) if drop is None else \
            ops.dropout_backward(self.backend, ctx, drop, grad_output)
        return tuple(ops.reduce_batch(g, shape) for g, shape in zip(grads, shapes))


class MultiheadAttention(Module):
    """Multi-head attention as torch.nn.MultiheadAttention.

    Parameters (PyTorch's names and layouts): in_proj_weight (3E, E) holding
    the q, k, v projections stacked (or q_proj_weight (E, E), k_proj_weight
    (E, kdim), v_proj_weight (E, vdim) when kdim/vdim differ from E),
    in_proj_bias (3E), out_proj.weight (E, E), out_proj.bias (E).

    forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False) takes
    (L, N, E) / (S, N, kdim) / (S, N, vdim) input ((N, L, E) ... with
    batch_first=True; (L, E) unbatched) and returns (attn_output,
    attn_weights): weights (N, L, S) averaged over heads, (N, H, L, S)
    with average_attn_weights=False, None with need_weights=False.
    Masks follow torch's MultiheadAttention convention, the opposite of
    scaled_dot_product_attention's: a True in a boolean key_padding_mask (N, S)
    or attn_mask ((L, S) or (N·H, L, S)) REMOVES that position; float masks are
    added to the scores. is_causal=True is torch's hint that attn_mask is the
    causal mask: the causal mask is then applied directly and attn_mask is
    not read (torch requires it anyway, so do we).

    backward(d_attn_output, d_attn_weights=None) returns (dquery, dkey,
    dvalue), one gradient per argument. For self-attention, where query, key
    and value are the same array x, the gradient of x is their sum:
    dx = dquery + dkey + dvalue. d_attn_weights (optional) is the gradient
    flowing into the returned attention weights.

    add_bias_kv: learned bias_k, bias_v (1, 1, E) appended to every batch's
    keys and values after the projection; add_zero_attn: a zero key and value
    appended to every head after that; the masks gain a kept column for each
    (the attention weights then have S + 1 or S + 2 columns), as PyTorch.
    dropout: on the attention probabilities while training (the returned
    weights are the dropped ones, as PyTorch's); the probabilities are then
    formed, array code after the attention kernel.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim=None, vdim=None,
                 batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        E = self.embed_dim = checks.positive_int(embed_dim, "embed_dim")
        H = self.num_heads = checks.positive_int(num_heads, "num_heads")
        if E % H:
            raise ValueError(f"embed_dim: must be divisible by num_heads={H}, got embed_dim={E}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout!r}")
        self.head_dim = E // H
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.kdim = E if kdim is None else checks.positive_int(kdim, "kdim")
        self.vdim = E if vdim is None else checks.positive_int(vdim, "vdim")
        self._qkv_same_embed_dim = self.kdim == E and self.vdim == E
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(init.xavier_uniform((3 * E, E), dtype=self.dtype))
            self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        else:
            self.in_proj_weight = None
            self.q_proj_weight = Parameter(init.xavier_uniform((E, E), dtype=self.dtype))
            self.k_proj_weight = Parameter(init.xavier_uniform((E, self.kdim), dtype=self.dtype))
            self.v_proj_weight = Parameter(init.xavier_uniform((E, self.vdim), dtype=self.dtype))
        self.in_proj_bias = Parameter(np.zeros(3 * E, self.dtype)) if bias else None
        self.out_proj = Linear(E, E, bias=bias)
        if bias:
            self.out_proj.bias.data[...] = 0
        self.add_zero_attn = bool(add_zero_attn)
        if add_bias_kv:
            self.bias_k = Parameter(init.xavier_normal((1, 1, E), dtype=self.dtype))
            self.bias_v = Parameter(init.xavier_normal((1, 1, E), dtype=self.dtype))
        else:
            self.bias_k = self.bias_v = None
        self._place(device, dtype)

    # ------------------------------------------------------------ helpers
    def _proj_weights(self):
        """The q, k, v projection weights (views into in_proj_weight when fused)."""
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight.data
            return w[:E], w[E:2 * E], w[2 * E:]
        return self.q_proj_weight.data, self.k_proj_weight.data, self.v_proj_weight.data

    def _proj_biases(self):
        if self.in_proj_bias is None:
            return None, None, None
        b, E = self.in_proj_bias.data, self.embed_dim
        return b[:E], b[E:2 * E], b[2 * E:]

    def _to_nle(self, x, batched):
        """Input layout -> (N, seq, features)."""
        if not batched:
            return x[None]
        return x if self.batch_first else self.backend.xp.swapaxes(x, 0, 1)

    def _from_nle(self, x, batched):
        if not batched:
            return x[0]
        return self.backend.xp.ascontiguousarray(x if self.batch_first else self.backend.xp.swapaxes(x, 0, 1))

    def _split_heads(self, x):
        N, T, _ = x.shape
        H = self.num_heads
        return self.backend.xp.ascontiguousarray(x.reshape(N, T, H, x.shape[2] // H).transpose(0, 2, 1, 3))

    def _merge_heads(self, x):
        N, H, T, hd = x.shape
        return self.backend.xp.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(N, T, H * hd)

    def _check_inputs(self, query, key, value):
        be = self.backend
        for name, a in (("query", query), ("key", key), ("value", value)):
            checks.array(be, a, name, ndim=(2, 3), dtype=self.dtype)
        if not (query.ndim == key.ndim == value.ndim):
            raise ValueError(f"key/value: expected {query.ndim}-D like query {tuple(query.shape)}, got key "
                             f"{tuple(key.shape)} and value {tuple(value.shape)}")
        batched = query.ndim == 3
        layout = "(N, L, E)" if self.batch_first else "(L, N, E)"
        for name, a, dim in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if a.shape[-1] != dim:
                what = "embed_dim" if name == "query" else ("kdim" if name == "key" else "vdim")
                raise ValueError(f"{name}: expected last dim {what}={dim}, got shape {tuple(a.shape)}")
        q, k, v = (self._to_nle(a, batched) for a in (query, key, value))
        if k.shape[:2] != v.shape[:2]:
            raise ValueError(f"value: expected the batch size and sequence length of key {tuple(key.shape)}, "
                             f"got shape {tuple(value.shape)}")
        if k.shape[0] != q.shape[0]:
            raise ValueError(f"key: expected the batch size {q.shape[0]} of query (layout {layout}), "
                             f"got shape {tuple(key.shape)}")
        return batched, q, k, v

    def _mask_bias(self, key_padding_mask, attn_mask, is_causal, batched, N, L, S):
        """The additive (N or 1, H or 1, L or 1, S) bias of both masks, or None."""
        be = self.backend
        H = self.num_heads
        bias = None
        if key_padding_mask is not None:
            checks.array(be, key_padding_mask, "key_padding_mask", finite=False)
            want = (N, S) if batched else (S,)
            if tuple(key_padding_mask.shape) != want:
                raise ValueError(f"key_padding_mask: expected shape {want} (batch, source length), "
                                 f"got {tuple(key_padding_mask.shape)}")
            bias = ops.additive_mask(be, key_padding_mask, self.dtype, "key_padding_mask",
                                     true_means_keep=False).reshape(N, 1, 1, S)
        if is_causal and attn_mask is None:
            raise ValueError("attn_mask: is_causal=True is a hint that attn_mask is the causal mask; "
                             "pass the causal attn_mask too (as torch)")
        if attn_mask is not None:
            checks.array(be, attn_mask, "attn_mask", finite=False)
            shapes = [(L, S), (N * H, L, S)] if batched else [(L, S), (H, L, S)]
            if tuple(attn_mask.shape) not in shapes:
                raise ValueError(f"attn_mask: expected shape {shapes[0]} or {shapes[1]}, got {tuple(attn_mask.shape)}")
            if not is_causal:
                am = ops.additive_mask(be, attn_mask, self.dtype, "attn_mask", true_means_keep=False)
                am = am.reshape(1, 1, L, S) if am.ndim == 2 else am.reshape(N, H, L, S)
                bias = am if bias is None else bias + am
        return bias

    # ------------------------------------------------------------ forward/backward
    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False):
        be = self.backend
        batched, q_in, k_in, v_in = self._check_inputs(query, key, value)
        N, L, _ = q_in.shape
        S = k_in.shape[1]
        bias = self._mask_bias(key_padding_mask, attn_mask, is_causal, batched, N, L, S)
        wq, wk, wv = self._proj_weights()
        bq, bk, bv = self._proj_biases()
        fused = self._qkv_same_embed_dim and query is key and key is value
        if fused:  # self-attention: one GEMM against the stacked (3E, E) weight
            b = None if self.in_proj_bias is None else self.in_proj_bias.data
            qkv, x2 = linear_ops.linear_forward(be, q_in, self.in_proj_weight.data, b)
            E = self.embed_dim
            q, k, v = qkv[..., :E], qkv[..., E:2 * E], qkv[..., 2 * E:]
            saved_x = (x2,)
        else:
            (q, xq), (k, xk), (v, xv) = (linear_ops.linear_forward(be, x, w, b)
                                         for x, w, b in ((q_in, wq, bq), (k_in, wk, bk), (v_in, wv, bv)))
            saved_x = (xq, xk, xv)
        if fused and not self._extra_kv():  # all three into heads in one copy
            N, L, H = qkv.shape[0], qkv.shape[1], self.num_heads
            q, k, v = be.xp.ascontiguousarray(qkv.reshape(N, L, 3, H, self.head_dim).transpose(2, 0, 3, 1, 4))
        else:
            k, v, bias = self._extend_kv(k, v, bias)
            q = self._split_heads(q)
        out_h, ctx = ops.sdpa_forward(be, q, k, v, bias, bool(is_causal), 1.0 / math.sqrt(self.head_dim))
        drop = None
        if self.training and self.dropout > 0.0:
            seed, offset = next_philox_offset(N * self.num_heads * L * k.shape[2])
            out_h, drop = ops.dropout_forward(be, ctx, self.dropout, seed, offset)
        out = self.out_proj(self._merge_heads(out_h))
        weights = None
        if need_weights:
            weights = ops.attention_probs(be, ctx) if drop is None else drop[0]
            if average_attn_weights:
                weights = weights.mean(axis=1)
            if not batched:
                weights = weights[0]
        weights_mode = None if not need_weights else "mean" if average_attn_weights else "heads"
        self.save(ctx, drop, saved_x, batched, fused, weights_mode, (N, L, k.shape[2]))  # S with the extra positions
        return self._from_nle(out, batched), weights

    def backward(self, d_attn_output, d_attn_weights=None):
        be = self.backend
        xp = be.xp
        ctx, drop, saved_x, batched, fused, weights_mode, (N, L, S) = self.saved()
        E, H = self.embed_dim, self.num_heads
        checks.array(be, d_attn_output, "grad_output", dtype=self.dtype, finite=False)
        want = ((N, L, E) if self.batch_first else (L, N, E)) if batched else (L, E)
        if tuple(d_attn_output.shape) != want:
            raise ValueError(f"grad_output: expected the attn_output shape {want}, got {tuple(d_attn_output.shape)}")
        dprobs = None
        if d_attn_weights is not None:
            if weights_mode is None:
                raise ValueError("d_attn_weights: the forward ran with need_weights=False, so there are no "
                                 "attention weights to differentiate; pass None")
            checks.array(be, d_attn_weights, "d_attn_weights", dtype=self.dtype, finite=False)
            dw = d_attn_weights if batched else d_attn_weights[None]
            averaged = weights_mode == "mean"
            wshape = (N, L, S) if averaged else (N, H, L, S)
            if tuple(dw.shape) != wshape:
                raise ValueError(f"d_attn_weights: expected the attn_weights shape {wshape[int(not batched):]}, "
                                 f"got {tuple(d_attn_weights.shape)}")
            dprobs = xp.broadcast_to(dw[:, None] / H, (N, H, L, S)) if averaged else dw
        d_out = self.out_proj.backward(self._to_nle(d_attn_output, batched))
        d_heads = self._split_heads(d_out)
        dq, dk, dv = ops.sdpa_backward(be, ctx, d_heads, dprobs) if drop is None else \
            ops.dropout_backward(be, ctx, drop, d_heads, dprobs)
        wq, wk, wv = self._proj_weights()
        if fused and not self._extra_kv():
            # the heads' gradients merged straight into the stacked projection's (N*L, 3E) gradient, one
            # copy each; the three input gradients from its column blocks
            g3 = xp.empty((N, L, 3, H, self.head_dim), dtype=dq.dtype)
            for i, g in enumerate((dq, dk, dv)):
                g3[:, :, i] = g.transpose(0, 2, 1, 3)
            g3 = g3.reshape(N * L, 3 * E)
            dx = [linear_ops.matmul(be, g3[:, i * E:(i + 1) * E], w).reshape(N, L, E)
                  for i, w in enumerate((wq, wk, wv))]
        else:
            dq, (dk, dv) = self._merge_heads(dq), self._shrink_kv_grads(dk, dv)
            dx = [linear_ops.matmul(be, g, w) for g, w in ((dq, wq), (dk, wk), (dv, wv))]
            grads = (dq, dk, dv)
            if fused:
                g3 = xp.concatenate([g.reshape(-1, E) for g in grads], axis=1)
        if fused:
            self.in_proj_weight.accumulate(linear_ops.matmul(be, g3.T, saved_x[0]))
            if self.in_proj_bias is not None:
                self.in_proj_bias.accumulate(linear_ops.bias_grad(be, g3, 3 * E, linear_ops.route_of(be, "linear", g3.dtype)))
        else:
            dws = [linear_ops.matmul(be, g.reshape(-1, E).T, x2) for g, x2 in zip(grads, saved_x)]
            if self._qkv_same_embed_dim:
                self.in_proj_weight.accumulate(xp.concatenate(dws, axis=0))
            else:
                for p, d in zip((self.q_proj_weight, self.k_proj_weight, self.v_proj_weight), dws):
                    p.accumulate(d)
            if self.in_proj_bias is not None:  # per projection: query and key lengths may differ
                self.in_proj_bias.accumulate(xp.concatenate(
                    [linear_ops.bias_grad(be, xp.ascontiguousarray(g.reshape(-1, E)), E, linear_ops.route_of(be, "linear", g.dtype))
                     for g in grads]))
        return tuple(self._from_nle(g, batched) for g in dx)

    def _extend_kv(self, k, v, bias):
        """Projected keys and values (N, S, E) as heads (N, H, S', hd) with
        add_bias_kv's and add_zero_attn's extra positions, and the mask bias
        widened to S' with kept (zero) columns."""
        xp = self.backend.xp
        extra = 0
        if self.bias_k is not None:
            N = k.shape[0]
            k = xp.concatenate([k, xp.broadcast_to(self.bias_k.data, (N, 1, self.embed_dim))], axis=1)
            v = xp.concatenate([v, xp.broadcast_to(self.bias_v.data, (N, 1, self.embed_dim))], axis=1)
            extra += 1
        k, v = self._split_heads(k), self._split_heads(v)
        if self.add_zero_attn:
            zeros = xp.zeros(k.shape[:2] + (1, self.head_dim), dtype=k.dtype)
            k, v = (xp.concatenate([a, zeros], axis=2) for a in (k, v))
            extra += 1
        if bias is not None and extra:
            bias = xp.concatenate([bias, xp.zeros(bias.shape[:3] + (extra,), dtype=bias.dtype)], axis=3)
        return k, v, bias

    def _extra_kv(self) -> bool:
        """Whether add_bias_kv or add_zero_attn extend the keys and values."""
        return self.bias_k is not None or self.add_zero_attn

    def _shrink_kv_grads(self, dk, dv):
        """_extend_kv's adjoint: (N, S, E) key/value gradients of the projections,
        accumulating bias_k's and bias_v's."""
        if self.add_zero_attn:
            dk, dv = dk[:, :, :-1], dv[:, :, :-1]
        dk, dv = self._merge_heads(dk), self._merge_heads(dv)
        if self.bias_k is not None:
            self.bias_k.accumulate(dk[:, -1:].sum(axis=0, keepdims=True))
            self.bias_v.accumulate(dv[:, -1:].sum(axis=0, keepdims=True))
            dk, dv = dk[:, :-1], dv[:, :-1]
        return dk, dv

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}, "
                f"bias={self.in_proj_bias is not None}")
