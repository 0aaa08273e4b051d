"""The explicit backward is paired with the forward it differentiates, by
identity: every scenario gives PyTorch's gradients or an error that says what
happened, never another forward's gradients (gpunet/nn/calls.py)."""
import copy
import gc
import threading
import tracemalloc

import numpy as np
import pytest
import torch

import gpunet
from gpunet import nn

DEVICES = ["cpu", "sim"]
RTOL, ATOL = 1e-4, 1e-5  # float32, a few short reductions


def make_pair(device, seed=0):
    """A small CNN in gpunet on `device` and the same network in PyTorch."""
    gpunet.manual_seed(seed)
    ours = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 5 * 5, 3))
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours.to(device), theirs


def batch(seed, n=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2, 5, 5)).astype(np.float32), rng.integers(0, 3, n)


def assert_grads_match(ours, theirs):
    ours_grads = {n: p.grad for n, p in ours.named_parameters()}
    for name, p in theirs.named_parameters():
        assert ours_grads[name] is not None, f"{name}: no gradient"
        np.testing.assert_allclose(gpunet.to_numpy(ours_grads[name]), p.grad.numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=name)


def torch_grads(theirs, *pairs):
    """PyTorch's parameter gradients of the sum of the cross-entropies of (x, t) pairs."""
    theirs.zero_grad()
    sum(torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(t))
        for x, t in pairs).backward()


@pytest.mark.parametrize("device", DEVICES)
def test_tutorial_order_forward_zero_grad_backward(device):
    ours, theirs = make_pair(device)
    x, _ = batch(0)
    g = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    out = ours(x)
    ours.zero_grad()  # as the 60-minute blitz does: clears gradients only
    ours.backward(g)
    theirs.zero_grad()
    theirs(torch.from_numpy(x)).backward(torch.from_numpy(g))
    assert out.shape == (4, 3)
    assert_grads_match(ours, theirs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n2", [4, 6], ids=["same-shape", "other-shape"])
def test_extra_forward_between_forward_and_backward(device, n2):
    ours, theirs = make_pair(device)
    crit = nn.CrossEntropyLoss()
    (x1, t1), (x2, _) = batch(0), batch(1, n2)
    y1 = ours(x1)
    y2 = ours(x2)  # e.g. a logging forward
    loss = crit(y1, t1)
    ours.backward(crit.backward())  # the loss's gradient knows it belongs to y1
    torch_grads(theirs, (x1, t1))
    assert_grads_match(ours, theirs)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x1)), torch.from_numpy(t1))
    np.testing.assert_allclose(float(loss), float(expected), rtol=RTOL)
    assert y2.shape == (n2, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_unnamed_gradient_with_two_pending_forwards_is_an_error_not_a_guess(device):
    ours, theirs = make_pair(device)
    (x1, _), (x2, _) = batch(0), batch(1)
    g = np.ones((4, 3), dtype=np.float32)
    y1, y2 = ours(x1), ours(x2)
    with pytest.raises(RuntimeError, match=r"Sequential.backward: 2 forwards .* output=y"):
        ours.backward(g)
    assert all(p.grad is None for p in ours.parameters())  # refused before any work
    ours.backward(g, output=y1)  # named: differentiates the first forward
    theirs.zero_grad()
    theirs(torch.from_numpy(x1)).backward(torch.from_numpy(g))
    assert_grads_match(ours, theirs)
    del y2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["first-loss-first", "second-loss-first"])
def test_siamese_losses_backpropagated_in_either_order(device, order):
    ours, theirs = make_pair(device)
    pairs = [batch(0), batch(1)]
    crit = nn.CrossEntropyLoss()
    ys = [ours(x) for x, _ in pairs]
    losses = [crit(y, t) for y, (_, t) in zip(ys, pairs)]
    for i in order:
        ours.backward(crit.backward(output=losses[i]))  # one criterion, two losses: name which
    torch_grads(theirs, *pairs)
    assert_grads_match(ours, theirs)


@pytest.mark.parametrize("device", DEVICES)
def test_weight_sharing_f_of_f(device):
    gpunet.manual_seed(3)
    f = nn.Linear(5, 5).to(device)
    tf = torch.nn.Linear(5, 5)
    tf.load_state_dict({k: torch.from_numpy(v) for k, v in f.state_dict().items()})
    x = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    t = np.random.default_rng(3).standard_normal((3, 5)).astype(np.float32)
    crit = nn.MSELoss()
    crit(f(f(x)), t)
    dx1 = f.backward(crit.backward())  # the outer use: the loss saw its output
    dx = f.backward(dx1)  # the inner use: dx1 belongs to the outer use's input
    xt = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.mse_loss(tf(tf(xt)), torch.from_numpy(t)).backward()
    assert_grads_match(f, tf)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=RTOL, atol=ATOL)


class Twice(nn.Module):
    """One submodule used twice inside one forward: f(relu(f(x)))."""

    def __init__(self, f):
        super().__init__()
        self.f, self.act = f, nn.ReLU()

    def forward(self, x):
        return self.f(self.act(self.f(x)))

    def backward(self, dy):
        return self.f.backward(self.act.backward(self.f.backward(dy)))


