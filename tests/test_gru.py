"""GRUCell and GRU: gradients against finite differences (float64), values and
gradients against PyTorch, and the fused GRU cell kernel (sim/cuda) against cpu."""
import numpy as np
import pytest

import gpunet
from gpunet import nn
from gpunet.testing import assert_close, compare_module

# the kernels a test of this family must call when it runs on sim (tests/conftest.py)
KERNELS = ("gru_cell_forward", "gru_cell_backward")


def _f64(rng, *shape):
    return rng.standard_normal(shape)


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("layers,T,batch_first,state,bias", [
    (1, 1, False, True, True), (1, 3, False, False, False), (2, 4, True, True, True), (2, 3, False, False, True)])
def test_gru_gradcheck(layers, T, batch_first, state, bias, rng):
    gru = nn.GRU(3, 4, num_layers=layers, bias=bias, batch_first=batch_first).to(np.float64)
    x = _f64(rng, *((2, T, 3) if batch_first else (T, 2, 3)))
    gpunet.gradcheck(gru, (x, _f64(rng, layers, 2, 4)) if state else (x,))


@pytest.mark.parametrize("state", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_gru_cell_gradcheck(state, batched, rng):
    lead = (3,) if batched else ()
    cell = nn.GRUCell(4, 5).to(np.float64)
    x = _f64(rng, *lead, 4)
    gpunet.gradcheck(cell, (x, _f64(rng, *lead, 5)) if state else (x,))


def _load_torch(ours, theirs):
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours


@pytest.mark.parametrize("layers,batch_first,bias", [(1, False, True), (2, True, True), (2, False, False)])
def test_gru_matches_torch(layers, batch_first, bias, device, rng):
    """Outputs, h_n, input, h_0 and every parameter gradient as torch.nn.GRU
    (float64 on cpu, float32 through the kernels on sim)."""
    torch = pytest.importorskip("torch")
    dtype = np.float64 if device == "cpu" else np.float32
    theirs = torch.nn.GRU(5, 7, num_layers=layers, bias=bias, batch_first=batch_first).double()
    ours = _load_torch(nn.GRU(5, 7, num_layers=layers, bias=bias, batch_first=batch_first), theirs).to(device, dtype)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    x, h0 = _f64(rng, *((3, 6, 5) if batch_first else (6, 3, 5))), _f64(rng, layers, 3, 7)
    tx, th0 = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    out, h = ours(ours.backend.asarray(x.astype(dtype)), ours.backend.asarray(h0.astype(dtype)))
    tout, th = theirs(tx, th0)
    assert_close(gpunet.to_numpy(out), tout.detach().numpy().astype(dtype), name="output")
    assert_close(gpunet.to_numpy(h), th.detach().numpy().astype(dtype), name="h_n")
    g, gh = _f64(rng, *out.shape), _f64(rng, *h.shape)
    dx, dh0 = ours.backward(ours.backend.asarray(g.astype(dtype)), ours.backend.asarray(gh.astype(dtype)))
    torch.autograd.backward([tout, th], [torch.tensor(g), torch.tensor(gh)])
    assert_close(gpunet.to_numpy(dx), tx.grad.numpy().astype(dtype), n=1600, name="d input")
    assert_close(gpunet.to_numpy(dh0), th0.grad.numpy().astype(dtype), n=1600, name="d h_0")
    tp = dict(theirs.named_parameters())
    for n, p in ours.named_parameters():
        assert_close(gpunet.to_numpy(p.grad), tp[n].grad.numpy().astype(dtype), n=1600, name=f"{n}.grad")


def test_gru_cell_matches_torch(device, rng):
    torch = pytest.importorskip("torch")
    dtype = np.float64 if device == "cpu" else np.float32
    theirs = torch.nn.GRUCell(3, 5).double()
    ours = _load_torch(nn.GRUCell(3, 5), theirs).to(device, dtype)
    x, h0 = _f64(rng, 4, 3), _f64(rng, 4, 5)
    tx, th0 = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    h = ours(ours.backend.asarray(x.astype(dtype)), ours.backend.asarray(h0.astype(dtype)))
    th = theirs(tx, th0)
    assert_close(gpunet.to_numpy(h), th.detach().numpy().astype(dtype))
    g = _f64(rng, 4, 5)
    dx, dh0 = ours.backward(ours.backend.asarray(g.astype(dtype)))
    th.backward(torch.tensor(g))
    assert_close(gpunet.to_numpy(dx), tx.grad.numpy().astype(dtype))
    assert_close(gpunet.to_numpy(dh0), th0.grad.numpy().astype(dtype))
    assert_close(gpunet.to_numpy(ours.bias_hh.grad), theirs.bias_hh.grad.numpy().astype(dtype))


@pytest.mark.parametrize("hidden,T,layers,bias,state", [(5, 1, 1, True, True), (33, 7, 2, True, False),
                                                         (5, 4, 2, False, True)])
def test_gru_kernel_parity(kernel_device, schedule, hidden, T, layers, bias, state, rng):
    gru = nn.GRU(6, hidden, num_layers=layers, bias=bias)
    x = _f32(rng, T, 3, 6)
    compare_module(gru, (x, _f32(rng, layers, 3, hidden)) if state else (x,), ("cpu", kernel_device), n=256)


def test_gru_cell_kernel_parity(kernel_device, schedule, rng):
    compare_module(nn.GRUCell(4, 33), (_f32(rng, 3, 4), _f32(rng, 3, 33)), ("cpu", kernel_device))
    compare_module(nn.GRUCell(4, 33, bias=False), (_f32(rng, 3, 4),), ("cpu", kernel_device))


def test_gru_cell_bindings_reject_bad_arrays(kb):
    k = gpunet.get_backend(kb).kernels
    B, H = 2, 3
    z = np.zeros
    good = dict(xg=z((B, 3 * H), np.float32), hg=z((B, 3 * H), np.float32), b_hh=None, h_prev=z((B, H), np.float32),
                gates=z((B, 3 * H), np.float32), hn=z((B, H), np.float32), h=z((B, H), np.float32), stream=0)
    with pytest.raises(ValueError, match="hg"):
        k.gru_cell_forward(**dict(good, hg=z((B, 4 * H), np.float32)))
    with pytest.raises((ValueError, TypeError), match="h_prev"):
        k.gru_cell_forward(**dict(good, h_prev=z((B, H), np.float64)))
