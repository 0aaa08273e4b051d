// half.h -- the simulator's <cuda_fp16.h> and <cuda_bf16.h> (shim/ includes
// this file for both): __half, __half2, __nv_bfloat16, __nv_bfloat162, their
// conversions, operators, arithmetic and math intrinsics and atomicAdd, with
// the names and signatures of the CUDA headers, so kernel source compiles
// unchanged for nvcc and for the CPU.
//
// Conversions are bit-exact with CUDA's definitions:
//   * float/double -> 16 bits rounds directly from the exact value (no double
//     rounding) to nearest even (_rn), toward zero (_rz), down (_rd) or up
//     (_ru); subnormals are kept; a finite value past the largest one becomes
//     infinity or the largest finite value as the rounding direction says
//     (fp16: x >= 65520 rounds to inf under _rn); every NaN becomes CUDA's
//     canonical NaN 0x7FFF (no sign, no payload), for fp16 and bf16 alike;
//   * fp16 -> float is exact, a NaN giving the canonical float NaN 0x7FFFFFFF
//     (cuda_fp16.hpp's definition); bf16 -> float is the bits shifted left by
//     16, so a NaN keeps its sign and payload.
// Arithmetic: + - * / of two 16-bit values computed in float and rounded
// once is the correctly rounded 16-bit result (float's 24 bits >= 2p + 2 for
// p = 11 and p = 8), which is what the GPU's add.f16/mul.f16/... give; fma is
// computed exactly (a*b is exact in double; the sum is rounded to odd, then
// to the 16-bit format). The math functions (hexp, hsqrt, ...) are the float
// function rounded once: the GPU's approximate versions may differ in the
// last bit, as __expf does (see README.md).
#pragma once
#ifdef __CUDACC__
#error "csrc/sim/half.h is only for the CPU (non-nvcc) build: nvcc uses the toolkit's cuda_fp16.h/cuda_bf16.h"
#endif
#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>

