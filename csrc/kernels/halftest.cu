// halftest.cu -- TEST-ONLY kernels of the half-precision types: conversions in
// every rounding mode, the scalar and pair arithmetic intrinsics and
// operators, shuffles of __half2/__nv_bfloat162 and atomicAdd on them. They
// compile unchanged with nvcc (the toolkit's <cuda_fp16.h>/<cuda_bf16.h>) and
// for the simulator (csrc/sim/half.h), so tests/test_half_sim.py checks the
// simulator's definitions against NumPy/ml_dtypes and, on a GPU, the GPU's.
// Every kernel is a grid-stride loop of kThreads threads over n items (the
// warp sum: one warp); 2 + 2 bytes per item and one conversion or operation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/launch.cuh"
#include "kernels/halftest.h"

namespace gpunet {
namespace {

// The type of a 16-bit format, its pair, and its conversions by name.
template <Half16 F>
struct Types;
template <>
struct Types<Half16::Fp16> {
  using T = __half;
  using T2 = __half2;
  __device__ static T from_float(float x, HalfRound m) {
    switch (m) {
      case HalfRound::Rz: return __float2half_rz(x);
      case HalfRound::Rd: return __float2half_rd(x);
      case HalfRound::Ru: return __float2half_ru(x);
      default: return __float2half_rn(x);
    }
  }
  __device__ static T from_double(double x) { return __double2half(x); }
  __device__ static float to_float(T x) { return __half2float(x); }
  __device__ static T from_bits(int16_t b) { return __short_as_half(b); }
  __device__ static int16_t bits(T x) { return __half_as_short(x); }
};
template <>
struct Types<Half16::Bf16> {
  using T = __nv_bfloat16;
  using T2 = __nv_bfloat162;
  __device__ static T from_float(float x, HalfRound m) {
    switch (m) {
      case HalfRound::Rz: return __float2bfloat16_rz(x);
      case HalfRound::Rd: return __float2bfloat16_rd(x);
      case HalfRound::Ru: return __float2bfloat16_ru(x);
      default: return __float2bfloat16_rn(x);
    }
  }
  __device__ static T from_double(double x) { return __double2bfloat16(x); }
  __device__ static float to_float(T x) { return __bfloat162float(x); }
  __device__ static T from_bits(int16_t b) { return __short_as_bfloat16(b); }
  __device__ static int16_t bits(T x) { return __bfloat16_as_short(x); }
};

template <Half16 F>
__global__ void from_float_kernel(const float* __restrict__ x, int16_t* __restrict__ out, int64_t n, HalfRound m) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = Types<F>::bits(Types<F>::from_float(x[i], m));
}

template <Half16 F>
__global__ void from_double_kernel(const double* __restrict__ x, int16_t* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = Types<F>::bits(Types<F>::from_double(x[i]));
}

template <Half16 F>
__global__ void to_float_kernel(const int16_t* __restrict__ x, float* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = Types<F>::to_float(Types<F>::from_bits(x[i]));
}

// 1.f etc. as either 16-bit type
template <class T>
__device__ T constant(float v);
template <>
__device__ __half constant<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __nv_bfloat16 constant<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// op on one value (T) or on one pair (T2)
template <class T>
__device__ T apply_scalar(HalfOp op, T a, T b, T c) {
  const T one = constant<T>(1.f), zero = constant<T>(0.f);
  switch (op) {
    case HalfOp::Add: return __hadd(a, b);
    case HalfOp::Sub: return __hsub(a, b);
    case HalfOp::Mul: return __hmul(a, b);
    case HalfOp::Div: return __hdiv(a, b);
    case HalfOp::Fma: return __hfma(a, b, c);
    case HalfOp::Max: return __hmax(a, b);
    case HalfOp::Min: return __hmin(a, b);
    case HalfOp::MaxNan: return __hmax_nan(a, b);
    case HalfOp::MinNan: return __hmin_nan(a, b);
    case HalfOp::Neg: return __hneg(a);
    case HalfOp::Abs: return __habs(a);
    case HalfOp::AddOperator: return a + b;
    case HalfOp::MulOperator: return a * b;
    case HalfOp::AddSat: return __hadd_sat(a, b);
    case HalfOp::Eq: return __heq(a, b) ? one : zero;
    case HalfOp::Ne: return __hne(a, b) ? one : zero;
    case HalfOp::Lt: return __hlt(a, b) ? one : zero;
    case HalfOp::Le: return __hle(a, b) ? one : zero;
    case HalfOp::Gt: return __hgt(a, b) ? one : zero;
    case HalfOp::Ge: return __hge(a, b) ? one : zero;
    case HalfOp::Equ: return __hequ(a, b) ? one : zero;
    case HalfOp::Neu: return __hneu(a, b) ? one : zero;
    case HalfOp::Ltu: return __hltu(a, b) ? one : zero;
    case HalfOp::Geu: return __hgeu(a, b) ? one : zero;
    case HalfOp::LtOperator: return a < b ? one : zero;
    case HalfOp::IsNan: return __hisnan(a) ? one : zero;
    case HalfOp::IsInf: return constant<T>((float)__hisinf(a));
    case HalfOp::Sqrt: return hsqrt(a);
    case HalfOp::Rsqrt: return hrsqrt(a);
    case HalfOp::Rcp: return hrcp(a);
    case HalfOp::Exp: return hexp(a);
    case HalfOp::Log: return hlog(a);
    case HalfOp::Tanh: return htanh(a);
  }
  return a;
}
template <class T2>
__device__ T2 apply_pair(HalfOp op, T2 a, T2 b, T2 c) {
  switch (op) {
    case HalfOp::Add: return __hadd2(a, b);
    case HalfOp::Sub: return __hsub2(a, b);
    case HalfOp::Mul: return __hmul2(a, b);
    case HalfOp::Div: return __h2div(a, b);
    case HalfOp::Fma: return __hfma2(a, b, c);
    case HalfOp::Max: return __hmax2(a, b);
    case HalfOp::Min: return __hmin2(a, b);
    case HalfOp::MaxNan: return __hmax2_nan(a, b);
    case HalfOp::MinNan: return __hmin2_nan(a, b);
    case HalfOp::Neg: return __hneg2(a);
    case HalfOp::Abs: return __habs2(a);
    case HalfOp::AddOperator: return a + b;
    case HalfOp::MulOperator: return a * b;
    case HalfOp::AddSat: return __hadd2_sat(a, b);
    case HalfOp::Sqrt: return h2sqrt(a);
    case HalfOp::Rsqrt: return h2rsqrt(a);
    case HalfOp::Rcp: return h2rcp(a);
    case HalfOp::Exp: return h2exp(a);
    case HalfOp::Log: return h2log(a);
    case HalfOp::Tanh: return h2tanh(a);
    default: {  // no pair intrinsic: the scalar one on each lane
      T2 r = a;
      r.x = apply_scalar(op, a.x, b.x, c.x);
      r.y = apply_scalar(op, a.y, b.y, c.y);
      return r;
    }
  }
}

template <Half16 F>
__global__ void op_kernel(HalfOp op, const int16_t* __restrict__ a, const int16_t* __restrict__ b,
                          const int16_t* __restrict__ c, int16_t* __restrict__ out, int64_t n) {
  using Ty = Types<F>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = Ty::bits(apply_scalar(op, Ty::from_bits(a[i]), Ty::from_bits(b[i]), Ty::from_bits(c[i])));
}

// the same on pairs: one 4-byte load per operand, n2 pairs
template <Half16 F>
__global__ void pair_op_kernel(HalfOp op, const typename Types<F>::T2* __restrict__ a,
                               const typename Types<F>::T2* __restrict__ b, const typename Types<F>::T2* __restrict__ c,
                               typename Types<F>::T2* __restrict__ out, int64_t n2) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n2; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = apply_pair(op, a[i], b[i], c[i]);
}

