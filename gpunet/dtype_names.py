"""PyTorch's dtype names (gpunet.float, gpunet.long, ...) as NumPy dtypes,
which is what every gpunet dtype argument takes, and the legacy tensor
constructors the examples still use (gpunet.LongTensor(n), FloatTensor([..]))."""
import numpy as np

from .dtypes import float16, float32, float64, half  # the floating names live in gpunet.dtypes

__all__ = ["FloatTensor", "DoubleTensor", "LongTensor", "IntTensor", "BoolTensor",
           "float16", "half", "float32", "float", "float64", "double", "int8", "uint8", "int16", "short",
           "int32", "int", "int64", "long", "bool"]

float = float32  # noqa: A001 (torch.float)
double = float64
int8, uint8 = np.dtype(np.int8), np.dtype(np.uint8)
int16 = short = np.dtype(np.int16)
int32 = int = np.dtype(np.int32)  # noqa: A001 (torch.int)
int64 = long = np.dtype(np.int64)
bool = np.dtype(np.bool_)  # noqa: A001 (torch.bool)


def _legacy(dtype, name):
    def make(*args, device=None):
        """{name}(n, m, ...): an uninitialised (here: zero) tensor of that shape;
        {name}(sequence): a tensor of that data."""
        from .autograd.shape import zeros
        from .autograd.tensor import tensor
        if len(args) == 1 and not isinstance(args[0], (builtins_int, np.integer)):
            return tensor(args[0], dtype=dtype, device=device)
        return zeros(*args, dtype=dtype, device=device)
    make.__name__ = make.__qualname__ = name
    make.__doc__ = make.__doc__.format(name=name)
    return make


builtins_int = type(0)
FloatTensor = _legacy(float32, "FloatTensor")
DoubleTensor = _legacy(float64, "DoubleTensor")
LongTensor = _legacy(int64, "LongTensor")
IntTensor = _legacy(int32, "IntTensor")
BoolTensor = _legacy(bool, "BoolTensor")
