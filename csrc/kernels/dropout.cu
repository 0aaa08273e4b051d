// dropout.cu -- inverted dropout with a counter-based random number generator.
//
// dropout_apply
//   Algorithm: element k keeps its value (times scale = 1/(1-p)) iff
//     bits(k) >= threshold = ceil(p 2^32), where bits(k) is the high 32 bits of
//     SplitMix64 output number offset + k for seed `seed`:
//       z = seed + (offset + k + 1) * 0x9E3779B97F4A7C15   (mod 2^64)
//       z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB
//       bits = (z ^ z >> 31) >> 32
//     A pure function of (seed, offset, k) in integer arithmetic: NumPy
//     (gpunet/ops/dropout.py) draws the bit-identical mask, in any thread
//     order. No mask is stored: backward calls this kernel again on dy with
//     the same (seed, offset), trading a few integer multiplies per element
//     for the write and re-read of a mask byte.
//   Launch: grid-stride, 256 threads per block, min(ceil(items / 256), 1024)
//     blocks; items = ceil(n / 4) with float4 loads/stores when x and y are
//     16-byte aligned, else n.
//   Traffic: reads 4n bytes, writes 4n. Work: 3 64-bit multiplies (about 12
//     32-bit IMADs), ~8 shifts/xors and one compare per element: close to the
//     bandwidth floor 8n / DRAM bandwidth on an H100 (~25 integer ops per 8
//     bytes), so the hash and the memory traffic take similar time.
#include <cuda_runtime.h>

#include "common/launch.cuh"
#include "kernels/dropout.h"

namespace gpunet {
namespace {

__device__ __forceinline__ uint64_t splitmix64_bits(uint64_t seed, uint64_t counter) {
  uint64_t z = seed + (counter + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (z ^ (z >> 31)) >> 32;
}

__device__ __forceinline__ float keep_or_zero(float v, uint64_t seed, uint64_t counter, uint64_t threshold,
                                              float scale) {
  return splitmix64_bits(seed, counter) >= threshold ? v * scale : 0.f;
}

// No __restrict__: y may alias x.
__global__ void __launch_bounds__(kThreads) dropout_apply_kernel(const float* x, float* y, int64_t n, uint64_t seed,
                                                                 uint64_t offset, uint64_t threshold, float scale,
                                                                 bool vec4) {
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  int64_t tail = 0;
  if (vec4) {
    const int64_t n4 = n / 4;
    for (int64_t i = first; i < n4; i += step) {
      float4 v = reinterpret_cast<const float4*>(x)[i];
      const uint64_t k = offset + 4 * (uint64_t)i;
      v.x = keep_or_zero(v.x, seed, k, threshold, scale);
      v.y = keep_or_zero(v.y, seed, k + 1, threshold, scale);
      v.z = keep_or_zero(v.z, seed, k + 2, threshold, scale);
      v.w = keep_or_zero(v.w, seed, k + 3, threshold, scale);
      reinterpret_cast<float4*>(y)[i] = v;
    }
    tail = n4 * 4;
  }
  for (int64_t i = tail + first; i < n; i += step) y[i] = keep_or_zero(x[i], seed, offset + i, threshold, scale);
}

}  // namespace

void dropout_apply(const float* x, float* y, int64_t n, uint64_t seed, uint64_t offset, uint64_t threshold,
                   float scale, cudaStream_t stream) {
  if (n == 0) return;
  const bool vec4 = aligned16(x) && aligned16(y);
  dropout_apply_kernel<<<grid_for(vec4 ? (n + 3) / 4 : n), kThreads, 0, stream>>>(x, y, n, seed, offset, threshold,
                                                                                   scale, vec4);
}

}  // namespace gpunet