namespace cudasim {
namespace half {

enum class Round { rn, rz, rd, ru };

// A binary 16-bit floating-point format: E exponent bits, M stored mantissa bits.
template <int E, int M>
struct Format {
  static constexpr int kMant = M;
  static constexpr int kBias = (1 << (E - 1)) - 1;
  static constexpr int kMinExp = 1 - kBias;  // of the normal numbers; the subnormals' quantum is 2^(kMinExp - M)
  static constexpr int kMaxExp = kBias;
  static constexpr uint16_t kInf = uint16_t(((1u << E) - 1u) << M);
  static constexpr uint16_t kNaN = 0x7FFF;  // CUDA's canonical NaN of both formats
  static constexpr uint16_t kSign = 0x8000;
};
using Fp16 = Format<5, 10>;
using Bf16 = Format<8, 7>;

// `x` rounded to format F by `mode`, as bits. Exact arithmetic throughout:
// scaling by powers of two, floor and the subtraction below lose nothing, so
// the rounding decision sees the exact value.
template <class F>
inline uint16_t from_double(double x, Round mode) {
  constexpr int M = F::kMant;
  if (std::isnan(x)) return F::kNaN;
  const bool neg = std::signbit(x);
  const uint16_t sign = neg ? F::kSign : 0;
  const double a = std::fabs(x);
  if (std::isinf(a)) return sign | F::kInf;
  if (a == 0) return sign;  // (frexp gives no exponent to clamp for zero)
  int e2 = 0;
  std::frexp(a, &e2);           // a = m 2^e2, m in [0.5, 1)
  const int e = std::max(e2 - 1, F::kMinExp);  // a's exponent, the subnormal range sharing the smallest
  if (e > F::kMaxExp) {         // at least twice the largest finite value
    const bool to_inf = mode == Round::rn || (mode == Round::ru && !neg) || (mode == Round::rd && neg);
    return sign | (to_inf ? F::kInf : uint16_t(F::kInf - 1));
  }
  const double scaled = std::ldexp(a, M - e);  // a in units of its quantum 2^(e - M), < 2^(M+1)
  uint32_t n = (uint32_t)scaled;
  const double frac = scaled - n;
  const bool up = mode == Round::rn ? (frac > 0.5 || (frac == 0.5 && (n & 1u)))
                  : mode == Round::ru ? (frac > 0 && !neg)
                  : mode == Round::rd ? (frac > 0 && neg)
                                      : false;
  n += up;
  // The biased exponent field of e, minus one, plus n (which holds the hidden
  // bit): right for subnormals (field 0), normals, a carry into the next
  // binade and a carry past the largest finite value (giving infinity).
  return sign | uint16_t(((uint32_t)(e + F::kBias - 1) << M) + n);
}

// The exact value of bits of format F (a NaN becomes a quiet NaN).
template <class F>
inline double to_double(uint16_t bits) {
  constexpr int M = F::kMant;
  const uint32_t field = (bits & 0x7FFFu) >> M, mant = bits & ((1u << M) - 1u);
  double a;
  if (field == (F::kInf >> M)) a = mant ? NAN : INFINITY;
  else if (field == 0) a = std::ldexp((double)mant, F::kMinExp - M);
  else a = std::ldexp((double)(mant | (1u << M)), (int)field - F::kBias - M);
  return (bits & F::kSign) ? -a : a;
}

// A 64-bit integer rounded to format F: exact through double when it fits in
// 53 bits; otherwise the dropped bits become a sticky bit (rounding to odd),
// which the second rounding to at most 11 bits cannot mistake for a tie.
template <class F, class I>
inline uint16_t from_integer(I v, Round mode) {
  const bool neg = v < 0;
  unsigned long long u = neg ? 0ull - (unsigned long long)v : (unsigned long long)v;
  int shift = 0;
  if (u >> 53) {
    shift = 64 - __builtin_clzll(u) - 53;
    const bool sticky = (u & ((1ull << shift) - 1)) != 0;
    u = (u >> shift) | sticky;
  }
  const double d = std::ldexp((double)u, shift);
  return from_double<F>(neg ? -d : d, mode);
}

// a*b + c rounded once to format F. a*b is exact in double (<= 22 bits); the
// sum is computed with its rounding error (TwoSum) and made round-to-odd, so
// that rounding it again to the 16-bit format rounds the exact value.
template <class F>
inline uint16_t fma(double a, double b, double c) {
  const double p = a * b;
  const double s = p + c;
  if (!std::isfinite(s)) return from_double<F>(s, Round::rn);
  const double bp = s - c, err = (p - bp) + (c - (s - bp));
  uint64_t bits;
  std::memcpy(&bits, &s, 8);
  double odd = s;
  if (err != 0 && !(bits & 1u)) odd = std::nextafter(s, err > 0 ? INFINITY : -INFINITY);
  return from_double<F>(odd, Round::rn);
}

}  // namespace half
}  // namespace cudasim

// ---------------------------------------------------------------- the types
struct __half_raw { unsigned short x; };
struct __half2_raw { unsigned short x, y; };
struct __nv_bfloat16_raw { unsigned short x; };
struct __nv_bfloat162_raw { unsigned short x, y; };

struct __nv_bfloat16;

// Shared body of __half and __nv_bfloat16: the bits (__x, as CUDA names
// them) and the conversions from and to float. Trivially copyable, so the
// simulator's shuffles and atomics take them as they take float.
template <class F, class Raw>
struct __cudasim_half_base {
  using format = F;
  unsigned short __x;
  __cudasim_half_base() = default;
  constexpr __cudasim_half_base(const Raw& r) : __x(r.x) {}
  __cudasim_half_base(float f) : __x(cudasim::half::from_double<F>(f, cudasim::half::Round::rn)) {}
  __cudasim_half_base(double f) : __x(cudasim::half::from_double<F>(f, cudasim::half::Round::rn)) {}
  // from each integer type, as CUDA's constructors (which round to nearest too)
  __cudasim_half_base(short v) : __x(cudasim::half::from_integer<F>(v, cudasim::half::Round::rn)) {}
  __cudasim_half_base(unsigned short v) : __x(cudasim::half::from_integer<F>(v, cudasim::half::Round::rn)) {}
  __cudasim_half_base(int v) : __x(cudasim::half::from_integer<F>(v, cudasim::half::Round::rn)) {}
  __cudasim_half_base(unsigned v) : __x(cudasim::half::from_integer<F>(v, cudasim::half::Round::rn)) {}
  __cudasim_half_base(long v) : __x(cudasim::half::from_integer<F>(v, cudasim::half::Round::rn)) {}
  __cudasim_half_base(unsigned long v) : __x(cudasim::half::from_integer<F>(v, cudasim::half::Round::rn)) {}
  __cudasim_half_base(long long v) : __x(cudasim::half::from_integer<F>(v, cudasim::half::Round::rn)) {}
  __cudasim_half_base(unsigned long long v) : __x(cudasim::half::from_integer<F>(v, cudasim::half::Round::rn)) {}
  operator Raw() const { return Raw{__x}; }
  operator float() const;
};

