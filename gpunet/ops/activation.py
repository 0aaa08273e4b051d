"""Elementwise activations: forward and explicit derivative.

Each activation is a pair of array-level functions written against `xp`
(NumPy or CuPy): `forward(xp, x, **params) -> y` and
`derivative(xp, x, y, **params) -> dy/dx`. On kernel backends (sim, cuda) the
float32 case goes to the hand-written elementwise kernels `act_forward` /
`act_backward` (csrc/kernels/activation.cu) instead, and so do float16 and
bfloat16 (float32 compute, rounded once: gpunet/ops/half.py); where CuPy fusions run
(gpunet.dispatch's "fused" path) every backward is one ElementwiseKernel
(below, beside the array formulas it fuses).

Conventions where the lecture notes disagree (see SEEDS.md):
  heaviside(z) = 0 for z < 0 and 1 for z >= 0, so H(0) = 1;
  sign(z) = -1, 0, +1 for z < 0, z = 0, z > 0, so sign(0) = 0.
Both are piecewise constant: their derivative is zero almost everywhere and
undefined at 0, so they have no backward (perceptrons train with the
Rosenblatt rule / PerceptronLoss on the pre-activation instead).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..dispatch import path
from .cupy_kernels import cupy, lit
from .. import checks, dtypes, hostlib
from . import host_threads
from .half import float32_compute, kernel_view

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_C = 0.044715
# erf: power series below this |t|, continued fraction for erfc above it
_ERF_SPLIT = 2.5
_ERF_TERMS = 40


class NoGradientError(RuntimeError):
    """Raised by the backward of an activation that has no useful gradient."""


_SAME_WIDTH_INT = {4: np.int32, 8: np.int64}


def select(xp, mask, a):
    """xp.where(mask, a, 0), bit for bit (NaN, inf and -0.0 included). NumPy's
    where branches per element, and a mask like ReLU's or dropout's mispredicts
    about half of them: 6x slower than a product. On the host the mask, widened
    to all-one or all-zero words, is ANDed with a's bits instead."""
    it = _SAME_WIDTH_INT.get(a.dtype.itemsize) if xp is np and a.dtype.kind == "f" and a.ndim else None
    if it is None:
        return xp.where(mask, a, a.dtype.type(0))
    words = np.negative(np.asarray(mask).view(np.int8), dtype=it)  # True -> -1: every bit set
    out = words if words.shape == a.shape else None
    return np.bitwise_and(a.view(it), words, out=out).view(a.dtype)


# ---------------------------------------------------------------- special functions
def _erf_series(xp, t):
    """erf(t) for |t| <= _ERF_SPLIT: 2/sqrt(pi) e^{-t^2} sum_n (2t^2)^n t / (2n+1)!!.
    Every term has the sign of t, so there is no cancellation."""
    t2 = t * t
    term = t
    total = t
    for n in range(1, _ERF_TERMS):
        term = term * (2 * t2) / (2 * n + 1)
        total = total + term
    return (2 / math.sqrt(math.pi)) * xp.exp(-t2) * total


def _erfc_cf(xp, a):
    """erfc(a) for a >= _ERF_SPLIT by the continued fraction
    e^{-a^2}/sqrt(pi) / (a + (1/2)/(a + 1/(a + (3/2)/(a + ...)))), evaluated backwards."""
    f = a
    for k in range(_ERF_TERMS, 0, -1):
        f = a + (k / 2) / f
    return xp.exp(-a * a) / (math.sqrt(math.pi) * f)


@functools.lru_cache(maxsize=None)
def _scipy_erfc():
    """SciPy's erfc when SciPy is installed (an optional dependency), else None."""
    try:
        from scipy.special import erfc
    except ImportError:
        return None
    return erfc


def normal_cdf(xp, x):
    """Phi(x) = erfc(-x/sqrt 2)/2, accurate to a few ulps of float64 in both
    tails (the lower tail comes from erfc, not from 1 - erf). NumPy has no erf:
    SciPy's (or CuPy's) is used when present; otherwise a series and a
    continued fraction, about 80 array passes, so ~100x slower."""
    if xp is not np:
        from cupyx.scipy.special import erfc
        return 0.5 * erfc(-x / _SQRT_2)
    erfc = _scipy_erfc()
    if erfc is not None:
        return (0.5 * erfc(-x / _SQRT_2)).astype(x.dtype, copy=False)
    t = x / _SQRT_2
    a = xp.abs(t)
    inner = _erf_series(xp, xp.clip(t, -_ERF_SPLIT, _ERF_SPLIT))
    tail = _erfc_cf(xp, xp.maximum(a, _ERF_SPLIT))
    outer = xp.where(t > 0, 1 - 0.5 * tail, 0.5 * tail)
    return xp.where(a <= _ERF_SPLIT, 0.5 * (1 + inner), outer).astype(x.dtype, copy=False)


