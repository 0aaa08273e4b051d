"""Dropout with a counter-based random number generator.

Element k of the call drawn at (seed, offset) keeps its value iff
`bits(seed, offset + k) >= threshold`, where bits is the high 32 bits of
SplitMix64's output number `offset + k` for the stream seeded with `seed`:

    z = seed + (offset + k + 1) · 0x9E3779B97F4A7C15          (mod 2^64)
    z = (z ^ (z >> 30)) · 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) · 0x94D049BB133111EB
    z =  z ^ (z >> 31);         bits = z >> 32
    threshold = ceil(p · 2^32)  (so P(keep) = 1 - p up to 2^-32)

Pure integer arithmetic, so NumPy, CuPy and csrc/kernels/dropout.cu draw
bit-identical masks, in any thread order, with no generator state to carry.
Kept values are scaled by 1/(1-p) ("inverted dropout"), so eval mode is the
identity; half storage (the kernel's too) multiplies in float32 by the float32
scale and rounds once, with the float32 mask. cpu/cupy keep the boolean mask
for backward; the kernels store no mask: one kernel, dropout_apply, computes
y = x·scale where kept and 0 elsewhere, and backward runs it again on dy with
the same (seed, offset): a few integer multiplies per element instead of
writing and re-reading a mask byte.
"""
import math

import numpy as np

from .. import dtypes
from ..dispatch import path
from .half import float32_compute, kernel_view
from .activation import select

GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def threshold(p: float) -> int:
    """The integer cut for drop probability p in [0, 1]: keep iff bits >= it
    (2^32, above every 32-bit value, drops everything)."""
    return math.ceil(p * 2.0 ** 32)


def random_bits(xp, seed: int, offset: int, n: int):
    """uint64 array holding n counter-based 32-bit random numbers, for elements
    offset .. offset+n-1 of the stream `seed`."""
    u64 = xp.uint64
    z = (xp.arange(n, dtype=u64) + u64((offset + 1) % 2 ** 64)) * u64(GAMMA) + u64(seed % 2 ** 64)
    z = (z ^ (z >> u64(30))) * u64(MIX1)
    z = (z ^ (z >> u64(27))) * u64(MIX2)
    z ^= z >> u64(31)
    return z >> u64(32)


def _half_kernels(be, *args, **kwargs):
    """Every half dropout call runs on the kernel (float32 inside, one rounding)."""
    return True


@float32_compute("dropout", forward=True, half_kernels=_half_kernels)
def dropout_forward(be, x, p: float, seed: int, offset: int):
    """Training-mode dropout of x with drop probability p in [0, 1]. Returns (y, ctx)."""
    xp = be.xp
    if p == 1.0:  # everything dropped (PyTorch returns zeros); no scale to apply
        return xp.zeros_like(x), ("zero",)
    scale = 1.0 / (1.0 - p)
    thr = threshold(p)
    if not dtypes.is_half(x.dtype) and path(be, "dropout", x.dtype) != "kernel":  # half: a kernel backend's
        keep = random_bits(xp, seed, offset, x.size).reshape(x.shape) >= np.uint64(thr)
        y = select(xp, keep, x * x.dtype.type(scale))
        return y, ("mask", keep, scale)
    xc = xp.ascontiguousarray(x)
    y = xp.empty_like(xc)
    seed, offset = seed % 2 ** 64, offset % 2 ** 64  # the kernel's uint64 arithmetic wraps the same way
    be.kernels.dropout_apply(kernel_view(be, xc), kernel_view(be, y), seed, offset, thr, scale, be.stream())
    return y, ("counter", seed, offset, thr, scale)


@float32_compute("dropout", forward=False, half_kernels=_half_kernels)
def dropout_backward(be, ctx, dy):
    """dx = dy where kept, times 1/(1-p); zero where dropped."""
    xp = be.xp
    kind = ctx[0]
    if kind == "zero":
        return xp.zeros_like(dy)
    if kind == "mask":
        _, keep, scale = ctx
        return select(xp, keep, dy * dy.dtype.type(scale))
    _, seed, offset, thr, scale = ctx
    dyc = xp.ascontiguousarray(dy)
    dx = xp.empty_like(dyc)
    be.kernels.dropout_apply(kernel_view(be, dyc), kernel_view(be, dx), seed, offset, thr, scale, be.stream())
    return dx
