"""Containers: Sequential and the residual (skip-connection) block."""
from .module import Module


class Sequential(Module):
    """Applies its modules in order; backward walks them in reverse.
    State-dict keys are "0.weight", "1.bias", ... as in torch.nn.Sequential."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: argument {i} must be a Module, got {type(m).__name__}")
            setattr(self, str(i), m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, m: Module):
        setattr(self, str(len(self)), m.to(self.backend, self.dtype))
        return self

    def forward(self, input):
        for m in self._modules.values():
            input = m(input)
        return input

    def backward(self, dy):
        for m in reversed(self._modules.values()):
            dy = m.backward(dy)
        return dy


class Residual(Module):
    """y = x + f(x) (ResNet's skip connection): the gradient reaches x both
    directly and through f, which counters vanishing gradients in deep stacks.
    f must map its input to an output of the same shape."""

    def __init__(self, fn: Module):
        super().__init__()
        self.fn = fn

    def forward(self, input):
        y = self.fn(input)
        if y.shape != input.shape:
            raise ValueError(f"Residual: f(x) must keep the input shape {tuple(input.shape)}, got {tuple(y.shape)}")
        return input + y

    def backward(self, dy):
        return dy + self.fn.backward(dy)
