// pool.cu -- 2-D max and average pooling (float32), forward and backward,
// with PyTorch's semantics (padding, dilation for max, ceil_mode through the
// caller's output size, count_include_pad for average).
//
// Forward (maxpool2d_forward, avgpool2d_forward)
//   Algorithm: one thread per output element (plane, oy, ox), grid-stride;
//     it scans its kh x kw window row-major over the in-bounds input pixels.
//     Max keeps the first maximum (strict '>'; a NaN replaces the running
//     maximum, as in PyTorch) and stores its index y*w + x in the plane as
//     int32. Average divides the sum by the window clipped to the padded input
//     (count_include_pad) or to the input.
//   Launch: 256 threads per block, min(ceil(N*C*OH*OW / 256), 1024) blocks.
//   Traffic: reads the input once from DRAM (overlapping windows re-read from
//     L1/L2), writes 4 bytes per output (8 for max: value + index). About
//     kh*kw compares or adds per output. Memory bound: floor
//     (N*C*H*W + N*C*OH*OW*{1, 2}) * 4 bytes / DRAM bandwidth.
//
// Backward (maxpool2d_backward, avgpool2d_backward)
//   Algorithm: a GATHER, one thread per input element (plane, y, x): for
//     each window offset (i, j) it finds the one output (oy, ox) whose window
//     puts offset (i, j) on this element (oy*sh = y + ph - i*dh must be a
//     non-negative multiple of sh below OH, same for x) and adds its dy (max:
//     only when that output's arg is this element; average: dy / divisor).
//     Each dx element is written once by one thread, summed in (i, j) order:
//     no atomics, no zero-fill, bitwise reproducible.
//   Launch: 256 threads per block, min(ceil(N*C*H*W / 256), 1024) blocks.
//   Traffic: writes N*C*H*W*4 bytes, reads dy (and arg for max) once from
//     DRAM, re-reads up to kh*kw/(sh*sw) times from cache. Memory bound.
//
// Indices are int32 when every flat index fits, int64 otherwise; divisions by
// the extents and strides are multiply-shifts by per-launch magic numbers in
// the int32 case (common/fastdiv.cuh).
#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "common/fastdiv.cuh"
#include "common/launch.cuh"
#include "kernels/pool.h"

namespace gpunet {
namespace {

// Window size PyTorch's average pooling divides output (oy, ox) by (plane
// extents fit int: the launchers' callers reject larger planes).
__device__ __forceinline__ int avg_divisor(int oy, int ox, const PoolShape& s, bool count_include_pad) {
  const int h = (int)s.h, w = (int)s.w;
  int y0 = oy * s.sh - s.ph, x0 = ox * s.sw - s.pw;
  int y1 = min(y0 + s.kh, h + s.ph), x1 = min(x0 + s.kw, w + s.pw);
  if (!count_include_pad) {
    y0 = max(y0, 0);
    x0 = max(x0, 0);
    y1 = min(y1, h);
    x1 = min(x1, w);
  }
  return (y1 - y0) * (x1 - x0);
}

// The divisors of a launch's index arithmetic (common/fastdiv.cuh): the
// extents that split a flat index into (plane, row, column) (forward: the
// output's, backward: the input's) and the strides (backward).
template <class Index>
struct PoolDivs {
  Divider<Index> cols, rows, sh, sw;
  PoolDivs(int64_t rows_, int64_t cols_, const PoolShape& s)
      : cols((Index)cols_), rows((Index)rows_), sh((Index)s.sh), sw((Index)s.sw) {}
};

// (plane, row, column) of flat index e.
template <class Index>
__device__ __forceinline__ Index split(const PoolDivs<Index>& div, Index e, Index& row, Index& col) {
  return div.rows.divmod(div.cols.divmod(e, col), row);
}

template <class Index>
__global__ void __launch_bounds__(kThreads) maxpool_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                                   int32_t* __restrict__ arg, PoolShape s,
                                                                   PoolDivs<Index> div, Index total) {
  const Index step = (Index)gridDim.x * blockDim.x;
  const Index h = (Index)s.h, w = (Index)s.w;
  for (Index e = (Index)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    Index oy, ox;
    const Index plane = split(div, e, oy, ox);
    const float* src = x + plane * h * w;
    float best = -INFINITY;
    int32_t best_at = -1;
    for (int i = 0; i < s.kh; ++i) {
      const Index yy = oy * s.sh - s.ph + (Index)i * s.dh;
      if (yy < 0 || yy >= h) continue;
      for (int j = 0; j < s.kw; ++j) {
        const Index xx = ox * s.sw - s.pw + (Index)j * s.dw;
        if (xx < 0 || xx >= w) continue;
        const float v = src[yy * w + xx];
        if (best_at < 0 || v > best || isnan(v)) {
          best = v;
          best_at = (int32_t)(yy * w + xx);
        }
      }
    }
    y[e] = best;
    arg[e] = best_at;
  }
}

template <class Index>
__global__ void __launch_bounds__(kThreads) maxpool_backward_kernel(const float* __restrict__ dy,
                                                                    const int32_t* __restrict__ arg,
                                                                    float* __restrict__ dx, PoolShape s,
                                                                    PoolDivs<Index> div, Index total) {
  const Index step = (Index)gridDim.x * blockDim.x;
  const Index w = (Index)s.w, oh = (Index)s.oh, ow = (Index)s.ow;
  for (Index e = (Index)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    Index yy, xx, rem;
    const Index plane = split(div, e, yy, xx);
    const int32_t me = (int32_t)(yy * w + xx);
    const Index out0 = plane * oh * ow;
    float sum = 0.f;
    for (int i = 0; i < s.kh; ++i) {
      const Index ry = yy + s.ph - (Index)i * s.dh;  // = oy * sh for the window that puts offset i here
      if (ry < 0) break;                           // only decreases with i
      const Index oy = div.sh.divmod(ry, rem);
      if (rem || oy >= oh) continue;
      for (int j = 0; j < s.kw; ++j) {
        const Index rx = xx + s.pw - (Index)j * s.dw;
        if (rx < 0) break;
        const Index ox = div.sw.divmod(rx, rem);
        if (rem || ox >= ow) continue;
        const Index o = out0 + oy * ow + ox;
        if (arg[o] == me) sum += dy[o];
      }
    }
    dx[e] = sum;
  }
}

template <class Index>
__global__ void __launch_bounds__(kThreads) avgpool_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                                                   PoolShape s, bool count_include_pad,
                                                                   PoolDivs<Index> div, Index total) {
  const Index step = (Index)gridDim.x * blockDim.x;
  const Index h = (Index)s.h, w = (Index)s.w;
  for (Index e = (Index)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    Index oy, ox;
    const Index plane = split(div, e, oy, ox);
    const float* src = x + plane * h * w;
    float sum = 0.f;
    for (int i = 0; i < s.kh; ++i) {
      const Index yy = oy * s.sh - s.ph + i;
      if (yy < 0 || yy >= h) continue;
      for (int j = 0; j < s.kw; ++j) {
        const Index xx = ox * s.sw - s.pw + j;
        if (xx >= 0 && xx < w) sum += src[yy * w + xx];
      }
    }
    y[e] = sum / (float)avg_divisor((int)oy, (int)ox, s, count_include_pad);
  }
}

