// rows.cuh -- row reductions along the last axis of a (rows, cols) matrix,
// shared by the softmax (kernels/softmax.cu) and loss (kernels/loss.cu)
// families: the two kernel shapes, their launch geometry, and the online
// (max, sum of exp) state that lets one pass find a row's log-sum-exp.
//
// Two shapes of kernel, chosen by the row length cols:
//   cols <= kMaxWarpCols (1024)  warp per row, the row held in registers:
//     lane l keeps the elements l, l + 32, ... (VPT = values per lane, a
//     template parameter in {1, 2, 4, 8, 16, 32}, see with_values_per_lane).
//     kWarpRows rows per block, warp_grid(rows) blocks.
//   cols > kMaxWarpCols          block of kRowBlock threads per row,
//     row_grid(rows) blocks: at most kMaxRowBlocks, striding over the rest.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/launch.cuh"
#include "common/reduce.cuh"
#include "common/rows.h"
#include "common/storage.cuh"

namespace gpunet {

constexpr int kWarpBlock = 32 * kWarpRows;  // 128 threads
constexpr int kMaxWarpCols = 32 * 32;       // longest row a warp holds in registers (32 floats per lane)
constexpr int kRowBlock = 256;              // threads per row in the block-per-row kernels
constexpr int64_t kMaxRowBlocks = 65535;    // block-per-row kernels stride over rows beyond this

// f(std::integral_constant<int, VPT>) with VPT the values per lane a warp
// needs for a row of cols <= kMaxWarpCols floats: the next power of two >=
// cols / 32, so the loops unroll and the row stays in registers.
template <class F>
void with_values_per_lane(int cols, F&& f) {
  if (cols <= 32) return f(std::integral_constant<int, 1>{});
  if (cols <= 64) return f(std::integral_constant<int, 2>{});
  if (cols <= 128) return f(std::integral_constant<int, 4>{});
  if (cols <= 256) return f(std::integral_constant<int, 8>{});
  if (cols <= 512) return f(std::integral_constant<int, 16>{});
  return f(std::integral_constant<int, 32>{});
}

// Blocks of the warp-per-row kernels: one row per warp (64-bit arithmetic, so
// no row count overflows; past the grid's x limit, i.e. more than kMaxRows
// rows, which the bindings also check, std::length_error).
inline dim3 warp_grid(int64_t rows) {
  return checked_grid("a warp-per-row kernel", (rows + kWarpRows - 1) / kWarpRows);
}
// Blocks of the block-per-row kernels, which stride over the rows beyond that.
inline dim3 row_grid(int64_t rows) { return dim3((unsigned)std::min<int64_t>(rows, kMaxRowBlocks)); }

__device__ __forceinline__ float warp_reduce_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The warp-per-row kernels' load: lane l keeps u[i] = sgn * row[l + 32 i]
// (-inf past the row's end, which every later exp turns into 0) for a row of
// cols <= 32 VPT values of storage type T (read in float32, common/storage.cuh);
// returns the row's max, the same in every lane.
template <int VPT, class T>
__device__ __forceinline__ float warp_load_row_max(const T* row, int cols, float sgn, float (&u)[VPT]) {
  const int lane = threadIdx.x % 32;
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int c = lane + 32 * i;
    u[i] = c < cols ? sgn * to_float(row[c]) : -INFINITY;
    m = fmaxf(m, u[i]);
  }
  return warp_reduce_max(m);
}

// ------------------------------------------------------------ online softmax state
// For inputs u scaled by b >= 0: m is the running max of the u seen so far,
// s the sum of exp(b (u - m)). An empty state is (-inf, 0). -inf inputs
// contribute nothing (exp(-inf) = 0) and never produce -inf - -inf = NaN.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ void online_add(MaxSum& a, float u, float b) {
  if (u > a.m) {
    a.s = (a.m == -INFINITY ? 0.f : a.s * expf(b * (a.m - u))) + 1.f;
    a.m = u;
  } else if (u != -INFINITY) {
    a.s += expf(b * (u - a.m));
  }
}

// Symmetric in its arguments (same bits either way), so every lane of a
// butterfly ends with the same state.
__device__ __forceinline__ MaxSum online_merge(MaxSum a, MaxSum c, float b) {
  const float m = fmaxf(a.m, c.m);
  if (m == -INFINITY) return a;
  const float sa = a.m == -INFINITY ? 0.f : a.s * expf(b * (a.m - m));
  const float sc = c.m == -INFINITY ? 0.f : c.s * expf(b * (c.m - m));
  return MaxSum{m, sa + sc};
}

__device__ __forceinline__ MaxSum warp_reduce_maxsum(MaxSum v, float b) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
    v = online_merge(v, other, b);
  }
  return v;
}

// Every thread of the kRowBlock-thread block must call it; every thread gets the merged state.
__device__ __forceinline__ MaxSum block_reduce_maxsum(MaxSum v, float b) {
  constexpr int kWarps = kRowBlock / 32;
  __shared__ float warp_m[kWarps], warp_s[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_reduce_maxsum(v, b);
  if (lane == 0) {
    warp_m[warp] = v.m;
    warp_s[warp] = v.s;
  }
  __syncthreads();
  // every warp merges the partials itself: no second broadcast round
  v = lane < kWarps ? MaxSum{warp_m[lane], warp_s[lane]} : MaxSum{-INFINITY, 0.f};
  v = warp_reduce_maxsum(v, b);
  __syncthreads();  // warp_m/warp_s may be reused by the next row
  return v;
}

// b (u - m), keeping -inf inputs (and padding) at -inf even when b = 0
__device__ __forceinline__ float shifted(float u, float m, float b) { return u == -INFINITY ? -INFINITY : b * (u - m); }

}  // namespace gpunet
