"""Differentiable elementwise operations, reductions and matmul on Tensors,
computed with the backend's array module (NumPy on cpu and sim, CuPy on cuda
and cupy), each recording one node whose backward returns the gradient of
every input, summed back over broadcast dimensions to the input's shape and
cast back to the input's dtype. Shapes, indexing, joining and the factories
are in gpunet/autograd/shape.py. Registered as Tensor methods and operators
at the bottom; `__all__` is what gpunet exports as gpunet.<name>.

Dtypes follow PyTorch: a result takes the highest category (bool < integer
< floating) among its operands; within it, tensors with dimensions decide
before 0-d tensors, and Python scalars only choose the category (a float
scalar makes an integer tensor the default float dtype). Division of
integers is true division. Ties: max()/min() of all elements share the
gradient evenly among the tied elements, max(dim)/min(dim) send it to the
returned index, maximum/minimum halve it between equal operands.

In-place operations (add_ ... clamp_, x[i] = v) bump the version counter
that saved-tensor checks read. On a leaf that requires grad they raise (as
PyTorch); on a tensor in the graph they *rebase its history*: the result of
the out-of-place operation is written into the tensor's storage and its
grad_fn becomes that operation's node. On a view of a tensor that requires
grad, or that a gradient flows into, they raise (PyTorch would rebase the
base tensor's history too; gpunet does not): clone() the view first.
"""
from __future__ import annotations

import builtins
from collections import namedtuple

import numpy as np

from .. import dtypes
from ..nn.module import get_default_dtype
from ..ops.activation import DERIVATIVE, FORWARD
from . import engine
from .tensor import Tensor, record

__all__ = ["abs", "add", "argmax", "argmin", "clamp", "clip", "div", "eq", "exp", "ge", "gelu", "gt", "le",
           "log", "lt", "matmul", "max", "maximum", "mean", "min", "minimum", "mul", "ne", "neg", "pow",
           "relu", "sigmoid", "sqrt", "std", "sub", "sum", "tanh", "true_divide", "var", "where"]

_ret_max = namedtuple("max", ["values", "indices"])  # PyTorch's torch.return_types.max / min
_ret_min = namedtuple("min", ["values", "indices"])


# ------------------------------------------------------------ operands and dtypes
def _kind(dtype) -> str:
    """NumPy's dtype kind, with bfloat16 (kind 'V' in ml_dtypes) counted as floating."""
    return "f" if dtypes.is_floating(dtype) else np.dtype(dtype).kind


def _category(dtype) -> int:
    return {"b": 0, "i": 1, "u": 1, "f": 2, "c": 3}[_kind(dtype)]


# the Python scalars that leave a tensor's dtype unchanged, per dtype kind
_WEAK = {"b": (bool,), "i": (bool, int), "u": (bool, int), "f": (bool, int, float), "c": (bool, int, float, complex)}


def result_dtype(*xs):
    """PyTorch's type promotion over Tensors, arrays and Python scalars."""
    dts = {x.dtype for x in xs if isinstance(x, Tensor)}
    if len(dts) == 1:  # the common case: tensors of one dtype and scalars that don't promote it
        dt = dts.pop()
        if all(isinstance(x, Tensor) or type(x) in _WEAK[_kind(dt)] for x in xs):
            return dt
    tiers = ([], [], [])  # tensors with dimensions, 0-d tensors, scalars: (category, dtype)
    for x in xs:
        if isinstance(x, Tensor):
            tiers[0 if x.ndim else 1].append((_category(x.dtype), x.dtype))
        elif isinstance(x, (bool, int, float, complex)):
            dt = np.dtype(bool) if isinstance(x, bool) else np.dtype(np.int64) if isinstance(x, int) \
                else get_default_dtype() if isinstance(x, float) else np.dtype(np.complex64)
            tiers[2].append((_category(dt), dt))
        else:  # NumPy scalars and 0-d arrays count as 0-d tensors
            arr = x if hasattr(x, "dtype") and hasattr(x, "ndim") else np.asarray(x)
            tiers[0 if arr.ndim else 1].append((_category(arr.dtype), arr.dtype))
    top = builtins.max(c for tier in tiers for c, _ in tier)
    for tier in tiers:
        dts = [d for c, d in tier if c == top]
        if dts:
            return np.result_type(*dts)


