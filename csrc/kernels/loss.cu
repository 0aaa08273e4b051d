// loss.cu -- softmax cross-entropy on class indices, fused with log-softmax,
// forward and backward; no probabilities are ever stored. Templated on the
// logits' storage type T (float, __half, __nv_bfloat16; common/storage.h):
// every logit is read in float32, the row max, sums, (m, l) pairs, per-row
// losses and the incoming dloss are float32 whatever T, and only dlogits is
// stored in T, each value rounded once (the caller rounds the reduced loss).
// Half rows are read a value per lane, as softmax.cu reads them (coalesced:
// 64 bytes per warp request).
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
//
// cross_entropy_forward
//   Algorithm: the row reductions of softmax (common/rows.cuh): warp per row
//     for C <= 1024 classes (row in registers, butterfly max and sum), else
//     block per row with the online (max, sum) state, merged by shuffles and
//     one shared-memory round, so the block path is single-pass too. One
//     thread per row then reads the target logit and writes loss and lse.
//   Launch: 128 threads = 4 rows per block, ceil(rows / 4) blocks (warp
//     path); 256 threads per block, min(rows, 65535) blocks striding over
//     rows (block path).
//   Traffic: read logits once: 4n bytes (2n for half) + 20 per row (target, loss, lse
//     pair), n = rows * C. ~6 FLOPs + 1 exp per element.
//
// cross_entropy_backward
//   C >= 32: a warp per row (128 threads = 4 rows per block, ceil(rows / 4)
//   blocks), the row's target, (m, l), dloss and a_sum loaded once, lanes
//   striding over the classes. C < 32: elementwise, grid-stride (int64 index
//   over rows * C; 256 threads per block, min(ceil(n / 256), 8 per SM) blocks),
//   the per-row values re-read (from cache) by each element. Read logits,
//   write dlogits: 8n bytes (4n for half); ~6 FLOPs + 1 exp per element.
// Both are memory bound: the floor is bytes / DRAM bandwidth. The forward's
// per-row epilogue (target, its logit and weight, loss and lse stores) is one
// lane's work: single-lane requests, a few per row against C / 32 full ones.
#include <cuda_runtime.h>

#include <cmath>

#include "common/error_flag.cuh"
#include "common/launch.cuh"
#include "common/reduce.cuh"
#include "common/rows.cuh"
#include "common/storage.cuh"
#include "kernels/loss.h"

namespace gpunet {
namespace {

// ------------------------------------------------------------ cross-entropy forward
// The row's loss from its statistics: lse = m + l, and (eps > 0) ws = sum_c w_c
// and wd = sum_c w_c (x_c - ref). Reads the target logit directly. A target
// out of range is reported in `flag` (the host raises at its next sync) and
// counts 0, never read out of bounds.
template <class T>
__device__ __forceinline__ float xent_row_loss(const T* xr, int64_t t, const float* weight, float m, float l,
                                               float ref, float ws, float wd, int cols, int64_t ignore_index,
                                               float eps, int64_t* flag) {
  if (t == ignore_index) return 0.f;
  if (t < 0 || t >= cols) {
    report_bad_value(flag, kBadClassTarget, t, cols, ignore_index);
    return 0.f;
  }
  const float wt = weight ? weight[t] : 1.f;
  float loss = (1.f - eps) * wt * ((m - to_float(xr[t])) + l);
  if (eps > 0.f) loss += eps / cols * (ws * ((m - ref) + l) - wd);  // sum_c w_c (lse - x_c)
  return loss;
}

template <class T, int VPT>
__global__ void __launch_bounds__(kWarpBlock)
    xent_forward_warp(const T* __restrict__ x, const int64_t* __restrict__ target, const float* __restrict__ weight,
                      float* __restrict__ loss, float* __restrict__ lse, int64_t rows, int cols, int64_t ignore_index,
                      float eps, int64_t* __restrict__ flag) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (int64_t)blockIdx.x * kWarpRows + threadIdx.x / 32;
  if (row >= rows) return;
  const T* xr = x + row * cols;
  float v[VPT];
  const float m = warp_load_row_max(xr, cols, 1.f, v);
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
    loss[row] = xent_row_loss(xr, target[row], weight, m, l, m, ws, wd, cols, ignore_index, eps, flag);
  }
}

template <class T>
__global__ void __launch_bounds__(kRowBlock)
    xent_forward_block(const T* __restrict__ x, const int64_t* __restrict__ target,
                       const float* __restrict__ weight, float* __restrict__ loss, float* __restrict__ lse,
                       int64_t rows, int cols, int64_t ignore_index, float eps, int64_t* __restrict__ flag) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * cols;
    const float ref = to_float(xr[0]);
    MaxSum a{-INFINITY, 0.f};
    float ws = 0.f, wd = 0.f;
    for (int c = threadIdx.x; c < cols; c += kRowBlock) {
      const float v = to_float(xr[c]);
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
      loss[row] = xent_row_loss(xr, target[row], weight, a.m, l, ref, ws, wd, cols, ignore_index, eps, flag);
    }
  }
}

// ------------------------------------------------------------ cross-entropy backward
// What every element of a row needs: the row's (m, l), dloss, target and
// a_sum = sum_c a_c; 0-gradient rows (ignore_index, target out of range: the
// forward reported it) have live = false.
struct XentRowGrad {
  bool live;
  int64_t t;
  float m, l, dl, wt, a_sum;
};

