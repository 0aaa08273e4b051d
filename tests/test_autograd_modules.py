"""Modules, functional forms, optimizers and the Trainer on Tensors: a module
called on a Tensor records one node whose backward is its explicit backward,
so both styles give the same gradients; the functional forms run the same
kernels; optimizers take leaf Tensors."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import gpunet
from gpunet import nn, optim
import gpunet.nn.functional as F
from gpunet.data import DataLoader, TensorDataset

DTYPE = {"cpu": np.float64, "sim": np.float32}
MSE_ARRAY_CODE = pytest.mark.no_kernels("the regression losses are array code on every backend")
PAD_ARRAY_CODE = pytest.mark.no_kernels("padding is array code (a copy into a larger array)")
TOL = {"cpu": 1e-10, "sim": 2e-5}


@pytest.fixture(params=["cpu", "sim"])
def dev(request):
    return request.param


def _cnn(dtype, device):
    gpunet.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).to(device, dtype)


def _grads(model):
    return [gpunet.to_numpy(p.grad).copy() for p in model.parameters()]


@pytest.mark.fallback("batch_norm")
def test_module_on_tensor_gives_the_explicit_gradients(dev, rng):
    dt = DTYPE[dev]
    x = rng.standard_normal((3, 2, 8, 8)).astype(dt)
    t = np.array([0, 4, 2])
    explicit, tensor_style = _cnn(dt, dev), _cnn(dt, dev)
    loss_fn = nn.CrossEntropyLoss().to(dev, dt)
    loss = loss_fn(explicit(x), t)
    dx = explicit.backward(loss_fn.backward())

    xt = gpunet.tensor(x, device=dev, requires_grad=True)
    lt = nn.CrossEntropyLoss().to(dev, dt)(tensor_style(xt), gpunet.tensor(t, device=dev))
    assert lt.shape == () and lt.grad_fn is not None
    lt.backward()
    assert float(lt) == float(loss)
    for a, b in zip(_grads(explicit), _grads(tensor_style)):
        np.testing.assert_array_equal(a, b)  # one code path: bit for bit
    np.testing.assert_array_equal(xt.grad.numpy(), gpunet.to_numpy(dx))


def _mlp_params(rng, dtype, device):
    shapes = [(16, 10), (16,), (3, 16), (3,)]
    return [gpunet.tensor((rng.standard_normal(s) * 0.3).astype(dtype), device=device, requires_grad=True)
            for s in shapes]


def _tensor_mlp(params, x, t):
    """The MLP in Tensor operations only: matmul, add, tanh, exp/log/sum, integer indexing, mean."""
    w1, b1, w2, b2 = params
    logits = (x @ w1.T + b1).tanh() @ w2.T + b2
    logp = logits - logits.exp().sum(dim=1, keepdim=True).log()
    return -logp[gpunet.arange(t.shape[0], device=t.device), t].mean()


def test_tensor_written_model_matches_the_module_model(dev, rng):
    """A model written with Tensor operations and the same model built from
    modules with explicit backward give the same parameter gradients."""
    dt = DTYPE[dev]
    x = rng.standard_normal((8, 10)).astype(dt)
    t = rng.integers(0, 3, 8)
    params = _mlp_params(rng, dt, dev)
    loss = _tensor_mlp(params, gpunet.tensor(x, device=dev), gpunet.tensor(t, device=dev))
    loss.backward()

    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).to(dev, dt)
    for p, q in zip(model.parameters(), params):
        p.data[...] = q._data
    loss_fn = nn.CrossEntropyLoss().to(dev, dt)
    ref = loss_fn(model(x), t)
    model.backward(loss_fn.backward())
    np.testing.assert_allclose(float(loss), float(ref), rtol=TOL[dev])
    for p, q in zip(model.parameters(), params):
        np.testing.assert_allclose(q.grad.numpy(), gpunet.to_numpy(p.grad), rtol=TOL[dev], atol=TOL[dev])


@pytest.mark.fallback("batch_norm")
def test_sim_tensor_gradients_agree_with_cpu(rng):
    x = rng.standard_normal((3, 2, 8, 8))
    t = np.array([1, 0, 3])
    grads = {}
    for dev in ("cpu", "sim"):
        model = _cnn(DTYPE[dev], dev)
        loss = nn.CrossEntropyLoss().to(dev, DTYPE[dev])(model(gpunet.tensor(x.astype(DTYPE[dev]), device=dev)),
                                                         gpunet.tensor(t, device=dev))
        loss.backward()
        grads[dev] = _grads(model)
    for a, b in zip(grads["cpu"], grads["sim"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_a_parameter_used_by_a_module_and_a_tensor_expression_gets_both_gradients(rng):
    """Weight tying: the embedding's explicit backward and the Tensor matmul add into one .grad."""
    emb = nn.Embedding(7, 4).to(dtype=np.float64)
    idx = np.array([[1, 3, 3], [6, 0, 1]])
    h = emb(gpunet.tensor(idx))
    logits = h @ emb.weight.T
    loss = F.cross_entropy(logits.reshape(6, 7), gpunet.tensor(idx.reshape(-1)))
    loss.backward()

    w = torch.tensor(emb.weight.data.copy(), requires_grad=True)
    tl = TF.cross_entropy((TF.embedding(torch.tensor(idx), w) @ w.T).reshape(6, 7), torch.tensor(idx.reshape(-1)))
    tl.backward()
    np.testing.assert_allclose(float(loss), tl.item(), rtol=1e-12)
    np.testing.assert_allclose(emb.weight.grad, w.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_recurrent_and_attention_modules_on_tensors(dev, rng):
    dt = DTYPE[dev]
    gpunet.manual_seed(0)
    lstm = nn.LSTM(4, 5, batch_first=True).to(dev, dt)
    mha = nn.MultiheadAttention(5, 1, batch_first=True).to(dev, dt)
    twin_lstm, twin_mha = copy.deepcopy(lstm), copy.deepcopy(mha)
    x = rng.standard_normal((2, 3, 4)).astype(dt)
    g = rng.standard_normal((2, 3, 5)).astype(dt)

    xt = gpunet.tensor(x, device=dev, requires_grad=True)
    out, (h, c) = lstm(xt)
    assert h.grad_fn is out.grad_fn  # one node, three outputs
    att, weights = mha(out, out, out)
    (att * gpunet.tensor(g, device=dev)).sum().backward()

    y, _ = twin_lstm(x)
    a, _ = twin_mha(y, y, y)
    dq, dk, dv = twin_mha.backward(g)
    dx = twin_lstm.backward(dq + dk + dv)
    for m, twin in ((lstm, twin_lstm), (mha, twin_mha)):
        for p, q in zip(m.parameters(), twin.parameters()):
            np.testing.assert_allclose(gpunet.to_numpy(p.grad), gpunet.to_numpy(q.grad), rtol=TOL[dev], atol=TOL[dev])
    np.testing.assert_allclose(xt.grad.numpy(), gpunet.to_numpy(dx), rtol=TOL[dev], atol=TOL[dev])


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "relu", "gelu", "sigmoid", "tanh", "max_pool2d",
                                  "avg_pool2d", "conv2d", "linear", "layer_norm", "embedding", "cross_entropy",
                                  "nll_loss", pytest.param("mse_loss", marks=MSE_ARRAY_CODE),
                                  pytest.param("mse_loss_both", marks=MSE_ARRAY_CODE), "sdpa",
                                  pytest.param("pad_constant", marks=PAD_ARRAY_CODE),
                                  pytest.param("pad_reflect", marks=PAD_ARRAY_CODE),
                                  pytest.param("pad_circular", marks=PAD_ARRAY_CODE),
                                  pytest.param("silu", marks=pytest.mark.fallback("silu")),
                                  pytest.param("elu", marks=pytest.mark.fallback("elu")), "leaky_relu", "softplus",
                                  "adaptive_avg_pool2d", pytest.param("l1_loss_both", marks=MSE_ARRAY_CODE),
                                  pytest.param("bce_with_logits", marks=MSE_ARRAY_CODE)])
