// linear.cu -- the per-channel bias add and bias gradient of Linear (inner = 1)
// and Conv2d in NCHW (inner = H*W); the products themselves are cuBLAS GEMMs
// made by the Python glue (gpunet/ops/linear.py, gpunet/ops/conv.py).
//
// bias_add
//   Algorithm: y viewed as (outer, C, inner), y[o, c, i] += b[c] in place.
//     Grid-stride; float4 path when y is aligned and inner % 4 == 0 (then
//     the 4 lanes of a vector share one channel).
//   Launch: 256 threads per block, min(ceil(items / 256), 1024) blocks.
//   Traffic: 8n + 4C bytes, n adds: memory bound.
//
// bias_grad
//   Algorithm: db[c] = sum over o, i of dy[o, c, i]. Thread t of channel c's
//     block sums the channel's elements t, t + 256, ... in order, then
//     block_reduce_sum (common/reduce.cuh) combines the 256 partials in a
//     fixed tree. No atomics: the result is bitwise reproducible.
//     Accumulation is in float.
//   Launch: one block of 256 threads per channel, C blocks.
//   Traffic: 4n + 4C bytes, n adds. Reads are coalesced along inner; for
//     inner = 1 (Linear) a block walks a strided column and the blocks of
//     neighbouring channels share the DRAM sectors through L2.
#include <cuda_runtime.h>

#include "common/launch.cuh"
#include "common/reduce.cuh"
#include "kernels/linear.h"

namespace gpunet {
namespace {

__global__ void __launch_bounds__(kThreads)
    bias_add_kernel(float* y, const float* __restrict__ b, int64_t n, int64_t channels, int64_t inner, bool vec4) {
  const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  if (vec4) {  // inner % 4 == 0: the four elements of a vector share a channel
    for (int64_t i = first; i < n / 4; i += step) {
      const float bc = b[(i * 4 / inner) % channels];
      float4 v = reinterpret_cast<float4*>(y)[i];
      v.x += bc;
      v.y += bc;
      v.z += bc;
      v.w += bc;
      reinterpret_cast<float4*>(y)[i] = v;
    }
  } else {
    for (int64_t i = first; i < n; i += step) y[i] += b[(i / inner) % channels];
  }
}

__global__ void __launch_bounds__(kThreads) bias_grad_kernel(const float* __restrict__ dy, float* __restrict__ db,
                                                             int64_t outer, int64_t channels, int64_t inner) {
  const int64_t c = blockIdx.x;
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < outer * inner; j += kThreads) {
    const int64_t o = j / inner, i = j - o * inner;
    sum += dy[(o * channels + c) * inner + i];
  }
  sum = block_reduce_sum<kThreads>(sum);
  if (threadIdx.x == 0) db[c] = sum;
}

}  // namespace

void bias_add(float* y, const float* b, int64_t outer, int64_t channels, int64_t inner, cudaStream_t stream) {
  const int64_t n = outer * channels * inner;
  if (n == 0) return;
  const bool vec4 = aligned16(y) && inner % 4 == 0;
  bias_add_kernel<<<grid_for(vec4 ? n / 4 : n), kThreads, 0, stream>>>(y, b, n, channels, inner, vec4);
}

void bias_grad(const float* dy, float* db, int64_t outer, int64_t channels, int64_t inner, cudaStream_t stream) {
  if (channels == 0) return;
  bias_grad_kernel<<<(unsigned)channels, kThreads, 0, stream>>>(dy, db, outer, channels, inner);
}

}  // namespace gpunet
