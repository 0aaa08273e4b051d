"""The transformer layers against torch.nn's from the same weights: state_dict
keys identical, forward, input gradients and every parameter gradient, on
cpu (float64) and sim (float32, through the attention, layer-norm, bias and
activation kernels)."""
import numpy as np
import pytest

from gpunet import nn
from gpunet.testing import assert_close

torch = pytest.importorskip("torch")
KERNELS = ("attention_forward", "layernorm_forward")

E, H, FF = 8, 2, 16


def _copy_weights(mine, theirs, device, dtype):
    assert list(mine.state_dict()) == list(theirs.state_dict())
    mine.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return mine.to(device, dtype)


def _check_grads(mine, theirs, dtype):
    tp = dict(theirs.named_parameters())
    for name, p in mine.named_parameters():
        assert_close(p.grad, tp[name].grad.numpy().astype(dtype), n=64, name=name)


def _t(a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def _layers(kind, device, **kw):
    dtype = np.float64 if device == "cpu" else np.float32
    tcls, mcls = getattr(torch.nn, kind), getattr(nn, kind)
    theirs = tcls(E, H, FF, dropout=0.0, **kw).double()
    return _copy_weights(mcls(E, H, FF, dropout=0.0, **kw), theirs, device, dtype), theirs, dtype


def _inputs(rng, batch_first, S=5, N=3):
    x = rng.standard_normal((N, S, E) if batch_first else (S, N, E))
    kpm = np.zeros((N, S), bool)
    kpm[1, -2:] = True
    return x, kpm


@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("norm_first,batch_first,activation", [
    (False, False, "relu"), (True, True, "gelu"), (False, True, "gelu"), (True, False, "relu")])
def test_encoder_stack_matches_torch(device, norm_first, batch_first, activation, rng):
    layer, tlayer, dtype = _layers("TransformerEncoderLayer", device, activation=activation,
                                   batch_first=batch_first, norm_first=norm_first)
    tstack = torch.nn.TransformerEncoder(tlayer, 2, norm=torch.nn.LayerNorm(E).double(), enable_nested_tensor=False)
    stack = _copy_weights(nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(E)), tstack, device, dtype)
    x, kpm = _inputs(rng, batch_first)
    mask = nn.generate_square_subsequent_mask(5, dtype=np.float64)
    xt = _t(x, grad=True)
    yt = tstack(xt, mask=_t(mask), src_key_padding_mask=_t(np.where(kpm, -np.inf, 0.0)))
    dy = rng.standard_normal(yt.shape)
    yt.backward(_t(dy))
    y = stack(x.astype(dtype), mask=mask.astype(dtype), src_key_padding_mask=kpm)
    dx = stack.backward(dy.astype(dtype))
    assert_close(y, yt.detach().numpy().astype(dtype), n=64, name="output")
    assert_close(dx, xt.grad.numpy().astype(dtype), n=64, name="d src")
    _check_grads(stack, tstack, dtype)


@pytest.mark.parametrize("device", ["cpu", "sim"])
@pytest.mark.parametrize("norm_first,batch_first", [(False, False), (True, True)])
def test_decoder_stack_matches_torch(device, norm_first, batch_first, rng):
    layer, tlayer, dtype = _layers("TransformerDecoderLayer", device, batch_first=batch_first, norm_first=norm_first)
    tstack = torch.nn.TransformerDecoder(tlayer, 2)
    stack = _copy_weights(nn.TransformerDecoder(layer, 2), tstack, device, dtype)
    tgt, tgt_kpm = _inputs(rng, batch_first, S=4)
    memory, mem_kpm = _inputs(rng, batch_first, S=6)
    causal = nn.generate_square_subsequent_mask(4, dtype=np.float64)
    tt, mt = _t(tgt, grad=True), _t(memory, grad=True)
    yt = tstack(tt, mt, tgt_mask=_t(causal), tgt_key_padding_mask=_t(np.where(tgt_kpm, -np.inf, 0.0)),
                memory_key_padding_mask=_t(mem_kpm), tgt_is_causal=True)
    dy = rng.standard_normal(yt.shape)
    yt.backward(_t(dy))
    y = stack(tgt.astype(dtype), memory.astype(dtype), tgt_mask=causal.astype(dtype), tgt_key_padding_mask=tgt_kpm,
              memory_key_padding_mask=mem_kpm, tgt_is_causal=True)
    d_tgt, d_memory = stack.backward(dy.astype(dtype))
    assert_close(y, yt.detach().numpy().astype(dtype), n=64, name="output")
    assert_close(d_tgt, tt.grad.numpy().astype(dtype), n=64, name="d tgt")
    assert_close(d_memory, mt.grad.numpy().astype(dtype), n=64, name="d memory")
    _check_grads(stack, tstack, dtype)


