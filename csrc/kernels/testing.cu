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
#include "common/mma.cuh"
#include "common/rows.cuh"
#include "common/storage.cuh"
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

__global__ void __launch_bounds__(32)
    tc_ldmatrix_kernel(const uint16_t* __restrict__ src, const int* __restrict__ rows, uint32_t* __restrict__ out,
                       int num, bool trans) {
  __shared__ uint4 tile16[32];  // uint4: 16-byte aligned rows
  uint16_t* tile = reinterpret_cast<uint16_t*>(tile16);
  const int lane = threadIdx.x;
  for (int k = 0; k < 8; ++k) tile[lane * 8 + k] = src[lane * 8 + k];
  __syncwarp();
  const uint16_t* row = tile + 8 * rows[lane];
  uint32_t r[4] = {0, 0, 0, 0};
  if (num == 1) {
    uint32_t (&r1)[1] = reinterpret_cast<uint32_t (&)[1]>(r);
    trans ? tc::ldmatrix_x1_trans(r1, row) : tc::ldmatrix_x1(r1, row);
  } else if (num == 2) {
    uint32_t (&r2)[2] = reinterpret_cast<uint32_t (&)[2]>(r);
    trans ? tc::ldmatrix_x2_trans(r2, row) : tc::ldmatrix_x2(r2, row);
  } else {
    trans ? tc::ldmatrix_x4_trans(r, row) : tc::ldmatrix_x4(r, row);
  }
  for (int j = 0; j < 4; ++j) out[lane * 4 + j] = r[j];
}

// Two 16-bit elements as one register, the first in the low half.
__device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi) { return (uint32_t)lo | (uint32_t)hi << 16; }

// a: A (16x16 row-major); b: B (16x8 k-major) or, for TcMma::LdmatrixNMajor, Bᵀ (8x16).
template <class T>
__global__ void __launch_bounds__(32) tc_mma_kernel(const uint16_t* __restrict__ a, const uint16_t* __restrict__ b,
                                                    const float* __restrict__ c, float* __restrict__ d, TcMma mode) {
  __shared__ uint4 sa16[16 * 16 / 8], sb16[16 * 8 / 8];  // uint4: 16-byte aligned rows
  uint16_t* sa = reinterpret_cast<uint16_t*>(sa16);
  uint16_t* sb = reinterpret_cast<uint16_t*>(sb16);
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  for (int k = lane; k < 16 * 16; k += 32) sa[k] = a[k];
  for (int k = lane; k < 16 * 8; k += 32) sb[k] = b[k];
  __syncwarp();
  uint32_t fa[4], fb[2];
  if (mode == TcMma::Direct) {
    auto A = [&](int r, int k) { return sa[r * 16 + k]; };
    auto B = [&](int k, int n) { return sb[k * 8 + n]; };
    fa[0] = pack2(A(g, 2 * t), A(g, 2 * t + 1));
    fa[1] = pack2(A(g + 8, 2 * t), A(g + 8, 2 * t + 1));
    fa[2] = pack2(A(g, 2 * t + 8), A(g, 2 * t + 9));
    fa[3] = pack2(A(g + 8, 2 * t + 8), A(g + 8, 2 * t + 9));
    fb[0] = pack2(B(2 * t, g), B(2 * t + 1, g));
    fb[1] = pack2(B(2 * t + 8, g), B(2 * t + 9, g));
  } else {
    // A: lane l names row l % 16 of column half l / 16 (matrices 0-3 = the quadrants)
    tc::ldmatrix_x4(fa, sa + (lane % 16) * 16 + (lane / 16) * 8);
    if (mode == TcMma::LdmatrixNMajor)  // Bᵀ (8x16): matrix 0 = k 0-7, matrix 1 = k 8-15
      tc::ldmatrix_x2(fb, sb + (lane % 8) * 16 + ((lane / 8) % 2) * 8);
    else  // B (16x8) k-major: matrix 0 = rows 0-7, matrix 1 = rows 8-15, transposed
      tc::ldmatrix_x2_trans(fb, sb + (lane % 16) * 8);
  }
  float acc[4];
  for (int e = 0; e < 4; ++e) acc[e] = c[(g + 8 * (e / 2)) * 8 + 2 * t + e % 2];
  tc::mma_m16n8k16<T>(acc, fa, fb);
  for (int e = 0; e < 4; ++e) d[(g + 8 * (e / 2)) * 8 + 2 * t + e % 2] = acc[e];
}

template <bool kRacy>
__global__ void __launch_bounds__(32) tc_cp_async_kernel(const float4* __restrict__ src, float4* __restrict__ out) {
  __shared__ float4 slot[3][32];
  const int t = threadIdx.x;
  if constexpr (!kRacy)
    for (int s = 0; s < 3; ++s) slot[s][t] = make_float4(-1.f, -1.f, -1.f, -1.f);
  auto snapshot = [&](int k) {
    for (int s = 0; s < 3; ++s) out[(k * 3 + s) * 32 + t] = slot[s][t];
  };
  tc::cp_async_16(&slot[0][t], src + t);
  tc::cp_async_commit();
  tc::cp_async_16(&slot[1][t], src + 32 + t, t % 2 == 0);
  tc::cp_async_commit();
  tc::cp_async_16(&slot[2][t], src + 64 + t);  // not committed yet
  snapshot(0);
  tc::cp_async_wait<1>();
  snapshot(1);
  tc::cp_async_wait<0>();
  snapshot(2);
  tc::cp_async_commit();
  tc::cp_async_wait<0>();
  snapshot(3);
}

}  // namespace

void block_sum(const float* x, float* out, int64_t n, bool racy, cudaStream_t stream) {
  with_bools([&](auto racy_c) { block_sum_kernel<decltype(racy_c)::value><<<1, kSumThreads, 0, stream>>>(x, out, n); },
             racy);
}

void tc_ldmatrix(const uint16_t* src, const int* rows, uint32_t* out, int num, bool trans, cudaStream_t stream) {
  tc_ldmatrix_kernel<<<1, 32, 0, stream>>>(src, rows, out, num, trans);
}

void tc_mma(Storage s, const uint16_t* a, const uint16_t* b, const float* c, float* d, TcMma mode,
            cudaStream_t stream) {
  if (s == Storage::BF16)
    tc_mma_kernel<__nv_bfloat16><<<1, 32, 0, stream>>>(a, b, c, d, mode);
  else
    tc_mma_kernel<__half><<<1, 32, 0, stream>>>(a, b, c, d, mode);
}

void tc_cp_async(const float* src, float* out, bool racy, cudaStream_t stream) {
  with_bools(
      [&](auto racy_c) {
        tc_cp_async_kernel<decltype(racy_c)::value>
            <<<1, 32, 0, stream>>>(reinterpret_cast<const float4*>(src), reinterpret_cast<float4*>(out));
      },
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