template <class Index>
__global__ void __launch_bounds__(kThreads) avgpool_backward_kernel(const float* __restrict__ dy,
                                                                    float* __restrict__ dx, PoolShape s,
                                                                    bool count_include_pad, PoolDivs<Index> div,
                                                                    Index total) {
  const Index step = (Index)gridDim.x * blockDim.x;
  const Index oh = (Index)s.oh, ow = (Index)s.ow;
  for (Index e = (Index)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    Index yy, xx, rem;
    const Index plane = split(div, e, yy, xx);
    const Index out0 = plane * oh * ow;
    float sum = 0.f;
    for (int i = 0; i < s.kh; ++i) {
      const Index ry = yy + s.ph - i;
      if (ry < 0) break;
      const Index oy = div.sh.divmod(ry, rem);
      if (rem || oy >= oh) continue;
      for (int j = 0; j < s.kw; ++j) {
        const Index rx = xx + s.pw - j;
        if (rx < 0) break;
        const Index ox = div.sw.divmod(rx, rem);
        if (rem || ox >= ow) continue;
        sum += dy[out0 + oy * ow + ox] / (float)avg_divisor((int)oy, (int)ox, s, count_include_pad);
      }
    }
    dx[e] = sum;
  }
}

bool fits_int32(const PoolShape& s) {
  return s.planes * s.h * s.w <= INT_MAX && s.planes * s.oh * s.ow <= INT_MAX;
}

// Forward kernels split output indices, backward ones input indices.
template <class Index>
PoolDivs<Index> out_divs(const PoolShape& s) { return PoolDivs<Index>(s.oh, s.ow, s); }
template <class Index>
PoolDivs<Index> in_divs(const PoolShape& s) { return PoolDivs<Index>(s.h, s.w, s); }

}  // namespace

void maxpool2d_forward(const float* x, float* y, int32_t* arg, const PoolShape& s, cudaStream_t stream) {
  const int64_t total = s.planes * s.oh * s.ow;
  if (total == 0) return;
  with_index_type(fits_int32(s), [&](auto index) {
    using Index = decltype(index);
    maxpool_forward_kernel<Index><<<grid_for(total), kThreads, 0, stream>>>(x, y, arg, s, out_divs<Index>(s),
                                                                            (Index)total);
  });
}

void maxpool2d_backward(const float* dy, const int32_t* arg, float* dx, const PoolShape& s, cudaStream_t stream) {
  const int64_t total = s.planes * s.h * s.w;
  if (total == 0) return;
  with_index_type(fits_int32(s), [&](auto index) {
    using Index = decltype(index);
    maxpool_backward_kernel<Index><<<grid_for(total), kThreads, 0, stream>>>(dy, arg, dx, s, in_divs<Index>(s),
                                                                             (Index)total);
  });
}

void avgpool2d_forward(const float* x, float* y, const PoolShape& s, bool count_include_pad, cudaStream_t stream) {
  const int64_t total = s.planes * s.oh * s.ow;
  if (total == 0) return;
  with_index_type(fits_int32(s), [&](auto index) {
    using Index = decltype(index);
    avgpool_forward_kernel<Index><<<grid_for(total), kThreads, 0, stream>>>(x, y, s, count_include_pad,
                                                                            out_divs<Index>(s), (Index)total);
  });
}

void avgpool2d_backward(const float* dy, float* dx, const PoolShape& s, bool count_include_pad, cudaStream_t stream) {
  const int64_t total = s.planes * s.h * s.w;
  if (total == 0) return;
  with_index_type(fits_int32(s), [&](auto index) {
    using Index = decltype(index);
    avgpool_backward_kernel<Index><<<grid_for(total), kThreads, 0, stream>>>(dy, dx, s, count_include_pad,
                                                                             in_divs<Index>(s), (Index)total);
  });
}

int pool_index_bits(const PoolShape& s) { return fits_int32(s) ? 32 : 64; }

}  // namespace gpunet