struct alignas(2) __half : __cudasim_half_base<cudasim::half::Fp16, __half_raw> {
  using __cudasim_half_base::__cudasim_half_base;
  __half() = default;
  explicit __half(const __nv_bfloat16& b);
};
struct alignas(2) __nv_bfloat16 : __cudasim_half_base<cudasim::half::Bf16, __nv_bfloat16_raw> {
  using __cudasim_half_base::__cudasim_half_base;
  __nv_bfloat16() = default;
  explicit __nv_bfloat16(const __half& h);
};

template <>
inline __cudasim_half_base<cudasim::half::Fp16, __half_raw>::operator float() const {
  if ((__x & 0x7FFFu) > 0x7C00u) return std::bit_cast<float>(0x7FFFFFFFu);  // cuda_fp16.hpp: NaN -> canonical
  return (float)cudasim::half::to_double<cudasim::half::Fp16>(__x);
}
template <>
inline __cudasim_half_base<cudasim::half::Bf16, __nv_bfloat16_raw>::operator float() const {
  return std::bit_cast<float>((uint32_t)__x << 16);
}
inline __half::__half(const __nv_bfloat16& b) : __half((float)b) {}
inline __nv_bfloat16::__nv_bfloat16(const __half& h) : __nv_bfloat16((float)h) {}

// __half2 / __nv_bfloat162: two values in one 4-byte word, x the low half.
struct alignas(4) __half2 {
  using scalar = __half;
  __half x, y;
  __half2() = default;
  constexpr __half2(const __half& a, const __half& b) : x(a), y(b) {}
  __half2(const __half2_raw& r) : x(__half_raw{r.x}), y(__half_raw{r.y}) {}
  operator __half2_raw() const { return {x.__x, y.__x}; }
};
struct alignas(4) __nv_bfloat162 {
  using scalar = __nv_bfloat16;
  __nv_bfloat16 x, y;
  __nv_bfloat162() = default;
  constexpr __nv_bfloat162(const __nv_bfloat16& a, const __nv_bfloat16& b) : x(a), y(b) {}
  __nv_bfloat162(const __nv_bfloat162_raw& r) : x(__nv_bfloat16_raw{r.x}), y(__nv_bfloat16_raw{r.y}) {}
  operator __nv_bfloat162_raw() const { return {x.__x, y.__x}; }
};

typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

