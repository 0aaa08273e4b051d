"""Rosenblatt's perceptron and its learning rule.

The perceptron is y = sign(w . x + b) with targets t in {-1, +1}; sign(0) is
+1 here (sign = 2H - 1 with the Heaviside step H(0) = 1). It is trained not by
backpropagation (sign has no useful gradient) but by the perceptron rule: for
each misclassified example, w <- w + lr * t * x and b <- b + lr * t, sweeping
the data in order until one whole epoch makes no mistake. This converges in
finitely many updates when the data are linearly separable and never
otherwise (XOR). The rule is stochastic gradient descent on the perceptron
criterion E = (1/N) sum max(0, -t z); that loss lives with the other losses.
"""
from __future__ import annotations

import numpy as np

from . import checks
from .backend import to_numpy
from .nn.module import Module, Parameter
from .random import generator


class Perceptron(Module):
    """A single threshold unit over `n_features` inputs. Parameters as
    nn.Linear(n_features, 1): weight (1, n_features) and bias (1,), initialised
    from U[-0.5, 0.5] (init="uniform") or to zeros (init="zeros").

    After `fit`: `converged_` (bool), `epochs_` (epochs run, the last clean one
    included), `errors_` (mistakes, hence updates, made in each epoch)."""

    def __init__(self, n_features: int, init: str = "uniform"):
        super().__init__()
        self.n_features = checks.positive_int(n_features, "n_features")
        if init == "uniform":
            w = generator().uniform(-0.5, 0.5, (1, n_features))
            b = generator().uniform(-0.5, 0.5, (1,))
        elif init == "zeros":
            w, b = np.zeros((1, n_features)), np.zeros((1,))
        else:
            raise ValueError(f"init: expected 'uniform' or 'zeros', got {init!r}")
        self.weight = Parameter(w.astype(self.dtype))
        self.bias = Parameter(b.astype(self.dtype))
        self.converged_, self.epochs_, self.errors_ = False, 0, []

    def net(self, x):
        """z = x . w + b for x of shape (N, n_features) (-> (N,)) or (n_features,) (-> ())."""
        checks.array(self.backend, x, "input", ndim=(1, 2), dtype=self.dtype)
        if x.shape[-1] != self.n_features:
            raise ValueError(f"input: expected last dimension n_features={self.n_features}, got shape {tuple(x.shape)}")
        return x @ self.weight.data[0] + self.bias.data[0]

    def forward(self, x):
        """sign(w . x + b) in {-1, +1} (sign(0) = +1)."""
        z = self.net(x)
        return self.backend.xp.where(z >= 0, 1, -1).astype(self.dtype)

    predict = forward

    def fit(self, X, t, lr: float = 1.0, max_epochs: int = 1000):
        """Apply the perceptron rule over the examples in order, epoch after
        epoch, until an epoch makes no mistake or `max_epochs` have run.
        X: (N, n_features); t: (N,) targets in {-1, +1}. Returns self."""
        be, xp = self.backend, self.backend.xp
        X = be.asarray(X, dtype=self.dtype)
        t = be.asarray(t, dtype=self.dtype)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X: expected shape (N, {self.n_features}), got {tuple(X.shape)}")
        if t.shape not in ((X.shape[0],), (X.shape[0], 1)):
            raise ValueError(f"t: expected shape ({X.shape[0]},) (one target per row of X), got {tuple(t.shape)}")
        t = t.reshape(-1)
        if not bool(xp.all((t == 1) | (t == -1))):
            raise ValueError("t: targets must be -1 or +1")
        if not lr > 0:
            raise ValueError(f"lr: expected a positive number, got {lr!r}")
        max_epochs = checks.positive_int(max_epochs, "max_epochs")
        w, b = self.weight.data[0], self.bias.data  # views: updated in place
        targets = to_numpy(t).tolist()
        self.converged_, self.errors_ = False, []
        for epoch in range(1, max_epochs + 1):
            mistakes = 0
            for x_k, t_k in zip(X, targets):  # the rule is sequential: each update changes the next prediction
                predicted = 1.0 if float(x_k @ w + b[0]) >= 0 else -1.0
                if predicted != t_k:
                    w += (lr * t_k) * x_k
                    b += lr * t_k
                    mistakes += 1
            self.errors_.append(mistakes)
            self.epochs_ = epoch
            if mistakes == 0:
                self.converged_ = True
                break
        return self

    def extra_repr(self):
        return f"n_features={self.n_features}"
