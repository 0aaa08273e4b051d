// racecheck.cu -- TEST-ONLY kernels with planted hazards, each beside its
// fixed twin, for tests/test_racecheck.py: the simulator's race checker
// (gpunet._C_simcheck, csrc/sim/racecheck.cpp) must report every planted
// hazard with its kind and source line, and nothing in the twins. gpunet
// itself never launches them. One block of 64 threads (two warps) each, on
// x (at least 128 floats) and out (at least 4 floats); every kernel is tiny,
// so there is no traffic worth counting.
//
//   missing_barrier   partials written to shared memory, then read by other
//                     threads with no __syncthreads() between (read-after-write)
//   reused_scratch    two block reductions through one shared array without
//                     the barrier that ends the first (write-after-read): the
//                     trailing __syncthreads() of block_reduce_sum in
//                     common/reduce.cuh or of softmax's block_reduce_maxsum
//   shared_counter    every thread stores to one global word (write-after-
//                     write); the twin adds atomically
//   warp_handoff      lane 0 writes shared memory that lane 1 reads, with no
//                     __syncwarp() between (read-after-write inside a warp)
//   cross_block       block 1 reads a word block 0 writes (blocks are never
//                     ordered within a launch); the twin reads its own block's
//   uninit_shared     shared memory read before anything was written to it
//   past_the_end      a store one element past the end of `out` (global) and
//                     one past the dynamic shared memory of the launch
#include <cuda_runtime.h>

#include "kernels/racecheck.h"

namespace gpunet {
namespace {

constexpr int kThreads = 64, kWarps = kThreads / 32;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <bool kRacy>
__global__ void missing_barrier_kernel(const float* x, float* out) {
  __shared__ float partial[kThreads];
  const int t = threadIdx.x;
  partial[t] = x[t];
  if (!kRacy) __syncthreads();
  if (t == 0) out[0] = partial[kThreads - 1];
}

template <bool kRacy>
__global__ void reused_scratch_kernel(const float* x, float* out) {
  __shared__ float sums[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int round = 0; round < 2; ++round) {
    float v = warp_sum(x[round * kThreads + threadIdx.x]);
    if (lane == 0) sums[warp] = v;
    __syncthreads();
    v = warp_sum(lane < kWarps ? sums[lane] : 0.f);
    if (!kRacy) __syncthreads();  // sums is written again by the next round
    if (threadIdx.x == 0) out[round] = v;
  }
}

template <bool kRacy>
__global__ void shared_counter_kernel(const float* x, float* out) {
  if (kRacy)
    out[0] = x[threadIdx.x];
  else
    atomicAdd(&out[0], x[threadIdx.x]);
}

template <bool kRacy>
__global__ void warp_handoff_kernel(const float* x, float* out) {
  __shared__ float slot[1];
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) slot[0] = x[0];
  if (!kRacy) __syncwarp();
  if (threadIdx.x == 1) out[0] = slot[0] + (float)lane;
}

template <bool kRacy>
__global__ void cross_block_kernel(const float* x, float* out) {
  if (threadIdx.x != 0) return;
  out[blockIdx.x] = x[blockIdx.x];
  out[2 + blockIdx.x] = out[kRacy ? 0 : blockIdx.x];
}

template <bool kRacy>
__global__ void uninit_shared_kernel(const float* x, float* out) {
  __shared__ float cache[kThreads];
  if (!kRacy) cache[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) out[0] = cache[kThreads - 1];
}

template <bool kRacy>
__global__ void past_the_end_kernel(const float* x, float* out, int64_t n_out) {
  extern __shared__ float dyn[];  // kThreads floats requested
  const int t = threadIdx.x;
  dyn[t] = x[t];
  __syncthreads();
  if (t == 0) {
    out[kRacy ? n_out : n_out - 1] = dyn[kRacy ? kThreads : kThreads - 1];
  }
}

template <bool kRacy>
void launch(RaceProbe probe, const float* x, float* out, int64_t n_out, cudaStream_t s) {
  switch (probe) {
    case RaceProbe::kMissingBarrier: missing_barrier_kernel<kRacy><<<1, kThreads, 0, s>>>(x, out); break;
    case RaceProbe::kReusedScratch: reused_scratch_kernel<kRacy><<<1, kThreads, 0, s>>>(x, out); break;
    case RaceProbe::kSharedCounter: shared_counter_kernel<kRacy><<<1, kThreads, 0, s>>>(x, out); break;
    case RaceProbe::kWarpHandoff: warp_handoff_kernel<kRacy><<<1, kThreads, 0, s>>>(x, out); break;
    case RaceProbe::kCrossBlock: cross_block_kernel<kRacy><<<2, kThreads, 0, s>>>(x, out); break;
    case RaceProbe::kUninitShared: uninit_shared_kernel<kRacy><<<1, kThreads, 0, s>>>(x, out); break;
    case RaceProbe::kPastTheEnd:
      past_the_end_kernel<kRacy><<<1, kThreads, kThreads * sizeof(float), s>>>(x, out, n_out);
      break;
  }
}

}  // namespace

void race_probe(RaceProbe probe, bool racy, const float* x, float* out, int64_t n_out, cudaStream_t stream) {
  if (racy)
    launch<true>(probe, x, out, n_out, stream);
  else
    launch<false>(probe, x, out, n_out, stream);
}

}  // namespace gpunet
