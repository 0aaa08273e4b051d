"""The lecture notes' worked examples that are not about one layer
(shared/SEEDS.md), computed with gpunet's modules, backward passes and
optimizers."""
import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.perceptron import Perceptron


def _linear(weight, bias=None):
    lin = nn.Linear(len(weight[0]), len(weight), bias=bias is not None).to(np.float64)
    lin.weight.data[...] = weight
    if bias is not None:
        lin.bias.data[...] = bias
    return lin


@pytest.mark.parametrize("theta,expected", [((1, 0, 1, -1), 1.0), ((1, 0.5, -1, 0), 0.0)])
def test_perceptron_with_heaviside_step(theta, expected):
    """y = H(w.x + b) at x = (0, 1, 1): theta = (1, 0, 1, -1) gives H(0) = 1,
    theta = (1, 0.5, -1, 0) gives H(-0.5) = 0."""
    *w, b = theta
    unit = nn.Sequential(_linear([w], [b]), nn.Heaviside().to(np.float64))
    y = unit(np.array([[0.0, 1.0, 1.0]]))
    assert y.shape == (1, 1) and y[0, 0] == expected


def test_backprop_worked_example():
    """f(x, y, z) = (x + y) z at (-2, 5, -4): q = 3, f = -12, df/dz = q = 3,
    df/dq = z = -4, df/dx = df/dy = -4. q = x + y is a Linear layer with weight
    (1, 1) applied to (x, y); f = z q is a Linear layer whose weight is z."""
    add = _linear([[1.0, 1.0]])
    times_z = _linear([[-4.0]])
    f = nn.Sequential(add, times_z)
    out = f(np.array([[-2.0, 5.0]]))
    assert out[0, 0] == -12.0
    df_dxy = f.backward(np.ones((1, 1)))
    np.testing.assert_array_equal(df_dxy, [[-4.0, -4.0]])
    assert times_z.weight.grad[0, 0] == 3.0  # df/dz = q
    np.testing.assert_array_equal(add.weight.grad, [[8.0, -20.0]])  # df/dw_i = z * x_i


def test_rosenblatt_rule_learns_and_but_not_xor():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    and_gate = Perceptron(2, init="zeros").to(np.float64).fit(X, [-1, -1, -1, 1], lr=1.0, max_epochs=100)
    assert and_gate.converged_
    np.testing.assert_array_equal(and_gate.predict(X), [-1, -1, -1, 1])
    xor = Perceptron(2, init="zeros").to(np.float64).fit(X, [-1, 1, 1, -1], lr=1.0, max_epochs=100)
    assert not xor.converged_ and min(xor.errors_) >= 1


def test_mlp_2_2_1_learns_xor():
    """The textbook 2-2-1 network with logistic units, trained by full-batch
    gradient descent with momentum on the squared error, separates XOR."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    t = np.array([[0], [1], [1], [0]], dtype=np.float64)
    net = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1), nn.Sigmoid()).to(np.float64)
    crit = nn.MSELoss(reduction="sum", half=True).to(np.float64)
    opt = optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3000):
        opt.zero_grad()
        loss = crit(net(X), t)
        net.backward(crit.backward())
        opt.step()
    assert float(loss) < 0.05
    np.testing.assert_array_equal(net(X) > 0.5, t > 0.5)


@pytest.mark.parametrize("factor,behaviour", [(0.5, "monotone"), (1.0, "one step"), (1.5, "oscillates"),
                                              (2.5, "diverges")])
def test_learning_rate_on_a_quadratic(factor, behaviour):
    """E(w) = 1/2 a (w - w*)^2 has eta_opt = 1/a: eta < eta_opt creeps towards
    w*, eta_opt lands on it in one step, eta_opt < eta < 2 eta_opt overshoots
    every step but converges, eta > 2 eta_opt diverges. E is built from gpunet
    modules: a weight-only Linear layer w fed x = sqrt(a), with the squared
    error 1/2 (y - t)^2 against t = sqrt(a) w*."""
    a, w_star, w0 = 4.0, 1.5, -0.5
    eta = factor / a
    model = _linear([[w0]])
    crit = nn.MSELoss(reduction="sum", half=True).to(np.float64)
    x, t = np.array([[np.sqrt(a)]]), np.array([[np.sqrt(a) * w_star]])
    opt = optim.SGD(model.parameters(), lr=eta)
    errors = [w0 - w_star]
    for _ in range(8):
        opt.zero_grad()
        crit(model(x), t)
        model.backward(crit.backward())
        opt.step()
        errors.append(model.weight.data[0, 0] - w_star)
    errors = np.array(errors)
    if behaviour == "one step":
        assert errors[1] == pytest.approx(0.0, abs=1e-15)
        return
    ratios = errors[1:] / errors[:-1]
    np.testing.assert_allclose(ratios, 1 - factor, rtol=1e-9)  # each step multiplies the error by 1 - eta a
    if behaviour == "monotone":
        assert (errors < 0).all() and (np.diff(np.abs(errors)) < 0).all()
    elif behaviour == "oscillates":
        assert (np.sign(errors[1:]) != np.sign(errors[:-1])).all() and abs(errors[-1]) < 0.01 * abs(errors[0])
    else:
        assert (np.sign(errors[1:]) != np.sign(errors[:-1])).all() and abs(errors[-1]) > 10 * abs(errors[0])
