// fastdiv.cuh -- division by a divisor fixed for a whole launch, as a
// multiply-high, an add and a shift (Granlund and Montgomery, "Division by
// invariant integers using multiplication", 1994).
//
// The GPU has no integer divider: a 32-bit `/` or `%` by a runtime value is a
// ~20-instruction sequence, a 64-bit one a call of ~70. Kernels that turn a
// flat index into coordinates divide by the same extents in every thread, so
// the host computes each divisor's magic number once and the kernels take
// Divider<Index> arguments:
//   Divider<int32_t>: for 0 <= n <= INT32_MAX and 1 <= d <= INT32_MAX,
//     with s = ceil(log2 d) and m = floor(2^32 (2^s - d) / d) + 1,
//     n / d = (umulhi(n, m) + n) >> s  (umulhi(n, m) <= n, so the 32-bit sum
//     cannot wrap for n < 2^31);
//   Divider<int64_t>: plain 64-bit division (the path past 2^31 elements,
//     rare enough not to need its own magic).
// tests/test_launch.py checks the 32-bit one against exact division over
// every divisor up to 4096 and random and extreme ones, through a kernel.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gpunet {

template <class Index>
struct Divider;

template <>
struct Divider<int32_t> {
  uint32_t d = 1, magic = 1, shift = 0;

  Divider() = default;
  explicit Divider(int32_t divisor) : d((uint32_t)divisor) {
    while ((1ull << shift) < d) ++shift;
    magic = (uint32_t)(((1ull << 32) * ((1ull << shift) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ int32_t div(int32_t n) const {
#ifdef __CUDA_ARCH__
    const uint32_t t = __umulhi((uint32_t)n, magic);
#else
    const uint32_t t = (uint32_t)(((uint64_t)(uint32_t)n * magic) >> 32);
#endif
    return (int32_t)((t + (uint32_t)n) >> shift);
  }
  // n = q * d + r with 0 <= r < d
  __host__ __device__ __forceinline__ int32_t divmod(int32_t n, int32_t& r) const {
    const int32_t q = div(n);
    r = n - q * (int32_t)d;
    return q;
  }
};

template <>
struct Divider<int64_t> {
  int64_t d = 1;

  Divider() = default;
  explicit Divider(int64_t divisor) : d(divisor) {}
  __host__ __device__ __forceinline__ int64_t div(int64_t n) const { return n / d; }
  __host__ __device__ __forceinline__ int64_t divmod(int64_t n, int64_t& r) const {
    const int64_t q = n / d;
    r = n - q * d;
    return q;
  }
};

}  // namespace gpunet