def _xp_of(arr):
    """The array module of `arr` (CuPy for device arrays, else NumPy)."""
    if hasattr(arr, "__cuda_array_interface__"):
        import cupy
        return cupy
    return np


def _device_of(xs):
    """The first Tensor among `xs`; all Tensors must share its device (host backends mix freely)."""
    first = next((x for x in xs if isinstance(x, Tensor)), None)
    if first is None:
        raise TypeError(f"expected at least one gpunet.Tensor argument, got {[type(x).__name__ for x in xs]}")
    for x in xs:
        if not isinstance(x, Tensor) or x._backend is first._backend:
            continue
        if x.backend.on_gpu != first.backend.on_gpu or x.backend.on_gpu and x.backend is not first.backend:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two "
                               f"devices, {first.device} and {x.device}")
    return first


def _operands(*xs, dtype=None):
    """(Tensor or None, array in the common dtype) per operand, and the common dtype."""
    like = _device_of(xs)
    dtype = result_dtype(*xs) if dtype is None else dtype
    out = []
    for x in xs:
        if isinstance(x, Tensor):
            out.append((x, x._data if x.dtype == dtype else x._data.astype(dtype)))
        else:
            out.append((None, like.backend.asarray(x, dtype=dtype)))
    return out, dtype


def grad_spec(t):
    """What backward needs to know of input `t` (closures keep this, not the
    tensor, so the graph does not hold inputs it never reads): (shape, dtype)
    when t requires grad, else None."""
    return (t.shape, t.dtype) if isinstance(t, Tensor) and t.requires_grad else None


def _grad_for(spec, g):
    """`g` as the gradient of an input of grad_spec `spec`: summed to its shape, in its dtype (None if none)."""
    if spec is None:
        return None
    g = unbroadcast(g, spec[0])
    return g if g.dtype == spec[1] else g.astype(spec[1])


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


def _binary(name, a, b, forward, grad_a, grad_b, saves=True, save_out=False, dtype=None):
    """A broadcasting binary op; grad_a/grad_b(g, x, y, out) give the unreduced gradients.
    saves: backward reads the operands; save_out: it reads the output."""
    ((ta, x), (tb, y)), _ = _operands(a, b, dtype=dtype)
    out = forward(x, y)
    kept = (x if saves else None, y if saves else None, out if save_out else None)  # the graph holds no more
    sa, sb = grad_spec(ta), grad_spec(tb)

    def backward(g):
        return (_grad_for(sa, grad_a(g, *kept)) if sa else None, _grad_for(sb, grad_b(g, *kept)) if sb else None)
    saved = tuple(t for t in (ta, tb) if t is not None) if saves else ()
    return record(name, backward, (ta, tb), out, saved=saved, save_outputs=save_out)


def _unary(name, a: Tensor, forward, derivative, reads="x"):
    """An elementwise op; derivative(x, out) is d out / d x and reads the
    input ("x" in reads), the output ("o") or both."""
    out = forward(a._data)
    x, o = (a._data if "x" in reads else None), (out if "o" in reads else None)
    return record(name, lambda g: g * derivative(x, o), (a,), out, saved=(a,) if "x" in reads else (),
                  save_outputs="o" in reads)


def _float_input(name, a):
    """Elementwise math of an integer tensor runs in the default float dtype, as in PyTorch."""
    if not isinstance(a, Tensor):
        raise TypeError(f"{name}(): argument 'input' must be a Tensor, got {type(a).__name__}")
    return a if a.dtype.kind in "fc" else a.to(dtype=get_default_dtype())


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
    """True division (integers give the default float dtype)."""
    dtype = result_dtype(a, b)
    return _binary("Div", a, b, lambda x, y: x / y, lambda g, x, y, o: g / y, lambda g, x, y, o: -g * o / y,
                   save_out=True, dtype=dtype if dtype.kind in "fc" else get_default_dtype())


true_divide = div


def pow(a, b):  # noqa: A001 (torch.pow)
    xp = _device_of((a, b)).backend.xp

    def grad_base(g, x, y, o):  # PyTorch: zero where the exponent is 0 (0 ** -1 would be inf)
        return xp.where(y == 0, 0, g * y * x ** xp.where(y == 0, 1, y - 1))

    def grad_exp(g, x, y, o):   # PyTorch: zero where the base is 0 and the exponent >= 0
        mask = (x == 0) & (y >= 0)
        return xp.where(mask, 0, g * o * xp.log(xp.where(mask, 1, x)))
    return _binary("Pow", a, b, lambda x, y: x ** y, grad_base, grad_exp, save_out=True)


