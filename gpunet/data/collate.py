"""default_collate: a list of samples -> one batch, recursively, as
torch.utils.data.default_collate: arrays (NumPy or CuPy, same shape) are
stacked along a new first axis (gpunet.Tensors into a Tensor); Python ints become an int64 array, floats a
float64 array, bools a bool array; dicts (any Mapping) are collated key by
key; named tuples field by field; tuples and lists position by position
(tuples stay tuples, lists lists: torch turns both into lists); strings and
bytes stay a list. Nothing becomes an object array: anything else is a
TypeError naming the path to it."""
from __future__ import annotations

import collections.abc

import numpy as np


def default_collate(batch, _path: str = "sample"):
    if not isinstance(batch, collections.abc.Sequence) or isinstance(batch, (str, bytes)) or not len(batch):
        raise TypeError(f"default_collate: expected a non-empty list of samples, got {type(batch).__name__}")
    elem = batch[0]
    if isinstance(elem, (str, bytes)):
        return list(batch)
    if isinstance(elem, collections.abc.Mapping):
        for i, s in enumerate(batch):
            if not isinstance(s, collections.abc.Mapping) or s.keys() != elem.keys():
                raise TypeError(f"default_collate: {_path} {i} has keys {sorted(getattr(s, 'keys', list)())}, "
                                f"sample 0 has {sorted(elem.keys())}")
        out = {k: default_collate([s[k] for s in batch], f"{_path}[{k!r}]") for k in elem}
        return out if type(elem) is dict else type(elem)(out)
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # a namedtuple
        return type(elem)(*(default_collate(list(f), f"{_path}.{n}") for n, f in zip(elem._fields, zip(*batch))))
    if isinstance(elem, (tuple, list)):
        if any(len(s) != len(elem) for s in batch):
            raise ValueError(f"default_collate: every {_path} must have {len(elem)} fields, as sample 0 has")
        fields = [default_collate(list(f), f"{_path}[{i}]") for i, f in enumerate(zip(*batch))]
        return tuple(fields) if isinstance(elem, tuple) else fields
    if _is_tensor(elem):  # gpunet.Tensors stack into a Tensor (as torch's tensors do)
        from ..autograd.shape import stack
        try:
            return stack(batch)
        except (TypeError, ValueError) as e:
            raise type(e)(f"default_collate: the Tensors at {_path} do not stack: {e}") from None
    if isinstance(elem, (bool, np.bool_)):
        return np.array(batch, dtype=bool)
    if isinstance(elem, int):
        return np.array(batch, dtype=np.int64)
    if isinstance(elem, float):
        return np.array(batch, dtype=np.float64)
    if isinstance(elem, np.generic) or hasattr(elem, "__array_interface__") or \
            hasattr(elem, "__cuda_array_interface__"):
        shapes = {tuple(np.shape(s)) for s in batch}
        if len(shapes) != 1:
            raise ValueError(f"default_collate: the arrays at {_path} have different shapes {sorted(shapes)}; "
                             "pad them or pass a collate_fn")
        xp = _namespace(elem)
        out = xp.stack([xp.asarray(s) for s in batch])
        if out.dtype.hasobject:
            raise TypeError(f"default_collate: the arrays at {_path} have dtype object; pass a collate_fn")
        return out
    raise TypeError(f"default_collate: cannot batch a {type(elem).__module__}.{type(elem).__name__} at {_path} "
                    "(supported: arrays, numbers, str, dicts, tuples, lists); pass a collate_fn")


def _is_tensor(x) -> bool:
    from ..autograd.tensor import Tensor
    return isinstance(x, Tensor)


def _namespace(a):
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np