# ---------------------------------------------------------------- float32 Phi on the host
# For a >= 0, with u = (2 - a)/(2 + a) in (-1, 1] (a = |x|/sqrt 2, so
# u = (2 sqrt2 - |x|)/(2 sqrt2 + |x|)):
#     Phi(-|x|) = erfc(a)/2 = sqrt2/(2 sqrt2 + |x|) · exp(-x^2/2 + R(u)),
#     R(u) = log(erfcx(a)·(1 + a/2)),
# R analytic on [-1, 1] (a -> inf is u -> -1, where R -> log(1/(2 sqrt pi))).
# R below: Chebyshev least squares of degree 11 at 4000 Chebyshev nodes from
# float64 erfcx, in monomials of u, highest degree first; |fit error| < 1.1e-8.
_PHI_R = (-8.728381029e-05, 8.000738154e-06, 5.737663722e-04, -2.279109660e-04, -2.288765239e-03,
          1.794066250e-03, 8.808825369e-03, -9.880019324e-03, -4.689364056e-02, 4.734388761e-02,
          6.726431548e-01, -6.717940917e-01)
_TWO_SQRT_2 = 2.0 * _SQRT_2
# |x| beyond this: Phi is 0 or 1 in float32 already; clamping keeps inf out of u
_PHI_CLAMP = 20.0
# elements per block: the block's temporaries stay in the core's cache
_PHI_BLOCK = 1 << 15


def _split_half_square(ax, hi, lo):
    """-x^2/2 as ln(hi_factor) + lo: hi <- exp(-h^2/2), lo <- -(x^2 - h^2)/2,
    with h = |x| cut to 12 mantissa bits, so h^2 is exact and the large
    exponent of the tails is never rounded. ax holds |x| (overwritten)."""
    np.bitwise_and(ax.view(np.int32), np.int32(-4096), out=hi.view(np.int32))
    np.subtract(ax, hi, out=lo)
    ax += hi
    lo *= ax
    lo *= -0.5
    hi *= hi
    hi *= -0.5
    np.exp(hi, out=hi)


def _phi_blocks(x):
    """Yields (slice, Phi(x[slice])) over a contiguous float32 array, block by
    block, in float32 with reused buffers: about 40 in-cache passes instead of
    SciPy's per-element float64 erfc."""
    flat = x.reshape(-1)
    n = min(flat.size, _PHI_BLOCK)
    ax, u, p, hi, lo = (np.empty(n, np.float32) for _ in range(5))
    neg = np.empty(n, bool)
    for start in range(0, flat.size, _PHI_BLOCK):
        xb = flat[start:start + _PHI_BLOCK]
        m = xb.size
        ax_, u_, p_, hi_, lo_, neg_ = ax[:m], u[:m], p[:m], hi[:m], lo[:m], neg[:m]
        np.abs(xb, out=ax_)
        np.minimum(ax_, _PHI_CLAMP, out=ax_)
        np.add(ax_, _TWO_SQRT_2, out=lo_)              # lo holds 2 sqrt2 + |x| for now
        np.subtract(_TWO_SQRT_2, ax_, out=u_)
        u_ /= lo_
        np.divide(_SQRT_2, lo_, out=lo_)               # the prefactor
        p_.fill(_PHI_R[0])
        for c in _PHI_R[1:]:
            p_ *= u_
            p_ += c
        _split_half_square(ax_, hi_, u_)
        p_ += u_
        np.exp(p_, out=p_)
        p_ *= hi_
        p_ *= lo_                                      # Phi(-|x|)
        np.less(xb, 0, out=neg_)
        np.subtract(1.0, p_, out=ax_)
        np.copyto(ax_, p_, where=neg_)                 # Phi(x) = Phi(-|x|) below 0, 1 - that above
        yield slice(start, start + m), ax_


_PHI_R_F32 = np.array(_PHI_R, np.float32)


