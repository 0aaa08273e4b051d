// norm.cu -- layer normalisation over the last `cols` features of `rows`
// rows: forward, input gradient, and weight/bias gradients. (Batch norm, the
// family's other op in gpunet/ops/norm.py, is array code on every backend:
// its reductions run over all axes but the channel.)
//
// Storage: every kernel is templated on the type T of x, weight, bias, y, dy,
// dx, dweight and dbias (float, __half, __nv_bfloat16; common/storage.h).
// Values are read in float32; the statistics (mean, rstd, saved as float32
// whatever T), the row sums of the backward and the parameter-gradient
// partials are float32, and each output is rounded once to T. Half rows take
// the scalar loads (2 bytes per lane, 64 bytes per warp request, coalesced);
// the float4 path is float32's.
//
// layernorm_forward_regs_kernel<N, VEC> (rows of cols <= 1024) and
// layernorm_forward_kernel<VEC> (longer rows)
//   Algorithm: one warp per row. The short-row kernel reads the row ONCE into
//     registers (N floats per lane: lane l holds the elements (or, with VEC,
//     the float4 chunks) l, l + 32, ...), then sums it -> mean, sums
//     (x - mean)^2 -> biased variance (two-pass, so no cancellation for rows
//     with a large mean), and writes y = (x - mean)·rstd·w + b from the
//     registers. The long-row kernel cannot hold the row: its three passes
//     (mean, variance, write) re-read it, from L1/L2 after the first. mean
//     and rstd (one float each per row) are saved for backward. float4
//     loads when cols % 4 == 0 and the pointers are 16-byte aligned.
//   Launch: 128 threads (4 warps = 4 rows) per block, ceil(rows / 4) blocks.
//   Traffic: reads x once (4·rows·cols bytes), w, b; writes y and 8·rows
//     bytes: floor ≈ 8·rows·cols bytes. FLOPs ≈ 7·rows·cols: memory bound.
//
// layernorm_dx_kernel
//   dx = rstd·(g - mean(g) - xhat·mean(g·xhat)), g = dy·w, xhat recomputed
//   from x, mean, rstd. One warp per row: pass 1 reduces the two sums, pass
//   2 writes dx. Same launch shape. Traffic: reads x, dy (8·rows·cols), writes
//   dx (4·rows·cols); pass 2 re-reads the warp's own row, from L1.
//
// layernorm_param_partial_kernel + layernorm_param_reduce_kernel
//   dw = sum over rows of dy·xhat, db = sum of dy, without atomics: the rows
//   are cut into `chunks` slices; block (column tile, chunk) has one thread
//   per column that sums its slice's rows in order (coalesced along the
//   columns) and writes partial[0|1][chunk][col]; the second kernel sums the
//   chunks of each column in order. Bitwise reproducible run to run.
//   Launch: (ceil(cols/128), chunks) blocks then ceil(cols/128) blocks, 128
//   threads. The row's mean[r] and rstd[r] loads are warp-wide broadcasts
//   (1 sector), so the partial kernel's requests average below 4 sectors. Traffic: reads x, dy again (8·rows·cols) + 16·chunks·cols.
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "common/launch.cuh"
#include "common/reduce.cuh"
#include "common/rows.cuh"
#include "common/storage.cuh"
#include "kernels/norm.h"

