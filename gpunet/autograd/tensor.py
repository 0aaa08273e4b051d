"""gpunet.Tensor: a backend array (NumPy on cpu and sim, CuPy on cuda and
cupy) that records the operations applied to it, so that `loss.backward()`
computes the gradient of every leaf that requires one, as in PyTorch.

The operations themselves live in gpunet/autograd/ops.py (elementwise,
reductions, matmul), gpunet/autograd/shape.py (shapes, indexing, joining,
factories) and gpunet/nn/functional.py (the kernel-backed ops); each computes
its result with the backend's array module or kernels and records one node
through `record`.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..backend import Backend, backend_of, default_backend, get_backend, to_numpy
from .grad_mode import is_grad_enabled
from . import engine


class Tensor:
    """An array with autograd. Make one with `gpunet.tensor(data, dtype=,
    device=, requires_grad=)`; PyTorch's attribute names throughout."""

    __slots__ = ("_data", "_backend", "_requires_grad", "_grad", "_grad_view", "grad_fn", "_slot", "_vc",
                 "__weakref__")
    __array_ufunc__ = None  # numpy_array + tensor goes to Tensor.__radd__

    def __init__(self, data, backend: Backend | None = None, requires_grad: bool = False, vc=None):
        self._data = data
        self._backend = backend
        self._grad = None          # the accumulated gradient, a backend array
        self._grad_view = None     # the Tensor that .grad returns, kept so that x.grad is x.grad
        self.grad_fn = None
        self._slot = 0             # which output of grad_fn this is
        self._vc = vc if vc is not None else [0]  # version counter, shared by views of one storage
        self._requires_grad = False
        if requires_grad:
            self.requires_grad = True

    # ------------------------------------------------------------ what it is
    @property
    def backend(self) -> Backend:
        return self._backend if self._backend is not None else backend_of(self._data)

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def shape(self) -> tuple:
        return tuple(self._data.shape)

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def dim(self) -> int:
        return self._data.ndim

    def size(self, dim=None):
        if dim is None:
            return self.shape
        return self.shape[dim]

    def numel(self) -> int:
        return int(self._data.size)

    def element_size(self) -> int:
        return self._data.dtype.itemsize

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def is_cuda(self) -> bool:
        return self.backend.on_gpu

    @property
    def _version(self) -> int:
        return self._vc[0]

    # ------------------------------------------------------------ autograd state
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad or self.grad_fn is not None

    @requires_grad.setter
    def requires_grad(self, flag):
        if self.grad_fn is not None:
            if flag:
                return
            raise RuntimeError("you can only change requires_grad flags of leaf variables; use .detach() "
                               "to get a tensor that does not require grad")
        if flag and not (dtypes.is_floating(self._data.dtype) or self._data.dtype.kind == "c"):
            raise RuntimeError(f"only Tensors of floating point dtype can require gradients, got {self.dtype}")
        self._requires_grad = bool(flag)

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        self.requires_grad = requires_grad
        return self

    @property
    def grad(self):
        """The accumulated gradient, a Tensor (None until a backward reaches this leaf)."""
        g = self._grad
        if g is None:
            return None
        if self._grad_view is None or self._grad_view._data is not g:
            self._grad_view = Tensor(g, self._backend)
        return self._grad_view

    @grad.setter
    def grad(self, value):
        if value is None:
            self._grad = None
            return
        arr = value._data if isinstance(value, Tensor) else value
        if tuple(arr.shape) != self.shape:
            raise RuntimeError(f"grad: expected shape {list(self.shape)}, got {list(arr.shape)}")
        self._grad = arr

    def _accumulate(self, g):
        """Add a gradient the engine computed (never kept by reference: one
        array may be handed to several tensors)."""
        if not self.requires_grad:  # (a non-leaf that called retain_grad() requires grad through its grad_fn)
            return
        if self._grad is None:  # (an array even when NumPy handed a 0-d result over as a scalar)
            self._grad = self.backend.xp.array(g, dtype=self._data.dtype, copy=True)
        else:
            self._grad += g

    def retain_grad(self):
        """Keep this non-leaf tensor's gradient in .grad after backward."""
        if not self.requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        if self.grad_fn is not None:
            engine.retain(self)

    @property
    def retains_grad(self) -> bool:
        node = self.grad_fn
        return bool(node is not None and node.retained and self._slot in node.retained)

    def backward(self, gradient=None, retain_graph=None, create_graph: bool = False, inputs=None):
        """Accumulate d(self)/d(leaf) into every leaf's .grad; `gradient` is
        required unless self holds one element."""
        backward(self, gradient, retain_graph, create_graph, inputs)

    def detach(self) -> "Tensor":
        """The same storage, out of the graph."""
        return Tensor(self._data, self._backend, vc=self._vc)

    def detach_(self) -> "Tensor":
        self.grad_fn = None
        self._requires_grad = False
        return self

    @property
    def data(self) -> "Tensor":
        return self.detach()

    @data.setter
    def data(self, value):
        self._data = value._data if isinstance(value, Tensor) else value

    # ------------------------------------------------------------ to host values
    def item(self):
        if self._data.size != 1:
            raise RuntimeError(f"a Tensor with {self._data.size} elements cannot be converted to Scalar")
        return to_numpy(self._data).reshape(()).item()

    def tolist(self):
        return to_numpy(self._data).tolist()

    def numpy(self, force: bool = False) -> np.ndarray:
        if self.requires_grad and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")
        if self.backend.on_gpu and not force:
            raise TypeError(f"can't convert a {self.device} tensor to numpy; use .cpu() to copy it to the host first")
        return to_numpy(self._data)

    def __array__(self, dtype=None, copy=None):
        if self.backend.on_gpu:
            raise TypeError(f"can't convert a {self.device} tensor to numpy; use .cpu() to copy it to the host first")
        return self._data if dtype is None else self._data.astype(dtype)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self._data.dtype.kind not in "iub":
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __bool__(self):
        if self._data.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with {self._data.size} elements is ambiguous")
        return bool(self.item())

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    __hash__ = object.__hash__

    def __repr__(self):
        body = np.array2string(to_numpy(self._data), separator=", ", prefix="tensor(")
        extra = []
        if self.device != "cpu":
            extra.append(f"device='{self.device}'")
        if self.dtype not in (np.float32, np.int64, np.bool_):
            extra.append(f"dtype={self.dtype}")
        if self.grad_fn is not None:
            extra.append(f"grad_fn={self.grad_fn!r}")
        elif self._requires_grad:
            extra.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extra) + ")"

    # ------------------------------------------------------------ device and dtype
    def to(self, *args, **kwargs) -> "Tensor":
        """`to(device)`, `to(dtype)`, `to(device, dtype)`, `to(other)`; differentiable."""
        device, dtype = _to_args(args, kwargs)
        be = self.backend if device is None else get_backend(device)
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        if be is self.backend and dtype == self.dtype and not kwargs.get("copy", False):
            return self
        return convert(self, be, dtype)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self, device=None) -> "Tensor":
        return self.to("cuda" if device is None else f"cuda:{int(device)}")

    def type(self, dtype=None):
        if dtype is None:
            return f"gpunet.{self.dtype}"
        return self.to(dtype=dtype)

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def long(self):
        return self.to(dtype=np.int64)

    def int(self):
        return self.to(dtype=np.int32)

    def bool(self):
        return self.to(dtype=np.bool_)


