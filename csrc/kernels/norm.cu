// norm.cu -- float32 layer normalisation over the last `cols` features
// of `rows` rows: forward, input gradient, and weight/bias gradients. (Batch
// norm, the family's other op in gpunet/ops/norm.py, is array code on every
// backend: its reductions run over all axes but the channel.)
//
// layernorm_forward_kernel
//   Algorithm: one warp per row. Pass 1 sums the row (each lane a strided
//     slice, then a butterfly warp_reduce_sum) -> mean; pass 2 sums
//     (x - mean)^2 -> biased variance (two-pass, so no cancellation for rows
//     with a large mean); pass 3 writes y = (x - mean)·rstd·w + b. The row is
//     re-read from L1/L2 in passes 2 and 3. mean and rstd (one float each per
//     row) are saved for backward. float4 loads when cols % 4 == 0 and the
//     pointers are 16-byte aligned.
//   Launch: 128 threads (4 warps = 4 rows) per block, ceil(rows / 4) blocks.
//   Traffic: reads x (4·rows·cols bytes from DRAM, twice more from cache),
//     w, b; writes y and 8·rows bytes: floor ≈ 8·rows·cols bytes. FLOPs ≈
//     7·rows·cols: memory bound.
//
// layernorm_dx_kernel
//   dx = rstd·(g - mean(g) - xhat·mean(g·xhat)), g = dy·w, xhat recomputed
//   from x, mean, rstd. One warp per row: pass 1 reduces the two sums, pass
//   2 writes dx. Same launch shape. Traffic: reads x, dy (8·rows·cols), writes
//   dx (4·rows·cols).
//
// layernorm_param_partial_kernel + layernorm_param_reduce_kernel
//   dw = sum over rows of dy·xhat, db = sum of dy, without atomics: the rows
//   are cut into `chunks` slices; block (column tile, chunk) has one thread
//   per column that sums its slice's rows in order (coalesced along the
//   columns) and writes partial[0|1][chunk][col]; the second kernel sums the
//   chunks of each column in order. Bitwise reproducible run to run.
//   Launch: (ceil(cols/128), chunks) blocks then ceil(cols/128) blocks, 128
//   threads. Traffic: reads x, dy again (8·rows·cols) + 16·chunks·cols.
#include <cuda_runtime.h>

#include <cmath>

#include "common/launch.cuh"
#include "common/reduce.cuh"
#include "kernels/norm.h"