def test_unbatched_layer_with_a_module_activation_and_no_bias(rng):
    layer, tlayer, dtype = _layers("TransformerEncoderLayer", "cpu", bias=False, layer_norm_eps=1e-3)
    assert "linear1.bias" not in layer.state_dict()
    x = rng.standard_normal((5, E))
    xt = _t(x, grad=True)
    yt = tlayer(xt, src_mask=_t(np.triu(np.ones((5, 5), bool), 1)))
    yt.backward(_t(np.ones(yt.shape)))
    y = layer(x, src_mask=np.triu(np.ones((5, 5), bool), 1))
    assert_close(y, yt.detach().numpy())
    assert_close(layer.backward(np.ones(y.shape)), xt.grad.numpy())
    silu = nn.TransformerEncoderLayer(E, H, FF, activation=nn.SiLU())
    assert isinstance(silu.activation, nn.SiLU)
    assert isinstance(nn.TransformerEncoderLayer(E, H, activation=nn.functional.gelu).activation, nn.GELU)


def test_the_stack_detects_a_causal_mask_and_runs_the_causal_attention(rng):
    stack = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, FF, dropout=0.0), 2, enable_nested_tensor=False)
    x = rng.standard_normal((5, 2, E)).astype(np.float32)
    mask = nn.generate_square_subsequent_mask(5)
    causal = stack(x, mask=mask)
    # the same mask read as an additive one gives the same result
    np.testing.assert_allclose(stack(x, mask=mask, is_causal=False), causal, rtol=1e-5, atol=1e-5)
    bool_mask = np.triu(np.ones((5, 5), bool), 1)
    np.testing.assert_allclose(stack(x, mask=bool_mask), causal, rtol=1e-5, atol=1e-5)
    from gpunet.nn.transformer import _is_causal
    assert _is_causal(mask, None, 5) and _is_causal(bool_mask, None, 5)
    assert not _is_causal(np.zeros((5, 5), np.float32), None, 5) and not _is_causal(None, None, 5)


def test_dropout_trains_and_eval_is_deterministic(rng):
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.5)
    x = rng.standard_normal((4, 2, E)).astype(np.float32)
    a, b = layer(x), layer(x)
    assert not np.allclose(a, b)
    layer.backward(np.ones_like(b), output=b)
    layer.eval()
    np.testing.assert_array_equal(layer(x), layer(x))
    assert layer.self_attn.dropout == 0.5


def test_copies_are_independent_and_arguments_checked():
    layer = nn.TransformerEncoderLayer(E, H, FF)
    stack = nn.TransformerEncoder(layer, 3)
    assert len(stack.layers) == stack.num_layers == 3
    assert stack.layers[0].linear1.weight is not stack.layers[1].linear1.weight
    with pytest.raises(ValueError, match="activation: expected 'relu' or 'gelu'"):
        nn.TransformerEncoderLayer(E, H, activation="swish")
    with pytest.raises(TypeError, match="explicit backward"):
        nn.TransformerEncoderLayer(E, H, activation=np.tanh)
    with pytest.raises(ValueError, match="embed_dim: must be divisible by num_heads=3"):
        nn.TransformerEncoderLayer(E, 3)
    with pytest.raises(ValueError, match="num_layers: expected a positive integer"):
        nn.TransformerEncoder(layer, 0)
    assert nn.TransformerEncoderLayer(E, H, device="sim", dtype=np.float64).linear1.weight.dtype == np.float64


@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_transformer_matches_torch(device, rng):
    dtype = np.float64 if device == "cpu" else np.float32
    theirs = torch.nn.Transformer(E, H, 2, 1, FF, dropout=0.0, batch_first=True).double()
    mine = _copy_weights(nn.Transformer(E, H, 2, 1, FF, dropout=0.0, batch_first=True), theirs, device, dtype)
    src, tgt = rng.standard_normal((2, 6, E)), rng.standard_normal((2, 4, E))
    mask = nn.Transformer.generate_square_subsequent_mask(4, dtype=np.float64)
    st, tt = _t(src, grad=True), _t(tgt, grad=True)
    yt = theirs(st, tt, tgt_mask=_t(mask))
    dy = rng.standard_normal(yt.shape)
    yt.backward(_t(dy))
    y = mine(src.astype(dtype), tgt.astype(dtype), tgt_mask=mask.astype(dtype))
    d_src, d_tgt = mine.backward(dy.astype(dtype))
    assert_close(y, yt.detach().numpy().astype(dtype), n=64, name="output")
    assert_close(d_src, st.grad.numpy().astype(dtype), n=64, name="d src")
    assert_close(d_tgt, tt.grad.numpy().astype(dtype), n=64, name="d tgt")
    _check_grads(mine, theirs, dtype)


def test_transformer_initialises_matrices_as_torch():
    model = nn.Transformer(16, 2, 1, 1, 32)
    w = model.encoder.layers[0].linear1.weight.data
    assert np.abs(w).max() <= np.sqrt(6.0 / (16 + 32)) and np.abs(w).max() > 0.9 * np.sqrt(6.0 / (16 + 32))
