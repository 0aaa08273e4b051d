// reduce.cuh -- deterministic warp and block reductions (device code).
//
// Fixed summation order (butterfly shuffles, then one partial per warp), no
// atomics: the same input gives the same bits on every run and under every
// simulator schedule. Every lane gets the same result, because each step
// adds the same two values in both lanes (a + b == b + a in IEEE arithmetic).
#pragma once
#include <cuda_runtime.h>

namespace gpunet {

// Sum over the 32 lanes of a full warp; every lane must call it.
__device__ __forceinline__ float warp_reduce_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over a 1-D block of BLOCK threads; every thread must call it (it
// contains __syncthreads) and every thread gets the sum.
template <int BLOCK>
__device__ __forceinline__ float block_reduce_sum(float v) {
  static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "BLOCK must be a multiple of 32, at most 1024");
  __shared__ float warp_sums[BLOCK / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_reduce_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  // Every warp reduces the partials itself, so no second barrier is needed
  // to broadcast the result.
  v = warp_reduce_sum(lane < BLOCK / 32 ? warp_sums[lane] : 0.f);
  __syncthreads();  // warp_sums may be reused by a following call
  return v;
}

}  // namespace gpunet
