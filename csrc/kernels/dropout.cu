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
//   Storage: templated on float, __half and __nv_bfloat16 (common/storage.h):
//     the value is read in float32, multiplied by the float32 scale and
//     rounded once, as the cpu reference rounds x * float32(scale); the mask
//     is the same function of k whatever the storage.
//   Launch: the grid-stride loop of common/storage.cuh elementwise_of (y may
//     alias x), 256 threads per block, min(ceil(items / 256), resident
//     blocks) blocks (launch.cuh grid_for); items = ceil(n / 4) float4 or
//     ceil(n / 8) Pack8 (8 half values) loads/stores when x and y are 16-byte
//     aligned, else n. Indices and counters are 64-bit.
//   Traffic: reads 4n bytes, writes 4n (half storage: 2n each). Work: 3 64-bit multiplies (about 12
//     32-bit IMADs), ~8 shifts/xors and one compare per element: close to the
//     bandwidth floor 8n / DRAM bandwidth on an H100 (~25 integer ops per 8
//     bytes), so the hash and the memory traffic take similar time.
#include <cuda_runtime.h>

#include "common/elementwise.cuh"
#include "common/launch.cuh"
#include "common/storage.cuh"
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

template <class T>
__global__ void __launch_bounds__(kThreads) dropout_apply_kernel(const T* x, T* y, int64_t n, uint64_t seed,
                                                                 uint64_t offset, uint64_t threshold, float scale,
                                                                 bool vec) {
  elementwise_of(n, vec, [=](int64_t k, float v) { return keep_or_zero(v, seed, offset + k, threshold, scale); }, y,
                 x);
}

template <class T>
void launch_dropout(const T* x, T* y, int64_t n, uint64_t seed, uint64_t offset, uint64_t threshold, float scale,
                    cudaStream_t stream) {
  const bool vec = all_aligned16(x, y);
  const int64_t per_vector = 16 / sizeof(T);  // float4 or Pack8
  const unsigned grid = grid_for(dropout_apply_kernel<T>, vec ? (n + per_vector - 1) / per_vector : n);
  dropout_apply_kernel<T><<<grid, kThreads, 0, stream>>>(x, y, n, seed, offset, threshold, scale, vec);
}

}  // namespace

void dropout_apply(Storage storage, const void* x, void* y, int64_t n, uint64_t seed, uint64_t offset,
                   uint64_t threshold, float scale, cudaStream_t stream) {
  if (n == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    launch_dropout(static_cast<const T*>(x), static_cast<T*>(y), n, seed, offset, threshold, scale, stream);
  });
}

}  // namespace gpunet