__device__ __forceinline__ XentRowGrad xent_row_grad(const int64_t* target, const float* weight, float ws,
                                                     const float* lse, const float* dloss, int64_t row, int cols,
                                                     int64_t ignore_index, float eps) {
  XentRowGrad r{};
  r.t = target[row];
  r.live = r.t != ignore_index && r.t >= 0 && r.t < cols;
  if (!r.live) return r;
  r.m = lse[2 * row];
  r.l = lse[2 * row + 1];
  r.dl = dloss[row];
  r.wt = weight ? weight[r.t] : 1.f;
  r.a_sum = (1.f - eps) * r.wt + eps / cols * ws;
  return r;
}

// dlogits[row, c] from the row's constants.
__device__ __forceinline__ float xent_grad(const XentRowGrad& r, float x, const float* weight, int c, int cols,
                                           float eps) {
  if (!r.live) return 0.f;
  float a = eps / cols * (weight ? weight[c] : 1.f);  // target distribution a_c
  if (c == r.t) a += (1.f - eps) * r.wt;
  return r.dl * (r.a_sum * expf((x - r.m) - r.l) - a);
}

// Rows of 32 classes or more: a warp per row, so the row's constants are
// loaded once per row, not once per 32 elements.
template <class T>
__global__ void __launch_bounds__(kWarpBlock)
    xent_backward_rows(const T* __restrict__ x, const int64_t* __restrict__ target,
                       const float* __restrict__ weight, const float* __restrict__ weight_sum,
                       const float* __restrict__ lse, const float* __restrict__ dloss, T* __restrict__ dx,
                       int64_t rows, int cols, int64_t ignore_index, float eps) {
  const int64_t row = (int64_t)blockIdx.x * kWarpRows + threadIdx.x / 32;
  if (row >= rows) return;
  const XentRowGrad r =
      xent_row_grad(target, weight, weight ? *weight_sum : (float)cols, lse, dloss, row, cols, ignore_index, eps);
  const T* xr = x + row * cols;
  T* dr = dx + row * cols;
  for (int c = threadIdx.x % 32; c < cols; c += 32)
    dr[c] = from_float<T>(xent_grad(r, to_float(xr[c]), weight, c, cols, eps));
}

// Narrower rows: elementwise, grid-stride (a warp per row would idle lanes).
template <class T>
__global__ void __launch_bounds__(kThreads)
    xent_backward_elements(const T* __restrict__ x, const int64_t* __restrict__ target,
                           const float* __restrict__ weight, const float* __restrict__ weight_sum,
                           const float* __restrict__ lse, const float* __restrict__ dloss, T* __restrict__ dx,
                           int64_t rows, int cols, int64_t ignore_index, float eps) {
  const int64_t n = rows * cols;
  const float ws = weight ? *weight_sum : (float)cols;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / cols;
    const int c = (int)(i - row * cols);
    dx[i] = from_float<T>(xent_grad(xent_row_grad(target, weight, ws, lse, dloss, row, cols, ignore_index, eps),
                                    to_float(x[i]), weight, c, cols, eps));
  }
}

template <class T>
void launch_xent_forward(const T* logits, const int64_t* target, const float* weight, float* loss, float* lse,
                         int64_t rows, int cols, int64_t ignore_index, float eps, int64_t* flag, cudaStream_t stream) {
  if (cols > kMaxWarpCols) {
    xent_forward_block<T><<<row_grid(rows), kRowBlock, 0, stream>>>(logits, target, weight, loss, lse, rows, cols,
                                                                    ignore_index, eps, flag);
    return;
  }
  with_values_per_lane(cols, [&](auto vpt) {
    xent_forward_warp<T, decltype(vpt)::value><<<warp_grid(rows), kWarpBlock, 0, stream>>>(
        logits, target, weight, loss, lse, rows, cols, ignore_index, eps, flag);
  });
}

template <class T>
void launch_xent_backward(const T* logits, const int64_t* target, const float* weight, const float* weight_sum,
                          const float* lse, const float* dloss, T* dlogits, int64_t rows, int cols,
                          int64_t ignore_index, float eps, cudaStream_t stream) {
  if (cols >= 32)
    xent_backward_rows<T><<<warp_grid(rows), kWarpBlock, 0, stream>>>(logits, target, weight, weight_sum, lse,
                                                                       dloss, dlogits, rows, cols, ignore_index, eps);
  else
    xent_backward_elements<T><<<grid_for(rows * cols), kThreads, 0, stream>>>(
        logits, target, weight, weight_sum, lse, dloss, dlogits, rows, cols, ignore_index, eps);
}

}  // namespace

void cross_entropy_forward(Storage storage, const void* logits, const int64_t* target, const float* weight,
                           float* loss, float* lse, int64_t rows, int cols, int64_t ignore_index, float eps,
                           int64_t* flag, cudaStream_t stream) {
  if (rows == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    launch_xent_forward(static_cast<const T*>(logits), target, weight, loss, lse, rows, cols, ignore_index, eps,
                        flag, stream);
  });
}

void cross_entropy_backward(Storage storage, const void* logits, const int64_t* target, const float* weight,
                            const float* weight_sum, const float* lse, const float* dloss, void* dlogits,
                            int64_t rows, int cols, int64_t ignore_index, float eps, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    launch_xent_backward(static_cast<const T*>(logits), target, weight, weight_sum, lse, dloss,
                         static_cast<T*>(dlogits), rows, cols, ignore_index, eps, stream);
  });
}

}  // namespace gpunet
