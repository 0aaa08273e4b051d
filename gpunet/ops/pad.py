"""Explicit 2-D padding of (..., H, W) arrays and its gradient, for what the
convolution kernels' implicit zero padding cannot express: PyTorch's
padding_mode ('reflect', 'replicate', 'circular') and the uneven padding of
padding='same' with an even window.

pads = (top, bottom, left, right). Each padded position copies one input
position (or none, for zeros), per axis; the gradient adds each padded
position's gradient back into the position it copied. Array code on every
backend: the padded border is a few rows and columns, the centre a slice."""
from __future__ import annotations

import numpy as np

# PyTorch's padding_mode -> numpy.pad's (and cupy.pad's) mode
MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad2d(be, x, pads, mode: str):
    top, bottom, left, right = pads
    # a border copied from inside the input must fit in it (PyTorch's limits)
    limit = {"reflect": 1, "circular": 0}.get(mode)
    for name, size, widest in (("height", x.shape[-2], max(top, bottom)), ("width", x.shape[-1], max(left, right))):
        if limit is not None and widest > size - limit:
            raise ValueError(f"padding: {mode} padding of {widest} needs an input {name} of at least "
                             f"{widest + limit}, got input shape {tuple(x.shape)}")
    width = [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)]
    return be.xp.ascontiguousarray(be.xp.pad(x, width, mode=MODES[mode]))


def _sources(size: int, before: int, after: int, mode: str):
    """For each position of an axis padded to before + size + after: the input
    position it copies, or -1 for a zero."""
    kw = {"constant_values": -1} if mode == "zeros" else {}
    return np.pad(np.arange(size), (before, after), mode=MODES[mode], **kw)


def pad2d_backward(be, g, pads, mode: str):
    """The gradient of pad2d's input from the gradient `g` of its output."""
    top, bottom, left, right = pads
    for axis, before, after in ((-1, left, right), (-2, top, bottom)):
        size = g.shape[axis] - before - after
        src = _sources(size, before, after, mode)
        inner = [slice(None)] * g.ndim
        inner[axis] = slice(before, before + size)
        dx = g[tuple(inner)].copy()
        for p in [*range(before), *range(before + size, before + size + after)]:
            if src[p] >= 0:
                at, take = [slice(None)] * g.ndim, [slice(None)] * g.ndim
                at[axis], take[axis] = int(src[p]), p
                dx[tuple(at)] += g[tuple(take)]
        g = dx
    return be.xp.ascontiguousarray(g)