def _to_args(args, kwargs):
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    for a in args:
        if isinstance(a, Tensor):
            device, dtype = a.backend, a.dtype
        elif isinstance(a, (str, Backend)):
            device = a
        elif a is not None:
            dtype = a
    return device, dtype


def convert(t: Tensor, be: Backend, dtype) -> Tensor:
    """`t` on backend `be` in `dtype` (a copy); the gradient goes back the other way."""
    src_be, src_dtype = t.backend, t.dtype
    out = be.asarray(to_numpy(t._data) if be.on_gpu != src_be.on_gpu else t._data, dtype=dtype)
    if out is t._data:
        out = out.copy()

    def backward(g):
        if not dtypes.is_floating(src_dtype):
            return None
        return src_be.asarray(to_numpy(g) if be.on_gpu != src_be.on_gpu else g, dtype=src_dtype)
    return record("To", backward, (t,), out, backend=be)


# ------------------------------------------------------------ recording
def record(name, backward_fn, inputs, outputs, saved=(), save_outputs=False, backend=None, force=False):
    """The Tensor(s) wrapping `outputs` (an array or a tuple of arrays), and
    when a gradient can flow (grad mode on, an input requiring grad) the node
    whose `backward_fn(*output grads)` returns one gradient (or None) per
    entry of `inputs`. `saved`: the input Tensors whose values backward reads;
    `save_outputs`: backward reads the outputs too (both checked against
    in-place changes); `force`: record even when no input requires grad (a
    module whose parameters do), as long as grad mode is on."""
    single = not isinstance(outputs, tuple)
    outs = (outputs,) if single else outputs
    if backend is None:
        backend = next((t._backend for t in inputs if isinstance(t, Tensor)), None)
    xp = backend.xp if backend is not None else np
    # NumPy turns 0-d results into scalars; a Tensor always holds an array
    tensors = tuple(Tensor(o if isinstance(o, np.ndarray) or hasattr(o, "__cuda_array_interface__")
                           else xp.asarray(o), backend) for o in outs)
    outs = tuple(t._data for t in tensors)
    if engine.needs_grad(inputs) or (force and is_grad_enabled()):
        node = engine.make_node(name, backward_fn, inputs, outs, saved)
        for i, t in enumerate(tensors):
            if dtypes.is_floating(t._data.dtype) or t._data.dtype.kind == "c":
                t.grad_fn, t._slot = node, i
        if save_outputs:
            node.saved += tuple((t._vc, t._vc[0], t) for t in tensors)
    return tensors[0] if single else tensors


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph: bool = False, inputs=None):
    """gpunet.autograd.backward: the sum of the gradients of `tensors`
    (weighted by `grad_tensors`) into every leaf that requires grad."""
    if create_graph:
        raise NotImplementedError("create_graph=True (higher-order gradients) is not supported")
    if inputs is not None:
        raise NotImplementedError("inputs= (restricting which leaves get gradients) is not supported")
    tensors = (tensors,) if isinstance(tensors, Tensor) else tuple(tensors)
    if grad_tensors is None or isinstance(grad_tensors, (Tensor, np.ndarray)) or hasattr(grad_tensors, "__cuda_array_interface__"):
        grad_tensors = (grad_tensors,) * len(tensors) if grad_tensors is None else (grad_tensors,)
    grads = []
    for i, (t, g) in enumerate(zip(tensors, grad_tensors)):
        if not isinstance(t, Tensor):
            raise TypeError(f"tensors[{i}]: expected a gpunet.Tensor, got {type(t).__name__}")
        if not t.requires_grad:
            raise RuntimeError(f"element {i} of tensors does not require grad and does not have a grad_fn")
        if g is None:
            if t.numel() != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs (got shape "
                                   f"{list(t.shape)}); pass gradient= of the tensor's shape")
            grads.append(t.backend.xp.ones(t.shape, t.dtype))
            continue
        arr = g._data if isinstance(g, Tensor) else t.backend.asarray(g, dtype=t.dtype)
        if tuple(arr.shape) != t.shape:
            raise RuntimeError(f"gradient: expected shape {list(t.shape)} (the tensor's), got {list(arr.shape)}")
        grads.append(arr)
    engine.run_backward(tensors, grads, bool(retain_graph))


