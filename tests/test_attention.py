"""Scaled dot-product attention and MultiheadAttention: gradcheck (float64),
PyTorch parity (outputs, attention weights, every gradient), flash-attention
kernel parity on sim/cuda against a float64 reference, determinism, bad input."""
import copy

import numpy as np
import pytest

import gpunet
import gpunet.functional as F
from gpunet import nn
from gpunet.testing import assert_close

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("attention_forward", "attention_backward")


class _Bound:
    """A module with fixed keyword arguments (gradcheck passes positional inputs only)."""

    def __init__(self, module, **kwargs):
        self.module, self.kwargs = module, kwargs

    def __call__(self, *inputs):
        return self.module(*inputs, **self.kwargs)

    def backward(self, *grads):
        return self.module.backward(*grads)

    def named_parameters(self):
        return self.module.named_parameters()

    def zero_grad(self):
        self.module.zero_grad()


def _qkv(rng, batch, L, S, E, Ev, scale=1.0):
    return (rng.standard_normal(batch + (L, E)) * scale, rng.standard_normal(batch + (S, E)) * scale,
            rng.standard_normal(batch + (S, Ev)))


def _mask(kind, rng, batch, L, S):
    """A mask of the given kind for scores of shape batch + (L, S); boolean
    masks keep True (sdpa's convention) and always keep key 0 except where a
    fully masked row is asked for."""
    if kind is None or kind == "causal":
        return None
    if kind == "bool":  # broadcast over the batch
        m = rng.random((L, S)) > 0.4
        m[:, 0] = True
        return m
    if kind == "key_padding":  # (B, 1, ..., 1, S)
        m = rng.random(batch[:1] + (1,) * (len(batch) - 1) + (1, S)) > 0.3
        m[..., 0] = True
        return m
    if kind == "float":  # per batch entry and head
        m = rng.standard_normal(batch + (L, S))
        m[rng.random(m.shape) > 0.7] = -np.inf
        m[..., 0] = 0.0
        return m
    if kind == "masked_row":  # query 0 sees no key: output 0, gradient 0
        m = np.ones((L, S), dtype=bool)
        m[0] = False
        return m
    raise ValueError(kind)


# ---------------------------------------------------------------- sdpa: gradcheck and torch
SDPA_CASES = [  # batch, L, S, E, Ev, mask kind
    ((), 3, 4, 2, 3, None),
    ((2,), 1, 1, 3, 2, None),
    ((2,), 1, 3, 2, 2, "bool"),
    ((1, 2), 3, 3, 2, 2, "causal"),
    ((2, 1), 2, 4, 3, 2, "key_padding"),
    ((2, 2), 3, 2, 2, 3, "float"),
    ((1,), 2, 3, 2, 2, "masked_row"),
    ((2,), 4, 2, 2, 2, "causal"),
]


@pytest.mark.parametrize("batch,L,S,E,Ev,kind", SDPA_CASES)
def test_sdpa_gradcheck(batch, L, S, E, Ev, kind, rng):
    m = nn.ScaledDotProductAttention().to(np.float64)
    mask = _mask(kind, rng, batch, L, S)
    gpunet.gradcheck(_Bound(m, attn_mask=mask, is_causal=kind == "causal"), _qkv(rng, batch, L, S, E, Ev))


def test_sdpa_gradcheck_custom_scale(rng):
    m = nn.ScaledDotProductAttention().to(np.float64)
    gpunet.gradcheck(_Bound(m, scale=0.3), _qkv(rng, (2,), 3, 2, 4, 2))