@pytest.mark.parametrize("device", DEVICES)
def test_module_used_twice_inside_one_forward(device):
    gpunet.manual_seed(4)
    model = Twice(nn.Linear(6, 6)).to(device)
    tf = torch.nn.Linear(6, 6)
    tf.load_state_dict({k: torch.from_numpy(v) for k, v in model.f.state_dict().items()})
    x = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    g = np.random.default_rng(6).standard_normal((4, 6)).astype(np.float32)
    y = model(x)
    model(x + 1)  # a second pending forward of the whole model: its output is dropped
    dx = model.backward(g, output=y)
    xt = torch.from_numpy(x).requires_grad_()
    tf(torch.relu(tf(xt))).backward(torch.from_numpy(g))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=RTOL, atol=ATOL)
    assert_grads_match(model.f, tf)


def test_forward_in_eval_mode_stays_differentiable():
    gpunet.manual_seed(7)
    ours = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                                 torch.nn.Linear(6, 2))
    ours.train()(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))  # running statistics
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    ours.eval(), theirs.eval()  # fine-tuning with frozen BatchNorm statistics
    x = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    g = np.ones((8, 2), dtype=np.float32)
    ours.zero_grad()
    ours(x)
    ours.backward(g)
    theirs(torch.from_numpy(x)).backward(torch.from_numpy(g))
    assert_grads_match(ours, theirs)


# ---------------------------------------------------------------- errors
def test_backward_twice_for_one_forward_is_an_error():
    m = nn.Linear(3, 2)
    y = m(np.ones((1, 3), dtype=np.float32))
    m.backward(np.ones((1, 2), dtype=np.float32))
    with pytest.raises(RuntimeError, match="Linear.backward: no forward to differentiate: backward already ran"):
        m.backward(np.ones((1, 2), dtype=np.float32))
    with pytest.raises(RuntimeError, match="Linear.backward: backward already ran for this forward"):
        m.backward(np.ones((1, 2), dtype=np.float32), output=y)