# ------------------------------------------------------------ making tensors
def _infer_dtype(data):
    """PyTorch's defaults: Python floats -> the default float dtype, ints -> int64, bools -> bool."""
    from ..nn.module import get_default_dtype
    arr = np.asarray(data)
    if arr.dtype.kind == "f" and not isinstance(data, np.ndarray):
        return get_default_dtype()
    if arr.dtype.kind in "iu" and not isinstance(data, np.ndarray):
        return np.dtype(np.int64)
    return arr.dtype


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A new leaf Tensor holding a copy of `data` (nested lists, scalars,
    NumPy or CuPy arrays, another Tensor)."""
    if isinstance(data, Tensor):
        data = data._data
    if device is None:  # CuPy data stays on its GPU; anything else goes to the default device
        be = backend_of(data) if hasattr(data, "__cuda_array_interface__") else default_backend()
    else:
        be = device if isinstance(device, Backend) else get_backend(device)
    if dtype is None:
        dtype = data.dtype if hasattr(data, "dtype") else _infer_dtype(data)
    arr = be.asarray(data, dtype=dtype)
    if arr is data:
        arr = arr.copy()
    return Tensor(arr, be, requires_grad=requires_grad)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like `tensor` but sharing `data`'s memory when it already has the dtype and device."""
    if isinstance(data, Tensor) and (dtype is None or data.dtype == np.dtype(dtype)) \
            and (device is None or get_backend(device) is data.backend):
        return data
    be = default_backend() if device is None else get_backend(device)
    if isinstance(data, np.ndarray) and (dtype is None or data.dtype == np.dtype(dtype)) and not be.on_gpu:
        return Tensor(data, be)
    return tensor(data, dtype=dtype, device=device)


def from_numpy(array: np.ndarray) -> Tensor:
    """A Tensor sharing `array`'s memory (cpu)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array: expected a numpy.ndarray, got {type(array).__name__}")
    return Tensor(array, get_backend("cpu"))