@pytest.mark.parametrize("batch,L,S,E,Ev,kind", SDPA_CASES + [((2, 3), 9, 7, 8, 5, "float")])
def test_sdpa_vs_torch(batch, L, S, E, Ev, kind, rng):
    torch = pytest.importorskip("torch")
    q, k, v = (a.astype(np.float32) for a in _qkv(rng, batch, L, S, E, Ev))
    mask = _mask(kind, rng, batch, L, S)
    if mask is not None and mask.dtype != bool:
        mask = mask.astype(np.float32)
    causal = kind == "causal"
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    to = torch.nn.functional.scaled_dot_product_attention(
        tq, tk, tv, attn_mask=None if mask is None else torch.tensor(mask), is_causal=causal)
    dout = rng.standard_normal(to.shape).astype(np.float32)
    to.backward(torch.tensor(dout))
    m = nn.ScaledDotProductAttention()
    out = m(q, k, v, attn_mask=mask, is_causal=causal)
    grads = m.backward(dout)
    assert_close(out, to.detach().numpy(), n=64, name="output")
    for name, g, t in zip(("dq", "dk", "dv"), grads, (tq, tk, tv)):
        assert_close(g, t.grad.numpy(), n=256, name=name)
    assert_close(F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal), out, rtol=0, atol=0,
                 name="functional")


def test_sdpa_masked_row_is_zero(rng):
    q, k, v = _qkv(rng, (1,), 3, 4, 2, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask("masked_row", rng, (1,), 3, 4))
    assert np.array_equal(out[0, 0], np.zeros(2))
    assert np.isfinite(out).all()


def test_sdpa_one_key_returns_its_value(rng):
    """With a single key the softmax is 1: the output is that key's value row."""
    q, k, v = _qkv(rng, (2,), 5, 1, 3, 4)
    assert_close(F.scaled_dot_product_attention(q, k, v), np.broadcast_to(v, (2, 5, 4)), rtol=1e-15, atol=0)


# ---------------------------------------------------------------- sdpa: kernels
KERNEL_CASES = [  # B, H, L, S, E, Ev, mask kind
    (1, 1, 1, 1, 16, 16, None),
    (1, 2, 17, 17, 64, 64, "causal"),
    (2, 1, 70, 33, 80, 80, "key_padding"),
    (1, 1, 17, 70, 128, 128, None),
    (1, 2, 33, 17, 16, 48, "float"),
    (2, 2, 9, 20, 24, 24, "bool"),
    (1, 1, 5, 40, 100, 70, "causal"),
    (1, 1, 4, 6, 32, 32, "masked_row"),
]


def _sdpa_parity(device, B, H, L, S, E, Ev, kind, rng):
    """Float32 kernel result on `device` against the float64 cpu reference."""
    batch = (B, H)
    q, k, v = _qkv(rng, batch, L, S, E, Ev)
    mask = _mask(kind, rng, batch, L, S)
    causal = kind == "causal"
    dout = rng.standard_normal(batch + (L, Ev))
    ref = nn.ScaledDotProductAttention().to(np.float64)
    out64 = ref(q, k, v, attn_mask=mask, is_causal=causal)
    grads64 = ref.backward(dout)
    be = gpunet.get_backend(device)
    m = nn.ScaledDotProductAttention().to(be)
    f32 = lambda a: None if a is None else be.asarray(a, None if a.dtype == bool else np.float32)
    out = m(f32(q), f32(k), f32(v), attn_mask=f32(mask), is_causal=causal)
    grads = m.backward(f32(dout))
    # sums over up to S keys and E features in float32
    assert_close(out, out64, n=256, name=f"output on {device}")
    for name, g, g64 in zip(("dq", "dk", "dv"), grads, grads64):
        assert_close(g, g64, n=1024, name=f"{name} on {device}")
    return m, (f32(q), f32(k), f32(v), f32(mask), causal, f32(dout))


@pytest.mark.parametrize("B,H,L,S,E,Ev,kind", KERNEL_CASES)
def test_sdpa_kernel_parity(kernel_device, schedule, B, H, L, S, E, Ev, kind, rng):
    _sdpa_parity(kernel_device, B, H, L, S, E, Ev, kind, rng)