def test_backward_of_a_no_grad_forward_is_an_error():
    m = nn.Linear(3, 2)
    with gpunet.no_grad():
        y = m(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(RuntimeError, match=r"Linear.backward: no forward to differentiate: .*no_grad"):
        m.backward(np.ones((1, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="output: not an output of a Linear forward"):
        m.backward(np.ones((1, 2), dtype=np.float32), output=y)


def test_backward_after_the_saved_state_was_released_by_to_is_an_error():
    m = nn.Linear(3, 2)
    y = m(np.ones((1, 3), dtype=np.float32))
    m.to("cpu")
    with pytest.raises(RuntimeError, match=r"Linear.backward: the module was moved with .to\(\)"):
        m.backward(np.ones((1, 2), dtype=np.float32), output=y)


def test_backward_of_a_submodule_used_inside_a_parent_names_the_parent():
    model = nn.Sequential(nn.Linear(3, 2))
    model(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(RuntimeError, match="inside another module's forward"):
        model[0].backward(np.ones((1, 2), dtype=np.float32))


def test_output_of_another_module_is_refused():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    ya = a(np.ones((1, 3), dtype=np.float32))
    b(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="output: not an output of a Linear forward"):
        b.backward(np.ones((1, 2), dtype=np.float32), output=ya)


# ---------------------------------------------------------------- memory and lifetime
def test_undifferentiated_forwards_leave_memory_flat():
    gpunet.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = np.random.default_rng(0).standard_normal((256, 4)).astype(np.float32)
    for _ in range(10):
        model(x)
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(10_000):
            model(x)  # training mode, no backward, output dropped
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after 10,000 undifferentiated forwards"


def test_saved_state_is_freed_with_the_output_and_after_backward():
    m = nn.Linear(3, 2)
    x = np.ones((1, 3), dtype=np.float32)
    y1 = m(x)
    y2 = m(x)
    assert len(m._calls) == 2
    del y1  # not the latest: its saved state goes with its output
    gc.collect()
    assert len(m._calls) == 1
    m.backward(np.ones((1, 2), dtype=np.float32))  # pairs with y2, the only pending forward
    assert all(c.ctx is None for c in m._calls)
    del y2


def test_zero_grad_keeps_pending_forwards_and_can_zero_in_place():
    m = nn.Linear(3, 2)
    m(np.ones((1, 3), dtype=np.float32))
    m.backward(np.ones((1, 2), dtype=np.float32))
    grad = m.weight.grad
    m.zero_grad(set_to_none=False)
    assert m.weight.grad is grad and not grad.any()
    m.zero_grad()
    assert m.weight.grad is None


def test_copy_of_a_module_has_no_pending_forward():
    m = nn.Linear(3, 2)
    y = m(np.ones((1, 3), dtype=np.float32))
    twin = copy.deepcopy(m)
    with pytest.raises(RuntimeError, match="no forward to differentiate"):
        twin.backward(np.ones((1, 2), dtype=np.float32))
    m.backward(np.ones((1, 2), dtype=np.float32), output=y)


# ---------------------------------------------------------------- threads
def _train_steps(model, xs, ts, out):
    crit = nn.CrossEntropyLoss()
    for x, t in zip(xs, ts):
        model.zero_grad()
        crit(model(x), t)
        model.backward(crit.backward())
    out.append({n: p.grad.copy() for n, p in model.named_parameters()})


def test_two_threads_each_train_their_own_model():
    data = [[batch(10 * k + i) for i in range(20)] for k in range(2)]
    alone = []
    for k in range(2):
        _train_steps(make_pair("cpu", seed=k)[0], *zip(*data[k]), alone)
    results = [[], []]
    threads = [threading.Thread(target=_train_steps, args=(make_pair("cpu", seed=k)[0], *zip(*data[k]),
                                                           results[k])) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        for name, g in alone[k].items():
            np.testing.assert_array_equal(results[k][0][name], g)


def test_no_grad_in_one_thread_does_not_stop_another_from_saving():
    inside, release = threading.Event(), threading.Event()

    def evaluate():
        with gpunet.no_grad():
            nn.Linear(3, 2)(np.ones((1, 3), dtype=np.float32))
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=evaluate)
    worker.start()
    try:
        assert inside.wait(10)
        assert gpunet.is_grad_enabled()  # grad mode is per thread
        m = nn.Linear(3, 2)
        m(np.ones((1, 3), dtype=np.float32))
        m.backward(np.ones((1, 2), dtype=np.float32))
        assert m.weight.grad is not None
    finally:
        release.set()
        worker.join()


def _linear_flags(monkeypatch):
    """The input_grad each Linear backward is given from now on, in order."""
    from gpunet.ops import linear as linear_ops
    flags, real = [], linear_ops.linear_backward
    def spy(*a, **k):
        flags.append(a[5] if len(a) > 5 else k.get("input_grad", True))
        return real(*a, **k)
    monkeypatch.setattr(linear_ops, "linear_backward", spy)
    return flags


@pytest.mark.parametrize("device", DEVICES)
def test_backward_without_input_grad_reaches_the_first_layer_only(device, monkeypatch):
    """model.backward(dy, input_grad=False) (a training step: the data needs no
    gradient) returns None, tells the first layer alone, through a Residual
    first in its stage too, and leaves every parameter gradient as it was."""
    gpunet.manual_seed(0)
    model = nn.Sequential(nn.Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU())), nn.Linear(4, 5), nn.ReLU(),
                          nn.Residual(nn.Linear(5, 5)), nn.Linear(5, 3)).to(device)
    be = model.backend
    rng = np.random.default_rng(0)
    x, dy = be.asarray(rng.standard_normal((6, 4)).astype(np.float32)), be.asarray(np.ones((6, 3), np.float32))
    model(x)
    assert model.backward(dy) is not None
    full = [gpunet.to_numpy(p.grad).copy() for p in model.parameters()]
    model.zero_grad()
    model(x)
    flags = _linear_flags(monkeypatch)
    assert model.backward(dy, input_grad=False) is None
    assert flags == [True, True, True, False]  # Linear(5, 3), the residual's, Linear(4, 5), the first residual's
    for p, g in zip(model.parameters(), full):
        np.testing.assert_array_equal(gpunet.to_numpy(p.grad), g)
    # and PyTorch's gradients of the same network, the data not requiring one
    ps = [torch.tensor(gpunet.to_numpy(p.data), dtype=torch.float64, requires_grad=True) for p in model.parameters()]
    lin = lambda h, i: torch.nn.functional.linear(h, ps[2 * i], ps[2 * i + 1])  # noqa: E731
    h = torch.tensor(gpunet.to_numpy(x), dtype=torch.float64)
    h = h + torch.relu(lin(h, 0))
    h = torch.relu(lin(h, 1))
    lin(h + lin(h, 2), 3).sum().backward()
    for p, t in zip(model.parameters(), ps):
        np.testing.assert_allclose(gpunet.to_numpy(p.grad), t.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_backward_input_grad_must_be_a_bool():
    m = nn.Linear(2, 2)
    m(np.ones((1, 2), np.float32))
    with pytest.raises(TypeError, match="input_grad: expected a bool, got int"):
        m.backward(np.ones((1, 2), np.float32), input_grad=0)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_autograd_skips_the_input_gradient_of_data(requires_grad, monkeypatch):
    """On Tensors, a module whose inputs need no gradient is told so, as
    PyTorch computes none for them; one that needs it gets it."""
    gpunet.manual_seed(0)
    m = nn.Linear(3, 2)
    x = gpunet.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=requires_grad)
    flags = _linear_flags(monkeypatch)
    m(x).sum().backward()
    assert flags == [requires_grad]
    np.testing.assert_allclose(m.weight.grad, np.ones((2, 1)) * np.array([[3, 5, 7]]), rtol=1e-6)
    if requires_grad:
        np.testing.assert_allclose(x.grad, np.ones((2, 1)) * m.weight.data.sum(0), rtol=1e-6)
    else:
        assert x.grad is None