template <Half16 F>
__global__ void warp_sum_kernel(const typename Types<F>::T2* __restrict__ x, typename Types<F>::T2* __restrict__ out) {
  typename Types<F>::T2 v = x[threadIdx.x];
  for (int offset = 16; offset > 0; offset /= 2) v = __hadd2(v, __shfl_xor_sync(0xffffffffu, v, offset));
  out[threadIdx.x] = v;
}

template <class T>
__global__ void atomic_add_kernel(const T* __restrict__ x, int64_t n, T* __restrict__ out, int64_t m) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    atomicAdd(&out[i % m], x[i]);
}

template <class F>
void with_format(Half16 fmt, F&& f) {
  if (fmt == Half16::Fp16) f(std::integral_constant<Half16, Half16::Fp16>{});
  else f(std::integral_constant<Half16, Half16::Bf16>{});
}

}  // namespace

void half_from_float(Half16 fmt, HalfRound mode, const float* x, int16_t* out, int64_t n, cudaStream_t stream) {
  with_format(fmt, [&](auto f) { from_float_kernel<decltype(f)::value><<<grid_for(n), kThreads, 0, stream>>>(x, out, n, mode); });
}

void half_from_double(Half16 fmt, const double* x, int16_t* out, int64_t n, cudaStream_t stream) {
  with_format(fmt, [&](auto f) { from_double_kernel<decltype(f)::value><<<grid_for(n), kThreads, 0, stream>>>(x, out, n); });
}