namespace gpunet {
namespace {

constexpr int kLnThreads = 128;                // 4 warps
constexpr int kLnRowsPerBlock = kLnThreads / 32;  // one row per warp
constexpr int kColTile = 128;                  // columns per block of the parameter-gradient kernels

// Sum over the row of f(x[c]) for the lane's columns c = lane, lane + 32, ...
// (float4 groups when VEC), reduced over the warp: every lane gets the sum.
template <bool VEC, class F>
__device__ __forceinline__ float row_sum(const float* row, int64_t cols, int lane, F f) {
  float s = 0.f;
  if (VEC) {
    const float4* r4 = reinterpret_cast<const float4*>(row);
    for (int64_t c = lane; c < cols / 4; c += 32) {
      const float4 v = r4[c];
      s += f(v.x, 4 * c) + f(v.y, 4 * c + 1) + f(v.z, 4 * c + 2) + f(v.w, 4 * c + 3);
    }
  } else {
    for (int64_t c = lane; c < cols; c += 32) s += f(row[c], c);
  }
  return warp_reduce_sum(s);
}

template <bool VEC>
__global__ void __launch_bounds__(kLnThreads)
    layernorm_forward_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                             float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                             int64_t rows, int64_t cols, float eps) {
  const int lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * kLnRowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;  // the whole warp leaves together: no collective is left waiting
  const float* xr = x + r * cols;
  float* yr = y + r * cols;
  const float inv_cols = 1.f / (float)cols;
  const float mean = row_sum<VEC>(xr, cols, lane, [](float v, int64_t) { return v; }) * inv_cols;
  const float var = row_sum<VEC>(xr, cols, lane, [mean](float v, int64_t) {
                      const float d = v - mean;
                      return d * d;
                    }) * inv_cols;
  const float rstd = 1.f / sqrtf(var + eps);
  if (VEC) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    float4* y4 = reinterpret_cast<float4*>(yr);
    for (int64_t c = lane; c < cols / 4; c += 32) {
      const float4 v = x4[c], wv = w4[c], bv = b4[c];
      float4 o;
      o.x = (v.x - mean) * rstd * wv.x + bv.x;
      o.y = (v.y - mean) * rstd * wv.y + bv.y;
      o.z = (v.z - mean) * rstd * wv.z + bv.z;
      o.w = (v.w - mean) * rstd * wv.w + bv.w;
      y4[c] = o;
    }
  } else {
    for (int64_t c = lane; c < cols; c += 32) yr[c] = (xr[c] - mean) * rstd * w[c] + b[c];
  }
  if (lane == 0) {
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

__global__ void __launch_bounds__(kLnThreads)
    layernorm_dx_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ mean,
                        const float* __restrict__ rstd, const float* __restrict__ dy, float* __restrict__ dx,
                        int64_t rows, int64_t cols) {
  const int lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * kLnRowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;
  const float* xr = x + r * cols;
  const float* dyr = dy + r * cols;
  const float mu = mean[r], rs = rstd[r];
  float sum_g = 0.f, sum_gx = 0.f;
  for (int64_t c = lane; c < cols; c += 32) {
    const float g = dyr[c] * w[c];
    sum_g += g;
    sum_gx += g * (xr[c] - mu) * rs;
  }
  const float inv_cols = 1.f / (float)cols;
  const float mean_g = warp_reduce_sum(sum_g) * inv_cols;
  const float mean_gx = warp_reduce_sum(sum_gx) * inv_cols;
  float* dxr = dx + r * cols;
  for (int64_t c = lane; c < cols; c += 32) {
    const float xhat = (xr[c] - mu) * rs;
    dxr[c] = rs * (dyr[c] * w[c] - mean_g - xhat * mean_gx);
  }
}

__global__ void __launch_bounds__(kColTile)
    layernorm_param_partial_kernel(const float* __restrict__ x, const float* __restrict__ mean,
                                   const float* __restrict__ rstd, const float* __restrict__ dy,
                                   float* __restrict__ partial, int64_t rows, int64_t cols, int64_t chunks,
                                   int64_t rows_per_chunk) {
  const int64_t c = (int64_t)blockIdx.x * kColTile + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (c >= cols) return;  // no collectives in this kernel
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float sw = 0.f, sb = 0.f;
  for (int64_t r = r0; r < r1; ++r) {
    const float g = dy[r * cols + c];
    sw += g * (x[r * cols + c] - mean[r]) * rstd[r];
    sb += g;
  }
  partial[chunk * cols + c] = sw;
  partial[(chunks + chunk) * cols + c] = sb;
}

__global__ void __launch_bounds__(kColTile)
    layernorm_param_reduce_kernel(const float* __restrict__ partial, float* __restrict__ dw, float* __restrict__ db,
                                  int64_t cols, int64_t chunks) {
  const int64_t c = (int64_t)blockIdx.x * kColTile + threadIdx.x;
  if (c >= cols) return;
  float sw = 0.f, sb = 0.f;
  for (int64_t k = 0; k < chunks; ++k) {
    sw += partial[k * cols + c];
    sb += partial[(chunks + k) * cols + c];
  }
  dw[c] = sw;
  db[c] = sb;
}

}  // namespace

void layernorm_forward(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                       int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  const unsigned blocks = (unsigned)((rows + kLnRowsPerBlock - 1) / kLnRowsPerBlock);
  const bool vec = cols % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(b) && aligned16(y);
  with_bools(
      [&](auto vec_c) {
        layernorm_forward_kernel<decltype(vec_c)::value>
            <<<blocks, kLnThreads, 0, stream>>>(x, w, b, y, mean, rstd, rows, cols, eps);
      },
      vec);
}

void layernorm_backward(const float* x, const float* w, const float* mean, const float* rstd, const float* dy,
                        float* dx, float* dw, float* db, float* partial, int64_t chunks, int64_t rows,
                        int64_t cols, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  const unsigned row_blocks = (unsigned)((rows + kLnRowsPerBlock - 1) / kLnRowsPerBlock);
  layernorm_dx_kernel<<<row_blocks, kLnThreads, 0, stream>>>(x, w, mean, rstd, dy, dx, rows, cols);
  const unsigned col_blocks = (unsigned)((cols + kColTile - 1) / kColTile);
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  layernorm_param_partial_kernel<<<dim3(col_blocks, (unsigned)chunks), kColTile, 0, stream>>>(
      x, mean, rstd, dy, partial, rows, cols, chunks, rows_per_chunk);
  layernorm_param_reduce_kernel<<<col_blocks, kColTile, 0, stream>>>(partial, dw, db, cols, chunks);
}

}  // namespace gpunet
