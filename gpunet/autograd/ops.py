"""Differentiable operations on Tensors, computed with the backend's array
module (NumPy or CuPy), each recording one node whose backward returns the
gradient of every input, summed back over broadcast dimensions to the
input's shape. Registered as Tensor methods and operators at the bottom, and
exported as gpunet.<name> functions."""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, record


# ------------------------------------------------------------ helpers
def _xp(*ts):
    for t in ts:
        if isinstance(t, Tensor):
            return t.backend.xp
    return np


def _operand(x, like: Tensor):
    """A Tensor operand, or a Python/NumPy scalar/array made an array of `like`'s backend and dtype."""
    if isinstance(x, Tensor):
        if x.backend.on_gpu != like.backend.on_gpu or (x.backend.on_gpu and x.backend is not like.backend):
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two "
                               f"devices, {like.device} and {x.device}")
        return x, x._data
    if isinstance(x, (bool, int, float)):
        kind = like.dtype.kind
        # a Python scalar takes the tensor's dtype (PyTorch's type promotion for scalars)
        dtype = like.dtype if kind in "fc" or isinstance(x, (bool, int)) else np.result_type(like.dtype, np.float32)
        if kind in "iub" and isinstance(x, float):
            from ..nn.module import get_default_dtype
            dtype = get_default_dtype()
        return None, like.backend.xp.asarray(x, dtype=dtype)
    arr = like.backend.asarray(x)
    return None, arr


def unbroadcast(g, shape):
    """Sum `g` over the dimensions that broadcasting added or stretched, back to `shape`."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def _binary(name, a, b, forward, grad_a, grad_b, saves=True):
    """A broadcasting binary op; grad_a/grad_b(g, x, y, out) give the unreduced gradients."""
    if not isinstance(a, Tensor):
        tb, yb = _operand(b, b) if isinstance(b, Tensor) else (None, b)
        ta, xa = _operand(a, tb)
    else:
        ta, xa = _operand(a, a)
        tb, yb = _operand(b, a)
    out = forward(xa, yb)
    sa, sb = xa.shape, yb.shape

    def backward(g):
        ga = unbroadcast(grad_a(g, xa, yb, out), sa) if ta is not None and ta.requires_grad else None
        gb = unbroadcast(grad_b(g, xa, yb, out), sb) if tb is not None and tb.requires_grad else None
        return ga, gb
    saved = tuple(t for t in (ta, tb) if t is not None) if saves else ()
    return record(name, backward, (ta, tb), out, saved=saved)


# ------------------------------------------------------------ arithmetic
def add(a, b, alpha=1):
    if alpha != 1:
        b = mul(b, alpha)
    return _binary("Add", a, b, lambda x, y: x + y, lambda g, x, y, o: g, lambda g, x, y, o: g, saves=False)


def sub(a, b, alpha=1):
    if alpha != 1:
        b = mul(b, alpha)
    return _binary("Sub", a, b, lambda x, y: x - y, lambda g, x, y, o: g, lambda g, x, y, o: -g, saves=False)


def mul(a, b):
    return _binary("Mul", a, b, lambda x, y: x * y, lambda g, x, y, o: g * y, lambda g, x, y, o: g * x)


def div(a, b):
    return _binary("Div", a, b, lambda x, y: x / y, lambda g, x, y, o: g / y, lambda g, x, y, o: -g * x / (y * y))


def pow(a, b):  # noqa: A001 (torch.pow)
    return _binary("Pow", a, b, lambda x, y: x ** y,
                   lambda g, x, y, o: g * y * x ** (y - 1),
                   lambda g, x, y, o: g * o * _xp(a, b).log(_xp(a, b).where(x > 0, x, 1)))


def neg(a: Tensor):
    return record("Neg", lambda g: -g, (a,), -a._data)


def exp(a: Tensor):
    out = a.backend.xp.exp(a._data)
    return record("Exp", lambda g: g * out, (a,), out, save_outputs=True)


# ------------------------------------------------------------ reductions
def _dims(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % ndim if ndim else 0 for d in dims)


def sum(a: Tensor, dim=None, keepdim: bool = False, *, dtype=None):  # noqa: A001 (torch.sum)
    axes = _dims(dim, a.ndim)
    out = a._data.sum(axis=axes, keepdims=keepdim, dtype=dtype)
    shape = a.shape

    def backward(g):
        if not keepdim:
            g = g.reshape([1 if i in axes else n for i, n in enumerate(shape)])
        return a.backend.xp.broadcast_to(g, shape)
    return record("Sum", backward, (a,), a.backend.xp.asarray(out))


def mean(a: Tensor, dim=None, keepdim: bool = False, *, dtype=None):
    axes = _dims(dim, a.ndim)
    count = 1
    for d in axes:
        count *= a.shape[d]
    return div(sum(a, dim, keepdim, dtype=dtype), count)


# ------------------------------------------------------------ shapes
def reshape(a: Tensor, *shape):
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    src = a.shape
    return record("Reshape", lambda g: g.reshape(src), (a,), a._data.reshape(shape))


# ------------------------------------------------------------ linear algebra
def matmul(a: Tensor, b: Tensor):
    """a @ b with NumPy's rules: 1-d operands promoted and demoted, batch dimensions broadcast."""
    ta, x = _operand(a, a if isinstance(a, Tensor) else b)
    tb, y = _operand(b, a if isinstance(a, Tensor) else b)
    xp = _xp(a, b)
    out = xp.matmul(x, y)

    def backward(g):
        x2 = x[None, :] if x.ndim == 1 else x
        y2 = y[:, None] if y.ndim == 1 else y
        g2 = g
        if x.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        if y.ndim == 1:
            g2 = xp.expand_dims(g2, -1)
        ga = gb = None
        if ta is not None and ta.requires_grad:
            ga = unbroadcast(xp.matmul(g2, xp.swapaxes(y2, -1, -2)), x2.shape).reshape(x.shape)
        if tb is not None and tb.requires_grad:
            gb = unbroadcast(xp.matmul(xp.swapaxes(x2, -1, -2), g2), y2.shape).reshape(y.shape)
        return ga, gb
    return record("MatMul", backward, (ta, tb), out, saved=tuple(t for t in (ta, tb) if t is not None))


# ------------------------------------------------------------ Tensor methods and operators
def _register():
    T = Tensor
    T.__add__ = lambda s, o: add(s, o)
    T.__radd__ = lambda s, o: add(o, s)
    T.__sub__ = lambda s, o: sub(s, o)
    T.__rsub__ = lambda s, o: sub(o, s)
    T.__mul__ = lambda s, o: mul(s, o)
    T.__rmul__ = lambda s, o: mul(o, s)
    T.__truediv__ = lambda s, o: div(s, o)
    T.__rtruediv__ = lambda s, o: div(o, s)
    T.__pow__ = lambda s, o: pow(s, o)
    T.__rpow__ = lambda s, o: pow(o, s)
    T.__matmul__ = lambda s, o: matmul(s, o)
    T.__rmatmul__ = lambda s, o: matmul(o, s)
    T.__neg__ = neg
    for fn in (add, sub, mul, div, pow, exp, sum, mean, reshape, matmul, neg):
        setattr(T, fn.__name__, fn)
    T.view = reshape


_register()
