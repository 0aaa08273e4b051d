"""Modules called on Tensors. A module whose every submodule has an explicit
backward records one node: its forward runs on the arrays, and the node's
backward is the module's own `backward(..., output=y)`, so the kernels
compute the gradients and accumulate the parameters' `.grad` as in the
explicit style. A module without its own backward (a user's Module written
with Tensor operations) just runs its forward on the Tensors, and the
operations and submodules inside record their nodes."""
from __future__ import annotations

from .grad_mode import is_grad_enabled, no_grad
from .tensor import Tensor, record


def has_tensor(args, kwargs) -> bool:
    for a in args:  # a loop, not any() over a generator: every module call asks (1 us of a 10 us call)
        if isinstance(a, Tensor) or isinstance(a, (tuple, list)) and _leaves(a, _is_tensor):
            return True
    return bool(kwargs) and any(_leaves(a, _is_tensor) for a in kwargs.values())


def _is_tensor(x) -> bool:
    return isinstance(x, Tensor)


def _leaves(tree, pred):
    if isinstance(tree, (tuple, list)):
        return any(_leaves(t, pred) for t in tree)
    return pred(tree)


def _map(tree, fn):
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return tuple(_map(t, fn) for t in tree)
    if isinstance(tree, list):
        return [_map(t, fn) for t in tree]
    return fn(tree)


def _flat(tree, out):
    """The leaves of a nest of tuples/lists, in order (None kept)."""
    if isinstance(tree, (tuple, list)):
        for t in tree:
            _flat(t, out)
    else:
        out.append(tree)
    return out


def _fill(tree, it):
    """`tree`'s structure with its array leaves replaced from `it` in order."""
    if isinstance(tree, (tuple, list)):
        items = [_fill(t, it) for t in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return next(it) if _is_array(tree) else tree


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, Tensor)


def explicit(module) -> bool:
    """Whether every module in the subtree defines its own backward."""
    from ..nn.module import Module
    if not module._modules:  # a leaf (most calls): no traversal
        return type(module).backward is not Module.backward
    return all(type(m).backward is not Module.backward for m in module.modules())


def call(module, args, kwargs, weights=None):
    """`module(*args, **kwargs)` with Tensors among the arguments. `weights`
    (name -> Tensor, for the functional forms): Tensors that become the
    module's parameters for this call, sharing their storage; their
    gradients come back through the node instead of staying in `.grad`."""
    from ..nn.module import Parameter
    if not explicit(module):
        return module.forward(*args, **kwargs)
    be = module.backend
    inputs = [x for x in _flat(list(args) + list(kwargs.values()), []) if isinstance(x, Tensor) or _is_array(x)]
    unwrap = lambda x: x._data if isinstance(x, Tensor) else x  # noqa: E731
    a_args, a_kwargs = _map(args, unwrap), {k: _map(v, unwrap) for k, v in kwargs.items()}
    weights = {k: w for k, w in (weights or {}).items() if w is not None}
    for name, w in weights.items():
        setattr(module, name, Parameter(w._data, requires_grad=w.requires_grad))
    params = module._params.values() if not module._modules else module.parameters()  # a leaf: its own
    params_need = not weights and any(p is not None and p.requires_grad for p in params)
    wanted = is_grad_enabled() and (params_need or any(isinstance(x, Tensor) and x.requires_grad
                                                       for x in inputs + list(weights.values())))
    if not wanted:
        with no_grad():
            out = module.forward(*a_args, **a_kwargs)
    else:
        out = module.forward(*a_args, **a_kwargs)
    outs = tuple(o for o in _flat(out, []) if _is_array(o))

    def backward(*grads):
        # no input that needs a gradient (data going into the first layer): the module may skip them, as PyTorch does
        grad_in = module.backward(*_fill(out, iter(grads)) if isinstance(out, tuple) else grads, output=outs[0],
                                  input_grad=any(isinstance(x, Tensor) and x.requires_grad for x in inputs))
        flat = _flat(grad_in, []) if isinstance(grad_in, (tuple, list)) else [grad_in]
        flat = (flat + [None] * len(inputs))[:len(inputs)]
        for name in weights:
            p = module._params[name]
            flat.append(p.grad)
            p.grad = None
        return tuple(flat)
    tensors = record(type(module).__name__, backward, tuple(inputs) + tuple(weights.values()), outs, backend=be,
                     force=params_need)
    tensors = tensors if isinstance(tensors, tuple) else (tensors,)
    if tensors[0].grad_fn is not None:
        tensors[0].grad_fn.optional = True
    return _fill(out, iter(tensors))
