"""The differentiable operations on gpunet.Tensor: every op's forward and
gradients against PyTorch (CPU, float64, the same inputs), gpunet.gradcheck
on every op (float64, random shapes with broadcasting), random expression
graphs against finite differences, the same ops on sim in float32 against
cpu (elementwise Tensor ops run the NumPy path on sim, so they agree to the
last bit), dtype promotion, in-place semantics and the factories."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import gpunet
from gpunet.autograd import ops
from gpunet.gradcheck import GradcheckError

# torch's names where gpunet's differ (gelu is torch.nn.functional's)
TORCH = SimpleNamespace(**{n: getattr(torch, n) for n in dir(torch) if not n.startswith("_")})
TORCH.gelu = torch.nn.functional.gelu


def _setitem(L, a, b):
    c = a * 1.0
    c[1:, [0, 2]] = b
    return c


# name: (fn(lib, *tensors), input shapes, indices of inputs that must be positive)
CASES = {
    "add": (lambda L, a, b: a + b, [(3, 1, 4), (2, 1)], ()),
    "add_alpha": (lambda L, a, b: L.add(a, b, alpha=2.5), [(3, 4), (4,)], ()),
    "radd": (lambda L, a: 2.5 + a, [(3, 4)], ()),
    "sub": (lambda L, a, b: a - b, [(4,), (3, 4)], ()),
    "rsub": (lambda L, a: 1 - a, [(2, 3)], ()),
    "mul": (lambda L, a, b: a * b, [(2, 3, 1), (3, 4)], ()),
    "rmul": (lambda L, a: 3 * a, [(5,)], ()),
    "div": (lambda L, a, b: a / b, [(3, 4), (4,)], (1,)),
    "rdiv": (lambda L, a: 2 / a, [(3, 2)], (0,)),
    "pow": (lambda L, a, b: a ** b, [(3, 4), (3, 1)], (0,)),
    "pow_scalar": (lambda L, a: a ** 3, [(3, 4)], ()),
    "rpow": (lambda L, a: 2 ** a, [(4,)], ()),
    "neg": (lambda L, a: -a, [(2, 3)], ()),
    "matmul": (lambda L, a, b: a @ b, [(2, 3, 4), (4, 5)], ()),
    "matmul_vec": (lambda L, a, b: a @ b, [(4,), (2, 4, 3)], ()),
    "matmul_batch": (lambda L, a, b: L.matmul(a, b), [(2, 1, 3, 4), (5, 4, 2)], ()),
    "matmul_dot": (lambda L, a, b: a @ b, [(4,), (4,)], ()),
    "matmul_mat_vec": (lambda L, a, b: a @ b, [(2, 3, 4), (4,)], ()),
    "exp": (lambda L, a: a.exp(), [(3, 4)], ()),
    "log": (lambda L, a: a.log(), [(3, 4)], (0,)),
    "sqrt": (lambda L, a: L.sqrt(a), [(3, 4)], (0,)),
    "tanh": (lambda L, a: a.tanh(), [(3, 4)], ()),
    "sigmoid": (lambda L, a: L.sigmoid(a), [(3, 4)], ()),
    "relu": (lambda L, a: a.relu(), [(3, 4)], ()),
    "gelu": (lambda L, a: L.gelu(a), [(3, 4)], ()),
    "gelu_tanh": (lambda L, a: L.gelu(a, approximate="tanh"), [(3, 4)], ()),
    "abs": (lambda L, a: abs(a), [(3, 4)], ()),
    "clamp": (lambda L, a: a.clamp(-0.5, 0.7), [(4, 5)], ()),
    "clamp_min": (lambda L, a: L.clamp(a, min=0.1), [(4, 5)], ()),
    "clamp_tensors": (lambda L, a, lo, hi: a.clamp(lo, hi - 1), [(3, 4), (4,), (3, 1)], ()),
    "maximum": (lambda L, a, b: L.maximum(a, b), [(3, 4), (4,)], ()),
    "minimum": (lambda L, a, b: L.minimum(a, b), [(3, 1), (4,)], ()),
    "where": (lambda L, a, b: L.where(a > 0, a, b), [(3, 4), (3, 1)], ()),
    "sum": (lambda L, a: a.sum(), [(3, 4)], ()),
    "sum_dim": (lambda L, a: a.sum(dim=1, keepdim=True), [(2, 3, 4)], ()),
    "sum_dims": (lambda L, a: L.sum(a, (0, 2)), [(2, 3, 4)], ()),
    "mean": (lambda L, a: a.mean(), [(3, 4)], ()),
    "mean_dim": (lambda L, a: a.mean(-1), [(2, 3, 4)], ()),
    "max": (lambda L, a: a.max(), [(3, 4)], ()),
    "max_dim": (lambda L, a: a.max(dim=1), [(2, 3, 4)], ()),
    "min": (lambda L, a: L.min(a), [(3, 4)], ()),
    "min_dim_keepdim": (lambda L, a: a.min(0, keepdim=True), [(3, 4)], ()),
    "max_other": (lambda L, a, b: L.max(a, b), [(3, 4), (4,)], ()),
    "var": (lambda L, a: a.var(), [(3, 4)], ()),
    "var_dim": (lambda L, a: a.var(1, keepdim=True), [(3, 4)], ()),
    "var_correction": (lambda L, a: a.var(dim=0, correction=0), [(3, 4)], ()),
    "std": (lambda L, a: a.std(), [(3, 4)], ()),
    "std_dim_biased": (lambda L, a: a.std(1, unbiased=False), [(2, 3, 4)], ()),
    "reshape": (lambda L, a: a.reshape(4, 3), [(2, 6)], ()),
    "view": (lambda L, a: a.view(-1) * 2, [(2, 3)], ()),
    "transpose": (lambda L, a: a.transpose(0, 2), [(2, 3, 4)], ()),
    "permute": (lambda L, a: a.permute(2, 0, 1), [(2, 3, 4)], ()),
    "squeeze": (lambda L, a: a.squeeze(1), [(3, 1, 4)], ()),
    "squeeze_all": (lambda L, a: a.squeeze(), [(1, 3, 1)], ()),
    "unsqueeze": (lambda L, a: a.unsqueeze(-1), [(3, 4)], ()),
    "expand": (lambda L, a: a.expand(2, 3, 4), [(3, 1)], ()),
    "expand_keep": (lambda L, a: a.expand(-1, 5), [(3, 1)], ()),
    "flatten": (lambda L, a: a.flatten(1), [(2, 3, 4)], ()),
    "module_flatten": (lambda L, a: L.flatten(a), [(2, 3, 2)], ()),
    "T": (lambda L, a: a.T, [(3, 4)], ()),
    "contiguous": (lambda L, a: a.T.contiguous(), [(3, 4)], ()),
    "clone": (lambda L, a: a.clone(), [(3, 4)], ()),
    "cat": (lambda L, a, b: L.cat([a, b], dim=1), [(3, 2), (3, 4)], ()),
    "stack": (lambda L, a, b: L.stack([a, b], dim=1), [(3, 4), (3, 4)], ()),
    "split": (lambda L, a: a.split(2, dim=1), [(3, 5)], ()),
    "split_sections": (lambda L, a: L.split(a, [1, 3], dim=1), [(3, 4)], ()),
    "chunk": (lambda L, a: a.chunk(3), [(7, 2)], ()),
    "chunk_one_used": (lambda L, a: a.chunk(2, dim=1)[1] * 2, [(2, 4)], ()),
    "index_basic": (lambda L, a: a[1:3, ::2], [(4, 5)], ()),
    "index_int": (lambda L, a: a[0, 2], [(4, 5)], ()),
    "index_repeats": (lambda L, a: a[:, [0, 2, 2, 0]], [(3, 4)], ()),
    "index_mixed": (lambda L, a: a[1:3, [0, 0, 2]], [(4, 5)], ()),
    "index_tensor": (lambda L, a: a[L.tensor([2, 0, 2])], [(3, 4)], ()),
    "index_two_arrays": (lambda L, a: a[[0, 1, 1], [2, 0, 2]], [(3, 4)], ()),
    "index_bool": (lambda L, a: a[a > 0], [(3, 4)], ()),
    "index_none_ellipsis": (lambda L, a: a[None, ..., 1], [(2, 3)], ()),
    "setitem": (_setitem, [(3, 4), (2, 2)], ()),
    "setitem_broadcast": (_setitem, [(3, 4), (2,)], ()),
}


def _inputs(name, dtype=np.float64, seed=0):
    _, shapes, positive = CASES[name]
    rng = np.random.default_rng([seed, len(name), sum(map(ord, name))])
    return [rng.uniform(0.5, 2.0, s).astype(dtype) if i in positive else rng.standard_normal(s).astype(dtype)
            for i, s in enumerate(shapes)]


def _outs(out):
    """The floating-point outputs (a tuple's, e.g. max(dim)'s values but not its indices)."""
    outs = out if isinstance(out, tuple) else (out,)
    return [o for o in outs if (o.dtype.is_floating_point if isinstance(o, torch.Tensor) else o.dtype.kind == "f")]


def _run_gpunet(name, arrays, device="cpu"):
    """(forward values, input gradients) for the upstream gradients r of _upstream."""
    xs = [gpunet.tensor(a, device=device, requires_grad=True) for a in arrays]
    outs = _outs(CASES[name][0](gpunet, *xs))
    grads = [gpunet.tensor(r, dtype=o.dtype, device=device) for o, r in zip(outs, _upstream(outs))]
    gpunet.autograd.backward(outs, grads)
    return [o.detach().numpy() for o in outs], [None if x.grad is None else x.grad.numpy() for x in xs]


def _upstream(outs):
    rng = np.random.default_rng(7)
    return [rng.standard_normal(tuple(o.shape)) for o in outs]


def _run_torch(name, arrays):
    xs = [torch.tensor(a, requires_grad=True) for a in arrays]
    outs = _outs(CASES[name][0](TORCH, *xs))
    torch.autograd.backward(outs, [torch.tensor(r, dtype=o.dtype) for o, r in zip(outs, _upstream(outs))])
    return [o.detach().numpy() for o in outs], [None if x.grad is None else x.grad.numpy() for x in xs]


@pytest.mark.parametrize("name", CASES)
def test_forward_and_gradients_match_torch(name):
    arrays = _inputs(name)
    got_out, got_grad = _run_gpunet(name, arrays)
    want_out, want_grad = _run_torch(name, arrays)
    assert len(got_out) == len(want_out)
    for g, w in zip(got_out, want_out):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
    for g, w in zip(got_grad, want_grad):
        assert (g is None) == (w is None)
        if g is not None:
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name):
    xs = [gpunet.tensor(a, requires_grad=True) for a in _inputs(name, seed=1)]
    assert gpunet.gradcheck(lambda *ts: CASES[name][0](gpunet, *ts), xs)


@pytest.mark.no_kernels("elementwise Tensor ops run the NumPy path on sim")
@pytest.mark.parametrize("name", CASES)
def test_sim_float32_matches_cpu(name):
    arrays = _inputs(name, np.float32)
    cpu_out, cpu_grad = _run_gpunet(name, arrays, "cpu")
    sim_out, sim_grad = _run_gpunet(name, arrays, "sim")
    for c, s in zip(cpu_out + cpu_grad, sim_out + sim_grad):
        assert c.dtype == s.dtype == np.float32
        np.testing.assert_allclose(s, c, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------ random expression graphs
def _random_graph(seed):
    """A function of three tensors ((3, 4), (4,), (3, 1)) applying 5-30 random
    ops (bounded values: no overflow, no kink near the inputs), and its depth."""
    rng = np.random.default_rng(seed)
    unary = [lambda a: a.tanh(), lambda a: a.sigmoid(), lambda a: a * 0.7 - 0.2, lambda a: (a * a + 1).log(),
             lambda a: (a * a + 0.5).sqrt(), lambda a: a.exp() * 0.3, lambda a: a.T.reshape(4, 3).T,
             lambda a: a.unsqueeze(0).expand(2, 3, 4).mean(0), lambda a: gpunet.cat(a.split([1, 3], 1), 1),
             lambda a: a[[2, 0, 1]] * 0.5 + a, lambda a: a - a.mean(1, keepdim=True), lambda a: a / (1 + a * a),
             lambda a: a.clamp(-3, 3), lambda a: (a ** 2 + 1) ** 0.5, lambda a: a - a.max(1, keepdim=True).values,
             lambda a: a / (1 + a.var(0)), lambda a: a * a.std() + a.min(), lambda a: a.relu() + 0.1 * a,
             lambda a: gpunet.gelu(a), lambda a: (abs(a) + 1).log(), lambda a: gpunet.maximum(a, a.flatten()[:4])]
    binary = [lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a - b, lambda a, b: a / (1.5 + b.tanh()),
              lambda a, b: gpunet.stack([a, b]).sum(0), lambda a, b: gpunet.where(a > b, a, b * 0.5),
              lambda a, b: (a @ b.T) @ b * 0.1]
    depth = int(rng.integers(5, 31))
    plan = [(int(rng.integers(len(unary))), int(rng.integers(len(binary))), bool(rng.random() < 0.4),
             int(rng.integers(4))) for _ in range(depth)]

    def fn(x, y, z):
        pool = [x, y.expand(3, 4), z.expand(3, 4)]  # broadcasting inputs
        for u, b, use_binary, other in plan:
            a = pool[-1]
            pool.append(binary[b](a, pool[other % len(pool)]) if use_binary else unary[u](a))
        return (pool[-1] * (gpunet.arange(12, dtype=np.float64).reshape(3, 4) * 0.1 - 0.5)).sum()
    return fn, depth


def test_random_expression_graphs_match_finite_differences():
    depths = []
    for seed in range(50):
        fn, depth = _random_graph(seed)
        rng = np.random.default_rng(seed)
        xs = [gpunet.tensor(rng.standard_normal(s), requires_grad=True) for s in ((3, 4), (4,), (3, 1))]
        # eps 1e-5: at 1e-6 the rounding error of the deepest graphs' differences reaches the tolerance
        assert gpunet.gradcheck(fn, xs, eps=1e-5, atol=1e-5, rtol=1e-4), f"graph {seed}"
        depths.append(depth)
    assert min(depths) <= 8 and max(depths) >= 25


# ------------------------------------------------------------ ties, as PyTorch
def test_ties_split_the_gradient_as_torch():
    data = [[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]
    for fn in (lambda L, a: a.max(), lambda L, a: a.min(), lambda L, a: a.max(1).values,
               lambda L, a: a.min(dim=0).values, lambda L, a: L.maximum(a, a[:, :1]),
               lambda L, a: L.minimum(a, a.flip(1) if L is TORCH else a[:, ::-1])):
        x = gpunet.tensor(data, dtype=np.float64, requires_grad=True)
        t = torch.tensor(data, dtype=torch.float64, requires_grad=True)
        fn(gpunet, x).sum().backward()
        fn(TORCH, t).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())


def test_max_dim_returns_values_and_indices_like_torch():
    x = gpunet.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]])
    res = x.max(dim=1)
    assert type(res).__name__ == "max" and res._fields == ("values", "indices")
    values, indices = res
    assert values.tolist() == [5.0, 7.0] and indices.tolist() == [1, 0] and indices.dtype == np.int64
    assert x.min(1, keepdim=True).indices.shape == (2, 1)
    assert x.max().shape == () and x.max().item() == 7.0
    assert x.argmax().item() == 3 and x.argmax(1).tolist() == [1, 0] and x.argmin(0, keepdim=True).shape == (1, 3)
    assert gpunet.argmax(x, dim=0).tolist() == [1, 0, 1]


def test_comparisons_are_bool_and_not_differentiable():
    x = gpunet.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for r, want in ((x > 2, [False, False, True]), (x <= 2, [True, True, False]), (x == 2.0, [False, True, False]),
                    (x != x, [False] * 3), (2 < x, [False, False, True]), (x.ge(x * 0 + 2), [False, True, True])):
        assert r.dtype == np.bool_ and r.tolist() == want and r.grad_fn is None and not r.requires_grad
    assert (x == None) is False and x != "x"  # noqa: E711 (Python's fallback, as torch)


# ------------------------------------------------------------ dtypes
@pytest.mark.parametrize("expr", [
    lambda L: L.tensor([1, 2]) / L.tensor([2, 4]),
    lambda L: L.tensor([1, 2], dtype=L.int32) + L.tensor([1, 2]),
    lambda L: L.tensor([1.0], dtype=L.float32) * 2.5,
    lambda L: L.tensor([1.0], dtype=L.float32) * np.float64(2.5),
    lambda L: L.tensor([1, 2]) * np.float64(2.5),
    lambda L: L.tensor([1.0], dtype=L.float32) + L.tensor([1.0], dtype=L.float64),
    lambda L: L.tensor([1.0], dtype=L.float32) + L.tensor(2.0, dtype=L.float64),
    lambda L: L.tensor([1, 2]) + L.tensor(2.5, dtype=L.float64),
    lambda L: L.tensor([1, 2]) * 2.5,
    lambda L: L.tensor([1, 2]) + L.tensor([0.5], dtype=L.float32),
    lambda L: L.tensor([True, False]) + 1,
    lambda L: L.tensor([1, 2]) ** 2,
    lambda L: L.tensor([3, 4]).exp(),
    lambda L: L.tensor([1.0, 2.0], dtype=L.float64).sum(),
    lambda L: L.tensor([1, 2]).sum(),
    lambda L: L.cat([L.tensor([1.0], dtype=L.float32), L.tensor([2.0], dtype=L.float64)]),
])
def test_type_promotion_as_torch(expr):
    np_names = SimpleNamespace(tensor=gpunet.tensor, int32=np.int32, float32=np.float32, float64=np.float64,
                               cat=gpunet.cat)
    got, want = expr(np_names), expr(torch)
    assert str(got.dtype) == str(want.dtype).replace("torch.", "")
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_gradient_comes_back_in_each_inputs_dtype():
    a = gpunet.tensor([1.0, 2.0], dtype=np.float32, requires_grad=True)
    b = gpunet.tensor([3.0, 4.0], dtype=np.float64, requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    assert a.grad.tolist() == [3.0, 4.0] and b.grad.tolist() == [1.0, 2.0]


# ------------------------------------------------------------ in-place operations
def test_inplace_on_a_leaf_that_requires_grad_raises():
    w = gpunet.tensor([1.0, 2.0], requires_grad=True)
    for op in (lambda: w.add_(1), lambda: w.mul_(2), lambda: w.zero_(), lambda: w.clamp_(0, 1),
               lambda: w.__setitem__(0, 5.0), lambda: w.copy_(gpunet.tensor([0.0, 0.0]))):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            op()
    assert w.tolist() == [1.0, 2.0] and w._version == 0
    with gpunet.no_grad():  # how optimizers update parameters
        w.sub_(gpunet.tensor([0.5, 0.5]))
        w[1] = 7.0
    assert w.tolist() == [0.5, 7.0] and w._version == 2 and w.is_leaf


def test_inplace_on_a_non_leaf_rebases_its_history_as_torch():
    def f(L, x, w):
        y = x * 2
        y.add_(w)        # y's grad_fn becomes the add's node
        y.mul_(w)        # reads y's value before this op: a snapshot, not the overwritten storage
        y[0, 1:] = w[1:] * 3
        y.clamp_(-1.5, 2.5)
        y.div_(2)
        return y.sum(0)
    rng = np.random.default_rng(0)
    xa, wa = rng.standard_normal((2, 3)), rng.standard_normal(3)
    x, w = gpunet.tensor(xa, requires_grad=True), gpunet.tensor(wa, requires_grad=True)
    tx, tw = torch.tensor(xa, requires_grad=True), torch.tensor(wa, requires_grad=True)
    y, ty = f(gpunet, x, w), f(TORCH, tx, tw)
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-12)
    r = rng.standard_normal(3)
    y.backward(gpunet.tensor(r))
    ty.backward(torch.tensor(r))
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-12)
    assert gpunet.gradcheck(lambda a, b: f(gpunet, a, b), (x, w))


def test_inplace_into_a_tensor_that_does_not_require_grad_joins_the_graph():
    w = gpunet.tensor([1.0, 2.0], requires_grad=True)
    buf = gpunet.zeros(2)
    buf.add_(w * w)
    assert buf.requires_grad and buf.grad_fn is not None and not buf.is_leaf
    buf.sum().backward()
    assert w.grad.tolist() == [2.0, 4.0]
    out = gpunet.zeros(3, 2)
    out[1] = w
    (out * 3).sum().backward()
    assert w.grad.tolist() == [5.0, 7.0]


def test_fill_zero_copy_bump_the_version():
    x = gpunet.ones(2, 2)
    x.fill_(3.0)
    x.zero_()
    x.copy_(gpunet.tensor([1.0, 2.0]))  # broadcast, as torch
    x[0, 0] = 9.0
    assert x.tolist() == [[9.0, 2.0], [1.0, 2.0]] and x._version == 4


def test_inplace_on_a_view_of_a_tensor_that_requires_grad_raises():
    x = gpunet.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    y = x * 1
    for view in (lambda: y[0], lambda: y.T, lambda: y.reshape(4), lambda: y.split(1)[0], lambda: x[0]):
        with pytest.raises(RuntimeError, match="view"):
            view().add_(1.0)
    with pytest.raises(RuntimeError, match="clone"):
        y[0].mul_(2)
    y[0].clone().mul_(2)
    buf = gpunet.zeros(2, 2)  # the base doesn't require grad, but the value written into its view does
    with pytest.raises(RuntimeError, match="view"):
        buf[1].copy_(x[0])
    with pytest.raises(RuntimeError, match="view"):
        buf.T[0] = x[0]
    assert buf.tolist() == [[0, 0], [0, 0]] and buf._version == 0
    buf[1] = x[0]  # into the base itself: fine


def test_views_share_storage_and_version_with_their_base():
    x = gpunet.zeros(2, 3)
    v = x[1]
    v.add_(1.0)
    assert x.tolist() == [[0, 0, 0], [1, 1, 1]] and x._version == v._version == 1
    x.T.mul_(2.0)
    assert x.tolist() == [[0, 0, 0], [2, 2, 2]] and x._version == 2
    idx = x[[1, 1]]  # advanced indexing copies
    idx.zero_()
    assert x.tolist() == [[0, 0, 0], [2, 2, 2]] and x._version == 2


def test_modifying_a_saved_input_through_setitem_is_detected():
    x = gpunet.tensor([1.0, 2.0], requires_grad=True)
    y = x * 1
    z = (y * y).sum()
    y[0] = 5.0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()


def test_int_true_division_and_an_int_inplace_float_refused():
    x = gpunet.tensor([1, 2, 3])
    with pytest.raises(RuntimeError, match="can't be cast"):
        x.div_(2)
    x.add_(2)
    assert x.tolist() == [3, 4, 5] and x.dtype == np.int64


# ------------------------------------------------------------ bad input
def test_bad_arguments_raise_clear_errors():
    x = gpunet.ones(2, 3)
    with pytest.raises(RuntimeError, match="sum exactly to 3"):
        x.split([1, 1], dim=1)
    with pytest.raises(RuntimeError, match="expand"):
        x.expand(4, 3)
    with pytest.raises(RuntimeError, match="equal size"):
        gpunet.stack([x, gpunet.ones(3, 2)])
    with pytest.raises(TypeError, match="sequence of Tensors"):
        gpunet.cat([])
    with pytest.raises(IndexError, match="out of range"):
        x.sum(dim=2)
    with pytest.raises(RuntimeError, match="permutation"):
        x.permute(0, 0)
    with pytest.raises(RuntimeError, match="floating point"):
        gpunet.tensor([1, 2]).mean()
    with pytest.raises(IndexError, match="long, int or bool"):
        x[gpunet.tensor([0.0])]
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu(x, approximate="erf")
    with pytest.raises(ValueError, match="at least one of min and max"):
        x.clamp()
    with pytest.raises(TypeError, match="at least one gpunet.Tensor"):
        gpunet.maximum(1.0, 2.0)


# ------------------------------------------------------------ factories
def test_factories_dtype_device_requires_grad_and_seed():
    gpunet.manual_seed(3)
    a = gpunet.randn(2, 3)
    gpunet.manual_seed(3)
    b = gpunet.randn((2, 3), dtype=np.float64, device="sim", requires_grad=True)
    assert a.dtype == np.float32 and b.dtype == np.float64 and b.device == "sim" and b.requires_grad
    np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-6)
    assert gpunet.zeros(2, 3).tolist() == [[0.0] * 3] * 2 and gpunet.ones(2).dtype == np.float32
    assert gpunet.full((2,), 7).dtype == np.int64 and gpunet.full((2,), 7.0).dtype == np.float32
    assert gpunet.arange(4).tolist() == [0, 1, 2, 3] and gpunet.arange(4).dtype == np.int64
    assert gpunet.arange(0, 1, 0.25).tolist() == [0, 0.25, 0.5, 0.75] and gpunet.arange(0, 1, 0.25).dtype == np.float32
    assert gpunet.linspace(0, 1, 5).tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert gpunet.eye(2, 3).tolist() == [[1, 0, 0], [0, 1, 0]]
    assert gpunet.empty(2, 1).shape == (2, 1)
    r = gpunet.rand(1000)
    assert 0 <= r.min().item() and r.max().item() < 1
    i = gpunet.randint(3, 7, (100,))
    assert i.dtype == np.int64 and set(i.tolist()) == {3, 4, 5, 6} and gpunet.randint(5, (2, 2)).shape == (2, 2)
    z = gpunet.zeros_like(b)
    assert z.dtype == np.float64 and z.device == "sim" and not z.requires_grad
    assert gpunet.ones_like(a, dtype=np.float64).dtype == np.float64
    assert gpunet.full_like(a, 2.0).tolist() == [[2.0] * 3] * 2
    assert gpunet.randn_like(a).shape == (2, 3) and gpunet.rand_like(a).dtype == np.float32
    with pytest.raises(RuntimeError, match="floating point"):
        gpunet.zeros(2, dtype=np.int64, requires_grad=True)
    perm = gpunet.randperm(50)
    assert perm.dtype == np.int64 and sorted(perm.tolist()) == list(range(50)) and perm.tolist() != list(range(50))
    g1, g2 = gpunet.Generator().manual_seed(5), gpunet.Generator().manual_seed(5)
    for fn in (lambda g: gpunet.randn(4, generator=g), lambda g: gpunet.rand(4, generator=g),
               lambda g: gpunet.randint(9, (4,), generator=g), lambda g: gpunet.randperm(9, generator=g)):
        assert fn(g1).tolist() == fn(g2).tolist()  # a generator of its own: the same stream from the same seed


def test_module_level_functions_accept_tensors_and_scalars():
    x = gpunet.tensor([1.0, 4.0])
    assert gpunet.exp(x).tolist() == pytest.approx(np.exp([1.0, 4.0]).tolist())
    assert gpunet.where(x > 2, x, 0.0).tolist() == [0.0, 4.0]
    assert gpunet.where(x > 2, 1.0, 0).tolist() == [0.0, 1.0] and gpunet.where(x > 2, 1, 0).dtype == np.int64
    assert gpunet.maximum(x, 2.0).tolist() == [2.0, 4.0]
    assert gpunet.add(1.0, x).tolist() == [2.0, 5.0]
    assert gpunet.max(x).item() == 4.0 and gpunet.flatten(gpunet.ones(2, 2)).shape == (4,)
    assert [t.tolist() for t in gpunet.where(x > 2)] == [[1]]


# ------------------------------------------------------------ gradcheck itself
def test_gradcheck_catches_a_wrong_backward_and_checks_its_inputs():
    def wrong(x):  # d(x^2)/dx written as x instead of 2x
        return gpunet.autograd.record("Square", lambda g: g * x._data, (x,), x._data ** 2)
    x = gpunet.tensor([0.5, -1.5], dtype=np.float64, requires_grad=True)
    with pytest.raises(GradcheckError, match="Jacobian mismatch .* input 0"):
        gpunet.gradcheck(wrong, (x,))
    assert gpunet.gradcheck(wrong, (x,), raise_exception=False) is False
    assert gpunet.gradcheck(lambda t: t * t, (x,)) and x.grad is None  # the caller's tensors are untouched
    with pytest.raises(ValueError, match="float64"):
        gpunet.gradcheck(lambda t: t * t, (gpunet.tensor([1.0], requires_grad=True),))
    with pytest.raises(ValueError, match="at least one input tensor to require gradient"):
        gpunet.gradcheck(lambda t: t * t, (gpunet.tensor([1.0], dtype=np.float64),))
