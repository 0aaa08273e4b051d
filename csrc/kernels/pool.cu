// pool.cu -- 2-D max and average pooling, forward and backward, with
// PyTorch's semantics (padding, dilation for max, ceil_mode through the
// caller's output size, count_include_pad for average).
//
// Storage: the kernels are templated on the type T of x, y, dy and dx
// (float, __half, __nv_bfloat16; common/storage.h). Values are read in
// float32 (the tiled forward stages them in shared memory as float32),
// compared, summed and divided in float32, and each output is rounded once
// to T: a max is exact, an average or a gradient sum is rounded once, in the
// order the cpu reference adds (row-major window order). Each thread reads
// single values (neighbouring threads neighbouring values: coalesced); the
// arg-max indices stay int32.
//
// Forward (maxpool2d_forward, avgpool2d_forward)
//   Algorithm: one thread per output element (plane, oy, ox) scans its
//     kh x kw window row-major over the in-bounds input pixels. Max keeps the
//     first maximum (strict '>'; a NaN replaces the running maximum, as in
//     PyTorch) and stores its index y*w + x in the plane as int32. Average
//     divides the sum by the window clipped to the padded input
//     (count_include_pad) or to the input.
//   Tiled (pool_forward_tiled, whenever the input tile fits 16 KiB): a block
//     owns a tile of tw x th outputs of one plane (tw = min(ow, 32) rounded up
//     to a power of two, th = min(256 / tw, oh)), first loads the input pixels
//     those windows cover into shared memory, consecutive threads reading
//     consecutive pixels of a row, then each thread scans its window there;
//     lanes write consecutive outputs of a row. Global loads are then
//     coalesced whatever the stride (the direct kernel's lanes read pixels sw
//     apart: sw times the sectors); the shared-memory reads of lanes sw
//     words apart are sw-way bank conflicts, the cheaper place for them.
//     Grid: min(tiles, 2^18 / (tw*th)) blocks of tw*th threads striding over
//     the tiles; (tw-1)*sw + (kw-1)*dw + 1 by (th-1)*sh + (kh-1)*dh + 1 floats
//     of shared memory.
//   Direct (pool_forward_direct, larger windows): grid-stride, one thread per
//     output reading its window from global memory; 256 threads per block,
//     min(ceil(N*C*OH*OW / 256), 8 per SM) blocks.
//   Traffic: reads the input once from DRAM (overlapping windows and tile
//     halos re-read from L1/L2), writes 4 bytes per output (8 for max: value
//     + index). About kh*kw compares or adds per output. Memory bound: floor
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
//   Launch: 256 threads per block, min(ceil(N*C*H*W / 256), 8 per SM) blocks.
//   Traffic: writes N*C*H*W*4 bytes, reads dy (and arg for max) once from
//     DRAM, re-reads up to kh*kw/(sh*sw) times from cache. Memory bound.
//   Access profile: with stride s, only 1 in s lanes has an output for a given
//     window offset and s neighbouring lanes share it (a broadcast), so about
//     half the lanes are active and loads use 1-2 sectors per request; that
//     is the gather's price for having no atomics.
//
// Indices are int32 when every flat index fits, int64 otherwise; divisions by
// the extents and strides are multiply-shifts by per-launch magic numbers in
// the int32 case (common/fastdiv.cuh).
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "common/fastdiv.cuh"
#include "common/launch.cuh"
#include "common/storage.cuh"
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

// The window of output (oy, ox), scanned row-major over its in-bounds input
// pixels, at(i, j, yy, xx) reading pixel (yy, xx) of window offset (i, j).
// Max: the first maximum (strict '>'; a NaN replaces it, as in PyTorch) and its
// index yy*w + xx in the plane; average: the sum / avg_divisor. In-plane
// coordinates fit int (the binding refuses planes past 2^31 - 1 elements).
template <bool kMax, class At>
__device__ __forceinline__ float pool_window(const PoolShape& s, bool count_include_pad, int oy, int ox, At at,
                                             int32_t& best_at) {
  const int h = (int)s.h, w = (int)s.w;
  float best = -INFINITY, sum = 0.f;
  best_at = -1;
  for (int i = 0; i < s.kh; ++i) {
    const int yy = oy * s.sh - s.ph + i * s.dh;
    if (yy < 0 || yy >= h) continue;
    for (int j = 0; j < s.kw; ++j) {
      const int xx = ox * s.sw - s.pw + j * s.dw;
      if (xx < 0 || xx >= w) continue;
      const float v = at(i, j, yy, xx);
      if constexpr (kMax) {
        if (best_at < 0 || v > best || isnan(v)) {
          best = v;
          best_at = yy * w + xx;
        }
      } else {
        sum += v;
      }
    }
  }
  if constexpr (kMax) return best;
  return sum / (float)avg_divisor(oy, ox, s, count_include_pad);
}