void half_to_float(Half16 fmt, const int16_t* x, float* out, int64_t n, cudaStream_t stream) {
  with_format(fmt, [&](auto f) { to_float_kernel<decltype(f)::value><<<grid_for(n), kThreads, 0, stream>>>(x, out, n); });
}

void half_op(Half16 fmt, HalfOp op, bool pairs, const int16_t* a, const int16_t* b, const int16_t* c, int16_t* out,
             int64_t n, cudaStream_t stream) {
  with_format(fmt, [&](auto f) {
    using T2 = typename Types<decltype(f)::value>::T2;
    if (pairs)
      pair_op_kernel<decltype(f)::value><<<grid_for(n / 2), kThreads, 0, stream>>>(
          op, reinterpret_cast<const T2*>(a), reinterpret_cast<const T2*>(b), reinterpret_cast<const T2*>(c),
          reinterpret_cast<T2*>(out), n / 2);
    else
      op_kernel<decltype(f)::value><<<grid_for(n), kThreads, 0, stream>>>(op, a, b, c, out, n);
  });
}

void half_warp_sum(Half16 fmt, const int16_t* x, int16_t* out, cudaStream_t stream) {
  with_format(fmt, [&](auto f) {
    using T2 = typename Types<decltype(f)::value>::T2;
    warp_sum_kernel<decltype(f)::value><<<1, 32, 0, stream>>>(reinterpret_cast<const T2*>(x), reinterpret_cast<T2*>(out));
  });
}

void half_atomic_add(Half16 fmt, bool pairs, const int16_t* x, int64_t n, int16_t* out, int64_t m,
                     cudaStream_t stream) {
  with_format(fmt, [&](auto f) {
    using T = typename Types<decltype(f)::value>::T;
    using T2 = typename Types<decltype(f)::value>::T2;
    if (pairs)
      atomic_add_kernel<<<grid_for(n), kThreads, 0, stream>>>(reinterpret_cast<const T2*>(x), n,
                                                              reinterpret_cast<T2*>(out), m);
    else
      atomic_add_kernel<<<grid_for(n), kThreads, 0, stream>>>(reinterpret_cast<const T*>(x), n,
                                                              reinterpret_cast<T*>(out), m);
  });
}

}  // namespace gpunet
