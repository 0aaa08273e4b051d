// Device helpers for kernels templated on the storage type (common/storage.h):
// float <-> __half / __nv_bfloat16 one value or a pair at a time, 16-byte
// packs of 8 half values, the elementwise loop of any storage type, and the
// host-side switch from a Storage value to the kernel template of its type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "common/elementwise.cuh"
#include "common/storage.h"

namespace gpunet {

// float <-> the 16-bit storage types, one value or a pair at a time (the pair
// conversions are the half2 instructions on the GPU).
template <class T>
struct HalfPair;
template <>
struct HalfPair<__half> {
  using type = __half2;
  __device__ static float2 to_float2(__half2 p) { return __half22float2(p); }
  __device__ static __half2 from_float2(float a, float b) { return __floats2half2_rn(a, b); }
  __device__ static float to_float(__half v) { return __half2float(v); }
  __device__ static __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct HalfPair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  __device__ static float2 to_float2(__nv_bfloat162 p) { return __bfloat1622float2(p); }
  __device__ static __nv_bfloat162 from_float2(float a, float b) { return __floats2bfloat162_rn(a, b); }
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

// 16 bytes of a 16-bit storage type: 8 values as 4 pairs, loaded and stored whole.
template <class T>
struct alignas(16) Pack8 {
  typename HalfPair<T>::type p[4];
};

// elementwise() of common/elementwise.cuh for 16-bit storage: out[k] =
// round(f(k, float(in0[k]), ...)), f computing in float32.
template <class T, class F, class... In>
__device__ __forceinline__ void elementwise16(int64_t n, bool vec, F f, T* out, const In*... in) {
  using H = HalfPair<T>;
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  int64_t tail = 0;
  if (vec) {
    const int64_t n8 = n / 8;
    for (int64_t i = first; i < n8; i += step) {
      const int64_t k = 8 * i;
      [&](const auto... v) {  // each input's Pack8, copied whole (one 16-byte load)
        Pack8<T> r;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float lo = f(k + 2 * j, H::to_float2(v.p[j]).x...);
          const float hi = f(k + 2 * j + 1, H::to_float2(v.p[j]).y...);
          r.p[j] = H::from_float2(lo, hi);
        }
        reinterpret_cast<Pack8<T>*>(out)[i] = r;
      }(reinterpret_cast<const Pack8<T>*>(in)[i]...);
    }
    tail = n8 * 8;
  }
  for (int64_t k = tail + first; k < n; k += step) out[k] = H::from_float(f(k, H::to_float(in[k])...));
}

// the loop of storage type T: float4 vectors for float, Pack8 for the half types
template <class T, class F, class... In>
__device__ __forceinline__ void elementwise_of(int64_t n, bool vec, F f, T* out, const In*... in) {
  if constexpr (std::is_same_v<T, float>) {
    elementwise(n, vec, f, out, in...);
  } else {
    elementwise16(n, vec, f, out, in...);
  }
}

// f(T{}) with a value of the storage type: the kernel template to launch
template <class F>
void with_storage(Storage s, F&& f) {
  switch (s) {
    case Storage::F32: return f(float{});
    case Storage::F16: return f(__half{});
    case Storage::BF16: return f(__nv_bfloat16{});
  }
}
}  // namespace gpunet