namespace cudasim {
namespace half {
template <class H>
concept Scalar = std::same_as<H, __half> || std::same_as<H, __nv_bfloat16>;
template <class H2>
concept Pair = std::same_as<H2, __half2> || std::same_as<H2, __nv_bfloat162>;

template <Scalar H>
inline H from_bits(unsigned short b) {
  H h;
  h.__x = b;
  return h;
}
template <Scalar H>
inline H round(double v, Round mode = Round::rn) {
  return from_bits<H>(from_double<typename H::format>(v, mode));
}
template <Scalar H>
inline bool isnan(H a) { return (a.__x & 0x7FFFu) > H::format::kInf; }
template <Scalar H>
inline H canonical_nan() { return from_bits<H>(H::format::kNaN); }

// max/min as the GPU's max.f16/min.f16: a NaN operand yields the other one
// (canonical NaN if both are), and -0 < +0.
template <Scalar H>
inline H max(H a, H b) {
  if (isnan(a) && isnan(b)) return canonical_nan<H>();
  if (isnan(a)) return b;
  if (isnan(b)) return a;
  if ((float)a == (float)b) return (a.__x & 0x8000u) ? b : a;
  return (float)a > (float)b ? a : b;
}
template <Scalar H>
inline H min(H a, H b) {
  if (isnan(a) && isnan(b)) return canonical_nan<H>();
  if (isnan(a)) return b;
  if (isnan(b)) return a;
  if ((float)a == (float)b) return (a.__x & 0x8000u) ? a : b;
  return (float)a < (float)b ? a : b;
}
// the _nan variants: a NaN operand makes the result (canonical) NaN
template <Scalar H>
inline H max_nan(H a, H b) { return isnan(a) || isnan(b) ? canonical_nan<H>() : max(a, b); }
template <Scalar H>
inline H min_nan(H a, H b) { return isnan(a) || isnan(b) ? canonical_nan<H>() : min(a, b); }
// _sat: the result clamped to [0, 1], NaN to +0
template <Scalar H>
inline H sat(H a) {
  if (isnan(a)) return from_bits<H>(0);
  const float f = a;
  return f < 0.f ? from_bits<H>(0) : f > 1.f ? H(1.f) : a;
}

inline float exp10(float v) { return std::pow(10.f, v); }

// applies `op` lane by lane
template <Pair H2, class Op>
inline H2 lanes(H2 a, H2 b, Op op) { return H2(op(a.x, b.x), op(a.y, b.y)); }
template <Pair H2, class Op>
inline H2 lanes(H2 a, Op op) { return H2(op(a.x), op(a.y)); }
}  // namespace half
}  // namespace cudasim

// ---------------------------------------------------------------- operators
template <cudasim::half::Scalar H> inline H operator+(const H& a, const H& b) { return H((float)a + (float)b); }
template <cudasim::half::Scalar H> inline H operator-(const H& a, const H& b) { return H((float)a - (float)b); }
template <cudasim::half::Scalar H> inline H operator*(const H& a, const H& b) { return H((float)a * (float)b); }
template <cudasim::half::Scalar H> inline H operator/(const H& a, const H& b) { return H((float)a / (float)b); }
template <cudasim::half::Scalar H> inline H& operator+=(H& a, const H& b) { return a = a + b; }
template <cudasim::half::Scalar H> inline H& operator-=(H& a, const H& b) { return a = a - b; }
template <cudasim::half::Scalar H> inline H& operator*=(H& a, const H& b) { return a = a * b; }
template <cudasim::half::Scalar H> inline H& operator/=(H& a, const H& b) { return a = a / b; }
template <cudasim::half::Scalar H> inline H operator+(const H& a) { return a; }
template <cudasim::half::Scalar H> inline H operator-(const H& a) { return cudasim::half::from_bits<H>(a.__x ^ 0x8000u); }
template <cudasim::half::Scalar H> inline H& operator++(H& a) { return a = a + H(1.f); }
template <cudasim::half::Scalar H> inline H& operator--(H& a) { return a = a - H(1.f); }
template <cudasim::half::Scalar H> inline H operator++(H& a, int) { H old = a; ++a; return old; }
template <cudasim::half::Scalar H> inline H operator--(H& a, int) { H old = a; --a; return old; }
template <cudasim::half::Scalar H> inline bool operator==(const H& a, const H& b) { return (float)a == (float)b; }
template <cudasim::half::Scalar H> inline bool operator!=(const H& a, const H& b) { return (float)a != (float)b; }
template <cudasim::half::Scalar H> inline bool operator<(const H& a, const H& b) { return (float)a < (float)b; }
template <cudasim::half::Scalar H> inline bool operator<=(const H& a, const H& b) { return (float)a <= (float)b; }
template <cudasim::half::Scalar H> inline bool operator>(const H& a, const H& b) { return (float)a > (float)b; }
template <cudasim::half::Scalar H> inline bool operator>=(const H& a, const H& b) { return (float)a >= (float)b; }