def test_functional_forms_match_torch(name, dev, rng):
    dt = DTYPE[dev]
    tol = dict(rtol=1e-9, atol=1e-10) if dev == "cpu" else dict(rtol=2e-4, atol=2e-5)
    x4 = rng.standard_normal((2, 3, 6, 6))
    x2 = rng.standard_normal((4, 5))
    w = rng.standard_normal((4, 3, 3, 3)) * 0.3
    c = rng.standard_normal((4, 5))
    cases = {
        "softmax": ((x2,), lambda f, a: f.softmax(a, dim=1)),
        "log_softmax": ((x2,), lambda f, a: f.log_softmax(a, dim=0)),
        "relu": ((x2,), lambda f, a: f.relu(a)),
        "gelu": ((x2,), lambda f, a: f.gelu(a)),
        "sigmoid": ((x2,), lambda f, a: f.sigmoid(a)),
        "tanh": ((x2,), lambda f, a: f.tanh(a)),
        "max_pool2d": ((x4,), lambda f, a: f.max_pool2d(a, 2)),
        "avg_pool2d": ((x4,), lambda f, a: f.avg_pool2d(a, 3, stride=2, padding=1)),
        "conv2d": ((x4, w, rng.standard_normal(4)), lambda f, a, b, c: f.conv2d(a, b, c, stride=1, padding=1)),
        "linear": ((x2, rng.standard_normal((3, 5)), rng.standard_normal(3)), lambda f, a, b, c: f.linear(a, b, c)),
        "layer_norm": ((x2, rng.standard_normal(5), rng.standard_normal(5)),
                       lambda f, a, b, c: f.layer_norm(a, (5,), b, c)),
        "embedding": ((rng.standard_normal((6, 3)),), lambda f, a: f.embedding(_idx(f), a)),
        "cross_entropy": ((x2,), lambda f, a: f.cross_entropy(a, _target(f))),
        "nll_loss": ((x2,), lambda f, a: f.nll_loss(f.log_softmax(a, dim=1), _target(f))),
        "mse_loss": ((x2,), lambda f, a: f.mse_loss(a, torch.tensor(c) if f is TF else gpunet.tensor(
            c.astype(dt), device=dev))),
        "mse_loss_both": ((x2, rng.standard_normal((4, 5))), lambda f, a, b: f.mse_loss(a, b, reduction="sum")),
        "sdpa": ((rng.standard_normal((2, 4, 3)),) * 3, lambda f, q, k, v: f.scaled_dot_product_attention(
            q, k, v, is_causal=True)),
        "pad_constant": ((x4,), lambda f, a: f.pad(a, (1, -2, 2, 0), value=0.5)),
        "pad_reflect": ((x4,), lambda f, a: f.pad(a, (2, 1, 1, 3), mode="reflect")),
        "pad_circular": ((x4,), lambda f, a: f.pad(a, (2, 1, 1, 3), mode="circular")),
        "silu": ((x2,), lambda f, a: f.silu(a)),
        "elu": ((x2,), lambda f, a: f.elu(a, 0.7)),
        "leaky_relu": ((x2,), lambda f, a: f.leaky_relu(a, 0.1)),
        "softplus": ((x2,), lambda f, a: f.softplus(a, 2.0)),
        "adaptive_avg_pool2d": ((x4,), lambda f, a: f.adaptive_avg_pool2d(a, (3, 2))),
        "l1_loss_both": ((x2, rng.standard_normal((4, 5))), lambda f, a, b: f.l1_loss(a, b)),
        "bce_with_logits": ((x2,), lambda f, a: f.binary_cross_entropy_with_logits(a, torch.tensor(
            (c > 0) * 1.0) if f is TF else gpunet.tensor(((c > 0) * 1.0).astype(dt), device=dev))),
    }
    arrays, fn = cases[name]
    ours = [gpunet.tensor(a.astype(dt), device=dev, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    y, ty = fn(F, *ours), fn(TF, *theirs)
    g = rng.standard_normal(ty.shape)
    (y * gpunet.tensor(g.astype(dt), device=dev)).sum().backward() if y.ndim else y.backward()
    ty.backward(torch.tensor(g) if ty.ndim else None)
    np.testing.assert_allclose(gpunet.to_numpy(y._data), ty.detach().numpy(), **tol)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), **tol)