// One thread per output, reading its window from global memory: for windows
// whose input tile would not fit shared memory (pool_tiles).
template <bool kMax, class T, class Index>
__global__ void __launch_bounds__(kThreads)
    pool_forward_direct(const T* __restrict__ x, T* __restrict__ y, int32_t* __restrict__ arg, PoolShape s,
                        bool count_include_pad, PoolDivs<Index> div, Index total) {
  const Index step = (Index)gridDim.x * blockDim.x;
  for (Index e = (Index)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += step) {
    Index oy, ox;
    const Index plane = split(div, e, oy, ox);
    const T* src = x + plane * (Index)s.h * (Index)s.w;
    int32_t at;
    y[e] = from_float<T>(pool_window<kMax>(s, count_include_pad, (int)oy, (int)ox,
                                           [&](int, int, int yy, int xx) { return to_float(src[yy * (int)s.w + xx]); },
                                           at));
    if constexpr (kMax) arg[e] = at;
  }
}

// The output tiles of the tiled forward: tw x th outputs of one plane (tw a
// power of two up to 32, th up to kThreads / tw and oh), one thread each,
// reading an ih x iw input tile staged in shared memory.
template <class Index>
struct PoolTiles {
  int tw, tw_log2, th, iw, ih;
  Divider<int32_t> iw_div;
  Divider<Index> tiles_x, tiles_y;
  Index count;
};

template <bool kMax, class T, class Index>
__global__ void __launch_bounds__(kThreads)
    pool_forward_tiled(const T* __restrict__ x, T* __restrict__ y, int32_t* __restrict__ arg, PoolShape s,
                       bool count_include_pad, PoolTiles<Index> t) {
  extern __shared__ float tile[];
  const int h = (int)s.h, w = (int)s.w, oh = (int)s.oh, ow = (int)s.ow;
  const int lx = (int)threadIdx.x & (t.tw - 1), ly = (int)threadIdx.x >> t.tw_log2;
  for (Index k = blockIdx.x; k < t.count; k += gridDim.x) {
    Index tx, ty;
    const Index plane = t.tiles_y.divmod(t.tiles_x.divmod(k, tx), ty);
    const int oy0 = (int)ty * t.th, ox0 = (int)tx * t.tw;
    const int iy0 = oy0 * s.sh - s.ph, ix0 = ox0 * s.sw - s.pw;
    const T* src = x + plane * (Index)h * (Index)w;
    __syncthreads();  // the previous tile's reads are done
    // consecutive threads load consecutive pixels of a tile row (0 outside the
    // plane: never read, since pool_window skips those pixels)
    for (int q = threadIdx.x; q < t.ih * t.iw; q += blockDim.x) {
      int c;
      const int r = t.iw_div.divmod(q, c);
      const int yy = iy0 + r, xx = ix0 + c;
      tile[q] = yy >= 0 && yy < h && xx >= 0 && xx < w ? to_float(src[yy * w + xx]) : 0.f;
    }
    __syncthreads();
    const int oy = oy0 + ly, ox = ox0 + lx;
    if (ly >= t.th || oy >= oh || ox >= ow) continue;
    const float* mine = tile + ly * s.sh * t.iw + lx * s.sw;  // this output's window origin in the tile
    int32_t at;
    const float v = pool_window<kMax>(s, count_include_pad, oy, ox,
                                      [&](int i, int j, int, int) { return mine[i * s.dh * t.iw + j * s.dw]; }, at);
    const Index o = (plane * oh + oy) * ow + ox;
    y[o] = from_float<T>(v);
    if constexpr (kMax) arg[o] = at;
  }
}

template <class T, class Index>
__global__ void __launch_bounds__(kThreads) maxpool_backward_kernel(const T* __restrict__ dy,
                                                                    const int32_t* __restrict__ arg,
                                                                    T* __restrict__ dx, PoolShape s,
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
        if (arg[o] == me) sum += to_float(dy[o]);
      }
    }
    dx[e] = from_float<T>(sum);
  }
}

template <class T, class Index>
__global__ void __launch_bounds__(kThreads) avgpool_backward_kernel(const T* __restrict__ dy,
                                                                    T* __restrict__ dx, PoolShape s,
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
        sum += to_float(dy[out0 + oy * ow + ox]) / (float)avg_divisor((int)oy, (int)ox, s, count_include_pad);
      }
    }
    dx[e] = from_float<T>(sum);
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

// Shared memory one forward block may stage; larger input tiles (windows of
// more than ~50 strided pixels per side) take the direct kernel.
constexpr int kMaxTileBytes = 16 << 10;