def neg(a: Tensor):
    return record("Neg", lambda g: -g, (a,), -a._data)


# ------------------------------------------------------------ elementwise functions
def exp(a: Tensor):
    a = _float_input("exp", a)
    return _unary("Exp", a, a.backend.xp.exp, lambda x, o: o, reads="o")


def log(a: Tensor):
    a = _float_input("log", a)
    return _unary("Log", a, a.backend.xp.log, lambda x, o: 1 / x)


def sqrt(a: Tensor):
    a = _float_input("sqrt", a)
    return _unary("Sqrt", a, a.backend.xp.sqrt, lambda x, o: 0.5 / o, reads="o")


def _activation(name, a, reads="x", **params):
    """The activations of gpunet.ops.activation (their array formulas)."""
    a = _float_input(name, a)
    xp, dt = a.backend.xp, a.dtype
    fwd, der = FORWARD[name], DERIVATIVE[name]
    return _unary(name.capitalize(), a, lambda x: fwd(xp, x, **params).astype(dt, copy=False),
                  lambda x, o: der(xp, x, o, **params).astype(dt, copy=False), reads=reads)


def tanh(a: Tensor):
    return _activation("tanh", a, reads="o")


def sigmoid(a: Tensor):
    return _activation("sigmoid", a, reads="o")


def relu(a: Tensor):
    if a.dtype.kind not in "fc":  # PyTorch keeps integer tensors integer here
        return Tensor(a.backend.xp.maximum(a._data, 0), a._backend)
    return _activation("relu", a)


def gelu(a: Tensor, approximate: str = "none"):
    """x Phi(x) with the exact erf, or PyTorch's tanh approximation (approximate='tanh')."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    return _activation("gelu", a, approximate=approximate)


def abs(a: Tensor):  # noqa: A001 (torch.abs)
    xp = a.backend.xp
    return _unary("Abs", a, xp.abs, lambda x, o: xp.sign(x))


def maximum(a, b):
    return _binary("Maximum", a, b, lambda x, y: _xp_of(x).maximum(x, y),
                   lambda g, x, y, o: g * ((x > y) + 0.5 * (x == y)), lambda g, x, y, o: g * ((y > x) + 0.5 * (x == y)))


def minimum(a, b):
    return _binary("Minimum", a, b, lambda x, y: _xp_of(x).minimum(x, y),
                   lambda g, x, y, o: g * ((x < y) + 0.5 * (x == y)), lambda g, x, y, o: g * ((y < x) + 0.5 * (x == y)))


def clamp(a: Tensor, min=None, max=None):  # noqa: A002 (torch's names)
    """min(max(a, min), max), bounds Tensors or scalars; the gradient goes to
    whichever of a, min, max the result is (a where min <= a <= max)."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    xs = [a] + [v for v in (min, max) if v is not None]
    ops, dtype = _operands(*xs, dtype=result_dtype(*[x for x in xs if isinstance(x, Tensor)] or [a]))
    xp = a.backend.xp
    x = ops[0][1]
    lo = ops[1][1] if min is not None else None
    hi = ops[-1][1] if max is not None else None
    low = x if lo is None else xp.maximum(x, lo)
    out = low if hi is None else xp.minimum(low, hi)
    take_x = xp.ones(out.shape, bool) if lo is None else x >= lo
    if hi is not None:
        take_x = take_x & (x <= hi)

    take_lo = None if lo is None else (x < lo) & ((hi is None) or (lo <= hi))
    take_hi = None if hi is None else low > hi
    specs = [grad_spec(t) for t, _ in ops]

    def backward(g):
        masks = [take_x] + [m for m in (take_lo, take_hi) if m is not None]
        return tuple(_grad_for(s, xp.where(m, g, 0)) for s, m in zip(specs, masks))
    return record("Clamp", backward, tuple(t for t, _ in ops), out)


clip = clamp


