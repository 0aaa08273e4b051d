// testing.cu -- TEST-ONLY kernels and hooks; nothing in gpunet uses them.
// The kernels prove two things about the toolchain itself:
//
// block_sum_kernel<kRacy>: one block of 256 threads sums x[0..n) into out[0].
//   Each thread sums x[t], x[t + 256], ... into red[t] (shared memory), then a
//   tree halves the active threads, red[t] += red[t + s], with a barrier after
//   every step. kRacy = true drops the barrier between writing the partials
//   and the first tree step, so thread t may read red[t + 128] before thread
//   t + 128 has written it: a real race that the simulator's random schedule
//   must expose, while kRacy = false is correct under every schedule.
//   Traffic 4n bytes read, 4 written; n adds.
//
// noop_kernel launched with 2048 threads per block: an invalid configuration
//   (the limit is 1024) that cudaGetLastError reports without corrupting the
//   context, to test check_launch -> RuntimeError on GPU and simulator alike.
//
// launch_blocks: the grid each launch shape asks for, computed on the host by
// the launchers' own helpers, so that geometry past 2^31 items is tested
// without the memory such a launch would need.
#include <cuda_runtime.h>

#include "common/elementwise.cuh"
#include "common/launch.cuh"
#include "common/rows.cuh"
#include "kernels/testing.h"

namespace gpunet {
namespace {

constexpr int kSumThreads = 256;

template <bool kRacy>
__global__ void __launch_bounds__(kSumThreads) block_sum_kernel(const float* __restrict__ x, float* __restrict__ out,
                                                                int64_t n) {
  __shared__ float red[kSumThreads];
  const int t = threadIdx.x;
  float partial = 0.f;
  for (int64_t i = t; i < n; i += kSumThreads) partial += x[i];
  red[t] = partial;
  if constexpr (!kRacy) __syncthreads();  // the barrier the racy twin is missing
  for (int s = kSumThreads / 2; s > 0; s /= 2) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  if (t == 0) out[0] = red[0];
}

__global__ void noop_kernel() {}

}  // namespace

void block_sum(const float* x, float* out, int64_t n, bool racy, cudaStream_t stream) {
  with_bools([&](auto racy_c) { block_sum_kernel<decltype(racy_c)::value><<<1, kSumThreads, 0, stream>>>(x, out, n); },
             racy);
}

void invalid_launch(cudaStream_t stream) { noop_kernel<<<1, 2048, 0, stream>>>(); }

int64_t launch_blocks(Geometry g, int64_t n) {
  switch (g) {
    case Geometry::GridStride: return grid_for(n);
    case Geometry::Elementwise: return grid_for(elementwise_items(n, false));
    case Geometry::ElementwiseVec4: return grid_for(elementwise_items(n, true));
    case Geometry::WarpRows: return warp_grid(n).x;
    case Geometry::BlockRows: return row_grid(n).x;
    case Geometry::GridX: return checked_grid("a test launch", n).x;
    case Geometry::GridY: return checked_grid("a test launch", 1, n).y;
    case Geometry::GridZ: return checked_grid("a test launch", 1, 1, n).z;
  }
  return 0;
}

}  // namespace gpunet