def _host_elementwise(fn, *arrays, exp=True):
    """fn(*addresses, lo, hi), a compiled elementwise loop over the flat
    arrays (None: an absent operand), its elements split over the host
    threads; exp: the loop spends an exp or more per element."""
    least = host_threads.MIN_PER_EXP_THREAD if exp else host_threads.MIN_PER_THREAD
    host_threads.run_compiled(fn, [hostlib.ptr(a) for a in arrays], host_threads.ranges(arrays[0].size, 1, least))


def _gelu_f32(x):
    """GELU, x·Phi(x), of a float32 host array (its elements split over the host threads)."""
    x = np.asarray(x, order="C")  # not ascontiguousarray: that makes a 0-d input 1-d
    out = np.empty_like(x)
    flat, xf = out.reshape(-1), x.reshape(-1)
    lib = hostlib.load()
    if lib is not None:  # the same operations compiled into one pass (gpunet/_host/host_ops.c)
        _host_elementwise(lib.gpunet_gelu_f32, xf, flat, _PHI_R_F32)
        return out

    def part(lo, hi):
        for rows, cdf in _phi_blocks(xf[lo:hi]):
            np.multiply(xf[lo:hi][rows], cdf, out=flat[lo:hi][rows])
    host_threads.run(part, host_threads.ranges(xf.size))
    return out


def _gelu_tanh_f32(lib, x, derivative=False, dy=None):
    """The tanh form of GELU (derivative: its derivative, times dy when
    given) of a float32 host array in one compiled pass (gpunet/_host/host_ops.c:
    x·sigmoid(2u), the array code's 0.5·x·(1 + tanh(u)) without its
    cancellation), the elements split over the host threads."""
    x = np.asarray(x, order="C")
    out = np.empty_like(x)
    flat, xf = out.reshape(-1), x.reshape(-1)
    if not derivative:
        _host_elementwise(lib.gpunet_gelu_tanh_f32, xf, flat)
        return out
    dyf = None if dy is None else np.asarray(dy, order="C").reshape(-1)
    _host_elementwise(lib.gpunet_gelu_tanh_derivative_f32, xf, dyf, flat)
    return out


def _relu_f32(be, x, check):
    """FORWARD["relu"] (NumPy's maximum) of a float32 host array, its elements
    split over the host threads (NumPy's loop runs on one core): the compiled
    loop where there is one, which also does the NaN/Inf scan of x named
    `check` (gpunet.checks) in the same read."""
    x = np.asarray(x, order="C")
    y = np.empty_like(x)
    xf, yf = x.reshape(-1), y.reshape(-1)
    if (lib := hostlib.load()) is not None:
        nonfinite = host_threads.run_compiled(lib.gpunet_relu_f32, [hostlib.ptr(xf), hostlib.ptr(yf)],
                                              host_threads.ranges(xf.size))
        if check is not None and any(nonfinite) and checks.finite_checks_enabled(be):
            checks.nonfinite_error(be, x, check)
        return y
    if check is not None:
        checks.finite_values(be, x, check)
    host_threads.run(lambda lo, hi: np.maximum(xf[lo:hi], 0, out=yf[lo:hi]), host_threads.ranges(xf.size))
    return y


def _relu_backward_f32(lib, x, dy):
    """select(x > 0, dy) of float32 host arrays in one compiled pass, split over the host threads."""
    x, dy = np.asarray(x, order="C"), np.asarray(dy, order="C")
    out = np.empty_like(x)
    xf, dyf, flat = x.reshape(-1), dy.reshape(-1), out.reshape(-1)
    _host_elementwise(lib.gpunet_relu_backward_f32, xf, dyf, flat, exp=False)
    return out


def _gelu_output(x, y):
    """y when it is the float32 forward output of x, else that output computed
    (a caller that kept no output: autograd saves the input only)."""
    if isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == x.shape:
        return y
    return _gelu_f32(x)