def where(condition, a=None, b=None):
    """a where condition else b (broadcast); where(condition) is condition.nonzero(as_tuple=True)."""
    cond = condition._data if isinstance(condition, Tensor) else condition
    if a is None and b is None:
        be = condition.backend if isinstance(condition, Tensor) else None
        return tuple(Tensor(i, be) for i in _xp_of(cond).nonzero(cond))
    if not isinstance(a, Tensor) and not isinstance(b, Tensor) and isinstance(condition, Tensor):
        a = Tensor(condition.backend.asarray(a, dtype=result_dtype(a, b)), condition._backend)  # two scalars
    ((ta, x), (tb, y)), _ = _operands(a, b)
    xp = _device_of((a, b)).backend.xp
    cond = xp.asarray(cond)
    if cond.dtype != bool:
        raise TypeError(f"where: condition must be a bool tensor, got {cond.dtype}")
    out = xp.where(cond, x, y)

    sa, sb = grad_spec(ta), grad_spec(tb)

    def backward(g):
        return _grad_for(sa, xp.where(cond, g, 0)), _grad_for(sb, xp.where(cond, 0, g))
    return record("Where", backward, (ta, tb), out)


# ------------------------------------------------------------ comparisons (not differentiable)
_COMPARABLE = (Tensor, bool, int, float, complex, np.ndarray, np.generic, list, tuple)


def _compare(fn):
    def op(a, b):
        if not isinstance(b, _COMPARABLE) and not hasattr(b, "__cuda_array_interface__"):
            return NotImplemented  # x == None, x == "name": Python's identity comparison
        ((_, x), (_, y)), _ = _operands(a, b)
        return Tensor(_xp_of(x).asarray(fn(x, y)), _device_of((a, b))._backend)
    return op


eq = _compare(lambda x, y: x == y)
ne = _compare(lambda x, y: x != y)
lt = _compare(lambda x, y: x < y)
le = _compare(lambda x, y: x <= y)
gt = _compare(lambda x, y: x > y)
ge = _compare(lambda x, y: x >= y)


# ------------------------------------------------------------ reductions
def _dims(dim, ndim):
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -builtins.max(ndim, 1) <= d < builtins.max(ndim, 1):
            raise IndexError(f"dim: {d} is out of range for a tensor of {ndim} dimensions")
    return tuple(d % ndim if ndim else 0 for d in dims) if ndim else ()


def _keep(g, axes, shape, keepdim):
    """A reduced gradient reshaped to broadcast against the input `shape`."""
    return g if keepdim else g.reshape([1 if i in axes else n for i, n in enumerate(shape)])


def sum(a: Tensor, dim=None, keepdim: bool = False, *, dtype=None):  # noqa: A001 (torch.sum)
    axes = _dims(dim, a.ndim)
    out = a._data.sum(axis=axes, keepdims=keepdim, dtype=dtype)
    shape, src = a.shape, a.dtype
    xp = a.backend.xp
    return record("Sum", lambda g: xp.broadcast_to(_keep(g, axes, shape, keepdim).astype(src, copy=False), shape),
                  (a,), xp.asarray(out))


def mean(a: Tensor, dim=None, keepdim: bool = False, *, dtype=None):
    if (dtype or a.dtype).kind not in "fc":
        raise RuntimeError(f"mean(): could not infer output dtype: input dtype must be floating point, got {a.dtype}")
    count = int(np.prod([a.shape[d] for d in _dims(dim, a.ndim)]))
    return div(sum(a, dim, keepdim, dtype=dtype), count)


def _extreme(name, a: Tensor, dim, keepdim, other):
    """max/min: of all elements (0-d), along `dim` ((values, indices)), or elementwise with `other`."""
    if isinstance(other, Tensor) or dim is not None and not isinstance(dim, (int, np.integer)):
        return (maximum if name == "Max" else minimum)(a, dim if other is None else other)
    xp = a.backend.xp
    x = a._data
    if x.size == 0:
        raise RuntimeError(f"{name.lower()}(): expected a non-empty tensor")
    if dim is None:
        out = xp.asarray(x.max() if name == "Max" else x.min())

        def backward(g):  # shared evenly among ties, as PyTorch's full reductions do
            ties = x == out
            return g * ties / ties.sum()
        return record(name, backward, (a,), out, saved=(a,))
    dims = _dims(int(dim), a.ndim)
    if not dims:  # a 0-d tensor: itself, at index 0
        res = record(name, lambda gv, gi: gv, (a,), (x.copy(), xp.zeros((), np.int64)))
        return (_ret_max if name == "Max" else _ret_min)(*res)
    axis, shape = dims[0], a.shape
    idx = (x.argmax if name == "Max" else x.argmin)(axis=axis, keepdims=True)
    values = xp.take_along_axis(x, idx, axis=axis)

    hot = xp.arange(shape[axis]).reshape([-1 if i == axis else 1 for i in range(a.ndim)]) == idx

    def backward(gv, gi):  # all to the returned index
        return xp.where(hot, _keep(gv, dims, shape, keepdim), 0).astype(gv.dtype, copy=False)
    if not keepdim:
        values, idx = values.squeeze(axis), idx.squeeze(axis)
    res = record(name, backward, (a,), (values, idx.astype(np.int64)))
    return (_ret_max if name == "Max" else _ret_min)(*res)