def test_sdpa_kernel_parity_mixed_broadcast_mask(kernel_device, rng):
    """A mask broadcast over some of several leading axes (here the middle
    one of three): the glue cannot walk it with one outer stride and expands it."""
    batch, L, S = (2, 3, 2), 5, 6
    q, k, v = _qkv(rng, batch, L, S, 8, 8)
    mask = rng.random((2, 1, 2, L, S)) > 0.3
    mask[..., 0] = True
    dout = rng.standard_normal(batch + (L, 8))
    ref = nn.ScaledDotProductAttention().to(np.float64)
    out64 = ref(q, k, v, attn_mask=mask)
    grads64 = ref.backward(dout)
    be = gpunet.get_backend(kernel_device)
    m = nn.ScaledDotProductAttention().to(be)
    out = m(*(be.asarray(a, np.float32) for a in (q, k, v)), attn_mask=be.asarray(mask))
    grads = m.backward(be.asarray(dout, np.float32))
    assert_close(out, out64, n=256, name="output")
    for name, g, g64 in zip(("dq", "dk", "dv"), grads, grads64):
        assert_close(g, g64, n=1024, name=name)


@pytest.mark.fallback("attention")
def test_sdpa_large_head_dim_falls_back(kernel_device, rng):
    """Head dims above the kernels' 128 take the array path on kernel backends."""
    _sdpa_parity(kernel_device, 1, 1, 3, 4, 130, 2, None, rng)


def test_sdpa_kernel_backward_deterministic(kernel_device, rng):
    m, (q, k, v, mask, causal, dout) = _sdpa_parity(kernel_device, 2, 2, 40, 37, 64, 64, "float", rng)
    runs = []
    for _ in range(2):
        m(q, k, v, attn_mask=mask, is_causal=causal)
        runs.append([gpunet.to_numpy(g).copy() for g in m.backward(dout)])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_sdpa_binding_rejects_bad_arguments(kernel_device):
    be = gpunet.get_backend(kernel_device)
    if be.kernels is None:
        pytest.skip("no compiled kernels on this backend")
    xp = be.xp
    q = xp.zeros((2, 3, 129), np.float32)
    out, lse = xp.empty((2, 3, 129), np.float32), xp.empty((2, 3), np.float32)
    with pytest.raises(ValueError, match="head dims"):
        be.kernels.attention_forward(q, q, q, None, 0, 0, 0, 1, False, 1.0, out, lse, be.stream())
    q = xp.zeros((2, 3, 8), np.float32)
    out = xp.empty((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match="bias"):  # strides reaching past the mask's end
        be.kernels.attention_forward(q, q, q, xp.zeros(5, np.float32), 0, 0, 3, 1, False, 1.0, out, lse, be.stream())
    with pytest.raises(ValueError, match="inner"):
        be.kernels.attention_forward(q, q, q, None, 0, 0, 0, 3, False, 1.0, out, lse, be.stream())
    with pytest.raises(ValueError, match="'k'"):
        be.kernels.attention_forward(q, xp.zeros((2, 3, 7), np.float32), q, None, 0, 0, 0, 1, False, 1.0, out, lse,
                                  be.stream())


# ---------------------------------------------------------------- sdpa: bad input
def test_sdpa_bad_input(rng):
    q, k, v = (a.astype(np.float32) for a in _qkv(rng, (2,), 3, 4, 5, 6))
    with pytest.raises(ValueError, match="key.*E=5"):
        F.scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="value.*S=4"):
        F.scaled_dot_product_attention(q, k, v[:, :3])
    with pytest.raises(ValueError, match="key.*batch dims broadcastable"):
        F.scaled_dot_product_attention(q, np.concatenate([k, k[:1]]), np.concatenate([v, v[:1]]))
    with pytest.raises(ValueError, match="attn_mask.*does not broadcast"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="attn_mask.*is_causal"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((3, 4), bool), is_causal=True)
    with pytest.raises(TypeError, match="attn_mask.*bool or floating"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((3, 4), np.int32))
    with pytest.raises(TypeError, match="key.*float32"):
        F.scaled_dot_product_attention(q, k.astype(np.float64), v)
    with pytest.raises(ValueError, match="dropout_p"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="scale"):
        F.scaled_dot_product_attention(q, k, v, scale=float("nan"))
    m = nn.ScaledDotProductAttention()
    m(q, k, v)
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(np.zeros((2, 3, 5), np.float32))


