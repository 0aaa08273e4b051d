"""Grad mode, per thread, shared by the modules' saved state and the autograd
graph: gpunet.no_grad() turns both off, enable_grad() back on; both work as
context managers and as decorators."""
from __future__ import annotations

import threading
from contextlib import contextmanager


class _Mode(threading.local):
    enabled = True


_mode = _Mode()


@contextmanager
def no_grad():
    """Within this block (in this thread) forward passes save nothing for
    backward and operations record no graph; usable as a decorator too."""
    prev = _mode.enabled
    _mode.enabled = False
    try:
        yield
    finally:
        _mode.enabled = prev


@contextmanager
def enable_grad():
    """Turn saving for backward and recording back on inside a no_grad block (this thread)."""
    prev = _mode.enabled
    _mode.enabled = True
    try:
        yield
    finally:
        _mode.enabled = prev


def is_grad_enabled() -> bool:
    return _mode.enabled
