"""Dtypes: the one place that resolves dtype names and says what each dtype
computes in.

    gpunet.bfloat16   ml_dtypes' bfloat16, as NumPy and CuPy 14 represent it
    gpunet.float16    IEEE half (also gpunet.half)
    gpunet.float32    gpunet.float64

`resolve` accepts these, NumPy dtypes and scalar types, their names
("bfloat16", "float16", "half", "float32", "float", "float64", "double") and
PyTorch's dtypes (torch.bfloat16 ...). The half types are storage types:
arithmetic on them runs in float32 (`compute_dtype`) and results are rounded
once to the storage type, as the kernels do with fp32 accumulation.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

bfloat16 = np.dtype(ml_dtypes.bfloat16)
float16 = half = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)

HALF = (bfloat16, float16)
FLOATING = (bfloat16, float16, float32, float64)

NAMES = {"bfloat16": bfloat16, "float16": float16, "half": float16, "float32": float32, "float": float32,
          "float64": float64, "double": float64}


def resolve(dtype, what: str = "dtype") -> np.dtype:
    """`dtype` (a name, a NumPy/ml_dtypes dtype or type, a torch.dtype) as a
    np.dtype; TypeError naming `what` if it is none of those."""
    if isinstance(dtype, str) or type(dtype).__module__ == "torch":
        name = str(dtype).removeprefix("torch.")
        if name in NAMES:
            return NAMES[name]
        if isinstance(dtype, str):
            try:
                return np.dtype(name)
            except TypeError:
                pass
        raise TypeError(f"{what}: unknown dtype {dtype!r}; expected one of {', '.join(NAMES)} or a NumPy dtype")
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{what}: expected a dtype (e.g. 'float32', 'bfloat16', gpunet.float16), "
                        f"got {dtype!r}") from None


def floating(dtype, what: str = "dtype") -> np.dtype:
    """`dtype` resolved, and required to be one of the floating dtypes gpunet
    computes with (ValueError otherwise)."""
    dt = resolve(dtype, what)
    if dt not in FLOATING:
        raise ValueError(f"{what}: expected one of bfloat16, float16, float32, float64, got {dt}")
    return dt


def is_floating(dtype) -> bool:
    """True for the floating dtypes, including bfloat16 (whose NumPy kind is 'V', not 'f')."""
    return np.dtype(dtype) in FLOATING


def is_half(dtype) -> bool:
    return np.dtype(dtype) in HALF


def compute_dtype(dtype) -> np.dtype:
    """The dtype arithmetic on `dtype` runs in: float32 for the half types, else itself."""
    dt = np.dtype(dtype)
    return float32 if dt in HALF else dt


def finfo(dtype):
    """np.finfo, extended to bfloat16 (ml_dtypes.finfo)."""
    return ml_dtypes.finfo(np.dtype(dtype))


def eps(dtype) -> float:
    """Machine epsilon: 2^-7 (bfloat16), 2^-10 (float16), 2^-23 (float32), 2^-52 (float64)."""
    return float(finfo(dtype).eps)


_FLOAT16_MIN_NORMAL = np.float32(2.0 ** -14)


def round_to(a, dtype):
    """a (float32) rounded to `dtype`, bit for bit as a.astype(dtype). On
    NumPy arrays float16 results below float16's normal range take their own
    path: NumPy's cast raises the underflow flag per such element, which made
    it 30x slower than for normal values (a softmax over a long row is mostly
    such values). There the result is the multiple of 2^-24 nearest |a| (ties
    to even: np.rint), which is float16's subnormal grid."""
    dt = np.dtype(dtype)
    if dt != float16 or type(a) is not np.ndarray or a.dtype != float32:
        return a.astype(dt)
    mag = np.abs(a)
    tiny = mag < _FLOAT16_MIN_NORMAL  # False for NaN
    if not tiny.any():
        return a.astype(dt)
    out = np.where(tiny, np.float32(0), a).astype(dt)
    with np.errstate(over="ignore", invalid="ignore"):  # the values that are not tiny give junk bits, unused
        bits = np.rint(mag * np.float32(2.0 ** 24)).astype(np.uint16)  # <= 1024 where tiny: 1024 is 2^-14
    bits |= np.signbit(a).astype(np.uint16) << 15
    np.copyto(out.view(np.uint16), bits, where=tiny)
    return out
