"""Activation layers (PyTorch's names and arguments), Softmax and LogSoftmax
with an inverse temperature, and the perceptron's step functions."""
from __future__ import annotations

from .. import checks
from ..ops import activation as ops
from ..ops import softmax as softmax_ops
from .module import Module


class _Elementwise(Module):
    """y = f(x) elementwise; `kind` names f in gpunet.ops.activation."""

    kind = ""

    def params(self) -> dict:
        return {}

    def forward(self, input):
        checks.array(self.backend, input, "input", dtype=self.dtype, finite=False)
        y, ctx = ops.act_forward(self.backend, self.kind, input, check="input", **self.params())
        self.save(ctx)
        return y

    def backward(self, dy):
        ctx = self.saved()
        checks.array(self.backend, dy, "grad_output", dtype=self.dtype, finite=False)
        checks.same_shape(ctx[2], dy, "input", "grad_output")
        return ops.act_backward(self.backend, ctx, dy)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.params().items())


class ReLU(_Elementwise):
    """max(0, x). `inplace` is accepted for PyTorch compatibility; gpunet always
    writes a new array (the input is needed by backward anyway)."""

    kind = "relu"

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace


class LeakyReLU(_Elementwise):
    """x for x > 0, negative_slope * x otherwise. `inplace` as in ReLU."""

    kind = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope = float(negative_slope)
        self.inplace = inplace

    def params(self):
        return {"negative_slope": self.negative_slope}


class Sigmoid(_Elementwise):
    """The logistic function 1/(1 + e^{-x}), computed without overflow for any x."""

    kind = "sigmoid"


class Tanh(_Elementwise):
    kind = "tanh"


class Softsign(_Elementwise):
    """x / (1 + |x|)."""

    kind = "softsign"


class GELU(_Elementwise):
    """x * Phi(x) with Phi the standard normal CDF (exact, through erf), or the
    tanh approximation with approximate='tanh', as torch.nn.GELU."""

    kind = "gelu"

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def params(self):
        return {"approximate": self.approximate}


class SiLU(_Elementwise):
    """x * sigmoid(x) (the swish), as torch.nn.SiLU; `inplace` as in ReLU.
    No kernel: array code on every backend."""

    kind = "silu"

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace


class ELU(_Elementwise):
    """x for x > 0, alpha * (e^x - 1) otherwise, as torch.nn.ELU; `inplace` as
    in ReLU. No kernel: array code on every backend."""

    kind = "elu"

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__()
        self.alpha = float(alpha)
        self.inplace = inplace

    def params(self):
        return {"alpha": self.alpha}


class Softplus(_Elementwise):
    """log(1 + e^{beta x}) / beta, and x itself where beta x > threshold."""

    kind = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta: expected a positive number, got {beta!r}")
        self.beta = float(beta)
        self.threshold = float(threshold)

    def params(self):
        return {"beta": self.beta, "threshold": self.threshold}


class Identity(Module):
    """Returns its input unchanged (and the gradient unchanged). Any constructor
    arguments are ignored, as in PyTorch."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input

    def backward(self, dy):
        return dy


class _Step(Module):
    """A piecewise-constant activation: forward only (see ops.activation)."""

    kind = ""

    def forward(self, input):
        checks.array(self.backend, input, "input", dtype=self.dtype)
        y, _ = ops.act_forward(self.backend, self.kind, input)
        return y

    def backward(self, dy):
        raise ops.NoGradientError(
            f"{type(self).__name__}: the derivative is 0 everywhere except at 0, where it is undefined, "
            "so there is no useful gradient to backpropagate. Train a perceptron on the pre-activation "
            "(PerceptronLoss, or the Rosenblatt rule), or use a smooth activation (Sigmoid, Tanh).")


class Heaviside(_Step):
    """The step function H(z) = 0 for z < 0 and 1 for z >= 0 (so H(0) = 1), as in
    the perceptron y = H(w.x + b). Forward only."""

    kind = "heaviside"


class Sign(_Step):
    """sign(z) = -1 for z < 0, 0 for z = 0, +1 for z > 0 (so sign(0) = 0); the
    perceptron's output with targets in {-1, 1}. Forward only."""

    kind = "sign"


class Softmax(Module):
    """softmax(z)_i = e^{beta z_i} / sum_j e^{beta z_j} along `dim`. beta is the
    inverse temperature: beta = 1 is torch.nn.Softmax(dim); as beta grows the
    output tends to one-hot on the largest entry (winner takes all). Stable for
    any beta and any finite logits (see gpunet.ops.softmax)."""

    log = False

    def __init__(self, dim=None, beta: float = 1.0):
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise TypeError(f"dim: expected an int or None, got {type(dim).__name__}")
        self.dim = dim
        self.beta = float(beta)

    def forward(self, input):
        be = self.backend
        checks.array(be, input, "input", dtype=self.dtype, finite=False)  # the op scans as it reads
        dim = softmax_ops.resolve_dim(self.dim, input.ndim)
        y, ctx = softmax_ops.softmax_forward(be, input, dim, self.beta, log=self.log, check="input")
        self.save(ctx, input.shape)
        return y

    def backward(self, dy):
        ctx, shape = self.saved()
        checks.array(self.backend, dy, "grad_output", dtype=self.dtype, finite=False)
        if tuple(dy.shape) != tuple(shape):
            raise ValueError(f"grad_output: expected the output's shape {tuple(shape)}, got {tuple(dy.shape)}")
        return softmax_ops.softmax_backward(self.backend, ctx, dy)

    def extra_repr(self):
        return f"dim={self.dim}" + (f", beta={self.beta}" if self.beta != 1.0 else "")


class LogSoftmax(Softmax):
    """log softmax(z)_i = beta z_i - log sum_j e^{beta z_j} along `dim`, computed
    directly (never as log of a softmax that may have underflowed to 0)."""

    log = True