# ---------------------------------------------------------------- MultiheadAttention
def _mha_inputs(rng, N, L, S, E, kdim, vdim, batch_first, batched=True, dtype=np.float64):
    def seq(T, d):
        if not batched:
            return rng.standard_normal((T, d)).astype(dtype)
        return rng.standard_normal((N, T, d) if batch_first else (T, N, d)).astype(dtype)
    return seq(L, E), seq(S, kdim), seq(S, vdim)


def _mha_masks(kind, rng, N, H, L, S, batched=True, dtype=np.float64):
    """(key_padding_mask, attn_mask) in MultiheadAttention's convention (True = masked out)."""
    kpm = am = None
    if "kpm" in kind:
        kpm = rng.random((N, S) if batched else (S,)) > 0.6
        kpm[..., 0] = False
        if "float" in kind:
            kpm = np.where(kpm, -np.inf, rng.standard_normal(kpm.shape)).astype(dtype)
    if "am" in kind:
        am = rng.random((N * H, L, S) if "3d" in kind and batched else (L, S)) > 0.6
        am[..., 0] = False
        if "float" in kind:
            am = np.where(am, -np.inf, rng.standard_normal(am.shape)).astype(dtype)
    return kpm, am


MHA_GRADCHECK_CASES = [  # N, L, S, kdim, vdim, batch_first, masks, need_weights, average
    (2, 3, 2, None, None, False, "", True, True),
    (2, 1, 3, None, None, True, "kpm", False, True),
    (1, 3, 3, None, None, False, "am_3d", True, False),
    (2, 2, 3, 3, 5, True, "kpm am float", True, True),
]


@pytest.mark.parametrize("N,L,S,kdim,vdim,batch_first,masks,need_weights,average", MHA_GRADCHECK_CASES)
def test_mha_gradcheck(N, L, S, kdim, vdim, batch_first, masks, need_weights, average, rng):
    E, H = 4, 2
    m = nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, batch_first=batch_first).to(np.float64)
    for p in m.parameters():  # non-zero biases
        p.data[...] = rng.standard_normal(p.shape) * 0.5
    kpm, am = _mha_masks(masks, rng, N, H, L, S)
    inputs = _mha_inputs(rng, N, L, S, E, kdim or E, vdim or E, batch_first)
    gpunet.gradcheck(_Bound(m, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights,
                            average_attn_weights=average), inputs)


def test_mha_gradcheck_unbatched_causal(rng):
    m = nn.MultiheadAttention(4, 2).to(np.float64)
    causal = ~np.tril(np.ones((3, 3), bool))
    inputs = _mha_inputs(rng, 1, 3, 3, 4, 4, 4, False, batched=False)
    gpunet.gradcheck(_Bound(m, attn_mask=causal, is_causal=True), inputs)


MHA_TORCH_CASES = [  # N, L, S, E, H, kdim, vdim, batch_first, masks, need_weights, average, bias, self-attention
    (3, 5, 5, 8, 2, None, None, False, "", True, True, True, True),
    (2, 4, 6, 12, 3, None, None, True, "kpm am", True, False, True, False),
    (2, 5, 5, 8, 4, None, None, True, "kpm am float", True, True, True, True),
    (2, 3, 4, 8, 2, None, None, False, "am_3d", False, True, False, False),
    (2, 3, 4, 6, 2, 5, 7, True, "kpm", True, True, True, False),
    (1, 1, 1, 4, 1, None, None, False, "", True, True, True, True),
]


@pytest.mark.parametrize("N,L,S,E,H,kdim,vdim,batch_first,masks,need_weights,average,bias,self_attn",
                         MHA_TORCH_CASES)
