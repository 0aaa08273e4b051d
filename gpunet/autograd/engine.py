"""The autograd engine: the node each differentiable operation records, and
the backward pass over the graph of nodes.

A node holds its operation's backward function, one edge per input (the node
and output slot that produced it, the leaf tensor itself, or None when no
gradient flows there) and the versions of the tensors its backward reads. The
backward pass finds every node reachable from the roots with an explicit
stack (a graph of any depth never meets Python's recursion limit), counts how
many consumers each node has inside that graph, and runs a node once all of
its output gradients have arrived (Kahn's order), so a tensor reaching the
output along several paths gets the sum of their gradients before its own
node runs. Nodes drop their backward function and saved state as they run
unless retain_graph, as in PyTorch.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from .grad_mode import is_grad_enabled

FREED = ("Trying to backward through the graph a second time (or to use what a node saved after it was "
         "freed): {name}'s saved state was freed by an earlier backward. Pass retain_graph=True to the "
         "first backward() if you need to backpropagate through the same graph twice.")


class Node:
    """One recorded operation. `grad_fn` of the tensors it produced."""

    __slots__ = ("name", "backward_fn", "edges", "saved", "out_meta", "retained", "optional", "__weakref__")

    def __init__(self, name, backward_fn, edges, saved, out_meta):
        self.name = name
        self.backward_fn = backward_fn  # (*output grads) -> one gradient (or None) per input
        self.edges = edges              # per input: None | (Node, slot) | leaf Tensor
        self.saved = saved              # ((version counter, version at save, what), ...)
        self.out_meta = out_meta        # per output: (shape, dtype); zeros stand in for a missing gradient
        self.retained = None            # slot -> weakref of the non-leaf Tensor that called retain_grad()
        self.optional = False           # outputs after the first may get None instead of zeros (a module's
                                        # backward skips the work for an output nothing used)

    def name_(self):
        return f"{self.name}Backward"

    def __repr__(self):
        return f"<{self.name_()}>"

    @property
    def next_functions(self):
        """PyTorch's view of the edges: (node or the leaf's accumulator, slot) per input."""
        out = []
        for e in self.edges:
            if e is None:
                out.append((None, 0))
            elif isinstance(e, tuple):
                out.append(e)
            else:
                out.append((AccumulateGrad(e), 0))
        return tuple(out)

    def release(self):
        self.backward_fn = None
        self.saved = None


class AccumulateGrad:
    """Where a leaf's gradient goes (shown by next_functions)."""

    __slots__ = ("variable",)

    def __init__(self, variable):
        self.variable = variable

    def __repr__(self):
        return "<AccumulateGrad>"


class _Running(threading.local):
    callbacks = None  # while a backward pass runs in this thread: what runs when it ends


_running = _Running()


def queue_callback(fn):
    """Run `fn()` when the backward pass now running in this thread ends (as
    PyTorch's engine callbacks): a node's backward uses it for work that
    must wait for every gradient (DistributedDataParallel's last buckets)."""
    if _running.callbacks is None:
        raise RuntimeError("queue_callback: no backward pass is running in this thread")
    _running.callbacks.append(fn)


def needs_grad(inputs) -> bool:
    """Whether an operation on these inputs must record a node."""
    if not is_grad_enabled():
        return False
    from .tensor import Tensor
    return any(isinstance(t, Tensor) and t.requires_grad for t in inputs)


def edge_of(t):
    """Where the gradient of input `t` flows: its producer's slot, the leaf itself, or nowhere."""
    from .tensor import Tensor
    if not isinstance(t, Tensor) or not t.requires_grad:
        return None
    if t.grad_fn is not None:
        return (t.grad_fn, t._slot)
    return t


def make_node(name, backward_fn, inputs, outputs, saved=()):
    """The node of one operation: `inputs` are its operands (Tensors or
    anything else), `outputs` the arrays it produced, `saved` the Tensors
    (inputs or outputs) whose values its backward reads, checked against
    in-place changes when it runs."""
    meta = tuple((tuple(o.shape), o.dtype) for o in outputs)
    node = Node(name, backward_fn, tuple(edge_of(t) for t in inputs), None, meta)
    node.saved = tuple((t._vc, t._vc[0], t) for t in saved)
    return node


