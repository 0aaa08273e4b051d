// softmax.cu -- softmax / log-softmax along the last axis with an inverse
// temperature beta, forward and backward, templated on the storage type T
// (float, __half, __nv_bfloat16; common/storage.h): every value is read in
// float32, max, sums and the gradient are computed in float32, and each
// output is rounded once to T. The half rows are read a value per lane as
// the float ones (coalesced across the warp: 64 bytes per request). (Cross-entropy, fused with
// log-softmax, is the loss family: kernels/loss.cu.)
//
// Stability for any beta: with u = sign(beta) x and b = |beta| >= 0 (so that
// beta x = b u), every exponent is b (u - max u) <= 0: no overflow for large
// logits or large beta, and exp(-inf) = 0 for padding and -inf inputs.
//
// Two shapes of kernel, chosen by the row length cols (common/rows.cuh):
//   cols <= 1024  warp per row, the row held in registers (VPT values per
//     lane, a template parameter). Max and sum by butterfly shuffles; no
//     shared memory, no __syncthreads. Launch: 128 threads = 4 rows per
//     block, ceil(rows / 4) blocks.
//   cols > 1024   block per row, ONLINE softmax: one pass keeps each thread's
//     running max m and sum s of exp(b (u - m)), rescaling s by
//     exp(b (m_old - m_new)) when the max grows; the 256 (m, s) pairs are
//     merged by shuffles and one shared-memory round; a second pass writes.
//     Launch: 256 threads per block, min(rows, 65535) blocks striding over rows.
//
// Kernels and their minimal traffic (n = rows * cols elements):
//   softmax_forward   read x, write y: 8n bytes (the block path reads x twice,
//                     the second time mostly from L2: 12n at worst). ~5 FLOPs
//                     + 1 exp per element (2 exp on the block path).
//   softmax_backward  read y, dy, write dx: 12n bytes (the warp path holds dy
//                     in registers and reads y twice, the second time from
//                     L1; block path: 20n at worst). ~4 FLOPs per element
//                     (+1 exp for log-softmax).
// Both are memory bound: the floor is bytes / DRAM bandwidth. Sectors: a
// warp's request is 32 consecutive floats of a row, 4 sectors when the row
// starts on a 128-byte line (cols % 32 == 0 and an aligned array), else 5
// (4.9 per request at cols = 1000): the row layout is the caller's.
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "common/launch.cuh"
#include "common/reduce.cuh"
#include "common/rows.cuh"
#include "common/storage.cuh"
#include "kernels/softmax.h"

namespace gpunet {
namespace {

// ------------------------------------------------------------ softmax forward
template <class T, int VPT, bool LOG>
__global__ void __launch_bounds__(kWarpBlock)
    softmax_forward_warp(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int cols, float beta) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * kWarpRows + threadIdx.x / 32;
  if (row >= rows) return;  // the whole warp leaves together
  const float sgn = beta < 0.f ? -1.f : 1.f, b = fabsf(beta);
  float u[VPT];
  const float m = warp_load_row_max(x + row * cols, cols, sgn, u);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    u[i] = shifted(u[i], m, b);
    const float e = expf(u[i]);
    s += e;
    if (!LOG) u[i] = e;
  }
  s = warp_reduce_sum(s);
  const float k = LOG ? logf(s) : 1.f / s;
  T* yr = y + row * cols;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int c = lane + 32 * i;
    if (c < cols) yr[c] = from_float<T>(LOG ? u[i] - k : u[i] * k);
  }
}

template <class T, bool LOG>
__global__ void __launch_bounds__(kRowBlock)
    softmax_forward_block(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int cols, float beta) {
  const float sgn = beta < 0.f ? -1.f : 1.f, b = fabsf(beta);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * cols;
    MaxSum a{-INFINITY, 0.f};
    for (int c = threadIdx.x; c < cols; c += kRowBlock) online_add(a, sgn * to_float(xr[c]), b);
    a = block_reduce_maxsum(a, b);
    const float k = LOG ? logf(a.s) : 1.f / a.s;
    T* yr = y + row * cols;
    for (int c = threadIdx.x; c < cols; c += kRowBlock) {
      const float z = shifted(sgn * to_float(xr[c]), a.m, b);
      yr[c] = from_float<T>(LOG ? z - k : expf(z) * k);
    }
  }
}

// ------------------------------------------------------------ softmax backward
constexpr int kBackwardBlocksPerSm = 8;  // 32 of an SM's 64 warps: at most 64 registers per thread

// softmax: dx = beta y (dy - sum dy y); log-softmax: dx = beta (dy - e^y sum dy)
template <bool LOG>
__device__ __forceinline__ float softmax_grad(float y, float dy, float sum, float beta) {
  return LOG ? beta * (dy - expf(y) * sum) : beta * y * (dy - sum);
}

