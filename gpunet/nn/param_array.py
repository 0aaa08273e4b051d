"""What `Parameter.data` returns on the host backends: a view of the
parameter's NumPy array that also answers PyTorch's in-place tensor methods,
so `layer.weight.data.uniform_(-0.1, 0.1)`, `.zero_()` and
`p.data.add_(p.grad, alpha=-lr)` work as in torch (they write the parameter's
storage; like torch's `.data`, nothing is recorded for autograd). Results of
arithmetic on it are plain arrays again (__array_wrap__), so the type does not
spread into the layers' computations."""
from __future__ import annotations

import numpy as np

from ..random import rng_of


class ParamArray(np.ndarray):
    def __array_wrap__(self, obj, context=None, return_scalar=False):
        out = obj.view(np.ndarray)
        return out[()] if return_scalar else out

    def __repr__(self):
        return repr(self.view(np.ndarray))

    @property
    def data(self):  # torch: x.data is x's storage again, not a buffer object
        return self

    def _set(self, values):
        self[...] = values
        return self

    def uniform_(self, a: float = 0.0, b: float = 1.0, *, generator=None):
        return self._set(rng_of(generator).uniform(a, b, self.shape))

    def normal_(self, mean: float = 0.0, std: float = 1.0, *, generator=None):
        return self._set(rng_of(generator).normal(mean, std, self.shape))

    def zero_(self):
        return self._set(0)

    def fill_(self, value):
        return self._set(value)

    def copy_(self, src):
        return self._set(np.asarray(src))

    def add_(self, other, alpha=1):
        return self._set(self + alpha * np.asarray(other))

    def sub_(self, other, alpha=1):
        return self._set(self - alpha * np.asarray(other))

    def mul_(self, other):
        return self._set(self * np.asarray(other))

    def clamp_(self, min=None, max=None):  # noqa: A002 (torch's names)
        return self._set(np.clip(self, min, max))


def param_view(a):
    """`a` as a ParamArray view when it is a NumPy array (CuPy arrays pass through)."""
    return a.view(ParamArray) if type(a) is np.ndarray else a