def test_functional_dropout_scales_kept_elements_and_their_gradients(dev, rng):
    x = gpunet.tensor((rng.random((40, 50)) + 1).astype(DTYPE[dev]), device=dev, requires_grad=True)
    y = F.dropout(x, p=0.25)
    kept = y.detach().numpy() != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y.detach().numpy()[kept], x.detach().numpy()[kept] / 0.75, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), kept / 0.75, rtol=1e-6)
    assert F.dropout(x, p=0.5, training=False) is x or np.array_equal(F.dropout(x, 0.5, False).detach().numpy(),
                                                                      x.detach().numpy())


def _idx(f):
    idx = np.array([[0, 5, 2], [5, 5, 1]])
    return torch.tensor(idx) if f is TF else gpunet.tensor(idx)


def _target(f):
    t = np.array([0, 4, 2, 4])
    return torch.tensor(t) if f is TF else gpunet.tensor(t)


def test_optimizers_take_leaf_tensors_and_refuse_others():
    w = gpunet.tensor([1.0, -2.0], requires_grad=True)
    opt = optim.SGD([w], lr=0.5)
    (w * w).sum().backward()
    opt.step()
    np.testing.assert_allclose(w.detach().numpy(), [0.0, 0.0])
    with pytest.raises(TypeError, match="not a leaf"):
        optim.SGD([w * 2], lr=0.1)
    opt.zero_grad()
    assert w.grad is None