// The tiling of s's outputs, or count = 0 when its input tile is too large.
template <class Index>
PoolTiles<Index> pool_tiles(const PoolShape& s) {
  PoolTiles<Index> t{};
  t.tw_log2 = 0;
  while ((1 << t.tw_log2) < std::min<int64_t>(s.ow, 32)) ++t.tw_log2;
  t.tw = 1 << t.tw_log2;
  t.th = (int)std::min<int64_t>(kThreads / t.tw, s.oh);
  // (in int64: tw rounds ow up, so (tw - 1) * sw may pass the input width)
  const int64_t iw = (int64_t)(t.tw - 1) * s.sw + (int64_t)(s.kw - 1) * s.dw + 1;
  const int64_t ih = (int64_t)(t.th - 1) * s.sh + (int64_t)(s.kh - 1) * s.dh + 1;
  if (iw * ih * (int64_t)sizeof(float) > kMaxTileBytes) return t;
  t.iw = (int)iw;
  t.ih = (int)ih;
  t.iw_div = Divider<int32_t>(t.iw);
  const int64_t tiles_x = (s.ow + t.tw - 1) / t.tw, tiles_y = (s.oh + t.th - 1) / t.th;
  t.tiles_x = Divider<Index>((Index)tiles_x);
  t.tiles_y = Divider<Index>((Index)tiles_y);
  t.count = (Index)(s.planes * tiles_y * tiles_x);
  return t;
}

template <bool kMax, class T>
void pool_forward(const T* x, T* y, int32_t* arg, const PoolShape& s, bool count_include_pad,
                  cudaStream_t stream) {
  const int64_t total = s.planes * s.oh * s.ow;
  if (total == 0) return;
  with_index_type(fits_int32(s), [&](auto index) {
    using Index = decltype(index);
    const PoolTiles<Index> t = pool_tiles<Index>(s);
    if (t.count == 0) {
      pool_forward_direct<kMax, T, Index><<<grid_for(total), kThreads, 0, stream>>>(
          x, y, arg, s, count_include_pad, out_divs<Index>(s), (Index)total);
      return;
    }
    const int threads = t.tw * t.th;
    const size_t smem = t.iw * t.ih * sizeof(float);
    // a grid-stride loop over tiles: no more blocks than the device holds at once
    const unsigned blocks = (unsigned)std::min<int64_t>(
        t.count, resident_blocks(pool_forward_tiled<kMax, T, Index>, threads, smem));
    pool_forward_tiled<kMax, T, Index><<<blocks, threads, smem, stream>>>(x, y, arg, s, count_include_pad, t);
  });
}

template <class T>
void maxpool_backward(const T* dy, const int32_t* arg, T* dx, const PoolShape& s, cudaStream_t stream) {
  const int64_t total = s.planes * s.h * s.w;
  if (total == 0) return;
  with_index_type(fits_int32(s), [&](auto index) {
    using Index = decltype(index);
    maxpool_backward_kernel<T, Index><<<grid_for(total), kThreads, 0, stream>>>(dy, arg, dx, s, in_divs<Index>(s),
                                                                                (Index)total);
  });
}

template <class T>
void avgpool_backward(const T* dy, T* dx, const PoolShape& s, bool count_include_pad, cudaStream_t stream) {
  const int64_t total = s.planes * s.h * s.w;
  if (total == 0) return;
  with_index_type(fits_int32(s), [&](auto index) {
    using Index = decltype(index);
    avgpool_backward_kernel<T, Index><<<grid_for(total), kThreads, 0, stream>>>(dy, dx, s, count_include_pad,
                                                                                in_divs<Index>(s), (Index)total);
  });
}

}  // namespace

void maxpool2d_forward(Storage storage, const void* x, void* y, int32_t* arg, const PoolShape& s,
                       cudaStream_t stream) {
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    pool_forward<true>(static_cast<const T*>(x), static_cast<T*>(y), arg, s, false, stream);
  });
}

void maxpool2d_backward(Storage storage, const void* dy, const int32_t* arg, void* dx, const PoolShape& s,
                        cudaStream_t stream) {
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    maxpool_backward(static_cast<const T*>(dy), arg, static_cast<T*>(dx), s, stream);
  });
}

void avgpool2d_forward(Storage storage, const void* x, void* y, const PoolShape& s, bool count_include_pad,
                       cudaStream_t stream) {
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    pool_forward<false>(static_cast<const T*>(x), static_cast<T*>(y), nullptr, s, count_include_pad, stream);
  });
}

void avgpool2d_backward(Storage storage, const void* dy, void* dx, const PoolShape& s, bool count_include_pad,
                        cudaStream_t stream) {
  with_storage(storage, [&](auto t) {
    using T = decltype(t);
    avgpool_backward(static_cast<const T*>(dy), static_cast<T*>(dx), s, count_include_pad, stream);
  });
}

int pool_index_bits(const PoolShape& s) { return fits_int32(s) ? 32 : 64; }

}  // namespace gpunet
