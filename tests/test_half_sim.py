"""The half-precision types of the kernels (csrc/kernels/halftest.cu): on sim
the simulator's cuda_fp16.h/cuda_bf16.h (csrc/sim/half.h), on cuda the
toolkit's, checked bit for bit against NumPy/ml_dtypes casts and against an
exact rounding reference written here from the formats' definitions.

CUDA's NaN rule: every NaN converted to a 16-bit type becomes 0x7FFF (no
sign, no payload); float16 -> float gives the float NaN 0x7FFFFFFF; bfloat16 ->
float is the bits shifted left by 16."""
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import gpunet
from gpunet import to_numpy

KERNELS = ("_half_from_float", "_half_to_float", "_half_op", "_half_warp_sum", "_half_atomic_add")
FORMATS = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
MODES = ("rn", "rz", "rd", "ru")
CANONICAL_NAN = 0x7FFF


# ---------------------------------------------------------------- the reference
def finite_table(fmt):
    """Bits 0 .. +inf of `fmt` (index == bits) and their values in float64,
    +inf replaced by the next power of two: the value past the largest finite
    one that rounding to nearest treats as its upper neighbour."""
    inf_bits = int(np.array(np.inf, FORMATS[fmt]).view(np.uint16))
    values = np.arange(inf_bits + 1, dtype=np.uint16).view(FORMATS[fmt]).astype(np.float64)
    values[-1] = 2 * values[-2] - values[-3]  # max + one ulp of the top binade
    return values


def round_reference(x, fmt, mode="rn"):
    """float64 values x rounded to `fmt` by `mode`, as uint16 bits: the two
    neighbours by search in the table of all values, then the IEEE rule. The
    differences are exact (Sterbenz: neighbours are within a factor of 2)."""
    with np.errstate(invalid="ignore"):  # signalling NaNs among the inputs
        x = np.asarray(x, np.float64)
    table = finite_table(fmt)
    a = np.abs(x)
    lo = np.clip(np.searchsorted(table, a, side="right") - 1, 0, table.size - 2)  # past the largest: it, inf
    hi = lo + 1
    exact = table[lo] == a
    neg = np.signbit(x)
    if mode == "rn":
        d_lo, d_hi = a - table[lo], table[hi] - a
        up = (d_hi < d_lo) | ((d_hi == d_lo) & (lo % 2 == 1))
    elif mode == "rz":
        up = np.zeros_like(exact)
    else:  # away from zero when the direction (up for ru, down for rd) points away
        up = neg if mode == "rd" else ~neg
    bits = np.where(exact | ~up, lo, hi).astype(np.uint16)
    bits = np.where(np.isinf(x), table.size - 1, bits)  # inf stays inf in every mode
    bits |= np.where(neg, 0x8000, 0).astype(np.uint16)
    return np.where(np.isnan(x), CANONICAL_NAN, bits).astype(np.uint16)


def cast(x, fmt):
    """NumPy's float16 / ml_dtypes' bfloat16 cast of x, as bits (overflow to inf is the point)."""
    with np.errstate(over="ignore"):
        return x.astype(FORMATS[fmt]).view(np.uint16)


def value(bits, fmt):
    return np.asarray(bits, np.uint16).view(FORMATS[fmt]).astype(np.float64)


def boundary_values(fmt):
    """float32 values around every rounding boundary of `fmt`: each finite
    value, each midpoint between neighbours (the overflow threshold among
    them), each one float32 ulp either side, both signs; float32 subnormals,
    infinities and NaNs with payloads and signs."""
    table = finite_table(fmt)
    mids = (table[:-1] + table[1:]) / 2  # exact in float32: 16-bit formats need <= 12 bits
    points = np.concatenate([table[:-1], mids]).astype(np.float32)
    around = np.concatenate([points, np.nextafter(points, np.float32(np.inf)),
                             np.nextafter(points, np.float32(-np.inf))])
    tiny = np.array([1e-45, 1e-40, 1.2e-38, 3e-39, np.inf, 3.4e38], np.float32)
    x = np.concatenate([around, tiny])
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFBFFFFF, 0x7FFFFFFF], np.uint32).view(np.float32)
    return np.concatenate([x, -x, nans])