def test_a_step_between_forward_and_backward_is_caught():
    """The optimizer updates in place: a graph that saved the old weights must not use them."""
    w = gpunet.tensor([[1.0, 2.0]], requires_grad=True)
    x = gpunet.tensor([[3.0], [4.0]])
    loss = (w @ x).sum()
    w.grad = np.ones((1, 2), np.float32)
    optim.SGD([w], lr=0.1).step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_module_gradients_accumulate_and_no_grad_records_nothing(rng):
    lin = nn.Linear(3, 2).to(dtype=np.float64)
    x = gpunet.tensor(rng.standard_normal((4, 3)))
    lin(x).sum().backward()
    once = lin.weight.grad.copy()
    lin(x).sum().backward()
    np.testing.assert_allclose(lin.weight.grad, 2 * once)
    with gpunet.no_grad():
        y = lin(x)
    assert y.grad_fn is None and not y.requires_grad
    assert lin._latest is None or lin._latest.ctx is None


class _TensorNet(nn.Module):
    """A PyTorch-style module: forward written with functional forms, no backward of its own."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(x.reshape(x.shape[0], -1))


def test_trainer_runs_a_model_without_explicit_backward(rng):
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].sum(axis=(1, 2)) > 0).astype(np.int64) * 3
    model = _TensorNet()
    trainer = gpunet.train.Trainer(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-2))
    assert trainer.autograd
    first = trainer.train_epoch(DataLoader(TensorDataset(x, y), 16))["loss"]
    for epoch in range(4):
        last = trainer.train_epoch(DataLoader(TensorDataset(x, y), 16), epoch)["loss"]
    assert last < 0.5 * first
    assert "accuracy" in trainer.evaluate(DataLoader(TensorDataset(x, y), 64))


def test_gpunet_functional_records_on_tensors_too(rng):
    """gpunet.functional (the array forms with beta= and device=) takes Tensors as gpunet.nn.functional does."""
    x = rng.standard_normal((3, 5))
    xt = gpunet.tensor(x, requires_grad=True)
    y = gpunet.functional.log_softmax(xt, dim=1, beta=2.0)
    loss = gpunet.functional.cross_entropy(gpunet.functional.relu(xt), gpunet.tensor([1, 0, 4])) + y.sum()
    loss.backward()
    tx = torch.tensor(x, requires_grad=True)
    ref = TF.cross_entropy(TF.relu(tx), torch.tensor([1, 0, 4])) + TF.log_softmax(2.0 * tx, dim=1).sum()
    ref.backward()
    np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