def _gelu_derivative_f32(x, y, dy=None):
    """Phi(x) + x·phi(x) of a float32 host array, Phi taken as y/x from the
    forward's y = x·Phi(x) (within an ulp of it) instead of evaluated again;
    0.5 where |x| is below the smallest normal float (y/x is inexact or 0/0
    there, and Phi(x) rounds to 0.5). With dy (float32, x's shape): the
    backward's dy times that, in the same pass when compiled."""
    x = np.asarray(x, order="C")
    y = np.asarray(y, order="C")
    out = np.empty_like(x)
    flat, xf, yf = out.reshape(-1), x.reshape(-1), y.reshape(-1)
    lib = hostlib.load()
    if lib is not None:
        dyf = None if dy is None else np.asarray(dy, order="C").reshape(-1)
        _host_elementwise(lib.gpunet_gelu_derivative_f32, xf, yf, dyf, flat)
        return out
    if dy is not None:
        return dy * _gelu_derivative_f32(x, y)
    host_threads.run(lambda a, b: _gelu_derivative_part(xf[a:b], yf[a:b], flat[a:b]), host_threads.ranges(xf.size))
    return out


def _gelu_derivative_part(xf, yf, flat):
    """_gelu_derivative_f32 of flat float32 arrays (one thread's part), block by block."""
    n = min(xf.size, _PHI_BLOCK)
    ax, hi, lo = (np.empty(n, np.float32) for _ in range(3))
    tiny = np.empty(n, bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, xf.size, _PHI_BLOCK):
            rows = slice(start, start + _PHI_BLOCK)
            xb, ob = xf[rows], flat[rows]
            m = xb.size
            ax_, hi_, lo_, tiny_ = ax[:m], hi[:m], lo[:m], tiny[:m]
            np.abs(xb, out=ax_)
            np.less(ax_, np.finfo(np.float32).tiny, out=tiny_)
            np.minimum(ax_, _PHI_CLAMP, out=ax_)
            _split_half_square(ax_, hi_, lo_)
            np.exp(lo_, out=lo_)
            lo_ *= hi_
            lo_ *= _INV_SQRT_2PI
            lo_ *= xb                                  # x·phi(x)
            np.divide(yf[rows], xb, out=ob)
            np.copyto(ob, 0.5, where=tiny_)
            ob += lo_


def _host_f32(xp, x):
    return xp is np and isinstance(x, np.ndarray) and x.dtype == np.float32


