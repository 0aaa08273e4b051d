"""The autograd engine: deep graphs, freed graphs, version checks, implicit
gradients, retained non-leaf gradients, accumulation, grad mode, detach, and
the worked examples of the seeds and of the issue."""
import gc
import sys
import weakref

import numpy as np
import pytest

import gpunet
from gpunet.autograd import record


def test_done_when_example():
    x = gpunet.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    xv = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    np.testing.assert_allclose(x.grad.numpy(), np.exp(xv) * (1 + xv), rtol=1e-6)


def test_seeds_worked_example():
    """f = (x + y) z at x = -2, y = 5, z = -4: q = 3, f = -12, df/dz = q = 3, df/dx = df/dy = z = -4."""
    x, y, z = (gpunet.tensor(v, dtype=np.float64, requires_grad=True) for v in (-2.0, 5.0, -4.0))
    q = x + y
    q.retain_grad()
    f = q * z
    f.backward()
    assert (q.item(), f.item()) == (3.0, -12.0)
    assert (x.grad.item(), y.grad.item(), z.grad.item(), q.grad.item()) == (-4.0, -4.0, 3.0, -4.0)


def test_a_variable_reaching_the_output_along_several_paths_gets_the_sum():
    """f = x (x + x y) + x: x reaches f along four paths; df/dx = 2x + 2xy + 1, df/dy = x^2."""
    x = gpunet.tensor(3.0, dtype=np.float64, requires_grad=True)
    y = gpunet.tensor(-2.0, dtype=np.float64, requires_grad=True)
    f = x * (x + x * y) + x
    f.backward()
    assert x.grad.item() == 2 * 3 + 2 * 3 * -2 + 1 and y.grad.item() == 9.0
    w = gpunet.tensor([1.0, 2.0], requires_grad=True)  # a shared weight used twice in one op
    (w * w).sum().backward()
    assert w.grad.tolist() == [2.0, 4.0]


def test_a_node_runs_once_after_all_its_consumers():
    """Kahn's order: a node used by several consumers gets their summed gradient in one call."""
    calls = []
    x = gpunet.tensor([1.0, 2.0], requires_grad=True)
    shared = record("Spy", lambda g: (calls.append(g.copy()), g)[1], (x,), x._data * 1)
    branches = [shared * k for k in (1.0, 2.0, 3.0)]
    (branches[0] + (branches[1] + branches[2] * shared)).sum().backward()
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0], 1 + 2 + 2 * 3 * np.array([1.0, 2.0]))
    np.testing.assert_allclose(x.grad.numpy(), calls[0])


def test_a_chain_of_100000_nodes_backpropagates_without_recursion():
    x = gpunet.tensor(1.0, requires_grad=True)
    y = x
    for _ in range(100_000):  # neg: the cheapest node
        y = -y
    y = y * 3.0
    assert sys.getrecursionlimit() < 100_000
    y.backward()
    assert x.grad.item() == 3.0


def test_second_backward_through_a_freed_graph_raises_unless_retained():
    x = gpunet.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.tolist() == [4.0, 8.0]  # two backward passes accumulate
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()
    z = x.exp().sum()  # a new graph from the same leaf is fine
    z.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4 + np.e, 8 + np.e ** 2], rtol=1e-6)


def test_modifying_a_saved_tensor_in_place_raises():
    x = gpunet.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    y = h.exp()         # saves its output
    z = (h * h).sum()   # saves h
    h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation.*version 1; expected version 0"):
        z.backward()
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    a = x * 2           # add saves nothing: changing its input later is harmless
    b = a + 1
    a.mul_(5)
    b.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]


def test_non_scalar_backward_needs_a_gradient():
    x = gpunet.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    with pytest.raises(RuntimeError, match="implicitly created only for scalar outputs"):
        y.backward()
    with pytest.raises(RuntimeError, match="expected shape \\[2\\]"):
        y.backward(gpunet.tensor([1.0, 1.0, 1.0]))
    y.backward(gpunet.tensor([1.0, 10.0]))
    assert x.grad.tolist() == [3.0, 30.0]
    with pytest.raises(RuntimeError, match="does not require grad"):
        gpunet.tensor([1.0]).sum().backward()


