"""torch.device under gpunet's name (gpunet.device).

PyTorch code picks its device with `torch.device("cuda" if
torch.cuda.is_available() else "cpu")`. In gpunet "cuda" names the CUDA
backend, unless GPUNET_DEVICE names another GPU-like backend (sim, cupy):
then "cuda" means that one (gpunet.backend.cuda_name), so the same unchanged
script trains on the CUDA simulator (what the tutorial tests do) or through
CuPy. gpunet.device("cuda") resolves the name when it is made, so it prints
the backend that will run.
"""
from __future__ import annotations

from . import backend as _backend


class device(str):  # noqa: N801 (torch.device)
    """torch.device: device("cuda:0"), device("cuda", 0), device("cpu"). A str
    subclass, so it goes wherever gpunet takes a device string."""

    def __new__(cls, type, index=None):  # noqa: A002 (torch's parameter name)
        if isinstance(type, device) and index is None:
            return type
        if isinstance(type, int) and not isinstance(type, bool) and index is None:
            type, index = "cuda", type
        if not isinstance(type, str):
            raise TypeError(f"device: expected a device string such as 'cuda:0' or 'cpu', got {type!r}")
        name, sep, idx = type.partition(":")
        if sep:
            if index is not None:
                raise ValueError(f"device: {type!r} already has an index; do not also pass index={index!r}")
            index = idx
        if name == "cuda":
            name = _backend.cuda_name()
        text = name if index is None else f"{name}:{index}"
        _backend._parse(text)  # the same validation and messages as every other device argument
        obj = super().__new__(cls, text)
        obj.type = name
        obj.index = None if index is None else int(index)
        return obj

    def __repr__(self):
        return f"device(type='{self.type}'" + ("" if self.index is None else f", index={self.index}") + ")"

    def __reduce__(self):
        return device, (str(self),)

    def __enter__(self):
        """`with gpunet.device("sim"):` makes it the default device inside the
        block, as torch's device context does (set_default_device)."""
        _entered.append(_backend._default)
        _backend.set_default_device(str(self))
        return self

    def __exit__(self, *exc):
        _backend._default = _entered.pop()
        return False


_entered: list = []  # the default devices that open `with device(...)` blocks replaced


def get_default_device() -> device:
    """torch.get_default_device: the device new tensors and modules go to."""
    return device(_backend.default_backend().device)


def gpu_available() -> bool:
    """Whether the backend "cuda" means here can run (torch.cuda.is_available)."""
    return _backend._probe(_backend.cuda_name())[0]


def gpu_count() -> int:
    if not gpu_available():
        return 0
    name = _backend.cuda_name()
    return 1 if name == "sim" else _backend.get_backend(name).xp.cuda.runtime.getDeviceCount()
