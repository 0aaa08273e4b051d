"""Forward calls and the saved state of each: how `module.backward(dy)` finds
the forward it differentiates.

Every forward of a module with gradients enabled is one `Call`: the module,
what its forward saved (`Module.save`), the calls of its submodules in the
order they ran, and the calls that produced its array inputs. The arrays a
forward returns are fresh views registered to their call, so a call lives as
long as one of its outputs, or a later call that consumed one, is alive
(PyTorch's rule: a graph lives while its output does). Forwards that are
never differentiated cost nothing once their outputs are dropped, and a
backward frees its call's saved state.

`backward(dy)` picks its call by identity, never by order:
  1. the call whose output the caller names (`backward(dy, output=y)`);
  2. inside a parent's backward, a pending call of this module made inside
     the parent's forward: the one that produced the input `dy` belongs to
     when known, else the latest (a module used twice unwinds in reverse);
  3. the call `dy` belongs to: a backward (a loss's included) tags each input
     gradient it returns with the call that produced that input;
  4. the one pending top-level call of the module.
Anything else (several pending forwards and nothing to tell them apart, no
pending forward at all, backward twice) raises an error naming the module,
the cause and the way out. Grad mode and the running calls are per thread.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from ..autograd.grad_mode import enable_grad, is_grad_enabled, no_grad  # noqa: F401 (re-exported)

PENDING, DONE = "pending", "done"


class _ThreadState(threading.local):
    def __init__(self):
        self.forwards: list[Call] = []   # calls whose forward is running, innermost last
        self.backwards: list[Call] = []  # calls whose backward is running, innermost last


_tls = _ThreadState()
# id(output view) -> (call, weakref to the view). The weakref's callback drops
# the entry when the view dies, before its id can be reused.
_outputs: dict[int, tuple] = {}
# id(gradient view) -> (call that produced the matching input, weakref to the view)
_grads: dict[int, tuple] = {}


class Call:
    """One forward call of one module and what its backward needs."""

    __slots__ = ("module", "ctx", "children", "inputs", "state", "epoch", "input_grad", "__weakref__")

    def __init__(self, module, inputs):
        self.module = module
        self.ctx = None
        self.children: list[Call] = []
        self.inputs = inputs  # the producing Call (or None) per array input, nested like the arguments
        self.state = PENDING
        self.epoch = module._epoch
        self.input_grad = True  # whether the caller of its backward wants the input gradients

    def release(self):
        self.state = DONE
        self.ctx = None
        self.children = []
        self.inputs = None


# ------------------------------------------------------------ arrays
def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or hasattr(type(x), "__cuda_array_interface__")


def _map(tree, fn):
    """`fn` applied to each array of a nest of tuples/lists (others pass through)."""
    if _is_array(tree):
        return fn(tree)
    if isinstance(tree, tuple):
        items = [_map(t, fn) for t in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    if isinstance(tree, list):
        return [_map(t, fn) for t in tree]
    return tree


def _register(table: dict, x, call):
    """A fresh view of `x` registered to `call` in `table` while it lives."""
    v = x.view()
    key = id(v)
    table[key] = (call, weakref.ref(v, lambda _, key=key: table.pop(key, None)))
    return v


def _producer(table: dict, x):
    entry = table.get(id(x))
    return None if entry is None else entry[0]


def _inputs(args, kwargs):
    """The producing call of every array argument, nested like the arguments."""
    if len(args) == 1 and not kwargs and type(args[0]) is np.ndarray:  # most calls: one host array
        entry = _outputs.get(id(args[0]))
        return (None if entry is None else entry[0],)

    def node(a):
        if _is_array(a):
            return _producer(_outputs, a)
        if isinstance(a, (tuple, list)):
            return tuple(node(t) for t in a)
        return None
    return tuple(node(a) for a in args) + tuple(node(a) for a in kwargs.values())


# ------------------------------------------------------------ forward
def run_forward(module, fn, args, kwargs):
    """Run `fn` (a module's own forward) as one call of `module`."""
    forwards = _tls.forwards
    if forwards and forwards[-1].module is module:
        return fn(module, *args, **kwargs)  # super().forward() inside the same call
    if not is_grad_enabled():
        module.__dict__["_last_no_grad"] = True
        return fn(module, *args, **kwargs)
    call = Call(module, _inputs(args, kwargs))
    forwards.append(call)
    try:
        out = fn(module, *args, **kwargs)
    finally:
        forwards.pop()
    module.__dict__["_last_no_grad"] = False
    if forwards:
        forwards[-1].children.append(call)
    else:
        module._calls.add(call)
        module.__dict__["_latest"] = call
    if type(out) is np.ndarray:  # most calls: one host array
        return _register(_outputs, out, call)
    return _map(out, lambda y: _register(_outputs, y, call))


def current_forward(module):
    """The call whose forward `module` is running (for Module.save)."""
    forwards = _tls.forwards
    if not forwards or forwards[-1].module is not module:
        raise RuntimeError(f"{type(module).__name__}.save() called outside its own forward")
    return forwards[-1]


def current_backward(module):
    """The call whose backward `module` is running (for Module.saved)."""
    backwards = _tls.backwards
    if not backwards or backwards[-1].module is not module:
        raise RuntimeError(f"{type(module).__name__}.saved() called outside its own backward")
    return backwards[-1]


# ------------------------------------------------------------ backward
def run_backward(module, fn, args, kwargs):
    """Run `fn` (a module's own backward) for the forward call that `args`
    differentiate (see the module docstring), then free that call's state."""
    backwards = _tls.backwards
    if backwards and backwards[-1].module is module:
        return fn(module, *args, **kwargs)  # super().backward() inside the same call
    output = kwargs.pop("output", None)
    input_grad = kwargs.pop("input_grad", True)
    if not isinstance(input_grad, bool):
        raise TypeError(f"{_name(module)}.backward: input_grad: expected a bool, got {type(input_grad).__name__}")
    call = _find(module, args[0] if args else None, output)
    call.input_grad = input_grad
    backwards.append(call)
    try:
        grads = fn(module, *args, **kwargs)
    finally:
        backwards.pop()
    inputs = call.inputs
    call.release()
    if not input_grad:  # whatever the module computed: PyTorch's None for an input that needs no gradient
        return None
    return _tag(grads, inputs[0] if _is_array(grads) else inputs)


def _tag(grads, node):
    """Input gradients as fresh views tagged with the call that produced each
    input, so the producer's backward finds its own call."""
    if _is_array(grads):
        return _register(_grads, grads, node) if isinstance(node, Call) else grads
    if isinstance(grads, (tuple, list)) and isinstance(node, tuple):
        items = [_tag(g, n) for g, n in zip(grads, node)] + list(grads[len(node):])
        return type(grads)(items)
    return grads


def _name(module) -> str:
    return type(module).__name__


def _find(module, dy, output):
    if output is not None:
        return _named(module, output)
    backwards = _tls.backwards
    if backwards:
        return _child(module, backwards[-1], dy)
    tagged = _producer(_grads, dy) if _is_array(dy) else None
    if tagged is not None and tagged.module is module:
        _check_usable(module, tagged)
        return tagged
    pending = [c for c in list(module._calls) if c.state == PENDING]
    if len(pending) == 1:
        _check_usable(module, pending[0])
        return pending[0]
    if pending:
        raise RuntimeError(
            f"{_name(module)}.backward: {len(pending)} forwards of this module are waiting for a backward and "
            "nothing tells which one this gradient differentiates; name its output: "
            f"{_name(module)}.backward(grad, output=y), y being what that forward returned (gradients from a "
            "loss's backward, or from the next module's backward, find their forward by themselves)")
    raise RuntimeError(f"{_name(module)}.backward: no forward to differentiate: {_why_none(module)}")


def _why_none(module) -> str:
    if module.__dict__.get("_last_no_grad"):
        return "its last forward ran under gpunet.no_grad(), which saves nothing for backward"
    if any(c.state == DONE for c in list(module._calls)):
        return ("backward already ran for its last forward and freed what that forward saved; "
                "run the forward again")
    return ("no forward with gradients enabled is pending: none ran, the module was moved with .to(), "
            "or the forward ran inside another module's forward (then call that module's backward)")


def _named(module, output):
    first = []
    _map(output, first.append)
    call = _producer(_outputs, first[0]) if first else None
    if call is None or call.module is not module:
        raise ValueError(f"output: not an output of a {_name(module)} forward that saved state for backward "
                         "(pass exactly what the forward returned; forwards under gpunet.no_grad() save nothing)")
    _check_usable(module, call)
    return call


def _child(module, parent, dy):
    kids = [c for c in parent.children if c.module is module and c.state == PENDING]
    if not kids:
        raise RuntimeError(f"{_name(module)}.backward inside {_name(parent.module)}.backward: "
                           f"{_name(parent.module)}'s forward made no call of this {_name(module)} that is "
                           "still waiting for a backward (each call is differentiated once)")
    tagged = _producer(_grads, dy) if _is_array(dy) else None
    call = tagged if tagged in kids else kids[-1]
    _check_usable(module, call)
    return call


def _check_usable(module, call):
    if call.state == DONE:
        raise RuntimeError(f"{_name(module)}.backward: backward already ran for this forward and freed what it "
                           "saved; run the forward again to differentiate it again")
    if call.epoch != module._epoch:
        raise RuntimeError(f"{_name(module)}.backward: the module was moved with .to() after this forward, "
                           "which releases what the forward saved; run the forward again")