template <cudasim::half::Pair H2> inline H2 operator+(const H2& a, const H2& b) { return H2(a.x + b.x, a.y + b.y); }
template <cudasim::half::Pair H2> inline H2 operator-(const H2& a, const H2& b) { return H2(a.x - b.x, a.y - b.y); }
template <cudasim::half::Pair H2> inline H2 operator*(const H2& a, const H2& b) { return H2(a.x * b.x, a.y * b.y); }
template <cudasim::half::Pair H2> inline H2 operator/(const H2& a, const H2& b) { return H2(a.x / b.x, a.y / b.y); }
template <cudasim::half::Pair H2> inline H2& operator+=(H2& a, const H2& b) { return a = a + b; }
template <cudasim::half::Pair H2> inline H2& operator-=(H2& a, const H2& b) { return a = a - b; }
template <cudasim::half::Pair H2> inline H2& operator*=(H2& a, const H2& b) { return a = a * b; }
template <cudasim::half::Pair H2> inline H2& operator/=(H2& a, const H2& b) { return a = a / b; }
template <cudasim::half::Pair H2> inline H2 operator+(const H2& a) { return a; }
template <cudasim::half::Pair H2> inline H2 operator-(const H2& a) { return H2(-a.x, -a.y); }
template <cudasim::half::Pair H2> inline bool operator==(const H2& a, const H2& b) { return a.x == b.x && a.y == b.y; }
template <cudasim::half::Pair H2> inline bool operator!=(const H2& a, const H2& b) { return a.x != b.x && a.y != b.y; }

// ---------------------------------------------------------------- intrinsics on both types
// CUDA declares each of these once per type (non-templates, so arguments
// convert as they do there); CUDASIM_HALF_BOTH stamps the two overloads.
#define CUDASIM_HALF_BOTH(RET, NAME, PARAMS, BODY)                                      \
  inline RET(__half) NAME PARAMS(__half) { using H [[maybe_unused]] = __half; BODY }                    \
  inline RET(__nv_bfloat16) NAME PARAMS(__nv_bfloat16) { using H [[maybe_unused]] = __nv_bfloat16; BODY }
#define CUDASIM_SAME(H) H
#define CUDASIM_BOOL(H) bool
#define CUDASIM_INT(H) int
#define CUDASIM_P1(H) (const H a)
#define CUDASIM_P2(H) (const H a, const H b)
#define CUDASIM_P3(H) (const H a, const H b, const H c)

CUDASIM_HALF_BOTH(CUDASIM_SAME, __hadd, CUDASIM_P2, return a + b;)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hsub, CUDASIM_P2, return a - b;)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hmul, CUDASIM_P2, return a * b;)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hdiv, CUDASIM_P2, return a / b;)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hadd_rn, CUDASIM_P2, return a + b;)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hsub_rn, CUDASIM_P2, return a - b;)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hmul_rn, CUDASIM_P2, return a * b;)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hadd_sat, CUDASIM_P2, return cudasim::half::sat(a + b);)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hsub_sat, CUDASIM_P2, return cudasim::half::sat(a - b);)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hmul_sat, CUDASIM_P2, return cudasim::half::sat(a * b);)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hfma, CUDASIM_P3,
                  return cudasim::half::from_bits<H>(cudasim::half::fma<H::format>((float)a, (float)b, (float)c));)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hfma_sat, CUDASIM_P3, return cudasim::half::sat(__hfma(a, b, c));)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hneg, CUDASIM_P1, return -a;)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __habs, CUDASIM_P1,
                  return cudasim::half::isnan(a) ? cudasim::half::canonical_nan<H>()
                                                 : cudasim::half::from_bits<H>(a.__x & 0x7FFFu);)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hmax, CUDASIM_P2, return cudasim::half::max(a, b);)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hmin, CUDASIM_P2, return cudasim::half::min(a, b);)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hmax_nan, CUDASIM_P2, return cudasim::half::max_nan(a, b);)
CUDASIM_HALF_BOTH(CUDASIM_SAME, __hmin_nan, CUDASIM_P2, return cudasim::half::min_nan(a, b);)
// comparisons: ordered (false when either is NaN) and unordered (the u forms: true then)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __heq, CUDASIM_P2, return a == b;)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hne, CUDASIM_P2, return a < b || a > b;)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hlt, CUDASIM_P2, return a < b;)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hle, CUDASIM_P2, return a <= b;)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hgt, CUDASIM_P2, return a > b;)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hge, CUDASIM_P2, return a >= b;)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hequ, CUDASIM_P2, return !(a < b || a > b);)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hneu, CUDASIM_P2, return a != b;)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hltu, CUDASIM_P2, return !(a >= b);)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hleu, CUDASIM_P2, return !(a > b);)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hgtu, CUDASIM_P2, return !(a <= b);)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hgeu, CUDASIM_P2, return !(a < b);)
CUDASIM_HALF_BOTH(CUDASIM_BOOL, __hisnan, CUDASIM_P1, return cudasim::half::isnan(a);)
CUDASIM_HALF_BOTH(CUDASIM_INT, __hisinf, CUDASIM_P1,
                  return (a.__x & 0x7FFFu) != H::format::kInf ? 0 : (a.__x & 0x8000u) ? -1 : 1;)
