// softmax.cu -- float32 softmax / log-softmax along the last axis with an
// inverse temperature beta (forward and backward), and cross-entropy fused
// with log-softmax (forward and backward) that never stores probabilities.
//
// Stability for any beta: with u = sign(beta) x and b = |beta| >= 0 (so that
// beta x = b u), every exponent is b (u - max u) <= 0: no overflow for large
// logits or large beta, and exp(-inf) = 0 for padding and -inf inputs.
//
// Two shapes of kernel, chosen by the row length cols:
//   cols <= 1024  warp per row, the row held in registers: lane l keeps the
//     elements l, l + 32, ... (VPT = values per lane, a template parameter in
//     {1, 2, 4, 8, 16, 32}, the next power of two >= cols / 32, so the loops
//     unroll and the array stays in registers). Max and sum by butterfly
//     shuffles; no shared memory, no __syncthreads. Launch: 128 threads = 4
//     rows per block, ceil(rows / 4) blocks.
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
//   softmax_backward  read y, dy, write dx: 12n bytes (block path: 20n at
//                     worst). ~4 FLOPs per element (+1 exp for log-softmax).
//   cross_entropy_forward   read logits once: 4n bytes + 20 per row (target,
//                     loss, lse pair). The block path merges all row statistics
//                     online, so it is single-pass too. ~6 FLOPs + 1 exp / element.
//   cross_entropy_backward  elementwise, grid-stride: read logits, write
//                     dlogits: 8n bytes (per-row values come from cache).
//                     ~6 FLOPs + 1 exp per element.
// All are memory bound: the floor is bytes / DRAM bandwidth.
//
// Cross-entropy with label smoothing eps and class weights w: row loss
// sum_c a_c (lse - x_c) with a_c = (1 - eps) w_t [c = t] + eps / C w_c. The
// log-sum-exp is kept as the pair (m, l) = (row max, log sum exp(x - m)) whose
// sum it is: a float32 lse of logits near 1e4 is only good to ~1e-3, while
// (x - m) - l keeps full precision, in the loss and in the backward's
// probabilities exp((x - m) - l). The smoothing term is accumulated as
// sum_c w_c (x_c - ref) with ref the row max (warp path) or the row's first
// logit (block path), so that large common offsets of the logits do not
// cancel catastrophically.
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "common/launch.cuh"
#include "common/reduce.cuh"
#include "kernels/softmax.h"

namespace gpunet {
namespace {

constexpr int kWarpRows = 4;                // rows (one per warp) per block in the warp-per-row kernels
constexpr int kWarpBlock = 32 * kWarpRows;  // 128 threads
constexpr int kMaxWarpCols = 32 * 32;       // longest row a warp holds in registers (32 floats per lane)
constexpr int kRowBlock = 256;              // threads per row in the block-per-row kernels
constexpr int64_t kMaxRowBlocks = 65535;    // block-per-row kernels stride over rows beyond this

__device__ __forceinline__ float warp_reduce_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// ------------------------------------------------------------ online softmax state
// m: running max of the inputs u seen so far; s: sum of exp(b (u - m)). An
// empty state is (-inf, 0). -inf inputs contribute nothing (exp(-inf) = 0)
// and never produce -inf - -inf = NaN.
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

// ------------------------------------------------------------ softmax forward
template <int VPT, bool LOG>
__global__ void __launch_bounds__(kWarpBlock)
    softmax_forward_warp(const float* __restrict__ x, float* __restrict__ y, int64_t rows, int cols, float beta) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * kWarpRows + threadIdx.x / 32;
  if (row >= rows) return;  // the whole warp leaves together
  const float sgn = beta < 0.f ? -1.f : 1.f, b = fabsf(beta);
  const float* xr = x + row * cols;
  float u[VPT];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int c = lane + 32 * i;
    u[i] = c < cols ? sgn * xr[c] : -INFINITY;
    m = fmaxf(m, u[i]);
  }
  m = warp_reduce_max(m);
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
  float* yr = y + row * cols;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int c = lane + 32 * i;
    if (c < cols) yr[c] = LOG ? u[i] - k : u[i] * k;
  }
}

template <bool LOG>
__global__ void __launch_bounds__(kRowBlock)
    softmax_forward_block(const float* __restrict__ x, float* __restrict__ y, int64_t rows, int cols, float beta) {
  const float sgn = beta < 0.f ? -1.f : 1.f, b = fabsf(beta);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float* xr = x + row * cols;
    MaxSum a{-INFINITY, 0.f};
    for (int c = threadIdx.x; c < cols; c += kRowBlock) online_add(a, sgn * xr[c], b);
    a = block_reduce_maxsum(a, b);
    const float k = LOG ? logf(a.s) : 1.f / a.s;
    float* yr = y + row * cols;
    for (int c = threadIdx.x; c < cols; c += kRowBlock) {
      const float z = shifted(sgn * xr[c], a.m, b);
      yr[c] = LOG ? z - k : expf(z) * k;
    }
  }
}

