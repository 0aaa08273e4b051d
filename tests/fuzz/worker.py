"""A fuzz worker: reads call specs (length-prefixed pickles) on stdin, makes
each call (cases.run) and answers with its outcome on what was stdout; the
call's own prints go to stderr. Started and restarted by runner.Worker."""
import os
import pickle
import struct
import sys


def _read(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            sys.exit(0)  # the runner closed the pipe
        buf += chunk
    return buf


def _write(fd, obj):
    data = pickle.dumps(obj)
    os.write(fd, struct.pack("<Q", len(data)) + data)


def main():
    out = os.dup(1)
    os.dup2(2, 1)  # the calls' prints must not reach the protocol
    from tests.fuzz import cases  # imports numpy, torch and gpunet once per worker
    import gpunet
    import torch  # noqa: F401  (the oracles' import is not a call's cost)
    gpunet.get_backend("cpu")
    _write(out, ("ready",))
    while True:
        (n,) = struct.unpack("<Q", _read(0, 8))
        spec = pickle.loads(_read(0, n))
        try:
            cases.run(spec)
            result = ("ok",)
        except cases.SilentWrong as e:
            result = ("silent", str(e))
        except BaseException as e:  # noqa: B036 -- every error is classified, even SystemExit
            result = ("raised", type(e).__name__, [c.__name__ for c in type(e).__mro__], str(e))
        _write(out, result)


if __name__ == "__main__":
    main()