def test_mha_vs_torch(N, L, S, E, H, kdim, vdim, batch_first, masks, need_weights, average, bias, self_attn, rng):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first)
    with torch.no_grad():
        for p in tm.parameters():  # torch zeroes the biases: randomise them so their gradients matter
            p.normal_(0, 0.5)
    m = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first)
    assert list(m.state_dict()) == list(tm.state_dict())
    m.load_state_dict({k: v.numpy().copy() for k, v in tm.state_dict().items()})
    q, k, v = _mha_inputs(rng, N, L, S, E, kdim or E, vdim or E, batch_first, dtype=np.float32)
    if self_attn:
        k = v = q
    kpm, am = _mha_masks(masks, rng, N, H, L, S, dtype=np.float32)
    tensor = lambda a: None if a is None else torch.tensor(a)
    if self_attn:
        tx = torch.tensor(q, requires_grad=True)
        tq = tk = tv = tx
    else:
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    t_out, t_w = tm(tq, tk, tv, key_padding_mask=tensor(kpm), need_weights=need_weights, attn_mask=tensor(am),
                    average_attn_weights=average)
    out, w = m(q, k, v, key_padding_mask=kpm, need_weights=need_weights, attn_mask=am, average_attn_weights=average)
    assert_close(out, t_out.detach().numpy(), n=256, name="attn_output")
    if need_weights:
        assert_close(w, t_w.detach().numpy(), n=256, name="attn_weights")
    else:
        assert w is None and t_w is None
    dout = rng.standard_normal(out.shape).astype(np.float32)
    t_out.backward(torch.tensor(dout))
    dq, dk, dv = m.backward(dout)
    if self_attn:  # the one input's gradient is the sum over its three uses
        assert_close(dq + dk + dv, tx.grad.numpy(), n=1024, name="d self-attention input")
    else:
        for name, g, t in (("dquery", dq, tq), ("dkey", dk, tk), ("dvalue", dv, tv)):
            assert_close(g, t.grad.numpy(), n=1024, name=name)
    tparams = dict(tm.named_parameters())
    for n, p in m.named_parameters():
        assert_close(p.grad, tparams[n].grad.numpy(), n=1024, name=f"{n}.grad")


def test_mha_unbatched_vs_torch(rng):
    torch = pytest.importorskip("torch")
    tm = torch.nn.MultiheadAttention(6, 3)
    m = nn.MultiheadAttention(6, 3)
    m.load_state_dict({k: v.numpy().copy() for k, v in tm.state_dict().items()})
    q, k, v = _mha_inputs(rng, 1, 4, 5, 6, 6, 6, False, batched=False, dtype=np.float32)
    kpm = np.array([False, True, False, False, True])
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    t_out, t_w = tm(tq, tk, tv, key_padding_mask=torch.tensor(kpm))
    out, w = m(q, k, v, key_padding_mask=kpm)
    assert out.shape == (4, 6) and w.shape == (4, 5)
    assert_close(out, t_out.detach().numpy(), n=256, name="attn_output")
    assert_close(w, t_w.detach().numpy(), n=256, name="attn_weights")
    dout = rng.standard_normal(out.shape).astype(np.float32)
    t_out.backward(torch.tensor(dout))
    for name, g, t in zip(("dquery", "dkey", "dvalue"), m.backward(dout), (tq, tk, tv)):
        assert_close(g, t.grad.numpy(), n=1024, name=name)


def test_mha_weights_gradient_vs_torch(rng):
    """Gradient flowing in through the returned attention weights as well."""
    torch = pytest.importorskip("torch")
    tm = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    m = nn.MultiheadAttention(8, 2, batch_first=True)
    m.load_state_dict({k: v.numpy().copy() for k, v in tm.state_dict().items()})
    q, k, v = _mha_inputs(rng, 2, 3, 4, 8, 8, 8, True, dtype=np.float32)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    t_out, t_w = tm(tq, tk, tv, average_attn_weights=False)
    out, w = m(q, k, v, average_attn_weights=False)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dw = rng.standard_normal(w.shape).astype(np.float32)
    (t_out * torch.tensor(dout)).sum().add((t_w * torch.tensor(dw)).sum()).backward()
    for name, g, t in zip(("dquery", "dkey", "dvalue"), m.backward(dout, dw), (tq, tk, tv)):
        assert_close(g, t.grad.numpy(), n=1024, name=name)