def test_non_leaf_grad_is_kept_only_with_retain_grad():
    x = gpunet.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    k = h * 3
    k.retain_grad()
    (k * h).sum().backward()
    assert h.grad is None and not h.is_leaf and h.grad_fn is not None
    assert k.retains_grad and k.grad.tolist() == [2.0, 4.0]
    assert x.grad.tolist() == [24.0, 48.0]  # the loss is 3 h^2 = 12 x^2
    with pytest.raises(RuntimeError, match="requires_grad=False"):
        gpunet.tensor([1.0]).retain_grad()


def test_no_grad_and_enable_grad():
    x = gpunet.tensor([1.0, 2.0], requires_grad=True)
    with gpunet.no_grad():
        y = x * 2
        with gpunet.enable_grad():
            z = x * 2
        assert not gpunet.is_grad_enabled()
    assert gpunet.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None and z.requires_grad and z.grad_fn is not None

    @gpunet.no_grad()
    def double(t):
        return t * 2
    assert not double(x).requires_grad


def test_detach_shares_storage_and_version_but_not_the_graph():
    x = gpunet.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    d = h.detach()
    assert not d.requires_grad and d.grad_fn is None and d.is_leaf
    y = (h * h).sum()
    d.zero_()           # the same storage: h is changed, and its saved value is stale
    assert h.tolist() == [0.0, 0.0] and h._version == 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    e = (x.detach() * x).sum()  # a detached factor is a constant
    e.backward()
    assert x.grad.tolist() == [1.0, 2.0]


def test_gradients_accumulate_and_can_be_reset():
    w = gpunet.tensor([1.0, -1.0], requires_grad=True)
    for _ in range(3):
        (w * w).sum().backward()
    assert w.grad.tolist() == [6.0, -6.0]
    w.grad = None
    (w * 5).sum().backward()
    assert w.grad.tolist() == [5.0, 5.0]
    w.grad.zero_()  # the gradient is a plain tensor
    assert w.grad.tolist() == [0.0, 0.0]


def test_gradient_of_a_0d_leaf_is_a_0d_tensor():
    x = gpunet.tensor(2.0, requires_grad=True)
    (x * x * x).backward()
    assert x.grad.shape == () and isinstance(x.grad._data, np.ndarray) and x.grad.item() == 12.0
    x.grad.zero_()
    assert x.grad.item() == 0.0


def test_unused_outputs_of_a_multi_output_node_count_as_zero():
    x = gpunet.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    a, b = x.split(2)
    (b * 3).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 3.0, 3.0]
    values, indices = gpunet.tensor([[1.0, 5.0]], requires_grad=True).max(1)
    assert indices.grad_fn is None and not indices.requires_grad and values.requires_grad


def test_the_graph_keeps_only_what_backward_reads():
    """Intermediate results that no backward reads are freed when the program drops them."""
    x = gpunet.randn(3, requires_grad=True)
    w = gpunet.randn(3, 3, requires_grad=True)
    freed = []
    for make, use in ((lambda: x + 1.0, lambda t: (t + 2.0) * 3.0),        # add reads nothing
                      (lambda: x * 2.0, lambda t: t.exp()),                 # exp reads its output
                      (lambda: x.relu(), lambda t: gpunet.cat([t, x]) @ gpunet.ones(6)),  # relu reads x
                      (lambda: x * 1.0, lambda t: t.var() + t.clamp(-1, 1).sum() + t[[0, 0]].sum()),
                      (lambda: x @ w, lambda t: gpunet.stack([t, t]).sum())):
        t = make()
        ref = weakref.ref(t._data)
        out = use(t)
        del t
        gc.collect()
        freed.append(ref() is None)
        out.sum().backward()
    assert all(freed), freed
    y = x * 2.0
    ref = weakref.ref(y._data)
    z = (y * y).sum()  # mul reads its operands: y is kept
    del y
    gc.collect()
    assert ref() is not None
    z.backward()