def max(a: Tensor, dim=None, keepdim: bool = False, *, other=None):  # noqa: A001 (torch.max)
    return _extreme("Max", a, dim, keepdim, other)


def min(a: Tensor, dim=None, keepdim: bool = False, *, other=None):  # noqa: A001 (torch.min)
    return _extreme("Min", a, dim, keepdim, other)


def _arg(fn_name):
    def arg(a: Tensor, dim=None, keepdim: bool = False):
        x = a._data
        if dim is None:
            out = getattr(x.reshape(-1), fn_name)()
            return Tensor(a.backend.xp.asarray(out, dtype=np.int64).reshape((1,) * a.ndim if keepdim else ()),
                          a._backend)
        (axis,) = _dims(dim, a.ndim)
        out = getattr(x, fn_name)(axis=axis if a.ndim else None, keepdims=keepdim)
        return Tensor(a.backend.xp.asarray(out, dtype=np.int64), a._backend)
    arg.__name__ = fn_name
    return arg


argmax = _arg("argmax")
argmin = _arg("argmin")


def _correction(name, dim, unbiased, correction):
    """(dim, correction) from PyTorch's two signatures: (dim, unbiased, keepdim) and (dim, *, correction)."""
    if isinstance(dim, bool):  # var(x, False): the legacy positional `unbiased`
        dim, unbiased = None, dim
    if unbiased is not None and correction is not None:
        raise ValueError(f"{name}: give either unbiased or correction, not both")
    return dim, (1 if unbiased is None else int(bool(unbiased))) if correction is None else correction


def _moments(a, dim, keepdim, correction):
    """(axes, x - mean, var, n - correction) of float tensor `a`."""
    if a.dtype.kind not in "fc":
        raise RuntimeError(f"var/std: input dtype must be floating point, got {a.dtype}")
    axes = _dims(dim, a.ndim)
    x = a._data
    d = x - x.mean(axis=axes, keepdims=True)
    dof = builtins.max(0, int(np.prod([a.shape[i] for i in axes])) - correction)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (d * d).sum(axis=axes, keepdims=keepdim) / dof
    return axes, d, a.backend.xp.asarray(v, dtype=a.dtype), dof