def sigmoid(xp, x):
    """1/(1 + e^{-x}) without overflow: exp only ever sees -|x|."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


# ---------------------------------------------------------------- the activations
def _gelu_forward(xp, x, approximate="none"):
    if approximate == "tanh":
        if _host_f32(xp, x) and (lib := hostlib.load()) is not None:
            return _gelu_tanh_f32(lib, x)
        return 0.5 * x * (1 + xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x)))
    if _host_f32(xp, x):
        return _gelu_f32(x)
    return x * normal_cdf(xp, x)


def _gelu_derivative(xp, x, y, approximate="none"):
    if approximate == "tanh":
        if _host_f32(xp, x) and (lib := hostlib.load()) is not None:
            return _gelu_tanh_f32(lib, x, derivative=True)
        th = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x))
        inner = _SQRT_2_OVER_PI * (1 + 3 * _GELU_TANH_C * x * x)
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * inner
    if _host_f32(xp, x):
        return _gelu_derivative_f32(x, _gelu_output(x, y))
    return normal_cdf(xp, x) + x * _INV_SQRT_2PI * xp.exp(-0.5 * x * x)


def _softplus_forward(xp, x, beta=1.0, threshold=20.0):
    # above the threshold softplus(x) = x to float precision; below it exp cannot overflow
    bx = beta * x
    return xp.where(bx > threshold, x, xp.log1p(xp.exp(xp.minimum(bx, threshold))) / beta)


def _softplus_derivative(xp, x, y, beta=1.0, threshold=20.0):
    bx = beta * x
    return xp.where(bx > threshold, 1.0, sigmoid(xp, bx))


FORWARD = {
    "relu": lambda xp, x: xp.maximum(x, 0),
    "leaky_relu": lambda xp, x, negative_slope=0.01: xp.where(x > 0, x, negative_slope * x),
    "sigmoid": sigmoid,
    "tanh": lambda xp, x: xp.tanh(x),
    "softsign": lambda xp, x: x / (1 + xp.abs(x)),
    "gelu": _gelu_forward,
    "softplus": _softplus_forward,
    "heaviside": lambda xp, x: (x >= 0).astype(x.dtype),
    "sign": lambda xp, x: xp.sign(x),
    "silu": lambda xp, x: x * sigmoid(xp, x),
    "elu": lambda xp, x, alpha=1.0: xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0))),
}

# derivative(xp, x, y, **params): whichever of the input x and output y is cheaper
DERIVATIVE = {
    "relu": lambda xp, x, y: (x > 0).astype(x.dtype),
    "leaky_relu": lambda xp, x, y, negative_slope=0.01: xp.where(x > 0, 1.0, negative_slope).astype(x.dtype),
    "sigmoid": lambda xp, x, y: y * (1 - y),
    "tanh": lambda xp, x, y: 1 - y * y,
    "softsign": lambda xp, x, y: 1 / (1 + xp.abs(x)) ** 2,
    "gelu": _gelu_derivative,
    "softplus": _softplus_derivative,
    "silu": lambda xp, x, y: sigmoid(xp, x) * (1 + x * (1 - sigmoid(xp, x))),
    "elu": lambda xp, x, y, alpha=1.0: xp.where(x > 0, 1.0, y + alpha),
}

# activations with a kernel in csrc/kernels/activation.cu, and how their
# parameters map onto the kernels' (alpha, beta)
_KERNEL_PARAMS = {
    "relu": lambda: (0.0, 0.0),
    "leaky_relu": lambda negative_slope=0.01: (negative_slope, 0.0),
    "sigmoid": lambda: (0.0, 0.0),
    "tanh": lambda: (0.0, 0.0),
    "softsign": lambda: (0.0, 0.0),
    "gelu": lambda approximate="none": (0.0, 0.0),
    "softplus": lambda beta=1.0, threshold=20.0: (beta, threshold),
}


def _no_kernel(kind, params):
    """Why the activation kernels cannot run `kind` with `params` (None: they can)."""
    if kind not in _KERNEL_PARAMS:
        return "no kernel for this activation"
    if params.get("approximate", "none") != "none":
        return f"no kernel for approximate={params['approximate']!r}"
    return None


def _half_route(kind, params):
    """Half calls take the kernels where float32 calls do, else the array code in float32."""
    return True if _no_kernel(kind, params) is None else "array"


@float32_compute("activation", forward=True,
                 half_kernels=lambda be, kind, x, **params: _half_route(kind, params))
def act_forward(be, kind: str, x, check: str | None = None, **params):
    """y = kind(x) elementwise. Returns (y, ctx) with ctx what act_backward needs.
    check: x's argument name when its NaN/Inf scan (gpunet.checks) is left to
    this op: the compiled ReLU does it in its read of x, the rest first."""
    route = None if dtypes.is_half(x.dtype) else path(be, kind, x.dtype, unsupported=_no_kernel(kind, params))
    host_relu = route != "kernel" and kind == "relu" and _host_f32(be.xp, x)
    if check is not None and not host_relu:
        checks.finite_values(be, x, check)
    if route is None:  # the kernels' half path (float32_compute sends only such calls here)
        x = be.xp.asarray(x, order="C")
        y = be.xp.empty_like(x)
        be.kernels.act_forward(kind, kernel_view(be, x), kernel_view(be, y), *_KERNEL_PARAMS[kind](**params),
                               be.stream())
        return y, (kind, params, x, y)
    if route == "kernel":
        x = be.xp.asarray(x, order="C")  # not ascontiguousarray: that makes a 0-d input 1-d
        y = be.xp.empty_like(x)
        be.kernels.act_forward(kind, x, y, *_KERNEL_PARAMS[kind](**params), be.stream())
    elif host_relu:
        y = _relu_f32(be, x, check)
    else:
        y = FORWARD[kind](be.xp, x, **params).astype(x.dtype, copy=False)
    return y, (kind, params, x, y)


@float32_compute("activation", forward=False,
                 half_kernels=lambda be, ctx, dy: _half_route(ctx[0], ctx[1]))
def act_backward(be, ctx, dy):
    """dx = dy * kind'(x). Raises NoGradientError for heaviside and sign."""
    kind, params, x, y = ctx
    if kind not in DERIVATIVE:
        raise NoGradientError(f"{kind}: the derivative is 0 everywhere except at 0, where it is undefined; "
                              "there is no useful gradient to backpropagate")
    if dtypes.is_half(dy.dtype):  # the kernels' half path
        dx = be.xp.empty_like(x)
        be.kernels.act_backward(kind, kernel_view(be, x), kernel_view(be, y),
                                kernel_view(be, be.xp.asarray(dy, dtype=x.dtype, order="C")), kernel_view(be, dx),
                                *_KERNEL_PARAMS[kind](**params), be.stream())
        return dx
    route = path(be, kind, x.dtype, fused=True, unsupported=_no_kernel(kind, params))
    if route == "kernel":
        dx = be.xp.empty_like(x)
        be.kernels.act_backward(kind, x, y, be.xp.asarray(dy, order="C"), dx, *_KERNEL_PARAMS[kind](**params),
                                be.stream())
        return dx
    if route == "fused":
        return _fused_backward(kind, params, x, y, dy.astype(x.dtype, copy=False))
    if kind == "relu":  # a select, not a product, as the kernels and PyTorch: a NaN gradient at x <= 0 gives 0
        if _host_f32(be.xp, x) and _host_f32(be.xp, dy) and dy.shape == x.shape \
                and (lib := hostlib.load()) is not None:
            return _relu_backward_f32(lib, x, dy)
        return select(be.xp, x > 0, dy.astype(x.dtype, copy=False))
    if kind == "gelu" and _host_f32(be.xp, x) and _host_f32(be.xp, dy) and dy.shape == x.shape:
        if params.get("approximate", "none") == "none":
            return _gelu_derivative_f32(x, _gelu_output(x, y), dy)  # the product in the derivative's pass
        if (lib := hostlib.load()) is not None:
            return _gelu_tanh_f32(lib, x, derivative=True, dy=dy)
    return (dy * DERIVATIVE[kind](be.xp, x, y, **params)).astype(x.dtype, copy=False)