namespace gpunet {
namespace {

constexpr int kLnThreads = 128;                // 4 warps
constexpr int kLnRowsPerBlock = kLnThreads / 32;  // one row per warp
constexpr int kColTile = 128;                  // columns per block of the parameter-gradient kernels

// Sum over the row of f(x[c]) for the lane's columns c = lane, lane + 32, ...
// (float4 groups when VEC), reduced over the warp: every lane gets the sum.
template <bool VEC, class T, class F>
__device__ __forceinline__ float row_sum(const T* row, int64_t cols, int lane, F f) {
  float s = 0.f;
  if constexpr (VEC) {
    const float4* r4 = reinterpret_cast<const float4*>(row);
    for (int64_t c = lane; c < cols / 4; c += 32) {
      const float4 v = r4[c];
      s += f(v.x, 4 * c) + f(v.y, 4 * c + 1) + f(v.z, 4 * c + 2) + f(v.w, 4 * c + 3);
    }
  } else {
    for (int64_t c = lane; c < cols; c += 32) s += f(to_float(row[c]), c);
  }
  return warp_reduce_sum(s);
}

// Short rows: the lane's N floats of the row in registers (zeros past its
// end), read once. With VEC the lane holds float4 chunks l, l + 32, ...
// Registers (sm_90): at most 62 with VEC (occupancy 0.5), 77 for 32 scalar
// floats per lane (0.375); a cap of 64 spills there, so none is set.
template <class T, int N, bool VEC>
__global__ void __launch_bounds__(kLnThreads)
    layernorm_forward_regs_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                  T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                  int64_t rows, int cols, float eps) {
  constexpr int W = VEC ? 4 : 1;  // floats per load
  static_assert(N % W == 0, "whole float4 chunks per lane");
  static_assert(!VEC || std::is_same_v<T, float>, "float4 loads are float32's");
  const int lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * kLnRowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;  // the whole warp leaves together: no collective is left waiting
  const T* xr = x + r * cols;
  // load k of this lane covers the elements [W (lane + 32 k), W (lane + 32 k) + W)
  auto first = [lane](int k) { return W * (lane + 32 * k); };
  float u[N];
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < N / W; ++k) {
    const int c = first(k);
    if constexpr (VEC) {
      const float4 v = c < cols ? reinterpret_cast<const float4*>(xr)[c / 4] : float4{0.f, 0.f, 0.f, 0.f};
      u[4 * k] = v.x, u[4 * k + 1] = v.y, u[4 * k + 2] = v.z, u[4 * k + 3] = v.w;
    } else {
      u[k] = c < cols ? to_float(xr[c]) : 0.f;
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) s += u[i];
  const float inv_cols = 1.f / (float)cols;
  const float mean = warp_reduce_sum(s) * inv_cols;
  float q = 0.f;
#pragma unroll
  for (int k = 0; k < N / W; ++k)
    if (first(k) < cols)
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const float d = u[W * k + j] - mean;
        q += d * d;
      }
  const float rstd = 1.f / sqrtf(warp_reduce_sum(q) * inv_cols + eps);
  T* yr = y + r * cols;
#pragma unroll
  for (int k = 0; k < N / W; ++k) {
    const int c = first(k);
    if (c >= cols) continue;
    if constexpr (VEC) {
      const float4 wv = reinterpret_cast<const float4*>(w)[c / 4], bv = reinterpret_cast<const float4*>(b)[c / 4];
      float4 o;
      o.x = (u[4 * k] - mean) * rstd * wv.x + bv.x;
      o.y = (u[4 * k + 1] - mean) * rstd * wv.y + bv.y;
      o.z = (u[4 * k + 2] - mean) * rstd * wv.z + bv.z;
      o.w = (u[4 * k + 3] - mean) * rstd * wv.w + bv.w;
      reinterpret_cast<float4*>(yr)[c / 4] = o;
    } else {
      yr[c] = from_float<T>((u[k] - mean) * rstd * to_float(w[c]) + to_float(b[c]));
    }
  }
  if (lane == 0) {
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

template <class T, bool VEC>
__global__ void __launch_bounds__(kLnThreads)
    layernorm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                             T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                             int64_t rows, int64_t cols, float eps) {
  static_assert(!VEC || std::is_same_v<T, float>, "float4 loads are float32's");
  const int lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * kLnRowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;  // the whole warp leaves together: no collective is left waiting
  const T* xr = x + r * cols;
  T* yr = y + r * cols;
  const float inv_cols = 1.f / (float)cols;
  const float mean = row_sum<VEC>(xr, cols, lane, [](float v, int64_t) { return v; }) * inv_cols;
  const float var = row_sum<VEC>(xr, cols, lane, [mean](float v, int64_t) {
                      const float d = v - mean;
                      return d * d;
                    }) * inv_cols;
  const float rstd = 1.f / sqrtf(var + eps);
  if constexpr (VEC) {
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
    for (int64_t c = lane; c < cols; c += 32)
      yr[c] = from_float<T>((to_float(xr[c]) - mean) * rstd * to_float(w[c]) + to_float(b[c]));
  }
  if (lane == 0) {
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

template <class T>
__global__ void __launch_bounds__(kLnThreads)
    layernorm_dx_kernel(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ mean,
                        const float* __restrict__ rstd, const T* __restrict__ dy, T* __restrict__ dx,
                        int64_t rows, int64_t cols) {
  const int lane = threadIdx.x % 32;
  const int64_t r = (int64_t)blockIdx.x * kLnRowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;
  const T* xr = x + r * cols;
  const T* dyr = dy + r * cols;
  const float mu = mean[r], rs = rstd[r];
  float sum_g = 0.f, sum_gx = 0.f;
  for (int64_t c = lane; c < cols; c += 32) {
    const float g = to_float(dyr[c]) * to_float(w[c]);
    sum_g += g;
    sum_gx += g * (to_float(xr[c]) - mu) * rs;
  }
  const float inv_cols = 1.f / (float)cols;
  const float mean_g = warp_reduce_sum(sum_g) * inv_cols;
  const float mean_gx = warp_reduce_sum(sum_gx) * inv_cols;
  T* dxr = dx + r * cols;
  for (int64_t c = lane; c < cols; c += 32) {
    const float xhat = (to_float(xr[c]) - mu) * rs;
    dxr[c] = from_float<T>(rs * (to_float(dyr[c]) * to_float(w[c]) - mean_g - xhat * mean_gx));
  }
}

template <class T>
__global__ void __launch_bounds__(kColTile)
    layernorm_param_partial_kernel(const T* __restrict__ x, const float* __restrict__ mean,
                                   const float* __restrict__ rstd, const T* __restrict__ dy,
                                   float* __restrict__ partial, int64_t rows, int64_t cols, int64_t chunks,
                                   int64_t rows_per_chunk) {
  const int64_t c = (int64_t)blockIdx.x * kColTile + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (c >= cols) return;  // no collectives in this kernel
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float sw = 0.f, sb = 0.f;
  for (int64_t r = r0; r < r1; ++r) {
    const float g = to_float(dy[r * cols + c]);
    sw += g * (to_float(x[r * cols + c]) - mean[r]) * rstd[r];
    sb += g;
  }
  partial[chunk * cols + c] = sw;
  partial[(chunks + chunk) * cols + c] = sb;
}

template <class T>
__global__ void __launch_bounds__(kColTile)
    layernorm_param_reduce_kernel(const float* __restrict__ partial, T* __restrict__ dw, T* __restrict__ db,
                                  int64_t cols, int64_t chunks) {
  const int64_t c = (int64_t)blockIdx.x * kColTile + threadIdx.x;
  if (c >= cols) return;
  float sw = 0.f, sb = 0.f;
  for (int64_t k = 0; k < chunks; ++k) {
    sw += partial[k * cols + c];
    sb += partial[(chunks + k) * cols + c];
  }
  dw[c] = from_float<T>(sw);
  db[c] = from_float<T>(sb);
}

template <class T>
void launch_layernorm_forward(const T* x, const T* w, const T* b, T* y, float* mean, float* rstd, int64_t rows,
                              int64_t cols, float eps, cudaStream_t stream) {
  const dim3 grid = checked_grid("layernorm_forward", (rows + kLnRowsPerBlock - 1) / kLnRowsPerBlock);
  constexpr bool kFloat = std::is_same_v<T, float>;
  const bool vec = kFloat && cols % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(b) && aligned16(y);
  // (a half T instantiates only the scalar kernels: vec_c is false for it)
  auto vec_of = [](auto vec_c) { return std::bool_constant<kFloat && decltype(vec_c)::value>{}; };
  if (cols > kMaxWarpCols) {
    with_bools(
        [&](auto vec_c) {
          layernorm_forward_kernel<T, decltype(vec_of(vec_c))::value>
              <<<grid, kLnThreads, 0, stream>>>(x, w, b, y, mean, rstd, rows, cols, eps);
        },
        vec);
    return;
  }
  with_values_per_lane((int)cols, [&](auto vpt) {
    with_bools(
        [&](auto vec_c) {
          constexpr bool kVec = decltype(vec_of(vec_c))::value;
          constexpr int kN = kVec && decltype(vpt)::value < 4 ? 4 : decltype(vpt)::value;
          layernorm_forward_regs_kernel<T, kN, kVec>
              <<<grid, kLnThreads, 0, stream>>>(x, w, b, y, mean, rstd, rows, (int)cols, eps);
        },
        vec);
  });
}

template <class T>
void launch_layernorm_backward(const T* x, const T* w, const float* mean, const float* rstd, const T* dy, T* dx,
                               T* dw, T* db, float* partial, int64_t chunks, int64_t rows, int64_t cols,
                               cudaStream_t stream) {
  // every grid checked before the first launch
  const int64_t col_blocks = (cols + kColTile - 1) / kColTile;
  const dim3 rows_grid = checked_grid("layernorm_backward", (rows + kLnRowsPerBlock - 1) / kLnRowsPerBlock);
  const dim3 partial_grid = checked_grid("layernorm_backward", col_blocks, chunks);
  const dim3 col_grid = checked_grid("layernorm_backward", col_blocks);
  layernorm_dx_kernel<T><<<rows_grid, kLnThreads, 0, stream>>>(x, w, mean, rstd, dy, dx, rows, cols);
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  layernorm_param_partial_kernel<T><<<partial_grid, kColTile, 0, stream>>>(x, mean, rstd, dy, partial, rows, cols,
                                                                            chunks, rows_per_chunk);
  layernorm_param_reduce_kernel<T><<<col_grid, kColTile, 0, stream>>>(partial, dw, db, cols, chunks);
}

}  // namespace

void layernorm_forward(Storage storage, const void* x, const void* w, const void* b, void* y, float* mean,
                       float* rstd, int64_t rows, int64_t cols, float eps, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    launch_layernorm_forward(static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b),
                             static_cast<T*>(y), mean, rstd, rows, cols, eps, stream);
  });
}

void layernorm_backward(Storage storage, const void* x, const void* w, const float* mean, const float* rstd,
                        const void* dy, void* dx, void* dw, void* db, float* partial, int64_t chunks, int64_t rows,
                        int64_t cols, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    launch_layernorm_backward(static_cast<const T*>(x), static_cast<const T*>(w), mean, rstd,
                              static_cast<const T*>(dy), static_cast<T*>(dx), static_cast<T*>(dw),
                              static_cast<T*>(db), partial, chunks, rows, cols, stream);
  });
}

}  // namespace gpunet
