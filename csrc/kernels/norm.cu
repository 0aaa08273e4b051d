// norm.cu -- layer normalisation over the last `cols` features of `rows`
// rows: forward, input gradient, and weight/bias gradients. (Batch norm, the
// family's other op in gpunet/ops/norm.py, is array code on every backend:
// its reductions run over all axes but the channel.)
//
// Storage: every kernel is templated on the type T of x, weight, bias, y, dy,
// dx, dweight and dbias (float, __half, __nv_bfloat16; common/storage.h).
// Values are read in float32; the statistics (mean, rstd, saved as float32
// whatever T), the row sums of the backward and the parameter-gradient
// partials are float32, and each output is rounded once to T. The forward's
// 16-byte loads and stores carry 4 floats (float4) or 8 half values (Pack8,
// four half2/bfloat162 pairs) when cols is a multiple of that and the arrays
// are 16-byte aligned; else one value per lane (coalesced across the warp).
//
// layernorm_forward_regs_kernel<N, VEC> (rows of cols <= 1024) and
// layernorm_forward_kernel<VEC> (longer rows)
//   Algorithm: one warp per row. The short-row kernel reads the row ONCE into
//     registers (N floats per lane: lane l holds the elements (or, with VEC,
//     the 16-byte chunks) l, l + 32, ...), then sums it -> mean, sums
//     (x - mean)^2 -> biased variance (two-pass, so no cancellation for rows
//     with a large mean), and writes y = (x - mean)·rstd·w + b from the
//     registers. The long-row kernel cannot hold the row: its three passes
//     (mean, variance, write) re-read it, from L1/L2 after the first. mean
//     and rstd (one float each per row) are saved for backward. 16-byte
//     loads (float4, Pack8) when cols is whole 16-byte chunks and the
//     pointers are 16-byte aligned.
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

// Values of T in one 16-byte load: 4 floats (float4) or 8 half values (Pack8).
template <class T>
constexpr int kPer16 = 16 / sizeof(T);

// The 16 bytes at p (16-byte aligned) read in float32 / written from float32,
// each value rounded once to T, one 16-byte access each: a float4 is copied
// whole as a by-value argument and stored whole (fields read or written
// through the pointer could become four 4-byte accesses, as
// common/elementwise.cuh notes; the simulator's access profile shows it).
template <class T>
__device__ __forceinline__ void load16(const T* p, float* v) {
  if constexpr (std::is_same_v<T, float>) {
    [v](const float4 q) { v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w; }(*reinterpret_cast<const float4*>(p));
  } else {
    const Pack8<T> q = *reinterpret_cast<const Pack8<T>*>(p);  // (converted pair by pair: stays whole)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = HalfPair<T>::to_float2(q.p[j]);
      v[2 * j] = f.x, v[2 * j + 1] = f.y;
    }
  }
}
template <class T>
__device__ __forceinline__ void store16(T* p, const float* v) {
  if constexpr (std::is_same_v<T, float>) {
    float4 o;
    o.x = v[0], o.y = v[1], o.z = v[2], o.w = v[3];
    *reinterpret_cast<float4*>(p) = o;
  } else {
    Pack8<T> q;
#pragma unroll
    for (int j = 0; j < 4; ++j) q.p[j] = HalfPair<T>::from_float2(v[2 * j], v[2 * j + 1]);
    *reinterpret_cast<Pack8<T>*>(p) = q;
  }
}

// y = (x - mean) rstd w + b for the values of x at column c, u holding them in
// float32: a 16-byte chunk of kPer16<T> values when VEC, else one value.
template <class T, bool VEC>
__device__ __forceinline__ void write_normalised(const float* u, int64_t c, const T* w, const T* b, T* yr, float mean,
                                                 float rstd) {
  if constexpr (VEC) {
    constexpr int W = kPer16<T>;
    float wv[W], bv[W], o[W];
    load16(w + c, wv);
    load16(b + c, bv);
#pragma unroll
    for (int j = 0; j < W; ++j) o[j] = (u[j] - mean) * rstd * wv[j] + bv[j];
    store16(yr + c, o);
  } else {
    yr[c] = from_float<T>((u[0] - mean) * rstd * to_float(w[c]) + to_float(b[c]));
  }
}

// Sum over the row of f(x[c]) for the lane's columns c = lane, lane + 32, ...
// (16-byte chunks when VEC), reduced over the warp: every lane gets the sum.
template <bool VEC, class T, class F>
__device__ __forceinline__ float row_sum(const T* row, int64_t cols, int lane, F f) {
  float s = 0.f;
  if constexpr (VEC) {
    constexpr int W = kPer16<T>;
    for (int64_t c = lane; c < cols / W; c += 32) {
      float v[W];
      load16(row + W * c, v);
#pragma unroll
      for (int j = 0; j < W; ++j) s += f(v[j], W * c + j);
    }
  } else {
    for (int64_t c = lane; c < cols; c += 32) s += f(to_float(row[c]), c);
  }
  return warp_reduce_sum(s);
}

// Short rows: the lane's N values of the row in registers as float32 (zeros
// past its end), read once. With VEC the lane holds 16-byte chunks l, l + 32,
// ... (4 floats or 8 half values each).
// Registers (sm_90): at most 64 with VEC (float; 48 for half storage, whose
// chunks are 8 values; occupancy 0.5), 77 for 32 scalar values per lane
// (0.375); a cap of 64 spills there, so none is set.
template <class T, int N, bool VEC>
__global__ void __launch_bounds__(kLnThreads)
    layernorm_forward_regs_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                  T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                  int64_t rows, int cols, float eps) {
  constexpr int W = VEC ? kPer16<T> : 1;  // values per load
  static_assert(N % W == 0, "whole 16-byte chunks per lane");
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
      if (c < cols) {
        load16(xr + c, u + W * k);
      } else {
#pragma unroll
        for (int j = 0; j < W; ++j) u[W * k + j] = 0.f;
      }
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
    if (c < cols) write_normalised<T, VEC>(u + W * k, c, w, b, yr, mean, rstd);
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
  constexpr int W = VEC ? kPer16<T> : 1;
  for (int64_t c = W * lane; c < cols; c += W * 32) {
    float u[W];
    if constexpr (VEC)
      load16(xr + c, u);
    else
      u[0] = to_float(xr[c]);
    write_normalised<T, VEC>(u, c, w, b, yr, mean, rstd);
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
  const bool vec = cols % kPer16<T> == 0 && aligned16(x) && aligned16(w) && aligned16(b) && aligned16(y);
  if (cols > kMaxWarpCols) {
    with_bools(
        [&](auto vec_c) {
          layernorm_forward_kernel<T, decltype(vec_c)::value>
              <<<grid, kLnThreads, 0, stream>>>(x, w, b, y, mean, rstd, rows, cols, eps);
        },
        vec);
    return;
  }
  with_values_per_lane((int)cols, [&](auto vpt) {
    with_bools(
        [&](auto vec_c) {
          constexpr bool kVec = decltype(vec_c)::value;
          constexpr int kMin = kVec ? kPer16<T> : 1;  // whole 16-byte chunks per lane
          constexpr int kN = decltype(vpt)::value < kMin ? kMin : decltype(vpt)::value;
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