# ---------------------------------------------------------------- running the kernels
def run(kb, name, *arrays, out_dtype, out_size=None, args=(), before=()):
    """Call kb.kernels.<name>(*before, *inputs, out, *args, stream); returns out on the host."""
    inputs = [kb.asarray(np.ascontiguousarray(a)) for a in arrays]
    out = kb.asarray(np.zeros(out_size if out_size is not None else arrays[0].size, out_dtype))
    getattr(kb.kernels, name)(*before, *inputs, out, *args, kb.stream())
    return to_numpy(out)


def to_float(kb, fmt, bits):
    return run(kb, "_half_to_float", np.asarray(bits, np.uint16).view(np.int16), out_dtype=np.float32, before=(fmt,))


def from_float(kb, fmt, x, mode="rn"):
    return run(kb, "_half_from_float", x, out_dtype=np.int16, before=(fmt,), args=(mode,)).view(np.uint16)


def op(kb, fmt, name, a, b=None, c=None, pairs=False):
    a = np.asarray(a, np.uint16).view(np.int16)
    b = a if b is None else np.asarray(b, np.uint16).view(np.int16)
    c = a if c is None else np.asarray(c, np.uint16).view(np.int16)
    return run(kb, "_half_op", a, b, c, out_dtype=np.int16, before=(fmt, name, pairs)).view(np.uint16)


# ---------------------------------------------------------------- conversions
@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_float16_to_float_every_bit_pattern(kb, fmt):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = to_float(kb, fmt, bits)
    ref = bits.view(FORMATS[fmt]).astype(np.float32)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    if fmt == "bfloat16":  # the bits shifted: sign and payload kept
        np.testing.assert_array_equal(got.view(np.uint32)[nan], bits[nan].astype(np.uint32) << 16)
    else:
        assert (got.view(np.uint32)[nan] == 0x7FFFFFFF).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_float16_reference_matches_numpy_casts(fmt):
    """The rounding reference agrees with NumPy's float16 and ml_dtypes'
    bfloat16 casts wherever those are defined like CUDA (not NaN)."""
    x = boundary_values(fmt)
    keep = ~np.isnan(x)
    np.testing.assert_array_equal(round_reference(x[keep], fmt), cast(x[keep], fmt))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_float_to_bfloat16_float16_at_every_rounding_boundary(kb, fmt, mode):
    x = boundary_values(fmt)
    got = from_float(kb, fmt, x, mode)
    ref = round_reference(x, fmt, mode)
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, (f"{bad.size} of {x.size} differ; first: x={x[bad[0]]!r} ({x[bad[0]:bad[0]+1].view(np.uint32)[0]:#x})"
                           f" got {got[bad[0]]:#06x}, expected {ref[bad[0]]:#06x}")
    if mode == "rn":
        keep = ~np.isnan(x)
        np.testing.assert_array_equal(got[keep], cast(x[keep], fmt))
    assert (got[np.isnan(x)] == CANONICAL_NAN).all()


def test_float16_overflow_threshold_exactly(kb):
    """65520 = 65504 + half an ulp is the first float that rounds to inf;
    toward zero (and down for positives) the largest finite value stays."""
    x = np.array([65504, 65519.996, 65520, 1e6, -65520, -65519.996], np.float32)
    assert from_float(kb, "float16", x, "rn").tolist() == [0x7BFF, 0x7BFF, 0x7C00, 0x7C00, 0xFC00, 0xFBFF]
    assert from_float(kb, "float16", x, "rz").tolist() == [0x7BFF, 0x7BFF, 0x7BFF, 0x7BFF, 0xFBFF, 0xFBFF]
    assert from_float(kb, "float16", x, "ru").tolist() == [0x7BFF, 0x7C00, 0x7C00, 0x7C00, 0xFBFF, 0xFBFF]
    assert from_float(kb, "float16", x, "rd").tolist() == [0x7BFF, 0x7BFF, 0x7BFF, 0x7BFF, 0xFC00, 0xFC00]


