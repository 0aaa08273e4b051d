"""Bad input values found by a kernel (class targets, embedding indices),
raised as the errors the cpu backend raises for the same input.

On a GPU, checking an index range before each launch costs a device->host
copy and a sync, so the kernels check instead: the first thread that meets a
bad value records it in a small device flag (csrc/common/error_flag.cuh: 4
int64, [kind, value, bound, extra]), gives the element a neutral value (a
zero loss, gradient or embedding row; never NaN) and the host raises at its
next synchronisation: `Backend.synchronize()`, `gpunet.synchronize()`,
`gpunet.to_numpy()`, an optimizer step, or an explicit `check(be)`. (A plain
`float(loss)` on a CuPy array is CuPy's and checks nothing; the next of
those points raises.) On the sim backend a launch has finished when it
returns, so the op checks at once, in the call that launched the kernel.

There is one flag per (backend, device, stream): kernels on one stream are
ordered, so the flag is read on the stream that wrote it. (The sim backend
has one stream; there each thread has its own flag, as its launches are
ordered and another thread's are not.) A flag stays set
(later reports leave it) until it is read: the error raised is the first one
of that stream since the last check.
"""
from __future__ import annotations

import threading

import numpy as np

# kind -> message, the same text the cpu checks in gpunet/nn raise
# (csrc/common/error_flag.cuh's ErrorKind numbers the kinds).
_MESSAGES = {
    1: lambda value, bound, extra: (f"target: class indices must be in [0, {bound}) or equal "
                                    f"ignore_index={extra}, got {value}"),
    2: lambda value, bound, extra: f"input: indices must lie in [0, {bound}) (num_embeddings), got {value}",
}

_lock = threading.Lock()
_flags: dict = {}      # _key(be) -> (flag array, stream or None)
_unread: set = set()   # keys of flags a kernel may have written since they were last read


def _key(be):
    """cuda and cupy share a GPU's streams, hence its flags."""
    return ("gpu", be.index, be.stream()) if be.on_gpu else ("host", threading.get_ident())


def flag(be):
    """The flag of `be`'s current stream (created zeroed on first use), to pass
    to a kernel; call launched(be) after the launch."""
    key = _key(be)
    with _lock:
        entry = _flags.get(key)
        if entry is None:
            with be.use_device():
                stream = be.xp.cuda.get_current_stream() if be.on_gpu else None
                entry = _flags[key] = (be.xp.zeros(4, dtype=np.int64), stream)
        return entry[0]


def launched(be):
    """After a launch that was given flag(be): on the host the kernel is done,
    so check now; on a GPU leave the flag for the next synchronisation."""
    with _lock:
        _unread.add(_key(be))
    if not be.on_gpu:
        check(be)


def check(be):
    """Read every flag of `be`'s device written since its last read (each on its
    own stream: a sync of that stream), reset it, and raise the first error
    found as ValueError. Cheap when no flagged kernel ran since the last check."""
    if be.on_gpu:
        _check(lambda k: k[:2] == ("gpu", be.index), be)
    else:
        _check(lambda k: k == _key(be), be)


def check_gpu(index: int):
    """check() for GPU `index`, whichever of cuda and cupy launched there."""
    from ..backend import get_backend  # (gpunet.backend imports this module lazily too)
    with _lock:
        pending = any(k[:2] == ("gpu", index) for k in _unread)
    if pending:
        check(get_backend(f"cupy:{index}"))


def _check(mine, be):
    with _lock:
        keys = [k for k in _unread if mine(k)]
        _unread.difference_update(keys)
        entries = [_flags[k] for k in keys]
    error = None
    for buf, stream in entries:
        if stream is None:
            values = buf.copy()
        else:
            with be.use_device():
                values = buf.get(stream=stream)
        if values[0]:
            if stream is None:
                buf[...] = 0
            else:
                with be.use_device(), stream:
                    buf.fill(0)
            error = error or ValueError(_MESSAGES[int(values[0])](*(int(v) for v in values[1:])))
    if error is not None:
        raise error