// ------------------------------------------------------------ softmax backward
// softmax: dx = beta y (dy - sum dy y); log-softmax: dx = beta (dy - e^y sum dy)
template <bool LOG>
__device__ __forceinline__ float softmax_grad(float y, float dy, float sum, float beta) {
  return LOG ? beta * (dy - expf(y) * sum) : beta * y * (dy - sum);
}

template <int VPT, bool LOG>
__global__ void __launch_bounds__(kWarpBlock)
    softmax_backward_warp(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx,
                          int64_t rows, int cols, float beta) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * kWarpRows + threadIdx.x / 32;
  if (row >= rows) return;
  const float* yr = y + row * cols;
  const float* gr = dy + row * cols;
  float yv[VPT], gv[VPT];
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int c = lane + 32 * i;
    yv[i] = c < cols ? yr[c] : 0.f;
    gv[i] = c < cols ? gr[c] : 0.f;
    s += LOG ? gv[i] : gv[i] * yv[i];
  }
  s = warp_reduce_sum(s);
  float* dr = dx + row * cols;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int c = lane + 32 * i;
    if (c < cols) dr[c] = softmax_grad<LOG>(yv[i], gv[i], s, beta);
  }
}

template <bool LOG>
__global__ void __launch_bounds__(kRowBlock)
    softmax_backward_block(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx,
                           int64_t rows, int cols, float beta) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float* yr = y + row * cols;
    const float* gr = dy + row * cols;
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += kRowBlock) s += LOG ? gr[c] : gr[c] * yr[c];
    s = block_reduce_sum<kRowBlock>(s);
    float* dr = dx + row * cols;
    for (int c = threadIdx.x; c < cols; c += kRowBlock) dr[c] = softmax_grad<LOG>(yr[c], gr[c], s, beta);
  }
}

// ------------------------------------------------------------ cross-entropy forward
// The row's loss from its statistics: lse = m + l, and (eps > 0) ws = sum_c w_c
// and wd = sum_c w_c (x_c - ref). Reads the target logit directly.
__device__ __forceinline__ float xent_row_loss(const float* xr, int64_t t, const float* weight, float m, float l,
                                               float ref, float ws, float wd, int cols, int64_t ignore_index,
                                               float eps) {
  if (t == ignore_index) return 0.f;
  if (t < 0 || t >= cols) return NAN;  // Python validates; never read out of bounds
  const float wt = weight ? weight[t] : 1.f;
  float loss = (1.f - eps) * wt * ((m - xr[t]) + l);
  if (eps > 0.f) loss += eps / cols * (ws * ((m - ref) + l) - wd);  // sum_c w_c (lse - x_c)
  return loss;
}

template <int VPT>
__global__ void __launch_bounds__(kWarpBlock)
    xent_forward_warp(const float* __restrict__ x, const int64_t* __restrict__ target, const float* __restrict__ weight,
                      float* __restrict__ loss, float* __restrict__ lse, int64_t rows, int cols, int64_t ignore_index,
                      float eps) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * kWarpRows + threadIdx.x / 32;
  if (row >= rows) return;
  const float* xr = x + row * cols;
  float v[VPT];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int c = lane + 32 * i;
    v[i] = c < cols ? xr[c] : -INFINITY;
    m = fmaxf(m, v[i]);
  }
  m = warp_reduce_max(m);
  float s = 0.f, ws = 0.f, wd = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int c = lane + 32 * i;
    s += expf(shifted(v[i], m, 1.f));
    if (eps > 0.f && c < cols) {
      const float w = weight ? weight[c] : 1.f;
      ws += w;
      wd += w * (v[i] - m);
    }
  }
  s = warp_reduce_sum(s);
  if (eps > 0.f) {  // uniform across the warp
    ws = warp_reduce_sum(ws);
    wd = warp_reduce_sum(wd);
  }
  if (lane == 0) {
    const float l = logf(s);
    lse[2 * row] = m;
    lse[2 * row + 1] = l;
    loss[row] = xent_row_loss(xr, target[row], weight, m, l, m, ws, wd, cols, ignore_index, eps);
  }
}

__global__ void __launch_bounds__(kRowBlock)
    xent_forward_block(const float* __restrict__ x, const int64_t* __restrict__ target,
                       const float* __restrict__ weight, float* __restrict__ loss, float* __restrict__ lse,
                       int64_t rows, int cols, int64_t ignore_index, float eps) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float* xr = x + row * cols;
    const float ref = xr[0];
    MaxSum a{-INFINITY, 0.f};
    float ws = 0.f, wd = 0.f;
    for (int c = threadIdx.x; c < cols; c += kRowBlock) {
      const float v = xr[c];
      online_add(a, v, 1.f);
      if (eps > 0.f) {
        const float w = weight ? weight[c] : 1.f;
        ws += w;
        wd += w * (v - ref);
      }
    }
    a = block_reduce_maxsum(a, 1.f);
    if (eps > 0.f) {  // uniform across the block
      ws = block_reduce_sum<kRowBlock>(ws);
      wd = block_reduce_sum<kRowBlock>(wd);
    }
    if (threadIdx.x == 0) {
      const float l = logf(a.s);
      lse[2 * row] = a.m;
      lse[2 * row + 1] = l;
      loss[row] = xent_row_loss(xr, target[row], weight, a.m, l, ref, ws, wd, cols, ignore_index, eps);
    }
  }
}