// A lane's VPT values of a row kept for a later pass: float32 ones as they
// are, 16-bit ones two to a register (32 unpacked half values plus the
// backward's other state spill under the 64-register cap).
template <class T, int VPT, bool = std::is_same_v<T, float>>
struct HeldRow {
  float v[VPT];
  __device__ __forceinline__ void set(int i, float g) { v[i] = g; }
  __device__ __forceinline__ float get(int i) const { return v[i]; }
};
template <class T, int VPT>
struct HeldRow<T, VPT, false> {
  typename HalfPair<T>::type p[(VPT + 1) / 2];
  __device__ __forceinline__ void set(int i, T g) {
    if (i % 2 == 0)
      p[i / 2].x = g;
    else
      p[i / 2].y = g;
  }
  __device__ __forceinline__ float get(int i) const {
    const float2 f = HalfPair<T>::to_float2(p[i / 2]);
    return i % 2 == 0 ? f.x : f.y;
  }
};

// Holds only dy in registers and reads y again in the writing pass (from
// L1: the warp read the same row just before): keeping both rows took
// 2·VPT registers per lane (109 at VPT = 32, occupancy 0.25). The minimum of
// kBackwardBlocksPerSm blocks caps ptxas at 64 registers, so it does not
// keep all 2·VPT loads of the first pass in flight at once either.
template <class T, int VPT, bool LOG>
__global__ void __launch_bounds__(kWarpBlock, kBackwardBlocksPerSm)
    softmax_backward_warp(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx,
                          int64_t rows, int cols, float beta) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * kWarpRows + threadIdx.x / 32;
  if (row >= rows) return;
  const T* yr = y + row * cols;
  const T* gr = dy + row * cols;
  HeldRow<T, VPT> gv{};
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int c = lane + 32 * i;
    gv.set(i, c < cols ? gr[c] : from_float<T>(0.f));
    if (LOG)
      s += gv.get(i);
    else if (c < cols)
      s += gv.get(i) * to_float(yr[c]);
  }
  s = warp_reduce_sum(s);
  T* dr = dx + row * cols;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int c = lane + 32 * i;
    if (c < cols) dr[c] = from_float<T>(softmax_grad<LOG>(to_float(yr[c]), gv.get(i), s, beta));
  }
}

template <class T, bool LOG>
__global__ void __launch_bounds__(kRowBlock)
    softmax_backward_block(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx,
                           int64_t rows, int cols, float beta) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* yr = y + row * cols;
    const T* gr = dy + row * cols;
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += kRowBlock)
      s += LOG ? to_float(gr[c]) : to_float(gr[c]) * to_float(yr[c]);
    s = block_reduce_sum<kRowBlock>(s);
    T* dr = dx + row * cols;
    for (int c = threadIdx.x; c < cols; c += kRowBlock)
      dr[c] = from_float<T>(softmax_grad<LOG>(to_float(yr[c]), to_float(gr[c]), s, beta));
  }
}

// ------------------------------------------------------------ dispatch
template <class T, bool LOG>
void launch_softmax_forward(const T* x, T* y, int64_t rows, int cols, float beta, cudaStream_t stream) {
  if (cols > kMaxWarpCols) {
    softmax_forward_block<T, LOG><<<row_grid(rows), kRowBlock, 0, stream>>>(x, y, rows, cols, beta);
    return;
  }
  with_values_per_lane(cols, [&](auto vpt) {
    softmax_forward_warp<T, decltype(vpt)::value, LOG>
        <<<warp_grid(rows), kWarpBlock, 0, stream>>>(x, y, rows, cols, beta);
  });
}

template <class T, bool LOG>
void launch_softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int cols, float beta,
                             cudaStream_t stream) {
  if (cols > kMaxWarpCols) {
    softmax_backward_block<T, LOG><<<row_grid(rows), kRowBlock, 0, stream>>>(y, dy, dx, rows, cols, beta);
    return;
  }
  with_values_per_lane(cols, [&](auto vpt) {
    softmax_backward_warp<T, decltype(vpt)::value, LOG>
        <<<warp_grid(rows), kWarpBlock, 0, stream>>>(y, dy, dx, rows, cols, beta);
  });
}

}  // namespace

void softmax_forward(Storage storage, const void* x, void* y, int64_t rows, int cols, float beta, bool log,
                     cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    with_bools([&](auto log_c) {
      launch_softmax_forward<T, decltype(log_c)::value>(static_cast<const T*>(x), static_cast<T*>(y), rows, cols,
                                                        beta, stream);
    }, log);
  });
}

void softmax_backward(Storage storage, const void* y, const void* dy, void* dx, int64_t rows, int cols, float beta,
                      bool log, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    with_bools([&](auto log_c) {
      launch_softmax_backward<T, decltype(log_c)::value>(static_cast<const T*>(y), static_cast<const T*>(dy),
                                                         static_cast<T*>(dx), rows, cols, beta, stream);
    }, log);
  });
}

}  // namespace gpunet