# ---------------------------------------------------------------- CuPy fusion of the backward
# kind -> (the input the derivative reads, body computing dx); alpha/beta carry
# the activation's parameters (leaky_relu: negative_slope; softplus: beta, threshold)
_SIGMOID_OF_BX = """
    const T e = exp(-fabs(bx));
    s = bx >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);"""

FUSED_BACKWARD = {
    "relu": ("x", "dx = x > T(0) ? dy : T(0);"),
    "leaky_relu": ("x", "dx = dy * (x > T(0) ? T(1) : alpha);"),
    "sigmoid": ("y", "dx = dy * (y * (T(1) - y));"),
    "tanh": ("y", "dx = dy * (T(1) - y * y);"),
    "softsign": ("x", "const T a = T(1) + fabs(x); dx = dy * (T(1) / (a * a));"),
    "gelu": ("x", f"""
        const T cdf = T(0.5) * erfc(-x / {lit(_SQRT_2)});
        dx = dy * (cdf + x * {lit(_INV_SQRT_2PI)} * exp(T(-0.5) * x * x));"""),
    "gelu_tanh": ("x", f"""
        const T th = tanh({lit(_SQRT_2_OVER_PI)} * (x + {lit(_GELU_TANH_C)} * x * x * x));
        const T inner = {lit(_SQRT_2_OVER_PI)} * (T(1) + {lit(3 * _GELU_TANH_C)} * x * x);
        dx = dy * (T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * inner);"""),
    "softplus": ("x", f"""
        const T bx = alpha * x;
        T s;
        if (bx > beta) s = T(1); else {{ {_SIGMOID_OF_BX} }}
        dx = dy * s;"""),
    "silu": ("x", f"""
        const T bx = x;
        T s;
        {_SIGMOID_OF_BX}
        dx = dy * (s * (T(1) + x * (T(1) - s)));"""),
    "elu": ("x", "dx = x > T(0) ? dy : dy * (alpha * exp(x));"),
}


@functools.cache
def _fused_backward_kernel(key: str):
    reads, body = FUSED_BACKWARD[key]
    return cupy().ElementwiseKernel(f"T {reads}, T dy, T alpha, T beta", "T dx", body, f"gpunet_{key}_backward")


def _fused_backward(kind: str, params: dict, x, y, dy):
    """dx = dy * kind'(x), as DERIVATIVE times dy, in one pass over CuPy arrays."""
    key = "gelu_tanh" if kind == "gelu" and params.get("approximate", "none") == "tanh" else kind
    alpha, beta = 0.0, 0.0
    if kind == "leaky_relu":
        alpha = params.get("negative_slope", 0.01)
    elif kind == "softplus":
        alpha, beta = params.get("beta", 1.0), params.get("threshold", 20.0)
    elif kind == "elu":
        alpha = params.get("alpha", 1.0)
    reads = x if FUSED_BACKWARD[key][0] == "x" else y
    return _fused_backward_kernel(key)(reads, dy, alpha, beta)