MHA_KERNEL_CASES = [  # N, L, S, E, H, masks, self-attention
    (2, 17, 17, 32, 2, "", True),
    (1, 9, 20, 24, 3, "kpm", False),
    (2, 5, 7, 16, 1, "am float", False),
    (2, 6, 6, 16, 2, "kpm causal", True),
]


@pytest.mark.parametrize("N,L,S,E,H,masks,self_attn", MHA_KERNEL_CASES)
def test_mha_kernel_parity(kernel_device, schedule, N, L, S, E, H, masks, self_attn, rng):
    ref = nn.MultiheadAttention(E, H, batch_first=True).to(np.float64)
    for p in ref.parameters():
        p.data[...] = rng.standard_normal(p.shape) * 0.3
    q, k, v = _mha_inputs(rng, N, L, S, E, E, E, True)
    if self_attn:
        k = v = q
    kpm, am = _mha_masks(masks, rng, N, H, L, S)
    causal = "causal" in masks
    if causal:  # the kernels apply the causal mask and the key padding bias together
        am = ~np.tril(np.ones((L, S), bool))
    dout = rng.standard_normal((N, L, E))
    be = gpunet.get_backend(kernel_device)
    dev = copy.deepcopy(ref).to(be, np.float32)
    out64, w64 = ref(q, k, v, key_padding_mask=kpm, attn_mask=am, is_causal=causal)
    grads64 = ref.backward(dout)
    f32 = lambda a: None if a is None else be.asarray(a, None if a.dtype == bool else np.float32)
    qd = f32(q)
    kd, vd = (qd, qd) if self_attn else (f32(k), f32(v))
    out, w = dev(qd, kd, vd, key_padding_mask=f32(kpm), attn_mask=f32(am), is_causal=causal)
    grads = dev.backward(f32(dout))
    assert_close(out, out64, n=1024, name="attn_output")
    assert_close(w, w64, n=1024, name="attn_weights")
    for name, g, g64 in zip(("dquery", "dkey", "dvalue"), grads, grads64):
        assert_close(g, g64, n=4096, name=name)
    for (n, p), (_, p64) in zip(dev.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, p64.grad, n=4096, name=f"{n}.grad")


def test_mha_bad_input(rng):
    with pytest.raises(ValueError, match="embed_dim.*divisible by num_heads"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="num_heads"):
        nn.MultiheadAttention(8, 0)
    with pytest.raises(ValueError, match="dropout"):
        nn.MultiheadAttention(8, 2, dropout=1.5)
    m = nn.MultiheadAttention(8, 2)
    x = np.zeros((3, 2, 8), np.float32)
    with pytest.raises(ValueError, match="query.*embed_dim=8"):
        m(np.zeros((3, 2, 6), np.float32), x, x)
    with pytest.raises(ValueError, match="key.*kdim=8"):
        m(x, np.zeros((4, 2, 7), np.float32), x)
    with pytest.raises(ValueError, match="value.*key"):
        m(x, x, np.zeros((4, 2, 8), np.float32))
    with pytest.raises(ValueError, match="key.*batch size 2"):
        m(x, np.zeros((3, 1, 8), np.float32), np.zeros((3, 1, 8), np.float32))
    with pytest.raises(ValueError, match="key/value.*3-D"):
        m(x, np.zeros((3, 8), np.float32), np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="key_padding_mask.*\\(2, 3\\)"):
        m(x, x, x, key_padding_mask=np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="attn_mask.*\\(3, 3\\)"):
        m(x, x, x, attn_mask=np.zeros((2, 3, 3), bool))
    with pytest.raises(TypeError, match="attn_mask.*bool or floating"):
        m(x, x, x, attn_mask=np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match="attn_mask.*is_causal"):
        m(x, x, x, is_causal=True)
    with pytest.raises(TypeError, match="query.*float32"):
        m(x.astype(np.float64), x, x)
    m(x, x, x, need_weights=False)
    with pytest.raises(ValueError, match="d_attn_weights.*need_weights=False"):
        m.backward(x, np.zeros((2, 3, 3), np.float32))
    m(x, x, x)
    with pytest.raises(ValueError, match="grad_output.*\\(3, 2, 8\\)"):
        m.backward(np.zeros((2, 3, 8), np.float32))