@pytest.mark.parametrize("fmt", FORMATS)
def test_float64_to_bfloat16_float16_rounds_once(kb, fmt):
    """__double2half/__double2bfloat16 round the double itself: a midpoint
    plus one double ulp rounds up although the nearest float is the midpoint
    (which would round to even)."""
    table = finite_table(fmt)
    mids = (table[:-1] + table[1:]) / 2
    x = np.concatenate([mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf), [1e-300, 5e-324]])
    x = np.concatenate([x, -x, [np.nan, np.inf]])
    got = from_float(kb, fmt, x)
    np.testing.assert_array_equal(got, round_reference(x, fmt))
    up = np.nextafter(mids[1:-1], np.inf)  # would tie in float32 for about half of them
    assert (value(round_reference(up, fmt), fmt) > up).all()


# ---------------------------------------------------------------- arithmetic
def random_operands(rng, fmt, n):
    """Bit patterns: mostly finite values of moderate size, plus specials."""
    a = rng.standard_normal(n) * np.exp2(rng.integers(-12, 12, n))
    bits = a.astype(np.float32).astype(FORMATS[fmt]).view(np.uint16)
    specials = np.array([0x0000, 0x8000, 0x0001, 0x8001, int(round_reference(np.inf, fmt)), CANONICAL_NAN,
                         int(round_reference(-np.inf, fmt)), int(finite_table(fmt).size - 2)], np.uint16)
    bits[: specials.size] = specials
    return bits


def reference_op(name, a, b, fmt):
    """The IEEE result: the float64 operation (exact for +, -, *, and a
    53-bit rounding whose second rounding to <= 11 bits is still correct for
    /), rounded once to fmt."""
    x, y = value(a, fmt), value(b, fmt)
    with np.errstate(all="ignore"):
        exact = {"add": x + y, "sub": x - y, "mul": x * y, "div": x / y,
                 "operator+": x + y, "operator*": x * y}[name]
    return round_reference(exact, fmt)


def reference_max_min(name, a, b, fmt):
    """max/min of CUDA (max.f16): a NaN operand yields the other one (canonical
    NaN if both are; for the _nan forms if either is), and -0 < +0."""
    x, y = value(a, fmt), value(b, fmt)
    is_max = name.startswith("max")
    pick_a = (x > y) if is_max else (x < y)
    ties = (x == y) & ((a & 0x8000) == (0 if is_max else 0x8000))  # prefer +0 for max, -0 for min
    out = np.where(pick_a | ties, a, b)
    na, nb = np.isnan(x), np.isnan(y)
    out = np.where(na & ~nb, b, np.where(nb & ~na, a, out))
    nan = (na | nb) if name.endswith("_nan") else (na & nb)
    return np.where(nan, CANONICAL_NAN, out).astype(np.uint16)