def var(a: Tensor, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
    dim, correction = _correction("var", dim, unbiased, correction)
    axes, d, out, dof = _moments(a, dim, keepdim, correction)
    scale, shape = (2 / dof if dof else float("inf")), a.shape
    return record("Var", lambda g: _keep(g, axes, shape, keepdim) * scale * d, (a,), out)


def std(a: Tensor, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
    dim, correction = _correction("std", dim, unbiased, correction)
    axes, d, v, dof = _moments(a, dim, keepdim, correction)
    xp, shape = a.backend.xp, a.shape
    out = xp.sqrt(v)
    s = _keep(out, axes, shape, keepdim)

    def backward(g):  # zero where std is 0 (all equal), as PyTorch
        return xp.where(s == 0, 0, _keep(g, axes, shape, keepdim) * d / (dof * xp.where(s == 0, 1, s)))
    return record("Std", backward, (a,), out)


# ------------------------------------------------------------ linear algebra
def matmul(a, b):
    """a @ b with NumPy's rules: 1-d operands promoted and demoted, batch dimensions broadcast."""
    ((ta, x), (tb, y)), _ = _operands(a, b)
    xp = _device_of((a, b)).backend.xp
    out = xp.matmul(x, y)
    sa, sb = grad_spec(ta), grad_spec(tb)

    def backward(g):
        x2 = x[None, :] if x.ndim == 1 else x
        y2 = y[:, None] if y.ndim == 1 else y
        g2 = g  # g with the dimensions of the demoted 1-d operands back (y's first: vec @ vec is 0-d)
        if y.ndim == 1:
            g2 = xp.expand_dims(g2, -1)
        if x.ndim == 1:
            g2 = xp.expand_dims(g2, -2)
        ga = gb = None
        if sa:
            ga = _grad_for(sa, unbroadcast(xp.matmul(g2, xp.swapaxes(y2, -1, -2)), x2.shape).reshape(x.shape))
        if sb:
            gb = _grad_for(sb, unbroadcast(xp.matmul(xp.swapaxes(x2, -1, -2), g2), y2.shape).reshape(y.shape))
        return ga, gb
    return record("MatMul", backward, (ta, tb), out, saved=tuple(t for t in (ta, tb) if t is not None))


# ------------------------------------------------------------ in-place operations
def inplace(t: Tensor, fn, *args):
    """Write `fn(t, *args)` (an out-of-place op) into t's storage, bump its
    version and, when a gradient flows, make its node t's grad_fn."""
    if not isinstance(t, Tensor):
        raise TypeError(f"expected a gpunet.Tensor, got {type(t).__name__}")
    grad = engine.needs_grad((t,) + args)
    if grad and t.is_leaf and t.requires_grad:
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
    if grad and is_view(t):
        raise RuntimeError("an in-place operation on a view is not supported when a gradient flows through it "
                           "(it would have to rebase the base tensor's history); clone() the view first")
    src = t
    if grad:  # the op reads a snapshot with t's history: t's storage is overwritten below
        src = Tensor(t._data.copy(), t._backend)
        src.grad_fn, src._slot, src._requires_grad = t.grad_fn, t._slot, t._requires_grad
    res = fn(src, *args)
    if not np.can_cast(res.dtype, t.dtype, "same_kind"):
        raise RuntimeError(f"result type {res.dtype} can't be cast to the desired output type {t.dtype}")
    t._data[...] = res._data
    t._vc[0] += 1
    if res.grad_fn is not None:
        t.grad_fn, t._slot = res.grad_fn, res._slot
    return t


def _filled(s: Tensor, value):
    """`value` (a scalar or a Tensor, differentiable) broadcast to s's shape and dtype."""
    if isinstance(value, Tensor):
        if value.numel() != 1 and value.shape != s.shape:
            return expand(value.to(s.backend, s.dtype), s.shape)
        return expand(value.to(s.backend, s.dtype).reshape(()), s.shape)
    return Tensor(s.backend.xp.full(s.shape, value, dtype=s.dtype), s._backend)


def _copy_from(s: Tensor, src):
    src = src if isinstance(src, Tensor) else Tensor(s.backend.asarray(src), s._backend)
    return expand(src.to(s.backend, s.dtype), s.shape)


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
    T.__abs__ = abs
    for name, fn in (("eq", eq), ("ne", ne), ("lt", lt), ("le", le), ("gt", gt), ("ge", ge)):
        setattr(T, f"__{name}__", fn)
        setattr(T, name, fn)
    for fn in (add, sub, mul, div, pow, neg, exp, log, sqrt, tanh, sigmoid, relu, abs, clamp, clip, maximum,
               minimum, sum, mean, max, min, var, std, argmax, argmin, matmul):
        setattr(T, fn.__name__, fn)
    T.true_divide = div
    T.add_ = lambda s, o, alpha=1: inplace(s, add, o, alpha)
    T.sub_ = lambda s, o, alpha=1: inplace(s, sub, o, alpha)
    T.mul_ = lambda s, o: inplace(s, mul, o)
    T.div_ = lambda s, o: inplace(s, div, o)
    T.clamp_ = lambda s, min=None, max=None: inplace(s, clamp, min, max)
    T.fill_ = lambda s, value: inplace(s, _filled, value)
    T.zero_ = lambda s: inplace(s, _filled, 0)
    T.copy_ = lambda s, src: inplace(s, _copy_from, src)
    T.__iadd__, T.__isub__, T.__imul__, T.__itruediv__ = T.add_, T.sub_, T.mul_, T.div_


_register()
# last: shape.py imports the helpers above; importing it registers its Tensor methods
from .shape import expand, is_view  # noqa: E402