// ------------------------------------------------------------ cross-entropy backward
__global__ void __launch_bounds__(kThreads)
    xent_backward_kernel(const float* __restrict__ x, const int64_t* __restrict__ target,
                         const float* __restrict__ weight, const float* __restrict__ weight_sum,
                         const float* __restrict__ lse, const float* __restrict__ dloss, float* __restrict__ dx,
                         int64_t rows, int cols, int64_t ignore_index, float eps) {
  const int64_t n = rows * cols;
  const float eps_c = eps / cols;
  const float ws = weight ? *weight_sum : (float)cols;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / cols;
    const int c = (int)(i - row * cols);
    const int64_t t = target[row];
    float g;
    if (t == ignore_index) {
      g = 0.f;
    } else if (t < 0 || t >= cols) {
      g = NAN;
    } else {
      const float wt = weight ? weight[t] : 1.f;
      float a = eps_c * (weight ? weight[c] : 1.f);  // target distribution a_c
      if (c == t) a += (1.f - eps) * wt;
      const float a_sum = (1.f - eps) * wt + eps_c * ws;
      g = dloss[row] * (a_sum * expf((x[i] - lse[2 * row]) - lse[2 * row + 1]) - a);
    }
    dx[i] = g;
  }
}

// ------------------------------------------------------------ dispatch
// f(std::integral_constant<int, VPT>) with VPT the values per lane a warp
// needs for a row of cols <= kMaxWarpCols floats.
template <class F>
void with_values_per_lane(int cols, F&& f) {
  if (cols <= 32) return f(std::integral_constant<int, 1>{});
  if (cols <= 64) return f(std::integral_constant<int, 2>{});
  if (cols <= 128) return f(std::integral_constant<int, 4>{});
  if (cols <= 256) return f(std::integral_constant<int, 8>{});
  if (cols <= 512) return f(std::integral_constant<int, 16>{});
  return f(std::integral_constant<int, 32>{});
}

unsigned warp_grid(int64_t rows) { return (unsigned)((rows + kWarpRows - 1) / kWarpRows); }
unsigned row_grid(int64_t rows) { return (unsigned)std::min<int64_t>(rows, kMaxRowBlocks); }

template <bool LOG>
void launch_softmax_forward(const float* x, float* y, int64_t rows, int cols, float beta, cudaStream_t stream) {
  if (cols > kMaxWarpCols) {
    softmax_forward_block<LOG><<<row_grid(rows), kRowBlock, 0, stream>>>(x, y, rows, cols, beta);
    return;
  }
  with_values_per_lane(cols, [&](auto vpt) {
    softmax_forward_warp<decltype(vpt)::value, LOG><<<warp_grid(rows), kWarpBlock, 0, stream>>>(x, y, rows, cols, beta);
  });
}

template <bool LOG>
void launch_softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int cols, float beta,
                             cudaStream_t stream) {
  if (cols > kMaxWarpCols) {
    softmax_backward_block<LOG><<<row_grid(rows), kRowBlock, 0, stream>>>(y, dy, dx, rows, cols, beta);
    return;
  }
  with_values_per_lane(cols, [&](auto vpt) {
    softmax_backward_warp<decltype(vpt)::value, LOG>
        <<<warp_grid(rows), kWarpBlock, 0, stream>>>(y, dy, dx, rows, cols, beta);
  });
}

}  // namespace

void softmax_forward(const float* x, float* y, int64_t rows, int cols, float beta, bool log, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  if (log)
    launch_softmax_forward<true>(x, y, rows, cols, beta, stream);
  else
    launch_softmax_forward<false>(x, y, rows, cols, beta, stream);
}

void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int cols, float beta, bool log,
                      cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  if (log)
    launch_softmax_backward<true>(y, dy, dx, rows, cols, beta, stream);
  else
    launch_softmax_backward<false>(y, dy, dx, rows, cols, beta, stream);
}

void cross_entropy_forward(const float* logits, const int64_t* target, const float* weight, float* loss, float* lse,
                           int64_t rows, int cols, int64_t ignore_index, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  if (cols > kMaxWarpCols) {
    xent_forward_block<<<row_grid(rows), kRowBlock, 0, stream>>>(logits, target, weight, loss, lse, rows, cols,
                                                                 ignore_index, eps);
    return;
  }
  with_values_per_lane(cols, [&](auto vpt) {
    xent_forward_warp<decltype(vpt)::value><<<warp_grid(rows), kWarpBlock, 0, stream>>>(
        logits, target, weight, loss, lse, rows, cols, ignore_index, eps);
  });
}

void cross_entropy_backward(const float* logits, const int64_t* target, const float* weight, const float* weight_sum,
                            const float* lse, const float* dloss, float* dlogits, int64_t rows, int cols,
                            int64_t ignore_index, float eps, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  xent_backward_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(logits, target, weight, weight_sum, lse, dloss,
                                                                      dlogits, rows, cols, ignore_index, eps);
}

}  // namespace gpunet