@pytest.mark.parametrize("pairs", [False, True], ids=["scalar", "pairs"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_float16_arithmetic_rounds_correctly(kb, fmt, pairs, rng, schedule):
    n = 4096
    a, b = random_operands(rng, fmt, n), random_operands(rng, fmt, n)[::-1].copy()
    for name in ("add", "sub", "mul", "div", "operator+", "operator*"):
        got, ref = op(kb, fmt, name, a, b, pairs=pairs), reference_op(name, a, b, fmt)
        nan = np.isnan(value(ref, fmt))
        np.testing.assert_array_equal(got[~nan], ref[~nan], err_msg=name)
        assert np.isnan(value(got[nan], fmt)).all(), name
    for name in ("max", "min", "max_nan", "min_nan"):
        np.testing.assert_array_equal(op(kb, fmt, name, a, b, pairs=pairs), reference_max_min(name, a, b, fmt),
                                      err_msg=name)
    finite = ~np.isnan(value(a, fmt))
    np.testing.assert_array_equal(op(kb, fmt, "neg", a, pairs=pairs)[finite], (a ^ 0x8000)[finite])
    np.testing.assert_array_equal(op(kb, fmt, "abs", a, pairs=pairs)[finite], (a & 0x7FFF)[finite])


COMPARISONS = {
    "eq": lambda x, y: x == y, "ne": lambda x, y: (x < y) | (x > y), "lt": np.less, "le": np.less_equal,
    "gt": np.greater, "ge": np.greater_equal, "operator<": np.less,
    # unordered: true when either is NaN
    "equ": lambda x, y: ~((x < y) | (x > y)), "neu": lambda x, y: ~(x == y), "ltu": lambda x, y: ~(x >= y),
    "geu": lambda x, y: ~(x < y),
}
MATH = {"sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x), "rcp": lambda x: 1 / x, "exp": np.exp, "log": np.log,
        "tanh": np.tanh}


def ordered(b):
    """16-bit patterns as integers in the order of their values (for ulp distances)."""
    b = b.astype(np.int32)
    return np.where(b & 0x8000, -(b & 0x7FFF), b)


@pytest.mark.parametrize("pairs", [False, True], ids=["scalar", "pairs"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_float16_comparisons_classification_and_math(kb, fmt, pairs, rng):
    """Comparisons (ordered and unordered), __hisnan/__hisinf and __hadd_sat
    exactly; hsqrt, hexp, ... within one ulp of the correctly rounded value
    (the GPU's are approximations; the simulator rounds the float function)."""
    n = 2048
    a, b = random_operands(rng, fmt, n), random_operands(rng, fmt, n)[::-1].copy()
    b[:64] = a[:64]  # equal pairs
    x, y = value(a, fmt), value(b, fmt)
    one = lambda mask: np.where(mask, value(round_reference(1.0, fmt), fmt), 0.0)  # noqa: E731
    with np.errstate(invalid="ignore"):
        for name, cmp in COMPARISONS.items():
            np.testing.assert_array_equal(value(op(kb, fmt, name, a, b, pairs=pairs), fmt), one(cmp(x, y)),
                                          err_msg=name)
    np.testing.assert_array_equal(value(op(kb, fmt, "isnan", a, pairs=pairs), fmt), one(np.isnan(x)))
    np.testing.assert_array_equal(value(op(kb, fmt, "isinf", a, pairs=pairs), fmt),
                                  np.where(np.isinf(x), np.sign(x), 0.0))
    with np.errstate(all="ignore"):
        s = value(round_reference(x + y, fmt), fmt)
    sat = np.where(np.isnan(s), 0.0, np.clip(s, 0.0, 1.0))
    np.testing.assert_array_equal(value(op(kb, fmt, "add_sat", a, b, pairs=pairs), fmt), sat)
    for name, fn in MATH.items():
        with np.errstate(all="ignore"):
            ref = round_reference(fn(x), fmt)
        got = op(kb, fmt, name, a, pairs=pairs)
        nan = np.isnan(value(ref, fmt))
        assert np.isnan(value(got[nan], fmt)).all(), name
        far = np.abs(ordered(got[~nan]) - ordered(ref[~nan])) > 1
        assert not far.any(), (name, x[~nan][far][:5], value(got[~nan][far][:5], fmt))


def fma_reference(a, b, c, fmt):
    """a*b + c rounded once, from the exact rational value."""
    out = np.empty(a.size, np.uint16)
    table = finite_table(fmt)
    for i, (x, y, z) in enumerate(zip(value(a, fmt), value(b, fmt), value(c, fmt))):
        with np.errstate(all="ignore"):
            inexact = x * y + z  # NaN, infinities and the sign of a zero result
        if not np.isfinite(inexact):
            out[i] = round_reference(inexact, fmt)
            continue
        exact = Fraction(x) * Fraction(y) + Fraction(z)
        mag = abs(exact)
        lo = int(np.clip(np.searchsorted(table, float(mag), side="right") - 1, 0, table.size - 2))
        while lo > 0 and Fraction(table[lo]) > mag:
            lo -= 1
        while lo + 2 < table.size and Fraction(table[lo + 1]) <= mag:
            lo += 1
        d_lo, d_hi = mag - Fraction(table[lo]), Fraction(table[lo + 1]) - mag
        bits = lo + 1 if d_hi < d_lo or (d_hi == d_lo and lo % 2) else lo
        out[i] = bits | (0x8000 if exact < 0 or (exact == 0 and np.signbit(inexact)) else 0)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_float16_fma_rounds_once(kb, fmt, rng):
    """__hfma/__hfma2 round the exact a*b + c once. Hard cases: c = -(a*b
    rounded), where the exact result is a tiny difference that rounding the
    product first would lose; and c far below a*b when a*b is a midpoint of
    the format (1.0625^2 = 1.125 + 2^-8 in bfloat16): the sum rounded to a
    double is the midpoint itself, and c's sign alone decides the rounding."""
    n = 1536
    a, b = random_operands(rng, fmt, n), random_operands(rng, fmt, n)[::-1].copy()
    a[-4:] = b[-4:] = cast(np.array([1.0625, 1.0625, -1.0625, 1.0625], np.float32), fmt)
    prod = round_reference(value(a, fmt) * value(b, fmt), fmt)
    tiny = cast(np.float32(2.0 ** -100) * rng.choice([-1, 1], n).astype(np.float32), fmt)  # fp16: +-0
    c = np.choose(rng.integers(0, 3, n), [prod ^ 0x8000, random_operands(rng, fmt, n), tiny]).astype(np.uint16)
    c[-4:] = cast(np.array([2.0 ** -100, -(2.0 ** -100), 2.0 ** -100, 0.0], np.float32), fmt)
    ref = fma_reference(a, b, c, fmt)
    nan = np.isnan(value(ref, fmt))
    for pairs in (False, True):
        got = op(kb, fmt, "fma", a, b, c, pairs=pairs)
        np.testing.assert_array_equal(got[~nan], ref[~nan])
        assert np.isnan(value(got[nan], fmt)).all()


# ---------------------------------------------------------------- shuffles and atomics
@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_float16_pair_shuffle_butterfly(kb, fmt, rng, schedule):
    """__shfl_xor_sync on pairs with __hadd2: every lane ends with the sum
    rounded at each of the five steps, lane by lane as the butterfly pairs them."""
    x = rng.standard_normal(64).astype(np.float32).astype(FORMATS[fmt]).view(np.uint16)
    got = run(kb, "_half_warp_sum", x.view(np.int16), out_dtype=np.int16, before=(fmt,)).view(np.uint16)
    lanes = x.reshape(32, 2)
    for offset in (16, 8, 4, 2, 1):
        partner = lanes[np.arange(32) ^ offset]
        lanes = round_reference(value(lanes, fmt) + value(partner, fmt), fmt)
    np.testing.assert_array_equal(got.reshape(32, 2), lanes)


@pytest.mark.parametrize("pairs", [False, True], ids=["scalar", "pairs"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_bfloat16_float16_atomic_add(kb, fmt, pairs, schedule):
    """Small integers, so every order of the atomic sums is exact."""
    x = np.tile(np.array([1, 2, -1, 3], np.float32), 250).astype(FORMATS[fmt]).view(np.int16)
    m = 10  # slots (pairs: 5 pairs); each gets 100 of the 1000 values
    got = run(kb, "_half_atomic_add", x, out_dtype=np.int16, out_size=m, before=(fmt, pairs))
    width = 2 if pairs else 1
    ref = x.view(FORMATS[fmt]).astype(np.float64).reshape(-1, m // width, width).sum(axis=0).reshape(-1)
    np.testing.assert_array_equal(got.view(FORMATS[fmt]).astype(np.float64), ref)


@pytest.mark.no_kernels("the arguments are refused before any launch")
def test_bfloat16_float16_bindings_refuse_bad_arguments():
    k = gpunet.get_backend("sim").kernels
    x, out = np.zeros(4, np.float32), np.zeros(4, np.int16)
    with pytest.raises(ValueError, match="'format'"):
        k._half_from_float("float8", x, out, "rn", 0)
    with pytest.raises(ValueError, match="'mode'"):
        k._half_from_float("float16", x, out, "up", 0)
    with pytest.raises(ValueError, match="'mode'.*float64"):
        k._half_from_float("float16", x.astype(np.float64), out, "rz", 0)
    with pytest.raises(TypeError, match="'out'.*int16"):
        k._half_from_float("bfloat16", x, np.zeros(4, np.float32), "rn", 0)
    with pytest.raises(ValueError, match="'op'"):
        k._half_op("float16", "pow", False, out, out, out, np.zeros(4, np.int16), 0)
    with pytest.raises(ValueError, match="even"):
        k._half_op("float16", "add", True, out[:3], out[:3], out[:3], np.zeros(3, np.int16), 0)