# ---------------------------------------------------------------- cpu: the blocked host path
@pytest.mark.parametrize("block_bytes", [220, 1200, 1 << 20])  # 5-row blocks (13 = 5 + 5 + 3), 2 heads, all heads
@pytest.mark.parametrize("kind", [None, "causal", "bool", "key_padding", "float", "masked_row"])
def test_sdpa_host_blocks(block_bytes, kind, rng, monkeypatch):
    """float32 on cpu runs in blocks of heads or of query rows (attention.py's
    _units): against the float64 reference at the block edges, with every mask
    kind, and bit-identical on 1, 2 and 3 host threads and without threadpoolctl
    (the blocks then run in order on one thread)."""
    import functools
    from gpunet.ops import attention, host_threads
    monkeypatch.setattr(attention, "BLOCK_BYTES", block_bytes)
    # every thread gets work however small (the split's edges are what is tested)
    monkeypatch.setattr(host_threads, "ranges", functools.partial(host_threads.ranges, min_per_thread=1))
    batch, L, S = (2, 3), 13, 11
    q, k, v = _qkv(rng, batch, L, S, 8, 5)
    mask, causal = _mask(kind, rng, batch, L, S), kind == "causal"
    dout = rng.standard_normal(batch + (L, 5))
    ref = nn.ScaledDotProductAttention().to(np.float64)
    want = (ref(q, k, v, attn_mask=mask, is_causal=causal),) + tuple(ref.backward(dout))
    f32 = lambda a: None if a is None else a.astype(a.dtype if a.dtype == bool else np.float32)
    before, runs = host_threads.get_num_threads(), []
    try:
        for threads, blas in ((1, True), (2, True), (3, True), (2, False)):
            host_threads.set_num_threads(threads)
            if not blas:
                monkeypatch.setattr(host_threads, "_blas_controller", lambda: None)
            m = nn.ScaledDotProductAttention()
            runs.append((m(f32(q), f32(k), f32(v), attn_mask=f32(mask), is_causal=causal),)
                        + tuple(m.backward(f32(dout))))
    finally:
        host_threads.set_num_threads(before)
    for name, got, w in zip(("output", "dq", "dk", "dv"), runs[0], want):
        assert_close(got, w, n=256, name=name)
    for other in runs[1:]:
        for got, again in zip(runs[0], other):
            np.testing.assert_array_equal(got, again)


def test_sdpa_host_blas_hold_overlapping_calls():
    """Attention calls overlapping in time (user threads) hold BLAS at one
    thread until the last one leaves, then give back the count it had."""
    pytest.importorskip("threadpoolctl")
    from gpunet.ops import host_threads
    ctl = host_threads._blas_controller()
    if ctl is None or not ctl.lib_controllers:
        pytest.skip("no BLAS library that threadpoolctl controls")
    threads = lambda: [c.num_threads for c in ctl.lib_controllers]
    with ctl.limit(limits=2):
        before = threads()
        first, second = host_threads._one_blas_thread(ctl), host_threads._one_blas_thread(ctl)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)  # the first leaves while the second still runs
        assert threads() == [1] * len(before)
        second.__exit__(None, None, None)
        assert threads() == before