// math: the float function, rounded once
#define CUDASIM_HALF_MATH(NAME, FN) CUDASIM_HALF_BOTH(CUDASIM_SAME, NAME, CUDASIM_P1, return H(FN((float)a));)
CUDASIM_HALF_MATH(hsqrt, std::sqrt)
CUDASIM_HALF_MATH(hrsqrt, 1.f / std::sqrt)
CUDASIM_HALF_MATH(hrcp, 1.f /)
CUDASIM_HALF_MATH(hexp, std::exp)
CUDASIM_HALF_MATH(hexp2, std::exp2)
CUDASIM_HALF_MATH(hexp10, cudasim::half::exp10)
CUDASIM_HALF_MATH(hlog, std::log)
CUDASIM_HALF_MATH(hlog2, std::log2)
CUDASIM_HALF_MATH(hlog10, std::log10)
CUDASIM_HALF_MATH(hsin, std::sin)
CUDASIM_HALF_MATH(hcos, std::cos)
CUDASIM_HALF_MATH(htanh, std::tanh)
CUDASIM_HALF_MATH(hfloor, std::floor)
CUDASIM_HALF_MATH(hceil, std::ceil)
CUDASIM_HALF_MATH(htrunc, std::trunc)
CUDASIM_HALF_MATH(hrint, std::nearbyint)
#undef CUDASIM_HALF_MATH

// pairs: the scalar operation on each lane
#define CUDASIM_PAIR2(NAME, SCALAR)                                                                          \
  inline __half2 NAME(const __half2 a, const __half2 b) { return cudasim::half::lanes(a, b, [](__half u, __half v) { return SCALAR(u, v); }); } \
  inline __nv_bfloat162 NAME(const __nv_bfloat162 a, const __nv_bfloat162 b) {                            \
    return cudasim::half::lanes(a, b, [](__nv_bfloat16 u, __nv_bfloat16 v) { return SCALAR(u, v); });    \
  }
#define CUDASIM_PAIR1(NAME, SCALAR)                                                                          \
  inline __half2 NAME(const __half2 a) { return cudasim::half::lanes(a, [](__half u) { return SCALAR(u); }); } \
  inline __nv_bfloat162 NAME(const __nv_bfloat162 a) {                                                     \
    return cudasim::half::lanes(a, [](__nv_bfloat16 u) { return SCALAR(u); });                           \
  }
#define CUDASIM_PAIR_BOOL(NAME, SCALAR)                                                                          \
  inline bool NAME(const __half2 a, const __half2 b) { return SCALAR(a.x, b.x) && SCALAR(a.y, b.y); }         \
  inline bool NAME(const __nv_bfloat162 a, const __nv_bfloat162 b) { return SCALAR(a.x, b.x) && SCALAR(a.y, b.y); }
