"""Rosenblatt's perceptron and its learning rule (gpunet.perceptron)."""
import numpy as np
import pytest

import gpunet
from gpunet import nn, optim
from gpunet.perceptron import Perceptron


def _separable(rng, n=60, margin=0.2):
    """Points in the plane labelled by a fixed line, none closer than `margin` to it."""
    w, b = np.array([2.0, -1.0]), 0.3
    X = rng.uniform(-2, 2, (4 * n, 2))
    z = (X @ w + b) / np.linalg.norm(w)
    keep = np.abs(z) > margin
    return X[keep][:n], np.where(z[keep][:n] > 0, 1.0, -1.0)


def test_one_update_by_hand():
    p = Perceptron(3, init="zeros").to(np.float64)
    x = np.array([[1.0, -2.0, 0.5]])
    p.fit(x, [-1.0], lr=0.5, max_epochs=1)  # z = 0 -> predicted +1, target -1: one update
    np.testing.assert_array_equal(p.weight.data, [[-0.5, 1.0, -0.25]])
    np.testing.assert_array_equal(p.bias.data, [-0.5])
    assert p.errors_ == [1] and not p.converged_


@pytest.mark.parametrize("init", ["zeros", "uniform"])
def test_converges_on_separable_data(init, rng):
    X, t = _separable(rng)
    p = Perceptron(2, init=init).to(np.float64)
    p.fit(X, t, lr=1.0, max_epochs=1000)
    assert p.converged_ and p.errors_[-1] == 0 and p.epochs_ == len(p.errors_)
    np.testing.assert_array_equal(p.predict(X), t)
    assert all(e > 0 for e in p.errors_[:-1])


def test_never_converges_on_xor():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    t = np.array([-1, 1, 1, -1], dtype=np.float32)
    p = Perceptron(2).fit(X, t, max_epochs=200)
    assert not p.converged_ and p.epochs_ == 200
    assert min(p.errors_) >= 1  # no line separates XOR, so every epoch misclassifies something
    assert (p.predict(X) != t).any()


def test_predict_uses_sign_with_sign_zero_positive():
    p = Perceptron(2, init="zeros").to(np.float64)
    p.weight.data[...] = [[1.0, -1.0]]
    np.testing.assert_array_equal(p(np.array([[1.0, 1.0], [0.0, 2.0], [3.0, 1.0]])), [1.0, -1.0, 1.0])
    assert p.net(np.array([2.0, 0.5])) == 1.5


def test_rule_is_sgd_on_the_perceptron_criterion(rng):
    """For a misclassified example, the rule's update equals one SGD step on
    max(0, -t z) (reduction='sum') through Linear's backward."""
    x = np.array([[0.7, -1.2]])
    t = np.array([1.0])
    rule = Perceptron(2).to(np.float64)
    lin = nn.Linear(2, 1).to(np.float64)
    lin.load_state_dict(rule.state_dict())
    assert rule.net(x)[0] < 0  # misclassified
    rule.fit(x, t, lr=0.3, max_epochs=1)
    crit = nn.PerceptronLoss(reduction="sum").to(np.float64)
    opt = optim.SGD(lin.parameters(), lr=0.3)
    crit(lin(x)[:, 0], t)
    lin.backward(crit.backward()[:, None])
    opt.step()
    np.testing.assert_allclose(lin.weight.data, rule.weight.data, rtol=1e-15)
    np.testing.assert_allclose(lin.bias.data, rule.bias.data, rtol=1e-15)


def test_state_dict_has_linear_layout(tmp_path):
    p = Perceptron(3)
    assert {k: v.shape for k, v in p.state_dict().items()} == {"weight": (1, 3), "bias": (1,)}
    gpunet.save(p.state_dict(), tmp_path / "p.npz")
    q = Perceptron(3)
    assert q.load_state_dict(gpunet.load(tmp_path / "p.npz")) == ([], [])
    np.testing.assert_array_equal(q.weight.data, p.weight.data)


def test_bad_arguments():
    p = Perceptron(2)
    X = np.zeros((3, 2))
    with pytest.raises(ValueError, match="t: targets must be -1 or"):
        p.fit(X, [0, 1, 1])
    with pytest.raises(ValueError, match=r"X: expected shape \(N, 2\), got \(3, 3\)"):
        p.fit(np.zeros((3, 3)), [1, 1, 1])
    with pytest.raises(ValueError, match=r"t: expected shape \(3,\)"):
        p.fit(X, [1, 1])
    with pytest.raises(ValueError, match="lr: expected a positive number"):
        p.fit(X, [1, 1, 1], lr=0)
    with pytest.raises(ValueError, match="init"):
        Perceptron(2, init="normal")
    with pytest.raises(ValueError, match="n_features"):
        Perceptron(0)