def _check_saved(node):
    for vc, version, t in node.saved:
        if vc[0] != version:
            raise RuntimeError(
                f"one of the variables needed for gradient computation has been modified by an inplace "
                f"operation: a tensor of shape {list(t.shape)} saved by {node.name_()} is at version {vc[0]}; "
                f"expected version {version} instead.")


def _graph(roots):
    """Every node reachable from `roots` and how many edges inside the graph point at each."""
    consumers = {}
    stack = list(roots)
    seen = set(roots)
    while stack:
        node = stack.pop()
        if node.backward_fn is None:
            raise RuntimeError(FREED.format(name=node.name_()))
        for e in node.edges:
            if isinstance(e, tuple):
                producer = e[0]
                consumers[producer] = consumers.get(producer, 0) + 1
                if producer not in seen:
                    seen.add(producer)
                    stack.append(producer)
    return consumers


def _add(buf, slot, g):
    prev = buf[slot]
    buf[slot] = g if prev is None else prev + g


def _check_shape(node, i, g, want):
    if tuple(g.shape) != tuple(want):
        raise RuntimeError(f"{node.name_()} returned a gradient of shape {list(g.shape)} for its input {i}, "
                           f"expected {list(want)}")


def run_backward(tensors, grads, retain_graph: bool):
    """Backpropagate `grads` (arrays, one per tensor) from `tensors` into every
    leaf that requires grad, accumulating into its `.grad`; then run the
    callbacks nodes queued (also when a node raised: they clean up)."""
    outer, _running.callbacks = _running.callbacks, []
    try:
        _run(tensors, grads, retain_graph)
    finally:
        callbacks, _running.callbacks = _running.callbacks, outer
        for fn in callbacks:
            fn()


def _run(tensors, grads, retain_graph: bool):
    pending: dict[Node, list] = {}
    roots = []
    for t, g in zip(tensors, grads):
        if t.grad_fn is None:
            t._accumulate(g)
            continue
        node = t.grad_fn
        if node not in pending:
            pending[node] = [None] * len(node.out_meta)
            roots.append(node)
        _add(pending[node], t._slot, g)
    consumers = _graph(roots)
    ready = [n for n in roots if consumers.get(n, 0) == 0]
    from .tensor import Tensor
    while ready:
        node = ready.pop()
        buf = pending.pop(node, None)
        if node.backward_fn is None:
            raise RuntimeError(FREED.format(name=node.name_()))
        if buf is None or all(g is None for g in buf):
            in_grads = (None,) * len(node.edges)  # no gradient reached it: pass the consumers' counts on
        else:
            in_grads = _run_node(node, buf)
        if not retain_graph:
            node.release()
        for i, (e, g) in enumerate(zip(node.edges, in_grads)):
            if e is None:
                continue
            if isinstance(e, Tensor):
                if g is not None:
                    _check_shape(node, i, g, e.shape)
                    e._accumulate(g)
                continue
            producer, slot = e
            if g is not None:
                _check_shape(node, i, g, producer.out_meta[slot][0])
                if producer not in pending:
                    pending[producer] = [None] * len(producer.out_meta)
                _add(pending[producer], slot, g)
            consumers[producer] -= 1
            if consumers[producer] == 0:
                ready.append(producer)


def _run_node(node, buf):
    """One node's backward: its output gradients (zeros where none arrived) in, its input gradients out."""
    _check_saved(node)
    xp = _xp_of(buf)
    out_grads = [g if g is not None or (node.optional and i) else xp.zeros(shape, dtype)
                 for i, (g, (shape, dtype)) in enumerate(zip(buf, node.out_meta))]
    if node.retained:
        for slot, ref in node.retained.items():
            t = ref()
            if t is not None:
                t._accumulate(out_grads[slot])
    in_grads = node.backward_fn(*out_grads)
    if not isinstance(in_grads, tuple):
        in_grads = (in_grads,)
    if len(in_grads) != len(node.edges):
        raise RuntimeError(f"{node.name_()} returned {len(in_grads)} gradients, expected {len(node.edges)}")
    return in_grads


def _xp_of(buf):
    """The array module of a node's gradients (NumPy unless one is a CuPy array)."""
    for g in buf:
        if g is not None and not isinstance(g, (np.ndarray, np.generic)):
            import cupy
            return cupy
    return np


def retain(t):
    """Keep the gradient of non-leaf tensor `t` after backward (Tensor.retain_grad)."""
    node = t.grad_fn
    if node.retained is None:
        node.retained = {}
    node.retained[t._slot] = weakref.ref(t)