CUDASIM_PAIR2(__hadd2, __hadd)
CUDASIM_PAIR2(__hsub2, __hsub)
CUDASIM_PAIR2(__hmul2, __hmul)
CUDASIM_PAIR2(__h2div, __hdiv)
CUDASIM_PAIR2(__hadd2_sat, __hadd_sat)
CUDASIM_PAIR2(__hsub2_sat, __hsub_sat)
CUDASIM_PAIR2(__hmul2_sat, __hmul_sat)
CUDASIM_PAIR2(__hmax2, __hmax)
CUDASIM_PAIR2(__hmin2, __hmin)
CUDASIM_PAIR2(__hmax2_nan, __hmax_nan)
CUDASIM_PAIR2(__hmin2_nan, __hmin_nan)
CUDASIM_PAIR1(__hneg2, __hneg)
CUDASIM_PAIR1(__habs2, __habs)
CUDASIM_PAIR1(h2sqrt, hsqrt)
CUDASIM_PAIR1(h2rsqrt, hrsqrt)
CUDASIM_PAIR1(h2rcp, hrcp)
CUDASIM_PAIR1(h2exp, hexp)
CUDASIM_PAIR1(h2exp2, hexp2)
CUDASIM_PAIR1(h2log, hlog)
CUDASIM_PAIR1(h2log2, hlog2)
CUDASIM_PAIR1(h2tanh, htanh)
CUDASIM_PAIR_BOOL(__hbeq2, __heq)
CUDASIM_PAIR_BOOL(__hbne2, __hne)
CUDASIM_PAIR_BOOL(__hblt2, __hlt)
CUDASIM_PAIR_BOOL(__hble2, __hle)
CUDASIM_PAIR_BOOL(__hbgt2, __hgt)
CUDASIM_PAIR_BOOL(__hbge2, __hge)
inline __half2 __hfma2(const __half2 a, const __half2 b, const __half2 c) {
  return __half2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y));
}
inline __nv_bfloat162 __hfma2(const __nv_bfloat162 a, const __nv_bfloat162 b, const __nv_bfloat162 c) {
  return __nv_bfloat162(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y));
}
#undef CUDASIM_PAIR2
#undef CUDASIM_PAIR1
#undef CUDASIM_PAIR_BOOL

// ---------------------------------------------------------------- conversions
#define CUDASIM_HALF_CONVERSIONS(H, H2, TO, TO2, FROM, FROM2, ROUND_F, AS_US, US_AS, AS_S, S_AS)                \
  inline H TO##_rn(const float a) { return cudasim::half::round<H>(a, cudasim::half::Round::rn); }            \
  inline H TO##_rz(const float a) { return cudasim::half::round<H>(a, cudasim::half::Round::rz); }            \
  inline H TO##_rd(const float a) { return cudasim::half::round<H>(a, cudasim::half::Round::rd); }            \
  inline H TO##_ru(const float a) { return cudasim::half::round<H>(a, cudasim::half::Round::ru); }            \
  inline H TO(const float a) { return TO##_rn(a); }                                                            \
  inline float FROM(const H a) { return (float)a; }                                                            \
  inline H2 TO2##_rn(const float a) { return H2(TO(a), TO(a)); }                                               \
  inline H2 ROUND_F(const float a, const float b) { return H2(TO(a), TO(b)); }                                 \
  inline float2 FROM2(const H2 a) { return make_float2((float)a.x, (float)a.y); }                              \
  inline float __low2float(const H2 a) { return (float)a.x; }                                                  \
  inline float __high2float(const H2 a) { return (float)a.y; }                                                 \
  inline H2 __lowhigh2highlow(const H2 a) { return H2(a.y, a.x); }                                             \
  inline unsigned short AS_US(const H h) { return h.__x; }                                                     \
  inline H US_AS(const unsigned short u) { return cudasim::half::from_bits<H>(u); }                            \
  inline short AS_S(const H h) { return (short)h.__x; }                                                        \
  inline H S_AS(const short s) { return cudasim::half::from_bits<H>((unsigned short)s); }
CUDASIM_HALF_CONVERSIONS(__half, __half2, __float2half, __float2half2, __half2float, __half22float2,
                         __floats2half2_rn, __half_as_ushort, __ushort_as_half, __half_as_short, __short_as_half)
CUDASIM_HALF_CONVERSIONS(__nv_bfloat16, __nv_bfloat162, __float2bfloat16, __float2bfloat162, __bfloat162float,
                         __bfloat1622float2, __floats2bfloat162_rn, __bfloat16_as_ushort, __ushort_as_bfloat16,
                         __bfloat16_as_short, __short_as_bfloat16)
#undef CUDASIM_HALF_CONVERSIONS
inline __half2 __float22half2_rn(const float2 a) { return __floats2half2_rn(a.x, a.y); }
inline __nv_bfloat162 __float22bfloat162_rn(const float2 a) { return __floats2bfloat162_rn(a.x, a.y); }
inline __half __double2half(const double a) { return cudasim::half::round<__half>(a); }
inline __nv_bfloat16 __double2bfloat16(const double a) { return cudasim::half::round<__nv_bfloat16>(a); }
inline __half2 __halves2half2(const __half a, const __half b) { return __half2(a, b); }
inline __nv_bfloat162 __halves2bfloat162(const __nv_bfloat16 a, const __nv_bfloat16 b) { return __nv_bfloat162(a, b); }
inline __half2 make_half2(const __half a, const __half b) { return __half2(a, b); }
inline __nv_bfloat162 make_bfloat162(const __nv_bfloat16 a, const __nv_bfloat16 b) { return __nv_bfloat162(a, b); }
inline __half2 __half2half2(const __half a) { return __half2(a, a); }
inline __nv_bfloat162 __bfloat162bfloat162(const __nv_bfloat16 a) { return __nv_bfloat162(a, a); }
inline __half __low2half(const __half2 a) { return a.x; }
inline __half __high2half(const __half2 a) { return a.y; }
inline __nv_bfloat16 __low2bfloat16(const __nv_bfloat162 a) { return a.x; }
inline __nv_bfloat16 __high2bfloat16(const __nv_bfloat162 a) { return a.y; }
inline __half2 __lows2half2(const __half2 a, const __half2 b) { return __half2(a.x, b.x); }
inline __half2 __highs2half2(const __half2 a, const __half2 b) { return __half2(a.y, b.y); }
inline __nv_bfloat162 __lows2bfloat162(const __nv_bfloat162 a, const __nv_bfloat162 b) { return __nv_bfloat162(a.x, b.x); }
inline __nv_bfloat162 __highs2bfloat162(const __nv_bfloat162 a, const __nv_bfloat162 b) { return __nv_bfloat162(a.y, b.y); }

#define CUDART_INF_FP16 __ushort_as_half((unsigned short)0x7C00U)
#define CUDART_NAN_FP16 __ushort_as_half((unsigned short)0x7FFFU)
#define CUDART_MIN_DENORM_FP16 __ushort_as_half((unsigned short)0x0001U)
#define CUDART_MAX_NORMAL_FP16 __ushort_as_half((unsigned short)0x7BFFU)
#define CUDART_NEG_ZERO_FP16 __ushort_as_half((unsigned short)0x8000U)
#define CUDART_ZERO_FP16 __ushort_as_half((unsigned short)0x0000U)
#define CUDART_ONE_FP16 __ushort_as_half((unsigned short)0x3C00U)
#define CUDART_INF_BF16 __ushort_as_bfloat16((unsigned short)0x7F80U)
#define CUDART_NAN_BF16 __ushort_as_bfloat16((unsigned short)0x7FFFU)
#define CUDART_MIN_DENORM_BF16 __ushort_as_bfloat16((unsigned short)0x0001U)
#define CUDART_MAX_NORMAL_BF16 __ushort_as_bfloat16((unsigned short)0x7F7FU)
#define CUDART_NEG_ZERO_BF16 __ushort_as_bfloat16((unsigned short)0x8000U)
#define CUDART_ZERO_BF16 __ushort_as_bfloat16((unsigned short)0x0000U)
#define CUDART_ONE_BF16 __ushort_as_bfloat16((unsigned short)0x3F80U)

// ---------------------------------------------------------------- atomics
// atomicAdd on 16-bit values and pairs: a compare-and-swap loop on the bits,
// the sum rounded once as the GPU's red.add.f16 rounds it.
template <class T, class U>
inline T __cudasim_atomic_add16(T* p, T v) {
  std::atomic_ref<U> word(*reinterpret_cast<U*>(p));
  U old = word.load(), next;
  T cur;
  do {
    std::memcpy(&cur, &old, sizeof(T));
    const T sum = cur + v;
    std::memcpy(&next, &sum, sizeof(T));
  } while (!word.compare_exchange_weak(old, next));
  return cur;
}
inline __half atomicAdd(__half* p, const __half v) { return __cudasim_atomic_add16<__half, unsigned short>(p, v); }
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, const __nv_bfloat16 v) {
  return __cudasim_atomic_add16<__nv_bfloat16, unsigned short>(p, v);
}
inline __half2 atomicAdd(__half2* p, const __half2 v) { return __cudasim_atomic_add16<__half2, unsigned>(p, v); }
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* p, const __nv_bfloat162 v) {
  return __cudasim_atomic_add16<__nv_bfloat162, unsigned>(p, v);
}
